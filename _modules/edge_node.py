"""
What an edge node knows about itself, for the reconciler and the report.

``edge_node.report`` is what the master's ``edge.reconcile`` and
``edge.vip_report`` know about every edge minion. The node pushes it
(``edge_node.publish``, called by the ``vrrp`` beacon on every look: when it
changed, and at a slow heartbeat) into the master's mine, which Salt stores
under the id the master verified for the sending minion; beacon events only
tell the master *when* to look, never *what* is true.

The ingress health verdict is kept by the ``ingress_health`` beacon (it
debounces the probes) in ``<state_dir>/ingress_health.json``; ``report``
adds a live probe beside it.
"""

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import time
import threading
import urllib.error
import urllib.request

import salt.channel.client
from edge_ha_core import desired
from salt.exceptions import CommandExecutionError

__virtualname__ = "edge_node"

__load__ = ["probe_ingress", "ingress_health", "record_ingress_health", "report", "publish", "vip_conflicts",
            "quiesce", "vip_connections", "handover", "release_when_taken_over"]

MINE_KEY = "edge_ha_report"  # the mine entry the master reads
HEARTBEAT = 10  # seconds between publications of an unchanged report
QUIESCE_MARK = "quiesced.json"
SEND_TIMEOUT = 5  # seconds one report may take to reach the master

log = logging.getLogger(__name__)

QUIESCE_TABLE = "edge_ha_quiesce"

HEALTH_FILE = "ingress_health.json"


def __virtual__():
    return __virtualname__


def probe_url(url, timeout):
    """One HTTP GET: (healthy, detail). 2xx/3xx is healthy; anything else, or no answer, is not."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # nosec - operator-configured local URL
            return 200 <= resp.status < 400, f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return False, str(getattr(exc, "reason", exc))


def _ingress_conf(url=None, timeout=None):
    conf = __salt__["edge_ha.model"]()["ingress"]  # pylint: disable=undefined-variable
    return url or conf["health_url"], float(timeout or conf["timeout"])


def _health_path():
    return os.path.join(__salt__["keepalived.settings"]()["state_dir"], HEALTH_FILE)  # pylint: disable=undefined-variable


def probe_ingress(url=None, timeout=None):
    """
    Probe the local ingress controller's health URL once (default:
    ``edge_ha:ingress:health_url``). Returns ``{healthy, detail, url}``.

    CLI Example:

    .. code-block:: bash

        salt-call edge_node.probe_ingress
        salt-call edge_node.probe_ingress url=http://127.0.0.1:10254/healthz
    """
    url, timeout = _ingress_conf(url, timeout)
    healthy, detail = probe_url(url, timeout)
    return {"healthy": healthy, "detail": detail, "url": url}


def record_ingress_health(healthy, detail=""):
    """
    Record the debounced ingress verdict (the ``ingress_health`` beacon calls
    this on every change) and push the node's report with it to the master's
    mine. Returns the digest of that report.

    CLI Example:

    .. code-block:: bash

        salt-call edge_node.record_ingress_health healthy=False detail="HTTP 500"
    """
    path = _health_path()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump({"healthy": bool(healthy), "detail": detail, "since": time.time()}, fh)
    os.replace(tmp, path)
    # the report with the new verdict, pushed now; the beacon's event names its digest, and the master's
    # trigger waits until the mine has it (the push runs in a thread: the event can arrive first)
    return publish()["digest"]


def ingress_health(probe=True):
    """
    The debounced verdict recorded by the beacon (``None`` when there is none
    yet) and a live probe (``probe=False``: only when nothing is recorded yet).

    CLI Example:

    .. code-block:: bash

        salt-call edge_node.ingress_health
    """
    try:
        with open(_health_path(), encoding="utf-8") as fh:
            recorded = json.load(fh)
    except (OSError, ValueError):
        recorded = None
    live = probe_ingress() if (probe or not recorded) else None
    healthy = recorded["healthy"] if recorded else live["healthy"]
    return {"healthy": healthy, "recorded": recorded, "live": live}


def report(probe=True):
    """
    Everything the master needs about this edge node: keepalived status (VIPs
    really on the interface), whether the node is out of VIP ownership,
    ingress health, standby (priority lowered by a drain or a staged reload),
    the drained nodes it renders with IPVS weight 0, the desired-state digest
    of the keepalived.conf on disk (``config.digest``) and whether new
    connections to its VIPs are held back (``quiesced``). ``probe=False``
    leaves out the live ingress probe (the debounced verdict stays).

    CLI Example:

    .. code-block:: bash

        salt '*' edge_node.report
    """
    mod = __salt__  # pylint: disable=undefined-variable
    conf = mod["keepalived.settings"]()
    return {
        "node": __opts__["id"],  # pylint: disable=undefined-variable
        "time": time.time(),
        "keepalived": mod["keepalived.status"](),
        "out_of_service": mod["keepalived.out_of_service_state"](),
        "standby": mod["keepalived.standby_state"](),
        "drained_nodes": mod["keepalived.drained_nodes"](),
        "ingress": ingress_health(probe=probe),
        "config": {"digest": desired.read_digest(_head(conf["config_file"]))},
        "quiesced": os.path.exists(os.path.join(conf["state_dir"], QUIESCE_MARK)),
    }


def _head(path, size=4096):
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read(size)
    except OSError:
        return ""


def report_digest(data):
    """Digest of a report without its time stamps: equal digests, nothing changed."""
    stable = {k: v for k, v in data.items() if k not in ("time", "digest")}
    ingress = dict(stable.get("ingress") or {})
    ingress.pop("live", None)
    stable["ingress"] = ingress
    return hashlib.sha256(json.dumps(stable, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _fork_safe_locks():
    """
    After a fork, fresh locks for Python 3.11's ``functools.cached_property``
    on Salt's classes that have them (``salt.cache.Cache`` and others). That
    descriptor holds one class-wide RLock while it computes a value; the
    report sender below is a thread of the salt-minion process, and its
    request channel computes ``Cache`` properties. A job process the minion
    forked in that moment inherited the lock held by a thread it does not
    have, and waited on it for ever at its first ``Cache`` (seen in the lab:
    a ``state.apply`` and a ``keepalived.plan`` that never returned, with
    the master's reconcile waiting for them). Python 3.12 has no such lock.
    """
    import functools  # pylint: disable=import-outside-toplevel
    import sys  # pylint: disable=import-outside-toplevel

    for name in ("salt.cache", "salt.key", "salt.auth", "salt.utils.decorators"):
        module = sys.modules.get(name)
        for klass in vars(module).values() if module else ():
            if not isinstance(klass, type):
                continue
            for attr in vars(klass).values():
                if isinstance(attr, functools.cached_property) and hasattr(attr, "lock"):
                    attr.lock = threading.RLock()


class _ForkGuard:
    """
    Threads that talk to the master (OpenSSL: the channel's crypto) run
    ``inside``; a fork of this process waits until none is (at most
    ``wait`` s: a thread stuck on a master that does not answer is waiting
    on its socket, not inside OpenSSL), and no thread enters until the
    fork is done. Several threads may be inside at once (one report sender
    per master).
    """

    def __init__(self, wait):
        self.wait = wait
        self._cond = threading.Condition()
        self._inside = 0

    @contextlib.contextmanager
    def inside(self):
        with self._cond:
            self._inside += 1
        try:
            yield
        finally:
            with self._cond:
                self._inside -= 1
                self._cond.notify_all()

    def before_fork(self):
        self._cond.acquire()  # held across the fork: nobody enters meanwhile
        self._cond.wait_for(lambda: self._inside == 0, timeout=self.wait)

    def after_fork_in_parent(self):
        self._cond.release()

    def after_fork_in_child(self):
        self._cond = threading.Condition()  # the child has none of the parent's threads
        self._inside = 0


def _register_fork_safety():
    """
    Once per process: ``_fork_safe_locks`` in every child it forks, and
    every fork waits for the threads that talk to the master to be out of
    it (``_fork_guard``, at most 1 s). That talk is OpenSSL (the channel's
    crypto); a job process forked in the middle of it inherited OpenSSL's
    locks held by a thread it does not have and hung at its first hash (seen
    in the lab: a ``keepalived.plan`` on edge1 waiting in
    ``hashlib.pbkdf2_hmac`` for 90 s, until the master gave it up).
    """
    if getattr(os, "_edge_ha_fork_safe", False):  # the loader may load this module more than once
        return
    guard = _ForkGuard(wait=1.0)

    def after_in_child():
        guard.after_fork_in_child()
        _fork_safe_locks()

    os._edge_ha_fork_guard = guard  # pylint: disable=protected-access
    os._edge_ha_fork_safe = True  # pylint: disable=protected-access
    os.register_at_fork(before=guard.before_fork, after_in_parent=guard.after_fork_in_parent,
                        after_in_child=after_in_child)


def _fork_guard():
    """Where a thread that talks to the master runs (``_ForkGuard.inside``); no guard before registration."""
    guard = getattr(os, "_edge_ha_fork_guard", None)
    return guard.inside() if guard else contextlib.nullcontext()


def _send_mine(opts, load, timeout):
    """
    Send a ``_mine`` load to the master over a request channel of its own
    (one try, ``timeout`` s), so that a master that is down holds neither the
    minion's event loop nor its main request channel (Salt sends those
    requests one at a time: a report retried there would delay every job
    return after a master restart). The master stores it under the id its
    request channel verified.
    """
    try:
        with salt.channel.client.ReqChannel.factory(opts) as channel:
            channel.send(load, timeout=timeout, tries=1)
        return True
    except Exception as exc:  # pylint: disable=broad-except
        log.debug("edge_node: report not sent to the master: %s", exc)
        return False


def publish(force=False, heartbeat=HEARTBEAT, wait=False):
    """
    Push this node's report (``report probe=False``) into the master's mine
    (``edge_ha_report``; with Salt multi-master, into every master's) when it
    changed since the last push, or when
    ``heartbeat`` seconds have passed, or with ``force``. The master stores it
    under the id it verified for this minion, so no other minion can write
    it. The ``vrrp`` beacon calls this on every look. Returns
    ``{published, changed, digest}``; masterless minions publish nothing.
    ``wait``: send it now, in this call (one try), not from the background
    sender; ``published`` then says whether the master took it
    (``keepalived.managed`` does this after a reload, so the master's staged
    reload sees the new config without waiting for the beacon's next look).

    CLI Example:

    .. code-block:: bash

        salt-call edge_node.publish force=True
        salt-call edge_node.publish force=True wait=True
    """
    opts = __opts__  # pylint: disable=undefined-variable
    data = report(probe=False)
    data["digest"] = digest = report_digest(data)
    ctx = __context__.setdefault("edge_ha_publish", {})  # pylint: disable=undefined-variable
    changed = ctx.get("digest") != digest
    due = time.monotonic() - ctx.get("at", 0.0) >= float(heartbeat)
    if opts.get("file_client") == "local" or not (force or changed or due):
        return {"published": False, "changed": changed, "digest": digest}
    load = {"cmd": "_mine", "data": {MINE_KEY: data}, "id": opts["id"], "clear": False}
    if wait:
        return {"published": _send_mine(opts, load, SEND_TIMEOUT), "changed": changed, "digest": digest}
    lock = ctx.setdefault("lock", threading.Lock())
    _register_fork_safety()  # the senders are threads of the minion process, which forks job processes
    targets = ctx.get("targets")
    if targets is None or targets[0] != opts.get("master"):
        targets = ctx["targets"] = (opts.get("master"), _report_masters(opts))
    with lock:
        ctx.update(digest=digest, at=time.monotonic())
        for target in targets[1]:
            slot = ctx.setdefault("senders", {}).setdefault(target.get("master_uri") or target.get("master"), {})
            slot["pending"] = load
            if slot.get("thread") is None:
                slot["thread"] = threading.Thread(target=_sender, args=(ctx, lock, slot, target),
                                                  name="edge-ha-publish", daemon=True)
                slot["thread"].start()
    return {"published": True, "changed": changed, "digest": digest}


def _sender(ctx, lock, slot, opts):
    """
    One master's sender: it sends the newest pending report until none is
    left, so a change made while an earlier report is on its way follows it
    at once instead of waiting for the next look. One per master, so that a
    master that is down (each try waits ``SEND_TIMEOUT``) delays no other.
    """
    while True:
        with lock:
            pending = slot.pop("pending", None)
            if pending is None:
                slot["thread"] = None
                return
        with _fork_guard():  # no job process forked while this thread talks to the master (OpenSSL)
            sent = _send_mine(opts, pending, SEND_TIMEOUT)
        if not sent:
            ctx["at"] = 0.0  # not delivered: the next look sends again


_CONFIGURED_MASTERS = {}  # conf_file -> the minion's configured master list (read once per process)


def _report_masters(opts):
    """
    The opts to send a report with, one per master: ``opts`` itself, and with
    Salt multi-master (``master:`` a list; every minion connected to each
    master) one copy per other configured master too. Salt runs the beacons
    of a multi-master minion in its connection to the first master only, with
    that master in ``opts``: a report sent to "the master" would reach that
    one alone, and nothing would reach the others while it is down (their
    mines, unless shared, would go stale).
    """
    if not opts.get("multimaster"):
        return [opts]
    conf_file = opts.get("conf_file")
    if conf_file not in _CONFIGURED_MASTERS:
        try:
            import salt.config  # pylint: disable=import-outside-toplevel

            configured = salt.config.minion_config(conf_file, cache_minion_id=False,
                                                   ignore_config_errors=True).get("master")
        except Exception as exc:  # pylint: disable=broad-except
            log.warning("edge_node: the minion's masters cannot be read from %s: %s", conf_file, exc)
            configured = None
        _CONFIGURED_MASTERS[conf_file] = configured if isinstance(configured, list) else []
    targets = [opts]
    for master in _CONFIGURED_MASTERS[conf_file]:
        if master == opts.get("master"):
            continue
        try:
            import salt.minion  # pylint: disable=import-outside-toplevel

            other = dict(opts, master=master)
            other.update(salt.minion.resolve_dns(other, fallback=False))
            targets.append(other)
        except Exception as exc:  # pylint: disable=broad-except
            log.debug("edge_node: master %s not resolved, its report not sent: %s", master, exc)
    return targets


def _received(sock, timeout, size):
    """The packets ``sock`` receives until ``timeout`` seconds have passed."""
    import select  # pylint: disable=import-outside-toplevel

    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([sock], [], [], left)[0]:
            return
        yield sock.recv(size)


def arp_probe(interface, address, timeout=0.3):
    """
    Who else answers ARP for ``address`` on ``interface``: an RFC 5227 probe
    (sender address 0.0.0.0), so this host's own kernel does not answer it.
    Returns the MAC addresses that replied (IPv4 only; needs root).
    """
    import socket  # pylint: disable=import-outside-toplevel
    import struct  # pylint: disable=import-outside-toplevel

    target = socket.inet_aton(address)
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
    try:
        sock.bind((interface, 0x0806))
        own_mac = sock.getsockname()[4]
        frame = (
            b"\xff" * 6 + own_mac + struct.pack("!H", 0x0806)
            + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)
            + own_mac + b"\x00" * 4 + b"\x00" * 6 + target
        )
        sock.send(frame)
        seen = set()
        for data in _received(sock, timeout, 128):
            if len(data) < 42 or data[12:14] != b"\x08\x06" or struct.unpack("!H", data[20:22])[0] != 2:
                continue
            sender_mac, sender_ip = data[22:28], data[28:32]
            if sender_ip == target and sender_mac != own_mac:
                seen.add(":".join(f"{b:02x}" for b in sender_mac))
        return sorted(seen)
    finally:
        sock.close()


ICMP6_NS, ICMP6_NA = 135, 136


def solicited_node(address):
    """The solicited-node multicast group of an IPv6 address (ff02::1:ffXX:XXXX)."""
    import ipaddress  # pylint: disable=import-outside-toplevel

    low = ipaddress.IPv6Address(address).packed[-3:]
    return str(ipaddress.IPv6Address(bytes.fromhex("ff0200000000000000000001ff") + low))


def neighbor_solicitation(target, mac):
    """An ICMPv6 Neighbour Solicitation for ``target`` with our link-layer address (checksum left to the kernel)."""
    import ipaddress  # pylint: disable=import-outside-toplevel

    option = bytes([1, 1]) + bytes.fromhex(mac.replace(":", ""))
    return bytes([ICMP6_NS, 0, 0, 0, 0, 0, 0, 0]) + ipaddress.IPv6Address(target).packed + option


def parse_neighbor_advert(data, target):
    """The link-layer address a Neighbour Advertisement for ``target`` names (``"aa:bb:..."``), else None."""
    import ipaddress  # pylint: disable=import-outside-toplevel

    if len(data) < 24 or data[0] != ICMP6_NA or data[8:24] != ipaddress.IPv6Address(target).packed:
        return None
    options = data[24:]
    while len(options) >= 8:
        kind, length = options[0], options[1] * 8
        if length == 0:
            break
        if kind == 2 and length >= 8:
            return ":".join(f"{b:02x}" for b in options[2:8])
        options = options[length:]
    return "unknown"  # an answer without the option still says someone holds the address


def ndp_probe(interface, address, timeout=0.3):
    """
    Who else answers Neighbour Solicitation for the IPv6 ``address`` on
    ``interface`` (what :func:`arp_probe` is for IPv4): the link-layer
    addresses in the Neighbour Advertisements received, other than ours.
    This host's own kernel does not answer its own solicitation. Needs root.
    """
    import socket  # pylint: disable=import-outside-toplevel
    import struct  # pylint: disable=import-outside-toplevel

    with open(f"/sys/class/net/{interface}/address", encoding="ascii") as fh:
        own_mac = fh.read().strip().lower()
    sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    try:
        index = socket.if_nametoindex(interface)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, struct.pack("@I", index))
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)  # RFC 4861: hop limit 255
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)  # not to our own stack
        sock.sendto(neighbor_solicitation(address, own_mac), (solicited_node(address), 0, 0, index))
        seen = set()
        for data in _received(sock, timeout, 1024):
            mac = parse_neighbor_advert(data, address)
            if mac and mac != own_mac:
                seen.add(mac)
        return sorted(seen)
    finally:
        sock.close()


def neighbor_probe(interface, address, timeout=0.3):
    """Other hosts that answer for ``address``: ARP for IPv4, Neighbour Solicitation for IPv6."""
    if ":" in address:
        return ndp_probe(interface, address, timeout)
    return arp_probe(interface, address, timeout)


def vip_conflicts():
    """
    For every VIP this node holds: the other hosts that answer for it too
    (ARP for IPv4, Neighbour Solicitation for IPv6): a split brain, or a
    stale copy on another node.

    CLI Example:

    .. code-block:: bash

        salt-call edge_node.vip_conflicts
    """
    status = __salt__["keepalived.status"]()  # pylint: disable=undefined-variable
    out = {}
    for inst in status["instances"].values():
        for vip in inst["vips_present"]:
            others = neighbor_probe(inst["interface"], vip)
            if others:
                out[vip] = others
    return out


def quiesce_rules(vips):
    """nftables script: drop new TCP connections (SYN without ACK) to ``vips``; established ones go on."""
    v4 = sorted(v for v in vips if ":" not in v)
    v6 = sorted(v for v in vips if ":" in v)
    rules = []
    if v4:
        rules.append(f"ip daddr {{ {', '.join(v4)} }} tcp flags & (syn | ack) == syn drop")
    if v6:
        rules.append(f"ip6 daddr {{ {', '.join(v6)} }} tcp flags & (syn | ack) == syn drop")
    body = "".join(f"  {r}\n" for r in rules)
    return (f"table inet {QUIESCE_TABLE} {{\n chain input {{\n  type filter hook input priority -10; policy accept;\n"
            f"{body} }}\n}}\n")


def _nft(*args, script=None):
    nft = shutil.which("nft")
    if not nft:
        raise CommandExecutionError("nft (package nftables) is needed to quiesce a node")
    proc = subprocess.run([nft, *args], input=script, capture_output=True, text=True, check=False)
    return proc


def quiesce(enabled=True):
    """
    Stop (``enabled=True``) or allow again new TCP connections to this node's
    VIPs, before its VIPs move (``edge.drain``): an nftables rule drops SYNs
    to the VIPs, so requests in flight finish here while new clients retry
    their SYN (after 1 s, as every TCP stack does) and reach the next owner.
    Established connections are not touched. Returns ``{changed, quiesced, vips}``.

    CLI Example:

    .. code-block:: bash

        salt-call edge_node.quiesce
        salt-call edge_node.quiesce enabled=False
    """
    present = _nft("list", "table", "inet", QUIESCE_TABLE).returncode == 0
    vips = sorted({v for i in __salt__["keepalived.status"]()["instances"].values() for v in i["vips"]})  # pylint: disable=undefined-variable
    mark = os.path.join(__salt__["keepalived.settings"]()["state_dir"], QUIESCE_MARK)  # pylint: disable=undefined-variable
    if present:
        _nft("delete", "table", "inet", QUIESCE_TABLE)
    if enabled and vips:
        with open(mark, "w", encoding="utf-8") as fh:  # before the rules: the report never hides them
            json.dump({"vips": vips, "since": time.time()}, fh)
        proc = _nft("-f", "-", script=quiesce_rules(vips))
        if proc.returncode != 0:
            raise CommandExecutionError(f"nft could not add the quiesce rules: {proc.stderr.strip()}")
    elif os.path.exists(mark):
        os.unlink(mark)
    return {"changed": present != bool(enabled and vips), "quiesced": bool(enabled and vips), "vips": vips}


def count_connections(ss_output, vips):
    """Established TCP connections whose local address is one of ``vips``, from ``ss -Htn state established``."""
    wanted = set(vips)
    count = 0
    for line in ss_output.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        addr = fields[2].rsplit(":", 1)[0].strip("[]")  # Recv-Q Send-Q Local:Port Peer:Port
        addr = addr.split("%", 1)[0]
        if addr.startswith("::ffff:"):
            addr = addr[7:]
        if addr in wanted:
            count += 1
    return count


def vip_connections():
    """
    Established TCP connections to this node's VIPs (local sockets: the ingress
    on this node), what a drain waits for before the VIPs move.

    CLI Example:

    .. code-block:: bash

        salt-call edge_node.vip_connections
    """
    vips = {v for i in __salt__["keepalived.status"]()["instances"].values() for v in i["vips"]}  # pylint: disable=undefined-variable
    proc = subprocess.run(["ss", "-Htn", "state", "established"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise CommandExecutionError(f"ss failed: {proc.stderr.strip()}")
    return count_connections(proc.stdout, vips)


def handover(flag_reason=None, timeout=10, interval=0.05):
    """
    The node-side steps of moving this node's VIPs away without failing
    requests, in one call (each Salt round trip between them is time in which
    new clients' SYNs are dropped, and a client retries its SYN after 1 s):
    new TCP connections to the VIPs held back (``quiesce``), the requests in
    flight waited for here (at most ``timeout`` s, looked at every
    ``interval`` s), then, with ``flag_reason``, the out-of-service flag set
    (``keepalived.out_of_service``: FAULT, a priority-0 advert, the next
    backup takes over within its skew time). Without ``flag_reason`` the
    caller sets the flag itself (after something else, e.g. another node's
    priority restored). Returns ``{quiesced, in_flight, waited, flagged}``
    (``in_flight``: connections still open when the wait ended).

    CLI Example:

    .. code-block:: bash

        salt-call edge_node.handover flag_reason="handover: drain edge1" timeout=10
    """
    quiesced = quiesce(True)
    start = time.monotonic()
    while True:
        left = vip_connections()
        if left == 0 or time.monotonic() - start >= float(timeout):
            break
        time.sleep(float(interval))
    waited = round(time.monotonic() - start, 3)
    flagged = False
    if flag_reason:
        __salt__["keepalived.out_of_service"](True, str(flag_reason))  # pylint: disable=undefined-variable
        flagged = True
    return {"quiesced": quiesced["quiesced"], "in_flight": left, "waited": waited, "flagged": flagged}


def release_when_taken_over(timeout=15, interval=0.1):
    """
    After keepalived died without cleaning up (SIGKILL), this node still has
    its VIPs and still answers for them, which is right until a backup takes
    over. Wait (up to ``timeout`` s) until another host answers for every
    one of them (an RFC 5227 ARP probe for IPv4, a Neighbour Solicitation
    for IPv6), then remove them here
    (``keepalived.release_stale_vips``). Does nothing while keepalived runs.
    Returns the addresses removed.

    CLI Example:

    .. code-block:: bash

        salt-call edge_node.release_when_taken_over timeout=10
    """
    mod = __salt__  # pylint: disable=undefined-variable
    deadline = time.monotonic() + float(timeout)
    while True:
        status = mod["keepalived.status"]()
        if status["running"]:
            return []
        stale = [(i["interface"], v) for i in status["instances"].values() for v in i["vips_present"]]
        if not stale:
            return []
        if all(neighbor_probe(iface, vip, timeout=0.1) for iface, vip in stale):
            return mod["keepalived.release_stale_vips"]()
        if time.monotonic() > deadline:
            return []
        time.sleep(float(interval))
