"""The runner's minion jobs end: a job whose process hangs on the minion does not hold a reconcile for ever."""

import itertools
import time

from tests.support.modload import load

runner = load("_runners/edge.py")


class Event:
    def __init__(self):
        self.cpub = False
        self.closed = 0

    def close_pub(self):
        self.closed += 1


class Client:
    """LocalClient's run_job/get_iter_returns as the runner uses them: ``returns`` come, then ``None``
    (nothing yet) for as long as Salt's find_job says the job still runs (``hung``: for ever)."""

    def __init__(self, minions, returns, hung=False):
        self.event = Event()
        self.minions, self.returns, self.hung = minions, returns, hung
        self.published = []

    def run_job(self, tgt, fun, arg, tgt_type, timeout=None, listen=False):
        self.published.append((tgt, fun, arg, tgt_type))
        return {"jid": "20261201000000000000", "minions": list(self.minions)}

    def get_iter_returns(self, jid, minions, timeout=None, tgt=None, tgt_type=None, block=True):
        for minion, ret in self.returns.items():
            yield {minion: {"ret": ret, "retcode": 0}}
        if self.hung:
            for _ in itertools.count():
                time.sleep(0.01)
                yield None


def test_returns_of_every_minion_and_false_for_one_that_did_not_return():
    client = Client(["edge1", "edge2", "edge3"], {"edge1": {"valid": True}, "edge3": True})
    got = runner._collect_returns(client, ["edge1", "edge2", "edge3"], "keepalived.plan", [], "list", 10)
    assert got == {"edge1": {"valid": True}, "edge2": False, "edge3": True}
    assert client.published == [(["edge1", "edge2", "edge3"], "keepalived.plan", [], "list")]
    assert client.event.closed == 1  # the subscription it opened is closed again


def test_a_job_that_hangs_on_the_minion_is_given_up_after_its_grace(monkeypatch):
    monkeypatch.setattr(runner, "JOB_MIN_WAIT", 0.3)
    monkeypatch.setattr(runner, "JOB_GRACE", 3)
    client = Client(["edge1", "edge2"], {"edge2": "ok"}, hung=True)
    start = time.monotonic()
    got = runner._collect_returns(client, ["edge1", "edge2"], "keepalived.plan", [], "list", 0.1)
    took = time.monotonic() - start
    assert got == {"edge1": False, "edge2": "ok"}
    assert 0.3 <= took < 5, took


def test_nothing_published_is_no_returns():
    client = Client([], {})
    client.run_job = lambda *a, **k: {}
    assert runner._collect_returns(client, "edge1", "test.ping", [], "glob", 5) == {}
