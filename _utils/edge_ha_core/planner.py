"""
The planner: one pure function from what is known to what must change.

``plan(model, reports, kube, drains, now, desired)`` reads the model (the
last good one), the nodes' typed reports (``fleet.NodeReport``), what
Kubernetes says (ingress pod readiness), the drain records and the desired
config digest of every node, and returns a ``Plan``. It does nothing itself:
the runner's actuator applies a plan, data-plane safety first (fence,
release, split-brain fence), then flags, re-renders and the Service.
"""

import dataclasses
import datetime
import time
from typing import Dict, List, Optional

from edge_ha_core import fleet

FENCE_REASON = "ingress unhealthy"
SPLIT_REASON = "split brain"
SPLIT_HOLD = 30  # seconds a split-brain fence stays before it is lifted to test the path again
HANDOVER_PREFIX = "handover: "  # the out-of-service reason while an operation hands a node's VIPs over
RECOVERED = "recovered"  # the source of a drain read back from the nodes' lists (the record was unreadable)


@dataclasses.dataclass
class KubeView:
    """What Kubernetes said in this round (None: not known, e.g. the API did not answer)."""

    pods_ready: Optional[Dict[str, bool]] = None


@dataclasses.dataclass
class Plan:
    """What one reconcile must change. Node lists are sorted; ``notes`` explain what is left as it is."""

    fence: List[str] = dataclasses.field(default_factory=list)
    unfence: List[str] = dataclasses.field(default_factory=list)
    release: List[str] = dataclasses.field(default_factory=list)
    split_fence: Dict[str, str] = dataclasses.field(default_factory=dict)
    service_nodes: List[str] = dataclasses.field(default_factory=list)
    standby_on: List[str] = dataclasses.field(default_factory=list)
    standby_off: List[str] = dataclasses.field(default_factory=list)
    drained_lists: List[str] = dataclasses.field(default_factory=list)
    lift_handover: List[str] = dataclasses.field(default_factory=list)  # left by an interrupted operation
    unquiesce: List[str] = dataclasses.field(default_factory=list)  # left by an interrupted operation
    rerender: List[str] = dataclasses.field(default_factory=list)
    notes: List[str] = dataclasses.field(default_factory=list)

    @property
    def safety(self):
        """Whether the plan has data-plane safety actions (they go before anything else)."""
        return bool(self.fence or self.release or self.split_fence)

    @property
    def node_jobs(self):
        """How many minion jobs applying the plan sends (re-renders count one each)."""
        return (len(self.fence) + len(self.unfence) + len(self.release) + len(self.split_fence)
                + len(self.standby_on) + len(self.standby_off) + len(self.drained_lists) + len(self.rerender)
                + len(self.lift_handover) + len(self.unquiesce))

    @property
    def repairs(self):
        """What an interrupted operation left behind and this plan undoes: ``[(node, what)]``."""
        return ([(n, "handover flag (out of VIP ownership) lifted") for n in self.lift_handover]
                + [(n, "quiesce table (new connections to its VIPs dropped) removed") for n in self.unquiesce])

    def to_dict(self):
        return dataclasses.asdict(self)


def stale_copies(model, reports, stopped):
    """
    Nodes whose keepalived is not running but whose interface still holds
    VIPs: ``(release, waiting)``. A stale copy is released once a live node
    holds each of its VIPs, as a report built no earlier than the stopped
    node's own says (a report from before the kill can show a node that held
    the VIP a moment ago: releasing on it would leave nobody answering until
    the backups' master-down interval ends); until then the killed node is
    what still answers.
    """
    live = fleet.vip_holders(model, reports)
    leftover = {n: fleet.stale_vips(reports[n]) for n in stopped}

    def taken_over(node, vip):
        return any(reports[h].time >= reports[node].time for h in live.get(vip) or ())

    release = sorted(n for n, vips in leftover.items() if vips and all(taken_over(n, v) for v in vips))
    waiting = {n: vips for n, vips in leftover.items() if vips and n not in release}
    return release, waiting


def handover_left(reports):
    """
    Nodes out of VIP ownership for a handover. An operation (drain, undrain,
    staged reload) sets this flag and lifts it before it returns, and the
    plan is only applied under the lock that operations hold: a flag seen
    here was left by an operation that was interrupted (process killed,
    master restarted).
    """
    return sorted(n for n, r in reports.items()
                  if r and r.out_of_service.on and r.out_of_service.reason.startswith(HANDOVER_PREFIX))


def quiesce_left(reports):
    """Nodes with the quiesce table (new connections dropped): left by an interrupted operation, as above."""
    return sorted(n for n, r in reports.items() if r and r.quiesced)


def drains_from_reports(reports, error):
    """
    The safe reading of an unreadable drain record: every node that any edge
    node's report lists as drained stays drained (``source: recovered``).
    """
    names = sorted({n for r in reports.values() if r and r.drained_nodes for n in r.drained_nodes})
    return {n: {"reason": f"kept drained: the drain record is unreadable ({error})", "since": None,
                "source": RECOVERED} for n in names}


def split_fences_to_lift(reports, fenced, splitting, now, hold):
    """Split-brain fences older than ``hold`` seconds whose node no longer splits (the path is tested again)."""
    return {
        n for n in fenced
        if n not in splitting and now - (reports[n].out_of_service.since or now) >= hold
    }


def config_to_rerender(model, reports, desired):
    """Nodes whose keepalived runs a config other than the desired one (``desired``: ``{node: digest}``)."""
    if desired is None:
        return []
    return sorted(
        n for n in model["nodes"]
        if reports.get(n) and reports[n].running and n in desired and reports[n].config_digest != desired[n]
    )


def plan(model, reports, kube=None, drains=None, now=None, desired=None, split_hold=SPLIT_HOLD):
    """
    The desired changes (a ``Plan``).

    reports
        ``{node: NodeReport or None}`` (None: no fresh report from the node)
    kube
        ``KubeView`` (ingress pod readiness), or None if unknown
    drains
        ``{node: {reason, since, source}}``: drained nodes
    desired
        ``{node: digest}`` of the keepalived config each node should run, or
        None to skip the comparison
    """
    reports = fleet.as_reports(reports)
    drains = drains or {}
    pods_ready = kube.pods_ready if kube else None
    now = time.time() if now is None else now
    out = Plan()
    notes = out.notes
    reachable = fleet.reachable(model, reports)
    for node in sorted(set(model["nodes"]) - set(reachable)):
        notes.append(f"{node}: no answer from the minion (no fresh report in the mine); left as it is")
    stopped = {n for n in reachable if not reports[n].running}
    out.release, waiting = stale_copies(model, reports, stopped)
    for node, vips in sorted(waiting.items()):
        notes.append(f"{node}: keepalived is not running; it still answers for {', '.join(vips)} "
                     "until a backup takes over (then the copy is removed)")
    for node in sorted(stopped):
        if reports[node].stopping:
            notes.append(f"{node}: keepalived is stopping (it has given up its VIPs)")
        else:
            notes.append(f"{node}: keepalived is not running (not restarted by reconcile; state.apply starts it)")
    healthy = {n for n in reachable if fleet.node_healthy(reports[n])}
    # a handover flag left by an interrupted operation is lifted (or replaced by a fence) below
    leftover = set(handover_left({n: reports[n] for n in reachable}))
    out_now = {n for n in reachable if reports[n].out_of_service.on} - leftover
    ours = {n for n in out_now if reports[n].out_of_service.reason == FENCE_REASON}
    split = fleet.split_brain_losers(model, reports, SPLIT_REASON)
    split_fenced = {n for n in out_now if reports[n].out_of_service.reason.startswith(SPLIT_REASON)}
    lift = split_fences_to_lift(reports, split_fenced, split, now, split_hold)
    for node in sorted(split_fenced - lift):
        notes.append(f"{node}: out of VIP ownership ({reports[node].out_of_service.reason})")
    fence = sorted(set(reachable) - healthy - out_now - set(split))
    unfence = sorted((ours & healthy) | (lift & healthy))
    in_service = (set(reachable) - out_now - set(fence)) | set(unfence)
    if fence and not in_service:
        notes.append("every reachable node's ingress is unhealthy: not taking the last ones ("
                     + ", ".join(fence) + ") out of VIP ownership")
        in_service |= set(fence)
        fence = []
    out.fence, out.unfence = fence, unfence
    out.service_nodes = sorted(
        n for n in in_service - stopped
        if n in healthy and (pods_ready is None or pods_ready.get(n, False))
        and n not in split and n not in split_fenced - lift and n not in drains
    )
    out.split_fence = {n: r for n, r in sorted(split.items()) if n not in out_now}
    standby = {n for n in reachable if reports[n].standby.on}
    want_list = tuple(sorted(drains))
    out.drained_lists = sorted(
        n for n in reachable if reports[n].drained_nodes is not None and reports[n].drained_nodes != want_list
    )
    out.standby_on = sorted(set(drains) & set(reachable) - standby)
    out.lift_handover = sorted(leftover - set(out.fence))
    out.unquiesce = quiesce_left({n: reports[n] for n in reachable})
    for node, what in out.repairs:
        notes.append(f"{node}: left by an interrupted operation: {what}")
    out.standby_off = sorted(standby - set(drains))
    for node in sorted(drains):
        why = drains[node].get("reason") or drains[node].get("source") or ""
        notes.append(f"{node}: drained ({why})")
    out.rerender = config_to_rerender(model, reports, desired)
    return out


# ------------------------------------------------ staged reload outcomes

REFUSED = "refused"
TRANSIENT = "transient"
RETRY_BASE = 5.0  # seconds before the first retry of a transient failure; doubles per attempt
RETRY_MAX = 300.0


@dataclasses.dataclass(frozen=True)
class ApplyOutcome:
    """What ``state.apply edge`` on one node came to: ``ok``, or ``refused``/``transient`` with the reason."""

    kind: str
    error: Optional[str] = None


def _first_line(text):
    return (str(text).strip().splitlines() or [""])[0]


def classify_apply(applied):
    """
    Sort a node's ``state.apply edge`` return into ``ok``, ``refused`` (the
    keepalived config itself was refused: the pillar model or ``keepalived -t``
    said no, or keepalived did not run with it: remembered as failed, not
    retried until it changes) or ``transient`` (no answer in time, another
    state run in progress, a state other than keepalived's failed: retried
    with backoff, never held against the config).
    """
    if not isinstance(applied, dict) or not applied:
        if isinstance(applied, list) and any("is running as PID" in str(a) for a in applied):
            return ApplyOutcome(TRANSIENT, "another state run is in progress: " + _first_line(applied[0]))
        return ApplyOutcome(TRANSIENT, f"no usable answer from state.apply: {_first_line(applied)[:300] or 'none'}")
    failed = {k: v for k, v in applied.items() if not (isinstance(v, dict) and v.get("result"))}
    if not failed:
        return ApplyOutcome("ok")
    comments = " | ".join(_first_line(v.get("comment", "")) if isinstance(v, dict) else _first_line(v)
                          for v in failed.values())[:600]
    ours = [v for k, v in failed.items()
            if isinstance(v, dict) and str(k).startswith("keepalived_|-") and str(k).endswith("_|-managed")]
    refusal = ("nothing changed", "is not running after loading")
    if ours and any(any(r in str(v.get("comment", "")) for r in refusal) for v in ours):
        return ApplyOutcome(REFUSED, "state.apply edge failed: " + comments)
    return ApplyOutcome(TRANSIENT, "state.apply edge failed: " + comments)


def retry_backoff(attempts):
    """Seconds to wait before retrying a node after ``attempts`` transient failures in a row."""
    return min(RETRY_MAX, RETRY_BASE * 2 ** max(0, attempts - 1))


def retry_due(retries, node, digest, now):
    """Whether a node whose staged reload failed transiently may be tried again now (always, for a new config)."""
    entry = retries.get(node) or {}
    return entry.get("digest") != digest or now >= float(entry.get("next") or 0)


# ------------------------------------------------ triggers a reconcile already covered

@dataclasses.dataclass(frozen=True)
class ReconcileStart:
    """When the latest finished reconcile began (master clock) and the report digests it read, by node."""

    time: float
    reports: Dict[str, Optional[str]]

    @classmethod
    def from_dict(cls, data):
        """From its record; None when the record is not one (then nothing counts as covered)."""
        if not isinstance(data, dict) or not isinstance(data.get("reports"), dict):
            return None
        try:
            return cls(float(data["time"]), {str(k): (str(v) if v else None) for k, v in data["reports"].items()})
        except (KeyError, TypeError, ValueError):
            return None

    @classmethod
    def of(cls, when, reports):
        return cls(float(when), {n: (r.digest if r else None) for n, r in reports.items()})


def trigger_covered(start, arrived, node=None, mine_digest=None, names_report=False):
    """
    Whether an event needs no reconcile of its own: a reconcile (finished:
    only those are recorded) began after the event reached the master (``arrived``, master clock) and, for an
    event that names a node's report (``names_report``), read the report the
    mine holds for ``node`` now (``mine_digest``, None: none). A reconcile that
    began later saw everything the event could tell; a burst that the
    reactor hands over one by one, seconds late, then costs one run.
    """
    if start is None or arrived is None or start.time <= arrived:
        return False
    if not names_report:
        return True
    return node in start.reports and start.reports[node] == mine_digest


def stamp_time(stamp):
    """Seconds since the epoch of Salt's ``_stamp`` (ISO 8601, UTC; naive in Salt 3006/3007), None if not one."""
    if not isinstance(stamp, str) or not stamp:
        return None
    try:
        when = datetime.datetime.fromisoformat(stamp)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.timestamp()


def keeps_state_on_reload(report, planned):
    """
    Whether a node reloads in place, from its report and its
    ``keepalived.plan`` answer (rendered from a fresh pillar): the plan is
    valid and changed, and no instance it holds VIPs for loses its VRRP state
    on the reload. Anything else (no answer, an older plan format, no change
    seen): False, the node hands its VIPs over first.
    """
    if not isinstance(planned, dict) or not planned.get("valid") or "state_lost_on_reload" not in planned:
        return False
    if not planned.get("changed"):
        return False  # the node sees no change: it cannot have rendered the new config; hand over to be safe
    held = {name for name, inst in (report.instances.items() if report else ()) if inst.vips_present}
    return not held & set(planned["state_lost_on_reload"] or ())
