"""
The API emulator itself, exercised through the official kubernetes client.

These pin down the protocol behaviour the plugin's tests rely on (selectors,
resourceVersion preconditions, the three patch types, watch streams, Status
errors, fault injection, request log). Emulator only: skipped on a real cluster.
"""

import json
import threading
import time

import pytest
import urllib3
from kubernetes import client, config, watch

from tests.support.kube_api import KubeAPIEmulator, core_api, raw

pytestmark = pytest.mark.k8s

NS = "ingress-nginx"
MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"


@pytest.fixture
def api(emulator):
    return emulator


@pytest.fixture
def core(api, tmp_path):
    with core_api(api, tmp_path) as api_client:
        yield api_client


def status_of(excinfo):
    body = json.loads(excinfo.value.body)
    assert body["kind"] == "Status" and body["apiVersion"] == "v1" and body["status"] == "Failure"
    assert body["code"] == excinfo.value.status
    return body


def test_list_with_label_and_field_selectors(api, core):
    api.add_node("n1", "10.0.0.1")
    api.add_node("n2", "10.0.0.2")
    api.add_pod(NS, "a", "n1", labels={"app": "ctl", "tier": "edge"})
    api.add_pod(NS, "b", "n2", labels={"app": "ctl"})
    api.add_pod(NS, "c", "n2", labels={"app": "other"})
    api.add_pod("elsewhere", "d", "n1", labels={"app": "ctl"})

    def names(**kwargs):
        return sorted(p.metadata.name for p in core.list_namespaced_pod(NS, **kwargs).items)

    assert names() == ["a", "b", "c"]
    assert names(label_selector="app=ctl") == ["a", "b"]
    assert names(label_selector="app==ctl,tier") == ["a"]
    assert names(label_selector="app!=ctl") == ["c"]
    assert names(label_selector="app in (ctl, other),!tier") == ["b", "c"]
    assert names(label_selector="app notin (ctl)") == ["c"]
    assert names(field_selector="spec.nodeName=n2") == ["b", "c"]
    assert names(field_selector="spec.nodeName!=n2,metadata.name=a") == ["a"]
    assert sorted(p.metadata.name for p in core.list_pod_for_all_namespaces(label_selector="app=ctl").items) == [
        "a", "b", "d",
    ]
    with pytest.raises(client.exceptions.ApiException) as info:
        core.list_namespaced_pod(NS, field_selector="spec.hostname=x")
    assert info.value.status == 400 and "field label not supported" in status_of(info)["message"]
    listing = raw(core.list_node(_preload_content=False))
    assert listing["kind"] == "NodeList" and listing["metadata"]["resourceVersion"].isdigit()


def test_put_checks_the_resource_version(api, core):
    api.add_service(NS, "svc", external_ips=["192.0.2.1"])
    svc = raw(core.read_namespaced_service("svc", NS, _preload_content=False))
    rv = svc["metadata"]["resourceVersion"]
    assert isinstance(rv, str) and svc["metadata"]["uid"]

    svc["spec"]["externalIPs"] = ["192.0.2.2"]
    updated = raw(core.replace_namespaced_service("svc", NS, svc, _preload_content=False))
    assert int(updated["metadata"]["resourceVersion"]) > int(rv)

    svc["spec"]["externalIPs"] = ["192.0.2.3"]  # still carries the old resourceVersion
    with pytest.raises(client.exceptions.ApiException) as info:
        core.replace_namespaced_service("svc", NS, svc)
    body = status_of(info)
    assert info.value.status == 409 and body["reason"] == "Conflict"
    assert body["details"] == {"name": "svc", "kind": "services"}
    assert "the object has been modified" in body["message"]

    # writing the same content again changes nothing, not even the resourceVersion
    same = raw(core.replace_namespaced_service("svc", NS, updated, _preload_content=False))
    assert same["metadata"]["resourceVersion"] == updated["metadata"]["resourceVersion"]


def test_json_patch(api, core):
    api.add_service(NS, "svc", external_ips=["192.0.2.1"])
    rv = api.get_object("services", NS, "svc")["metadata"]["resourceVersion"]
    patched = raw(
        core.patch_namespaced_service(
            "svc", NS,
            [
                {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
                {"op": "add", "path": "/metadata/annotations", "value": {"a~b/c": "1"}},
                {"op": "add", "path": "/spec/externalIPs/-", "value": "192.0.2.2"},
                {"op": "replace", "path": "/spec/externalIPs/0", "value": "192.0.2.9"},
                {"op": "remove", "path": "/metadata/annotations/a~0b~1c"},
            ],
            _content_type=JSON_PATCH, _preload_content=False,
        )
    )
    assert patched["spec"]["externalIPs"] == ["192.0.2.9", "192.0.2.2"]
    assert patched["metadata"]["annotations"] == {}
    with pytest.raises(client.exceptions.ApiException) as info:  # stale resourceVersion in the patch
        core.patch_namespaced_service(
            "svc", NS, [{"op": "replace", "path": "/metadata/resourceVersion", "value": rv}], _content_type=JSON_PATCH
        )
    assert info.value.status == 409
    with pytest.raises(client.exceptions.ApiException) as info:
        core.patch_namespaced_service(
            "svc", NS, [{"op": "test", "path": "/spec/type", "value": "LoadBalancer"}], _content_type=JSON_PATCH
        )
    assert info.value.status == 422


def test_merge_and_strategic_merge_patch(api, core):
    api.add_service(
        NS, "svc", external_ips=["192.0.2.1"], annotations={"keep": "me"},
        ports=[{"name": "http", "port": 80, "protocol": "TCP"}, {"name": "https", "port": 443, "protocol": "TCP"}],
    )
    current = api.get_object("services", NS, "svc")
    rv = current["metadata"]["resourceVersion"]
    merged = raw(
        core.patch_namespaced_service(
            "svc", NS,
            {"metadata": {"resourceVersion": rv, "annotations": {"new": "x", "keep": None}}, "spec": {"externalIPs": ["192.0.2.5"]}},
            _content_type=MERGE, _preload_content=False,
        )
    )
    assert merged["metadata"]["annotations"] == {"new": "x"}
    assert merged["spec"]["externalIPs"] == ["192.0.2.5"]
    assert len(merged["spec"]["ports"]) == 2  # untouched

    with pytest.raises(client.exceptions.ApiException) as info:  # rv is stale now
        core.patch_namespaced_service("svc", NS, {"metadata": {"resourceVersion": rv}, "spec": {"externalIPs": []}}, _content_type=MERGE)
    assert info.value.status == 409

    strategic = raw(
        core.patch_namespaced_service(
            "svc", NS,
            {
                "metadata": {"annotations": {"more": "y"}},
                "spec": {
                    "ports": [{"port": 443, "name": "tls"}, {"port": 80, "$patch": "delete"}, {"port": 8080, "name": "alt"}],
                    "externalIPs": ["192.0.2.6", "192.0.2.7"],
                },
            },
            _content_type=STRATEGIC, _preload_content=False,
        )
    )
    assert strategic["metadata"]["annotations"] == {"new": "x", "more": "y"}
    assert [(p["port"], p["name"]) for p in strategic["spec"]["ports"]] == [(443, "tls"), (8080, "alt")]
    assert strategic["spec"]["externalIPs"] == ["192.0.2.6", "192.0.2.7"]  # no merge key: replaced

    # the client's default content type for a dict body is a strategic merge patch
    core.patch_namespaced_service("svc", NS, {"metadata": {"labels": {"l": "1"}}})
    assert api.find_requests(method="PATCH")[-1].content_type == STRATEGIC

    with pytest.raises(client.exceptions.ApiException) as info:
        core.patch_namespaced_service("svc", NS, {"spec": {"externalIPs": ["not-an-ip"]}}, _content_type=MERGE)
    assert info.value.status == 422 and "must be a valid IP address" in status_of(info)["message"]
    with pytest.raises(client.exceptions.ApiException) as info:
        core.patch_namespaced_service("svc", NS, {"spec": {}}, _content_type="application/apply-patch+yaml")
    assert info.value.status == 415


def test_status_is_kept_on_main_resource_writes(api, core):
    api.add_node("n1", "10.0.0.1")
    api.add_pod(NS, "p", "n1", ready=True)
    core.patch_namespaced_pod("p", NS, {"status": {"phase": "Failed"}, "metadata": {"labels": {"x": "y"}}}, _content_type=MERGE)
    pod = api.get_object("pods", NS, "p")
    assert pod["status"]["phase"] == "Running" and pod["metadata"]["labels"] == {"x": "y"}


def test_create_get_delete_and_errors(api, core):
    created = raw(
        core.create_namespaced_service(NS, {"metadata": {"name": "new"}, "spec": {"ports": [{"port": 80}]}}, _preload_content=False)
    )
    assert created["metadata"]["uid"] and created["spec"]["clusterIP"]
    assert api.find_requests(verb="create")[-1].status == 201
    with pytest.raises(client.exceptions.ApiException) as info:
        core.create_namespaced_service(NS, {"metadata": {"name": "new"}})
    assert info.value.status == 409 and status_of(info)["reason"] == "AlreadyExists"
    with pytest.raises(client.exceptions.ApiException) as info:
        core.create_namespaced_service(NS, {"metadata": {"name": "x", "namespace": "other"}})
    assert info.value.status == 400
    event = raw(
        core.create_namespaced_event(
            NS,
            {"metadata": {"generateName": "svc."}, "involvedObject": {"kind": "Service", "name": "new", "namespace": NS}, "reason": "R"},
            _preload_content=False,
        )
    )
    assert event["metadata"]["name"].startswith("svc.")

    core.delete_namespaced_service("new", NS)
    with pytest.raises(client.exceptions.ApiException) as info:
        core.read_namespaced_service("new", NS)
    body = status_of(info)
    assert (info.value.status, body["reason"], body["message"]) == (404, "NotFound", 'services "new" not found')
    assert body["details"] == {"name": "new", "kind": "services"}


def test_kubelet_emulation_for_pods_created_through_the_api(api, core):
    api.add_node("n1", "10.0.0.1")
    core.create_namespaced_pod(NS, {"metadata": {"name": "ok"}, "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]}})
    core.create_namespaced_pod(
        NS,
        {"metadata": {"name": "probe"}, "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i", "readinessProbe": {"exec": {"command": ["x"]}}}]}},
    )
    core.create_namespaced_pod(NS, {"metadata": {"name": "nowhere"}, "spec": {"nodeName": "n9", "containers": [{"name": "c", "image": "i"}]}})
    ready = {p.metadata.name: (p.status.phase, [c.status for c in p.status.conditions if c.type == "Ready"]) for p in core.list_namespaced_pod(NS).items}
    assert ready == {"ok": ("Running", ["True"]), "probe": ("Running", ["False"]), "nowhere": ("Pending", [])}


def test_watch_streams_changes_after_a_resource_version(api, core):
    api.add_node("n1", "10.0.0.1")
    api.add_pod(NS, "p1", "n1", ready=False, labels={"app": "ctl"})
    listing = raw(core.list_namespaced_pod(NS, label_selector="app=ctl", _preload_content=False))

    def changes():
        time.sleep(0.2)
        api.set_pod_ready(NS, "p1", True)
        api.add_pod(NS, "ignored", "n1", labels={"app": "other"})
        api.add_pod(NS, "p2", "n1", labels={"app": "ctl"})
        api.delete_object("pods", NS, "p1")

    thread = threading.Thread(target=changes)
    thread.start()
    seen = []
    stream = watch.Watch().stream(
        core.list_namespaced_pod, NS, label_selector="app=ctl",
        resource_version=listing["metadata"]["resourceVersion"], timeout_seconds=2,
    )
    for event in stream:
        seen.append((event["type"], event["object"].metadata.name))
        if len(seen) == 3:
            break
    stream.close()
    thread.join()
    assert seen == [("MODIFIED", "p1"), ("ADDED", "p2"), ("DELETED", "p1")]
    request = api.find_requests(verb="watch")[0]
    assert request.query["watch"] == "true" and request.query["resourceVersion"] == listing["metadata"]["resourceVersion"]

    initial = list(watch.Watch().stream(core.list_namespaced_pod, NS, timeout_seconds=1, deserialize=False))
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in initial] == [("ADDED", "ignored"), ("ADDED", "p2")]


def test_watch_errors_with_410_for_an_expired_resource_version(api, core):
    api.add_pod(NS, "p1", "n1")
    old = api.get_object("pods", NS, "p1")["metadata"]["resourceVersion"]
    api.set_pod_ready(NS, "p1", False)
    api.compact_history()
    with pytest.raises(client.exceptions.ApiException) as info:
        list(watch.Watch().stream(core.list_namespaced_pod, NS, resource_version=old, timeout_seconds=1))
    assert info.value.status == 410 and "too old resource version" in info.value.reason


def test_dropped_watch_breaks_the_stream(api, core):
    api.add_pod(NS, "p1", "n1")
    api.drop_watches(1, after_events=1)
    events = []
    with pytest.raises(urllib3.exceptions.ProtocolError):
        for event in watch.Watch().stream(core.list_namespaced_pod, NS, timeout_seconds=5, deserialize=False):
            events.append(event)
    assert len(events) == 1


def test_stop_ends_open_watches_quickly(tmp_path):
    api = KubeAPIEmulator().start()
    configuration = client.Configuration()
    config.load_kube_config(config_file=api.write_kubeconfig(tmp_path / "kc"), client_configuration=configuration)
    core = client.CoreV1Api(client.ApiClient(configuration))
    done = threading.Event()

    def watcher():
        try:
            for _ in watch.Watch().stream(core.list_namespaced_pod, NS, timeout_seconds=300):
                pass
        except Exception:  # pylint: disable=broad-except
            pass
        done.set()

    thread = threading.Thread(target=watcher, daemon=True)
    thread.start()
    while not api.find_requests(verb="watch"):
        time.sleep(0.01)
    start = time.monotonic()
    api.stop()
    assert done.wait(5)
    assert time.monotonic() - start < 3


def test_auth_faults_and_request_log(api, core, tmp_path):
    api.add_service(NS, "svc")
    bad = client.Configuration()
    config.load_kube_config(config_file=api.write_kubeconfig(tmp_path / "bad", token="nope"), client_configuration=bad)
    with pytest.raises(client.exceptions.ApiException) as info:
        client.CoreV1Api(client.ApiClient(bad)).read_namespaced_service("svc", NS)
    assert info.value.status == 401

    api.inject_errors(2, status=503, verbs={"get"})
    for _ in range(2):
        with pytest.raises(client.exceptions.ApiException) as info:
            core.read_namespaced_service("svc", NS)
        assert info.value.status == 503 and status_of(info)["reason"] == "ServiceUnavailable"
    assert core.read_namespaced_service("svc", NS).metadata.name == "svc"

    api.forbid("patch", "services")
    with pytest.raises(client.exceptions.ApiException) as info:
        core.patch_namespaced_service("svc", NS, {"metadata": {"labels": {"a": "b"}}})
    assert status_of(info)["message"] == (
        'services "svc" is forbidden: User "system:serviceaccount:salt-edge-ha:salt-edge-ha" cannot patch '
        'resource "services" in API group "" in the namespace "ingress-nginx"'
    )
    api.allow("patch", "services")
    api.inject_conflicts(1, callback=lambda emu, record: emu.mutate("services", NS, "svc", lambda s: None))
    with pytest.raises(client.exceptions.ApiException) as info:
        core.patch_namespaced_service("svc", NS, {"metadata": {"labels": {"a": "b"}}})
    assert info.value.status == 409
    core.patch_namespaced_service("svc", NS, {"metadata": {"labels": {"a": "b"}}})

    api.set_latency(0.3, verbs={"list"}, count=1)
    start = time.monotonic()
    core.list_namespaced_service(NS)
    assert time.monotonic() - start >= 0.3

    last = api.find_requests(method="PATCH")[-1]
    assert (last.verb, last.resource, last.namespace, last.name, last.status) == ("patch", "services", NS, "svc", 200)
    assert last.body == {"metadata": {"labels": {"a": "b"}}} and last.path == f"/api/v1/namespaces/{NS}/services/svc"
    assert [r.status for r in api.find_requests(method="PATCH")] == [403, 409, 200]


def test_node_cordon_and_labels_through_every_patch_type(api, core):
    """What kubectl cordon/uncordon/label send; unschedulable false is not stored (omitempty)."""
    api.add_node("n1", "10.0.0.1")
    exclude = "node.kubernetes.io/exclude-from-external-load-balancers"
    cordoned = raw(core.patch_node("n1", {"spec": {"unschedulable": True}}, _content_type=STRATEGIC, _preload_content=False))
    assert cordoned["spec"]["unschedulable"] is True
    assert cordoned["status"]["addresses"][0]["address"] == "10.0.0.1"  # status kept
    assert [n.metadata.name for n in core.list_node(field_selector="spec.unschedulable=true").items] == ["n1"]
    uncordoned = raw(core.patch_node("n1", {"spec": {"unschedulable": None}}, _content_type=STRATEGIC, _preload_content=False))
    assert "unschedulable" not in uncordoned["spec"]
    core.patch_node("n1", {"spec": {"unschedulable": True}}, _content_type=MERGE)
    rv = api.get_object("nodes", None, "n1")["metadata"]["resourceVersion"]
    by_false = raw(core.patch_node("n1", {"spec": {"unschedulable": False}}, _content_type=MERGE, _preload_content=False))
    assert "unschedulable" not in by_false["spec"] and by_false["metadata"]["resourceVersion"] != rv
    assert [n.metadata.name for n in core.list_node(field_selector="spec.unschedulable=false").items] == ["n1"]

    labelled = raw(core.patch_node("n1", {"metadata": {"labels": {exclude: ""}}}, _content_type=MERGE, _preload_content=False))
    assert labelled["metadata"]["labels"] == {"kubernetes.io/hostname": "n1", exclude: ""}
    assert [n.metadata.name for n in core.list_node(label_selector=exclude).items] == ["n1"]
    unlabelled = raw(core.patch_node("n1", {"metadata": {"labels": {exclude: None}}}, _content_type=STRATEGIC, _preload_content=False))
    assert unlabelled["metadata"]["labels"] == {"kubernetes.io/hostname": "n1"}

    api.cordon("n1")
    api.label_node("n1", {exclude: "true"})
    node = api.get_object("nodes", None, "n1")
    assert node["spec"]["unschedulable"] is True and node["metadata"]["labels"][exclude] == "true"
    api.cordon("n1", False)
    api.label_node("n1", {exclude: None})
    node = api.get_object("nodes", None, "n1")
    assert "unschedulable" not in node["spec"] and exclude not in node["metadata"]["labels"]


def test_events_create_list_and_namespace_check(api, core):
    api.add_service(NS, "svc")
    body = {
        "metadata": {"name": "svc.1"},
        "involvedObject": {"kind": "Service", "name": "svc", "namespace": NS},
        "reason": "VIPFailover", "type": "Warning", "message": "m", "source": {"component": "salt-edge-ha"},
    }
    created = raw(core.create_namespaced_event(NS, body, _preload_content=False))
    assert created["metadata"]["namespace"] == NS and created["reason"] == "VIPFailover"
    other = dict(body, metadata={"name": "other.1"}, involvedObject={"kind": "Service", "name": "other", "namespace": NS})
    core.create_namespaced_event(NS, other)

    def names(**kwargs):
        return [e["metadata"]["name"] for e in raw(core.list_namespaced_event(NS, _preload_content=False, **kwargs))["items"]]

    assert names() == ["other.1", "svc.1"]
    assert names(field_selector="involvedObject.name=svc") == ["svc.1"]
    assert names(field_selector="reason=VIPFailover,type=Warning,source=salt-edge-ha") == ["other.1", "svc.1"]

    wrong = dict(body, metadata={"name": "svc.2"}, involvedObject={"kind": "Service", "name": "svc", "namespace": "elsewhere"})
    with pytest.raises(client.exceptions.ApiException) as info:
        core.create_namespaced_event(NS, wrong)
    assert info.value.status == 422
    assert 'involvedObject.namespace: Invalid value: "elsewhere": does not match event.namespace' in status_of(info)["message"]


def test_service_annotations_through_merge_patch(api, core):
    """Set, change and remove one annotation, others untouched; an unchanged value is no write."""
    api.add_service(NS, "svc", annotations={"keep": "me"})
    rv = api.get_object("services", NS, "svc")["metadata"]["resourceVersion"]
    patch = {"metadata": {"resourceVersion": rv, "annotations": {"edge-ha.salt/vip-owners": '{"198.18.0.100":"edge2"}'}}}
    first = raw(core.patch_namespaced_service("svc", NS, patch, _content_type=MERGE, _preload_content=False))
    assert first["metadata"]["annotations"] == {"keep": "me", "edge-ha.salt/vip-owners": '{"198.18.0.100":"edge2"}'}
    again = dict(patch, metadata=dict(patch["metadata"], resourceVersion=first["metadata"]["resourceVersion"]))
    same = raw(core.patch_namespaced_service("svc", NS, again, _content_type=MERGE, _preload_content=False))
    assert same["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    with pytest.raises(client.exceptions.ApiException) as info:  # a number is not a string annotation
        core.patch_namespaced_service("svc", NS, {"metadata": {"annotations": {"n": 1}}}, _content_type=MERGE)
    assert info.value.status == 400
    gone = raw(core.patch_namespaced_service(
        "svc", NS, {"metadata": {"annotations": {"edge-ha.salt/vip-owners": None}}}, _content_type=MERGE, _preload_content=False
    ))
    assert gone["metadata"]["annotations"] == {"keep": "me"}
