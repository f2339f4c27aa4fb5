"""Bounded events, byte-bounded rotated history, monotonic counters (issue #12)."""

import json
import multiprocessing
import os

import pytest

from edge_ha_core import history
from edge_ha_core.history import Counters
from edge_ha_core.history import HistoryLog
from edge_ha_core.history import bound_event


def test_bound_event_bounds_ids_tags_strings_depth_and_items():
    deep = {"x": {"x": {"x": {"x": {"x": {"x": {"x": "bottom"}}}}}}}
    data = {
        "id": "m" * (1024 * 1024),  # the 1 MiB claimed id of the issue
        "tag": "salt/beacon/" + "t" * 5000,
        "message": "s" * 5000,
        "k" * 500: 1,
        "items": list(range(1000)),
        "many": {str(i): i for i in range(1000)},
        "deep": deep,
        "other": object(),
        "big": 2**200,
    }
    out = bound_event(data)
    assert out is not data and len(data["id"]) == 1024 * 1024  # a new dict; the input is untouched
    assert len(out["id"]) == 128 and out["id"].endswith("...")
    assert len(out["tag"]) == 256
    assert len(out["message"]) == 1024
    assert "k" * 125 + "..." in out
    assert out["items"][:3] == [0, 1, 2] and len(out["items"]) == 65 and out["items"][-1] == "<936 more items>"
    assert len(out["many"]) == 65 and out["many"]["_truncated_items"] == 936
    assert "<nested too deep>" in json.dumps(out["deep"])
    assert out["other"].startswith("<object object")
    assert len(out["big"]) == 32
    assert len(json.dumps(out)) <= history.MAX_EVENT_BYTES


def test_bound_event_keeps_small_events_and_caps_the_total():
    small = {"id": "edge1", "tag": "edge/x", "data": {"state": "MASTER", "n": 3, "ok": True, "none": None}}
    assert bound_event(small) == small
    huge = {"id": "edge1", "tag": "t", **{f"f{i}": "v" * 1024 for i in range(60)}}
    out = bound_event(huge)
    assert out["id"] == "edge1" and out["tag"] == "t" and out["_truncated_bytes"] > history.MAX_EVENT_BYTES
    assert len(out) == 3
    assert bound_event(["not", "a", "dict"], tag="x" * 300) == {"data": ["not", "a", "dict"], "tag": "x" * 253 + "..."}


def test_history_is_bounded_in_bytes_and_rotates(tmp_path):
    path = str(tmp_path / "history.jsonl")
    log = HistoryLog(path, max_bytes=4096, keep_files=2)
    for i in range(300):
        log.append({"n": i, "id": "m" * 10000, "pad": "p" * 100})
    sizes = [os.path.getsize(p) for p in log.files()]
    assert log.files() == [path, path + ".1", path + ".2"]
    assert all(size <= 4096 for size in sizes)
    entries = log.read()
    assert [e["n"] for e in entries] == list(range(299, 299 - len(entries), -1))  # newest first, no gaps
    assert all(len(e["id"]) == 128 for e in entries)
    assert len(entries) < 300  # the oldest went with the rotation
    assert [e["n"] for e in log.read(limit=3)] == [299, 298, 297]


def test_history_tolerates_a_truncated_last_line(tmp_path):
    path = str(tmp_path / "history.jsonl")
    log = HistoryLog(path, max_bytes=4096, keep_files=1)
    log.append({"n": 1})
    log.append({"n": 2})
    with open(path, "ab") as fh:
        fh.write(b'{"n": 3, "trunc')  # a crash in the middle of a write
    assert [e["n"] for e in log.read()] == [2, 1]
    log.append({"n": 4})
    assert [e["n"] for e in log.read()] == [4, 2, 1]
    with open(path, "ab") as fh:
        fh.write(b"[1, 2]\nnot json\n")
    assert [e["n"] for e in log.read()] == [4, 2, 1]


def _append_many(path, worker):
    log = HistoryLog(path, max_bytes=1 << 20, keep_files=1)
    for i in range(200):
        log.append({"worker": worker, "n": i, "pad": "x" * 200})


def test_concurrent_appends_do_not_interleave(tmp_path):
    path = str(tmp_path / "history.jsonl")
    procs = [multiprocessing.Process(target=_append_many, args=(path, w)) for w in range(3)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(30)
    entries = HistoryLog(path, max_bytes=1 << 20).read()
    assert len(entries) == 600
    for worker in range(3):
        assert [e["n"] for e in entries if e["worker"] == worker] == list(range(199, -1, -1))


def test_counters_only_go_up_and_persist(tmp_path):
    path = str(tmp_path / "counters.json")
    counters = Counters(path)
    assert counters.values() == {}
    counters.bump("reconciles")
    counters.bump("reconciles", "failovers")
    assert Counters(path).values() == {"reconciles": 2, "failovers": 1}
    assert counters.bump("failovers", by=5)["failovers"] == 6
    with pytest.raises(ValueError, match="only go up"):
        counters.bump("failovers", by=-1)
    with pytest.raises(ValueError, match="counter name"):
        counters.bump("x" * 129)
    assert counters.values() == {"reconciles": 2, "failovers": 6}
    assert sorted(os.listdir(tmp_path)) == ["counters.json", "counters.json.lock"]  # no temp file left


def test_counters_are_independent_of_the_trimmed_history(tmp_path):
    """The history rotates its oldest entries away; the counters do not go down with it."""
    log = HistoryLog(str(tmp_path / "history.jsonl"), max_bytes=1024, keep_files=1)
    counters = Counters(str(tmp_path / "counters.json"))
    seen = []
    for i in range(100):
        log.append({"n": i, "pad": "x" * 50})
        seen.append(counters.bump("events")["events"])
    assert seen == list(range(1, 101))
    assert len(log.read()) < 100


def test_corrupt_counters_file_is_an_error_not_a_reset(tmp_path):
    path = tmp_path / "counters.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Counters(str(path)).bump("x")
    assert path.read_text() == "{not json"
