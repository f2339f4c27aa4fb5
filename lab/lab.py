"""
The local lab: a switch, a salt-master, N edge nodes (three by default) and a
client, each in its own network namespace, on 198.18.0.0/24 (nothing routed
from the root namespace).

- master (198.18.0.2): a real salt-master with the repo's reactor config, and
  the Kubernetes API emulator (nodes, one ingress pod per node, the ingress
  Service) on 127.0.0.1:6443 inside the namespace;
- edge1..edgeN: a real salt-minion each, keepalived from highstate (process
  mode), an ingress stand-in (HTTP 80/443 answering the node name, /healthz
  on 10254 that the lab can flip). edge1..edge39 are 198.18.0.11-49 (the
  default three: 198.18.0.11-13), edge40..edge88 are 198.18.0.51-99; the
  rest of the /24 is the master (.2), the second master (.3, two-master
  labs only), the client (.50), the VIP (.100, and .101 and up for VIPs tests
  add) and the address put on the Service by hand (.200);
- client (198.18.0.50);
- with ``--masters 2`` (issue #16): Salt multi-master, hot-hot. A redis-server
  (Debian's package) in the master's namespace, bound to 198.18.0.2:6379 only
  (and a Unix socket in <dir>/redis, which the lab itself reads), a random
  password (<dir>/redis/password), no persistence; master2 (198.18.0.3, its own namespace) with master 1's config
  and key pair; both masters with ``edge_ha_cache: redis`` and Salt's
  ``cache.redis.*`` settings pointing at it; every minion's ``master:`` lists
  both. master2 reaches the Kubernetes API emulator at 127.0.0.1:6443 of its
  own namespace through a forwarder to the emulator's Unix socket. The
  default (one master, localfs) is unchanged.

    python lab/lab.py up                 # from nothing (idempotent: tears down a previous lab first)
    python lab/lab.py up --edges 10      # ten edge nodes (up to 88; minions started and applied in batches)
    python lab/lab.py up --masters 2     # two hot-hot masters sharing a redis-server (issue #16)
    python lab/lab.py status             # the VIP report
    python lab/lab.py down               # stops everything by pid, deletes the namespaces (safe after a crash)

Everything lives under LAB_DIR (default /run/salt-edge-ha-lab).
"""

import argparse
import http.client
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import yaml

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.support.netns import Topology, delete_namespace, kill_pids, list_namespaces  # noqa: E402  pylint: disable=wrong-import-position

BIN = pathlib.Path(sys.executable).parent
VIP = "198.18.0.100"
NET = "198.18.0"  # the lab's /24 (the switch's subnet, tests/support/netns.py)
MASTER_IP = "198.18.0.2"
MASTER2_IP = "198.18.0.3"  # the second master of a two-master lab
MASTER_OCTETS = {"master": 2, "master2": 3}
REDIS_PORT = 6379  # the two-master lab's redis-server, on MASTER_IP only
REDIS_SERVER = "/usr/bin/redis-server"
KUBE_PORT = 6443  # the Kubernetes API emulator's port (its default) on 127.0.0.1 of the master's namespace
CLIENT_OCTET = 50
USER_IP = "198.18.0.200"  # put on the Service "by hand": must survive every update
KUBE_NS = "ingress-nginx"
SERVICE = "ingress-nginx-controller"
DEFAULT_DIR = "/run/salt-edge-ha-lab"
MAX_EDGES = 88
BATCH = 10  # minions started, synced and applied this many at a time (a 2-core machine)


def edge_nodes(edges=3):
    """
    ``{name: last octet}`` of edge1..edgeN in the lab's /24: edge1..edge39 at
    .11-.49, edge40..edge88 at .51-.99, so that no node takes the master's
    (.2), the client's (.50), a VIP (.100 and up) or the user IP (.200).
    """
    if not isinstance(edges, int) or not 1 <= edges <= MAX_EDGES:
        raise ValueError(f"edges must be a number from 1 to {MAX_EDGES}, got {edges!r}")
    return {f"edge{i}": 10 + i if i <= 39 else 11 + i for i in range(1, edges + 1)}


NODES = edge_nodes(3)  # the default lab's nodes (other code imports this); a Lab's own are lab.nodes
MINIONS = list(NODES) + ["client"]  # the client minion is not an edge node


def name_order_priorities(nodes):
    """``{node: priority}`` falling in node-name order: 150, 140, 130, then one less each (at least 45 for 88)."""
    ranked = sorted(nodes)
    return {n: (150, 140, 130)[i] if i < 3 else 129 - (i - 3) for i, n in enumerate(ranked)}


def lab_pillar(kubeconfig, nodes=None):
    """The lab's edge_ha pillar for ``nodes`` (``{name: octet}``, default the three of NODES)."""
    nodes = NODES if nodes is None else nodes
    return {
        "nodes": {n: {"address": f"{NET}.{o}", "interface": "eth0"} for n, o in nodes.items()},
        "vrrp_instances": {
            "VI_INGRESS": {
                "virtual_router_id": 51,
                # explicit: the lab's tests and benchmarks want the owner and the backups in node-name
                # order (edge1 150, then 140, 130, 129, 128, ...); derived priorities would spread
                # instances by a hash
                "priority": name_order_priorities(nodes),
                "vrrp_version": 3,
                "advert_int": 1,
                "unicast": True,
                "virtual_ipaddress": [f"{VIP}/24"],
            }
        },
        "ingress": {"health_url": "http://127.0.0.1:10254/healthz", "timeout": 1, "fall": 2, "rise": 2},
        "kubernetes": {
            "kubeconfig": str(kubeconfig),
            "service": {"namespace": KUBE_NS, "name": SERVICE},
            "ingress_pods": {"namespace": KUBE_NS, "label_selector": "app.kubernetes.io/component=controller"},
            "external_ips": "vips_and_healthy_nodes",
            "request_timeout": 5,
        },
    }


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=10):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


class Lab:
    def __init__(self, directory=None, prefix="ehlab", fault_injection=False, edges=3, masters=1):
        self.dir = pathlib.Path(directory or os.environ.get("LAB_DIR", DEFAULT_DIR))
        if masters not in (1, 2):
            raise ValueError(f"masters must be 1 or 2, got {masters!r}")
        # "master" (198.18.0.2), and "master2" (198.18.0.3) in a two-master lab (shared redis, multi-master)
        self.masters = list(MASTER_OCTETS)[:masters]
        self.prefix = prefix
        self.nodes = edge_nodes(edges)  # {name: last octet}, edge1..edgeN
        self.minions = list(self.nodes) + ["client"]
        # tests: each edge node's keepalived binary is a wrapper whose `-t` passes while
        # <node dir>/fault-t-passes exists (a config that fails only at run time reaches the reload)
        self.fault_injection = fault_injection
        self.topo = None
        self.master_proc = None

    # ------------------------------------------------------------ paths

    def ns(self, host):
        return f"{self.prefix}-{host}"

    @property
    def etc(self):
        return self.dir / "master" / "etc"

    def etc_of(self, master="master"):
        """A master's config directory (``master``: "master" or "master2")."""
        return self.dir / master / "etc"

    @property
    def multi_master(self):
        return len(self.masters) > 1

    @property
    def redis_socket(self):
        """The two-master lab's redis-server's Unix socket (the lab's own reads; the masters use TCP)."""
        return self.dir / "redis" / "redis.sock"

    def redis(self):
        """A redis client on the lab's redis-server (its Unix socket: no traffic into the namespaces)."""
        import redis  # pylint: disable=import-outside-toplevel

        return redis.Redis(unix_socket_path=str(self.redis_socket), password=self.redis_password, socket_timeout=5)

    def node_dir(self, node):
        return self.dir / node

    def state_dir(self, node):
        return self.node_dir(node) / "state"

    # ------------------------------------------------------------ lifecycle

    def up(self, log=print):
        self.down(quiet=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.topo = Topology(self.prefix)
        try:
            self._up(log)
        except BaseException:
            self.down(quiet=True)
            raise
        return self

    def _up(self, log):
        began = time.monotonic()
        topo = self.topo
        for master in self.masters:
            topo.add_host(master, MASTER_OCTETS[master])
        for node, octet in self.nodes.items():
            topo.add_host(node, octet)
        topo.add_host("client", CLIENT_OCTET)
        mine = sorted(n for n in list_namespaces() if n.startswith(self.prefix + "-"))
        log(f"namespaces: {', '.join(mine) if len(mine) <= 10 else f'{len(mine)} ({self.prefix}-*)'}")
        self._write_configs()
        for node in self.nodes:
            self._spawn(node, "ingress", sys.executable, str(REPO / "lab" / "ingress_standin.py"), node,
                        str(self.node_dir(node) / "ingress-unhealthy"))
        self._start_kube()
        if self.multi_master:
            self._start_redis()
            self._spawn("master2", "kube-forward", sys.executable, str(REPO / "lab" / "unix_forward.py"),
                        "--port", str(KUBE_PORT), "--socket", str(self.dir / "kube.sock"))
        for master in self.masters:
            self.start_master(master)
        # in batches: on a 2-core machine fifty minions starting (and authenticating) at once time out
        for batch in self.batches(self.minions):
            for node in batch:
                self.start_minion(node)
            self._wait(lambda b=batch: self._pinged(b), 90, f"minions {batch[0]}..{batch[-1]} to answer test.ping")
            if len(self.minions) > BATCH:
                log(f"minions {batch[0]}..{batch[-1]} answer, after {time.monotonic() - began:.0f} s")
        self._wait(lambda: self._pinged(), 90, "minions to answer test.ping")
        for master in self.masters[1:]:
            self._wait(lambda m=master: self._pinged(master=m), 90, f"minions to answer test.ping from {master}")
        log(f"salt-master and {len(self.minions)} salt-minions ({len(self.nodes)} edge nodes, 1 client) up "
            f"after {time.monotonic() - began:.0f} s; syncing modules, applying highstate")
        for batch in self.batches(self.minions):
            synced = self.salt(",".join(batch), "saltutil.sync_all", "--list", timeout=120)
            # the client is no edge node: its sync answers that the top file has nothing for it
            missing = [m for m in batch if m in self.nodes and not isinstance(synced.get(m), dict)]
            if missing:
                raise RuntimeError(f"saltutil.sync_all failed on {missing} (timeout 120 s): "
                                   + json.dumps({m: synced.get(m, "no answer") for m in missing})[:2000])
        log(f"modules synced after {time.monotonic() - began:.0f} s")
        for batch in self.batches(list(self.nodes)):
            results = self.salt(",".join(batch), "state.apply", "--list", timeout=300)
            for node in batch:
                states = results.get(node)
                bad = [k for k, v in (states or {}).items() if not isinstance(v, dict) or not v.get("result")]
                if not isinstance(states, dict) or bad:
                    raise RuntimeError(f"highstate failed on {node}: {json.dumps(states, indent=1)[:3000]}")
        self._wait(lambda: len(self.holders()) == 1, 30 + len(self.nodes), "one VIP owner")
        log(f"highstate applied, VIP on {', '.join(self.holders())}, after {time.monotonic() - began:.0f} s")
        return self

    @staticmethod
    def batches(names, size=BATCH):
        return [names[i:i + size] for i in range(0, len(names), size)]

    def down(self, quiet=False):
        """Stop everything by pid and delete the namespaces; fine after a crash."""
        for pidfile in sorted(self.dir.glob("**/*.pid")) if self.dir.exists() else []:
            try:
                kill_pids([int(pidfile.read_text().strip())])
            except (ValueError, OSError):
                pass
        for ns in list_namespaces():
            if ns.startswith(self.prefix + "-"):
                delete_namespace(ns)
        if self.topo:
            self.topo.close()
            self.topo = None
        if self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)
        if not quiet:
            print("lab is down")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.down(quiet=True)

    # ------------------------------------------------------------ processes

    def _spawn(self, host, name, *cmd):
        """Start a daemon inside ``host``'s namespace; its pid goes to <dir>/pids/<host>-<name>.pid."""
        log = self.dir / "logs" / f"{host}-{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            proc = subprocess.Popen(  # pylint: disable=consider-using-with
                ["ip", "netns", "exec", self.ns(host), *cmd],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        pidfile = self.dir / "pids" / f"{host}-{name}.pid"
        pidfile.parent.mkdir(parents=True, exist_ok=True)
        pidfile.write_text(str(proc.pid))
        return proc

    def _stop(self, host, name):
        pidfile = self.dir / "pids" / f"{host}-{name}.pid"
        if pidfile.exists():
            kill_pids([int(pidfile.read_text())], timeout=15)
            pidfile.unlink()

    def _start_kube(self, deny_external_ips=False):
        sock = self.dir / "kube.sock"
        sock.unlink(missing_ok=True)
        self._spawn("master", "kube", sys.executable, str(REPO / "lab" / "kube_emulator.py"),
                    "--seed", str(self.dir / "kube-seed.json"), "--kubeconfig", str(self.dir / "kubeconfig"),
                    "--socket", str(sock), *(["--deny-external-ips"] if deny_external_ips else []))
        self._wait(sock.exists, 20, "Kubernetes API emulator")

    def restart_kube(self, deny_external_ips=False):
        """
        The Kubernetes API emulator stopped (by pid) and started again from
        the seed (same port, token and kubeconfig; what was created since is
        gone), as a hardened cluster with ``deny_external_ips``
        (``DenyServiceExternalIPs``: 403 on ``spec.externalIPs``).
        """
        self._stop("master", "kube")
        self._start_kube(deny_external_ips)

    def start_master(self, master="master"):
        """Start a salt-master ("master", or "master2" of a two-master lab: with master 1's key pair)."""
        if master != "master":
            # Salt multi-master: every master has the same key pair (master 1 made it when it started)
            pki = self.master_pki("master")
            if not (pki / "master.pem").exists():
                raise RuntimeError(f"{master}: master 1's key pair is not in {pki} (start master 1 first)")
            mine = self.master_pki(master)
            mine.mkdir(parents=True, exist_ok=True)
            for name in ("master.pem", "master.pub"):
                shutil.copy2(pki / name, mine / name)
        proc = self._spawn(master, "salt-master", str(BIN / "salt-master"), "-c", str(self.etc_of(master)),
                           "-l", "warning")
        if master == "master":
            self.master_proc = proc
        self._wait(lambda: (self.dir / master / "run" / "master" / "master_event_pub.ipc").exists()
                   or any((self.dir / master).glob("**/master_event_pub.ipc")), 60, f"salt-master ({master})")
        return proc

    def master_pki(self, master="master"):
        """A master's pki_dir (Salt's default under its root_dir)."""
        return self.dir / master / "etc" / "salt" / "pki" / "master"

    def stop_master(self, master="master"):
        self._stop(master, "salt-master")

    def master_pid(self, master="master"):
        pidfile = self.dir / "pids" / f"{master}-salt-master.pid"
        return int(pidfile.read_text()) if pidfile.exists() else 0

    def _start_redis(self):
        """The two-master lab's shared store: redis-server in the master's namespace, on MASTER_IP only."""
        rdir = self.dir / "redis"
        rdir.mkdir(parents=True, exist_ok=True)
        conf = rdir / "redis.conf"  # its password in a file of the lab's (0600), not on a command line
        conf.touch(mode=0o600)
        conf.write_text("\n".join([
            f"bind {MASTER_IP}", f"port {REDIS_PORT}", f"unixsocket {self.redis_socket}", "unixsocketperm 700",
            # a password: redis' protected mode refuses clients from other addresses without one
            f"requirepass {self.redis_password}",
            'save ""', "appendonly no", f"dir {rdir}", "daemonize no", ""]))
        self._spawn("master", "redis", REDIS_SERVER, str(conf))
        self._wait(lambda: self.redis().ping(), 20, "redis-server")

    @property
    def redis_password(self):
        """The two-master lab's redis password (random, made once per lab directory, 0600)."""
        path = self.dir / "redis" / "password"
        if not path.exists():
            import secrets  # pylint: disable=import-outside-toplevel

            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600)
            path.write_text(secrets.token_hex(16))
        return path.read_text().strip()

    def start_minion(self, node):
        self._spawn(node, "salt-minion", str(BIN / "salt-minion"), "-c", str(self.node_dir(node) / "etc"),
                    "-l", "warning")

    def _wait(self, predicate, timeout, what):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if predicate():
                    return
            except Exception:  # pylint: disable=broad-except
                pass
            time.sleep(0.5)
        raise RuntimeError(f"timed out after {timeout}s waiting for {what}; logs in {self.dir / 'logs'}")

    def _pinged(self, minions=None, master="master"):
        """Whether ``minions`` (default: all of this lab's) answer test.ping (from ``master``)."""
        if minions is None:
            answers = self.salt("*", "test.ping", timeout=10 + len(self.minions) // 10, master=master)
        else:
            answers = self.salt(",".join(minions), "test.ping", "--list", timeout=10, master=master)
        # a minion that did not answer shows as a "Minion did not return" string
        return {m for m, ok in answers.items() if ok is True} == set(self.minions if minions is None else minions)

    # ------------------------------------------------------------ config

    def _write_configs(self):
        kubeconfig = self.dir / "kubeconfig"
        pillar_dir = self.dir / "pillar"
        pillar_dir.mkdir(parents=True, exist_ok=True)
        (pillar_dir / "top.sls").write_text("base:\n  '*':\n    - edge_ha\n")
        self.set_pillar(lab_pillar(kubeconfig, self.nodes))
        reactor = yaml.safe_load((REPO / "reactor" / "edge-ha.master.conf").read_text().replace(
            "/srv/salt-edge-ha", str(REPO)))
        for name in self.masters:
            self._write_master_config(name, reactor, pillar_dir)
        # Salt multi-master (hot-hot): every minion connected to each master
        masters = MASTER_IP if not self.multi_master else [f"{NET}.{MASTER_OCTETS[m]}" for m in self.masters]
        for node in self.minions:
            ndir = self.node_dir(node)
            (ndir / "etc").mkdir(parents=True, exist_ok=True)
            if node not in self.nodes:
                minion = {"id": node, "master": masters, "root_dir": str(ndir / "root"),
                          "log_level_logfile": "warning"}
                (ndir / "etc" / "minion").write_text(yaml.safe_dump(minion))
                continue
            minion = {
                "id": node,
                "master": masters,
                "root_dir": str(ndir / "root"),
                "log_level_logfile": "warning",  # <dir>/<node>/root/var/log/salt/minion
                "keepalived": {
                    "config_file": str(ndir / "keepalived.conf"),
                    "state_dir": str(self.state_dir(node)),
                    "notify_script": str(ndir / "bin" / "edge-ha-notify"),
                    "pid_dir": str(ndir / "run"),
                    "service_mode": "process",
                },
                "edge_ha_sysctl_file": str(ndir / "sysctl.conf"),
                "beacons": {
                    "vrrp": [{"interval": 1}, {"conflict_check": 2}, {"watch": 0.05}],
                    "ingress_health": [{"interval": 1}],
                },
            }
            if self.fault_injection:
                minion["keepalived"]["binary"] = self._fault_wrapper(node)
            (ndir / "etc" / "minion").write_text(yaml.safe_dump(minion))
        (self.dir / "kube-seed.json").write_text(json.dumps(self.kube_seed()))

    def _write_master_config(self, name, reactor, pillar_dir):
        """A master's config: the same for both masters of a two-master lab but for root_dir and interface."""
        master = {
            "root_dir": str(self.dir / name),
            "interface": f"{NET}.{MASTER_OCTETS[name]}",
            "auto_accept": True,
            "file_roots": reactor["file_roots"],
            "pillar_roots": {"base": [str(pillar_dir)]},
            "module_dirs": reactor["module_dirs"],
            "reactor": reactor["reactor"],
            # LoadBalancer Services (issue #15): pool instances in the pillar, the Services watched
            "ext_pillar": reactor["ext_pillar"],
            "pillar_dirs": reactor["pillar_dirs"],
            "engines": [{"edge_ha_services": {"timeout": 30, "resync": 60}}],
            "schedule": {"edge_ha_reconcile": dict(reactor["schedule"]["edge_ha_reconcile"], seconds=10)},
            "edge_ha_pillar_id": "edge1",
            "edge_ha_split_brain_hold": 10,
            "log_level_logfile": "info",  # <dir>/<name>/var/log/salt/master
            "worker_threads": 4,
        }
        if self.multi_master:
            # one controller state for both masters: the lab's redis-server through Salt's redis cache settings
            master.update({"edge_ha_cache": "redis", "cache.redis.host": MASTER_IP, "cache.redis.port": REDIS_PORT,
                           "cache.redis.db": 0, "cache.redis.password": self.redis_password})
        etc = self.etc_of(name)
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "master").write_text(yaml.safe_dump(master))

    def kube_seed(self):
        """The Kubernetes emulator's seed: a Node and an ingress controller pod per edge node, the Service."""
        return {
            "namespaces": [KUBE_NS],
            "nodes": [{"name": n, "address": f"{NET}.{o}"} for n, o in self.nodes.items()],
            "pods": [
                {"namespace": KUBE_NS, "name": f"{SERVICE}-{n}", "node": n,
                 "labels": {"app.kubernetes.io/component": "controller"}}
                for n in self.nodes
            ],
            "service": {"namespace": KUBE_NS, "name": SERVICE, "external_ips": [USER_IP]},
        }

    def _fault_wrapper(self, node):
        path = self.node_dir(node) / "bin" / "keepalived"
        path.parent.mkdir(parents=True, exist_ok=True)
        real = shutil.which("keepalived") or "/usr/sbin/keepalived"
        flag = self.node_dir(node) / "fault-t-passes"
        path.write_text(
            "#!/bin/sh\n# lab fault injection: while the flag file exists, `keepalived -t` passes\n"
            f"if [ -e {flag} ]; then for a in \"$@\"; do [ \"$a\" = -t ] && exit 0; done; fi\n"
            f"exec {real} \"$@\"\n"
        )
        path.chmod(0o755)
        return str(path)

    def set_fault_t_passes(self, node, enabled=True):
        flag = self.node_dir(node) / "fault-t-passes"
        if enabled:
            flag.write_text("1\n")
        else:
            flag.unlink(missing_ok=True)

    def start_probe(self, seconds, rate=20, url=f"http://{VIP}/", name="probe", timeout=1.0):
        """A client in its own namespace requesting ``url`` at a fixed rate; ``probe_result(name)`` reads it."""
        out = self.dir / f"{name}.json"
        out.unlink(missing_ok=True)
        return self._spawn("client", name, sys.executable, str(REPO / "tests" / "support" / "probe.py"),
                           url, str(rate), str(seconds), str(out), str(timeout))

    def probe_result(self, name="probe", timeout=60):
        out = self.dir / f"{name}.json"
        self._wait(out.exists, timeout, f"the {name} client to finish")
        self._stop("client", name)
        return json.loads(out.read_text())

    def set_pillar(self, data):
        (self.dir / "pillar" / "edge_ha.sls").write_text(yaml.safe_dump({"edge_ha": data}, sort_keys=False))

    # ------------------------------------------------------------ salt

    def _salt_cli(self, tool, *args, timeout=60, master="master"):
        cmd = ["ip", "netns", "exec", self.ns(master), str(BIN / tool), "-c", str(self.etc_of(master)), "--out=json"]
        if tool == "salt":
            cmd += ["--static", "--timeout", str(timeout)]
        cmd += list(args)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 60, check=False, cwd=self.dir)
        out = proc.stdout.strip()
        if not out:
            raise RuntimeError(f"{tool} {' '.join(args)}: no output ({proc.returncode}): {proc.stderr[-2000:]}")
        return json.loads(out)

    def salt(self, target, *args, timeout=60, master="master"):
        """salt TARGET FUN ARGS (put options such as --list after the function), from ``master``."""
        opts = [a for a in args if a.startswith("--")]
        rest = [a for a in args if not a.startswith("--")]
        return self._salt_cli("salt", *opts, target, *rest, timeout=timeout, master=master)

    def run(self, fun, *args, timeout=120, master="master"):
        return self._salt_cli("salt-run", fun, *args, timeout=timeout, master=master)

    def report(self):
        return self.run("edge.vip_report")

    def report_table(self):
        """The report as an operator sees it (salt-run edge.vip_report, default output)."""
        proc = subprocess.run(["ip", "netns", "exec", self.ns("master"), str(BIN / "salt-run"), "-c", str(self.etc),
                               "edge.vip_report"], capture_output=True, text=True, timeout=120, check=False)
        return proc.stdout.rstrip() or proc.stderr

    # ------------------------------------------------------------ observation and faults

    def addresses(self, node):
        out = subprocess.run(["ip", "-n", self.ns(node), "-j", "addr", "show", "dev", "eth0"],
                             capture_output=True, text=True, check=True).stdout
        return [a["local"] for link in json.loads(out or "[]") for a in link.get("addr_info", [])]

    def holders(self, vip=VIP, nodes=None):
        """The edge nodes (of ``nodes``, default all) that have ``vip`` on their interface."""
        return sorted(n for n in (self.nodes if nodes is None else nodes) if vip in self.addresses(n))

    def keepalived_pid(self, node):
        try:
            return int((self.node_dir(node) / "run" / "keepalived.pid").read_text().strip())
        except (OSError, ValueError):
            return 0

    def keepalived_vrrp_pid(self, node):
        try:
            return int((self.node_dir(node) / "run" / "keepalived_vrrp.pid").read_text().strip())
        except (OSError, ValueError):
            return 0

    def kill_keepalived(self, node, sig=signal.SIGKILL):
        """
        SIGKILL (default): a real crash, the whole keepalived process group at
        once (parent, VRRP and checker children), so no child is left to send
        a goodbye advert. Any other signal goes to the parent only (SIGTERM:
        keepalived's graceful stop). Returns the pids signalled.
        """
        pid = self.keepalived_pid(node)
        if not pid:
            return []
        if sig == signal.SIGKILL:
            members = self.process_group(pid)
            try:
                os.killpg(pid, signal.SIGKILL)  # keepalived runs in its own session: pgid == its pid
            except ProcessLookupError:
                return []
            return members
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return []
        return [pid]

    @staticmethod
    def process_group(pgid):
        """The pids whose process group is ``pgid``."""
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    fields = pathlib.Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                except (OSError, IndexError):
                    continue
                if int(fields[2]) == pgid:
                    pids.append(int(entry))
        return sorted(pids)

    def block_vrrp(self, node, blocked=True):
        """Drop VRRP (IP protocol 112) in and out of a node, inside its namespace (nftables)."""
        ns = self.ns(node)
        subprocess.run(["ip", "netns", "exec", ns, "nft", "delete", "table", "inet", "edgeha_block"],
                       capture_output=True, check=False)
        if blocked:
            rules = ("table inet edgeha_block {\n"
                     " chain in { type filter hook input priority 0; ip protocol vrrp drop; }\n"
                     " chain out { type filter hook output priority 0; ip protocol vrrp drop; }\n}\n")
            subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=rules, text=True, check=True)

    def set_ingress_healthy(self, node, healthy):
        """Flip the node's ingress health endpoint and its pod's readiness (what the kubelet would do)."""
        flag = self.node_dir(node) / "ingress-unhealthy"
        if healthy:
            flag.unlink(missing_ok=True)
        else:
            flag.write_text("unhealthy\n")
        status = "True" if healthy else "False"
        pod = f"{SERVICE}-{node}"
        body = {"status": {"conditions": [{"type": "Ready", "status": status},
                                          {"type": "ContainersReady", "status": status}]}}
        self.kube("PATCH", f"/api/v1/namespaces/{KUBE_NS}/pods/{pod}", body,
                  "application/strategic-merge-patch+json")

    def kube(self, method, path, body=None, content_type="application/json"):
        """A request to the lab's Kubernetes API (over its Unix socket)."""
        conn = _UnixHTTPConnection(str(self.dir / "kube.sock"))
        headers = {"Authorization": "Bearer emulator-token", "Content-Type": content_type}
        conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        resp = conn.getresponse()
        data = json.loads(resp.read() or b"{}")
        conn.close()
        if resp.status >= 400:
            raise RuntimeError(f"{method} {path}: {resp.status} {data.get('message')}")
        return data

    def service(self):
        return self.kube("GET", f"/api/v1/namespaces/{KUBE_NS}/services/{SERVICE}")

    def external_ips(self):
        return sorted((self.service().get("spec") or {}).get("externalIPs") or [])

    def reconcile_log(self):
        """The master's history, oldest first: ``edge_ha_core.history.StoreHistory`` in its localfs cache."""
        if str(REPO / "_utils") not in sys.path:
            sys.path.insert(0, str(REPO / "_utils"))
        import contextlib  # pylint: disable=import-outside-toplevel

        import salt.cache  # pylint: disable=import-outside-toplevel
        from edge_ha_core import history, state  # pylint: disable=import-outside-toplevel

        cachedir = self.dir / "master" / "var" / "cache" / "salt" / "master"
        if self.multi_master:  # the masters' shared history, in the lab's redis (read through its Unix socket)
            records = state.StateStore(salt.cache.Cache(
                {"cachedir": str(cachedir), "cache.redis.unix_socket_path": str(self.redis_socket),
                 "cache.redis.db": 0, "cache.redis.password": self.redis_password}, driver="redis"), driver="redis")
            return list(reversed(history.StoreHistory(records, contextlib.nullcontext).read()))
        records = state.StateStore(salt.cache.Cache({"cachedir": str(cachedir)}, driver="localfs"))
        log = history.StoreHistory(records, contextlib.nullcontext,  # a reader: segments are replaced whole
                                   legacy_path=str(cachedir / "edge_ha" / "reconcile.log"))
        return list(reversed(log.read()))

    def wait_reconcile_idle(self, timeout=120):
        """Wait until no edge.reconcile holds the master's reconcile lease (localfs: edge_ha/reconcile.lease)."""
        if str(REPO / "_utils") not in sys.path:
            sys.path.insert(0, str(REPO / "_utils"))
        from edge_ha_core import lease  # pylint: disable=import-outside-toplevel

        path = self.dir / "master" / "var" / "cache" / "salt" / "master" / "edge_ha" / "reconcile.lease"
        store = lease.RedisBackend(self.redis(), "edge_ha:lease:reconcile") if self.multi_master else None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if store is not None:  # two masters: the lease in the lab's redis, its expiry by redis' clock
                current, error = lease.parse(store.read())
                now = store.now()
            else:
                current, error = lease.parse(path.read_text() if path.exists() else None)
                now = time.time()
            if error is None and (lease.is_free(current) or lease.expired(current, now)
                                  or lease.holder_gone_here(current, socket.gethostname(), lease.process_alive)):
                return
            time.sleep(0.5)
        raise RuntimeError("a reconcile is still running")

    def fire_event(self, node, tag, data):
        """Fire an event from a minion (what a beacon, or a forger, does)."""
        return self.salt(node, "event.send", tag, f"data={json.dumps(data)}", timeout=30)

    def fire_master_events(self, tag, data, count):
        """Fire ``count`` events straight onto the master's event bus, as fast as possible.
        Returns how long the firing took (without the interpreter's start-up)."""
        script = (
            "import json, sys, time, salt.config, salt.utils.event\n"
            f"opts = salt.config.master_config({str(self.etc / 'master')!r})\n"
            "bus = salt.utils.event.get_master_event(opts, opts['sock_dir'], listen=False)\n"
            "start = time.monotonic()\n"
            f"for i in range({int(count)}):\n"
            f"    bus.fire_event(dict(json.loads({json.dumps(json.dumps(data))}), n=i), {tag!r})\n"
            "print(time.monotonic() - start)\n"
            "bus.destroy()\n"
        )
        proc = subprocess.run(["ip", "netns", "exec", self.ns("master"), sys.executable, "-c", script],
                              check=True, capture_output=True, text=True, timeout=60)
        return float(proc.stdout.strip().splitlines()[-1])  # seconds the firing took


def main(argv=None):
    parser = argparse.ArgumentParser(description="The salt-edge-ha lab")
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--dir", default=None, help=f"lab directory (default $LAB_DIR or {DEFAULT_DIR})")
    parser.add_argument("--prefix", default="ehlab", help="namespace prefix, at most 8 characters (default ehlab)")
    parser.add_argument("--edges", type=int, default=3, help=f"edge nodes for `up`, 1 to {MAX_EDGES} (default 3)")
    parser.add_argument("--masters", type=int, default=1, choices=(1, 2),
                        help="1 (default: one master, its state in localfs) or 2 (multi-master sharing a redis-server)")
    args = parser.parse_args(argv)
    if not 1 <= args.edges <= MAX_EDGES:
        parser.error(f"--edges must be from 1 to {MAX_EDGES}")
    if os.geteuid() != 0:
        print("the lab needs root (network namespaces)", file=sys.stderr)
        return 1
    lab = Lab(args.dir, prefix=args.prefix, edges=args.edges, masters=args.masters)
    if args.command == "up":
        lab.up()
        print(f"lab is up in {lab.dir}; VIP {VIP} on {', '.join(lab.holders())}")
        print(lab.report_table())
    elif args.command == "down":
        lab.down()
    else:
        print(lab.report_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
