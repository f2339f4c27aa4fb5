"""
Address assignment for LoadBalancer Services (edge_ha_core.lb, issue #15 item 2):
example tests for each rule and refusal, property tests (hypothesis) for the
invariants: no address to two Services unless they share it on purpose, and a
re-run with the recorded assignments changes nothing.
"""

import ipaddress
import os

import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from edge_ha_core import lb
from edge_ha_core import model as edge_ha
from tests.support.builders import example_pillar

EXAMPLES = int(os.environ.get("EDGE_HA_HYPOTHESIS_EXAMPLES", "300"))


def pools(**extra):
    """The model's pools for a pillar with ``address_pools`` = ``extra`` (validated like a real one)."""
    data = example_pillar()
    data["address_pools"] = extra
    return lb.pools_from_model(edge_ha.normalize(data))


PUBLIC = {"addresses": ["203.0.113.0/29"], "virtual_router_ids": "100-119"}
TINY = {"addresses": ["203.0.113.10-203.0.113.11"], "virtual_router_ids": "120-129"}


def svc(name, namespace="default", ports=((80, "TCP"),), cls=lb.LB_CLASS, type_="LoadBalancer", **kwargs):
    return lb.ServiceRecord(namespace=namespace, name=name, uid=f"uid-{namespace}-{name}", type=type_,
                            load_balancer_class=cls, ports=tuple(lb.Port(p, proto) for p, proto in ports), **kwargs)


def rerun(services, result):
    """
    The Services as the next run reads them, after the runner's writes: the
    assignment annotation written on the assigned ones and taken off the
    others (``lb.to_unrecord``: a refused Service keeps no stale record that
    could outrank the sharers of its old address once that address's holder goes).
    """
    by = result.by_service()
    unrecord = {s.key for s in lb.to_unrecord(services, result)}
    return [
        lb.ServiceRecord(**dict(vars(s), recorded=by[s.key].record)) if s.key in by
        else lb.ServiceRecord(**dict(vars(s), recorded=None)) if s.key in unrecord else s
        for s in services
    ]


def reasons(result):
    return {r.service: r.reason for r in result.refusals}


# ---------------------------------------------------------------- examples


def test_new_services_get_the_lowest_free_addresses_in_name_order():
    result = lb.plan(pools(public=PUBLIC), [svc("b"), svc("a")])
    got = {a.service: (a.address, a.pool, a.vrid, a.prefix) for a in result.assignments}
    # 203.0.113.0 is a usable /32 VIP (prefix 32): MetalLB hands it out too unless avoid_buggy_ips
    assert got == {"default/a": ("203.0.113.0", "public", 100, 32), "default/b": ("203.0.113.1", "public", 101, 32)}
    assert [a.service for a in result.to_record()] == ["default/a", "default/b"]
    assert result.refusals == () and result.released == ()


def test_only_our_class_unless_we_are_the_default_implementation():
    services = [svc("ours"), svc("metallb", cls="metallb.io/metallb"), svc("noclass", cls=None),
                svc("clusterip", type_="ClusterIP")]
    result = lb.plan(pools(public=PUBLIC), services)
    assert [a.service for a in result.assignments] == ["default/ours"]
    assert result.ignored == ("default/clusterip", "default/metallb", "default/noclass")
    as_default = lb.plan(pools(public=PUBLIC), services, default_class=True)
    assert [a.service for a in as_default.assignments] == ["default/noclass", "default/ours"]
    assert as_default.ignored == ("default/clusterip", "default/metallb")


def test_a_recorded_assignment_is_kept_even_when_a_lower_address_is_free():
    old = svc("web", recorded=lb.Recorded("203.0.113.5", "public", 107))
    result = lb.plan(pools(public=PUBLIC), [svc("aaa"), old])
    web = result.by_service()["default/web"]
    assert (web.address, web.vrid, web.kept) == ("203.0.113.5", 107, True)
    assert result.to_record() == (result.by_service()["default/aaa"],)


def test_a_requested_address_is_honoured_from_the_annotation_or_load_balancer_ip():
    result = lb.plan(pools(public=PUBLIC), [svc("a", requested="203.0.113.6"), svc("b", requested=" 203.0.113.3 ")])
    assert {a.service: a.address for a in result.assignments} == {"default/a": "203.0.113.6", "default/b": "203.0.113.3"}
    record = lb.service_record({
        "metadata": {"name": "x", "namespace": "ns", "annotations": {lb.IPS_ANNOTATION: "203.0.113.4"}},
        "spec": {"type": "LoadBalancer", "loadBalancerIP": "203.0.113.9", "loadBalancerClass": lb.LB_CLASS}})
    assert record.requested == "203.0.113.4"  # our annotation wins over the deprecated field
    record = lb.service_record({"metadata": {"name": "x", "namespace": "ns"},
                                "spec": {"type": "LoadBalancer", "loadBalancerIP": "203.0.113.9"}})
    assert record.requested == "203.0.113.9" and record.load_balancer_class is None


def test_refused_address_taken():
    result = lb.plan(pools(public=PUBLIC), [svc("a", recorded=lb.Recorded("203.0.113.2", "public", 100)),
                                            svc("b", requested="203.0.113.2")])
    (refusal,) = result.refusals
    assert (refusal.service, refusal.reason) == ("default/b", lb.ADDRESS_TAKEN)
    assert refusal.message == "203.0.113.2 is taken by Service default/a"
    assert [a.service for a in result.assignments] == ["default/a"]


def test_refused_address_outside_every_pool():
    result = lb.plan(pools(public=PUBLIC), [svc("a", requested="198.51.100.7")])
    assert reasons(result) == {"default/a": lb.OUTSIDE_POOLS}
    assert result.refusals[0].message == "198.51.100.7 is in no address pool (edge_ha:address_pools: public)"


def test_refused_address_outside_the_requested_pool():
    result = lb.plan(pools(public=PUBLIC, tiny=TINY), [svc("a", requested="203.0.113.3", requested_pool="tiny")])
    assert reasons(result) == {"default/a": lb.OUTSIDE_POOLS}
    assert "not in the requested pool tiny" in result.refusals[0].message


def test_refused_pool_exhausted_by_addresses():
    result = lb.plan(pools(tiny=TINY), [svc("a"), svc("b"), svc("c")])
    assert [a.address for a in result.assignments] == ["203.0.113.10", "203.0.113.11"]
    assert reasons(result) == {"default/c": lb.POOL_EXHAUSTED}
    assert result.refusals[0].message == "no free IPv4 address: tiny: every address is taken"


def test_refused_pool_exhausted_by_vrids():
    result = lb.plan(pools(public=dict(PUBLIC, virtual_router_ids=[100, 101])), [svc("a"), svc("b"), svc("c")])
    assert reasons(result) == {"default/c": lb.POOL_EXHAUSTED}
    assert result.refusals[0].message == "no free IPv4 address: public: all 2 VRIDs are in use"


def test_refused_unknown_pool_and_bad_request_and_wrong_family():
    result = lb.plan(pools(public=PUBLIC), [svc("a", requested_pool="gold"), svc("b", requested="not-an-ip"),
                                            svc("c", family=6)])
    assert reasons(result) == {"default/a": lb.UNKNOWN_POOL, "default/b": lb.BAD_REQUEST,
                               "default/c": lb.POOL_EXHAUSTED}
    assert result.refusals[2].message == "no pool with auto_assign has IPv6 addresses"


def test_auto_assign_false_serves_only_requests():
    private = {"addresses": ["203.0.113.64/30"], "virtual_router_ids": 140, "auto_assign": False}
    result = lb.plan(pools(private=private), [svc("a"), svc("b", requested="203.0.113.65"),
                                              svc("c", requested_pool="private")])
    assert reasons(result) == {"default/a": lb.POOL_EXHAUSTED, "default/c": lb.POOL_EXHAUSTED}
    assert result.by_service()["default/b"].address == "203.0.113.65"


def test_sharing_needs_the_same_key_and_different_ports():
    services = [svc("dns-tcp", ports=((53, "TCP"),), sharing_key="dns"),
                svc("dns-udp", ports=((53, "UDP"),), sharing_key="dns"),
                svc("dns-udp2", ports=((53, "UDP"),), sharing_key="dns"),
                svc("other", ports=((80, "TCP"),), sharing_key="web")]
    result = lb.plan(pools(public=PUBLIC), services)
    got = result.by_service()
    assert got["default/dns-tcp"].address == got["default/dns-udp"].address == "203.0.113.0"
    assert got["default/dns-tcp"].vrid == got["default/dns-udp"].vrid  # one VRRP instance for the address
    assert got["default/dns-udp2"].address not in ("203.0.113.0", got["default/other"].address)
    # the next run: the others keep their recorded addresses, a new Service asks for the shared one
    taken = lb.plan(pools(public=PUBLIC), rerun(services, result) + [
        svc("late", ports=((53, "UDP"),), sharing_key="dns", requested="203.0.113.0")])
    assert reasons(taken) == {"default/late": lb.ADDRESS_TAKEN}
    assert "also uses port 53/UDP" in taken.refusals[0].message


def test_released_addresses_of_services_that_went_away():
    result = lb.plan(pools(public=PUBLIC), [svc("a", recorded=lb.Recorded("203.0.113.1", "public", 100))],
                     active=["203.0.113.1", "203.0.113.4", "2001:db8::5"])
    assert result.released == ("203.0.113.4", "2001:db8::5")


def test_a_recorded_address_that_left_the_pools_is_assigned_anew():
    result = lb.plan(pools(tiny=TINY), [svc("a", recorded=lb.Recorded("203.0.113.5", "public", 100))])
    (a,) = result.assignments
    assert (a.address, a.pool, a.kept) == ("203.0.113.10", "tiny", False)
    assert result.notes == ("default/a: recorded assignment 203.0.113.5 not kept: 203.0.113.5 is in no address "
                            "pool any more",)


def test_avoid_buggy_ips_and_the_vip_prefix_skip_addresses():
    result = lb.plan(pools(public=dict(PUBLIC, avoid_buggy_ips=True)), [svc("a")])
    assert result.assignments[0].address == "203.0.113.1"
    result = lb.plan(pools(public=dict(PUBLIC, prefix=24)), [svc("a", requested="203.0.113.0"), svc("b")])
    assert reasons(result) == {"default/a": lb.OUTSIDE_POOLS}
    assert result.by_service()["default/b"].address == "203.0.113.1" and result.assignments[0].prefix == 24


def test_ipv6_pools_in_a_big_range():
    v6 = {"addresses": ["2001:db8:100::/64"], "virtual_router_ids": "100-102", "vrrp": {"vrrp_version": 3}}
    result = lb.plan(pools(v6=v6), [svc("a", family=6), svc("b", requested="2001:db8:100::ff"), svc("c", family=6)])
    got = result.by_service()
    assert got["default/a"].address == "2001:db8:100::"  # a /128 VIP: the /64's first address is a host too
    assert got["default/b"].address == "2001:db8:100::ff" and got["default/a"].prefix == 128
    assert got["default/c"].address == "2001:db8:100::1"


def test_the_annotation_round_trips_and_bad_ones_are_ignored():
    a = lb.plan(pools(public=PUBLIC), [svc("a")]).assignments[0]
    assert lb.parse_recorded(a.annotation) == a.record
    for bad in ("", "{", "[]", '{"address": "x", "pool": "p", "vrid": 1}', '{"address": "203.0.113.1"}',
                '{"address": "203.0.113.1", "pool": "p", "vrid": true}'):
        assert lb.parse_recorded(bad) is None


# ---------------------------------------------------------------- properties

PROPERTY_POOLS = pools(
    small={"addresses": ["203.0.113.0/29", "203.0.113.20-203.0.113.22"], "virtual_router_ids": "100-109"},
    other={"addresses": ["198.51.100.0/30"], "virtual_router_ids": "110-113", "auto_assign": False},
    v6={"addresses": ["2001:db8::/125"], "virtual_router_ids": "114-119", "vrrp": {"vrrp_version": 3}},
)
CANDIDATES = ["203.0.113.1", "203.0.113.21", "198.51.100.2", "2001:db8::3", "192.0.2.1"]


@st.composite
def service_lists(draw):
    count = draw(st.integers(0, 14))
    out = []
    for i in range(count):
        recorded = None
        if draw(st.integers(0, 3)) == 0:
            recorded = lb.Recorded(draw(st.sampled_from(CANDIDATES)), draw(st.sampled_from(["small", "other", "v6"])),
                                   draw(st.integers(98, 115)))
        out.append(lb.ServiceRecord(
            namespace=draw(st.sampled_from(["a", "b"])), name=f"s{i}", uid=f"u{i}",
            load_balancer_class=draw(st.sampled_from([lb.LB_CLASS, lb.LB_CLASS, None, "other/class"])),
            requested=draw(st.none() | st.sampled_from(CANDIDATES)),
            requested_pool=draw(st.none() | st.none() | st.sampled_from(["small", "other", "nope"])),
            sharing_key=draw(st.none() | st.sampled_from(["k1", "k2"])),
            ports=tuple(lb.Port(p, proto) for p, proto in draw(
                st.lists(st.tuples(st.sampled_from([53, 80, 443]), st.sampled_from(["TCP", "UDP"])),
                         max_size=2, unique=True))),
            family=draw(st.sampled_from([4, 4, 6])),
            recorded=recorded,
        ))
    return out


@settings(max_examples=EXAMPLES, deadline=None)
@given(service_lists(), st.booleans())
def test_no_address_is_given_twice_without_sharing(services, default_class):
    result = lb.plan(PROPERTY_POOLS, services, default_class=default_class)
    by_key = {s.key: s for s in services}
    by_address = {}
    for a in result.assignments:
        by_address.setdefault(a.address, []).append(by_key[a.service])
    for address, holders in by_address.items():
        addr = ipaddress.ip_address(address)
        pool = next(p for p in PROPERTY_POOLS if p.name == result.by_service()[holders[0].key].pool)
        assert pool.contains(addr)
        if len(holders) > 1:
            assert len({h.sharing_key for h in holders}) == 1 and holders[0].sharing_key is not None
            ports = [p for h in holders for p in h.ports]
            assert len(ports) == len(set(ports)), (address, holders)
    # one VRID per address, no VRID twice within a family
    vrids = {}
    for a in result.assignments:
        vrids.setdefault((ipaddress.ip_address(a.address).version, a.vrid), set()).add(a.address)
    assert all(len(addresses) == 1 for addresses in vrids.values())
    # every Service of ours is assigned or refused, exactly once; the others are ignored
    decided = [a.service for a in result.assignments] + [r.service for r in result.refusals]
    assert sorted(decided + list(result.ignored)) == sorted(s.key for s in services)


@settings(max_examples=EXAMPLES, deadline=None)
@given(service_lists(), st.booleans())
def test_stable_across_re_runs(services, default_class):
    first = lb.plan(PROPERTY_POOLS, services, default_class=default_class)
    second = lb.plan(PROPERTY_POOLS, rerun(services, first), default_class=default_class)
    assert {a.service: a.record for a in second.assignments} == {a.service: a.record for a in first.assignments}
    assert second.to_record() == ()  # nothing to write on the second run
    assert [(r.service, r.reason) for r in second.refusals] == [(r.service, r.reason) for r in first.refusals]
    # and the same input gives the same plan, whatever the order the Services are listed in
    assert lb.plan(PROPERTY_POOLS, list(reversed(services)), default_class=default_class) == first


@settings(max_examples=EXAMPLES, deadline=None)
@given(service_lists())
def test_a_service_going_away_moves_no_other_service(services):
    first = lb.plan(PROPERTY_POOLS, services)
    if not first.assignments:
        return
    recorded = rerun(services, first)
    gone = first.assignments[0].service
    after = lb.plan(PROPERTY_POOLS, [s for s in recorded if s.key != gone],
                    active=[a.address for a in first.assignments])
    before = {a.service: a.record for a in first.assignments if a.service != gone}
    assert {a.service: a.record for a in after.assignments if a.service in before} == before
    still = {a.address for a in after.assignments}
    assert set(after.released) == {a.address for a in first.assignments} - still


@pytest.mark.parametrize("count", [200])
def test_two_hundred_services_in_one_pool(count):
    big = pools(big={"addresses": ["10.20.0.0/24"], "virtual_router_ids": "52-255"})  # VI_INGRESS has 51
    services = [svc(f"s{i:03d}") for i in range(count)]
    result = lb.plan(big, services)
    assert len(result.assignments) == count and not result.refusals
    assert len({a.address for a in result.assignments}) == count
