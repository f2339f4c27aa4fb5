"""
LoadBalancer Services as VRRP instances (issue #15): the pure pieces the
runner and the edge_ha_lb ext_pillar use: an lb plan -> pillar instances,
validated and normalised as any instance (derived priorities, owner spread),
filtered against the pillar they are merged into; status and annotation
writes.
"""

import copy
import shutil

import pytest

from edge_ha_core import desired
from edge_ha_core import lb
from edge_ha_core import model as edge_ha
from tests.support.builders import example_pillar

POOLS = {
    "public": {"addresses": ["203.0.113.0/29"], "virtual_router_ids": "100-107",
               "vrrp": {"advert_int": 1, "unicast": True, "vrrp_version": 3}},
    "v6": {"addresses": ["2001:db8:100::/125"], "virtual_router_ids": "120-123", "auto_assign": False,
           "vrrp": {"vrrp_version": 3}},
}


def pillar():
    data = example_pillar()
    data["address_pools"] = copy.deepcopy(POOLS)
    return data


def svc(name, ns="apps", **kw):
    kw.setdefault("load_balancer_class", lb.LB_CLASS)
    return lb.ServiceRecord(namespace=ns, name=name, uid=f"uid-{name}", **kw)


def plan_for(data, services):
    model = edge_ha.normalize(data)
    return model, lb.plan(lb.pools_from_model(model), services, active=lb.active_addresses(model))


def merged(data, instances):
    out = copy.deepcopy(data)
    out["vrrp_instances"].update(lb.pillar_instances(instances, out))
    return out


def test_plan_to_instances_validates_and_normalises():
    data = pillar()
    model, p = plan_for(data, [svc("web"), svc("dns", requested="203.0.113.6"),
                               svc("ns6", requested="2001:db8:100::3")])
    instances = lb.pool_instances(p, model)
    assert sorted(instances) == ["lb_public_100_v4", "lb_public_101_v4", "lb_v6_120_v6"]
    assert instances["lb_public_101_v4"] == {"advert_int": 1, "unicast": True, "vrrp_version": 3,
                                             "virtual_router_id": 101, "virtual_ipaddress": ["203.0.113.0/32"],
                                             "address_pool": "public"}
    full = merged(data, instances)
    assert edge_ha.validate_model(full) == []
    model2 = edge_ha.normalize(full)
    inst = model2["vrrp_instances"]["lb_public_100_v4"]
    assert inst["address_pool"] == "public" and inst["vips"] == ["203.0.113.6"]
    assert inst["priorities"] == edge_ha.derived_priorities(full["nodes"], "lb_public_100_v4")
    assert lb.active_addresses(model2) == ("203.0.113.0", "203.0.113.6", "2001:db8:100::3")
    assert "address_pool" not in model2["vrrp_instances"]["VI_INGRESS"]
    # the same plan again (recorded assignments read back): nothing changes
    assert lb.plan(lb.pools_from_model(model2), [svc("web", recorded=lb.Recorded("203.0.113.0", "public", 101))],
                   active=lb.active_addresses(model2)).released == ("203.0.113.6", "2001:db8:100::3")


def test_pillar_without_pools_is_untouched():
    data = example_pillar()
    before = desired.node_digests(edge_ha.normalize(data))
    assert lb.pillar_instances({"lb_public_100_v4": {"address_pool": "public"}}, data) == {}
    assert desired.node_digests(edge_ha.normalize(data)) == before
    assert lb.active_addresses(edge_ha.normalize(data)) == ()


def test_pillar_instances_drop_what_no_longer_fits():
    data = pillar()
    model, p = plan_for(data, [svc("web"), svc("ns6", requested="2001:db8:100::3")])
    instances = lb.pool_instances(p, model)
    instances["not_ours"] = dict(instances["lb_public_100_v4"])
    instances["lb_bad"] = "junk"
    assert sorted(lb.pillar_instances(instances, data)) == ["lb_public_100_v4", "lb_v6_120_v6"]
    smaller = pillar()
    del smaller["address_pools"]["v6"]
    smaller["address_pools"]["public"]["virtual_router_ids"] = "101-107"
    assert lb.pillar_instances(instances, smaller) == {}
    moved = pillar()
    moved["address_pools"]["public"]["addresses"] = ["203.0.113.8/29"]
    assert "lb_public_100_v4" not in lb.pillar_instances(instances, moved)
    clash = pillar()
    clash["vrrp_instances"]["lb_public_100_v4"] = clash["vrrp_instances"].pop("VI_INGRESS")
    assert "lb_public_100_v4" not in lb.pillar_instances(instances, clash)
    assert lb.pillar_instances(instances, None) == {} and lb.pillar_instances(None, data) == {}


@pytest.mark.parametrize("change, path, message", [
    (lambda i: i.update(address_pool="nope"), "lb_x:address_pool", "must name a pool of edge_ha:address_pools"),
    (lambda i: i.update(virtual_ipaddress=["203.0.113.9/32"]), "lb_x:address_pool",
     "203.0.113.9 is not in address_pools:public"),
    (lambda i: i.update(virtual_router_id=120), "lb_x:address_pool",
     "VRID 120 is not in address_pools:public:virtual_router_ids"),
    (lambda i: i.pop("address_pool"), "address_pools:public:addresses:0", "holds 203.0.113.1, a VIP of vrrp_instances:lb_x"),
])
def test_a_pool_instance_that_does_not_fit_its_pool_names_the_key(change, path, message):
    data = pillar()
    inst = {"virtual_router_id": 100, "virtual_ipaddress": ["203.0.113.1/32"], "address_pool": "public"}
    change(inst)
    data["vrrp_instances"]["lb_x"] = inst
    errors = edge_ha.validate_model(data)
    assert any(e.startswith(f"edge_ha:{path if path.startswith('address') else 'vrrp_instances:' + path}: ")
               and message in e for e in errors), errors


def test_a_pool_instance_vrid_is_still_unique_with_other_pools_and_the_pillar():
    data = pillar()
    data["vrrp_instances"]["lb_x"] = {"virtual_router_id": 100, "virtual_ipaddress": ["203.0.113.1/32"],
                                      "address_pool": "public"}
    data["vrrp_instances"]["VI_OTHER"] = {"virtual_router_id": 100, "virtual_ipaddress": ["198.18.1.1/32"]}
    assert any("VRID 100" in e for e in edge_ha.validate_model(data))


def test_owner_spread_over_pool_instances():
    data = pillar()
    data["address_pools"]["public"]["addresses"] = ["203.0.113.0/27"]
    data["address_pools"]["public"]["virtual_router_ids"] = "60-89"
    model, p = plan_for(data, [svc(f"s{i:02d}") for i in range(30)])
    full = edge_ha.normalize(merged(data, lb.pool_instances(p, model)))
    owners = {}
    for name, inst in full["vrrp_instances"].items():
        if inst.get("address_pool"):
            top = max(inst["priorities"], key=inst["priorities"].get)
            owners[top] = owners.get(top, 0) + 1
    assert sum(owners.values()) == 30 and len(owners) == len(full["nodes"])
    assert min(owners.values()) >= 30 // len(full["nodes"]) // 2


def test_instance_names_fit_keepalived():
    assert lb.instance_name("public", 100, 4) == "lb_public_100_v4"
    long = lb.instance_name("p" * 80, 255, 6)
    assert len(long) <= 64 and long.endswith("_255_v6") and edge_ha._valid_name(long)
    assert long != lb.instance_name("p" * 79 + "q", 255, 6)


def test_services_by_address_lists_sharing_services():
    data = pillar()
    model, p = plan_for(data, [svc("a", sharing_key="k", ports=(lb.Port(80),)),
                               svc("b", sharing_key="k", ports=(lb.Port(53, "UDP"),)), svc("c")])
    assert lb.services_by_address(p) == {"203.0.113.0": ["apps/a", "apps/b"], "203.0.113.1": ["apps/c"]}
    assert len(lb.pool_instances(p, model)) == 2


def test_status_writes():
    rec = lb.Recorded("203.0.113.1", "public", 100)
    web, old, theirs, refused = svc("web"), svc("old", recorded=rec), svc("theirs", load_balancer_class="x"), svc("r")
    addresses = {"apps/web": "203.0.113.1"}
    # not held yet: nothing; held: written; held by nobody during a failover: kept
    assert lb.status_writes([(web, [])], addresses, set()) == []
    assert lb.status_writes([(web, [])], addresses, {"203.0.113.1"}) == [(web, ["203.0.113.1"])]
    assert lb.status_writes([(web, ["203.0.113.1"])], addresses, set()) == []
    assert lb.status_writes([(web, ["198.51.100.1"])], addresses, set()) == [(web, [])]
    # no address any more: only our recorded address goes; other classes keep theirs
    assert lb.status_writes([(old, ["203.0.113.1"]), (theirs, ["192.0.2.1"]), (refused, [])], addresses, set()) \
        == [(old, [])]


def test_to_unrecord_and_ingress_ips():
    rec = lb.Recorded("203.0.113.1", "public", 100)
    data = pillar()
    model, p = plan_for(data, [svc("web")])
    gone = svc("theirs", load_balancer_class="x", recorded=rec)
    assert lb.to_unrecord([svc("web", recorded=rec), gone], p) == [gone]
    assert lb.ingress_ips({"status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}, {"hostname": "x"}]}}}) == ["1.2.3.4"]
    assert lb.ingress_ips({}) == []


def test_owner_spread_counts_vips_per_preferred_owner():
    data = pillar()
    model, p = plan_for(data, [svc(f"s{i}") for i in range(6)])
    full = edge_ha.normalize(merged(data, lb.pool_instances(p, model)))
    spread = lb.owner_spread(full)
    assert sorted(spread) == sorted(full["nodes"])
    assert sum(spread.values()) == sum(len(i["vips"]) for i in full["vrrp_instances"].values())


# ---------------------------------------------------------------- 200 Services in one reconcile (issue #15)

keepalived_mod = None


def _keepalived():
    global keepalived_mod  # pylint: disable=global-statement
    if keepalived_mod is None:
        from tests.support.modload import load  # pylint: disable=import-outside-toplevel

        keepalived_mod = load("_modules/keepalived.py")
    return keepalived_mod


RENDER_PATHS = {"state_dir": "/run/edge-ha", "notify_script": "/usr/local/sbin/edge-ha-notify"}


def _render(data, node):
    return _keepalived().render_config(edge_ha.view_for_node(edge_ha.normalize(data), node), RENDER_PATHS)


def test_two_hundred_services_render_in_one_config_that_keeps_every_other_instance_state():
    """200 Services of one pool assigned in one plan become 200 instances in one config per node that
    keepalived accepts, and the reload that adds them keeps the state of the instances already there (the
    ingress VIP, and the first 10 Services' instances when 190 more come): no VIP moves."""
    data = example_pillar()
    data["address_pools"] = {"big": {"addresses": ["10.20.0.0/24"], "virtual_router_ids": "52-255",
                                     "vrrp": {"advert_int": 1, "unicast": True, "vrrp_version": 3}}}
    first_ten = [svc(f"s{i:03d}") for i in range(10)]
    model, p10 = plan_for(data, first_ten)
    with_ten = merged(data, lb.pool_instances(p10, model))
    # the next reconcile lists them with their assignment recorded on the Service
    records = [svc(a.service.split("/", 1)[1], recorded=a.record) for a in p10.assignments]
    model10 = edge_ha.normalize(with_ten)
    _, p200 = plan_for(with_ten, records + [svc(f"s{i:03d}") for i in range(10, 200)])
    assert len(p200.assignments) == 200 and not p200.refusals
    assert {a.service: a.address for a in p200.assignments if a.service in {r.key for r in records}} == \
        {a.service: a.address for a in p10.assignments}  # the first ten keep their addresses
    with_200 = merged(data, lb.pool_instances(p200, model10))
    assert edge_ha.validate_model(with_200) == []
    before = edge_ha.normalize(with_ten)["vrrp_instances"]
    after = edge_ha.normalize(with_200)["vrrp_instances"]
    assert len(after) == len(before) + 190
    for name, inst in before.items():  # priorities of the existing instances unchanged: no owner moves
        assert after[name]["priorities"] == inst["priorities"], name
    for node in ("edge1", "edge2"):
        old, new = _render(with_ten, node), _render(with_200, node)
        assert desired.reload_keeps_state(old, new, sorted(desired.vrrp_identities(old))) == []
        if shutil.which("keepalived"):
            ok, output = _keepalived().check_config(new)
            assert ok, output[-2000:]
