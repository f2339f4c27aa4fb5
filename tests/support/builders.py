"""One set of test builders: models from the example pillar, node reports as edge_node.report sends them."""

import copy
import pathlib

import yaml

from edge_ha_core import fleet
from edge_ha_core import model as edge_model

REPO = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = yaml.safe_load((REPO / "pillar" / "edge_ha.sls.example").read_text())
VIP = "198.18.0.100"


def example_pillar():
    """The shipped example's ``edge_ha`` value (a fresh copy)."""
    return copy.deepcopy(EXAMPLE["edge_ha"])


PRIORITIES3 = {"edge1": 150, "edge2": 140, "edge3": 130}


def model3():
    """The example with a third node and priorities edge1 150, edge2 140, edge3 130 (given in the
    pillar: derived priorities would order the nodes by a hash, see model.owner_order)."""
    data = example_pillar()
    data["nodes"]["edge3"] = {"address": "198.18.0.13", "interface": "eth0"}
    data["vrrp_instances"]["VI_INGRESS"]["priority"] = dict(PRIORITIES3)
    return edge_model.normalize(data)


def report(node, state="BACKUP", prio=100, vips=(), running=True, healthy=True, out=False, reason="",
           standby=False, drained=(), since=None, digest=None, out_since=None, time=2000.0):
    """A node report as ``edge_node.report`` returns it (a dict: the wire format); built at ``time``."""
    data = {
        "node": node,
        "time": time,
        "keepalived": {"running": running, "instances": {"VI_INGRESS": {
            "state": state, "priority": prio, "since": 1000.0 + prio if since is None else since,
            "vips_present": list(vips)}}},
        "out_of_service": {"out_of_service": out, "reason": reason, "since": out_since},
        "standby": {"standby": standby, "reason": "", "since": None},
        "ingress": {"healthy": healthy},
        "config": {"digest": digest},
        "drained_nodes": list(drained),
    }
    return data


def typed(reports):
    """``{node: NodeReport or None}`` from builder dicts."""
    return fleet.as_reports(reports)


def master_opts(cachedir, **extra):
    """A salt-master's opts (Salt's defaults, as a running master has them) with ``cachedir``: Salt 3006's
    cache loader finds no ``localfs`` with a bare ``{"cachedir": ...}``."""
    import salt.config  # pylint: disable=import-outside-toplevel

    return dict(salt.config.DEFAULT_MASTER_OPTS, cachedir=str(cachedir), **extra)
