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

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time

import salt.client
import salt.loader
from salt.exceptions import CommandExecutionError
from salt.exceptions import SaltInvocationError

log = logging.getLogger(__name__)

__virtualname__ = "edge"

FENCE_REASON = "ingress unhealthy"
SPLIT_REASON = "split brain"
LOCK_WAIT = 600  # seconds edge.reconcile/drain/undrain wait for another one to finish
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


def plan(model, reports, pods_ready=None, now=None, split_hold=SPLIT_HOLD, drained=None):
    """
    The desired changes, from the model and the nodes' reports.

    reports
        ``{node: edge_node.report() or None}``
    pods_ready
        ``{node: bool}`` ingress pod readiness from Kubernetes, or None if unknown
    drained
        ``{node: {reason, since, source}}``: nodes taken out by ``edge.drain``
        (or by Kubernetes: cordoned / excluded from load balancers)

    Returns ``{fence, unfence, release, split_fence, service_nodes, standby_on,
    standby_off, drained_lists, notes}``; ``release`` lists nodes whose
    keepalived is not running but whose interface still holds VIPs (stale
    VIPs, e.g. after a SIGKILL). ``standby_on``/``standby_off``: nodes whose
    standby (priority 1) must be set (drained) or lifted (left over by an
    interrupted drain or staged reload); ``drained_lists``: nodes whose
    recorded list of drained nodes (IPVS weight 0) is not the master's.
    """
    drained = drained or {}
    notes = []
    reachable = sorted(n for n in model["nodes"] if reports.get(n))
    for node in sorted(set(model["nodes"]) - set(reachable)):
        notes.append(f"{node}: no answer from the minion; left as it is")
    stopped = {n for n in reachable if not reports[n]["keepalived"]["running"]}
    live = vip_holders(model, reports)
    leftover = {n: stale_vips_of(reports[n]) for n in stopped}
    # a stale copy is removed once a live node holds the VIP: until then the killed node still serves it
    release = sorted(n for n, vips in leftover.items() if vips and all(live.get(v) for v in vips))
    for node in sorted(n for n, vips in leftover.items() if vips and n not in release):
        notes.append(f"{node}: keepalived is not running; it still answers for {', '.join(leftover[node])} "
                     "until a backup takes over (then the copy is removed)")
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
    service_nodes = [n for n in service_nodes if n not in drained]
    split_fence = {n: r for n, r in split.items() if n not in out_now}
    standby = {n for n in reachable if (reports[n].get("standby") or {}).get("standby")}
    want_list = sorted(drained)
    drained_lists = sorted(
        n for n in reachable if "drained_nodes" in reports[n] and sorted(reports[n]["drained_nodes"]) != want_list
    )
    for node in sorted(drained):
        why = drained[node].get("reason") or drained[node].get("source") or ""
        notes.append(f"{node}: drained ({why})")
    return {"fence": fence, "unfence": unfence, "release": release, "split_fence": split_fence,
            "service_nodes": service_nodes, "standby_on": sorted(set(drained) & set(reachable) - standby),
            "standby_off": sorted(standby - set(drained)), "drained_lists": drained_lists, "notes": notes}


def stale_vips_of(report):
    """The VIPs on a node's interfaces (whatever keepalived's state)."""
    return sorted({v for i in report["keepalived"]["instances"].values() for v in i.get("vips_present", [])})


def vip_holders(model, reports, running_only=True):
    """``{vip: [nodes that have it on their interface]}`` (only nodes whose keepalived runs, by default)."""
    out = {}
    for inst in model["vrrp_instances"].values():
        for vip in inst["vips"]:
            out[vip] = sorted(
                n for n in inst["nodes"]
                if reports.get(n) and (reports[n]["keepalived"]["running"] or not running_only)
                and vip in reports[n]["keepalived"]["instances"].get(inst["name"], {}).get("vips_present", [])
            )
    return out


def handover_state(model, reports, node, vips=None):
    """
    Whether ``node`` has handed its VIPs over: it holds none of the VIPs of its
    instances (or of ``vips``: the ones it held when the handover began; a VIP
    just added to the pillar has no holder yet), and each of them is held by
    exactly one other node with a running keepalived. Returns ``(done, {vip: holders})``.
    """
    holders = vip_holders(model, reports, running_only=False)
    mine = {v: holders[v] for inst in model["vrrp_instances"].values() if node in inst["nodes"] for v in inst["vips"]
            if vips is None or v in vips}
    live = vip_holders(model, reports)
    done = all(node not in h and len(live[v]) == 1 for v, h in mine.items())
    return done, mine


def rollout_order(nodes, reports):
    """
    Staged reload order: nodes holding no VIP first (BACKUPs), then the
    holders (the owners) last; by name within each group.
    """
    def holds(node):
        report = reports.get(node) or {}
        return any(i.get("vips_present") for i in (report.get("keepalived") or {}).get("instances", {}).values())

    return sorted(nodes, key=lambda n: (holds(n), n))


def ipvs_connections(services, virtual_servers, address):
    """
    Connections still on real server ``address`` in the given IPVS table
    (``ipvs.list_services`` output) for the keepalived virtual servers of the
    model: ``(active + inactive connections, persistence templates)``.
    """
    wanted = {(vs["protocol"], vs["address"], int(vs["port"])) for vs in virtual_servers}
    conns = templates = 0
    for svc in services or []:
        key = (str(svc.get("protocol", "")).upper(), svc.get("address"), int(svc.get("port") or 0))
        if key not in wanted:
            continue
        for dest in svc.get("destinations") or []:
            if dest.get("address") == address:
                conns += int(dest.get("active_connections") or 0) + int(dest.get("inactive_connections") or 0)
                templates += int(dest.get("persistent_connections") or 0)
    return conns, templates


def build_report(model, reports, service=None, drained=None):
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
                    "drained": node in (drained or {}),
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
                f"{b['node']}({b['priority'] if b['priority'] is not None else '-'}{'' if b['state'] == 'BACKUP' else ' ' + b['state']}"
                f"{' DRAINED' if b.get('drained') else ''})"
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
        elif kind in ("drain", "undrain"):
            what = f"{entry.get('node')}: {'drained' if kind == 'drain' else 'back in service'}"
            if entry.get("error"):
                what += f" FAILED: {entry['error']}"
            elif entry.get("steps"):
                what += "; " + "; ".join(entry["steps"])
            row = {"who": f"edge.{kind} ({entry.get('source', 'manual')})", "what": what, "why": entry.get("reason", "")}
        elif kind == "rollout":
            what = "staged reload " + " -> ".join(f"{n}:{r}" for n, r in entry.get("steps") or [])
            if entry.get("stopped_at"):
                what += f"; STOPPED at {entry['stopped_at']}: {entry.get('error')}"
            row = {"who": "edge.reconcile", "what": what, "why": entry.get("reason", "")}
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


def metrics_text(model, reports, rows, entries, counters=None, drained=None, rollout_failed=None):
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
    family("edge_ha_node_drained", "gauge", "1 while the node is drained (edge.drain, or cordoned in Kubernetes)",
           [({"node": n}, 1 if n in (drained or {}) else 0) for n in sorted(model["nodes"])])
    family("edge_ha_rollout_stopped", "gauge",
           "1 while a staged reload is stopped at this node (its new keepalived config failed)",
           [({"node": n}, 1 if n in (rollout_failed or {}) else 0) for n in sorted(model["nodes"])])
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


def _load_json(name, default):
    try:
        with open(os.path.join(_state_dir(), name), encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return default


def _save_json(name, data):
    path = os.path.join(_state_dir(), name)
    with open(path + ".tmp", "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
    os.replace(path + ".tmp", path)


def _drained():
    """``{node: {reason, since, source}}`` of drained nodes (the master's record, survives restarts)."""
    data = _load_json("drained.json", {})
    return data if isinstance(data, dict) else {}


@contextlib.contextmanager
def _locked(timeout=LOCK_WAIT):
    """Hold the master's reconcile lock (one reconcile/drain/undrain at a time)."""
    with open(os.path.join(_state_dir(), "reconcile.lock"), "w", encoding="utf-8") as lock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise CommandExecutionError(  # pylint: disable=raise-missing-from
                        f"another edge.reconcile/drain/undrain has held the lock for more than {timeout}s"
                    )
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _event(reason, message, event_type="Normal", model=None):
    """A Kubernetes Event on the ingress Service (never fails the caller)."""
    fun = _mods().get("edge_k8s.record_event")
    if not fun:
        return None
    try:
        return fun(reason, message, event_type=event_type, kubernetes=(model or _model())["kubernetes"])
    except Exception as exc:  # pylint: disable=broad-except
        log.warning("edge: Kubernetes Event %s not recorded: %s", reason, exc)
        return None


def _handover_timeout(model, node):
    adverts = [i["advert_int"] for i in model["vrrp_instances"].values() if node in i["nodes"]] or [1]
    return float(__opts__.get("edge_ha_handover_timeout") or 3 * max(adverts) + 10)  # pylint: disable=undefined-variable


def _handover(model, node, reason, client):
    """
    Standby on ``node`` (priority 1) and wait until other nodes hold its VIPs.
    Returns ``(done, holders, reports)``.
    """
    held = {v for v, h in vip_holders(model, _gather(model), running_only=False).items() if node in h}
    client.cmd(node, "keepalived.standby", [True, reason], timeout=10)
    deadline = time.monotonic() + _handover_timeout(model, node)
    while True:
        reports = _gather(model)
        done, holders = handover_state(model, reports, node, held)
        if done or time.monotonic() > deadline:
            return done, holders, reports
        time.sleep(0.3)


def _release(model, node, client, reason, standby_after, before=None, quiesce_timeout=None):
    """
    Move ``node``'s VIPs away without failing requests: new TCP connections to
    its VIPs are dropped (clients retry the SYN after 1 s), the requests in
    flight finish (bounded by ``edge_ha_quiesce_timeout``, default 10 s), then
    the node releases its VIPs at once (FAULT through the out-of-service track
    file: a priority-0 advert, the next backup takes over within its skew
    time), and the retried SYNs reach the new owner. ``before`` runs just
    before the release (undrain restores the target's priority there). Then
    the node goes to standby (``standby_after``) and back from FAULT to BACKUP.
    Returns ``(done, steps, holders, reports)``.
    """
    steps = []
    timeout = float(quiesce_timeout or __opts__.get("edge_ha_quiesce_timeout", 10))  # pylint: disable=undefined-variable
    quiesced = client.cmd(node, "edge_node.quiesce", [True], timeout=10).get(node)
    if not isinstance(quiesced, dict):
        steps.append(f"new connections NOT held back ({quiesced})")
    start = time.monotonic()
    left = None
    while time.monotonic() - start < timeout:
        left = client.cmd(node, "edge_node.vip_connections", timeout=10).get(node)
        if not isinstance(left, int) or left == 0:
            break
        time.sleep(0.1)
    steps.append(f"requests in flight finished in {time.monotonic() - start:.1f}s" if left == 0
                 else f"{left} connections still open after {timeout:.0f}s (edge_ha_quiesce_timeout); going on")
    oos = client.cmd(node, "keepalived.out_of_service_state", timeout=10).get(node) or {}
    held = {v for v, h in vip_holders(model, _gather(model), running_only=False).items() if node in h}
    try:
        if before:
            before()
        client.cmd(node, "keepalived.out_of_service", [True, f"handover: {reason}"], timeout=10)
        deadline = time.monotonic() + _handover_timeout(model, node)
        while True:
            reports = _gather(model)
            done, holders = handover_state(model, reports, node, held)
            if done or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if standby_after:
            client.cmd(node, "keepalived.standby", [True, reason], timeout=10)
    finally:
        if not oos.get("out_of_service"):
            client.cmd(node, "keepalived.out_of_service", [False], timeout=10)
        client.cmd(node, "edge_node.quiesce", [False], timeout=10)
    return done, steps, holders, reports


def _all_held(model, vips, timeout=10):
    """Wait until each of ``vips`` is held by a node with a running keepalived; returns (ok, holders, reports)."""
    deadline = time.monotonic() + timeout
    while True:
        reports = _gather(model)
        holders = {v: h for v, h in vip_holders(model, reports).items() if v in vips}
        if all(holders.values()) or time.monotonic() > deadline:
            return all(holders.values()), holders, reports
        time.sleep(0.3)


def _config_hash(text):
    return hashlib.sha256((text or "").encode()).hexdigest()[:16]


def _rollout(model, reports, plans, client, reason, retry_failed=False):
    """
    Staged reload of the nodes whose rendered config differs from the one on
    disk: BACKUPs first, VIP holders last; a holder hands its VIPs to a backup
    first (standby), so a config that makes keepalived exit never costs a VIP.
    After each node: keepalived running with the new config and every VIP
    held; otherwise the node goes back to its previous config and the rollout
    stops. A config that failed is not retried until it changes (or
    ``retry_failed``); while it is there, the other nodes' new configs are
    held back too (the rollout stays stopped). Returns ``(actions, info)``.
    """
    failed = _load_json("rollout_failed.json", {})
    actions, steps, blocked = [], [], []
    info = {"order": [], "steps": steps, "stopped_at": None, "error": None, "blocked": blocked, "held": []}
    todo = []
    for node, planned in plans.items():
        digest = _config_hash(planned.get("new"))
        if not retry_failed and failed.get(node, {}).get("hash") == digest:
            blocked.append(node)
            continue
        todo.append(node)
    if blocked:
        # the change that stopped a rollout is still there: the rollout stays stopped for every node
        info["held"], todo = sorted(todo), []
    info["order"] = order = rollout_order(todo, reports)
    drained = _drained()
    # the VIPs that had an owner before: a VIP the change adds has none until its owner is reloaded (last)
    held_before = {v for v, h in vip_holders(model, reports).items() if h}
    for node in order:
        digest = _config_hash(plans[node].get("new"))
        holds = any(i["vips_present"] for i in reports[node]["keepalived"]["instances"].values())
        others = [n for n in model["nodes"] if n != node and reports.get(n) and reports[n]["keepalived"]["running"]
                  and not (reports[n].get("standby") or {}).get("standby")
                  and not reports[n]["out_of_service"]["out_of_service"]]
        handed = False
        if holds and others:
            done, holders, reports = _handover(model, node, f"staged reload ({reason})", client)
            handed = True
            if not done:
                client.cmd(node, "keepalived.standby", [False], timeout=10)
                info["stopped_at"], info["error"] = node, f"could not hand its VIPs over before the reload: {holders}"
                steps.append((node, "not reloaded"))
                break
        applied = client.cmd(node, "state.apply", ["edge"], timeout=120).get(node)
        ok = isinstance(applied, dict) and all(isinstance(v, dict) and v.get("result") for v in applied.values())
        error = None
        if not ok:
            comments = [v.get("comment", "") for v in (applied or {}).values() if isinstance(v, dict) and not v.get("result")] \
                if isinstance(applied, dict) else [str(applied)]
            error = "state.apply edge failed: " + " | ".join(c.splitlines()[0] for c in comments if c)[:600]
        else:
            check = client.cmd(node, "keepalived.plan", kwarg={"fresh_pillar": True}, timeout=30).get(node)
            if not (isinstance(check, dict) and check.get("running") and not check.get("diff")):
                error = "keepalived is not running with the new config after the reload"
        if error is None:
            held, holders, reports = _all_held(model, held_before)
            if not held:
                error = f"a VIP has no owner after the reload: {holders}"
        if error:
            # keepalived.managed restores the previous file itself when keepalived dies; make sure of it
            back = client.cmd(node, "keepalived.rollback", timeout=60).get(node)
            running = client.cmd(node, "keepalived.running", timeout=10).get(node)
            if handed and node not in drained:
                client.cmd(node, "keepalived.standby", [False], timeout=10)
            failed[node] = {"hash": digest, "time": time.time(), "error": error}
            _save_json("rollout_failed.json", failed)
            info["stopped_at"], info["error"] = node, error
            steps.append((node, "FAILED, rolled back" + ("" if running else " (keepalived NOT running)")))
            actions.append(f"{node}: keepalived reload FAILED ({error}); previous config restored"
                           f" ({'running' if running else 'NOT running'}; rollback: {back}); rollout stopped")
            break
        if handed and node not in drained:
            client.cmd(node, "keepalived.standby", [False], timeout=10)
        failed.pop(node, None)
        _save_json("rollout_failed.json", failed)
        steps.append((node, "ok"))
        actions.append(f"{node}: keepalived re-applied (ok{', after handing its VIPs over' if handed else ''})")
    info["skipped"] = [n for n in order if n not in [s[0] for s in steps]]
    return actions, info


def _sync_drained(model, reports, wanted, client, test):
    """Standby and the recorded drained list on every node as the master's drained record says."""
    actions = []
    if test:
        return actions
    drained = sorted(_drained())
    for node in wanted["drained_lists"]:
        client.cmd(node, "keepalived.set_drained_nodes", [drained], timeout=10)
        actions.append(f"{node}: drained nodes set to {drained}")
    for node in wanted["standby_on"]:
        client.cmd(node, "keepalived.standby", [True, "drained"], timeout=10)
        actions.append(f"{node}: standby (drained)")
    for node in wanted["standby_off"]:
        client.cmd(node, "keepalived.standby", [False], timeout=10)
        actions.append(f"{node}: standby lifted (not drained)")
    return actions


def _kube_drains(model, client):
    """Drain nodes Kubernetes excludes (cordoned / exclude-from-external-load-balancers); undrain them when that ends."""
    fun = _mods().get("edge_k8s.excluded_nodes")
    if not fun:
        return []
    try:
        excluded = fun(kubernetes=model["kubernetes"])
    except Exception as exc:  # pylint: disable=broad-except
        log.warning("edge: cannot read Kubernetes nodes: %s", exc)
        return []
    by_kube = {v["kubernetes_node"]: n for n, v in model["nodes"].items()}
    want = {by_kube[k]: why for k, why in excluded.items() if k in by_kube}
    drained = _drained()
    out = []
    for node, why in sorted(want.items()):
        if node not in drained:
            result = _drain(model, node, f"kubernetes: {why}", "kubernetes", client)
            out.append(f"{node}: drained (kubernetes: {why}){'' if result['ok'] else ' FAILED: ' + result['error']}")
    for node, info in sorted(drained.items()):
        if info.get("source") == "kubernetes" and node not in want:
            result = _undrain(model, node, "kubernetes: no longer excluded", client)
            out.append(f"{node}: undrained (kubernetes){'' if result['ok'] else ' FAILED: ' + result['error']}")
    return out


def _owners_changed(model, reports, actions):
    """
    Kubernetes: the Service's observed-owner annotation (every node that has
    the address, a list during a split brain or with a stale copy), and an
    Event per failover (the live owner, a node with a running keepalived,
    changed since the last one seen).
    """
    holders = vip_holders(model, reports, running_only=False)
    owners = {v: (h[0] if len(h) == 1 else (h or None)) for v, h in holders.items()}
    live = {v: h[0] for v, h in vip_holders(model, reports).items() if len(h) == 1}
    last = _load_json("owners.json", {})
    for vip, owner in sorted(live.items()):
        before = last.get(vip)
        if before and owner != before:
            _event("VIPFailover", f"{vip}: owner {before} -> {owner}", model=model)
    if any(last.get(v) != o for v, o in live.items()):
        _save_json("owners.json", dict(last, **live))
    fun = _mods().get("edge_k8s.set_vip_owners")
    if fun:
        try:
            result = fun(owners, kubernetes=model["kubernetes"])
            if result.get("changed"):
                actions.append(f"service annotation vip-owners: {result.get('new')}")
        except Exception as exc:  # pylint: disable=broad-except
            log.warning("edge: vip-owners annotation not updated: %s", exc)
    return owners


def _reconcile(reason="manual", test=False, retry_failed=False):
    started = time.time()
    model = _model()
    client = _client()
    kube_actions = [] if test else _kube_drains(model, client)
    drained = _drained()
    reports = _gather(model)
    pods = _pods_ready(model)
    wanted = plan(model, reports, pods, split_hold=__opts__.get("edge_ha_split_brain_hold", SPLIT_HOLD),  # pylint: disable=undefined-variable
                  drained=drained)
    actions = list(kube_actions)
    if not test:
        for node in wanted["fence"]:
            client.cmd(node, "keepalived.out_of_service", [True, FENCE_REASON], timeout=10)
            actions.append(f"{node}: out of VIP ownership ({FENCE_REASON})")
            _event("VIPFenced", f"{node}: out of VIP ownership ({FENCE_REASON})", "Warning", model)
        for node in wanted["unfence"]:
            client.cmd(node, "keepalived.out_of_service", [False], timeout=10)
            actions.append(f"{node}: back in VIP ownership (ingress healthy)")
        for node, why in sorted(wanted["split_fence"].items()):
            client.cmd(node, "keepalived.out_of_service", [True, why], timeout=10)
            actions.append(f"{node}: out of VIP ownership ({why})")
            _event("SplitBrainFenced", f"{node}: out of VIP ownership ({why})", "Warning", model)
        for node in wanted["release"]:
            released = client.cmd(node, "keepalived.release_stale_vips", timeout=10).get(node)
            actions.append(f"{node}: stale VIPs removed (keepalived not running): {released}")
            if released:
                _event("StaleVIPRemoved", f"{node}: stale VIPs removed (keepalived not running): {released}",
                       "Warning", model)
    actions += _sync_drained(model, reports, wanted, client, test)
    # keepalived re-rendered only where the config differs, in stages
    running = [n for n in sorted(model["nodes"]) if reports.get(n) and reports[n]["keepalived"]["running"]]
    # fresh_pillar: compiled now, not the minion's in-memory copy (refreshing that restarts the beacons)
    plans = client.cmd(running, "keepalived.plan", kwarg={"fresh_pillar": True}, tgt_type="list",
                       timeout=30) if running else {}
    stale = sorted(n for n, p in plans.items() if isinstance(p, dict) and p.get("diff"))
    invalid = sorted(n for n, p in plans.items() if isinstance(p, dict) and not p.get("valid", True))
    rollout = None
    if stale and not test:
        if wanted["fence"] or wanted["unfence"] or wanted["split_fence"] or wanted["standby_on"] or wanted["standby_off"]:
            reports = _gather(model)  # who holds what now
        rollout_actions, rollout = _rollout(model, reports, {n: plans[n] for n in stale}, client, reason, retry_failed)
        actions += rollout_actions
        if rollout["steps"] or rollout["stopped_at"]:
            _record("rollout", reason=reason, steps=rollout["steps"], stopped_at=rollout["stopped_at"],
                    error=rollout["error"])
        if rollout["stopped_at"]:
            _event("RolloutStopped", f"staged reload stopped at {rollout['stopped_at']}: {rollout['error']}",
                   "Warning", model)
        for node in rollout["blocked"]:
            wanted["notes"].append(f"{node}: its new keepalived config failed before and is not retried until it "
                                   "changes (salt-run edge.reconcile retry_failed=True)")
        for node in rollout["held"]:
            wanted["notes"].append(f"{node}: new keepalived config held back: the staged reload stopped at "
                                   f"{', '.join(rollout['blocked'])}")
        if rollout["steps"]:
            reports = _gather(model)
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
    if not test:
        _owners_changed(model, reports, actions)
    result = {
        "reason": reason,
        "test": bool(test),
        "plan": wanted,
        "stale_config": stale,
        "invalid_config": invalid,
        "rollout": rollout,
        "actions": actions,
        "service": service,
        "seconds": round(time.time() - started, 3),
    }
    if not test:
        error = service.get("error") or (rollout or {}).get("error")
        counters = _bump("reconcile_runs", "reconcile_errors" if error else None)
        if actions or error or reason != "schedule":  # quiet scheduled runs stay out of the history
            _record("reconcile", reason=reason, actions=actions, notes=wanted["notes"], seconds=result["seconds"],
                    error=error, run=counters["reconcile_runs"])
        _write_metrics(model, reports, {"match": not service.get("changed") if "error" not in service else None})
    return result


def reconcile(reason="manual", test=False, retry_failed=False):
    """
    Bring the edge in line with the pillar and the nodes' real state (see the
    module docstring). Returns what it found and what it changed.

    retry_failed
        also retry a node whose new keepalived config failed in an earlier
        staged reload (otherwise skipped until its rendered config changes)

    CLI Example:

    .. code-block:: bash

        salt-run edge.reconcile
        salt-run edge.reconcile test=True
    """
    if test:
        return _reconcile(reason, test=True)
    with _locked():
        result = _reconcile(reason, retry_failed=bool(retry_failed))
    _run_pending()  # triggers that arrived meanwhile
    return result


def _wait_ipvs_drain(model, node, reports, client, timeout):
    """Wait (bounded) until the directors have no connections left on ``node``'s real servers."""
    servers = [vs for vs in model["virtual_servers"].values() if vs["managed_by"] == "keepalived"]
    if not servers:
        return "no keepalived virtual_servers: no IPVS connections to drain"
    address = model["nodes"][node]["address"]
    directors = sorted({n for h in vip_holders(model, reports).values() for n in h} | {node})
    deadline = time.monotonic() + timeout
    start = time.monotonic()
    while True:
        tables = client.cmd(directors, "ipvs.list_services", tgt_type="list", timeout=30)
        conns = templates = 0
        errors = []
        for director in directors:
            table = tables.get(director)
            if not isinstance(table, list):
                errors.append(f"{director}: {table}")
                continue
            c, t = ipvs_connections(table, servers, address)
            conns, templates = conns + c, templates + t
        if errors and len(errors) == len(directors):
            return f"IPVS connections not checked: {'; '.join(errors)}"
        if conns == 0:
            return f"IPVS connections to {address} drained in {time.monotonic() - start:.1f}s" + (
                f" ({templates} persistence templates left to expire)" if templates else "")
        if time.monotonic() > deadline:
            return f"IPVS: {conns} connections to {address} still open after {timeout}s (drain_timeout); going on"
        time.sleep(1)


def _drain(model, node, reason, source, client, drain_timeout=None):
    """The drain steps (lock held by the caller); on failure nothing stays half-done."""
    started = time.time()
    steps = []
    drained = _drained()
    previous = drained.get(node)
    drained[node] = {"reason": reason, "since": time.time(), "source": source}
    _save_json("drained.json", drained)
    try:
        names = sorted(drained)
        client.cmd(sorted(model["nodes"]), "keepalived.set_drained_nodes", [names], tgt_type="list", timeout=10)
        reports = _gather(model)
        done, holders = handover_state(model, reports, node)
        if any(node in h for h in holders.values()):
            done, release_steps, holders, reports = _release(model, node, client, f"drained: {reason}", True)
            steps += release_steps
            if not done:
                raise CommandExecutionError(
                    f"{node} did not hand its VIPs over within {_handover_timeout(model, node):.0f}s (holders: {holders})"
                )
            steps.append("VIPs handed over: " + ", ".join(f"{v} -> {','.join(h)}" for v, h in sorted(holders.items())))
        else:
            client.cmd(node, "keepalived.standby", [True, f"drained: {reason}"], timeout=10)
            steps.append("holds no VIP; priority lowered")
        plans = client.cmd(sorted(model["nodes"]), "keepalived.plan", kwarg={"fresh_pillar": True}, tgt_type="list",
                           timeout=30)
        stale = {n: p for n, p in plans.items() if isinstance(p, dict) and p.get("diff")}
        if stale:
            actions, info = _rollout(model, reports, stale, client, f"drain {node}", retry_failed=True)
            steps += actions
            if info["stopped_at"]:
                raise CommandExecutionError(f"staged reload for the IPVS weights stopped at {info['stopped_at']}: {info['error']}")
            reports = _gather(model)
        timeout = float(drain_timeout if drain_timeout is not None else __opts__.get("edge_ha_drain_timeout", 60))  # pylint: disable=undefined-variable
        steps.append(_wait_ipvs_drain(model, node, reports, client, timeout))
    except Exception as exc:  # pylint: disable=broad-except
        # undo: the node goes back to how it was
        if previous is None:
            drained.pop(node, None)
        else:
            drained[node] = previous
        _save_json("drained.json", drained)
        client.cmd(sorted(model["nodes"]), "keepalived.set_drained_nodes", [sorted(drained)], tgt_type="list", timeout=10)
        if previous is None:
            client.cmd(node, "keepalived.standby", [False], timeout=10)
        _record("drain", node=node, reason=reason, source=source, error=str(exc), steps=steps)
        return {"ok": False, "node": node, "error": str(exc), "steps": steps, "seconds": round(time.time() - started, 3)}
    _record("drain", node=node, reason=reason, source=source, steps=steps)
    _event("NodeDrained", f"{node} drained ({reason}): " + "; ".join(steps), model=model)
    return {"ok": True, "node": node, "steps": steps, "error": None, "seconds": round(time.time() - started, 3)}


def preferred_owner(model, reports, instance, exclude=()):
    """The node VRRP elects for ``instance`` among running, in-service, non-standby nodes (highest priority)."""
    import ipaddress  # pylint: disable=import-outside-toplevel

    inst = model["vrrp_instances"][instance]
    ready = [
        n for n in inst["nodes"]
        if n not in exclude and reports.get(n) and reports[n]["keepalived"]["running"]
        and not reports[n]["out_of_service"]["out_of_service"]
        and not (reports[n].get("standby") or {}).get("standby")
    ]
    if not ready:
        return None
    return max(ready, key=lambda n: (inst["priorities"][n], ipaddress.ip_address(model["nodes"][n]["address"])))


def _undrain(model, node, reason, client):
    started = time.time()
    drained = _drained()
    info = drained.pop(node, None)
    _save_json("drained.json", drained)
    steps = []
    client.cmd(sorted(model["nodes"]), "keepalived.set_drained_nodes", [sorted(drained)], tgt_type="list", timeout=10)
    reports = _gather(model)
    plans = client.cmd(sorted(model["nodes"]), "keepalived.plan", kwarg={"fresh_pillar": True}, tgt_type="list",
                       timeout=30)
    stale = {n: p for n, p in plans.items() if isinstance(p, dict) and p.get("diff")}
    error = None
    if stale:
        actions, rollout = _rollout(model, reports, stale, client, f"undrain {node}", retry_failed=True)
        steps += actions
        error = rollout["error"]
        reports = _gather(model)
    # VIPs that come back to this node (it has the highest priority): the current owner
    # releases them the same careful way, once this node's priority is back
    restored = []

    def restore():
        if not restored:
            client.cmd(node, "keepalived.standby", [False], timeout=10)
            restored.append(True)

    for name, inst in model["vrrp_instances"].items():
        if node not in inst["nodes"] or not reports.get(node):
            continue
        current = [h for v in inst["vips"] for h in vip_holders(model, reports).get(v, [])]
        ready = dict(reports)
        ready[node] = dict(reports[node], standby={"standby": False})
        if preferred_owner(model, ready, name) != node or not current or node in current:
            continue
        for holder in sorted(set(current)):
            done, release_steps, holders, reports = _release(model, holder, client, f"undrain {node}", False, restore)
            steps += release_steps
            steps.append(f"{name}: VIPs back on " + ", ".join(f"{v} -> {','.join(h)}" for v, h in sorted(holders.items())))
    restore()
    steps.append("priority restored")
    _record("undrain", node=node, reason=reason, source=(info or {}).get("source", "manual"), steps=steps, error=error)
    _event("NodeUndrained", f"{node} back in service ({reason})", model=model)
    return {"ok": error is None, "node": node, "steps": steps, "error": error, "was_drained": info is not None,
            "seconds": round(time.time() - started, 3)}


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
    model = _model()
    _check_node(model, node)
    with _locked():
        result = _drain(model, node, reason, "manual", _client(), drain_timeout)
        if result["ok"]:
            result["reconcile"] = _reconcile(f"drain {node}")["actions"]
    _run_pending()
    return result


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
    model = _model()
    _check_node(model, node)
    with _locked():
        result = _undrain(model, node, reason, _client())
        result["reconcile"] = _reconcile(f"undrain {node}")["actions"]
    _run_pending()
    return result


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
    text = metrics_text(model, reports, build_report(model, reports, service, drained), _history_entries(),
                        _counters(), drained, _load_json("rollout_failed.json", {}))
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
        # fast path: the node removes its stale copy as soon as another host answers ARP for the
        # VIP (before that, the killed node is what still answers). It refuses while its keepalived
        # runs, so a forged event cannot take a live VIP away.
        wait = float(__opts__.get("edge_ha_handover_timeout") or 15)  # pylint: disable=undefined-variable
        released = _client().cmd(claimed_id, "edge_node.release_when_taken_over", [wait],
                                 timeout=wait + 10).get(claimed_id)
        if released:
            _record("fence", node=claimed_id, action=f"stale VIPs removed: {released}", why=source,
                    seen=event_time)  # when the beacon saw it (as the minion says)
            _event("StaleVIPRemoved", f"{claimed_id}: stale VIPs removed (keepalived not running): {released}",
                   "Warning")
    pending = os.path.join(_state_dir(), "reconcile.pending")
    with open(pending, "w", encoding="utf-8") as fh:
        fh.write(source)
    return _run_pending(source)


def _run_pending(source=""):
    """Run reconciles while a trigger is pending and nobody else holds the lock (see trigger)."""
    state = _state_dir()
    pending = os.path.join(state, "reconcile.pending")
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
            _reconcile(reason=why or "trigger")
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
    drained_nodes = _drained()
    wanted = plan(model, reports, pods, drained=drained_nodes)
    try:
        desired = _mods()["edge_k8s.set_external_ips"](
            vips=_vips(model), nodes=_kube_nodes(model), healthy=wanted["service_nodes"],
            address_source="pillar", kubernetes=model["kubernetes"], test=True,
        )
        service = {"match": not desired["changed"], "current": desired["old"], "desired": desired["new"]}
    except Exception as exc:  # pylint: disable=broad-except
        service = {"match": None, "error": str(exc)}
    rows = build_report(model, reports, service, drained_nodes)
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
