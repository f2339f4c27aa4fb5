"""
Operations that finish or undo themselves: durable records, what an
interrupted operation leaves behind and how the planner owns it, and how a
staged reload's failures are sorted into refused and transient.
"""

import json
import os

import pytest

from edge_ha_core import desired
from edge_ha_core import planner
from edge_ha_core import store
from tests.support.builders import VIP, master_opts
from tests.support.builders import model3
from tests.support.builders import report
from tests.support.builders import typed

# ---------------------------------------------------------------- durable records


def test_record_round_trip_and_mode(tmp_path):
    path = tmp_path / "drained.json"
    store.dump(str(path), {"edge1": {"reason": "disk swap", "since": 1.0, "source": "manual"}})
    loaded = store.load(str(path), {})
    assert loaded.error is None and loaded.exists
    assert loaded.data == {"edge1": {"reason": "disk swap", "since": 1.0, "source": "manual"}}
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")], "no temporary file left"


def test_missing_record_is_the_default_not_an_error(tmp_path):
    loaded = store.load(str(tmp_path / "nothing.json"), {})
    assert loaded.data == {} and loaded.error is None and not loaded.exists


@pytest.mark.parametrize("damage", ["truncate", "edit", "garbage"])
def test_damaged_record_is_reported_never_read_as_empty(tmp_path, damage):
    path = tmp_path / "drained.json"
    store.dump(str(path), {"edge1": {"reason": "maintenance"}})
    text = path.read_text()
    if damage == "truncate":
        path.write_text(text[: len(text) // 2])
    elif damage == "edit":  # valid JSON, but not what was written
        doc = json.loads(text)
        doc["data"] = {}
        path.write_text(json.dumps(doc))
    else:
        path.write_bytes(b"\x00\x00\x00")
    loaded = store.load(str(path), {})
    assert loaded.data is None
    assert "drained.json" in loaded.error
    assert ("checksum" in loaded.error) if damage == "edit" else ("not valid JSON" in loaded.error)


def test_plain_json_from_an_earlier_version_is_read(tmp_path):
    path = tmp_path / "drained.json"
    path.write_text(json.dumps({"edge2": {"reason": "old"}}))
    assert store.load(str(path), {}).data == {"edge2": {"reason": "old"}}


def test_unreadable_drain_record_keeps_every_listed_node_drained():
    reports = typed({
        "edge1": report("edge1", drained=["edge2"]),
        "edge2": report("edge2", drained=["edge2", "edge3"]),  # the newest list, set by the last drain
        "edge3": None,
    })
    drains = planner.drains_from_reports(reports, "drained.json: not valid JSON")
    assert sorted(drains) == ["edge2", "edge3"]
    assert all(d["source"] == planner.RECOVERED and "unreadable" in d["reason"] for d in drains.values())
    model = model3()
    wanted = planner.plan(model, reports, drains=drains, desired=None)
    assert "edge2" not in wanted.service_nodes and "edge2" in wanted.standby_on


# ---------------------------------------------------------------- what an interrupted operation leaves


def converged(model):
    digests = desired.node_digests(model)
    return digests, {
        "edge1": report("edge1", "MASTER", 150, [VIP], digest=digests["edge1"]),
        "edge2": report("edge2", prio=140, digest=digests["edge2"]),
        "edge3": report("edge3", prio=130, digest=digests["edge3"]),
    }


def test_leftover_handover_flag_and_quiesce_table_are_undone():
    model = model3()
    digests, reports = converged(model)
    # a drain of edge1 killed after its release: out of VIP ownership for the handover, SYNs still dropped,
    # and no drain record (the drain was undone before it was written, or never got that far)
    reports["edge1"] = report("edge1", "FAULT", 150, [], out=True, reason=planner.HANDOVER_PREFIX + "drained: x",
                              digest=digests["edge1"])
    reports["edge1"]["quiesced"] = True
    reports["edge2"] = report("edge2", "MASTER", 140, [VIP], digest=digests["edge2"])
    wanted = planner.plan(model, reports, desired=digests)
    assert wanted.lift_handover == ["edge1"] and wanted.unquiesce == ["edge1"]
    assert not wanted.fence and not wanted.standby_on
    assert wanted.repairs == [("edge1", "handover flag (out of VIP ownership) lifted"),
                              ("edge1", "quiesce table (new connections to its VIPs dropped) removed")]
    assert wanted.node_jobs == 2
    assert "edge1" in wanted.service_nodes, "back in service once the leftovers are undone"
    assert any(n.startswith("edge1: left by an interrupted operation") for n in wanted.notes)


def test_leftover_handover_of_a_drained_node_completes_the_drain():
    model = model3()
    digests, reports = converged(model)
    drains = {"edge1": {"reason": "maintenance", "since": 1.0, "source": "manual"}}
    digests = desired.node_digests(model, ("edge1",))
    reports["edge1"] = report("edge1", "FAULT", 150, [], out=True, reason=planner.HANDOVER_PREFIX + "drained: x")
    reports["edge2"] = report("edge2", "MASTER", 140, [VIP])
    wanted = planner.plan(model, reports, drains=drains, desired=digests)
    assert wanted.standby_on == ["edge1"] and wanted.lift_handover == ["edge1"]
    assert "edge1" not in wanted.service_nodes


def test_leftover_handover_of_an_unhealthy_node_becomes_a_fence():
    model = model3()
    digests, reports = converged(model)
    reports["edge3"] = report("edge3", "FAULT", 130, [], out=True, reason=planner.HANDOVER_PREFIX + "undrain edge1",
                              healthy=False, digest=digests["edge3"])
    wanted = planner.plan(model, reports, desired=digests)
    assert wanted.fence == ["edge3"] and wanted.lift_handover == []


def test_other_out_of_service_reasons_are_not_leftovers():
    model = model3()
    digests, reports = converged(model)
    reports["edge3"] = report("edge3", prio=130, out=True, reason="operator: disk swap", digest=digests["edge3"])
    wanted = planner.plan(model, reports, desired=digests)
    assert wanted.lift_handover == [] and wanted.node_jobs == 0
    assert "edge3" not in wanted.service_nodes


# ---------------------------------------------------------------- staged reload outcomes


def state_ret(comment, result=False, key="keepalived_|-keepalived_|-keepalived_|-managed"):
    return {"pkg_|-edge-tools_|-edge-tools_|-installed": {"result": True, "comment": "ok"},
            key: {"result": result, "comment": comment}}


@pytest.mark.parametrize("applied, kind", [
    (state_ret("keepalived updated: config", True), "ok"),
    (state_ret("keepalived -t refused the config:\n  line 3: unknown keyword\nnothing changed"), planner.REFUSED),
    (state_ret("edge_ha:vrrp_instances:VI_1:advert_int: must be ...\nnothing changed"), planner.REFUSED),
    (state_ret("keepalived is not running after loading the new /etc/keepalived/keepalived.conf; ..."),
     planner.REFUSED),
    (None, planner.TRANSIENT),                                 # no answer within the timeout
    ("Minion did not return. [Not connected]", planner.TRANSIENT),
    (['The function "state.apply" is running as PID 4242 and was started at ...'], planner.TRANSIENT),
    (state_ret("One or more requisite failed", key="kmod_|-ip_vs_|-ip_vs_|-present"), planner.TRANSIENT),
    ({}, planner.TRANSIENT),
])
def test_apply_outcomes_sorted_into_refused_and_transient(applied, kind):
    outcome = planner.classify_apply(applied)
    assert outcome.kind == kind
    assert (outcome.error is None) == (kind == "ok")


def test_state_run_in_progress_says_so():
    outcome = planner.classify_apply(['The function "state.apply" is running as PID 4242 and was started at x'])
    assert outcome.error.startswith("another state run is in progress")


def test_backoff_doubles_up_to_a_bound_and_a_new_config_is_tried_at_once():
    assert [planner.retry_backoff(n) for n in (1, 2, 3, 4)] == [5, 10, 20, 40]
    assert planner.retry_backoff(20) == planner.RETRY_MAX
    retries = {"edge2": {"digest": "a" * 16, "attempts": 1, "next": 105.0}}
    assert not planner.retry_due(retries, "edge2", "a" * 16, 100.0)
    assert planner.retry_due(retries, "edge2", "a" * 16, 105.0)
    assert planner.retry_due(retries, "edge2", "b" * 16, 100.0), "another config: no waiting"
    assert planner.retry_due(retries, "edge3", "a" * 16, 0.0)


# ---------------------------------------------------------------- the runner's Kubernetes calls and records

from tests.support.modload import load  # noqa: E402  pylint: disable=wrong-import-position

runner = load("_runners/edge.py")


@pytest.fixture(name="master")
def _master(tmp_path, monkeypatch):
    """The runner with a master's opts (cachedir in tmp_path) and a fake edge_k8s; its process state reset."""
    calls = []
    monkeypatch.setattr(runner, "__opts__", master_opts(tmp_path, edge_ha_kubernetes_backoff=10),
                        raising=False)
    monkeypatch.setattr(runner, "_PROCESS", {"lock": runner._PROCESS["lock"]})  # pylint: disable=protected-access
    k8s = {}
    monkeypatch.setattr(runner, "_k8s", lambda: k8s)
    return {"calls": calls, "k8s": k8s, "dir": tmp_path}


def test_a_hung_kubernetes_api_costs_one_timeout_then_calls_are_skipped_at_once(master):
    def hung(*args, **kwargs):
        master["calls"].append(args)
        raise runner.CommandExecutionError("timeout: no answer from the Kubernetes API within 3s")

    master["k8s"]["edge_k8s.ingress_pods"] = hung
    master["k8s"]["edge_k8s.record_event"] = hung
    model = model3()
    assert runner._pods_ready(model) is None  # pylint: disable=protected-access
    assert len(master["calls"]) == 1
    # every later call in the backoff window is skipped without a request: an Event per fenced node costs nothing
    for _ in range(5):
        assert runner._event("VIPFenced", "edge1: out of VIP ownership", "Warning", model) is None  # pylint: disable=protected-access
    assert len(master["calls"]) == 1
    notes = runner._standing_notes()  # pylint: disable=protected-access
    assert len(notes) == 1 and notes[0].startswith("the Kubernetes API has not answered since")
    # after the backoff one call tries again; an answer clears the state
    runner._PROCESS["kube_down"]["at"] -= 11  # pylint: disable=protected-access
    master["k8s"]["edge_k8s.ingress_pods"] = lambda **kw: {}
    assert runner._pods_ready(model) == {n: False for n in model["nodes"]}  # pylint: disable=protected-access
    assert runner._standing_notes() == []  # pylint: disable=protected-access


def test_other_kubernetes_errors_do_not_skip_later_calls(master):
    def forbidden(*args, **kwargs):
        master["calls"].append(args)
        raise runner.CommandExecutionError("forbidden: the service account may not list pods")

    master["k8s"]["edge_k8s.ingress_pods"] = forbidden
    runner._pods_ready(model3())  # pylint: disable=protected-access
    runner._pods_ready(model3())  # pylint: disable=protected-access
    assert len(master["calls"]) == 2


def test_truncated_drain_record_is_read_as_the_nodes_lists_and_rewritten_by_the_next_drain(master, monkeypatch):
    path = master["dir"] / "edge_ha" / "drained.json.p"  # Salt's localfs cache: <cachedir>/<bank>/<key>.p
    runner._save_json("drained.json", {"edge1": {"reason": "disk", "since": 1.0, "source": "manual"}})  # pylint: disable=protected-access
    path.write_bytes(path.read_bytes()[:20])
    monkeypatch.setattr(runner, "_record", lambda kind, **data: master["calls"].append((kind, data)))
    reports = typed({"edge1": report("edge1", drained=["edge1"]), "edge2": report("edge2", drained=["edge1"]),
                     "edge3": None})
    drains = runner._drained(reports)  # pylint: disable=protected-access
    assert list(drains) == ["edge1"] and drains["edge1"]["source"] == planner.RECOVERED
    assert master["calls"] == [("drain_record", {"error": master["calls"][0][1]["error"], "recovered": ["edge1"]})]
    assert "drained.json" in runner._standing_notes()[0]  # pylint: disable=protected-access
    runner._drained(reports)  # pylint: disable=protected-access
    assert len(master["calls"]) == 1, "recorded once, not on every reconcile"
    runner._save_json("drained.json", drains)  # pylint: disable=protected-access
    assert runner._drained(reports) == drains and runner._standing_notes() == []  # pylint: disable=protected-access


# ---------------------------------------------------------------- the cheapest safe path for a planned change

keepalived_mod = load("_modules/keepalived.py")
PATHS = {"state_dir": "/run/edge-ha", "notify_script": "/usr/local/sbin/edge-ha-notify"}


def rendered(pillar_changes=None, node="edge1"):
    from tests.support.builders import example_pillar  # pylint: disable=import-outside-toplevel
    from edge_ha_core import model as edge_model  # pylint: disable=import-outside-toplevel

    data = example_pillar()
    for change in pillar_changes or ():
        change(data)
    return keepalived_mod.render_config(edge_model.view_for_node(edge_model.normalize(data), node), PATHS)


def test_vrrp_identities_read_from_the_rendered_config():
    ids = desired.vrrp_identities(rendered())
    assert ids and all(len(v) == 3 and v[0] and v[1] for v in ids.values())


def first_instance(data):
    return next(iter(data["vrrp_instances"].values()))


@pytest.mark.parametrize("change, lost", [
    (lambda d: first_instance(d).__setitem__("advert_int", 2), False),          # timers: SIGHUP keeps state
    (lambda d: first_instance(d).__setitem__("virtual_ipaddress",
                                             first_instance(d)["virtual_ipaddress"] + ["198.18.0.101/24"]), False),
    (lambda d: first_instance(d).__setitem__("virtual_router_id", 99), True),   # another VRID: a new instance
    (lambda d: (first_instance(d).__setitem__("vrrp_version", 3), first_instance(d).pop("authentication", None)),
     True),
])
def test_reload_keeps_state_unless_vrid_interface_or_version_change(change, lost):
    old, new = rendered(), rendered([change])
    assert old != new
    names = sorted(desired.vrrp_identities(old))
    gone = desired.reload_keeps_state(old, new, names)
    assert bool(gone) is lost
    assert desired.reload_keeps_state(old, old, names) == []


def with_instance(name, vrid, address):
    """A pillar change: one more VRRP instance, a copy of the first with its own VRID and address."""
    def change(data):
        inst = dict(first_instance(data), virtual_router_id=vrid, virtual_ipaddress=[f"{address}/24"])
        inst.pop("priorities", None)
        data["vrrp_instances"][name] = inst
    return change


def test_an_instance_only_removed_or_only_added_keeps_the_others_state():
    # a LoadBalancer Service deleted: its pool instance goes with its address; the node holding it and the
    # ingress VIP reloads in place (before: "state lost", the ingress VIP handed over too)
    both = rendered([with_instance("lb_lab_60_v4", 60, "198.18.0.120")])
    alone = rendered()
    names = sorted(desired.vrrp_identities(both))
    assert "lb_lab_60_v4" in names and len(names) == 2
    assert desired.vrrp_addresses(both)["lb_lab_60_v4"] == {"198.18.0.120"}
    assert desired.reload_keeps_state(both, alone, names) == []
    # a Service created: its instance added
    assert desired.reload_keeps_state(alone, both, sorted(desired.vrrp_identities(alone))) == []
    # one removed and another added at once
    other = rendered([with_instance("lb_lab_61_v4", 61, "198.18.0.121")])
    assert desired.reload_keeps_state(both, other, names) == []


def test_an_instance_renamed_with_its_address_loses_its_state():
    # the address goes on under another instance name: keepalived starts that one as BACKUP
    old = rendered([with_instance("VI_OLD", 60, "198.18.0.120")])
    new = rendered([with_instance("VI_NEW", 60, "198.18.0.120")])
    assert desired.reload_keeps_state(old, new, sorted(desired.vrrp_identities(old))) == ["VI_OLD"]
    # and the instance the node does not hold is not named
    assert desired.reload_keeps_state(old, new, [n for n in desired.vrrp_identities(old) if n != "VI_OLD"]) == []
