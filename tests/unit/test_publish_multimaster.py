"""edge_node.publish with Salt multi-master: one sender per configured master (issue #16)."""

import threading
import time

import salt.config

from tests.support.modload import load

edge_node = load("_modules/edge_node.py", name="edgeha_test_publish_mm")


def _minion_opts(tmp_path, masters):
    conf = tmp_path / "minion"
    conf.write_text("id: edge1\nmaster: [" + ", ".join(masters) + "]\n")
    opts = dict(salt.config.minion_config(str(conf), cache_minion_id=False))
    opts.update(master=masters[0], multimaster=True, master_uri=f"tcp://{masters[0]}:4506")
    return opts


def test_a_multi_master_minion_reports_to_every_configured_master(tmp_path, monkeypatch):
    opts = _minion_opts(tmp_path, ["198.18.0.2", "198.18.0.3"])
    sent, done = [], threading.Event()

    def fake_send(target, load, timeout):
        sent.append((target["master_uri"], load["data"][edge_node.MINE_KEY]["n"]))
        if len(sent) == 2:
            done.set()
        return True

    monkeypatch.setattr(edge_node, "__opts__", opts, raising=False)
    monkeypatch.setattr(edge_node, "__context__", {}, raising=False)
    monkeypatch.setattr(edge_node, "report", lambda probe=False: {"n": 1})
    monkeypatch.setattr(edge_node, "_send_mine", fake_send)
    assert edge_node.publish()["published"]
    assert done.wait(5)
    assert sorted(sent) == [("tcp://198.18.0.2:4506", 1), ("tcp://198.18.0.3:4506", 1)]


def test_a_master_that_does_not_answer_delays_no_other(tmp_path, monkeypatch):
    opts = _minion_opts(tmp_path, ["198.18.0.2", "198.18.0.3"])
    release, got = threading.Event(), []

    def fake_send(target, load, timeout):
        if target["master"] == "198.18.0.2":
            release.wait(5)  # master 1 is down: each try waits for its timeout
            return False
        got.append(load["data"][edge_node.MINE_KEY]["n"])
        return True

    state = {"n": 0}
    monkeypatch.setattr(edge_node, "__opts__", opts, raising=False)
    context = {}
    monkeypatch.setattr(edge_node, "__context__", context, raising=False)
    monkeypatch.setattr(edge_node, "report", lambda probe=False: {"n": state["n"]})
    monkeypatch.setattr(edge_node, "report_digest", lambda data: f"d{data['n']}")
    monkeypatch.setattr(edge_node, "_send_mine", fake_send)
    try:
        for n in range(3):
            state["n"] = n
            assert edge_node.publish()["published"]
            deadline = time.monotonic() + 5
            while got[-1:] != [n] and time.monotonic() < deadline:
                time.sleep(0.01)
            assert got[-1:] == [n], got
    finally:
        release.set()
        # the senders end before the next test patches _send_mine (a late one would send through its patch)
        for slot in context["edge_ha_publish"].get("senders", {}).values():
            thread = slot.get("thread")
            if thread is not None:
                thread.join(10)


def test_a_single_master_minion_reports_to_its_master_only(monkeypatch):
    sent, done = [], threading.Event()
    monkeypatch.setattr(edge_node, "__opts__", {"id": "edge1", "master": "198.18.0.2"}, raising=False)
    monkeypatch.setattr(edge_node, "__context__", {}, raising=False)
    monkeypatch.setattr(edge_node, "report", lambda probe=False: {"n": 1})
    monkeypatch.setattr(edge_node, "_send_mine", lambda target, load, timeout: sent.append(target) or done.set())
    assert edge_node.publish()["published"]
    assert done.wait(5)
    time.sleep(0.2)
    assert [t["master"] for t in sent] == ["198.18.0.2"]
