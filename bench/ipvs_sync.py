#!/usr/bin/env python3
"""Benchmark: ``ipvs.sync`` of a 10,000-service table with 1% changed,
versus rebuilding the whole table with ``ipvsadm -C; ipvsadm -R``.

Run on the host (boots the test VM with Debian's kernel, runs itself inside
with ``--inside``, prints a Markdown table and writes JSON)::

    .venv/bin/python bench/ipvs_sync.py [--services 10000] [--change 0.01]

Inside the VM (or on any machine with IPVS, as root; it CLEARS the table)::

    python bench/ipvs_sync.py --inside --services 10000 --change 0.01
"""

import argparse
import copy
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _load(relpath, name):
    spec = importlib.util.spec_from_file_location(name, REPO / relpath)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


SCHEDULERS = ("rr", "wrr", "lc", "wlc", "sh", "mh")
DESTS = 4


def make_table(n):
    return [{
        "protocol": ("TCP", "UDP")[i % 2],
        "address": f"198.18.{i // 250}.{i % 250 + 1}",
        "port": 80 + i % 3,
        "scheduler": SCHEDULERS[i % len(SCHEDULERS)],
        "persistence_timeout": 300 if i % 10 == 0 else 0,
        "destinations": [{"address": f"198.19.{i % 8}.{j + 1}", "port": 8080,
                          "weight": 1, "forward": ("NAT", "DR")[i % 2]} for j in range(DESTS)],
    } for i in range(n)]


def change(table, fraction):
    """Change ``fraction`` of the services, spread evenly: weight edits,
    a destination swap, a scheduler change (one kind per service)."""
    out = copy.deepcopy(table)
    count = max(1, int(len(table) * fraction))
    step = len(table) // count
    for k, i in enumerate(range(0, step * count, step)):
        svc = out[i]
        kind = k % 3
        if kind == 0:
            svc["destinations"][1]["weight"] = 5
        elif kind == 1:
            svc["destinations"][3]["address"] = f"198.19.9.{(i % 250) + 1}"
        else:
            svc["scheduler"] = "wlc" if svc["scheduler"] != "wlc" else "rr"
    return out, count


def timed(fn):
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def ipvsadm(*args, stdin=None):
    proc = subprocess.run(["ipvsadm", *args], input=stdin, capture_output=True, text=True)
    if proc.returncode != 0 or proc.stderr.strip():
        raise RuntimeError(f"ipvsadm {' '.join(args)}: rc={proc.returncode} {proc.stderr[:500]}")
    return proc.stdout


def inside(services, fraction, out_path):
    ipvs = _load("_modules/ipvs.py", "ipvs_bench")
    base = make_table(services)
    changed, n_changed = change(base, fraction)
    want_changed = ipvs.normalize_table(changed)
    rules_changed = ipvs.render_save(want_changed)
    result = {"services": services, "change_fraction": fraction, "destinations_per_service": DESTS,
              "changed_services": n_changed}

    ipvsadm("-C")
    t, r = timed(lambda: ipvs.sync(base))
    result["initial_sync"] = {"seconds": round(t, 2), "operations": len(r["operations"])}
    print(f"initial sync from empty: {t:.1f}s, {len(r['operations'])} ops", flush=True)

    t, r = timed(lambda: ipvs.sync(base))
    result["noop_sync"] = {"seconds": round(t, 2), "operations": len(r["operations"])}
    print(f"no-op sync (read + diff): {t:.1f}s", flush=True)

    t, r = timed(lambda: ipvs.sync(changed))
    ops = r["operations"]
    result["sync"] = {"seconds": round(t, 2), "operations": len(ops),
                      "counts": ipvs.summarize_operations(ops)}
    print(f"sync with {n_changed} services changed: {t:.1f}s, {len(ops)} ops {result['sync']['counts']}",
          flush=True)
    check = ipvs.normalize_table(ipvs.parse_save(ipvsadm("-Sn"))["services"])
    assert check == want_changed, "sync did not produce the changed table"

    with ipvs._open() as nl:
        t, _ = timed(lambda: ipvs._read_table(nl, dest_keys=set(want_changed)))
    result["read_table"] = {"seconds": round(t, 2)}
    print(f"reading the live table alone: {t:.1f}s", flush=True)

    lines = rules_changed.count("\n")
    t_clear, _ = timed(lambda: ipvsadm("-C"))
    t_restore, _ = timed(lambda: ipvsadm("-R", stdin=rules_changed))
    result["ipvsadm_restore"] = {"seconds": round(t_clear + t_restore, 2),
                                 "clear_seconds": round(t_clear, 2),
                                 "restore_seconds": round(t_restore, 2),
                                 "operations": lines + 1}
    print(f"ipvsadm -C + -R: {t_clear + t_restore:.1f}s, {lines + 1} ops", flush=True)
    check = ipvs.normalize_table(ipvs.parse_save(ipvsadm("-Sn"))["services"])
    assert check == want_changed, "ipvsadm -R did not produce the changed table"
    ipvsadm("-C")

    base_s = result["ipvsadm_restore"]["seconds"]
    base_ops = result["ipvsadm_restore"]["operations"]
    result["ratios_vs_restore"] = {
        "sync_time": round(result["sync"]["seconds"] / base_s, 3),
        "sync_operations": round(result["sync"]["operations"] / base_ops, 4),
        "noop_sync_time": round(result["noop_sync"]["seconds"] / base_s, 3),
        "initial_sync_time": round(result["initial_sync"]["seconds"] / base_s, 3),
    }
    result["guest"] = {"kernel": platform.release(), "cpus": os.cpu_count(),
                       "python": platform.python_version(),
                       "ipvsadm": subprocess.run(["ipvsadm", "--version"], capture_output=True,
                                                 text=True).stdout.strip()}
    Path(out_path).write_text(json.dumps(result, indent=1) + "\n")
    return result


def markdown(res, host, command):
    r = res["ratios_vs_restore"]
    rows = [
        ("`ipvsadm -C` + `ipvsadm -R` (whole table) — baseline",
         res["ipvsadm_restore"]["seconds"], res["ipvsadm_restore"]["operations"], "1", "1"),
        (f"`ipvs.sync`, {res['changed_services']} services changed",
         res["sync"]["seconds"], res["sync"]["operations"], f"{r['sync_time']:.3f}",
         f"{r['sync_operations']:.4f}"),
        ("`ipvs.sync`, nothing changed (read + diff only)", res["noop_sync"]["seconds"],
         res["noop_sync"]["operations"], f"{r['noop_sync_time']:.3f}", "0"),
        ("`ipvs.sync` from an empty table (for reference)", res["initial_sync"]["seconds"],
         res["initial_sync"]["operations"], f"{r['initial_sync_time']:.3f}",
         f"{res['initial_sync']['operations'] / res['ipvsadm_restore']['operations']:.4f}"),
    ]
    out = ["| what | seconds | kernel operations | time vs baseline | operations vs baseline |",
           "| --- | ---: | ---: | ---: | ---: |"]
    out += [f"| {a} | {b:.1f} | {c} | {d} | {e} |" for a, b, c, d, e in rows]
    out.append("")
    read = res["read_table"]["seconds"]
    validate = max(0.0, res["noop_sync"]["seconds"] - read)
    apply_ = max(0.0, res["sync"]["seconds"] - res["noop_sync"]["seconds"])
    out.append(f"Where the sync's {res['sync']['seconds']:.1f}s go: reading the live table (one "
               f"netlink dump per service) {read:.1f}s, validating the desired table and diffing "
               f"~{validate:.1f}s (no-op sync minus read), applying the "
               f"{res['sync']['operations']} operations ~{apply_:.1f}s (sync minus no-op sync).")
    out.append("")
    out.append(f"Table: {res['services']} services x {res['destinations_per_service']} destinations "
               f"({res['ipvsadm_restore']['operations'] - 1} ipvsadm lines). Command: `{command}`. "
               f"Machine: {host}; guest kernel {res['guest']['kernel']}, {res['guest']['cpus']} vCPU, "
               f"{res['guest']['ipvsadm']}, Python {res['guest']['python']}.")
    return "\n".join(out)


def host_main(opts):
    vmrun = _load("tests/vm/run.py", "edge_ha_vm_run")
    out_guest = f"{vmrun.GUEST_RESULTS}/bench_ipvs_sync.json"
    cmd = [sys.executable, "bench/ipvs_sync.py", "--inside", "--services", str(opts.services),
           "--change", str(opts.change), "--json", out_guest]
    t0 = time.monotonic()
    res = vmrun.run_in_vm(cmd, timeout=opts.timeout, stream=True)
    if res.exit_code != 0:
        print(res.output[-4000:], file=sys.stderr)
        return res.exit_code
    data = json.loads((res.results_dir / "bench_ipvs_sync.json").read_text())
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    host = (f"{os.cpu_count()}-core {cpu} host, qemu {res.accel.upper()} "
            f"(VM stage {time.monotonic() - t0:.0f}s)")
    data["host"] = host
    data["accel"] = res.accel
    if opts.json:
        Path(opts.json).write_text(json.dumps(data, indent=1) + "\n")
    print()
    print(render_markdown(data, opts))
    return 0


def render_markdown(data, opts):
    services, fraction = data["services"], data.get("change_fraction", opts.change)
    command = "python bench/ipvs_sync.py" + (
        "" if (services, fraction) == (10000, 0.01)
        else f" --services {services} --change {fraction}")
    return markdown(data, data["host"], command)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inside", action="store_true", help="run the measurement here")
    parser.add_argument("--services", type=int, default=10000)
    parser.add_argument("--change", type=float, default=0.01, help="fraction of services changed")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--markdown-from", metavar="JSON",
                        help="only print the Markdown table of an earlier run's --json file")
    opts = parser.parse_args(argv)
    if opts.markdown_from:
        print(render_markdown(json.loads(Path(opts.markdown_from).read_text()), opts))
        return 0
    if opts.inside:
        inside(opts.services, opts.change, opts.json or "/tmp/bench_ipvs_sync.json")
        return 0
    return host_main(opts)


if __name__ == "__main__":
    sys.exit(main())
