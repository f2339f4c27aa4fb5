"""Pure logic of the beacons and the edge runner (no Salt)."""

from edge_ha_core import planner
from edge_ha_core import report as views
from tests.support.builders import model3
from tests.support.builders import report
from tests.support.builders import typed
from tests.support.modload import load

vrrp = load("_beacons/vrrp.py")
ingress = load("_beacons/ingress_health.py")


def test_parse_transitions_only_newer_and_in_order():
    text = "10.5 VI_1 BACKUP 100\n11.0 VI_1 MASTER 100\ngarbage\n12.25 VI_2 FAULT 0\n"
    assert [t["state"] for t in vrrp.parse_transitions(text, 10.5)] == ["MASTER", "FAULT"]
    assert vrrp.parse_transitions(text, 12.25) == []


def test_transition_events_carry_old_and_new_state():
    states = {"VI_1": "BACKUP"}
    events = vrrp.transition_events(
        vrrp.parse_transitions("1.0 VI_1 MASTER 150\n2.0 VI_1 BACKUP 150\n", 0), states, {"VI_1": ["198.18.0.100"]})
    assert [(e["old"], e["new"]) for e in events] == [("BACKUP", "MASTER"), ("MASTER", "BACKUP")]
    assert events[0]["tag"] == "transition" and events[0]["vips_present"] == ["198.18.0.100"]
    assert states == {"VI_1": "BACKUP"}


def test_beacon_config_validation():
    assert vrrp.validate([{"interval": 1}])[0]
    ok, msg = vrrp.validate([{"intervall": 1}])
    assert not ok and "intervall" in msg
    assert not ingress.validate([{"url": "ftp://x"}])[0]
    ok, msg = ingress.validate([{"fall": 0}])
    assert not ok and "fall must be an integer from 1 to 100" in msg


def test_debounce_needs_fall_failures_and_rise_successes():
    memory = {}
    seq = [True, True, False, False, True, False, False, False, True, True]
    verdicts = [ingress.debounce(memory, h, fall=3, rise=2) for h in seq]
    # healthy after 2 successes; one blip and a 2-failure dip change nothing; 3 failures -> unhealthy; 2 oks -> healthy
    assert verdicts == [None, True, None, None, None, None, None, False, None, True]


def test_ingress_event_names_the_report_with_the_verdict(monkeypatch):
    """The master's trigger waits for the report an event names: the ingress beacon's event names the
    report pushed with the new verdict (a reconcile that read the report from before it did nothing,
    and the fence waited for the schedule: 25-52 s in a bench run)."""
    recorded = []
    probes = iter([False, False])
    salt = {
        "edge_ha.model": lambda: {"ingress": {"fall": 2, "rise": 2}},
        "edge_node.probe_ingress": lambda url=None, timeout=None: {"healthy": next(probes), "detail": "HTTP 503",
                                                                   "url": "http://127.0.0.1:10254/healthz"},
        "edge_node.record_ingress_health": lambda healthy, detail: recorded.append((healthy, detail)) or "ab" * 8,
    }
    monkeypatch.setattr(ingress, "__salt__", salt, raising=False)
    monkeypatch.setattr(ingress, "__context__", {}, raising=False)
    assert ingress.beacon([]) == []  # one failure of fall: 2
    (event,) = ingress.beacon([])
    assert recorded == [(False, "HTTP 503")]
    assert event["tag"] == "unhealthy" and event["report"] == "ab" * 8 and event["seen"] == event["time"]


def test_plan_fences_unhealthy_and_restores_own_fencing_only():
    model = model3()
    reports = {
        "edge1": report("edge1", "MASTER", 150, ["198.18.0.100"], healthy=False),
        "edge2": report("edge2", prio=140, out=True, reason=planner.FENCE_REASON),
        "edge3": report("edge3", prio=130, out=True, reason="drained by operator"),
    }
    wanted = planner.plan(model, reports)
    assert wanted.fence == ["edge1"]
    assert wanted.unfence == ["edge2"]
    assert wanted.service_nodes == ["edge2"]  # edge3 stays out (not ours), edge1 unhealthy


def test_plan_never_fences_the_last_node_and_skips_silent_minions():
    model = model3()
    reports = {
        "edge1": report("edge1", "MASTER", 150, ["198.18.0.100"], healthy=False),
        "edge2": report("edge2", healthy=False),
        "edge3": None,
    }
    wanted = planner.plan(model, reports)
    assert wanted.fence == []
    assert any("every reachable node's ingress is unhealthy" in n for n in wanted.notes)
    assert any(n.startswith("edge3: no answer") for n in wanted.notes)
    assert wanted.service_nodes == []


def test_plan_releases_stale_vips_of_a_stopped_keepalived():
    model = model3()
    reports = {
        "edge1": report("edge1", "MASTER", 150, ["198.18.0.100"], running=False),
        "edge2": report("edge2", "MASTER", 140, ["198.18.0.100"]),
        "edge3": report("edge3", prio=130),
    }
    wanted = planner.plan(model, reports, planner.KubeView({"edge1": True, "edge2": True, "edge3": False}))
    assert wanted.release == ["edge1"]
    assert wanted.service_nodes == ["edge2"]  # edge1 stopped, edge3's pod not ready


def test_report_shows_observed_owner_and_flags():
    model = model3()
    reports = {
        "edge1": report("edge1", "MASTER", 150, ["198.18.0.100"], running=False),
        "edge2": report("edge2", "MASTER", 140, ["198.18.0.100"]),
        "edge3": None,
    }
    rows = views.build_report(model, typed(reports), {"match": False})
    row = rows[0]
    assert row["vip"] == "198.18.0.100" and row["vrid"] == 51
    assert row["owner"] == ["edge1", "edge2"] and row["flags"] == ["stale_vip"]
    assert row["backups"] == [{"node": "edge3", "state": "NO ANSWER", "priority": None}]
    assert row["last_transition"] == 1150.0
    table = views.format_table(rows)
    assert table.splitlines()[0].split() [:3] == ["VIP", "VRID", "OWNER"]
    assert "edge1,edge2" in table and "DIFFERS" in table and "stale_vip" in table

    reports["edge1"] = report("edge1", "MASTER", 150, ["198.18.0.100"])
    assert views.build_report(model, typed(reports))[0]["flags"] == ["split_brain"]

    reports["edge1"] = report("edge1", "FAULT", 0, [])
    reports["edge2"] = report("edge2", "BACKUP", 140, [])
    assert views.build_report(model, typed(reports))[0]["flags"] == ["no_owner"]


def test_stale_vips_only_while_keepalived_is_down():
    status = {"running": False, "instances": {"A": {"vips_present": ["198.18.0.100"]}, "B": {"vips_present": []}}}
    assert vrrp.stale_vips(status) == ["198.18.0.100"]
    status["running"] = True
    assert vrrp.stale_vips(status) == []


def test_history_rows_newest_first_with_who_what_why():
    entries = [
        {"kind": "transition", "node": "edge1", "instance": "VI_INGRESS", "old": "BACKUP", "new": "MASTER", "time": 1.0},
        {"kind": "fence", "node": "edge1", "action": "stale VIPs removed: ['198.18.0.100']",
         "why": "salt/beacon/edge1/vrrp/stale_vip", "time": 2.0},
        {"kind": "reconcile", "reason": "salt/beacon/edge2/vrrp/transition", "actions": [], "time": 3.0},
        {"kind": "ignored", "claimed_id": "client", "source": "salt/beacon/edge1/vrrp/x", "time": 4.0},
    ]
    rows = views.history_rows(entries)
    assert [r["kind"] for r in rows] == ["ignored", "reconcile", "fence", "transition"]
    assert rows[2] == {"who": "edge.trigger", "what": "edge1: stale VIPs removed: ['198.18.0.100']",
                       "why": "salt/beacon/edge1/vrrp/stale_vip", "time": 2.0, "kind": "fence"}
    assert rows[3]["what"] == "VI_INGRESS: BACKUP -> MASTER" and rows[3]["who"] == "edge1 (reported)"
    assert rows[1]["what"] == "nothing to change"
    assert [r["kind"] for r in views.history_rows(entries, limit=1)] == ["ignored"]
    assert [r["kind"] for r in views.history_rows(entries, kinds={"fence"})] == ["fence"]


def test_history_rows_sorted_by_their_own_time_when_appended_out_of_order():
    # the stale-VIP fast path and a reconcile stamp, then append: the file order can differ by a millisecond
    entries = [
        {"kind": "fence", "node": "edge1", "action": "a", "why": "w", "time": 10.002},
        {"kind": "reconcile", "reason": "r", "actions": [], "time": 10.001},
        {"kind": "reconcile", "reason": "same time, written later", "actions": [], "time": 10.002},
    ]
    rows = views.history_rows(entries)
    assert [r["time"] for r in rows] == [10.002, 10.002, 10.001]
    assert [r["kind"] for r in rows[:2]] == ["reconcile", "fence"], "equal times: the later-written first"


def test_metrics_text_is_valid_prometheus_exposition():
    from prometheus_client.parser import text_string_to_metric_families  # pylint: disable=import-outside-toplevel

    model = model3()
    reports = {
        "edge1": report("edge1", "MASTER", 150, ["198.18.0.100"], running=False),
        "edge2": report("edge2", "MASTER", 140, ["198.18.0.100"]),
        "edge3": None,
    }
    entries = [
        {"kind": "transition", "node": "edge1", "instance": "VI_INGRESS", "old": "MASTER", "new": "BACKUP", "time": 10.0},
        {"kind": "transition", "node": "edge2", "instance": "VI_INGRESS", "old": "BACKUP", "new": "MASTER", "time": 10.4},
        {"kind": "reconcile", "actions": ["edge1: stale VIPs removed (keepalived not running): x"], "error": "boom", "time": 11},
    ]
    # counters are the persistent ones (they never go down), not derived from the trimmed history
    counters = {"vrrp_transitions/edge1/VI_INGRESS": 3, "vrrp_transitions/edge2/VI_INGRESS": 1,
                "reconcile_runs": 1, "reconcile_errors": 1, "fencing_actions": 1}
    text = views.metrics_text(model, typed(reports), views.build_report(model, typed(reports)), entries, counters)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    value = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert value[("edge_ha_node_up", (("node", "edge3"),))] == 0
    assert value[("edge_ha_vrrp_state", (("instance", "VI_INGRESS"), ("node", "edge1"), ("state", "STOP")))] == 1
    assert value[("edge_ha_vrrp_state", (("instance", "VI_INGRESS"), ("node", "edge2"), ("state", "MASTER")))] == 1
    assert value[("edge_ha_vip_flag", (("flag", "stale_vip"), ("vip", "198.18.0.100")))] == 1
    assert value[("edge_ha_vip_flag", (("flag", "split_brain"), ("vip", "198.18.0.100")))] == 0
    assert value[("edge_ha_vrrp_transitions_total", (("instance", "VI_INGRESS"), ("node", "edge2")))] == 1
    assert value[("edge_ha_vrrp_transitions_total", (("instance", "VI_INGRESS"), ("node", "edge1")))] == 3
    assert value[("edge_ha_reconcile_runs_total", ())] == 1
    assert value[("edge_ha_reconcile_errors_total", ())] == 1
    assert value[("edge_ha_fencing_actions_total", ())] == 1
    assert value[("edge_ha_last_failover_seconds", ())] == 0.4


def test_split_brain_fences_the_lower_priority_holder_then_lifts_after_hold():
    model = model3()
    reports = {
        "edge1": report("edge1", "MASTER", 150, ["198.18.0.100"]),
        "edge2": report("edge2", "MASTER", 140, ["198.18.0.100"]),
        "edge3": report("edge3", prio=130),
    }
    wanted = planner.plan(model, reports, now=1000.0)
    assert wanted.split_fence == {"edge2": "split brain: edge1 keeps VI_INGRESS"}
    assert wanted.fence == [] and "edge2" not in wanted.service_nodes

    fenced = report("edge2", "FAULT", 0, [], out=True, reason="split brain: edge1 keeps VI_INGRESS")
    fenced["out_of_service"]["since"] = 990.0
    reports["edge2"] = fenced
    early = planner.plan(model, reports, now=1000.0, split_hold=30)
    assert early.unfence == [] and early.split_fence == {}
    assert "edge2" not in early.service_nodes
    late = planner.plan(model, reports, now=1021.0, split_hold=30)
    assert late.unfence == ["edge2"] and "edge2" in late.service_nodes


def test_vrrp_watch_option_validation():
    assert vrrp.validate([{"interval": 1}, {"watch": 0.05}])[0]
    assert vrrp.validate([{"watch": 0}])[0]
    for bad in (0.001, 2, True, "fast"):
        ok, msg = vrrp.validate([{"watch": bad}])
        assert not ok and "watch must be 0 (off)" in msg


def test_vrrp_watch_signature_sees_log_growth_and_process_death(tmp_path):
    import os
    import subprocess
    import sys

    log = tmp_path / "transitions.log"
    pidfile = tmp_path / "keepalived.pid"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])  # pylint: disable=consider-using-with
    try:
        pidfile.write_text(str(child.pid))
        first = vrrp.watch_signature(str(log), [str(pidfile)])
        assert first[:2] == [None, None] and first[2] == (child.pid, True)
        log.write_text("1.0 VI_1 MASTER 150\n")
        second = vrrp.watch_signature(str(log), [str(pidfile)])
        assert second != first and second[0] == len("1.0 VI_1 MASTER 150\n")
        child.kill()
        child.wait()
        third = vrrp.watch_signature(str(log), [str(pidfile)])
        assert third[2] == (child.pid, False) and third[:2] == second[:2]
        assert vrrp.watch_signature(str(log), [str(tmp_path / "missing.pid")])[2] == (0, False)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert os.path.exists(log)


def test_keepalived_pid_files_per_service_mode():
    """The pid files the vrrp beacon's watch looks at: process mode passes them to keepalived (pid_dir);
    under the init system keepalived writes its compiled-in defaults (service_pid_dir, /run)."""
    keepalived = load("_modules/keepalived.py")
    config = {}
    saved = getattr(keepalived, "__salt__", None)
    keepalived.__salt__ = {"config.get": lambda key, default=None: config.get(key, default)}
    try:
        assert keepalived.pid_files() == {"main": "/run/keepalived.pid", "vrrp": "/run/vrrp.pid",
                                          "checkers": "/run/checkers.pid"}
        config["keepalived"] = {"service_mode": "process", "pid_dir": "/srv/run"}
        assert keepalived.pid_files() == {"main": "/srv/run/keepalived.pid", "vrrp": "/srv/run/keepalived_vrrp.pid",
                                          "checkers": "/srv/run/keepalived_checkers.pid"}
    finally:
        if saved is None:
            del keepalived.__salt__
        else:
            keepalived.__salt__ = saved
