"""Validation of the edge_ha pillar model: every rule has a failing case naming its path."""

import copy
import pathlib

import pytest
import yaml


from edge_ha_core import model as edge_ha
EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "pillar" / "edge_ha.sls.example"


@pytest.fixture
def pillar():
    return copy.deepcopy(yaml.safe_load(EXAMPLE.read_text())["edge_ha"])


def test_example_pillar_is_valid(pillar):
    assert edge_ha.validate_model(pillar) == []


def _set(data, path, value):
    *parents, last = path
    for key in parents:
        data = data[key]
    if value is DELETE:
        del data[last]
    else:
        data[last] = value


DELETE = object()
VI = ("vrrp_instances", "VI_INGRESS")

# (id, [(path, value), ...], expected error path, expected text in the message)
CASES = [
    ("unknown-top-key", [(("vrrp_instance",), {})], "edge_ha:vrrp_instance", "unknown key; allowed keys here"),
    ("unknown-instance-key", [(VI + ("virtual_router",), 5)], "edge_ha:vrrp_instances:VI_INGRESS:virtual_router", "unknown key"),
    ("unknown-node-key", [(("nodes", "edge1", "ip"), "198.18.0.1")], "edge_ha:nodes:edge1:ip", "allowed keys here: address"),
    ("vrid-low", [(VI + ("virtual_router_id",), 0)], "edge_ha:vrrp_instances:VI_INGRESS:virtual_router_id", "from 1 to 255"),
    ("vrid-high", [(VI + ("virtual_router_id",), 256)], "edge_ha:vrrp_instances:VI_INGRESS:virtual_router_id", "from 1 to 255"),
    ("vrid-missing", [(VI + ("virtual_router_id",), DELETE)], "edge_ha:vrrp_instances:VI_INGRESS:virtual_router_id", "is required"),
    ("priority-node-high", [(VI + ("priority", "edge1"), 255)], "edge_ha:vrrp_instances:VI_INGRESS:priority:edge1", "from 1 to 254"),
    ("priority-scalar-low", [(VI + ("priority",), 0)], "edge_ha:vrrp_instances:VI_INGRESS:priority", "from 1 to 254"),
    ("priority-unknown-node", [(VI + ("priority", "edge9"), 100)], "edge_ha:vrrp_instances:VI_INGRESS:priority:edge9", "is not a node"),
    ("node-priority", [(("nodes", "edge1", "priority"), 300)], "edge_ha:nodes:edge1:priority", "from 1 to 254"),
    ("lb-algo", [(("virtual_servers", "http", "lb_algo"), "roundrobin")], "edge_ha:virtual_servers:http:lb_algo",
     "one of rr|wrr|lc|wlc|lblc|sh|mh|dh|fo|ovf|lblcr|sed|nq"),
    ("lb-kind", [(("virtual_servers", "http", "lb_kind"), "dr")], "edge_ha:virtual_servers:http:lb_kind", "one of NAT|DR|TUN"),
    ("protocol", [(("virtual_servers", "http", "protocol"), "HTTP")], "edge_ha:virtual_servers:http:protocol", "one of TCP|UDP|SCTP"),
    ("port", [(("virtual_servers", "http", "port"), 70000)], "edge_ha:virtual_servers:http:port", "from 1 to 65535"),
    ("advert-int-v2", [(VI + ("advert_int",), 0.5)], "edge_ha:vrrp_instances:VI_INGRESS:advert_int", "needs vrrp_version: 3"),
    ("auth-pass-long", [(VI + ("authentication", "auth_pass"), "123456789")],
     "edge_ha:vrrp_instances:VI_INGRESS:authentication:auth_pass", "keepalived uses only the first 8"),
    ("auth-type", [(VI + ("authentication", "auth_type"), "MD5")],
     "edge_ha:vrrp_instances:VI_INGRESS:authentication:auth_type", "one of PASS|AH"),
    ("auth-with-v3", [(VI + ("vrrp_version",), 3)], "edge_ha:vrrp_instances:VI_INGRESS:authentication", "VRRPv3 has no authentication"),
    ("duplicate-vrid", [(("vrrp_instances", "VI_OTHER"), {"virtual_router_id": 51, "virtual_ipaddress": ["198.18.0.101/24"]})],
     "edge_ha:vrrp_instances:VI_OTHER:virtual_router_id", "VRIDs must be unique per interface"),
    ("vip-is-node-address", [(VI + ("virtual_ipaddress",), ["198.18.0.12/24"])],
     "edge_ha:vrrp_instances:VI_INGRESS:virtual_ipaddress:0", "is the address of node edge2"),
    ("vip-wrong-family", [(VI + ("virtual_ipaddress",), ["198.18.0.100/24", "2001:db8::100/64"])],
     "edge_ha:vrrp_instances:VI_INGRESS:virtual_ipaddress:1", "is IPv6 but this instance is IPv4"),
    ("vip-not-address", [(VI + ("virtual_ipaddress",), ["198.18.0.300/24"])],
     "edge_ha:vrrp_instances:VI_INGRESS:virtual_ipaddress:0", "is not an address"),
    ("ipv6-needs-v3", [(("vrrp_instances", "VI6"), {"virtual_router_id": 52, "virtual_ipaddress": ["2001:db8::100/64"]})],
     "edge_ha:vrrp_instances:VI6:vrrp_version", "IPv6 virtual addresses need vrrp_version: 3"),
    ("track-script-undefined", [(VI + ("track_script",), ["chk_nginx"])],
     "edge_ha:vrrp_instances:VI_INGRESS:track_script:0", "'chk_nginx' is not defined; defined vrrp_scripts: chk_ingress"),
    ("nopreempt-master", [(VI + ("nopreempt",), True), (VI + ("state",), "MASTER")],
     "edge_ha:vrrp_instances:VI_INGRESS:state", "nopreempt needs state BACKUP"),
    ("node-address", [(("nodes", "edge2", "address"), "edge2.example")], "edge_ha:nodes:edge2:address", "is not an IPv4 or IPv6 address"),
    ("node-interface-missing", [(("nodes", "edge2", "interface"), DELETE)], "edge_ha:nodes:edge2:interface", "is required"),
    ("vs-address-not-vip", [(("virtual_servers", "http", "address"), "198.18.0.200")],
     "edge_ha:virtual_servers:http:address", "is not a virtual_ipaddress of any vrrp_instance"),
    ("real-servers-shape", [(("virtual_servers", "http", "real_servers"), "all")],
     "edge_ha:virtual_servers:http:real_servers", "must be 'auto'"),
    ("real-server-weight", [(("virtual_servers", "http", "real_servers"), [{"address": "198.18.0.11", "weight": -1}])],
     "edge_ha:virtual_servers:http:real_servers:0:weight", "from 0 to 65535"),
    ("health-check-type", [(("virtual_servers", "http", "health_check", "type"), "PING")],
     "edge_ha:virtual_servers:http:health_check:type", "one of TCP_CHECK|HTTP_GET|SSL_GET"),
    ("http-check-needs-path", [(("virtual_servers", "http", "health_check"), {"type": "HTTP_GET"})],
     "edge_ha:virtual_servers:http:health_check:path", "is required for type HTTP_GET"),
    ("kube-unknown-key", [(("kubernetes", "namespace"), "x")], "edge_ha:kubernetes:namespace", "unknown key"),
    ("kube-policy", [(("kubernetes", "external_ips"), "all")], "edge_ha:kubernetes:external_ips", "one of vips_and_healthy_nodes|vips_only"),
    ("kube-service-shape", [(("kubernetes", "service"), {"name": ""})], "edge_ha:kubernetes:service:name", "non-empty string"),
    ("instance-name", [(("vrrp_instances", "VI 2"), {"virtual_router_id": 9, "virtual_ipaddress": ["198.18.0.102/24"]})],
     "edge_ha:vrrp_instances:VI 2", "name must be"),
    ("no-nodes", [(("nodes",), {})], "edge_ha:nodes", "must be a non-empty mapping"),
]


@pytest.mark.parametrize("changes,path,text", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_invalid_pillar_names_path(pillar, changes, path, text):
    for keypath, value in changes:
        _set(pillar, keypath, value)
    errors = edge_ha.validate_model(pillar)
    matching = [e for e in errors if e.startswith(path + ": ")]
    assert matching, f"no error for {path}; got {errors}"
    assert any(text in e for e in matching), matching


def test_all_errors_reported_at_once(pillar):
    _set(pillar, VI + ("virtual_router_id",), 300)
    _set(pillar, ("virtual_servers", "http", "lb_algo"), "bogus")
    _set(pillar, ("nodes", "edge1", "colour"), "red")
    errors = edge_ha.validate_model(pillar)
    paths = {e.split(": ", 1)[0] for e in errors}
    assert {
        "edge_ha:vrrp_instances:VI_INGRESS:virtual_router_id",
        "edge_ha:virtual_servers:http:lb_algo",
        "edge_ha:nodes:edge1:colour",
    } <= paths
    with pytest.raises(edge_ha.SaltInvocationError) as err:
        edge_ha.normalize(pillar)
    assert "3 errors" in str(err.value)


def test_missing_pillar_is_clear():
    assert edge_ha.validate_model(None) == ["edge_ha: must be a mapping (is the pillar key edge_ha missing?)"]


def test_ipv6_instance_valid_with_v3(pillar):
    pillar["nodes"]["edge1"]["address6"] = "2001:db8::11"
    pillar["nodes"]["edge2"]["address6"] = "2001:db8::12"
    pillar["vrrp_instances"]["VI6"] = {
        "virtual_router_id": 52, "vrrp_version": 3, "advert_int": 0.1, "unicast": True,
        "virtual_ipaddress": ["2001:db8::100/64"],
    }
    assert edge_ha.validate_model(pillar) == []
    view = edge_ha.view_for_node(edge_ha.normalize(pillar), "edge2")
    vi6 = [i for i in view["vrrp_instances"] if i["name"] == "VI6"][0]
    assert vi6["unicast_src_ip"] == "2001:db8::12"
    assert vi6["unicast_peer"] == ["2001:db8::11"]


def test_ipv6_unicast_needs_node_address6(pillar):
    pillar["vrrp_instances"]["VI6"] = {
        "virtual_router_id": 52, "vrrp_version": 3, "unicast": True, "virtual_ipaddress": ["2001:db8::100/64"],
    }
    errors = edge_ha.validate_model(pillar)
    assert "edge_ha:nodes:edge1:address6: is required: instance VI6 is IPv6 with unicast: true" in errors


def test_normalize_derives_priorities_and_auto_real_servers(pillar):
    del pillar["vrrp_instances"]["VI_INGRESS"]["priority"]
    pillar["nodes"]["edge3"] = {"address": "198.18.0.13", "interface": "eth1", "priority": 42}
    model = edge_ha.normalize(pillar)
    assert model["vrrp_instances"]["VI_INGRESS"]["priorities"] == {"edge1": 150, "edge2": 140, "edge3": 42}
    reals = model["virtual_servers"]["https"]["real_servers"]
    assert [(r["address"], r["port"], r["node"]) for r in reals] == [
        ("198.18.0.11", 443, "edge1"), ("198.18.0.12", 443, "edge2"), ("198.18.0.13", 443, "edge3"),
    ]
    view = edge_ha.view_for_node(model, "edge3")
    inst = view["vrrp_instances"][0]
    assert inst["interface"] == "eth1" and inst["priority"] == 42
    assert inst["unicast_peer"] == ["198.18.0.11", "198.18.0.12"]
    assert model["kubernetes"]["request_timeout"] == 10  # defaults filled in


def test_view_for_unknown_node_is_clear(pillar):
    with pytest.raises(edge_ha.CommandExecutionError, match="'edge9' is not a node of edge_ha:nodes"):
        edge_ha.view_for_node(edge_ha.normalize(pillar), "edge9")


def test_salt_managed_virtual_servers_not_rendered(pillar):
    pillar["virtual_servers"]["http"]["managed_by"] = "salt"
    view = edge_ha.view_for_node(edge_ha.normalize(pillar), "edge1")
    assert [vs["name"] for vs in view["virtual_servers"]] == ["https"]
