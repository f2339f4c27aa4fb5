"""The lab (lab/lab.py) shared by the lab tests: started once per session, torn down by pid/namespace."""

import os
import time

import pytest

from lab.lab import NODES, Lab, lab_pillar
from tests.support.labtools import ALL_IPS, wait_for


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    bed = Lab(tmp_path_factory.mktemp("lab"), prefix=f"ehl{os.getpid() % 10000}", fault_injection=True)
    try:
        start = time.monotonic()
        bed.up(log=lambda msg: None)
        print(f"\nlab up in {time.monotonic() - start:.1f}s")
        yield bed
    finally:
        bed.down(quiet=True)


@pytest.fixture
def baseline(lab):
    """The lab pillar, nothing drained, every keepalived running, every ingress healthy,
    edge1 owning the VIP, Service right."""
    lab.set_pillar(lab_pillar(lab.dir / "kubeconfig"))
    for node in NODES:
        lab.set_fault_t_passes(node, False)
        lab.set_ingress_healthy(node, True)
    for node in lab.run("edge.drained"):
        lab.run("edge.undrain", node, timeout=300)
    stopped = [n for n in NODES if not os.path.exists(f"/proc/{lab.keepalived_pid(n)}") or not lab.keepalived_pid(n)]
    if stopped:
        lab.salt(",".join(stopped), "state.apply", "--list", timeout=120)
    lab.run("edge.reconcile", "retry_failed=True", timeout=300)
    # let the reactor finish what earlier tests queued (a burst of 100 events leaves a backlog of runner jobs)
    wait_for(lambda: (log := lab.reconcile_log()) and time.time() - log[-1]["time"] > 3, 90, 0.5)
    assert wait_for(lambda: lab.holders() == ["edge1"], 20), lab.holders()
    assert wait_for(lambda: lab.external_ips() == ALL_IPS, 20), lab.external_ips()
    return lab
