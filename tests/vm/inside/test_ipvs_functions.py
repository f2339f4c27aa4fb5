"""The single-object functions, counters and error messages on a real
kernel (inside the VM)."""

import ctypes
import glob
import json
import os
import platform
import socket
import subprocess
import time

import pytest
from vmhelpers import REPO, ipvsadm_table

pytestmark = pytest.mark.vm

SID = "TCP:198.18.30.1:80"


def test_add_edit_delete_and_get(ipvs, clean_table):
    ops = ipvs.add_service(SID, scheduler="wrr", persistence_timeout=120,
                           persistence_netmask="255.255.255.0")
    assert [o["op"] for o in ops] == ["add_service"]
    ipvs.add_destination(SID, "198.19.30.1", weight=3, forward="DR")
    ipvs.add_destination(SID, "198.19.30.2", port=8080, forward="NAT")
    svc = ipvs.get_service(SID)
    assert (svc["scheduler"], svc["persistence_timeout"], svc["persistence_netmask"]) == \
        ("wrr", 120, "255.255.255.0")
    assert [(d["address"], d["port"], d["weight"], d["forward"]) for d in svc["destinations"]] == \
        [("198.19.30.1", 80, 3, "DR"), ("198.19.30.2", 8080, 1, "NAT")]

    assert ipvs.edit_service(SID, scheduler="rr")[0]["changed"] == {"scheduler": ["wrr", "rr"]}
    assert ipvs.edit_service(SID, scheduler="rr") == []          # no-op
    assert ipvs.edit_destination(SID, "198.19.30.1", weight=0)[0]["changed"] == {"weight": [3, 0]}
    moved = ipvs.edit_destination(SID, "198.19.30.2", port=8080, forward="TUN", u_thresh=100,
                                  l_thresh=10)
    # tunnelling has no port translation: the destination moves to the service port
    assert [(o["op"], o["dest"]) for o in moved] == [("delete_dest", "198.19.30.2:8080"),
                                                     ("add_dest", "198.19.30.2:80")]
    svc = ipvs.get_service(SID)
    assert svc["scheduler"] == "rr"
    assert svc["persistence_timeout"] == 120                      # untouched by the edit
    assert svc["destinations"][1] == {**svc["destinations"][1], "forward": "TUN", "u_thresh": 100,
                                      "l_thresh": 10}
    assert ipvsadm_table(ipvs)[ipvs.parse_service_id(SID)]["destinations"][0]["weight"] == 0

    ipvs.delete_destination(SID, "198.19.30.1")
    assert [d["address"] for d in ipvs.get_service(SID)["destinations"]] == ["198.19.30.2"]
    ipvs.delete_service(SID)
    assert ipvs.get_service(SID) is None
    assert ipvs.list_services() == []


def test_fwmark_and_sched_flags(ipvs, clean_table):
    ipvs.sync([{"fwmark": 42, "scheduler": "sh", "sched_flags": ["sh-port", "sh-fallback"],
                "destinations": [{"address": "198.19.31.1", "port": 0, "forward": "DR"}]},
               {"protocol": "UDP", "address": "198.18.31.2", "port": 53, "scheduler": "mh",
                "sched_flags": ["mh-port"], "ops": True,
                "destinations": [{"address": "198.19.31.2"}]}])
    assert ipvs.sync([], test=True)["operations"] == []
    text = subprocess.run(["ipvsadm", "-Sn"], capture_output=True, text=True, check=True).stdout
    assert "-A -f 42 -s sh -b sh-fallback,sh-port" in text
    assert "-A -u 198.18.31.2:53 -s mh -o -b mh-port" in text
    assert sorted(ipvs.save().splitlines()) == sorted(text.splitlines())


def test_counters_are_reported(ipvs, clean_table):
    """Real connections through a service (client and real server on this
    host) show up in the connection, packet and byte counters."""
    subprocess.run(["ip", "link", "add", "edge0", "type", "dummy"], check=True)
    server = socket.socket()
    try:
        for addr in ("198.18.32.1/32", "198.18.32.2/32"):
            subprocess.run(["ip", "addr", "add", addr, "dev", "edge0"], check=True)
        subprocess.run(["ip", "link", "set", "edge0", "up"], check=True)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("0.0.0.0", 80))
        server.listen(8)
        desired = [{"protocol": "TCP", "address": "198.18.32.1", "port": 80, "scheduler": "rr",
                    "destinations": [{"address": "198.18.32.2", "forward": "DR"}]}]
        ipvs.sync(desired)
        assert ipvs.sync(desired)["operations"] == []
        for _ in range(3):
            with socket.create_connection(("198.18.32.1", 80), timeout=10) as client:
                conn, _ = server.accept()
                client.sendall(b"x" * 1000)
                assert conn.recv(4096)
                conn.close()
        deadline = time.monotonic() + 10
        while True:
            (svc,) = ipvs.list_services()
            stats = svc["stats"]
            if stats["connections"] >= 3 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert set(stats) >= {"connections", "packets_in", "packets_out", "bytes_in", "bytes_out"}
        assert stats["connections"] == 3
        assert stats["packets_in"] >= 6 and stats["bytes_in"] >= 3000
        dest = svc["destinations"][0]
        assert dest["stats"]["connections"] == 3
        assert {"active_connections", "inactive_connections", "persistent_connections"} <= set(dest)
    finally:
        server.close()
        subprocess.run(["ip", "link", "del", "edge0"], check=False)


def test_clear_errors(ipvs, clean_table):
    ipvs.add_service(SID, scheduler="rr")
    with pytest.raises(ipvs.CommandExecutionError, match="add_service TCP:198.18.30.1:80.*already exists"):
        ipvs.add_service(SID, scheduler="rr")
    with pytest.raises(ipvs.CommandExecutionError, match="no such service TCP:198.18.30.9:80"):
        ipvs.edit_service("TCP:198.18.30.9:80", scheduler="wlc")
    with pytest.raises(ipvs.CommandExecutionError, match="delete_dest .*: no such destination"):
        ipvs.delete_destination(SID, "198.19.30.77")
    with pytest.raises(ipvs.CommandExecutionError, match="delete_service TCP:198.18.30.9:80: no such service"):
        ipvs.delete_service("TCP:198.18.30.9:80")
    with pytest.raises(ipvs.SaltInvocationError, match="unknown scheduler 'fastest'"):
        ipvs.add_service("TCP:198.18.30.2:80", scheduler="fastest")
    with pytest.raises(ipvs.SaltInvocationError, match="invalid destination address '198.18.30.256'"):
        ipvs.add_destination(SID, "198.18.30.256")
    with pytest.raises(ipvs.SaltInvocationError, match="invalid port '70000'"):
        ipvs.get_service("TCP:198.18.30.1:70000")
    assert [s["id"] for s in ipvs.list_services()] == [SID]


def _syscall(number, *args):
    libc = ctypes.CDLL(None, use_errno=True)
    ret = libc.syscall(number, *args)
    return ret, ctypes.get_errno()


def test_scheduler_missing_from_kernel(ipvs, clean_table):
    """Unload ip_vs_nq: adding an nq service fails with a clear message and,
    in a sync, only that service's operations fail."""
    assert platform.machine() == "x86_64"
    SYS_delete_module, SYS_finit_module = 176, 313
    ret, err = _syscall(SYS_delete_module, b"ip_vs_nq", os.O_NONBLOCK)
    assert ret == 0, os.strerror(err)
    try:
        with pytest.raises(ipvs.CommandExecutionError,
                           match=r"scheduler 'nq' is not available in the kernel \(modprobe ip_vs_nq\)"):
            ipvs.add_service("TCP:198.18.33.1:80", scheduler="nq")
        with pytest.raises(ipvs.CommandExecutionError) as exc:
            ipvs.sync([
                {"protocol": "TCP", "address": "198.18.33.1", "port": 80, "scheduler": "nq",
                 "destinations": [{"address": "198.19.33.1"}]},
                {"protocol": "TCP", "address": "198.18.33.2", "port": 80, "scheduler": "rr",
                 "destinations": [{"address": "198.19.33.1"}]},
            ])
        info = exc.value.info
        assert "2 of 4 operations failed" in str(exc.value)
        assert [o["service"] for o in info["applied"]] == ["TCP:198.18.33.2:80"] * 2
        assert [f["error"] for f in info["failed"]] == [
            "add_service TCP:198.18.33.1:80 scheduler=nq: scheduler 'nq' is not available in the "
            "kernel (modprobe ip_vs_nq)",
            "add_dest TCP:198.18.33.1:80 198.19.33.1:80 NAT weight=1: no such service"]
        assert [s["id"] for s in ipvs.list_services()] == ["TCP:198.18.33.2:80"]
    finally:
        release = os.uname().release
        (ko,) = glob.glob(str(REPO / ".cache/vm/kernels/*/lib/modules" / release
                              / "kernel/net/netfilter/ipvs/ip_vs_nq.ko"))
        fd = os.open(ko, os.O_RDONLY)
        try:
            ret, err = _syscall(SYS_finit_module, fd, b"", 0)
        finally:
            os.close(fd)
        assert ret == 0, f"reloading ip_vs_nq: {os.strerror(err)}"
    ipvs.add_service("TCP:198.18.33.1:80", scheduler="nq")


def test_permission_denied_for_non_root(ipvs, clean_table):
    """A forked child drops to uid/gid 65534 and tries to change and read
    the table."""
    ipvs.CommandExecutionError("import what the error needs while still root", info={"x": 1})
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(read_fd)
            os.setgid(65534)
            os.setuid(65534)
            out = {}
            for name, call in (
                    ("add", lambda: ipvs.add_service("TCP:198.18.34.1:80", scheduler="rr")),
                    ("list", ipvs.list_services),
                    ("sync", lambda: ipvs.sync([{"address": "198.18.34.1", "port": 80}]))):
                try:
                    call()
                    out[name] = "ok"
                except ipvs.CommandExecutionError as exc:
                    out[name] = getattr(exc, "error", str(exc))
            os.write(write_fd, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as fh:
        data = fh.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    out = json.loads(data)
    hint = "permission denied: changing or reading IPVS needs root (CAP_NET_ADMIN)"
    assert hint in out["add"], out
    assert hint in out["list"], out
    assert hint in out["sync"], out
    assert ipvs.list_services() == []


def test_info(ipvs, clean_table):
    info = ipvs.info()
    assert info["version"].startswith("1.2.")
    assert info["conn_tab_size"] > 0 and info["services"] == 0
