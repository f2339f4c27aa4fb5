"""
Desired state as digests: what the master compares instead of asking every
node to render its config.

Each rendered keepalived.conf starts with a line naming the digest of the
node view it was rendered from (``view_for_node``: the node's instances,
priorities, peers, virtual servers and drained weights). The node reports
that line; the master computes the same digest from its last good model. A
node whose digest differs from the master's needs a re-render; the others
get no job.

The digest covers the VRRP password only through a slow hash of it, so the
digest (which travels in the mine and the report) tells nothing usable
about the password.
"""

import functools
import hashlib
import json
import re

from edge_ha_core import model as edge_model

HEADER = "# salt-edge-ha desired state: "
_HEADER_RE = re.compile(r"^# salt-edge-ha desired state: ([0-9a-f]{16})$", re.M)


@functools.lru_cache(maxsize=64)
def _secret_digest(secret):
    return hashlib.pbkdf2_hmac("sha256", secret.encode(), b"salt-edge-ha view digest", 100_000).hex()


def _masked(value):
    """The view with every ``auth_pass`` replaced by its slow hash."""
    if isinstance(value, dict):
        return {k: (_secret_digest(str(v)) if k == "auth_pass" and v is not None else _masked(v))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_masked(v) for v in value]
    return value


def view_digest(view):
    """16 hex digits naming one node view (stable: key order and tuples do not matter)."""
    text = json.dumps(_masked(view), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def header_line(view):
    return HEADER + view_digest(view)


def read_digest(text):
    """The desired-state digest named in a rendered config's header (None: not one of ours)."""
    match = _HEADER_RE.search(text or "")
    return match.group(1) if match else None


def node_digests(model, drained=()):
    """``{node: digest}`` of every edge node's view (``drained``: nodes whose real servers get weight 0)."""
    return {node: view_digest(edge_model.view_for_node(model, node, drained)) for node in sorted(model["nodes"])}


def _instance_lines(text):
    """``(instance, depth, words)`` for each line inside a ``vrrp_instance`` block of a
    keepalived.conf (comments stripped; ``depth`` 1 for the block's own keywords, the
    opening line included with depth 0), and ``(name, None, None)`` when a block ends."""
    name, depth = None, 0
    for raw in (text or "").splitlines():
        line = raw.split("#", 1)[0].split("!", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        if depth == 0 and words[0] == "vrrp_instance" and len(words) >= 2:
            name = words[1]
        if name:
            yield name, depth, words
        depth += line.count("{") - line.count("}")
        if name and depth <= 0:
            yield name, None, None
            name, depth = None, 0


def vrrp_identities(text):
    """
    ``{instance: (interface, virtual_router_id, version)}`` of the
    ``vrrp_instance`` blocks in a keepalived.conf: what keepalived's reload
    (SIGHUP) must find unchanged to keep an instance's VRRP state.
    """
    out, seen = {}, {}
    for name, depth, words in _instance_lines(text):
        if depth is None:
            out[name] = (seen.get("interface"), seen.get("virtual_router_id"), seen.get("version", "2"))
            seen = {}
        elif depth == 1 and len(words) >= 2 and words[0] in ("interface", "virtual_router_id", "version"):
            seen.setdefault(words[0], words[1])
    return out


def vrrp_addresses(text):
    """
    ``{instance: {address, ...}}`` of the ``vrrp_instance`` blocks in a
    keepalived.conf: the addresses (no prefix) of their ``virtual_ipaddress``
    and ``virtual_ipaddress_excluded`` blocks.
    """
    out, block = {}, None
    for name, depth, words in _instance_lines(text):
        addresses = out.setdefault(name, set())
        if depth == 1:
            block = words[0] if words[0] in ("virtual_ipaddress", "virtual_ipaddress_excluded") else None
        elif depth == 2 and block and words[0] not in ("{", "}"):
            addresses.add(words[0].split("/", 1)[0])
        elif depth is None:
            block = None
    return out


def reload_keeps_state(old_text, new_text, instances):
    """
    The ``instances`` (those a node holds VIPs for) whose VRRP state a reload
    would not keep: another interface, VRID or VRRP version in the new config,
    or gone from it while one of its addresses is still a VIP there (renamed:
    the address would start over as BACKUP). An instance that is only removed
    (its addresses go with it, as a deleted LoadBalancer Service's) or only
    added loses nobody's state: keepalived's SIGHUP keeps the other instances'.
    An empty list: an in-place reload keeps the node the owner.
    """
    old, new = vrrp_identities(old_text), vrrp_identities(new_text)
    old_addresses, new_addresses = vrrp_addresses(old_text), vrrp_addresses(new_text)
    still_served = set().union(*new_addresses.values()) if new_addresses else set()
    lost = []
    for i in instances:
        if i in new:
            if old.get(i) != new[i]:
                lost.append(i)
        elif old_addresses.get(i, set()) & still_served or i not in old_addresses:
            lost.append(i)
    return sorted(lost)


# keepalived's compiled-in configuration file (Debian and RHEL builds): what it reads without -f
KEEPALIVED_DEFAULT_CONFIG = "/etc/keepalived/keepalived.conf"


def config_file_of(argv, default=KEEPALIVED_DEFAULT_CONFIG):
    """The configuration file a keepalived started with ``argv`` (its command line, program
    first) reads at start and at every reload: ``-f FILE``, ``-fFILE``, ``--use-file[=]FILE``
    (the last one wins, as with getopt), else keepalived's default."""
    found = default
    args = list(argv[1:])
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("-f", "--use-file") and i + 1 < len(args):
            found, i = args[i + 1], i + 2
            continue
        if arg.startswith("--use-file="):
            found = arg.split("=", 1)[1]
        elif arg.startswith("-f") and not arg.startswith("--") and len(arg) > 2:
            found = arg[2:]
        i += 1
    return found
