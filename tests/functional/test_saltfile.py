"""The repo's Saltfile: salt-call from the repo root finds salt/, pillar/ and the custom modules without a sync."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.support.saltfile import saltfile_args

REPO = pathlib.Path(__file__).resolve().parents[2]
SALT_CALL = str(pathlib.Path(sys.executable).with_name("salt-call"))
EXAMPLE = yaml.safe_load((REPO / "pillar" / "edge_ha.sls.example").read_text())

pytestmark = pytest.mark.functional


def _salt_call(*args, root_dir, hide=()):
    # --config-dir/root_dir keep caches out of /etc and /var; everything else comes from the Saltfile
    # (./Saltfile, or Saltfile-3006-3007 on the older Salts)
    return subprocess.run(
        [*_hiding(hide), SALT_CALL, *saltfile_args(), "--out=json", "-c", str(root_dir), *args],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )


def _hiding(commands):
    """A command prefix that runs the rest as on a node without ``commands`` (a node before
    edge.packages): /dev/null bind-mounted over each in a private mount namespace."""
    if not commands:
        return []
    paths = set()
    for command in commands:
        for directory in ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"):
            path = os.path.join(directory, command)
            if os.path.exists(path):
                paths.add(os.path.realpath(path))
    script = "".join(f"mount --bind /dev/null {p} && " for p in sorted(paths)) + 'exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]


def _show_sls(sls, confdir, *args, pillar=None, hide=()):
    proc = _salt_call("--id", "edge1", "state.show_sls", sls, f"pillar={json.dumps(pillar or EXAMPLE)}", *args,
                      root_dir=confdir, hide=hide)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)["local"]


@pytest.fixture
def confdir(tmp_path):
    (tmp_path / "minion").write_text(f"root_dir: {tmp_path}\n")
    return tmp_path


def test_saltfiles_for_3006_3007_and_3008_agree():
    """Saltfile (3008: file_root/pillar_root are lists) and Saltfile-3006-3007 (strings) say the same."""
    new = yaml.safe_load((REPO / "Saltfile").read_text())["salt-call"]
    old = yaml.safe_load((REPO / "Saltfile-3006-3007").read_text())["salt-call"]
    assert {k: [v] if k in ("file_root", "pillar_root") else v for k, v in old.items()} == new


def test_custom_modules_load_from_repo_root(confdir):
    proc = _salt_call("--id", "edge1", "edge_ha.validate", root_dir=confdir)
    # the repo ships no pillar/edge_ha.sls: the model says exactly what is missing
    assert json.loads(proc.stdout)["local"] == ["edge_ha: must be a mapping (is the pillar key edge_ha missing?)"]


def test_edge_sls_renders_with_repo_file_roots(confdir):
    pillar = json.dumps(EXAMPLE)
    proc = _salt_call("--id", "edge1", "state.show_sls", "edge", f"pillar={pillar}", root_dir=confdir)
    assert proc.returncode == 0, proc.stderr
    states = json.loads(proc.stdout)["local"]
    assert "keepalived" in states["edge-keepalived"]
    assert states["edge-sysctl-net.ipv4.conf.all.arp_ignore"]["sysctl"].count({"value": 1}) == 1  # DR virtual servers
    # what the SLS's own states run: lsmod/modprobe (kmod.present), sysctl (sysctl.present)
    assert {"pkgs": ["keepalived", "ipvsadm", "iproute2", "nftables", "kmod", "procps"]} in states["edge-packages"]["pkg"]
    for state in ("edge-sysctl-nonlocal-bind", "edge-ipvs-module"):
        assert {"require": ["edge-packages"]} in next(v for k, v in states[state].items() if not k.startswith("__"))
    assert {"require": ["edge-packages", "edge-sysctl-nonlocal-bind"]} in states["edge-keepalived"]["keepalived"]


def test_package_names_per_os_family(confdir):
    (confdir / "minion").write_text(yaml.safe_dump({"root_dir": str(confdir), "grains": {"os_family": "RedHat"}}))
    pkgs = _show_sls("edge.packages", confdir)["edge-packages"]["pkg"]
    assert {"pkgs": ["keepalived", "ipvsadm", "iproute", "nftables", "kmod", "procps-ng"]} in pkgs
    # edge_ha_packages (config or pillar) overrides a name
    (confdir / "minion").write_text(yaml.safe_dump({"root_dir": str(confdir), "grains": {"os_family": "Debian"},
                                                   "edge_ha_packages": {"nftables": "nftables-custom"}}))
    pkgs = _show_sls("edge.packages", confdir)["edge-packages"]["pkg"]
    assert {"pkgs": ["keepalived", "ipvsadm", "iproute2", "nftables-custom", "kmod", "procps"]} in pkgs


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare (mount namespace)")
def test_dry_run_before_the_packages_previews_instead_of_failing(confdir):
    """README's first state.apply test=True on a bare node: without lsmod (kmod) and sysctl (procps) the
    kmod/sysctl states would fail; they say what they would do instead. A real run keeps the real states."""
    real = _show_sls("edge", confdir, hide=("lsmod", "sysctl"))
    assert "kmod" in real["edge-ipvs-module"] and "sysctl" in real["edge-sysctl-nonlocal-bind"]
    bare = _show_sls("edge", confdir, "test=True", hide=("lsmod", "sysctl"))
    assert bare["edge-ipvs-module"]["test"][0] == {
        "text": "would load the kernel module ip_vs (not checked: test=True, and kmod from edge-packages not "
                "installed yet)"}
    assert bare["edge-sysctl-net.ipv4.vs.expire_nodest_conn"]["test"][0] == {
        "text": "would set net.ipv4.vs.expire_nodest_conn = 1 in /etc/sysctl.d/60-edge-ha.conf (not checked: "
                "test=True, and procps, kmod from edge-packages not installed yet)"}
    assert "test" in bare["edge-sysctl-nonlocal-bind"] and "keepalived" in bare["edge-keepalived"]
    # only kmod missing: the plain sysctls are checked for real, the IPVS ones wait for ip_vs
    no_kmod = _show_sls("edge", confdir, "test=True", hide=("lsmod",))
    assert "sysctl" in no_kmod["edge-sysctl-nonlocal-bind"]
    assert "test" in no_kmod["edge-ipvs-module"] and "test" in no_kmod["edge-sysctl-net.ipv4.vs.expire_nodest_conn"]


def test_ipvs_persistence_expiry_only_with_virtual_servers(confdir):
    """Removed or drained real servers: connections and persistence templates expire (IPVS sysctls)."""
    with_vs = json.loads(_salt_call("--id", "edge1", "state.show_sls", "edge.sysctl", f"pillar={json.dumps(EXAMPLE)}",
                                    root_dir=confdir).stdout)["local"]
    for key in ("net.ipv4.vs.expire_nodest_conn", "net.ipv4.vs.expire_quiescent_template"):
        assert {"value": 1} in with_vs[f"edge-sysctl-{key}"]["sysctl"]
        assert {"require": ["edge-ipvs-module"]} in with_vs[f"edge-sysctl-{key}"]["sysctl"]
    without = dict(EXAMPLE["edge_ha"])
    without.pop("virtual_servers")
    plain = json.loads(_salt_call("--id", "edge1", "state.show_sls", "edge.sysctl",
                                  f"pillar={json.dumps({'edge_ha': without})}", root_dir=confdir).stdout)["local"]
    assert not [k for k in plain if ".vs." in k or k == "edge-ipvs-module"], sorted(plain)


def test_systemd_drop_in_for_service_mode(confdir):
    """service_mode: service (the default) on a systemd node: the keepalived unit's drop-in (state
    directory before start, Restart=) and a daemon-reload come before keepalived.managed; per OS family."""
    (confdir / "minion").write_text(yaml.safe_dump({"root_dir": str(confdir),
                                                   "grains": {"init": "systemd", "os_family": "RedHat"},
                                                   "keepalived": {"state_dir": "/run/edge-x"}}))
    states = _show_sls("edge.keepalived", confdir)
    unit = dict(kv for item in states["edge-keepalived-unit"]["file"] if isinstance(item, dict) for kv in item.items())
    assert unit["name"] == "/etc/systemd/system/keepalived.service.d/edge-ha.conf"
    assert "ExecStartPre=/usr/bin/mkdir -p -m 0755 /run/edge-x\n" in unit["contents"]
    assert "Restart=on-failure\nRestartSec=5\nRestartPreventExitStatus=2\n" in unit["contents"]
    assert {"onchanges": [{"file": "edge-keepalived-unit"}, {"file": "edge-keepalived-unit-config-file"}]} \
        in states["edge-keepalived-daemon-reload"]["cmd"]
    assert {"require": ["edge-packages", "edge-sysctl-nonlocal-bind", "edge-keepalived-unit",
                        "edge-keepalived-unit-config-file", "edge-keepalived-daemon-reload"]} \
        in states["edge-keepalived"]["keepalived"]
    assert "edge-keepalived-enabled" in states
    # the packaged unit's file: its config-file drop-in is removed (left from another config_file)
    assert "absent" in states["edge-keepalived-unit-config-file"]["file"]
    assert {"name": "/etc/systemd/system/keepalived.service.d/edge-ha-config-file.conf"} \
        in states["edge-keepalived-unit-config-file"]["file"]
    # another config file: the packaged unit is made to read it (and to start only when it is not empty)
    for family, exec_start in (("Debian", "/usr/sbin/keepalived --dont-fork $DAEMON_ARGS"),
                               ("RedHat", "/usr/sbin/keepalived $KEEPALIVED_OPTIONS")):
        (confdir / "minion").write_text(yaml.safe_dump({
            "root_dir": str(confdir), "grains": {"init": "systemd", "os_family": family},
            "keepalived": {"config_file": "/etc/keepalived/edge.conf"}}))
        states = _show_sls("edge.keepalived", confdir)
        dropin = dict(kv for item in states["edge-keepalived-unit-config-file"]["file"] if isinstance(item, dict)
                      for kv in item.items())
        assert dropin["name"] == "/etc/systemd/system/keepalived.service.d/edge-ha-config-file.conf"
        contents = dropin["contents"]
        assert "[Unit]\nConditionFileNotEmpty=\nConditionFileNotEmpty=/etc/keepalived/edge.conf\n" in contents
        assert f"ExecStart=\nExecStart={exec_start} -f /etc/keepalived/edge.conf\n" in contents
    # a path that would break the unit line is refused naming the key, nothing rendered
    (confdir / "minion").write_text(yaml.safe_dump({"root_dir": str(confdir), "grains": {"init": "systemd"},
                                                   "keepalived": {"config_file": "/etc/keepalived/my edge.conf"}}))
    failed = _salt_call("--id", "edge1", "state.show_sls", "edge.keepalived", f"pillar={json.dumps(EXAMPLE)}",
                        root_dir=confdir)
    assert failed.returncode != 0 and "keepalived:config_file" in failed.stdout + failed.stderr
    # process mode (no init system) or no systemd: no unit settings
    (confdir / "minion").write_text(yaml.safe_dump({"root_dir": str(confdir), "grains": {"init": "systemd"},
                                                   "keepalived": {"service_mode": "process"}}))
    states = _show_sls("edge.keepalived", confdir)
    assert "edge-keepalived-unit" not in states and "edge-keepalived-enabled" not in states
