"""The wheel: built from a copy of the repository, installed into a fresh venv,
and Salt finds every module through the ``salt.loader`` entry point (no
``module_dirs``, no Saltfile, no sync).

Cost: the fresh venv has no pip and no Salt of its own; a ``.pth`` file puts
the running venv's site-packages (this Salt: 3008, or 3006/3007 in the
matrix venvs) behind its own, so only the wheel is installed (``pip
--python``, ``--no-index --no-deps``: ~3 s with the venv). Building the
wheel dominates (8-11 s: setuptools in pip's build isolation, from pip's
cache after the first time); the whole module took 14-26 s on 2 shared cores.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig

import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = (REPO / "pillar" / "edge_ha.sls.example").read_text()

pytestmark = pytest.mark.functional

# not copied into the build tree: venvs, caches, git, earlier build output
IGNORE = shutil.ignore_patterns(".git", ".venv*", ".cache", ".pytest_cache", "__pycache__", "build", "dist",
                                "*.egg-info", "bench", "tests", "docs", "lab")


def _run(cmd, **kwargs):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, **kwargs)
    assert proc.returncode == 0, f"{cmd}: rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    # setuptools writes build/ and *.egg-info next to the sources and reuses a
    # stale build/lib; a fresh copy (symlinks kept: salt/_modules -> ../_modules)
    # builds exactly what is in the tree now
    src = tmp_path_factory.mktemp("src") / "salt-edge-ha"
    shutil.copytree(REPO, src, symlinks=True, ignore=IGNORE)
    dist = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q",
          "-w", str(dist), str(src)])
    (whl,) = dist.glob("saltext_edge_ha-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory):
    root = tmp_path_factory.mktemp("venv") / "v"
    _run([sys.executable, "-m", "venv", "--without-pip", str(root)])
    python = root / "bin" / "python"
    purelib = pathlib.Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
                           .stdout.strip())
    # Salt and its dependencies from the running venv, after the new venv's own site-packages
    (purelib / "_edge_ha_test_parent.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--disable-pip-version-check",
          "--no-index", "--no-deps", str(wheel)])
    for script in ("salt-call", "salt-run"):
        func = script.replace("-", "_")
        path = root / "bin" / script
        path.write_text(f"#!{python}\nimport sys\nfrom salt.scripts import {func}\nsys.exit({func}())\n")
        path.chmod(0o755)
    return root, purelib


@pytest.fixture
def confdir(tmp_path):
    """Minion and master configs in a temp dir: file_client local, a pillar with the example edge_ha."""
    (tmp_path / "pillar").mkdir()
    (tmp_path / "pillar" / "top.sls").write_text("base:\n  '*':\n    - edge_ha\n")
    (tmp_path / "pillar" / "edge_ha.sls").write_text(EXAMPLE)
    common = {"root_dir": str(tmp_path), "pillar_roots": {"base": [str(tmp_path / "pillar")]}}
    (tmp_path / "minion").write_text(yaml.safe_dump({**common, "file_client": "local"}))
    (tmp_path / "master").write_text(yaml.safe_dump(common))
    return tmp_path


def _env():
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


def test_wheel_contents(wheel):
    import zipfile  # pylint: disable=import-outside-toplevel

    names = set(zipfile.ZipFile(wheel).namelist())
    for path in ("edge_ha_core/model.py", "edge_ha_core/version.py", "saltext/edge_ha/__init__.py",
                 "saltext/edge_ha/modules/keepalived.py", "saltext/edge_ha/states/keepalived.py",
                 "saltext/edge_ha/beacons/vrrp.py", "saltext/edge_ha/runners/edge.py",
                 "saltext/edge_ha/output/edge_table.py", "saltext/edge_ha/files/salt/edge/init.sls",
                 "saltext/edge_ha/pillar/edge_ha_lb.py", "saltext/edge_ha/engines/edge_ha_services.py",
                 "saltext/edge_ha/files/salt/_modules/edge_ha.py", "saltext/edge_ha/files/reactor/edge_ha.sls",
                 "saltext/edge_ha/files/pillar/edge_ha.sls.example"):
        assert path in names, path
    assert not [n for n in names if "/tests/" in n or n.startswith(("tests/", "lab/", "bench/"))]
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[salt.loader]" in text and "saltext.edge_ha = saltext.edge_ha" in text


def test_salt_call_finds_the_modules_without_module_dirs(venv, confdir):
    root, _ = venv
    cmd = [str(root / "bin" / "salt-call"), "--local", "-c", str(confdir), "--id", "edge1", "--out=json"]
    # cwd: not the repository (its Saltfile would add module_dirs)
    proc = _run([*cmd, "edge_ha.validate"], cwd=confdir, env=_env())
    assert json.loads(proc.stdout) == {"local": []}
    broken = json.dumps({"edge_ha": {"nodes": {}}})
    proc = _run([*cmd, "edge_ha.validate", f"pillar={broken}"], cwd=confdir, env=_env())
    assert json.loads(proc.stdout)["local"], proc.stdout


def test_installed_sls_tree_renders(venv, confdir):
    """The SLS tree shipped in the wheel is a working file root (the path ``python -m saltext.edge_ha`` prints)."""
    root, _ = venv
    paths = json.loads(_run([str(root / "bin" / "python"), "-m", "saltext.edge_ha", "--paths"],
                            cwd=confdir, env=_env()).stdout)
    conf = yaml.safe_load(_run([str(root / "bin" / "python"), "-m", "saltext.edge_ha"], cwd=confdir,
                               env=_env()).stdout)
    assert conf["file_roots"] == {"base": [paths["file_root"]]} and "module_dirs" not in conf
    assert [paths["reactor_sls"]] in [list(entry.values())[0] for entry in conf["reactor"]]
    minion = yaml.safe_load((confdir / "minion").read_text())
    minion["file_roots"] = conf["file_roots"]
    (confdir / "minion").write_text(yaml.safe_dump(minion))
    proc = _run([str(root / "bin" / "salt-call"), "--local", "-c", str(confdir), "--id", "edge1", "--out=json",
                 "state.show_sls", "edge"], cwd=confdir, env=_env())
    states = json.loads(proc.stdout)["local"]
    assert "keepalived" in states["edge-keepalived"], states


def test_salt_run_finds_the_runner(venv, confdir):
    root, _ = venv
    proc = _run([str(root / "bin" / "salt-run"), "-c", str(confdir), "-d", "edge.vip_report"], cwd=confdir,
                env=_env())
    assert "edge.vip_report:" in proc.stdout and "Who really owns each VIP" in proc.stdout


def test_every_loader_type_comes_from_the_wheel(venv, confdir):
    root, purelib = venv
    script = r"""
import inspect, json, sys
import salt.config, salt.loader
minion = salt.config.minion_config(sys.argv[1] + "/minion")
minion["grains"] = salt.loader.grains(minion)
utils = salt.loader.utils(minion)
mods = salt.loader.minion_mods(minion, utils=utils)
states = salt.loader.states(minion, mods, utils, {})
beacons = salt.loader.beacons(minion, mods)
master = salt.config.master_config(sys.argv[1] + "/master")
runners = salt.loader.runner(master, utils=salt.loader.utils(master))
outputters = salt.loader.outputters(minion)
master_utils = salt.loader.utils(master)
pillars = salt.loader.pillars(master, {})
engines = salt.loader.engines(master, {}, runners, master_utils)
found = {}
for kind, loader, name in [("module", mods, "keepalived.validate"), ("module", mods, "edge_ha.validate"),
                           ("module", mods, "edge_k8s.set_external_ips"), ("module", mods, "ipvs.sync"),
                           ("module", mods, "edge_node.quiesce"),
                           ("state", states, "keepalived.managed"), ("state", states, "ipvs.synced"),
                           ("beacon", beacons, "vrrp.beacon"), ("beacon", beacons, "ingress_health.beacon"),
                           ("runner", runners, "edge.vip_report"), ("runner", runners, "edge.drain"),
                           ("output", outputters, "edge_table"), ("pillar", pillars, "edge_ha_lb"),
                           ("engine", engines, "edge_ha_services.start")]:
    try:
        func = loader[name]
    except KeyError:
        found[name] = None
        continue
    found[name] = inspect.getfile(getattr(func, "func", func))  # LoadedFunc wraps the function
print(json.dumps(found))
"""
    proc = _run([str(root / "bin" / "python"), "-c", script, str(confdir)], cwd=confdir, env=_env())
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    missing = sorted(name for name, path in found.items() if path is None)
    assert not missing, found
    for name, path in found.items():
        assert pathlib.Path(path).is_relative_to(purelib / "saltext" / "edge_ha"), (name, path)
