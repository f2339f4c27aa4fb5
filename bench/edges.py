"""
The two kinds of edge the lab benchmarks compare, with the same interface:

- ``PlainEdge``: the hand-made setup. Three nodes and a client in network
  namespaces of their own (prefix ``ehp<pid>``), a hand-written
  keepalived.conf per node (VRRPv2, ``advert_int 1``, multicast, one VIP,
  priorities 150/140/130, preemption on: keepalived's defaults), the lab's
  ingress stand-in on each node. No Salt, nothing reacts to faults.
- ``ProjectEdge``: the project's lab (``lab/lab.py``, prefix ``ehb<pid>``):
  salt-master with the reactor, three salt-minions (or ``edges``: N) running
  keepalived from highstate with the beacons, the Kubernetes API emulator;
  the pillar is the lab pillar with the VRRP settings of a variant.

Addresses: 198.18.0.0/24 inside each topology's own bridge; nothing is routed
from the root namespace. Every process is started through ``Topology.spawn``
or ``Lab._spawn`` and stopped by pid; ``down()`` deletes the namespaces, also
after a failure.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lab.lab import NODES, USER_IP, VIP, Lab, lab_pillar  # noqa: E402
from lab.load_balancer import with_pools  # noqa: E402
from tests.support.netns import Topology, kill_pids  # noqa: E402

PY = sys.executable
ADDR = {n: f"198.18.0.{o}" for n, o in NODES.items()}
PLAIN_NODES = {"e1": 11, "e2": 12, "e3": 13}
PRIO = {"e1": 150, "e2": 140, "e3": 130}

# hand-written, as an operator would: keepalived defaults, VRRPv2, advert_int 1; e1 MASTER, 150/140/130
PLAIN_GLOBAL = """\
global_defs {{
    router_id {node}
}}
"""
PLAIN_INSTANCE = """\
vrrp_instance {name} {{
    state {state}
    interface eth0
    virtual_router_id {vrid}
    priority {prio}
    advert_int {advert}
    {version}
    authentication {{
        auth_type PASS
        auth_pass s3cret
    }}
    virtual_ipaddress {{
        {address}/24
    }}
}}
"""


def plain_instance(node, name, vrid, address, advert, version):
    """One hand-written vrrp_instance of ``node`` (VI_1 for the VIP; block lb adds one per new address)."""
    return PLAIN_INSTANCE.format(name=name, state="MASTER" if node == "e1" else "BACKUP", vrid=vrid,
                                 prio=PRIO[node], advert=advert, version="" if version == 2 else f"version {version}",
                                 address=address)


def wait_for(predicate, timeout, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception:  # pylint: disable=broad-except
            value = None
        if value:
            return value
        time.sleep(interval)
    return None


def addresses(ns):
    out = subprocess.run(["ip", "-n", ns, "-j", "addr", "show", "dev", "eth0"], capture_output=True, text=True,
                         check=False).stdout
    return [a["local"] for link in json.loads(out or "[]") for a in link.get("addr_info", [])]


class Prober:
    """bench/prober.py in a client namespace; ``stop()`` returns its summary."""

    def __init__(self, spawn, stop, out, rate=20, timeout=2.0):
        self.out = str(out)
        if os.path.exists(self.out):
            os.unlink(self.out)
        self.proc = spawn(PY, str(REPO / "bench" / "prober.py"), f"http://{VIP}/", str(rate), str(timeout), "3600",
                          self.out)
        self._stop = stop

    def stop(self):
        self._stop(self.proc)

        def summary():
            return json.loads(pathlib.Path(self.out).read_text())

        data = wait_for(lambda: summary().get("final") and summary(), 10, 0.1)
        if not data:
            # killed before its final summary: the last snapshot (at most a second old), marked as such
            data = wait_for(summary, 1, 0.1)
            if not data:
                raise RuntimeError(f"the prober wrote no summary ({self.out})")
            data["partial"] = True
        return data


class PlainEdge:
    kind = "plain"

    def __init__(self, directory, prefix, version=2, advert=1, label="plain keepalived"):
        self.dir = pathlib.Path(directory)
        self.prefix = prefix
        self.version = version
        self.advert = advert
        self.label = label
        self.topo = None
        self.keepalived = {}
        self.owner = "e1"
        self.backups = ["e2", "e3"]

    def up(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        self.topo = Topology(self.prefix)
        try:
            for node, octet in PLAIN_NODES.items():
                self.topo.add_host(node, octet)
            self.topo.add_host("client", 50)
            for node in PLAIN_NODES:
                self.topo.spawn(node, PY, str(REPO / "lab" / "ingress_standin.py"), node,
                                str(self.dir / f"{node}-unhealthy"), log=self.dir / f"{node}-ingress.log")
                (self.dir / f"{node}.conf").write_text(PLAIN_GLOBAL.format(node=node) + plain_instance(
                    node, "VI_1", 51, "198.18.0.100", self.advert, self.version))
                self.start(node)
            if not wait_for(lambda: self.holders() == ["e1"], 30, 0.2):
                raise RuntimeError(f"plain: VIP not on e1 alone: {self.holders()}")
        except BaseException:
            self.down()
            raise
        return self

    def down(self):
        if self.topo:
            self.topo.close()
            self.topo = None

    def ns(self, host):
        return self.topo.ns(host)

    def start(self, node):
        for name in ("main", "vrrp"):
            path = self.dir / f"{node}-{name}.pid"
            if path.exists():
                path.unlink()
        self.keepalived[node] = self.topo.spawn(
            node, "keepalived", "-n", "-l", "-D", "-P", "-f", str(self.dir / f"{node}.conf"),
            "-p", str(self.dir / f"{node}-main.pid"), "-r", str(self.dir / f"{node}-vrrp.pid"),
            log=self.dir / f"{node}-keepalived.log")

    def holders(self, vip=VIP):
        return sorted(n for n in PLAIN_NODES if vip in addresses(self.ns(n)))

    def holders_all(self, vip=VIP):
        return self.holders(vip)

    def stop_owner(self, how):
        proc = self.keepalived[self.owner]
        if how == "graceful":
            os.kill(proc.pid, signal.SIGTERM)
        else:
            try:
                vrrp = int((self.dir / f"{self.owner}-vrrp.pid").read_text())
                os.kill(vrrp, signal.SIGKILL)
            except (OSError, ValueError):
                pass
            os.kill(proc.pid, signal.SIGKILL)

    def restore(self, how):
        """Back to e1 owning the VIP. After a SIGKILL the stale VIP stays on e1; an operator has to remove it
        (nothing in the plain setup does): the harness does it here, outside the measured window."""
        proc = self.keepalived.pop(self.owner)
        self.topo.stop(proc, timeout=10)
        if VIP in addresses(self.ns(self.owner)):
            self.topo.run(self.owner, "ip", "addr", "del", f"{VIP}/24", "dev", "eth0", check=False)
        self.start(self.owner)
        if not wait_for(lambda: self.holders() == ["e1"], 30, 0.1):
            raise RuntimeError(f"plain: VIP did not return to e1: {self.holders()}")
        time.sleep(1.0)

    def client_spawn(self, *cmd):
        """A process in the client namespace (stopped by client_stop, or by down())."""
        return self.topo.spawn("client", *cmd)

    def client_stop(self, proc):
        self.topo.stop(proc, timeout=10)

    def prober(self, out, rate=20):
        return Prober(self.client_spawn, self.client_stop, out, rate)

    def add_instance(self, name, vrid, address):
        """A vrrp_instance for a new address in every node's keepalived.conf (the same style as VI_1: e1 MASTER,
        priorities 150/140/130), then SIGHUP to every keepalived: what an operator does by hand."""
        for node in PLAIN_NODES:
            path = self.dir / f"{node}.conf"
            path.write_text(path.read_text() + plain_instance(node, name, vrid, address, self.advert, self.version))
            os.kill(self.keepalived[node].pid, signal.SIGHUP)

    def remove_instance(self, name):
        """The instance ``name`` out of every node's keepalived.conf again, SIGHUP."""
        for node in PLAIN_NODES:
            path = self.dir / f"{node}.conf"
            text = path.read_text()
            start = text.find(f"vrrp_instance {name} {{\n")
            if start >= 0:
                end = text.index("\n}\n", start) + 3
                path.write_text(text[:start] + text[end:])
            os.kill(self.keepalived[node].pid, signal.SIGHUP)

    def reload_all(self, extra_vip):
        """Edit keepalived.conf on every node (vrrp_garp_master_refresh 60 in global_defs, or not) and reload
        (SIGHUP), as by hand."""
        for node in PLAIN_NODES:
            path = self.dir / f"{node}.conf"
            text = path.read_text()
            line = "    vrrp_garp_master_refresh 60\n"
            if extra_vip and line not in text:
                text = text.replace(f"    router_id {node}\n", f"    router_id {node}\n" + line)
            elif not extra_vip:
                text = text.replace(line, "")
            path.write_text(text)
            os.kill(self.keepalived[node].pid, signal.SIGHUP)
        self.pending = extra_vip

    def changed(self, node, extra):
        """Whether keepalived has reloaded (the plain setup: its log says so after each SIGHUP)."""
        return True

    def transitions(self):
        """keepalived's own log lines for state changes, per node: (time seen in the log file order, line)."""
        out = {}
        for node in PLAIN_NODES:
            path = self.dir / f"{node}-keepalived.log"
            text = path.read_text(errors="replace") if path.exists() else ""
            out[node] = [line for line in text.splitlines() if "Entering" in line and "STATE" in line]
        return out


# --------------------------------------------------------------------------- the project's lab


VARIANTS = {
    # the model's defaults, which the shipped example pillar spells out: VRRPv2, advert_int 1, PASS auth
    "default": {"vrrp_version": 2, "advert_int": 1, "authentication": {"auth_type": "PASS", "auth_pass": "s3cret"}},
    # the lab pillar's own setting
    "lab": {"vrrp_version": 3, "advert_int": 1},
    # the fast option the model allows (below 1 s needs VRRPv3)
    "fast": {"vrrp_version": 3, "advert_int": 0.1},
}


class ProjectEdge:
    kind = "project"

    def __init__(self, directory, prefix, events_file, kube_log, edges=3):
        self.dir = pathlib.Path(directory)
        self.prefix = prefix
        self.events_file = pathlib.Path(events_file)
        self.kube_log = pathlib.Path(kube_log)
        self.lab = Lab(self.dir, prefix, edges=edges)
        self.nodes = self.lab.nodes
        self.addr = {n: f"198.18.0.{o}" for n, o in self.nodes.items()}
        self.label = "default"
        # lab_pillar gives priorities in node-name order (150, 140, 130, 129, ...): edge1 owns the VIP, then
        # edge10 (with 10 nodes or more), edge11, ...
        ranked = sorted(self.nodes)
        self.owner = ranked[0]
        self.backups = ranked[1:]
        self.next_owner = ranked[1]
        # the nodes holders() looks at: the owner and the next two by priority. A failover moves the VIP among
        # them; looking at every node (one `ip addr` each) would make the polling, and so the timings, coarser
        # with every node added. holders_all() looks at every node (checked between repetitions).
        self.watched = ranked[:3]
        self.variant = None
        self.watch = 0
        self.extra_vip = False
        self.clients = 0  # processes started in the client namespace (their pid file names)
        self.pools = False  # the lab's LoadBalancer address pools (lab/load_balancer.py) in the pillar

    def up(self, log=None):
        os.environ["EDGE_HA_KUBE_REQUEST_LOG"] = str(self.kube_log)
        try:
            self.lab.up(log=log or (lambda m: None))
            self.shipped_schedule()
            self.start_listener()
        except BaseException:
            self.down()
            raise
        return self

    def down(self):
        self.lab.down(quiet=True)

    def shipped_schedule(self):
        """The lab schedules the safety-net reconcile every 10 s; the shipped master config every 60 s. Use the
        shipped interval (restarting the master), so that the event path, not the schedule, is what is measured."""
        import yaml  # pylint: disable=import-outside-toplevel

        path = self.lab.etc / "master"
        conf = yaml.safe_load(path.read_text())
        shipped = yaml.safe_load((REPO / "reactor" / "edge-ha.master.conf").read_text())["schedule"]
        conf["schedule"]["edge_ha_reconcile"]["seconds"] = shipped["edge_ha_reconcile"]["seconds"]
        path.write_text(yaml.safe_dump(conf))
        self.lab.stop_master()
        self.lab.start_master()
        if not wait_for(lambda: self.lab._pinged(), 90, 1):
            raise RuntimeError("minions did not reconnect after the master restart")

    def start_listener(self):
        self.lab._spawn("master", "bench-bus", PY, str(REPO / "bench" / "bus_listener.py"),
                        str(self.lab.etc / "master"), str(self.events_file))
        if not wait_for(lambda: "bench/listener/ready" in self.events_file.read_text(), 30, 0.2):
            raise RuntimeError("the event bus listener did not start")

    def ns(self, host):
        return self.lab.ns(host)

    def pillar(self, variant=None, extra_vip=None):
        variant = variant or self.variant
        extra_vip = self.extra_vip if extra_vip is None else extra_vip
        data = lab_pillar(self.lab.dir / "kubeconfig", self.nodes)
        inst = data["vrrp_instances"]["VI_INGRESS"]
        inst.update(VARIANTS[variant])
        if extra_vip:  # the planned change: a global_defs setting that every node's keepalived.conf has
            data["global_defs"] = {"vrrp_garp_master_refresh": 60}
        return with_pools(data) if self.pools else data

    def set_variant(self, variant, watch=None):
        """Pillar with this variant's VRRP settings, applied by a reconcile (state.apply where the config
        differs); the vrrp beacon's ``watch`` set in the minions' config (minions restarted if it changes)."""
        if watch is not None and watch != self.watch:
            self.set_watch(watch)
        self.variant = variant
        self.extra_vip = False
        # a clean switch (not measured): changing the VRRP version under a running cluster is not what is
        # benchmarked here, so every keepalived is stopped, the new pillar applied, and they start fresh
        nodes = ",".join(self.nodes)
        self.quiet()
        self.lab.salt(nodes, "keepalived.stop", "--list", timeout=60)
        self.lab.set_pillar(self.pillar())
        self.lab.salt(nodes, "saltutil.refresh_pillar", "wait=True", "--list", timeout=60)
        applied = self.lab.salt(nodes, "state.apply", "edge", "--list", timeout=300)
        for node, states in applied.items():
            if not isinstance(states, dict) or not all(isinstance(v, dict) and v.get("result") for v in states.values()):
                raise RuntimeError(f"{node}: state.apply edge failed: {json.dumps(states)[:2000]}")
        want = VARIANTS[variant]
        for node in self.nodes:
            text = (self.lab.node_dir(node) / "keepalived.conf").read_text()
            if f"advert_int {want['advert_int']}\n" not in text or f"version {want['vrrp_version']}\n" not in text:
                raise RuntimeError(f"{node}: keepalived.conf was not re-rendered for variant {variant}")
        self.baseline()

    def apply_pillar(self):
        """Write the pillar, let the minions refresh their in-memory pillar (keepalived.plan, which the
        reconcile uses to find stale configs, renders from it), then reconcile. Returns the reconcile's result."""
        self.lab.set_pillar(self.pillar())
        self.lab.salt(",".join(self.nodes), "saltutil.refresh_pillar", "wait=True", "--list", timeout=60)
        self.lab.wait_reconcile_idle(300)
        return self.lab.run("edge.reconcile", timeout=300)

    def set_watch(self, watch):
        import yaml  # pylint: disable=import-outside-toplevel

        for node in self.nodes:
            path = self.lab.node_dir(node) / "etc" / "minion"
            conf = yaml.safe_load(path.read_text())
            conf["beacons"]["vrrp"] = [c for c in conf["beacons"]["vrrp"] if "watch" not in c]
            if watch:
                conf["beacons"]["vrrp"].append({"watch": watch})
            path.write_text(yaml.safe_dump(conf))
            self.lab._stop(node, "salt-minion")
            self.lab.start_minion(node)
        self.watch = watch
        if not wait_for(lambda: self.lab._pinged(), 90, 1):
            raise RuntimeError("minions did not come back after the beacon change")

    def holders(self):
        """The watched nodes (the owner and the next two by priority) that have the VIP."""
        return sorted(n for n in self.watched if VIP in addresses(self.ns(n)))

    def holders_all(self, vip=VIP):
        return sorted(n for n in self.nodes if vip in addresses(self.ns(n)))

    def expected_ips(self, without=()):
        return sorted([VIP, USER_IP] + [a for n, a in self.addr.items() if n not in without])

    def changed(self, node, extra):
        """Whether the node's keepalived.conf has the planned change (or not)."""
        text = (self.lab.node_dir(node) / "keepalived.conf").read_text()
        return ("vrrp_garp_master_refresh 60" in text) == extra

    def baseline(self, timeout=60):
        lab = self.lab
        stopped = [n for n in self.nodes
                   if not lab.keepalived_pid(n) or not os.path.exists(f"/proc/{lab.keepalived_pid(n)}")]
        for node in stopped:
            self.start_keepalived(node)
        if not wait_for(lambda: self.holders() == [self.owner], timeout, 0.1):
            raise RuntimeError(f"project: VIP not on {self.owner} alone: {self.holders()}")
        if self.watched != sorted(self.nodes) and not wait_for(lambda: self.holders_all() == [self.owner], timeout, 0.2):
            raise RuntimeError(f"project: VIP not on {self.owner} alone: {self.holders_all()}")
        if not wait_for(lambda: lab.external_ips() == self.expected_ips(), timeout, 0.2):
            lab.wait_reconcile_idle(300)
            lab.run("edge.reconcile")
            if not wait_for(lambda: lab.external_ips() == self.expected_ips(), 30, 0.2):
                raise RuntimeError(f"project: Service not right: {lab.external_ips()}")
        self.quiet()

    def start_keepalived(self, node):
        """Start the node's keepalived the way keepalived.start does in process mode (same command line and
        pid files), directly: the restart between repetitions is not measured, and this saves a Salt round
        trip and the module's settle time. The pid files are in the lab directory: lab.down() stops it."""
        import yaml  # pylint: disable=import-outside-toplevel

        conf = yaml.safe_load((self.lab.node_dir(node) / "etc" / "minion").read_text())["keepalived"]
        run = pathlib.Path(conf["pid_dir"])
        for name in ("keepalived.pid", "keepalived_vrrp.pid", "keepalived_checkers.pid"):
            (run / name).unlink(missing_ok=True)
        binary = conf.get("binary", "keepalived")
        with open(pathlib.Path(conf["state_dir"]) / "keepalived.log", "ab") as out:
            subprocess.Popen(  # pylint: disable=consider-using-with
                ["ip", "netns", "exec", self.ns(node), binary, "-n", "-l", "-D", "-f", conf["config_file"],
                 "-p", str(run / "keepalived.pid"), "-r", str(run / "keepalived_vrrp.pid"),
                 "-c", str(run / "keepalived_checkers.pid")],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        if not wait_for(lambda: self.lab.keepalived_pid(node), 10, 0.05):
            raise RuntimeError(f"{node}: keepalived did not start")

    def quiet(self, seconds=1.5, timeout=30):
        """Wait until no reconcile runs and none has been recorded for ``seconds`` (late triggers of the last
        restore have run), so the next measurement starts from a quiet loop."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.lab.wait_reconcile_idle(300)
            log = self.lab.reconcile_log()
            if not log or time.time() - log[-1]["time"] >= seconds:
                return
            time.sleep(0.5)

    def stop_owner(self, how):
        self.lab.kill_keepalived(self.owner, signal.SIGTERM if how == "graceful" else signal.SIGKILL)

    def restore(self, how):  # pylint: disable=unused-argument
        self.baseline()

    def client_spawn(self, *cmd):
        """A process in the client namespace, its pid file in the lab (stopped by client_stop, or by down())."""
        self.clients += 1
        name = f"bench-client{self.clients}"
        proc = self.lab._spawn("client", name, *cmd)
        proc.bench_name = name
        return proc

    def client_stop(self, proc):
        kill_pids([proc.pid], timeout=10)
        proc.wait(timeout=10)
        pidfile = self.lab.dir / "pids" / f"client-{proc.bench_name}.pid"
        pidfile.unlink(missing_ok=True)

    def prober(self, out, rate=20):
        return Prober(self.client_spawn, self.client_stop, out, rate)

    def transitions_log(self, node):
        path = self.lab.state_dir(node) / "transitions.log"
        out = []
        for line in (path.read_text() if path.exists() else "").splitlines():
            parts = line.split()
            if len(parts) >= 4:
                try:
                    out.append((float(parts[0]), parts[1], parts[2]))
                except ValueError:
                    pass
        return out

    def keepalived_log_transitions(self):
        out = {}
        for node in self.nodes:
            path = self.lab.state_dir(node) / "keepalived.log"
            text = path.read_text(errors="replace") if path.exists() else ""
            out[node] = [line for line in text.splitlines() if "Entering" in line and "STATE" in line]
        return out

    def events(self):
        out = []
        for line in self.events_file.read_text().splitlines() if self.events_file.exists() else []:
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def kube_requests(self):
        out = []
        for line in self.kube_log.read_text().splitlines() if self.kube_log.exists() else []:
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def minion_pids(self):
        pids = {}
        for node in self.nodes:
            try:
                pids[node] = int((self.lab.dir / "pids" / f"{node}-salt-minion.pid").read_text())
            except (OSError, ValueError):
                pass
        return pids
