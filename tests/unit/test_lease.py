"""The reconcile lease (issue #16): the pure decisions one predicate at a time, then the localfs primitive."""

import gc
import multiprocessing
import os
import subprocess
import sys
import time

import pytest

from edge_ha_core import lease as L

ME = L.Claimant("tok-me", "master1", 100, "555", "reconcile")
OTHER = L.Claimant("tok-other", "master2", 200, "777", "drain edge1")


def held(claimant, generation=5, expires=100.0, acquired=90.0):
    return L.Lease(claimant.token, generation, expires, acquired, claimant.host, claimant.pid, claimant.pid_start,
                   claimant.what)


def never_alive(pid, start):  # pylint: disable=unused-argument
    return False


def always_alive(pid, start):  # pylint: disable=unused-argument
    return True


# ---------------------------------------------------------------- predicates


def test_is_free():
    assert L.is_free(None)
    assert L.is_free(L.Lease())
    assert L.is_free(L.released(held(OTHER)))
    assert not L.is_free(held(OTHER))


def test_expired_is_by_the_store_clock_and_only_for_a_held_lease():
    lease = held(OTHER, expires=100.0)
    assert not L.expired(lease, 99.9)
    assert L.expired(lease, 100.0)
    assert L.expired(lease, 150.0)
    assert not L.expired(L.released(lease), 150.0)  # free is not "expired"
    assert not L.expired(None, 150.0)


def test_ours_is_by_token_only():
    assert L.ours(held(ME), ME)
    assert not L.ours(held(OTHER), ME)
    same_process_other_acquisition = L.Claimant("tok-2", ME.host, ME.pid, ME.pid_start)
    assert not L.ours(held(ME), same_process_other_acquisition)
    assert not L.ours(L.released(held(ME)), ME)  # released: nobody's
    assert not L.ours(None, ME)


def test_holder_gone_here_only_on_the_same_host_and_a_dead_process():
    lease = held(L.Claimant("t", "master1", 4242, "1"))
    assert L.holder_gone_here(lease, "master1", never_alive)
    assert not L.holder_gone_here(lease, "master1", always_alive)
    assert not L.holder_gone_here(lease, "master2", never_alive)  # another host: only its expiry frees it
    assert not L.holder_gone_here(L.released(lease), "master1", never_alive)
    assert not L.holder_gone_here(dataclass_replace(lease, pid=0), "master1", never_alive)


def dataclass_replace(lease, **kw):
    import dataclasses  # pylint: disable=import-outside-toplevel

    return dataclasses.replace(lease, **kw)


def test_next_generation_only_goes_up_even_without_a_record():
    assert L.next_generation(held(OTHER, generation=5), 0.001) == 6
    assert L.next_generation(held(OTHER, generation=5), 1000.0) == 1000000  # the store clock in ms when higher
    assert L.next_generation(None, 2.0) == 2000
    assert L.next_generation(None, 0.0) == 1
    big = held(OTHER, generation=10**13)
    assert L.next_generation(big, 2.0) == 10**13 + 1


def test_lease_gone_after_a_ttl_without_renewal():
    assert not L.lease_gone(10.0, 39.9, 30)
    assert L.lease_gone(10.0, 40.0, 30)


# ---------------------------------------------------------------- decide / claimed / released


@pytest.mark.parametrize("current,error,now,alive,take,why", [
    (None, None, 50.0, always_alive, True, "free"),
    (L.released(held(OTHER)), None, 50.0, always_alive, True, "free"),
    (held(ME), None, 50.0, always_alive, True, "ours"),
    (held(OTHER, expires=100.0), None, 50.0, always_alive, False, "held by master2 pid 200"),
    (held(OTHER, expires=100.0), None, 101.0, always_alive, True, "expired 1.0s ago"),
    (held(L.Claimant("t", "master1", 300, "9"), expires=100.0), None, 50.0, never_alive, True, "pid 300 on this host is gone"),
    (held(L.Claimant("t", "master1", 300, "9"), expires=100.0), None, 50.0, always_alive, False, "held by master1 pid 300"),
    (None, "unreadable lease record", 50.0, always_alive, True, "unreadable lease record; taken over"),
])
def test_decide(current, error, now, alive, take, why):
    decision = L.decide(current, error, now, ME, alive)
    assert decision.take is take
    assert why in decision.why


def test_claimed_takes_a_new_generation_or_keeps_ours():
    taken = L.claimed(held(OTHER, generation=5, expires=10.0), ME, 0.002, 30)
    assert (taken.token, taken.generation, taken.expires, taken.acquired) == ("tok-me", 6, 30.002, 0.002)
    assert (taken.host, taken.pid, taken.pid_start, taken.what) == ("master1", 100, "555", "reconcile")
    kept = L.claimed(held(ME, generation=7, acquired=3.0), ME, 0.004, 30)
    assert (kept.generation, kept.acquired, kept.expires) == (7, 3.0, 30.004)


def test_released_keeps_the_generation():
    free = L.released(held(ME, generation=9))
    assert L.is_free(free) and free.generation == 9 and free.expires == 0.0


def test_record_round_trip_and_refusal_of_other_text():
    lease = held(ME)
    assert L.Lease.from_text(lease.to_text()) == lease
    assert L.parse(lease.to_text()) == (lease, None)
    assert L.parse(None) == (None, None)
    for bad in ("", "{", "[]", '{"format": "other"}', '{"format": "salt-edge-ha-lease/1", "generation": "x"}',
                '{"format": "salt-edge-ha-lease/1", "bogus": 1, "token": 3}'):
        current, error = L.parse(bad)
        assert current is None and error.startswith("unreadable lease record")


# ---------------------------------------------------------------- operations, in memory


class MemoryBackend:
    def __init__(self, clock=0.0):
        self.value, self.clock, self.writes = None, clock, 0

    def now(self):
        return self.clock

    def read(self):
        return self.value

    def cas(self, expected, new):
        if self.value != expected:
            return False
        self.value, self.writes = new, self.writes + 1
        return True


def test_acquire_renew_release_and_takeover_after_expiry():
    store = MemoryBackend(1.0)
    got = L.try_acquire(store, ME, 30, always_alive)
    assert got.lease and got.lease.generation == 1000 and got.why == "free"
    assert not L.try_acquire(store, OTHER, 30, always_alive).lease
    store.clock = 20.0
    renewed = L.renew(store, ME, 30)
    assert renewed.expires == 50.0 and renewed.generation == 1000
    store.clock = 50.0  # not renewed in time: OTHER takes it, with the next generation
    taken = L.try_acquire(store, OTHER, 30, always_alive)
    assert taken.lease and taken.lease.generation == 50000 and "expired" in taken.why
    with pytest.raises(L.LeaseLost, match="not ours"):
        L.renew(store, ME, 30)
    assert not L.release(store, ME)  # not ours: untouched
    assert L.parse(store.value)[0].token == "tok-other"
    assert L.release(store, OTHER)
    free = L.parse(store.value)[0]
    assert L.is_free(free) and free.generation == 50000
    again = L.try_acquire(store, ME, 30, always_alive)
    assert again.lease.generation == 50001


def test_renew_of_an_expired_lease_is_lost_even_if_nobody_took_it():
    store = MemoryBackend(1.0)
    L.try_acquire(store, ME, 30, always_alive)
    store.clock = 31.0
    with pytest.raises(L.LeaseLost, match="expired"):
        L.renew(store, ME, 30)


def test_a_race_lost_between_read_and_write_takes_nothing():
    store = MemoryBackend(1.0)

    class Racy(MemoryBackend):
        def cas(self, expected, new):
            store.cas(store.value, held(OTHER).to_text())  # somebody else wrote first
            return store.cas(expected, new)

        def read(self):
            return store.read()

        def now(self):
            return store.now()

    attempt = L.try_acquire(Racy(), ME, 30, always_alive)
    assert attempt.lease is None and "first" in attempt.why


def test_an_unreadable_record_is_taken_over_with_a_generation_from_the_clock():
    store = MemoryBackend(7.5)
    store.value = "garbage"
    got = L.try_acquire(store, ME, 30, always_alive)
    assert got.lease and got.lease.generation == 7500 and "unreadable" in got.why


def until(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_holding_waits_renews_and_reports_loss():
    store = MemoryBackend(1.0)
    store.value = held(OTHER, expires=100.0).to_text()
    holding = L.Holding(store, 30, claimant=ME, alive=always_alive, poll=0.001)
    ticks = iter(range(1000))
    with pytest.raises(L.LeaseError, match="not free within 2s: held by master2"):
        holding.acquire(2, sleep=lambda s: None, clock=lambda: next(ticks))
    store.clock = 100.0
    holding = L.Holding(store, 0.06, claimant=ME, alive=always_alive)
    holding.acquire(1)
    try:
        holding.check()
        writes = store.writes
        assert until(lambda: store.writes > writes)  # renewed by the thread
        holding.check()
        store.value = held(OTHER, expires=10**9).to_text()  # taken away (as if we had paused)
        assert until(lambda: holding.lost)
        with pytest.raises(L.LeaseLost):
            holding.check()
    finally:
        assert not holding.release()  # not ours any more: the other holder's record is left alone
    assert L.parse(store.value)[0].token == "tok-other"


def test_holding_release_frees_it():
    store = MemoryBackend(1.0)
    holding = L.Holding(store, 30, claimant=ME, alive=always_alive)
    holding.acquire(0)
    assert holding.generation == 1000
    assert holding.release()
    assert L.is_free(L.parse(store.value)[0])
    with pytest.raises(L.LeaseLost):
        holding.check()


def test_a_holder_dropped_without_release_frees_the_lease():
    # the CI hang of stop 19: a lease renewed for minutes by its thread after its reconcile had finished
    store = MemoryBackend(1.0)
    holding = L.Holding(store, 0.06, claimant=ME, alive=always_alive)
    holding.acquire(0)
    thread = holding._thread  # pylint: disable=protected-access
    writes = store.writes
    assert until(lambda: store.writes > writes)  # renewed while its holder exists
    del holding
    gc.collect()
    assert until(lambda: not thread.is_alive(), 5)
    assert L.is_free(L.parse(store.value)[0])


# ---------------------------------------------------------------- processes and the localfs primitive


def test_process_alive_tells_a_reused_pid_from_the_process():
    me = os.getpid()
    assert L.process_alive(me, L.process_start(me))
    assert not L.process_alive(me, "1")  # same pid, another start time
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not L.process_alive(proc.pid, "")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert L.process_alive(proc.pid, L.process_start(proc.pid))
        start = L.process_start(proc.pid)
        proc.kill()
        deadline = time.monotonic() + 10
        while L.process_start(proc.pid) is not None and time.monotonic() < deadline:  # a zombie until reaped
            time.sleep(0.01)
        assert not L.process_alive(proc.pid, start)
    finally:
        proc.kill()
        proc.wait()


def test_file_backend_cas(tmp_path):
    backend = L.FileBackend(str(tmp_path / "x.lease"))
    assert backend.read() is None
    assert backend.cas(None, "a")
    assert not backend.cas(None, "b")
    assert backend.cas("a", "b") and backend.read() == "b"
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def _contend(path, rounds, out):
    backend = L.FileBackend(path)
    held_by_me = 0
    for _ in range(rounds):
        holding = L.Holding(backend, 30, what=f"pid {os.getpid()}")
        holding.acquire(30, sleep=lambda s: time.sleep(0.001))
        # inside: nobody else may be here
        marker = path + ".inside"
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        os.close(fd)
        time.sleep(0.001)
        os.unlink(marker)
        held_by_me += 1
        holding.release()
    out.put(held_by_me)


def test_file_backend_mutual_exclusion_between_processes(tmp_path):
    path = str(tmp_path / "reconcile.lease")
    out = multiprocessing.get_context("fork").Queue()
    procs = [multiprocessing.get_context("fork").Process(target=_contend, args=(path, 25, out)) for _ in range(4)]
    for proc in procs:
        proc.start()
    try:
        for proc in procs:
            proc.join(60)
        assert [proc.exitcode for proc in procs] == [0, 0, 0, 0]
        assert sorted(out.get(timeout=5) for _ in procs) == [25, 25, 25, 25]
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join()
    final = L.parse(L.FileBackend(path).read())[0]
    assert L.is_free(final)


def test_a_killed_holder_on_this_host_frees_the_lease_at_once(tmp_path):
    path = str(tmp_path / "reconcile.lease")
    code = ("import sys, time; sys.path.insert(0, sys.argv[2]); from edge_ha_core import lease as L; "
            "h = L.Holding(L.FileBackend(sys.argv[1]), 3600); h.acquire(5); print('held', flush=True); time.sleep(60)")
    core = os.path.dirname(os.path.dirname(L.__file__))
    proc = subprocess.Popen([sys.executable, "-c", code, path, core], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        other = L.Holding(L.FileBackend(path), 3600, what="after the crash")
        with pytest.raises(L.LeaseError, match="held by"):
            other.acquire(0.2)
        proc.kill()
        proc.wait(10)
        attempt = other.acquire(5)
        assert "is gone" in attempt.why
        other.release()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def test_backend_for_names_the_supported_drivers(tmp_path):
    assert isinstance(L.backend_for("localfs", {}, str(tmp_path), "reconcile"), L.FileBackend)
    with pytest.raises(L.UnsupportedBackend, match="consul"):
        L.backend_for("consul", {}, str(tmp_path), "reconcile")
    with pytest.raises(L.UnsupportedBackend, match="cluster"):
        L.backend_for("redis", {"cache.redis.cluster_mode": True}, str(tmp_path), "reconcile")
