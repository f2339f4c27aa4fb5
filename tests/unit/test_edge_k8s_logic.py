"""
Pure logic of _modules/edge_k8s.py, without Salt and without a Kubernetes API.

Also checks deploy/rbac.yaml against the module's table of API calls, and
that table against the calls in the module's source.
"""

import ast
import importlib.util
import json
import pathlib
import random

import pytest
import yaml
from salt.exceptions import SaltInvocationError

REPO = pathlib.Path(__file__).resolve().parents[2]
MODULE_PATH = REPO / "_modules" / "edge_k8s.py"


@pytest.fixture(scope="module", autouse=True)
def _drain_salt_temp_log_handler():
    """Importing salt installs a deferred stderr log handler that replays
    WARNINGs at exit onto pytest's closed capture stream; drain it."""
    yield
    from salt._logging import impl

    handler = impl.get_temp_handler()
    if handler is not None:
        handler.sync_with_handlers(())


@pytest.fixture(scope="module")
def mod():
    spec = importlib.util.spec_from_file_location("edge_k8s_logic_under_test", MODULE_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # no __salt__/__pillar__/__opts__ defined
    return module


# ---------------------------------------------------------------- module shape


def test_imports_without_salt_and_declares_its_salt_functions(mod):
    assert mod.__virtualname__ == "edge_k8s"
    assert mod.__virtual__() == "edge_k8s"
    for name in mod.__load__:
        func = getattr(mod, name)
        assert callable(func)
        assert "CLI Example:" in func.__doc__, name
    assert "settings" not in mod.__load__ and "rbac_message" not in mod.__load__
    assert mod.__doc__


def test_pillar_fallback_outside_salt_is_empty(mod):
    assert mod._edge_ha_pillar() == {}


# ---------------------------------------------------------------- desired list


VIP = "198.18.0.100"
NODES = {"edge1": "198.18.0.11", "edge2": "198.18.0.12", "edge3": "198.18.0.13"}


def test_desired_from_scratch(mod):
    new, managed = mod.desired_external_ips([], [], [f"{VIP}/24"], NODES, ["edge2", "edge1"])
    assert new == [VIP, "198.18.0.11", "198.18.0.12"]
    assert managed == new


def test_user_addresses_are_kept_and_never_claimed(mod):
    current = ["203.0.113.7", VIP, "198.18.0.11"]
    new, managed = mod.desired_external_ips(current, [], [VIP], NODES, ["edge1", "edge2"])
    assert new == ["203.0.113.7", VIP, "198.18.0.11", "198.18.0.12"]
    assert managed == ["198.18.0.12"]  # VIP and edge1 were the user's already


def test_managed_addresses_no_longer_desired_are_removed_in_place(mod):
    current = ["198.18.0.11", "203.0.113.7", VIP, "198.18.0.13"]
    managed_before = [VIP, "198.18.0.11", "198.18.0.13"]
    new, managed = mod.desired_external_ips(current, managed_before, [VIP], NODES, ["edge1"])
    assert new == ["198.18.0.11", "203.0.113.7", VIP]  # order of kept entries preserved
    assert managed == [VIP, "198.18.0.11"]


def test_vips_only_policy_drops_node_addresses(mod):
    new, managed = mod.desired_external_ips(
        [VIP, "198.18.0.11"], [VIP, "198.18.0.11"], [VIP], NODES, ["edge1"], "vips_only"
    )
    assert new == [VIP] and managed == [VIP]


def test_managed_address_removed_by_hand_comes_back(mod):
    new, managed = mod.desired_external_ips(["203.0.113.7"], [VIP], [VIP], {}, [])
    assert new == ["203.0.113.7", VIP] and managed == [VIP]


def test_healthy_node_without_address_is_left_out(mod):
    new, _ = mod.desired_external_ips([], [], [VIP], {"edge1": None}, ["edge1", "edge9"])
    assert new == [VIP]


def test_ipv6_is_compared_canonically_but_user_text_is_kept(mod):
    new, managed = mod.desired_external_ips(["2001:DB8::0:1"], [], ["2001:db8::1/64"], {}, [])
    assert new == ["2001:DB8::0:1"] and managed == []


def test_user_duplicates_are_left_alone(mod):
    new, _ = mod.desired_external_ips(["203.0.113.7", "203.0.113.7"], [], [VIP], {}, [])
    assert new == ["203.0.113.7", "203.0.113.7", VIP]


def test_invalid_input_is_rejected(mod):
    with pytest.raises(SaltInvocationError, match="policy"):
        mod.desired_external_ips([], [], [VIP], {}, [], "all_nodes")
    with pytest.raises(SaltInvocationError, match="not an IP address"):
        mod.desired_external_ips([], [], ["vip.example"], {}, [])


def test_desired_properties_on_random_inputs(mod):
    rng = random.Random(1234)
    pool = [f"10.0.0.{n}" for n in range(1, 12)]
    for _ in range(500):
        current = rng.sample(pool, rng.randint(0, 6))
        managed_before = [a for a in pool if rng.random() < 0.3]
        vips = rng.sample(pool, rng.randint(0, 2))
        nodes = {f"n{i}": a for i, a in enumerate(rng.sample(pool, 3))}
        healthy = [n for n in nodes if rng.random() < 0.5]
        policy = rng.choice(mod.POLICIES)
        new, managed = mod.desired_external_ips(current, managed_before, vips, nodes, healthy, policy)

        user = [a for a in current if a not in managed_before]
        desired = set(vips) | ({nodes[n] for n in healthy} if policy == "vips_and_healthy_nodes" else set())
        assert [a for a in new if a in user] == user  # every user address, in order
        assert not set(managed) & set(user)  # never claimed
        assert set(new) == set(user) | desired
        assert set(managed) == desired - set(user)
        assert len(new) == len(set(new))
        # converged: running again changes nothing
        again, again_managed = mod.desired_external_ips(new, managed, vips, nodes, healthy, policy)
        assert again == new and set(again_managed) == set(managed)
        assert not mod.needs_update(new, managed, again, again_managed)


# ---------------------------------------------------------------- small helpers


def test_parse_and_format_managed(mod):
    assert mod.parse_managed(mod.format_managed([VIP, "2001:db8::1"])) == [VIP, "2001:db8::1"]
    assert mod.parse_managed("198.18.0.100, 198.18.0.11") == [VIP, "198.18.0.11"]
    assert mod.parse_managed('{"not": "a list"}') == []
    assert mod.parse_managed(None) == [] and mod.parse_managed("") == []


def test_build_patch_touches_only_the_list_and_the_annotation(mod):
    patch = mod.build_patch("42", ["203.0.113.7", VIP], [VIP])
    assert patch == {
        "metadata": {"resourceVersion": "42", "annotations": {mod.MANAGED_ANNOTATION: json.dumps([VIP], separators=(",", ":"))}},
        "spec": {"externalIPs": ["203.0.113.7", VIP]},
    }
    empty = mod.build_patch("43", [], [])
    assert empty["spec"]["externalIPs"] is None  # merge patch: remove the field
    assert empty["metadata"]["annotations"][mod.MANAGED_ANNOTATION] is None


def test_needs_update(mod):
    assert not mod.needs_update([VIP], [VIP], [VIP], [VIP])
    assert mod.needs_update([VIP], [], [VIP], [VIP])  # only the ownership record differs
    assert mod.needs_update([VIP, "1.2.3.4"], [VIP], ["1.2.3.4", VIP], [VIP])


def _pod(name, node, ready, phase="Running", deleting=False):
    pod = {
        "metadata": {"name": name},
        "spec": {"nodeName": node},
        "status": {"phase": phase, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }
    if deleting:
        pod["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    return pod


def test_pod_readiness(mod):
    assert mod.pod_is_ready(_pod("a", "n", True))
    assert not mod.pod_is_ready(_pod("a", "n", False))
    assert not mod.pod_is_ready(_pod("a", "n", True, phase="Pending"))
    assert not mod.pod_is_ready(_pod("a", "n", True, deleting=True))
    assert not mod.pod_is_ready({"metadata": {"name": "a"}})


def test_summarize_ingress_pods(mod):
    pods = [
        _pod("ctl-b", "n1", True),
        _pod("ctl-a", "n1", False),
        _pod("ctl-c", "n2", False),
        {"metadata": {"name": "pending"}, "spec": {}, "status": {"phase": "Pending"}},
    ]
    assert mod.summarize_ingress_pods(pods) == {
        "n1": {"pod": "ctl-b", "ready": True, "pods": {"ctl-a": False, "ctl-b": True}},
        "n2": {"pod": "ctl-c", "ready": False, "pods": {"ctl-c": False}},
    }


def test_node_internal_ip(mod):
    node = {"status": {"addresses": [{"type": "Hostname", "address": "x"}, {"type": "InternalIP", "address": "10.1.1.1"}]}}
    assert mod.node_internal_ip(node) == "10.1.1.1"
    assert mod.node_internal_ip({"status": {}}) is None


def test_rbac_messages(mod):
    text = mod.rbac_message("patch", "services", "ingress-nginx", "ingress-nginx-controller", "denied")
    assert text.startswith(
        'forbidden: patch services in namespace ingress-nginx — grant verb "patch" on resource "services"'
    )
    assert 'resourceNames: ["ingress-nginx-controller"]' in text and text.endswith("API server: denied")
    cluster = mod.rbac_message("list", "nodes")
    assert cluster.startswith('forbidden: list nodes at cluster scope — grant verb "list" on resource "nodes"')
    assert "ClusterRole" in cluster


def test_settings_defaults_and_validation(mod):
    s = mod.settings({"service": {"name": "svc"}, "request_timeout": "3"})
    assert s["service"] == {"namespace": "ingress-nginx", "name": "svc"}
    assert s["ingress_pods"]["label_selector"] == "app.kubernetes.io/component=controller"
    assert s["request_timeout"] == 3.0 and s["conflict_retries"] == 5
    assert s["external_ips"] == "vips_and_healthy_nodes"
    assert mod.settings(None) == mod.settings({})
    with pytest.raises(SaltInvocationError):
        mod.settings({"external_ips": "everything"})
    with pytest.raises(SaltInvocationError):
        mod.settings({"service": "ingress-nginx/x"})
    with pytest.raises(SaltInvocationError):
        mod.settings({"request_timeout": 0})


def test_vips_and_nodes_from_the_example_pillar(mod):
    example = yaml.safe_load((REPO / "pillar" / "edge_ha.sls.example").read_text())["edge_ha"]
    model = mod.edge_ha_model.normalize(example)
    assert mod.vips_from_model(model) == ["198.18.0.100"]
    nodes = mod.edge_nodes(model["nodes"])
    assert nodes["edge1"] == {"address": "198.18.0.11", "kubernetes_node": "edge1"}
    assert mod.settings(model["kubernetes"])["service"]["name"] == "ingress-nginx-controller"
    assert mod.edge_nodes({"edge1": {"address": "198.18.0.11", "kubernetes_node": "k8s-1"}})["edge1"][
        "kubernetes_node"
    ] == "k8s-1"
    assert mod.edge_nodes(["a", "b"]) == {
        "a": {"address": None, "kubernetes_node": "a"},
        "b": {"address": None, "kubernetes_node": "b"},
    }
    two = {"B": {"vips": ["10.0.0.2", "10.0.0.1"]}, "A": {"vips": ["10.0.0.1"]}}
    assert mod.vips_from_model({"vrrp_instances": two}) == ["10.0.0.1", "10.0.0.2"]  # by instance name, once


PILLAR_NODES = {
    "edge1": {"address": "198.18.0.11", "interface": "eth0", "kubernetes_node": "k8s-1"},
    "edge2": {"address": "198.18.0.12", "interface": "eth0"},
}


def test_pillar_is_read_through_the_edge_ha_model(mod, monkeypatch):
    """With no explicit arguments the pillar goes through edge_ha.normalize(): its defaults, its VIPs and nodes."""
    pillar = {
        "edge_ha": {
            "nodes": PILLAR_NODES,
            "vrrp_instances": {
                "VI_2": {"virtual_router_id": 52, "virtual_ipaddress": ["198.18.0.100/24"]},
                "VI_1": {"virtual_router_id": 51, "virtual_ipaddress": ["198.18.0.102/24", "198.18.0.101"]},
            },
            "kubernetes": {"service": {"name": "edge-svc"}, "request_timeout": 3},
        }
    }
    monkeypatch.setattr(mod, "__pillar__", pillar, raising=False)
    k8s, vips, nodes = mod._resolve(None, need_vips=True)
    assert vips == ["198.18.0.102", "198.18.0.101", "198.18.0.100"]  # by instance name
    assert nodes == {
        "edge1": {"address": "198.18.0.11", "kubernetes_node": "k8s-1"},
        "edge2": {"address": "198.18.0.12", "kubernetes_node": "edge2"},
    }
    assert k8s["service"] == {"namespace": "ingress-nginx", "name": "edge-svc"}
    assert k8s["request_timeout"] == 3.0 and k8s["conflict_retries"] == 5
    assert k8s["ingress_pods"] == mod.edge_ha_model.DEFAULT_KUBERNETES["ingress_pods"]
    # explicit arguments win, and an explicit kubernetes dict is merged over the defaults, not the pillar
    k8s, vips, nodes = mod._resolve({"request_timeout": 7}, vips=["192.0.2.1/32"], nodes=["x"], need_vips=True)
    assert (k8s["service"]["name"], k8s["request_timeout"], vips, list(nodes)) == (
        "ingress-nginx-controller", 7.0, ["192.0.2.1"], ["x"],
    )


def test_invalid_pillar_is_an_error_naming_the_key(mod, monkeypatch):
    bad = {"edge_ha": {"nodes": PILLAR_NODES, "vrrp_instances": {}, "kubernetes": {"external_ips": "everything"}}}
    monkeypatch.setattr(mod, "__pillar__", bad, raising=False)
    with pytest.raises(SaltInvocationError, match=r"edge_ha:kubernetes:external_ips: 'everything' is not allowed"):
        mod._resolve(None)


def test_no_edge_ha_pillar_means_defaults(mod, monkeypatch):
    monkeypatch.setattr(mod, "__pillar__", {"other": 1}, raising=False)
    assert mod._resolve(None, need_vips=True) == (mod.settings(None), [], {})


def test_event_body(mod):
    service = {"metadata": {"name": "svc", "namespace": "ns", "uid": "u1", "resourceVersion": "7"}}
    message = mod.external_ips_message(["a"], ["a", VIP], "edge2 ingress ready" + "x" * 2000)
    event = mod.event_body(service, mod.EVENT_REASON, message, "edge1")
    assert event["involvedObject"] == {
        "apiVersion": "v1", "kind": "Service", "name": "svc", "namespace": "ns", "uid": "u1", "resourceVersion": "7",
    }
    assert event["metadata"]["namespace"] == "ns"
    assert event["reason"] == "ExternalIPsUpdated" and event["type"] == "Normal"
    assert f"added {VIP}" in event["message"] and "Reason: edge2 ingress ready" in event["message"]
    assert len(event["message"]) == 1024
    assert event["metadata"]["name"].startswith("svc.")
    assert event["source"] == {"component": "salt-edge-ha", "host": "edge1"}
    assert (event["reportingComponent"], event["reportingInstance"]) == ("salt-edge-ha", "edge1")

    warning = mod.event_body(service, "SplitBrainFenced", "two holders", "master", "Warning")
    assert (warning["reason"], warning["type"], warning["message"]) == ("SplitBrainFenced", "Warning", "two holders")


@pytest.mark.parametrize("reason", ["VIPFailover", "VIPFenced", "StaleVIPRemoved", "SplitBrainFenced",
                                    "NodeDrained", "NodeUndrained", "RolloutStopped", "ExternalIPsUpdated"])
def test_runner_event_reasons_are_valid(mod, reason):
    assert reason in mod.EVENT_REASONS
    mod.check_event(reason, "Normal")
    mod.check_event(reason, "Warning")


@pytest.mark.parametrize(
    "reason,event_type,match",
    [
        ("vip failover", "Normal", "reason must be an UpperCamelCase word"),
        ("", "Normal", "reason must be"),
        (None, "Normal", "reason must be"),
        ("A" * 129, "Normal", "reason must be"),
        ("VIPFailover", "Error", "event_type must be one of Normal, Warning, not 'Error'"),
    ],
)
def test_bad_event_arguments(mod, reason, event_type, match):
    with pytest.raises(SaltInvocationError, match=match):
        mod.check_event(reason, event_type)


# ---------------------------------------------------------------- VIP owners


def test_owners_are_normalised(mod):
    owners = {
        "198.18.0.100/24": "edge2",
        "198.18.0.101": None,
        "198.18.0.102": ["edge3", "edge1", "edge3"],
        "198.18.0.103": ["edge1"],
        "198.18.0.104": [],
    }
    assert mod.normalize_owners(owners) == {
        "198.18.0.100": "edge2",
        "198.18.0.101": None,
        "198.18.0.102": ["edge1", "edge3"],
        "198.18.0.103": "edge1",
        "198.18.0.104": None,
    }
    assert mod.normalize_owners({}) == {}


def test_owners_annotation_is_compact_sorted_json(mod):
    value = mod.format_owners(mod.normalize_owners({"198.18.0.101": ["edge2", "edge1"], "198.18.0.100": "edge2", "10.0.0.1": None}))
    assert value == '{"10.0.0.1":null,"198.18.0.100":"edge2","198.18.0.101":["edge1","edge2"]}'
    assert mod.parse_owners(value) == {"10.0.0.1": None, "198.18.0.100": "edge2", "198.18.0.101": ["edge1", "edge2"]}
    assert mod.parse_owners(None) is None
    assert mod.parse_owners("edge2") == "edge2"  # not JSON: returned as found (and rewritten)
    assert mod.parse_owners("[1]") == "[1]"


@pytest.mark.parametrize(
    "owners,match",
    [
        ("198.18.0.100=edge2", "owners must be a mapping"),
        ({"vip1": "edge1"}, "not an IP address: 'vip1'"),
        ({"198.18.0.100": 3}, "owners:198.18.0.100: the owner must be a node name, null or a list"),
        ({"198.18.0.100": ["edge1", ""]}, "owners:198.18.0.100"),
        ({"198.18.0.100": "edge1", "198.18.0.100/24": "edge2"}, "VIP 198.18.0.100 is given twice"),
    ],
)
def test_bad_owners_are_rejected(mod, owners, match):
    with pytest.raises(SaltInvocationError, match=match):
        mod.normalize_owners(owners)


# ---------------------------------------------------------------- excluded nodes


def _node(name, unschedulable=None, labels=None):
    node = {"metadata": {"name": name, "labels": dict(labels or {})}, "spec": {}}
    if unschedulable is not None:
        node["spec"]["unschedulable"] = unschedulable
    return node


def test_node_exclusions(mod):
    label = "node.kubernetes.io/exclude-from-external-load-balancers"
    nodes = [
        _node("neither", labels={"kubernetes.io/hostname": "neither"}),
        _node("cordoned", unschedulable=True),
        _node("labelled", labels={label: ""}),
        _node("both", unschedulable=True, labels={label: "true"}),
        _node("uncordoned", unschedulable=False, labels={"node.kubernetes.io/exclude-from-external": "x"}),
        {"metadata": {"name": "bare"}},
    ]
    assert mod.node_exclusions(nodes) == {
        "cordoned": "cordoned",
        "labelled": f"label {label}",
        "both": f"cordoned; label {label}",
    }
    assert mod.node_exclusions([]) == {}


def test_backoff_is_bounded(mod):
    delays = [mod.backoff_delay(n) for n in range(1, 20)]
    assert all(0 < d <= mod.BACKOFF_CAP for d in delays)
    assert mod.backoff_delay(1, retry_after=60) == 5.0


# ---------------------------------------------------------------- RBAC


def _rbac_documents():
    return [d for d in yaml.safe_load_all((REPO / "deploy" / "rbac.yaml").read_text()) if d]


def test_rbac_grants_exactly_the_calls_the_module_makes(mod):
    docs = _rbac_documents()
    granted = set()
    for doc in docs:
        if doc["kind"] not in ("Role", "ClusterRole"):
            continue
        scope = "namespaced" if doc["kind"] == "Role" else "cluster"
        for rule in doc["rules"]:
            assert rule["apiGroups"] == [""], rule
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert verb != "*" and resource != "*"
                    granted.add((verb, resource, scope))
    needed = {(verb, resource, scope) for verb, resource, scope, _ in mod.API_CALLS}
    assert needed - granted == set(), "rbac.yaml is missing grants"
    assert granted - needed == set(), "rbac.yaml grants more than the module uses"


def test_rbac_restricts_the_service_and_binds_the_service_account(mod):
    docs = _rbac_documents()
    by_kind = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    (role,) = by_kind["Role"]
    defaults = mod.edge_ha_model.DEFAULT_KUBERNETES
    assert role["metadata"]["namespace"] == defaults["service"]["namespace"] == defaults["ingress_pods"]["namespace"]
    (services_rule,) = [r for r in role["rules"] if "services" in r["resources"]]
    assert services_rule["resourceNames"] == [defaults["service"]["name"]]
    (account,) = by_kind["ServiceAccount"]
    subject = {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": account["metadata"]["namespace"]}
    roles = {(d["kind"], d["metadata"]["name"]) for d in by_kind["Role"] + by_kind["ClusterRole"]}
    bindings = by_kind["RoleBinding"] + by_kind["ClusterRoleBinding"]
    assert {(b["roleRef"]["kind"], b["roleRef"]["name"]) for b in bindings} == roles
    for binding in bindings:
        assert binding["subjects"] == [subject]
    (role_binding,) = by_kind["RoleBinding"]
    assert role_binding["metadata"]["namespace"] == role["metadata"]["namespace"]
    assert "Secret" not in by_kind  # short-lived tokens (docs/kubernetes.md); deploy/long-lived-token.yaml is opt-in


def _call_sites():
    """(verb, resource, client method or None, line) of every API call site in the module source.

    Sites are ``session.call("verb", "resource", "CoreV1Api method", ...)`` and
    ``_check_call("verb", "resource")`` (before the watch); the generic
    wrapper ``_Session.call`` itself is skipped.
    """
    tree = ast.parse(MODULE_PATH.read_text())
    sites = []

    def visit(node, function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, child.name)
                continue
            if isinstance(child, ast.Call):
                func = child.func
                args = None
                if isinstance(func, ast.Attribute) and func.attr == "call" and getattr(func.value, "id", None) == "session":
                    args = child.args[:3]
                elif isinstance(func, ast.Name) and func.id == "_check_call" and function != "call":
                    args = child.args[:2]
                if args is not None:
                    assert all(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in args), (
                        f"line {child.lineno}: API calls must name verb/resource/method literally"
                    )
                    values = [a.value for a in args]
                    sites.append((values[0], values[1], values[2] if len(values) > 2 else None, child.lineno))
            visit(child, function)

    visit(tree, None)
    return sites


def test_api_calls_table_matches_the_source(mod):
    sites = _call_sites()
    assert len(sites) >= 7
    in_source = {(verb, resource) for verb, resource, _, _ in sites}
    in_table = {(verb, resource) for verb, resource, _, _ in mod.API_CALLS}
    assert in_source == in_table


def test_client_methods_exist_and_match_their_verbs(mod):
    """Check each call site against the installed kubernetes client (37.x, pydantic)."""
    import inspect

    from kubernetes.client import CoreV1Api

    prefixes = {"list": "list_", "get": "read_", "patch": "patch_", "create": "create_"}
    for verb, resource, method, line in _call_sites():
        if method is None:
            continue
        assert hasattr(CoreV1Api, method), f"line {line}: CoreV1Api has no {method}"
        assert method.startswith(prefixes[verb]), f"line {line}: {method} is not a {verb}"
        params = inspect.signature(getattr(CoreV1Api, method)).parameters
        assert "_preload_content" in params and "_request_timeout" in params
    assert "_content_type" in inspect.signature(CoreV1Api.patch_namespaced_service).parameters


def test_virtual_refuses_without_the_kubernetes_client(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "kubernetes", None)  # makes "import kubernetes" fail
    spec = importlib.util.spec_from_file_location("edge_k8s_without_client", MODULE_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.HAS_KUBERNETES is False
    ok, reason = module.__virtual__()
    assert ok is False and "kubernetes Python client is not importable" in reason
    # the pure logic still works
    assert module.desired_external_ips([], [], [VIP], {}, []) == ([VIP], [VIP])


@pytest.mark.parametrize("text", ["apiVersion: v1\nclusters: [\n  token: abc", "- a\n- b\n", "key: value: other\n"])
def test_unparsable_kubeconfig_is_a_clear_error(mod, tmp_path, text):
    """Issue #12: the module's own error naming the file, not a raw yaml error (and no excerpt of the file)."""
    path = tmp_path / "kubeconfig"
    path.write_text(text)
    with pytest.raises(mod.CommandExecutionError,
                       match=rf"cannot load Kubernetes configuration from kubeconfig {path}: ") as err:
        mod._load_configuration({"kubeconfig": str(path)})  # pylint: disable=protected-access
    assert "token: abc" not in str(err.value)
