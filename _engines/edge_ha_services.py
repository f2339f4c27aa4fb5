"""
Kubernetes LoadBalancer Services as master events (issue #15).

A Salt engine on the master: it lists the cluster's LoadBalancer Services
(``edge_k8s.load_balancer_services``), then watches them
(``edge_k8s.watch_load_balancer_services``) from the list's
resourceVersion, and fires a master event (``edge_ha/kubernetes/services``)
on each change, after a re-list (the watch expired: 410 Gone, or the API was
away) and every ``resync`` seconds. The reactor turns the event into
``edge.trigger``, which reconciles (coalesced with any other trigger): a new
LoadBalancer Service gets its address within seconds.

The event is a hint: the reconcile lists the Services itself. It carries no
minion ``id``; ``edge.trigger`` takes the tag only without one (events a
minion sends always name it).

The Kubernetes settings come from the runner's last good model
(the record ``desired.json`` in the controller's store, ``edge_ha_core.state``); while there is none, or it has no
``edge_ha:address_pools``, the engine waits and looks again.

Master config:

.. code-block:: yaml

    engines:
      - edge_ha_services:
          timeout: 60      # seconds per watch request
          resync: 300      # seconds between events without a change (0: never)
    reactor:
      - 'edge_ha/kubernetes/services':
        - /srv/salt-edge-ha/reactor/edge_ha.sls
"""

import logging
import time

import salt.cache
import salt.loader
import salt.utils.event
from edge_ha_core import state as edge_state

log = logging.getLogger(__name__)

__virtualname__ = "edge_ha_services"

TAG = "edge_ha/kubernetes/services"
IDLE = 5.0  # seconds between looks while there is nothing to watch
ERROR_BACKOFF = (1.0, 30.0)  # seconds after a failed call: first, cap (doubling)


def __virtual__():
    return __virtualname__


def _settings(opts):
    """The model's ``kubernetes`` section when it has address pools, else None."""
    loaded = edge_state.StateStore.for_opts(opts, salt.cache.Cache).load("desired.json", None)
    state = loaded.data if loaded.error is None else None
    model = state.get("model") if isinstance(state, dict) else None
    if not isinstance(model, dict) or not model.get("address_pools"):
        return None
    return dict(model.get("kubernetes") or {})


class _Watcher:
    def __init__(self, opts, timeout, resync, fire):
        self.opts = opts
        self.timeout = float(timeout)
        self.resync = float(resync)
        self.fire = fire
        self.version = None
        self.last_fired = 0.0
        self.failures = 0
        self.k8s = None

    def _fun(self, name):
        if self.k8s is None:
            self.k8s = salt.loader.raw_mod(self.opts, "edge_k8s", None)
        return self.k8s[name]

    def step(self):
        """One list or watch; returns seconds to sleep before the next."""
        kube = _settings(self.opts)
        if kube is None:
            self.version = None
            return IDLE
        try:
            if self.version is None:
                listing = self._fun("edge_k8s.load_balancer_services")(kubernetes=kube)
                self.version = listing["resource_version"]
                self._fire("list", count=len(listing["services"]))
            else:
                result = self._fun("edge_k8s.watch_load_balancer_services")(
                    self.version, timeout=self.timeout, kubernetes=kube)
                if result["expired"]:
                    self.version = None
                    return 0.0
                self.version = result["resource_version"] or self.version
                if result["events"]:
                    self._fire("change", events=[{k: e.get(k) for k in ("type", "namespace", "name")}
                                                 for e in result["events"][:20]])
                elif self.resync and time.monotonic() - self.last_fired >= self.resync:
                    self._fire("resync")
        except Exception as exc:  # pylint: disable=broad-except
            self.failures += 1
            self.version = None  # list again: a change may have been missed
            delay = min(ERROR_BACKOFF[1], ERROR_BACKOFF[0] * 2 ** (self.failures - 1))
            log.warning("edge_ha_services: %s; trying again in %.0fs", exc, delay)
            return delay
        self.failures = 0
        return 0.0

    def _fire(self, why, **data):
        self.last_fired = time.monotonic()
        self.fire(dict(data, why=why, time=time.time()), TAG)


def start(timeout=60, resync=300):
    """The engine's loop (runs until the master stops it)."""
    opts = __opts__  # pylint: disable=undefined-variable
    bus = salt.utils.event.get_master_event(opts, opts["sock_dir"], listen=False)
    watcher = _Watcher(opts, timeout, resync, bus.fire_event)
    log.info("edge_ha_services: watching LoadBalancer Services (timeout %ss, resync %ss)", timeout, resync)
    while True:
        delay = watcher.step()
        if delay:
            time.sleep(delay)
