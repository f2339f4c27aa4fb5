"""Pure logic of the beacons and the edge runner (no Salt)."""

import copy
import pathlib

import yaml

from tests.support.modload import load

edge_ha = load("_modules/edge_ha.py")
vrrp = load("_beacons/vrrp.py")
ingress = load("_beacons/ingress_health.py")
runner = load("_runners/edge.py")

EXAMPLE = yaml.safe_load((pathlib.Path(__file__).resolve().parents[2] / "pillar" / "edge_ha.sls.example").read_text())


def model3():
    data = copy.deepcopy(EXAMPLE["edge_ha"])
    data["nodes"]["edge3"] = {"address": "198.18.0.13", "interface": "eth0"}
    del data["vrrp_instances"]["VI_INGRESS"]["priority"]
    return edge_ha.normalize(data)


def report(node, state="BACKUP", prio=100, vips=(), running=True, healthy=True, out=False, reason=""):
    return {
        "node": node,
        "keepalived": {"running": running, "instances": {"VI_INGRESS": {
            "state": state, "priority": prio, "since": 1000.0 + prio, "vips_present": list(vips)}}},
        "out_of_service": {"out_of_service": out, "reason": reason},
        "ingress": {"healthy": healthy},
    }


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


def test_plan_fences_unhealthy_and_restores_own_fencing_only():
    model = model3()
    reports = {
        "edge1": report("edge1", "MASTER", 150, ["198.18.0.100"], healthy=False),
        "edge2": report("edge2", prio=140, out=True, reason=runner.FENCE_REASON),
        "edge3": report("edge3", prio=130, out=True, reason="drained by operator"),
    }
    wanted = runner.plan(model, reports)
    assert wanted["fence"] == ["edge1"]
    assert wanted["unfence"] == ["edge2"]
    assert wanted["service_nodes"] == ["edge2"]  # edge3 stays out (not ours), edge1 unhealthy


def test_plan_never_fences_the_last_node_and_skips_silent_minions():
    model = model3()
    reports = {
        "edge1": report("edge1", "MASTER", 150, ["198.18.0.100"], healthy=False),
        "edge2": report("edge2", healthy=False),
        "edge3": None,
    }
    wanted = runner.plan(model, reports)
    assert wanted["fence"] == []
    assert any("every reachable node's ingress is unhealthy" in n for n in wanted["notes"])
    assert any(n.startswith("edge3: no answer") for n in wanted["notes"])
    assert wanted["service_nodes"] == []


def test_plan_releases_stale_vips_of_a_stopped_keepalived():
    model = model3()
    reports = {
        "edge1": report("edge1", "MASTER", 150, ["198.18.0.100"], running=False),
        "edge2": report("edge2", "MASTER", 140, ["198.18.0.100"]),
        "edge3": report("edge3", prio=130),
    }
    wanted = runner.plan(model, reports, pods_ready={"edge1": True, "edge2": True, "edge3": False})
    assert wanted["release"] == ["edge1"]
    assert wanted["service_nodes"] == ["edge2"]  # edge1 stopped, edge3's pod not ready


def test_report_shows_observed_owner_and_flags():
    model = model3()
    reports = {
        "edge1": report("edge1", "MASTER", 150, ["198.18.0.100"], running=False),
        "edge2": report("edge2", "MASTER", 140, ["198.18.0.100"]),
        "edge3": None,
    }
    rows = runner.build_report(model, reports, {"match": False})
    row = rows[0]
    assert row["vip"] == "198.18.0.100" and row["vrid"] == 51
    assert row["owner"] == ["edge1", "edge2"] and row["flags"] == ["split_brain"]
    assert row["backups"] == [{"node": "edge3", "state": "NO ANSWER", "priority": None}]
    assert row["last_transition"] == 1150.0
    table = runner.format_table(rows)
    assert table.splitlines()[0].split() [:3] == ["VIP", "VRID", "OWNER"]
    assert "edge1,edge2" in table and "DIFFERS" in table and "split_brain" in table

    reports["edge1"] = report("edge1", "FAULT", 0, [])
    reports["edge2"] = report("edge2", "BACKUP", 140, [])
    assert runner.build_report(model, reports)[0]["flags"] == ["no_owner"]
