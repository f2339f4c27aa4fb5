"""
LoadBalancer Services on the lab (issue #15): a Service of our class gets an
address from the pillar's pool, the address becomes a VRRP instance on the
edge nodes (ext_pillar -> staged reload), the client reaches the ingress
stand-in on it, status.loadBalancer.ingress and an Event are written; a
Service of another class is untouched; a requested address is honoured and a
taken one refused; a pool with no free address refuses with an Event and
nothing written; a deleted Service's address goes from every node and the
report, its owner reloaded in place (the ingress VIP stays); the owner's
keepalived SIGKILLed moves the address and status stays right. Then the
emulator restarted as a hardened cluster (DenyServiceExternalIPs): it refuses
externalIPs and a LoadBalancer Service still gets its address.

The Services are created through the emulator only: the engine's watch event
(reactor -> edge.trigger) is what reconciles.
"""

import json
import os
import shutil
import time

import pytest

from edge_ha_core import lb
from lab.lab import KUBE_NS, NODES, VIP, lab_pillar
from lab.load_balancer import SVC, TINY, create, delete, get, http_from_client, ingress, pool_pillar

from tests.support.labtools import wait_for

pytestmark = [
    pytest.mark.lab,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(not shutil.which("keepalived"), reason="keepalived is not installed (make bootstrap)"),
]

BOUND = 45  # seconds from the Service's creation to its address answering, status written


def events(lab, name):
    items = lab.kube("GET", f"/api/v1/namespaces/{KUBE_NS}/events").get("items") or []
    return [(e.get("reason"), e.get("message")) for e in items if (e.get("involvedObject") or {}).get("name") == name]


def holders(lab, address):
    return sorted(n for n in NODES if address in lab.addresses(n))


def debug(lab):
    """What the master did (for a failed assertion)."""
    log = lab.dir / "master" / "var" / "log" / "salt" / "master"
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    wanted = [line for line in lines if "edge" in line.lower() or "error" in line.lower() or "Traceback" in line]
    return json.dumps(lab.reconcile_log()[-8:], indent=1, default=str)[-6000:] + "\n" + "\n".join(wanted[-40:])


@pytest.fixture
def pools(baseline):
    lab = baseline
    lab.set_pillar(pool_pillar(lab))
    lab.run("edge.reconcile", timeout=300)
    yield lab
    for name in ("web", "theirs", "dns", "dup", "full"):
        delete(lab, name)
    lab.run("edge.reconcile", timeout=300)
    lab.set_pillar(lab_pillar(lab.dir / "kubeconfig"))
    lab.run("edge.reconcile", timeout=300)


def test_load_balancer_services_end_to_end(pools):
    lab = pools
    # 1. a Service of our class and one of another class, created in Kubernetes only
    start = time.monotonic()
    create(lab, "web")
    create(lab, "theirs", cls="example.com/other-lb")
    took = wait_for(lambda: ingress(lab, "web"), BOUND, 0.2)
    if took is None:
        print(json.dumps(get(lab, "web"), indent=1), debug(lab))
        if os.environ.get("EDGE_HA_LAB_DEBUG"):  # keep the master's records for a look afterwards
            shutil.copytree(lab.dir / "master" / "var", os.environ["EDGE_HA_LAB_DEBUG"], dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("*.ipc", "*.sock"))
    assert took is not None
    (address,) = ingress(lab, "web")
    print(f"\nweb: {address} answering, status written {time.monotonic() - start:.1f}s after its creation")
    assert address.startswith("198.18.0.12") and 120 <= int(address.rsplit(".", 1)[1]) <= 127
    # the client reaches the node that holds the address (the address can still move once: the node with
    # the highest priority for the new instance may be reloaded in a later stage and preempt; see
    # docs/benchmarks.md section 7), and only one node holds it
    def answered_by_its_holder():
        held = holders(lab, address)
        return len(held) == 1 and http_from_client(lab, address) == held[0]

    assert wait_for(answered_by_its_holder, 15, 0.3), (holders(lab, address), http_from_client(lab, address))
    assert any(r == "AddressAssigned" and address in m for r, m in events(lab, "web")), events(lab, "web")
    assert lab.holders(VIP) == ["edge1"]  # the ingress VIP did not move
    assert address not in lab.external_ips()  # the ingress Service's externalIPs are the pillar's VIPs only
    theirs = get(lab, "theirs")
    assert lb.ASSIGNMENT_ANNOTATION not in ((theirs["metadata"].get("annotations")) or {})
    assert ingress(lab, "theirs") == [] and events(lab, "theirs") == []
    report = lab.report()
    assert report["load_balancer"]["services"][address] == [f"{KUBE_NS}/web"]
    assert sum(report["load_balancer"]["owner_spread"].values()) >= 2
    assert [r.get("services") for r in report["vips"] if r["vip"] == address] == [[f"{KUBE_NS}/web"]]

    # 2. a requested address honoured (the one address of pool tiny), the same address asked again refused
    # with an Event, and the full pool refusing the next Service that asks for it: Event, nothing written
    create(lab, "dns", annotations={lb.IPS_ANNOTATION: TINY})
    assert wait_for(lambda: ingress(lab, "dns") == [TINY], BOUND, 0.2), get(lab, "dns")
    assert len(holders(lab, TINY)) == 1
    create(lab, "dup", annotations={lb.IPS_ANNOTATION: TINY})
    create(lab, "full", annotations={lb.POOL_ANNOTATION: "tiny"})
    assert wait_for(lambda: any(r == lb.ADDRESS_TAKEN for r, _ in events(lab, "dup"))
                    and any(r == lb.POOL_EXHAUSTED for r, _ in events(lab, "full")), 30, 0.3), \
        (events(lab, "dup"), events(lab, "full"))
    lab.run("edge.reconcile", timeout=300)
    assert [r for r, _ in events(lab, "dup")].count(lb.ADDRESS_TAKEN) == 1  # deduplicated
    assert [r for r, _ in events(lab, "full")].count(lb.POOL_EXHAUSTED) == 1
    for name in ("dup", "full"):
        assert ingress(lab, name) == []
        assert lb.ASSIGNMENT_ANNOTATION not in (get(lab, name)["metadata"].get("annotations") or {})
    assert holders(lab, "198.18.0.121") == []  # the full pool's Service got no address of another pool either
    assert ingress(lab, "web") == [address] and ingress(lab, "dns") == [TINY]

    # 3. the Service deleted: its address goes from every node and from the report; the node that held it
    # reloads in place (only its instance goes: the other VIPs it holds stay, the ingress VIP never moves).
    # What the user sees, not one mechanism: the pillar refresh after the instances change can drop the
    # instance from the holder's report before the rollout reads it, so this passed in the lab (2026-12-01)
    # also with desired.reload_keeps_state's fix reverted; that fix is asserted by tests/unit/test_recovery_logic.py
    web_owner = holders(lab, address)[0]
    mark = time.time()
    lab.kube("DELETE", f"{SVC}/web")
    assert wait_for(lambda: holders(lab, address) == [], BOUND, 0.3), holders(lab, address)
    lab.wait_reconcile_idle()
    rows = [r for r in lab.run("edge.history", "limit=300") if r["time"] >= mark]
    rollouts = " | ".join(r["what"] for r in rows if r["kind"] == "rollout")
    assert f"{web_owner}:ok, in place" in rollouts, (web_owner, rollouts)
    assert lab.holders(VIP) == ["edge1"] and holders(lab, TINY)
    report = lab.report()
    assert address not in report["load_balancer"]["services"], report["load_balancer"]
    assert address not in [r["vip"] for r in report["vips"]]
    assert ingress(lab, "dns") == [TINY]

    # 4. the owner of dns's address crashes: the address moves, status stays right
    owner = holders(lab, TINY)[0]
    lab.kill_keepalived(owner)
    assert wait_for(lambda: (h := holders(lab, TINY)) and owner not in h, 20, 0.2), holders(lab, TINY)
    assert wait_for(lambda: len(holders(lab, TINY)) == 1, 20, 0.2)
    new_owner = holders(lab, TINY)[0]
    assert wait_for(lambda: http_from_client(lab, TINY) == new_owner, 15, 0.3)
    time.sleep(3)  # the reconciles the failover triggers
    lab.wait_reconcile_idle()
    assert ingress(lab, "dns") == [TINY]
    assert lab.report()["load_balancer"]["services"][TINY] == [f"{KUBE_NS}/dns"]


@pytest.fixture
def hardened(pools):
    """The emulator restarted as a hardened cluster (DenyServiceExternalIPs), back to the plain one after."""
    lab = pools
    lab.restart_kube(deny_external_ips=True)
    try:
        yield lab
    finally:
        lab.restart_kube()


def test_hardened_cluster_refuses_external_ips_and_load_balancer_mode_works(hardened):
    lab = hardened
    with pytest.raises(RuntimeError, match="403"):
        lab.kube("POST", SVC, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ext", "namespace": KUBE_NS},
                               "spec": {"ports": [{"port": 80}], "externalIPs": ["198.18.0.140"]}})
    assert get(lab, "ext") is None
    create(lab, "web")
    took = wait_for(lambda: ingress(lab, "web"), BOUND, 0.2)
    assert took is not None, (get(lab, "web"), debug(lab))
    (address,) = ingress(lab, "web")
    assert len(holders(lab, address)) == 1, holders(lab, address)
    assert wait_for(lambda: http_from_client(lab, address) == holders(lab, address)[0], 10, 0.3)
    assert any(r == "AddressAssigned" and address in m for r, m in events(lab, "web")), events(lab, "web")
    assert lab.holders(VIP) == ["edge1"]
