"""
The master side of salt-edge-ha: a controller that keeps the edge in line,
and the operator's commands.

State, not polling. Every edge node pushes its report (``edge_node.report``:
keepalived state and VIPs really on its interfaces, flags, ingress health,
the digest of the keepalived.conf it runs) into the master's mine when it
changes and at a slow heartbeat (the ``vrrp`` beacon calls
``edge_node.publish``). Salt stores mine data under the id the master
verified for the sending minion, so a minion cannot write another's report;
events, which any minion can forge, are only hints to look now.

``edge.reconcile`` is level-triggered and cheap:

1. the desired state: the last good model of the ``edge_ha`` pillar, kept in
   the record ``desired.json`` (``_records``) and compiled again on a manual
   reconcile, on the master's schedule, and when older than
   ``edge_ha_model_ttl``; a pillar that fails validation leaves the last good
   model in force, and its errors show in ``edge.vip_report``, the history
   and a Kubernetes Event (``PillarInvalid``);
2. the reports, read from the mine (no job to any minion); a report older
   than ``edge_ha_report_max_age`` counts as no answer;
3. one pure plan (``edge_ha_core.planner.plan``) from the model, the
   reports, ingress pod readiness, the drain records and each node's desired
   config digest;
4. the actuator applies it: data-plane safety first (fence a node whose
   ingress is unhealthy, remove a stale VIP copy, fence a split brain), each
   a job with a short timeout to the nodes concerned only; then flags; then a
   staged re-render (``state.apply edge``) of just the nodes whose config
   digest differs; then Kubernetes (Service ``externalIPs``, owner
   annotation, Events), with short timeouts. A reconcile with nothing to do
   sends no job and writes nothing to Kubernetes.

``edge.trigger`` is what the reactor calls on a beacon event. It ignores
events that claim to come from a minion that is not an edge node, waits
(at most ``edge_ha_report_wait``, default 1 s) until the claimed node's
report in the mine is the one the event names, and coalesces bursts: while a
reconcile runs, any number of triggers collapse into one follow-up run.

``edge.vip_report`` shows, per VIP, the node that *really* has the address on
its interface, the backups, ingress health, whether the Service matches, the
last transition, and the pillar's errors if the last compile failed.

Master settings (master config, all optional):

.. code-block:: yaml

    edge_ha_pillar_id: edge1        # compile the edge_ha pillar as this minion (default: the master's own id)
    edge_ha_timeout: 10             # seconds to wait for a minion's answer to an action
    edge_ha_model_ttl: 300          # seconds an event-triggered reconcile uses the last compiled model
    edge_ha_report_max_age: 35      # seconds after which a node's report counts as no answer
    edge_ha_kubernetes_timeout: 3   # seconds per Kubernetes request on the reconcile path
    edge_ha_kubernetes_backoff: 10  # seconds Kubernetes calls are skipped after the API did not answer
    edge_ha_apply_timeout: 120      # seconds one node's state.apply may take in a staged reload
    edge_ha_cache: localfs          # Salt cache driver of the controller's state and lease (localfs, redis)
    edge_ha_lease_ttl: 30           # seconds the reconcile lease lasts without renewal
"""

import contextlib
import dataclasses
import contextvars
import json
import logging
import os
import re
import signal
import threading
import time

import salt.cache
import salt.client
import salt.loader
from edge_ha_core import desired as desired_state
from edge_ha_core import fleet
from edge_ha_core import history as history_log
from edge_ha_core import lb
from edge_ha_core import lease as edge_lease
from edge_ha_core import model as edge_model
from edge_ha_core import planner
from edge_ha_core import report as views
from edge_ha_core import state as edge_state
from edge_ha_core.planner import FENCE_REASON
from edge_ha_core.planner import HANDOVER_PREFIX
from edge_ha_core.planner import SPLIT_HOLD
from salt.exceptions import CommandExecutionError
from salt.exceptions import SaltInvocationError

log = logging.getLogger(__name__)

__virtualname__ = "edge"

LOCK_WAIT = 600  # seconds edge.reconcile/drain/undrain wait for another one to finish
JOB_GRACE = 3  # a minion job's return is given up this many times its timeout after the publication
JOB_MIN_WAIT = 30  # ... and never before this many seconds
DIGEST_RE = re.compile(r"^[0-9a-f]{16}$")


def __virtual__():
    return __virtualname__


def ipvs_connections(services, virtual_servers, address):
    """
    Connections still on real server ``address`` in the given IPVS table
    (``ipvs.list_services`` output) for the keepalived virtual servers of the
    model: ``(active, inactive, persistence templates)``. Active ones are
    ESTABLISHED: the requests a drain waits for. Inactive ones are entries in
    any other state, mostly closed connections kept for IPVS's timeouts (with
    ``lb_kind DR`` the director sees only the client's half, so a closed
    connection stays FIN_WAIT for the ``tcpfin`` timeout, 120 s by default);
    a drain does not wait for those (a server at weight 0 gets no new ones).
    """
    wanted = {(vs["protocol"], vs["address"], int(vs["port"])) for vs in virtual_servers}
    active = inactive = templates = 0
    for svc in services or []:
        key = (str(svc.get("protocol", "")).upper(), svc.get("address"), int(svc.get("port") or 0))
        if key not in wanted:
            continue
        for dest in svc.get("destinations") or []:
            if dest.get("address") == address:
                active += int(dest.get("active_connections") or 0)
                inactive += int(dest.get("inactive_connections") or 0)
                templates += int(dest.get("persistent_connections") or 0)
    return active, inactive, templates



# ---------------------------------------------------------------- Salt layer


def _state_dir():
    path = os.path.join(__opts__["cachedir"], "edge_ha")  # pylint: disable=undefined-variable
    os.makedirs(path, exist_ok=True)
    return path


_PROCESS = {"lock": threading.Lock()}  # per master process (the reactor's runner threads share it)


def _k8s():
    """The ``edge_k8s`` functions (Kubernetes client side), loaded once per process, no grains, no pillar."""
    with _PROCESS["lock"]:
        if "k8s" not in _PROCESS:
            _PROCESS["k8s"] = salt.loader.raw_mod(__opts__, "edge_k8s", None)  # pylint: disable=undefined-variable
        return _PROCESS["k8s"]


KUBE_DOWN_PREFIXES = ("timeout:", "unreachable:", "connection failed:")


def _kube_call(name, model, *args, **kwargs):
    """
    One ``edge_k8s`` call on the reconcile path (None if the function is not
    loaded). When the API did not answer (timeout, unreachable), later calls
    are skipped at once for ``edge_ha_kubernetes_backoff`` seconds (default
    10; then one call tries again): a hung API costs one request timeout, not
    one per call, and never holds the data plane.
    """
    fun = _k8s().get(name)
    if not fun:
        return None
    backoff = float(__opts__.get("edge_ha_kubernetes_backoff", 10))  # pylint: disable=undefined-variable
    down = _PROCESS.get("kube_down")
    if down and time.monotonic() - down["at"] < backoff:
        raise CommandExecutionError(f"skipped: the Kubernetes API did not answer {time.monotonic() - down['at']:.1f}s "
                                    f"ago ({down['error']})")
    try:
        result = fun(*args, kubernetes=_kubernetes(model), **kwargs)
    except Exception as exc:
        if str(exc).startswith(KUBE_DOWN_PREFIXES):
            _PROCESS["kube_down"] = {"at": time.monotonic(), "error": str(exc), "since": (down or {}).get(
                "since", time.time())}
        raise
    _PROCESS.pop("kube_down", None)
    return result


def _standing_notes(state=None):
    """What holds for the whole edge right now: an invalid pillar, an unreadable drain record, Kubernetes down."""
    notes = []
    if state and state.get("errors"):
        notes.append(f"edge_ha pillar is invalid ({len(state['errors'])} errors, see edge.vip_report): "
                     "the last good model stays in force")
    if _PROCESS.get("drain_record_error"):
        notes.append(f"the drain record is unreadable ({_PROCESS['drain_record_error']}): nodes the edge nodes "
                     "list as drained stay drained; a drain or undrain writes it again")
    down = _PROCESS.get("kube_down")
    if down:
        since = time.strftime("%H:%M:%S", time.localtime(down["since"]))
        notes.append(f"the Kubernetes API has not answered since {since} ({down['error']}); the data plane is "
                     "kept safe without it, the Service is written when it answers again")
    return notes


def _kubernetes(model):
    """The model's Kubernetes settings with the reconcile path's short request timeout."""
    k8s = dict(model["kubernetes"])
    cap = float(__opts__.get("edge_ha_kubernetes_timeout", 3))  # pylint: disable=undefined-variable
    k8s["request_timeout"] = min(float(k8s.get("request_timeout") or cap), cap)
    return k8s


# ------------------------------------------------------- desired state


def _compile(previous):
    """Compile the pillar now; a valid one becomes the model, an invalid one leaves the last good model."""
    opts = __opts__  # pylint: disable=undefined-variable
    pillar = __salt__["pillar.show_pillar"](opts.get("edge_ha_pillar_id") or None)  # pylint: disable=undefined-variable
    data = pillar.get("edge_ha") if isinstance(pillar, dict) else None
    errors = edge_model.validate_model(data)
    state = dict(previous or {})
    state["checked"] = time.time()
    if errors:
        if errors != state.get("errors"):
            state["errors_since"] = state["checked"]
            _record("pillar", errors=errors[:50], kept=bool(state.get("model")))
            if state.get("model"):
                _event("PillarInvalid", "edge_ha pillar is invalid; the last good model stays in force: "
                       + "; ".join(errors[:5]), "Warning", state["model"])
        state["errors"] = errors
    else:
        if state.get("errors"):
            _record("pillar", errors=[], kept=False)
        state["errors"], state["errors_since"] = [], None
        state["model"] = edge_model.normalize(data)
        state["compiled"] = state["checked"]
    _save_json("desired.json", state)
    if not state.get("model"):
        raise CommandExecutionError("edge_ha pillar is invalid (and there is no earlier good model):\n  "
                                    + "\n  ".join(errors))
    return state


def _desired(refresh=False):
    """
    ``{model, errors, errors_since, compiled, checked}``: the last good model,
    compiled again when ``refresh`` or older than ``edge_ha_model_ttl``.
    """
    state = _load_json("desired.json", None)
    ttl = float(__opts__.get("edge_ha_model_ttl", 300))  # pylint: disable=undefined-variable
    if refresh or not isinstance(state, dict) or not state.get("model") or time.time() - state.get("checked", 0) > ttl:
        state = _compile(state if isinstance(state, dict) else None)
    _save_nodes(state["model"])
    return state


def _model():
    return _desired(refresh=True)["model"]


def _digests(model, drains):
    """``{node: desired config digest}`` for these drains (memoised per model and drain set in this process)."""
    key = (json.dumps(model, sort_keys=True, default=str), tuple(sorted(drains)))
    with _PROCESS["lock"]:
        memo = _PROCESS.get("digests")
        if memo and memo[0] == key:
            return memo[1]
    digests = desired_state.node_digests(model, tuple(sorted(drains)))
    with _PROCESS["lock"]:
        _PROCESS["digests"] = (key, digests)
    return digests


NODES_CACHE_TTL = 60


def _save_nodes(model):
    """``nodes.json``: ``{nodes, saved}``, written again when the names change or half its TTL passed."""
    nodes = sorted(model["nodes"])
    record = _load_json("nodes.json", None)
    if not (isinstance(record, dict) and record.get("nodes") == nodes
            and time.time() - float(record.get("saved") or 0) < NODES_CACHE_TTL / 2):
        _save_json("nodes.json", {"nodes": nodes, "saved": time.time()})


def _edge_node_names():
    """The edge node names, from the last model load if recent (a trigger must be cheap), else from the pillar."""
    record = _load_json("nodes.json", None)
    if (isinstance(record, dict) and isinstance(record.get("nodes"), list)
            and time.time() - float(record.get("saved") or 0) < NODES_CACHE_TTL):
        return set(record["nodes"])
    return set(_desired()["model"]["nodes"])


# ------------------------------------------------------- observed state


def _cache():
    with _PROCESS["lock"]:
        if "cache" not in _PROCESS:
            _PROCESS["cache"] = salt.cache.factory(__opts__)  # pylint: disable=undefined-variable
        return _PROCESS["cache"]


def _reports(model):
    """
    ``{node: NodeReport or None}`` from the mine (``fleet.read_reports``):
    None when the node has not published, its report is older than
    ``edge_ha_report_max_age`` (default 35 s: three heartbeats and a margin),
    or it names another node.
    """
    max_age = float(__opts__.get("edge_ha_report_max_age", 35))  # pylint: disable=undefined-variable
    return fleet.read_reports(_cache(), model["nodes"], time.time(), max_age)


def _await_report(node, digest, seen, timeout):
    """
    Wait (bounded) until the mine holds ``node``'s report named by an event
    (``digest``) or a later one (built at or after the event's ``seen``, both
    the node's clock). An event is only a hint: this is all it can cost.
    Returns the digest of the report the mine holds then (None: none).
    """
    deadline = time.monotonic() + timeout
    while True:
        data, _ = fleet.mine_entry(_cache(), node)
        held = data.get("digest") if isinstance(data, dict) else None
        if isinstance(data, dict) and (held == digest or float(data.get("time") or 0) >= seen):
            return held
        if time.monotonic() > deadline:
            return held
        time.sleep(0.01)


def _pods_ready(model):
    try:
        pods = _kube_call("edge_k8s.ingress_pods", model)
    except Exception as exc:  # pylint: disable=broad-except
        log.warning("edge: cannot read ingress pods: %s", exc)
        return None
    return {n: bool(pods.get(v["kubernetes_node"], {}).get("ready")) for n, v in model["nodes"].items()}


def _kube_nodes(model):
    return {n: {"address": v["address"], "kubernetes_node": v["kubernetes_node"]} for n, v in model["nodes"].items()}


def _vips(model):
    """The pillar's VIPs (the ingress Service's externalIPs); a LoadBalancer Service's address is its own."""
    return [v for inst in model["vrrp_instances"].values() if not inst.get("address_pool") for v in inst["vips"]]


# ------------------------------------------------------- the master's records


def _history():
    """
    The history (``edge_ha_core.history.StoreHistory``) in the controller's
    store (``_records``): every entry bounded (``history.bound_event``), at
    most ``3 x edge_ha_history_bytes`` (default 1 MiB) of it, the oldest
    dropped first; it survives master restarts (and, on a shared store, is
    one history for the masters). The ``reconcile.log`` files of an earlier
    version are moved in on the first append.
    """
    opts = __opts__  # pylint: disable=undefined-variable
    return history_log.StoreHistory(_records(), _records_mutex,
                                    max_bytes=int(opts.get("edge_ha_history_bytes", 1024 * 1024)), keep_files=2,
                                    legacy_path=os.path.join(_state_dir(), "reconcile.log"), log=log)


def _records_mutex():
    """The short critical section of history appends and counter bumps (a lease ``records`` in the same store)."""
    return edge_lease.mutex(_lease_backend("records"), what="history/counters")


def _record(kind, **data):
    """Append one entry to the master's history (a store that does not answer costs the entry, not the caller)."""
    try:
        _history().append(dict(data, kind=kind, time=time.time()))
    except Exception as exc:  # pylint: disable=broad-except
        log.error("edge: history entry %s not recorded: %s", kind, exc)


def _counter_file():
    return history_log.StoreCounters(_records(), _records_mutex)


def _bump(*names, by=1):
    """Increment persistent counters (the metrics' counters: they never go down); returns them all."""
    names = [n for n in names if n]
    try:
        return _counter_file().bump(*names, by=by) if names else _counters()
    except Exception as exc:  # pylint: disable=broad-except
        log.error("edge: counters not updated: %s", exc)
        return {}


def _counters():
    try:
        return _counter_file().values()
    except Exception as exc:  # pylint: disable=broad-except
        log.error("edge: counters unreadable: %s", exc)
        return {}


def _history_entries():
    """The history, oldest first."""
    try:
        return list(reversed(_history().read()))
    except Exception as exc:  # pylint: disable=broad-except
        log.error("edge: history unreadable: %s", exc)
        return []


def _records():
    """
    The controller's records (``edge_ha_core.state``): keys of the bank
    ``edge_ha`` of Salt's cache backend ``edge_ha_cache`` (default
    ``localfs``: ``<cachedir>/edge_ha/<name>.p``), one object per process.
    """
    settings = edge_state.Settings.from_opts(__opts__)  # pylint: disable=undefined-variable
    with _PROCESS["lock"]:
        cached = _PROCESS.get("records")
        if cached is None or cached[0] != settings:
            cached = (settings, edge_state.StateStore.for_opts(__opts__, salt.cache.Cache))  # pylint: disable=undefined-variable
            _PROCESS["records"] = cached
        return cached[1]


def _load_json(name, default):
    """A record of the controller's (``_records``); an unreadable one is logged and read as ``default``."""
    loaded = _records().load(name, default)
    if loaded.error:
        log.error("edge: %s", loaded.error)
        return default
    return loaded.data


def _save_json(name, data):
    """
    Write a record durably (checksum; localfs: fsync). Under the reconcile
    lease, only while it is ours (``edge_lease.LeaseLost`` otherwise: stop acting).
    """
    holding = _HOLDING.get()
    if holding is not None:
        holding.check()
    _records().save(name, data)


def _drained(reports=None):
    """
    ``{node: {reason, since, source}}`` of drained nodes (the master's record,
    survives restarts). An unreadable record is never read as "nothing
    drained": every node any edge node still lists as drained (each keeps the
    list, ``keepalived.set_drained_nodes``) stays drained, and the error shows
    in the report and the history until a drain or undrain writes the record
    again.
    """
    loaded = _records().load("drained.json", {})
    if loaded.error is None and isinstance(loaded.data, dict):
        _PROCESS.pop("drain_record_error", None)
        return loaded.data
    error = loaded.error or "drained.json: not a mapping of node -> drain"
    if reports is None:
        reports = _reports(_desired()["model"])
    recovered = planner.drains_from_reports(reports, error)
    with _PROCESS["lock"]:
        first = _PROCESS.get("drain_record_error") != error
        _PROCESS["drain_record_error"] = error
    if first:
        log.error("edge: the drain record is unreadable (%s); treating %s as drained (from the nodes' lists)",
                  error, ", ".join(sorted(recovered)) or "no node")
        _record("drain_record", error=error, recovered=sorted(recovered))
    return recovered


_HOLDING = contextvars.ContextVar("edge_ha_lease", default=None)  # the reconcile lease this call holds


def _lease(what):
    """
    A reconcile lease (``edge_ha_core.lease``) in the store of ``edge_ha_cache``:
    ``<cachedir>/edge_ha/reconcile.lease`` with localfs, a key with redis;
    expires ``edge_ha_lease_ttl`` s (default 30) after its holder's last renewal.
    """
    settings = edge_state.Settings.from_opts(__opts__)  # pylint: disable=undefined-variable
    return edge_lease.Holding(_lease_backend("reconcile"), settings.lease_ttl, what=what)


def _lease_backend(name):
    """The lease primitive ``name`` of the ``edge_ha_cache`` backend, one per process."""
    settings = edge_state.Settings.from_opts(__opts__)  # pylint: disable=undefined-variable
    with _PROCESS["lock"]:
        cached = _PROCESS.setdefault("lease_backends", {}).get(name)
        if cached is None or cached[0] != settings:
            os.makedirs(settings.directory, exist_ok=True)
            backend = edge_lease.backend_for(settings.driver, __opts__, settings.directory, name)  # pylint: disable=undefined-variable
            cached = _PROCESS["lease_backends"][name] = (settings, backend)
    return cached[1]


@contextlib.contextmanager
def _locked(timeout=LOCK_WAIT, what="reconcile"):
    """Hold the reconcile lease (one reconcile/drain/undrain at a time, across the masters sharing the store)."""
    try:
        holding = _lease(what)
        holding.acquire(timeout)
    except edge_lease.UnsupportedBackend as exc:
        raise CommandExecutionError(str(exc))  # pylint: disable=raise-missing-from
    except edge_lease.LeaseError as exc:
        raise CommandExecutionError(  # pylint: disable=raise-missing-from
            f"another edge.reconcile/drain/undrain has held the lock for more than {timeout}s ({exc})")
    except Exception as exc:  # pylint: disable=broad-except
        raise CommandExecutionError(f"the reconcile lease cannot be taken: {exc}")  # pylint: disable=raise-missing-from
    with _holding(holding):
        yield holding


@contextlib.contextmanager
def _holding(holding):
    """Run with ``holding`` as this call's lease (writes are checked against it), released at the end."""
    token = _HOLDING.set(holding)
    try:
        yield holding
    finally:
        _HOLDING.reset(token)
        try:
            holding.release()
        except Exception as exc:  # pylint: disable=broad-except
            log.warning("edge: the reconcile lease was not released (it expires by itself): %s", exc)


def _event(reason, message, event_type="Normal", model=None):
    """A Kubernetes Event on the ingress Service (never fails the caller)."""
    try:
        return _kube_call("edge_k8s.record_event", model or _desired()["model"], reason, message,
                          event_type=event_type)
    except Exception as exc:  # pylint: disable=broad-except
        log.warning("edge: Kubernetes Event %s not recorded: %s", reason, exc)
        return None


# ------------------------------------------------------- the actuator


def _client():
    """A LocalClient, made on first use (a reconcile with nothing to do never needs one)."""
    with _PROCESS["lock"]:
        if "client" not in _PROCESS:
            _PROCESS["client"] = salt.client.get_local_client(__opts__["conf_file"])  # pylint: disable=undefined-variable
        return _PROCESS["client"]


def _progress(message):
    """
    What a long operation is doing now: in the log, and with salt-run's default
    output a progress event, which salt-run prints as it comes (not with
    ``--out=json``/``yaml``, whose readers expect one document).
    """
    log.info("edge: %s", message)
    if __opts__.get("output"):  # pylint: disable=undefined-variable
        return
    try:
        __jid_event__.fire_event({"message": message}, "progress")  # pylint: disable=undefined-variable
    except NameError:  # not run as a job (no event to fire)
        pass
    except Exception as exc:  # pylint: disable=broad-except
        log.debug("edge: progress event not fired: %s", exc)


def _crash_point(name):
    """
    Fault injection for the lab's interruption tests: with the environment
    variable ``EDGE_HA_CRASH_AT=<name>`` the process running this runner is
    killed here (SIGKILL), as a crash or a killed ``salt-run`` would stop it.
    """
    if os.environ.get("EDGE_HA_CRASH_AT") == name:
        log.warning("edge: EDGE_HA_CRASH_AT=%s: killing this process (fault injection)", name)
        os.kill(os.getpid(), signal.SIGKILL)


def _job(nodes, fun, args=(), timeout=None):
    """One job for ``nodes`` (a list; one node: a str); returns ``{node: return}`` (the returns are not state)."""
    if not nodes:
        return {}
    with _PROCESS["lock"]:
        _PROCESS["jobs"] = _PROCESS.get("jobs", 0) + 1
    timeout = timeout or __opts__.get("edge_ha_timeout", 10)  # pylint: disable=undefined-variable
    if isinstance(nodes, str):
        return _collect_returns(_client(), nodes, fun, list(args), "glob", timeout)
    return _collect_returns(_client(), sorted(nodes), fun, list(args), "list", timeout)


def _collect_returns(client, tgt, fun, args, tgt_type, timeout):
    """
    ``LocalClient.cmd`` with an end: the returns of one job, ``False`` for
    a targeted minion that did not return. Salt's own ``cmd`` waits as long
    as the minion says the job still runs (``saltutil.find_job``), which is
    for ever for a job process that hangs (seen in the lab: a
    ``keepalived.plan`` whose process, forked while another thread held a
    lock, waited on that lock), and the reconcile lock with it. This gives
    up ``JOB_GRACE`` times the timeout (at least ``JOB_MIN_WAIT`` s) after
    the publication: the node counts as not answering, as for a timeout.
    """
    was_listening = client.event.cpub
    try:
        pub = client.run_job(tgt, fun, args, tgt_type, timeout=timeout, listen=True)
        if not pub:
            return {}
        returns = {}
        limit = max(JOB_GRACE * float(timeout), JOB_MIN_WAIT)
        deadline = time.monotonic() + limit
        for ret in client.get_iter_returns(pub["jid"], pub["minions"], timeout=timeout, tgt=tgt, tgt_type=tgt_type,
                                           block=False):
            if ret:
                for minion, data in ret.items():
                    returns[minion] = data.get("ret", {}) if isinstance(data, dict) else data
            elif time.monotonic() > deadline:
                log.warning("edge: %s on %s: no return after %.0fs while the job still runs; going on without it",
                            fun, ", ".join(sorted(set(pub["minions"]) - set(returns))), limit)
                break
        for minion in set(pub["minions"]) - set(returns):
            returns[minion] = False
        return returns
    finally:
        if not was_listening:
            client.event.close_pub()


def _apply_safety(wanted, actions, events):
    """Data-plane safety actions first, one job per kind; their Kubernetes Events come later."""
    for node in wanted.fence:
        actions.append(f"{node}: out of VIP ownership ({FENCE_REASON})")
        events.append(("VIPFenced", f"{node}: out of VIP ownership ({FENCE_REASON})", "Warning"))
    _job(wanted.fence, "keepalived.out_of_service", [True, FENCE_REASON])
    for node, why in sorted(wanted.split_fence.items()):
        _job(node, "keepalived.out_of_service", [True, why])
        actions.append(f"{node}: out of VIP ownership ({why})")
        events.append(("SplitBrainFenced", f"{node}: out of VIP ownership ({why})", "Warning"))
    released = _job(wanted.release, "keepalived.release_stale_vips")
    for node in wanted.release:
        actions.append(f"{node}: stale VIPs removed (keepalived not running): {released.get(node)}")
        if released.get(node):
            events.append(("StaleVIPRemoved", f"{node}: stale VIPs removed (keepalived not running): "
                                              f"{released.get(node)}", "Warning"))


def _apply_flags(wanted, actions, drains, events):
    """
    Unfence, standby, the recorded drained lists, and what an interrupted
    operation left behind, as the plan says. A drained node goes to standby
    before its leftover handover flag is lifted (it must not take its VIPs back
    in between); each repair is in the history and an Event.
    """
    _job(wanted.unfence, "keepalived.out_of_service", [False])
    actions += [f"{node}: back in VIP ownership (ingress healthy)" for node in wanted.unfence]
    names = sorted(drains)
    _job(wanted.drained_lists, "keepalived.set_drained_nodes", [names])
    actions += [f"{node}: drained nodes set to {names}" for node in wanted.drained_lists]
    _job(wanted.standby_on, "keepalived.standby", [True, "drained"])
    actions += [f"{node}: standby (drained)" for node in wanted.standby_on]
    _job(wanted.standby_off, "keepalived.standby", [False])
    actions += [f"{node}: standby lifted (not drained)" for node in wanted.standby_off]
    _job(wanted.lift_handover, "keepalived.out_of_service", [False])
    _job(wanted.unquiesce, "edge_node.quiesce", [False])
    for node, what in wanted.repairs:
        text = f"{node}: left by an interrupted operation: {what}"
        actions.append(text)
        _record("repair", node=node, what=what, drained=node in drains)
        events.append(("OperationUndone", text, "Warning"))


def _handover_timeout(model, node):
    adverts = [i["advert_int"] for i in model["vrrp_instances"].values() if node in i["nodes"]] or [1]
    return float(__opts__.get("edge_ha_handover_timeout") or 3 * max(adverts) + 10)  # pylint: disable=undefined-variable


def _handover(model, node, reason):
    """
    Standby on ``node`` (priority 1) and wait until other nodes hold its VIPs.
    Returns ``(done, holders, reports)``.
    """
    held = {v for v, h in fleet.vip_holders(model, _reports(model), running_only=False).items() if node in h}
    _job(node, "keepalived.standby", [True, reason], timeout=10)
    deadline = time.monotonic() + _handover_timeout(model, node)
    while True:
        reports = _reports(model)
        done, holders = fleet.handover_state(model, reports, node, held)
        if done or time.monotonic() > deadline:
            return done, holders, reports
        time.sleep(0.3)


def _release(model, node, reason, standby_after, before=None, quiesce_timeout=None):
    """
    Move ``node``'s VIPs away without failing requests: new TCP connections to
    its VIPs are dropped (clients retry the SYN after 1 s), the requests in
    flight finish (bounded by ``edge_ha_quiesce_timeout``, default 10 s), then
    the node releases its VIPs at once (FAULT through the out-of-service track
    file: a priority-0 advert, the next backup takes over within its skew
    time), and the retried SYNs reach the new owner. Those three steps are one
    job on the node (``edge_node.handover``): a SYN dropped more than 1 s
    before the takeover is a request lost. ``before`` runs just before the
    release (undrain restores the target's priority there; then the flag is a
    job of its own, after it). Then
    the node goes to standby (``standby_after``) and back from FAULT to BACKUP.
    Returns ``(done, steps, holders, reports)``.
    """
    steps = []
    timeout = float(quiesce_timeout or __opts__.get("edge_ha_quiesce_timeout", 10))  # pylint: disable=undefined-variable
    before_reports = _reports(model)
    was_out = bool(before_reports.get(node) and before_reports[node].out_of_service.on)
    held = {v for v, h in fleet.vip_holders(model, before_reports, running_only=False).items() if node in h}
    flag_reason = f"{HANDOVER_PREFIX}{reason}"
    try:
        # one job for the node's steps (quiesce, requests in flight, the flag): every round trip between
        # them is time in which new SYNs are dropped; with ``before`` the flag waits for it
        moved = _job(node, "edge_node.handover", [None if before else flag_reason, timeout],
                     timeout=timeout + 10).get(node)
        _crash_point("release:quiesced")
        if not isinstance(moved, dict):
            steps.append(f"new connections NOT held back, requests in flight not waited for ({moved})")
            moved = {}
        elif moved["in_flight"] == 0:
            steps.append(f"requests in flight finished in {moved['waited']:.1f}s")
        else:
            steps.append(f"{moved['in_flight']} connections still open after {timeout:.0f}s "
                         "(edge_ha_quiesce_timeout); going on")
        if before:
            before()
        if not moved.get("flagged"):
            _job(node, "keepalived.out_of_service", [True, flag_reason], timeout=10)
        _crash_point("release:flagged")
        deadline = time.monotonic() + _handover_timeout(model, node)
        while True:
            reports = _reports(model)
            done, holders = fleet.handover_state(model, reports, node, held)
            if done or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        _crash_point("release:handed")
        if standby_after:
            _job(node, "keepalived.standby", [True, reason], timeout=10)
    finally:
        if not was_out:
            _job(node, "keepalived.out_of_service", [False], timeout=10)
        _job(node, "edge_node.quiesce", [False], timeout=10)
    return done, steps, holders, reports


def _all_held(model, vips, timeout=10):
    """Wait until each of ``vips`` is held by a node with a running keepalived; returns (ok, holders, reports)."""
    deadline = time.monotonic() + timeout
    while True:
        reports = _reports(model)
        holders = {v: h for v, h in fleet.vip_holders(model, reports).items() if v in vips}
        if all(holders.values()) or time.monotonic() > deadline:
            return all(holders.values()), holders, reports
        time.sleep(0.3)


def _await_config(model, node, digest, timeout=10):
    """
    Wait (bounded) until ``node`` reports keepalived running with the config
    named ``digest``. Returns ``"ok"``, ``"other"`` (running, but with
    another config: the node rendered from a newer pillar than the master's
    model), ``"failed"`` (its report says keepalived is not running) or
    ``"silent"`` (no fresh report in time).
    """
    deadline = time.monotonic() + timeout
    while True:
        report = _reports(model).get(node)
        if report and report.running and report.config_digest == digest:
            return "ok"
        if time.monotonic() > deadline:
            if report and report.running and report.config_digest:
                return "other"
            return "failed" if report else "silent"
        time.sleep(0.1)


def _rollout(model, reports, nodes, digests, reason, retry_failed=False):
    """
    Staged reload of ``nodes``, whose config on disk is not the desired one
    (``digests``: the desired digest per node), in stages (``fleet.rollout_stages``):
    every BACKUP together, then the VIP holders that reload in place together,
    then each holder that must first hand its VIPs to a backup (standby),
    alone; so a config that makes keepalived exit never costs a VIP.
    After each stage, for each of its nodes: keepalived running with the new config (its report
    names the desired digest) and every VIP held; otherwise the node goes back to its previous config and the rollout
    stops after that stage. A config that keepalived refused (or that it did not run with) is
    not retried until it changes (or ``retry_failed``); while it is there, the
    other nodes' new configs are held back too (the rollout stays stopped).
    A transient failure (no answer in time, another state run in progress)
    counts against that node only: the rollout goes on with the others and the
    node is tried again after a backoff (5 s, doubling, at most 300 s).
    Returns ``(actions, info)``.
    """
    failed = _load_json("rollout_failed.json", {})
    retries = _load_json("rollout_retry.json", {})
    actions, steps, blocked = [], [], []
    info = {"order": [], "steps": steps, "stopped_at": None, "error": None, "blocked": blocked, "held": [],
            "retry": {}}
    todo = []
    now = time.time()
    for node in nodes:
        digest = digests[node]
        if not retry_failed and failed.get(node, {}).get("hash") == digest:
            blocked.append(node)
            continue
        if not retry_failed and not planner.retry_due(retries, node, digest, now):
            info["retry"][node] = retries[node]
            continue
        todo.append(node)
    if blocked:
        # the change that stopped a rollout is still there: the rollout stays stopped for every node
        info["held"], todo = sorted(todo), []
    info["order"] = order = fleet.rollout_order(todo, reports)
    drained = _drained()
    # the VIPs that had an owner before: a VIP the change adds has none until its owner is reloaded (last)
    held_before = {v for v, h in fleet.vip_holders(model, reports).items() if h}
    # holders whose keepalived keeps its instances' state across the reload: reloaded in place, together
    in_place = _reload_keeps_state([n for n in order if fleet.holds_any(reports.get(n))], reports)
    info["stages"] = stages = fleet.rollout_stages(todo, reports, in_place)
    step = 0
    for stage in stages:
        _progress(f"staged reload ({reason}): {', '.join(stage)} ({step + 1}-{step + len(stage)}/{len(order)})")
        step += len(stage)
        prepared = {}  # node -> (handed, in place, held_states)
        for node in stage:
            report = reports.get(node)
            holds = fleet.holds_any(report)
            others = [n for n in model["nodes"] if n != node and reports.get(n) and reports[n].running
                      and not reports[n].standby.on and not reports[n].out_of_service.on]
            kept = bool(holds and node in in_place)
            # the instances the new config keeps (one only removed, as a deleted Service's, has no state to keep)
            held_states = {name: (inst.state, inst.since) for name, inst in report.instances.items()
                           if inst.vips_present and name in model["vrrp_instances"]} if kept else {}
            handed = False
            if holds and others and not kept:
                done, holders, reports = _handover(model, node, f"staged reload ({reason})")
                handed = True
                if not done:
                    # its standby lifted, and that of any node of this stage already handed over
                    back = [node] + [n for n, (was_handed, _, _) in prepared.items() if was_handed and n not in drained]
                    _job(back, "keepalived.standby", [False], timeout=10)
                    info["stopped_at"], info["error"] = node, f"could not hand its VIPs over before the reload: {holders}"
                    steps.append((node, "not reloaded"))
                    break
            prepared[node] = (handed, kept, held_states)
        if info["stopped_at"]:
            break
        _crash_point("rollout:before-apply")
        applied = _job(sorted(prepared), "state.apply", ["edge"], timeout=_apply_timeout())
        for node in stage:
            step_actions, reports = _rollout_step(model, node, digests[node], applied.get(node), prepared[node],
                                                  held_before, drained, failed, retries, info)
            actions += step_actions
        if info["stopped_at"]:
            break
    info["skipped"] = [n for n in order if n not in [s[0] for s in steps]]
    return actions, info


def _rollout_step(model, node, digest, applied, prepared, held_before, drained, failed, retries, info):
    """
    One node's outcome in a stage of the staged reload (its ``state.apply``
    return: ``applied``): transient failures retried later, a refused config
    or one keepalived does not run with rolled back and remembered (the
    rollout stops after this stage), standby lifted after a handover.
    ``prepared``: ``(handed, in_place, held_states)`` from before the apply.
    Returns ``(actions, reports)``.
    """
    actions, steps = [], info["steps"]
    handed, in_place, held_states = prepared

    def lift_standby():
        """After a handover, whatever the outcome: the node takes its VIPs back (unless it is drained)."""
        if handed and node not in drained:
            _job(node, "keepalived.standby", [False], timeout=10)

    outcome = planner.classify_apply(applied)
    error = outcome.error if outcome.kind == planner.REFUSED else None
    if outcome.kind == planner.TRANSIENT:
        lift_standby()
        entry = _retry_later(retries, node, digest, outcome.error)
        info["retry"][node] = entry
        steps.append((node, f"not applied ({outcome.error}); retried in {entry['backoff']:.0f}s"))
        actions.append(f"{node}: keepalived NOT re-applied, transient ({outcome.error}); retried in "
                       f"{entry['backoff']:.0f}s; the other nodes go on")
        return actions, _reports(model)
    if outcome.kind == "ok":
        outcome = _await_config(model, node, digest)
        if outcome == "silent":
            # applied, but no fresh report yet: not a refused config; look again later
            lift_standby()
            entry = _retry_later(retries, node, digest, "no fresh report from the node after the reload")
            info["retry"][node] = entry
            steps.append((node, "applied; no report yet"))
            return actions, _reports(model)
        if outcome == "other":
            # keepalived runs a config the master did not expect: its model is older than the pillar the
            # node rendered from. Nothing failed: stop here, compile the pillar, the next reconcile goes on.
            lift_standby()
            _desired(refresh=True)
            info["stopped_at"], info["outdated"] = node, True
            steps.append((node, "applied (the pillar changed meanwhile; model compiled again)"))
            return actions, _reports(model)
        if outcome == "failed":
            error = "keepalived is not running with the new config after the reload"
    if error is None:
        held, holders, reports = _all_held(model, held_before)
        if not held:
            error = f"a VIP has no owner after the reload: {holders}"
    if error:
        # keepalived.managed restores the previous file itself when keepalived dies; make sure of it
        back = _job(node, "keepalived.rollback", timeout=60).get(node)
        running = _job(node, "keepalived.running", timeout=10).get(node)
        lift_standby()
        failed[node] = {"hash": digest, "time": time.time(), "error": error}
        _save_json("rollout_failed.json", failed)
        if not info["stopped_at"]:
            info["stopped_at"], info["error"] = node, error
        steps.append((node, "FAILED, rolled back" + ("" if running else " (keepalived NOT running)")))
        actions.append(f"{node}: keepalived reload FAILED ({error}); previous config restored"
                       f" ({'running' if running else 'NOT running'}; rollback: {back}); rollout stopped")
        return actions, _reports(model)
    lift_standby()
    after = reports.get(node)
    flipped = sorted(name for name, (state, since) in held_states.items()
                     if not after or name not in after.instances
                     or (after.instances[name].state, after.instances[name].since) != (state, since))
    if flipped:
        actions.append(f"{node}: {', '.join(flipped)} changed VRRP state on the in-place reload")
    if failed.pop(node, None) is not None:
        _save_json("rollout_failed.json", failed)
    if retries.pop(node, None) is not None:
        _save_json("rollout_retry.json", retries)
    steps.append((node, "ok, in place" if in_place else "ok"))
    how = ", after handing its VIPs over" if handed else (", reloaded in place: it kept its VIPs" if in_place else "")
    actions.append(f"{node}: keepalived re-applied (ok{how})")
    return actions, reports


def _reload_keeps_state(nodes, reports):
    """
    The ``nodes`` that can reload in place, owner included: every instance
    one holds VIPs for keeps its interface, VRID and VRRP version in the new
    config (keepalived's SIGHUP then keeps its state). One ``keepalived.plan``
    job to them all; a node that cannot tell is not in the set (it hands over first).
    """
    if not nodes:
        return set()
    # rendered from a freshly compiled pillar, as the state.apply that follows will (the minion's
    # in-memory pillar can be older than the change being rolled out)
    planned = _job(sorted(nodes), "keepalived.plan", ["fresh_pillar=True"], timeout=30)
    return {n for n in nodes if planner.keeps_state_on_reload(reports.get(n), planned.get(n))}


def _apply_timeout():
    """Seconds one node's ``state.apply edge`` may take in a staged reload (``edge_ha_apply_timeout``, 120)."""
    return float(__opts__.get("edge_ha_apply_timeout", 120))  # pylint: disable=undefined-variable


def _retry_later(retries, node, digest, error):
    """Record a transient failure of ``node``'s staged reload; returns its retry entry (durable)."""
    previous = retries.get(node) or {}
    attempts = (previous.get("attempts", 0) if previous.get("digest") == digest else 0) + 1
    backoff = planner.retry_backoff(attempts)
    entry = {"digest": digest, "attempts": attempts, "backoff": backoff, "next": time.time() + backoff,
             "error": error}
    retries[node] = entry
    _save_json("rollout_retry.json", retries)
    _record("retry", node=node, attempts=attempts, backoff=backoff, error=error)
    return entry


def _kube_drains(model):
    """Drain nodes Kubernetes excludes (cordoned / exclude-from-external-load-balancers); undrain them when that ends."""
    try:
        excluded = _kube_call("edge_k8s.excluded_nodes", model)
    except Exception as exc:  # pylint: disable=broad-except
        log.warning("edge: cannot read Kubernetes nodes: %s", exc)
        return []
    if excluded is None:
        return []
    by_kube = {v["kubernetes_node"]: n for n, v in model["nodes"].items()}
    want = {by_kube[k]: why for k, why in excluded.items() if k in by_kube}
    drained = _drained()
    out = []
    for node, why in sorted(want.items()):
        if node not in drained:
            result = _drain(model, node, f"kubernetes: {why}", "kubernetes")
            out.append(f"{node}: drained (kubernetes: {why}){'' if result['ok'] else ' FAILED: ' + result['error']}")
    for node, info in sorted(drained.items()):
        if info.get("source") == "kubernetes" and node not in want:
            result = _undrain(model, node, "kubernetes: no longer excluded")
            out.append(f"{node}: undrained (kubernetes){'' if result['ok'] else ' FAILED: ' + result['error']}")
    return out


def _owners_changed(model, reports, actions):
    """
    Kubernetes: the Service's observed-owner annotation (every node that has
    the address, a list during a split brain or with a stale copy), and an
    Event per failover (the live owner, a node with a running keepalived,
    changed since the last one seen).
    """
    holders = fleet.vip_holders(model, reports, running_only=False)
    owners = {v: (h[0] if len(h) == 1 else (h or None)) for v, h in holders.items()}
    live = fleet.live_owners(model, reports)
    last = _load_json("owners.json", {})
    for vip, owner in sorted(live.items()):
        before = last.get(vip)
        if before and owner != before:
            _event("VIPFailover", f"{vip}: owner {before} -> {owner}", model=model)
    if any(last.get(v) != o for v, o in live.items()):
        _save_json("owners.json", dict(last, **live))
    try:
        result = _kube_call("edge_k8s.set_vip_owners", model, owners)
        if result and result.get("changed"):
            actions.append(f"service annotation vip-owners: {result.get('new')}")
    except Exception as exc:  # pylint: disable=broad-except
        log.warning("edge: vip-owners annotation not updated: %s", exc)
    return owners


def _reconcile(reason="manual", test=False, retry_failed=False, refresh=False):
    """One reconcile (the caller holds the lock). ``refresh``: the pillar was just compiled; Kubernetes drains too."""
    started = time.monotonic()
    began = time.time()
    state = _desired()
    model = state["model"]
    reports = _reports(model)
    seen = planner.ReconcileStart.of(began, reports)  # recorded once this run is done (see trigger)
    drains = _drained(reports)
    digests = _digests(model, drains)
    split_hold = __opts__.get("edge_ha_split_brain_hold", SPLIT_HOLD)  # pylint: disable=undefined-variable
    actions, events = [], []
    jobs_before = _PROCESS.get("jobs", 0)
    # data-plane safety first, before any Kubernetes call: pod readiness does not change it, and a
    # Kubernetes API that accepts connections but never answers must not delay a fence
    safety = planner.plan(model, reports, None, drains, time.time(), digests, split_hold=split_hold)
    if not test:
        _apply_safety(safety, actions, events)
        if safety.safety:
            _bump("fencing_actions", by=len(safety.fence) + len(safety.split_fence) + len(safety.release))
        if refresh:
            drained_by_kube = _kube_drains(model)
            if drained_by_kube:
                actions += drained_by_kube
                reports = _reports(model)
                drains = _drained(reports)
                digests = _digests(model, drains)
    # LoadBalancer Services (issue #15; nothing without edge_ha:address_pools): addresses assigned and
    # their VRRP instances in the pillar before the plan, so this reconcile's staged reload renders them
    lb_notes = []
    lb_run = None if test else _lb_assign(state, actions, lb_notes)
    if lb_run and lb_run["state"] is not state:
        state = lb_run["state"]
        model = state["model"]
        digests = _digests(model, drains)
    kube = planner.KubeView(pods_ready=_pods_ready(model))
    wanted = planner.plan(model, reports, kube, drains, time.time(), digests, split_hold=split_hold)
    if wanted.rerender and not refresh:
        # a node runs another config than the kept model's: the pillar may have changed since it was
        # compiled (a highstate renders from the node's fresh pillar). Compile now, then decide.
        state = _desired(refresh=True)
        model = state["model"]
        digests = _digests(model, drains)
        wanted = planner.plan(model, reports, kube, drains, time.time(), digests, split_hold=split_hold)
    if not test:
        # safety actions that the second look found (reports read again after Kubernetes drains)
        _apply_safety(planner.Plan(fence=[n for n in wanted.fence if n not in safety.fence],
                                   split_fence={n: r for n, r in wanted.split_fence.items() if n not in safety.split_fence},
                                   release=[n for n in wanted.release if n not in safety.release]), actions, events)
    wanted.notes[:0] = _standing_notes(state) + lb_notes
    rollout = None
    if not test:
        _apply_flags(wanted, actions, drains, events)
    if wanted.rerender and not test:
        if wanted.node_jobs > len(wanted.rerender):
            reports = _reports(model)  # who holds what now
        rollout_actions, rollout = _rollout(model, reports, wanted.rerender, digests, reason, retry_failed)
        actions += rollout_actions
        if rollout["steps"] or rollout["stopped_at"]:
            _record("rollout", reason=reason, steps=rollout["steps"], stopped_at=rollout["stopped_at"],
                    error=rollout["error"])
        if rollout["stopped_at"] and not rollout.get("outdated"):
            events.append(("RolloutStopped", f"staged reload stopped at {rollout['stopped_at']}: {rollout['error']}",
                           "Warning"))
        for node in rollout["blocked"]:
            wanted.notes.append(f"{node}: its new keepalived config failed before and is not retried until it "
                                "changes (salt-run edge.reconcile retry_failed=True)")
        for node, entry in sorted(rollout["retry"].items()):
            wanted.notes.append(f"{node}: new keepalived config not applied yet ({entry.get('error')}); tried again "
                                f"after {time.strftime('%H:%M:%S', time.localtime(entry.get('next', 0)))} "
                                f"(attempt {entry.get('attempts')})")
        for node in rollout["held"]:
            wanted.notes.append(f"{node}: new keepalived config held back: the staged reload stopped at "
                                f"{', '.join(rollout['blocked'])}")
        if rollout["steps"]:
            reports = _reports(model)
    # Kubernetes last: the data plane never waits behind it
    service = _set_service(model, wanted, reason, test)
    if service.get("changed") and not test:
        actions.append(f"service externalIPs: {service['old']} -> {service['new']}")
    elif service.get("error"):
        actions.append(f"service externalIPs NOT updated: {service['error']}")
    if not test:
        for reason_, message, kind in events:
            _event(reason_, message, kind, model)
        _owners_changed(model, reports, actions)
        _lb_status(model, reports, lb_run, actions, reloaded=bool(rollout and rollout["steps"]))
    result = {
        "reason": reason,
        "test": bool(test),
        "plan": wanted.to_dict(),
        "stale_config": wanted.rerender,
        "pillar_errors": state.get("errors") or [],
        "rollout": rollout,
        "actions": actions,
        "minion_jobs": _PROCESS.get("jobs", 0) - jobs_before,  # jobs this reconcile sent (one per _job call)
        "service": service,
        "seconds": round(time.monotonic() - started, 3),
    }
    if not test:
        error = service.get("error") or (rollout or {}).get("error")
        counters = _bump("reconcile_runs", "reconcile_errors" if error else None)
        if actions or error or reason != "schedule":  # quiet scheduled runs stay out of the history
            _record("reconcile", reason=reason, actions=actions, notes=wanted.notes, seconds=result["seconds"],
                    error=error, run=counters["reconcile_runs"])
        _write_metrics(model, reports, {"match": not service.get("changed") if "error" not in service else None})
        # what this run saw, for the triggers the reactor hands over late; written at the end, so that a
        # run killed half-way (or one that raised) covers no event
        _save_json(STARTED_RECORD, dataclasses.asdict(seen))
    return result


def _set_service(model, wanted, reason, test):
    """The Service's externalIPs as the plan says (a PATCH only when they differ)."""
    try:
        result = _kube_call(
            "edge_k8s.set_external_ips",
            model,
            vips=_vips(model),
            nodes=_kube_nodes(model),
            healthy=wanted.service_nodes,
            reason=f"salt-edge-ha reconcile ({reason})",
            address_source="pillar",
            test=test,
        )
        return result if result is not None else {"error": "edge_k8s.set_external_ips is not loaded"}
    except Exception as exc:  # pylint: disable=broad-except
        return {"error": str(exc)}


def reconcile(reason="manual", test=False, retry_failed=False):
    """
    Bring the edge in line with the pillar and the nodes' real state (see the
    module docstring). Compiles the pillar first. Returns what it found and
    what it changed (``minion_jobs``: how many jobs it sent).

    retry_failed
        also retry a node whose new keepalived config failed in an earlier
        staged reload (otherwise skipped until its rendered config changes)

    CLI Example:

    .. code-block:: bash

        salt-run edge.reconcile
        salt-run edge.reconcile test=True
    """
    _desired(refresh=True)  # compiled before the lock: triggered reconciles go on meanwhile
    if test:
        return _reconcile(reason, test=True, refresh=True)
    with _locked():
        result = _reconcile(reason, retry_failed=bool(retry_failed), refresh=True)
    _run_pending()  # triggers that arrived meanwhile
    if (result.get("rollout") or {}).get("error") or result["service"].get("error"):
        result["retcode"] = 1
    return result


def _wait_ipvs_drain(model, node, reports, timeout):
    """Wait (bounded) until the directors have no connections left on ``node``'s real servers."""
    servers = [vs for vs in model["virtual_servers"].values() if vs["managed_by"] == "keepalived"]
    if not servers:
        return "no keepalived virtual_servers: no IPVS connections to drain"
    address = model["nodes"][node]["address"]
    directors = sorted({n for h in fleet.vip_holders(model, reports).values() for n in h} | {node})
    deadline = time.monotonic() + timeout
    start = time.monotonic()
    while True:
        tables = _job(directors, "ipvs.list_services", timeout=30)
        conns = closing = templates = 0
        errors = []
        for director in directors:
            table = tables.get(director)
            if not isinstance(table, list):
                errors.append(f"{director}: {table}")
                continue
            active, inactive, kept = ipvs_connections(table, servers, address)
            conns, closing, templates = conns + active, closing + inactive, templates + kept
        if errors and len(errors) == len(directors):
            return f"IPVS connections not checked: {'; '.join(errors)}"
        if conns == 0:
            left = [f"{n} {what}" for n, what in ((closing, "inactive entries"), (templates, "persistence templates"))
                    if n]
            return f"IPVS connections to {address} drained in {time.monotonic() - start:.1f}s" + (
                f" ({' and '.join(left)} left to expire)" if left else "")
        if time.monotonic() > deadline:
            return f"IPVS: {conns} connections to {address} still open after {timeout}s (drain_timeout); going on"
        time.sleep(1)


def _drain(model, node, reason, source, drain_timeout=None):
    """The drain steps (lock held by the caller); on failure nothing stays half-done."""
    started = time.time()
    steps = []
    drained = _drained()
    previous = drained.get(node)
    drained[node] = {"reason": reason, "since": time.time(), "source": source}
    _save_json("drained.json", drained)
    _crash_point("drain:recorded")
    try:
        names = sorted(drained)
        _job(model["nodes"], "keepalived.set_drained_nodes", [names])
        reports = _reports(model)
        done, holders = fleet.handover_state(model, reports, node)
        if any(node in h for h in holders.values()):
            _progress(f"drain {node}: holding new connections to its VIPs back, then handing them over")
            done, release_steps, holders, reports = _release(model, node, f"drained: {reason}", True)
            steps += release_steps
            if not done:
                raise CommandExecutionError(
                    f"{node} did not hand its VIPs over within {_handover_timeout(model, node):.0f}s (holders: {holders})"
                )
            steps.append("VIPs handed over: " + ", ".join(f"{v} -> {','.join(h)}" for v, h in sorted(holders.items())))
            _progress(f"drain {node}: {steps[-1]}")
        else:
            _job(node, "keepalived.standby", [True, f"drained: {reason}"])
            steps.append("holds no VIP; priority lowered")
        digests = _digests(model, drained)
        stale = planner.config_to_rerender(model, reports, digests)
        if stale:
            _progress(f"drain {node}: its IPVS real servers to weight 0 on {', '.join(stale)} (staged reload)")
            actions, info = _rollout(model, reports, stale, digests, f"drain {node}", retry_failed=True)
            steps += actions
            if info["stopped_at"] and not info.get("outdated"):
                raise CommandExecutionError(f"staged reload for the IPVS weights stopped at {info['stopped_at']}: {info['error']}")
            reports = _reports(model)
        timeout = float(drain_timeout if drain_timeout is not None else __opts__.get("edge_ha_drain_timeout", 60))  # pylint: disable=undefined-variable
        _progress(f"drain {node}: waiting for IPVS connections to it to end (at most {timeout:.0f}s)")
        steps.append(_wait_ipvs_drain(model, node, reports, timeout))
    except Exception as exc:  # pylint: disable=broad-except
        # undo: the node goes back to how it was
        if previous is None:
            drained.pop(node, None)
        else:
            drained[node] = previous
        _save_json("drained.json", drained)
        _job(model["nodes"], "keepalived.set_drained_nodes", [sorted(drained)])
        if previous is None:
            _job(node, "keepalived.standby", [False])
        _record("drain", node=node, reason=reason, source=source, error=str(exc), steps=steps)
        return {"ok": False, "node": node, "error": str(exc), "steps": steps, "seconds": round(time.time() - started, 3)}
    _record("drain", node=node, reason=reason, source=source, steps=steps)
    _event("NodeDrained", f"{node} drained ({reason}): " + "; ".join(steps), model=model)
    return {"ok": True, "node": node, "steps": steps, "error": None, "seconds": round(time.time() - started, 3)}


def _undrain(model, node, reason):
    started = time.time()
    drained = _drained()
    info = drained.pop(node, None)
    _save_json("drained.json", drained)
    _crash_point("undrain:recorded")
    steps = []
    _job(model["nodes"], "keepalived.set_drained_nodes", [sorted(drained)])
    reports = _reports(model)
    digests = _digests(model, drained)
    stale = planner.config_to_rerender(model, reports, digests)
    error = None
    if stale:
        _progress(f"undrain {node}: IPVS weights restored on {', '.join(stale)} (staged reload)")
        actions, rollout = _rollout(model, reports, stale, digests, f"undrain {node}", retry_failed=True)
        steps += actions
        error = rollout["error"]
        reports = _reports(model)
    # VIPs that come back to this node (it has the highest priority): the current owner
    # releases them the same careful way, once this node's priority is back
    restored = []

    def restore():
        if not restored:
            _job(node, "keepalived.standby", [False])
            restored.append(True)

    for name, inst in model["vrrp_instances"].items():
        if node not in inst["nodes"] or not reports.get(node):
            continue
        current = [h for v in inst["vips"] for h in fleet.vip_holders(model, reports).get(v, [])]
        if fleet.vrrp_winner(model, reports, name, ready_override={node}) != node or not current or node in current:
            continue
        for holder in sorted(set(current)):
            _progress(f"undrain {node}: {holder} hands {name}'s VIPs back")
            done, release_steps, holders, reports = _release(model, holder, f"undrain {node}", False, restore)
            steps += release_steps
            steps.append(f"{name}: VIPs back on " + ", ".join(f"{v} -> {','.join(h)}" for v, h in sorted(holders.items())))
    restore()
    steps.append("priority restored")
    _record("undrain", node=node, reason=reason, source=(info or {}).get("source", "manual"), steps=steps, error=error)
    _event("NodeUndrained", f"{node} back in service ({reason})", model=model)
    return {"ok": error is None, "node": node, "steps": steps, "error": error, "was_drained": info is not None,
            "seconds": round(time.time() - started, 3)}


def _exit_code(result):
    """``retcode: 1`` in a result that says it failed: ``salt-run`` then exits 1."""
    if not result.get("ok", True) or result.get("error"):
        result["retcode"] = 1
    return result


def _refused(node, exc):
    """A call refused before anything was touched: the reason, and ``retcode: 1`` (salt-run exits 1)."""
    log.error("edge: %s", exc)
    return {"ok": False, "node": node, "error": str(exc), "steps": [], "retcode": 1}


def _seconds(name, value):
    """A positive number of seconds, or SaltInvocationError naming the argument (checked before anything is touched)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not number > 0 or number == float("inf"):
        raise SaltInvocationError(f"{name} must be a positive number of seconds, not {value!r}")
    return number


def _check_node(model, node):
    if node not in model["nodes"]:
        raise SaltInvocationError(f"{node!r} is not an edge node (edge_ha:nodes: {', '.join(sorted(model['nodes']))})")


def drain(node, reason="maintenance", drain_timeout=None):
    """
    Take an edge node out for planned maintenance, without failing requests:

    1. if it holds VIPs: new TCP connections to them are held back (an
       nftables rule drops SYNs; clients retry after 1 s), the requests in
       flight finish (``edge_ha_quiesce_timeout``, default 10 s), then the
       node releases the VIPs at once (priority-0 advert) and the drain waits
       until another node holds each of them (``edge_ha_handover_timeout``,
       default 3 x advert_int + 10 s); the retried SYNs land there. Cost: new
       connections during the handover wait about one second;
    2. its priority drops to 1 (``keepalived.standby``): it stays a backup of
       last resort and does not take the VIPs back;
    3. every node renders the node's IPVS real servers with weight 0 (staged
       reload, SIGHUP: VRRP state kept), then the drain waits until the
       directors report no connections left on it (``drain_timeout``, default
       ``edge_ha_drain_timeout`` or 60 s; it goes on after that, saying so);
    4. the node leaves the Service's externalIPs (a reconcile).

    It stays drained across reconciles and master restarts until
    ``edge.undrain``. If a step fails, the node is put back as it was and the
    error is returned (``ok: False``).

    CLI Example:

    .. code-block:: bash

        salt-run edge.drain edge1
        salt-run edge.drain edge1 reason="kernel update" drain_timeout=120
    """
    try:
        drain_timeout = None if drain_timeout is None else _seconds("drain_timeout", drain_timeout)
        model = _model()
        _check_node(model, node)
    except SaltInvocationError as exc:
        return _refused(node, exc)
    with _locked(what=f"drain {node}"):
        result = _drain(model, node, reason, "manual", drain_timeout)
        if result["ok"]:
            result["reconcile"] = _reconcile(f"drain {node}", refresh=True)["actions"]
    _run_pending()
    return _exit_code(result)


def undrain(node, reason="maintenance done"):
    """
    Put a drained node back: real-server weights restored (staged reload),
    configured priority restored; if that makes it the owner of a VIP again
    (highest priority), the current owner hands the VIP back the same way a
    drain does (new connections held back, requests in flight finished, then
    the release). Back in the Service's externalIPs once its ingress is healthy.

    CLI Example:

    .. code-block:: bash

        salt-run edge.undrain edge1
    """
    try:
        model = _model()
        _check_node(model, node)
    except SaltInvocationError as exc:
        return _refused(node, exc)
    with _locked(what=f"undrain {node}"):
        result = _undrain(model, node, reason)
        result["reconcile"] = _reconcile(f"undrain {node}", refresh=True)["actions"]
    _run_pending()
    return _exit_code(result)


def drained():
    """
    The drained nodes: ``{node: {reason, since, source}}`` (source ``manual``
    for edge.drain, ``kubernetes`` for cordoned / excluded nodes).

    CLI Example:

    .. code-block:: bash

        salt-run edge.drained
    """
    return _drained()


def _metrics_path():
    opts = __opts__  # pylint: disable=undefined-variable
    return opts.get("edge_ha_metrics_file") or os.path.join(_state_dir(), "edge_ha.prom")


def _write_metrics(model, reports, service):
    path = _metrics_path()
    drained = _drained()
    text = views.metrics_text(model, reports, views.build_report(model, reports, service, drained),
                              _history_entries(), _counters(), drained, _load_json("rollout_failed.json", {}))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(path + ".tmp", path)
    return path


def metrics():
    """
    Gather the edge's state now and write the Prometheus textfile
    (``edge_ha_metrics_file`` in the master config, default
    ``<cachedir>/edge_ha/edge_ha.prom``; every reconcile rewrites it too).
    Returns the path and the text.

    CLI Example:

    .. code-block:: bash

        salt-run edge.metrics
    """
    model = _model()
    reports = _reports(model)
    path = _write_metrics(model, reports, None)
    with open(path, encoding="utf-8") as fh:
        return {"path": path, "text": fh.read()}


def history(limit=50, kind=None):
    """
    Recorded transitions (as the minions reported them), fencing, reconcile
    actions and ignored events, newest first, with who/what/why. Kept on the
    master (last 5000 entries) across restarts.

    kind
        only these kinds: reconcile, fence, transition, ignored (comma-separated)

    CLI Example:

    .. code-block:: bash

        salt-run edge.history
        salt-run edge.history limit=200 kind=fence,transition --out=json
    """
    kinds = set(kind.split(",")) if isinstance(kind, str) else (set(kind) if kind else None)
    try:
        number = int(limit)
    except (TypeError, ValueError):
        number = 0
    if number < 1 or str(number) != str(limit).strip():
        message = f"limit must be a whole number of entries (at least 1), not {limit!r}"
        log.error("edge: %s", message)
        return {"ok": False, "error": message, "retcode": 1}
    limit = number
    rows = views.history_rows(_history_entries(), limit, kinds)
    if __opts__.get("output"):  # pylint: disable=undefined-variable
        return rows
    lines = []
    for row in rows:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["time"])) if row["time"] else "-"
        lines.append(f"{stamp}  {row['kind']:<10} {row['who']:<18} {row['what']}  [{row['why']}]")
    return "\n".join(lines) or "no history yet"


STARTED_RECORD = "reconcile.started.json"  # when the latest finished reconcile began and the reports it read
FOLLOW_UP_QUIET = 0.5
FOLLOW_UP_MAX_WAIT = 5.0


PENDING = "reconcile.pending"  # the record of a trigger not reconciled yet: {source, time}


def _pending():
    """The pending trigger ``{source, time}``, or None (also when the store does not answer: nothing to run)."""
    record = _load_json(PENDING, None)
    return record if isinstance(record, dict) else None


def _settle():
    """Before a follow-up run, let the tail of a burst arrive: wait until no trigger for FOLLOW_UP_QUIET s."""
    deadline = time.monotonic() + FOLLOW_UP_MAX_WAIT
    while time.monotonic() < deadline:
        record = _pending()
        if record is None:
            return
        idle = time.time() - float(record.get("time") or 0)
        if idle >= FOLLOW_UP_QUIET:
            return
        time.sleep(min(FOLLOW_UP_QUIET - idle, FOLLOW_UP_QUIET))


def _release_when_taken_over(node, source, event_time):
    wait = float(__opts__.get("edge_ha_handover_timeout") or 15)  # pylint: disable=undefined-variable
    try:
        released = salt.client.get_local_client(__opts__["conf_file"]).cmd(  # pylint: disable=undefined-variable
            node, "edge_node.release_when_taken_over", [wait], timeout=wait + 10).get(node)
    except Exception as exc:  # pylint: disable=broad-except
        log.warning("edge: stale VIP fast path on %s failed: %s", node, exc)
        return
    if released:
        _record("fence", node=node, action=f"stale VIPs removed: {released}", why=source,
                seen=event_time)  # when the beacon saw it (as the minion says)
        _bump("fencing_actions")
        _event("StaleVIPRemoved", f"{node}: stale VIPs removed (keepalived not running): {released}", "Warning")


def _number(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _first_time(node, transition, event_time):
    """False for a transition this process has recorded already (a beacon event delivered twice)."""
    key = (node, str(transition.get("instance")), str(transition.get("old")), str(transition.get("new")), event_time)
    with _PROCESS["lock"]:
        seen = _PROCESS.setdefault("transitions", [])
        if key in seen:
            return False
        seen.append(key)
        del seen[:-256]
    return True


def trigger(source="", claimed_id="", event_time=0, transition=None, report=None, seen=0, stamp=""):
    """
    Called by the reactor on a beacon event: drop events claiming to come from
    a minion that is not an edge node, wait (at most ``edge_ha_report_wait``
    s, default 1) until the node's report in the mine is the one the event
    names (``report``, its digest), then reconcile, coalescing bursts (one
    reconcile at a time; triggers that arrive meanwhile collapse into a single
    follow-up run). ``source=schedule`` (the master's schedule) also compiles
    the pillar again.

    CLI Example:

    .. code-block:: bash

        salt-run edge.trigger source=manual claimed_id=edge1

    ``event_time`` is the beacon's own timestamp, kept only for the record.
    ``stamp`` is Salt's ``_stamp`` of the event (when it reached the
    master's bus, master clock): a trigger for an event that a finished
    reconcile begun after it has already seen (and, for a beacon event, the
    report it names) returns ``covered`` without a run.
    """
    source, claimed_id = str(source)[:256], str(claimed_id)[:128]  # event fields, bounded before use
    nodes = _edge_node_names()
    tag_id = source.split("/")[2] if source.startswith("salt/beacon/") and source.count("/") >= 3 else claimed_id
    if source == "schedule":  # the master's own schedule (reactor sources are always event tags)
        pass
    elif source == LB_SERVICES_TAG and not claimed_id:
        pass  # the master's edge_ha_services engine (a minion's event always names its id): a hint only
    elif claimed_id not in nodes or tag_id != claimed_id:
        log.warning("edge: ignoring event %r claiming minion %r: not an edge node of edge_ha:nodes", source, claimed_id)
        _record("ignored", source=source, claimed_id=claimed_id)
        return {"ignored": True, "source": source, "claimed_id": claimed_id}
    if transition and isinstance(transition, dict) and _first_time(claimed_id, transition, event_time):
        # history only: what the minion says happened (the reconcile below checks for itself)
        instance = str(transition.get("instance"))[:64]
        _record("transition", node=claimed_id, instance=instance, old=str(transition.get("old"))[:16],
                new=str(transition.get("new"))[:16], seen=event_time)
        _bump(f"vrrp_transitions/{claimed_id}/{instance}")
    if source.endswith("/vrrp/split_brain"):
        _record("conflict", node=claimed_id, why=source, seen=event_time)
    if source.endswith("/vrrp/stale_vip"):
        # fast path, beside the reconcile (which drops the node from the Service meanwhile): the node
        # removes its stale copy as soon as another host answers ARP for the VIP (before that, the
        # killed node is what still answers). It refuses while its keepalived runs, so a forged event
        # cannot take a live VIP away.
        # (the thread runs in a copy of this call's context: the loader's dunders live there)
        threading.Thread(target=contextvars.copy_context().run,
                         args=(_release_when_taken_over, claimed_id, source, event_time),
                         name="edge-ha-stale-vip", daemon=True).start()
    names_report, held = False, None
    if source == "schedule":
        _desired(refresh=True)  # the pillar compiled outside the reconcile lock
    elif isinstance(report, str) and DIGEST_RE.match(report):
        # the event is a hint only: what counts is the report Salt stored under the node's verified id
        names_report = True
        held = _await_report(claimed_id, report, _number(seen), float(__opts__.get("edge_ha_report_wait", 1)))  # pylint: disable=undefined-variable
    start = planner.ReconcileStart.from_dict(_load_json(STARTED_RECORD, None))
    if planner.trigger_covered(start, planner.stamp_time(stamp), claimed_id, held, names_report):
        # a reconcile began after this event reached the master, read the report it names and finished: the
        # reactor handed it over late, in a burst; running again would change nothing
        return {"queued": False, "covered": True, "source": source, "runs": 0}
    try:
        _records().save(PENDING, {"source": source, "time": time.time()})
    except Exception as exc:  # pylint: disable=broad-except
        # the store does not answer: no reconcile can take the lease either (issue #16 item 3 is the rest)
        log.error("edge: trigger %s not recorded (the store: %s)", source, exc)
        return {"queued": False, "source": source, "runs": 0, "error": str(exc)}
    return _run_pending(source)


def _run_pending(source=""):
    """Run reconciles while a trigger is pending and nobody else holds the lease (see trigger)."""
    runs = 0
    while _pending() is not None:
        holding = _lease("trigger")
        try:
            attempt = holding.try_acquire()
        except Exception as exc:  # pylint: disable=broad-except
            log.error("edge: the reconcile lease cannot be taken (the store: %s); trigger not run", exc)
            return {"queued": False, "source": source, "runs": runs, "error": str(exc)}
        if attempt.lease is None:
            # a reconcile is running (here or on another master); it will see the pending record when it ends
            return {"queued": True, "source": source, "runs": runs}
        with _holding(holding):
            if runs:
                _settle()
            record = _pending()
            if record is None:
                continue
            _records().delete(PENDING)
            why = str(record.get("source") or source)  # the latest trigger, which may not be this call's
            _reconcile(reason=why or "trigger", refresh=why == "schedule")
            runs += 1
    return {"queued": False, "source": source, "runs": runs}


def vip_report(test=False):  # pylint: disable=unused-argument
    """
    Who really owns each VIP, the backups and their priorities, ingress health
    per node, whether the Service's externalIPs match, the last transition,
    and the pillar's errors while it is invalid (the last good model is what
    the rows show). Reads the nodes' reports from the mine: no job to any
    minion. A table by default; ``--out=json`` or ``--out=yaml`` give the rows.

    CLI Example:

    .. code-block:: bash

        salt-run edge.vip_report
        salt-run edge.vip_report --out=json
    """
    state = _desired(refresh=True)
    model = state["model"]
    reports = _reports(model)
    drained_nodes = _drained(reports)
    wanted = planner.plan(model, reports, planner.KubeView(_pods_ready(model)), drained_nodes,
                          desired=_digests(model, drained_nodes))
    wanted.notes[:0] = _standing_notes()
    desired = _set_service(model, wanted, "report", True)
    if "error" in desired:
        service = {"match": None, "error": desired["error"]}
    else:
        service = {"match": not desired["changed"], "current": desired["old"], "desired": desired["new"]}
    rows = views.build_report(model, reports, service, drained_nodes)
    report = {"vips": rows, "service": service, "notes": wanted.notes, "pillar_errors": state.get("errors") or [],
              "stale_config": wanted.rerender}
    load_balancer = _lb_report(model, rows)
    if load_balancer:
        report["load_balancer"] = load_balancer
    if __opts__.get("output"):  # pylint: disable=undefined-variable
        return report
    return views.format_report(report) + _lb_report_text(load_balancer)


# ------------------------------------------------------- LoadBalancer Services (issue #15)
#
# Only with edge_ha:address_pools in the pillar. Before the plan (_lb_assign): list the
# LoadBalancer Services, assign addresses (edge_ha_core.lb.plan), record them on the Services,
# write the record lb_instances.json (the edge_ha_lb ext_pillar merges it into the
# pillar as vrrp_instances) when the instances change and compile the pillar again, so the
# staged reload renders them. After the rollout (_lb_status): status.loadBalancer.ingress for
# the Services whose address a node holds, [] for the ones whose address went; Events.

LB_SERVICES_TAG = "edge_ha/kubernetes/services"  # fired by the edge_ha_services engine
LB_RECORD = "lb_instances.json"  # read by the edge_ha_lb ext_pillar
LB_EVENTS = "lb_events.json"  # the refusal Events posted (one per Service and reason+message)
LB_CONFLICT_RETRIES = 3


def _lb_list(model):
    """``(listing, records)`` of the cluster's LoadBalancer Services."""
    listing = _kube_call("edge_k8s.load_balancer_services", model)
    return listing, [lb.service_record(s) for s in listing["services"]]


def _lb_event(model, svc, reason, message, event_type="Normal"):
    try:
        _kube_call("edge_k8s.service_event", model, svc.namespace, svc.name, reason, message,
                   event_type=event_type, uid=svc.uid or None)
    except Exception as exc:  # pylint: disable=broad-except
        log.warning("edge: Event %s on Service %s not posted: %s", reason, svc.key, exc)


def _lb_assign(state, actions, notes):
    """
    The LoadBalancer step before the plan (see above). Returns None without
    address pools, else ``{"state", "plan", "records", "listing",
    "versions", "error"}`` (``state``: the model compiled again when the
    instances changed).
    """
    model = state["model"]
    if not model.get("address_pools"):
        return None
    run = {"state": state, "plan": None, "records": [], "listing": [], "versions": {}, "error": None}
    pools = lb.pools_from_model(model)
    default = bool(model["load_balancer"]["default_class"])
    for attempt in range(LB_CONFLICT_RETRIES):
        try:
            listing, records = _lb_list(model)
            plan = lb.plan(pools, records, default_class=default, active=lb.active_addresses(model))
            by_key = {r.key: r for r in records}
            versions = {r.key: r.resource_version for r in records}
            for a in plan.to_record():
                svc = by_key[a.service]
                done = _kube_call("edge_k8s.record_assignment", model, svc.namespace, svc.name, a.annotation,
                                  versions[a.service])
                versions[a.service] = done["resource_version"]
                actions.append(f"LoadBalancer {a.service}: {a.address} (pool {a.pool}, VRID {a.vrid}) recorded")
                _lb_event(model, svc, "AddressAssigned", f"{a.address} from address pool {a.pool} (VRRP instance "
                          f"{lb.instance_name(a.pool, a.vrid, 6 if ':' in a.address else 4)}); written to "
                          "status.loadBalancer.ingress once an edge node holds it")
        except Exception as exc:  # pylint: disable=broad-except
            if getattr(exc, "conflict", False) and attempt + 1 < LB_CONFLICT_RETRIES:
                continue  # a Service changed since the list: list again and plan again
            run["error"] = str(exc)
            notes.append(f"LoadBalancer Services not reconciled: {exc}")
            log.warning("edge: LoadBalancer Services not reconciled: %s", exc)
            return run
        break
    run.update(plan=plan, records=records, versions=versions,
               listing=[(r, lb.ingress_ips(s)) for r, s in zip(records, listing["services"])])
    for note in plan.notes:
        log.info("edge: LoadBalancer: %s", note)
    _lb_refusals(model, plan, by_key)
    instances = lb.pool_instances(plan, model)
    services = lb.services_by_address(plan)
    recorded = _load_json(LB_RECORD, {})
    recorded = recorded if isinstance(recorded, dict) else {}
    before = recorded.get("instances") or {}
    if before != instances or (recorded.get("services") or {}) != services:
        _save_json(LB_RECORD, {"instances": instances, "services": services})
    if before != instances:
        gone = sorted(set(before) - set(instances))
        new = sorted(set(instances) - set(before))
        actions.append(f"LoadBalancer VRRP instances: +{new} -{gone}" if gone else f"LoadBalancer VRRP instances: +{new}")
        _record("load_balancer", added=new, removed=gone, released=list(plan.released))
        run["state"] = _desired(refresh=True)
        # before the staged reload, not beside it: a refresh (beacons restarted) while the minion forks the
        # state.apply's job process left that process waiting on a lock for ever in the lab
        _lb_refresh_pillar(run["state"]["model"], actions)
        missing = set(instances) - set(run["state"]["model"]["vrrp_instances"])
        if missing:
            notes.append(f"LoadBalancer VRRP instances not in the compiled pillar: {sorted(missing)} (is the "
                         "edge_ha_lb ext_pillar configured on the master? see docs/kubernetes.md)")
    return run


def _lb_refresh_pillar(model, actions):
    """
    The edge nodes' in-memory pillar refreshed (one job): their reports
    (``keepalived.status`` through ``edge_ha.node_view``) must know the new
    instances, or an address a node holds would never show as held.
    ``state.apply`` renders from a fresh pillar, the minion's beacons do not.
    """
    try:
        done = _job(sorted(model["nodes"]), "saltutil.refresh_pillar", ["wait=True"], timeout=30)
    except Exception as exc:  # pylint: disable=broad-except
        done = {"error": str(exc)}
    failed = sorted(n for n in model["nodes"] if done.get(n) is not True)
    if failed:
        actions.append(f"pillar NOT refreshed on {', '.join(failed)} (their reports may miss the new instances)")


def _lb_refusals(model, plan, by_key):
    """A Warning Event per refusal, once per Service and reason+message (durable record)."""
    posted = _load_json(LB_EVENTS, {})
    posted = posted if isinstance(posted, dict) else {}
    now = {}
    for r in plan.refusals:
        key = f"{r.service}/{r.uid}"
        now[key] = f"{r.reason}: {r.message}"
        if posted.get(key) != now[key]:
            _lb_event(model, by_key[r.service], r.reason, r.message, "Warning")
    if now != posted:
        _save_json(LB_EVENTS, now)


def _lb_status(model, reports, run, actions, reloaded=False):
    """
    After the rollout: status.loadBalancer.ingress of each listed Service as
    ``lb.status_writes`` says (an address once a node holds it), then our
    annotation off the Services that have no address any more. A 409 lists
    the Services again (once). ``reloaded``: the staged reload just ran: wait
    (``edge_ha_lb_status_wait``, default 6 s) for new addresses to be held.
    """
    if not run or run.get("plan") is None:
        return
    plan = run["plan"]
    addresses = {a.service: a.address for a in plan.assignments}
    held = {v for v, h in fleet.vip_holders(model, reports).items() if h}
    wait = float(__opts__.get("edge_ha_lb_status_wait", 6))  # pylint: disable=undefined-variable
    pending = set(addresses.values()) - held
    if pending and reloaded and wait > 0:
        # a new instance elects its owner a few adverts after the reload: wait for it (bounded)
        deadline = time.monotonic() + wait
        while pending and time.monotonic() < deadline:
            time.sleep(0.3)
            reports = _reports(model)
            held = {v for v, h in fleet.vip_holders(model, reports).items() if h}
            pending = set(addresses.values()) - held
    listing, versions = run["listing"], dict(run["versions"])
    for attempt in range(2):
        try:
            for svc, want in lb.status_writes(listing, addresses, held):
                done = _kube_call("edge_k8s.set_load_balancer_status", model, svc.namespace, svc.name, want,
                                  versions.get(svc.key))
                versions[svc.key] = done["resource_version"]
                actions.append(f"LoadBalancer {svc.key}: status.loadBalancer.ingress {want}")
            for svc in lb.to_unrecord([r for r, _ in listing], plan):
                done = _kube_call("edge_k8s.record_assignment", model, svc.namespace, svc.name, None,
                                  versions.get(svc.key))
                versions[svc.key] = done["resource_version"]
                actions.append(f"LoadBalancer {svc.key}: {svc.recorded.address} released")
                _lb_event(model, svc, "AddressReleased", f"{svc.recorded.address} released (the Service has no "
                          "address of ours any more)")
            return
        except Exception as exc:  # pylint: disable=broad-except
            if getattr(exc, "conflict", False) and attempt == 0:
                try:  # a Service changed since the list: list again, write what it needs now
                    fresh, records = _lb_list(model)
                except Exception:  # pylint: disable=broad-except
                    return
                listing = [(r, lb.ingress_ips(s)) for r, s in zip(records, fresh["services"])]
                versions = {r.key: r.resource_version for r in records}
                continue
            log.warning("edge: LoadBalancer status not written: %s", exc)
            return


def _lb_report(model, rows):
    """
    For edge.vip_report (with address pools only): ``services`` per VIP on
    the rows and ``{"services": {address: [namespace/name]}, "owner_spread":
    {node: VIPs it is preferred owner of}}``.
    """
    if not model.get("address_pools"):
        return None
    recorded = _load_json(LB_RECORD, {})
    services = (recorded.get("services") if isinstance(recorded, dict) else None) or {}
    for row in rows:
        if row.get("vip") in services:
            row["services"] = services[row["vip"]]
    return {"services": services, "owner_spread": lb.owner_spread(model)}


def _lb_report_text(load_balancer):
    if not load_balancer:
        return ""
    lines = ["", "LoadBalancer Services:"]
    lines += [f"  {address:<40} {', '.join(keys)}" for address, keys in load_balancer["services"].items()] or [
        "  (no address assigned)"]
    lines.append("Preferred owners: " + ", ".join(f"{node} {count}" for node, count in
                                                  load_balancer["owner_spread"].items()))
    return "\n".join(lines)
