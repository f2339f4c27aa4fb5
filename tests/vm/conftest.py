"""Shared by the host side (tests/vm/test_in_vm.py) and the tests that run
inside the VM (tests/vm/inside/).

``render_keepalived_conf`` turns virtual servers into keepalived.conf text for
the VM tests with the project's own renderer (``_modules/keepalived.py``).
"""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IN_VM = os.environ.get("EDGE_HA_IN_VM") == "1"


VRRP_IF = "vrrp0"


def _render(virtual_servers, nodes=None, state_dir="/run/edge-ha-vm", drained=()):
    """keepalived.conf for the first of ``nodes``, rendered by the project's own
    renderer (``_modules/keepalived.py``) from an ``edge_ha`` pillar made of
    these virtual servers and nodes, plus one VRRP instance holding their
    addresses on a dummy interface (keepalived refuses VRRP on ``lo``)."""
    import sys  # pylint: disable=import-outside-toplevel

    sys.path.insert(0, str(REPO))
    from tests.support.modload import load  # pylint: disable=import-outside-toplevel

    from edge_ha_core import model as edge_ha
    keepalived = load("_modules/keepalived.py")
    node_map = {name: dict(node, interface=VRRP_IF) for name, node in sorted((nodes or {}).items())}
    vips = sorted({vs["address"] for vs in virtual_servers.values()})
    pillar = {
        "nodes": node_map,
        "vrrp_instances": {"VI_VM": {"virtual_router_id": 1, "unicast": True,  # a dummy link has no multicast
                                     "virtual_ipaddress": [f"{v}/32" for v in vips]}},
        "virtual_servers": virtual_servers,
    }
    os.makedirs(state_dir, exist_ok=True)
    notify = os.path.join(state_dir, "edge-ha-notify")
    keepalived.write_atomic(notify, keepalived.NOTIFY_SCRIPT, mode=0o755)
    view = edge_ha.view_for_node(edge_ha.normalize(pillar), sorted(node_map)[0], drained=drained)
    if IN_VM:  # the rendering node's address (its unicast_src_ip) goes on the dummy link
        import subprocess  # pylint: disable=import-outside-toplevel

        subprocess.run(["ip", "addr", "replace", f"{view['me']['address']}/24", "dev", VRRP_IF], check=True)
    return keepalived.render_config(view, {"state_dir": state_dir, "notify_script": notify})


@pytest.fixture
def render_keepalived_conf():
    """``render(virtual_servers, nodes=None, drained=()) -> str`` (keepalived.conf text).
    Inside the VM it also provides the dummy interface the VRRP instance uses."""
    import subprocess  # pylint: disable=import-outside-toplevel

    made = False
    if IN_VM and subprocess.run(["ip", "link", "show", VRRP_IF], capture_output=True).returncode != 0:
        subprocess.run(["ip", "link", "add", VRRP_IF, "type", "dummy"], check=True)
        subprocess.run(["ip", "link", "set", VRRP_IF, "up"], check=True)
        made = True
    yield _render
    if made:
        subprocess.run(["ip", "link", "delete", VRRP_IF], check=False)
