"""
The VRRP instances of LoadBalancer Services (issue #15) as pillar, on the master.

The runner (``edge.reconcile``) assigns addresses to LoadBalancer Services
from ``edge_ha:address_pools`` and records one VRRP instance per address in
``lb_instances.json`` among the controller's records (``edge_ha_core.state``:
the ``edge_ha_cache`` backend, default localfs, checksummed). This ext_pillar merges them into ``edge_ha:vrrp_instances``
of every pillar that has ``edge_ha:address_pools``, so the minions render
them (``state.apply edge``) and the master compiles the same model
(``pillar.show_pillar``): validated, with derived priorities, through the
same staged reload as any pillar change.

Only instances that still fit the pillar are merged (``edge_ha_core.lb.pillar_instances``:
their pool still there, their address in it, their VRID in its list, no name
the pillar uses itself). A pillar without ``address_pools`` gets nothing.

Master config:

.. code-block:: yaml

    ext_pillar:
      - edge_ha_lb: {}
"""

import logging

import salt.cache
from edge_ha_core import lb
from edge_ha_core import state

log = logging.getLogger(__name__)

__virtualname__ = "edge_ha_lb"

RECORD = "lb_instances.json"


def __virtual__():
    return __virtualname__


def records(opts):
    """The controller's records (``edge_ha_core.state``: the ``edge_ha_cache`` backend, default localfs)."""
    return state.StateStore.for_opts(opts, salt.cache.Cache)


def ext_pillar(minion_id, pillar, *args, **kwargs):  # pylint: disable=unused-argument
    """``{"edge_ha": {"vrrp_instances": {lb_*: ...}}}`` for a pillar with ``edge_ha:address_pools``, else ``{}``."""
    edge_ha = pillar.get("edge_ha") if isinstance(pillar, dict) else None
    if not isinstance(edge_ha, dict) or not edge_ha.get("address_pools"):
        return {}
    loaded = records(__opts__).load(RECORD, {})  # pylint: disable=undefined-variable
    if loaded.error:
        log.error("edge_ha_lb: %s; no LoadBalancer instances in the pillar of %s", loaded.error, minion_id)
        return {}
    data = loaded.data if isinstance(loaded.data, dict) else {}
    found = lb.pillar_instances(data.get("instances"), edge_ha)
    return {"edge_ha": {"vrrp_instances": found}} if found else {}
