"""
Two hot-hot masters on the lab (issue #16): Salt multi-master (every minion
connected to both), the controller's state in one redis-server the lab
starts (``Lab(masters=2)``). Both masters see the edge minions and report
the same VIP owners; a failover is reconciled with both reactors receiving
the beacon events and one reconcile at a time (the lease); with master 1
stopped, master 2 alone reconciles the next failover. Durations are printed
(pytest -s shows them).
"""

import json
import os
import shutil
import signal
import sys
import time

import pytest

from lab.lab import USER_IP, VIP, Lab

from tests.support.labtools import ADDR, ALL_IPS, wait_for
from tests.support.netns import alive

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(not shutil.which("keepalived"), reason="keepalived is not installed (make bootstrap)"),
    pytest.mark.skipif(not shutil.which("redis-server"), reason="redis-server is not installed (make bootstrap)"),
]

MASTERS = ("master", "master2")

# a listener on a master's event bus (its IPC socket, inside its namespace): one JSON line per beacon event
LISTENER = """
import json, sys, time, salt.config, salt.utils.event
opts = salt.config.master_config(sys.argv[1])
bus = salt.utils.event.get_master_event(opts, opts["sock_dir"], listen=True)
with open(sys.argv[2], "a", encoding="utf-8") as out:
    while True:
        event = bus.get_event(full=True, wait=1)
        if event and event["tag"].startswith("salt/beacon/"):
            out.write(json.dumps({"tag": event["tag"], "time": time.time()}) + "\\n")
            out.flush()
"""


@pytest.fixture(scope="module", name="mm")
def _mm(tmp_path_factory):
    bed = Lab(tmp_path_factory.mktemp("mmlab"), prefix=f"ehmm{os.getpid() % 1000}", masters=2)
    try:
        start = time.monotonic()
        bed.up(log=lambda msg: print(msg, flush=True))
        print(f"\ntwo-master lab up in {time.monotonic() - start:.1f}s")
        for master in MASTERS:
            bed._spawn(master, "events", sys.executable, "-c", LISTENER,  # pylint: disable=protected-access
                       str(bed.etc_of(master) / "master"), str(bed.dir / f"events-{master}.jsonl"))
        time.sleep(2)  # the listeners connected
        yield bed
    finally:
        keep = tmp_path_factory.getbasetemp() / "mmlab-logs"  # the logs outlive the lab (down removes its dir)
        for src, dst in [(bed.dir / "logs", keep / "logs")] + [
                (bed.dir / m / "var" / "log" / "salt", keep / m) for m in MASTERS] + [
                (bed.dir / n / "root" / "var" / "log" / "salt", keep / n) for n in bed.nodes]:
            shutil.copytree(src, dst, dirs_exist_ok=True, ignore_dangling_symlinks=True) if src.exists() else None
        print(f"\nlab logs kept in {keep}")
        bed.down(quiet=True)


def beacon_events(lab, master, since):
    path = lab.dir / f"events-{master}.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [e for e in map(json.loads, lines) if e["time"] >= since]


def owner_rows(lab, master):
    return lab.run("edge.vip_report", master=master)["vips"]


def reconciles(lab, since=0.0):
    """The shared history's reconcile runs (in redis) since ``since``: ``(start, end, entry)``, oldest first."""
    runs = [(r["time"] - r["seconds"], r["time"], r) for r in lab.reconcile_log()
            if r["kind"] == "reconcile" and r["time"] >= since]
    return sorted(runs, key=lambda run: run[0])


def assert_never_overlapped(runs):
    for (_, end, first), (start, _, second) in zip(runs, runs[1:]):
        assert start >= end - 0.01, f"two reconciles at once: {first} and {second}"


def test_both_masters_see_the_edge_minions(mm):
    for master in MASTERS:
        answers = mm.salt("*", "test.ping", master=master, timeout=20)
        assert {m for m, ok in answers.items() if ok is True} == set(mm.minions), (master, answers)
    # the controller's state is in the lab's redis (not in a master's cachedir)
    assert mm.redis().keys("*edge_ha*"), "no edge_ha key in redis"


def test_vip_report_is_the_same_from_either_master(mm):
    assert wait_for(lambda: mm.holders() == ["edge1"], 30), mm.holders()
    rows = {}

    def same():
        rows.update({m: owner_rows(mm, m) for m in MASTERS})
        return rows["master"] == rows["master2"] and rows["master"][0]["owner"] == ["edge1"]

    took = wait_for(same, 60, 1)
    assert took is not None, json.dumps(rows, indent=1)
    print(f"\nvip_report rows equal from both masters after {took:.1f}s: owner {rows['master'][0]['owner']}")


def kill_owner_until_reconciled(lab, service_timeout):
    """SIGKILL of edge1's keepalived (the owner); seconds until edge2 holds the VIP and until the Service
    lists every address but edge1's."""
    start = time.monotonic()
    lab.kill_keepalived("edge1", signal.SIGKILL)
    moved = wait_for(lambda: "edge2" in lab.holders(), 15, 0.02)
    assert moved is not None, lab.holders()
    expected = sorted([VIP, USER_IP, ADDR["edge2"], ADDR["edge3"]])
    assert wait_for(lambda: lab.external_ips() == expected, service_timeout, 0.1) is not None, lab.external_ips()
    return moved, time.monotonic() - start


def test_failover_reconciled_once_at_a_time_with_both_reactors(mm):
    lab = mm
    assert wait_for(lambda: lab.external_ips() == ALL_IPS, 60, 0.5), lab.external_ips()
    mark = time.time()
    moved, service = kill_owner_until_reconciled(lab, 45)
    print(f"\nSIGKILL of edge1's keepalived: VIP on edge2 after {moved:.2f}s, Service right after {service:.2f}s")
    for master in MASTERS:
        seen = wait_for(lambda m=master: [e for e in beacon_events(lab, m, mark) if "/vrrp/" in e["tag"]], 20, 0.2)
        assert seen is not None, f"{master}'s event bus got no vrrp beacon event"
        print(f"{master}: {len(beacon_events(lab, master, mark))} beacon events since the kill, e.g. "
              f"{beacon_events(lab, master, mark)[0]['tag']}")
    assert wait_for(lambda: any(r["actions"] for _, _, r in reconciles(lab, mark)), 30, 0.5), reconciles(lab, mark)
    for master in MASTERS:
        row = {}
        assert wait_for(lambda m=master: row.update(r=owner_rows(lab, m)[0]) or row["r"]["owner"] == ["edge2"],
                        30, 1), (master, row)
    time.sleep(12)  # a scheduled trigger on each master (every 10 s) and the reactors' queued triggers
    runs = reconciles(lab)
    assert_never_overlapped(runs)
    print(f"{len(runs)} reconciles in the shared history, none overlapping; since the kill: "
          + "; ".join(f"{r['reason']} {r['seconds']}s {r['actions']}" for _, _, r in reconciles(lab, mark)))
    # back to the start: edge1's keepalived from highstate, the VIP back on edge1 (preemption)
    lab.salt("edge1", "state.apply", "--list", timeout=120)
    assert wait_for(lambda: lab.holders() == ["edge1"], 30), lab.holders()
    assert wait_for(lambda: lab.external_ips() == ALL_IPS, 45, 0.5), lab.external_ips()


def test_master_1_stopped_master_2_reconciles_alone(mm):
    lab = mm
    assert lab.holders() == ["edge1"] and lab.external_ips() == ALL_IPS
    pid = lab.master_pid("master")
    lab.stop_master("master")
    assert not alive(pid), "master 1 stopped"
    mark = time.time()
    moved, service = kill_owner_until_reconciled(lab, 60)
    print(f"\nmaster 1 stopped, SIGKILL of edge1's keepalived: VIP on edge2 after {moved:.2f}s, Service right "
          f"after {service:.2f}s (master 2 alone)")
    assert beacon_events(lab, "master2", mark), "master 2's event bus got the beacon events"
    assert any(r["actions"] for _, _, r in reconciles(lab, mark)), reconciles(lab, mark)
    row = {}
    assert wait_for(lambda: row.update(r=owner_rows(lab, "master2")[0]) or (
        row["r"]["owner"] == ["edge2"] and row["r"]["service_match"] is True and row["r"]["flags"] == []
        and {b["node"]: b["state"] for b in row["r"]["backups"]}.get("edge1") == "STOPPED"), 30, 1), row
    assert_never_overlapped(reconciles(lab))
