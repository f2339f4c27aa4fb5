"""
The controller on the lab: reports pushed into the mine and read from there,
idle reconciles that send no job, forged job returns and hints that change
nothing, an invalid pillar that leaves the last good model in force.
"""

import datetime
import json
import os
import shutil
import signal
import stat
import time

import pytest

from lab.lab import NODES, lab_pillar

from tests.support.labtools import ADDR, ALL_IPS, salt_run, wait_for
from tests.support.netns import alive

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(not shutil.which("keepalived"), reason="keepalived is not installed (make bootstrap)"),
]


def minion_jobs_since(lab, mark):
    """Jobs the master sent to minions after ``mark`` (from its job cache; runner jobs left out)."""
    jobs = lab.run("jobs.list_jobs")
    since = datetime.datetime.fromtimestamp(mark).strftime("%Y%m%d%H%M%S%f")
    return {jid: job["Function"] for jid, job in jobs.items()
            if jid > since and not str(job.get("Function", "")).startswith(("runner.", "wheel."))}


def test_idle_reconcile_sends_no_job_and_writes_nothing(baseline):
    lab = baseline
    rv = lab.service()["metadata"]["resourceVersion"]
    mark = time.time()
    result = lab.run("edge.reconcile")
    assert result["minion_jobs"] == 0 and result["actions"] == [], result
    assert result["plan"]["rerender"] == [] and result["pillar_errors"] == []
    assert minion_jobs_since(lab, mark) == {}, "no job to any minion"
    assert lab.service()["metadata"]["resourceVersion"] == rv, "nothing written to Kubernetes"
    print(f"\nidle reconcile: {result['seconds']}s of runner time, 0 jobs")


def test_reports_come_from_the_mine(baseline):
    lab = baseline
    mine = lab.salt("edge1", "mine.get", "edge*", "edge_ha_report")["edge1"]
    assert sorted(mine) == sorted(NODES)
    edge1 = mine["edge1"]
    assert edge1["node"] == "edge1" and edge1["keepalived"]["running"] is True
    assert edge1["config"]["digest"] and len(edge1["digest"]) == 16
    # a node's flag shows in its report without the master asking: an operator takes edge3 (a backup) out
    # of VIP ownership by hand (the reconcile leaves an operator's fence alone)
    lab.salt("edge3", "keepalived.out_of_service", "True", "operator test")
    try:
        def flagged():
            rep = lab.salt("edge1", "mine.get", "edge3", "edge_ha_report")["edge1"]["edge3"]
            return rep["out_of_service"]["out_of_service"] and rep["out_of_service"]["reason"] == "operator test"

        assert wait_for(flagged, 20, 0.5)
        row = lab.report()["vips"][0]
        assert {b["node"]: b["state"] for b in row["backups"]}["edge3"] == "FAULT", row
    finally:
        lab.salt("edge3", "keepalived.out_of_service", "False")


def test_forged_job_returns_and_hints_change_nothing(baseline):
    """
    Any minion can put ``salt/job/<jid>/ret/<other>`` on the master's bus; the
    controller does not read job returns as state, so a forged return that
    claims edge1 is down, fired while reconciles run, moves nothing.
    """
    lab = baseline
    rv = lab.service()["metadata"]["resourceVersion"]
    pids = {n: lab.keepalived_pid(n) for n in NODES}
    mark = time.time()
    false_report = {"node": "edge1", "keepalived": {"running": False, "instances": {}},
                    "out_of_service": {"out_of_service": False}, "ingress": {"healthy": False}}
    for i in range(3):
        jid = datetime.datetime.now().strftime("%Y%m%d%H%M%S%f")
        lab.salt("client", "event.fire_master",
                 json.dumps({"id": "edge1", "jid": jid, "fun": "edge_node.report", "return": false_report,
                             "retcode": 0, "success": True}),
                 f"salt/job/{jid}/ret/edge1")
        # and a hint from the client minion naming a report digest that edge1 never published
        lab.salt("client", "event.fire_master", json.dumps({"id": "edge1", "report": "0123456789abcdef"}),
                 "salt/beacon/edge1/vrrp/report")
        if i == 0:
            lab.run("edge.reconcile")
    assert wait_for(lambda: any(r["time"] > mark and r["kind"] == "reconcile" for r in lab.reconcile_log()), 30)
    lab.wait_reconcile_idle()
    runs = [r for r in lab.reconcile_log() if r["time"] > mark and r["kind"] == "reconcile"]
    assert runs and all(r["actions"] == [] for r in runs), runs
    assert lab.holders() == ["edge1"]
    assert lab.external_ips() == ALL_IPS
    assert lab.service()["metadata"]["resourceVersion"] == rv, "the Service was not written"
    assert {n: lab.keepalived_pid(n) for n in NODES} == pids


def test_invalid_pillar_keeps_the_last_good_model_and_fencing_goes_on(baseline):
    lab = baseline
    bad = lab_pillar(lab.dir / "kubeconfig")
    bad["vrrp_instances"]["VI_INGRESS"]["virtual_router_id"] = 300
    lab.set_pillar(bad)
    try:
        result = lab.run("edge.reconcile")
        assert any("edge_ha:vrrp_instances:VI_INGRESS:virtual_router_id" in e for e in result["pillar_errors"]), result
        assert result["minion_jobs"] == 0, "nothing re-rendered from an invalid pillar"
        report = lab.report()
        assert any("virtual_router_id" in e for e in report["pillar_errors"]), report
        table = lab.report_table()
        assert "edge_ha is INVALID" in table and "virtual_router_id" in table, table
        events = [e["reason"] for e in lab.kube("GET", "/api/v1/namespaces/ingress-nginx/events")["items"]]
        assert "PillarInvalid" in events, events
        # the loop goes on with the last good model: an unhealthy ingress is still fenced
        lab.set_ingress_healthy("edge1", False)
        assert wait_for(lambda: lab.holders() == ["edge2"], 30), lab.holders()
        assert wait_for(lambda: ADDR["edge1"] not in lab.external_ips(), 30), lab.external_ips()
        lab.set_ingress_healthy("edge1", True)
        assert wait_for(lambda: lab.holders() == ["edge1"], 30), lab.holders()
    finally:
        lab.set_pillar(lab_pillar(lab.dir / "kubeconfig"))
    result = lab.run("edge.reconcile")
    assert result["pillar_errors"] == [] and "INVALID" not in lab.report_table()


@pytest.mark.parametrize("how", ["graceful", "sigkill"])
def test_service_right_soon_after_the_transition(baseline, how):
    """
    The Service follows a failover within 1.5 s (the aim is 0.3 s on an idle
    machine; the bound is wide for a loaded CI machine), counted from the
    VRRP transition, or, for a graceful stop, from the moment the old owner's
    keepalived is really gone (its VRRP process lives on for a moment after
    SIGTERM and hands the VIP over first: until it exits, edge1 still counts
    as running). SIGKILL kills the whole process group at once.
    """
    lab = baseline
    pids = [lab.keepalived_pid("edge1"), lab.keepalived_vrrp_pid("edge1")]
    start = time.monotonic()
    lab.kill_keepalived("edge1", signal.SIGTERM if how == "graceful" else signal.SIGKILL)
    moved = stopped = service = None
    while time.monotonic() - start < 20 and None in (moved, stopped, service):
        now = time.monotonic() - start
        if moved is None and "edge2" in lab.holders():
            moved = now
        if stopped is None and not all(p and alive(p) for p in pids):
            stopped = now
        if service is None and ADDR["edge1"] not in lab.external_ips():
            service = now
        time.sleep(0.01)
    assert None not in (moved, stopped, service), (moved, stopped, service)
    # after a SIGKILL the Service is often right before the VIP moves (negative: fine)
    after = service - max(moved, stopped)
    print(f"\n{how}: VIP on edge2 after {moved:.2f}s, edge1's keepalived gone after {stopped:.2f}s, "
          f"Service without edge1 after {service:.2f}s ({after:.3f}s after the later of the two)")
    assert after < 1.5
    row = lab.report()["vips"][0]
    assert "edge2" in row["owner"]


def test_runner_exit_codes_arguments_first_and_progress(baseline):
    lab = baseline
    code, out, err = salt_run(lab, "edge.drain", "nosuchnode")
    assert code != 0 and "'nosuchnode' is not an edge node" in out + err
    code, out, err = salt_run(lab, "edge.drain", "edge3", "drain_timeout=abc")
    assert code != 0 and "drain_timeout must be a positive number of seconds" in out + err
    assert lab.run("edge.drained") == {}, "nothing was drained by the refused call"
    code, out, err = salt_run(lab, "edge.history", "limit=abc")
    assert code != 0 and "limit must be a whole number" in out + err
    # a real drain of a backup: progress as it goes, exit 0; then back
    code, out, err = salt_run(lab, "edge.drain", "edge3", "drain_timeout=5")
    try:
        assert code == 0, out + err
        assert "drain edge3: waiting for IPVS connections to it to end" in out, out
    finally:
        code, out, err = salt_run(lab, "edge.undrain", "edge3")
    assert code == 0, out + err
    assert lab.run("edge.drained") == {}


def test_auth_pass_reaches_no_job_return_history_or_log(baseline):
    """
    A VRRPv2 instance with ``auth_pass``, rolled out by the reconcile (state.apply on every node), and
    every read an operator does: the password is only where it must be (the pillar, the nodes'
    keepalived.conf and its copies, Salt's own pillar caches on the master, the runner's record of
    the last good model, mode 0600), never in a job return in the master's job cache, the runner's
    history and other records, the mine's reports or any log.
    """
    lab = baseline
    secret = "Zq" + os.urandom(3).hex()  # 8 characters: VRRP's PASS is at most 8
    pillar = lab_pillar(lab.dir / "kubeconfig")
    pillar["vrrp_instances"]["VI_SECRET"] = {
        "virtual_router_id": 52, "vrrp_version": 2, "advert_int": 1, "unicast": True,
        "priority": pillar["vrrp_instances"]["VI_INGRESS"]["priority"],
        "virtual_ipaddress": ["198.18.0.101/24"],
        "authentication": {"auth_type": "PASS", "auth_pass": secret}}
    lab.set_pillar(pillar)
    try:
        lab.salt(",".join(NODES), "saltutil.refresh_pillar", "wait=True", "--list")
        lab.run("edge.reconcile", timeout=300)
        lab.wait_reconcile_idle()
        assert wait_for(lambda: lab.holders("198.18.0.101") == ["edge1"], 60), lab.holders("198.18.0.101")
        # what an operator reads, each leaving a job return in the master's job cache
        lab.salt(",".join(NODES), "keepalived.plan", "--list")
        lab.salt(",".join(NODES), "keepalived.status", "--list")
        lab.salt("edge1", "keepalived.render", "--list")
        for fun in ("edge.vip_report", "edge.history", "edge.reconcile"):
            lab.run(fun)
        rc, out, err = salt_run(lab, "edge.vip_report", "--out=table")
        assert rc == 0 and secret not in out + err
    finally:
        lab.set_pillar(lab_pillar(lab.dir / "kubeconfig"))
    holding = sorted(str(path.relative_to(lab.dir)) for path in lab.dir.rglob("*")
                     if path.is_file() and not path.is_symlink() and secret.encode() in path.read_bytes())
    salt_pillar_cache = [p for p in holding if p.startswith("master/") and (
        (p.endswith("/data.p") and "/minions/" in p) or ("/pillar/" in p and p.endswith(".p")))]
    model_record = [p for p in holding if p.startswith("master/") and "/edge_ha/desired.json" in p]
    for path in model_record:
        assert stat.S_IMODE(os.stat(lab.dir / path).st_mode) == 0o600, path
    allowed = [p for p in holding if p.rsplit("/", 1)[-1].startswith(("keepalived.conf", "edge_ha.sls"))]
    left = set(holding) - set(allowed) - set(salt_pillar_cache) - set(model_record)
    assert left == set(), f"auth_pass found in {sorted(left)}"
    assert any(p.rsplit("/", 1)[-1] == "keepalived.conf" for p in holding), \
        f"the test did not roll the password out: {holding}"
