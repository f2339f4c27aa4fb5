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


# ---------------------------------------------------------------- issue #12: bad pillars tried as an attacker would

VI_OTHER = ("vrrp_instances", "VI_OTHER")
HTTP = ("virtual_servers", "http")


def _other(**settings):
    return dict({"virtual_router_id": 52, "virtual_ipaddress": ["198.18.0.101/24"]}, **settings)


# (id, [(path, value), ...], expected error path, expected text in the message)
HOSTILE_CASES = [
    # shapes that used to crash validation with a traceback
    ("port-list", [(HTTP + ("port",), [80])], "edge_ha:virtual_servers:http:port", "must be an integer from 1 to 65535"),
    ("protocol-list", [(HTTP + ("protocol",), ["TCP"])], "edge_ha:virtual_servers:http:protocol", "is not allowed; one of"),
    ("sync-instance-list", [(("global_defs",), {"lvs_sync_daemon": {"instance": ["VI_INGRESS"]}})],
     "edge_ha:global_defs:lvs_sync_daemon:instance", "is not a vrrp_instance"),
    ("node-name-int", [(("nodes", 3), {"address": "198.18.0.13", "interface": "eth0"})], "edge_ha:nodes:3", "name must be"),
    ("track-script-dicts", [(VI + ("track_script",), [{"chk_ingress": None}])],
     "edge_ha:vrrp_instances:VI_INGRESS:track_script:0", "is not defined"),
    ("instance-nodes-dicts", [(VI + ("nodes",), [{"edge1": None}])], "edge_ha:vrrp_instances:VI_INGRESS:nodes:0", "is not defined"),
    ("instance-nodes-string", [(VI + ("nodes",), "edge1"), (VI + ("priority",), 100)],
     "edge_ha:vrrp_instances:VI_INGRESS:nodes", "must be a list of node names"),
    ("instance-nodes-empty", [(VI + ("nodes",), [])], "edge_ha:vrrp_instances:VI_INGRESS:nodes", "must not be empty"),
    ("instance-nodes-twice", [(VI + ("nodes",), ["edge1", "edge1"])], "edge_ha:vrrp_instances:VI_INGRESS:nodes:1", "listed twice"),
    ("instances-empty", [(("vrrp_instances",), {})], "edge_ha:vrrp_instances", "non-empty mapping"),
    ("name-trailing-newline", [(("vrrp_instances", "VI_2\n"), _other())], "edge_ha:vrrp_instances:'VI_2\\n'", "name must be"),
    # injection through strings that reach keepalived.conf
    ("script-user-space", [(("global_defs",), {"script_user": "root wheel"})], "edge_ha:global_defs:script_user", "one word"),
    ("track-file-path-ff", [(("vrrp_track_files",), {"f": {"file": "/run/x\fvrrp_instance X {"}})],
     "edge_ha:vrrp_track_files:f:file", "U+000C"),
    ("interface-u2028", [(("nodes", "edge1", "interface"), "eth0\u2028}")], "edge_ha:nodes:edge1:interface", "U+2028"),
    ("check-path-x85", [(HTTP + ("health_check",), {"type": "HTTP_GET", "path": "/h\x85}"})],
     "edge_ha:virtual_servers:http:health_check:path", "U+0085"),
    ("script-u2029", [(("vrrp_scripts", "chk_ingress", "script"), "/bin/true\u2029}")],
     "edge_ha:vrrp_scripts:chk_ingress:script", "U+2029"),
    ("script-too-long", [(("vrrp_scripts", "chk_ingress", "script"), "/bin/true " + "a" * 600)],
     "edge_ha:vrrp_scripts:chk_ingress:script", "at most 512"),
    ("script-relative", [(("vrrp_scripts", "chk_ingress", "script"), "curl -f http://127.0.0.1/")],
     "edge_ha:vrrp_scripts:chk_ingress:script", "absolute path of the command"),
    ("unicast-single-node", [(VI + ("nodes",), ["edge1"])], "edge_ha:vrrp_instances:VI_INGRESS:unicast", "at least two nodes"),
    ("preempt-delay-with-nopreempt", [(VI + ("nopreempt",), True), (VI + ("preempt_delay",), 5)],
     "edge_ha:vrrp_instances:VI_INGRESS:preempt_delay", "does not go with nopreempt"),
    ("preempt-delay-master", [(VI + ("state",), "MASTER"), (VI + ("preempt_delay",), 5)],
     "edge_ha:vrrp_instances:VI_INGRESS:preempt_delay", "needs state BACKUP"),
    ("real-servers-all-weight-0", [(HTTP + ("real_servers",), [{"address": "198.18.0.21", "weight": 0}])],
     "edge_ha:virtual_servers:http:real_servers", "every real server has weight 0"),
    ("real-server-port-dr", [(HTTP + ("real_servers",), [{"address": "198.18.0.21", "port": 8080}])],
     "edge_ha:virtual_servers:http:real_servers:0:port", "must be the virtual server's port 80 with lb_kind DR"),
    ("script-backslash", [(("vrrp_scripts", "chk_ingress", "script"), "/bin/true \\")],
     "edge_ha:vrrp_scripts:chk_ingress:script", "without double quotes or backslashes"),
    ("ah-master", [(VI + ("authentication", "auth_type"), "AH"), (VI + ("state",), "MASTER")],
     "edge_ha:vrrp_instances:VI_INGRESS:authentication:auth_type", "AH does not go with state MASTER"),
    ("script-single-quote", [(("vrrp_scripts", "chk_ingress", "script"), "/bin/true '0")],
     "edge_ha:vrrp_scripts:chk_ingress:script", "unbalanced single quote"),
    ("script-quote", [(("vrrp_scripts", "chk_ingress", "script"), '/bin/echo "x"')],
     "edge_ha:vrrp_scripts:chk_ingress:script", "without double quotes"),
    ("router-id-brace", [(("global_defs",), {"router_id": "x}"})], "edge_ha:global_defs:router_id", "braces"),
    ("vip-scope-id", [(VI + ("virtual_ipaddress",), ["fe80::1%eth0\n}/64"])],
     "edge_ha:vrrp_instances:VI_INGRESS:virtual_ipaddress:0", "has a %scope"),
    # addresses that are not unicast host addresses
    ("vip-unspecified", [(VI + ("virtual_ipaddress",), ["0.0.0.0/24"])], "edge_ha:vrrp_instances:VI_INGRESS:virtual_ipaddress:0", "unspecified"),
    ("vip-slash-0", [(VI + ("virtual_ipaddress",), ["198.18.0.100/0"])], "edge_ha:vrrp_instances:VI_INGRESS:virtual_ipaddress:0", "/0 prefix"),
    ("vip-loopback", [(VI + ("virtual_ipaddress",), ["127.0.0.1/8"])], "edge_ha:vrrp_instances:VI_INGRESS:virtual_ipaddress:0", "loopback"),
    ("vip-vrrp-group", [(VI + ("virtual_ipaddress",), ["224.0.0.18/32"])], "edge_ha:vrrp_instances:VI_INGRESS:virtual_ipaddress:0", "multicast"),
    ("vip-broadcast", [(VI + ("virtual_ipaddress",), ["198.18.0.255/24"])],
     "edge_ha:vrrp_instances:VI_INGRESS:virtual_ipaddress:0", "broadcast address of 198.18.0.0/24"),
    ("vip-network", [(VI + ("virtual_ipaddress",), ["198.18.0.0/24"])],
     "edge_ha:vrrp_instances:VI_INGRESS:virtual_ipaddress:0", "network address of 198.18.0.0/24"),
    ("vip-link-local-v4", [(VI + ("virtual_ipaddress",), ["169.254.1.1/16"])],
     "edge_ha:vrrp_instances:VI_INGRESS:virtual_ipaddress:0", "link-local"),
    ("vip-v4-mapped-duplicate", [(VI_OTHER, _other(virtual_ipaddress=["::ffff:198.18.0.100/120"], vrrp_version=3))],
     "edge_ha:vrrp_instances:VI_OTHER:virtual_ipaddress:0", "IPv4-mapped"),
    ("vip-duplicate", [(VI_OTHER, _other(virtual_ipaddress=["198.18.0.100/24"]))],
     "edge_ha:vrrp_instances:VI_OTHER:virtual_ipaddress:0", "already a VIP of instance VI_INGRESS"),
    ("node-address-unspecified", [(("nodes", "edge1", "address"), "0.0.0.0")], "edge_ha:nodes:edge1:address", "unspecified"),
    ("node-address-multicast", [(("nodes", "edge1", "address"), "239.1.1.1")], "edge_ha:nodes:edge1:address", "multicast"),
    ("node-address6-link-local", [(("nodes", "edge1", "address6"), "fe80::1")], "edge_ha:nodes:edge1:address6", "link-local"),
    ("node-address-v6-in-v4-unicast", [(("nodes", "edge1", "address"), "2001:db8::11")],
     "edge_ha:nodes:edge1:address", "is IPv6 but instance VI_INGRESS is IPv4 with unicast: true"),
    ("real-server-multicast", [(HTTP + ("real_servers",), [{"address": "224.0.0.1"}])],
     "edge_ha:virtual_servers:http:real_servers:0:address", "multicast"),
    ("real-server-twice", [(HTTP + ("real_servers",), [{"address": "198.18.0.21"}, {"address": "198.18.0.21", "port": 80}])],
     "edge_ha:virtual_servers:http:real_servers:1", "already real server 0"),
    ("auto-real-servers-v6-without-address6", [
        (VI_OTHER, _other(virtual_ipaddress=["2001:db8::100/64"], vrrp_version=3)),
        (("virtual_servers", "web6"), {"address": "2001:db8::100", "port": 443})],
     "edge_ha:virtual_servers:web6:real_servers", "auto needs every node's address6"),
    # types and ranges
    ("auth-pass-bool", [(VI + ("authentication", "auth_pass"), True)],
     "edge_ha:vrrp_instances:VI_INGRESS:authentication:auth_pass", "must be a string (quote it in YAML), got a bool"),
    ("auth-pass-int", [(VI + ("authentication", "auth_pass"), 1234)],
     "edge_ha:vrrp_instances:VI_INGRESS:authentication:auth_pass", "must be a string (quote it in YAML), got a int"),
    ("auth-pass-space", [(VI + ("authentication", "auth_pass"), "ab cd")],
     "edge_ha:vrrp_instances:VI_INGRESS:authentication:auth_pass", "printable ASCII without spaces"),
    ("auth-pass-nul", [(VI + ("authentication", "auth_pass"), "ab\x00cd")],
     "edge_ha:vrrp_instances:VI_INGRESS:authentication:auth_pass", "printable ASCII without spaces"),
    ("auth-pass-backslash", [(VI + ("authentication", "auth_pass"), "ab\\")],
     "edge_ha:vrrp_instances:VI_INGRESS:authentication:auth_pass", "or backslashes (value not shown)"),
    ("auth-pass-empty", [(VI + ("authentication", "auth_pass"), "")],
     "edge_ha:vrrp_instances:VI_INGRESS:authentication:auth_pass", "must not be empty"),
    ("vrrp-version-float", [(VI + ("vrrp_version",), 3.0)], "edge_ha:vrrp_instances:VI_INGRESS:vrrp_version", "3.0 is not allowed; one of 2|3"),
    ("vrrp-version-bool", [(VI + ("vrrp_version",), True)], "edge_ha:vrrp_instances:VI_INGRESS:vrrp_version", "is not allowed"),
    ("vrid-bool", [(VI + ("virtual_router_id",), True)], "edge_ha:vrrp_instances:VI_INGRESS:virtual_router_id", "must be an integer"),
    ("vrid-float", [(VI + ("virtual_router_id",), 51.0)], "edge_ha:vrrp_instances:VI_INGRESS:virtual_router_id", "must be an integer"),
    ("advert-int-fraction-v2", [(VI + ("advert_int",), 1.5)],
     "edge_ha:vrrp_instances:VI_INGRESS:advert_int", "is not a whole number of seconds, which needs vrrp_version: 3"),
    ("advert-int-nan", [(VI + ("advert_int",), float("nan"))], "edge_ha:vrrp_instances:VI_INGRESS:advert_int", "must be a number"),
    ("advert-int-v3-max", [(VI_OTHER, _other(vrrp_version=3, advert_int=41))],
     "edge_ha:vrrp_instances:VI_OTHER:advert_int", "above 40.95 s"),
    ("interface-too-long", [(("nodes", "edge1", "interface"), "eth0-much-too-long")], "edge_ha:nodes:edge1:interface", "1-15 bytes"),
    ("interface-space", [(("nodes", "edge1", "interface"), "eth 0")], "edge_ha:nodes:edge1:interface", "no whitespace"),
    ("interface-dotdot", [(("nodes", "edge1", "interface"), "..")], "edge_ha:nodes:edge1:interface", "not a valid interface name"),
    ("interface-slash", [(VI + ("interface",), "a/b")], "edge_ha:vrrp_instances:VI_INGRESS:interface", "no whitespace, '/'"),
    ("track-interface-string", [(VI + ("track_interface",), "eth0")], "edge_ha:vrrp_instances:VI_INGRESS:track_interface", "must be a list"),
    ("vrid-interface-trailing-space", [(VI_OTHER, _other(virtual_router_id=51, interface="eth0 "))],
     "edge_ha:vrrp_instances:VI_OTHER:interface", "no whitespace"),
    ("vrid-same-interface-explicit", [(VI_OTHER, _other(virtual_router_id=51, interface="eth0"))],
     "edge_ha:vrrp_instances:VI_OTHER:virtual_router_id", "VRIDs must be unique per interface"),
    # Kubernetes names
    ("kube-namespace", [(("kubernetes", "service", "namespace"), "Ingress_NGINX")],
     "edge_ha:kubernetes:service:namespace", "not a valid Kubernetes namespace"),
    ("kube-service-name", [(("kubernetes", "service", "name"), "1-controller")],
     "edge_ha:kubernetes:service:name", "not a valid Kubernetes Service name"),
    ("kube-label-selector", [(("kubernetes", "ingress_pods", "label_selector"), "app=(x")],
     "edge_ha:kubernetes:ingress_pods:label_selector", "not a valid label selector"),
    ("kube-label-selector-newline", [(("kubernetes", "ingress_pods", "label_selector"), "app=x\n")],
     "edge_ha:kubernetes:ingress_pods:label_selector", "U+000A"),
    ("kubernetes-node-name", [(("nodes", "edge1", "kubernetes_node"), "Edge_1")],
     "edge_ha:nodes:edge1:kubernetes_node", "not a valid Kubernetes node name"),
    ("health-url-newline", [(("ingress",), {"health_url": "http://127.0.0.1/\nx"})], "edge_ha:ingress:health_url", "U+000A"),
]


@pytest.mark.parametrize("changes,path,text", [c[1:] for c in HOSTILE_CASES], ids=[c[0] for c in HOSTILE_CASES])
def test_hostile_pillar_names_path(pillar, changes, path, text):
    for keypath, value in changes:
        _set(pillar, keypath, value)
    errors = edge_ha.validate_model(pillar)
    matching = [e for e in errors if e.startswith(path + ": ")]
    assert matching, f"no error for {path}; got {errors}"
    assert any(text in e for e in matching), matching
    assert not any(edge_ha.INTERNAL_ERROR in e for e in errors), errors
    with pytest.raises(edge_ha.SaltInvocationError):
        edge_ha.normalize(pillar)


# every character str.splitlines() splits on, the C0/C1 controls, NUL, DEL, the Unicode separators
LINE_BREAKS = sorted({c for c in map(chr, range(0x3000)) if len(f"a{c}b".splitlines()) > 1}
                     | {chr(c) for c in range(0x20)} | {chr(c) for c in range(0x7F, 0xA0)} | {"\u2028", "\u2029"})
STRING_PATHS = [
    (("global_defs",), "script_user", "edge_ha:global_defs:script_user"),
    (("vrrp_scripts", "chk_ingress"), "script", "edge_ha:vrrp_scripts:chk_ingress:script"),
    (("nodes", "edge2"), "interface", "edge_ha:nodes:edge2:interface"),
    (HTTP + ("health_check",), "path", "edge_ha:virtual_servers:http:health_check:path"),
]


@pytest.mark.parametrize("char", LINE_BREAKS, ids=lambda c: f"U+{ord(c):04X}")
@pytest.mark.parametrize("where", STRING_PATHS, ids=lambda w: w[1])
def test_no_control_character_reaches_the_config(pillar, char, where):
    parent, key, path = where
    target = pillar
    for part in parent:
        target = target.setdefault(part, {})
    if key == "path":
        target["type"] = "HTTP_GET"
    target[key] = f"/x{char}y"
    errors = edge_ha.validate_model(pillar)
    assert any(e.startswith(path + ": must not contain a control, line-break or other non-printing character") for e in errors), errors


def test_auth_pass_is_never_echoed(pillar):
    for secret in ("s3cret\x00x", "longer-secret", "with space"):
        pillar["vrrp_instances"]["VI_INGRESS"]["authentication"]["auth_pass"] = secret
        errors = edge_ha.validate_model(pillar)
        assert errors and not any(secret in e or repr(secret) in e for e in errors), errors


def test_whole_float_advert_int_renders_as_int(pillar):
    pillar["vrrp_instances"]["VI_INGRESS"]["advert_int"] = 2.0
    assert edge_ha.normalize(pillar)["vrrp_instances"]["VI_INGRESS"]["advert_int"] == 2


def test_auto_real_servers_of_ipv6_server_use_address6(pillar):
    pillar["nodes"]["edge1"]["address6"] = "2001:db8::11"
    pillar["nodes"]["edge2"]["address6"] = "2001:db8::12"
    pillar["vrrp_instances"]["VI6"] = {"virtual_router_id": 52, "vrrp_version": 3, "virtual_ipaddress": ["2001:db8::100/64"]}
    pillar["virtual_servers"]["web6"] = {"address": "2001:db8::100", "port": 443}
    model = edge_ha.normalize(pillar)
    assert [(r["address"], r["node"]) for r in model["virtual_servers"]["web6"]["real_servers"]] == [
        ("2001:db8::11", "edge1"), ("2001:db8::12", "edge2")]


def test_same_vrid_on_one_interface_for_ipv4_and_ipv6_is_fine(pillar):
    """VRRP over IPv4 and over IPv6 are separate protocols: a VRID is unique per interface and family."""
    pillar["vrrp_instances"]["VI6"] = {"virtual_router_id": 51, "vrrp_version": 3, "virtual_ipaddress": ["2001:db8::100/64"]}
    assert edge_ha.validate_model(pillar) == []


def test_track_interface_may_not_be_the_own_interface(pillar):
    """keepalived -t rejects it ("Ignoring track_interface eth0 since own interface"); found by the property test."""
    pillar["vrrp_instances"]["VI_INGRESS"]["track_interface"] = ["eth1", "eth0"]
    assert edge_ha.validate_model(pillar) == [
        "edge_ha:vrrp_instances:VI_INGRESS:track_interface:1: eth0 is the instance's own interface on node edge1; "
        "keepalived tracks that one anyway and rejects it here"]


@pytest.mark.parametrize("key,value,text", [
    ("vrrp_gna_interval", 0, "from 1 to 4294"), ("vrrp_garp_interval", 4295, "from 1 to 4294"),
    ("vrrp_garp_master_delay", 86400, "from 0 to 4294"), ("vrrp_garp_master_repeat", 0, "from 1 to 86400"),
])
def test_global_defs_ranges_are_keepalived_s(pillar, key, value, text):
    """keepalived -t rejects these values ("number '0' outside range [0.000001, 4294.967295]"); found by the property test."""
    pillar["global_defs"] = {key: value}
    assert edge_ha.validate_model(pillar) == [f"edge_ha:global_defs:{key}: must be {text.replace('from', 'from', 1)}, got {value}"]


def test_a_long_hostile_name_is_quoted_once_in_the_path():
    """Found by the 5000-example property run: a path longer than 100 characters was quoted a second time."""
    name = "\x1f\x08" + "\U00012544" * 60
    errors = edge_ha.validate_model({"nodes": {name: {}}, "vrrp_instances": {name: {}}})
    assert errors and all(e.startswith("edge_ha:") for e in errors), errors
    assert f"edge_ha:vrrp_instances:{edge_ha.describe(name)}:virtual_ipaddress: is required" in errors
