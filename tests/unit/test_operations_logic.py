"""Pure logic of drains, staged reloads and quiescing (no Salt)."""

from edge_ha_core import fleet
from edge_ha_core import model as edge_ha
from edge_ha_core import planner
from edge_ha_core import report as views
from tests.support.builders import VIP
from tests.support.builders import example_pillar
from tests.support.builders import model3
from tests.support.builders import report
from tests.support.builders import typed
from tests.support.modload import load

runner = load("_runners/edge.py")
edge_node = load("_modules/edge_node.py")


def test_drained_node_leaves_service_keeps_standby_and_lists_are_synced():
    model = model3()
    drained = {"edge1": {"reason": "kernel update", "since": 1.0, "source": "manual"}}
    reports = {
        "edge1": report("edge1", prio=1, standby=True, drained=["edge1"]),
        "edge2": report("edge2", "MASTER", 140, [VIP], drained=["edge1"]),
        "edge3": report("edge3", prio=130),  # its drained list is stale
    }
    wanted = planner.plan(model, reports, drains=drained)
    assert wanted.service_nodes == ["edge2", "edge3"]
    assert wanted.standby_on == [] and wanted.standby_off == []
    assert wanted.drained_lists == ["edge3"]
    assert "edge1: drained (kernel update)" in wanted.notes
    # a standby left over by an interrupted staged reload is lifted; a drained node without standby gets it
    reports["edge1"]["standby"]["standby"] = False
    reports["edge3"]["standby"]["standby"] = True
    wanted = planner.plan(model, reports, drains=drained)
    assert wanted.standby_on == ["edge1"] and wanted.standby_off == ["edge3"]


def test_rollout_order_backups_first_owner_last():
    reports = {
        "edge1": report("edge1", "MASTER", 150, [VIP]),
        "edge2": report("edge2", prio=140),
        "edge3": report("edge3", prio=130),
    }
    assert fleet.rollout_order(["edge1", "edge3", "edge2"], typed(reports)) == ["edge2", "edge3", "edge1"]


def test_rollout_stages_backups_together_then_in_place_holders_then_each_handover_alone():
    reports = typed({
        "edge1": report("edge1", "MASTER", 150, [VIP]),
        "edge2": report("edge2", prio=140),
        "edge3": report("edge3", prio=130),
        "edge4": report("edge4", "MASTER", 120, ["198.18.0.101"]),
        "edge5": report("edge5", "MASTER", 110, ["198.18.0.102"]),
        "edge6": None,  # silent: holds nothing it told us about
    })
    nodes = ["edge5", "edge1", "edge6", "edge3", "edge2", "edge4"]
    assert fleet.rollout_stages(nodes, reports, in_place={"edge1", "edge4"}) == [
        ["edge2", "edge3", "edge6"], ["edge1", "edge4"], ["edge5"]]
    assert fleet.rollout_stages(nodes, reports) == [["edge2", "edge3", "edge6"], ["edge1"], ["edge4"], ["edge5"]]
    assert fleet.rollout_stages(["edge1"], reports, in_place={"edge1"}) == [["edge1"]]
    assert fleet.rollout_stages([], reports) == []
    # in_place names only holders: a backup listed there is still in the first group
    assert fleet.rollout_stages(["edge2", "edge1"], reports, in_place={"edge2"}) == [["edge2"], ["edge1"]]


def test_handover_is_done_only_when_exactly_one_other_running_node_holds_each_vip():
    model = model3()
    still = {"edge1": report("edge1", "MASTER", 1, [VIP]), "edge2": report("edge2", prio=140),
             "edge3": report("edge3", prio=130)}
    assert fleet.handover_state(model, typed(still), "edge1") == (False, {VIP: ["edge1"]})
    overlap = dict(still, edge2=report("edge2", "MASTER", 140, [VIP]))
    assert fleet.handover_state(model, typed(overlap), "edge1")[0] is False  # make-before-break: both hold it a moment
    moved = dict(overlap, edge1=report("edge1", prio=1))
    assert fleet.handover_state(model, typed(moved), "edge1") == (True, {VIP: ["edge2"]})
    stale = dict(moved, edge3=report("edge3", "MASTER", 130, [VIP], running=False))
    assert fleet.handover_state(model, typed(stale), "edge1")[0] is True  # a stopped keepalived's leftover is not an owner


def test_vrrp_winner_skips_standby_and_out_of_service_nodes():
    model = model3()
    reports = {"edge1": report("edge1", prio=1, standby=True), "edge2": report("edge2", "MASTER", 140, [VIP]),
               "edge3": report("edge3", prio=130)}
    assert fleet.vrrp_winner(model, typed(reports), "VI_INGRESS") == "edge2"
    reports["edge1"]["standby"]["standby"] = False
    assert fleet.vrrp_winner(model, typed(reports), "VI_INGRESS") == "edge1"
    reports["edge1"]["out_of_service"]["out_of_service"] = True
    assert fleet.vrrp_winner(model, typed(reports), "VI_INGRESS") == "edge2"


def test_drained_nodes_render_with_weight_zero_others_unchanged():
    model = model3()
    view = edge_ha.view_for_node(model, "edge2", drained=["edge1"])
    weights = {(vs["name"], rs["node"]): rs["weight"] for vs in view["virtual_servers"] for rs in vs["real_servers"]}
    assert weights[("http", "edge1")] == 0 and weights[("https", "edge1")] == 0
    assert weights[("http", "edge2")] == 1 and weights[("https", "edge3")] == 1
    # the model itself is not changed
    assert all(rs["weight"] == 1 for vs in model["virtual_servers"].values() for rs in vs["real_servers"])


def test_ipvs_connections_counts_only_the_nodes_real_servers_of_our_services():
    model = model3()
    table = [
        {"protocol": "TCP", "address": VIP, "port": 80, "destinations": [
            {"address": "198.18.0.11", "port": 80, "active_connections": 3, "inactive_connections": 2,
             "persistent_connections": 0},
            {"address": "198.18.0.12", "port": 80, "active_connections": 7, "inactive_connections": 0}]},
        {"protocol": "TCP", "address": VIP, "port": 443, "destinations": [
            {"address": "198.18.0.11", "port": 443, "active_connections": 0, "inactive_connections": 1,
             "persistent_connections": 4}]},
        {"protocol": "TCP", "address": "198.18.9.9", "port": 80, "destinations": [  # not ours
            {"address": "198.18.0.11", "port": 80, "active_connections": 50}]},
    ]
    # active (ESTABLISHED: waited for), inactive (closing entries: not waited for), templates
    assert runner.ipvs_connections(table, model["virtual_servers"].values(), "198.18.0.11") == (3, 3, 4)
    assert runner.ipvs_connections([], model["virtual_servers"].values(), "198.18.0.11") == (0, 0, 0)


def test_quiesce_drops_only_new_connections_to_the_vips():
    rules = edge_node.quiesce_rules(["198.18.0.100", "2001:db8::100"])
    assert "ip daddr { 198.18.0.100 } tcp flags & (syn | ack) == syn drop" in rules
    assert "ip6 daddr { 2001:db8::100 } tcp flags & (syn | ack) == syn drop" in rules
    assert "policy accept" in rules


def test_vip_connections_counted_from_ss():
    out = ("0 0 198.18.0.100:80 198.18.0.50:40000\n"
           "0 0 [::ffff:198.18.0.100]:443 [::ffff:198.18.0.50]:40001\n"
           "0 0 198.18.0.11:22 198.18.0.50:40002\n"
           "0 0 [2001:db8::100]:443 [2001:db8::50]:40003\n")
    assert edge_node.count_connections(out, {"198.18.0.100"}) == 2
    assert edge_node.count_connections(out, {"2001:db8::100"}) == 1


def test_handover_quiesces_waits_for_requests_in_flight_then_flags(monkeypatch):
    """One job for the node's steps of a release: quiesce, the requests in flight, then the flag."""
    calls = []
    left = iter([2, 1, 0])
    monkeypatch.setattr(edge_node, "quiesce", lambda enabled=True: calls.append("quiesce") or {"quiesced": True})
    monkeypatch.setattr(edge_node, "vip_connections", lambda: calls.append("count") or next(left))
    monkeypatch.setattr(edge_node, "__salt__", {"keepalived.out_of_service": lambda on, why: calls.append(("flag", why))},
                        raising=False)
    out = edge_node.handover("handover: drain edge1", timeout=5, interval=0.01)
    assert calls == ["quiesce", "count", "count", "count", ("flag", "handover: drain edge1")]
    assert out["quiesced"] and out["in_flight"] == 0 and out["flagged"] and out["waited"] < 5
    # no flag reason: the caller sets the flag after its own step; a connection that stays open ends the wait
    calls.clear()
    monkeypatch.setattr(edge_node, "vip_connections", lambda: calls.append("count") or 1)
    out = edge_node.handover(None, timeout=0.05, interval=0.01)
    assert calls[0] == "quiesce" and set(calls[1:]) == {"count"} and out["in_flight"] == 1 and not out["flagged"]
    assert out["waited"] >= 0.05


def test_history_rows_for_drain_and_rollout():
    entries = [
        {"kind": "drain", "node": "edge1", "reason": "kernel update", "source": "manual", "time": 1.0,
         "steps": ["VIPs handed over: 198.18.0.100 -> edge2"]},
        {"kind": "rollout", "reason": "manual", "time": 2.0, "steps": [["edge2", "ok"], ["edge1", "FAILED, rolled back"]],
         "stopped_at": "edge1", "error": "keepalived is not running"},
        {"kind": "undrain", "node": "edge1", "reason": "done", "source": "kubernetes", "time": 3.0, "error": "boom"},
    ]
    rows = views.history_rows(entries)
    assert [r["kind"] for r in rows] == ["undrain", "rollout", "drain"]
    assert rows[0]["who"] == "edge.undrain (kubernetes)" and "FAILED: boom" in rows[0]["what"]
    assert rows[1]["what"] == ("staged reload edge2:ok -> edge1:FAILED, rolled back; "
                               "STOPPED at edge1: keepalived is not running")
    assert rows[2]["what"] == "edge1: drained; VIPs handed over: 198.18.0.100 -> edge2" and rows[2]["why"] == "kernel update"


def test_metrics_show_drained_nodes_and_stopped_rollouts():
    from prometheus_client.parser import text_string_to_metric_families  # pylint: disable=import-outside-toplevel

    model = model3()
    reports = {"edge1": report("edge1", prio=1, standby=True), "edge2": report("edge2", "MASTER", 140, [VIP]),
               "edge3": None}
    rows = views.build_report(model, typed(reports), drained={"edge1": {}})
    text = views.metrics_text(model, typed(reports), rows, [], {}, drained={"edge1": {"reason": "x"}},
                               rollout_failed={"edge3": {"hash": "abc"}})
    samples = {(s.name, s.labels.get("node")): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("edge_ha_node_drained", "edge1")] == 1 and samples[("edge_ha_node_drained", "edge2")] == 0
    assert samples[("edge_ha_rollout_stopped", "edge3")] == 1 and samples[("edge_ha_rollout_stopped", "edge1")] == 0
    assert [b for b in rows[0]["backups"] if b["node"] == "edge1"][0]["drained"] is True


def test_stale_copy_stays_until_a_live_node_holds_the_vip():
    model = model3()
    killed = report("edge1", "MASTER", 150, [VIP], running=False)
    before = {"edge1": killed, "edge2": report("edge2", prio=140), "edge3": report("edge3", prio=130)}
    wanted = planner.plan(model, before)
    assert wanted.release == []
    assert any(n.startswith("edge1: keepalived is not running; it still answers for 198.18.0.100") for n in wanted.notes)
    after = dict(before, edge2=report("edge2", "MASTER", 140, [VIP]))
    assert planner.plan(model, after).release == ["edge1"]


def test_handover_ignores_a_vip_nobody_held_when_it_began():
    data = example_pillar()
    data["nodes"]["edge3"] = {"address": "198.18.0.13", "interface": "eth0"}
    del data["vrrp_instances"]["VI_INGRESS"]["priority"]
    data["vrrp_instances"]["VI_INGRESS"]["virtual_ipaddress"].append("198.18.0.101/24")  # just added
    model = edge_ha.normalize(data)
    moved = {"edge1": report("edge1", prio=1), "edge2": report("edge2", "MASTER", 140, [VIP]),
             "edge3": report("edge3", prio=130)}
    assert fleet.handover_state(model, typed(moved), "edge1")[0] is False  # every VIP of the instance
    assert fleet.handover_state(model, typed(moved), "edge1", {VIP}) == (True, {VIP: ["edge2"]})
    gap = dict(moved, edge2=report("edge2", prio=140))  # released, nobody took it yet: not done
    assert fleet.handover_state(model, typed(gap), "edge1", {VIP})[0] is False


def test_runner_arguments_are_checked_before_anything_and_failures_exit_non_zero():
    import pytest  # pylint: disable=import-outside-toplevel

    for bad in ("abc", 0, -5, "inf", None, ""):
        with pytest.raises(runner.SaltInvocationError, match="drain_timeout must be a positive number"):
            runner._seconds("drain_timeout", bad)  # pylint: disable=protected-access
    assert runner._seconds("drain_timeout", "120") == 120.0  # pylint: disable=protected-access
    assert runner._exit_code({"ok": False, "error": "x"})["retcode"] == 1  # pylint: disable=protected-access
    assert "retcode" not in runner._exit_code({"ok": True, "error": None})  # pylint: disable=protected-access


def test_a_report_changed_while_the_last_is_on_its_way_follows_it_at_once(monkeypatch):
    import threading  # pylint: disable=import-outside-toplevel

    sent, first_done = [], threading.Event()
    release_first, on_its_way = threading.Event(), threading.Event()

    def fake_send(opts, load, timeout):  # the master answers the first report slowly
        if not sent:
            on_its_way.set()
            release_first.wait(5)
        sent.append(load["data"][edge_node.MINE_KEY]["n"])
        if len(sent) == 1:
            first_done.set()
        return True

    state = {"n": 0}
    monkeypatch.setattr(edge_node, "__opts__", {"id": "edge1"}, raising=False)
    monkeypatch.setattr(edge_node, "__context__", {}, raising=False)
    monkeypatch.setattr(edge_node, "report", lambda probe=False: {"n": state["n"]})
    monkeypatch.setattr(edge_node, "report_digest", lambda data: f"d{data['n']}")
    monkeypatch.setattr(edge_node, "_send_mine", fake_send)
    assert edge_node.publish()["published"]
    assert on_its_way.wait(5)
    state["n"] = 1
    assert edge_node.publish()["published"], "queued behind the one on its way, not dropped"
    state["n"] = 2
    assert edge_node.publish()["published"]
    release_first.set()
    assert first_done.wait(5)
    deadline = __import__("time").monotonic() + 5
    while sent[-1:] != [2] and __import__("time").monotonic() < deadline:
        __import__("time").sleep(0.01)
    assert sent == [0, 2], "the newest report follows at once; the one it replaced is not sent"
    assert not edge_node.publish()["published"], "nothing changed: nothing sent before the heartbeat"
