"""Rendering keepalived.conf from the model: golden files and keepalived -t."""

import copy
import os
import pathlib
import shutil

import pytest
import yaml

from tests.support.modload import load

from edge_ha_core import model as edge_ha
keepalived = load("_modules/keepalived.py")
HERE = pathlib.Path(__file__).resolve().parent
EXAMPLE = HERE.parents[1] / "pillar" / "edge_ha.sls.example"
PATHS = {"state_dir": "/run/edge-ha", "notify_script": "/usr/local/sbin/edge-ha-notify"}


def _example():
    return copy.deepcopy(yaml.safe_load(EXAMPLE.read_text())["edge_ha"])


def _render(data, node):
    return keepalived.render_config(edge_ha.view_for_node(edge_ha.normalize(data), node), PATHS)


@pytest.mark.parametrize("node", ["edge1", "edge2"])
def test_golden_example(node):
    """The example pillar renders exactly the reviewed golden file (UPDATE_GOLDEN=1 rewrites it)."""
    text = _render(_example(), node)
    golden = HERE / "golden" / f"example-{node}.conf"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()


def test_golden_ipv6_v3_full():
    data = _example()
    data["nodes"]["edge1"]["address6"] = "2001:db8::11"
    data["nodes"]["edge2"]["address6"] = "2001:db8::12"
    data["vrrp_track_files"] = {"drain": {"file": "/run/edge-ha/drain", "weight": -100, "init_file": True}}
    data["vrrp_instances"]["VI6"] = {
        "virtual_router_id": 52, "vrrp_version": 3, "advert_int": 0.1, "unicast": True, "nopreempt": True,
        "virtual_ipaddress": ["2001:db8::100/64"], "track_file": ["drain"],
        "track_interface": ["eth1"],
    }
    data["virtual_servers"]["web6"] = {
        "address": "2001:db8::100", "port": 443, "lb_algo": "sh", "lb_kind": "NAT",
        "real_servers": [{"address": "2001:db8::21", "weight": 3, "health_check": {
            "type": "HTTP_GET", "path": "/healthz", "status_code": 200, "connect_port": 10254}}],
    }
    text = _render(data, "edge2")
    golden = HERE / "golden" / "ipv6-edge2.conf"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()


@pytest.mark.skipif(not shutil.which("keepalived"), reason="keepalived is not installed (make bootstrap installs it)")
@pytest.mark.parametrize("node", ["edge1", "edge2"])
def test_example_round_trips_through_keepalived_check(node):
    ok, output = keepalived.check_config(_render(_example(), node))
    assert ok, output


@pytest.mark.skipif(not shutil.which("keepalived"), reason="keepalived is not installed")
def test_keepalived_check_reports_bad_config():
    text = _render(_example(), "edge1").replace("lb_algo rr", "lb_algo nosuch")
    ok, output = keepalived.check_config(text)
    assert not ok
    assert "keepalived -t exit" in output and "nosuch" in output


def test_unified_diff_and_atomic_write(tmp_path):
    path = tmp_path / "keepalived.conf"
    keepalived.write_atomic(str(path), "a\nb\n")
    keepalived.write_atomic(str(path), "a\nc\n", backup=str(path) + ".bak")
    assert path.read_text() == "a\nc\n"
    assert (tmp_path / "keepalived.conf.bak").read_text() == "a\nb\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keepalived.conf", "keepalived.conf.bak"]
    diff = keepalived.unified_diff("a\nb\n", "a\nc\n", str(path))
    assert "-b\n+c\n" in diff
    assert keepalived.unified_diff("x\n", "x\n", str(path)) == ""


def test_added_vip_leaves_advertised_addresses_unchanged():
    """Peers drop adverts whose address list differs: only the first VIP is advertised."""
    data = _example()
    one = _render(data, "edge1")
    data["vrrp_instances"]["VI_INGRESS"]["virtual_ipaddress"].append("198.18.0.101/24")
    two = _render(data, "edge1")

    def block(text, name):
        start = text.index(f"    {name} {{")
        return text[start:text.index("}", start)]

    assert block(one, "virtual_ipaddress") == block(two, "virtual_ipaddress")
    assert "198.18.0.101/24 dev eth0" in block(two, "virtual_ipaddress_excluded")
    assert "virtual_ipaddress_excluded" not in one


def test_lvs_sync_daemon_follows_the_vip_owner():
    """Connection sync between the edge nodes, so IPVS connections survive a failover."""
    data = _example()
    data["global_defs"] = {"lvs_sync_daemon": {"instance": "VI_INGRESS", "id": 7}}
    text = _render(data, "edge2")
    assert "    lvs_sync_daemon eth0 VI_INGRESS id 7\n" in text
    if shutil.which("keepalived"):
        ok, output = keepalived.check_config(text)
        assert ok, output
    data["global_defs"]["lvs_sync_daemon"]["instance"] = "VI_NOPE"
    errors = edge_ha.validate_model(data)
    assert errors == ["edge_ha:global_defs:lvs_sync_daemon:instance: 'VI_NOPE' is not a vrrp_instance; instances: VI_INGRESS"]
