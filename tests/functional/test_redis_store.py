"""
The controller's state on a shared store (issue #16): a real redis-server
(Debian's package; lab/bootstrap.sh installs it), started here on a unix
socket in the test's directory and stopped by its pid, also on failure.
Two masters are two copies of the runner with their own cachedir and
process state, pointed at the same redis through Salt's ``cache.redis.*``
settings.
"""

import os
import shutil
import subprocess
import sys
import threading
import time

import pytest
import salt.cache

from edge_ha_core import lease as edge_lease
from edge_ha_core import state as edge_state
from tests.support import builders
from tests.support.builders import report
from tests.support.builders import typed
from tests.support.modload import load


pytestmark = [
    pytest.mark.skipif(not shutil.which("redis-server"), reason="redis-server is not installed (make bootstrap)"),
]

redis = pytest.importorskip("redis")


def _forget_salts_redis_client():
    """Salt 3006's and 3007's redis cache keep one client per process (``REDIS_SERVER``, made on first use): a
    master has one server, these tests start one per test. Salt 3008 has no such global."""
    for name, module in list(sys.modules.items()):
        if name.endswith("cache.redis_cache") and getattr(module, "REDIS_SERVER", None) is not None:
            module.REDIS_SERVER = None


@pytest.fixture(name="redis_socket")
def _redis_socket(tmp_path):
    _forget_salts_redis_client()
    sock = tmp_path / "redis.sock"
    proc = subprocess.Popen(["redis-server", "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
                             "--save", "", "--appendonly", "no", "--dir", str(tmp_path), "--daemonize", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                if sock.exists() and redis.Redis(unix_socket_path=str(sock)).ping():
                    break
            except redis.exceptions.ConnectionError:
                pass
            assert proc.poll() is None, "redis-server exited"
            assert time.monotonic() < deadline, "redis-server did not come up"
            time.sleep(0.05)
        yield {"path": str(sock), "proc": proc}
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, 15)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, 9)
                proc.wait()


def redis_master_opts(tmp_path, name, sock):
    cachedir = tmp_path / name
    cachedir.mkdir()
    return builders.master_opts(cachedir, edge_ha_cache="redis", edge_ha_lease_ttl=2,
                                **{"cache.redis.unix_socket_path": sock, "cache.redis.db": 0})


@pytest.fixture(name="masters")
def _masters(tmp_path, redis_socket, monkeypatch):
    out = []
    for name in ("master1", "master2"):
        runner = load("_runners/edge.py", name=f"edgeha_test_redis_{name}")
        monkeypatch.setattr(runner, "__opts__", redis_master_opts(tmp_path, name, redis_socket["path"]), raising=False)
        monkeypatch.setattr(runner, "_PROCESS", {"lock": threading.Lock()})
        out.append(runner)
    return out


def test_records_through_salt_redis_cache_are_one_state_for_two_masters(masters, tmp_path):
    one, two = masters
    one._save_json("drained.json", {"edge1": {"reason": "kernel", "since": 1.0, "source": "manual"}})  # pylint: disable=protected-access
    assert two._drained({}) == {"edge1": {"reason": "kernel", "since": 1.0, "source": "manual"}}  # pylint: disable=protected-access
    assert not list((tmp_path / "master1" / "edge_ha").glob("*.p")), "nothing in the local cachedir"
    two._save_json("drained.json", {})  # pylint: disable=protected-access
    assert one._drained({}) == {}  # pylint: disable=protected-access


def test_a_damaged_value_in_redis_is_reported(redis_socket, tmp_path):
    opts = redis_master_opts(tmp_path, "m", redis_socket["path"])
    records = edge_state.StateStore(salt.cache.Cache(opts, driver="redis"), driver="redis")
    records.save("drained.json", {"edge2": {}})
    cache = salt.cache.Cache(opts, driver="redis")
    cache.store("edge_ha", "drained.json", cache.fetch("edge_ha", "drained.json").replace("edge2", "edge3"))
    loaded = records.load("drained.json", {})
    assert loaded.data is None and "checksum mismatch" in loaded.error


def test_the_store_down_is_an_error_not_nothing_drained(redis_socket, masters):
    one, _ = masters
    one._save_json("drained.json", {"edge1": {"reason": "r", "since": 1.0, "source": "manual"}})  # pylint: disable=protected-access
    proc = redis_socket["proc"]
    os.kill(proc.pid, 15)
    proc.wait(10)
    loaded = one._records().load("drained.json", {})  # pylint: disable=protected-access
    assert loaded.data is None and "cannot be read" in loaded.error
    # read as "still drained" from the nodes' own lists, never as "nothing drained"
    reports = typed({"edge1": report("edge1", drained=["edge1"]), "edge2": report("edge2", drained=["edge1"]),
                     "edge3": None})
    assert list(one._drained(reports)) == ["edge1"]  # pylint: disable=protected-access
    assert "cannot be read" in one._standing_notes()[0]  # pylint: disable=protected-access
    started = time.monotonic()
    with pytest.raises(one.CommandExecutionError, match="lease cannot be taken"):
        with one._locked(timeout=1):  # pylint: disable=protected-access
            pass
    assert time.monotonic() - started < 2, "the lease fails fast when the store is down"


def test_one_reconcile_at_a_time_across_two_masters(masters):
    one, two = masters
    inside, order = threading.Event(), []

    def first():
        with one._locked(what="drain edge1"):  # pylint: disable=protected-access
            inside.set()
            time.sleep(3)  # longer than the 2 s TTL: kept by the renewal thread
            order.append("master1 done")

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert inside.wait(10)
        with pytest.raises(two.CommandExecutionError, match=r"held by .*\(drain edge1\)"):
            with two._locked(timeout=0.5):  # pylint: disable=protected-access
                pass
        with two._locked(timeout=20):  # pylint: disable=protected-access
            order.append("master2")
    finally:
        thread.join(30)
    assert order == ["master1 done", "master2"]


def test_a_dead_masters_lease_frees_itself_by_the_servers_clock(redis_socket):
    client = redis.Redis(unix_socket_path=redis_socket["path"])
    backend = edge_lease.RedisBackend(client, "edge_ha:lease:reconcile")
    dead = edge_lease.Claimant("tok-dead", "master-that-died", 999999, "1", "drain edge2")
    got = edge_lease.try_acquire(backend, dead, 1.0)
    assert got.lease
    survivor = edge_lease.Holding(backend, 1.0, what="reconcile",
                                  claimant=edge_lease.Claimant("tok-2", "master2", os.getpid(), "", "reconcile"))
    with pytest.raises(edge_lease.LeaseError, match="held by master-that-died"):
        survivor.acquire(0.3)
    attempt = survivor.acquire(5)  # no renewal from the dead one: expired after its TTL
    try:
        assert "expired" in attempt.why and attempt.lease.generation > got.lease.generation
        with pytest.raises(edge_lease.LeaseLost):
            edge_lease.renew(backend, dead, 1.0)
        assert not edge_lease.release(backend, dead)
    finally:
        assert survivor.release()
    assert edge_lease.is_free(edge_lease.parse(backend.read())[0])


def test_redis_cas_is_atomic_under_contention(redis_socket):
    path = redis_socket["path"]
    winners = []

    def claim(i):
        backend = edge_lease.RedisBackend(redis.Redis(unix_socket_path=path), "edge_ha:lease:race")
        if edge_lease.try_acquire(backend, edge_lease.Claimant(f"t{i}", f"m{i}", 1, "", ""), 30,
                                  alive=lambda pid, start: True).lease:
            winners.append(i)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(winners) == 1
