"""
Operations that finish or undo themselves, on the lab: the runner killed at
each step of a drain and an undrain (``EDGE_HA_CRASH_AT``, a SIGKILL of the
salt-run process), then one reconcile; a damaged drain record; a state run in
progress on one node during a rollout; a Kubernetes API that accepts
connections and never answers while the owner's ingress fails.
"""

import json
import os
import shutil
import signal
import threading
import time

import pytest
import salt.payload

from lab.lab import NODES, lab_pillar

from tests.support.labtools import ADDR, ALL_IPS, VipMonitor, salt_run, wait_for
from tests.support.netns import sh

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(not shutil.which("keepalived"), reason="keepalived is not installed (make bootstrap)"),
]

QUIESCE_TABLE = "edge_ha_quiesce"


def node_state(lab, node):
    """What an interrupted operation could leave on a node, read on the node itself."""
    report = lab.salt(node, "edge_node.report", "probe=False")[node]
    table = lab.salt(node, "cmd.run", f"nft list table inet {QUIESCE_TABLE} >/dev/null 2>&1 && echo yes || echo no",
                     "python_shell=True")[node]
    return {
        "out_of_service": report["out_of_service"]["out_of_service"],
        "out_reason": report["out_of_service"].get("reason") or "",
        "standby": report["standby"]["standby"],
        "quiesced": report.get("quiesced"),
        "quiesce_table": table.strip() == "yes",
    }


def nothing_left_behind(lab):
    """No handover flag, no quiesce marker or table on any node."""
    states = {n: node_state(lab, n) for n in NODES}
    bad = {n: s for n, s in states.items()
           if s["quiesced"] or s["quiesce_table"] or s["out_reason"].startswith("handover")}
    return not bad and states


def fully_drained(lab, node):
    s = node_state(lab, node)
    return (s["standby"] and node not in lab.holders() and ADDR[node] not in lab.external_ips()
            and node in lab.run("edge.drained"))


def fully_back(lab, node="edge1"):
    s = node_state(lab, node)
    return (not s["standby"] and not s["out_of_service"] and lab.holders() == [node]
            and lab.external_ips() == ALL_IPS and node not in lab.run("edge.drained"))


def crash(lab, step, *args):
    code, out, err = salt_run(lab, *args, env={"EDGE_HA_CRASH_AT": step})
    assert code in (-signal.SIGKILL, 128 + signal.SIGKILL), f"{step}: the runner was not killed there ({code}): {out}{err}"


@pytest.mark.parametrize("step", ["drain:recorded", "release:quiesced", "release:flagged", "release:handed"])
def test_drain_killed_at_each_step_is_completed_by_the_next_reconcile(baseline, step):
    lab = baseline
    mark = time.time()
    crash(lab, step, "edge.drain", "edge1")
    lab.run("edge.reconcile")
    # the drain was recorded before any step: the reconcile completes it, and leaves nothing behind
    assert wait_for(lambda: nothing_left_behind(lab), 20), {n: node_state(lab, n) for n in NODES}
    assert wait_for(lambda: fully_drained(lab, "edge1"), 20), (node_state(lab, "edge1"), lab.holders())
    history = [r for r in lab.run("edge.history", "limit=100") if r["time"] > mark]
    if step.startswith("release:"):
        assert any(r["kind"] == "repair" for r in history), history
    # and the undrain brings it all back
    code, out, err = salt_run(lab, "edge.undrain", "edge1")
    assert code == 0, out + err
    assert wait_for(lambda: fully_back(lab), 30), (node_state(lab, "edge1"), lab.holders(), lab.external_ips())
    assert nothing_left_behind(lab)


@pytest.mark.parametrize("step", ["undrain:recorded", "release:flagged"])
def test_undrain_killed_at_each_step_is_completed_by_the_next_reconcile(baseline, step):
    lab = baseline
    code, out, err = salt_run(lab, "edge.drain", "edge1")
    assert code == 0, out + err
    crash(lab, step, "edge.undrain", "edge1")
    lab.run("edge.reconcile")
    # the drain record was removed first: the reconcile completes the undrain
    assert wait_for(lambda: fully_back(lab), 30), (node_state(lab, "edge1"), lab.holders(), lab.external_ips())
    assert wait_for(lambda: nothing_left_behind(lab), 20), {n: node_state(lab, n) for n in NODES}


def test_damaged_drain_record_keeps_the_node_drained_and_says_so(baseline):
    lab = baseline
    code, out, err = salt_run(lab, "edge.drain", "edge3")
    assert code == 0, out + err
    # Salt's localfs cache under the lab master's cachedir: <cachedir>/edge_ha/drained.json.p
    record = next(lab.dir.rglob("edge_ha/drained.json.p"))
    record.write_bytes(record.read_bytes()[:25])  # truncated, as a full disk or a crash mid-write would leave it
    result = lab.run("edge.reconcile")
    assert any("the drain record is unreadable" in n for n in result["plan"]["notes"]), result["plan"]["notes"]
    assert "edge3" not in result["plan"]["service_nodes"]
    assert ADDR["edge3"] not in lab.external_ips()
    assert node_state(lab, "edge3")["standby"]
    assert "edge3" in lab.run("edge.drained")
    report = lab.report_table()
    assert "drain record is unreadable" in report, report
    # the next undrain writes a good record again
    code, out, err = salt_run(lab, "edge.undrain", "edge3")
    assert code == 0, out + err
    assert lab.run("edge.drained") == {}
    assert json.loads(salt.payload.loads(record.read_bytes()))["format"] == "salt-edge-ha/1"
    assert wait_for(lambda: lab.external_ips() == ALL_IPS, 20), lab.external_ips()


def test_a_state_run_in_progress_on_one_node_does_not_hold_the_others(baseline):
    lab = baseline
    # edge2 is busy with a long state run: its state.apply answers "already running"
    busy = threading.Thread(target=lab.salt, args=("edge2", "state.single", "cmd.run", "name=sleep 25"),
                            kwargs={"timeout": 60}, daemon=True)
    busy.start()
    assert wait_for(lambda: lab.salt("edge2", "saltutil.is_running", "state.*")["edge2"], 10)
    pillar = lab_pillar(lab.dir / "kubeconfig")
    pillar["vrrp_instances"]["VI_INGRESS"]["advert_int"] = 2  # every node's config changes
    mark = time.time()
    lab.set_pillar(pillar)
    lab.salt(",".join(NODES), "saltutil.refresh_pillar", "wait=True", "--list")
    lab.run("edge.reconcile", timeout=300)
    # the rollout may be done by this reconcile or by one the refresh triggered (the master's schedule):
    # read it from the history
    lab.wait_reconcile_idle()
    rows = [r for r in lab.run("edge.history", "limit=300") if r["time"] >= mark]
    rollouts = " | ".join(r["what"] for r in rows if r["kind"] == "rollout")
    assert "edge3:ok" in rollouts and "edge1:ok, in place" in rollouts, rollouts
    assert "STOPPED" not in rollouts, rollouts
    assert any(r["kind"] == "retry" and r["what"].startswith("edge2:") for r in rows), rows
    # the owner reloaded in place (timers only): it kept the VIP all along
    assert lab.holders() == ["edge1"]
    # once the state run is over and the backoff has passed, a reconcile applies it on edge2 too
    busy.join(60)
    assert wait_for(lambda: not lab.salt("edge2", "saltutil.is_running", "state.*")["edge2"], 40)
    time.sleep(6)
    result = lab.run("edge.reconcile", timeout=300)
    assert result["stale_config"] in (["edge2"], []), result
    assert wait_for(lambda: not lab.run("edge.reconcile")["stale_config"], 60)


def test_fence_does_not_wait_for_a_hung_kubernetes_api(baseline):
    lab = baseline
    kube_pid = int((lab.dir / "pids" / "master-kube.pid").read_text())
    os.kill(kube_pid, signal.SIGSTOP)  # connections are accepted by the kernel; nothing ever answers
    try:
        start = time.monotonic()
        (lab.node_dir("edge1") / "ingress-unhealthy").write_text("unhealthy\n")
        fenced = wait_for(lambda: lab.holders() == ["edge2"], 60)
        assert fenced is not None, lab.holders()
        took = time.monotonic() - start
        # before: about 40 s (two pod reads at the 10 s default, each retried); now the fence goes first.
        # The ingress probe needs 2 failures (fall: 2) before the beacon says so: a wide bound
        assert took < 12, f"fenced {took:.1f}s after the ingress failed"
        report = lab.run("edge.vip_report")
        assert any("Kubernetes API has not answered" in n for n in report["notes"]) or report["service"]["error"]
    finally:
        os.kill(kube_pid, signal.SIGCONT)
        (lab.node_dir("edge1") / "ingress-unhealthy").unlink(missing_ok=True)
    lab.set_ingress_healthy("edge1", True)
    assert wait_for(lambda: lab.holders() == ["edge1"], 60), lab.holders()
    assert wait_for(lambda: lab.external_ips() == ALL_IPS, 60), lab.external_ips()


V6 = "2001:2::100"  # RFC 5180's IPv6 benchmarking range, as 198.18.0.0/15 for IPv4


def test_ipv6_vip_stale_copy_stays_until_another_node_answers_for_it(baseline):
    lab = baseline
    added = []
    try:
        for node, octet in NODES.items():
            sh("ip", "-6", "addr", "add", f"2001:2::{octet}/64", "dev", "eth0", "nodad", ns=lab.ns(node))
            added.append((node, octet))
        pillar = lab_pillar(lab.dir / "kubeconfig")
        for node, octet in NODES.items():
            pillar["nodes"][node]["address6"] = f"2001:2::{octet}"
        pillar["vrrp_instances"]["VI_V6"] = {"virtual_router_id": 61, "vrrp_version": 3, "advert_int": 1,
                                             "unicast": True, "virtual_ipaddress": [f"{V6}/64"]}
        lab.set_pillar(pillar)
        lab.salt(",".join(NODES), "saltutil.refresh_pillar", "wait=True", "--list")
        result = lab.run("edge.reconcile", timeout=300)
        assert not (result["rollout"] or {}).get("error"), result["rollout"]  # None: another reconcile did it
        lab.wait_reconcile_idle()
        assert wait_for(lambda: lab.holders(V6) == ["edge1"], 60), lab.holders(V6)
        with VipMonitor(lab, list(NODES), vip=V6) as monitor:
            lab.kill_keepalived("edge1", signal.SIGKILL)
            assert wait_for(lambda: lab.holders(V6) == ["edge2"], 30), lab.holders(V6)
        # the killed node kept answering for the IPv6 VIP until edge2 held it (Neighbour Solicitation
        # answered), then its copy was removed: no moment without a holder
        assert monitor.initial == {"edge1"}, monitor.initial
        assert monitor.gaps() == [], (monitor.gaps(), sorted(monitor.events))
        order = [(node, up) for _, node, up in sorted(monitor.events)]
        assert order.index(("edge2", True)) < order.index(("edge1", False)), order
    finally:
        for node, octet in added:
            sh("ip", "-6", "addr", "del", f"2001:2::{octet}/64", "dev", "eth0", ns=lab.ns(node), check=False)
