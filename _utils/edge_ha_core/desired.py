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


def vrrp_identities(text):
    """
    ``{instance: (interface, virtual_router_id, version)}`` of the
    ``vrrp_instance`` blocks in a keepalived.conf: what keepalived's reload
    (SIGHUP) must find unchanged to keep an instance's VRRP state.
    """
    out = {}
    name, depth, seen = None, 0, {}
    for raw in (text or "").splitlines():
        line = raw.split("#", 1)[0].split("!", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        if depth == 0 and words[0] == "vrrp_instance" and len(words) >= 2:
            name, seen = words[1], {}
        if name and depth == 1 and len(words) >= 2 and words[0] in ("interface", "virtual_router_id", "version"):
            seen.setdefault(words[0], words[1])
        depth += line.count("{") - line.count("}")
        if name and depth <= 0:
            out[name] = (seen.get("interface"), seen.get("virtual_router_id"), seen.get("version", "2"))
            name, depth = None, 0
    return out


def reload_keeps_state(old_text, new_text, instances):
    """
    The ``instances`` (those a node holds VIPs for) whose VRRP state a reload
    would not keep: gone from the new config, or another interface, VRID or
    VRRP version. An empty list: an in-place reload keeps the node the owner.
    """
    old, new = vrrp_identities(old_text), vrrp_identities(new_text)
    return sorted(i for i in instances if i not in new or old.get(i) != new[i])


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
