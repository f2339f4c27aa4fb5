"""The runner's state helpers on the shared store (issue #16): records, the reconcile lease, pending triggers."""

import json
import random
import threading
import time

import pytest

from edge_ha_core import lease as edge_lease
from edge_ha_core import store
from tests.support.modload import load
from tests.support.builders import master_opts

runner = load("_runners/edge.py")


@pytest.fixture(name="master")
def _master(tmp_path, monkeypatch):
    """The runner with a master's opts (cachedir in tmp_path); its process state reset."""
    opts = master_opts(tmp_path, edge_ha_lease_ttl=30)
    monkeypatch.setattr(runner, "__opts__", opts, raising=False)
    monkeypatch.setattr(runner, "_PROCESS", {"lock": runner._PROCESS["lock"]})  # pylint: disable=protected-access
    return {"dir": tmp_path, "opts": opts}


def test_records_go_through_salt_localfs_with_checksums(master):
    runner._save_json("rollout_failed.json", {"edge2": {"hash": "a" * 16}})  # pylint: disable=protected-access
    assert (master["dir"] / "edge_ha" / "rollout_failed.json.p").is_file()
    assert runner._load_json("rollout_failed.json", {}) == {"edge2": {"hash": "a" * 16}}  # pylint: disable=protected-access
    assert runner._load_json("owners.json", {"none": True}) == {"none": True}  # pylint: disable=protected-access


def test_files_of_the_previous_version_are_read_and_migrated(master, monkeypatch):
    directory = master["dir"] / "edge_ha"
    directory.mkdir()
    store.dump(str(directory / "drained.json"), {"edge3": {"reason": "r", "since": 2.0, "source": "manual"}})
    (directory / "nodes.json").write_text(json.dumps(["edge1", "edge2"]))  # the old format: a list
    assert runner._drained({}) == {"edge3": {"reason": "r", "since": 2.0, "source": "manual"}}  # pylint: disable=protected-access
    assert (directory / "drained.json.migrated").exists()
    # the old list is not trusted as fresh: the names come from the model
    monkeypatch.setattr(runner, "_desired", lambda refresh=False: {"model": {"nodes": {"edge9": {}}}})
    assert runner._edge_node_names() == {"edge9"}  # pylint: disable=protected-access


def test_node_names_record_is_fresh_for_its_ttl(master, monkeypatch):
    runner._save_nodes({"nodes": {"edge2": {}, "edge1": {}}})  # pylint: disable=protected-access
    assert runner._edge_node_names() == {"edge1", "edge2"}  # pylint: disable=protected-access
    saved = runner._load_json("nodes.json", None)  # pylint: disable=protected-access
    runner._save_nodes({"nodes": {"edge2": {}, "edge1": {}}})  # pylint: disable=protected-access
    assert runner._load_json("nodes.json", None) == saved, "not rewritten within half its TTL"  # pylint: disable=protected-access
    monkeypatch.setattr(runner.time, "time", lambda: saved["saved"] + runner.NODES_CACHE_TTL + 1)
    monkeypatch.setattr(runner, "_desired", lambda refresh=False: {"model": {"nodes": {"edge7": {}}}})
    assert runner._edge_node_names() == {"edge7"}  # pylint: disable=protected-access


def test_one_lease_at_a_time_and_it_frees_itself(master):
    inside, order = threading.Event(), []

    def first():
        with runner._locked(what="drain edge1"):  # pylint: disable=protected-access
            inside.set()
            time.sleep(0.5)
            order.append("first done")

    thread = threading.Thread(target=first)
    thread.start()
    inside.wait(5)
    with pytest.raises(runner.CommandExecutionError, match="held by .* \\(drain edge1\\)"):
        with runner._locked(timeout=0.1):  # pylint: disable=protected-access
            pass
    with runner._locked(timeout=10) as holding:  # pylint: disable=protected-access
        order.append("second")
        assert holding.generation
    thread.join()
    assert order == ["first done", "second"]
    record, _ = edge_lease.parse((master["dir"] / "edge_ha" / "reconcile.lease").read_text())
    assert edge_lease.is_free(record)


def test_an_expired_lease_of_a_dead_master_is_taken_over(master):
    path = master["dir"] / "edge_ha" / "reconcile.lease"
    path.parent.mkdir()
    dead = edge_lease.Lease("tok", 41, time.time() - 1, time.time() - 31, "master-gone", 1234, "1", "reconcile")
    path.write_text(dead.to_text())
    with runner._locked(timeout=1) as holding:  # pylint: disable=protected-access
        assert holding.generation > 41


def test_writes_stop_once_the_lease_is_lost(master):
    with pytest.raises(edge_lease.LeaseLost):
        with runner._locked():  # pylint: disable=protected-access
            runner._save_json("drained.json", {"edge1": {}})  # pylint: disable=protected-access
            path = master["dir"] / "edge_ha" / "reconcile.lease"
            other = edge_lease.Lease("other", 10**15, time.time() + 60, time.time(), "master2", 1, "", "reconcile")
            path.write_text(other.to_text())  # master 2 took it (we were paused past the TTL)
            holding = runner._HOLDING.get()  # pylint: disable=protected-access
            with pytest.raises(edge_lease.LeaseLost):
                edge_lease.renew(holding.backend, holding.claimant, 30)
            holding.lost = "taken by master2"  # what the renewal thread records
            runner._save_json("drained.json", {})  # pylint: disable=protected-access
    assert runner._load_json("drained.json", None) == {"edge1": {}}, "the write after the loss did not happen"  # pylint: disable=protected-access
    record, _ = edge_lease.parse((master["dir"] / "edge_ha" / "reconcile.lease").read_text())
    assert record.token == "other", "master 2's lease is left alone"


def test_triggers_coalesce_while_the_lease_is_held(master, monkeypatch):
    runs = []
    monkeypatch.setattr(runner, "_reconcile", lambda reason, refresh=False: runs.append(reason))
    monkeypatch.setattr(runner, "FOLLOW_UP_QUIET", 0.01)
    with runner._locked():  # pylint: disable=protected-access
        runner._records().save(runner.PENDING, {"source": "salt/beacon/edge1/vrrp/", "time": time.time()})  # pylint: disable=protected-access
        assert runner._run_pending("x") == {"queued": True, "source": "x", "runs": 0}  # pylint: disable=protected-access
        runner._records().save(runner.PENDING, {"source": "salt/beacon/edge2/vrrp/", "time": time.time()})  # pylint: disable=protected-access
    assert runner._run_pending() == {"queued": False, "source": "", "runs": 1}  # pylint: disable=protected-access
    assert runs == ["salt/beacon/edge2/vrrp/"]
    assert runner._pending() is None  # pylint: disable=protected-access


def test_an_unsupported_backend_refuses_the_lock_with_its_name(master):
    master["opts"]["edge_ha_cache"] = "consul"
    with pytest.raises(runner.CommandExecutionError, match="'consul' has no lease primitive"):
        with runner._locked():  # pylint: disable=protected-access
            pass


def test_concurrent_triggers_in_one_process_leave_the_lease_free(master, monkeypatch):
    # the reactor runs runners in a thread pool: a burst of triggers there, with drains taking the lease between
    monkeypatch.setattr(runner, "FOLLOW_UP_QUIET", 0.02)
    monkeypatch.setattr(runner, "FOLLOW_UP_MAX_WAIT", 0.1)
    master["opts"]["edge_ha_lease_ttl"] = 0.3  # renewed every 0.1 s while a run lasts
    runs, errors, inside = [], [], []

    def reconcile(reason="", refresh=False):  # pylint: disable=unused-argument
        inside.append(1)
        assert len(inside) == 1, "two runs at once"
        time.sleep(random.random() * 0.03)
        runner._save_json("owners.json", {"reason": reason})  # pylint: disable=protected-access
        inside.pop()
        runs.append(reason)

    monkeypatch.setattr(runner, "_reconcile", reconcile)

    def burst(i):
        for j in range(8):
            try:
                runner._records().save(runner.PENDING, {"source": f"t{i}.{j}", "time": time.time()})  # pylint: disable=protected-access
                runner._run_pending(f"t{i}.{j}")  # pylint: disable=protected-access
                if j % 4 == 0:
                    with runner._locked(timeout=30, what=f"drain {i}"):  # pylint: disable=protected-access
                        time.sleep(0.005)
            except Exception as exc:  # pylint: disable=broad-except
                errors.append(repr(exc))

    threads = [threading.Thread(target=burst, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert runs and runner._pending() is None  # pylint: disable=protected-access
    assert edge_lease.is_free(edge_lease.parse((master["dir"] / "edge_ha" / "reconcile.lease").read_text())[0])
    time.sleep(0.2)
    assert not [t for t in threading.enumerate() if t.name == "edge-ha-lease"]

