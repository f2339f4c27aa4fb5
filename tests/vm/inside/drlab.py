"""The IPVS direct-routing lab that runs inside the VM (tests/vm/inside/test_ipvs_dr.py).

Network namespaces on one bridge (``tests/support/netns.py``, 198.18.0.0/24):
two edge nodes as IPVS directors (keepalived, config rendered by the project's
renderer from an ``edge_ha`` pillar: one VRRP instance, one ``lb_kind: DR``
virtual server, optionally ``global_defs: lvs_sync_daemon``), three real
servers (a line echo server each, the VIP on ``lo`` with ``arp_ignore`` /
``arp_announce`` as LVS-DR real servers need) and a client holding long-lived
TCP connections through the VIP.

Code that has to run *in* a namespace (the client's sockets, the echo
servers, the project's IPVS netlink client, sysctls) runs in a thread that
joined the namespace (``setns``): a socket keeps the namespace it was created
in, so the test process needs no helper process per namespace (a Python
start-up costs seconds under TCG). Namespaces are made with ``ip -batch``
(one exec per host): the set-up of the whole lab takes seconds, not the ~40 s
that one ``ip`` exec per step took under TCG.
"""

import ctypes
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
CLONE_NEWNET = 0x40000000
VIP = "198.18.0.100"
PORT = 8080
DIRECTORS = {"edge1": 11, "edge2": 12}
REAL_SERVERS = {"real1": 21, "real2": 22, "real3": 23}
CLIENT_OCTET = 50
STATE_ROOT = "/run/edge-ha-dr"  # root-owned: keepalived's script security accepts the notify script there
if str(REPO) not in sys.path:  # tests.support (namespaces, module loader)
    sys.path.insert(0, str(REPO))


# ------------------------------------------------------------------ namespaces

_libc = ctypes.CDLL(None, use_errno=True)


def in_netns(ns, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` in a thread that joined network namespace ``ns``; its return value (or exception)."""
    out = {}

    def run():
        try:
            fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({ns}): {os.strerror(err)}")
            finally:
                os.close(fd)
            out["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # pylint: disable=broad-except
            out["error"] = exc

    thread = threading.Thread(target=run, name=f"netns-{ns}")
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def write_sysctls(ns, values):
    """Write ``{dotted.name: value}`` under /proc/sys from inside ``ns`` (net.* sysctls are per namespace)."""
    def write():
        for key, value in values.items():
            Path("/proc/sys", *key.split(".")).write_text(f"{value}\n")
    in_netns(ns, write)


# ------------------------------------------------------------------ rendering (the project's code)

def pillar(sync):
    """The ``edge_ha`` pillar of the lab: the real servers are nodes of the
    pillar too (no VRRP instance), so a drain of one of them renders its real
    server with weight 0, as for any edge node."""
    nodes = {name: {"address": f"198.18.0.{octet}", "interface": "eth0"}
             for name, octet in {**DIRECTORS, **REAL_SERVERS}.items()}
    data = {
        "nodes": nodes,
        "vrrp_instances": {"VI_DR": {"virtual_router_id": 51, "unicast": True, "nodes": sorted(DIRECTORS),
                                     "virtual_ipaddress": [f"{VIP}/32"]}},
        "virtual_servers": {"echo": {"address": VIP, "port": PORT, "protocol": "TCP", "lb_algo": "rr",
                                     "lb_kind": "DR",
                                     "real_servers": [{"address": f"198.18.0.{o}"} for o in REAL_SERVERS.values()]}},
    }
    if sync:
        data["global_defs"] = {"lvs_sync_daemon": {"instance": "VI_DR"}}
    return data


def _project():
    from tests.support.modload import load  # pylint: disable=import-outside-toplevel

    from edge_ha_core import model  # pylint: disable=import-outside-toplevel
    return model, load("_modules/keepalived.py")


def model_of(data):
    model, _ = _project()
    return model.normalize(data)


def render(data, node, drained=()):
    """keepalived.conf of ``node``, rendered by ``_modules/keepalived.py`` from the normalised pillar."""
    model, keepalived = _project()
    state_dir = f"{STATE_ROOT}/{node}"
    os.makedirs(state_dir, mode=0o755, exist_ok=True)
    notify = f"{state_dir}/edge-ha-notify"
    keepalived.write_atomic(notify, keepalived.NOTIFY_SCRIPT, mode=0o755)
    view = model.view_for_node(model.normalize(data), node, drained=drained)
    return keepalived.render_config(view, {"state_dir": state_dir, "notify_script": notify})


# ------------------------------------------------------------------ keepalived on a director

class Director:
    """keepalived (VRRP and checkers) in a director's namespace with its own
    config, pid files and log; stopped by its pid (the whole process group
    for a crash: keepalived runs in a session of its own)."""

    def __init__(self, topo, node, workdir):
        self.topo, self.node = topo, node
        self.ns = topo.ns(node)
        self.dir = Path(workdir) / node
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "keepalived.conf"
        self.log = self.dir / "keepalived.log"
        self.proc = None

    def write(self, text):
        self.conf.write_text(text)
        check = subprocess.run(["ip", "netns", "exec", self.ns, "keepalived", "--config-test", "-f", str(self.conf)],
                               capture_output=True, text=True, check=False)
        assert check.returncode == 0, f"{self.node}: keepalived --config-test failed:\n{check.stderr}\n{text}"

    def start(self, text):
        self.write(text)
        self.proc = self.topo.spawn(
            self.node, "keepalived", "--dont-fork", "--log-console", "--log-detail", "--no-syslog",
            "--dont-respawn", "-f", str(self.conf), "-p", str(self.dir / "keepalived.pid"),
            "-c", str(self.dir / "checkers.pid"), "-r", str(self.dir / "vrrp.pid"), log=self.log)
        return self

    def reload(self, text):
        """What a staged reload does on the node: the new file, then SIGHUP (VRRP state kept)."""
        self.write(text)
        self.proc.send_signal(signal.SIGHUP)

    def crash(self):
        """SIGKILL to keepalived's whole process group at once (as the lab's kill_keepalived)."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        if self.proc in self.topo.procs:
            self.topo.procs.remove(self.proc)

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def log_text(self):
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.topo.stop(self.proc, timeout=20)
        try:  # children left behind (normally gone with the parent)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ------------------------------------------------------------------ the client

class Clients:
    """Long-lived TCP connections from the client namespace to VIP:PORT."""

    def __init__(self, ns):
        self.ns = ns
        self.socks = []
        self.server = {}  # sock -> name of the real server that answered first

    def open(self, count, timeout=10.0):
        def connect():
            out = []
            for _ in range(count):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.settimeout(timeout)
                s.connect((VIP, PORT))
                out.append(s)
            return out
        new = in_netns(self.ns, connect)
        self.socks += new
        return new

    @staticmethod
    def exchange(socks, tag, timeout):
        """Send one line on each socket at once, collect the answers until ``timeout``:
        ``{sock: server name or None}`` (None: no answer, reset or closed)."""
        sel = selectors.DefaultSelector()
        bufs, result = {}, {}
        for i, s in enumerate(socks):
            try:
                s.setblocking(False)
                s.send(f"{tag} {i}\n".encode())
                sel.register(s, selectors.EVENT_READ)
                bufs[s] = b""
            except OSError:
                result[s] = None
        deadline = time.monotonic() + timeout
        while bufs and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=max(0.0, deadline - time.monotonic())):
                s = key.fileobj
                try:
                    data = s.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    result[s] = None
                else:
                    bufs[s] += data
                    if b"\n" not in bufs[s]:
                        continue
                    line = bufs[s].split(b"\n", 1)[0].decode()
                    name, _, echoed = line.partition(" ")
                    result[s] = name if echoed == f"{tag} {socks.index(s)}" else None
                sel.unregister(s)
                del bufs[s]
        for s in bufs:
            result[s] = None
        sel.close()
        return result

    def close(self, socks=None):
        for s in list(socks if socks is not None else self.socks):
            try:
                s.close()
            except OSError:
                pass
            if s in self.socks:
                self.socks.remove(s)


# ------------------------------------------------------------------ the echo server

class EchoServer:
    """A line echo server on 0.0.0.0:``port`` in namespace ``ns`` (a thread):
    each line comes back as ``NAME line``."""

    def __init__(self, ns, name, port=PORT):
        self.ns, self.name, self.port = ns, name, port
        self.stopping = threading.Event()
        self.ready = threading.Event()
        self.error = None
        self.thread = threading.Thread(target=self._run, name=f"echo-{name}", daemon=True)
        self.thread.start()
        if not self.ready.wait(30) or self.error:
            raise RuntimeError(f"echo server {name} did not start: {self.error}")

    def _run(self):
        try:
            fd = os.open(f"/run/netns/{self.ns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns({self.ns})")
            finally:
                os.close(fd)
            srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            srv.bind(("0.0.0.0", self.port))
            srv.listen(512)
            srv.setblocking(False)
        except BaseException as exc:  # pylint: disable=broad-except
            self.error = exc
            self.ready.set()
            return
        self.ready.set()
        sel = selectors.DefaultSelector()
        sel.register(srv, selectors.EVENT_READ)
        bufs = {}
        while not self.stopping.is_set():
            for key, _ in sel.select(timeout=0.2):
                if key.fileobj is srv:
                    try:
                        conn, _ = srv.accept()
                    except BlockingIOError:
                        continue
                    conn.settimeout(5)
                    sel.register(conn, selectors.EVENT_READ)
                    bufs[conn] = b""
                    continue
                conn = key.fileobj
                try:
                    data = conn.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(conn)
                    conn.close()
                    del bufs[conn]
                    continue
                buf = bufs[conn] + data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    try:
                        conn.sendall(self.name.encode() + b" " + line + b"\n")
                    except OSError:
                        break
                bufs[conn] = buf
        for conn in bufs:
            conn.close()
        srv.close()
        sel.close()

    def stop(self):
        self.stopping.set()
        self.thread.join(10)


# ------------------------------------------------------------------ namespaces on one bridge

class Net:
    """A switch namespace with a bridge and hosts on veth pairs (198.18.0.0/24,
    nothing routed from the VM's root namespace). Processes started by
    ``spawn`` are stopped by pid; ``remove``/``close`` also kill whatever still
    runs in a namespace (``ip netns pids``) and delete it."""

    def __init__(self, prefix="ehdr"):
        from tests.support.netns import delete_namespace, list_namespaces  # pylint: disable=import-outside-toplevel

        self.prefix = prefix
        self.switch = f"{prefix}-sw"
        self.hosts = {}  # name -> namespace
        self.procs = []
        self._veth = 0
        for ns in list_namespaces():  # left by a crashed run
            if ns.startswith(prefix + "-"):
                delete_namespace(ns)
        self._batch(None, f"netns add {self.switch}")
        self.hosts["sw"] = self.switch
        try:
            self._batch(self.switch, "link set lo up", "link add br0 type bridge", "link set br0 up")
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _batch(ns, *commands):
        argv = ["ip"] + (["-n", ns] if ns else []) + ["-batch", "-"]
        proc = subprocess.run(argv, input="\n".join(commands) + "\n", capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {proc.stderr}\n" + "\n".join(commands))

    def ns(self, name):
        return self.hosts[name]

    def add(self, name, octet):
        ns = f"{self.prefix}-{name}"
        self._veth += 1  # a fresh pair of names: a deleted namespace's veth may still be going away
        a, b = f"{self.prefix}{self._veth}a", f"{self.prefix}{self._veth}b"
        self._batch(None, f"netns add {ns}")
        self.hosts[name] = ns  # registered first: close() deletes it even if the rest fails
        self._batch(None, f"link add {a} type veth peer name {b}", f"link set {a} netns {ns}",
                    f"link set {b} netns {self.switch}")
        self._batch(self.switch, f"link set {b} master br0", f"link set {b} up")
        self._batch(ns, "link set lo up", f"link set {a} name eth0", f"addr add 198.18.0.{octet}/24 dev eth0",
                    "link set eth0 up")
        return ns

    def ip(self, name, *commands):
        """``ip -n NS -batch`` of ``commands`` (strings) in host ``name``."""
        self._batch(self.ns(name), *commands)

    def run(self, name, *cmd, check=True):
        proc = subprocess.run(["ip", "netns", "exec", self.ns(name), *cmd], capture_output=True, text=True, check=False)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{name}: {' '.join(cmd)} failed: {proc.stderr}")
        return proc

    def addresses(self, name, dev="eth0"):
        out = subprocess.run(["ip", "-n", self.ns(name), "-j", "addr", "show", "dev", dev],
                             capture_output=True, text=True, check=True).stdout
        return [a["local"] for link in json.loads(out or "[]") for a in link.get("addr_info", [])]

    def spawn(self, name, *cmd, log=None):
        with open(log or os.devnull, "ab") as out:
            proc = subprocess.Popen(["ip", "netns", "exec", self.ns(name), *cmd],  # pylint: disable=consider-using-with
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop(self, proc, timeout=5.0):
        from tests.support.netns import kill_pids  # pylint: disable=import-outside-toplevel

        kill_pids([proc.pid], timeout)
        proc.wait(timeout=timeout)
        if proc in self.procs:
            self.procs.remove(proc)

    def remove(self, name):
        from tests.support.netns import delete_namespace  # pylint: disable=import-outside-toplevel

        ns = self.hosts.pop(name, None)
        if ns:
            for proc in [p for p in self.procs if p.args[3] == ns]:
                try:
                    self.stop(proc)
                except Exception:  # pylint: disable=broad-except
                    pass
            delete_namespace(ns)

    def close(self):
        for name in [n for n in self.hosts if n != "sw"] + ["sw"]:
            self.remove(name)
