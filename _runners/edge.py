"""
The master side of salt-edge-ha: reconcile the edge, report who owns each VIP.

``edge.reconcile`` is level-triggered: it never trusts an event's payload. It
reads the real state of every edge node as Salt job returns (authenticated by
Salt; ``edge_node.report`` on each minion), computes the desired world and
changes only what differs:

- a node whose ingress is unhealthy is taken out of VIP ownership
  (``keepalived.out_of_service``: its instances go to FAULT, the VIP moves at
  once) and put back when healthy again. The last node in service is never
  taken out: with every ingress down, the VIP stays where it is;
- the Service's ``externalIPs`` become the VIPs plus the nodes that can
  really serve (minion answered, ingress healthy, node in service, ingress pod
  ready), through the ``edge_k8s`` module;
- keepalived is re-applied (``state.apply edge``) only on the minions whose
  rendered config differs from the one they run.

``edge.trigger`` is what the reactor calls on a beacon event. It ignores
events that claim to come from a minion that is not an edge node, and
coalesces bursts: while a reconcile runs, any number of triggers collapse into
one follow-up run, which starts once triggers have been quiet for 0.5 s (at
most 5 s later), so the tail of a burst lands in it too.

``edge.vip_report`` shows, per VIP, the node that *really* has the address on
its interface, the backups, ingress health, whether the Service matches, and
the last transition.

Master settings (master config, all optional):

.. code-block:: yaml

    edge_ha_pillar_id: edge1        # compile the edge_ha pillar as this minion (default: the master's own id)
    edge_ha_timeout: 10             # seconds to wait for edge minions' returns
"""

import fcntl
import json
import logging
import os
import time

import salt.client
import salt.loader

log = logging.getLogger(__name__)

__virtualname__ = "edge"

FENCE_REASON = "ingress unhealthy"
SPLIT_REASON = "split brain"
SPLIT_HOLD = 30  # seconds a split-brain fence stays before it is lifted to test the path again


def __virtual__():
    return __virtualname__


# ---------------------------------------------------------------- pure logic


def node_healthy(report):
    """Ingress verdict of one node report (None: the minion did not answer)."""
    if not report:
        return None
    return bool(report["ingress"]["healthy"])


def split_brain_losers(model, reports):
    """
    Nodes to fence because another running keepalived holds the same VIP.
    Deterministic: the holder with the highest configured priority keeps it
    (tie: the highest node address, as VRRP itself decides). Returns
    ``{node: reason}``.
    """
    import ipaddress  # pylint: disable=import-outside-toplevel

    losers = {}
    for inst in model["vrrp_instances"].values():
        holders = [
            n for n in inst["nodes"]
            if reports.get(n) and reports[n]["keepalived"]["running"]
            and reports[n]["keepalived"]["instances"].get(inst["name"], {}).get("vips_present")
        ]
        if len(holders) < 2:
            continue
        winner = max(holders, key=lambda n: (inst["priorities"][n], ipaddress.ip_address(model["nodes"][n]["address"])))
        for node in holders:
            if node != winner:
                losers.setdefault(node, f"{SPLIT_REASON}: {winner} keeps {inst['name']}")
    return losers


def plan(model, reports, pods_ready=None, now=None, split_hold=SPLIT_HOLD):
    """
    The desired changes, from the model and the nodes' reports.

    reports
        ``{node: edge_node.report() or None}``
    pods_ready
        ``{node: bool}`` ingress pod readiness from Kubernetes, or None if unknown

    Returns ``{fence, unfence, release, split_fence, service_nodes, notes}``; ``release``
    lists nodes whose keepalived is not running but whose interface still
    holds VIPs (stale VIPs, e.g. after a SIGKILL).
    """
    notes = []
    reachable = sorted(n for n in model["nodes"] if reports.get(n))
    for node in sorted(set(model["nodes"]) - set(reachable)):
        notes.append(f"{node}: no answer from the minion; left as it is")
    stopped = {n for n in reachable if not reports[n]["keepalived"]["running"]}
    release = sorted(
        n for n in stopped
        if any(i["vips_present"] for i in reports[n]["keepalived"]["instances"].values())
    )
    for node in sorted(stopped):
        notes.append(f"{node}: keepalived is not running (not restarted by reconcile; state.apply starts it)")
    healthy = {n for n in reachable if node_healthy(reports[n])}
    now = time.time() if now is None else now
    out_now = {n for n in reachable if reports[n]["out_of_service"]["out_of_service"]}
    ours = {n for n in out_now if reports[n]["out_of_service"]["reason"] == FENCE_REASON}
    split = split_brain_losers(model, reports)
    split_fenced = {n for n in out_now if reports[n]["out_of_service"]["reason"].startswith(SPLIT_REASON)}
    # lift a split-brain fence after the hold time; if the path is still broken it splits and is fenced again
    lift = {
        n for n in split_fenced
        if n not in split and now - (reports[n]["out_of_service"].get("since") or now) >= split_hold
    }
    for node in sorted(split_fenced - lift):
        notes.append(f"{node}: out of VIP ownership ({reports[node]['out_of_service']['reason']})")
    fence = sorted(set(reachable) - healthy - out_now - set(split))
    unfence = sorted((ours & healthy) | (lift & healthy))
    in_service = (set(reachable) - out_now - set(fence)) | set(unfence)
    if fence and not in_service:
        notes.append(
            "every reachable node's ingress is unhealthy: not taking the last ones ("
            + ", ".join(fence) + ") out of VIP ownership"
        )
        in_service |= set(fence)
        fence = []
    service_nodes = sorted(
        n for n in in_service - stopped
        if n in healthy and (pods_ready is None or pods_ready.get(n, False))
    )
    service_nodes = [n for n in service_nodes if n not in split and n not in split_fenced - lift]
    split_fence = {n: r for n, r in split.items() if n not in out_now}
    return {"fence": fence, "unfence": unfence, "release": release, "split_fence": split_fence,
            "service_nodes": service_nodes, "notes": notes}


def build_report(model, reports, service=None):
    """
    One row per VIP: the observed owner(s) (address really on the interface),
    backups with state and priority, ingress health per node, Service match,
    last transition. ``flags``: ``no_owner`` (no running keepalived holds it),
``split_brain`` (two running keepalived hold it), ``stale_vip`` (a node whose
keepalived is not running still has it).
    """
    rows = []
    for inst in model["vrrp_instances"].values():
        for vip in inst["vips"]:
            holders, others, last = [], [], None
            for node in inst["nodes"]:
                report = reports.get(node)
                if not report:
                    others.append({"node": node, "state": "NO ANSWER", "priority": None})
                    continue
                status = report["keepalived"]["instances"].get(inst["name"], {})
                since = status.get("since")
                if since and (last is None or since > last):
                    last = since
                entry = {
                    "node": node,
                    "state": status.get("state", "UNKNOWN") if report["keepalived"]["running"] else "STOPPED",
                    "priority": status.get("priority"),
                }
                if vip in status.get("vips_present", []):
                    holders.append(entry)
                else:
                    others.append(entry)
            flags = []
            live = [h for h in holders if h["state"] != "STOPPED"]
            if not live:
                flags.append("no_owner")
            if len(live) > 1:
                flags.append("split_brain")
            if len(live) < len(holders):
                flags.append("stale_vip")
            rows.append({
                "vip": vip,
                "instance": inst["name"],
                "vrid": inst["virtual_router_id"],
                "owner": [h["node"] for h in holders],
                "owner_detail": holders,
                "backups": others,
                "ingress": {n: node_healthy(reports.get(n)) for n in inst["nodes"]},
                "service_match": None if service is None else service.get("match"),
                "last_transition": last,
                "flags": flags,
            })
    return rows


def format_table(rows):
    """The report as a text table."""
    def when(stamp):
        return time.strftime("%H:%M:%S", time.localtime(stamp)) if stamp else "-"

    def health(value):
        return {True: "ok", False: "DOWN", None: "?"}[value]

    header = ("VIP", "VRID", "OWNER", "BACKUPS (prio)", "INGRESS", "SERVICE", "LAST CHANGE", "FLAGS")
    lines = []
    for row in rows:
        lines.append((
            row["vip"],
            str(row["vrid"]),
            ",".join(row["owner"]) or "NONE",
            " ".join(
                f"{b['node']}({b['priority'] if b['priority'] is not None else '-'}{'' if b['state'] == 'BACKUP' else ' ' + b['state']})"
                for b in row["backups"]
            ) or "-",
            " ".join(f"{n}:{health(h)}" for n, h in row["ingress"].items()),
            {True: "match", False: "DIFFERS", None: "?"}[row["service_match"]],
            when(row["last_transition"]),
            ",".join(row["flags"]) or "-",
        ))
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines)]
    fmt = "  ".join("{:<%d}" % w for w in widths)
    return "\n".join(fmt.format(*line).rstrip() for line in [header] + lines)


def history_rows(entries, limit=50, kinds=None):
    """History entries newest first as ``{time, kind, who, what, why}`` rows."""
    rows = []
    for entry in reversed(entries):
        kind = entry.get("kind")
        if kinds and kind not in kinds:
            continue
        if kind == "reconcile":
            what = "; ".join(entry.get("actions") or []) or "nothing to change"
            if entry.get("error"):
                what += f"; ERROR {entry['error']}"
            row = {"who": "edge.reconcile", "what": what, "why": entry.get("reason", "")}
        elif kind == "fence":
            row = {"who": "edge.trigger", "what": f"{entry.get('node')}: {entry.get('action')}", "why": entry.get("why", "")}
        elif kind == "transition":
            row = {"who": f"{entry.get('node')} (reported)",
                   "what": f"{entry.get('instance')}: {entry.get('old')} -> {entry.get('new')}",
                   "why": "vrrp beacon"}
        elif kind == "conflict":
            row = {"who": f"{entry.get('node')} (reported)", "what": "another host answers ARP for a VIP it holds",
                   "why": entry.get("why", "")}
        elif kind == "ignored":
            row = {"who": "edge.trigger", "what": f"ignored event claiming {entry.get('claimed_id')!r}",
                   "why": entry.get("source", "")}
        else:
            row = {"who": "", "what": json.dumps(entry, default=str), "why": ""}
        row["time"] = entry.get("time")
        row["kind"] = kind
        rows.append(row)
        if len(rows) >= limit:
            break
    return rows


STATES = ("MASTER", "BACKUP", "FAULT", "STOP", "UNKNOWN")


def _label(value):
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def metrics_text(model, reports, rows, entries, counters=None):
    """Prometheus text exposition of the edge's state (for node_exporter's textfile collector)."""
    out = []

    def family(name, kind, help_text, samples):
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
            out.append(f"{name}{{{text}}} {value}" if text else f"{name} {value}")

    states, prios, up = [], [], []
    for node in sorted(model["nodes"]):
        report = reports.get(node)
        up.append(({"node": node}, 1 if report else 0))
        if not report:
            continue
        for inst, status in sorted(report["keepalived"]["instances"].items()):
            current = status.get("state", "UNKNOWN") if report["keepalived"]["running"] else "STOP"
            for state in STATES:
                states.append(({"node": node, "instance": inst, "state": state}, 1 if current == state else 0))
            if status.get("priority") is not None:
                prios.append(({"node": node, "instance": inst}, status["priority"]))
    family("edge_ha_node_up", "gauge", "1 if the edge minion answered the last reconcile or report", up)
    family("edge_ha_vrrp_state", "gauge", "VRRP state per node and instance (1 = current state)", states)
    family("edge_ha_vrrp_priority", "gauge", "Effective VRRP priority per node and instance", prios)
    flags = []
    for row in rows:
        for flag in ("no_owner", "split_brain", "stale_vip"):
            flags.append(({"vip": row["vip"], "flag": flag}, 1 if flag in row["flags"] else 0))
    family("edge_ha_vip_flag", "gauge", "1 while a VIP has no owner, two owners, or a stale copy", flags)
    transitions = {}
    for entry in entries:
        if entry.get("kind") == "transition":
            key = (entry.get("node"), entry.get("instance"))
            transitions[key] = transitions.get(key, 0) + 1
    family("edge_ha_vrrp_transitions_total", "counter", "VRRP transitions reported by the vrrp beacon",
           [({"node": n, "instance": i}, c) for (n, i), c in sorted(transitions.items())])
    runs = [e for e in entries if e.get("kind") == "reconcile"]
    counters = counters or {}
    family("edge_ha_reconcile_runs_total", "counter", "edge.reconcile runs",
           [({}, counters.get("reconcile_runs", len(runs)))])
    family("edge_ha_reconcile_errors_total", "counter", "edge.reconcile runs that hit an error",
           [({}, counters.get("reconcile_errors", sum(1 for e in runs if e.get("error"))))])
    family("edge_ha_fencing_actions_total", "counter", "Stale VIPs removed and nodes taken out of VIP ownership",
           [({}, sum(1 for e in entries if e.get("kind") == "fence")
             + sum(1 for e in runs for a in e.get("actions") or [] if "out of VIP ownership" in a or "stale VIPs" in a))])
    failover = last_failover_seconds(entries)
    if failover is not None:
        family("edge_ha_last_failover_seconds", "gauge",
               "Time from an owner leaving MASTER to another node entering MASTER, last failover", [({}, failover)])
    return "\n".join(out) + "\n"


def last_failover_seconds(entries):
    """From reported transitions: the last X -> MASTER preceded by another node's MASTER -> X."""
    last_left = {}
    result = None
    for entry in entries:
        if entry.get("kind") != "transition":
            continue
        inst, node = entry.get("instance"), entry.get("node")
        if entry.get("old") == "MASTER" and entry.get("new") != "MASTER":
            last_left[inst] = (node, entry.get("seen") or entry["time"])
        elif entry.get("new") == "MASTER" and inst in last_left and last_left[inst][0] != node:
            result = round((entry.get("seen") or entry["time"]) - last_left[inst][1], 3)
    return result


# ---------------------------------------------------------------- Salt layer


def _state_dir():
    path = os.path.join(__opts__["cachedir"], "edge_ha")  # pylint: disable=undefined-variable
    os.makedirs(path, exist_ok=True)
    return path


def _mods():
    """Execution modules on the master (edge_ha model, edge_k8s), loaded once per process."""
    ctx = __context__  # pylint: disable=undefined-variable
    if "edge_ha_mods" not in ctx:
        opts = dict(__opts__)  # pylint: disable=undefined-variable
        opts["enable_fqdns_grains"] = False  # no reverse DNS lookups on the master
        opts["grains"] = salt.loader.grains(opts)
        opts["pillar"] = {}
        ctx["edge_ha_mods"] = salt.loader.minion_mods(opts, utils=salt.loader.utils(opts))
    return ctx["edge_ha_mods"]


NODES_CACHE_TTL = 60


def _model():
    opts = __opts__  # pylint: disable=undefined-variable
    pillar = __salt__["pillar.show_pillar"](opts.get("edge_ha_pillar_id") or None)  # pylint: disable=undefined-variable
    model = _mods()["edge_ha.model"](pillar=pillar.get("edge_ha"))
    path = os.path.join(_state_dir(), "nodes.json")
    with open(path + ".tmp", "w", encoding="utf-8") as fh:
        json.dump(sorted(model["nodes"]), fh)
    os.replace(path + ".tmp", path)
    return model


def _edge_node_names():
    """The edge node names, from the last model load if recent (a trigger must be cheap), else from the pillar."""
    path = os.path.join(_state_dir(), "nodes.json")
    try:
        if time.time() - os.path.getmtime(path) < NODES_CACHE_TTL:
            with open(path, encoding="utf-8") as fh:
                return set(json.load(fh))
    except (OSError, ValueError):
        pass
    return set(_model()["nodes"])


def _client():
    return salt.client.get_local_client(__opts__["conf_file"])  # pylint: disable=undefined-variable


def _gather(model):
    """edge_node.report from every edge minion, as authenticated job returns."""
    timeout = __opts__.get("edge_ha_timeout", 10)  # pylint: disable=undefined-variable
    nodes = sorted(model["nodes"])
    returns = _client().cmd(nodes, "edge_node.report", tgt_type="list", timeout=timeout)
    reports = {}
    for node in nodes:
        value = returns.get(node)
        if isinstance(value, dict) and "keepalived" in value:
            reports[node] = value
        else:
            if value is not None:
                log.warning("edge: %s returned an error for edge_node.report: %s", node, value)
            reports[node] = None
    return reports


def _kube_nodes(model):
    return {n: {"address": v["address"], "kubernetes_node": v["kubernetes_node"]} for n, v in model["nodes"].items()}


def _pods_ready(model):
    try:
        pods = _mods()["edge_k8s.ingress_pods"](kubernetes=model["kubernetes"])
    except Exception as exc:  # pylint: disable=broad-except
        log.warning("edge: cannot read ingress pods: %s", exc)
        return None
    return {n: bool(pods.get(v["kubernetes_node"], {}).get("ready")) for n, v in model["nodes"].items()}


def _vips(model):
    return [v for inst in model["vrrp_instances"].values() for v in inst["vips"]]


HISTORY_KEEP = 5000


def _record(kind, **data):
    """
    Append one JSON line to the master's history (``<cachedir>/edge_ha/reconcile.log``),
    kept to the last HISTORY_KEEP entries; it survives master restarts.
    """
    path = os.path.join(_state_dir(), "reconcile.log")
    with open(path + ".lock", "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        entry = dict(data, kind=kind, time=time.time())  # stamped under the lock: the file stays in time order
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry, default=str) + "\n")
        if os.path.getsize(path) > HISTORY_KEEP * 400:
            with open(path, encoding="utf-8") as fh:
                lines = fh.readlines()
            if len(lines) > HISTORY_KEEP:
                with open(path + ".tmp", "w", encoding="utf-8") as fh:
                    fh.writelines(lines[-HISTORY_KEEP:])
                os.replace(path + ".tmp", path)


def _bump(*names):
    """Increment persistent counters (for the metrics); returns them all."""
    path = os.path.join(_state_dir(), "counters.json")
    with open(path + ".lock", "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        counters = _counters()
        for name in names:
            if name:
                counters[name] = counters.get(name, 0) + 1
        with open(path + ".tmp", "w", encoding="utf-8") as fh:
            json.dump(counters, fh)
        os.replace(path + ".tmp", path)
    return counters


def _counters():
    try:
        with open(os.path.join(_state_dir(), "counters.json"), encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {}


def _history_entries():
    path = os.path.join(_state_dir(), "reconcile.log")
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.readlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def reconcile(reason="manual", test=False):
    """
    Bring the edge in line with the pillar and the nodes' real state (see the
    module docstring). Returns what it found and what it changed.

    CLI Example:

    .. code-block:: bash

        salt-run edge.reconcile
        salt-run edge.reconcile test=True
    """
    started = time.time()
    model = _model()
    reports = _gather(model)
    pods = _pods_ready(model)
    wanted = plan(model, reports, pods, split_hold=__opts__.get("edge_ha_split_brain_hold", SPLIT_HOLD))  # pylint: disable=undefined-variable
    client = _client()
    actions = []
    if not test:
        for node in wanted["fence"]:
            client.cmd(node, "keepalived.out_of_service", [True, FENCE_REASON], timeout=10)
            actions.append(f"{node}: out of VIP ownership ({FENCE_REASON})")
        for node in wanted["unfence"]:
            client.cmd(node, "keepalived.out_of_service", [False], timeout=10)
            actions.append(f"{node}: back in VIP ownership (ingress healthy)")
        for node, why in sorted(wanted["split_fence"].items()):
            client.cmd(node, "keepalived.out_of_service", [True, why], timeout=10)
            actions.append(f"{node}: out of VIP ownership ({why})")
        for node in wanted["release"]:
            released = client.cmd(node, "keepalived.release_stale_vips", timeout=10).get(node)
            actions.append(f"{node}: stale VIPs removed (keepalived not running): {released}")
    # keepalived re-rendered only where the config differs
    running = [n for n in sorted(model["nodes"]) if reports.get(n) and reports[n]["keepalived"]["running"]]
    plans = client.cmd(running, "keepalived.plan", tgt_type="list", timeout=30) if running else {}
    stale = sorted(n for n, p in plans.items() if isinstance(p, dict) and p.get("diff"))
    invalid = sorted(n for n, p in plans.items() if isinstance(p, dict) and not p.get("valid", True))
    if stale and not test:
        applied = client.cmd(stale, "state.apply", ["edge"], tgt_type="list", timeout=120)
        for node in stale:
            result = applied.get(node)
            ok = isinstance(result, dict) and all(v.get("result") for v in result.values())
            actions.append(f"{node}: keepalived re-applied ({'ok' if ok else 'FAILED'})")
    service = {}
    try:
        service = _mods()["edge_k8s.set_external_ips"](
            vips=_vips(model),
            nodes=_kube_nodes(model),
            healthy=wanted["service_nodes"],
            reason=f"salt-edge-ha reconcile ({reason})",
            address_source="pillar",
            kubernetes=model["kubernetes"],
            test=test,
        )
        if service.get("changed") and not test:
            actions.append(f"service externalIPs: {service['old']} -> {service['new']}")
    except Exception as exc:  # pylint: disable=broad-except
        service = {"error": str(exc)}
        actions.append(f"service externalIPs NOT updated: {exc}")
    result = {
        "reason": reason,
        "test": bool(test),
        "plan": wanted,
        "stale_config": stale,
        "invalid_config": invalid,
        "actions": actions,
        "service": service,
        "seconds": round(time.time() - started, 3),
    }
    if not test:
        counters = _bump("reconcile_runs", "reconcile_errors" if service.get("error") else None)
        if actions or service.get("error") or reason != "schedule":  # quiet scheduled runs stay out of the history
            _record("reconcile", reason=reason, actions=actions, notes=wanted["notes"], seconds=result["seconds"],
                    error=service.get("error"), run=counters["reconcile_runs"])
        _write_metrics(model, reports, {"match": not service.get("changed") if "error" not in service else None})
    return result


def _metrics_path():
    opts = __opts__  # pylint: disable=undefined-variable
    return opts.get("edge_ha_metrics_file") or os.path.join(_state_dir(), "edge_ha.prom")


def _write_metrics(model, reports, service):
    path = _metrics_path()
    text = metrics_text(model, reports, build_report(model, reports, service), _history_entries(), _counters())
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
    reports = _gather(model)
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
    rows = history_rows(_history_entries(), int(limit), kinds)
    if __opts__.get("output"):  # pylint: disable=undefined-variable
        return rows
    lines = []
    for row in rows:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["time"])) if row["time"] else "-"
        lines.append(f"{stamp}  {row['kind']:<10} {row['who']:<18} {row['what']}  [{row['why']}]")
    return "\n".join(lines) or "no history yet"


FOLLOW_UP_QUIET = 0.5
FOLLOW_UP_MAX_WAIT = 5.0


def _settle(pending):
    """Before a follow-up run, let the tail of a burst arrive: wait until no trigger for FOLLOW_UP_QUIET s."""
    deadline = time.monotonic() + FOLLOW_UP_MAX_WAIT
    while time.monotonic() < deadline:
        try:
            idle = time.time() - os.path.getmtime(pending)
        except OSError:
            return
        if idle >= FOLLOW_UP_QUIET:
            return
        time.sleep(FOLLOW_UP_QUIET - idle)


def trigger(source="", claimed_id="", event_time=0, transition=None):
    """
    Called by the reactor on a beacon event: drop events claiming to come from
    a minion that is not an edge node, then reconcile, coalescing bursts (one
    reconcile at a time; triggers that arrive meanwhile collapse into a single
    follow-up run).

    CLI Example:

    .. code-block:: bash

        salt-run edge.trigger source=manual claimed_id=edge1

    ``event_time`` is the beacon's own timestamp, kept only for the record.
    """
    nodes = _edge_node_names()
    tag_id = source.split("/")[2] if source.startswith("salt/beacon/") and source.count("/") >= 3 else claimed_id
    if source == "schedule":  # the master's own schedule (reactor sources are always event tags)
        pass
    elif claimed_id not in nodes or tag_id != claimed_id:
        log.warning("edge: ignoring event %r claiming minion %r: not an edge node of edge_ha:nodes", source, claimed_id)
        _record("ignored", source=source, claimed_id=claimed_id)
        return {"ignored": True, "source": source, "claimed_id": claimed_id}
    if transition and isinstance(transition, dict):
        # history only: what the minion says happened (the reconcile below checks for itself)
        _record("transition", node=claimed_id, instance=transition.get("instance"), old=transition.get("old"),
                new=transition.get("new"), seen=event_time)
    if source.endswith("/vrrp/split_brain"):
        _record("conflict", node=claimed_id, why=source, seen=event_time)
    if source.endswith("/vrrp/stale_vip"):
        # fast path: fence at once. The node itself refuses while its keepalived runs,
        # so a forged event cannot take a live VIP away.
        released = _client().cmd(claimed_id, "keepalived.release_stale_vips", timeout=10).get(claimed_id)
        if released:
            _record("fence", node=claimed_id, action=f"stale VIPs removed: {released}", why=source,
                    seen=event_time)  # when the beacon saw it (as the minion says)
    state = _state_dir()
    pending = os.path.join(state, "reconcile.pending")
    with open(pending, "w", encoding="utf-8") as fh:
        fh.write(source)
    runs = 0
    while os.path.exists(pending):
        with open(os.path.join(state, "reconcile.lock"), "w", encoding="utf-8") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                # a reconcile is running; it will see the pending mark when it ends
                return {"queued": True, "source": source, "runs": runs}
            if runs:
                _settle(pending)
            try:
                with open(pending, encoding="utf-8") as fh:
                    why = fh.read() or source  # the latest trigger, which may not be this call's
                os.unlink(pending)
            except FileNotFoundError:
                continue
            reconcile(reason=why or "trigger")
            runs += 1
    return {"queued": False, "source": source, "runs": runs}


def vip_report(test=False):
    """
    Who really owns each VIP, the backups and their priorities, ingress health
    per node, whether the Service's externalIPs match, the last transition.
    A table by default; ``--out=json`` or ``--out=yaml`` give the rows.

    CLI Example:

    .. code-block:: bash

        salt-run edge.vip_report
        salt-run edge.vip_report --out=json
    """
    model = _model()
    reports = _gather(model)
    pods = _pods_ready(model)
    wanted = plan(model, reports, pods)
    try:
        desired = _mods()["edge_k8s.set_external_ips"](
            vips=_vips(model), nodes=_kube_nodes(model), healthy=wanted["service_nodes"],
            address_source="pillar", kubernetes=model["kubernetes"], test=True,
        )
        service = {"match": not desired["changed"], "current": desired["old"], "desired": desired["new"]}
    except Exception as exc:  # pylint: disable=broad-except
        service = {"match": None, "error": str(exc)}
    rows = build_report(model, reports, service)
    if __opts__.get("output"):  # pylint: disable=undefined-variable
        return {"vips": rows, "service": service, "notes": wanted["notes"]}
    text = format_table(rows)
    if service.get("error"):
        text += f"\nservice: {service['error']}"
    elif service.get("match") is False:
        text += f"\nservice externalIPs: {service['current']}, should be {service['desired']}"
    for note in wanted["notes"]:
        text += f"\nnote: {note}"
    return text
