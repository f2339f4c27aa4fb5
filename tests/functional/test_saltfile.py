"""The repo's Saltfile: salt-call from the repo root finds salt/, pillar/ and the custom modules without a sync."""

import json
import pathlib
import subprocess
import sys

import pytest
import yaml

from tests.support.saltfile import saltfile_args

REPO = pathlib.Path(__file__).resolve().parents[2]
SALT_CALL = str(pathlib.Path(sys.executable).with_name("salt-call"))
EXAMPLE = yaml.safe_load((REPO / "pillar" / "edge_ha.sls.example").read_text())

pytestmark = pytest.mark.functional


def _salt_call(*args, root_dir):
    # --config-dir/root_dir keep caches out of /etc and /var; everything else comes from the Saltfile
    # (./Saltfile, or Saltfile-3006-3007 on the older Salts)
    proc = subprocess.run(
        [SALT_CALL, *saltfile_args(), "--out=json", "-c", str(root_dir), *args],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )
    return proc


@pytest.fixture
def confdir(tmp_path):
    (tmp_path / "minion").write_text(f"root_dir: {tmp_path}\n")
    return tmp_path


def test_saltfiles_for_3006_3007_and_3008_agree():
    """Saltfile (3008: file_root/pillar_root are lists) and Saltfile-3006-3007 (strings) say the same."""
    new = yaml.safe_load((REPO / "Saltfile").read_text())["salt-call"]
    old = yaml.safe_load((REPO / "Saltfile-3006-3007").read_text())["salt-call"]
    assert {k: [v] if k in ("file_root", "pillar_root") else v for k, v in old.items()} == new


def test_custom_modules_load_from_repo_root(confdir):
    proc = _salt_call("--id", "edge1", "edge_ha.validate", root_dir=confdir)
    # the repo ships no pillar/edge_ha.sls: the model says exactly what is missing
    assert json.loads(proc.stdout)["local"] == ["edge_ha: must be a mapping (is the pillar key edge_ha missing?)"]


def test_edge_sls_renders_with_repo_file_roots(confdir):
    pillar = json.dumps(EXAMPLE)
    proc = _salt_call("--id", "edge1", "state.show_sls", "edge", f"pillar={pillar}", root_dir=confdir)
    assert proc.returncode == 0, proc.stderr
    states = json.loads(proc.stdout)["local"]
    assert "keepalived" in states["edge-keepalived"]
    assert states["edge-sysctl-net.ipv4.conf.all.arp_ignore"]["sysctl"].count({"value": 1}) == 1  # DR virtual servers
    assert {"pkgs": ["keepalived", "ipvsadm", "iproute2", "nftables"]} in states["edge-packages"]["pkg"]


def test_ipvs_persistence_expiry_only_with_virtual_servers(confdir):
    """Removed or drained real servers: connections and persistence templates expire (IPVS sysctls)."""
    with_vs = json.loads(_salt_call("--id", "edge1", "state.show_sls", "edge.sysctl", f"pillar={json.dumps(EXAMPLE)}",
                                    root_dir=confdir).stdout)["local"]
    for key in ("net.ipv4.vs.expire_nodest_conn", "net.ipv4.vs.expire_quiescent_template"):
        assert {"value": 1} in with_vs[f"edge-sysctl-{key}"]["sysctl"]
        assert {"require": [{"kmod": "edge-ipvs-module"}]} in with_vs[f"edge-sysctl-{key}"]["sysctl"]
    without = dict(EXAMPLE["edge_ha"])
    without.pop("virtual_servers")
    plain = json.loads(_salt_call("--id", "edge1", "state.show_sls", "edge.sysctl",
                                  f"pillar={json.dumps({'edge_ha': without})}", root_dir=confdir).stdout)["local"]
    assert not [k for k in plain if ".vs." in k or k == "edge-ipvs-module"], sorted(plain)
