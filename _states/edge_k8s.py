"""
States for the Kubernetes side of salt-edge-ha.

``edge_k8s.service_external_ips`` keeps the managed part of the ingress
controller Service's ``spec.externalIPs`` in line with the edge (the VIPs,
plus the edge nodes whose ingress pod is ready); addresses added by hand are
kept. It uses the ``edge_k8s`` execution module and the pillar key
``edge_ha:kubernetes`` (see ``docs/kubernetes.md``).

.. code-block:: yaml

    ingress-external-ips:
      edge_k8s.service_external_ips:
        - reason: highstate on {{ grains['id'] }}
"""

from salt.exceptions import CommandExecutionError, SaltInvocationError

__virtualname__ = "edge_k8s"

__load__ = ["service_external_ips"]


def __virtual__():
    if "edge_k8s.set_external_ips" in __salt__:  # noqa: F821
        return __virtualname__
    return (False, "edge_k8s: the edge_k8s execution module is not available (is the kubernetes client installed?)")


def _changes(plan):
    changes = {}
    if plan["old"] != plan["new"]:
        changes["external_ips"] = {"old": plan["old"], "new": plan["new"]}
    if set(plan["managed_before"]) != set(plan["managed"]):
        changes["managed"] = {"old": plan["managed_before"], "new": plan["managed"]}
    return changes


def service_external_ips(
    name,
    vips=None,
    nodes=None,
    healthy=None,
    policy=None,
    reason=None,
    address_source="pillar",
    kubernetes=None,
):
    """
    Ensure the managed externalIPs of the ingress controller Service are right.

    The change is computed first (a read); with ``test=True`` the result is
    None and ``changes`` shows the list before/after, nothing is written.
    When the list is already right nothing is written at all.

    name
        the state ID (free text; the Service comes from ``edge_ha:kubernetes:service``)
    vips
        VIP addresses (default: the pillar's ``vrrp_instances:*:virtual_ipaddress``)
    nodes
        edge node map (default: ``edge_ha:nodes``)
    healthy
        edge nodes to count as healthy (default: those with a ready ingress pod)
    policy
        ``vips_and_healthy_nodes`` or ``vips_only`` (default: from the pillar)
    reason
        text for the Kubernetes Event (default: ``salt state <name>``)
    address_source
        ``pillar`` (``edge_ha:nodes:<n>:address``) or ``kubernetes`` (node InternalIP)
    kubernetes
        the ``edge_ha:kubernetes`` section (default: from the pillar)

    CLI Example:

    .. code-block:: bash

        salt edge1 state.single edge_k8s.service_external_ips name=ingress test=True
    """
    ret = {"name": name, "result": False, "changes": {}, "comment": ""}
    args = {
        "vips": vips,
        "nodes": nodes,
        "healthy": healthy,
        "policy": policy,
        "reason": reason or f"salt state {name}",
        "address_source": address_source,
        "kubernetes": kubernetes,
    }
    try:
        plan = __salt__["edge_k8s.set_external_ips"](test=True, **args)  # noqa: F821
    except (CommandExecutionError, SaltInvocationError) as exc:
        ret["comment"] = str(exc)
        return ret

    warnings = list(plan.get("warnings") or [])
    if not plan["changed"]:
        ret["result"] = True
        ret["comment"] = f"externalIPs already as desired: {plan['old']}"
        if warnings:
            ret["comment"] += "\n" + "\n".join(warnings)
        return ret

    if __opts__.get("test"):  # noqa: F821
        ret["result"] = None
        ret["changes"] = _changes(plan)
        ret["comment"] = f"externalIPs would change from {plan['old']} to {plan['new']}"
        if warnings:
            ret["comment"] += "\n" + "\n".join(warnings)
        return ret

    try:
        done = __salt__["edge_k8s.set_external_ips"](test=False, **args)  # noqa: F821
    except (CommandExecutionError, SaltInvocationError) as exc:
        ret["comment"] = str(exc)
        return ret

    warnings = list(done.get("warnings") or [])
    ret["result"] = True
    if not done["changed"]:
        ret["comment"] = f"externalIPs already as desired (changed concurrently): {done['old']}"
    else:
        ret["changes"] = _changes(done)
        ret["comment"] = f"externalIPs changed from {done['old']} to {done['new']} ({done['attempts']} attempt(s))"
        event = done.get("event") or {}
        if not event.get("created"):
            warnings.append(f"the change is done but the Kubernetes Event was not created: {event.get('error')}")
    if warnings:
        ret["comment"] += "\n" + "\n".join(warnings)
    return ret
