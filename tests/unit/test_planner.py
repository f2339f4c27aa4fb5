"""The controller's pure core: typed reports, the fleet's view, the planner, desired-state digests."""

import dataclasses

import pytest

from edge_ha_core import desired
from edge_ha_core import fleet
from edge_ha_core import model as edge_model
from edge_ha_core import planner
from tests.support.builders import VIP
from tests.support.builders import model3
from tests.support.builders import report
from tests.support.builders import typed


def converged(model, digests):
    """Three nodes as they should be: edge1 owns the VIP, every node runs its desired config."""
    return {
        "edge1": report("edge1", "MASTER", 150, [VIP], digest=digests["edge1"]),
        "edge2": report("edge2", prio=140, digest=digests["edge2"]),
        "edge3": report("edge3", prio=130, digest=digests["edge3"]),
    }


def test_converged_fleet_plans_no_job():
    model = model3()
    digests = desired.node_digests(model)
    wanted = planner.plan(model, converged(model, digests), planner.KubeView({n: True for n in model["nodes"]}),
                          desired=digests)
    assert wanted.node_jobs == 0 and not wanted.safety
    assert wanted.service_nodes == ["edge1", "edge2", "edge3"]


def test_only_the_node_whose_config_differs_is_rerendered():
    model = model3()
    digests = desired.node_digests(model)
    reports = converged(model, digests)
    reports["edge2"]["config"]["digest"] = "0" * 16
    reports["edge3"]["keepalived"]["running"] = False  # a stopped keepalived is not re-rendered by reconcile
    reports["edge3"]["config"]["digest"] = None
    wanted = planner.plan(model, reports, desired=digests)
    assert wanted.rerender == ["edge2"]
    assert wanted.node_jobs == 1


def test_drains_change_the_desired_digest_of_nodes_with_keepalived_virtual_servers():
    model = model3()
    plain = desired.node_digests(model)
    drained = desired.node_digests(model, ("edge1",))
    assert all(plain[n] != drained[n] for n in model["nodes"])  # every node renders edge1's weight 0
    assert desired.node_digests(model) == plain  # stable


def test_view_digest_is_in_the_rendered_header_and_hides_the_password():
    model = model3()
    view = edge_model.view_for_node(model, "edge1")
    line = desired.header_line(view)
    assert desired.read_digest("x\n" + line + "\nglobal_defs {}\n") == desired.view_digest(view)
    assert desired.read_digest("# Managed by hand\n") is None
    other = dict(view, vrrp_instances=[dict(i, authentication={"auth_type": "PASS", "auth_pass": "other1"})
                                       for i in view["vrrp_instances"]])
    assert desired.view_digest(other) != desired.view_digest(view)
    assert "other1" not in repr(desired._masked(other))  # pylint: disable=protected-access


def test_report_from_dict_tolerates_missing_parts_and_rejects_non_reports():
    rep = fleet.NodeReport.from_dict({"node": "edge1", "keepalived": {"running": True}})
    assert rep.running and rep.instances == {} and rep.ingress_healthy is None and rep.config_digest is None
    for bad in (None, [], "edge1", {"node": "edge1"}, {"keepalived": "x"}):
        with pytest.raises(ValueError):
            fleet.NodeReport.from_dict(bad)
    assert fleet.as_reports({"edge1": {"keepalived": 3}, "edge2": None}) == {"edge1": None, "edge2": None}


def test_live_owner_and_stale_copies_are_defined_once():
    model = model3()
    reports = typed({
        "edge1": report("edge1", "MASTER", 150, [VIP], running=False),  # SIGKILLed, copy still there
        "edge2": report("edge2", "MASTER", 140, [VIP]),
        "edge3": report("edge3", prio=130),
    })
    assert fleet.vip_holders(model, reports) == {VIP: ["edge2"]}
    assert fleet.vip_holders(model, reports, running_only=False) == {VIP: ["edge1", "edge2"]}
    assert fleet.live_owners(model, reports) == {VIP: "edge2"}
    assert planner.stale_copies(model, reports, {"edge1"}) == (["edge1"], {})
    alone = dict(reports, edge2=typed({"edge2": report("edge2", prio=140)})["edge2"])
    assert planner.stale_copies(model, alone, {"edge1"}) == ([], {"edge1": [VIP]})


def test_vrrp_winner_override_counts_a_standby_node_as_ready():
    model = model3()
    reports = typed({"edge1": report("edge1", prio=1, standby=True), "edge2": report("edge2", "MASTER", 140, [VIP]),
                     "edge3": report("edge3", prio=130)})
    assert fleet.vrrp_winner(model, reports, "VI_INGRESS") == "edge2"
    assert fleet.vrrp_winner(model, reports, "VI_INGRESS", ready_override={"edge1"}) == "edge1"
    assert fleet.vrrp_winner(model, reports, "VI_INGRESS", exclude={"edge1", "edge2", "edge3"}) is None


def test_split_fence_lifted_only_after_the_hold_and_when_the_split_is_gone():
    reports = typed({"edge2": report("edge2", out=True, reason="split brain: edge1 keeps VI_INGRESS", out_since=100.0)})
    assert planner.split_fences_to_lift(reports, {"edge2"}, {}, now=120.0, hold=30) == set()
    assert planner.split_fences_to_lift(reports, {"edge2"}, {}, now=131.0, hold=30) == {"edge2"}
    assert planner.split_fences_to_lift(reports, {"edge2"}, {"edge2": "x"}, now=131.0, hold=30) == set()


class FakeCache:
    """Salt's cache API (fetch/updated) over a dict, as the 3008 mine bank stores it."""

    def __init__(self, entries):
        self.entries = entries  # {(bank, key): (data, stamp)}

    def fetch(self, bank, key):
        return self.entries.get((bank, key), (None, None))[0] or {}

    def updated(self, bank, key):
        return self.entries.get((bank, key), (None, None))[1]


def test_reports_are_read_from_the_mine_fresh_and_under_their_own_name():
    good = report("edge1", "MASTER", 150, [VIP])
    cache = FakeCache({
        ("mine", "edge1"): ({fleet.MINE_KEY: good}, 990),
        ("mine", "edge2"): ({fleet.MINE_KEY: report("edge2")}, 900),  # older than max_age
        ("mine", "edge3"): ({fleet.MINE_KEY: report("edge1")}, 995),  # names another node
        ("minions/edge4", "mine"): ({fleet.MINE_KEY: report("edge4")}, 999),  # the older Salt bank
        ("mine", "edge5"): ({"other": 1}, 999),  # never published
    })
    got = fleet.read_reports(cache, ["edge1", "edge2", "edge3", "edge4", "edge5"], now=1000, max_age=35)
    assert got["edge1"].holds("VI_INGRESS", VIP) and got["edge1"].received == 990
    assert got["edge2"] is None and got["edge3"] is None and got["edge5"] is None
    assert got["edge4"].node == "edge4"


def test_split_brain_needs_reports_of_the_same_moment():
    """A graceful stop: the old owner's last report (before edge2 took over) still shows the VIP."""
    model = model3()
    stopping = {
        "edge1": report("edge1", "MASTER", 150, [VIP], since=900.0, time=1000.0),  # built before the takeover
        "edge2": report("edge2", "MASTER", 140, [VIP], since=1000.5, time=1000.6),
        "edge3": report("edge3", prio=130),
    }
    assert fleet.split_brain_losers(model, typed(stopping)) == {}
    assert planner.plan(model, stopping, now=1001.0).split_fence == {}
    # both still hold it in reports built after the takeover: a real split brain, edge2 is fenced
    split = dict(stopping, edge1=report("edge1", "MASTER", 150, [VIP], since=900.0, time=1001.0))
    assert planner.plan(model, split, now=1002.0).split_fence == {"edge2": "split brain: edge1 keeps VI_INGRESS"}


@pytest.mark.parametrize("recorded, started_at, stopping", [
    ({"VI_INGRESS": {"state": "STOP", "time": 50.0}}, 10.0, True),        # graceful stop under way
    ({"VI_INGRESS": {"state": "STOP", "time": 5.0}}, 10.0, False),        # a STOP from before this keepalived started
    ({"VI_INGRESS": {"state": "STOP", "time": 5.0}}, None, True),         # start time unknown: STOP counts
    ({"A": {"state": "STOP", "time": 50.0}, "B": {"state": "MASTER", "time": 60.0}}, 10.0, False),  # not all
    ({"VI_INGRESS": {}}, 10.0, False),                                    # never recorded anything
    ({}, 10.0, False),
])
def test_keepalived_stopping_needs_every_instance_stopped_since_it_started(recorded, started_at, stopping):
    assert fleet.keepalived_stopping(recorded, started_at) is stopping


def test_a_stopping_owner_leaves_the_service_at_once_and_is_no_vrrp_candidate():
    model = model3()
    digests = desired.node_digests(model)
    reports = converged(model, digests)
    # graceful stop of the owner: its VIP is already gone, the process lives on for about a second
    reports["edge1"]["keepalived"].update(running=False, stopping=True)
    reports["edge1"]["keepalived"]["instances"]["VI_INGRESS"].update(state="STOP", vips_present=[])
    wanted = planner.plan(model, reports, planner.KubeView({n: True for n in model["nodes"]}), desired=digests)
    assert wanted.service_nodes == ["edge2", "edge3"]
    assert not wanted.safety and wanted.node_jobs == 0
    assert "edge1: keepalived is stopping (it has given up its VIPs)" in wanted.notes
    assert fleet.vrrp_winner(model, typed(reports), "VI_INGRESS") == "edge2"
    assert typed(reports)["edge1"].stopping


def test_stale_copy_waits_for_a_holder_report_built_after_the_kill():
    model = model3()
    # edge2's last report (t=100) still shows the VIP it held before the owner came back; edge1 was killed
    # and reported so at t=105: edge2's report says nothing about now, the copy on edge1 stays
    reports = {"edge1": report("edge1", "MASTER", 150, [VIP], running=False, time=105.0),
               "edge2": report("edge2", "MASTER", 140, [VIP], time=100.0),
               "edge3": report("edge3", prio=130, time=104.0)}
    assert planner.stale_copies(model, typed(reports), {"edge1"}) == ([], {"edge1": [VIP]})
    reports["edge2"]["time"] = 106.0  # edge2 took over after the kill and said so
    assert planner.stale_copies(model, typed(reports), {"edge1"}) == (["edge1"], {})


# ---------------------------------------------------------------- triggers already covered

def _start(when, **digests):
    return planner.ReconcileStart(when, dict(digests))


def test_an_event_that_arrived_after_the_reconcile_began_is_not_covered():
    assert not planner.trigger_covered(_start(100.0, edge1="a"), 100.5)
    assert not planner.trigger_covered(_start(100.0, edge1="a"), 100.0)  # same instant: run again


def test_an_event_that_arrived_before_a_reconcile_began_is_covered():
    assert planner.trigger_covered(_start(100.0, edge1="a"), 99.0)


def test_without_a_record_or_an_arrival_time_nothing_is_covered():
    assert not planner.trigger_covered(None, 99.0)
    assert not planner.trigger_covered(_start(100.0), None)


def test_an_event_naming_a_report_is_covered_only_if_that_run_read_the_report_the_mine_holds():
    start = _start(100.0, edge1="a", edge2=None)
    assert planner.trigger_covered(start, 99.0, "edge1", "a", names_report=True)
    assert not planner.trigger_covered(start, 99.0, "edge1", "b", names_report=True)  # a newer report
    assert not planner.trigger_covered(start, 99.0, "edge3", "a", names_report=True)  # not read at all
    assert planner.trigger_covered(start, 99.0, "edge2", None, names_report=True)  # nothing then, nothing now


def test_the_start_record_round_trips_and_a_broken_one_is_none():
    reports = typed({"edge1": dict(report("edge1"), digest="d1"), "edge2": None})
    start = planner.ReconcileStart.of(100.0, reports)
    assert start.reports == {"edge1": "d1", "edge2": None}
    assert planner.ReconcileStart.from_dict(dataclasses.asdict(start)) == start
    for broken in (None, [], {"time": 1.0}, {"time": "x", "reports": {}}, {"reports": {}}):
        assert planner.ReconcileStart.from_dict(broken) is None


def test_salt_event_stamps_of_3006_to_3008_read_as_utc():
    assert planner.stamp_time("2026-12-01T19:00:00.500000+00:00") == 1796151600.5
    assert planner.stamp_time("2026-12-01T19:00:00.500000") == 1796151600.5  # naive utcnow() of 3006/3007
    for bad in ("", None, "yesterday", 5):
        assert planner.stamp_time(bad) is None
