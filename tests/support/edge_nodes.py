"""
Edge nodes for functional tests: each node is a network namespace with its
own Salt config dir (minion id = node name, masterless, the repo as file and
module roots) and its own keepalived paths (process mode, no init system).
"""

import json
import os
import pathlib
import subprocess
import sys
import time

import yaml

from tests.support.netns import kill_pids

REPO = pathlib.Path(__file__).resolve().parents[2]
SALT_CALL = str(pathlib.Path(sys.executable).with_name("salt-call"))


class EdgeNode:
    def __init__(self, topo, name, base):
        self.topo = topo
        self.name = name
        self.base = pathlib.Path(base) / name
        self.etc = self.base / "etc"
        self.settings = {
            "config_file": str(self.base / "keepalived" / "keepalived.conf"),
            "state_dir": str(self.base / "state"),
            "notify_script": str(self.base / "bin" / "edge-ha-notify"),
            "pid_dir": str(self.base / "run"),
            "service_mode": "process",
            "settle_time": 1.5,
        }

    def write_config(self, pillar_dir, extra=None):
        self.etc.mkdir(parents=True, exist_ok=True)
        conf = {
            "id": self.name,
            "file_client": "local",
            "root_dir": str(self.base / "root"),
            "file_roots": {"base": [str(REPO / "salt")]},
            "pillar_roots": {"base": [str(pillar_dir)]},
            "module_dirs": [str(REPO)],
            "log_file": str(self.base / "salt.log"),
            "log_level_logfile": "info",
            "keepalived": self.settings,
            "edge_ha_sysctl_file": str(self.base / "sysctl.conf"),
        }
        conf.update(extra or {})
        (self.etc / "minion").write_text(yaml.safe_dump(conf))

    @property
    def config_file(self):
        return pathlib.Path(self.settings["config_file"])

    def salt_call(self, *args, check=False, timeout=180):
        """Run salt-call inside the node's namespace; returns (exit code, parsed JSON 'local')."""
        cmd = ("ip", "netns", "exec", self.topo.ns(self.name), SALT_CALL, "-c", str(self.etc),
               "--local", "--out=json", "--retcode-passthrough") + args
        # cwd: not the repo root, whose Saltfile would override these settings
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, cwd=self.base)
        try:
            data = json.loads(proc.stdout)["local"] if proc.stdout.strip() else None
        except ValueError:
            data = None
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} on {self.name} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc.returncode, data

    def keepalived_pid(self):
        try:
            return int((pathlib.Path(self.settings["pid_dir"]) / "keepalived.pid").read_text().strip())
        except (OSError, ValueError):
            return 0

    def transitions(self):
        path = pathlib.Path(self.settings["state_dir"]) / "transitions.log"
        return path.read_text().splitlines() if path.exists() else []

    def instance_state(self, instance):
        path = pathlib.Path(self.settings["state_dir"]) / f"{instance}.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def stop_keepalived(self, sig=None):
        """Stop this node's keepalived by its pid (SIGTERM, or ``sig``)."""
        pid = self.keepalived_pid()
        if not pid:
            return
        if sig is None:
            kill_pids([pid])
        else:
            os.kill(pid, sig)


def write_pillar(pillar_dir, edge_ha):
    pillar_dir = pathlib.Path(pillar_dir)
    pillar_dir.mkdir(parents=True, exist_ok=True)
    (pillar_dir / "top.sls").write_text("base:\n  '*':\n    - edge_ha\n")
    (pillar_dir / "edge_ha.sls").write_text(yaml.safe_dump({"edge_ha": edge_ha}, sort_keys=False))


def wait_for(predicate, timeout, interval=0.05):
    """Poll until predicate() is truthy; returns (value, seconds waited) or (None, timeout)."""
    start = time.monotonic()
    while True:
        value = predicate()
        if value:
            return value, time.monotonic() - start
        if time.monotonic() - start > timeout:
            return None, timeout
        time.sleep(interval)
