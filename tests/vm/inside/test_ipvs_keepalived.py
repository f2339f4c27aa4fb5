"""keepalived programs the kernel from its virtual_server blocks, and the
ipvs.synced state (run with the real execution module on the real kernel)
manages only the Salt-owned services next to it."""

import signal
import subprocess
import time

import pytest

pytestmark = pytest.mark.vm

PILLAR = {
    "nodes": {"edge-a": {"address": "198.19.40.1", "interface": "eth0"},
              "edge-b": {"address": "198.19.40.2", "interface": "eth0"}},
    "virtual_servers": {
        "web": {"address": "198.18.40.1", "port": 80, "protocol": "TCP", "lb_algo": "wrr",
                "lb_kind": "DR", "persistence_timeout": 120, "delay_loop": 5,
                "real_servers": "auto"},                                   # keepalived (default)
        "dns": {"address": "198.18.40.2", "port": 53, "protocol": "UDP", "lb_algo": "sh",
                "lb_kind": "NAT", "managed_by": "keepalived",
                "real_servers": [{"address": "198.19.40.3", "port": 5353, "weight": 3}]},
        "api": {"address": "198.18.40.3", "port": 443, "protocol": "TCP", "lb_algo": "lc",
                "lb_kind": "NAT", "managed_by": "salt", "real_servers": "auto"},
    },
}
UNMANAGED = "TCP:198.18.40.9:80"


def table(ipvs):
    return {s["id"]: {k: v for k, v in s.items() if k != "id"}
            for s in ipvs.list_services(stats=False)}


def run_state(ipvs, ipvs_state, test, **kwargs):
    ipvs_state.__salt__ = {"ipvs.sync": ipvs.sync,
                           "pillar.get": lambda key, default=None: {"edge_ha": PILLAR}.get(key, default)}
    ipvs_state.__opts__ = {"test": test}
    try:
        return ipvs_state.synced("edge-ipvs", **kwargs)
    finally:
        del ipvs_state.__salt__, ipvs_state.__opts__


def test_keepalived_owns_its_services_and_the_state_leaves_them_alone(
        ipvs, ipvs_state, keepalived, render_keepalived_conf, clean_table):
    salt_specs, keepalived_specs = ipvs_state.virtual_servers_from_pillar(PILLAR)
    expected_ka = {}
    for spec in keepalived_specs:
        norm = ipvs.normalize_service({k: v for k, v in spec.items() if k != "name"})
        expected_ka[ipvs.format_service_id(ipvs.service_key(norm))] = norm

    keepalived.start(render_keepalived_conf(PILLAR["virtual_servers"], PILLAR["nodes"]))
    deadline = time.monotonic() + 60
    while True:
        live = table(ipvs)
        if all(live.get(sid, {}).get("destinations") == spec["destinations"]
               for sid, spec in expected_ka.items()):
            break
        assert keepalived.proc.poll() is None, f"keepalived exited:\n{keepalived.log_text()}"
        assert time.monotonic() < deadline, \
            f"keepalived did not program IPVS; table {live}\nlog:\n{keepalived.log_text()}"
        time.sleep(0.3)
    # keepalived programmed exactly what its virtual_server blocks say
    assert {sid: live[sid] for sid in expected_ka} == expected_ka
    assert set(live) == set(expected_ka)

    subprocess.run(["ipvsadm", "-A", "-t", "198.18.40.9:80", "-s", "rr"], check=True)
    before = table(ipvs)

    # test=True: predicted operations, nothing applied, keepalived's untouched
    ret = run_state(ipvs, ipvs_state, test=True, own_table=True)
    assert ret["result"] is None, ret
    assert ret["changes"]["operations"] == [
        "delete_service TCP:198.18.40.9:80",
        "add_service TCP:198.18.40.3:443 scheduler=lc",
        "add_dest TCP:198.18.40.3:443 198.19.40.1:443 NAT weight=1",
        "add_dest TCP:198.18.40.3:443 198.19.40.2:443 NAT weight=1",
    ]
    assert "2 keepalived-owned service(s) left to keepalived" in ret["comment"]
    assert table(ipvs) == before

    ret = run_state(ipvs, ipvs_state, test=False, own_table=True)
    assert ret["result"] is True, ret
    assert len(ret["changes"]["operations"]) == 4
    after = table(ipvs)
    assert {sid: after[sid] for sid in expected_ka} == expected_ka     # untouched
    assert "TCP:198.18.40.3:443" in after and UNMANAGED not in after

    ret = run_state(ipvs, ipvs_state, test=False, own_table=True)
    assert ret["result"] is True and ret["changes"] == {}, ret

    # someone edits a keepalived service by hand: the state still leaves it
    subprocess.run(["ipvsadm", "-E", "-u", "198.18.40.2:53", "-s", "rr"], check=True)
    ret = run_state(ipvs, ipvs_state, test=False, own_table=True)
    assert ret["result"] is True and ret["changes"] == {}, ret
    assert table(ipvs)["UDP:198.18.40.2:53"]["scheduler"] == "rr"
    subprocess.run(["ipvsadm", "-E", "-u", "198.18.40.2:53", "-s", "sh"], check=True)

    # declaring a keepalived-owned service as Salt's is refused, nothing applied
    dns = dict(PILLAR["virtual_servers"]["dns"], managed_by="salt")
    ret = run_state(ipvs, ipvs_state, test=False, own_table=True, services=[dns])
    assert ret["result"] is False
    assert "owned by another manager (keepalived): UDP:198.18.40.2:53" in ret["comment"]
    assert table(ipvs) == after

    # explicit mode with own_table: the pillar's keepalived services stay protected
    api = dict(PILLAR["virtual_servers"]["api"], real_servers=[{"address": "198.19.40.7"}])
    ret = run_state(ipvs, ipvs_state, test=False, own_table=True, services=[api])
    assert ret["result"] is True, ret
    assert ret["changes"]["operations"] == [
        "delete_dest TCP:198.18.40.3:443 198.19.40.1:443",
        "delete_dest TCP:198.18.40.3:443 198.19.40.2:443",
        "add_dest TCP:198.18.40.3:443 198.19.40.7:443 NAT weight=1",
    ]
    assert {sid: table(ipvs)[sid] for sid in expected_ka} == expected_ka

    assert keepalived.proc.poll() is None, keepalived.log_text()
    keepalived.stop()
    # keepalived removes what it programmed when it stops; Salt's stays
    deadline = time.monotonic() + 30
    while set(table(ipvs)) != {"TCP:198.18.40.3:443"}:
        assert time.monotonic() < deadline, table(ipvs)
        time.sleep(0.3)


def test_drained_node_gets_weight_zero_on_reload(ipvs, keepalived, render_keepalived_conf, clean_table):
    """edge.drain: the drained node's real servers rendered with weight 0; keepalived's reload
    (SIGHUP) sets that weight in the kernel without touching the other real server."""
    web = {"web": dict(PILLAR["virtual_servers"]["web"])}

    def weights():
        svc = table(ipvs).get("TCP:198.18.40.1:80") or {}
        return {d["address"]: d["weight"] for d in svc.get("destinations", [])}

    def wait(expected):
        deadline = time.monotonic() + 60
        while weights() != expected:
            assert keepalived.proc.poll() is None, f"keepalived exited:\n{keepalived.log_text()}"
            assert time.monotonic() < deadline, f"weights {weights()}, want {expected}\n{keepalived.log_text()}"
            time.sleep(0.3)

    keepalived.start(render_keepalived_conf(web, PILLAR["nodes"]))
    wait({"198.19.40.1": 1, "198.19.40.2": 1})
    keepalived.conf.write_text(render_keepalived_conf(web, PILLAR["nodes"], drained=["edge-b"]))
    keepalived.proc.send_signal(signal.SIGHUP)
    wait({"198.19.40.1": 1, "198.19.40.2": 0})
    keepalived.conf.write_text(render_keepalived_conf(web, PILLAR["nodes"]))  # undrain
    keepalived.proc.send_signal(signal.SIGHUP)
    wait({"198.19.40.1": 1, "198.19.40.2": 1})
