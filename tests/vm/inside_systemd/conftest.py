"""Fixtures for the tests that run inside the qemu VM booted with systemd as
PID 1 (tests/vm/run.py --systemd: an overlay of the host root, writable, on a
tmpfs). Outside that VM every test here is skipped: they are run by
tests/vm/test_in_vm.py."""

import os

import pytest

IN_SYSTEMD_VM = os.environ.get("EDGE_HA_IN_VM") == "1" and os.environ.get("EDGE_HA_VM_INIT") == "systemd"


@pytest.fixture(scope="session", autouse=True)
def _inside_systemd_vm_only():
    if not IN_SYSTEMD_VM:
        pytest.skip("runs only inside the qemu VM booted with systemd (tests/vm/test_in_vm.py boots it)")
    with open("/proc/1/comm", encoding="ascii") as fh:
        comm = fh.read().strip()
    if comm != "systemd":
        pytest.fail(f"inside the systemd VM but PID 1 is {comm!r}")
    if os.geteuid() != 0:
        pytest.fail("the VM tests must run as root")
