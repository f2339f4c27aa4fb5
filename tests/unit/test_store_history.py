"""History and counters through the controller's store (issue #16): bounded, monotonic, migrated, serialized."""

import json
import threading

import pytest
import salt.cache

from edge_ha_core import history
from edge_ha_core import lease
from edge_ha_core import state
from tests.support.builders import master_opts


@pytest.fixture(name="records")
def _records(tmp_path):
    opts = master_opts(tmp_path)
    directory = str(tmp_path / "edge_ha")
    return state.StateStore(salt.cache.Cache(opts, driver="localfs"), localfs_dir=directory, legacy_dir=directory)


@pytest.fixture(name="mutex")
def _mutex(tmp_path):
    backend = lease.FileBackend(str(tmp_path / "edge_ha" / "records.lease"))
    return lambda: lease.mutex(backend, what="history")


def entry(i, pad=0):
    return {"kind": "reconcile", "run": i, "pad": "x" * pad}


def test_append_read_newest_first_with_limit(records, mutex):
    log = history.StoreHistory(records, mutex)
    assert log.read() == []
    for i in range(5):
        log.append(entry(i))
    assert [e["run"] for e in log.read()] == [4, 3, 2, 1, 0]
    assert [e["run"] for e in log.read(limit=2)] == [4, 3]
    assert [e["run"] for e in history.StoreHistory(records, mutex).read()] == [4, 3, 2, 1, 0]


def test_bounded_in_bytes_like_the_file_log(records, mutex):
    log = history.StoreHistory(records, mutex, max_bytes=64 * 1024, keep_files=2)
    assert log.keep_segments == 3 * 2 and log.segment_bytes == 32 * 1024
    for i in range(400):
        log.append(entry(i, pad=900))  # ~ 940 bytes a line, 376 KB in all
    entries = log.read()
    size = sum(len(json.dumps(e, separators=(",", ":"))) + 1 for e in entries)
    assert size <= 3 * 64 * 1024
    assert entries[0]["run"] == 399 and len(entries) > 150  # the newest kept, trimmed from the oldest
    runs = [e["run"] for e in entries]
    assert runs == sorted(runs, reverse=True) and runs == list(range(399, 399 - len(runs), -1))
    kept = [name for name in __import__("os").listdir(records.localfs_dir) if name.startswith("history.")
            and name != "history.head.p"]
    assert len(kept) <= log.keep_segments


def test_every_entry_is_bounded(records, mutex):
    log = history.StoreHistory(records, mutex)
    log.append({"kind": "ignored", "node": "m" * 100000})
    assert len(log.read()[0]["node"]) == history.MAX_ID


def test_a_damaged_segment_is_skipped_and_a_new_one_started(records, mutex, tmp_path):
    log = history.StoreHistory(records, mutex)
    log.append(entry(1))
    (tmp_path / "edge_ha" / "history.0.p").write_bytes(b"garbage")
    assert log.read() == []
    log.append(entry(2))
    assert [e["run"] for e in log.read()] == [2]
    (tmp_path / "edge_ha" / "history.head.p").write_bytes(b"")
    log.append(entry(3))  # an unreadable head: a new segment, nothing raised
    assert [e["run"] for e in log.read()] == [3]


def test_the_file_log_of_an_earlier_version_is_migrated(records, mutex, tmp_path):
    old = history.HistoryLog(str(tmp_path / "edge_ha" / "reconcile.log"), max_bytes=4096, keep_files=2)
    for i in range(30):
        old.append(entry(i, pad=100))
    before = old.read()
    log = history.StoreHistory(records, mutex, legacy_path=old.path, max_bytes=4096)
    assert log.read() == before  # read from the files until the first append
    log.append(entry(30))
    assert log.read() == [entry(30, 0) | {"pad": ""}] + before
    assert not (tmp_path / "edge_ha" / "reconcile.log").exists()
    assert (tmp_path / "edge_ha" / "reconcile.log.migrated").exists()


def test_concurrent_appends_lose_nothing(records, mutex):
    log = history.StoreHistory(records, mutex)
    threads = [threading.Thread(target=lambda k=k: [log.append(entry(k * 100 + i)) for i in range(20)])
               for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(e["run"] for e in log.read()) == sorted(k * 100 + i for k in range(4) for i in range(20))


def test_counters_only_go_up_and_an_unreadable_record_is_an_error(records, mutex, tmp_path):
    counters = history.StoreCounters(records, mutex)
    assert counters.values() == {}
    assert counters.bump("reconcile_runs") == {"reconcile_runs": 1}
    assert counters.bump("reconcile_runs", "fencing_actions", by=2) == {"reconcile_runs": 3, "fencing_actions": 2}
    with pytest.raises(ValueError, match="only go up"):
        counters.bump("reconcile_runs", by=-1)
    (tmp_path / "edge_ha" / "counters.json.p").write_bytes(b"\x00")
    with pytest.raises(ValueError, match="unreadable"):
        counters.bump("reconcile_runs")
    with pytest.raises(ValueError, match="unreadable"):
        counters.values()


def test_counters_file_of_an_earlier_version_is_migrated(records, mutex, tmp_path):
    (tmp_path / "edge_ha").mkdir(exist_ok=True)
    history.Counters(str(tmp_path / "edge_ha" / "counters.json")).bump("reconcile_runs", by=41)
    counters = history.StoreCounters(records, mutex)
    assert counters.bump("reconcile_runs") == {"reconcile_runs": 42}


def test_concurrent_bumps_are_all_counted(records, mutex):
    counters = history.StoreCounters(records, mutex)
    threads = [threading.Thread(target=lambda: [counters.bump("n") for _ in range(25)]) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert counters.values() == {"n": 100}
