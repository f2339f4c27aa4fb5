"""CLI conventions: exit codes and the table outputter, through a real salt-call."""

import json
import pathlib
import subprocess
import sys

import pytest

from tests.support.saltfile import saltfile_args

REPO = pathlib.Path(__file__).resolve().parents[2]
SALT_CALL = str(pathlib.Path(sys.executable).with_name("salt-call"))
ROW = {"vip": "198.18.0.100", "vrid": 51, "owner": ["edge1"], "backups": [], "ingress": {"edge1": True},
       "service_match": None, "last_transition": None, "flags": []}

pytestmark = pytest.mark.functional


def _salt_call(*args, cwd, root_dir):
    return subprocess.run([SALT_CALL, "-c", str(root_dir), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)


@pytest.fixture
def confdir(tmp_path):
    (tmp_path / "minion").write_text(f"root_dir: {tmp_path}\n")
    return tmp_path


def test_keepalived_validate_exits_nonzero_on_an_invalid_pillar(confdir):
    # from the repo root: the Saltfile's pillar/ has no edge_ha.sls
    proc = _salt_call(*saltfile_args(), "--id", "edge1", "--out=json", "keepalived.validate", cwd=REPO,
                      root_dir=confdir)
    assert proc.returncode == 1, proc.stderr
    result = json.loads(proc.stdout)["local"]
    assert result["valid"] is False
    assert "edge_ha: must be a mapping (is the pillar key edge_ha missing?)" in result["errors"]


def test_keepalived_validate_exits_zero_when_valid(confdir):
    pillar = confdir / "pillar"
    pillar.mkdir()
    (pillar / "top.sls").write_text("base:\n  '*':\n    - edge_ha\n")
    (pillar / "edge_ha.sls").write_text((REPO / "pillar" / "edge_ha.sls.example").read_text())
    proc = _salt_call("--local", "--id", "edge1", "--out=json", "-m", str(REPO), "--pillar-root", str(pillar),
                      "keepalived.validate", cwd=confdir, root_dir=confdir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["local"]["valid"] is True


def test_edge_table_outputter_through_salt_call(confdir):
    # test.kwarg echoes a report-shaped dict; the outputter is found through the Saltfile's module_dirs
    proc = _salt_call(*saltfile_args(), "--out=edge_table", "test.kwarg", f"vips={json.dumps([ROW])}",
                      'notes=["edge2: no report"]', cwd=REPO, root_dir=confdir)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:3] == ["VIP", "VRID", "OWNER"]
    assert lines[1].split() == ["198.18.0.100", "51", "edge1", "-", "edge1:ok", "?", "-", "-"]
    assert lines[2] == "note: edge2: no report"
