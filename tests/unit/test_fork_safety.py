"""A job process the minion forks while the report sender thread holds a cached_property lock does not hang."""

import functools
import os
import sys
import threading
import time

import pytest
import salt.cache

from tests.support.modload import load

edge_node = load("_modules/edge_node.py")

PROPERTY = vars(salt.cache.Cache)["modules"]
needs_lock = pytest.mark.skipif(not hasattr(PROPERTY, "lock"),
                                reason="no lock to inherit: Cache.modules is a plain property (Salt < 3008) or "
                                       "cached_property has no lock (Python >= 3.12)")


def _child_can_take_the_lock():
    """Fork while another thread holds the descriptor's lock; True if the child takes it within 2 s."""
    held, release = threading.Event(), threading.Event()

    def holder():
        with PROPERTY.lock:  # as a thread computing Cache.modules when the minion forks
            held.set()
            release.wait(10)

    thread = threading.Thread(target=holder, daemon=True)
    thread.start()
    held.wait(5)
    pid = os.fork()
    if pid == 0:  # the child: one thread, as a job process
        code = 0 if PROPERTY.lock.acquire(timeout=2) else 1
        os._exit(code)  # pylint: disable=protected-access
    release.set()
    thread.join()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


@needs_lock
def test_a_child_forked_while_a_thread_holds_the_lock_gets_a_fresh_one(monkeypatch):
    monkeypatch.delattr(os, "_edge_ha_fork_safe", raising=False)
    edge_node._register_fork_safety()
    assert _child_can_take_the_lock()
    edge_node._register_fork_safety()  # a second registration (the loader loads modules again) adds nothing
    assert os._edge_ha_fork_safe is True  # pylint: disable=protected-access


@needs_lock
def test_only_cached_property_locks_of_salt_classes_are_replaced():
    before = PROPERTY.lock
    edge_node._fork_safe_locks()
    assert PROPERTY.lock is not before and isinstance(PROPERTY, functools.cached_property)
    assert "salt.cache" in sys.modules


def test_a_fork_waits_while_the_report_sender_talks_to_the_master(monkeypatch):
    # a job process forked while the sender thread was inside OpenSSL hung at its first hash (lab, py-spy)
    monkeypatch.delattr(os, "_edge_ha_fork_safe", raising=False)
    edge_node._register_fork_safety()
    inside, times = threading.Event(), {}

    def sender():
        with edge_node._fork_guard():
            inside.set()
            time.sleep(0.5)  # as _send_mine, talking to the master
            times["sent"] = time.monotonic()

    thread = threading.Thread(target=sender, daemon=True)
    thread.start()
    inside.wait(5)
    pid = os.fork()
    if pid == 0:  # the child's guard is fresh: a thread of its own gets in and out
        with edge_node._fork_guard():  # pylint: disable=protected-access
            pass
        os._exit(0)  # pylint: disable=protected-access
    forked = time.monotonic()
    thread.join()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert forked >= times["sent"], "the fork did not wait for the sender"
    with edge_node._fork_guard():  # pylint: disable=protected-access  # usable again in the parent
        pass


def test_a_fork_waits_at_most_a_second_for_a_sender_stuck_on_a_master():
    guard = edge_node._ForkGuard(wait=0.2)  # pylint: disable=protected-access
    with guard.inside():
        began = time.monotonic()
        guard.before_fork()
        assert 0.15 <= time.monotonic() - began < 2
        guard.after_fork_in_parent()
