"""
Planned operations on the lab: drain/undrain of the VIP owner under client
traffic, staged reloads with rollback, drains triggered by Kubernetes, and
what the Service and its Events show. Durations are printed (pytest -s).

The lab runs on the host kernel, which has no IPVS: the drains here move
VIPs and the Service; the IPVS weight-0 rendering is covered by the unit tests
and the VM tests.
"""

import json
import os
import shutil
import threading
import time

import pytest

from edge_ha_core import lease
from lab.lab import KUBE_NS, SERVICE, USER_IP, VIP, lab_pillar
from tests.support.labtools import ADDR, ALL_IPS, VipMonitor, wait_for

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(not shutil.which("keepalived"), reason="keepalived is not installed (make bootstrap)"),
]


def reconcile_after(lab, change):
    """
    Make ``change`` while holding the master's reconcile lease and start our
    edge.reconcile meanwhile, so that it (not a scheduled or event-triggered
    run) is the first to see the change; returns its result.
    """
    path = lab.dir / "master" / "var" / "cache" / "salt" / "master" / "edge_ha" / "reconcile.lease"
    box = {}
    holding = lease.Holding(lease.FileBackend(str(path)), 60, what="test: reconcile_after")
    holding.acquire(500)  # after a running reconcile
    try:
        change()
        thread = threading.Thread(target=lambda: box.update(result=lab.run("edge.reconcile", timeout=400)))
        thread.start()
        time.sleep(6)  # salt-run is up and waiting for the lease
    finally:
        holding.release()
    thread.join(timeout=500)
    return box["result"]


def events(lab, since):
    items = lab.kube("GET", f"/api/v1/namespaces/{KUBE_NS}/events").get("items", [])
    return [e for e in items if (e.get("involvedObject") or {}).get("name") == SERVICE
            and e.get("metadata", {}).get("name") not in since]


def event_names(lab):
    return {e["metadata"]["name"] for e in lab.kube("GET", f"/api/v1/namespaces/{KUBE_NS}/events").get("items", [])}


def owners_annotation(lab):
    value = (lab.service()["metadata"].get("annotations") or {}).get("edge-ha.salt/vip-owners")
    return json.loads(value) if value else None


def test_drain_and_undrain_of_the_owner_fail_no_request(baseline):
    lab = baseline
    seen = event_names(lab)
    mark = time.time()
    # a client with a 5 s timeout (real clients wait longer) at 20 requests/s during drain and undrain
    lab.start_probe(75, rate=20, timeout=5)
    time.sleep(2)
    with VipMonitor(lab, ["edge1", "edge2", "edge3"]) as monitor:
        start = time.monotonic()
        result = lab.run("edge.drain", "edge1", "reason=kernel update", timeout=300)
        drained_after = time.monotonic() - start
        assert result["ok"], result
        assert lab.holders() == ["edge2"]
        assert lab.external_ips() == sorted([VIP, USER_IP, ADDR["edge2"], ADDR["edge3"]])
        assert lab.run("edge.drained")["edge1"]["source"] == "manual"
        row = lab.report()["vips"][0]
        entry = {b["node"]: b for b in row["backups"]}["edge1"]
        assert entry["drained"] and entry["priority"] == 1 and entry["state"] == "BACKUP", row
        assert row["owner"] == ["edge2"] and row["flags"] == []
        # a reconcile (any trigger) keeps it drained
        lab.run("edge.reconcile", timeout=300)
        assert lab.holders() == ["edge2"] and ADDR["edge1"] not in lab.external_ips()
        start = time.monotonic()
        result = lab.run("edge.undrain", "edge1", timeout=300)
        undrained_after = time.monotonic() - start
        assert result["ok"] and result["was_drained"], result
        assert wait_for(lambda: lab.holders() == ["edge1"], 15), lab.holders()
        assert wait_for(lambda: lab.external_ips() == ALL_IPS, 20), lab.external_ips()
    stats = lab.probe_result(timeout=120)
    print(f"\ndrain of the owner {drained_after:.1f}s, undrain {undrained_after:.1f}s; client: {stats['requests']} "
          f"requests, {stats['failures']} failed, slowest {stats['slowest']}s, answers {stats['answers']}; "
          f"VIP without holder during the releases: {monitor.gaps()} s")
    assert stats["requests"] >= 1000
    assert stats["failures"] == 0, stats["failed_at"]
    assert stats["answers"].get("edge1") and stats["answers"].get("edge2"), "the VIP really moved and came back"
    assert lab.run("edge.drained") == {}
    history = [r for r in lab.run("edge.history", "limit=200") if r["time"] > mark]
    kinds = [r["kind"] for r in reversed(history)]
    assert kinds.index("drain") < kinds.index("undrain"), kinds
    drain_row = next(r for r in history if r["kind"] == "drain")
    assert "edge1: drained" in drain_row["what"] and drain_row["why"] == "kernel update"
    reasons = [e["reason"] for e in sorted(events(lab, seen), key=lambda e: e["metadata"]["name"])]
    assert "NodeDrained" in reasons and "NodeUndrained" in reasons, reasons
    assert owners_annotation(lab) == {VIP: "edge1"}


def test_staged_reload_rolls_back_the_owner_and_stops(baseline):
    """
    A pillar change for every node, where the owner's (edge1) new config makes
    keepalived exit at the reload (fault injection: its keepalived -t passes
    whatever the config; the interface does not exist). BACKUPs go first, the
    owner hands its VIP over before its turn, keepalived dies, the previous
    config is restored, the rollout stops; the VIP is held all along (up to the
    few milliseconds of a VRRP handover, measured from the kernel's address events).
    """
    lab = baseline
    seen = event_names(lab)
    before = (lab.node_dir("edge1") / "keepalived.conf").read_text()
    changed = lab_pillar(lab.dir / "kubeconfig")
    changed["vrrp_instances"]["VI_INGRESS"]["garp_master_delay"] = 3
    changed["vrrp_instances"]["VI_INGRESS"]["virtual_ipaddress"].append("198.18.0.101/24")  # a VIP added
    changed["nodes"]["edge1"]["interface"] = "eth9"
    with VipMonitor(lab, ["edge1", "edge2", "edge3"]) as monitor:
        result = reconcile_after(lab, lambda: (lab.set_fault_t_passes("edge1"), lab.set_pillar(changed)))
        rollout = result["rollout"]
        print(f"\nstaged reload: order {rollout['order']}, steps {rollout['steps']}, stopped at "
              f"{rollout['stopped_at']}: {rollout['error']}")
        assert rollout["order"] == ["edge2", "edge3", "edge1"], rollout
        assert rollout["stopped_at"] == "edge1"
        assert [s[1] for s in rollout["steps"]][:2] == ["ok", "ok"]
        assert rollout["steps"][2][0] == "edge1" and rollout["steps"][2][1].startswith("FAILED, rolled back")
        assert (lab.node_dir("edge1") / "keepalived.conf").read_text() == before, "edge1 back on its previous config"
        assert os.path.exists(f"/proc/{lab.keepalived_pid('edge1')}"), "keepalived runs again on edge1"
        for node in ("edge2", "edge3"):
            conf = (lab.node_dir(node) / "keepalived.conf").read_text()
            assert "garp_master_delay 3" in conf and "198.18.0.101/24 dev eth0" in conf, conf
        # standby lifted after the rollback: edge1 (highest priority) takes the VIP back
        assert wait_for(lambda: lab.holders() == ["edge1"], 15), lab.holders()
        # the failed config is not retried by the next reconcile
        lab.wait_reconcile_idle()
        again = lab.run("edge.reconcile", timeout=300)
        assert again["rollout"]["blocked"] == ["edge1"] and not again["rollout"]["steps"], again["rollout"]
        assert any("not retried" in n for n in again["plan"]["notes"])
    assert monitor.initial == {"edge1"} and len(monitor.events) >= 4, monitor.events  # away and back
    # a VRRP handover is make-before-break up to keepalived's own ordering (the new master sends its advert
    # just before it adds the address): a few ms; losing the VIP would cost the backups' master-down time (~3 s)
    print(f"VIP without holder during the staged reload: {monitor.gaps()} s")
    assert all(gap < 0.1 for gap in monitor.gaps()), (monitor.gaps(), sorted(monitor.events))
    history = lab.run("edge.history", "kind=rollout", "limit=5")
    assert "STOPPED at edge1" in history[0]["what"], history[0]
    assert "RolloutStopped" in [e["reason"] for e in events(lab, seen)]
    # fixed pillar: the rollout completes (edge2/edge3 go back, edge1 unchanged)
    result = reconcile_after(lab, lambda: (lab.set_fault_t_passes("edge1", False),
                                           lab.set_pillar(lab_pillar(lab.dir / "kubeconfig"))))
    assert result["rollout"]["stopped_at"] is None
    assert sorted(s[0] for s in result["rollout"]["steps"]) == ["edge2", "edge3"], result["rollout"]


def test_backup_failure_stops_rollout_before_the_owner(baseline):
    lab = baseline
    owner_before = (lab.node_dir("edge1") / "keepalived.conf").read_text()
    changed = lab_pillar(lab.dir / "kubeconfig")
    changed["vrrp_instances"]["VI_INGRESS"]["garp_master_delay"] = 3
    changed["nodes"]["edge2"]["interface"] = "eth9"
    pid = lab.keepalived_pid("edge1")
    result = reconcile_after(lab, lambda: (lab.set_fault_t_passes("edge2"), lab.set_pillar(changed)))
    rollout = result["rollout"]
    # the BACKUPs are one stage: edge3 (same stage) runs the new config, which works there; the owner waits
    assert rollout["stages"] == [["edge2", "edge3"], ["edge1"]], rollout
    assert rollout["stopped_at"] == "edge2" and rollout["skipped"] == ["edge1"], rollout
    assert dict(rollout["steps"])["edge3"] == "ok" and dict(rollout["steps"])["edge2"].startswith("FAILED"), rollout
    assert (lab.node_dir("edge1") / "keepalived.conf").read_text() == owner_before, "the owner was not touched"
    assert lab.keepalived_pid("edge1") == pid and lab.holders() == ["edge1"]
    assert "garp_master_delay 3" in (lab.node_dir("edge3") / "keepalived.conf").read_text()
    # and it stays stopped: later reconciles hold the other nodes' new configs back
    lab.wait_reconcile_idle()
    again = lab.run("edge.reconcile", timeout=300)
    assert again["rollout"]["blocked"] == ["edge2"] and again["rollout"]["held"] == ["edge1"], again["rollout"]
    assert not again["rollout"]["steps"]
    assert (lab.node_dir("edge1") / "keepalived.conf").read_text() == owner_before


def test_cordoned_node_is_drained_and_back_when_uncordoned(baseline):
    lab = baseline

    def cordon(value):
        lab.kube("PATCH", "/api/v1/nodes/edge3", {"spec": {"unschedulable": value}}, "application/merge-patch+json")

    try:
        result = reconcile_after(lab, lambda: cordon(True))
        assert any(a.startswith("edge3: drained (kubernetes: cordoned)") for a in result["actions"]), result["actions"]
        assert lab.run("edge.drained")["edge3"]["source"] == "kubernetes"
        assert lab.external_ips() == sorted([VIP, USER_IP, ADDR["edge1"], ADDR["edge2"]])
        assert lab.holders() == ["edge1"]
        row = lab.report()["vips"][0]
        assert {b["node"]: b for b in row["backups"]}["edge3"]["drained"]
        result = reconcile_after(lab, lambda: cordon(None))
        assert any(a.startswith("edge3: undrained (kubernetes)") for a in result["actions"]), result["actions"]
        assert lab.run("edge.drained") == {}
        assert wait_for(lambda: lab.external_ips() == ALL_IPS, 20), lab.external_ips()
    finally:
        cordon(None)
