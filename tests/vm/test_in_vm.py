"""Host side of the VM stage: boot Debian's kernel in qemu (tests/vm/run.py)
and run tests/vm/inside there, for real; then boot it again with systemd as
PID 1 (an overlay of the host root) and run tests/vm/inside_systemd there.
Skipped only when qemu cannot start at all on this machine."""

import importlib.util
import os
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytestmark = pytest.mark.vm

IN_VM = os.environ.get("EDGE_HA_IN_VM") == "1"
_spec = importlib.util.spec_from_file_location("edge_ha_vm_run", Path(__file__).with_name("run.py"))
vmrun = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = vmrun  # dataclasses look their module up there
_spec.loader.exec_module(vmrun)


def run_stage(capsys, label, pytest_args, min_tests, **kwargs):
    """Boot the VM, run ``pytest_args`` inside, print its output and assert every test ran and passed."""
    t0 = time.monotonic()
    try:
        result = vmrun.run_pytest_in_vm(pytest_args, **kwargs)
    except vmrun.QemuUnavailable as exc:
        pytest.skip(f"qemu cannot start on this machine: {exc}")
    elapsed = time.monotonic() - t0
    boot = f"boot to the job {result.timings['guest_boot']}s, " if result.timings.get("guest_boot") else ""
    summary = (f"{label} stage: {elapsed:.1f}s (prepare {result.timings['prepare']}s, {boot}"
               f"boot+tests+poweroff {result.timings['vm']}s), kernel {result.kernel}, "
               f"accel {result.accel}, results {result.results_dir}")
    with capsys.disabled():
        print(f"\n----- pytest inside the {label} -----\n{result.output.rstrip()}\n----- {summary} -----")
    assert result.exit_code == 0, (
        f"pytest inside the {label} exited {result.exit_code}\n{result.output}\n"
        f"--- console (tail) ---\n{result.console[-3000:]}")
    suite = ET.parse(result.junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    assert counts["tests"] >= min_tests, counts
    assert counts["failures"] == counts["errors"] == 0, counts
    assert counts["skipped"] == 0, f"nothing may skip inside the VM: {counts}\n{result.output}"


@pytest.mark.skipif(IN_VM, reason="already inside the VM")
@pytest.mark.timeout(900)
def test_ipvs_tests_pass_inside_the_vm(capsys):
    run_stage(capsys, "VM", vmrun.default_pytest_args(), 10)
    assert os.environ.get("EDGE_HA_IN_VM") != "1"


@pytest.mark.skipif(not os.environ.get("EDGE_HA_VM_SYSTEMD"),
                    reason="opt-in (make test-systemd, EDGE_HA_VM_SYSTEMD=1): the systemd boot takes about 5 "
                           "minutes under TCG, outside make test's time budget")
@pytest.mark.skipif(IN_VM, reason="already inside the VM")
@pytest.mark.timeout(900)
def test_systemd_service_mode_tests_pass_inside_the_vm(capsys):
    """keepalived's default service_mode (systemd) under a real systemd: highstate,
    reload, rollback and the beacon's watch (tests/vm/inside_systemd)."""
    run_stage(capsys, "systemd VM", vmrun.default_pytest_args("systemd"), 4, init="systemd")
