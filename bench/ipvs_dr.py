#!/usr/bin/env python3
"""Benchmark: long-lived connections through an IPVS DR director whose
keepalived is SIGKILLed, with ``lvs_sync_daemon`` and without it (the
baseline), in the same VM run.

Boots the test VM (``tests/vm/run.py``, Debian's kernel with IPVS) and runs
``tests/vm/inside/test_ipvs_dr.py -k owner_crash`` there, each mode
``--reps`` times (``EDGE_HA_DR_REPEAT``); every run opens 50 connections,
kills the VIP owner's keepalived and counts the connections that still
answer from the same real server. Prints a Markdown table::

    .venv/bin/python bench/ipvs_dr.py [--reps 5] [--json FILE]
    .venv/bin/python bench/ipvs_dr.py --markdown-from FILE
"""

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _vmrun():
    spec = importlib.util.spec_from_file_location("edge_ha_vm_run", REPO / "tests" / "vm" / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def measure(reps):
    vmrun = _vmrun()
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    result = vmrun.run_pytest_in_vm(
        ["tests/vm/inside/test_ipvs_dr.py", "-k", "owner_crash", "-q", "-rfEs"],
        extra_env={"EDGE_HA_DR_REPEAT": str(reps)})
    sys.stdout.write(result.output)
    path = result.results_dir / "ipvs_dr.json"
    runs = json.loads(path.read_text()) if path.exists() else []
    return {"date": started, "reps": reps, "kernel": result.kernel, "accel": result.accel,
            "vm_seconds": result.timings.get("vm"), "exit_code": result.exit_code, "runs": runs}


def summary(data):
    rows = {}
    for sync in (True, False):
        runs = [r for r in data["runs"] if r.get("test") == "owner_crash" and r["sync"] is sync]
        if not runs:
            continue
        total = sum(r["connections"] for r in runs)
        survived = sum(r["survived"] for r in runs)
        rows[sync] = {"runs": len(runs), "connections": total, "survived": survived,
                      "fraction": survived / total, "min_fraction": min(r["fraction"] for r in runs),
                      "takeover_median": statistics.median(r["takeover_s"] for r in runs),
                      "answers_median": statistics.median(r["answers_after_s"] for r in runs)}
    return rows


def markdown(data):
    rows = summary(data)
    base = rows.get(False)
    out = [f"Run: {data['date']}, {data['reps']} failovers per mode, guest kernel {data['kernel']} "
           f"({data['accel']}), VM time {data['vm_seconds']} s.", "",
           "| mode | failovers | connections | survived | fraction | worst run | VIP taken over (median) "
           "| every connection answered or lost (median) | survived vs baseline |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for sync, label in ((False, "no sync daemon — baseline"), (True, "`lvs_sync_daemon`")):
        row = rows.get(sync)
        if not row:
            continue
        ratio = "1" if not sync else (
            f"{row['survived'] / base['survived']:.1f}" if base and base["survived"] else
            f"{row['survived']} vs 0")
        out.append(f"| {label} | {row['runs']} | {row['connections']} | {row['survived']} | {row['fraction']:.1%} "
                   f"| {row['min_fraction']:.0%} | {row['takeover_median']:.1f} s | {row['answers_median']:.1f} s | {ratio} |")
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--json", help="write the raw numbers here")
    parser.add_argument("--markdown-from", help="print the table of a saved --json file, no VM run")
    opts = parser.parse_args(argv)
    if opts.markdown_from:
        print(markdown(json.loads(Path(opts.markdown_from).read_text())))
        return 0
    data = measure(opts.reps)
    if opts.json:
        Path(opts.json).write_text(json.dumps(data, indent=1) + "\n")
    print(markdown(data))
    return 0 if data["exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
