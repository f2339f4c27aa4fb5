"""Helpers shared by the in-VM tests (importable anywhere, no side effects)."""

import importlib.util
import os
import signal
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
IN_VM = os.environ.get("EDGE_HA_IN_VM") == "1"


def load(relpath, name):
    """Import a repo file by path (no Salt loader)."""
    spec = importlib.util.spec_from_file_location(name, REPO / relpath)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ipvsadm_table(ipvs):
    """The live table as ipvsadm (an independent reader) sees it."""
    text = subprocess.run(["ipvsadm", "-Sn"], check=True, capture_output=True, text=True).stdout
    return ipvs.normalize_table(ipvs.parse_save(text)["services"])


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def stop_pid(pid, timeout=20.0):
    """SIGTERM a process by pid, SIGKILL it if it does not go away (for
    processes that are not our children; those are waited for instead)."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class Keepalived:
    """keepalived (checker subsystem only) with its own config, pid files
    and log in a tmp dir; stopped by pid."""

    def __init__(self, workdir: Path):
        self.dir = workdir
        self.conf = workdir / "keepalived.conf"
        self.pidfile = workdir / "keepalived.pid"
        self.checkers_pidfile = workdir / "checkers.pid"
        self.vrrp_pidfile = workdir / "vrrp.pid"
        self.log = workdir / "keepalived.log"
        self.proc = None

    def start(self, text):
        self.conf.write_text(text)
        check = subprocess.run(["keepalived", "--config-test", "-f", str(self.conf)],
                               capture_output=True, text=True)
        assert check.returncode == 0, f"keepalived --config-test failed:\n{check.stderr}\n{text}"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                ["keepalived", "--dont-fork", "--log-console", "--log-detail", "--no-syslog",
                 "--check", "--dont-respawn", "-f", str(self.conf), "-p", str(self.pidfile),
                 "-c", str(self.checkers_pidfile), "-r", str(self.vrrp_pidfile)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        return self

    def log_text(self):
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def child_pids(self):
        pids = []
        for path in (self.checkers_pidfile, self.vrrp_pidfile):
            try:
                pids.append(int(path.read_text().strip()))
            except (OSError, ValueError):
                pass
        return pids

    def stop(self):
        if self.proc is None:
            return
        children = self.child_pids()
        self.proc.send_signal(signal.SIGTERM)  # by its pid
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for pid in children:  # normally gone with the parent; make sure
            stop_pid(pid, timeout=5)
        self.proc = None
