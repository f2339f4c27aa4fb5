"""
LoadBalancer Services: which address each one gets (pure; issue #15).

Input: the address pools of the normalised model (``model["address_pools"]``,
validated by ``model.py``) and the cluster's Services as typed records
(``service_record`` reads them from the API's wire dicts). Output: a typed
``LBPlan``: per Service of ours its address, pool and VRID, or a refusal with
a reason that becomes a Kubernetes Event; the Services left alone; the
addresses nobody holds any more.

The rules, each asserted by tests/unit/test_lb.py:

* Ours: ``type: LoadBalancer`` and ``spec.loadBalancerClass`` = ``LB_CLASS``;
  without a class only when ``edge_ha:load_balancer:default_class`` is true.
* Stable: a recorded assignment (the ``ASSIGNMENT_ANNOTATION`` the runner
  writes on the Service) is kept while it is still valid, so re-running the
  plan with the recorded assignments changes nothing, and a restart of the
  master moves nothing.
* A requested address (``IPS_ANNOTATION``, else the deprecated
  ``spec.loadBalancerIP``) is honoured when it is inside a pool (the
  requested pool, ``POOL_ANNOTATION``, if any) and free; otherwise refused.
* Never one address for two Services, unless both carry the same sharing key
  (``SHARING_ANNOTATION``, as MetalLB's ``allow-shared-ip``) and no port and
  protocol of one is also the other's.
* Each address is one VRRP instance on the edge nodes, with a VRID from its
  pool's ``virtual_router_ids``: a pool serves at most that many addresses per
  address family at once. Services sharing an address share its VRID.
* Deterministic: Services are taken in a fixed order (kept assignments,
  then requested addresses, then the rest; each by namespace/name), new
  addresses are the lowest free ones of the first pool (by name) that has one.
"""

import hashlib
import ipaddress
import json
from dataclasses import dataclass
from dataclasses import field
from typing import Optional

LB_CLASS = "edge-ha.salt/keepalived"
IPS_ANNOTATION = "edge-ha.salt/load-balancer-ips"
POOL_ANNOTATION = "edge-ha.salt/address-pool"
SHARING_ANNOTATION = "edge-ha.salt/allow-shared-ip"
ASSIGNMENT_ANNOTATION = "edge-ha.salt/assignment"

# refusal reasons: Kubernetes Event reasons (UpperCamelCase)
POOL_EXHAUSTED = "AddressPoolExhausted"
ADDRESS_TAKEN = "AddressTaken"
OUTSIDE_POOLS = "AddressOutsidePools"
UNKNOWN_POOL = "AddressPoolUnknown"
BAD_REQUEST = "AddressRequestInvalid"
REFUSAL_REASONS = (POOL_EXHAUSTED, ADDRESS_TAKEN, OUTSIDE_POOLS, UNKNOWN_POOL, BAD_REQUEST)


@dataclass(frozen=True)
class Port:
    port: int
    protocol: str = "TCP"


@dataclass(frozen=True)
class Recorded:
    """The assignment recorded on a Service (``ASSIGNMENT_ANNOTATION``)."""

    address: str
    pool: str
    vrid: int


@dataclass(frozen=True)
class ServiceRecord:
    """What the assignment needs to know of one Service."""

    namespace: str
    name: str
    uid: str = ""
    type: str = "LoadBalancer"
    load_balancer_class: Optional[str] = None
    requested: Optional[str] = None  # as written (checked by the plan)
    requested_pool: Optional[str] = None
    sharing_key: Optional[str] = None
    ports: tuple = ()
    family: int = 4  # spec.ipFamilies[0]; a requested address decides instead
    recorded: Optional[Recorded] = None
    resource_version: Optional[str] = None

    @property
    def key(self):
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Pool:
    """One ``edge_ha:address_pools`` entry, from the normalised model."""

    name: str
    ranges: tuple  # ((first ip_address, last ip_address), ...) in pillar order
    virtual_router_ids: tuple
    prefix: int = 32
    prefix6: int = 128
    auto_assign: bool = True
    avoid_buggy_ips: bool = False

    def contains(self, addr):
        return any(first.version == addr.version and first <= addr <= last for first, last in self.ranges)

    def families(self):
        return {first.version for first, _ in self.ranges}

    def prefix_for(self, version):
        return self.prefix if version == 4 else self.prefix6

    def usable(self, addr):
        """Not the network/broadcast address of the VIP's prefix, nor .0/.255 with avoid_buggy_ips."""
        net = ipaddress.ip_network(f"{addr}/{self.prefix_for(addr.version)}", strict=False)
        if addr.version == 4:
            if net.prefixlen <= 30 and addr in (net.network_address, net.broadcast_address):
                return False
            if self.avoid_buggy_ips and int(addr) & 0xFF in (0, 255):
                return False
        elif net.prefixlen <= 126 and addr == net.network_address:
            return False
        return True


@dataclass(frozen=True)
class Assignment:
    """A Service's address: ``kept`` when it is the recorded one (nothing to write)."""

    service: str
    uid: str
    address: str
    pool: str
    vrid: int
    prefix: int
    sharing_key: Optional[str] = None
    kept: bool = False

    @property
    def record(self):
        return Recorded(self.address, self.pool, self.vrid)

    @property
    def annotation(self):
        """The ``ASSIGNMENT_ANNOTATION`` value recording this assignment."""
        return format_recorded(self.record)


@dataclass(frozen=True)
class Refusal:
    """No address for a Service: ``reason`` is the Event reason, ``message`` says why."""

    service: str
    uid: str
    reason: str
    message: str


@dataclass(frozen=True)
class LBPlan:
    assignments: tuple = ()
    refusals: tuple = ()
    ignored: tuple = ()  # Services that are not ours (type or class)
    released: tuple = ()  # addresses of ``active`` no Service holds any more
    notes: tuple = field(default=())

    def by_service(self):
        return {a.service: a for a in self.assignments}

    def to_record(self):
        """Assignments whose annotation must be written (new or changed)."""
        return tuple(a for a in self.assignments if not a.kept)

    def addresses(self):
        """``{address: Assignment of the first Service holding it}`` (shared addresses once)."""
        out = {}
        for a in self.assignments:
            out.setdefault(a.address, a)
        return out


# ---------------------------------------------------------------- reading


def pools_from_model(model):
    """The typed pools of a normalised model, by name."""
    return tuple(
        Pool(
            name=p["name"],
            ranges=tuple((ipaddress.ip_address(f), ipaddress.ip_address(l)) for f, l in p["ranges"]),
            virtual_router_ids=tuple(p["virtual_router_ids"]),
            prefix=p["prefix"],
            prefix6=p["prefix6"],
            auto_assign=p["auto_assign"],
            avoid_buggy_ips=p["avoid_buggy_ips"],
        )
        for _, p in sorted((model.get("address_pools") or {}).items())
    )


def format_recorded(recorded):
    return json.dumps({"address": recorded.address, "pool": recorded.pool, "vrid": recorded.vrid},
                      sort_keys=True, separators=(",", ":"))


def parse_recorded(value):
    """The recorded assignment from the annotation's text, or None (absent or malformed: assigned anew)."""
    if not value:
        return None
    try:
        data = json.loads(value)
        address = str(ipaddress.ip_address(data["address"]))
        vrid = data["vrid"]
        if not isinstance(vrid, int) or isinstance(vrid, bool) or not isinstance(data["pool"], str):
            return None
        return Recorded(address, data["pool"], vrid)
    except (ValueError, TypeError, KeyError):
        return None


def service_record(obj):
    """A ``ServiceRecord`` from a Service as the API sends it (wire dict)."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    notes = meta.get("annotations") or {}
    requested = (notes.get(IPS_ANNOTATION) or "").strip() or (spec.get("loadBalancerIP") or "").strip() or None
    families = spec.get("ipFamilies") or ["IPv4"]
    return ServiceRecord(
        namespace=meta.get("namespace", ""),
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        type=spec.get("type", "ClusterIP"),
        load_balancer_class=spec.get("loadBalancerClass"),
        requested=requested,
        requested_pool=(notes.get(POOL_ANNOTATION) or "").strip() or None,
        sharing_key=(notes.get(SHARING_ANNOTATION) or "").strip() or None,
        ports=tuple(Port(int(p.get("port", 0)), p.get("protocol", "TCP")) for p in spec.get("ports") or []),
        family=6 if families[0] == "IPv6" else 4,
        recorded=parse_recorded(notes.get(ASSIGNMENT_ANNOTATION)),
        resource_version=meta.get("resourceVersion"),
    )


def is_ours(service, default_class=False):
    """A LoadBalancer Service of our class (or of no class, when we are the default implementation)."""
    if service.type != "LoadBalancer":
        return False
    if service.load_balancer_class is None:
        return bool(default_class)
    return service.load_balancer_class == LB_CLASS


# ---------------------------------------------------------------- planning


class _Holders:
    """Who holds each address, and the VRIDs in use per family."""

    def __init__(self):
        self.by_address = {}  # ip_address -> [ServiceRecord]
        self.vrid_of = {}  # ip_address -> vrid
        self.pool_of = {}  # ip_address -> pool name
        self.vrids = set()  # (family, vrid)

    def clash(self, addr, service):
        """Why ``service`` may not share ``addr``, or None."""
        holders = self.by_address.get(addr, [])
        for other in holders:
            if service.sharing_key is None or other.sharing_key != service.sharing_key:
                return f"{addr} is taken by Service {other.key}" + (
                    "" if service.sharing_key is None or other.sharing_key is None
                    else f" (sharing key {other.sharing_key!r}, not {service.sharing_key!r})")
            same = set(other.ports) & set(service.ports)
            if same:
                port = sorted(same, key=lambda p: (p.port, p.protocol))[0]
                return (f"{addr} is shared with Service {other.key} (key {service.sharing_key!r}), "
                        f"which also uses port {port.port}/{port.protocol}")
        return None

    def add(self, addr, service, pool, vrid):
        self.by_address.setdefault(addr, []).append(service)
        self.vrid_of.setdefault(addr, vrid)
        self.pool_of.setdefault(addr, pool)
        self.vrids.add((addr.version, vrid))

    def free_vrid(self, pool, family):
        return next((v for v in pool.virtual_router_ids if (family, v) not in self.vrids), None)


def _pool_named(pools, name):
    return next((p for p in pools if p.name == name), None)


def _pool_of(pools, addr):
    return next((p for p in pools if p.contains(addr)), None)


def _free_address(pool, family, holders):
    """The lowest usable address of ``family`` in ``pool`` nobody holds (ranges in pillar order), or None."""
    for first, last in pool.ranges:
        if first.version != family:
            continue
        addr = first
        while addr <= last:
            if addr not in holders.by_address and pool.usable(addr):
                return addr
            if addr == last:
                break
            addr += 1
    return None


def _parse_request(text):
    try:
        return ipaddress.ip_address(text.strip()), None
    except ValueError:
        return None, f"{text!r} is not an IP address ({IPS_ANNOTATION} or spec.loadBalancerIP)"


def plan(pools, services, default_class=False, active=()):
    """
    Assign addresses (pure, deterministic). ``pools``: ``Pool`` tuple (see
    ``pools_from_model``); ``services``: ``ServiceRecord``s; ``active``: the
    addresses served now (the last plan's), for ``released``. Returns an
    ``LBPlan``.
    """
    pools = tuple(sorted(pools, key=lambda p: p.name))
    ours, ignored = [], []
    for svc in services:
        (ours if is_ours(svc, default_class) else ignored).append(svc)
    ours.sort(key=lambda s: (s.namespace, s.name, s.uid))
    holders = _Holders()
    done, refusals, notes = {}, [], []

    def assign(svc, addr, pool, vrid, kept=False):
        holders.add(addr, svc, pool.name, vrid)
        done[svc.key] = Assignment(svc.key, svc.uid, str(addr), pool.name, holders.vrid_of[addr],
                                   pool.prefix_for(addr.version), svc.sharing_key, kept)

    def refuse(svc, reason, message):
        refusals.append(Refusal(svc.key, svc.uid, reason, message))
        done[svc.key] = None

    requests = {}
    for svc in ours:
        if svc.requested:
            requests[svc.key] = _parse_request(svc.requested)

    # 1. recorded assignments that still hold: same address requested (or none), inside its pool, VRID valid
    for svc in ours:
        rec = svc.recorded
        if rec is None:
            continue
        addr = ipaddress.ip_address(rec.address)
        wanted, _ = requests.get(svc.key, (None, None))
        pool = _pool_of(pools, addr)
        why = None
        if wanted is not None and wanted != addr:
            why = f"it asks for {wanted} now"
        elif pool is None:
            why = f"{addr} is in no address pool any more"
        elif svc.requested_pool is not None and svc.requested_pool != pool.name:
            why = f"it asks for pool {svc.requested_pool} now"
        elif not pool.usable(addr):
            why = f"{addr} is not usable with the pool's prefix settings any more"
        elif holders.clash(addr, svc):
            why = holders.clash(addr, svc)
        if why:
            notes.append(f"{svc.key}: recorded assignment {addr} not kept: {why}")
            continue
        vrid = holders.vrid_of.get(addr)
        if vrid is None:
            vrid = rec.vrid if (rec.vrid in pool.virtual_router_ids and (addr.version, rec.vrid) not in holders.vrids) \
                else holders.free_vrid(pool, addr.version)
            if vrid is None:
                notes.append(f"{svc.key}: recorded assignment {addr} not kept: no free VRID in pool {pool.name}")
                continue
        assign(svc, addr, pool, vrid, kept=(rec == Recorded(str(addr), pool.name, vrid)))

    # 2. requested addresses, then 3. the rest
    pending = [s for s in ours if s.key not in done]
    pending.sort(key=lambda s: (s.key not in requests, s.namespace, s.name, s.uid))
    for svc in pending:
        if svc.key in requests:
            addr, problem = requests[svc.key]
            if problem:
                refuse(svc, BAD_REQUEST, problem)
                continue
            pool = _pool_of(pools, addr)
            if pool is None:
                refuse(svc, OUTSIDE_POOLS, f"{addr} is in no address pool (edge_ha:address_pools: "
                                           f"{', '.join(p.name for p in pools) or 'none'})")
                continue
            if svc.requested_pool is not None and svc.requested_pool != pool.name:
                refuse(svc, OUTSIDE_POOLS, f"{addr} is in pool {pool.name}, not in the requested pool "
                                           f"{svc.requested_pool}")
                continue
            if not pool.usable(addr):
                refuse(svc, OUTSIDE_POOLS, f"{addr} is the network or broadcast address of its prefix in pool "
                                           f"{pool.name}")
                continue
            clash = holders.clash(addr, svc)
            if clash:
                refuse(svc, ADDRESS_TAKEN, clash)
                continue
            vrid = holders.vrid_of.get(addr) or holders.free_vrid(pool, addr.version)
            if vrid is None:
                refuse(svc, POOL_EXHAUSTED, f"pool {pool.name} has no free VRID for {addr} "
                                            f"(virtual_router_ids: all {len(pool.virtual_router_ids)} in use)")
                continue
            assign(svc, addr, pool, vrid)
            continue
        if svc.requested_pool is not None:
            candidates = [p for p in pools if p.name == svc.requested_pool]
            if not candidates:
                refuse(svc, UNKNOWN_POOL, f"pool {svc.requested_pool!r} ({POOL_ANNOTATION}) is not in "
                                          f"edge_ha:address_pools ({', '.join(p.name for p in pools) or 'none'})")
                continue
        else:
            candidates = [p for p in pools if p.auto_assign]
        candidates = [p for p in candidates if svc.family in p.families()]
        # sharing: join an address that Services with the same key already hold
        if svc.sharing_key is not None:
            shared = next((a for a, hs in holders.by_address.items()
                           if a.version == svc.family and any(h.sharing_key == svc.sharing_key for h in hs)
                           and holders.clash(a, svc) is None
                           and any(p.name == holders.pool_of[a] for p in candidates)), None)
            if shared is not None:
                assign(svc, shared, _pool_named(pools, holders.pool_of[shared]), holders.vrid_of[shared])
                continue
        reasons = []
        for pool in candidates:
            vrid = holders.free_vrid(pool, svc.family)
            addr = _free_address(pool, svc.family, holders) if vrid is not None else None
            if addr is not None:
                assign(svc, addr, pool, vrid)
                break
            reasons.append(f"{pool.name}: " + ("every address is taken" if vrid is not None else
                                               f"all {len(pool.virtual_router_ids)} VRIDs are in use"))
        else:
            if not candidates:
                which = f"pool {svc.requested_pool}" if svc.requested_pool else "no pool with auto_assign"
                refuse(svc, POOL_EXHAUSTED, f"{which} has IPv{svc.family} addresses")
            else:
                refuse(svc, POOL_EXHAUSTED, f"no free IPv{svc.family} address: " + "; ".join(reasons))

    assignments = tuple(done[s.key] for s in ours if done.get(s.key) is not None)
    held = {a.address for a in assignments}
    released = tuple(sorted({str(ipaddress.ip_address(a)) for a in active} - held,
                            key=lambda a: (ipaddress.ip_address(a).version, ipaddress.ip_address(a))))
    return LBPlan(
        assignments=assignments,
        refusals=tuple(refusals),
        ignored=tuple(sorted(s.key for s in ignored)),
        released=released,
        notes=tuple(notes),
    )


# ---------------------------------------------------------------- VRRP instances (the runner and the ext_pillar)

INSTANCE_PREFIX = "lb_"
NAME_MAX = 64  # keepalived instance names: model.NAME_RE


def instance_name(pool, vrid, family):
    """``lb_<pool>_<vrid>_v4|v6`` (at most 64 characters: a long pool name is cut and hashed)."""
    tail = f"_{vrid}_v{family}"
    name = f"{INSTANCE_PREFIX}{pool}{tail}"
    if len(name) <= NAME_MAX:
        return name
    digest = hashlib.sha256(pool.encode()).hexdigest()[:8]
    keep = NAME_MAX - len(INSTANCE_PREFIX) - len(tail) - len(digest) - 1
    return f"{INSTANCE_PREFIX}{pool[:keep]}-{digest}{tail}"


def pool_instances(lb_plan, model):
    """
    ``{instance name: vrrp_instances entry}`` for the addresses of an
    ``LBPlan`` (one instance per address, shared addresses once): the pool's
    ``vrrp`` settings, the address's VRID, ``virtual_ipaddress``
    ``[address/prefix]`` and ``address_pool``. Pillar syntax (not normalised):
    what the ext_pillar merges into ``edge_ha:vrrp_instances``, so the model
    validates them and derives their priorities (owner spread) as any
    instance's.
    """
    out = {}
    for address, a in sorted(lb_plan.addresses().items(), key=lambda kv: _addr_key(kv[0])):
        pool = (model.get("address_pools") or {}).get(a.pool)
        if pool is None:
            continue
        family = ipaddress.ip_address(address).version
        inst = {k: v for k, v in (pool.get("vrrp") or {}).items()}
        inst.update(virtual_router_id=a.vrid, virtual_ipaddress=[f"{address}/{a.prefix}"], address_pool=a.pool)
        out[instance_name(a.pool, a.vrid, family)] = inst
    return out


def services_by_address(lb_plan):
    """``{address: [namespace/name, ...]}`` of the plan's assignments (sorted)."""
    out = {}
    for a in lb_plan.assignments:
        out.setdefault(a.address, []).append(a.service)
    return {k: sorted(v) for k, v in sorted(out.items(), key=lambda kv: _addr_key(kv[0]))}


def _addr_key(text):
    addr = ipaddress.ip_address(text)
    return addr.version, addr


def active_addresses(model):
    """The addresses the model's pool instances serve now (``plan``'s ``active``)."""
    return tuple(sorted({v for inst in (model.get("vrrp_instances") or {}).values() if inst.get("address_pool")
                         for v in inst["vips"]}, key=_addr_key))


def pillar_instances(instances, edge_ha):
    """
    The recorded pool instances (``pool_instances``) that still fit the
    ``edge_ha`` pillar they are merged into (the ext_pillar): named ``lb_*``,
    not a name the pillar uses itself, their pool still in
    ``edge_ha:address_pools``, their address inside it and their VRID in its
    list. Nothing without ``address_pools``. Never raises.
    """
    if not isinstance(edge_ha, dict) or not isinstance(edge_ha.get("address_pools"), dict) \
            or not isinstance(instances, dict):
        return {}
    from edge_ha_core import model as edge_model  # pylint: disable=import-outside-toplevel

    own = edge_ha.get("vrrp_instances") if isinstance(edge_ha.get("vrrp_instances"), dict) else {}
    out = {}
    for name, inst in sorted(instances.items()):
        try:
            if not name.startswith(INSTANCE_PREFIX) or name in own or not isinstance(inst, dict):
                continue
            spec = edge_ha["address_pools"][inst["address_pool"]]
            entries = spec["addresses"]
            ranges = [edge_model.parse_pool_entry(e) for e in ([entries] if isinstance(entries, str) else entries)]
            if inst["virtual_router_id"] not in edge_model.parse_vrid_range(spec["virtual_router_ids"]):
                continue
            addrs = [ipaddress.ip_interface(v).ip for v in inst["virtual_ipaddress"]]
            if not addrs or not all(any(f.version == a.version and f <= a <= l for f, l in ranges) for a in addrs):
                continue
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
        out[name] = dict(inst)
    return out


def status_writes(services, addresses, held):
    """
    The ``status.loadBalancer.ingress`` writes a plan needs (pure):
    ``[(ServiceRecord, [address] or [])]`` for the Services whose status
    differs. ``services``: ``[(ServiceRecord, current ingress IPs)]``;
    ``addresses``: ``{namespace/name: address}`` of the plan's assignments;
    ``held``: the addresses a node holds now.

    * a Service with an address: ``[address]`` once a node holds it; while
      nobody does (a failover) an already written ``[address]`` stays;
      anything else is removed;
    * a Service without one (refused, not ours any more): the address we
      recorded on it is removed from its status; nothing else is touched
      (a Service of another class keeps what its implementation wrote).
    """
    writes = []
    for svc, current in services:
        current = list(current or [])
        address = addresses.get(svc.key)
        if address is not None:
            if address in held:
                want = [address]
            elif current == [address]:
                want = current
            else:
                want = []
        else:
            mine = svc.recorded.address if svc.recorded else None
            want = [ip for ip in current if ip != mine]
        if want != current:
            writes.append((svc, want))
    return writes


def to_unrecord(services, lb_plan):
    """The Services that carry our assignment annotation but have no address in ``lb_plan`` (remove it)."""
    assigned = lb_plan.by_service()
    return [s for s in services if s.recorded is not None and s.key not in assigned]


def ingress_ips(service):
    """``status.loadBalancer.ingress`` IPs of a Service (wire dict), in order."""
    ingress = (((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or [])
    return [i.get("ip") for i in ingress if isinstance(i, dict) and i.get("ip")]


def owner_spread(model):
    """
    ``{node: how many VIPs it is preferred owner of}`` (the highest priority
    of each VIP's instance; ties: the first node by name), every edge node
    listed, pillar and pool instances alike.
    """
    out = {node: 0 for node in sorted(model.get("nodes") or {})}
    for inst in (model.get("vrrp_instances") or {}).values():
        prios = inst.get("priorities") or {}
        if not prios:
            continue
        top = sorted(prios, key=lambda n: (-prios[n], n))[0]
        out[top] = out.get(top, 0) + len(inst.get("vips") or ())
    return out
