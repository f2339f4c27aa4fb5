"""
Beacon: health of the local ingress controller.

Probes a health URL (default ``edge_ha:ingress:health_url``, e.g.
ingress-nginx's ``http://127.0.0.1:10254/healthz``) at every beacon interval
and fires only when the debounced verdict changes: ``fall`` consecutive
failures make the node unhealthy, ``rise`` consecutive successes healthy
again. The first verdict after the minion starts counts as a change.

Events: ``salt/beacon/<id>/ingress_health/healthy`` and
``.../unhealthy`` with ``healthy``, ``detail`` (e.g. ``HTTP 500``), ``url``.
The verdict is also recorded on the node (``edge_node.record_ingress_health``)
where the reconciler reads it.

.. code-block:: yaml

    beacons:
      ingress_health:
        - interval: 1
        - url: http://127.0.0.1:10254/healthz   # optional
        - timeout: 1                            # optional, seconds
        - fall: 3                               # optional
        - rise: 2                               # optional
"""

import time

import salt.utils.beacons

__virtualname__ = "ingress_health"

ALLOWED = ("interval", "url", "timeout", "fall", "rise")


def __virtual__():
    return __virtualname__


def validate(config):
    """Validate the beacon configuration."""
    if not isinstance(config, list):
        return False, "ingress_health beacon: configuration must be a list, e.g. [{url: ...}]"
    conf = salt.utils.beacons.list_to_dict(config)
    unknown = sorted(set(conf) - set(ALLOWED))
    if unknown:
        return False, f"ingress_health beacon: unknown option(s) {', '.join(unknown)}; allowed: {', '.join(ALLOWED)}"
    url = conf.get("url")
    if url is not None and (not isinstance(url, str) or not url.startswith(("http://", "https://"))):
        return False, "ingress_health beacon: url must be an http:// or https:// URL"
    for key in ("fall", "rise"):
        value = conf.get(key, 1)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 100:
            return False, f"ingress_health beacon: {key} must be an integer from 1 to 100"
    timeout = conf.get("timeout", 1)
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not 0 < timeout <= 60:
        return False, "ingress_health beacon: timeout must be a number of seconds above 0 and up to 60"
    return True, "valid ingress_health beacon configuration"


def debounce(memory, healthy, fall, rise):
    """
    Feed one probe result. Returns the new verdict when it changes, else None.
    ``memory`` keeps ``verdict`` (None until the first), ``fails``, ``oks``.
    """
    if healthy:
        memory["oks"] = memory.get("oks", 0) + 1
        memory["fails"] = 0
        if memory.get("verdict") is not True and memory["oks"] >= rise:
            memory["verdict"] = True
            return True
    else:
        memory["fails"] = memory.get("fails", 0) + 1
        memory["oks"] = 0
        if memory.get("verdict") is not False and memory["fails"] >= fall:
            memory["verdict"] = False
            return False
    return None


def beacon(config):
    """Probe once; fire when the debounced verdict changes."""
    conf = salt.utils.beacons.list_to_dict(config)
    mod = __salt__  # pylint: disable=undefined-variable
    memory = __context__.setdefault("edge_ha_ingress_health", {})  # pylint: disable=undefined-variable
    if "defaults" not in memory:
        memory["defaults"] = mod["edge_ha.model"]()["ingress"]
    defaults = memory["defaults"]
    probe = mod["edge_node.probe_ingress"](url=conf.get("url"), timeout=conf.get("timeout"))
    verdict = debounce(memory, probe["healthy"], conf.get("fall", defaults["fall"]), conf.get("rise", defaults["rise"]))
    if verdict is None:
        return []
    seen = time.time()
    digest = mod["edge_node.record_ingress_health"](verdict, probe["detail"])
    # ``report``: the master's trigger waits until the mine holds this report (or a later one) before it
    # reconciles; without it a reconcile could read the report from before the verdict and do nothing
    return [{
        "tag": "healthy" if verdict else "unhealthy",
        "healthy": verdict,
        "detail": probe["detail"],
        "url": probe["url"],
        "time": seen,
        "seen": seen,
        "report": digest,
    }]
