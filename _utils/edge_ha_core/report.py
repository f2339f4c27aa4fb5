"""
The operator's views, as plain functions of the model and the typed node
reports: the per-VIP report (``edge.vip_report``) and its table, the
history rows (``edge.history``) and the Prometheus textfile
(``edge.metrics``).
"""

import json
import time

from edge_ha_core import fleet


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
                status = report.instances.get(inst["name"]) or fleet.InstanceStatus(inst["name"])
                if status.since and (last is None or status.since > last):
                    last = status.since
                entry = {
                    "node": node,
                    "state": status.state if report.running else "STOPPED",
                    "priority": status.priority,
                    "drained": node in (drained or {}),
                }
                if vip in status.vips_present:
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
                "ingress": {n: fleet.node_healthy(reports.get(n)) for n in inst["nodes"]},
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


def format_report(report):
    """
    ``edge.vip_report``'s text: the table, then the Service's externalIPs when
    they differ, the nodes not yet running the desired config, the pillar's
    errors while it is invalid, and the planner's notes. ``report`` is what
    the runner returns with an outputter set (``{vips, service, notes,
    pillar_errors, stale_config}``); the ``edge_table`` outputter prints the
    same.
    """
    text = format_table(report["vips"])
    service = report.get("service") or {}
    if service.get("error"):
        text += f"\nservice: {service['error']}"
    elif service.get("match") is False:
        text += f"\nservice externalIPs: {service.get('current')}, should be {service.get('desired')}"
    if report.get("stale_config"):
        text += f"\nconfig: {', '.join(report['stale_config'])} not yet running the desired keepalived config"
    if report.get("pillar_errors"):
        text += "\npillar: edge_ha is INVALID; the last good model stays in force until it is fixed:"
        text += "".join(f"\n  {e}" for e in report["pillar_errors"])
    for note in report.get("notes") or []:
        text += f"\nnote: {note}"
    return text


def history_rows(entries, limit=50, kinds=None):
    """History entries newest first as ``{time, kind, who, what, why}`` rows.

    Sorted by the time each entry carries: two writers (the stale-VIP fast path and a reconcile) can append
    in the other order than they stamped."""
    rows = []
    for entry in sorted(reversed(entries), key=lambda e: e.get("time") or 0, reverse=True):
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
        elif kind == "repair":
            row = {"who": "edge.reconcile",
                   "what": f"{entry.get('node')}: {entry.get('what')}" + (" (drained: stays drained)" if entry.get("drained") else ""),
                   "why": "left by an interrupted operation"}
        elif kind == "drain_record":
            row = {"who": "edge.reconcile",
                   "what": "drain record unreadable; kept drained: " + (", ".join(entry.get("recovered") or []) or "no node"),
                   "why": entry.get("error", "")}
        elif kind == "retry":
            row = {"who": "edge.reconcile",
                   "what": f"{entry.get('node')}: staged reload failed for a transient reason, retried in "
                           f"{entry.get('backoff')}s (attempt {entry.get('attempts')})",
                   "why": entry.get("error", "")}
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
        for inst, status in sorted(report.instances.items()):
            current = status.state if report.running else "STOP"
            for state in STATES:
                states.append(({"node": node, "instance": inst, "state": state}, 1 if current == state else 0))
            if status.priority is not None:
                prios.append(({"node": node, "instance": inst}, status.priority))
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
    # counters come from the persistent counters (history.Counters), never from the trimmed history
    counters = counters or {}
    transitions = {}
    for name, count in counters.items():
        if name.startswith("vrrp_transitions/") and name.count("/") == 2:
            _, node, instance = name.split("/")
            transitions[(node, instance)] = count
    family("edge_ha_vrrp_transitions_total", "counter", "VRRP transitions reported by the vrrp beacon",
           [({"node": n, "instance": i}, c) for (n, i), c in sorted(transitions.items())])
    family("edge_ha_reconcile_runs_total", "counter", "edge.reconcile runs", [({}, counters.get("reconcile_runs", 0))])
    family("edge_ha_reconcile_errors_total", "counter", "edge.reconcile runs that hit an error",
           [({}, counters.get("reconcile_errors", 0))])
    family("edge_ha_fencing_actions_total", "counter", "Stale VIPs removed and nodes taken out of VIP ownership",
           [({}, counters.get("fencing_actions", 0))])
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
