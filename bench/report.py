"""Markdown for docs/benchmarks.md from bench/run_all.py's results."""

from bench import scale
from bench.common import fmt, median, quantile, ratio, summary, table

SETUPS = [
    ("failover_plain", "plain keepalived.conf (VRRPv2, advert_int 1, multicast) — baseline"),
    ("failover_default", "project defaults (VRRPv2, advert_int 1, unicast; vrrp beacon `watch: 0.05`)"),
    ("failover_watch", "project defaults without the vrrp beacon's `watch`"),
    ("failover_fast", "project fast option (VRRPv3, advert_int 0.1; `watch: 0.05`)"),
]


def _s(stats, key="median"):
    return fmt(stats[key]) if stats and stats.get(key) is not None else "-"


def _msp(values):
    s = summary(values)
    if not s["n"]:
        return "-"
    text = f"{fmt(s['median'])} / {fmt(s['p95'])} / {fmt(s['max'])}"
    return text + (f" ({s['missing']} missing)" if s["missing"] else "")


def header(res):
    m = res["machine"]
    lines = [
        f"- Command: `{res['command']}` ({res['reps']} repetitions; run took {res['seconds'] / 60:.0f} min).",
        f"- Date: {res['started']}.",
        f"- Machine: {m['cpus']} cores ({m['cpu']}), {m['memory']}, kernel {m['kernel']}; "
        f"{m['keepalived']}; Salt {m['salt']}, Python {m['python']}.",
        f"- Load average at the start {' '.join(res['load_start'])}, at the end {' '.join(res['load_end'])}"
        + (f"; other busy processes at the start: {', '.join(res['other_load_start'])}" if res.get("other_load_start")
           else "; no other busy process at the start") + ".",
    ]
    return "\n".join(lines)


def failover_section(res):
    base = {how: summary([r["moved"] for r in res["failover_plain"][how]])["median"]
            for how in res.get("failover_plain", {})}
    rows = []
    for key, label in SETUPS:
        for how, runs in (res.get(key) or {}).items():
            moved = [r["moved"] for r in runs]
            lost = [r["lost"] for r in runs]
            single = [r["single"] for r in runs]
            answers_old = sum(r["answers"].get("e1" if key == "failover_plain" else "edge1", 0) for r in runs)
            rows.append([
                label, how, len(runs), _msp(moved), ratio(median(moved), base.get(how)),
                f"{sum(lost)} of {sum(r['sent'] for r in runs)}", f"{fmt(median(lost))} / {max(lost)}",
                _msp(single) if any(v is not None for v in single) else "never (stale VIP stays)",
            ])
    return table(["setup", "stop of the owner's keepalived", "runs", "VIP moved, s (median / p95 / max)",
                  "median vs plain", "requests lost (all runs)", "lost per run (median / max)",
                  "VIP on the new owner only, s (median / p95 / max)"], rows)


def convergence_section(res):
    rows, split_rows = [], []
    for key, label in [("convergence_default", "project defaults"), ("convergence_watch", "defaults without `watch`"),
                       ("convergence_fast", "fast option (VRRPv3 0.1 + watch)")]:
        for how, runs in (res.get(key) or {}).items():
            rows.append([
                label, how, len(runs), _msp([r["transition"] for r in runs]),
                _msp([r["service_from_transition"] for r in runs]), _msp([r["report_from_transition"] for r in runs]),
                _msp([r["service_from_fault"] for r in runs]), _msp([r["report_from_fault"] for r in runs]),
            ])
            splits = [r["split"] for r in runs if r["split"] and "k8s" in r["split"]]
            if splits:
                parts = ["beacon", "bus", "reactor", "runner", "k8s"]
                total = [sum(s[p] or 0 for p in parts) for s in splits]
                triggers = {}
                for s in splits:
                    kind = s["trigger"].rsplit("/", 1)[-1]
                    triggers[kind] = triggers.get(kind, 0) + 1
                split_rows.append([label, how, len(splits)]
                                  + [f"{fmt(median([s[p] for s in splits]), 3)} / {fmt(summary([s[p] for s in splits])['p95'], 3)}"
                                     for p in parts]
                                  + [f"{fmt(median(total), 3)} / {fmt(summary(total)['p95'], 3)}",
                                     ", ".join(f"{k} {v}" for k, v in sorted(triggers.items()))])
    checked = [(label, fr) for key, label in [("failover_default", "project defaults"),
                                              ("failover_watch", "defaults without watch"), ("failover_fast", "fast option")]
               for fr in [res.get(key)] if fr]
    notes = []
    for label, fr in checked:
        runs = [r for how in fr.values() for r in how if "report_ok" in r]
        if runs:
            notes.append(f"{label}: {sum(1 for r in runs if r['report_ok'])} of {len(runs)}")
    out = [("`edge.vip_report` checked after every fifth run (owner the new node, no flags, Service match): "
            + "; ".join(notes) + " right.") if notes else "", ""]
    out += [table(["setup", "stop", "runs", "VRRP transition after the stop, s", "Service right after the transition, s",
                  "report right after the transition, s", "Service right after the stop, s",
                  "report right after the stop, s"], rows), ""]
    out.append("Where the time goes, from the condition to the end of the Service write that made it right "
               "(seconds, median / p95; see the slice definitions above):")
    out.append("")
    out.append(table(["setup", "stop", "runs traced", "beacon", "event bus", "reactor", "runner", "Kubernetes call",
                      "sum", "triggering event"], split_rows))
    off, on = res.get("minion_cpu_watch_off"), res.get("minion_cpu_watch_on")
    if off is not None and on is not None:
        out.append("")
        out.append(f"Cost of `watch: 0.05`: an idle salt-minion (all its processes) used {fmt(off * 100, 2)}% of a "
                   f"core without it and {fmt(on * 100, 2)}% with it (ratio {ratio(on, off)}; measured over "
                   f"{'60' if res['reps'] >= 10 else '10'} s per setting, averaged over the 3 minions).")
    idle = res.get("idle_reconciles")
    if idle:
        out.append("")
        out.append(f"Reconciles that found nothing to change during these runs (event-triggered, in the reactor): "
                   f"{idle['count']}, runner time {fmt(idle['median'], 3)} s median / {fmt(idle['p95'], 3)} s p95, "
                   f"0 minion jobs each (a reconcile sends jobs only for actions, and these had none).")
    return "\n".join(out)


def planned_section(res):
    rows = []
    for key, label in [("rerender_plain", "plain: edit keepalived.conf on 3 nodes + SIGHUP — baseline"),
                       ("rerender_project", "project: changed pillar + `salt-run edge.reconcile` (state.apply on 3 nodes)")]:
        runs = res.get(key)
        if runs:
            base = median([r["duration"] for r in res["rerender_plain"]]) if res.get("rerender_plain") else None
            rows.append([label, len(runs), sum(r["lost"] for r in runs), f"{sum(r['sent'] for r in runs)}",
                         _msp([r["duration"] for r in runs]), ratio(median([r["duration"] for r in runs]), base),
                         sum(1 for r in runs if r["ok"])])
    drain = res.get("drain")
    if drain:
        for op in ("drain", "undrain"):
            runs = [r for r in drain if r["op"] == op]
            rows.append([f"project: `salt-run edge.{op} edge1` (edge1 owns the VIP)", len(runs),
                         sum(r["lost"] for r in runs), sum(r["sent"] for r in runs),
                         _msp([r["duration"] for r in runs]) + "; VIP settled " + _msp([r["settled"] for r in runs]),
                         "-", sum(1 for r in runs if r["ok"])])
    text = table(["operation (`vrrp_garp_master_refresh 60` in global_defs, added / removed in turn)", "runs", "requests lost", "requests sent",
                  "duration, s (median / p95 / max)", "median vs plain", "runs correct"], rows)
    if "drain" in res and not drain:
        text += ("\n\n`edge.drain` / `edge.undrain`: **not measured** — `_runners/edge.py` on this branch has no "
                 "`drain`/`undrain` runner yet (being written on main). The harness (`planned_drain` in "
                 "bench/lab_bench.py) runs them as soon as they are merged.")
    return text


def fence_section(res):
    """The fence of an owner whose ingress fails, with the Kubernetes API answering (baseline) and hung."""
    fences = [(key, label) for key, label in [("fence_api_up", "API answering — baseline"),
                                               ("fence_api_hung", "API hung (SIGSTOP: accepts, never answers)")]
              if res.get(key)]
    base = median([r["fence"] for r in res.get("fence_api_up") or []])
    rows = []
    for key, label in fences:
        done = [r["fence"] for r in res[key] if r["fence"] is not None]
        rows.append([label, len(res[key]), _msp(done) if done else "-",
                     _msp([r["from_failure"] for r in res[key] if r["from_failure"] is not None]),
                     ratio(median(done), base), len(done)])
    run = (f"Run: `{res['command']}`, started {res['started']}, {res['reps']} repetitions per row.\n\n"
           if res.get("command") else "")
    return run + table(["fence of the owner whose ingress fails", "runs",
                  "VIP off the owner after the beacon event, s (median / p95 / max)",
                  "after the failure, s", "median vs API answering", "runs fenced"], rows)


def burn_section(res):
    burn = res.get("burn")
    if not burn:
        return "not run"
    idle = dict(res.get("burn_idle") or {}, **(res.get("burn_fast_idle") or {}))
    burn = dict(burn, **(res.get("burn_fast") or {}))
    rows = []
    for label, name in [("plain", "plain keepalived.conf (VRRPv2, advert_int 1) — baseline"),
                        ("default", "project defaults (VRRPv2, advert_int 1)"),
                        ("plain-fast", "plain keepalived.conf (VRRPv3, advert_int 0.1) — baseline for the fast option"),
                        ("fast", "project fast option (VRRPv3, advert_int 0.1, watch 0.05)")]:
        b = burn.get(label)
        if not b:
            continue
        i = idle.get(label, {})
        rows.append([name, res["burn_seconds"], b["transitions"], b["owner_changes"],
                     f"{b['not_single_owner']} of {b['samples']}", i.get("transitions", "-"),
                     i.get("owner_changes", "-")])
    text = table(["setup", "burn, s", "VRRP state changes under burn", "VIP holder changes",
                  "samples (every 0.25 s) with the VIP not on the owner alone", "state changes, 60 s idle",
                  "holder changes, 60 s idle"], rows)
    text += (f"\n\nLoad average during the burn: {', '.join(res['burn'].get('_loadavg', []))}"
             f"{'; fast option burn: ' + ', '.join(res['burn_fast'].get('_loadavg', [])) if res.get('burn_fast') else ''}. Other busy processes just "
             f"before it: {', '.join(res.get('other_load_before_burn') or []) or 'none'}.")
    return text


def _reconcile_seconds(recs, service_only=False):
    """Runner seconds of the event-triggered reconciles (reason: a beacon event tag), or of those that wrote
    the Service's externalIPs."""
    return [r["seconds"] for r in recs if str(r.get("reason", "")).startswith("salt/")
            and (not service_only or any(str(a).startswith("service externalIPs") for a in r.get("actions") or []))]


def scale_lab_section(res):
    """bench/scale_lab.py: the controller with 3, 10, 50 real minions, ratios against the smallest size."""
    sizes = [s for s in res.get("scale_lab") or [] if s.get("runs")]
    # the repetitions are per size (the table's SIGKILLs column), not the run's --reps
    out = [header(res).replace(f"({res['reps']} repetitions; ", "(repetitions per size below; ", 1), ""]
    if not sizes:
        return "\n".join(out + ["No size was measured."] + _scale_lab_errors(res))
    base = sizes[0]

    def med(size, fn):
        return median(fn(size))

    def service(size):
        return [r.get("service") for r in size["runs"]]

    def runner(size):
        return [(c.get("split") or {}).get("runner") for c in size["convergence"]]

    def recs(size, service_only=False):
        return _reconcile_seconds(size["reconciles"], service_only)

    def cpu_per_kill(size):
        return size["window"]["cpu_seconds"] / len(size["runs"])

    rows = []
    for size in sizes:
        triggers = {}
        for c in size["convergence"]:
            kind = ((c.get("split") or {}).get("trigger") or "untraced").rsplit("/", 1)[-1]
            triggers[kind] = triggers.get(kind, 0) + 1
        all_recs = recs(size)
        rows.append([
            size["edges"], len(size["runs"]), fmt(med(size, lambda s: [r["moved"] for r in s["runs"]])),
            _msp(service(size)), ratio(med(size, service), med(base, service)),
            _msp(runner(size)), ", ".join(f"{k} {v}" for k, v in sorted(triggers.items())),
            f"{len(all_recs)} ({len(all_recs) / len(size['runs']):.1f})",
            _msp(all_recs), ratio(median(all_recs), median(recs(base))),
            _msp(recs(size, True)),
            f"{sum(r['lost'] for r in size['runs'])} of {sum(r['sent'] for r in size['runs'])}",
        ])
    timing = table(["edge nodes", "SIGKILLs", "VIP moved, s (median)", "Service right after the SIGKILL, s "
                    "(median / p95 / max)", f"vs {base['edges']} nodes (median)", "runner slice, s (median / p95 / max)",
                    "triggering event", "event-triggered reconciles (per SIGKILL)",
                    "reconcile runner time, s (median / p95 / max)", f"vs {base['edges']} nodes",
                    "of which wrote the Service, s", "requests lost"], rows)
    rows = []
    for size in sizes:
        idle, win = size["idle"], size["window"]
        rows.append([
            size["edges"], fmt(size["up_seconds"], 0), f"{fmt(idle['master_cpu_share'] * 100, 1)}%",
            f"{fmt(idle['minions_cpu_share'] * 100, 0)}%",
            f"{fmt(cpu_per_kill(size))} ({fmt(win['cpu_share'] * 100, 0)}%)", ratio(cpu_per_kill(size), cpu_per_kill(base)),
            f"{fmt(win['rss_mib_max'], 0)} / {fmt(win['pss_mib_max'], 0)}",
            ratio(win["rss_mib_max"], base["window"]["rss_mib_max"]),
            f"{fmt(idle['minion_rss_mib_mean'], 0)} / {fmt(idle['minion_pss_mib_mean'], 0)}",
            ratio(idle["minion_rss_mib_mean"], base["idle"]["minion_rss_mib_mean"]),
            f"{fmt(idle['load'], 1)} / {fmt(win['load_mean'], 1)}",
        ])
    resources = table(["edge nodes", "lab up, s", "idle: salt-master CPU (of a core)",
                       "idle: all edge salt-minions CPU (of a core)",
                       "salt-master CPU s per SIGKILL and restore (of a core)", f"vs {base['edges']} nodes",
                       "salt-master RSS / PSS, MiB (max, all its processes)", f"vs {base['edges']} nodes (RSS)",
                       "salt-minion RSS / PSS, MiB (mean per minion)", f"vs {base['edges']} nodes (RSS)",
                       "load average: idle / during the runs (mean)"], rows)
    big = sizes[-1]
    goal = ratio(med(big, service), med(base, service))
    met = goal != "-" and float(goal) <= 1.2
    out += [
        f"Goal (issue #16): Service right at {big['edges']} nodes within 1.2x of {base['edges']} nodes "
        f"(medians, same run): {goal}, **{'met' if met else 'not met'}**.",
        "",
        timing,
        "",
        resources,
    ]
    return "\n".join(out + _scale_lab_errors(res))


def _scale_lab_errors(res):
    lines = []
    for size in res.get("scale_lab") or []:
        if size.get("error"):
            lines.append(f"- {size['edges']} edge nodes: failed: {size['error'].strip().splitlines()[-1].split(': {', 1)[0][:300]}")
        for err in size.get("rep_errors") or []:
            lines.append(f"- {size['edges']} edge nodes, repetition {err}")
    return ["", "Failures in this run:", ""] + lines if lines else []


LB_BOUND = 5.0  # issue #15: p50 of POST -> answering and in status, seconds
LB_SPLIT = [("watch", "POST -> engine event"), ("reactor", "event -> reconcile start"),
            ("assign", "address recorded"), ("pillar", "pillar compiled, refreshed, plan"),
            ("rollout", "staged reload (state.apply per node)"), ("status", "election, status PATCH")]


def _p50_90_max(values):
    vals = [v for v in values if v is not None]
    if not vals:
        return "-"
    missing = len(values) - len(vals)
    return (f"{fmt(median(vals))} / {fmt(quantile(vals, 0.9))} / {fmt(max(vals))}"
            + (f" ({missing} missing)" if missing else ""))


def lb_section(res):
    """Block lb (issue #15): a new LoadBalancer Service until its address answers and is in its status."""
    data = res["lb"]
    plain, project = data.get("plain") or [], data.get("project") or []
    m = res["machine"]
    lines = [
        f"- Command: `{res['command']}` ({res['reps']} repetitions each; run took {res['seconds'] / 60:.0f} min), "
        f"code at `{res.get('commit') or '?'}`.",
        f"- Date: {res['started']}. Machine: {m['cpus']} cores ({m['cpu']}), {m['keepalived']}; Salt {m['salt']}; "
        f"load average at the start {' '.join(res['load_start'])}, at the end {' '.join(res['load_end'])}.",
        "",
    ]
    base = median([r["answered"] for r in plain])
    both = [r["both"] for r in project]
    p50 = median(both)
    met = p50 is not None and p50 <= LB_BOUND and all(r["ok"] for r in project)
    lines.append(f"Bound (issue #15): p50 of POST -> answering from the client and in status.loadBalancer.ingress "
                 f"<= {LB_BOUND:.0f} s: {fmt(p50)} s, **{'met' if met else 'not met'}** "
                 f"({sum(1 for r in project if r['ok'])} of {len(project)} repetitions complete).")
    lines.append("")
    rows = [
        ["plain: a vrrp_instance added to keepalived.conf on 3 nodes + SIGHUP — baseline", len(plain), "-",
         _p50_90_max([r["held"] for r in plain]), _p50_90_max([r["answered"] for r in plain]), "-",
         _p50_90_max([r["answered"] for r in plain]), ratio(base, base), sum(1 for r in plain if r["ok"])],
        ["project: POST of a Service `type: LoadBalancer` of the project's class", len(project),
         _p50_90_max([r["assigned"] for r in project]), _p50_90_max([r["held"] for r in project]),
         _p50_90_max([r["answered"] for r in project]), _p50_90_max([r["status"] for r in project]),
         _p50_90_max(both), ratio(p50, base), sum(1 for r in project if r["ok"])],
    ]
    lines.append(table(["setup", "runs", "address recorded on the Service, s", "address on a node, s",
                        "answering from the client, s", "in status.loadBalancer.ingress, s",
                        "answering and in status, s (p50 / p90 / max)", "p50 vs plain", "runs complete"], rows))
    splits = [r["split"] for r in project if r.get("split")]
    if splits:
        lines += ["", "Where the project's time goes (seconds, p50 / p90 / max over the repetitions; from the "
                      "master's event bus, its reconcile history and the Kubernetes emulator's request log):", ""]
        srows = [[label, key, _p50_90_max([s.get(key) for s in splits])] for key, label in LB_SPLIT]
        srows.append(["sum: POST -> status PATCH ended", "status_write",
                      _p50_90_max([s.get("status_write") for s in splits])])
        lines.append(table(["slice", "key", "seconds"], srows))
        funs = {}
        for s in splits:
            spans = {}  # one job (jid; older results: fun and publication time) to any number of nodes
            for job in s.get("jobs") or []:
                key = (job["fun"], job.get("jid") or job["start"])
                spans[key] = max(spans.get(key, 0.0), job["seconds"])
            for (fun, _), secs in spans.items():
                funs.setdefault(fun, []).append(secs)
        if funs:
            jrows = [[f"`{fun}`", fmt(len(secs) / len(splits), 1), _p50_90_max(secs), fmt(sum(secs) / len(splits))]
                     for fun, secs in sorted(funs.items(), key=lambda kv: -sum(kv[1]))]
            lines += ["", "Minion jobs from the reconcile's start to the status write (one job, to one node or "
                          "to all three: from its publication to the last node's return):", "",
                      table(["job", "jobs per repetition", "seconds each (p50 / p90 / max)",
                             "seconds per repetition (mean)"], jrows)]
        elections = [s.get("election") for s in splits]
        if any(v is not None for v in elections):
            lines += ["", f"From the return of the new address's owner's `state.apply` until the address was on "
                          f"the owner: {_p50_90_max(elections)} s (p50 / p90 / max; the rest of the new "
                          f"instance's election runs inside that `state.apply`, after its reload)."]
        same = [s.get("same_reconcile") for s in splits if s.get("same_reconcile") is not None]
        steps = {}
        for s in splits:
            key = ", ".join(s.get("rollout_steps") or []) or "none"
            steps[key] = steps.get(key, 0) + 1
        lines += ["", f"Status written by the reconcile that assigned the address: {sum(same)} of {len(same)}. "
                      "Staged reload steps: " + "; ".join(f"`{k}` ({v}x)" for k, v in sorted(steps.items())) + "."]
    warm = data.get("warmup") or []
    if warm:
        lines += ["", "Warm-up repetition (first Service after the pools were put in the pillar; not counted): "
                      + "; ".join(f"answering and in status {fmt(r['both'])} s" for r in warm) + "."]
    gone = [r.get("gone_after_delete") for r in project]
    if any(v is not None for v in gone):
        lines += ["", f"Between repetitions, the Service's DELETE until its address was off every node: "
                      f"{_p50_90_max(gone)} s (p50 / p90 / max); plain, the instance removed + SIGHUP: "
                      f"{_p50_90_max([r.get('gone_after_remove') for r in plain])} s."]
    return "\n".join(lines)


def sections(res):
    out = {}
    if not set(res.get("blocks") or []) <= {"scale-lab", "fence", "lb"}:  # these alone carry their own header
        out["run"] = header(res)
    if res.get("lb"):
        out["lb"] = lb_section(res)
    if res.get("scale_lab"):
        out["scale-lab"] = scale_lab_section(res)
    if any(k in res for k, _ in SETUPS):
        out["failover"] = failover_section(res)
    if "convergence_default" in res:
        out["convergence"] = convergence_section(res)
    if "rerender_plain" in res:
        out["planned"] = planned_section(res)
    if "fence_api_up" in res or "fence_api_hung" in res:
        out["fence"] = fence_section(res)
    if "scale" in res:
        out["scale"] = scale.markdown(res["scale"], res["command"])
    if "burn" in res:
        out["burn"] = burn_section(res)
    errors = res.get("block_errors") or {}
    if errors and "run" in out:
        note = "\n\nBlocks that failed in this run (the traceback's last line):\n\n" + "\n".join(
            f"- `{name}`: {text.strip().splitlines()[-1]}" for name, text in errors.items())
        out["run"] += note
    if res.get("ipvs_markdown"):
        out["ipvs"] = res["ipvs_markdown"]
    return out


def summary_text(res):
    return "\n\n".join(f"## {k}\n{v}" for k, v in sections(res).items()) + ("\n\nERROR:\n" + res["error"]
                                                                          if res.get("error") else "")
