"""sync / save / restore on a 1,000-service x 4-destination table, on a real
kernel (inside the VM). The tests of this module build on each other's
table (module-scoped fixture) to keep the VM stage short."""

import copy
import subprocess

import pytest
from vmhelpers import ipvsadm_table

pytestmark = pytest.mark.vm

N = 1000
SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "sh", "mh", "dh", "fo", "ovf", "lblcr", "sed", "nq")
PROTOCOLS = ("TCP", "UDP", "SCTP")
FORWARD = ("NAT", "DR", "TUN")
UNMANAGED = "TCP:198.18.250.1:80"


def make_service(i):
    """Service i: every scheduler, protocol and forwarding method shows up."""
    return {
        "protocol": PROTOCOLS[i % 3],
        "address": f"198.18.{i // 250}.{i % 250 + 1}",
        "port": 80 + i % 7,
        "scheduler": SCHEDULERS[i % len(SCHEDULERS)],
        "persistence_timeout": 300 if i % 11 == 0 else 0,
        "destinations": [
            {"address": f"198.19.{i % 4}.{j + 1}", "port": 8080, "weight": 1 + (i + j) % 3,
             "forward": FORWARD[(i // 3) % 3]}
            for j in range(4)
        ],
    }


def live(ipvs):
    return {ipvs.parse_service_id(s["id"]): {k: v for k, v in s.items() if k != "id"}
            for s in ipvs.list_services(stats=False)}


def save_lines(ipvs):
    out = subprocess.run(["ipvsadm", "-Sn"], check=True, capture_output=True, text=True).stdout
    return out.splitlines()


def by_service(lines):
    """ipvsadm -Sn lines grouped by service ("-t 198.18.0.1:80" -> lines)."""
    out = {}
    for line in lines:
        arg = line[3:].split(" -r ")[0].split(" -s ")[0]
        out.setdefault(arg, []).append(line)
    return {arg: sorted(group) for arg, group in out.items()}


def save_arg(ipvs, sid):
    return ipvs._save_service_arg(dict(zip(("protocol", "address", "port"), ipvs.parse_service_id(sid))))


@pytest.fixture(scope="module")
def base(ipvs):
    subprocess.run(["ipvsadm", "-C"], check=True)
    yield [make_service(i) for i in range(N)]
    subprocess.run(["ipvsadm", "-C"], check=False)


def test_sync_empty_table_to_1000_services(ipvs, base):
    result = ipvs.sync(base)
    assert result["applied"] is True
    assert result["counts"] == {"add_service": N, "add_dest": 4 * N}
    assert len(result["operations"]) == 5 * N
    want = ipvs.normalize_table(base)
    assert live(ipvs) == want            # read back through netlink
    assert ipvsadm_table(ipvs) == want   # and through ipvsadm, independently
    again = ipvs.sync(base)
    assert again["operations"] == [] and again["applied"] is False


def test_change_10_services_touches_only_those(ipvs, base):
    subprocess.run(["ipvsadm", "-A", "-t", "198.18.250.1:80", "-s", "rr"], check=True)
    before = save_lines(ipvs)
    changed = copy.deepcopy(base)
    expected = {}

    def sid(i):
        return ipvs.format_service_id(ipvs.service_key(ipvs.normalize_service(changed[i])))

    for i in (3, 150, 299):                                  # a weight
        changed[i]["destinations"][2]["weight"] = 9
        expected[sid(i)] = ["edit_dest"]
    for i in (400, 401):                                     # the scheduler
        changed[i]["scheduler"] = "wlc" if changed[i]["scheduler"] != "wlc" else "rr"
        expected[sid(i)] = ["edit_service"]
    for i in (500, 777):                                     # one more destination
        changed[i]["destinations"].append({"address": "198.19.9.9", "port": 8080,
                                           "forward": changed[i]["destinations"][0]["forward"]})
        expected[sid(i)] = ["add_dest"]
    for i in (600, 998):                                     # one destination less
        del changed[i]["destinations"][0]
        expected[sid(i)] = ["delete_dest"]
    changed[905]["persistence_timeout"] = 60                 # persistence on
    expected[sid(905)] = ["edit_service"]

    plan = ipvs.sync(changed, test=True)
    assert plan["applied"] is False
    got = {}
    for op in plan["operations"]:
        got.setdefault(op["service"], []).append(op["op"])
    assert got == expected
    assert save_lines(ipvs) == before                        # test=True changed nothing

    result = ipvs.sync(changed)
    assert result["operations"] == plan["operations"]
    assert len(result["operations"]) == 10
    after = save_lines(ipvs)
    now = live(ipvs)
    assert now == {**ipvs.normalize_table(changed),
                   ipvs.parse_service_id(UNMANAGED): now[ipvs.parse_service_id(UNMANAGED)]}
    # only the 10 services' lines differ (ipvsadm's view), the unmanaged one stayed
    old, new = by_service(before), by_service(after)
    assert len(old) == len(new) == N + 1
    differing = {arg for arg in set(old) | set(new) if old.get(arg) != new.get(arg)}
    assert differing == {save_arg(ipvs, sid) for sid in expected}
    assert new[save_arg(ipvs, UNMANAGED)] == ["-A -t 198.18.250.1:80 -s rr"]

    back = ipvs.sync(base)
    assert len(back["operations"]) == 10
    subprocess.run(["ipvsadm", "-D", "-t", "198.18.250.1:80"], check=True)
    assert live(ipvs) == ipvs.normalize_table(base)


def test_save_matches_ipvsadm_and_restore_rebuilds_the_table(ipvs, base, tmp_path):
    rules = tmp_path / "ipvs.rules"
    text = ipvs.save(path=str(rules))
    assert rules.read_text() == text
    assert sorted(text.splitlines()) == sorted(save_lines(ipvs))   # byte-identical lines

    subprocess.run(["ipvsadm", "-C"], check=True)
    result = ipvs.restore(path=str(rules))
    assert result["counts"] == {"add_service": N, "add_dest": 4 * N}
    assert live(ipvs) == ipvs.normalize_table(base)

    # one changed line in the file -> exactly one operation
    lines = text.splitlines()
    idx = next(i for i, line in enumerate(lines) if line.startswith("-a ") and "-w 1" in line)
    lines[idx] = lines[idx].replace("-w 1", "-w 7")
    result = ipvs.restore(text="\n".join(lines) + "\n")
    assert [op["op"] for op in result["operations"]] == ["edit_dest"]
    assert ipvs.restore(text=text)["counts"] == {"edit_dest": 1}


def test_restore_validates_everything_before_touching_the_kernel(ipvs, base):
    before = save_lines(ipvs)
    bad = ("-A -t 198.18.251.1:80 -s rr\n"
           "-A -t 198.18.251.2:80 -s bogus\n"
           "-A -t 198.18.251.3:80 -s rr\n")
    with pytest.raises(ipvs.SaltInvocationError, match="line 2: unknown scheduler 'bogus'"):
        ipvs.restore(text=bad, own_table=False)
    assert save_lines(ipvs) == before
    # ipvsadm -R, for contrast: applies around the failing line and its exit
    # status only reflects the last line
    proc = subprocess.run(["ipvsadm", "-R"], input=bad, capture_output=True, text=True)
    after = save_lines(ipvs)
    added = sorted(set(after) - set(before))
    assert added == ["-A -t 198.18.251.1:80 -s rr", "-A -t 198.18.251.3:80 -s rr"], proc.stderr
    assert proc.returncode == 0, (proc.returncode, proc.stderr)
    assert proc.stderr.strip(), "ipvsadm reported the failing line on stderr"
    for sid in ("TCP:198.18.251.1:80", "TCP:198.18.251.3:80"):
        ipvs.delete_service(sid)


def test_delete_with_own_table_keeps_protected_services(ipvs, base):
    subprocess.run(["ipvsadm", "-A", "-t", "198.18.250.1:80", "-s", "rr"], check=True)
    keep = base[50:]
    result = ipvs.sync(keep, own_table=True, protect=[UNMANAGED])
    assert result["counts"] == {"delete_service": 50}
    table = live(ipvs)
    assert set(table) == set(ipvs.normalize_table(keep)) | {ipvs.parse_service_id(UNMANAGED)}
    result = ipvs.sync(keep[:-1], own_table=True)       # unprotected now: it goes too
    assert result["counts"] == {"delete_service": 2}
    assert {op["service"] for op in result["operations"]} == {
        UNMANAGED, ipvs.format_service_id(ipvs.service_key(ipvs.normalize_service(keep[-1])))}
