"""
The lab benchmarks (items 1, 2, 3, 5 of docs/benchmarks.md): failover, the
convergence of the Service and the report, planned operations, false
failovers under CPU load, and the cost of the vrrp beacon's ``watch``.
Called by bench/run_all.py, which builds and tears down the edges.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import log, summary  # noqa: E402
from bench.edges import ADDR, VIP, wait_for  # noqa: E402
from lab import load_balancer  # noqa: E402  (puts _utils on the path: edge_ha_core)
from edge_ha_core import lb  # noqa: E402  pylint: disable=wrong-import-order

PROBE_RATE = 20  # requests per second, each with a 2 s deadline
TAIL = 1.5  # seconds of probing after the last thing measured


# --------------------------------------------------------------------------- 1. failover


def failover_rep(edge, how, workdir, rep):
    """One stop of the VIP owner under probing. Times are seconds after the signal."""
    edge.restore(how) if rep.get("restore_first") else None
    prober = edge.prober(workdir / f"probe-{edge.label}-{how}-{rep['n']}.json", PROBE_RATE)
    time.sleep(0.7)
    t0 = time.time()
    edge.stop_owner(how)
    res = {"t0": t0, "how": how, "n": rep["n"]}
    project = edge.kind == "project"
    want = {"moved": None, "single": None}
    if project:
        want.update(service=None, report=None)
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        now = time.time() - t0
        holders = edge.holders()
        if want["moved"] is None and any(b in holders for b in edge.backups):
            want["moved"] = now
        if want["single"] is None and len(holders) == 1 and holders[0] != edge.owner:
            want["single"] = now
        if project:
            if want["service"] is None and edge.lab.external_ips() == edge.expected_ips(without=[edge.owner]):
                want["service"] = now
            if want["report"] is None and want["single"] is not None and want["service"] is not None:
                want["report"] = now
        if all(v is not None for v in want.values()):
            break
        if not project and want["moved"] is not None and now > want["moved"] + 3:
            break  # the plain setup never removes a SIGKILL's stale VIP
        time.sleep(0.02)
    res.update(want)
    last = max(v for v in want.values() if v is not None) if any(v is not None for v in want.values()) else 0
    time.sleep(max(0.0, t0 + last + TAIL - time.time()))
    probe = prober.stop()
    res["sent"] = probe["requests"]
    res["lost"] = probe["lost"]
    res["lost_before_fault"] = sum(1 for t, _ in probe["lost_at"] if t < t0)
    res["answers"] = probe["answers"]
    if project:
        trans = [t for b in edge.backups for t, inst, state in edge.transitions_log(b)
                 if t > t0 and state == "MASTER"]
        res["transition"] = (min(trans) - t0) if trans else None
        if rep["n"] % 5 == 0:  # check the report itself now and then (a salt-run costs ~3 s)
            row = edge.lab.report()["vips"][0]
            res["report_ok"] = (row["owner"] == [edge.next_owner] and row["flags"] == []
                                and row["service_match"] is True)
    edge.restore(how)
    return res


def failover(edge, reps, workdir, hows=("graceful", "sigkill")):
    out = {}
    for how in hows:
        runs = []
        for n in range(reps):
            res = failover_rep(edge, how, workdir, {"n": n})
            log(f"  {edge.label} {how} #{n + 1}: moved {res['moved']}, lost {res['lost']}/{res['sent']}"
                + (f", service {res.get('service')}, report {res.get('report')}" if edge.kind == "project" else ""))
            runs.append(res)
        out[how] = runs
    return out


def failover_summary(runs):
    return {
        "moved": summary([r["moved"] for r in runs]),
        "single": summary([r["single"] for r in runs]),
        "lost": summary([r["lost"] for r in runs]),
        "lost_total": sum(r["lost"] for r in runs),
        "sent_total": sum(r["sent"] for r in runs),
        "lost_before_fault": sum(r["lost_before_fault"] for r in runs),
        "service": summary([r.get("service") for r in runs]) if "service" in runs[0] else None,
        "report": summary([r.get("report") for r in runs]) if "report" in runs[0] else None,
        "report_ok": sum(1 for r in runs if r.get("report_ok")) if "report_ok" in runs[0] else None,
        "report_checked": sum(1 for r in runs if "report_ok" in r),
    }


# --------------------------------------------------------------------------- 2. convergence


def convergence_split(run, events, requests, history):
    """
    Follow the Service write that made the Service right back to what caused it:

    beacon   the condition began (the transition's time in transitions.log; for a
             SIGKILL's stale_vip event: the kill) -> the beacon produced the event ('seen')
    bus      'seen' -> the event arrived on the master's event bus (bench/bus_listener.py)
    reactor  arrival -> the edge.trigger runner job started (salt/run/<jid>/new)
    runner   job start -> the runner's Service read before its write (pillar, coalescing,
             gathering every node's report, pods, keepalived.plan)
    k8s      that read -> the end of the Service write (emulator request log)
    """
    t0 = run["t0"]
    end = t0 + 40
    svc = "/services/ingress-nginx-controller"
    seen_right = t0 + run["service"] + 0.02 if run.get("service") is not None else end
    # the write that made it right: the last Service write that ended before the poll saw the Service right
    # (the reconcile also PATCHes the Service for other reasons, e.g. annotations)
    writes = [r for r in requests if t0 <= r["start"] and r["end"] <= seen_right and r["method"] in ("PATCH", "PUT")
              and r["path"].split("?")[0].endswith(svc)]
    if not writes:
        return None
    write = writes[-1]
    reads = [r for r in requests if t0 <= r["start"] <= write["start"] and r["method"] == "GET"
             and r["path"].split("?")[0].endswith(svc)]
    read = reads[-1] if reads else write
    recs = [h for h in history if h.get("kind") == "reconcile" and h["time"] >= write["end"] - 0.01
            and any(a.startswith("service externalIPs") for a in h.get("actions", []))]
    reason = recs[0]["reason"] if recs else None
    rec_start = recs[0]["time"] - recs[0]["seconds"] if recs else None
    beacons = [e for e in events if e["tag"] == reason and t0 - 1 <= e["recv"] <= (rec_start or write["start"])]
    if not beacons:
        return {"write_end": write["end"] - t0, "reason": reason}
    ev = beacons[-1]
    jobs = [e for e in events if e["tag"].startswith("salt/run/") and e["tag"].endswith("/new")
            and "edge.trigger" in str(e.get("fun")) and e["recv"] >= ev["recv"] - 0.001
            and e["recv"] <= read["start"]]
    job = jobs[0] if jobs else None
    job_start = job["recv"] if job else None  # both ends seen by the same listener
    began = ev.get("time") if ev["tag"].endswith("/transition") else t0
    seen = ev.get("seen")
    parts = {
        "beacon": (seen - began) if seen and began else None,
        "bus": (ev["recv"] - seen) if seen else None,
        "reactor": (job_start - ev["recv"]) if job_start else None,
        "runner": (read["start"] - job_start) if job_start else None,
        "k8s": write["end"] - read["start"],
    }
    return dict(parts, trigger=ev["tag"], began=began - t0 if began else None, write_end=write["end"] - t0)


def idle_reconciles(edge):
    """Runner time of the event-triggered reconciles that changed nothing (from the master's reconcile log)."""
    secs = sorted(r["seconds"] for r in edge.lab.reconcile_log()
                  if r.get("kind") == "reconcile" and not r.get("actions") and r.get("reason", "").startswith("salt/"))
    if not secs:
        return None
    return {"count": len(secs), "median": secs[len(secs) // 2], "p95": secs[min(len(secs) - 1, int(len(secs) * 0.95))]}


def convergence(edge, runs):
    events, requests, history = edge.events(), edge.kube_requests(), edge.lab.reconcile_log()
    out = []
    for run in runs:
        split = convergence_split(run, events, requests, history)
        trans = run.get("transition")
        out.append({
            "service_from_fault": run.get("service"),
            "report_from_fault": run.get("report"),
            "transition": trans,
            "service_from_transition": (run["service"] - trans) if run.get("service") is not None and trans else None,
            "report_from_transition": (run["report"] - trans) if run.get("report") is not None and trans else None,
            "split": split,
        })
    return out


# --------------------------------------------------------------------------- 3. planned operations


def planned_rerender(edge, reps, workdir):
    """Change the pillar (a second VIP added, then removed again) and apply it under probing."""
    runs = []
    for n in range(reps):
        extra = n % 2 == 0
        prober = edge.prober(workdir / f"probe-{edge.label}-rerender-{n}.json", PROBE_RATE)
        time.sleep(1.0)
        start = time.time()
        if edge.kind == "project":
            edge.extra_vip = extra
            result = edge.apply_pillar()
            # the re-apply may be done by this reconcile or by one the pillar refresh triggered first (the
            # beacons restart and fire snapshots); either way no rollout since the change may have failed
            rollouts = [r for r in edge.lab.reconcile_log() if r.get("kind") == "rollout" and r["time"] >= start]
            ok = not result.get("error") and not any(r.get("error") for r in rollouts)
        else:
            edge.reload_all(extra)
            ok = True
        done = all(edge.changed(n, extra) for n in (edge.nodes if edge.kind == "project" else ["e1"]))
        duration = time.time() - start
        settled = wait_for(lambda: edge.holders() == [edge.owner], 60, 0.05)
        time.sleep(TAIL)
        probe = prober.stop()
        ok = ok and bool(done) and bool(settled)
        runs.append({"duration": duration, "lost": probe["lost"], "sent": probe["requests"], "ok": ok,
                     "answers": probe["answers"]})
        log(f"  {edge.label} re-render #{n + 1}: {duration:.2f}s, lost {probe['lost']}/{probe['requests']}, ok {ok}")
    if edge.kind == "project":
        edge.extra_vip = False
        edge.apply_pillar()
        edge.baseline()
    elif reps % 2:
        edge.reload_all(False)
    return runs


def drain_available():
    text = (REPO / "_runners" / "edge.py").read_text()
    return "def drain(" in text and "def undrain(" in text


def planned_drain(edge, reps, workdir, max_seconds=None):
    """salt-run edge.drain edge1 (the VIP owner), then edge.undrain edge1, each under probing
    (stops early after ``max_seconds``, keeping the repetitions done)."""
    runs = []
    begun = time.monotonic()
    for n in range(reps):
        if max_seconds and time.monotonic() - begun > max_seconds:
            log(f"  drain: stopping after {n} repetitions ({max_seconds} s budget)")
            break
        for op in ("drain", "undrain"):
            prober = edge.prober(workdir / f"probe-drain-{op}-{n}.json", PROBE_RATE)
            time.sleep(1.0)
            start = time.time()
            result = edge.lab.run(f"edge.{op}", "edge1", timeout=300)
            duration = time.time() - start
            ok = isinstance(result, dict) and bool(result.get("ok"))
            if op == "drain":
                settled = wait_for(lambda: "edge1" not in edge.holders() and len(edge.holders()) == 1, 30, 0.05)
            else:
                settled = wait_for(lambda: edge.holders() == ["edge1"], 60, 0.05)
            settle = time.time() - start
            time.sleep(TAIL)
            probe = prober.stop()
            runs.append({"op": op, "duration": duration, "settled": settle if settled else None,
                         "lost": probe["lost"], "sent": probe["requests"], "ok": ok and bool(settled),
                         "result": {k: v for k, v in result.items() if k in ("ok", "comment", "error")}
                         if isinstance(result, dict) else str(result)[:300]})
            log(f"  drain {op} #{n + 1}: {duration:.2f}s (VIP settled {settle:.2f}s), lost {probe['lost']}/"
                f"{probe['requests']}, ok {runs[-1]['ok']}")
    edge.baseline()
    return runs


def fence_ingress(edge, reps, hung):
    """The owner's ingress fails (its health endpoint answers 503; the pod is left alone, as a hung API
    could not be told): seconds from the master seeing it (the owner's ingress_health beacon event on
    the bus) until the VIP is off the owner. ``hung``: the Kubernetes emulator is SIGSTOPped first
    (connections accepted, nothing answers), the bound of issue #13."""
    runs = []
    owner = edge.owner
    flag = edge.lab.node_dir(owner) / "ingress-unhealthy"
    kube_pid = int((edge.lab.dir / "pids" / "master-kube.pid").read_text())
    for n in range(reps):
        start = time.time()
        if hung:
            os.kill(kube_pid, signal.SIGSTOP)
        try:
            flag.write_text("unhealthy\n")
            off = wait_for(lambda: owner not in edge.holders() and time.time(), 60, 0.02)
            seen = [e["recv"] for e in edge.events() if e["recv"] >= start
                    and e["tag"].startswith(f"salt/beacon/{owner}/ingress_health") and "unhealthy" in e["tag"]]
        finally:
            if hung:
                os.kill(kube_pid, signal.SIGCONT)
            flag.unlink(missing_ok=True)
        fence = off - min(seen) if off and seen else None
        runs.append({"fence": fence, "from_failure": (off - start) if off else None, "ok": fence is not None})
        log(f"  fence ({'API hung' if hung else 'API answering'}) #{n + 1}: "
            f"{'-' if fence is None else f'{fence:.2f}'}s after the beacon event, "
            f"{'-' if not off else f'{off - start:.2f}'}s after the failure")
        edge.lab.set_ingress_healthy(owner, True)
        edge.baseline()
    return runs


# --------------------------------------------------------------------------- 7. a new LoadBalancer Service


LB_ADDRESS = "198.18.0.120"  # the plain setup's new address (the first of the project's pool, lab/load_balancer.py)
LB_VRID = 60
LB_TIMEOUT = 60  # seconds a repetition may take before it counts as failed


def _http_waiter(edge, address, workdir, tag, seconds=LB_TIMEOUT):
    """lab/load_balancer.py's waiter in the client namespace (a GET every 50 ms); returns (proc, out path)."""
    out = pathlib.Path(workdir) / f"http-{tag}.json"
    for path in (out, pathlib.Path(f"{out}.ready")):
        path.unlink(missing_ok=True)
    proc = edge.client_spawn(*load_balancer.wait_command(address, seconds, out))
    if not wait_for(lambda: pathlib.Path(f"{out}.ready").exists(), 20, 0.02):
        edge.client_stop(proc)
        raise RuntimeError(f"the HTTP waiter for {address} did not start")
    return proc, out


def _http_result(out):
    try:
        return json.loads(pathlib.Path(out).read_text())
    except (OSError, ValueError):
        return None


def lb_plain_rep(edge, n, workdir):
    """Plain: a vrrp_instance with a new address added to keepalived.conf on the 3 nodes + SIGHUP, until the
    address answers HTTP from the client; then the instance removed again (+ SIGHUP) until the address is gone.
    Seconds after the first SIGHUP."""
    address, name = LB_ADDRESS, "VI_LB"
    proc, out = _http_waiter(edge, address, workdir, f"plain-{n}")
    try:
        t0 = time.time()
        edge.add_instance(name, LB_VRID, address)
        res = {"n": n, "t0": t0, "held": None, "answered": None, "body": None}
        deadline = time.monotonic() + LB_TIMEOUT
        while time.monotonic() < deadline:
            if res["held"] is None and edge.holders(address):
                res["held"] = time.time() - t0
            got = res["body"] is None and _http_result(out)
            if got:
                res["answered"] = got["time"] - t0 if got["time"] else None
                res["body"] = got["body"]
            if res["body"] is not None and (res["held"] is not None or time.time() - t0 > res["answered"] + 1):
                break  # the holder is looked for a little longer: the answer can come between two looks
            time.sleep(0.02)
    finally:
        edge.client_stop(proc)
    res["holders"] = edge.holders(address)
    t1 = time.time()
    edge.remove_instance(name)
    gone = wait_for(lambda: not edge.holders(address) and time.time(), 30, 0.05)
    res["gone_after_remove"] = gone - t1 if gone else None
    time.sleep(1.0)
    res["ok"] = res["answered"] is not None and res["body"] == "e1" and gone is not None
    return res


def _lb_engine_listing(edge, since, timeout=60):
    """Wait until the Services engine has listed the Services (its 'list' event on the bus) after ``since``."""
    return wait_for(lambda: [e for e in edge.events() if e["tag"] == "edge_ha/kubernetes/services"
                             and e.get("why") == "list" and e["recv"] >= since], timeout, 0.5)


def lb_project_rep(edge, n, workdir, name=None):
    """
    Project: POST a ``type: LoadBalancer`` Service of the project's class; seconds after the POST until the
    runner recorded its address (annotation), a node has the address, the address answers HTTP from the client,
    status.loadBalancer.ingress has it; then the Service deleted and its address gone from every node (and the
    reconcile loop quiet) before the next repetition.
    """
    lab = edge.lab
    name = name or f"bench-lb-{n}"
    edge.quiet()
    t0 = time.time()
    load_balancer.create(lab, name)
    res = {"n": n, "name": name, "t0": t0, "post": time.time() - t0, "address": None, "assigned": None,
           "held": None, "answered": None, "status": None, "body": None}
    proc = out = None
    try:
        deadline = time.monotonic() + LB_TIMEOUT
        while time.monotonic() < deadline:
            svc = load_balancer.get(lab, name)
            now = time.time() - t0
            if res["address"] is None and load_balancer.assigned(svc):
                res["address"], res["assigned"] = load_balancer.assigned(svc), now
                proc, out = _http_waiter(edge, res["address"], workdir, f"project-{n}")
            address = res["address"]
            if address and res["status"] is None and address in lb.ingress_ips(svc or {}):
                res["status"] = now
            if address and res["held"] is None and edge.holders_all(address):
                res["held"] = time.time() - t0
            if out and res["answered"] is None:
                got = _http_result(out)
                if got:
                    res["answered"] = got["time"] - t0 if got["time"] else None
                    res["body"] = got["body"]
                    if not got["time"]:
                        break  # the waiter gave up
            if res["status"] is not None and res["answered"] is not None:
                break
            time.sleep(0.05)
    except BaseException:
        load_balancer.delete(lab, name)  # not left behind for the next repetition
        raise
    finally:
        if proc:
            edge.client_stop(proc)
    res["both"] = max(res["status"], res["answered"]) if res["status"] is not None and res["answered"] is not None \
        else None
    address = res["address"]
    res["holders"] = edge.holders_all(address) if address else []
    t1 = time.time()
    load_balancer.delete(lab, name)
    gone = wait_for(lambda: not edge.holders_all(address) and time.time(), LB_TIMEOUT, 0.1) if address else t1
    res["gone_after_delete"] = gone - t1 if gone else None
    edge.quiet()
    res["ok"] = res["both"] is not None and bool(res["body"]) and gone is not None
    return res


def lb_split(run, events, requests, history):
    """
    Where a repetition's time went, from the master's records (seconds; None where a record is missing):

    watch     the POST -> the Services engine's event on the master's bus (the engine's Kubernetes watch)
    reactor   the event -> the start of the reconcile that assigned the address (reactor, runner start,
              waiting for the reconcile lock)
    assign    -> the LoadBalancer instances recorded (list the Services, annotation, AddressAssigned Event)
    pillar    -> the first minion ``state.apply`` of the staged reload (pillar compiled again, the minions'
              pillar refreshed, plan, keepalived.plan)
    rollout   -> the end of the staged reload (every node's state.apply, its report with the new config,
              every VIP held)
    status    -> the end of the PATCH of status.loadBalancer.ingress (the new instance's election, waited for
              up to edge_ha_lb_status_wait, Service, owners)

    Besides: ``jobs``, every minion job from the reconcile's start to the status write (fun, node, start after
    the POST, seconds from its publication to the node's return), and ``election``: from the return of the
    state.apply of the node that answered (the new address's owner) until the bench saw the address on a node.
    """
    t0, name, address = run["t0"], run["name"], run.get("address")
    if not address:
        return None
    end = t0 + LB_TIMEOUT
    svc_action = f"LoadBalancer {load_balancer.KUBE_NS}/{name}: "
    recs = [h for h in history if t0 <= h.get("time", 0) <= end + 30]
    assign = next((h for h in recs if h.get("kind") == "reconcile"
                   and any(str(a).startswith(svc_action) and "recorded" in str(a) for a in h.get("actions") or [])),
                  None)
    status = next((h for h in recs if h.get("kind") == "reconcile"
                   and any(str(a).startswith(svc_action + "status.loadBalancer.ingress") and address in str(a)
                           for a in h.get("actions") or [])), None)
    out = dict.fromkeys(["watch", "reactor", "assign", "pillar", "rollout", "status"])
    out.update(reconciles=None, same_reconcile=None, status_write=None, rollout_steps=None, jobs=[], election=None)
    watched = [e for e in events if e["tag"] == "edge_ha/kubernetes/services" and e["recv"] >= t0]
    event = watched[0] if watched else None
    if event:
        out["watch"] = event["recv"] - t0
    if not assign:
        return out
    a_start = assign["time"] - assign["seconds"]
    if event:
        out["reactor"] = a_start - event["recv"]
    lb_rec = next((h for h in recs if h.get("kind") == "load_balancer" and a_start <= h["time"] <= assign["time"]
                   and h.get("added")), None)
    if lb_rec:
        out["assign"] = lb_rec["time"] - a_start
    status_end = status["time"] if status else end
    rollouts = [h for h in recs if h.get("kind") == "rollout" and a_start <= h["time"] <= status_end]
    rollout = rollouts[-1] if rollouts else None
    if rollout:
        out["rollout_steps"] = [" ".join(str(x) for x in s) for s in rollout.get("steps") or []]
    applies = [e for e in events if e["tag"].startswith("salt/job/") and e["tag"].endswith("/new")
               and e.get("fun") == "state.apply" and lb_rec and lb_rec["time"] <= e["recv"]
               and (not rollout or e["recv"] <= rollout["time"])]
    if lb_rec and applies:
        out["pillar"] = applies[0]["recv"] - lb_rec["time"]
        if rollout:
            out["rollout"] = rollout["time"] - applies[0]["recv"]
    writes = [r for r in requests if r["method"] == "PATCH" and r["start"] >= t0
              and r["path"].split("?")[0].endswith(f"/services/{name}/status")]
    if writes:
        out["status_write"] = writes[0]["end"] - t0
        if rollout:
            out["status"] = writes[0]["end"] - rollout["time"]
    published = {e["tag"].split("/")[2]: e for e in events if e["tag"].startswith("salt/job/")
                 and e["tag"].endswith("/new") and a_start <= e["recv"] <= status_end}
    for e in events:
        parts = e["tag"].split("/")
        if len(parts) == 5 and parts[3] == "ret" and parts[2] in published:
            new = published[parts[2]]
            out["jobs"].append({"fun": new.get("fun"), "jid": parts[2], "node": parts[4], "start": new["recv"] - t0,
                                "seconds": e["recv"] - new["recv"]})
    owner_apply = [j for j in out["jobs"] if j["fun"] == "state.apply" and j["node"] == run.get("body")]
    if owner_apply and run.get("held") is not None:
        out["election"] = run["held"] - (owner_apply[0]["start"] + owner_apply[0]["seconds"])
    if status:
        between = [h for h in recs if h.get("kind") == "reconcile" and a_start <= h["time"] <= status["time"]]
        out["reconciles"] = len(between)
        out["same_reconcile"] = status is assign
    return out


def load_balancer_services(plain, project, reps, workdir, warmup=1):
    """Block lb (issue #15): the plain baseline, then the project (address pools put in its pillar first, a
    warm-up repetition not counted); returns ``{"plain": [...], "project": [...], "warmup": [...]}``."""
    workdir = pathlib.Path(workdir)
    out = {"plain": [], "project": [], "warmup": [], "address": LB_ADDRESS}
    for n in range(reps):
        res = lb_plain_rep(plain, n, workdir)
        out["plain"].append(res)
        log(f"  plain lb #{n + 1}: held {_f(res['held'])}, answered {_f(res['answered'])} ({res['body']}), "
            f"gone after removal {_f(res['gone_after_remove'])}, ok {res['ok']}")
    since = time.time()
    project.pools = True
    applied = project.apply_pillar()
    if applied.get("error") if isinstance(applied, dict) else True:
        raise RuntimeError(f"the pillar with address pools was not applied: {str(applied)[:2000]}")
    if not _lb_engine_listing(project, since):
        raise RuntimeError("the edge_ha_services engine did not list the Services after the pools were added")
    try:
        for n in range(-warmup, reps):
            res = lb_project_rep(project, n, workdir, name=f"bench-lb-warmup{-n}" if n < 0 else None)
            (out["warmup"] if n < 0 else out["project"]).append(res)
            log(f"  project lb {'warm-up' if n < 0 else f'#{n + 1}'}: {res['address']} assigned {_f(res['assigned'])}, "
                f"held {_f(res['held'])}, answered {_f(res['answered'])} ({res['body']}), status {_f(res['status'])}, "
                f"both {_f(res['both'])}; gone after delete {_f(res['gone_after_delete'])}, ok {res['ok']}")
        events, requests, history = project.events(), project.kube_requests(), project.lab.reconcile_log()
        for res in out["warmup"] + out["project"]:
            res["split"] = lb_split(res, events, requests, history)
    finally:
        project.pools = False
        project.apply_pillar()
        project.baseline()
    return out


def _f(value):
    return "-" if value is None else f"{value:.2f}s"


# --------------------------------------------------------------------------- 5. false failovers


def cpu_burn(edges, seconds, burners_per_edge=1):
    """Burn CPU in the edge namespaces for ``seconds``; count VRRP state changes and VIP holder changes."""
    before = {e.label: _transition_counts(e) for e in edges}
    burners = []
    try:
        for edge in edges:
            nodes = list(edge.nodes) if edge.kind == "project" else ["e1", "e2", "e3"]
            for node in nodes[:burners_per_edge]:
                cmd = (sys.executable, "-c", "while True: pass")
                if edge.kind == "project":
                    proc = edge.lab._spawn(node, f"bench-burn{len(burners)}", *cmd)
                    burners.append((edge, proc, f"{node}-bench-burn{len(burners)}"))
                else:
                    burners.append((edge, edge.topo.spawn(node, *cmd), None))
        samples = {e.label: {"samples": 0, "not_single_owner": 0, "owner_changes": 0} for e in edges}
        last = {e.label: e.holders() for e in edges}
        start = time.monotonic()
        loads = []
        while time.monotonic() - start < seconds:
            for edge in edges:
                holders = edge.holders()
                s = samples[edge.label]
                s["samples"] += 1
                if holders != [edge.owner]:
                    s["not_single_owner"] += 1
                if holders != last[edge.label]:
                    s["owner_changes"] += 1
                    last[edge.label] = holders
            if int(time.monotonic() - start) % 30 == 0:
                loads.append(open("/proc/loadavg", encoding="ascii").read().split()[0])
            time.sleep(0.25)
    finally:
        from tests.support.netns import kill_pids  # pylint: disable=import-outside-toplevel

        for edge, proc, name in burners:
            kill_pids([proc.pid], timeout=5)
            proc.wait(timeout=10)
            if name:
                (edge.lab.dir / "pids" / f"{name}.pid").unlink(missing_ok=True)
            elif proc in edge.topo.procs:
                edge.topo.procs.remove(proc)
    after = {e.label: _transition_counts(e) for e in edges}
    out = {}
    for edge in edges:
        out[edge.label] = dict(samples[edge.label], transitions=after[edge.label] - before[edge.label],
                               burners=burners_per_edge)
    out["_loadavg"] = sorted(set(loads))
    return out


def _transition_counts(edge):
    logs = edge.keepalived_log_transitions() if edge.kind == "project" else edge.transitions()
    return sum(len(v) for v in logs.values())


# --------------------------------------------------------------------------- cost of the beacon's watch


def _cpu_seconds(pids):
    total = 0.0
    tick = 100.0
    for pid in pids:
        for p in [pid] + _descendants(pid):
            try:
                fields = open(f"/proc/{p}/stat", encoding="ascii").read().rsplit(")", 1)[1].split()
                comm = open(f"/proc/{p}/cmdline", "rb").read()
            except OSError:
                continue
            if b"salt-minion" in comm:
                total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _descendants(pid):
    out = subprocess.run(["ps", "-eo", "pid,ppid"], capture_output=True, text=True, check=False).stdout.split("\n")[1:]
    children = {}
    for line in out:
        parts = line.split()
        if len(parts) == 2:
            children.setdefault(int(parts[1]), []).append(int(parts[0]))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def minion_cpu(edge, seconds):
    pids = list(edge.minion_pids().values())
    start_cpu, start = _cpu_seconds(pids), time.monotonic()
    time.sleep(seconds)
    return (_cpu_seconds(pids) - start_cpu) / (time.monotonic() - start) / len(pids)


def results_json(path, data):
    pathlib.Path(path).write_text(json.dumps(data, indent=1, default=str))


__all__ = ["load_balancer_services", "lb_split", "failover", "failover_summary", "convergence", "planned_rerender", "planned_drain", "drain_available",
           "cpu_burn", "minion_cpu", "ADDR", "VIP"]
