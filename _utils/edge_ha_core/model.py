"""
The ``edge_ha`` pillar model: validation and normalisation.

Every other module of salt-edge-ha reads the pillar key ``edge_ha`` through this
module. The model mirrors keepalived.conf keywords (``vrrp_instances`` ->
``vrrp_instance`` blocks, ``virtual_servers`` -> ``virtual_server`` blocks,
``vrrp_scripts`` -> ``vrrp_script``, ``vrrp_track_files`` -> ``vrrp_track_file``)
so that a hand-written keepalived.conf maps over one to one. See
``docs/pillar.md`` for every key and ``pillar/edge_ha.sls.example`` for a full
example.

This is plain Python (``validate_model``, ``normalize``, ``view_for_node``),
imported by the execution modules, states, runner, beacons and tests alike
(``import edge_ha_core.model``). The Salt-facing functions are the thin
``edge_ha.validate``, ``edge_ha.model`` and ``edge_ha.node_view`` in
``_modules/edge_ha.py``.

Validation reports every error at once, each naming its pillar path
(``edge_ha:vrrp_instances:VI_1:virtual_router_id``) and, where it applies, the
allowed values. Nothing on a node is changed unless the model is valid.
"""

import hashlib
import ipaddress
import math
import numbers
import re

from salt.exceptions import CommandExecutionError
from salt.exceptions import SaltInvocationError

from edge_ha_core.text import KEEPALIVED_SPECIAL
from edge_ha_core.text import MAX_SCRIPT
from edge_ha_core.text import MAX_STRING
from edge_ha_core.text import bad_char
from edge_ha_core.text import describe
from edge_ha_core.text import dns1035_label_problem
from edge_ha_core.text import dns1123_label_problem
from edge_ha_core.text import dns1123_subdomain_problem
from edge_ha_core.text import interface_problem
from edge_ha_core.text import label_selector_problem


ROOT = "edge_ha"

LB_ALGOS = ("rr", "wrr", "lc", "wlc", "lblc", "sh", "mh", "dh", "fo", "ovf", "lblcr", "sed", "nq")
LB_KINDS = ("NAT", "DR", "TUN")
PROTOCOLS = ("TCP", "UDP", "SCTP")
AUTH_TYPES = ("PASS", "AH")
STATES = ("MASTER", "BACKUP")
MANAGED_BY = ("keepalived", "salt")
CHECK_TYPES = ("TCP_CHECK", "HTTP_GET", "SSL_GET")
EXTERNAL_IPS_POLICIES = ("vips_and_healthy_nodes", "vips_only")
DERIVED_PRIORITY_TOP = 150
DERIVED_PRIORITY_STEP = 10

DEFAULT_KUBERNETES = {
    "kubeconfig": None,
    "context": None,
    "service": {"namespace": "ingress-nginx", "name": "ingress-nginx-controller"},
    "ingress_pods": {
        "namespace": "ingress-nginx",
        "label_selector": "app.kubernetes.io/component=controller",
    },
    "external_ips": "vips_and_healthy_nodes",
    "request_timeout": 10,
    "conflict_retries": 5,
}



class _Errors:
    """Collects errors as ``path: message`` strings."""

    def __init__(self):
        self.items = []

    def add(self, path, message):
        self.items.append(f"{path}: {message}")


class _Path(str):
    """A pillar path already made safe by ``_path``."""


def _part(part):
    """One path element: as written when it is a plain printable key, else its repr (never a line break)."""
    if isinstance(part, _Path) or (isinstance(part, str) and part and len(part) <= 100 and not bad_char(part)):
        return part
    return describe(part)


def _path(*parts):
    return _Path(":".join(_part(p) for p in parts))


def _choices(values):
    return "one of " + "|".join(str(v) for v in values)


def _known(names):
    return ", ".join(sorted(str(n) for n in names)) or "none"


# \Z, not $: "$" also matches before a trailing newline
NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")


def _valid_name(name):
    return isinstance(name, str) and NAME_RE.match(name) is not None


def _check_names(errors, path, data):
    """Names that become keepalived identifiers or file names."""
    for name in data:
        if not _valid_name(name):
            errors.add(_path(path, name), "name must be 1-64 characters of A-Z a-z 0-9 _ . -")


def _check_keys(errors, path, data, allowed, required=()):
    """Unknown keys and missing required keys of one mapping."""
    if not isinstance(data, dict):
        errors.add(path, f"must be a mapping, got {type(data).__name__}")
        return False
    for key in data:
        if not isinstance(key, str) or key not in allowed:
            errors.add(
                _path(path, key),
                f"unknown key; allowed keys here: {', '.join(sorted(allowed))}",
            )
    for key in required:
        if key not in data:
            errors.add(_path(path, key), "is required")
    return True


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _check_int(errors, path, value, low, high):
    if not _is_int(value):
        errors.add(path, f"must be an integer from {low} to {high}, got {describe(value)}")
        return False
    if not low <= value <= high:
        errors.add(path, f"must be from {low} to {high}, got {value}")
        return False
    return True


def _check_bool(errors, path, value):
    if not isinstance(value, bool):
        errors.add(path, f"must be true or false, got {describe(value)}")
        return False
    return True


def _check_str(errors, path, value, max_len=MAX_STRING, spaces=False, special=True):
    """
    A non-empty string that can be written into keepalived.conf as it is: no
    control characters or line breaks of any kind, at most ``max_len``
    characters, no keepalived syntax characters (``special``), no whitespace
    unless ``spaces`` (a second word would be read as another argument).
    """
    if not isinstance(value, str) or not value:
        errors.add(path, f"must be a non-empty string, got {describe(value)}")
        return False
    bad = bad_char(value)
    if bad:
        errors.add(path, f"must not contain a {bad}")
        return False
    if len(value) > max_len:
        errors.add(path, f"is {len(value)} characters; at most {max_len}")
        return False
    if special and any(c in KEEPALIVED_SPECIAL for c in value):
        errors.add(path, "must not contain braces, quotes, '#', '!' or backslashes")
        return False
    if not spaces and " " in value:
        errors.add(path, f"must be one word without spaces, got {describe(value)}")
        return False
    if value != value.strip():
        errors.add(path, f"must not start or end with spaces, got {describe(value)}")
        return False
    return True


def _check_choice(errors, path, value, choices):
    """``value`` is one of ``choices`` with the same type (3.0 and true are not 3 and 1)."""
    if not any(type(value) is type(c) and value == c for c in choices):
        errors.add(path, f"{describe(value)} is not allowed; {_choices(choices)}")
        return False
    return True


def _check_problem(errors, path, problem):
    if problem:
        errors.add(path, problem)
        return False
    return True


def _parse_ip(errors, path, value, parse, example):
    if not isinstance(value, str):
        errors.add(path, f"must be a string {example}, got {describe(value)}")
        return None
    try:
        addr = parse(value)
    except ValueError:
        errors.add(path, f"{describe(value)} is not an {example}")
        return None
    if getattr(addr, "scope_id", None) or getattr(getattr(addr, "ip", None), "scope_id", None):
        errors.add(path, f"{describe(value)} has a %scope; give the address without it")
        return None
    return addr


def _host_problem(addr, link_local=False):
    """Why ``addr`` is not usable as a unicast host address (VIP, node, real server), or None."""
    if addr.version == 6 and addr.ipv4_mapped is not None:
        return f"{addr} is an IPv4-mapped IPv6 address; write {addr.ipv4_mapped} (IPv4) instead"
    if addr.is_unspecified:
        return f"{addr} is the unspecified address, not a host address"
    if addr.is_loopback:
        return f"{addr} is a loopback address, not reachable from other hosts"
    if addr.is_multicast:
        return f"{addr} is a multicast address (224.0.0.18 and ff02::12 are VRRP's own), not a unicast host address"
    if addr.version == 4 and (addr.is_reserved or addr == ipaddress.IPv4Address("255.255.255.255")):
        return f"{addr} is a reserved or broadcast IPv4 address"
    if addr.is_link_local and (addr.version == 4 or not link_local):
        return f"{addr} is a link-local address; use a routable address"
    return None


def _ip(errors, path, value, link_local=False):
    """A unicast host address without prefix length, or None after reporting."""
    addr = _parse_ip(errors, path, value, ipaddress.ip_address, "IPv4 or IPv6 address")
    if addr is not None and not _check_problem(errors, path, _host_problem(addr, link_local)):
        return None
    return addr


def _vip(errors, path, value):
    """A virtual_ipaddress entry ``ADDR[/PREFIX]`` -> ip_interface, or None after reporting."""
    vip = _parse_ip(
        errors, path, value, ipaddress.ip_interface,
        "address with optional /prefix (e.g. 198.18.0.100/24)",
    )
    if vip is None:
        return None
    if not _check_problem(errors, path, _host_problem(vip.ip, link_local=True)):
        return None
    net = vip.network
    if net.prefixlen == 0:
        errors.add(path, f"{value!r}: a /0 prefix would claim every address; give the VIP's subnet prefix")
        return None
    if vip.version == 4 and net.prefixlen <= 30 and vip.ip in (net.network_address, net.broadcast_address):
        which = "network" if vip.ip == net.network_address else "broadcast"
        errors.add(path, f"{vip.ip} is the {which} address of {net}, not a host address")
        return None
    if vip.version == 6 and net.prefixlen <= 126 and vip.ip == net.network_address:
        errors.add(path, f"{vip.ip} is the subnet-router anycast address of {net}, not a host address")
        return None
    return vip


NODE_KEYS = ("address", "address6", "interface", "priority", "kubernetes_node")
GLOBAL_DEFS_KEYS = (
    "router_id",
    "enable_script_security",
    "script_user",
    "vrrp_garp_master_delay",
    "vrrp_garp_master_repeat",
    "vrrp_garp_master_refresh",
    "vrrp_garp_interval",
    "vrrp_gna_interval",
    "lvs_sync_daemon",
)
# keepalived 2.2.7's own ranges (seconds, or a count for the repeat)
GLOBAL_DEFS_RANGES = {
    "vrrp_garp_master_delay": (0, 4294),
    "vrrp_garp_master_repeat": (1, 86400),
    "vrrp_garp_master_refresh": (0, 86400),
    "vrrp_garp_interval": (1, 4294),
    "vrrp_gna_interval": (1, 4294),
}
SYNC_DAEMON_KEYS = ("interface", "instance", "id")
SCRIPT_KEYS = ("script", "interval", "timeout", "weight", "rise", "fall", "user", "init_fail")
TRACK_FILE_KEYS = ("file", "weight", "init_file")
INSTANCE_KEYS = (
    "interface",
    "virtual_router_id",
    "priority",
    "state",
    "advert_int",
    "vrrp_version",
    "authentication",
    "virtual_ipaddress",
    "nopreempt",
    "preempt_delay",
    "unicast",
    "track_script",
    "track_file",
    "track_interface",
    "garp_master_delay",
    "nodes",
    # set by the edge_ha_lb ext_pillar on the instances it adds for LoadBalancer Services (issue #15):
    # the pool the instance's address comes from (its VIP must be in that pool, its VRID in its list)
    "address_pool",
)
VS_KEYS = (
    "address",
    "port",
    "protocol",
    "lb_algo",
    "lb_kind",
    "persistence_timeout",
    "delay_loop",
    "managed_by",
    "real_servers",
    "health_check",
)
RS_KEYS = ("address", "port", "weight", "health_check")
CHECK_KEYS = (
    "type",
    "connect_timeout",
    "connect_port",
    "retry",
    "delay_before_retry",
    "path",
    "status_code",
)
KUBE_KEYS = tuple(DEFAULT_KUBERNETES)
DEFAULT_INGRESS = {
    "health_url": "http://127.0.0.1:10254/healthz",
    "timeout": 1,
    "fall": 3,
    "rise": 2,
    "interval": 1,
}
INGRESS_KEYS = tuple(DEFAULT_INGRESS)
TOP_KEYS = (
    "ingress",
    "nodes",
    "global_defs",
    "vrrp_scripts",
    "vrrp_track_files",
    "vrrp_instances",
    "virtual_servers",
    "kubernetes",
    "address_pools",
    "load_balancer",
)


def _validate_nodes(errors, nodes):
    """
    Returns ``{name: {"address": ip|None, "address6": ip|None, "interface": str|None}}``
    for every validly named node (values None where invalid).
    """
    path = _path(ROOT, "nodes")
    found = {}
    if not isinstance(nodes, dict) or not nodes:
        errors.add(path, "must be a non-empty mapping of node name -> {address, interface}")
        return found
    _check_names(errors, path, nodes)
    for name, node in nodes.items():
        npath = _path(path, name)
        if not _check_keys(errors, npath, node, NODE_KEYS, required=("address", "interface")):
            continue
        info = found[name] = {"address": None, "address6": None, "interface": None}
        if "address" in node:
            info["address"] = _ip(errors, _path(npath, "address"), node["address"])
        if "address6" in node:
            addr6 = _ip(errors, _path(npath, "address6"), node["address6"])
            if addr6 is not None and addr6.version != 6:
                errors.add(_path(npath, "address6"), f"{addr6} is not an IPv6 address")
            elif addr6 is not None:
                info["address6"] = addr6
        if "interface" in node and _check_problem(
            errors, _path(npath, "interface"), interface_problem(node["interface"])
        ):
            info["interface"] = node["interface"]
        if "priority" in node:
            _check_int(errors, _path(npath, "priority"), node["priority"], 1, 254)
        if "kubernetes_node" in node:
            _check_problem(
                errors, _path(npath, "kubernetes_node"),
                dns1123_subdomain_problem(node["kubernetes_node"], "node name"),
            )
    seen = {}
    for name, info in found.items():
        for key in ("address", "address6"):
            addr = info[key]
            if addr is None:
                continue
            if addr in seen:
                errors.add(_path(path, name, key), f"{addr} is also the address of node {seen[addr]}")
            else:
                seen[addr] = name
    return {name: info for name, info in found.items() if _valid_name(name)}


def _validate_global_defs(errors, data, instance_names):
    path = _path(ROOT, "global_defs")
    if not _check_keys(errors, path, data, GLOBAL_DEFS_KEYS):
        return
    for key, value in data.items():
        kpath = _path(path, key)
        if key in ("router_id", "script_user"):
            _check_str(errors, kpath, value)
        elif key == "enable_script_security":
            _check_bool(errors, kpath, value)
        elif key == "lvs_sync_daemon":
            if _check_keys(errors, kpath, value, SYNC_DAEMON_KEYS, required=("instance",)):
                if "interface" in value:
                    _check_problem(errors, _path(kpath, "interface"), interface_problem(value["interface"]))
                if "id" in value:
                    _check_int(errors, _path(kpath, "id"), value["id"], 0, 255)
                if "instance" in value and (
                    not isinstance(value["instance"], str) or value["instance"] not in instance_names
                ):
                    errors.add(
                        _path(kpath, "instance"),
                        f"{describe(value['instance'])} is not a vrrp_instance; instances: {_known(instance_names)}",
                    )
        elif key in GLOBAL_DEFS_RANGES:
            _check_int(errors, kpath, value, *GLOBAL_DEFS_RANGES[key])


def _named_mapping(errors, path, data):
    """A mapping of names -> settings; False (after reporting) if it is not one."""
    if not isinstance(data, dict):
        errors.add(path, f"must be a mapping of name -> settings, got {type(data).__name__}")
        return False
    _check_names(errors, path, data)
    return True


def _validate_scripts(errors, scripts):
    path = _path(ROOT, "vrrp_scripts")
    if not _named_mapping(errors, path, scripts):
        return
    for name, script in scripts.items():
        spath = _path(path, name)
        if not _check_keys(errors, spath, script, SCRIPT_KEYS, required=("script",)):
            continue
        if "script" in script:
            value = script["script"]
            if _check_str(errors, _path(spath, "script"), value, max_len=MAX_SCRIPT, spaces=True, special=False):
                if '"' in value or "\\" in value:
                    errors.add(
                        _path(spath, "script"),
                        "must be a one-line command without double quotes or backslashes "
                        "(keepalived reads the script as a quoted string with escapes)",
                    )
                elif value.count("'") % 2:
                    errors.add(
                        _path(spath, "script"),
                        "has an unbalanced single quote (keepalived groups arguments in single quotes)",
                    )
                elif not value.startswith("/"):
                    errors.add(
                        _path(spath, "script"),
                        f"must start with the absolute path of the command (keepalived does not search PATH), "
                        f"got {describe(value)}",
                    )
        for key, low, high in (
            ("interval", 1, 3600),
            ("timeout", 1, 3600),
            ("rise", 1, 1000),
            ("fall", 1, 1000),
            ("weight", -253, 253),
        ):
            if key in script:
                _check_int(errors, _path(spath, key), script[key], low, high)
        if "user" in script:
            _check_str(errors, _path(spath, "user"), script["user"])
        if "init_fail" in script:
            _check_bool(errors, _path(spath, "init_fail"), script["init_fail"])


def _validate_track_files(errors, files):
    path = _path(ROOT, "vrrp_track_files")
    if not _named_mapping(errors, path, files):
        return
    for name, entry in files.items():
        if isinstance(name, str) and name.startswith("edge_ha_"):
            errors.add(_path(path, name), "names starting with edge_ha_ are reserved for the plugin")
        fpath = _path(path, name)
        if not _check_keys(errors, fpath, entry, TRACK_FILE_KEYS, required=("file",)):
            continue
        if "file" in entry:
            if _check_str(errors, _path(fpath, "file"), entry["file"]) and not entry["file"].startswith("/"):
                errors.add(_path(fpath, "file"), "must be an absolute path")
        if "weight" in entry:
            _check_int(errors, _path(fpath, "weight"), entry["weight"], -254, 254)
        if "init_file" in entry:
            _check_bool(errors, _path(fpath, "init_file"), entry["init_file"])


def _name_list(errors, path, value, known, what, single=True):
    """
    A list of names that must exist in ``known``; returns the valid ones (None
    if ``value`` is not a list). With ``single`` one name may be given as a
    string; otherwise a string is an error (never a list of characters).
    """
    if isinstance(value, str) and single:
        value = [value]
    if not isinstance(value, list):
        errors.add(path, f"must be a list of {what} names, got {describe(value)}")
        return None
    out = []
    for i, name in enumerate(value):
        if not isinstance(name, str) or name not in known:
            errors.add(
                _path(path, i),
                f"{describe(name)} is not defined; defined {what}: {_known(known)}",
            )
        elif name in out:
            errors.add(_path(path, i), f"{name!r} is listed twice")
        else:
            out.append(name)
    return out


def _check_advert_int(errors, path, advert, version):
    if not _is_number(advert) or not 0 < advert <= 255:
        errors.add(path, f"must be a number of seconds above 0 and up to 255, got {describe(advert)}")
    elif advert != int(advert) and version != 3:
        errors.add(
            path,
            f"{advert} is below 1 s, which needs vrrp_version: 3 (VRRPv2 adverts are whole seconds)"
            if advert < 1 else
            f"{advert} is not a whole number of seconds, which needs vrrp_version: 3 (VRRPv2 adverts are whole seconds)",
        )
    elif version == 3 and abs(round(advert * 100) - advert * 100) > 1e-6:
        errors.add(path, "VRRPv3 advert_int has a resolution of 0.01 s")
    elif version == 3 and advert > 40.95:
        errors.add(path, f"{advert} is above 40.95 s, the VRRPv3 maximum (12 bits of centiseconds)")


def _check_auth(errors, apath, auth, version, state):
    if not _check_keys(errors, apath, auth, ("auth_type", "auth_pass"), required=("auth_type", "auth_pass")):
        return
    if version == 3:
        errors.add(apath, "VRRPv3 has no authentication (RFC 5798); remove it or use vrrp_version: 2")
    if "auth_type" in auth:
        if _check_choice(errors, _path(apath, "auth_type"), auth["auth_type"], AUTH_TYPES) \
                and auth["auth_type"] == "AH" and state == "MASTER":
            errors.add(_path(apath, "auth_type"), "AH does not go with state MASTER (keepalived rejects both); "
                                                  "use state BACKUP")
    if "auth_pass" in auth:
        # never echo the value: errors reach job returns and logs
        pw = auth["auth_pass"]
        ppath = _path(apath, "auth_pass")
        if not isinstance(pw, str):
            errors.add(ppath, f"must be a string (quote it in YAML), got a {type(pw).__name__}")
        elif not pw:
            errors.add(ppath, "must not be empty")
        elif any(not (c.isascii() and c.isprintable()) or c == " " or c in KEEPALIVED_SPECIAL for c in pw):
            errors.add(
                ppath,
                "must be printable ASCII without spaces, braces, quotes, '#', '!' or backslashes (value not shown)",
            )
        elif len(pw) > 8:
            errors.add(
                ppath,
                f"is {len(pw)} characters; keepalived uses only the first 8 and "
                "silently drops the rest, so give at most 8",
            )


def _validate_instance(errors, name, inst, ctx, ipath=None, keys=INSTANCE_KEYS):
    """
    One vrrp_instance; records its VIPs in ``ctx['vips']`` and VRIDs in ``ctx['vrids']``.
    ``ipath``/``keys``: an address pool's ``vrrp`` settings checked by the same rules.
    """
    ipath = ipath or _path(ROOT, "vrrp_instances", name)
    nodes = ctx["nodes"]
    if not _check_keys(errors, ipath, inst, keys, required=("virtual_router_id", "virtual_ipaddress")):
        return
    version = 2
    if "vrrp_version" in inst:
        version = inst["vrrp_version"] if _check_choice(
            errors, _path(ipath, "vrrp_version"), inst["vrrp_version"], (2, 3)) else None
    # members: a list of node names; a string is an error, never a list of characters
    if "nodes" in inst:
        members = _name_list(errors, _path(ipath, "nodes"), inst["nodes"], nodes, "node", single=False)
        if members is not None and not inst["nodes"]:
            errors.add(_path(ipath, "nodes"), "must not be empty (leave it out to run the instance on every node)")
            members = None
    else:
        members = sorted(nodes)
    vrid = None
    if "virtual_router_id" in inst and _check_int(
            errors, _path(ipath, "virtual_router_id"), inst["virtual_router_id"], 1, 255):
        vrid = inst["virtual_router_id"]
    iface = None
    if "interface" in inst and _check_problem(errors, _path(ipath, "interface"), interface_problem(inst["interface"])):
        iface = inst["interface"]
    if "state" in inst:
        _check_choice(errors, _path(ipath, "state"), inst["state"], STATES)
    if "priority" in inst:
        prio = inst["priority"]
        if isinstance(prio, dict):
            for node, value in prio.items():
                if not isinstance(node, str) or node not in nodes:
                    errors.add(_path(ipath, "priority", node), f"{describe(node)} is not a node; nodes: {_known(nodes)}")
                _check_int(errors, _path(ipath, "priority", node), value, 1, 254)
        else:
            _check_int(errors, _path(ipath, "priority"), prio, 1, 254)
    if "advert_int" in inst:
        _check_advert_int(errors, _path(ipath, "advert_int"), inst["advert_int"], version)
    if "authentication" in inst:
        _check_auth(errors, _path(ipath, "authentication"), inst["authentication"], version, inst.get("state"))
    for key in ("nopreempt", "unicast"):
        if key in inst:
            _check_bool(errors, _path(ipath, key), inst[key])
    if "preempt_delay" in inst:
        if _check_int(errors, _path(ipath, "preempt_delay"), inst["preempt_delay"], 0, 1000) \
                and inst.get("nopreempt") is True:
            errors.add(_path(ipath, "preempt_delay"), "does not go with nopreempt: true (keepalived rejects both)")
        elif inst.get("state") == "MASTER":
            errors.add(_path(ipath, "preempt_delay"), "needs state BACKUP (keepalived ignores it with state MASTER)")
    if inst.get("nopreempt") is True and inst.get("state", "BACKUP") != "BACKUP":
        errors.add(_path(ipath, "state"), "nopreempt needs state BACKUP (keepalived ignores nopreempt on MASTER)")
    if "garp_master_delay" in inst:
        _check_int(errors, _path(ipath, "garp_master_delay"), inst["garp_master_delay"], 0, 255)
    if "track_script" in inst:
        _name_list(errors, _path(ipath, "track_script"), inst["track_script"], ctx["scripts"], "vrrp_scripts")
    if "track_file" in inst:
        _name_list(errors, _path(ipath, "track_file"), inst["track_file"], ctx["files"], "vrrp_track_files")
    tracked = {}
    if "track_interface" in inst:
        ti = inst["track_interface"]
        if not isinstance(ti, list):
            errors.add(_path(ipath, "track_interface"), f"must be a list of interface names, got {describe(ti)}")
        else:
            for i, item in enumerate(ti):
                if not _check_problem(errors, _path(ipath, "track_interface", i), interface_problem(item)):
                    continue
                if item in tracked:
                    errors.add(_path(ipath, "track_interface", i), f"{item!r} is listed twice")
                tracked[item] = i
    if members is not None:
        for node in members:
            node_iface = iface or nodes[node]["interface"]
            if node_iface in tracked:
                errors.add(
                    _path(ipath, "track_interface", tracked[node_iface]),
                    f"{node_iface} is the instance's own interface on node {node}; keepalived tracks that "
                    "one anyway and rejects it here",
                )
                break
    # virtual_ipaddress: all of one family, never a node's address, never another instance's VIP
    vlist = inst.get("virtual_ipaddress")
    vpath = _path(ipath, "virtual_ipaddress")
    if isinstance(vlist, str):
        vlist = [vlist]
    if "virtual_ipaddress" in inst and (not isinstance(vlist, list) or not vlist):
        errors.add(vpath, "must be a non-empty list of 'ADDRESS[/PREFIX]'")
        return
    family = None
    for i, entry in enumerate(vlist or []):
        vip = _vip(errors, _path(vpath, i), entry)
        if vip is None:
            continue
        if family is None:
            family = vip.version
        elif vip.version != family:
            errors.add(
                _path(vpath, i),
                f"{vip.ip} is IPv{vip.version} but this instance is IPv{family} (from its first "
                "address); put each family in its own vrrp_instance",
            )
            continue
        if vip.ip in ctx["node_owner"]:
            errors.add(
                _path(vpath, i),
                f"{vip.ip} is the address of node {ctx['node_owner'][vip.ip]}; a VIP must not be a node address",
            )
        if vip.ip in ctx["vips"]:
            errors.add(_path(vpath, i), f"{vip.ip} is already a VIP of instance {ctx['vips'][vip.ip]}")
        else:
            ctx["vips"][vip.ip] = name
    if family == 6 and version == 2:
        errors.add(_path(ipath, "vrrp_version"), "IPv6 virtual addresses need vrrp_version: 3")
    if family is None or members is None:
        return
    if inst.get("unicast") is True:
        if len(members) < 2:
            errors.add(
                _path(ipath, "unicast"),
                f"needs at least two nodes in the instance (unicast_peer would be empty); nodes: {_known(members)}",
            )
        for node in members:
            own = nodes[node]
            if family == 6 and own["address6"] is None:
                errors.add(
                    _path(ROOT, "nodes", node, "address6"),
                    f"is required: instance {name} is IPv6 with unicast: true",
                )
            if family == 4 and own["address"] is not None and own["address"].version != 4:
                errors.add(
                    _path(ROOT, "nodes", node, "address"),
                    f"{own['address']} is IPv6 but instance {name} is IPv4 with unicast: true "
                    "(its unicast_src_ip and peers must be IPv4)",
                )
    # VRIDs: unique per interface and address family on each node (VRRP over IPv4 and IPv6 are separate)
    if vrid is None:
        return
    for node in members:
        node_iface = iface or nodes[node]["interface"]
        if node_iface is None:
            continue
        key = (node, node_iface, family, vrid)
        if key in ctx["vrids"]:
            errors.add(
                _path(ipath, "virtual_router_id"),
                f"VRID {vrid} is already used by instance {ctx['vrids'][key]} on interface "
                f"{node_iface} of node {node} (IPv{family}); VRIDs must be unique per interface",
            )
        else:
            ctx["vrids"][key] = name


def _validate_instances(errors, instances, data, nodes):
    path = _path(ROOT, "vrrp_instances")
    ctx = {
        "nodes": nodes,
        "vips": {},
        "vrids": {},
        "node_owner": {a: n for n, info in nodes.items() for a in (info["address"], info["address6"]) if a},
        "scripts": {k for k in data.get("vrrp_scripts") if _valid_name(k)}
        if isinstance(data.get("vrrp_scripts"), dict) else set(),
        "files": {k for k in data.get("vrrp_track_files") if _valid_name(k)}
        if isinstance(data.get("vrrp_track_files"), dict) else set(),
    }
    if not isinstance(instances, dict) or not instances:
        errors.add(path, "must be a non-empty mapping of instance name -> settings")
        return ctx
    _check_names(errors, path, instances)
    for name, inst in instances.items():
        _validate_instance(errors, name, inst, ctx)
    return ctx


def _validate_check(errors, path, check):
    if not _check_keys(errors, path, check, CHECK_KEYS, required=("type",)):
        return
    if "type" in check:
        _check_choice(errors, _path(path, "type"), check["type"], CHECK_TYPES)
    for key, low, high in (
        ("connect_timeout", 1, 3600),
        ("connect_port", 1, 65535),
        ("retry", 0, 100),
        ("delay_before_retry", 0, 3600),
        ("status_code", 100, 599),
    ):
        if key in check:
            _check_int(errors, _path(path, key), check[key], low, high)
    http = check.get("type") in ("HTTP_GET", "SSL_GET")
    if "path" in check:
        if not http:
            errors.add(_path(path, "path"), "only applies to type HTTP_GET or SSL_GET")
        elif _check_str(errors, _path(path, "path"), check["path"]) and not check["path"].startswith("/"):
            errors.add(_path(path, "path"), "must start with /")
    elif http:
        errors.add(_path(path, "path"), f"is required for type {check['type']}")


def _validate_virtual_servers(errors, servers, vips, nodes):
    path = _path(ROOT, "virtual_servers")
    if not _named_mapping(errors, path, servers):
        return
    seen = {}
    for name, vs in servers.items():
        vpath = _path(path, name)
        if not _check_keys(errors, vpath, vs, VS_KEYS, required=("address", "port")):
            continue
        addr = _ip(errors, _path(vpath, "address"), vs["address"]) if "address" in vs else None
        if addr is not None and addr not in vips:
            errors.add(
                _path(vpath, "address"),
                f"{addr} is not a virtual_ipaddress of any vrrp_instance; VIPs: {_known(vips)}",
            )
        port = None
        if "port" in vs and _check_int(errors, _path(vpath, "port"), vs["port"], 1, 65535):
            port = vs["port"]
        proto = "TCP"
        if "protocol" in vs:
            proto = vs["protocol"] if _check_choice(errors, _path(vpath, "protocol"), vs["protocol"], PROTOCOLS) else None
        if addr is not None and port is not None and proto is not None:
            key = (addr, port, proto)
            if key in seen:
                errors.add(vpath, f"{addr} port {port} {proto} is already virtual server {seen[key]}")
            else:
                seen[key] = name
        if "lb_algo" in vs:
            _check_choice(errors, _path(vpath, "lb_algo"), vs["lb_algo"], LB_ALGOS)
        if "lb_kind" in vs:
            _check_choice(errors, _path(vpath, "lb_kind"), vs["lb_kind"], LB_KINDS)
        if "managed_by" in vs:
            _check_choice(errors, _path(vpath, "managed_by"), vs["managed_by"], MANAGED_BY)
        if "persistence_timeout" in vs:
            _check_int(errors, _path(vpath, "persistence_timeout"), vs["persistence_timeout"], 0, 2678400)
        if "delay_loop" in vs:
            _check_int(errors, _path(vpath, "delay_loop"), vs["delay_loop"], 1, 3600)
        if "health_check" in vs:
            _validate_check(errors, _path(vpath, "health_check"), vs["health_check"])
        rs = vs.get("real_servers", "auto")
        rpath = _path(vpath, "real_servers")
        if rs == "auto" and type(rs) is str:
            if addr is None:
                continue
            key = "address6" if addr.version == 6 else "address"
            for node, info in sorted(nodes.items()):
                if key == "address6" and info[key] is None:
                    errors.add(rpath, f"auto needs every node's address6 (the virtual server is IPv6); "
                                      f"node {node} has none")
                elif info[key] is not None and info[key].version != addr.version:
                    errors.add(rpath, f"auto makes node {node}'s address {info[key]} a real server, but it is "
                                      f"IPv{info[key].version} and the virtual server is IPv{addr.version}")
            continue
        if not isinstance(rs, list) or not rs:
            errors.add(rpath, "must be 'auto' (the edge nodes) or a non-empty list of {address, port, weight}")
            continue
        if all(isinstance(r, dict) and r.get("weight") == 0 for r in rs):
            errors.add(rpath, "every real server has weight 0; keepalived rejects a virtual server "
                              "without weight (quorum 1), give at least one a weight above 0")
        reals = {}
        for i, real in enumerate(rs):
            rspath = _path(rpath, i)
            if not _check_keys(errors, rspath, real, RS_KEYS, required=("address",)):
                continue
            raddr = _ip(errors, _path(rspath, "address"), real["address"]) if "address" in real else None
            if raddr is not None and addr is not None and raddr.version != addr.version:
                errors.add(_path(rspath, "address"), f"{raddr} is IPv{raddr.version} but the virtual server is IPv{addr.version}")
            rport = port
            if "port" in real:
                rport = real["port"] if _check_int(errors, _path(rspath, "port"), real["port"], 1, 65535) else None
                if rport is not None and port is not None and rport != port and vs.get("lb_kind", "NAT") in ("DR", "TUN"):
                    errors.add(_path(rspath, "port"), f"must be the virtual server's port {port} with lb_kind "
                                                      f"{vs['lb_kind']} (only NAT translates ports)")
            if raddr is not None and rport is not None:
                if (raddr, rport) in reals:
                    errors.add(rspath, f"{raddr} port {rport} is already real server {reals[(raddr, rport)]}")
                else:
                    reals[(raddr, rport)] = i
            if "weight" in real:
                _check_int(errors, _path(rspath, "weight"), real["weight"], 0, 65535)
            if "health_check" in real:
                _validate_check(errors, _path(rspath, "health_check"), real["health_check"])


def _validate_kubernetes(errors, kube):
    path = _path(ROOT, "kubernetes")
    if not _check_keys(errors, path, kube, KUBE_KEYS):
        return
    for key in ("kubeconfig", "context"):
        if kube.get(key) is not None:
            _check_str(errors, _path(path, key), kube[key], max_len=4096, spaces=True, special=False)
    rules = {
        "service": {
            "namespace": lambda v: dns1123_label_problem(v, "namespace"),
            "name": lambda v: dns1035_label_problem(v, "Service name"),
        },
        "ingress_pods": {
            "namespace": lambda v: dns1123_label_problem(v, "namespace"),
            "label_selector": label_selector_problem,
        },
    }
    for key, sub in rules.items():
        if key in kube:
            kpath = _path(path, key)
            if _check_keys(errors, kpath, kube[key], tuple(sub)):
                for skey, value in kube[key].items():
                    if skey in sub:
                        _check_problem(errors, _path(kpath, skey), sub[skey](value))
    if "external_ips" in kube:
        _check_choice(errors, _path(path, "external_ips"), kube["external_ips"], EXTERNAL_IPS_POLICIES)
    if "request_timeout" in kube:
        _check_int(errors, _path(path, "request_timeout"), kube["request_timeout"], 1, 300)
    if "conflict_retries" in kube:
        _check_int(errors, _path(path, "conflict_retries"), kube["conflict_retries"], 0, 50)


def _validate_ingress(errors, ingress):
    path = _path(ROOT, "ingress")
    if not _check_keys(errors, path, ingress, INGRESS_KEYS):
        return
    if "health_url" in ingress:
        url = ingress["health_url"]
        upath = _path(path, "health_url")
        if _check_str(errors, upath, url, max_len=2048, special=False) and not url.startswith(("http://", "https://")):
            errors.add(upath, f"must be an http:// or https:// URL, got {describe(url)}")
    for key, low, high in (("fall", 1, 100), ("rise", 1, 100)):
        if key in ingress:
            _check_int(errors, _path(path, key), ingress[key], low, high)
    for key in ("timeout", "interval"):
        value = ingress.get(key)
        if key in ingress and (not _is_number(value) or not 0 < value <= 60):
            errors.add(_path(path, key), f"must be a number of seconds above 0 and up to 60, got {describe(value)}")


POOL_KEYS = ("addresses", "virtual_router_ids", "prefix", "prefix6", "auto_assign", "avoid_buggy_ips", "vrrp")
# a pool's instances: every vrrp_instance key but the two the pool decides per address
POOL_VRRP_KEYS = tuple(k for k in INSTANCE_KEYS if k not in ("virtual_router_id", "virtual_ipaddress", "address_pool"))
DEFAULT_LOAD_BALANCER = {"default_class": False}
LOAD_BALANCER_KEYS = tuple(DEFAULT_LOAD_BALANCER)
_RANGE_EXAMPLE = "CIDR (203.0.113.0/28) or range (203.0.113.10-203.0.113.20)"


def parse_pool_entry(value):
    """
    One ``address_pools:*:addresses`` entry -> ``(first, last)`` ip_address
    objects. A CIDR (``203.0.113.0/28``, ``2001:db8::/124``) or an inclusive
    range ``FIRST-LAST`` of one family (MetalLB's syntax; spaces around ``-``
    allowed). Raises ValueError with the reason.
    """
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be a {_RANGE_EXAMPLE}, got {describe(value)}")
    text = value.strip()
    if "-" in text:
        first_text, _, last_text = text.partition("-")
        try:
            first = ipaddress.ip_address(first_text.strip())
            last = ipaddress.ip_address(last_text.strip())
        except ValueError:
            raise ValueError(f"{describe(value)} is not a {_RANGE_EXAMPLE}") from None
        if first.version != last.version:
            raise ValueError(f"{describe(value)} mixes IPv{first.version} and IPv{last.version}")
        if first > last:
            raise ValueError(f"{describe(value)}: the first address is above the last")
        return first, last
    if "/" not in text:
        raise ValueError(f"{describe(value)} is a single address; write {text}/{32 if ':' not in text else 128} "
                         f"or {text}-{text}")
    try:
        net = ipaddress.ip_network(text)
    except ValueError as exc:
        if "has host bits set" in str(exc):
            raise ValueError(f"{describe(value)} has host bits set; the network is "
                             f"{ipaddress.ip_network(text, strict=False)}") from None
        raise ValueError(f"{describe(value)} is not a {_RANGE_EXAMPLE}") from None
    if net.prefixlen == 0:
        raise ValueError(f"{describe(value)} would claim every address")
    return net.network_address, net.broadcast_address


def parse_vrid_range(value):
    """``virtual_router_ids``: an integer, ``"FIRST-LAST"`` or a list of them -> sorted VRIDs (ValueError)."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError("must not be empty")
    out = set()
    for item in items:
        if _is_int(item):
            low = high = item
        elif isinstance(item, str) and re.fullmatch(r"\s*\d{1,3}\s*-\s*\d{1,3}\s*", item):
            low, high = (int(p) for p in item.split("-"))
        else:
            raise ValueError(f"must be a VRID, a range like 100-119 or a list of them, got {describe(item)}")
        if not 1 <= low <= high <= 255:
            raise ValueError(f"{describe(item)}: VRIDs are 1-255, the first not above the last")
        out.update(range(low, high + 1))
    return sorted(out)


def _range_problem(first, last):
    """Why a pool range holds addresses no Service may get, or None (checked at both ends and for
    the special blocks it may span)."""
    for addr in (first, last):
        problem = _host_problem(addr, link_local=False)
        if problem:
            return problem
    specials = (
        ["0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/3"] if first.version == 4
        else ["::/127", "fe80::/10", "ff00::/8", "::ffff:0:0/96"]
    )
    for block in map(ipaddress.ip_network, specials):
        if first <= block.network_address and block.broadcast_address <= last:
            return f"it spans {block}, whose addresses are not unicast host addresses"
    return None


def _validate_address_pools(errors, pools, ctx):
    """
    ``address_pools``: the addresses LoadBalancer Services get. Every entry
    parses, no overlap between pools, no pillar VIP or node address inside a
    pool, VRIDs disjoint from the pillar's instances and from other pools;
    ``vrrp`` follows the vrrp_instances rules (checked on a sample instance
    per address family the pool has).
    """
    path = _path(ROOT, "address_pools")
    if not _named_mapping(errors, path, pools):
        return
    ranges = []  # (first, last, pool, index)
    vrid_owner = {}
    pool_of = ctx.get("pool_of", {})  # instance -> the pool it serves (address_pool)
    pillar_vrids = {}
    for (_node, _iface, _family, vrid), inst in sorted(ctx["vrids"].items(), key=str):
        pillar_vrids.setdefault(vrid, {})[inst] = pool_of.get(inst)
    for name, pool in pools.items():
        ppath = _path(path, name)
        if not _check_keys(errors, ppath, pool, POOL_KEYS, required=("addresses", "virtual_router_ids")):
            continue
        families = {}
        apath = _path(ppath, "addresses")
        entries = pool.get("addresses")
        if isinstance(entries, str):
            entries = [entries]
        if "addresses" in pool and (not isinstance(entries, list) or not entries):
            errors.add(apath, f"must be a non-empty list of {_RANGE_EXAMPLE} entries")
            entries = []
        for i, entry in enumerate(entries or []):
            try:
                first, last = parse_pool_entry(entry)
            except ValueError as exc:
                errors.add(_path(apath, i), str(exc))
                continue
            if not _check_problem(errors, _path(apath, i), _range_problem(first, last)):
                continue
            families.setdefault(first.version, first)
            ranges.append((first, last, name, i))
            for addr, owner in ctx["node_owner"].items():
                if addr.version == first.version and first <= addr <= last:
                    errors.add(_path(apath, i), f"holds {addr}, the address of node {owner}")
            for vip, inst in ctx["vips"].items():
                if vip.version == first.version and first <= vip <= last and pool_of.get(inst) != name:
                    errors.add(_path(apath, i), f"holds {vip}, a VIP of vrrp_instances:{inst}; "
                                                "pool addresses go to Services only")
        for key, family, top in (("prefix", 4, 32), ("prefix6", 6, 128)):
            if key in pool:
                _check_int(errors, _path(ppath, key), pool[key], 1, top)
        for key in ("auto_assign", "avoid_buggy_ips"):
            if key in pool:
                _check_bool(errors, _path(ppath, key), pool[key])
        vpath = _path(ppath, "virtual_router_ids")
        vrids = []
        if "virtual_router_ids" in pool:
            try:
                vrids = parse_vrid_range(pool["virtual_router_ids"])
            except ValueError as exc:
                errors.add(vpath, str(exc))
        for vrid in vrids:
            others = sorted(i for i, p in pillar_vrids.get(vrid, {}).items() if p != name)
            if others:
                errors.add(vpath, f"VRID {vrid} is used by vrrp_instances:{others[0]}; each address of "
                                  "the pool becomes an instance of its own with a VRID from this list")
                break
            if vrid_owner.setdefault(vrid, name) != name:
                errors.add(vpath, f"VRID {vrid} is also in address_pools:{vrid_owner[vrid]}:virtual_router_ids")
                break
        template = pool.get("vrrp", {})
        tpath = _path(ppath, "vrrp")
        if "vrrp" in pool and not isinstance(template, dict):
            errors.add(tpath, f"must be a mapping of vrrp_instance settings, got {type(template).__name__}")
            continue
        if not _check_keys(errors, tpath, template, POOL_VRRP_KEYS):
            continue
        found = _Errors()
        scratch = dict(ctx, vips={}, vrids={})
        known = {k: v for k, v in template.items() if k in POOL_VRRP_KEYS}
        for family, sample in sorted(families.items()):
            inst = dict(known, virtual_router_id=vrids[0] if vrids else 1,
                        virtual_ipaddress=[f"{sample}/{32 if family == 4 else 128}"])
            _validate_instance(found, name, inst, scratch, ipath=tpath)
        for item in dict.fromkeys(found.items):  # one family's message once, not per family
            errors.items.append(item)
    ranges.sort(key=lambda r: (r[0].version, r[0], r[1]))
    for (f1, l1, p1, i1), (f2, l2, p2, i2) in zip(ranges, ranges[1:]):
        if f1.version == f2.version and f2 <= l1:
            errors.add(_path(path, p2, "addresses", i2),
                       f"overlaps address_pools:{p1}:addresses:{i1} ({f2}-{min(l1, l2)})")


def _validate_pool_instances(errors, instances, pools):
    """
    Instances with ``address_pool`` (the ones the edge_ha_lb ext_pillar adds
    for LoadBalancer Services): the pool exists, every VIP is inside it, the
    VRID is one of its ``virtual_router_ids``.
    """
    for name, inst in instances.items():
        if not isinstance(inst, dict) or "address_pool" not in inst:
            continue
        ppath = _path(ROOT, "vrrp_instances", name, "address_pool")
        pool = inst["address_pool"]
        if not _valid_name(pool) or not isinstance(pools, dict) or pool not in pools:
            errors.add(ppath, f"must name a pool of edge_ha:address_pools ({_known(pools if isinstance(pools, dict) else ())}), "
                              f"got {describe(pool)}")
            continue
        spec = pools[pool]
        try:
            entries = spec["addresses"]
            ranges = [parse_pool_entry(e) for e in ([entries] if isinstance(entries, str) else entries)]
            vrids = parse_vrid_range(spec["virtual_router_ids"])
        except (ValueError, TypeError, KeyError):
            continue  # the pool's own errors are reported at the pool
        vlist = inst.get("virtual_ipaddress")
        for vip in [vlist] if isinstance(vlist, str) else (vlist if isinstance(vlist, list) else []):
            try:
                addr = ipaddress.ip_interface(vip).ip
            except (ValueError, TypeError):
                continue  # reported by the instance check
            if not any(f.version == addr.version and f <= addr <= l for f, l in ranges):
                errors.add(ppath, f"{addr} is not in address_pools:{pool}")
        if _is_int(inst.get("virtual_router_id")) and inst["virtual_router_id"] not in vrids:
            errors.add(ppath, f"VRID {inst['virtual_router_id']} is not in address_pools:{pool}:virtual_router_ids")


def _validate_load_balancer(errors, data):
    path = _path(ROOT, "load_balancer")
    if _check_keys(errors, path, data, LOAD_BALANCER_KEYS) and "default_class" in data:
        _check_bool(errors, _path(path, "default_class"), data["default_class"])


def _validate(errors, data):
    _check_keys(errors, ROOT, data, TOP_KEYS, required=("nodes", "vrrp_instances"))
    nodes = _validate_nodes(errors, data.get("nodes"))
    instances = data.get("vrrp_instances")
    instance_names = {k for k in instances if _valid_name(k)} if isinstance(instances, dict) else set()
    if "global_defs" in data:
        _validate_global_defs(errors, data["global_defs"], instance_names)
    if "vrrp_scripts" in data:
        _validate_scripts(errors, data["vrrp_scripts"])
    if "vrrp_track_files" in data:
        _validate_track_files(errors, data["vrrp_track_files"])
    ctx = {"vips": {}, "vrids": {}, "nodes": nodes, "node_owner": {}, "scripts": set(), "files": set()}
    if "vrrp_instances" in data:
        ctx = _validate_instances(errors, instances, data, nodes)
    if "virtual_servers" in data:
        _validate_virtual_servers(errors, data["virtual_servers"], ctx["vips"], nodes)
    if isinstance(instances, dict):
        ctx["pool_of"] = {n: i["address_pool"] for n, i in instances.items()
                          if isinstance(i, dict) and isinstance(i.get("address_pool"), str)}
        _validate_pool_instances(errors, instances, data.get("address_pools"))
    if "address_pools" in data:
        _validate_address_pools(errors, data["address_pools"], ctx)
    if "load_balancer" in data:
        _validate_load_balancer(errors, data["load_balancer"])
    if "kubernetes" in data:
        _validate_kubernetes(errors, data["kubernetes"])
    if "ingress" in data:
        _validate_ingress(errors, data["ingress"])


def validate_model(data):
    """
    Validate the ``edge_ha`` pillar value. Returns a list of error strings,
    each ``edge_ha:path: message``; empty when the model is valid. Never
    raises, whatever the types in ``data``.
    """
    errors = _Errors()
    if not isinstance(data, dict):
        errors.add(ROOT, "must be a mapping (is the pillar key edge_ha missing?)")
        return errors.items
    try:
        _validate(errors, data)
    except Exception as exc:  # pylint: disable=broad-except
        # A bug in a check must not become a traceback in a state run or let the pillar through;
        # the property tests assert that this line is never reached.
        errors.add(ROOT, f"{INTERNAL_ERROR} ({type(exc).__name__}: {describe(str(exc))}); please report this")
    return errors.items


INTERNAL_ERROR = "could not be validated: internal error"


def owner_order(instance, members):
    """
    The nodes of one VRRP instance, preferred owner first: rendezvous
    (highest-random-weight) hashing of ``(instance name, node name)``.

    Each instance gets its own order, so N instances over M nodes give each
    node about N/M as preferred owner. The order of two nodes never depends on
    the other nodes or on the other instances: adding a node moves only the
    instances it now tops (about N/(M+1) of them), removing one moves only the
    instances it owned, adding an instance moves nothing. SHA-256, not
    Python's ``hash()``: the same order on every node and every run.
    """
    def weight(node):
        digest = hashlib.sha256(f"{instance}\0{node}".encode()).digest()
        return int.from_bytes(digest[:8], "big"), node

    return sorted(members, key=weight, reverse=True)


def derived_priorities(nodes, instance, members=None):
    """
    Base priority per node of one instance: the node's own ``priority`` if
    set; the other nodes get 150, 140, 130, ... (floor 1) in
    ``owner_order(instance, ...)`` (``members``: the instance's nodes,
    default every node).
    """
    members = sorted(nodes) if members is None else members
    out = {name: nodes[name]["priority"] for name in members if "priority" in nodes[name]}
    derived = owner_order(instance, [name for name in members if name not in out])
    for rank, name in enumerate(derived):
        out[name] = max(1, DERIVED_PRIORITY_TOP - DERIVED_PRIORITY_STEP * rank)
    return {name: out[name] for name in members}


def _merge(defaults, value):
    out = dict(defaults)
    for key, val in (value or {}).items():
        if isinstance(out.get(key), dict) and isinstance(val, dict):
            out[key] = _merge(out[key], val)
        else:
            out[key] = val
    return out


def _seconds(value):
    """A whole number of seconds as an int (2.0 -> 2), a fraction as it is."""
    return int(value) if value == int(value) else value


def normalize(data):
    """
    Turn a validated ``edge_ha`` value into the normalised model: every default
    filled in, priorities resolved per node, ``auto`` real servers resolved to
    the edge nodes, VIPs as ``ADDR/PREFIX`` strings. Raises
    ``SaltInvocationError`` listing every error if the data is invalid.
    """
    errors = validate_model(data)
    if errors:
        raise SaltInvocationError(
            "edge_ha pillar is invalid ({} error{}):\n  ".format(len(errors), "" if len(errors) == 1 else "s")
            + "\n  ".join(errors)
        )
    nodes = {
        name: {
            "name": name,
            "address": str(ipaddress.ip_address(n["address"])),
            "address6": str(ipaddress.ip_address(n["address6"])) if n.get("address6") else None,
            "interface": n["interface"],
            "kubernetes_node": n.get("kubernetes_node", name),
        }
        for name, n in data["nodes"].items()
    }
    for name in nodes:
        # the node's own base priority; None: derived per instance (owner_order)
        nodes[name]["priority"] = data["nodes"][name].get("priority")
    instances = {}
    for name, inst in data["vrrp_instances"].items():
        vlist = inst["virtual_ipaddress"]
        if isinstance(vlist, str):
            vlist = [vlist]
        vips = [ipaddress.ip_interface(v) for v in vlist]
        members = inst.get("nodes", sorted(nodes))
        base = derived_priorities(data["nodes"], name, members)
        prio = inst.get("priority")
        priorities = {}
        for node in members:
            if isinstance(prio, dict) and node in prio:
                priorities[node] = prio[node]
            elif _is_int(prio):
                priorities[node] = prio
            else:
                priorities[node] = base[node]
        track_script = inst.get("track_script", [])
        track_file = inst.get("track_file", [])
        instances[name] = {
            "name": name,
            "interface": inst.get("interface"),
            "virtual_router_id": inst["virtual_router_id"],
            "priorities": priorities,
            "state": inst.get("state", "BACKUP"),
            "advert_int": _seconds(inst.get("advert_int", 1)),
            "vrrp_version": inst.get("vrrp_version", 2),
            "authentication": inst.get("authentication"),
            "family": vips[0].version,
            "virtual_ipaddress": [
                f"{v.ip}/{v.network.prefixlen}" for v in vips
            ],
            "vips": [str(v.ip) for v in vips],
            "nopreempt": inst.get("nopreempt", False),
            "preempt_delay": inst.get("preempt_delay"),
            "unicast": inst.get("unicast", False),
            "track_script": [track_script] if isinstance(track_script, str) else list(track_script),
            "track_file": [track_file] if isinstance(track_file, str) else list(track_file),
            "track_interface": list(inst.get("track_interface", [])),
            "garp_master_delay": inst.get("garp_master_delay"),
            "nodes": list(members),
        }
        if inst.get("address_pool"):
            # only on pool instances: the views (and digests) of the others stay as they were
            instances[name]["address_pool"] = inst["address_pool"]
    servers = {}
    for name, vs in (data.get("virtual_servers") or {}).items():
        health = vs.get("health_check")
        rs = vs.get("real_servers", "auto")
        address = ipaddress.ip_address(vs["address"])
        if rs == "auto":
            key = "address6" if address.version == 6 else "address"
            reals = [
                {"address": nodes[n][key], "port": vs["port"], "weight": 1, "health_check": health, "node": n}
                for n in sorted(nodes)
            ]
        else:
            by_addr = {a: n["name"] for n in nodes.values() for a in (n["address"], n["address6"]) if a}
            reals = [
                {
                    "address": str(ipaddress.ip_address(r["address"])),
                    "port": r.get("port", vs["port"]),
                    "weight": r.get("weight", 1),
                    "health_check": r.get("health_check", health),
                    "node": by_addr.get(str(ipaddress.ip_address(r["address"]))),
                }
                for r in rs
            ]
        servers[name] = {
            "name": name,
            "address": str(address),
            "port": vs["port"],
            "protocol": vs.get("protocol", "TCP"),
            "lb_algo": vs.get("lb_algo", "rr"),
            "lb_kind": vs.get("lb_kind", "NAT"),
            "persistence_timeout": vs.get("persistence_timeout", 0),
            "delay_loop": vs.get("delay_loop", 6),
            "managed_by": vs.get("managed_by", "keepalived"),
            "real_servers": reals,
        }
    return {
        "nodes": nodes,
        "global_defs": dict(data.get("global_defs") or {}),
        "vrrp_scripts": {k: dict(v) for k, v in (data.get("vrrp_scripts") or {}).items()},
        "vrrp_track_files": {k: dict(v) for k, v in (data.get("vrrp_track_files") or {}).items()},
        "vrrp_instances": instances,
        "virtual_servers": servers,
        "kubernetes": _merge(DEFAULT_KUBERNETES, data.get("kubernetes")),
        "ingress": _merge(DEFAULT_INGRESS, data.get("ingress")),
        "address_pools": {name: _normalize_pool(name, pool) for name, pool in (data.get("address_pools") or {}).items()},
        "load_balancer": _merge(DEFAULT_LOAD_BALANCER, data.get("load_balancer")),
    }


def _normalize_pool(name, pool):
    """One validated address pool: ranges as ``[first, last]`` strings in pillar order, defaults filled in."""
    entries = pool["addresses"]
    ranges = [parse_pool_entry(e) for e in ([entries] if isinstance(entries, str) else entries)]
    return {
        "name": name,
        "ranges": [[str(first), str(last)] for first, last in ranges],
        "virtual_router_ids": parse_vrid_range(pool["virtual_router_ids"]),
        "prefix": pool.get("prefix", 32),
        "prefix6": pool.get("prefix6", 128),
        "auto_assign": pool.get("auto_assign", True),
        "avoid_buggy_ips": pool.get("avoid_buggy_ips", False),
        "vrrp": dict(pool.get("vrrp") or {}),
    }


def view_for_node(model, node, drained=()):
    """
    What one node needs to render its keepalived.conf: its own entry, its
    instances with this node's priority, interface and unicast peers, and the
    virtual servers keepalived owns. Real servers of ``drained`` nodes get
    weight 0 (IPVS sends them no new connections; established ones go on).
    """
    if node not in model["nodes"]:
        raise CommandExecutionError(
            f"{node!r} is not a node of edge_ha:nodes (nodes: {', '.join(sorted(model['nodes']))}); "
            "the minion id must match a node name"
        )
    me = model["nodes"][node]
    instances = []
    for inst in model["vrrp_instances"].values():
        if node not in inst["nodes"]:
            continue
        own = me["address6"] if inst["family"] == 6 else me["address"]
        peers = []
        if inst["unicast"]:
            for peer in inst["nodes"]:
                if peer != node:
                    p = model["nodes"][peer]
                    peers.append(p["address6"] if inst["family"] == 6 else p["address"])
        instances.append(
            dict(
                inst,
                interface=inst["interface"] or me["interface"],
                priority=inst["priorities"][node],
                unicast_src_ip=own if inst["unicast"] else None,
                unicast_peer=peers,
            )
        )
    used_scripts = {s for i in instances for s in i["track_script"]}
    used_files = {f for i in instances for f in i["track_file"]}
    return {
        "node": node,
        "me": me,
        "global_defs": dict({"router_id": node}, **model["global_defs"]),
        "vrrp_scripts": {k: v for k, v in model["vrrp_scripts"].items() if k in used_scripts},
        "vrrp_track_files": {k: v for k, v in model["vrrp_track_files"].items() if k in used_files},
        "vrrp_instances": instances,
        "virtual_servers": [
            dict(vs, real_servers=[dict(rs, weight=0) if rs.get("node") in drained else rs for rs in vs["real_servers"]])
            for vs in model["virtual_servers"].values() if vs["managed_by"] == "keepalived"
        ],
    }
