"""
edge_k8s through real Salt: the loader (in process) and ``salt-call --local``.

The pillar is the project's ``edge_ha`` shape; nothing is passed explicitly,
so these tests also cover the pillar fallbacks.
"""

import getpass
import json
import pathlib
import subprocess
import sys

import pytest
import yaml
from salt.exceptions import SaltInvocationError

pytestmark = pytest.mark.k8s

REPO = pathlib.Path(__file__).resolve().parents[2]
VIP = "198.18.0.100"
USER_IP = "203.0.113.7"
STATE_ID = "ingress-external-ips"


@pytest.fixture
def edge(make_edge):
    return make_edge(ready=(True, True, False), external_ips=[USER_IP])


@pytest.fixture
def pillar(edge):
    return {
        "edge_ha": {
            "nodes": edge.nodes,
            "vrrp_instances": {
                "VI_INGRESS": {"virtual_router_id": 51, "virtual_ipaddress": [f"{VIP}/24"]},
            },
            "kubernetes": edge.settings,
        }
    }


@pytest.fixture
def salt_loader(tmp_path, pillar):
    """Factory: (execution modules, states) from the real Salt loader."""
    import salt.config
    import salt.loader

    def make(test=False):
        opts = salt.config.minion_config(None)
        opts.update(
            {
                "id": "edge1",
                "file_client": "local",
                "cachedir": str(tmp_path / "cache"),
                "extension_modules": str(tmp_path / "extmods"),
                "module_dirs": [str(REPO)],
                "pillar": pillar,
                "grains": {"id": "edge1", "kernel": "Linux", "os": "Debian", "os_family": "Debian"},
                "test": test,
            }
        )
        utils = salt.loader.utils(opts)
        funcs = salt.loader.minion_mods(opts, utils=utils)
        states = salt.loader.states(opts, funcs, utils, {})
        return funcs, states

    return make


def expected_list(edge):
    return [USER_IP, VIP, edge.addresses["edge1"], edge.addresses["edge2"]]


def test_loader_exposes_only_the_public_functions(salt_loader, edge_k8s):
    funcs, states = salt_loader()
    for name in edge_k8s.__load__:
        func = funcs[f"edge_k8s.{name}"]
        assert "CLI Example:" in func.__doc__
    for helper in ("settings", "rbac_message", "build_patch", "parse_managed", "edge_nodes"):
        assert f"edge_k8s.{helper}" not in funcs
    assert "CLI Example:" in states["edge_k8s.service_external_ips"].__doc__


def test_module_through_the_loader_reads_the_pillar(salt_loader, edge, cluster):
    funcs, _ = salt_loader()
    assert funcs["edge_k8s.ingress_pods"]()[edge.k8s_nodes["edge3"]]["ready"] is False
    result = funcs["edge_k8s.set_external_ips"](reason="loader test")
    assert result["new"] == expected_list(edge)
    assert cluster.read_service()["spec"]["externalIPs"] == expected_list(edge)
    event = cluster.events()[0]
    assert event["source"]["host"] == "edge1"  # the minion id
    assert "loader test" in event["message"]
    assert funcs["edge_k8s.external_ips"]()["user"] == [USER_IP]


def test_owners_events_and_exclusions_through_the_loader(salt_loader, edge, cluster):
    """The new functions read edge_ha:kubernetes from the pillar (via the edge_ha model); Events carry the minion id."""
    funcs, _ = salt_loader()
    result = funcs["edge_k8s.set_vip_owners"]({VIP: "edge2"})
    assert result["changed"] is True
    assert cluster.read_service()["metadata"]["annotations"]["edge-ha.salt/vip-owners"] == '{"198.18.0.100":"edge2"}'
    assert funcs["edge_k8s.set_vip_owners"]({VIP: "edge2"})["changed"] is False

    event = funcs["edge_k8s.record_event"]("VIPFailover", f"{VIP} moved from edge1 to edge2")
    assert event["created"] is True, event["error"]
    (stored,) = [e for e in cluster.events() if e["reason"] == "VIPFailover"]
    assert stored["source"] == {"component": "salt-edge-ha", "host": "edge1"}
    assert stored["reportingInstance"] == "edge1"

    if not cluster.real:  # a real cluster's nodes are never cordoned by a test
        cluster.api.cordon(edge.k8s_nodes["edge3"])
        assert funcs["edge_k8s.excluded_nodes"]() == {edge.k8s_nodes["edge3"]: "cordoned"}
    else:
        assert set(funcs["edge_k8s.excluded_nodes"]()) <= set(funcs["edge_k8s.node_addresses"]())


def test_an_invalid_pillar_is_reported_by_its_key(salt_loader, pillar, edge):
    pillar["edge_ha"]["kubernetes"] = dict(edge.settings, external_ips="everything")
    funcs, _ = salt_loader()
    with pytest.raises(SaltInvocationError, match=r"edge_ha:kubernetes:external_ips: 'everything' is not allowed"):
        funcs["edge_k8s.external_ips"]()


def test_state_test_mode_shows_before_and_after_and_writes_nothing(salt_loader, edge, cluster):
    before = cluster.read_service()
    if not cluster.real:
        cluster.api.clear_requests()
    _, states = salt_loader(test=True)
    ret = states["edge_k8s.service_external_ips"](name=STATE_ID)
    assert ret["result"] is None
    assert ret["changes"]["external_ips"] == {"old": [USER_IP], "new": expected_list(edge)}
    assert ret["changes"]["managed"] == {"old": [], "new": expected_list(edge)[1:]}
    assert "would change" in ret["comment"]
    assert cluster.read_service() == before
    if not cluster.real:
        assert cluster.api.writes() == []


def test_state_applies_once_then_changes_nothing(salt_loader, edge, cluster):
    _, states = salt_loader()
    ret = states["edge_k8s.service_external_ips"](name=STATE_ID, reason="highstate")
    assert ret["result"] is True
    assert ret["changes"]["external_ips"]["new"] == expected_list(edge)
    assert cluster.read_service()["spec"]["externalIPs"] == expected_list(edge)
    assert "highstate" in cluster.events()[0]["message"]

    if not cluster.real:
        cluster.api.clear_requests()
    again = states["edge_k8s.service_external_ips"](name=STATE_ID)
    assert again["result"] is True
    assert again["changes"] == {}
    assert "already as desired" in again["comment"]
    if not cluster.real:
        assert cluster.api.writes() == []

    _, test_states = salt_loader(test=True)
    assert test_states["edge_k8s.service_external_ips"](name=STATE_ID)["result"] is True


def test_state_failures_are_result_false_with_the_message(salt_loader, edge, emulator):
    _, states = salt_loader()
    emulator.forbid("patch", "services")
    ret = states["edge_k8s.service_external_ips"](name=STATE_ID)
    assert ret["result"] is False
    assert ret["changes"] == {}
    assert 'grant verb "patch" on resource "services"' in ret["comment"]


def test_state_reports_an_event_failure_but_succeeds(salt_loader, edge, emulator):
    _, states = salt_loader()
    emulator.forbid("create", "events")
    ret = states["edge_k8s.service_external_ips"](name=STATE_ID)
    assert ret["result"] is True
    assert ret["changes"]["external_ips"]["new"] == expected_list(edge)
    assert "Kubernetes Event was not created" in ret["comment"]


def _salt_call(tmp_path, pillar, *args):
    root = tmp_path / "salt"
    (root / "pillar").mkdir(parents=True, exist_ok=True)
    (root / "states").mkdir(exist_ok=True)
    (root / "pillar" / "top.sls").write_text("base:\n  '*':\n    - edge_ha\n")
    (root / "pillar" / "edge_ha.sls").write_text(yaml.safe_dump(pillar))
    (root / "states" / "k8s.sls").write_text(
        f"{STATE_ID}:\n  edge_k8s.service_external_ips:\n    - reason: salt-call state run\n"
    )
    config = {
        "id": "edge1",
        "file_client": "local",
        "user": getpass.getuser(),
        "root_dir": str(root),
        "pki_dir": str(root / "pki"),
        "cachedir": str(root / "cache"),
        "sock_dir": str(root / "sock"),
        "log_file": str(root / "minion.log"),
        "pillar_roots": {"base": [str(root / "pillar")]},
        "file_roots": {"base": [str(root / "states")]},
    }
    (root / "minion").write_text(yaml.safe_dump(config))
    command = [
        str(pathlib.Path(sys.executable).parent / "salt-call"),
        "--local",
        "-c", str(root),
        "--module-dirs", str(REPO),
        "--out", "json",
        "--log-level", "quiet",
        *args,
    ]
    # cwd: the temp dir, so the repository's Saltfile (read from the current
    # directory) does not replace these file_roots/pillar_roots.
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False, cwd=root)
    assert proc.stdout or proc.stderr
    try:
        return json.loads(proc.stdout)["local"], proc
    except ValueError:
        return None, proc


def test_salt_call_local_state_and_module(tmp_path, pillar, edge, cluster):
    before = cluster.read_service()
    ret, _ = _salt_call(tmp_path, pillar, "state.apply", "k8s", "test=True")
    (state,) = ret.values()
    assert state["result"] is None
    assert state["changes"]["external_ips"] == {"old": [USER_IP], "new": expected_list(edge)}
    assert cluster.read_service() == before

    ret, proc = _salt_call(tmp_path, pillar, "state.apply", "k8s")
    (state,) = ret.values()
    assert state["result"] is True, state["comment"]
    assert state["changes"]["external_ips"]["new"] == expected_list(edge)
    assert cluster.read_service()["spec"]["externalIPs"] == expected_list(edge)
    assert "salt-call state run" in cluster.events()[0]["message"]

    info, _ = _salt_call(tmp_path, pillar, "edge_k8s.external_ips")
    assert info["external_ips"] == expected_list(edge)
    assert info["user"] == [USER_IP]

    _, proc = _salt_call(tmp_path, pillar, "edge_k8s.set_external_ips", "policy=bogus")
    assert proc.returncode != 0
    assert "policy must be one of vips_and_healthy_nodes, vips_only" in proc.stdout + proc.stderr
