"""
Run the benchmarks and rewrite their tables in docs/benchmarks.md
(between the ``<!-- bench:NAME -->`` markers; the rest of the file is kept).

    .venv/bin/python bench/run_all.py            # everything (about 45 min on 2 cores)
    .venv/bin/python bench/run_all.py --quick    # 3 repetitions, 20 s of CPU burn: a smoke run
    .venv/bin/python bench/run_all.py --with-ipvs   # also bench/ipvs_sync.py in the qemu VM (slow)
    .venv/bin/python bench/run_all.py --only scale-lab --edges 3,10,50 --json bench/results/scale-lab.json
        # the controller with 3, 10 and 50 real salt-minions (bench/scale_lab.py; not in the default set)
    .venv/bin/python bench/run_all.py --only lb --reps 10 --json bench/results/lb.json
        # a new LoadBalancer Service until its address answers and is in its status (not in the default set)

Needs root (network namespaces) and keepalived (make bootstrap). Namespaces
are ``ehb<pid>-*`` (the project's lab), ``ehp<pid>-*`` (the plain setup) and
``ehs<pid>-*`` (scale-lab, one size at a time), the work directory /tmp/ehb-<pid>; all are removed at the end, also after a
failure. A quick run writes its tables to the JSON only unless --doc is given.
"""

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
import traceback

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import lab_bench, report, scale, scale_lab  # noqa: E402
from bench.common import DOC, loadavg, log, machine, other_load, replace_section  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description="salt-edge-ha benchmarks")
    parser.add_argument("--quick", action="store_true", help="3 repetitions, short CPU burn (smoke run)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 20, quick 3)")
    parser.add_argument("--burn", type=int, default=None, help="CPU burn seconds (default 300, quick 20)")
    parser.add_argument("--only", default="",
                        help="comma-separated: scale,failover,convergence,planned,fence,burn (the default set), "
                             "scale-lab, lb")
    parser.add_argument("--edges", default="3,10,50",
                        help="scale-lab: edge node counts, each N or N:REPS (default 3,10,50; without :REPS a size "
                             "of 50 or more gets at most 10 repetitions)")
    parser.add_argument("--with-ipvs", action="store_true", help="also run bench/ipvs_sync.py (qemu VM, slow)")
    parser.add_argument("--doc", action="store_true", help="rewrite docs/benchmarks.md even in --quick mode")
    parser.add_argument("--no-doc", action="store_true", help="do not touch docs/benchmarks.md")
    parser.add_argument("--json", default=None, help="raw results (default bench/results/last.json, quick: /tmp)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("the lab benchmarks need root (network namespaces)", file=sys.stderr)
        return 1
    if not shutil.which("keepalived"):
        print("keepalived is not installed (make bootstrap)", file=sys.stderr)
        return 1
    reps = args.reps or (3 if args.quick else 20)
    burn = args.burn or (20 if args.quick else 300)
    only = set(filter(None, args.only.split(","))) or {"scale", "failover", "convergence", "planned", "fence", "burn"}
    unknown = only - {"scale", "failover", "convergence", "planned", "fence", "burn", "scale-lab", "lb"}
    if unknown:
        parser.error(f"unknown block(s) for --only: {', '.join(sorted(unknown))}")
    sizes = scale_lab.parse_sizes(args.edges, reps) if "scale-lab" in only else None
    command = "make bench" if not argv and not sys.argv[1:] else \
        ".venv/bin/python bench/run_all.py " + " ".join(argv if argv is not None else sys.argv[1:])
    pid = os.getpid() % 10000
    work = pathlib.Path(f"/tmp/ehb-{os.getpid()}")
    work.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True,
                            text=True, check=False).stdout.strip() or None
    res = {"command": command, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine(),
           "commit": commit,
           "reps": reps, "burn_seconds": burn, "quick": args.quick, "load_start": loadavg(),
           "other_load_start": other_load([os.getpid()]), "blocks": sorted(only)}
    started = time.monotonic()
    try:
        if "scale" in only:
            log("scale (pure Python)")
            res["scale"] = scale.run(args.quick, log=log)
        if only & {"failover", "convergence", "planned", "fence", "burn", "lb"}:
            run_lab(res, only, reps, burn, work, pid)
        if "scale-lab" in only:
            log(f"scale-lab: the controller with real minions at {', '.join(f'{e} ({r} reps)' for e, r in sizes)}")
            res["scale_lab"] = scale_lab.run(sizes, work, pid, log=log)
        if args.with_ipvs:
            log("IPVS sync in the VM (bench/ipvs_sync.py)")
            ipvs_json = work / "ipvs.json"
            subprocess.run([sys.executable, str(REPO / "bench" / "ipvs_sync.py"), "--json", str(ipvs_json)],
                           check=True)
            res["ipvs_markdown"] = subprocess.run(
                [sys.executable, str(REPO / "bench" / "ipvs_sync.py"), "--markdown-from", str(ipvs_json)],
                check=True, capture_output=True, text=True).stdout
    except BaseException:
        res["error"] = traceback.format_exc()
        log(f"FAILED:\n{res['error']}")
    finally:
        res["seconds"] = round(time.monotonic() - started, 1)
        res["load_end"] = loadavg()
        out = pathlib.Path(args.json or (pathlib.Path(f"/tmp/ehb-quick-{os.getpid()}.json") if args.quick
                                         else REPO / "bench" / "results" / "last.json"))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1, default=str))
        log(f"raw results: {out}")
        if not args.no_doc and (args.doc or not args.quick) and "error" not in res:
            text = DOC.read_text()
            for name, body in report.sections(res).items():
                text = replace_section(text, name, body)
            DOC.write_text(text)
            log(f"rewrote the tables in {DOC}")
            try:
                from bench import plots  # pylint: disable=import-outside-toplevel

                log(f"pictures: {', '.join(str(p) for p in plots.draw(res, DOC.parent / 'img'))}")
            except ImportError as exc:  # matplotlib: make bench installs requirements-bench.txt
                log(f"no pictures ({exc})")
        if args.quick:
            print(report.summary_text(res))
        shutil.rmtree(work, ignore_errors=True)
    return 1 if "error" in res else 0


def run_lab(res, only, reps, burn, work, pid):
    from bench.edges import PlainEdge, ProjectEdge  # pylint: disable=import-outside-toplevel

    extra = reps if reps < 10 else 10  # the extra columns (watch, fast option): 10 repetitions
    res["reps_extra"] = extra
    plain = PlainEdge(work / "plain", f"ehp{pid}", label="plain")
    project = ProjectEdge(work / "lab", f"ehb{pid}", work / "events.jsonl", work / "kube-requests.jsonl")

    def guard(name, fn):
        """Run one block; a failure is recorded (and shown in the docs) and the next block still runs."""
        try:
            fn()
        except Exception:  # pylint: disable=broad-except
            res.setdefault("block_errors", {})[name] = traceback.format_exc()[-3000:]
            log(f"block {name} FAILED:\n{res['block_errors'][name]}")

    def failover_default():
        log("failover: the project's defaults (VRRPv2, advert_int 1, vrrp beacon watch 0.05)")
        project.set_variant("default", watch=0.05)
        project.label = "default"
        res["failover_default"] = lab_bench.failover(project, reps, work)
        res["convergence_default"] = {h: lab_bench.convergence(project, runs)
                                      for h, runs in res["failover_default"].items()}
        res["idle_reconciles"] = lab_bench.idle_reconciles(project)
        res["minion_cpu_watch_on"] = lab_bench.minion_cpu(project, 10 if reps < 10 else 60)

    def failover_watch():
        log("convergence without the vrrp beacon's watch (beacons every 1 s; same VRRP settings)")
        project.set_variant("default", watch=0)
        project.label = "default-watch"
        res["minion_cpu_watch_off"] = lab_bench.minion_cpu(project, 10 if reps < 10 else 60)
        res["failover_watch"] = lab_bench.failover(project, extra, work, hows=("sigkill",))
        res["convergence_watch"] = {h: lab_bench.convergence(project, runs)
                                    for h, runs in res["failover_watch"].items()}

    def failover_fast():
        log("failover: the fast option (VRRPv3, advert_int 0.1, watch 0.05)")
        project.set_variant("fast", watch=0.05)
        project.label = "fast"
        res["failover_fast"] = lab_bench.failover(project, extra, work)
        res["convergence_fast"] = {h: lab_bench.convergence(project, runs)
                                   for h, runs in res["failover_fast"].items()}

    def planned():
        project.set_variant("default", watch=0.05)
        project.label = "default"
        log("planned: re-render with a changed pillar (plain: edit + SIGHUP; project: pillar + edge.reconcile)")
        res["rerender_plain"] = lab_bench.planned_rerender(plain, reps, work)
        res["rerender_project"] = lab_bench.planned_rerender(project, reps, work)

    def drain():
        if lab_bench.drain_available():
            log("planned: edge.drain / edge.undrain")
            project.set_variant("default", watch=0.05)
            res["drain"] = lab_bench.planned_drain(project, reps, work, max_seconds=900)
        else:
            res["drain"] = None
            log("planned: edge.drain is not in _runners/edge.py on this branch: not measured")

    def fence():
        project.set_variant("default", watch=0.05)
        project.label = "default"
        log("fence: an owner whose ingress fails, Kubernetes API answering / hung")
        res["fence_api_up"] = lab_bench.fence_ingress(project, reps, hung=False)
        res["fence_api_hung"] = lab_bench.fence_ingress(project, reps, hung=True)

    def load_balancer():
        project.set_variant("default", watch=0.05)
        project.label = "default"
        log("lb: a new LoadBalancer Service until its address answers and is in its status "
            "(plain: a vrrp_instance added by hand + SIGHUP)")
        res["lb"] = lab_bench.load_balancer_services(plain, project, reps, work)

    def cpu_burn():
        project.set_variant("default", watch=0.05)
        project.label = "default"
        log(f"false failovers: {burn} s of CPU burn in the edge namespaces (plain and project side by side)")
        res["other_load_before_burn"] = other_load([os.getpid()])
        res["burn"] = lab_bench.cpu_burn([plain, project], burn, burners_per_edge=2)
        res["burn_idle"] = lab_bench.cpu_burn([plain, project], min(burn, 60), burners_per_edge=0)

    def cpu_burn_fast():
        # the fast option (VRRPv3, advert_int 0.1) beside a hand-written keepalived.conf with the same timers
        plain_fast = PlainEdge(work / "plain-fast", f"ehq{pid}", version=3, advert=0.1, label="plain-fast")
        try:
            plain_fast.up()
            project.set_variant("fast", watch=0.05)
            project.label = "fast"
            log(f"false failovers, fast option: {burn} s of CPU burn (plain VRRPv3 0.1 and the project's fast option)")
            res["burn_fast"] = lab_bench.cpu_burn([plain_fast, project], burn, burners_per_edge=2)
            res["burn_fast_idle"] = lab_bench.cpu_burn([plain_fast, project], min(burn, 60), burners_per_edge=0)
        finally:
            plain_fast.down()
            project.label = "default"

    try:
        log("building the plain setup and the project's lab")
        t = time.monotonic()
        plain.up()
        project.up()
        res["lab_up_seconds"] = round(time.monotonic() - t, 1)
        if only & {"failover", "convergence"}:
            log("failover: plain keepalived")
            guard("failover_plain", lambda: res.__setitem__("failover_plain", lab_bench.failover(plain, reps, work)))
            guard("failover_default", failover_default)
            guard("failover_watch", failover_watch)
            guard("failover_fast", failover_fast)
        if "planned" in only:
            guard("planned", planned)
            guard("drain", drain)
        if "fence" in only:
            guard("fence", fence)
        if "burn" in only:
            guard("burn", cpu_burn)
            guard("burn_fast", cpu_burn_fast)
        if "lb" in only:
            guard("lb", load_balancer)
    finally:
        log("tearing down")
        project.down()
        plain.down()


if __name__ == "__main__":
    sys.exit(main())
