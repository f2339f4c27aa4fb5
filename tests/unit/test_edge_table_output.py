"""The ``edge_table`` outputter (``salt-run edge.vip_report --out=edge_table``), in process."""

import pytest

from edge_ha_core import report as views
from tests.support import modload

ROW = {
    "vip": "198.18.0.100",
    "instance": "VI_INGRESS",
    "vrid": 51,
    "owner": ["edge1"],
    "owner_detail": [],
    "backups": [{"node": "edge2", "priority": 100, "state": "BACKUP", "drained": False}],
    "ingress": {"edge1": True, "edge2": None},
    "service_match": True,
    "last_transition": None,
    "flags": [],
}
REPORT = {"vips": [ROW], "service": {"match": False, "current": ["198.18.0.100"], "desired": []},
          "notes": ["edge2: no report"]}


@pytest.fixture
def out():
    mod = modload.load("_output/edge_table.py")
    mod.__salt__ = {"nested": lambda data, **kwargs: f"NESTED {data!r}"}
    return mod


def test_renders_the_report_like_vip_report():
    out = modload.load("_output/edge_table.py")
    text = out.output(REPORT)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["VIP", "VRID", "OWNER"]
    assert lines[1].split()[:3] == ["198.18.0.100", "51", "edge1"]
    assert "edge2(100)" in lines[1] and "edge1:ok" in lines[1] and "edge2:?" in lines[1]
    assert lines[2:] == ["service externalIPs: ['198.18.0.100'], should be []", "note: edge2: no report"]
    assert text.startswith(views.format_table([ROW]))
    # salt-call wraps the return under the minion id
    assert out.output({"local": REPORT}) == text


def test_service_error_line(out):
    text = out.output({"vips": [], "service": {"match": None, "error": "forbidden"}, "notes": []})
    assert text.splitlines()[1:] == ["service: forbidden"]


def test_stale_config_and_pillar_errors(out):
    report = {"vips": [], "service": {"match": True}, "notes": ["n"], "stale_config": ["edge1", "edge2"],
              "pillar_errors": ["edge_ha:nodes: must not be empty"]}
    assert out.output(report).splitlines()[1:] == [
        "config: edge1, edge2 not yet running the desired keepalived config",
        "pillar: edge_ha is INVALID; the last good model stays in force until it is fixed:",
        "  edge_ha:nodes: must not be empty",
        "note: n",
    ]


def test_other_data_goes_to_nested(out):
    assert out.output({"local": "not a report"}) == "NESTED {'local': 'not a report'}"
    assert out.output(["x"]) == "NESTED ['x']"


def test_missing_formatter_says_so_and_shows_the_data(out, monkeypatch):
    def missing():
        raise ImportError("No module named 'edge_ha_core.report'")

    monkeypatch.setattr(out, "_format_report", missing)
    text = out.output(REPORT)
    assert text.startswith("edge_table: the table formatter is missing (No module named 'edge_ha_core.report')")
    assert "NESTED" in text
