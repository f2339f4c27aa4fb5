"""
edge_k8s execution module against the API emulator (or a real cluster).

The module is loaded as a plain Python module here; test_k8s_salt.py goes
through the Salt loader and salt-call.
"""

import copy
import json
import threading
import time

import pytest
from salt.exceptions import CommandExecutionError

pytestmark = pytest.mark.k8s

VIP = "198.18.0.100"
USER_IP = "203.0.113.7"
ANNOTATION = "edge-ha.salt/managed-external-ips"


def external_ips_of(svc):
    return list(svc["spec"].get("externalIPs") or [])


def managed_of(svc):
    value = (svc["metadata"].get("annotations") or {}).get(ANNOTATION)
    return json.loads(value) if value else []


def test_ingress_pods_node_addresses_and_health(edge_k8s, make_edge):
    edge = make_edge(ready=(True, True, False))
    k8s = edge.k8s_nodes

    pods = edge_k8s.ingress_pods(kubernetes=edge.settings)
    assert {e: pods[n]["ready"] for e, n in k8s.items()} == {"edge1": True, "edge2": True, "edge3": False}
    assert pods[k8s["edge1"]]["pod"] == edge.pods["edge1"]
    assert pods[k8s["edge3"]]["pods"] == {edge.pods["edge3"]: False}

    addresses = edge_k8s.node_addresses(kubernetes=edge.settings)
    for name, node in edge.nodes.items():
        assert addresses[node["kubernetes_node"]] == node["address"]
    assert edge_k8s.node_addresses(k8s["edge2"], kubernetes=edge.settings) == {k8s["edge2"]: edge.addresses["edge2"]}

    health = edge_k8s.node_health(nodes=edge.nodes, kubernetes=edge.settings)
    assert health["healthy"] == ["edge1", "edge2"]
    assert health["nodes"]["edge3"] == {
        "kubernetes_node": k8s["edge3"],
        "address": edge.addresses["edge3"],
        "address_from": "pillar",
        "pod": edge.pods["edge3"],
        "ready": False,
    }


def test_node_address_source(edge_k8s, make_edge, cluster):
    """Default: the pillar's node address; the InternalIP only as fallback (or on request)."""
    edge = make_edge(ready=(True, True, False))
    nodes = copy.deepcopy(edge.nodes)
    nodes["edge1"]["address"] = "192.0.2.11"  # differs from the node's InternalIP
    del nodes["edge2"]["address"]  # none in the map: the InternalIP is used, with a warning
    call = dict(vips=[VIP], nodes=nodes, kubernetes=edge.settings, test=True)

    result = edge_k8s.set_external_ips(**call)
    assert result["new"] == [VIP, "192.0.2.11", edge.addresses["edge2"]]
    assert any("edge2" in w and "InternalIP" in w for w in result["warnings"])

    result = edge_k8s.set_external_ips(address_source="kubernetes", **call)
    assert result["new"] == [VIP, edge.addresses["edge1"], edge.addresses["edge2"]]

    health = edge_k8s.node_health(nodes=nodes, kubernetes=edge.settings)["nodes"]
    assert (health["edge1"]["address"], health["edge1"]["address_from"]) == ("192.0.2.11", "pillar")
    assert (health["edge2"]["address"], health["edge2"]["address_from"]) == (edge.addresses["edge2"], "kubernetes")


def test_two_of_three_ready_gives_vip_and_two_node_addresses(edge_k8s, make_edge, cluster):
    edge = make_edge(ready=(True, True, False))

    result = edge_k8s.set_external_ips(
        vips=[f"{VIP}/24"], nodes=edge.nodes, reason="initial sync", kubernetes=edge.settings
    )

    expected = [VIP, edge.addresses["edge1"], edge.addresses["edge2"]]
    assert result["changed"] is True
    assert result["old"] == []
    assert result["new"] == expected
    assert result["managed"] == expected
    assert result["healthy"] == ["edge1", "edge2"]
    assert result["attempts"] == 1
    svc = cluster.read_service()
    assert external_ips_of(svc) == expected
    assert managed_of(svc) == expected
    assert result["resource_version"] == svc["metadata"]["resourceVersion"]


def test_vips_only_policy(edge_k8s, make_edge, cluster):
    edge = make_edge(ready=(True, True, True))
    settings = dict(edge.settings, external_ips="vips_only")
    result = edge_k8s.set_external_ips(vips=[VIP], nodes=edge.nodes, kubernetes=settings)
    assert result["new"] == [VIP]
    assert external_ips_of(cluster.read_service()) == [VIP]


def test_user_added_address_survives_every_update(edge_k8s, make_edge, cluster):
    edge = make_edge(ready=(True, True, False), external_ips=[USER_IP])
    a = edge.addresses
    steps = [
        (dict(), [USER_IP, VIP, a["edge1"], a["edge2"]]),
        (dict(healthy=["edge3"]), [USER_IP, VIP, a["edge3"]]),
        (dict(healthy=[]), [USER_IP, VIP]),
        (dict(policy="vips_only", healthy=["edge1", "edge2", "edge3"]), [USER_IP, VIP]),
        (dict(healthy=["edge1"], vips=[]), [USER_IP, a["edge1"]]),
        (dict(healthy=[], vips=[]), [USER_IP]),
    ]
    for kwargs, expected in steps:
        call = dict(vips=[VIP], nodes=edge.nodes, kubernetes=edge.settings, reason="step")
        call.update(kwargs)
        result = edge_k8s.set_external_ips(**call)
        svc = cluster.read_service()
        assert external_ips_of(svc) == expected, kwargs
        assert USER_IP not in managed_of(svc)
        assert USER_IP not in result["managed"]
    # nothing managed any more: the ownership annotation is gone
    assert ANNOTATION not in (cluster.read_service()["metadata"].get("annotations") or {})

    # a second address added by hand between two runs survives too
    cluster.user_edit([USER_IP, "203.0.113.8"])
    edge_k8s.set_external_ips(vips=[VIP], nodes=edge.nodes, kubernetes=edge.settings)
    svc = cluster.read_service()
    assert external_ips_of(svc) == [USER_IP, "203.0.113.8", VIP, a["edge1"], a["edge2"]]
    edge_k8s.set_external_ips(vips=[VIP], nodes=edge.nodes, healthy=[], kubernetes=edge.settings)
    assert external_ips_of(cluster.read_service()) == [USER_IP, "203.0.113.8", VIP]


def test_address_the_user_put_by_hand_is_never_claimed(edge_k8s, make_edge, cluster):
    """The user put the VIP there first: it stays theirs and is not removed later."""
    edge = make_edge(ready=(True, False, False), external_ips=[VIP])
    result = edge_k8s.set_external_ips(vips=[VIP], nodes=edge.nodes, kubernetes=edge.settings)
    assert result["new"] == [VIP, edge.addresses["edge1"]]
    assert result["managed"] == [edge.addresses["edge1"]]
    edge_k8s.set_external_ips(vips=[], nodes=edge.nodes, healthy=[], kubernetes=edge.settings)
    assert external_ips_of(cluster.read_service()) == [VIP]


def test_conflict_storm_with_a_concurrent_writer(edge_k8s, make_edge, cluster, emulator):
    edge = make_edge(ready=(True, True, False), external_ips=[USER_IP])
    ns, name = cluster.namespace, cluster.service_name
    writes = []

    def other_writer(api, record):
        writes.append(record.body["metadata"]["resourceVersion"])

        def change(svc):
            svc["metadata"].setdefault("labels", {})["team"] = f"other-{len(writes)}"
            svc["spec"]["sessionAffinity"] = "ClientIP"

        api.mutate("services", ns, name, change)

    emulator.inject_conflicts(5, resource="services", callback=other_writer)
    result = edge_k8s.set_external_ips(vips=[VIP], nodes=edge.nodes, reason="storm", kubernetes=edge.settings)

    expected = [USER_IP, VIP, edge.addresses["edge1"], edge.addresses["edge2"]]
    assert result["changed"] is True
    assert result["attempts"] == 6
    assert result["new"] == expected
    svc = cluster.read_service()
    assert external_ips_of(svc) == expected
    assert managed_of(svc) == expected[1:]
    assert svc["metadata"]["labels"]["team"] == "other-5"  # the other writer's fields are intact
    assert svc["spec"]["sessionAffinity"] == "ClientIP"

    patches = emulator.find_requests(method="PATCH", resource="services")
    assert len(patches) == 6
    assert [p.status for p in patches] == [409] * 5 + [200]
    sent = [p.body["metadata"]["resourceVersion"] for p in patches]
    assert len(set(sent)) == 6  # each retry re-read the Service first
    assert sent[:5] == writes
    for patch in patches:  # only spec.externalIPs and the ownership annotation
        assert patch.content_type == "application/merge-patch+json"
        assert set(patch.body) == {"metadata", "spec"}
        assert set(patch.body["metadata"]) == {"resourceVersion", "annotations"}
        assert set(patch.body["metadata"]["annotations"]) == {ANNOTATION}
        assert set(patch.body["spec"]) == {"externalIPs"}
    assert len(emulator.find_requests(verb="get", resource="services")) == 6


def test_real_race_between_read_and_write(edge_k8s, make_edge, cluster, emulator):
    """No injected 409: another writer changes the Service while our PATCH is in flight."""
    edge = make_edge(ready=(True, False, False))
    emulator.set_latency(0.5, verbs={"patch"}, resource="services", count=1)

    def concurrent():
        deadline = time.monotonic() + 5
        while not emulator.find_requests(method="PATCH") and time.monotonic() < deadline:
            time.sleep(0.01)
        emulator.mutate(
            "services", cluster.namespace, cluster.service_name,
            lambda svc: svc["metadata"].setdefault("annotations", {}).update({"other": "writer"}),
        )

    thread = threading.Thread(target=concurrent)
    thread.start()
    result = edge_k8s.set_external_ips(vips=[VIP], nodes=edge.nodes, kubernetes=edge.settings)
    thread.join()
    assert result["attempts"] == 2
    assert [p.status for p in emulator.find_requests(method="PATCH")] == [409, 200]
    svc = cluster.read_service()
    assert svc["metadata"]["annotations"]["other"] == "writer"
    assert external_ips_of(svc) == [VIP, edge.addresses["edge1"]]


def test_conflicts_beyond_the_budget_write_nothing(edge_k8s, make_edge, cluster, emulator):
    edge = make_edge(ready=(True, True, False), external_ips=[USER_IP])
    before = cluster.read_service()
    emulator.inject_conflicts(50)
    settings = dict(edge.settings, conflict_retries=2)
    with pytest.raises(CommandExecutionError, match=r"conflict: .*gave up after 3 attempts.*nothing was written"):
        edge_k8s.set_external_ips(vips=[VIP], nodes=edge.nodes, kubernetes=settings)
    assert len(emulator.find_requests(method="PATCH")) == 3
    assert cluster.read_service() == before
    assert cluster.events() == []


@pytest.mark.parametrize("verb", ["patch", "get", "list"])
def test_503_then_success(edge_k8s, make_edge, cluster, emulator, verb):
    edge = make_edge(ready=(True, True, False))
    resource = "pods" if verb == "list" else "services"
    emulator.inject_errors(1, status=503, verbs={verb}, resource=resource)
    result = edge_k8s.set_external_ips(vips=[VIP], nodes=edge.nodes, kubernetes=edge.settings)
    assert result["changed"] is True
    assert external_ips_of(cluster.read_service()) == [VIP, edge.addresses["edge1"], edge.addresses["edge2"]]
    statuses = [r.status for r in emulator.find_requests(verb=verb, resource=resource)]
    assert statuses[:2] == [503, 200]


def test_persistent_server_error_is_clear_and_writes_nothing(edge_k8s, make_edge, cluster, emulator):
    edge = make_edge()
    before = cluster.read_service()
    emulator.inject_errors(100, status=500, verbs={"patch"})
    with pytest.raises(CommandExecutionError, match=r"Kubernetes API error 500 InternalError on patch services"):
        edge_k8s.set_external_ips(vips=[VIP], nodes=edge.nodes, kubernetes=dict(edge.settings, conflict_retries=1))
    assert cluster.read_service() == before


@pytest.mark.parametrize(
    "verb,resource,expected",
    [
        ("patch", "services", 'forbidden: patch services in namespace ingress-nginx — grant verb "patch" on resource "services"'),
        ("get", "services", 'forbidden: get services in namespace ingress-nginx — grant verb "get" on resource "services"'),
        ("list", "pods", 'forbidden: list pods in namespace ingress-nginx — grant verb "list" on resource "pods"'),
        ("list", "nodes", 'forbidden: list nodes at cluster scope — grant verb "list" on resource "nodes"'),
    ],
)
def test_forbidden_names_the_missing_verb_and_resource(edge_k8s, make_edge, cluster, emulator, verb, resource, expected):
    edge = make_edge()
    before = cluster.read_service()
    emulator.forbid(verb, resource)
    with pytest.raises(CommandExecutionError) as info:  # "kubernetes": it lists the nodes too
        edge_k8s.set_external_ips(vips=[VIP], nodes=edge.nodes, address_source="kubernetes", kubernetes=edge.settings)
    assert expected in str(info.value)
    assert "deploy/rbac.yaml" in str(info.value)
    assert cluster.read_service() == before
    assert not [r for r in emulator.writes() if r.status and r.status < 300]


def test_event_failure_does_not_undo_the_change(edge_k8s, make_edge, cluster, emulator):
    edge = make_edge()
    emulator.forbid("create", "events")
    result = edge_k8s.set_external_ips(vips=[VIP], nodes=edge.nodes, reason="x", kubernetes=edge.settings)
    assert result["changed"] is True
    assert result["event"]["created"] is False
    assert 'grant verb "create" on resource "events"' in result["event"]["error"]
    assert external_ips_of(cluster.read_service()) == result["new"]


def test_nothing_written_when_already_right(edge_k8s, make_edge, cluster):
    edge = make_edge(ready=(True, True, False), external_ips=[USER_IP])
    first = edge_k8s.set_external_ips(vips=[VIP], nodes=edge.nodes, kubernetes=edge.settings)
    assert first["changed"] is True
    rv = cluster.read_service()["metadata"]["resourceVersion"]
    events = len(cluster.events())
    if not cluster.real:
        cluster.api.clear_requests()

    again = edge_k8s.set_external_ips(vips=[VIP], nodes=edge.nodes, reason="again", kubernetes=edge.settings)
    predicted = edge_k8s.set_external_ips(vips=[VIP], nodes=edge.nodes, kubernetes=edge.settings, test=True)

    assert again["changed"] is False and predicted["changed"] is False
    assert again["new"] == again["old"] == first["new"]
    assert again["event"] is None
    assert cluster.read_service()["metadata"]["resourceVersion"] == rv
    assert len(cluster.events()) == events
    if not cluster.real:  # the request log: not a single POST/PUT/PATCH/DELETE
        assert cluster.api.writes() == []
        assert {r.method for r in cluster.api.requests} == {"GET"}


def test_test_mode_predicts_and_writes_nothing(edge_k8s, make_edge, cluster):
    edge = make_edge(ready=(True, False, True), external_ips=[USER_IP])
    before = cluster.read_service()
    result = edge_k8s.set_external_ips(vips=[VIP], nodes=edge.nodes, kubernetes=edge.settings, test=True)
    assert result["changed"] is True and result["test"] is True
    assert result["old"] == [USER_IP]
    assert result["new"] == [USER_IP, VIP, edge.addresses["edge1"], edge.addresses["edge3"]]
    assert cluster.read_service() == before
    assert cluster.events() == []
    if not cluster.real:
        assert cluster.api.writes() == []


def test_event_is_created_with_the_reason(edge_k8s, make_edge, cluster):
    edge = make_edge(ready=(True, True, False))
    result = edge_k8s.set_external_ips(
        vips=[VIP], nodes=edge.nodes, reason="edge3 ingress pod not ready", kubernetes=edge.settings
    )
    assert result["event"]["created"] is True
    events = cluster.events()
    assert len(events) == 1
    event = events[0]
    svc = cluster.read_service()
    assert event["metadata"]["name"] == result["event"]["name"]
    assert event["reason"] == "ExternalIPsUpdated"
    assert event["type"] == "Normal"
    assert "edge3 ingress pod not ready" in event["message"]
    assert VIP in event["message"]
    assert event["involvedObject"]["kind"] == "Service"
    assert event["involvedObject"]["name"] == cluster.service_name
    assert event["involvedObject"]["uid"] == svc["metadata"]["uid"]
    assert event["source"]["component"] == "salt-edge-ha"


def test_missing_service_is_a_clear_error(edge_k8s, cluster):
    settings = cluster.settings(service={"namespace": cluster.namespace, "name": "no-such-service"})
    with pytest.raises(CommandExecutionError, match=r"not found: services .*/no-such-service does not exist"):
        edge_k8s.set_external_ips(vips=[VIP], nodes={}, kubernetes=settings)
    with pytest.raises(CommandExecutionError, match="not found"):
        edge_k8s.external_ips(kubernetes=settings)


def test_unreachable_api_is_a_clear_error(edge_k8s, tmp_path, real_cluster):
    from tests.support.kube_api import KubeAPIEmulator

    with KubeAPIEmulator() as api:
        kubeconfig = api.write_kubeconfig(tmp_path / "gone")
        url = api.url
    settings = {"kubeconfig": kubeconfig, "request_timeout": 2}
    start = time.monotonic()
    with pytest.raises(CommandExecutionError) as info:
        edge_k8s.set_external_ips(vips=[VIP], nodes={}, kubernetes=settings)
    assert str(info.value).startswith(f"unreachable: cannot connect to the Kubernetes API at {url}")
    assert time.monotonic() - start < 3
    with pytest.raises(CommandExecutionError, match="unreachable"):
        edge_k8s.ingress_pods(kubernetes=settings)


def test_timeout_is_a_clear_error(edge_k8s, make_edge, cluster, emulator):
    edge = make_edge()
    before = cluster.read_service()
    emulator.set_latency(2, verbs={"get"}, resource="services")
    start = time.monotonic()
    with pytest.raises(CommandExecutionError, match=r"timeout: no answer from the Kubernetes API .* within 0.3s"):
        edge_k8s.set_external_ips(vips=[VIP], nodes=edge.nodes, kubernetes=dict(edge.settings, request_timeout=0.3))
    assert time.monotonic() - start < 2
    emulator.reset_faults()
    assert cluster.read_service() == before


def test_wrong_credentials_are_a_clear_error(edge_k8s, cluster, emulator, tmp_path):
    kubeconfig = emulator.write_kubeconfig(tmp_path / "bad", token="wrong")
    with pytest.raises(CommandExecutionError, match=r"unauthorized: the Kubernetes API at .* rejected the credentials"):
        edge_k8s.external_ips(kubernetes=cluster.settings(kubeconfig=kubeconfig))


def test_missing_kubeconfig_is_a_clear_error(edge_k8s, tmp_path):
    with pytest.raises(CommandExecutionError, match="cannot load Kubernetes configuration: .* does not exist"):
        edge_k8s.external_ips(kubernetes={"kubeconfig": str(tmp_path / "nope")})


def test_unparsable_kubeconfig_is_a_clear_error_without_its_content(edge_k8s, tmp_path):
    path = tmp_path / "broken"
    path.write_text("apiVersion: v1\nusers:\n- name: x\n  user: {token: s3cret-token\n")  # unclosed flow mapping
    with pytest.raises(CommandExecutionError) as exc:
        edge_k8s.external_ips(kubernetes={"kubeconfig": str(path)})
    text = str(exc.value)
    assert text.startswith(f"cannot load Kubernetes configuration from kubeconfig {path}: not valid YAML ("), text
    assert "at line" in text and "s3cret-token" not in text


def test_kubeconfig_from_the_environment_and_context(edge_k8s, cluster, emulator, tmp_path, monkeypatch):
    cluster.service([USER_IP])
    path = tmp_path / "env-kubeconfig"
    config = emulator.kubeconfig(context="edge")
    config["contexts"].append({"name": "broken", "context": {"cluster": "edge", "user": "nobody"}})
    config["users"].append({"name": "nobody", "user": {"token": "wrong"}})
    config["current-context"] = "broken"
    path.write_text(json.dumps(config))
    monkeypatch.setenv("KUBECONFIG", str(path))
    settings = cluster.settings(kubeconfig=None, context="edge")
    assert edge_k8s.external_ips(kubernetes=settings)["external_ips"] == [USER_IP]
    with pytest.raises(CommandExecutionError, match="unauthorized"):
        edge_k8s.external_ips(kubernetes=cluster.settings(kubeconfig=None))  # current-context: broken


def test_external_ips_reports_ownership(edge_k8s, make_edge):
    edge = make_edge(ready=(True, False, False), external_ips=[USER_IP])
    edge_k8s.set_external_ips(vips=[VIP], nodes=edge.nodes, kubernetes=edge.settings)
    info = edge_k8s.external_ips(kubernetes=edge.settings)
    assert info["external_ips"] == [USER_IP, VIP, edge.addresses["edge1"]]
    assert info["managed"] == [VIP, edge.addresses["edge1"]]
    assert info["user"] == [USER_IP]
    assert info["name"] == edge.settings["service"]["name"]


def test_requests_match_the_api_calls_table(edge_k8s, make_edge, cluster, emulator):
    """Every (verb, resource) the module sends is in API_CALLS, and each entry is used."""
    edge = make_edge(ready=(True, True, False))
    edge_k8s.ingress_pods(kubernetes=edge.settings)
    edge_k8s.node_addresses(kubernetes=edge.settings)
    edge_k8s.node_addresses(edge.k8s_nodes["edge1"], kubernetes=edge.settings)
    edge_k8s.node_health(nodes=edge.nodes, kubernetes=edge.settings)
    edge_k8s.external_ips(kubernetes=edge.settings)
    edge_k8s.set_external_ips(vips=[VIP], nodes=edge.nodes, reason="table", kubernetes=edge.settings)
    edge_k8s.wait_ingress_ready("edge3", ready=True, timeout=1, nodes=edge.nodes, kubernetes=edge.settings)
    edge_k8s.set_vip_owners({VIP: "edge1"}, kubernetes=edge.settings)
    edge_k8s.record_event("VIPFailover", "table", kubernetes=edge.settings)
    edge_k8s.excluded_nodes(kubernetes=edge.settings)
    lb_calls_in_emulator(edge_k8s, edge, cluster)
    seen = {(r.verb, r.resource + ("/" + r.subresource if r.subresource else "")) for r in emulator.requests}
    table = {(verb, resource) for verb, resource, _scope, _used in edge_k8s.API_CALLS}
    assert seen == table


def lb_calls_in_emulator(edge_k8s, edge, cluster):
    """The LoadBalancer calls once each (tests/k8s/test_k8s_load_balancer.py tests what they do)."""
    cluster.api.add_service("apps", "web", type="LoadBalancer", loadBalancerClass="edge-ha.salt/keepalived")
    listing = edge_k8s.load_balancer_services(kubernetes=edge.settings)
    edge_k8s.watch_load_balancer_services(listing["resource_version"], timeout=1, kubernetes=edge.settings)
    rv = listing["services"][0]["metadata"]["resourceVersion"]
    rv = edge_k8s.record_assignment("apps", "web", {"address": "203.0.113.5", "pool": "p", "vrid": 100}, rv,
                                    kubernetes=edge.settings)["resource_version"]
    edge_k8s.set_load_balancer_status("apps", "web", ["203.0.113.5"], rv, kubernetes=edge.settings)
    assert edge_k8s.service_event("apps", "web", "AddressAssigned", "table", kubernetes=edge.settings)["created"]


def test_wait_ingress_ready_follows_a_watch(edge_k8s, make_edge, cluster, emulator):
    edge = make_edge(ready=(True, True, False))
    timer = threading.Timer(0.3, cluster.set_ready, args=(edge.pods["edge3"], True))
    timer.start()
    try:
        result = edge_k8s.wait_ingress_ready("edge3", timeout=10, nodes=edge.nodes, kubernetes=edge.settings)
    finally:
        timer.cancel()
    assert result["reached"] is True and result["ready"] is True
    assert result["pod"] == edge.pods["edge3"]
    assert result["kubernetes_node"] == edge.k8s_nodes["edge3"]
    assert result["waited"] < 5
    watches = emulator.find_requests(verb="watch", resource="pods")
    assert watches and watches[0].query["fieldSelector"] == f"spec.nodeName={edge.k8s_nodes['edge3']}"
    assert watches[0].query["resourceVersion"]  # continues from the list, no gap


def test_wait_ingress_ready_survives_a_dropped_watch(edge_k8s, make_edge, cluster, emulator):
    edge = make_edge(ready=(True, True, False))
    emulator.drop_watches(1)
    timer = threading.Timer(0.3, cluster.set_ready, args=(edge.pods["edge3"], True))
    timer.start()
    try:
        result = edge_k8s.wait_ingress_ready("edge3", timeout=10, nodes=edge.nodes, kubernetes=edge.settings)
    finally:
        timer.cancel()
    assert result["reached"] is True
    assert result["watch_restarts"] >= 1


def test_wait_ingress_ready_relists_after_410(edge_k8s, make_edge, cluster, emulator):
    edge = make_edge(ready=(True, True, False))
    emulator.set_latency(0.3, verbs={"watch"}, count=1)

    def meanwhile():
        deadline = time.monotonic() + 5
        while not emulator.find_requests(verb="watch") and time.monotonic() < deadline:
            time.sleep(0.01)
        cluster.set_ready(edge.pods["edge3"], True)
        emulator.compact_history()

    thread = threading.Thread(target=meanwhile)
    thread.start()
    result = edge_k8s.wait_ingress_ready("edge3", timeout=10, nodes=edge.nodes, kubernetes=edge.settings)
    thread.join()
    assert result["reached"] is True
    assert result["watch_restarts"] == 1
    assert len(emulator.find_requests(verb="list", resource="pods")) == 2


def test_wait_ingress_ready_times_out_and_waits_for_unready(edge_k8s, make_edge, cluster, emulator):
    edge = make_edge(ready=(True, True, False))
    start = time.monotonic()
    result = edge_k8s.wait_ingress_ready("edge3", timeout=1, nodes=edge.nodes, kubernetes=edge.settings)
    assert result["reached"] is False and result["ready"] is False
    assert 0.9 < time.monotonic() - start < 4
    # already in the wanted state: one list, no watch at all
    emulator.clear_requests()
    result = edge_k8s.wait_ingress_ready("edge1", ready=True, timeout=5, nodes=edge.nodes, kubernetes=edge.settings)
    assert result["reached"] is True and result["watch_restarts"] == 0
    assert [r.verb for r in emulator.requests] == ["list"]
    timer = threading.Timer(0.2, cluster.set_ready, args=(edge.pods["edge2"], False))
    timer.start()
    result = edge_k8s.wait_ingress_ready("edge2", ready=False, timeout=10, nodes=edge.nodes, kubernetes=edge.settings)
    timer.cancel()
    assert result["reached"] is True and result["ready"] is False
