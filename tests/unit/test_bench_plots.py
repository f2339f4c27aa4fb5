"""bench/plots.py: the failover picture's points come from every run of every setup in a results file."""

import pytest

from bench import plots

RES = {
    "started": "2026-12-01 12:19:26 UTC",
    "failover_plain": {"sigkill": [{"moved": 2.7}, {"moved": 2.6}]},
    "failover_default": {
        "graceful": [{"moved": 0.47, "service": 0.23, "report": 0.47}, {"moved": 0.48, "service": None,
                                                                         "report": 0.5}],
        "sigkill": [{"moved": 2.7, "service": 0.2, "report": 2.9}],
    },
}


def test_every_run_is_a_point_and_missing_values_are_left_out():
    points = plots.failover_points(RES)
    assert sorted(points) == ["graceful", "sigkill"]
    graceful = {(label, name): values for label, name, _, values in points["graceful"]}
    assert graceful[("project defaults", "VIP moved")] == [0.47, 0.48]
    assert graceful[("project defaults", "Service right")] == [0.23], "a run without the value is not a point"
    sigkill = {(label, name) for label, name, _, _ in points["sigkill"]}
    assert ("plain keepalived (baseline)", "VIP moved") in sigkill
    assert ("plain keepalived (baseline)", "Service right") not in sigkill


def test_draw_writes_the_failover_png(tmp_path):
    pytest.importorskip("matplotlib")  # make bench installs it (requirements-bench.txt)
    written = plots.draw(RES, tmp_path)
    assert written == [tmp_path / "failover.png"]
    assert (tmp_path / "failover.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_scale_lab_points_per_size_that_ran():
    res = {"scale_lab": [
        {"edges": 3, "runs": [{"service": 0.25}, {"service": None}], "reconciles": [{"seconds": 0.1}, {"seconds": 0.2}]},
        {"edges": 10, "runs": [{"service": 0.31}], "reconciles": [{"seconds": 0.12}]},
        {"edges": 50, "error": "saltutil.sync_all failed"},
    ]}
    assert plots.scale_lab_points(res) == [(3, [0.25], [0.1, 0.2]), (10, [0.31], [0.12])]
