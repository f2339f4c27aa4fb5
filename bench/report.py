"""Markdown for docs/benchmarks.md from bench/run_all.py's results."""

from bench import scale
from bench.common import fmt, median, ratio, summary, table

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


def sections(res):
    out = {"run": header(res)}
    if any(k in res for k, _ in SETUPS):
        out["failover"] = failover_section(res)
    if "convergence_default" in res:
        out["convergence"] = convergence_section(res)
    if "rerender_plain" in res:
        out["planned"] = planned_section(res)
    if "scale" in res:
        out["scale"] = scale.markdown(res["scale"], res["command"])
    if "burn" in res:
        out["burn"] = burn_section(res)
    errors = res.get("block_errors") or {}
    if errors:
        note = "\n\nBlocks that failed in this run (the traceback's last line):\n\n" + "\n".join(
            f"- `{name}`: {text.strip().splitlines()[-1]}" for name, text in errors.items())
        out["run"] += note
    if res.get("ipvs_markdown"):
        out["ipvs"] = res["ipvs_markdown"]
    return out


def summary_text(res):
    return "\n\n".join(f"## {k}\n{v}" for k, v in sections(res).items()) + ("\n\nERROR:\n" + res["error"]
                                                                          if res.get("error") else "")
