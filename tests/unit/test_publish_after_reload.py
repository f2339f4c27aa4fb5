"""After a reload keepalived.managed pushes the node's report at once (the staged reload waits for it)."""

from tests.support.modload import load

state = load("_states/keepalived.py")
edge_node = load("_modules/edge_node.py")


def _mod(calls, plan_changes=True, reload_ok=True):
    plan = {"valid": True, "errors": [], "config_file": "/etc/keepalived/keepalived.conf", "changed": plan_changes,
            "diff": "-a\n+b", "notify_script_current": True, "running": True, "new_hash": "h2", "old_hash": "h1"}
    return {
        "keepalived.plan": lambda node=None, template=None: plan,
        "keepalived.install_notify_script": lambda: None,
        "keepalived.write_rendered": lambda **kw: calls.append("write"),
        "keepalived.reload": lambda: calls.append("reload") or reload_ok,
        "keepalived.rollback": lambda: calls.append("rollback") or {"running": True},
        "keepalived.log_tail": lambda: "",
        "edge_node.publish": lambda force=False, wait=False: calls.append(("publish", force, wait)),
    }


def test_a_reload_publishes_the_report_in_the_state_run(monkeypatch):
    calls = []
    monkeypatch.setattr(state, "__salt__", _mod(calls), raising=False)
    monkeypatch.setattr(state, "__opts__", {"test": False}, raising=False)
    ret = state.managed("keepalived")
    assert ret["result"] is True
    assert calls == ["write", "reload", ("publish", True, True)]


def test_nothing_changed_or_a_failed_reload_publishes_nothing(monkeypatch):
    for changes, reload_ok in ((False, True), (True, False)):
        calls = []
        monkeypatch.setattr(state, "__salt__", _mod(calls, changes, reload_ok), raising=False)
        monkeypatch.setattr(state, "__opts__", {"test": False}, raising=False)
        state.managed("keepalived")
        assert not [c for c in calls if c[0] == "publish"], calls


def test_a_publish_that_fails_does_not_fail_the_state(monkeypatch):
    calls = []
    mod = _mod(calls)
    mod["edge_node.publish"] = lambda force=False, wait=False: 1 / 0
    monkeypatch.setattr(state, "__salt__", mod, raising=False)
    monkeypatch.setattr(state, "__opts__", {"test": False}, raising=False)
    assert state.managed("keepalived")["result"] is True


def test_publish_wait_sends_in_the_call_and_says_whether_the_master_took_it(monkeypatch):
    sent = []
    monkeypatch.setattr(edge_node, "report", lambda probe=False: {"node": "edge1", "time": 1.0}, raising=False)
    monkeypatch.setattr(edge_node, "__opts__", {"id": "edge1", "file_client": "remote"}, raising=False)
    monkeypatch.setattr(edge_node, "__context__", {}, raising=False)
    for took in (True, False):
        monkeypatch.setattr(edge_node, "_send_mine", lambda opts, load, timeout: sent.append(load) or took)
        out = edge_node.publish(force=True, wait=True)
        assert out["published"] is took and out["digest"] == edge_node.report_digest({"node": "edge1", "time": 1.0})
    assert [s["data"][edge_node.MINE_KEY]["node"] for s in sent] == ["edge1", "edge1"]
    assert edge_node.__context__.get("edge_ha_publish", {}).get("sending") is None  # no background sender
