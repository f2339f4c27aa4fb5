"""
Property-based tests of the pillar model, end to end (issue #12).

Generated pillars, valid ones and mutated ones (any value replaced by junk of
any type, keys deleted or added), must either

* give errors that each start with ``edge_ha:`` and name a path, on one line,
  never a traceback (and never the model's internal-error safety net), or
* render, for every node, a keepalived.conf that ``keepalived -t`` accepts and
  that has exactly the blocks the pillar describes.

The default run is modest; ``EDGE_HA_HYPOTHESIS_EXAMPLES=5000`` runs more.
Configs that fail ``keepalived -t`` only because of this host (an interface,
user or script the pillar names does not exist here) are not checked with
``keepalived -t``: the model cannot know a node's interfaces; that is what
``keepalived -t`` on the node is for.
"""

import ipaddress
import os
import pwd
import re
import shutil
import socket

import pytest
from hypothesis import HealthCheck
from hypothesis import event
from hypothesis import given
from hypothesis import note
from hypothesis import settings
from hypothesis import strategies as st

from tests.support.modload import load

from edge_ha_core import model as edge_ha

keepalived = load("_modules/keepalived.py")

EXAMPLES = int(os.environ.get("EDGE_HA_HYPOTHESIS_EXAMPLES", "300"))
PATHS = {"state_dir": "/run/edge-ha", "notify_script": "/usr/local/sbin/edge-ha-notify"}
HAS_KEEPALIVED = shutil.which("keepalived") is not None
HOST_INTERFACES = {name for _, name in socket.if_nameindex()}
IFACE = "eth0" if "eth0" in HOST_INTERFACES else sorted(HOST_INTERFACES - {"lo"} or {"eth0"})[0]

OTHER_INTERFACES = sorted(HOST_INTERFACES - {IFACE, "lo"})
names = st.from_regex(r"[A-Za-z0-9_.-]{1,12}", fullmatch=True)
printable_ascii = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
any_char = st.characters(blacklist_categories=("Cs",))
# mostly printable ASCII, sometimes anything (control characters, U+2028, NUL, ...)
free_text = st.one_of(
    st.text(printable_ascii, max_size=30),
    st.text(printable_ascii, max_size=30),
    st.text(any_char, max_size=12),
)
word = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters='{}"#!\\'), min_size=1, max_size=12)

INTERESTING = [
    "0.0.0.0", "0.0.0.0/0", "224.0.0.18/32", "127.0.0.1/8", "198.18.1.255/24", "198.18.1.0/24", "::ffff:198.18.1.5/120",
    "::ffff:198.18.0.11", "fe80::1", "fe80::1%eth0/64", "169.254.1.1/16", "255.255.255.255", "198.18.1.5/24",
    "2001:db8:1::5/64", "eth0 ", " eth0", "eth0\u2028}", "eth0\x0b", "lo", ".", "..", "a/b", "x" * 16, "VI_0\n",
    "edge1", "auto", "TCP", "UDP", "HTTP_GET", "MASTER", "BACKUP", "3", "3.0", "", " ", "#", "!", "}", "{", '"',
    "/bin/true\x85vrrp_instance X {", "root wheel", "\x00", "s3cret\x00x", "1e9", "ingress-nginx", "app=x,y in (a,b)",
]
leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-300, 70000), st.integers(), st.floats(allow_nan=True),
    st.sampled_from([0.5, 1.0, 3.0, 40.96, 0.001, float("inf")]), free_text, st.sampled_from(INTERESTING),
)
junk = st.recursive(
    leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.one_of(free_text, st.integers(), st.sampled_from(INTERESTING)), inner, max_size=3),
    max_leaves=6,
)


@st.composite
def health_checks(draw, http_ok=True):
    kind = draw(st.sampled_from(["TCP_CHECK", "HTTP_GET", "SSL_GET"] if http_ok else ["TCP_CHECK"]))
    check = {"type": kind}
    if kind != "TCP_CHECK":
        check["path"] = "/" + draw(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E,
                                                          blacklist_characters='{}"#!\\'), max_size=20))
        if draw(st.booleans()):
            check["status_code"] = draw(st.integers(100, 599))
    for key, low, high in (("connect_timeout", 1, 3600), ("connect_port", 1, 65535), ("retry", 0, 100),
                           ("delay_before_retry", 0, 3600)):
        if draw(st.booleans()):
            check[key] = draw(st.integers(low, high))
    return check


@st.composite
def pillars(draw):
    """A pillar built to be valid (mutations make it invalid)."""
    node_names = draw(st.lists(names, min_size=1, max_size=4, unique=True))
    nodes = {}
    for i, name in enumerate(node_names):
        node = {"address": f"198.18.0.{11 + i}", "interface": IFACE}
        if draw(st.booleans()):
            node["address6"] = f"2001:db8::{11 + i:x}"
        if draw(st.booleans()):
            node["priority"] = draw(st.integers(1, 254))
        nodes[name] = node
    data = {"nodes": nodes}
    scripts = {}
    for name in draw(st.lists(names, max_size=3, unique=True)):
        command = draw(st.sampled_from(["/bin/true", "/usr/bin/test -e /run"])) + " " + draw(free_text).replace('"', "")
        script = {"script": command.strip()}
        for key, low, high in (("interval", 1, 3600), ("timeout", 1, 3600), ("rise", 1, 1000), ("fall", 1, 1000),
                               ("weight", -253, 253)):
            if draw(st.booleans()):
                script[key] = draw(st.integers(low, high))
        if draw(st.booleans()):
            script["user"] = "root"
        if draw(st.booleans()):
            script["init_fail"] = draw(st.booleans())
        scripts[name] = script
    if scripts or draw(st.booleans()):
        data["vrrp_scripts"] = scripts
    files = {}
    for name in draw(st.lists(names.filter(lambda n: not n.startswith("edge_ha_")), max_size=2, unique=True)):
        entry = {"file": "/run/edge-ha-hypothesis/" + name}
        if draw(st.booleans()):
            entry["weight"] = draw(st.integers(-254, 254))
        if draw(st.booleans()):
            entry["init_file"] = draw(st.booleans())
        files[name] = entry
    if files:
        data["vrrp_track_files"] = files
    instances = {}
    vips = []
    used_vrids = set()
    for idx, name in enumerate(draw(st.lists(names, min_size=1, max_size=3, unique=True))):
        family = draw(st.sampled_from([4, 4, 6]))
        version = 3 if family == 6 else draw(st.sampled_from([2, 3]))
        vrid = draw(st.sampled_from([v for v in range(1, 256) if (v, family) not in used_vrids]))
        used_vrids.add((vrid, family))
        count = draw(st.integers(1, 3))
        if family == 4:
            addrs = [f"198.18.{1 + idx}.{k}/{draw(st.sampled_from([24, 32]))}" for k in range(1, count + 1)]
        else:
            addrs = [f"2001:db8:{1 + idx}::{k:x}/{draw(st.sampled_from([64, 128]))}" for k in range(1, count + 1)]
        inst = {"virtual_router_id": vrid, "virtual_ipaddress": addrs}
        if draw(st.booleans()):
            inst["vrrp_version"] = version
        else:
            version = 2 if family == 4 else version
            if family == 6:
                inst["vrrp_version"] = 3
        if draw(st.booleans()):
            inst["advert_int"] = draw(st.integers(1, 40)) if version == 2 else round(draw(st.integers(1, 4095)) / 100, 2)
        if version == 2 and draw(st.booleans()):
            inst["authentication"] = {"auth_type": draw(st.sampled_from(["PASS", "AH"])),
                                      "auth_pass": draw(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E,
                                                                              blacklist_characters='{}"#!\\'),
                                                                min_size=1, max_size=8))}
        members = sorted(nodes)
        if draw(st.booleans()):
            members = draw(st.lists(st.sampled_from(sorted(nodes)), min_size=1, unique=True))
            inst["nodes"] = members
        prio = draw(st.sampled_from(["none", "scalar", "map"]))
        if prio == "scalar":
            inst["priority"] = draw(st.integers(1, 254))
        elif prio == "map":
            inst["priority"] = {n: draw(st.integers(1, 254)) for n in members if draw(st.booleans())}
        state = draw(st.sampled_from([None, "MASTER", "BACKUP"]))
        if state:
            inst["state"] = state
        if state != "MASTER" and draw(st.booleans()):
            inst["nopreempt"] = draw(st.booleans())
        if not inst.get("nopreempt") and state != "MASTER" and draw(st.booleans()):
            inst["preempt_delay"] = draw(st.integers(0, 1000))
        if draw(st.booleans()):
            inst["garp_master_delay"] = draw(st.integers(0, 255))
        if len(members) >= 2 and (family == 4 or all("address6" in nodes[n] for n in members)) and draw(st.booleans()):
            inst["unicast"] = True
        if scripts and draw(st.booleans()):
            inst["track_script"] = draw(st.lists(st.sampled_from(sorted(scripts)), unique=True))
        if files and draw(st.booleans()):
            inst["track_file"] = draw(st.lists(st.sampled_from(sorted(files)), unique=True))
        if OTHER_INTERFACES and draw(st.booleans()):
            inst["track_interface"] = draw(st.lists(st.sampled_from(OTHER_INTERFACES), min_size=1, unique=True))
        if draw(st.booleans()):
            inst["interface"] = IFACE
        instances[name] = inst
        vips += [a.split("/")[0] for a in addrs]
    data["vrrp_instances"] = instances
    if draw(st.booleans()):
        gd = {}
        if draw(st.booleans()):
            gd["router_id"] = draw(word)
        if draw(st.booleans()):
            gd["enable_script_security"] = True
        if draw(st.booleans()):
            gd["script_user"] = "root"
        for key, (low, high) in edge_ha.GLOBAL_DEFS_RANGES.items():
            if draw(st.booleans()):
                gd[key] = draw(st.integers(low, high))
        if draw(st.booleans()):
            gd["lvs_sync_daemon"] = {"instance": draw(st.sampled_from(sorted(instances)))}
            if draw(st.booleans()):
                gd["lvs_sync_daemon"]["id"] = draw(st.integers(0, 255))
        data["global_defs"] = gd
    servers = {}
    seen = set()
    for name in draw(st.lists(names, max_size=3, unique=True)):
        address = draw(st.sampled_from(vips))
        port = draw(st.integers(1, 65535))
        proto = draw(st.sampled_from(["TCP", "UDP", "SCTP"]))
        if (address, port, proto) in seen:
            continue
        seen.add((address, port, proto))
        v6 = ":" in address
        vs = {"address": address, "port": port}
        if draw(st.booleans()):
            vs["protocol"] = proto
        else:
            seen.add((address, port, "TCP"))
        for key, values in (("lb_algo", edge_ha.LB_ALGOS), ("lb_kind", edge_ha.LB_KINDS), ("managed_by", edge_ha.MANAGED_BY)):
            if draw(st.booleans()):
                vs[key] = draw(st.sampled_from(values))
        if draw(st.booleans()):
            vs["persistence_timeout"] = draw(st.integers(0, 2678400))
        if draw(st.booleans()):
            vs["delay_loop"] = draw(st.integers(1, 3600))
        if draw(st.booleans()):
            vs["health_check"] = draw(health_checks())
        if draw(st.booleans()) and (not v6 or all("address6" in n for n in nodes.values())):
            vs["real_servers"] = "auto" if draw(st.booleans()) else vs.pop("real_servers", "auto")
        elif draw(st.booleans()) or v6:
            reals = []
            for k in draw(st.lists(st.integers(1, 250), min_size=1, max_size=3, unique=True)):
                real = {"address": f"2001:db8:ff::{k:x}" if v6 else f"198.18.200.{k}"}
                if draw(st.booleans()):
                    real["port"] = draw(st.integers(1, 65535))
                if draw(st.booleans()):
                    real["weight"] = draw(st.integers(0, 65535))
                if draw(st.booleans()):
                    real["health_check"] = draw(health_checks())
                reals.append(real)
            if len({(r["address"], r.get("port", port)) for r in reals}) == len(reals):
                vs["real_servers"] = reals
        servers[name] = vs
    if servers:
        data["virtual_servers"] = servers
    if draw(st.booleans()):
        data["kubernetes"] = {
            "service": {"namespace": "ingress-nginx", "name": "ingress-nginx-controller"},
            "ingress_pods": {"namespace": "ingress-nginx", "label_selector": draw(st.sampled_from(
                ["app.kubernetes.io/component=controller", "a=b,c!=d", "tier in (edge, ingress),!canary", "x"]))},
            "external_ips": draw(st.sampled_from(edge_ha.EXTERNAL_IPS_POLICIES)),
        }
    return data


def _containers(value, out):
    if isinstance(value, dict):
        out.append(value)
        for child in value.values():
            _containers(child, out)
    elif isinstance(value, list):
        out.append(value)
        for child in value:
            _containers(child, out)
    return out


def mutate(data, pillar):
    """Replace, delete or add one value anywhere in the pillar."""
    target = data.draw(st.sampled_from(_containers(pillar, [])))
    if isinstance(target, dict):
        keys = list(target)
        op = data.draw(st.sampled_from(["set", "delete", "add"] if keys else ["add"]))
        if op == "set":
            target[data.draw(st.sampled_from(keys))] = data.draw(junk)
        elif op == "delete":
            del target[data.draw(st.sampled_from(keys))]
        else:
            target[data.draw(st.one_of(st.sampled_from(list(edge_ha.INSTANCE_KEYS) + list(edge_ha.VS_KEYS)), free_text, st.integers()))] = data.draw(junk)
    elif target:
        target[data.draw(st.integers(0, len(target) - 1))] = data.draw(junk)
    else:
        target.append(data.draw(junk))


def _host_dependent(view):
    """Why keepalived -t on this host would reject the config for reasons of this host, not of the pillar."""
    ifaces = {i["interface"] for i in view["vrrp_instances"]} | {t for i in view["vrrp_instances"] for t in i["track_interface"]}
    sync = view["global_defs"].get("lvs_sync_daemon")
    if sync and sync.get("interface"):
        ifaces.add(sync["interface"])
    if ifaces - HOST_INTERFACES:
        return "interface not on this host"
    users = {view["global_defs"].get("script_user", "root")} | {s["user"] for s in view["vrrp_scripts"].values() if "user" in s}
    for user in users:
        try:
            pwd.getpwnam(user)
        except KeyError:
            return "user not on this host"
    for script in view["vrrp_scripts"].values():
        command = script["script"].split()[0]
        if not os.access(command, os.X_OK):
            return "script not on this host"
    return None


TOP_BLOCKS = re.compile(r"(global_defs|vrrp_script \S+|vrrp_track_file \S+|vrrp_instance \S+|virtual_server \S+ \d+) \{\Z")


def _blocks(text):
    """The top-level block headers of a rendered config (and a check that braces balance)."""
    depth, heads = 0, []
    for line in text.splitlines():
        stripped = re.sub(r'"[^"]*"', '""', line.strip())  # braces inside a quoted script are its own
        if not stripped or stripped.startswith("#"):
            continue
        if depth == 0:
            assert TOP_BLOCKS.match(stripped), f"unexpected top-level line {line!r}"
            heads.append(line.strip()[:-2])
        depth += stripped.count("{") - stripped.count("}")
        assert depth >= 0, f"unbalanced braces at {line!r}"
    assert depth == 0, "unbalanced braces"
    return heads


def check_property(pillar):
    """The property of issue #12 for one pillar; returns 'invalid', 'valid' or the host-dependent reason."""
    errors = edge_ha.validate_model(pillar)
    assert isinstance(errors, list)
    for error in errors:
        assert isinstance(error, str) and error.startswith("edge_ha:"), error
        assert len(error.splitlines()) == 1 and error.isprintable(), repr(error)
        assert edge_ha.INTERNAL_ERROR not in error, error
    if errors:
        note(f"errors: {errors}")
        return "invalid"
    model = edge_ha.normalize(pillar)
    outcome = "valid"
    for node in model["nodes"]:
        view = edge_ha.view_for_node(model, node)
        text = keepalived.render_config(view, PATHS)
        # the config has exactly the blocks the pillar describes: nothing injected, nothing lost
        expected = ["global_defs"] + [f"vrrp_script {n}" for n in sorted(view["vrrp_scripts"])] \
            + ["vrrp_track_file edge_ha_out_of_service", "vrrp_track_file edge_ha_standby"] \
            + [f"vrrp_track_file {n}" for n in sorted(view["vrrp_track_files"])] \
            + [f"vrrp_instance {i['name']}" for i in view["vrrp_instances"]] \
            + [f"virtual_server {vs['address']} {vs['port']}" for vs in view["virtual_servers"]]
        assert sorted(_blocks(text)) == sorted(expected)
        for inst in view["vrrp_instances"]:
            if inst["authentication"]:
                assert f"        auth_pass {inst['authentication']['auth_pass']}\n" in text
        if not HAS_KEEPALIVED:
            continue
        reason = _host_dependent(view)
        if reason:
            outcome = reason
            continue
        ok, output = keepalived.check_config(text)
        assert ok, f"the model accepted a pillar that keepalived -t rejects for {node}:\n{output}\n--- config:\n{text}"
    return outcome


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(st.data())
def test_generated_pillars_validate_or_render_configs_keepalived_accepts(data):
    pillar = data.draw(pillars())
    mutations = data.draw(st.sampled_from([0, 0, 1, 1, 2, 3]))
    for _ in range(mutations):
        mutate(data, pillar)
    event(f"{mutations} mutation(s): {check_property(pillar)}")


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(junk)
def test_any_value_gives_path_errors(value):
    """Whatever the types, validation returns path errors (never raises)."""
    for pillar in (value, {"nodes": value, "vrrp_instances": value}, {"nodes": {"edge1": value}, "vrrp_instances": {"VI": value}}):
        errors = edge_ha.validate_model(pillar)
        assert errors and all(e.startswith("edge_ha:") and edge_ha.INTERNAL_ERROR not in e for e in errors), errors


@pytest.mark.parametrize("address", ["198.18.1.5/24", "2001:db8:1::5/64"])
def test_property_holds_for_a_known_good_pillar(address):
    pillar = {
        "nodes": {"edge1": {"address": "198.18.0.11", "address6": "2001:db8::11", "interface": IFACE},
                  "edge2": {"address": "198.18.0.12", "address6": "2001:db8::12", "interface": IFACE}},
        "vrrp_instances": {"VI": {"virtual_router_id": 9, "vrrp_version": 3, "unicast": True,
                                  "virtual_ipaddress": [address]}},
        "virtual_servers": {"web": {"address": str(ipaddress.ip_interface(address).ip), "port": 443}},
    }
    assert check_property(pillar) == "valid"
