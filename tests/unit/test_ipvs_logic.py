"""Pure logic of the ipvs execution and state modules, without a kernel.

The modules are loaded from their files with importlib (no Salt loader, no
dunders); one test at the end loads them through Salt's real loader."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _load(path, name):
    spec = importlib.util.spec_from_file_location(name, REPO / path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


ipvs = _load("_modules/ipvs.py", "ipvs_exec_under_test")
ipvs_state = _load("_states/ipvs.py", "ipvs_state_under_test")
Invalid = ipvs.SaltInvocationError


def svc(i=1, port=80, dests=2, weight=1, **kw):
    spec = {"protocol": "TCP", "address": f"198.18.0.{i}", "port": port, "scheduler": "rr",
            "destinations": [{"address": f"198.19.0.{j + 1}", "weight": weight}
                             for j in range(dests)]}
    spec.update(kw)
    return spec


def table(*specs):
    return ipvs.normalize_table(list(specs))


# --------------------------------------------------------------------------
# normalisation and validation
# --------------------------------------------------------------------------


def test_normalize_defaults_and_keepalived_keys():
    out = ipvs.normalize_service({
        "address": "198.18.0.1", "port": "443", "protocol": "tcp", "lb_algo": "WRR",
        "lb_kind": "DR", "persistence_timeout": 300, "persistence_granularity": "255.255.255.0",
        "real_servers": [{"address": "198.19.0.2", "weight": 3}, {"address": "198.19.0.1"}]})
    assert out == {
        "protocol": "TCP", "address": "198.18.0.1", "port": 443, "scheduler": "wrr",
        "persistence_timeout": 300, "persistence_netmask": "255.255.255.0", "ops": False,
        "sched_flags": [], "pe": None,
        "destinations": [
            {"address": "198.19.0.1", "port": 443, "weight": 1, "forward": "DR",
             "u_thresh": 0, "l_thresh": 0},
            {"address": "198.19.0.2", "port": 443, "weight": 3, "forward": "DR",
             "u_thresh": 0, "l_thresh": 0},
        ]}


def test_normalize_ipv6_canonical_and_netmask_prefix():
    out = ipvs.normalize_service({"address": "2001:DB8:0:0::10", "port": 53, "protocol": "udp",
                                  "scheduler": "sh", "sched_flags": "flag-2,sh-fallback",
                                  "persistence_timeout": 60, "persistence_netmask": 64,
                                  "destinations": [{"address": "[2001:db8::0:1]", "port": 5353}]})
    assert out["address"] == "2001:db8::10"
    assert out["destinations"][0]["address"] == "2001:db8::1"
    assert out["sched_flags"] == ["sh-fallback", "sh-port"]
    assert out["persistence_netmask"] == 64
    assert ipvs.service_key(out) == ("UDP", "2001:db8::10", 53)


def test_netmask_ignored_without_persistence_and_host_mask_is_none():
    assert ipvs.normalize_service(svc(persistence_netmask="255.255.0.0"))["persistence_netmask"] is None
    assert ipvs.normalize_service(svc(persistence_timeout=5, persistence_netmask="/32"))[
        "persistence_netmask"] is None
    assert ipvs.normalize_service(svc(persistence_timeout=5, persistence_netmask="/24"))[
        "persistence_netmask"] == "255.255.255.0"


def test_fwmark_service():
    out = ipvs.normalize_service({"fwmark": 7, "family": "inet", "scheduler": "wlc",
                                  "destinations": [{"address": "198.19.0.1", "port": 8080}]})
    assert ipvs.service_key(out) == ("FWM", "inet", 7)
    assert ipvs.format_service_id(ipvs.service_key(out)) == "FWM:7"
    with pytest.raises(Invalid, match="needs a port"):
        ipvs.normalize_service({"fwmark": 7, "destinations": [{"address": "198.19.0.1"}]})


@pytest.mark.parametrize("spec, message", [
    (svc(scheduler="roundrobin"), "unknown scheduler 'roundrobin': one of rr|wrr|lc|wlc|lblc|sh|mh|dh|fo|ovf|lblcr|sed|nq"),
    (svc(address="198.18.0.300"), "invalid address '198.18.0.300'"),
    (svc(address="edge.example"), "not an IPv4 or IPv6 address"),
    (svc(port=70000), "must be 0..65535"),
    (svc(port="http"), "invalid port 'http': not an integer"),
    (svc(port=0), "port 0 is only allowed for persistent services"),
    (svc(protocol="ICMP"), "invalid protocol 'ICMP'"),
    (svc(lb_kind="SNAT"), "invalid forwarding method 'SNAT'"),
    (svc(destinations=[{"address": "198.19.0.1", "weight": -1}]), "invalid weight -1"),
    (svc(destinations=[{"address": "198.19.0.1", "port": 65536}]), "invalid destination port"),
    (svc(destinations=[{"address": "2001:db8::1"}]), "is inet6 but the service is inet"),
    (svc(destinations=[{"address": "198.19.0.1", "l_thresh": 5}]), "l_thresh (5) is above u_thresh (0)"),
    (svc(destinations=[{"address": "198.19.0.1"}, {"address": "198.19.0.1"}]), "listed twice"),
    (svc(destinations="auto"), "resolve 'auto'"),
    (svc(scheduler="rr", sched_flags=["sh-port"]), "invalid scheduler flag 'sh-port' for rr"),
    (svc(pe="http"), "invalid persistence engine 'http'"),
])
def test_validation_errors(spec, message):
    with pytest.raises(Invalid) as exc:
        ipvs.normalize_service(spec)
    assert message in str(exc.value)


def test_duplicate_services_rejected():
    with pytest.raises(Invalid, match="TCP:198.18.0.1:80 is listed twice"):
        ipvs.normalize_table([svc(1), svc(1, scheduler="wrr")])


@pytest.mark.parametrize("text, key", [
    ("tcp:198.18.0.1:80", ("TCP", "198.18.0.1", 80)),
    ("UDP:[2001:db8::1]:53", ("UDP", "2001:db8::1", 53)),
    ("SCTP:198.18.0.9:3868", ("SCTP", "198.18.0.9", 3868)),
    ("fwm:42", ("FWM", "inet", 42)),
    ("FWM6:42", ("FWM", "inet6", 42)),
])
def test_service_ids_round_trip(text, key):
    assert ipvs.parse_service_id(text) == key
    assert ipvs.parse_service_id(ipvs.format_service_id(key)) == key


@pytest.mark.parametrize("text", ["TCP:198.18.0.1", "TCP:2001:db8::1:80", "HTTP:198.18.0.1:80",
                                  "198.18.0.1:80", "FWM:x"])
def test_bad_service_ids(text):
    with pytest.raises(Invalid):
        ipvs.parse_service_id(text)


# --------------------------------------------------------------------------
# diff
# --------------------------------------------------------------------------


def ops_of(ops):
    return [(o["op"], o["service"], o.get("dest")) for o in ops]


def test_diff_empty_to_services_adds_everything():
    ops = ipvs.diff_tables(table(svc(1), svc(2, dests=1)), {})
    assert ops_of(ops) == [
        ("add_service", "TCP:198.18.0.1:80", None),
        ("add_dest", "TCP:198.18.0.1:80", "198.19.0.1:80"),
        ("add_dest", "TCP:198.18.0.1:80", "198.19.0.2:80"),
        ("add_service", "TCP:198.18.0.2:80", None),
        ("add_dest", "TCP:198.18.0.2:80", "198.19.0.1:80"),
    ]


def test_diff_equal_tables_is_empty():
    assert ipvs.diff_tables(table(svc(1), svc(2)), table(svc(1), svc(2))) == []


def test_diff_minimal_edits():
    live = table(svc(1), svc(2), svc(3))
    want = table(
        svc(1, destinations=[{"address": "198.19.0.1", "weight": 5},
                             {"address": "198.19.0.2"}]),             # one weight
        svc(2, scheduler="wlc"),                                      # scheduler only
        svc(3, destinations=[{"address": "198.19.0.2"}, {"address": "198.19.0.3"}]),  # -1 +1
    )
    ops = ipvs.diff_tables(want, live)
    assert ops_of(ops) == [
        ("delete_dest", "TCP:198.18.0.3:80", "198.19.0.1:80"),
        ("edit_dest", "TCP:198.18.0.1:80", "198.19.0.1:80"),
        ("edit_service", "TCP:198.18.0.2:80", None),
        ("add_dest", "TCP:198.18.0.3:80", "198.19.0.3:80"),
    ]
    assert ops[1]["changed"] == {"weight": [1, 5]}
    assert ops[2]["changed"] == {"scheduler": ["rr", "wlc"]}
    assert ipvs.describe_operation(ops[1]) == "edit_dest TCP:198.18.0.1:80 198.19.0.1:80 weight 1->5"
    assert ipvs.summarize_operations(ops) == {"delete_dest": 1, "edit_dest": 1,
                                              "edit_service": 1, "add_dest": 1}


def test_diff_forward_and_persistence_changes():
    live = table(svc(1))
    want = table(svc(1, lb_kind="DR", persistence_timeout=300))
    ops = ipvs.diff_tables(want, live)
    assert [o["op"] for o in ops] == ["edit_service", "edit_dest", "edit_dest"]
    assert ops[0]["changed"] == {"persistence_timeout": [0, 300]}
    assert ops[1]["changed"] == {"forward": ["NAT", "DR"]}


def test_unmanaged_services_left_alone_unless_own_table():
    live = table(svc(1), svc(9))
    want = table(svc(1))
    assert ipvs.diff_tables(want, live) == []
    ops = ipvs.diff_tables(want, live, own_table=True)
    assert ops_of(ops) == [("delete_service", "TCP:198.18.0.9:80", None)]


def test_protected_services_never_touched_even_with_own_table():
    live = table(svc(1), svc(8), svc(9))
    ops = ipvs.diff_tables(table(svc(1)), live, own_table=True, protect=["TCP:198.18.0.8:80"])
    assert ops_of(ops) == [("delete_service", "TCP:198.18.0.9:80", None)]
    with pytest.raises(Invalid, match="owned by another manager.*TCP:198.18.0.8:80"):
        ipvs.diff_tables(table(svc(8, weight=3)), live, protect=[{"address": "198.18.0.8", "port": 80}])


# --------------------------------------------------------------------------
# ipvsadm save format
# --------------------------------------------------------------------------

# The exact text of `ipvsadm -Sn` (ipvsadm 1.31, Debian 6.1 kernel) for a
# table made with ipvsadm, including persistence netmask, ops, sched flags,
# IPv6, a firewall-mark service and thresholds.
IPVSADM_SAVE = """\
-A -t 198.18.0.1:80 -s rr
-a -t 198.18.0.1:80 -r 198.19.0.1:80 -m -w 1
-a -t 198.18.0.1:80 -r 198.19.0.2:8080 -m -w 3 -x 100 -y 10
-A -u 198.18.0.2:53 -s sh -p 60 -M 255.255.255.0 -o -b sh-fallback,sh-port
-a -u 198.18.0.2:53 -r 198.19.0.1:53 -g -w 1
-A -t [2001:db8::10]:443 -s wlc -p 300 -M 64
-a -t [2001:db8::10]:443 -r [2001:db8::1]:443 -i -w 0 --tun-type ipip
-A -f 42 -s mh -b mh-port
-a -f 42 -r 198.19.0.7:0 -g -w 1
"""


def test_parse_save_and_render_round_trip():
    parsed = ipvs.parse_save(IPVSADM_SAVE)
    assert parsed["clear"] is False
    services = {ipvs.format_service_id(ipvs.service_key(s)): s for s in parsed["services"]}
    assert set(services) == {"TCP:198.18.0.1:80", "UDP:198.18.0.2:53",
                             "TCP:[2001:db8::10]:443", "FWM:42"}
    udp = services["UDP:198.18.0.2:53"]
    assert (udp["scheduler"], udp["persistence_timeout"], udp["persistence_netmask"], udp["ops"],
            udp["sched_flags"]) == ("sh", 60, "255.255.255.0", True, ["sh-fallback", "sh-port"])
    tcp = services["TCP:198.18.0.1:80"]
    assert tcp["destinations"][1] == {"address": "198.19.0.2", "port": 8080, "weight": 3,
                                      "forward": "NAT", "u_thresh": 100, "l_thresh": 10}
    assert services["TCP:[2001:db8::10]:443"]["destinations"][0]["forward"] == "TUN"
    assert services["FWM:42"]["sched_flags"] == ["mh-port"]
    rendered = ipvs.render_save(parsed["services"])
    assert sorted(rendered.splitlines()) == sorted(IPVSADM_SAVE.splitlines())
    assert ipvs.normalize_table(ipvs.parse_save(rendered)["services"]) == \
        ipvs.normalize_table(parsed["services"])


def test_parse_long_options_default_persistence_and_clear():
    text = """# comment
-C
--add-service --tcp-service 198.18.0.5:25 --scheduler lc --persistent
--add-server --tcp-service 198.18.0.5:25 --real-server 198.19.0.5 --weight 2
"""
    parsed = ipvs.parse_save(text)
    assert parsed["clear"] is True
    (one,) = parsed["services"]
    assert one["persistence_timeout"] == 300
    # ipvsadm's default forwarding method is gatewaying (DR); port defaults to the service's
    assert one["destinations"] == [{"address": "198.19.0.5", "port": 25, "weight": 2,
                                    "forward": "DR", "u_thresh": 0, "l_thresh": 0}]


@pytest.mark.parametrize("text, message", [
    ("-A -t 198.18.0.1:80 -s rr\n-E -t 198.18.0.1:80 -s wrr\n", "line 2: unsupported command '-E'"),
    ("-a -t 198.18.0.1:80 -r 198.19.0.1:80 -m\n", "line 1: server for TCP:198.18.0.1:80 before its -A line"),
    ("-A -t 198.18.0.1:80 -s bogus\n", "line 1: unknown scheduler 'bogus'"),
    ("-A -t 198.18.0.1:80 -s rr --foo\n", "line 1: unsupported option '--foo'"),
    ("-A -t 198.18.0.1:80 -s rr\n-A -t 198.18.0.1:80 -s rr\n", "line 2: service TCP:198.18.0.1:80 defined twice"),
    ("-A -s rr\n", "line 1: no service"),
    ("-A -t 198.18.0.1:80 -s\n", "line 1: option -s needs a value"),
])
def test_parse_save_errors_name_the_line(text, message):
    with pytest.raises(Invalid) as exc:
        ipvs.parse_save(text)
    assert message in str(exc.value)


# --------------------------------------------------------------------------
# netlink codec
# --------------------------------------------------------------------------


def test_nla_padding_and_parse():
    raw = ipvs.nla(6, b"rr\0") + ipvs.nla(8, b"\x2c\x01\0\0")
    assert len(raw) == 8 + 8
    assert ipvs.parse_nlas(raw) == {6: b"rr\0", 8: b"\x2c\x01\0\0"}


@pytest.mark.parametrize("spec", [
    svc(1, persistence_timeout=300, persistence_netmask="255.255.0.0"),
    {"protocol": "UDP", "address": "2001:db8::5", "port": 53, "scheduler": "sh",
     "sched_flags": ["sh-port"], "persistence_timeout": 30, "persistence_netmask": 48,
     "ops": True},
    {"fwmark": 9, "family": "inet6", "scheduler": "mh", "pe": "sip", "persistence_timeout": 10},
])
def test_service_codec_round_trip(spec):
    norm = ipvs.normalize_service(spec)
    norm["destinations"] = []
    key = ipvs.service_key(norm)
    encoded = ipvs.encode_service(key, norm)
    outer = ipvs.parse_nlas(encoded)
    assert ipvs.decode_service(outer[ipvs.ATTR_SERVICE]) == norm


def test_dest_codec_round_trip():
    dest = ipvs.normalize_destination({"address": "2001:db8::7", "port": 8443, "weight": 9,
                                       "forward": "tunnel", "u_thresh": 50, "l_thresh": 5})
    outer = ipvs.parse_nlas(ipvs.encode_dest(dest))
    assert ipvs.decode_dest(outer[ipvs.ATTR_DEST], "inet6") == dest


def test_every_operation_encodes():
    live = table(svc(1), svc(2))
    want = table(svc(1, weight=4, scheduler="wrr"), svc(3))
    for op in ipvs.diff_tables(want, live, own_table=True) + [
            {"op": "delete_dest", "service": "TCP:198.18.0.1:80", "dest": "198.19.0.1:80",
             "spec": want[("TCP", "198.18.0.1", 80)]["destinations"][0]}]:
        cmd, payload = ipvs._encode_op(op)
        assert cmd in range(1, 9) and payload
        json.dumps(op)  # operations are plain data (Salt returns them)


# --------------------------------------------------------------------------
# state helpers
# --------------------------------------------------------------------------

PILLAR = {
    "nodes": {"edge-b": {"address": "198.18.1.2", "interface": "eth0"},
              "edge-a": {"address": "198.18.1.1", "interface": "eth0"}},
    "virtual_servers": {
        "web": {"address": "198.18.2.1", "port": 443, "protocol": "TCP", "lb_algo": "wrr",
                "lb_kind": "DR", "persistence_timeout": 0, "delay_loop": 5,
                "managed_by": "salt", "real_servers": "auto", "health_check": {"type": "tcp"}},
        "dns": {"address": "198.18.2.2", "port": 53, "protocol": "UDP", "lb_algo": "rr",
                "lb_kind": "NAT", "real_servers": [{"address": "198.19.0.1", "port": 53,
                                                    "weight": 2}]},
    },
}


def test_pillar_resolver_auto_and_ownership():
    salt_managed, keepalived = ipvs_state.virtual_servers_from_pillar(PILLAR)
    assert [s["name"] for s in salt_managed] == ["web"]
    assert [s["name"] for s in keepalived] == ["dns"]  # managed_by defaults to keepalived
    web = ipvs.normalize_service({k: v for k, v in salt_managed[0].items() if k != "name"})
    assert web["destinations"] == [
        {"address": "198.18.1.1", "port": 443, "weight": 1, "forward": "DR", "u_thresh": 0,
         "l_thresh": 0},
        {"address": "198.18.1.2", "port": 443, "weight": 1, "forward": "DR", "u_thresh": 0,
         "l_thresh": 0}]
    with pytest.raises(ipvs_state.SaltInvocationError, match="managed_by"):
        ipvs_state.virtual_servers_from_pillar(
            {"virtual_servers": {"x": {"address": "198.18.0.1", "port": 1, "managed_by": "me"}}})


class FakeSalt:
    """Just enough of Salt for the state: ipvs.sync on an in-memory table."""

    def __init__(self, live, pillar=None):
        self.live = ipvs.normalize_table(live)
        self.pillar = pillar or {}
        self.calls = []

    def sync(self, desired, own_table=False, protect=None, test=False):
        self.calls.append({"own_table": own_table, "protect": protect, "test": test})
        ops = ipvs.diff_tables(ipvs.normalize_table(desired), self.live, own_table, protect)
        return {"operations": ops, "counts": ipvs.summarize_operations(ops),
                "applied": not test, "kernel": "ok"}

    def dunders(self, test):
        return {"__salt__": {"ipvs.sync": self.sync,
                             "pillar.get": lambda key, default=None: self.pillar.get(key, default)},
                "__opts__": {"test": test}}


def run_state(fake, test=False, **kwargs):
    for name, value in fake.dunders(test).items():
        setattr(ipvs_state, name, value)
    try:
        return ipvs_state.synced("ipvs", **kwargs)
    finally:
        for name in ("__salt__", "__opts__"):
            delattr(ipvs_state, name)


def test_state_test_mode_predicts_operations():
    fake = FakeSalt([svc(9)])
    ret = run_state(fake, test=True, services=[svc(1, dests=1)])
    assert ret["result"] is None
    assert ret["changes"]["operations"] == [
        "add_service TCP:198.18.0.1:80 scheduler=rr", "add_dest TCP:198.18.0.1:80 198.19.0.1:80 NAT weight=1"]
    assert fake.calls[-1]["test"] is True
    assert "Would apply 2 IPVS operation(s)" in ret["comment"]


def test_state_in_sync_and_apply():
    fake = FakeSalt([svc(1)])
    ret = run_state(fake, services=[svc(1)])
    assert ret["result"] is True and ret["changes"] == {}
    ret = run_state(fake, services=[svc(1, weight=2)])
    assert ret["result"] is True
    assert len(ret["changes"]["operations"]) == 2


def test_state_from_pillar_protects_keepalived_services():
    live = [  # keepalived has programmed "dns" differently; an unknown service also exists
        {"protocol": "UDP", "address": "198.18.2.2", "port": 53, "scheduler": "wlc",
         "destinations": [{"address": "198.19.0.9", "port": 53}]},
        svc(7),
    ]
    fake = FakeSalt(live, pillar={"edge_ha": PILLAR})
    ret = run_state(fake, own_table=True)
    ops = ret["changes"]["operations"]
    assert ret["result"] is True
    assert not any("198.18.2.2" in op for op in ops), ops          # keepalived's: untouched
    assert "delete_service TCP:198.18.0.7:80" in ops               # unmanaged: own_table
    assert ops[1:] == ["add_service TCP:198.18.2.1:443 scheduler=wrr",
                       "add_dest TCP:198.18.2.1:443 198.18.1.1:443 DR weight=1",
                       "add_dest TCP:198.18.2.1:443 198.18.1.2:443 DR weight=1"]
    assert fake.calls[-1]["protect"] == [{"protocol": "UDP", "address": "198.18.2.2", "port": 53}]
    assert "1 keepalived-owned service(s) left to keepalived" in ret["comment"]


def test_state_refuses_to_manage_a_keepalived_service():
    fake = FakeSalt([], pillar={"edge_ha": PILLAR})
    ret = run_state(fake, services=[{"protocol": "UDP", "address": "198.18.2.2", "port": 53,
                                     "scheduler": "rr", "destinations": []}])
    assert ret["result"] is False
    assert "owned by another manager (keepalived): UDP:198.18.2.2:53" in ret["comment"]


def test_state_reports_partial_failure():
    fake = FakeSalt([])

    def failing_sync(desired, **kw):
        op = {"op": "add_service", "service": "TCP:198.18.0.1:80",
              "spec": {"scheduler": "rr", "persistence_timeout": 0}}
        raise ipvs_state.CommandExecutionError(
            "IPVS: 1 of 2 operations failed: boom",
            info={"applied": [op], "failed": [{"error": "add_dest ...: no such service"}]})

    for name, value in fake.dunders(False).items():
        setattr(ipvs_state, name, value)
    ipvs_state.__salt__["ipvs.sync"] = failing_sync
    try:
        ret = ipvs_state.synced("ipvs", services=[svc(1)])
    finally:
        del ipvs_state.__salt__, ipvs_state.__opts__
    assert ret["result"] is False
    assert ret["comment"] == "IPVS: 1 of 2 operations failed: boom"
    assert ret["changes"] == {"operations": ["add_service TCP:198.18.0.1:80 scheduler=rr"],
                              "failed": ["add_dest ...: no such service"]}


# --------------------------------------------------------------------------
# through Salt's own loader (salt-call --local), on a kernel without IPVS
# --------------------------------------------------------------------------


def _host_has_ipvs():
    return os.path.exists("/proc/net/ip_vs")


@pytest.mark.skipif(_host_has_ipvs(), reason="this check needs a kernel without IPVS loaded")
def test_salt_loader_exposes_only_load_list_and_test_mode_works(tmp_path):
    """Loads both modules with Salt's real loader; on this kernel (no IPVS)
    the execution module still loads, calls fail clearly, and the state's
    test=True plans against an empty table."""
    root = tmp_path / "salt"
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "minion").write_text(
        f"root_dir: {root}\nfile_client: local\nmodule_dirs: [{REPO}]\n"
        "log_level_logfile: quiet\n")
    base = [sys.executable, "-c", "import salt.scripts; salt.scripts.salt_call()",
            "--local", "--config-dir", str(conf), "--out", "json", "--log-level", "quiet"]

    def call(*args):
        proc = subprocess.run(base + list(args), capture_output=True, text=True, timeout=120)
        return proc.returncode, json.loads(proc.stdout or "{}"), proc.stderr

    rc, out, err = call("sys.list_functions", "ipvs")
    assert rc == 0, err
    assert sorted(out["local"]) == sorted(f"ipvs.{f}" for f in ipvs.__load__)

    rc, out, err = call("ipvs.list_services")
    assert rc != 0
    assert "IPVS is not available in the running kernel" in json.dumps(out) + err

    services = json.dumps([svc(1, dests=1)])
    rc, out, err = call("state.single", "ipvs.synced", "name=edge", f"services={services}",
                        "test=True")
    (ret,) = out["local"].values()
    assert ret["result"] is None, ret
    assert ret["changes"]["operations"] == [
        "add_service TCP:198.18.0.1:80 scheduler=rr",
        "add_dest TCP:198.18.0.1:80 198.19.0.1:80 NAT weight=1"]
    assert "planned against an empty table: IPVS is not available" in ret["comment"]


def test_fast_dest_decoder_matches_generic_decoder():
    for spec in ({"address": "198.19.0.7", "port": 8080, "weight": 9, "forward": "DR",
                  "u_thresh": 50, "l_thresh": 5},
                 {"address": "2001:db8::7", "port": 443, "forward": "TUN"}):
        dest = ipvs.normalize_destination(spec)
        family = "inet6" if ":" in dest["address"] else "inet"
        encoded = ipvs.encode_dest(dest)
        assert ipvs._dest_handler(family)(encoded, 0, len(encoded)) == dest
        assert ipvs._dest_handler(family)(b"", 0, 0) is None


def test_dr_and_tun_destinations_use_the_service_port():
    out = ipvs.normalize_service(svc(port=80, lb_kind="DR",
                                     destinations=[{"address": "198.19.0.1", "port": 8080}]))
    assert out["destinations"][0]["port"] == 80
    out = ipvs.normalize_service(svc(port=80, destinations=[{"address": "198.19.0.1", "port": 8080}]))
    assert out["destinations"][0]["port"] == 8080  # NAT translates ports
    fwm = ipvs.normalize_service({"fwmark": 3, "destinations": [
        {"address": "198.19.0.1", "port": 8080, "forward": "DR"}]})
    assert fwm["destinations"][0]["port"] == 8080  # no service port to use


def test_pillar_resolver_agrees_with_edge_ha_model():
    """virtual_servers_from_pillar gives the same IPVS services from the raw
    pillar as from edge_ha.model()'s output, so the state can switch to
    __salt__['edge_ha.model']() without a change in behaviour."""
    example = REPO / "pillar" / "edge_ha.sls.example"
    if not example.exists():
        pytest.skip("no edge_ha pillar example in this tree")
    yaml = pytest.importorskip("yaml")
    from edge_ha_core import model as edge_ha  # pylint: disable=import-outside-toplevel
    pillar = yaml.safe_load(example.read_text())["edge_ha"]

    def services(data):
        salt_managed, keepalived = ipvs_state.virtual_servers_from_pillar(data)
        return ([ipvs.normalize_service(ipvs_state._strip(s)) for s in salt_managed],
                [ipvs.normalize_service(ipvs_state._strip(s)) for s in keepalived])

    from_pillar = services(pillar)
    assert from_pillar == services(edge_ha.normalize(pillar))
    assert from_pillar[0] or from_pillar[1]
