"""
keepalived.managed on real keepalived: three edge nodes and a client, each in
its own network namespace on one bridge (198.18.0.0/24), salt-call --local
with a per-node minion id and config dir.

The host kernel has no IPVS, so the pillar here has no virtual_servers; IPVS
is covered by the VM tests.
"""

import concurrent.futures
import copy
import json
import os
import pathlib
import shutil
import sys
import time

import pytest

from tests.support.edge_nodes import EdgeNode, wait_for, write_pillar
from tests.support.netns import Topology

pytestmark = [
    pytest.mark.functional,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(not shutil.which("keepalived"), reason="keepalived is not installed (make bootstrap)"),
]

SUPPORT = pathlib.Path(__file__).resolve().parents[1] / "support"
VIP = "198.18.0.100"
VIP2 = "198.18.0.101"
NODES = {"edge1": 11, "edge2": 12, "edge3": 13}
PILLAR = {
    "nodes": {name: {"address": f"198.18.0.{octet}", "interface": "eth0"} for name, octet in NODES.items()},
    "vrrp_instances": {
        "VI_1": {
            "virtual_router_id": 51,
            "priority": {"edge1": 150, "edge2": 140, "edge3": 130},  # derived ones follow a hash
            "advert_int": 1,
            "unicast": True,
            "virtual_ipaddress": [f"{VIP}/24"],
        }
    },
}


class Edge:
    """The running test bed."""

    def __init__(self, topo, base):
        self.topo = topo
        self.base = base
        self.pillar_dir = base / "pillar"
        self.nodes = {}

    def set_pillar(self, data):
        write_pillar(self.pillar_dir, data)

    def apply(self, names=None, *args):
        names = names or list(self.nodes)
        with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
            results = pool.map(lambda n: (n, self.nodes[n].salt_call("state.apply", *args)), names)
        return dict(results)

    def owner(self, timeout=15):
        """The single node holding the VIP (fails if none or two hold it)."""
        holders, _ = wait_for(lambda: (h := self.topo.holders(VIP)) and len(h) == 1 and h, timeout)
        assert holders, f"no single VIP owner within {timeout}s: {self.topo.holders(VIP)}"
        return holders[0]


def _states(data):
    return {key.split("_|-")[1]: value for key, value in (data or {}).items()}


@pytest.fixture(scope="module")
def edge(tmp_path_factory):
    base = tmp_path_factory.mktemp("edge")
    topo = Topology(f"ehf{os.getpid() % 10000}")
    try:
        bed = Edge(topo, base)
        bed.set_pillar(PILLAR)
        for name, octet in NODES.items():
            topo.add_host(name, octet)
            node = EdgeNode(topo, name, base)
            node.write_config(bed.pillar_dir)
            bed.nodes[name] = node
            www = base / "www" / name
            www.mkdir(parents=True)
            (www / "index.html").write_text(name + "\n")
            topo.spawn(name, sys.executable, "-m", "http.server", "80", "--bind", "0.0.0.0", "--directory", str(www))
        topo.add_host("client", 50)
        yield bed
    finally:
        for node in bed.nodes.values():
            node.stop_keepalived()
        topo.close()


@pytest.fixture
def applied(edge):
    """All nodes applied with the base pillar and one VIP owner."""
    edge.set_pillar(PILLAR)
    results = edge.apply()
    for name, (rc, data) in results.items():
        assert rc == 0, f"{name}: {json.dumps(data, indent=1)}"
    # settled: edge1 has the highest priority (150) and preempts
    settled, _ = wait_for(lambda: edge.topo.holders(VIP) == ["edge1"], 15)
    assert settled, f"VIP holders: {edge.topo.holders(VIP)}"
    return edge


def test_apply_elects_exactly_one_owner(applied):
    edge = applied
    assert edge.owner() == "edge1"
    # the notify FIFO script records each instance's state on the node
    state, _ = wait_for(lambda: edge.nodes["edge1"].instance_state("VI_1").get("state") == "MASTER", 5)
    assert state
    for name in ("edge2", "edge3"):
        assert edge.nodes[name].instance_state("VI_1")["state"] == "BACKUP"
    rc, status = edge.nodes["edge1"].salt_call("keepalived.status")
    assert rc == 0
    assert status["running"] is True
    assert status["instances"]["VI_1"]["state"] == "MASTER"
    assert status["instances"]["VI_1"]["vips_present"] == [VIP]
    rc, status2 = edge.nodes["edge2"].salt_call("keepalived.status")
    assert status2["instances"]["VI_1"]["vips_present"] == []
    # a second run changes nothing, test=True included
    for rc, data in edge.apply(None).values():
        assert rc == 0 and _states(data)["edge-keepalived"]["changes"] == {}
    for rc, data in edge.apply(None, "test=True").values():
        assert _states(data)["edge-keepalived"]["result"] is True


def test_pillar_change_reloads_without_transition_or_lost_probe(applied):
    edge = applied
    owner = edge.owner()
    before = {name: list(node.transitions()) for name, node in edge.nodes.items()}
    changed = copy.deepcopy(PILLAR)
    changed["vrrp_instances"]["VI_1"]["virtual_ipaddress"].append(f"{VIP2}/24")
    edge.set_pillar(changed)

    # test=True predicts the change and writes nothing
    old_bytes = edge.nodes[owner].config_file.read_bytes()
    rc, data = edge.nodes[owner].salt_call("state.apply", "test=True")
    ka = _states(data)["edge-keepalived"]
    assert ka["result"] is None
    assert f"+        {VIP2}/24 dev eth0" in ka["changes"]["config"]
    assert ka["changes"]["service"] == "reloaded"
    assert edge.nodes[owner].config_file.read_bytes() == old_bytes

    out = edge.base / "probe.json"
    probe = edge.topo.spawn("client", sys.executable, str(SUPPORT / "probe.py"), f"http://{VIP}/", "20", "12", str(out))
    time.sleep(2)
    pids = {name: node.keepalived_pid() for name, node in edge.nodes.items()}
    backups = [n for n in edge.nodes if n != owner]
    for name, (rc, data) in list(edge.apply(backups).items()) + list(edge.apply([owner]).items()):
        assert rc == 0, data
        ka = _states(data)["edge-keepalived"]
        assert ka["changes"]["service"] == "reloaded", ka
    assert wait_for(lambda: VIP2 in edge.topo.addresses(owner), 5)[0]
    probe.wait(timeout=30)
    edge.topo.procs.remove(probe)
    stats = json.loads(out.read_text())
    print(f"probes during reload: {stats['requests']} requests, {stats['failures']} failed, answers {stats['answers']}")
    assert stats["requests"] >= 150
    assert stats["failures"] == 0, stats["failed_at"]
    assert stats["answers"] == {owner: stats["requests"]}
    assert {name: node.keepalived_pid() for name, node in edge.nodes.items()} == pids, "reload, not restart"
    assert {name: node.transitions() for name, node in edge.nodes.items()} == before, "no VRRP transition"
    assert edge.topo.holders(VIP) == [owner]


def test_invalid_pillar_fails_and_touches_nothing(applied):
    edge = applied
    node = edge.nodes["edge2"]
    before = node.config_file.read_bytes()
    pid = node.keepalived_pid()
    bad = copy.deepcopy(PILLAR)
    bad["vrrp_instances"]["VI_1"]["virtual_router_id"] = 300
    bad["vrrp_instances"]["VI_1"]["authentication"] = {"auth_type": "PASS", "auth_pass": "much-too-long"}
    edge.set_pillar(bad)
    rc, data = node.salt_call("state.apply")
    assert rc != 0
    ka = _states(data)["edge-keepalived"]
    assert ka["result"] is False
    assert "edge_ha:vrrp_instances:VI_1:virtual_router_id: must be from 1 to 255, got 300" in ka["comment"]
    assert "edge_ha:vrrp_instances:VI_1:authentication:auth_pass" in ka["comment"]
    assert ka["changes"] == {}
    assert node.config_file.read_bytes() == before
    assert node.keepalived_pid() == pid and os.path.exists(f"/proc/{pid}")
    rc, data = node.salt_call("state.apply", "test=True")
    assert _states(data)["edge-keepalived"]["result"] is False


def test_keepalived_check_failure_touches_nothing(applied):
    """A model-valid pillar that keepalived -t rejects (interface missing on the node)."""
    edge = applied
    node = edge.nodes["edge3"]
    before = node.config_file.read_bytes()
    pid = node.keepalived_pid()
    bad = copy.deepcopy(PILLAR)
    bad["nodes"]["edge3"]["interface"] = "eth9"
    edge.set_pillar(bad)
    rc, data = node.salt_call("state.apply")
    ka = _states(data)["edge-keepalived"]
    assert rc != 0 and ka["result"] is False
    assert "fails validation: keepalived -t exit" in ka["comment"]
    assert node.config_file.read_bytes() == before
    assert node.keepalived_pid() == pid


def test_reload_that_kills_keepalived_is_rolled_back(applied):
    """
    Fault injection: the node's keepalived binary is a wrapper whose -t always
    passes, so a config that only fails at run time (a missing interface)
    reaches the reload. keepalived exits; the state restores the previous file,
    starts keepalived again and fails.
    """
    edge = applied
    node = edge.nodes["edge3"]
    node.settings["binary"] = str(SUPPORT / "keepalived_t_passes.sh")
    node.write_config(edge.pillar_dir)
    try:
        before = node.config_file.read_bytes()
        bad = copy.deepcopy(PILLAR)
        bad["nodes"]["edge3"]["interface"] = "eth9"
        edge.set_pillar(bad)
        rc, data = node.salt_call("state.apply")
        ka = _states(data)["edge-keepalived"]
        assert rc != 0 and ka["result"] is False
        assert "keepalived is not running after loading the new" in ka["comment"]
        assert "the previous config was restored and keepalived runs with it again" in ka["comment"]
        assert node.config_file.read_bytes() == before
        assert os.path.exists(f"/proc/{node.keepalived_pid()}")
        assert edge.topo.holders(VIP) == ["edge1"]
    finally:
        del node.settings["binary"]
        node.write_config(edge.pillar_dir)


def test_moved_config_file_restarts_keepalived_with_it(applied):
    """keepalived:config_file changed on a backup: a reload would make keepalived read its old file
    again, so the state restarts it with the new one (and says so); the VIP stays on its owner."""
    edge = applied
    node = edge.nodes["edge3"]
    old_file = node.settings["config_file"]
    pid = node.keepalived_pid()
    node.settings["config_file"] = str(node.base / "keepalived" / "edge-ha.conf")
    node.write_config(edge.pillar_dir)
    try:
        rc, data = node.salt_call("state.apply", "test=True")
        ka = _states(data)["edge-keepalived"]
        assert ka["result"] is None and ka["changes"]["service"] == (
            f"restarted (keepalived runs with {old_file}, keepalived:config_file is {node.settings['config_file']})")
        assert node.keepalived_pid() == pid and not node.config_file.exists()
        rc, data = node.salt_call("state.apply")
        ka = _states(data)["edge-keepalived"]
        assert rc == 0 and ka["changes"]["service"].startswith("restarted ("), ka
        new_pid = node.keepalived_pid()
        assert new_pid != pid
        argv = pathlib.Path(f"/proc/{new_pid}/cmdline").read_bytes().split(b"\0")
        assert node.settings["config_file"].encode() in argv
        state, _ = wait_for(lambda: node.instance_state("VI_1").get("state") == "BACKUP", 10)
        assert state and edge.topo.holders(VIP) == ["edge1"]
        rc, data = node.salt_call("state.apply")
        assert rc == 0 and _states(data)["edge-keepalived"]["changes"] == {}, "nothing left to do"
    finally:
        node.settings["config_file"] = old_file
        node.write_config(edge.pillar_dir)
    rc, data = node.salt_call("state.apply")
    assert rc == 0 and _states(data)["edge-keepalived"]["changes"]["service"].startswith("restarted (")


def test_owner_stop_moves_vip_within_5s(applied):
    edge = applied
    owner = edge.owner()
    start = time.monotonic()
    edge.nodes[owner].stop_keepalived()
    new, waited = wait_for(lambda: (h := edge.topo.holders(VIP)) and h != [owner] and len(h) == 1 and h, 5)
    print(f"VIP moved from {owner} to {new} in {time.monotonic() - start:.2f}s after keepalived stop")
    assert new, f"VIP not on another node within 5s: {edge.topo.holders(VIP)}"
    assert new == ["edge2"]
    assert waited < 5
    # highstate brings the stopped node back
    rc, data = edge.nodes[owner].salt_call("state.apply")
    assert rc == 0 and _states(data)["edge-keepalived"]["changes"]["service"] == "started"
