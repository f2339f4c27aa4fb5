"""
Derived priorities spread the preferred owners (issue #15, item 4).

Without priorities in the pillar, each VRRP instance orders its nodes by
rendezvous hashing of (instance, node): the first gets 150, the next 140, ...
The preferred owner of an instance is the node keepalived elects when every
node is up: the one with the highest priority.

The bounds asserted here: a hash, not a round robin, so the count per node is
binomial (30 instances on 3 nodes: mean 10, standard deviation 2.6). With 30
instances each node is preferred owner of 10 +- 4 (the old behaviour, node-name
order for every instance, gives 30/0/0); with 3000 of them 1000 +- 5 %.
"""

import collections

import pytest

from edge_ha_core import model as edge_ha
from edge_ha_core import fleet
from tests.support.builders import report, typed

NAMES30 = [f"VI_{k:02d}" for k in range(1, 31)]


def pillar(instances, nodes=("edge1", "edge2", "edge3"), **instance_extra):
    """``instances`` VRRP instances without priorities, one VIP each, on ``nodes``."""
    data = {
        "nodes": {n: {"address": f"198.18.0.{11 + i}", "interface": "eth0"} for i, n in enumerate(nodes)},
        "vrrp_instances": {},
    }
    for k, name in enumerate(instances):
        data["vrrp_instances"][name] = dict(
            {"virtual_router_id": k + 1, "virtual_ipaddress": [f"198.19.{k // 250}.{k % 250 + 1}/16"]},
            **instance_extra,
        )
    return data


def preferred_owners(data):
    """{instance: the node with the highest priority} as keepalived elects with every node up (the
    planner's own election order: priority, then the higher address)."""
    model = edge_ha.normalize(data)
    reports = typed({n: report(n) for n in model["nodes"]})  # every node up, healthy, in service
    return {name: fleet.vrrp_winner(model, reports, name) for name in model["vrrp_instances"]}


def test_thirty_instances_on_three_nodes_give_each_node_about_ten():
    owners = preferred_owners(pillar(NAMES30))
    counts = collections.Counter(owners.values())
    assert set(counts) == {"edge1", "edge2", "edge3"}
    assert all(6 <= c <= 14 for c in counts.values()), counts


def test_many_instances_spread_evenly():
    names = [f"pool-{k}" for k in range(3000)]
    orders = collections.Counter(edge_ha.owner_order(name, ["edge1", "edge2", "edge3"])[0] for name in names)
    assert all(950 <= c <= 1050 for c in orders.values()), orders


def test_each_instance_gets_150_140_130_in_its_own_order():
    model = edge_ha.normalize(pillar(NAMES30))
    seen_orders = set()
    for name, inst in model["vrrp_instances"].items():
        prios = inst["priorities"]
        assert sorted(prios.values(), reverse=True) == [150, 140, 130]
        order = tuple(sorted(prios, key=prios.get, reverse=True))
        assert list(order) == edge_ha.owner_order(name, ["edge1", "edge2", "edge3"])
        seen_orders.add(order)
    assert len(seen_orders) > 3  # not one rotation for every instance: the backups spread too


def test_adding_a_fourth_node_moves_about_a_quarter_and_only_to_it():
    before = preferred_owners(pillar(NAMES30))
    after = preferred_owners(pillar(NAMES30, nodes=("edge1", "edge2", "edge3", "edge4")))
    moved = {name for name in NAMES30 if before[name] != after[name]}
    # a quarter of 30 is 7.5: at most 10 move, every one of them to the new node
    assert 1 <= len(moved) <= 10, moved
    assert {after[name] for name in moved} == {"edge4"}


def test_removing_a_node_moves_only_the_instances_it_owned():
    before = preferred_owners(pillar(NAMES30))
    after = preferred_owners(pillar(NAMES30, nodes=("edge1", "edge3")))
    moved = {name for name in NAMES30 if before[name] != after[name]}
    assert moved == {name for name in NAMES30 if before[name] == "edge2"}
    assert moved  # edge2 owned some


def test_adding_an_instance_changes_no_other_instance():
    before = edge_ha.normalize(pillar(NAMES30))["vrrp_instances"]
    after = edge_ha.normalize(pillar(NAMES30 + ["VI_NEW"]))["vrrp_instances"]
    assert all(after[name]["priorities"] == before[name]["priorities"] for name in NAMES30)


def test_the_order_is_the_same_whatever_the_order_nodes_are_given_in():
    nodes = ["edge1", "edge2", "edge3", "edge4"]
    assert edge_ha.owner_order("VI_07", nodes) == edge_ha.owner_order("VI_07", list(reversed(nodes)))


def test_explicit_priorities_keep_winning():
    data = pillar(NAMES30[:3])
    data["vrrp_instances"]["VI_01"]["priority"] = {"edge3": 200}
    data["vrrp_instances"]["VI_02"]["priority"] = 77
    data["nodes"]["edge2"]["priority"] = 42
    model = edge_ha.normalize(data)
    insts = model["vrrp_instances"]
    assert insts["VI_01"]["priorities"]["edge3"] == 200
    assert insts["VI_02"]["priorities"] == {"edge1": 77, "edge2": 77, "edge3": 77}
    for name in ("VI_01", "VI_03"):
        # the node's own priority everywhere it is not overridden; the others 150, 140 in hash order
        assert insts[name]["priorities"]["edge2"] == 42
    derived = edge_ha.owner_order("VI_03", ["edge1", "edge3"])
    assert [insts["VI_03"]["priorities"][n] for n in derived] == [150, 140]
    assert model["nodes"]["edge2"]["priority"] == 42 and model["nodes"]["edge1"]["priority"] is None


@pytest.mark.parametrize("members", [["edge2", "edge3"], ["edge3"]])
def test_an_instance_on_some_nodes_starts_at_150(members):
    data = pillar(["VI_01"])
    data["vrrp_instances"]["VI_01"]["nodes"] = members
    prios = edge_ha.normalize(data)["vrrp_instances"]["VI_01"]["priorities"]
    assert set(prios) == set(members) and max(prios.values()) == 150
