"""
The emulator's LoadBalancer side (issue #15 item 7), through the official
kubernetes client (37.x): the Service status subresource with its
resourceVersion precondition, ``spec.loadBalancerClass`` as the API server
validates it, and the ``DenyServiceExternalIPs`` admission plugin of a
hardened cluster. Emulator only: skipped on a real cluster.
"""

import json

import pytest
from kubernetes.client.exceptions import ApiException

from tests.support.kube_api import core_api, raw

pytestmark = pytest.mark.k8s

NS = "apps"
CLASS = "edge-ha.salt/keepalived"
MERGE = "application/merge-patch+json"


@pytest.fixture
def core(emulator, tmp_path):
    with core_api(emulator, tmp_path) as api_client:
        yield api_client


def lb_service(name="web", cls=CLASS, **spec):
    body = {"metadata": {"name": name}, "spec": dict({"type": "LoadBalancer", "ports": [{"port": 80}]}, **spec)}
    if cls is not None:
        body["spec"]["loadBalancerClass"] = cls
    return body


def create(core, body):
    return raw(core.create_namespaced_service(NS, body, _preload_content=False))


def failure(excinfo):
    body = json.loads(excinfo.value.body)
    assert body["kind"] == "Status" and body["code"] == excinfo.value.status
    return body


def ingress(ip):
    return {"status": {"loadBalancer": {"ingress": [{"ip": ip}]}}}


def test_status_is_written_only_through_the_subresource(emulator, core):
    svc = create(core, dict(lb_service(), status={"loadBalancer": {"ingress": [{"ip": "203.0.113.9"}]}}))
    assert svc["status"] == {"loadBalancer": {}}  # a status sent with the create is dropped
    assert svc["spec"]["loadBalancerClass"] == CLASS
    # the main resource keeps the status
    main = raw(core.patch_namespaced_service("web", NS, ingress("203.0.113.5"), _content_type=MERGE,
                                             _preload_content=False))
    assert main["status"] == {"loadBalancer": {}}
    # the subresource changes the status and nothing else
    body = dict(ingress("203.0.113.5"), metadata={"resourceVersion": main["metadata"]["resourceVersion"],
                                                  "annotations": {"x": "y"}}, spec={"type": "ClusterIP"})
    patched = raw(core.patch_namespaced_service_status("web", NS, body, _content_type=MERGE, _preload_content=False))
    assert patched["status"]["loadBalancer"]["ingress"] == [{"ip": "203.0.113.5"}]
    assert patched["spec"]["type"] == "LoadBalancer" and "annotations" not in patched["metadata"]
    assert int(patched["metadata"]["resourceVersion"]) > int(main["metadata"]["resourceVersion"])
    stored = emulator.get_object("services", NS, "web")
    assert stored["status"] == patched["status"]
    (record,) = emulator.find_requests(method="PATCH", name="web")[-1:]
    assert (record.verb, record.resource, record.subresource) == ("patch", "services", "status")
    # and the typed client reads it back
    assert core.read_namespaced_service_status("web", NS).status.load_balancer.ingress[0].ip == "203.0.113.5"


def test_status_patch_with_a_stale_resource_version_is_a_conflict(emulator, core):
    svc = create(core, lb_service())
    stale = svc["metadata"]["resourceVersion"]
    emulator.mutate("services", NS, "web", lambda s: s["metadata"].setdefault("labels", {}).update(x="1"))
    with pytest.raises(ApiException) as info:
        core.patch_namespaced_service_status("web", NS, dict(ingress("203.0.113.5"), metadata={"resourceVersion": stale}),
                                             _content_type=MERGE)
    assert info.value.status == 409 and failure(info)["reason"] == "Conflict"
    assert emulator.get_object("services", NS, "web")["status"] == {"loadBalancer": {}}
    # without a resourceVersion the patch is unconditional
    core.patch_namespaced_service_status("web", NS, ingress("203.0.113.5"), _content_type=MERGE)
    assert emulator.get_object("services", NS, "web")["status"]["loadBalancer"]["ingress"] == [{"ip": "203.0.113.5"}]


def test_status_ingress_ip_must_be_an_address(core):
    create(core, lb_service())
    with pytest.raises(ApiException) as info:
        core.patch_namespaced_service_status("web", NS, ingress("not-an-ip"), _content_type=MERGE)
    assert info.value.status == 422
    assert "status.loadBalancer.ingress[0].ip" in failure(info)["message"]


def test_load_balancer_class_is_validated_like_the_api_server(core):
    with pytest.raises(ApiException) as info:
        create(core, lb_service("a", type="ClusterIP"))
    assert info.value.status == 422 and "may only be used when `type` is 'LoadBalancer'" in failure(info)["message"]
    with pytest.raises(ApiException) as info:
        create(core, lb_service("b", cls="Not A Name/"))
    assert info.value.status == 422 and "spec.loadBalancerClass" in failure(info)["message"]
    create(core, lb_service("c"))
    with pytest.raises(ApiException) as info:
        core.patch_namespaced_service("c", NS, {"spec": {"loadBalancerClass": "metallb.io/metallb"}}, _content_type=MERGE)
    assert info.value.status == 422 and "Field is immutable" in failure(info)["message"]
    # unprefixed names are allowed (the users'), no class at all too
    create(core, lb_service("d", cls="internal-vip"))
    create(core, lb_service("e", cls=None))
    classes = {s.metadata.name: s.spec.load_balancer_class for s in core.list_service_for_all_namespaces().items}
    assert classes == {"c": CLASS, "d": "internal-vip", "e": None}


def test_deny_service_external_ips_on_a_hardened_cluster(emulator, core):
    create(core, lb_service("old", externalIPs=["198.51.100.7", "198.51.100.8"]))
    emulator.set_deny_external_ips(True)
    with pytest.raises(ApiException) as info:
        create(core, lb_service("new", externalIPs=["198.51.100.9"]))
    assert info.value.status == 403
    body = failure(info)
    assert body["reason"] == "Forbidden"
    assert body["message"] == 'services "new" is forbidden: use of external IPs is denied by admission control'
    assert emulator.get_object("services", NS, "new") is None
    with pytest.raises(ApiException) as info:
        core.patch_namespaced_service("old", NS, {"spec": {"externalIPs": ["198.51.100.7", "198.51.100.10"]}},
                                      _content_type=MERGE)
    assert info.value.status == 403
    # removing addresses, Services without externalIPs and the status subresource are allowed
    core.patch_namespaced_service("old", NS, {"spec": {"externalIPs": ["198.51.100.8"]}}, _content_type=MERGE)
    create(core, lb_service("plain"))
    core.patch_namespaced_service_status("plain", NS, ingress("203.0.113.5"), _content_type=MERGE)
    assert emulator.get_object("services", NS, "old")["spec"]["externalIPs"] == ["198.51.100.8"]
    emulator.set_deny_external_ips(False)
    create(core, lb_service("later", externalIPs=["198.51.100.9"]))
