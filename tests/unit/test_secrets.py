"""
Secrets stay secret (issue #12): keepalived.conf and its copies are 0600, the
directory is fsynced, plans and state returns carry hashes and masked diffs,
keepalived -t crashes are failures, and its messages map back to pillar paths.
"""

import copy
import json
import os
import pathlib
import shutil
import stat

import pytest
import yaml

from tests.support.modload import load

from edge_ha_core import model as edge_ha

keepalived = load("_modules/keepalived.py")
state = load("_states/keepalived.py")
EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "pillar" / "edge_ha.sls.example"
SECRET = "s3cret"
needs_keepalived = pytest.mark.skipif(not shutil.which("keepalived"), reason="keepalived is not installed")


def _example():
    return copy.deepcopy(yaml.safe_load(EXAMPLE.read_text())["edge_ha"])


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_config_and_backups_are_0600_and_directory_fsynced(tmp_path, monkeypatch):
    synced_dirs = []
    real_fsync = os.fsync

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            synced_dirs.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(keepalived.os, "fsync", fsync)
    old_umask = os.umask(0)
    try:
        path = tmp_path / "keepalived.conf"
        keepalived.write_atomic(str(path), "auth_pass a\n")
        keepalived.write_atomic(str(path), "auth_pass b\n", backup=str(path) + ".bak")
    finally:
        os.umask(old_umask)
    assert _mode(path) == 0o600 and _mode(str(path) + ".bak") == 0o600
    assert len(synced_dirs) == 3  # after each rename: config, backup, config


@pytest.fixture
def node(tmp_path, monkeypatch):
    """The keepalived module on a fake node: files under tmp_path, the pillar in ``node.pillar``."""

    class Node:
        pillar = _example()
        conf = {"config_file": str(tmp_path / "etc" / "keepalived.conf"), "state_dir": str(tmp_path / "run"),
                "pid_dir": str(tmp_path / "run"), "notify_script": str(tmp_path / "notify"),
                "service_mode": "process", "settle_time": 0}

    def node_view(node=None, pillar=None, drained=()):
        return edge_ha.view_for_node(edge_ha.normalize(Node.pillar), node or "edge1", drained)

    salt = {
        "config.get": lambda key, default=None: dict(Node.conf),
        "edge_ha.validate": lambda pillar=None: edge_ha.validate_model(Node.pillar),
        "edge_ha.node_view": node_view,
        "pillar.items": lambda unmask=False: {"edge_ha": Node.pillar},
    }
    monkeypatch.setattr(keepalived, "__salt__", salt, raising=False)
    return Node


@needs_keepalived
def test_plan_returns_hashes_and_masked_diff_never_the_password(node):
    first = keepalived.plan()
    assert first["valid"] and first["changed"]
    assert "old" not in first and "new" not in first
    assert first["old_hash"] is None and len(first["new_hash"]) == 64
    assert "auth_pass ********" in first["diff"]
    assert SECRET not in json.dumps(first)
    keepalived.write_rendered(expected_hash=first["new_hash"])
    assert _mode(node.conf["config_file"]) == 0o600
    assert SECRET in pathlib.Path(node.conf["config_file"]).read_text()  # the file itself has it
    assert keepalived.plan()["changed"] is False

    # only the password changes: still a change, still no password in the return
    node.pillar["vrrp_instances"]["VI_INGRESS"]["authentication"]["auth_pass"] = "n3wpass"
    second = keepalived.plan()
    assert second["changed"] and second["old_hash"] == first["new_hash"] != second["new_hash"]
    assert "-        auth_pass ********\n+        auth_pass ********\n" in second["diff"]
    assert SECRET not in json.dumps(second) and "n3wpass" not in json.dumps(second)
    assert "n3wpass" not in keepalived.render() and "n3wpass" in keepalived.render(show_secrets=True)


@needs_keepalived
def test_write_rendered_refuses_a_config_that_is_not_the_planned_one(node):
    planned = keepalived.plan()
    node.pillar["vrrp_instances"]["VI_INGRESS"]["virtual_router_id"] = 77
    with pytest.raises(keepalived.CommandExecutionError, match="is not the planned one"):
        keepalived.write_rendered(expected_hash=planned["new_hash"])
    assert not os.path.exists(node.conf["config_file"])


@needs_keepalived
def test_keepalived_t_messages_name_the_pillar_path(node):
    node.pillar["nodes"]["edge1"]["interface"] = "edgehatest9"  # not on this host: only keepalived -t knows
    result = keepalived.plan()
    assert not result["valid"]
    assert result["errors"][0].startswith("rendered keepalived.conf fails validation: keepalived -t exit")
    assert any(e.startswith("edge_ha:vrrp_instances:VI_INGRESS") and "keepalived -t:" in e for e in result["errors"]), \
        result["errors"]


def test_explain_check_output_by_line_and_by_name():
    data = _example()
    view = edge_ha.view_for_node(edge_ha.normalize(data), "edge1")
    text = keepalived.render_config(view, {"state_dir": "/run/edge-ha", "notify_script": "/n"})
    lines = text.splitlines()
    lb = next(i for i, line in enumerate(lines, 1) if "lb_algo wlc" in line)
    iface = next(i for i, line in enumerate(lines, 1) if line.strip() == "interface eth0")
    output = "\n".join([
        "keepalived -t exit 5:",
        f"(<new config>: Line {lb}) unknown lb_algo",
        f"(<new config>: Line {iface}) something about the interface",
        "(VI_INGRESS) Unknown interface!",
        "Disabling track script chk_ingress since not found/accessible",
        "Warning - quorum 1 for [198.18.0.100]:tcp:80 exceeds total weight",
        "a message about nothing in particular",
    ])
    assert keepalived.explain_check_output(output, text, view) == [
        ("edge_ha:virtual_servers:https:lb_algo", "unknown lb_algo"),
        ("edge_ha:vrrp_instances:VI_INGRESS:interface", "something about the interface"),
        ("edge_ha:vrrp_instances:VI_INGRESS", "(VI_INGRESS) Unknown interface!"),
        ("edge_ha:vrrp_scripts:chk_ingress:script", "Disabling track script chk_ingress since not found/accessible"),
        ("edge_ha:virtual_servers:http", "Warning - quorum 1 for [198.18.0.100]:tcp:80 exceeds total weight"),
    ]


def test_keepalived_t_crash_is_a_clear_failure(tmp_path):
    fake = tmp_path / "keepalived"
    fake.write_text("#!/bin/sh\necho '(Line 3) auth_pass s3cret looks odd'\nkill -SEGV $$\n")
    fake.chmod(0o755)
    ok, output = keepalived.check_config("global_defs {\n}\n", binary=str(fake))
    assert not ok
    assert output.startswith("keepalived -t crashed (SIGSEGV) on this config")
    assert SECRET not in output and "auth_pass ********" in output


def test_mask_secrets():
    assert keepalived.mask_secrets("        auth_pass ab#c\n+   auth_pass x\n") == \
        "        auth_pass ********\n+   auth_pass ********\n"
    assert keepalived.mask_secrets("no secret here") == "no secret here"


class _State:
    def __init__(self, plan, test=False):
        self.calls = []
        self.plan = plan
        state.__salt__ = {
            "keepalived.plan": lambda node=None, template=None: self.plan,
            "keepalived.install_notify_script": lambda: self.calls.append("notify"),
            "keepalived.write_rendered": lambda **kw: self.calls.append(("write", kw["expected_hash"])),
            "keepalived.reload": lambda: self.calls.append("reload") or True,
            "keepalived.start": lambda: self.calls.append("start") or True,
            "keepalived.stop": lambda: self.calls.append("stop") or True,
        }
        state.__opts__ = {"test": test}


def _masked_plan():
    return {"valid": True, "errors": [], "config_file": "/etc/keepalived/keepalived.conf", "changed": True,
            "old_hash": "a" * 64, "new_hash": "b" * 64, "notify_script_current": True, "running": True,
            "diff": "-        auth_pass ********\n+        auth_pass ********\n"}


@pytest.mark.parametrize("test", [True, False])
def test_state_shows_masked_diff_and_writes_the_planned_config(test):
    fake = _State(_masked_plan(), test=test)
    ret = state.managed("keepalived")
    assert ret["changes"]["config"] == "-        auth_pass ********\n+        auth_pass ********\n"
    assert ret["result"] is (None if test else True)
    assert fake.calls == ([] if test else ["notify", ("write", "b" * 64), "reload"])


@pytest.mark.parametrize("test", [True, False])
def test_state_restarts_a_keepalived_started_with_another_config_file(test):
    """keepalived:config_file changed: a reload would read the old file again, so it is a restart."""
    plan = dict(_masked_plan(), config_file="/etc/keepalived/edge.conf", old_hash=None, restart_needed=True,
                restart_reason="keepalived runs with /etc/keepalived/keepalived.conf, keepalived:config_file is "
                               "/etc/keepalived/edge.conf")
    fake = _State(plan, test=test)
    ret = state.managed("keepalived")
    assert ret["changes"]["service"] == f"restarted ({plan['restart_reason']})"
    assert ret["result"] is (None if test else True)
    assert fake.calls == ([] if test else ["notify", ("write", "b" * 64), "stop", "start"])
