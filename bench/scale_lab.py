"""
The controller with N real salt-minions (issues #11 and #16 item 5): for each
size a fresh lab (``lab/lab.py`` with ``edges=N``: a salt-master with the
reactor, N edge minions running keepalived from highstate, VRRP among all of
them as the lab pillar configures it: VRRPv3, ``advert_int 1``, unicast, the
vrrp beacon's ``watch: 0.05``), then:

- SIGKILL of the VIP owner's keepalived -> Service right (the Service's
  externalIPs without the killed node), repeated; measured by
  ``lab_bench.failover`` / ``lab_bench.convergence``, the same code as the
  3-node failover block (probing included);
- the runner's time per reconcile (``seconds`` in the master's
  ``reconcile.log``) of the reconciles in the measured window;
- salt-master CPU seconds and memory (RSS and PSS summed over the
  salt-master process tree, from /proc, sampled every second) while idle
  and during the repetitions;
- each edge salt-minion's memory (its process tree), the mean, and the CPU
  of all edge minions together while idle.

Called by bench/run_all.py (``--only scale-lab --edges 3,10,50``). Each size
gets its own lab directory under the run's work directory and the namespace
prefix ``ehs<pid>``; the lab is torn down (pids, namespaces) before the next
size, also after a failure.
"""

import os
import pathlib
import sys
import threading
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import lab_bench  # noqa: E402
from bench.common import log as default_log  # noqa: E402
from bench.common import summary  # noqa: E402
from bench.edges import ProjectEdge  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
IDLE_SECONDS = 30


def parse_sizes(text, reps):
    """``"3,10,50"`` or ``"3:20,10:20,50:10"`` -> ``[(edges, reps)]``; without ``:R`` a size of 50 or more gets
    at most 10 repetitions (the time budget), the others ``reps``."""
    out = []
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        edges, _, count = part.partition(":")
        edges = int(edges)
        out.append((edges, int(count) if count else (min(reps, 10) if edges >= 50 else reps)))
    if not out:
        raise ValueError("no sizes")
    return out


# --------------------------------------------------------------------------- /proc


def _children_map():
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    return children


def tree(pid, children=None):
    """``pid`` and its descendants."""
    children = _children_map() if children is None else children
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def usage(pids):
    """``{cpu: s, rss: KiB, pss: KiB, procs: n}`` summed over ``pids``. cpu: user+system of each process and of
    its reaped children (so a runner subprocess that ended is still counted, in its parent)."""
    cpu = rss = pss = procs = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            cpu += sum(int(fields[i]) for i in (11, 12, 13, 14)) / TICK
            rss += int(fields[21]) * PAGE_KIB
            procs += 1
            with open(f"/proc/{pid}/smaps_rollup", encoding="ascii", errors="replace") as fh:
                for line in fh:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1])
                        break
        except (OSError, IndexError, ValueError):
            continue
    return {"cpu": cpu, "rss": rss, "pss": pss, "procs": procs}


def _pid(lab, name):
    try:
        return int((lab.dir / "pids" / f"{name}.pid").read_text().strip())
    except (OSError, ValueError):
        return 0


def master_usage(lab, children=None):
    pid = _pid(lab, "master-salt-master")
    return usage(tree(pid, children)) if pid else None


def minion_usages(edge, children=None):
    """``{node: usage}`` of each edge node's salt-minion process tree."""
    children = _children_map() if children is None else children
    return {node: usage(tree(pid, children)) for node, pid in edge.minion_pids().items()}


class Sampler:
    """Samples the salt-master's memory every ``interval`` s in a thread; CPU from the first and last sample."""

    def __init__(self, lab, interval=1.0):
        self.lab, self.interval = lab, interval
        self.samples = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scale-lab-sampler", daemon=True)

    def _run(self):
        while not self._stop.is_set():
            u = master_usage(self.lab)
            if u:
                self.samples.append(dict(u, t=time.monotonic(), load=os.getloadavg()[0]))
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=10)
        u = master_usage(self.lab)
        if u:
            self.samples.append(dict(u, t=time.monotonic(), load=os.getloadavg()[0]))

    def result(self):
        s = self.samples
        if len(s) < 2:
            return None
        wall = s[-1]["t"] - s[0]["t"]
        return {
            "seconds": round(wall, 1),
            "cpu_seconds": round(s[-1]["cpu"] - s[0]["cpu"], 2),
            "cpu_share": (s[-1]["cpu"] - s[0]["cpu"]) / wall if wall else None,  # of one core
            "rss_mib_max": max(x["rss"] for x in s) / 1024,
            "rss_mib_mean": sum(x["rss"] for x in s) / len(s) / 1024,
            "pss_mib_max": max(x["pss"] for x in s) / 1024,
            "procs_max": max(x["procs"] for x in s),
            "load_mean": sum(x["load"] for x in s) / len(s),
            "load_max": max(x["load"] for x in s),
        }


# --------------------------------------------------------------------------- one size


def _idle(edge, seconds):
    """The salt-master and all edge minions over ``seconds`` without faults: CPU shares, memory."""
    children = _children_map()
    m0, n0, t0 = master_usage(edge.lab, children), minion_usages(edge, children), time.monotonic()
    time.sleep(seconds)
    children = _children_map()
    m1, n1, wall = master_usage(edge.lab, children), minion_usages(edge, children), time.monotonic() - t0
    common = [n for n in n1 if n in n0]
    return {
        "seconds": round(wall, 1),
        "master_cpu_share": (m1["cpu"] - m0["cpu"]) / wall,
        "master_rss_mib": m1["rss"] / 1024,
        "master_pss_mib": m1["pss"] / 1024,
        "minions_cpu_share": sum(n1[n]["cpu"] - n0[n]["cpu"] for n in common) / wall,  # all edge minions together
        "minion_rss_mib_mean": sum(n1[n]["rss"] for n in common) / len(common) / 1024,
        "minion_pss_mib_mean": sum(n1[n]["pss"] for n in common) / len(common) / 1024,
        "minion_procs": sum(n1[n]["procs"] for n in common) / len(common),
        "load": os.getloadavg()[0],
    }


def _reconciles(edge, start, end):
    """The reconcile.log entries of kind reconcile recorded in [start, end] (wall clock)."""
    return [r for r in edge.lab.reconcile_log() if r.get("kind") == "reconcile" and start <= r.get("time", 0) <= end]


def measure(edges, reps, work, prefix, log=default_log):
    """One size: a lab with ``edges`` edge nodes, ``reps`` SIGKILLs of the owner's keepalived."""
    sdir = pathlib.Path(work) / f"scale-lab-{edges}"
    sdir.mkdir(parents=True, exist_ok=True)
    edge = ProjectEdge(sdir / "lab", prefix, sdir / "events.jsonl", sdir / "kube-requests.jsonl", edges=edges)
    edge.variant = "lab"  # the lab pillar as it is (VRRPv3, advert_int 1): no re-render before the runs
    edge.label = f"scale-{edges}"
    out = {"edges": edges, "reps": reps, "owner": edge.owner, "next_owner": edge.next_owner,
           "watched": edge.watched}
    try:
        t = time.monotonic()
        edge.up(log=lambda m: log(f"  {m}"))
        out["up_seconds"] = round(time.monotonic() - t, 1)
        log(f"  {edges} edge nodes up in {out['up_seconds']} s; settling")
        edge.baseline(timeout=120)
        out["idle"] = _idle(edge, IDLE_SECONDS)
        log(f"  idle: master {out['idle']['master_cpu_share'] * 100:.1f}% of a core, all edge minions "
            f"{out['idle']['minions_cpu_share'] * 100:.0f}%, minion RSS {out['idle']['minion_rss_mib_mean']:.0f} MiB, "
            f"load {out['idle']['load']:.1f}")
        start = time.time()
        runs = []
        with Sampler(edge.lab) as sampler:
            for n in range(reps):
                try:
                    res = lab_bench.failover_rep(edge, "sigkill", sdir, {"n": n})
                except Exception as exc:  # pylint: disable=broad-except
                    # one repetition that did not get back to the baseline: recorded, the size keeps its runs
                    out.setdefault("rep_errors", []).append(f"#{n + 1}: {exc}"[:500])
                    log(f"  {edge.label} sigkill #{n + 1} FAILED: {exc}")
                    edge.baseline(timeout=120)
                    continue
                log(f"  {edge.label} sigkill #{n + 1}: moved {res['moved']}, service {res['service']}, "
                    f"lost {res['lost']}/{res['sent']}")
                runs.append(res)
        end = time.time()
        out["window"] = sampler.result()
        out["runs"] = runs
        out["convergence"] = lab_bench.convergence(edge, runs)
        recs = _reconciles(edge, start, end)
        out["reconciles"] = [{k: r.get(k) for k in ("time", "reason", "seconds", "actions", "error")} for r in recs]
        children = _children_map()
        minions = minion_usages(edge, children)
        out["minion_rss_mib_mean_end"] = sum(u["rss"] for u in minions.values()) / len(minions) / 1024
        out["minion_pss_mib_mean_end"] = sum(u["pss"] for u in minions.values()) / len(minions) / 1024
        out["holders_end"] = edge.holders_all()
        svc = summary([r.get("service") for r in runs])
        log(f"  {edges} edge nodes: Service right after the SIGKILL {svc['median']} s median ({svc['missing']} "
            f"missing); {len(recs)} reconciles, master {out['window']['cpu_seconds']} CPU s over "
            f"{out['window']['seconds']} s")
    except Exception as exc:  # pylint: disable=broad-except
        import traceback  # pylint: disable=import-outside-toplevel

        out["error"] = traceback.format_exc()[-3000:]
        log(f"  {edges} edge nodes FAILED: {exc}")
    finally:
        t = time.monotonic()
        edge.down()
        out["down_seconds"] = round(time.monotonic() - t, 1)
    return out


def run(sizes, work, pid, log=default_log):
    """``sizes``: ``[(edges, reps)]``, measured in this order, one lab at a time."""
    prefix = f"ehs{pid % 10000}"
    results = []
    for edges, reps in sizes:
        log(f"scale-lab: {edges} edge nodes, {reps} SIGKILLs of the owner's keepalived")
        results.append(measure(edges, reps, work, prefix, log))
    return results
