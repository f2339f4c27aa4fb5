"""edge_ha:address_pools and edge_ha:load_balancer in the pillar: each rule has a failing case naming its key."""

import pytest

from edge_ha_core import model as edge_ha
from tests.support.builders import example_pillar

P = "edge_ha:address_pools"


def with_pools(pools, **top):
    data = example_pillar()
    data["address_pools"] = pools
    data.update(top)
    return data


GOOD = {
    "public": {"addresses": ["203.0.113.0/28", "203.0.113.100-203.0.113.120"], "virtual_router_ids": "100-119",
               "prefix": 24, "vrrp": {"advert_int": 1, "unicast": True, "nodes": ["edge1", "edge2"]}},
    "v6": {"addresses": ["2001:db8:100::/120"], "virtual_router_ids": [120, "121-125"], "auto_assign": False,
           "vrrp": {"vrrp_version": 3}},
}


def test_a_valid_pool_normalises():
    model = edge_ha.normalize(with_pools(GOOD, load_balancer={"default_class": True}))
    public = model["address_pools"]["public"]
    assert public["ranges"] == [["203.0.113.0", "203.0.113.15"], ["203.0.113.100", "203.0.113.120"]]
    assert public["virtual_router_ids"] == list(range(100, 120))
    assert (public["prefix"], public["prefix6"], public["auto_assign"], public["avoid_buggy_ips"]) == (24, 128, True, False)
    assert model["address_pools"]["v6"]["virtual_router_ids"] == [120, 121, 122, 123, 124, 125]
    assert model["load_balancer"] == {"default_class": True}
    assert edge_ha.normalize(example_pillar())["load_balancer"] == {"default_class": False}


CASES = [
    ({"p": {"addresses": ["203.0.113.0/28"]}}, f"{P}:p:virtual_router_ids", "is required"),
    ({"p": {"addresses": [], "virtual_router_ids": 100}}, f"{P}:p:addresses", "must be a non-empty list"),
    ({"p": {"addresses": ["203.0.113.1/28"], "virtual_router_ids": 100}}, f"{P}:p:addresses:0",
     "has host bits set; the network is 203.0.113.0/28"),
    ({"p": {"addresses": ["203.0.113.9-203.0.113.1"], "virtual_router_ids": 100}}, f"{P}:p:addresses:0",
     "the first address is above the last"),
    ({"p": {"addresses": ["203.0.113.1-2001:db8::1"], "virtual_router_ids": 100}}, f"{P}:p:addresses:0",
     "mixes IPv4 and IPv6"),
    ({"p": {"addresses": ["203.0.113.7"], "virtual_router_ids": 100}}, f"{P}:p:addresses:0",
     "is a single address; write 203.0.113.7/32 or 203.0.113.7-203.0.113.7"),
    ({"p": {"addresses": ["127.0.0.0/30"], "virtual_router_ids": 100}}, f"{P}:p:addresses:0", "loopback"),
    ({"p": {"addresses": ["198.18.0.96/28"], "virtual_router_ids": 100}}, f"{P}:p:addresses:0",
     "holds 198.18.0.100, a VIP of vrrp_instances:VI_INGRESS"),
    ({"p": {"addresses": ["198.18.0.11-198.18.0.11"], "virtual_router_ids": 100}}, f"{P}:p:addresses:0",
     "holds 198.18.0.11, the address of node edge1"),
    ({"a": {"addresses": ["203.0.113.0/28"], "virtual_router_ids": 100},
      "b": {"addresses": ["203.0.113.10-203.0.113.20"], "virtual_router_ids": 101}},
     f"{P}:b:addresses:0", "overlaps address_pools:a:addresses:0 (203.0.113.10-203.0.113.15)"),
    ({"p": {"addresses": ["203.0.113.0/28"], "virtual_router_ids": "50-52"}}, f"{P}:p:virtual_router_ids",
     "VRID 51 is used by vrrp_instances:VI_INGRESS"),
    ({"a": {"addresses": ["203.0.113.0/28"], "virtual_router_ids": "100-110"},
      "b": {"addresses": ["203.0.113.16/28"], "virtual_router_ids": 110}},
     f"{P}:b:virtual_router_ids", "VRID 110 is also in address_pools:a:virtual_router_ids"),
    ({"p": {"addresses": ["203.0.113.0/28"], "virtual_router_ids": "0-3"}}, f"{P}:p:virtual_router_ids",
     "VRIDs are 1-255"),
    ({"p": {"addresses": ["203.0.113.0/28"], "virtual_router_ids": 100, "prefix": 33}}, f"{P}:p:prefix",
     "must be from 1 to 32"),
    ({"p": {"addresses": ["203.0.113.0/28"], "virtual_router_ids": 100, "auto_assign": "no"}}, f"{P}:p:auto_assign",
     "must be true or false"),
    ({"p": {"addresses": ["203.0.113.0/28"], "virtual_router_ids": 100, "vrrp": {"virtual_ipaddress": []}}},
     f"{P}:p:vrrp:virtual_ipaddress", "unknown key"),
    ({"p": {"addresses": ["203.0.113.0/28"], "virtual_router_ids": 100, "vrrp": {"nodes": ["edge9"]}}},
     f"{P}:p:vrrp:nodes:0", "'edge9' is not defined"),
    ({"p": {"addresses": ["2001:db8::/120"], "virtual_router_ids": 100}}, f"{P}:p:vrrp:vrrp_version",
     "IPv6 virtual addresses need vrrp_version: 3"),
    ({"p": {"addresses": ["203.0.113.0/28"], "virtual_router_ids": 100, "vrrp": {"advert_int": 0.5}}},
     f"{P}:p:vrrp:advert_int", "needs vrrp_version: 3"),
    ({"p": {"addresses": ["203.0.113.0/28"], "virtual_router_ids": 100, "pool": 1}}, f"{P}:p:pool", "unknown key"),
]


@pytest.mark.parametrize("pools,path,text", CASES, ids=[c[1].split(":", 2)[2] + "|" + c[2][:30] for c in CASES])
def test_each_rule_names_its_key(pools, path, text):
    errors = edge_ha.validate_model(with_pools(pools))
    assert any(e.startswith(path + ":") and text in e for e in errors), errors


def test_load_balancer_section():
    errors = edge_ha.validate_model(with_pools(GOOD, load_balancer={"default_class": "yes", "class": "x"}))
    assert "edge_ha:load_balancer:default_class: must be true or false, got 'yes'" in errors
    assert any(e.startswith("edge_ha:load_balancer:class: unknown key") for e in errors)


def test_an_error_is_reported_once_for_a_dual_stack_pool():
    pools = {"p": {"addresses": ["203.0.113.0/28", "2001:db8::/120"], "virtual_router_ids": 100,
                   "vrrp": {"vrrp_version": 3, "state": "BOSS"}}}
    errors = edge_ha.validate_model(with_pools(pools))
    assert [e for e in errors if "state" in e] == ["edge_ha:address_pools:p:vrrp:state: 'BOSS' is not allowed; one of MASTER|BACKUP"]
