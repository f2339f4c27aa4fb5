"""
Keep the IPVS table of an edge node equal to the declared virtual servers.

:depends: the ``ipvs`` execution module of this project (``_modules/ipvs.py``)

``ipvs.synced`` makes the live table contain exactly the declared services
that **Salt** manages, with the minimal set of kernel operations (see
``ipvs.sync``). ``test=True`` returns ``result: None`` and, under
``changes: {operations: [...]}``, the operations it would apply.

Who owns what
-------------
Each virtual server of the pillar model (``edge_ha:virtual_servers``) has
``managed_by: keepalived`` (the default) or ``managed_by: salt``:

* ``managed_by: salt`` services are added/edited/deleted by this state;
* ``managed_by: keepalived`` services are programmed by keepalived's own
  ``virtual_server`` blocks. This state **never** adds, edits or deletes
  them, not even with ``own_table: True`` (they are passed to ``ipvs.sync``
  as ``protect``; declaring one of them as Salt-managed is an error);
* services that are in the kernel but in neither list are left alone,
  unless ``own_table: True``, which deletes them.

Example (explicit services):

.. code-block:: yaml

    edge-ipvs:
      ipvs.synced:
        - services:
          - protocol: TCP
            address: 198.18.0.10
            port: 443
            scheduler: wrr
            destinations:
              - {address: 198.19.0.1, weight: 2, forward: DR}
        - own_table: False

Example (from the pillar ``edge_ha``; ``real_servers: auto`` resolves to
every edge node of ``edge_ha:nodes``, with the virtual server's port and
weight 1):

.. code-block:: yaml

    edge-ipvs:
      ipvs.synced:
        - pillar: edge_ha
"""

import logging

try:
    from salt.exceptions import CommandExecutionError, SaltInvocationError
except ImportError:  # pragma: no cover - unit tests load this file without Salt

    class CommandExecutionError(Exception):
        def __init__(self, message="", info=None):
            super().__init__(message)
            self.info = info

    class SaltInvocationError(Exception):
        pass


log = logging.getLogger(__name__)

__virtualname__ = "ipvs"

__load__ = ["synced"]

MANAGERS = ("keepalived", "salt")


def __virtual__():
    if "ipvs.sync" in __salt__:  # noqa: F821 - Salt dunder
        return __virtualname__
    return (False, "ipvs state: the ipvs execution module is not loaded")


# --------------------------------------------------------------------------
# Pure helpers (unit-tested without Salt)
# --------------------------------------------------------------------------


def virtual_servers_from_pillar(edge_ha):
    """Resolve the ``edge_ha`` pillar model into IPVS service specs.

    Returns ``(salt_managed, keepalived_owned)``: two lists of service dicts
    in the form ``ipvs.sync`` takes (keepalived-style keys are fine).
    ``real_servers: auto`` becomes every node of ``edge_ha:nodes`` (sorted
    by node name) with the virtual server's port and weight 1.

    This is the single place that interprets the pillar model; it is meant
    to be replaced by ``__salt__['edge_ha.model']()`` once that exists.
    """
    edge_ha = edge_ha or {}
    servers = edge_ha.get("virtual_servers") or {}
    nodes = edge_ha.get("nodes") or {}
    if not isinstance(servers, dict):
        raise SaltInvocationError("edge_ha:virtual_servers must be a mapping name -> server")
    salt_managed, keepalived_owned = [], []
    for name in sorted(servers):
        vs = dict(servers[name] or {})
        manager = str(vs.get("managed_by", "keepalived")).lower()
        if manager not in MANAGERS:
            raise SaltInvocationError(
                f"edge_ha:virtual_servers:{name}: managed_by must be keepalived or salt, "
                f"not {manager!r}")
        for field in ("address", "port"):
            if field not in vs:
                raise SaltInvocationError(f"edge_ha:virtual_servers:{name} has no {field}")
        real = vs.get("real_servers", "auto")
        if real == "auto":
            real = [{"address": node["address"], "port": vs["port"], "weight": 1}
                    for _, node in sorted(nodes.items()) if node and node.get("address")]
        elif not isinstance(real, list):
            raise SaltInvocationError(
                f"edge_ha:virtual_servers:{name}:real_servers must be 'auto' or a list")
        spec = {
            "name": name,
            "protocol": vs.get("protocol", "TCP"),
            "address": vs["address"],
            "port": vs["port"],
            # defaults as in edge_ha.normalize(): rr / NAT
            "scheduler": vs.get("lb_algo", vs.get("scheduler", "rr")),
            "forward": vs.get("lb_kind", vs.get("forward", "NAT")),
            "persistence_timeout": vs.get("persistence_timeout", 0) or 0,
            "destinations": [
                {"address": r["address"], "port": r.get("port", vs["port"]),
                 "weight": r.get("weight", 1)} for r in real
            ],
        }
        if vs.get("persistence_granularity"):
            spec["persistence_netmask"] = vs["persistence_granularity"]
        (salt_managed if manager == "salt" else keepalived_owned).append(spec)
    return salt_managed, keepalived_owned


def split_explicit(services):
    """Split an explicit ``services`` list by ``managed_by`` (default
    ``salt`` here: they were given to the Salt state). Returns
    ``(salt_managed, keepalived_owned)``."""
    if services is None:
        return [], []
    if not isinstance(services, list):
        raise SaltInvocationError("services must be a list of service mappings")
    salt_managed, keepalived_owned = [], []
    for spec in services:
        if not isinstance(spec, dict):
            raise SaltInvocationError(f"invalid service {spec!r}: expected a mapping")
        manager = str(spec.get("managed_by", "salt")).lower()
        if manager not in MANAGERS:
            raise SaltInvocationError(f"managed_by must be keepalived or salt, not {manager!r}")
        clean = {k: v for k, v in spec.items() if k not in ("managed_by", "name")}
        (salt_managed if manager == "salt" else keepalived_owned).append(clean)
    return salt_managed, keepalived_owned


def _protect_key(spec):
    if spec.get("fwmark"):
        return {"fwmark": spec["fwmark"], "family": spec.get("family", "inet")}
    return {"protocol": spec.get("protocol", "TCP"), "address": spec["address"],
            "port": spec["port"]}


def _strip(spec):
    return {k: v for k, v in spec.items() if k not in ("name", "managed_by")}


def _summary(counts):
    return ", ".join(f"{n} {op}" for op, n in sorted(counts.items())) or "nothing"


# --------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------


def synced(name, services=None, own_table=False, pillar="edge_ha", protect=None):
    """
    Make the IPVS table contain exactly the Salt-managed virtual services.

    name
        State id (free text).
    services
        Explicit list of services (normalized or keepalived-style dicts,
        each with its complete ``destinations``/``real_servers`` list).
        Items with ``managed_by: keepalived`` are only protected. When not
        given, the services come from the pillar (see ``pillar``).
    own_table
        Delete kernel services that are declared nowhere. Services that the
        pillar (or ``services``) says keepalived owns are never touched.
    pillar
        Pillar key of the edge_ha model (``virtual_servers`` and ``nodes``).
        Its keepalived-owned virtual servers are protected in both modes.
    protect
        Extra service ids (``TCP:198.18.0.1:80``, ``FWM:42`` ...) never to
        touch.

    CLI Example:

    .. code-block:: bash

        salt '*' state.single ipvs.synced name=edge-ipvs own_table=True test=True
    """
    ret = {"name": name, "result": False, "changes": {}, "comment": ""}
    test = bool(__opts__.get("test"))  # noqa: F821 - Salt dunder
    try:
        edge_ha = __salt__["pillar.get"](pillar, {}) if pillar else {}  # noqa: F821
        pillar_salt, pillar_keepalived = virtual_servers_from_pillar(edge_ha)
        if services is None:
            desired = [_strip(s) for s in pillar_salt]
            keepalived_owned = pillar_keepalived
            source = f"pillar {pillar}:virtual_servers"
        else:
            desired, explicit_keepalived = split_explicit(services)
            keepalived_owned = explicit_keepalived + pillar_keepalived
            source = "the services argument"
        protected = [_protect_key(s) for s in keepalived_owned] + list(protect or [])
        result = __salt__["ipvs.sync"](  # noqa: F821
            desired, own_table=own_table, protect=protected, test=test)
    except SaltInvocationError as exc:
        ret["comment"] = f"Invalid IPVS declaration: {exc}"
        return ret
    except CommandExecutionError as exc:
        info = getattr(exc, "info", None) or {}
        applied = info.get("applied") or []
        failed = info.get("failed") or []
        if applied:
            ret["changes"] = {"operations": [_describe(op) for op in applied]}
        if failed:
            ret["changes"]["failed"] = [f["error"] for f in failed]
        # .error: the message without Salt's "Additional info follows" dump
        ret["comment"] = getattr(exc, "error", None) or str(exc)
        return ret
    ops = result["operations"]
    owned_note = (f"; {len(keepalived_owned)} keepalived-owned service(s) left to keepalived"
                  if keepalived_owned else "")
    if not ops:
        ret["result"] = True
        ret["comment"] = (f"IPVS table already matches {len(desired)} Salt-managed "
                          f"service(s) from {source}{owned_note}")
        if result.get("kernel", "ok") != "ok":
            ret["comment"] += f" ({result['kernel']})"
        return ret
    ret["changes"] = {"operations": [_describe(op) for op in ops]}
    if test:
        ret["result"] = None
        ret["comment"] = f"Would apply {len(ops)} IPVS operation(s): {_summary(result['counts'])}"
        if result.get("kernel", "ok") != "ok":
            ret["comment"] += f" (planned against an empty table: {result['kernel']})"
    else:
        ret["result"] = True
        ret["comment"] = f"Applied {len(ops)} IPVS operation(s): {_summary(result['counts'])}"
    ret["comment"] += owned_note
    return ret


def _describe(op):
    """Same text as the execution module's describe_operation (kept here so
    the state does not need a second module call per operation)."""
    text = f"{op['op']} {op['service']}"
    if "dest" in op:
        text += f" {op['dest']}"
    if "changed" in op:
        text += " " + ", ".join(f"{k} {v[0]}->{v[1]}" for k, v in sorted(op["changed"].items()))
    elif op["op"] == "add_service":
        spec = op["spec"]
        text += f" scheduler={spec['scheduler']}"
        if spec.get("persistence_timeout"):
            text += f" persistence={spec['persistence_timeout']}s"
    elif op["op"] == "add_dest":
        text += f" {op['spec']['forward']} weight={op['spec']['weight']}"
    return text
