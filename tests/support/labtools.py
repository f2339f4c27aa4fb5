"""Constants, a poller and the operator's salt-run for the lab tests."""

import os
import subprocess
import time

from lab.lab import BIN, NODES, USER_IP, VIP

ADDR = {n: f"198.18.0.{o}" for n, o in NODES.items()}
ALL_IPS = sorted([VIP, USER_IP] + list(ADDR.values()))


def wait_for(predicate, timeout, interval=0.1):
    """Poll until predicate() is truthy; seconds waited, or None on timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        value = predicate()
        if value:
            return time.monotonic() - start
        time.sleep(interval)
    return None


def salt_run(lab, *args, timeout=300, env=None):
    """``salt-run`` as an operator runs it (default output): (exit code, stdout, stderr). ``env``: extra variables."""
    proc = subprocess.run(["ip", "netns", "exec", lab.ns("master"), str(BIN / "salt-run"), "-c", str(lab.etc), *args],
                          capture_output=True, text=True, timeout=timeout, check=False,
                          env=dict(os.environ, **(env or {})))
    return proc.returncode, proc.stdout, proc.stderr


class VipMonitor:
    """
    Every add and delete of ``vip`` on the nodes' eth0, as the kernel reports
    them (``ip -ts monitor address`` in each namespace, one clock), to tell
    whether the VIP was ever without a holder. Sampling ``ip addr`` node by
    node cannot: a handover between two reads looks like a gap.
    """

    def __init__(self, lab, nodes, vip=VIP):
        import subprocess  # pylint: disable=import-outside-toplevel
        import threading  # pylint: disable=import-outside-toplevel

        self._subprocess, self._threading = subprocess, threading
        self.lab, self.nodes, self.vip = lab, list(nodes), vip
        self.events = []
        self.initial = set()
        self.procs = {}
        self.threads = []

    def _read(self, node, proc):
        import datetime  # pylint: disable=import-outside-toplevel

        for line in proc.stdout:
            if (f"inet {self.vip}/" not in line and f"inet6 {self.vip}/" not in line) or not line.startswith("["):
                continue
            stamp = datetime.datetime.fromisoformat(line[1:line.index("]")]).timestamp()
            self.events.append((stamp, node, " Deleted " not in f" {line[line.index(']') + 1:].strip()} "))

    def __enter__(self):
        for node in self.nodes:
            proc = self._subprocess.Popen(["ip", "-n", self.lab.ns(node), "-ts", "monitor", "address", "dev", "eth0"],
                                          stdout=self._subprocess.PIPE, stderr=self._subprocess.DEVNULL, text=True)
            self.procs[node] = proc
            thread = self._threading.Thread(target=self._read, args=(node, proc), daemon=True)
            thread.start()
            self.threads.append(thread)
        time.sleep(0.3)
        self.initial = set(self.lab.holders(self.vip))
        return self

    def __exit__(self, *exc):
        from tests.support.netns import kill_pids  # pylint: disable=import-outside-toplevel

        kill_pids([p.pid for p in self.procs.values()])
        for proc in self.procs.values():
            proc.wait(timeout=5)
        for thread in self.threads:
            thread.join(timeout=5)

    def gaps(self):
        """Durations (s) during which no node had the VIP."""
        holding = set(self.initial)
        gaps, since = [], None if holding else 0.0
        for stamp, node, added in sorted(self.events):
            (holding.add if added else holding.discard)(node)
            if not holding and since is None:
                since = stamp
            elif holding and since is not None:
                gaps.append(round(stamp - since, 4))
                since = None
        return gaps
