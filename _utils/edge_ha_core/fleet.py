"""
The fleet's view: what each edge node reports about itself, typed, and the
answers derived from it once, here: who holds which VIP, which holders are
live or stale, who VRRP elects, who split the brain, whether a node has
handed its VIPs over.

A ``NodeReport`` is built from what a node published (``edge_node.report``,
stored by the master in Salt's mine under the minion's verified id); the
planner, the runner, the report and the tests all read it through the
functions here.
"""

import dataclasses
import ipaddress
import logging
from typing import Dict, Optional, Tuple

log = logging.getLogger(__name__)

MINE_KEY = "edge_ha_report"  # the mine entry edge_node.publish writes


@dataclasses.dataclass(frozen=True)
class InstanceStatus:
    """One VRRP instance on one node, as the node saw it."""

    name: str
    state: str = "UNKNOWN"
    priority: Optional[int] = None
    since: Optional[float] = None
    vips_present: Tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Flag:
    """A node-local flag file (out of service, standby): set or not, why, since when."""

    on: bool = False
    reason: str = ""
    since: Optional[float] = None


@dataclasses.dataclass(frozen=True)
class NodeReport:
    """What one edge node reports about itself."""

    node: str
    time: float = 0.0
    running: bool = False  # keepalived runs and is not stopping
    stopping: bool = False  # keepalived runs but has recorded STOP (a graceful stop, its VIPs already given up)
    instances: Dict[str, InstanceStatus] = dataclasses.field(default_factory=dict)
    out_of_service: Flag = Flag()
    standby: Flag = Flag()
    drained_nodes: Optional[Tuple[str, ...]] = None  # None: the node did not say
    ingress_healthy: Optional[bool] = None
    config_digest: Optional[str] = None  # desired-state digest of the keepalived.conf on disk
    quiesced: Optional[bool] = None  # nftables quiesce table present (None: unknown)
    received: Optional[float] = None  # when the master stored it (master clock)
    digest: Optional[str] = None  # the digest the node published it with (events name it)

    @property
    def vips_present(self):
        """Every VIP on this node's interfaces (whatever keepalived's state)."""
        return tuple(sorted({v for i in self.instances.values() for v in i.vips_present}))

    def holds(self, instance, vip):
        status = self.instances.get(instance)
        return bool(status and vip in status.vips_present)

    @classmethod
    def from_dict(cls, data):
        """From ``edge_node.report()`` output (a mapping); raises ValueError if it is not one."""
        if not isinstance(data, dict) or not isinstance(data.get("keepalived"), dict):
            raise ValueError("not an edge_node report")
        keepalived = data["keepalived"]
        instances = {}
        for name, inst in (keepalived.get("instances") or {}).items():
            inst = inst if isinstance(inst, dict) else {}
            instances[str(name)] = InstanceStatus(
                name=str(name),
                state=str(inst.get("state") or "UNKNOWN"),
                priority=inst.get("priority"),
                since=inst.get("since"),
                vips_present=tuple(str(v) for v in inst.get("vips_present") or ()),
            )

        def flag(value, key):
            value = value if isinstance(value, dict) else {}
            return Flag(bool(value.get(key)), str(value.get("reason") or ""), value.get("since"))

        drained = data.get("drained_nodes")
        ingress = data.get("ingress")
        healthy = ingress.get("healthy") if isinstance(ingress, dict) else None
        config = data.get("config") if isinstance(data.get("config"), dict) else {}
        return cls(
            node=str(data.get("node") or ""),
            time=float(data.get("time") or 0.0),
            running=bool(keepalived.get("running")),
            stopping=bool(keepalived.get("stopping")),
            instances=instances,
            out_of_service=flag(data.get("out_of_service"), "out_of_service"),
            standby=flag(data.get("standby"), "standby"),
            drained_nodes=None if drained is None else tuple(sorted(str(n) for n in drained)),
            ingress_healthy=None if healthy is None else bool(healthy),
            config_digest=config.get("digest"),
            quiesced=data.get("quiesced"),
            received=data.get("received"),
            digest=str(data["digest"]) if data.get("digest") else None,
        )


Reports = Dict[str, Optional[NodeReport]]


def keepalived_stopping(recorded, started_at=None):
    """
    True when keepalived is shutting down: every instance's last recorded state
    (``{instance: {"state", "time"}}`` from the notify FIFO) is STOP, recorded
    after the running keepalived started (``started_at``, e.g. the mtime of its
    VRRP pid file; None: unknown). keepalived writes STOP only when it stops,
    after it has dropped its VIPs and sent its priority-0 advert; the process
    lives on for about a second after that.
    """
    if not recorded:
        return False
    for seen in recorded.values():
        if not isinstance(seen, dict) or seen.get("state") != "STOP":
            return False
        if started_at is not None and float(seen.get("time") or 0.0) < started_at:
            return False
    return True


def as_reports(reports):
    """``{node: NodeReport or None}`` from reports that may still be dicts (a shape that is not a report: None)."""
    out = {}
    for node, report in (reports or {}).items():
        if report is None or isinstance(report, NodeReport):
            out[node] = report
            continue
        try:
            out[node] = NodeReport.from_dict(report)
        except ValueError:
            out[node] = None
    return out


def mine_entry(cache, node):
    """
    ``(report dict or None, when the master stored it)`` from Salt's cache
    (a ``salt.cache.Cache``): the mine bank of Salt 3008 (``mine``/<id>),
    then the older one (``minions/<id>``/``mine``).
    """
    for bank, key in (("mine", node), (f"minions/{node}", "mine")):
        try:
            data = cache.fetch(bank, key)
        except Exception as exc:  # pylint: disable=broad-except
            log.warning("edge: cannot read the mine of %s: %s", node, exc)
            return None, None
        if isinstance(data, dict) and MINE_KEY in data:
            try:
                stamp = cache.updated(bank, key)
            except Exception:  # pylint: disable=broad-except
                stamp = None
            return data[MINE_KEY], stamp
    return None, None


def read_reports(cache, nodes, now, max_age):
    """
    ``{node: NodeReport or None}`` from the mine: None when the node has not
    published, its report was stored more than ``max_age`` seconds before
    ``now``, it names another node, or it is not a report.
    """
    reports = {}
    for node in sorted(nodes):
        data, stamp = mine_entry(cache, node)
        if not isinstance(data, dict) or data.get("node") != node or (stamp is not None and now - stamp > max_age):
            reports[node] = None
            continue
        try:
            reports[node] = NodeReport.from_dict(dict(data, received=stamp))
        except (ValueError, TypeError):
            log.warning("edge: the report of %s is not one", node)
            reports[node] = None
    return reports


def reachable(model, reports):
    """The edge nodes with a report, by name."""
    return sorted(n for n in model["nodes"] if reports.get(n))


def node_healthy(report):
    """Ingress verdict of one node report (None: no report)."""
    if not report:
        return None
    return bool(report.ingress_healthy)


def vip_holders(model, reports, running_only=True):
    """``{vip: [nodes that have it on their interface]}`` (only nodes whose keepalived runs, by default)."""
    out = {}
    for inst in model["vrrp_instances"].values():
        for vip in inst["vips"]:
            out[vip] = sorted(
                n for n in inst["nodes"]
                if reports.get(n) and (reports[n].running or not running_only) and reports[n].holds(inst["name"], vip)
            )
    return out


def live_owners(model, reports):
    """``{vip: node}`` for each VIP held by exactly one node whose keepalived runs."""
    return {v: h[0] for v, h in vip_holders(model, reports).items() if len(h) == 1}


def stale_vips(report):
    """The VIPs on a node's interfaces (a stale copy when its keepalived is not running)."""
    return list(report.vips_present) if report else []


def _rank(model, inst, node):
    """VRRP's election order: configured priority, then the higher address."""
    return inst["priorities"][node], ipaddress.ip_address(model["nodes"][node]["address"])


def vrrp_winner(model, reports, instance, exclude=(), ready_override=()):
    """
    The node VRRP elects for ``instance`` among nodes whose keepalived runs
    and which are neither out of service nor in standby (highest configured
    priority, then address); ``ready_override`` counts those nodes as ready
    whatever their flags say (e.g. the node an undrain is about to restore).
    None when nobody is ready.
    """
    inst = model["vrrp_instances"][instance]
    ready = [
        n for n in inst["nodes"]
        if n not in exclude and reports.get(n) and reports[n].running
        and (n in ready_override or (not reports[n].out_of_service.on and not reports[n].standby.on))
    ]
    return max(ready, key=lambda n: _rank(model, inst, n)) if ready else None


def concurrent(reports, holders, instance):
    """
    Whether the holders' reports describe the same moment: every report was
    built at or after the latest transition among them. A report older than
    another holder's takeover may describe a VIP that is already gone (an owner
    stopping gracefully gives its VIP up just as the backup takes it).
    """
    latest = max((reports[n].instances[instance].since or 0.0) for n in holders
                 if instance in reports[n].instances)
    return all(reports[n].time >= latest for n in holders)


def split_brain_losers(model, reports, reason="split brain"):
    """
    Nodes to fence because another running keepalived holds the same VIP at
    the same time (``concurrent`` reports). Deterministic: the holder VRRP
    would elect keeps it. ``{node: reason}``.
    """
    losers = {}
    for inst in model["vrrp_instances"].values():
        holders = [
            n for n in inst["nodes"]
            if reports.get(n) and reports[n].running and any(reports[n].holds(inst["name"], v) for v in inst["vips"])
        ]
        if len(holders) < 2 or not concurrent(reports, holders, inst["name"]):
            continue
        winner = max(holders, key=lambda n: _rank(model, inst, n))
        for node in holders:
            if node != winner:
                losers.setdefault(node, f"{reason}: {winner} keeps {inst['name']}")
    return losers


def holds_any(report):
    """Whether a node has any VIP on its interfaces."""
    return bool(report and report.vips_present)


def handover_state(model, reports, node, vips=None):
    """
    Whether ``node`` has handed its VIPs over: it holds none of the VIPs of
    its instances (or of ``vips``: the ones it held when the handover began;
    a VIP just added to the pillar has no holder yet), and each of them is
    held by exactly one other node with a running keepalived. Returns
    ``(done, {vip: holders})``.
    """
    holders = vip_holders(model, reports, running_only=False)
    mine = {v: holders[v] for inst in model["vrrp_instances"].values() if node in inst["nodes"] for v in inst["vips"]
            if vips is None or v in vips}
    live = vip_holders(model, reports)
    done = all(node not in h and len(live[v]) == 1 for v, h in mine.items())
    return done, mine


def rollout_order(nodes, reports):
    """Staged reload order: nodes holding no VIP first (BACKUPs), then the holders (owners) last; by name."""
    return sorted(nodes, key=lambda n: (holds_any(reports.get(n)), n))


def rollout_stages(nodes, reports, in_place=()):
    """
    The staged reload's groups, reloaded one group after the other: first
    every node that holds no VIP, together (a config that kills keepalived
    there costs no VIP, and the next group waits until they all run it);
    then the holders that reload in place (``in_place``: keepalived keeps
    their instances' state), together; then each holder that hands its VIPs
    over first, alone. By name within a group.
    """
    order = rollout_order(nodes, reports)
    backups = [n for n in order if not holds_any(reports.get(n))]
    kept = [n for n in order if n not in backups and n in in_place]
    handed = [[n] for n in order if n not in backups and n not in kept]
    return [group for group in [backups, kept] if group] + handed
