"""
The default ``service_mode: service`` under a real systemd (PID 1), with the
packaged keepalived.service, Salt through ``salt-call --local`` (the repo as
file root and module dir, like the Saltfile) and the default keepalived paths
(/etc/keepalived/keepalived.conf, /run/edge-ha, /usr/local/sbin/edge-ha-notify).

Salt: ``salt.client.Caller`` in the test process by default (what salt-call
runs, without starting a process per call: each costs 75-125 s under TCG;
the pillar is compiled afresh by every state.apply), the ``salt-call``
command for every call with EDGE_HA_VM_SALT_CLI=1.

The tests run in order on one node (minion id edge1; edge2 is a configured
peer that never answers, so edge1 is MASTER alone) on a dummy interface:

1. ``state.apply edge`` installs the systemd drop-in, starts keepalived
   through systemd, and keepalived becomes MASTER (the notify FIFO records it);
2. a pillar change is a ``systemctl reload`` (same MainPID), no VRRP transition;
3. a config that ``keepalived -t`` passes (fault injection, as in the lab: a
   wrapper binary) but that keepalived dies of at the reload (its interface
   does not exist) is rolled back, and keepalived runs again under systemd;
4. the vrrp beacon's ``watch`` sees a SIGKILL of keepalived under systemd
   (the beacon's own watcher thread, called directly: no salt-minion), and
   systemd brings keepalived back (``Restart=on-failure`` of the drop-in).
"""

import copy
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.vm

REPO = Path(__file__).resolve().parents[3]
SALT_CALL = str(Path(sys.executable).with_name("salt-call"))
IFACE = "edge0"
VIP = "198.18.70.100"
VIP2 = "198.18.70.101"
STATE_DIR = Path("/run/edge-ha")
CONFIG = Path("/etc/keepalived/keepalived.conf")
DROPIN = Path("/etc/systemd/system/keepalived.service.d/edge-ha.conf")
PILLAR = {
    "nodes": {"edge1": {"address": "198.19.70.1", "interface": IFACE},
              "edge2": {"address": "198.19.70.2", "interface": IFACE}},
    "vrrp_instances": {"VI_1": {"virtual_router_id": 70, "advert_int": 1, "unicast": True,
                                "virtual_ipaddress": [f"{VIP}/24"]}},
}


def with_vip2():
    """PILLAR with a second VIP (the config of the reload test)."""
    data = copy.deepcopy(PILLAR)
    data["vrrp_instances"]["VI_1"]["virtual_ipaddress"].append(f"{VIP2}/24")
    return data


def wait_for(predicate, timeout, interval=0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def systemctl(*args):
    return subprocess.run(["systemctl", *args], capture_output=True, text=True, check=False)


def unit_prop(name, unit="keepalived"):
    return systemctl("show", "-p", name, "--value", unit).stdout.strip()


def journal(unit="keepalived", lines=40):
    return subprocess.run(["journalctl", "-u", unit, "-n", str(lines), "--no-pager"],
                          capture_output=True, text=True, check=False).stdout


def addresses():
    out = subprocess.run(["ip", "-o", "-4", "addr", "show", "dev", IFACE],
                         capture_output=True, text=True, check=False).stdout
    return {line.split()[3].split("/")[0] for line in out.splitlines()}


def transitions():
    path = STATE_DIR / "transitions.log"
    return path.read_text().splitlines() if path.exists() else []


def instance_state():
    try:
        return json.loads((STATE_DIR / "VI_1.json").read_text()).get("state")
    except (OSError, ValueError):
        return None


def load(relpath, name):
    spec = importlib.util.spec_from_file_location(name, REPO / relpath)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Node:
    """The minion edge1: its config dir, pillar and salt-call --local."""

    def __init__(self, base):
        self.base = base
        self.etc = base / "etc"
        self.pillar = base / "pillar"
        self.flag = base / "fault-t-passes"
        self.wrapper = base / "bin" / "keepalived"
        for path in (self.etc, self.pillar, self.wrapper.parent):
            path.mkdir(parents=True, exist_ok=True)
        # lab fault injection (lab/lab.py _fault_wrapper): while the flag exists, `keepalived -t` passes
        self.wrapper.write_text(
            "#!/bin/sh\n"
            f"if [ -e {self.flag} ]; then for a in \"$@\"; do [ \"$a\" = -t ] && exit 0; done; fi\n"
            "exec keepalived \"$@\"\n")
        self.wrapper.chmod(0o755)
        (self.pillar / "top.sls").write_text("base:\n  '*':\n    - edge_ha\n")
        self.settings = {"binary": str(self.wrapper), "settle_time": 3}
        self.write_minion_config()
        self.set_pillar(PILLAR)
        self._caller = None

    def write_minion_config(self):
        """The minion config with ``self.settings`` as keepalived's node settings (a new Caller reads it)."""
        base = self.base
        self._caller = None
        (self.etc / "minion").write_text(yaml.safe_dump({
            "id": "edge1",
            "file_client": "local",
            "root_dir": str(base / "root"),
            "file_roots": {"base": [str(REPO / "salt")]},
            "pillar_roots": {"base": [str(self.pillar)]},
            "module_dirs": [str(REPO)],
            "log_file": str(base / "salt.log"),
            "log_level_logfile": "info",
            # the grains once (they cost most of a salt-call under TCG), then from the cache
            "grains_cache": True,
            "grains_cache_expiration": 3600,
            # service_mode: service and the default paths; only -t goes through the wrapper
            "keepalived": self.settings,
        }))

    def set_pillar(self, data):
        (self.pillar / "edge_ha.sls").write_text(yaml.safe_dump({"edge_ha": data}, sort_keys=False))

    def salt_call(self, *args, timeout=300):
        """(exit code, the 'local' return) of ``salt-call --local -c <etc> ARGS``: by default through
        ``salt.client.Caller``, what salt-call runs, in this process (Salt's start-up and the grains
        once: one salt-call process costs 75-125 s under TCG); EDGE_HA_VM_SALT_CLI=1: the salt-call
        command itself for every call."""
        if os.environ.get("EDGE_HA_VM_SALT_CLI") == "1":
            return self._salt_call_cli(*args, timeout=timeout)
        if self._caller is None:
            import salt.client  # pylint: disable=import-outside-toplevel
            import salt.config  # pylint: disable=import-outside-toplevel

            t0 = time.monotonic()
            opts = salt.config.minion_config(str(self.etc / "minion"))
            os.makedirs(opts["cachedir"], exist_ok=True)  # salt-call's verify_env makes it (grains cache)
            self._caller = salt.client.Caller(mopts=opts)
            print(f"salt.client.Caller (loader, grains, pillar): {time.monotonic() - t0:.1f}s")
        fun, rest = args[0], args[1:]
        data = self._caller.cmd(fun, *rest)
        rc = 0
        if fun.startswith("state."):  # salt-call --retcode-passthrough: non-zero when a state failed
            rc = 0 if isinstance(data, dict) and all(v.get("result") is not False for v in data.values()) else 2
        return rc, data

    def _salt_call_cli(self, *args, timeout=300):
        """salt-call --local, run outside the repo (its Saltfile)."""
        proc = subprocess.run([SALT_CALL, "-c", str(self.etc), "--local", "--out=json", "--retcode-passthrough",
                               "--log-level=quiet", *args],
                              capture_output=True, text=True, timeout=timeout, cwd=self.base, check=False)
        try:
            data = json.loads(proc.stdout)["local"]
        except (ValueError, KeyError):
            data = None
        assert data is not None, f"salt-call {' '.join(args)}: rc {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc.returncode, data

    def apply(self):
        t0 = time.monotonic()
        rc, data = self.salt_call("state.apply", "edge")
        print(f"state.apply edge: {time.monotonic() - t0:.1f}s")
        assert isinstance(data, dict), data  # a list: render errors
        return rc, {key.split("_|-")[1]: value for key, value in data.items()}


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    subprocess.run(["ip", "link", "add", IFACE, "type", "dummy"], check=True)
    subprocess.run(["ip", "link", "set", IFACE, "up"], check=True)
    subprocess.run(["ip", "addr", "add", "198.19.70.1/24", "dev", IFACE], check=True)
    yield Node(tmp_path_factory.mktemp("edge1"))
    systemctl("stop", "keepalived")
    subprocess.run(["ip", "link", "delete", IFACE], check=False)


def test_highstate_installs_the_unit_settings_and_starts_keepalived(node):
    assert systemctl("is-active", "keepalived").stdout.strip() != "active"
    rc, states = node.apply()
    assert rc == 0, json.dumps(states, indent=1)
    assert states["edge-keepalived"]["changes"]["service"] == "started", states["edge-keepalived"]
    assert states["edge-keepalived-unit"]["changes"], states["edge-keepalived-unit"]
    assert states["edge-keepalived-daemon-reload"]["result"] is True
    # the drop-in is in force for the packaged unit
    assert "Restart=on-failure" in DROPIN.read_text()
    assert "RestartPreventExitStatus=2" in DROPIN.read_text()
    assert str(DROPIN) in unit_prop("DropInPaths")
    assert unit_prop("Restart") == "on-failure"
    assert systemctl("is-active", "keepalived").stdout.strip() == "active", journal()
    assert systemctl("is-enabled", "keepalived").stdout.strip() == "enabled"
    main_pid = int(unit_prop("MainPID"))
    assert main_pid > 0
    # keepalived under systemd writes its pid files at its defaults (keepalived.pid_files)
    assert int(Path("/run/keepalived.pid").read_text()) == main_pid
    assert Path("/run/vrrp.pid").exists()
    # MASTER: the notify FIFO (state dir made by the drop-in's ExecStartPre) records it
    assert wait_for(lambda: instance_state() == "MASTER", 20), (transitions(), journal())
    assert transitions()[-1].split()[1:3] == ["VI_1", "MASTER"], transitions()
    assert wait_for(lambda: VIP in addresses(), 5), addresses()
    # (a run that changes nothing: the last apply of the rollback test; ~30 s per apply under TCG)


def test_config_change_is_a_reload_without_transition(node):
    assert instance_state() == "MASTER"
    main_pid = int(unit_prop("MainPID"))
    before = transitions()
    node.set_pillar(with_vip2())
    rc, states = node.apply()
    assert rc == 0, json.dumps(states, indent=1)
    ka = states["edge-keepalived"]
    assert ka["changes"]["service"] == "reloaded", ka
    assert f"{VIP2}/24" in CONFIG.read_text()
    assert wait_for(lambda: VIP2 in addresses(), 10), addresses()
    assert int(unit_prop("MainPID")) == main_pid, "systemctl reload, not a restart"
    assert unit_prop("NRestarts") == "0"
    assert "Reloaded" in journal() or "Reloading" in journal(), journal()
    time.sleep(2)  # a transition would be recorded by now
    assert transitions() == before, "no VRRP transition"
    assert instance_state() == "MASTER"
    assert VIP in addresses()


def test_failed_reload_rolls_back_and_keepalived_runs_again(node):
    before = CONFIG.read_text()
    main_pid = int(unit_prop("MainPID"))
    restarts = unit_prop("NRestarts")
    bad = with_vip2()
    bad["vrrp_instances"]["VI_1"]["garp_master_delay"] = 3
    bad["nodes"]["edge1"]["interface"] = "eth9"  # not on this node: keepalived dies of it at the reload
    node.flag.write_text("1\n")
    node.set_pillar(bad)
    try:
        rc, states = node.apply()
    finally:
        node.flag.unlink()
        node.set_pillar(with_vip2())
    ka = states["edge-keepalived"]
    print(f"rolled back: {ka['comment']}\n--- journal of keepalived.service ---\n{journal(lines=60)}")
    assert rc != 0 and ka["result"] is False, ka
    assert "the previous config was restored and keepalived runs with it again" in ka["comment"], ka
    assert CONFIG.read_text() == before
    assert "eth9" in Path(f"{CONFIG}.failed").read_text()
    assert systemctl("is-active", "keepalived").stdout.strip() == "active", journal()
    new_pid = int(unit_prop("MainPID"))
    assert new_pid != main_pid, "keepalived died at the reload and was started again"
    # by the rollback, not by systemd with the failed file (RestartPreventExitStatus=2: a config error)
    assert unit_prop("NRestarts") == restarts, journal()
    assert "status=2/" in journal(lines=200)
    assert wait_for(lambda: instance_state() == "MASTER", 20), (transitions(), journal())
    assert wait_for(lambda: {VIP, VIP2} <= addresses(), 10), addresses()
    # the pillar back as before: nothing to do
    rc, states = node.apply()
    assert rc == 0 and states["edge-keepalived"]["changes"] == {}, states["edge-keepalived"]


class FakeLoop:
    """Stands for the minion's event loop: records when the watcher schedules a beacon run."""

    def __init__(self):
        self.calls = []

    def add_callback(self, _callback):
        self.calls.append(time.monotonic())


def test_beacon_watch_sees_sigkill_under_systemd(node, monkeypatch):
    import tornado.ioloop  # pylint: disable=import-outside-toplevel

    keepalived = load("_modules/keepalived.py", "keepalived_mod_in_vm")
    keepalived.__salt__ = {"config.get": lambda key, default=None: default}  # defaults: service mode
    vrrp = load("_beacons/vrrp.py", "vrrp_beacon_in_vm")
    vrrp.__opts__ = {"id": "edge1"}
    loop = FakeLoop()
    monkeypatch.setattr(tornado.ioloop.IOLoop, "current", staticmethod(lambda *a, **k: loop))
    ctx = {}
    files = keepalived.pid_files()
    assert files["main"] == "/run/keepalived.pid" and files["vrrp"] == "/run/vrrp.pid"
    main_pid = int(unit_prop("MainPID") or 0)
    assert main_pid > 0 and systemctl("is-active", "keepalived").stdout.strip() == "active", journal()
    restarts = int(unit_prop("NRestarts"))
    assert keepalived.read_pid(files["main"]) == main_pid
    try:
        vrrp._start_watch({"watch": 0.05}, ctx, str(STATE_DIR),  # pylint: disable=protected-access
                          {"keepalived.pid_files": keepalived.pid_files})
        assert ctx["watcher"].is_alive()
        time.sleep(0.5)
        assert loop.calls == [], "nothing changed: no run scheduled"
        killed = time.monotonic()
        os.kill(main_pid, signal.SIGKILL)
        assert wait_for(lambda: loop.calls, 5, interval=0.01), "the watcher did not see the SIGKILL"
        seen = loop.calls[0] - killed
        print(f"watch 0.05: SIGKILL of keepalived (MainPID {main_pid}) seen after {seen * 1000:.0f} ms")
        assert seen < 1.0
        # systemd's Restart=on-failure (the drop-in) brings keepalived back; the watcher sees that too
        assert wait_for(lambda: systemctl("is-active", "keepalived").stdout.strip() == "active"
                        and int(unit_prop("MainPID") or 0) not in (0, main_pid), 30), journal()
        assert int(unit_prop("NRestarts")) == restarts + 1
        new_pid = int(unit_prop("MainPID"))
        assert wait_for(lambda: keepalived.read_pid(files["main"]) == new_pid, 10)
        # the watcher compares (pid, alive) of both pid files: the new keepalived is a change too
        log_path = str(STATE_DIR / "transitions.log")
        assert wait_for(lambda: vrrp.watch_signature(log_path, [files["main"]])[2] == (new_pid, True), 5)
        assert wait_for(lambda: len(loop.calls) >= 2, 5), loop.calls
        assert wait_for(lambda: instance_state() == "MASTER", 20), (transitions(), journal())
    finally:
        ctx["watch"] = 0


def test_another_config_file_is_what_the_unit_runs(node):
    """keepalived:config_file other than the packaged unit's: a second drop-in makes the unit start
    keepalived with it, and the running keepalived (started with the old file) is restarted, not
    reloaded; back to the default, the drop-in goes and keepalived is restarted with the default."""
    custom = Path("/etc/keepalived/edge-ha.conf")
    dropin = DROPIN.with_name("edge-ha-config-file.conf")
    assert wait_for(lambda: systemctl("is-active", "keepalived").stdout.strip() == "active", 30), journal()
    main_pid = int(unit_prop("MainPID"))
    node.settings["config_file"] = str(custom)
    node.write_minion_config()
    try:
        rc, states = node.apply()
        assert rc == 0, json.dumps(states, indent=1)
        assert states["edge-keepalived"]["changes"]["service"].startswith(
            f"restarted (keepalived runs with {CONFIG}, keepalived:config_file is {custom})"), states["edge-keepalived"]
        assert f"ExecStart=/usr/sbin/keepalived --dont-fork $DAEMON_ARGS -f {custom}" in dropin.read_text()
        assert str(dropin) in unit_prop("DropInPaths")
        new_pid = int(unit_prop("MainPID"))
        assert new_pid not in (0, main_pid), journal()
        assert str(custom).encode() in Path(f"/proc/{new_pid}/cmdline").read_bytes().split(b"\0")
        assert wait_for(lambda: instance_state() == "MASTER", 20), (transitions(), journal())
        assert wait_for(lambda: VIP in addresses(), 10), addresses()
    finally:
        del node.settings["config_file"]
        node.write_minion_config()
    rc, states = node.apply()
    assert rc == 0 and states["edge-keepalived"]["changes"]["service"].startswith("restarted ("), states
    assert not dropin.exists()
    assert str(custom).encode() not in Path(f"/proc/{unit_prop('MainPID')}/cmdline").read_bytes()
    assert wait_for(lambda: instance_state() == "MASTER", 20), (transitions(), journal())
