"""
The runner's LoadBalancer step (issue #15) against an in-memory cluster: the
pillar compiled with the edge_ha_lb ext_pillar's instances, assignments
recorded, status written once a node holds the address, refusal Events
deduplicated, a 409 listed again, nothing at all without address pools.
"""

import copy

import pytest

from edge_ha_core import lb
from edge_ha_core import model as edge_ha
from tests.support.builders import example_pillar, master_opts
from tests.support.modload import load

runner = load("_runners/edge.py")
ext = load("_pillar/edge_ha_lb.py")

POOLS = {"public": {"addresses": ["203.0.113.0/29"], "virtual_router_ids": "100-107", "vrrp": {"advert_int": 1}}}


class Conflict(runner.CommandExecutionError):
    conflict = True


class Cluster:
    def __init__(self):
        self.services, self.events, self.calls, self.version = {}, [], [], 1
        self.conflict_once = set()

    def add(self, name, cls=lb.LB_CLASS, annotations=None):
        self.version += 1
        spec = {"type": "LoadBalancer", "ports": [{"port": 80, "protocol": "TCP"}]}
        if cls:
            spec["loadBalancerClass"] = cls
        self.services[name] = {"metadata": {"namespace": "apps", "name": name, "uid": f"uid-{name}",
                                            "resourceVersion": str(self.version), "annotations": annotations or {}},
                               "spec": spec, "status": {}}

    def _write(self, name, rv):
        svc = self.services[name]
        if name in self.conflict_once:
            self.conflict_once.discard(name)
            raise Conflict("409")
        if rv is not None and str(rv) != svc["metadata"]["resourceVersion"]:
            raise Conflict("409")
        self.version += 1
        svc["metadata"]["resourceVersion"] = str(self.version)
        return svc

    def functions(self):
        def listing(kubernetes=None):
            self.calls.append("list")
            return {"resource_version": str(self.version), "services": copy.deepcopy(list(self.services.values()))}

        def record(ns, name, assignment, rv, kubernetes=None):
            self.calls.append(("record", name))
            svc = self._write(name, rv)
            if assignment is None:
                svc["metadata"]["annotations"].pop(lb.ASSIGNMENT_ANNOTATION, None)
            else:
                svc["metadata"]["annotations"][lb.ASSIGNMENT_ANNOTATION] = assignment
            return {"resource_version": svc["metadata"]["resourceVersion"]}

        def status(ns, name, addresses, rv, kubernetes=None):
            self.calls.append(("status", name))
            svc = self._write(name, rv)
            svc["status"] = {"loadBalancer": {"ingress": [{"ip": a} for a in addresses]}} if addresses else {}
            return {"resource_version": svc["metadata"]["resourceVersion"]}

        def event(ns, name, reason, message, event_type="Normal", uid=None, kubernetes=None):
            self.events.append((name, reason))
            return {"created": True}

        return {"edge_k8s.load_balancer_services": listing, "edge_k8s.record_assignment": record,
                "edge_k8s.set_load_balancer_status": status, "edge_k8s.service_event": event}


@pytest.fixture(name="master")
def _master(tmp_path, monkeypatch):
    opts = master_opts(tmp_path, edge_ha_kubernetes_backoff=10, edge_ha_lb_status_wait=0)
    monkeypatch.setattr(runner, "__opts__", opts, raising=False)
    monkeypatch.setattr(ext, "__opts__", opts, raising=False)
    monkeypatch.setattr(runner, "_PROCESS", {"lock": runner._PROCESS["lock"]})
    monkeypatch.setattr(runner, "_record", lambda kind, **data: None)
    jobs = []
    monkeypatch.setattr(runner, "_job", lambda nodes, fun, args=(), timeout=None, **kw: jobs.append((fun, nodes)) or
                        {n: True for n in nodes})
    cluster = Cluster()
    monkeypatch.setattr(runner, "_k8s", cluster.functions)
    data = example_pillar()
    data["address_pools"] = copy.deepcopy(POOLS)

    def desired(refresh=False):  # the master's pillar.show_pillar: the pillar and the ext_pillar
        pillar = copy.deepcopy(data)
        pillar["vrrp_instances"].update(
            (ext.ext_pillar("edge1", {"edge_ha": pillar}).get("edge_ha") or {}).get("vrrp_instances") or {})
        return {"model": edge_ha.normalize(pillar)}

    monkeypatch.setattr(runner, "_desired", desired)
    return {"cluster": cluster, "data": data, "desired": desired, "held": set(), "monkeypatch": monkeypatch,
            "jobs": jobs}


def holders(master):
    return lambda model, reports, **kw: {v: (["edge1"] if v in master["held"] else [])
                                         for i in model["vrrp_instances"].values() for v in i["vips"]}


def step(master):
    """The two halves of a reconcile's LoadBalancer step; returns (model, actions, notes)."""
    actions, notes = [], []
    run = runner._lb_assign(master["desired"](), actions, notes)
    model = run["state"]["model"]
    master["monkeypatch"].setattr(runner.fleet, "vip_holders", holders(master))
    runner._lb_status(model, {}, run, actions)
    return model, actions, notes


def test_assign_record_render_then_status_once_held(master):
    cluster = master["cluster"]
    cluster.add("web")
    cluster.add("theirs", cls="example.com/other")
    model, actions, notes = step(master)
    assert notes == []
    assert model["vrrp_instances"]["lb_public_100_v4"]["vips"] == ["203.0.113.0"]
    assert model["vrrp_instances"]["lb_public_100_v4"]["address_pool"] == "public"
    web = cluster.services["web"]
    assert lb.parse_recorded(web["metadata"]["annotations"][lb.ASSIGNMENT_ANNOTATION]) == \
        lb.Recorded("203.0.113.0", "public", 100)
    assert web["status"] == {} and ("web", "AddressAssigned") in cluster.events
    assert cluster.services["theirs"]["metadata"]["annotations"] == {}
    assert runner._vips(model) == runner._vips(edge_ha.normalize(example_pillar()))  # externalIPs: pillar VIPs only
    # the nodes' in-memory pillar refreshed once (their reports must know the new instance)
    assert master["jobs"] == [("saltutil.refresh_pillar", sorted(model["nodes"]))]
    master["held"].add("203.0.113.0")
    cluster.calls.clear()
    step(master)
    assert lb.ingress_ips(web) == ["203.0.113.0"]
    assert [c for c in cluster.calls if c != "list"] == [("status", "web")]
    cluster.calls.clear()
    step(master)  # nothing left to write
    assert [c for c in cluster.calls if c != "list"] == []
    report = runner._lb_report(model, [{"vip": "203.0.113.0"}])
    assert report["services"] == {"203.0.113.0": ["apps/web"]} and sum(report["owner_spread"].values()) >= 2


def test_refusals_post_one_event_and_deletion_releases(master):
    cluster = master["cluster"]
    cluster.add("dns", annotations={lb.IPS_ANNOTATION: "203.0.113.5"})
    cluster.add("dup", annotations={lb.IPS_ANNOTATION: "203.0.113.5"})
    for _ in range(3):
        model, _, _ = step(master)
    assert cluster.events.count(("dup", lb.ADDRESS_TAKEN)) == 1
    assert lb.ASSIGNMENT_ANNOTATION not in cluster.services["dup"]["metadata"]["annotations"]
    assert [n for n, i in model["vrrp_instances"].items() if i.get("address_pool")] == ["lb_public_100_v4"]
    del cluster.services["dns"]
    model, _, _ = step(master)  # dup gets the address it asked for, now free
    assert lb.parse_recorded(cluster.services["dup"]["metadata"]["annotations"][lb.ASSIGNMENT_ANNOTATION]).address \
        == "203.0.113.5"
    assert model["vrrp_instances"]["lb_public_100_v4"]["vips"] == ["203.0.113.5"]
    del cluster.services["dup"]
    model, actions, _ = step(master)
    assert not [n for n, i in model["vrrp_instances"].items() if i.get("address_pool")]
    assert any("-['lb_public_100_v4']" in a for a in actions), actions


def test_a_conflict_lists_again(master):
    cluster = master["cluster"]
    cluster.add("web")
    cluster.conflict_once.add("web")
    step(master)
    assert cluster.calls.count("list") >= 2
    assert lb.ASSIGNMENT_ANNOTATION in cluster.services["web"]["metadata"]["annotations"]


def test_a_service_no_longer_ours_loses_status_and_record(master):
    cluster = master["cluster"]
    cluster.add("web")
    master["held"].add("203.0.113.0")
    step(master)
    step(master)
    assert lb.ingress_ips(cluster.services["web"]) == ["203.0.113.0"]
    cluster.services["web"]["spec"]["loadBalancerClass"] = "example.com/other"
    step(master)
    web = cluster.services["web"]
    assert lb.ingress_ips(web) == [] and lb.ASSIGNMENT_ANNOTATION not in web["metadata"]["annotations"]
    assert ("web", "AddressReleased") in cluster.events


def test_nothing_without_address_pools(master):
    state = {"model": edge_ha.normalize(example_pillar())}
    assert runner._lb_assign(state, [], []) is None
    assert master["cluster"].calls == []
    assert runner._lb_report(state["model"], []) is None

