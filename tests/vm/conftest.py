"""Shared by the host side (tests/vm/test_in_vm.py) and the tests that run
inside the VM (tests/vm/inside/).

``render_keepalived_conf`` is the one place that turns virtual servers into
keepalived.conf text for the VM tests. It is a small hand-written renderer
for now; point it at the project's renderer (``_modules/keepalived.py``)
by changing only this fixture.
"""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IN_VM = os.environ.get("EDGE_HA_IN_VM") == "1"


def _render(virtual_servers, nodes=None, router_id="edge-ha-vm"):
    """keepalived.conf with one ``virtual_server`` block per keepalived-owned
    virtual server of an ``edge_ha``-style mapping name -> server."""
    nodes = nodes or {}
    out = ["global_defs {", f"    router_id {router_id}", "}", ""]
    for name in sorted(virtual_servers):
        vs = virtual_servers[name]
        if vs.get("managed_by", "keepalived") != "keepalived":
            continue
        reals = vs.get("real_servers", "auto")
        if reals == "auto":
            reals = [{"address": n["address"], "port": vs["port"], "weight": 1}
                     for _, n in sorted(nodes.items())]
        out.append(f"# {name}")
        out.append(f"virtual_server {vs['address']} {vs['port']} {{")
        out.append(f"    delay_loop {vs.get('delay_loop', 6)}")
        out.append(f"    lb_algo {vs.get('lb_algo', 'rr')}")
        out.append(f"    lb_kind {vs.get('lb_kind', 'NAT')}")
        out.append(f"    protocol {vs.get('protocol', 'TCP')}")
        if vs.get("persistence_timeout"):
            out.append(f"    persistence_timeout {vs['persistence_timeout']}")
        for real in reals:
            out.append(f"    real_server {real['address']} {real.get('port', vs['port'])} {{")
            out.append(f"        weight {real.get('weight', 1)}")
            out.append("    }")
        out.append("}")
        out.append("")
    return "\n".join(out)


@pytest.fixture
def render_keepalived_conf():
    """``render(virtual_servers, nodes=None) -> str`` (keepalived.conf text)."""
    return _render
