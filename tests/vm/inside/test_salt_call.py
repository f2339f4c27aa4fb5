"""Opt-in (EDGE_HA_VM_SALT_CALL=1 on the host; each salt-call costs ~75 s
under TCG): the modules through Salt's real loader (salt-call --local)
against the real kernel."""

import json
import subprocess
import sys

import pytest
from vmhelpers import REPO

pytestmark = pytest.mark.vm

SERVICES = [{"protocol": "TCP", "address": "198.18.60.1", "port": 80, "scheduler": "rr",
             "destinations": [{"address": "198.19.60.1", "weight": 2}]}]


def test_state_through_salt_call(ipvs, clean_table, tmp_path):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "minion").write_text(f"root_dir: {tmp_path / 'root'}\nfile_client: local\n"
                                 f"module_dirs: [{REPO}]\n")
    proc = subprocess.run(
        [sys.executable, "-c", "import salt.scripts; salt.scripts.salt_call()", "--local",
         "--config-dir", str(conf), "--out", "json", "--log-level", "quiet",
         "state.single", "ipvs.synced", "name=edge", f"services={json.dumps(SERVICES)}"],
        capture_output=True, text=True, timeout=600)
    (ret,) = json.loads(proc.stdout)["local"].values()
    assert ret["result"] is True, (ret, proc.stderr)
    assert ret["changes"]["operations"] == [
        "add_service TCP:198.18.60.1:80 scheduler=rr",
        "add_dest TCP:198.18.60.1:80 198.19.60.1:80 NAT weight=2"]
    assert [s["id"] for s in ipvs.list_services()] == ["TCP:198.18.60.1:80"]
