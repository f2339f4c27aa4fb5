"""
The stale-VIP release and the split-brain check ask the link who else holds
an address: ARP (RFC 5227 probe) for IPv4, Neighbour Solicitation for IPv6.
Two namespaces on one switch, both with the same VIP (a stale copy and the
new owner), a third without it. Addresses from the benchmarking ranges
198.18.0.0/15 and 2001:2::/48 (RFC 5180), only inside namespaces made here.
"""

import json
import os
import subprocess
import sys

import pytest

from tests.support.netns import Topology
from tests.support.netns import sh

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROBE = """
import json, sys
sys.path.insert(0, {repo!r})
from tests.support.modload import load
edge_node = load("_modules/edge_node.py")
print(json.dumps(edge_node.neighbor_probe("eth0", sys.argv[1], timeout=float(sys.argv[2]))))
"""


def probe(topo, host, address, timeout=0.5):
    out = subprocess.run(["ip", "netns", "exec", topo.ns(host), sys.executable, "-c", PROBE.format(repo=REPO),
                          address, str(timeout)], capture_output=True, text=True, check=True, timeout=30)
    return json.loads(out.stdout)


def mac(topo, host):
    return json.loads(sh("ip", "-j", "link", "show", "dev", "eth0", ns=topo.ns(host)).stdout)[0]["address"]


@pytest.fixture(name="topo")
def _topo():
    with Topology(f"ehn{os.getpid() % 100000}") as topo:
        for name, octet in (("stale", 11), ("owner", 12), ("other", 13)):
            topo.add_host(name, octet)
        for host in ("stale", "owner"):
            # as keepalived adds VIPs: no duplicate address detection
            sh("ip", "addr", "add", "2001:2::100/64", "dev", "eth0", "nodad", ns=topo.ns(host))
            sh("ip", "addr", "add", "198.18.0.100/24", "dev", "eth0", ns=topo.ns(host))
        yield topo


def test_a_stale_copy_sees_the_new_owner_over_ndp_and_arp(topo):
    owner = mac(topo, "owner")
    assert probe(topo, "stale", "2001:2::100") == [owner]
    assert probe(topo, "stale", "198.18.0.100") == [owner]


def test_nobody_else_answers_for_an_address_only_this_node_has(topo):
    sh("ip", "addr", "del", "2001:2::100/64", "dev", "eth0", ns=topo.ns("owner"))
    sh("ip", "addr", "del", "198.18.0.100/24", "dev", "eth0", ns=topo.ns("owner"))
    assert probe(topo, "stale", "2001:2::100", 0.3) == []
    assert probe(topo, "stale", "198.18.0.100", 0.3) == []
    # and a host without the address hears the one that has it
    assert probe(topo, "other", "2001:2::100") == [mac(topo, "stale")]
