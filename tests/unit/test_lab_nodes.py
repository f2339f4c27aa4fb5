"""The lab's N edge nodes (lab/lab.py): addresses, pillar and Kubernetes seed, without namespaces or daemons."""

import ipaddress

import pytest

from edge_ha_core import model as edge_model
from lab.lab import CLIENT_OCTET, MASTER_IP, NET, NODES, USER_IP, VIP, Lab, edge_nodes, lab_pillar

RESERVED = {MASTER_IP, VIP, USER_IP, f"{NET}.{CLIENT_OCTET}"}
SWITCH = ipaddress.ip_network(f"{NET}.0/24")  # the subnet every host of the Topology is on


def addresses(pillar):
    return [n["address"] for n in pillar["nodes"].values()]


def test_the_default_lab_keeps_its_three_nodes():
    assert NODES == {"edge1": 11, "edge2": 12, "edge3": 13}
    assert edge_nodes() == NODES
    assert addresses(lab_pillar("/k")) == ["198.18.0.11", "198.18.0.12", "198.18.0.13"]
    assert Lab("/nonexistent").nodes == NODES


@pytest.mark.parametrize("edges", [10, 50, 88])
def test_n_edge_nodes_get_distinct_free_addresses_in_the_lab_subnet(edges):
    pillar = lab_pillar("/k", edge_nodes(edges))
    addrs = addresses(pillar)
    assert list(pillar["nodes"]) == [f"edge{i}" for i in range(1, edges + 1)]
    assert len(set(addrs)) == edges
    assert not RESERVED & set(addrs), RESERVED & set(addrs)
    for addr in addrs:
        ip = ipaddress.ip_address(addr)
        assert ip in ipaddress.ip_network("198.18.0.0/15")
        assert ip in SWITCH, f"{addr}: the master (198.18.0.2/24) would have no route to it"
        assert ip not in (SWITCH.network_address, SWITCH.broadcast_address)
        assert not 100 <= int(addr.rsplit(".", 1)[1]) <= 110, f"{addr}: where the VIP and test VIPs live"
    assert addrs[:3] == ["198.18.0.11", "198.18.0.12", "198.18.0.13"]


@pytest.mark.parametrize("edges", [3, 10, 50])
def test_the_pillar_for_n_nodes_is_valid_with_one_owner_on_top(edges):
    pillar = lab_pillar("/k", edge_nodes(edges))
    assert edge_model.validate_model(pillar) == []
    model = edge_model.normalize(pillar)
    prio = model["vrrp_instances"]["VI_INGRESS"]["priorities"]
    assert max(prio, key=prio.get) == "edge1"
    assert sorted(prio.values(), reverse=True)[0] > sorted(prio.values(), reverse=True)[1], "a single top priority"


def test_the_kubernetes_seed_has_a_node_and_an_ingress_pod_per_edge_node(tmp_path):
    lab = Lab(tmp_path, prefix="ehunit", edges=10)
    seed = lab.kube_seed()
    assert [n["name"] for n in seed["nodes"]] == list(lab.nodes) == [f"edge{i}" for i in range(1, 11)]
    assert [n["address"] for n in seed["nodes"]] == addresses(lab_pillar("/k", lab.nodes))
    assert sorted(p["node"] for p in seed["pods"]) == sorted(lab.nodes)
    assert len({p["name"] for p in seed["pods"]}) == 10
    assert lab.minions == list(lab.nodes) + ["client"]
    assert seed["service"]["external_ips"] == [USER_IP]


@pytest.mark.parametrize("edges", [0, 89, "3"])
def test_an_impossible_number_of_edges_is_refused(edges):
    with pytest.raises(ValueError, match="edges must be"):
        edge_nodes(edges)
