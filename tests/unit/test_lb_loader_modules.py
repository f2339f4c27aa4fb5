"""The thin loader modules of issue #15: the edge_ha_lb ext_pillar and the edge_ha_services engine."""

import copy

import pytest

from edge_ha_core import model as edge_ha
from tests.support.builders import example_pillar, master_opts
from tests.support.modload import load

ext = load("_pillar/edge_ha_lb.py")
engine = load("_engines/edge_ha_services.py")

POOLS = {"public": {"addresses": ["203.0.113.0/29"], "virtual_router_ids": "100-107"}}


@pytest.fixture
def opts(tmp_path, monkeypatch):
    opts = master_opts(tmp_path)
    monkeypatch.setattr(ext, "__opts__", opts, raising=False)
    (tmp_path / "edge_ha").mkdir()
    return opts


def record(opts, instances):
    ext.records(opts).save(ext.RECORD, {"instances": instances})


def test_ext_pillar_merges_recorded_instances_only_with_address_pools(opts):
    data = example_pillar()
    data["address_pools"] = copy.deepcopy(POOLS)
    inst = {"virtual_router_id": 100, "virtual_ipaddress": ["203.0.113.0/32"], "address_pool": "public"}
    assert ext.ext_pillar("edge1", {"edge_ha": data}) == {}  # no record yet
    record(opts, {"lb_public_100_v4": inst, "lb_stale_101_v4": dict(inst, address_pool="gone")})
    assert ext.ext_pillar("edge1", {"edge_ha": data}) == {"edge_ha": {"vrrp_instances": {"lb_public_100_v4": inst}}}
    assert ext.ext_pillar("edge1", {"edge_ha": example_pillar()}) == {}
    assert ext.ext_pillar("client", {}) == {}
    merged = copy.deepcopy(data)
    merged["vrrp_instances"].update(ext.ext_pillar("edge1", {"edge_ha": data})["edge_ha"]["vrrp_instances"])
    assert edge_ha.validate_model(merged) == []


def test_ext_pillar_reads_a_damaged_record_as_nothing(opts, tmp_path):
    data = example_pillar()
    data["address_pools"] = copy.deepcopy(POOLS)
    (tmp_path / "edge_ha" / "lb_instances.json.p").write_bytes(b"\x00not a record")
    assert ext.ext_pillar("edge1", {"edge_ha": data}) == {}
    assert ext.records(opts).load(ext.RECORD, {}).error  # damaged, not "nothing recorded"


class FakeK8s(dict):
    def __init__(self, answers):
        super().__init__()
        self.answers = list(answers)
        self.calls = []
        self["edge_k8s.load_balancer_services"] = lambda **kw: self.next("list", kw)
        self["edge_k8s.watch_load_balancer_services"] = lambda rv, **kw: self.next("watch", dict(kw, rv=rv))

    def next(self, what, kw):
        self.calls.append((what, kw.get("rv")))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_engine_lists_watches_fires_and_lists_again(tmp_path):
    opts = master_opts(tmp_path)
    fired = []
    w = engine._Watcher(opts, timeout=1, resync=0, fire=lambda data, tag: fired.append((tag, data["why"])))
    assert w.step() == engine.IDLE and fired == []  # no model yet
    data = example_pillar()
    data["address_pools"] = POOLS
    ext.records(master_opts(tmp_path)).save("desired.json", {"model": edge_ha.normalize(data)})
    w.k8s = FakeK8s([
        {"resource_version": "10", "services": []},
        {"events": [], "resource_version": "10", "expired": False},
        {"events": [{"type": "ADDED", "namespace": "a", "name": "web"}], "resource_version": "12", "expired": False},
        {"events": [], "resource_version": "12", "expired": True},
        {"resource_version": "20", "services": [{}]},
        OSError("unreachable: no route"),
        {"resource_version": "21", "services": []},
    ])
    steps = [w.step() for _ in range(7)]
    assert w.k8s.calls == [("list", None), ("watch", "10"), ("watch", "10"), ("watch", "12"), ("list", None),
                           ("watch", "20"), ("list", None)]
    assert [why for _, why in fired] == ["list", "change", "list", "list"]
    assert {tag for tag, _ in fired} == {engine.TAG}
    assert steps[5] == engine.ERROR_BACKOFF[0] and steps[6] == 0.0
