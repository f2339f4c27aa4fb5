"""
edge_k8s's LoadBalancer calls (issue #15) against the API emulator through the
official client: list, record the assignment, write the status, post Events,
watch; with resourceVersion preconditions, and on a hardened cluster that
denies externalIPs. The addresses come from edge_ha_core.lb.plan, as the runner
will get them.
"""

import threading

import pytest

from edge_ha_core import lb
from edge_ha_core import model as edge_ha
from tests.support.builders import example_pillar

pytestmark = pytest.mark.k8s

NS = "apps"


@pytest.fixture
def api(emulator):
    emulator.add_namespace(NS)
    return emulator


@pytest.fixture
def settings(cluster):
    return cluster.settings()


def add(api, name, cls=lb.LB_CLASS, annotations=None, **spec):
    spec.setdefault("type", "LoadBalancer")
    if cls is not None:
        spec["loadBalancerClass"] = cls
    return api.add_service(NS, name, annotations=annotations, **spec)


def pools():
    data = example_pillar()
    data["address_pools"] = {"public": {"addresses": ["203.0.113.0/29"], "virtual_router_ids": "100-107"}}
    return lb.pools_from_model(edge_ha.normalize(data))


def test_list_plan_record_and_status_end_to_end(edge_k8s, api, settings):
    add(api, "web")
    add(api, "dns", annotations={lb.IPS_ANNOTATION: "203.0.113.6"})
    add(api, "theirs", cls="metallb.io/metallb")
    api.add_service(NS, "plain")  # ClusterIP: not even listed
    listing = edge_k8s.load_balancer_services(kubernetes=settings)
    assert [s["metadata"]["name"] for s in listing["services"]] == ["dns", "theirs", "web"]
    (request,) = api.find_requests(verb="list", resource="services")
    assert request.path == "/api/v1/services" and request.query["fieldSelector"] == "spec.type=LoadBalancer"
    records = [lb.service_record(s) for s in listing["services"]]
    plan = lb.plan(pools(), records)
    assert {a.service: a.address for a in plan.assignments} == {"apps/dns": "203.0.113.6", "apps/web": "203.0.113.0"}
    assert plan.ignored == ("apps/theirs",)
    by_key = {r.key: r for r in records}
    for assignment in plan.to_record():
        svc = by_key[assignment.service]
        rv = edge_k8s.record_assignment(NS, svc.name, assignment.annotation, svc.resource_version,
                                        kubernetes=settings)["resource_version"]
        done = edge_k8s.set_load_balancer_status(NS, svc.name, [assignment.address], rv, kubernetes=settings)
        assert done["ingress"] == [{"ip": assignment.address}]
    web = api.get_object("services", NS, "web")
    assert web["status"]["loadBalancer"]["ingress"] == [{"ip": "203.0.113.0"}]
    # requests go first: dns took VRID 100
    assert web["metadata"]["annotations"][lb.ASSIGNMENT_ANNOTATION] == '{"address":"203.0.113.0","pool":"public","vrid":101}'
    assert "annotations" not in api.get_object("services", NS, "theirs")["metadata"]
    # the next run reads the records back and has nothing to write
    again = lb.plan(pools(), [lb.service_record(s) for s in edge_k8s.load_balancer_services(kubernetes=settings)["services"]])
    assert again.to_record() == () and again.by_service() == {a.service: a for a in again.assignments}
    assert {a.service: a.address for a in again.assignments} == {a.service: a.address for a in plan.assignments}


def test_a_stale_resource_version_writes_nothing(edge_k8s, api, settings):
    add(api, "web")
    (svc,) = edge_k8s.load_balancer_services(kubernetes=settings)["services"]
    stale = svc["metadata"]["resourceVersion"]
    api.mutate("services", NS, "web", lambda s: s["spec"].update(ports=[{"port": 8080, "protocol": "TCP"}]))
    with pytest.raises(edge_k8s.KubernetesAPIError) as info:
        edge_k8s.record_assignment(NS, "web", {"address": "203.0.113.1", "pool": "public", "vrid": 100}, stale,
                                   kubernetes=settings)
    assert info.value.conflict and "conflict: patch services apps/web" in str(info.value)
    with pytest.raises(edge_k8s.KubernetesAPIError) as info:
        edge_k8s.set_load_balancer_status(NS, "web", ["203.0.113.1"], stale, kubernetes=settings)
    assert info.value.conflict
    stored = api.get_object("services", NS, "web")
    assert "annotations" not in stored["metadata"] and stored["status"] == {"loadBalancer": {}}


def test_status_removed_and_record_removed(edge_k8s, api, settings):
    add(api, "web")
    edge_k8s.set_load_balancer_status(NS, "web", ["203.0.113.1"], None, kubernetes=settings)
    edge_k8s.record_assignment(NS, "web", {"address": "203.0.113.1", "pool": "public", "vrid": 100}, None,
                               kubernetes=settings)
    edge_k8s.set_load_balancer_status(NS, "web", [], None, kubernetes=settings)
    edge_k8s.record_assignment(NS, "web", None, None, kubernetes=settings)
    stored = api.get_object("services", NS, "web")
    assert stored["status"] == {"loadBalancer": {}} and not stored["metadata"].get("annotations")


def test_bad_arguments_are_refused_before_any_request(edge_k8s, api, settings):
    with pytest.raises(edge_k8s.SaltInvocationError, match="assignment must be"):
        edge_k8s.record_assignment(NS, "web", {"address": "nope"}, "1", kubernetes=settings)
    with pytest.raises(edge_k8s.SaltInvocationError, match="not an IP address"):
        edge_k8s.set_load_balancer_status(NS, "web", ["203.0.113.500"], "1", kubernetes=settings)
    with pytest.raises(edge_k8s.SaltInvocationError, match="namespace must be"):
        edge_k8s.set_load_balancer_status("", "web", [], "1", kubernetes=settings)
    with pytest.raises(edge_k8s.SaltInvocationError, match="UpperCamelCase"):
        edge_k8s.service_event(NS, "web", "pool exhausted", "x", kubernetes=settings)
    assert api.requests == []


def test_a_refusal_event_on_the_service(edge_k8s, api, settings):
    svc = add(api, "web", annotations={lb.IPS_ANNOTATION: "198.51.100.9"})
    (refusal,) = lb.plan(pools(), [lb.service_record(svc)]).refusals
    result = edge_k8s.service_event(NS, "web", refusal.reason, refusal.message, event_type="Warning",
                                    uid=refusal.uid, kubernetes=settings)
    assert result["created"] and result["error"] is None
    (event,) = api.list_objects("events", NS)
    assert event["reason"] == "AddressOutsidePools" and event["type"] == "Warning"
    assert event["message"] == "198.51.100.9 is in no address pool (edge_ha:address_pools: public)"
    assert event["involvedObject"] == {"apiVersion": "v1", "kind": "Service", "name": "web", "namespace": NS,
                                       "uid": svc["metadata"]["uid"]}  # the client drops the null resourceVersion
    api.forbid("create", "events")
    denied = edge_k8s.service_event(NS, "web", "AddressAssigned", "x", kubernetes=settings)
    assert denied["created"] is False and "forbidden: create events" in denied["error"]


def test_watch_returns_when_a_load_balancer_service_appears(edge_k8s, api, settings):
    add(api, "old")
    listing = edge_k8s.load_balancer_services(kubernetes=settings)
    api.add_service(NS, "plain")  # not a LoadBalancer: the watch does not wake up for it
    timer = threading.Timer(0.3, add, args=(api, "new"))
    timer.start()
    try:
        result = edge_k8s.watch_load_balancer_services(listing["resource_version"], timeout=10, kubernetes=settings)
    finally:
        timer.cancel()
    assert [(e["type"], e["name"]) for e in result["events"]] == [("ADDED", "new")]
    assert result["expired"] is False
    assert int(result["resource_version"]) > int(listing["resource_version"])
    quiet = edge_k8s.watch_load_balancer_services(result["resource_version"], timeout=1, kubernetes=settings)
    assert quiet == {"events": [], "resource_version": result["resource_version"], "expired": False}


def test_watch_from_an_expired_version_says_list_again(edge_k8s, api, settings):
    listing = edge_k8s.load_balancer_services(kubernetes=settings)
    add(api, "web")
    api.compact_history()
    result = edge_k8s.watch_load_balancer_services(listing["resource_version"], timeout=5, kubernetes=settings)
    assert result["expired"] is True and result["events"] == []


def test_a_hardened_cluster_refuses_external_ips_but_serves_load_balancers(edge_k8s, api, make_edge, settings):
    edge = make_edge(ready=(True, True, False))
    api.set_deny_external_ips(True)
    with pytest.raises(edge_k8s.CommandExecutionError) as info:
        edge_k8s.set_external_ips(vips=["198.18.0.100"], nodes=edge.nodes, kubernetes=edge.settings)
    assert "use of external IPs is denied by admission control" in str(info.value)
    add(api, "web")
    (svc,) = [lb.service_record(s) for s in edge_k8s.load_balancer_services(kubernetes=settings)["services"]
              if s["metadata"]["name"] == "web"]
    (assignment,) = lb.plan(pools(), [svc]).assignments
    rv = edge_k8s.record_assignment(NS, "web", assignment.annotation, svc.resource_version,
                                    kubernetes=settings)["resource_version"]
    edge_k8s.set_load_balancer_status(NS, "web", [assignment.address], rv, kubernetes=settings)
    assert api.get_object("services", NS, "web")["status"]["loadBalancer"]["ingress"] == [{"ip": "203.0.113.0"}]
