"""Fixtures for the tests that run inside the qemu VM (as root, on Debian's
kernel with IPVS). Outside the VM every test here is skipped: they are run
by tests/vm/test_in_vm.py through tests/vm/run.py."""

import os
import subprocess

import pytest
from vmhelpers import IN_VM, Keepalived, load


@pytest.fixture(scope="session", autouse=True)
def _inside_vm_only():
    if not IN_VM:
        pytest.skip("runs only inside the qemu VM (tests/vm/test_in_vm.py boots it)")
    if not os.path.exists("/proc/net/ip_vs"):
        pytest.fail("inside the VM but /proc/net/ip_vs is missing: ip_vs did not load")
    if os.geteuid() != 0:
        pytest.fail("the VM tests must run as root")


@pytest.fixture(scope="session")
def ipvs():
    """The execution module, loaded from its file (no Salt loader)."""
    return load("_modules/ipvs.py", "ipvs_exec_in_vm")


@pytest.fixture(scope="session")
def ipvs_state():
    return load("_states/ipvs.py", "ipvs_state_in_vm")


@pytest.fixture
def clean_table(ipvs):
    """An empty IPVS table before and after the test."""
    subprocess.run(["ipvsadm", "-C"], check=True)
    yield
    subprocess.run(["ipvsadm", "-C"], check=False)


@pytest.fixture
def keepalived(tmp_path):
    """A Keepalived controller; whatever it started is stopped by pid."""
    ka = Keepalived(tmp_path)
    yield ka
    ka.stop()
