"""
Network namespaces for tests and the lab: a switch namespace holding a bridge,
hosts attached to it by veth pairs, addresses from 198.18.0.0/15 only. Nothing
is routed from the root namespace. Everything started through ``spawn`` is
stopped by pid; ``close`` kills whatever still runs inside the namespaces (by
the pids ``ip netns pids`` lists) and deletes them, also after a failure.
"""

import os
import signal
import subprocess
import time

NET = "198.18.0"


def sh(*cmd, check=True, ns=None, capture=True, timeout=60, env=None):
    if ns:
        cmd = ("ip", "netns", "exec", ns) + tuple(cmd)
    proc = subprocess.run(cmd, capture_output=capture, text=True, timeout=timeout, check=False, env=env)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
    return proc


def list_namespaces():
    out = sh("ip", "netns", "list").stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def ns_pids(ns):
    proc = sh("ip", "netns", "pids", ns, check=False)
    return [int(p) for p in proc.stdout.split()] if proc.returncode == 0 else []


def kill_pids(pids, timeout=5.0):
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    left = list(pids)
    while left and time.monotonic() < deadline:
        left = [p for p in left if alive(p)]
        time.sleep(0.05)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def alive(pid):
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def delete_namespace(ns):
    kill_pids(ns_pids(ns))
    sh("ip", "netns", "delete", ns, check=False)


class Topology:
    """One switch, N hosts. ``prefix`` keeps concurrent runs apart."""

    def __init__(self, prefix):
        if len(prefix) > 8:
            raise ValueError("prefix must be at most 8 characters (interface name limits)")
        self.prefix = prefix
        self.switch = f"{prefix}-sw"
        self.hosts = {}  # name -> (namespace, address)
        self.procs = []
        self._created = []
        self.close_stale()
        try:
            self._add_ns(self.switch)
            sh("ip", "link", "add", "br0", "type", "bridge", ns=self.switch)
            sh("ip", "link", "set", "br0", "up", ns=self.switch)
        except BaseException:
            self.close()
            raise

    def close_stale(self):
        """Remove namespaces left by a crashed run with the same prefix."""
        for ns in list_namespaces():
            if ns.startswith(self.prefix + "-"):
                delete_namespace(ns)

    def _add_ns(self, ns):
        sh("ip", "netns", "add", ns)
        self._created.append(ns)
        sh("ip", "link", "set", "lo", "up", ns=ns)

    def ns(self, host):
        return self.hosts[host][0]

    def address(self, host):
        return self.hosts[host][1]

    def add_host(self, name, octet):
        ns = f"{self.prefix}-{name}"
        self._add_ns(ns)  # registered first, so close() deletes it even if the rest fails
        idx = len(self.hosts)
        a, b = f"{self.prefix}{idx}a", f"{self.prefix}{idx}b"
        sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
        sh("ip", "link", "set", a, "netns", ns)
        sh("ip", "link", "set", b, "netns", self.switch)
        sh("ip", "link", "set", a, "name", "eth0", ns=ns)
        sh("ip", "link", "set", b, "master", "br0", ns=self.switch)
        sh("ip", "link", "set", b, "up", ns=self.switch)
        address = f"{NET}.{octet}"
        sh("ip", "addr", "add", f"{address}/24", "dev", "eth0", ns=ns)
        sh("ip", "link", "set", "eth0", "up", ns=ns)
        self.hosts[name] = (ns, address)
        return ns

    def run(self, host, *cmd, **kw):
        return sh(*cmd, ns=self.ns(host), **kw)

    def spawn(self, host, *cmd, log=None, env=None):
        """Start a long-running process inside a host; stopped by pid in stop()/close()."""
        out = open(log, "ab") if log else subprocess.DEVNULL  # pylint: disable=consider-using-with
        proc = subprocess.Popen(  # pylint: disable=consider-using-with
            ("ip", "netns", "exec", self.ns(host)) + tuple(cmd),
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,
        )
        if log:
            out.close()
        self.procs.append(proc)
        return proc

    def stop(self, proc, timeout=5.0):
        kill_pids([proc.pid], timeout)
        proc.wait(timeout=timeout)
        if proc in self.procs:
            self.procs.remove(proc)

    def addresses(self, host, dev="eth0"):
        import json  # pylint: disable=import-outside-toplevel

        out = sh("ip", "-j", "addr", "show", "dev", dev, ns=self.ns(host)).stdout
        return [a["local"] for link in json.loads(out or "[]") for a in link.get("addr_info", [])]

    def holders(self, vip):
        return sorted(h for h in self.hosts if vip in self.addresses(h))

    def block_vrrp(self, host):
        """Drop VRRP (IP protocol 112) on a host's interface (split-brain tests)."""
        sh("ip", "link", "set", "eth0", "down", ns=self.ns(host))

    def close(self):
        for proc in list(self.procs):
            try:
                self.stop(proc)
            except Exception:  # pylint: disable=broad-except
                pass
        for ns in reversed(self._created):
            delete_namespace(ns)
        self._created = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
