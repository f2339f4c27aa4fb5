"""The IPVS data path end to end, on the VM's kernel (issue 13, item 5).

Two edge nodes are IPVS directors (keepalived with the config the project
renders from an ``edge_ha`` pillar: a ``lb_kind: DR`` virtual server, and
``global_defs: lvs_sync_daemon`` or not), three real servers answer through
direct routing, a client holds long-lived TCP connections through the VIP
(drlab.py has the topology). Asserted is what a client sees:

* a crash of the VIP owner (SIGKILL to its keepalived's process group, as
  the lab does) keeps the connections going when ``lvs_sync_daemon`` is set
  (at least 95 %), and loses them without it (the same run's baseline: the
  new director resets connections it has no entry for);
* a drain of a real server (its weight 0 rendered by the project and loaded
  by keepalived's reload) sends new connections elsewhere, keeps the open
  ones, and the runner's own wait (``edge._wait_ipvs_drain``, reading the
  directors' tables through ``_modules/ipvs.py``) returns only after those
  connections are gone.

Each test builds its own namespaces and deletes them (and stops what it
started, by pid) also when it fails. The numbers are printed and appended to
``$EDGE_HA_VM_RESULTS/ipvs_dr.json`` (the results share) for bench/ipvs_dr.py.
"""

import collections
import json
import os
import sys
import threading
import time

import drlab
import pytest
from drlab import DIRECTORS, PORT, REAL_SERVERS, VIP, Clients, Director, in_netns, write_sysctls

pytestmark = pytest.mark.vm

if str(drlab.REPO) not in sys.path:
    sys.path.insert(0, str(drlab.REPO))

CONNECTIONS = 50
#: bench/ipvs_dr.py repeats the failover (EDGE_HA_DR_REPEAT=N); the VM stage runs it once per mode
REPEAT = range(int(os.environ.get("EDGE_HA_DR_REPEAT", "1")))


def record(**values):
    """Append one measurement to the results share (read by bench/ipvs_dr.py)."""
    path = os.path.join(os.environ.get("EDGE_HA_VM_RESULTS", "/tmp"), "ipvs_dr.json")
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        data = []
    data.append(values)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1)


def wait_for(cond, timeout, what):
    start = time.monotonic()
    while True:
        value = cond()
        if value:
            return time.monotonic() - start
        assert time.monotonic() - start < timeout, f"not within {timeout}s: {what}"
        time.sleep(0.2)


class Lab:
    def __init__(self, net, ipvs, workdir):
        self.net, self.ipvs = net, ipvs
        self.directors = {n: Director(net, n, workdir) for n in DIRECTORS}
        self.clients = Clients(net.ns("client"))
        self.data = None

    def holders(self):
        return [n for n in sorted(DIRECTORS) if VIP in self.net.addresses(n)]

    def table(self, node):
        return in_netns(self.net.ns(node), self.ipvs.list_services)

    def weights(self, node):
        svc = {s["id"]: s for s in self.table(node)}.get(f"TCP:{VIP}:{PORT}") or {}
        return {d["address"]: d["weight"] for d in svc.get("destinations", [])}

    def connections(self, node):
        """Active + inactive connections on the directors' real servers, by address."""
        svc = {s["id"]: s for s in self.table(node)}.get(f"TCP:{VIP}:{PORT}") or {}
        return {d["address"]: d["active_connections"] + d["inactive_connections"] for d in svc.get("destinations", [])}

    def logs(self):
        return "\n".join(f"--- {n} keepalived log ---\n{d.log_text()[-3000:]}" for n, d in self.directors.items())

    def start(self, sync):
        """Both directors with the rendered config; edge1 (priority 150) owns the VIP, both programmed IPVS."""
        self.data = drlab.pillar(sync)
        for node, director in self.directors.items():
            director.start(drlab.render(self.data, node))
        everyone = {f"198.18.0.{o}": 1 for o in REAL_SERVERS.values()}
        try:
            wait_for(lambda: self.holders() == ["edge1"] and all(
                self.weights(n) == everyone for n in DIRECTORS), 60, "edge1 owns the VIP, IPVS programmed on both")
        except AssertionError:
            raise AssertionError(f"holders {self.holders()}, edge1 {self.weights('edge1')}, "
                                 f"edge2 {self.weights('edge2')}\n{self.logs()}") from None


@pytest.fixture(scope="module")
def dr_net():
    """The part every test shares: the switch, the three real servers (echo
    servers, the VIP on lo) and the client namespace."""
    net = drlab.Net("ehdr")
    servers = []
    try:
        for name, octet in {**REAL_SERVERS, "client": drlab.CLIENT_OCTET}.items():
            net.add(name, octet)
        for name in REAL_SERVERS:  # LVS-DR real servers: the VIP on lo, no ARP answers for it
            write_sysctls(net.ns(name), {"net.ipv4.conf.all.arp_ignore": 1, "net.ipv4.conf.all.arp_announce": 2})
            net.ip(name, f"addr add {VIP}/32 dev lo")
            servers.append(drlab.EchoServer(net.ns(name), name))
        yield net
    finally:
        for server in servers:
            server.stop()
        net.close()


@pytest.fixture
def dr_lab(dr_net, ipvs, tmp_path):
    """Two fresh director namespaces (no IPVS table, sync daemon or connection
    left from another test) on the shared network; removed after the test."""
    lab = None
    try:
        for node, octet in DIRECTORS.items():
            dr_net.add(node, octet)
            # what salt/edge/sysctl.sls sets on the nodes for lb_kind DR and virtual servers
            write_sysctls(dr_net.ns(node), {"net.ipv4.conf.all.arp_ignore": 1, "net.ipv4.conf.all.arp_announce": 2,
                                            "net.ipv4.vs.expire_nodest_conn": 1,
                                            "net.ipv4.vs.expire_quiescent_template": 1})
        lab = Lab(dr_net, ipvs, tmp_path)
        yield lab
    finally:
        if lab is not None:
            lab.clients.close()
            for director in lab.directors.values():
                director.stop()
        for node in DIRECTORS:
            dr_net.remove(node)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("rep", REPEAT)
@pytest.mark.parametrize("sync", [True, False], ids=["lvs_sync_daemon", "no_sync_baseline"])
def test_owner_crash_keeps_synced_connections(dr_lab, sync, rep, capsys):
    lab = dr_lab
    lab.start(sync)
    socks = lab.clients.open(CONNECTIONS)
    first = Clients.exchange(socks, "hello", 15)
    assert all(first.values()), f"not every connection answered through edge1: {first}"
    spread = collections.Counter(first.values())
    assert set(spread) == set(REAL_SERVERS), spread  # rr over the three real servers
    sync_lag = None
    if sync:  # the backup director learnt every connection from edge1's sync daemon
        sync_lag = wait_for(lambda: sum(lab.connections("edge2").values()) >= CONNECTIONS, 30,
                            f"edge2 has the {CONNECTIONS} synced connections ({lab.connections('edge2')})")
    else:
        time.sleep(3)  # about the time the synced run waits
        assert sum(lab.connections("edge2").values()) == 0

    t0 = time.monotonic()
    lab.directors["edge1"].crash()
    takeover = wait_for(lambda: "edge2" in lab.holders(), 30, "edge2 takes the VIP over")
    # SIGKILL leaves edge1's copy of the VIP; the node agent removes it once another
    # node answers ARP for it (edge_node, keepalived.release_stale_vips), here at once
    lab.net.run("edge1", "ip", "addr", "del", f"{VIP}/32", "dev", "eth0", check=False)
    after = Clients.exchange(socks, "after", 20)
    # the crashed node's kernel state: its sync daemon threads are not keepalived's
    daemons = " / ".join(line.strip() for line in lab.net.run(
        "edge1", "ipvsadm", "-L", "--daemon", check=False).stdout.splitlines()) or "none"
    survived = sum(1 for s in socks if after[s] is not None and after[s] == first[s])
    fraction = survived / CONNECTIONS
    seconds = time.monotonic() - t0
    new = lab.clients.open(3)
    assert all(Clients.exchange(new, "new", 10).values()), "new connections through edge2 fail"
    record(test="owner_crash", sync=sync, rep=rep, connections=CONNECTIONS, survived=survived, fraction=fraction,
           takeover_s=round(takeover, 2), answers_after_s=round(seconds, 2),
           sync_lag_s=None if sync_lag is None else round(sync_lag, 2), spread=dict(spread),
           crashed_node_daemons=daemons)
    with capsys.disabled():
        print(f"\n[ipvs-dr] owner crash, {'lvs_sync_daemon' if sync else 'no sync (baseline)'}: "
              f"{survived}/{CONNECTIONS} long-lived connections survive ({fraction:.0%}); "
              f"VIP on edge2 {takeover:.1f}s after the SIGKILL"
              + (f"; synced to edge2 {sync_lag:.1f}s after opening" if sync else "")
              + f"; sync daemon left on the crashed edge1: {daemons}")
    if sync:
        assert fraction >= 0.95, f"{survived}/{CONNECTIONS} survived with lvs_sync_daemon\n{lab.logs()}"
    else:  # the lab proves something only if the new director loses them without sync
        assert fraction <= 0.10, f"{survived}/{CONNECTIONS} survived without lvs_sync_daemon: the lab does not test sync"


@pytest.mark.timeout(240)
def test_drain_waits_for_the_nodes_ipvs_connections(dr_lab, monkeypatch, capsys):
    from edge_ha_core import fleet  # pylint: disable=import-outside-toplevel
    from tests.support.modload import load  # pylint: disable=import-outside-toplevel

    lab = dr_lab
    lab.start(sync=True)
    # With lb_kind DR the directors see only the client's half of a connection:
    # after the client's FIN the entry stays FIN_WAIT (counted as inactive) for
    # IPVS's tcpfin timeout, 120 s by default (kept here): the drain waits for
    # the active (ESTABLISHED) connections only.
    socks = lab.clients.open(30)
    first = Clients.exchange(socks, "hello", 15)
    on_real1 = [s for s in socks if first[s] == "real1"]
    assert all(first.values()) and len(on_real1) == 10, collections.Counter(first.values())

    runner = load("_runners/edge.py")
    model = drlab.model_of(lab.data)
    real1 = model["nodes"]["real1"]["address"]
    calls = []

    def job(nodes, fun, args=(), timeout=None):  # what the master's client.cmd returns, read in each node's netns
        assert fun == "ipvs.list_services" and not args, fun
        nodes = [nodes] if isinstance(nodes, str) else list(nodes)
        calls.append(sorted(nodes))
        return {n: in_netns(lab.net.ns(n), lab.ipvs.list_services) for n in nodes}

    monkeypatch.setattr(runner, "_job", job)
    holders = lab.holders()
    reports = {n: fleet.NodeReport(node=n, running=True, instances={"VI_DR": fleet.InstanceStatus(
        name="VI_DR", state="MASTER" if n in holders else "BACKUP", vips_present=(VIP,) if n in holders else ())})
        for n in DIRECTORS}
    assert runner.ipvs_connections(lab.table("edge1"), model["virtual_servers"].values(), real1) == (10, 0, 0)

    # the drain's staged reload: real1 rendered with weight 0 on every director, SIGHUP
    for node, director in lab.directors.items():
        director.reload(drlab.render(lab.data, node, drained=("real1",)))
    wait_for(lambda: all(lab.weights(n).get(real1) == 0 for n in DIRECTORS), 60, "real1 at weight 0 on both directors")
    assert lab.holders() == ["edge1"], "the reload moved the VIP"
    new = lab.clients.open(6)
    answers = Clients.exchange(new, "new", 15)
    assert all(answers.values()) and "real1" not in answers.values(), answers

    result = {}

    def waiter():
        try:
            result["message"] = runner._wait_ipvs_drain(model, "real1", reports, 90)  # pylint: disable=protected-access
        except Exception as exc:  # pylint: disable=broad-except
            result["message"] = f"raised {exc!r}"
        result["done"] = time.monotonic()

    thread = threading.Thread(target=waiter)
    thread.start()
    try:
        time.sleep(3)
        assert thread.is_alive(), f"the drain stopped waiting with 10 connections open on real1: {result}"
        still = Clients.exchange(on_real1, "still", 15)
        assert set(still.values()) == {"real1"}, f"established connections to the drained server broke: {still}"
        closed_at = time.monotonic()
        lab.clients.close(on_real1)
        time.sleep(0.5)
        # what the directors now count for real1: the closed connections, in the client-only view
        rows = [line.split() for line in lab.net.run("edge1", "ipvsadm", "-Lnc").stdout.splitlines()]
        states = dict(collections.Counter(r[2] for r in rows if len(r) == 6 and r[5] == f"{real1}:{PORT}"))
    finally:
        lab.clients.close(on_real1)  # (on a failure above: the wait ends soon instead of after 90 s)
        thread.join(120)
    assert not thread.is_alive(), "the drain's wait did not return"
    message = result.get("message", "")
    assert message.startswith(f"IPVS connections to {real1} drained in"), message
    waited = result["done"] - closed_at
    # returned after the close, within a few of its 1 s looks, not after the 120 s tcpfin timeout
    assert closed_at <= result["done"] < closed_at + 10, waited
    assert ["edge1", "real1"] in calls  # the VIP holder's table (and the node's own) were read
    rest = [s for s in socks if s not in on_real1]
    assert all(Clients.exchange(rest, "rest", 15).values()), "the other connections broke"
    record(test="drain", open_on_node=len(on_real1), returned_after_close_s=round(waited, 2), message=message)
    with capsys.disabled():
        print(f"\n[ipvs-dr] drain of real1: 10 connections kept (weight 0, new ones to real2/real3); "
              f"edge._wait_ipvs_drain returned {waited:.1f}s after the client closed them "
              f"(tcpfin at its default, 120 s): {message!r}; states {states}")
