"""
edge_k8s.set_vip_owners, record_event and excluded_nodes against the API
emulator (or a real cluster, where the test does not need fault injection
and does not change the cluster's nodes).
"""

import json
import socket
import time

import pytest
from salt.exceptions import CommandExecutionError, SaltInvocationError

pytestmark = pytest.mark.k8s

VIP, VIP2, VIP3 = "198.18.0.100", "198.18.0.101", "198.18.0.102"
OWNERS = "edge-ha.salt/vip-owners"
EXCLUDE = "node.kubernetes.io/exclude-from-external-load-balancers"


def annotations_of(svc):
    return svc["metadata"].get("annotations") or {}


@pytest.fixture
def edge(make_edge):
    return make_edge(ready=(True, True, False), annotations={"team": "edge"})


# ---------------------------------------------------------------- set_vip_owners


def test_owners_written_once_then_nothing_while_equal(edge_k8s, edge, cluster):
    owners = {f"{VIP}/24": "edge2", VIP2: None, VIP3: ["edge3", "edge1"]}
    result = edge_k8s.set_vip_owners(owners, kubernetes=edge.settings)

    stored = {VIP: "edge2", VIP2: None, VIP3: ["edge1", "edge3"]}
    assert result == {"changed": True, "old": None, "new": stored, "test": False}
    svc = cluster.read_service()
    value = annotations_of(svc)[OWNERS]
    assert value == '{"198.18.0.100":"edge2","198.18.0.101":null,"198.18.0.102":["edge1","edge3"]}'
    assert annotations_of(svc)["team"] == "edge"  # other annotations untouched
    rv = svc["metadata"]["resourceVersion"]
    if not cluster.real:
        cluster.api.clear_requests()

    # same owners, other spelling: no write, the resourceVersion stays
    again = edge_k8s.set_vip_owners({VIP3: ["edge1", "edge3"], VIP: "edge2", VIP2: None}, kubernetes=edge.settings)
    assert again == {"changed": False, "old": stored, "new": stored, "test": False}
    assert cluster.read_service()["metadata"]["resourceVersion"] == rv
    if not cluster.real:
        assert cluster.api.writes() == []

    # the owner moves: written, and the externalIPs are not touched
    ips_before = cluster.read_service()["spec"].get("externalIPs")
    moved = edge_k8s.set_vip_owners({VIP: "edge1", VIP2: None, VIP3: None}, kubernetes=edge.settings)
    assert moved["changed"] is True and moved["old"] == stored
    svc = cluster.read_service()
    assert json.loads(annotations_of(svc)[OWNERS]) == {VIP: "edge1", VIP2: None, VIP3: None}
    assert svc["metadata"]["resourceVersion"] != rv
    assert svc["spec"].get("externalIPs") == ips_before


def test_owners_test_mode_predicts_and_writes_nothing(edge_k8s, edge, cluster):
    edge_k8s.set_vip_owners({VIP: "edge1"}, kubernetes=edge.settings)
    before = cluster.read_service()
    if not cluster.real:
        cluster.api.clear_requests()
    result = edge_k8s.set_vip_owners({VIP: ["edge1", "edge2"]}, kubernetes=edge.settings, test=True)
    assert result == {"changed": True, "old": {VIP: "edge1"}, "new": {VIP: ["edge1", "edge2"]}, "test": True}
    assert cluster.read_service() == before
    if not cluster.real:
        assert cluster.api.writes() == []
    unchanged = edge_k8s.set_vip_owners({VIP: "edge1"}, kubernetes=edge.settings, test=True)
    assert unchanged["changed"] is False


def test_owners_retry_on_conflict_and_keep_the_other_writer(edge_k8s, edge, cluster, emulator):
    ns, name = cluster.namespace, cluster.service_name
    seen = []

    def other_writer(api, record):
        seen.append(record.body["metadata"]["resourceVersion"])
        api.mutate("services", ns, name, lambda svc: svc["metadata"]["annotations"].update({"other": str(len(seen))}))

    emulator.inject_conflicts(2, resource="services", callback=other_writer)
    result = edge_k8s.set_vip_owners({VIP: "edge2"}, kubernetes=edge.settings)

    assert result["changed"] is True
    annotations = annotations_of(cluster.read_service())
    assert annotations[OWNERS] == '{"198.18.0.100":"edge2"}'
    assert annotations["other"] == "2" and annotations["team"] == "edge"
    patches = emulator.find_requests(method="PATCH", resource="services")
    assert [p.status for p in patches] == [409, 409, 200]
    sent = [p.body["metadata"]["resourceVersion"] for p in patches]
    assert sent[:2] == seen and len(set(sent)) == 3  # re-read before every attempt
    for patch in patches:  # only the owners annotation, conflict-checked
        assert patch.content_type == "application/merge-patch+json"
        assert patch.body == {"metadata": {"resourceVersion": patch.body["metadata"]["resourceVersion"],
                                           "annotations": {OWNERS: '{"198.18.0.100":"edge2"}'}}}


def test_owners_conflicts_beyond_the_budget_write_nothing(edge_k8s, edge, cluster, emulator):
    before = cluster.read_service()
    emulator.inject_conflicts(10)
    with pytest.raises(CommandExecutionError, match=r"conflict: .*gave up after 2 attempts.*nothing was written"):
        edge_k8s.set_vip_owners({VIP: "edge2"}, kubernetes=dict(edge.settings, conflict_retries=1))
    assert cluster.read_service() == before


def test_owners_rbac_denial_names_verb_and_resource(edge_k8s, edge, cluster, emulator):
    before = cluster.read_service()
    emulator.forbid("patch", "services")
    with pytest.raises(CommandExecutionError) as info:
        edge_k8s.set_vip_owners({VIP: "edge2"}, kubernetes=edge.settings)
    assert str(info.value).startswith(
        f'forbidden: patch services in namespace {cluster.namespace} — grant verb "patch" on resource "services"'
    )
    assert "deploy/rbac.yaml" in str(info.value)
    assert cluster.read_service() == before


def test_owners_bad_input_is_rejected_before_any_request(edge_k8s, edge, cluster):
    if not cluster.real:
        cluster.api.clear_requests()
    with pytest.raises(SaltInvocationError, match="owners:198.18.0.100: the owner must be a node name"):
        edge_k8s.set_vip_owners({VIP: {"node": "edge1"}}, kubernetes=edge.settings)
    with pytest.raises(SaltInvocationError, match="not an IP address"):
        edge_k8s.set_vip_owners({"edge1": VIP}, kubernetes=edge.settings)
    if not cluster.real:
        assert cluster.api.requests == []


def test_owners_missing_service_is_a_clear_error(edge_k8s, cluster):
    settings = cluster.settings(service={"namespace": cluster.namespace, "name": "no-such-service"})
    with pytest.raises(CommandExecutionError, match=r"not found: services .*/no-such-service does not exist"):
        edge_k8s.set_vip_owners({VIP: "edge1"}, kubernetes=settings)


# ---------------------------------------------------------------- record_event


def test_record_event_on_the_service(edge_k8s, edge, cluster):
    result = edge_k8s.record_event(
        "SplitBrainFenced", f"{VIP} was on edge1 and edge2; edge2 keeps it", event_type="Warning",
        kubernetes=edge.settings,
    )
    assert result["created"] is True and result["error"] is None
    (event,) = cluster.events()
    svc = cluster.read_service()
    assert event["metadata"]["name"] == result["name"]
    assert event["metadata"]["namespace"] == cluster.namespace
    involved = event["involvedObject"]
    assert (involved["kind"], involved["name"], involved["namespace"], involved["uid"]) == (
        "Service", cluster.service_name, cluster.namespace, svc["metadata"]["uid"],
    )
    assert (event["reason"], event["type"]) == ("SplitBrainFenced", "Warning")
    assert event["message"] == f"{VIP} was on edge1 and edge2; edge2 keeps it"
    assert event["source"] == {"component": "salt-edge-ha", "host": socket.gethostname()}  # no Salt: the host name
    assert event["reportingComponent"] == "salt-edge-ha"

    second = edge_k8s.record_event("VIPFailover", "moved", kubernetes=edge.settings)
    assert second["created"] is True and second["name"] != result["name"]
    by_reason = {e["reason"]: e["type"] for e in cluster.events()}
    assert by_reason == {"SplitBrainFenced": "Warning", "VIPFailover": "Normal"}


def test_record_event_failure_is_returned_not_raised(edge_k8s, edge, cluster, emulator):
    emulator.forbid("create", "events")
    result = edge_k8s.record_event("NodeDrained", "edge2 drained", kubernetes=edge.settings)
    assert result["created"] is False and result["name"] is None
    assert result["error"].startswith(
        f'forbidden: create events in namespace {cluster.namespace} — grant verb "create" on resource "events"'
    )
    assert cluster.events() == []
    emulator.reset_faults()
    emulator.inject_errors(50, status=503, verbs={"get"}, resource="services")
    result = edge_k8s.record_event("NodeDrained", "x", kubernetes=dict(edge.settings, conflict_retries=1))
    assert result["created"] is False and "503" in result["error"]


def test_record_event_without_an_api_is_returned_not_raised(edge_k8s, tmp_path, real_cluster):
    from tests.support.kube_api import KubeAPIEmulator

    with KubeAPIEmulator() as api:
        kubeconfig = api.write_kubeconfig(tmp_path / "gone")
    start = time.monotonic()
    result = edge_k8s.record_event("RolloutStopped", "x", kubernetes={"kubeconfig": kubeconfig, "request_timeout": 2})
    assert result["created"] is False and result["error"].startswith("unreachable: cannot connect")
    missing = edge_k8s.record_event("RolloutStopped", "x", kubernetes={"kubeconfig": str(tmp_path / "nope")})
    assert missing["created"] is False and "does not exist" in missing["error"]
    assert time.monotonic() - start < 5


def test_record_event_rejects_bad_arguments(edge_k8s, edge, cluster):
    with pytest.raises(SaltInvocationError, match="event_type must be one of Normal, Warning"):
        edge_k8s.record_event("VIPFailover", "x", event_type="Error", kubernetes=edge.settings)
    with pytest.raises(SaltInvocationError, match="reason must be an UpperCamelCase word"):
        edge_k8s.record_event("vip failover", "x", kubernetes=edge.settings)
    assert cluster.events() == []


def test_external_ips_event_comes_from_the_same_builder(edge_k8s, edge, cluster):
    """set_external_ips's Event has the same shape as record_event's."""
    edge_k8s.set_external_ips(vips=[VIP], nodes=edge.nodes, reason="sync", kubernetes=edge.settings)
    edge_k8s.record_event("VIPFailover", "moved", kubernetes=edge.settings)
    events = {e["reason"]: e for e in cluster.events()}
    assert set(events) == {"ExternalIPsUpdated", "VIPFailover"}
    shape = {
        reason: (set(e), e["involvedObject"]["name"], e["source"]["component"], e["type"])
        for reason, e in events.items()
    }
    assert shape["ExternalIPsUpdated"][1:] == shape["VIPFailover"][1:] == (cluster.service_name, "salt-edge-ha", "Normal")
    assert shape["ExternalIPsUpdated"][0] == shape["VIPFailover"][0]


# ---------------------------------------------------------------- excluded_nodes


def test_excluded_nodes_cordon_label_both_neither(edge_k8s, edge, cluster, emulator):
    k8s = edge.k8s_nodes
    assert edge_k8s.excluded_nodes(kubernetes=edge.settings) == {}  # neither

    emulator.cordon(k8s["edge1"])
    emulator.label_node(k8s["edge2"], {EXCLUDE: ""})
    emulator.cordon(k8s["edge3"])
    emulator.label_node(k8s["edge3"], {EXCLUDE: "true"})
    assert edge_k8s.excluded_nodes(kubernetes=edge.settings) == {
        k8s["edge1"]: "cordoned",
        k8s["edge2"]: f"label {EXCLUDE}",
        k8s["edge3"]: f"cordoned; label {EXCLUDE}",
    }

    emulator.cordon(k8s["edge1"], False)  # uncordon
    emulator.label_node(k8s["edge3"], {EXCLUDE: None})
    assert edge_k8s.excluded_nodes(kubernetes=edge.settings) == {
        k8s["edge2"]: f"label {EXCLUDE}",
        k8s["edge3"]: "cordoned",
    }


def test_excluded_nodes_after_kubectl_style_patches(edge_k8s, edge, cluster, emulator):
    """Cordon and label through the API as kubectl does (strategic merge patches)."""
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_kube_config(config_file=edge.settings["kubeconfig"], client_configuration=configuration)
    with client.ApiClient(configuration) as api_client:
        core = client.CoreV1Api(api_client)
        core.patch_node(edge.k8s_nodes["edge1"], {"spec": {"unschedulable": True}})
        core.patch_node(edge.k8s_nodes["edge2"], {"metadata": {"labels": {EXCLUDE: "x"}}})
        assert edge_k8s.excluded_nodes(kubernetes=edge.settings) == {
            edge.k8s_nodes["edge1"]: "cordoned",
            edge.k8s_nodes["edge2"]: f"label {EXCLUDE}",
        }
        core.patch_node(edge.k8s_nodes["edge1"], {"spec": {"unschedulable": None}})  # kubectl uncordon
        core.patch_node(edge.k8s_nodes["edge2"], {"metadata": {"labels": {EXCLUDE: None}}})  # kubectl label EXCLUDE-
    assert edge_k8s.excluded_nodes(kubernetes=edge.settings) == {}


def test_excluded_nodes_match_the_cluster(edge_k8s, edge, cluster):
    """On any backend: exactly the nodes the cluster itself shows as cordoned or labelled
    (a real cluster's nodes are only read, never cordoned or labelled by a test)."""
    if cluster.real:
        listing = json.loads(cluster.core.list_node(_preload_content=False).data)
        nodes = {n["metadata"]["name"]: n for n in listing["items"]}
        cordoned = {name for name, n in nodes.items() if (n.get("spec") or {}).get("unschedulable")}
        labelled = {name for name, n in nodes.items() if EXCLUDE in ((n["metadata"].get("labels")) or {})}
    else:
        cluster.api.cordon(edge.k8s_nodes["edge3"])
        cordoned, labelled = {edge.k8s_nodes["edge3"]}, set()
    found = edge_k8s.excluded_nodes(kubernetes=edge.settings)
    assert set(found) == cordoned | labelled
    for name, reason in found.items():
        assert ("cordoned" in reason) == (name in cordoned)
        assert (EXCLUDE in reason) == (name in labelled)


def test_excluded_nodes_rbac_denial_names_verb_and_resource(edge_k8s, edge, emulator):
    emulator.forbid("list", "nodes")
    with pytest.raises(CommandExecutionError) as info:
        edge_k8s.excluded_nodes(kubernetes=edge.settings)
    message = str(info.value)
    assert message.startswith('forbidden: list nodes at cluster scope — grant verb "list" on resource "nodes"')
    assert "ClusterRole" in message and "deploy/rbac.yaml" in message
