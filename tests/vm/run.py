#!/usr/bin/env python3
"""Boot a real Debian kernel in qemu and run a command (by default the IPVS
tests of ``tests/vm/inside``) inside it.

The host kernel of the development/CI machines has no IPVS, so the IPVS
execution and state modules are proven on Debian's own kernel in a small VM:

1. ``apt-get download`` the current ``linux-image-<abi>-amd64-unsigned``
   package (the one the ``linux-image-amd64`` meta package points at), cache
   the ``.deb`` and its extracted tree under ``<repo>/.cache/vm/``.
2. Resolve the kernel modules that are needed (virtio, 9p, IPVS and all its
   schedulers, nf_conntrack ...) *and their dependencies* from the modules'
   own ``depends=``/``softdep=`` data (read from the ``.modinfo`` ELF section
   of every ``.ko``; no kmod/modinfo binary is needed on the host).
3. Build a tiny initramfs (newc cpio, written here) with busybox-static, the
   ``.ko`` files in load order and an ``/init`` script.
4. Boot ``qemu-system-x86_64`` (KVM when it works, TCG otherwise) with the
   host root shared read-only over virtio-9p and a per-run results directory
   shared read-write. ``/init`` loads the modules, mounts the host root on
   ``/newroot`` with proc/sys/dev and tmpfs on ``/tmp`` and ``/run``, and runs
   the job script in a ``chroot`` as root. The job's output, exit status and
   junit XML land in the results directory; ``/init`` then powers off.
5. ``--systemd`` (``init="systemd"``): ``/init`` mounts the 9p host root
   read-only as the lower layer of an overlayfs whose upper layer is a tmpfs
   (``index=off,xino=off,metacopy=off,redirect_dir=off``: 9p gives overlayfs
   no file handles to index), copies in what ``systemd_tree`` prepared (the
   ``edge-ha-job.target``/``.service`` units, masks for the units that would
   wait for hardware, network or a login, an empty fstab), then
   ``switch_root``s to ``/lib/systemd/systemd`` as PID 1 with
   ``systemd.unit=edge-ha-job.target``. The job unit runs the same job script,
   writes output, exit status (and the journal) to the results share and
   powers off (``SuccessAction=``/``FailureAction=poweroff-force``).

Usage::

    .venv/bin/python tests/vm/run.py                 # pytest tests/vm/inside -q
    .venv/bin/python tests/vm/run.py -- python bench/ipvs_sync.py --inside
    .venv/bin/python tests/vm/run.py --stream -- python -m pytest tests/vm/inside -x
    .venv/bin/python tests/vm/run.py --systemd       # pytest tests/vm/inside_systemd under systemd

Environment knobs: ``EDGE_HA_VM_ACCEL`` (``kvm``/``tcg``),
``EDGE_HA_VM_KERNEL_PKG`` (a package name), ``EDGE_HA_VM_TIMEOUT`` (s),
``EDGE_HA_VM_OVERLAY_OPTS`` (overlayfs options of the systemd mode).
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "vm"
GUEST_RESULTS = "/tmp/vmresults"
EXIT_MARKER = "EDGE_HA_VM_EXIT="
DEFAULT_TIMEOUT = 600
KEEP_RUNS = 5

#: Modules loaded in the guest (their dependencies are added automatically).
GUEST_MODULES = [
    # transport for the 9p root and the results share
    "virtio_pci",
    "9pnet_virtio",
    "9p",
    "virtio_rng",
    # IPVS, its connection tracking glue and every scheduler keepalived knows
    "nf_conntrack",
    "ip_vs",
    "ip_vs_rr", "ip_vs_wrr", "ip_vs_lc", "ip_vs_wlc", "ip_vs_lblc",
    "ip_vs_lblcr", "ip_vs_dh", "ip_vs_sh", "ip_vs_sed", "ip_vs_nq",
    "ip_vs_fo", "ip_vs_ovf", "ip_vs_mh",
    # an interface to put virtual addresses on
    "dummy",
    # the writable root of the systemd mode (tmpfs over the read-only 9p host root)
    "overlay",
]

#: ``init="systemd"``: the job runs as a unit of a real systemd (PID 1).
JOB_UNIT = "edge-ha-job.service"
JOB_TARGET = "edge-ha-job.target"

#: Units masked in the systemd mode: the VM has no disks, no network device and
#: no console login, and the host's own enabled units (timers, timesyncd,
#: postgresql ...) have nothing to do there. Masking a unit that does not
#: exist is harmless.
SYSTEMD_MASKED = [
    # udev: no hardware to configure (the modules are loaded by the initramfs)
    "systemd-udevd.service", "systemd-udevd-control.socket", "systemd-udevd-kernel.socket",
    "systemd-udev-trigger.service", "systemd-udev-settle.service", "systemd-hwdb-update.service",
    # network configuration and its waits (keepalived.service wants network-online.target)
    "networking.service", "ifupdown-wait-online.service", "ifupdown-pre.service",
    "systemd-networkd.service", "systemd-networkd.socket", "systemd-networkd-wait-online.service",
    "systemd-network-generator.service", "NetworkManager.service", "NetworkManager-wait-online.service",
    # consoles and first boot prompts
    "getty.target", "getty@tty1.service", "serial-getty@ttyS0.service", "console-getty.service",
    "systemd-firstboot.service",
    # the host's disks, swap, kernel modules and boot-time maintenance
    "systemd-remount-fs.service", "systemd-fsck-root.service", "systemd-modules-load.service",
    "systemd-pstore.service", "systemd-random-seed.service", "systemd-binfmt.service",
    "proc-sys-fs-binfmt_misc.automount", "ldconfig.service", "systemd-journal-catalog-update.service",
    "systemd-update-done.service", "systemd-machine-id-commit.service", "systemd-boot-system-token.service",
    "systemd-repart.service", "systemd-timesyncd.service", "systemd-time-wait-sync.service",
    "e2scrub_reap.service", "postgresql.service", "cron.service", "ssh.service",
    # timers of the host
    "apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer", "e2scrub_all.timer",
    "fstrim.timer", "man-db.timer", "logrotate.timer", "systemd-tmpfiles-clean.timer",
]


class VMError(RuntimeError):
    """The VM stage failed (download, image build, boot, or no result)."""


class QemuUnavailable(VMError):
    """qemu cannot start at all on this machine (the only reason to skip)."""


@dataclasses.dataclass
class Kernel:
    package: str
    version: str          # uname -r of the guest, e.g. 6.1.0-56-amd64
    vmlinuz: Path
    moddir: Path          # .../lib/modules/<version>


@dataclasses.dataclass
class VMResult:
    exit_code: int
    output: str           # stdout+stderr of the job inside the VM
    console: str          # serial console log (kernel + /init)
    accel: str
    kernel: str
    results_dir: Path
    timings: dict         # seconds: prepare, boot_to_exit, total

    @property
    def junit(self) -> Path:
        return self.results_dir / "junit.xml"


def log(msg: str) -> None:
    print(f"[vm] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# kernel package
# --------------------------------------------------------------------------

def _version_key(name: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def kernel_package_name() -> str:
    """Name of the current Debian ``linux-image-*-amd64-unsigned`` package
    (runs ``apt-get update`` once when the package lists know none)."""
    env = os.environ.get("EDGE_HA_VM_KERNEL_PKG")
    if env:
        return env
    name = _apt_kernel_package()
    if name is None and os.geteuid() == 0 and not _cached_kernels():
        log("no kernel package in the apt lists; apt-get update")
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=600)
        name = _apt_kernel_package()
    if name:
        return name
    cached = _cached_kernels()
    if cached:
        log(f"apt-cache gave no kernel package; using cached {cached[-1].name}")
        return cached[-1].name
    raise VMError("cannot find a linux-image-*-amd64-unsigned package "
                  "(run 'apt-get update' first)")


def _cached_kernels() -> list[Path]:
    cached = sorted((CACHE / "kernels").glob("linux-image-*"), key=lambda p: _version_key(p.name))
    return [p for p in cached if (p / ".complete").exists()]


def _apt_kernel_package() -> str | None:
    try:
        dep = subprocess.run(["apt-cache", "depends", "linux-image-amd64"],
                             capture_output=True, text=True, timeout=60)
        m = re.search(r"Depends:\s+linux-image-(\S+)-amd64\s*$", dep.stdout, re.M)
        if m:
            name = f"linux-image-{m.group(1)}-amd64-unsigned"
            show = subprocess.run(["apt-cache", "show", "--no-all-versions", name],
                                  capture_output=True, text=True, timeout=60)
            if show.returncode == 0 and show.stdout.strip():
                return name
        found = subprocess.run(
            ["apt-cache", "search", "--names-only", r"^linux-image-[0-9].*-amd64-unsigned$"],
            capture_output=True, text=True, timeout=60).stdout
        names = [line.split()[0] for line in found.splitlines() if line.strip()]
        names = [n for n in names if not re.search(r"-(cloud|rt)-amd64", n)]
        if names:
            return max(names, key=_version_key)
    except (OSError, subprocess.SubprocessError) as exc:
        log(f"apt-cache failed: {exc}")
    return None


def ensure_kernel(package: str | None = None) -> Kernel:
    """Download (once) and extract (once) the kernel package; return paths."""
    package = package or kernel_package_name()
    tree = CACHE / "kernels" / package
    if not (tree / ".complete").exists():
        debs = CACHE / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        deb = sorted(debs.glob(f"{package}_*.deb"))
        if not deb:
            log(f"apt-get download {package}")
            proc = subprocess.run(
                ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", package],
                cwd=debs, capture_output=True, text=True, timeout=900)
            if proc.returncode != 0:
                raise VMError(f"apt-get download {package} failed:\n{proc.stdout}{proc.stderr}")
            deb = sorted(debs.glob(f"{package}_*.deb"))
            if not deb:
                raise VMError(f"apt-get download {package} produced no .deb in {debs}")
        tmp = Path(tempfile.mkdtemp(prefix=f".{package}.", dir=_mkdir(tree.parent)))
        log(f"extracting {deb[-1].name}")
        proc = subprocess.run(["dpkg-deb", "-x", str(deb[-1]), str(tmp)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise VMError(f"dpkg-deb -x failed: {proc.stderr}")
        (tmp / ".complete").write_text(deb[-1].name + "\n")
        if tree.exists():
            shutil.rmtree(tree)
        tmp.rename(tree)
        # a new kernel replaces the old ones in the cache (~470 MB each)
        for old in (CACHE / "kernels").iterdir():
            if old != tree and not old.name.startswith("."):
                shutil.rmtree(old, ignore_errors=True)
        for old in debs.glob("*.deb"):
            if not old.name.startswith(f"{package}_"):
                old.unlink(missing_ok=True)
    vmlinuz = sorted((tree / "boot").glob("vmlinuz-*"))
    if not vmlinuz:
        raise VMError(f"no boot/vmlinuz-* in {tree}")
    version = vmlinuz[-1].name[len("vmlinuz-"):]
    moddir = tree / "lib" / "modules" / version
    if not moddir.is_dir():
        raise VMError(f"no {moddir}")
    return Kernel(package=package, version=version, vmlinuz=vmlinuz[-1], moddir=moddir)


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


# --------------------------------------------------------------------------
# module dependency resolution from the .ko files' own .modinfo section
# --------------------------------------------------------------------------

def _norm(name: str) -> str:
    return name.replace("-", "_")


def read_ko(path: Path) -> bytes:
    """Return the raw ELF bytes of a (possibly compressed) kernel module."""
    name = path.name
    if name.endswith(".ko.xz"):
        return lzma.decompress(path.read_bytes())
    if name.endswith(".ko.gz"):
        return gzip.decompress(path.read_bytes())
    if name.endswith(".ko.zst"):
        return subprocess.run(["zstd", "-dc", str(path)], check=True,
                              capture_output=True).stdout
    return path.read_bytes()


def read_modinfo(path: Path) -> dict[str, list[str]]:
    """Parse the ``.modinfo`` section of a kernel module (ELF64)."""
    data = read_ko(path)
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise VMError(f"{path}: not an ELF64 kernel module")
    end = "<" if data[5] == 1 else ">"
    (shoff,) = struct.unpack_from(end + "Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", data, 0x3A)
    sections = []
    for i in range(shnum):
        name, _type, _flags, _addr, off, size = struct.unpack_from(
            end + "IIQQQQ", data, shoff + i * shentsize)
        sections.append((name, off, size))
    str_off = sections[shstrndx][1]
    info: dict[str, list[str]] = {}
    for name, off, size in sections:
        sname = data[str_off + name:data.index(b"\0", str_off + name)]
        if sname != b".modinfo":
            continue
        for item in data[off:off + size].split(b"\0"):
            if b"=" in item:
                key, _, value = item.decode("utf-8", "replace").partition("=")
                info.setdefault(key, []).append(value)
    return info


def module_index(moddir: Path) -> dict[str, Path]:
    index = {}
    for path in (moddir / "kernel").rglob("*.ko*"):
        stem = path.name.split(".ko")[0]
        index[_norm(stem)] = path
    return index


def builtin_modules(moddir: Path) -> set[str]:
    path = moddir / "modules.builtin"
    if not path.exists():
        return set()
    return {_norm(Path(line.strip()).name.split(".ko")[0])
            for line in path.read_text().splitlines() if line.strip()}


def resolve_modules(moddir: Path, wanted: list[str]) -> list[Path]:
    """Return ``wanted`` plus all their dependencies in a loadable order.

    ``depends=`` entries are hard requirements; ``softdep=pre:`` entries are
    loaded first when they can be found (by module name or, failing that, by
    an ``alias=`` of a module whose name starts with the softdep name, e.g.
    ``crc32c`` -> ``crc32c_generic``)."""
    index = module_index(moddir)
    builtin = builtin_modules(moddir)
    infos: dict[str, dict] = {}
    order: list[Path] = []
    state: dict[str, str] = {}

    def info(name):
        if name not in infos:
            infos[name] = read_modinfo(index[name])
        return infos[name]

    def by_alias(alias):
        alias_n = _norm(alias)
        candidates = sorted((n for n in index if n.startswith(alias_n)),
                            key=lambda n: (not n.endswith("_generic"), n))
        for cand in candidates:
            if alias in info(cand).get("alias", []):
                return cand
        return None

    def visit(name, required, chain):
        name = _norm(name)
        if name in builtin or state.get(name) == "done":
            return
        if name not in index:
            alt = None if required else by_alias(name)
            if alt is None:
                if required:
                    raise VMError(f"module {name} (needed by {' <- '.join(chain) or 'the VM'}) "
                                  f"is neither built in nor in {moddir}")
                log(f"softdep {name} not found; skipped")
                return
            name = alt
            if state.get(name) == "done":
                return
        if state.get(name) == "visiting":
            raise VMError(f"module dependency cycle at {name}")
        state[name] = "visiting"
        mi = info(name)
        for soft in mi.get("softdep", []):
            pre = re.search(r"pre:\s*(.*?)(?:\s+post:|$)", soft)
            for dep in (pre.group(1).split() if pre else []):
                visit(dep, False, chain + [name])
        for deps in mi.get("depends", []):
            for dep in filter(None, deps.split(",")):
                visit(dep, True, chain + [name])
        state[name] = "done"
        order.append(index[name])

    for want in wanted:
        visit(want, True, [])
    return order


# --------------------------------------------------------------------------
# initramfs
# --------------------------------------------------------------------------

def _cpio_newc(entries) -> bytes:
    """entries: (name, mode, data-bytes-or-None-for-dirs)."""
    out = io.BytesIO()
    ino = 1
    for name, mode, data in list(entries) + [("TRAILER!!!", 0, b"")]:
        data = data or b""
        nameb = name.encode() + b"\0"
        hdr = "070701" + "".join(f"{v:08X}" for v in (
            ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nameb), 0))
        out.write(hdr.encode() + nameb)
        out.write(b"\0" * ((4 - (110 + len(nameb)) % 4) % 4))
        out.write(data)
        out.write(b"\0" * ((4 - len(data) % 4) % 4))
        ino += 1
    return out.getvalue()


def _is_static_elf(path: Path) -> bool:
    data = path.read_bytes()[:4096]
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return False
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        (ptype,) = struct.unpack_from("<I", data, phoff + i * phentsize)
        if ptype == 3:  # PT_INTERP
            return False
    return True


def find_busybox() -> Path:
    for cand in (shutil.which("busybox"), "/bin/busybox", "/usr/bin/busybox"):
        if cand and Path(cand).exists() and _is_static_elf(Path(cand)):
            return Path(cand)
    raise VMError("a static busybox is needed (apt-get install busybox-static)")


INIT_SCRIPT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
OVERLAY_OPTS=index=off,xino=off,metacopy=off,redirect_dir=off
for arg in $(cat /proc/cmdline); do
  case "$arg" in edge_ha.overlay=*) OVERLAY_OPTS="${arg#edge_ha.overlay=}" ;; esac
done
echo "EDGE_HA_VM: initramfs up, loading modules"
while read m; do
  insmod "/modules/$m" || echo "EDGE_HA_VM: insmod $m failed"
done < /modules.list
fail() { echo "EDGE_HA_VM: $*"; echo "EDGE_HA_VM_EXIT=125"; poweroff -f; sleep 5; }
mkdir -p /newroot
SYSTEMD=0
grep -q 'edge_ha.init=systemd' /proc/cmdline && SYSTEMD=1
if [ $SYSTEMD = 1 ]; then
  # the host root read-only as the lower layer of an overlay whose upper layer
  # is a tmpfs: a writable root for systemd (9p cannot be an upper layer, and
  # it offers no file handles or inode numbers overlayfs could index)
  mkdir -p /lower /rw
  mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /lower \
    || fail "cannot mount the host root over 9p"
  mount -t tmpfs -o mode=755 tmpfs /rw || fail "tmpfs for the overlay"
  mkdir -p /rw/upper /rw/work
  mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work,$OVERLAY_OPTS overlay /newroot \
    || { echo "EDGE_HA_VM: overlay with $OVERLAY_OPTS failed; trying without options"; \
         mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot; } \
    || fail "cannot mount the overlay root"
  mount -t tmpfs -o mode=1777 tmpfs /newroot/tmp || fail "tmpfs /tmp"
else
  mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /newroot \
    || fail "cannot mount the host root over 9p"
  mount -t tmpfs -o mode=1777 tmpfs /newroot/tmp || fail "tmpfs /tmp"
  mount -t tmpfs -o mode=755 tmpfs /newroot/run || fail "tmpfs /run"
  mount -t proc proc /newroot/proc
  mount -t sysfs sysfs /newroot/sys
  mount -t devtmpfs devtmpfs /newroot/dev
  mkdir -p /newroot/dev/pts /newroot/dev/shm
  mount -t devpts devpts /newroot/dev/pts
  mount -t tmpfs tmpfs /newroot/dev/shm
fi
mkdir -p /newroot/tmp/vmresults
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 results /newroot/tmp/vmresults \
  || fail "cannot mount the results share"
# host paths hidden by the tmpfs mounts above (a checkout under /tmp ...)
if [ -f /newroot/tmp/vmresults/mounts.list ]; then
  while read tag path; do
    mkdir -p "/newroot$path"
    mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose "$tag" "/newroot$path" \
      || fail "cannot mount $tag on $path"
  done < /newroot/tmp/vmresults/mounts.list
fi
hostname edge-ha-vm
if [ $SYSTEMD = 1 ]; then
  # units, masks and settings the host prepared (tests/vm/run.py: systemd_tree)
  cp -a /newroot/tmp/vmresults/rootfs/. /newroot/ || fail "cannot install the systemd job unit"
  # a host that is a container image (/.dockerenv) would make systemd believe it runs
  # in a container: it would then ignore the kernel command line (systemd.unit=)
  rm -f /newroot/.dockerenv /newroot/run/.containerenv
  echo "EDGE_HA_VM: switch_root to systemd at uptime $(cut -d' ' -f1 /proc/uptime)s"
  mount -o move /dev /newroot/dev
  umount /proc /sys
  exec switch_root /newroot /lib/systemd/systemd
  fail "switch_root to systemd failed"
fi
ip link set lo up
echo "EDGE_HA_VM: running job at uptime $(cut -d' ' -f1 /proc/uptime)s"
chroot /newroot /bin/sh /tmp/vmresults/job.sh </dev/null >/newroot/tmp/vmresults/output.log 2>&1
rc=$?
echo "$rc" > /newroot/tmp/vmresults/exitcode
sync
umount /newroot/tmp/vmresults
echo "EDGE_HA_VM: job done at uptime $(cut -d' ' -f1 /proc/uptime)s"
echo "EDGE_HA_VM_EXIT=$rc"
poweroff -f
sleep 5
"""


def build_initramfs(kernel: Kernel, modules: list[str] | None = None) -> tuple[Path, list[str]]:
    busybox = find_busybox()
    paths = resolve_modules(kernel.moddir, modules or GUEST_MODULES)
    names = [p.name.split(".ko")[0] + ".ko" for p in paths]
    key = hashlib.sha256()
    for part in (kernel.version, INIT_SCRIPT, busybox.read_bytes(), *map(str, paths)):
        key.update(part.encode() if isinstance(part, str) else part)
    target = CACHE / f"initramfs-{kernel.version}-{key.hexdigest()[:16]}.cpio.gz"
    if target.exists():
        return target, names
    entries = [(d, 0o040755, None) for d in
               ("bin", "dev", "proc", "sys", "tmp", "newroot", "modules")]
    entries.append(("bin/busybox", 0o100755, busybox.read_bytes()))
    entries.append(("init", 0o100755, INIT_SCRIPT.encode()))
    for path, name in zip(paths, names):
        entries.append((f"modules/{name}", 0o100644, read_ko(path)))
    entries.append(("modules.list", 0o100644, ("\n".join(names) + "\n").encode()))
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(gzip.compress(_cpio_newc(entries), compresslevel=3))
    tmp.rename(target)
    for old in CACHE.glob(f"initramfs-*.cpio.gz"):
        if old != target:
            old.unlink(missing_ok=True)
    return target, names


# --------------------------------------------------------------------------
# qemu
# --------------------------------------------------------------------------

QEMU = "qemu-system-x86_64"


def _probe_start(accel: str) -> tuple[bool, str]:
    """Can qemu initialise this accelerator at all?"""
    try:
        proc = subprocess.run(
            [QEMU, "-machine", "none", "-accel", accel, "-nodefaults",
             "-no-user-config", "-display", "none", "-monitor", "stdio"],
            input="quit\n", capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        return False, str(exc)
    return proc.returncode == 0, proc.stderr.strip()


def _probe_boot(accel: str, kernel: Kernel, seconds: float = 12.0) -> tuple[bool, str]:
    """Does the kernel really run under this accelerator?  (Nested KVM can
    open /dev/kvm fine and then hang in real mode or abort on an MSR.)"""
    with tempfile.TemporaryDirectory(prefix="probe.", dir=_mkdir(CACHE)) as tmp:
        console = Path(tmp) / "console.log"
        argv = [QEMU, "-nodefaults", "-no-user-config", "-display", "none",
                "-monitor", "none", "-serial", f"file:{console}", "-no-reboot",
                "-machine", "q35", "-accel", accel, "-cpu", _cpu_for(accel), "-m", "256",
                "-kernel", str(kernel.vmlinuz), "-append", "console=ttyS0 panic=-1 edd=off"]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True,
                                preexec_fn=_die_with_parent)
        ok = False
        try:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                if console.exists() and b"Linux version" in console.read_bytes():
                    ok = True
                    break
                if proc.poll() is not None:
                    break
                time.sleep(0.1)
        finally:
            _stop(proc)
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
        err = "\n".join(line for line in err.splitlines()
                        if line.strip() and "terminating on signal" not in line)
        return ok, err or f"no kernel output within {seconds:.0f}s"


def _cpu_for(accel: str) -> str:
    if os.environ.get("EDGE_HA_VM_CPU"):
        return os.environ["EDGE_HA_VM_CPU"]
    # "host" passes IA32_ARCH_CAPABILITIES through, which some nested KVM
    # setups refuse ("failed to set MSR 0x10a"); the guest does not need it.
    return "host,-arch-capabilities" if accel == "kvm" else "max"


def pick_accel(kernel: Kernel) -> str:
    """``kvm`` if a kernel really boots with it, else ``tcg``.

    Raises QemuUnavailable when qemu cannot start with either. The result of
    the (slow, up to 12 s) KVM boot probe is cached per host kernel, qemu
    version and guest kernel in ``.cache/vm/accel.json``."""
    if shutil.which(QEMU) is None:
        raise QemuUnavailable(f"{QEMU} is not installed (apt-get install qemu-system-x86)")
    wanted = os.environ.get("EDGE_HA_VM_ACCEL")
    candidates = [wanted] if wanted else ["kvm", "tcg"]
    cache_file = CACHE / "accel.json"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    qemu_version = subprocess.run([QEMU, "--version"], capture_output=True,
                                  text=True).stdout.split("\n")[0]
    errors = []
    for accel in candidates:
        if accel == "kvm" and not os.access("/dev/kvm", os.R_OK | os.W_OK):
            errors.append("kvm: /dev/kvm is not accessible")
            continue
        ok, err = _probe_start(accel)
        if not ok:
            errors.append(f"{accel}: {err}")
            continue
        if accel == "tcg" or wanted:
            return accel
        key = f"{os.uname().release}|{qemu_version}|{kernel.version}|{accel}"
        if key not in cache:
            ok, err = _probe_boot(accel, kernel)
            cache[key] = {"ok": ok, "error": err}
            cache_file.write_text(json.dumps(cache, indent=1) + "\n")
        if cache[key]["ok"]:
            return accel
        errors.append(f"{accel}: {cache[key]['error']}")
        log(f"{accel} does not boot the guest here ({cache[key]['error'].splitlines()[0]}); "
            "falling back")
    raise QemuUnavailable(f"{QEMU} cannot start: " + "; ".join(errors))


def _new_results_dir() -> Path:
    runs = _mkdir(CACHE / "runs")
    old = sorted(runs.iterdir(), key=lambda p: p.stat().st_mtime)
    for stale in old[:max(0, len(old) - (KEEP_RUNS - 1))]:
        shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d-%H%M%S-"), dir=runs))


#: Guest mount points that hide the host's content (tmpfs, proc, ...).
MASKED = ("/tmp", "/run", "/dev", "/proc", "/sys")


def extra_shares() -> list[Path]:
    """Host paths the job needs that the guest's own mounts would hide:
    the repo and the interpreter when they live under /tmp, /run ..."""
    wanted = {REPO, Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve(),
              Path(os.path.realpath(sys.executable)).parent.parent}
    hidden = sorted(p for p in wanted
                    if any(p == Path(m) or Path(m) in p.parents for m in MASKED))
    out: list[Path] = []
    for path in hidden:  # drop paths inside another one
        if not any(o == path or o in path.parents for o in out):
            out.append(path)
    return out


def _job_script(command: list[str], env: dict[str, str]) -> str:
    lines = ["#!/bin/sh", f"cd {shlex.quote(str(REPO))} || exit 97"]
    for key, value in env.items():
        lines.append(f"export {key}={shlex.quote(value)}")
    lines.append("exec " + " ".join(shlex.quote(c) for c in command))
    return "\n".join(lines) + "\n"


SYSTEMD_JOB_SCRIPT = f"""#!/bin/sh
# ExecStart of {JOB_UNIT}: the job, its output and exit status like the shell mode's /init
say() {{ echo "$*" >/dev/console; }}
up() {{ cut -d' ' -f1 /proc/uptime; }}
up >{GUEST_RESULTS}/uptime-job-start
say "EDGE_HA_VM: running job under systemd at uptime $(up)s"
# in a session of its own: a kill(0) or a killpg in the job cannot take this script with it
setsid -w /bin/sh {GUEST_RESULTS}/job.sh </dev/null >{GUEST_RESULTS}/output.log 2>&1
rc=$?
echo "$rc" >{GUEST_RESULTS}/exitcode
journalctl -b --no-pager -o short-monotonic >{GUEST_RESULTS}/journal.log 2>&1
sync
say "EDGE_HA_VM: job done at uptime $(up)s"
say "EDGE_HA_VM_EXIT=$rc"
exit 0
"""


def systemd_tree(results: Path) -> None:
    """Write ``results/rootfs/``: what /init copies into the overlay root before
    it switches to systemd: the job target and unit, masks, an empty fstab
    (the host's must not be mounted), a tmpfiles override that keeps /tmp (the
    results share is mounted there) and a volatile journal."""
    root = results / "rootfs"
    units = _mkdir(root / "etc" / "systemd" / "system")
    (units / JOB_TARGET).write_text(
        "[Unit]\nDescription=edge-ha VM job (tests/vm/run.py)\n"
        f"Requires=basic.target\nAfter=basic.target\nWants={JOB_UNIT}\nAllowIsolate=yes\n")
    (units / JOB_UNIT).write_text(
        "[Unit]\nDescription=edge-ha VM job: job.sh, output and exit status to the results share\n"
        "After=basic.target\n"
        "SuccessAction=poweroff-force\nFailureAction=poweroff-force\n"
        "[Service]\nType=oneshot\n"
        f"ExecStart=/bin/sh {GUEST_RESULTS}/systemd-job.sh\n"
        "TimeoutStartSec=infinity\nStandardOutput=journal+console\n")
    for unit in SYSTEMD_MASKED:
        link = units / unit
        if not link.is_symlink():
            link.symlink_to("/dev/null")
    (root / "etc" / "fstab").write_text("# tests/vm/run.py: no disks in the VM\n")
    tmpfiles = _mkdir(root / "etc" / "tmpfiles.d")
    (tmpfiles / "tmp.conf").write_text("# tests/vm/run.py: keep /tmp (the results share is there)\n"
                                       "d /tmp 1777 root root -\n")
    journald = _mkdir(root / "etc" / "systemd" / "journald.conf.d")
    (journald / "edge-ha-vm.conf").write_text("[Journal]\nStorage=volatile\n")
    (results / "systemd-job.sh").write_text(SYSTEMD_JOB_SCRIPT)


def run_in_vm(command: list[str], *, timeout: float | None = None, memory: str = "2048",
              cpus: int = 2, extra_env: dict[str, str] | None = None,
              stream: bool = False, init: str = "shell") -> VMResult:
    """Boot the VM, run ``command`` (argv, run in the repo root as root) and
    return its exit status and output. qemu is always stopped by its pid.

    ``init="shell"`` (default): /init runs the job in a chroot of the
    read-only host root, no init system. ``init="systemd"``: /init switches
    to an overlay of the host root (tmpfs upper layer) and execs systemd as
    PID 1, which runs the job as ``edge-ha-job.service`` and powers off."""
    if init not in ("shell", "systemd"):
        raise ValueError(f"init must be 'shell' or 'systemd', not {init!r}")
    timeout = timeout or float(os.environ.get("EDGE_HA_VM_TIMEOUT", DEFAULT_TIMEOUT))
    t0 = time.monotonic()
    kernel = ensure_kernel()
    accel = pick_accel(kernel)
    initrd, modules = build_initramfs(kernel)
    results = _new_results_dir()
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1",
        "EDGE_HA_IN_VM": "1", "EDGE_HA_VM_RESULTS": GUEST_RESULTS,
        "EDGE_HA_VM_ACCEL": accel, "EDGE_HA_VM_KERNEL": kernel.version,
        "EDGE_HA_VM_INIT": init,
    }
    env.update(extra_env or {})
    (results / "job.sh").write_text(_job_script(command, env))
    (results / "job.json").write_text(json.dumps(
        {"command": command, "kernel": kernel.package, "accel": accel, "init": init,
         "modules": modules}, indent=1))
    append = "console=ttyS0 panic=-1 loglevel=4 rdinit=/init"
    if init == "systemd":
        systemd_tree(results)
        append += (f" edge_ha.init=systemd systemd.unit={JOB_TARGET} systemd.show_status=1"
                   " systemd.firstboot=0 systemd.journald.forward_to_console=0")
        if os.environ.get("EDGE_HA_VM_OVERLAY_OPTS"):
            append += f" edge_ha.overlay={os.environ['EDGE_HA_VM_OVERLAY_OPTS']}"
    console = results / "console.log"
    cpu = _cpu_for(accel)
    argv = [
        QEMU, "-nodefaults", "-no-user-config", "-nographic", "-monitor", "none",
        "-serial", f"file:{console}", "-no-reboot",
        "-machine", "q35", "-accel", accel, "-cpu", cpu,
        "-m", memory, "-smp", str(cpus),
        "-kernel", str(kernel.vmlinuz), "-initrd", str(initrd),
        "-append", append,
        "-fsdev", "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
        "-fsdev", f"local,id=results,path={results},security_model=none",
        "-device", "virtio-9p-pci,fsdev=results,mount_tag=results",
        "-device", "virtio-rng-pci",
    ]
    mounts = []
    for i, path in enumerate(extra_shares()):
        tag = f"extra{i}"
        argv += ["-fsdev", f"local,id={tag},path={path},security_model=none,readonly=on,"
                           "multidevs=remap",
                 "-device", f"virtio-9p-pci,fsdev={tag},mount_tag={tag}"]
        mounts.append(f"{tag} {path}\n")
    if mounts:
        (results / "mounts.list").write_text("".join(mounts))
    (results / "qemu.argv").write_text(shlex.join(argv) + "\n")
    t_prep = time.monotonic()
    log(f"booting {kernel.version} ({accel}, {cpus} vCPU, {memory}M); results in {results}")
    qemu_err = results / "qemu.stderr"
    with open(qemu_err, "wb") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                start_new_session=True, preexec_fn=_die_with_parent)
    (results / "qemu.pid").write_text(f"{proc.pid}\n")
    timed_out = False
    try:
        deadline = t_prep + timeout
        offset = 0
        while proc.poll() is None:
            if time.monotonic() > deadline:
                timed_out = True
                break
            if stream:
                offset = _stream(results / "output.log", offset)
            time.sleep(0.2)
        if stream:
            _stream(results / "output.log", offset)
    finally:
        _stop(proc)
    t_end = time.monotonic()
    console_text = console.read_text(errors="replace") if console.exists() else ""
    output = (results / "output.log").read_text(errors="replace") \
        if (results / "output.log").exists() else ""
    timings = {"prepare": round(t_prep - t0, 2), "vm": round(t_end - t_prep, 2),
               "total": round(t_end - t0, 2)}
    try:  # seconds from power-on to the job's start (kernel, /init, and systemd's boot)
        timings["guest_boot"] = float((results / "uptime-job-start").read_text().strip())
    except (OSError, ValueError):
        pass
    (results / "timings.json").write_text(json.dumps(timings) + "\n")
    if timed_out:
        raise VMError(f"VM did not finish within {timeout:.0f}s; console:\n"
                      f"{console_text[-4000:]}\noutput:\n{output[-4000:]}")
    code = None
    if (results / "exitcode").exists():
        code = int((results / "exitcode").read_text().strip() or 126)
    else:
        m = re.findall(re.escape(EXIT_MARKER) + r"(\d+)", console_text)
        code = int(m[-1]) if m else None
    if code is None:
        stderr = qemu_err.read_text(errors="replace")
        if proc.returncode not in (0, None) and not console_text.strip():
            # qemu died before the guest printed anything
            raise QemuUnavailable(f"{QEMU} exited {proc.returncode} without booting: {stderr}")
        raise VMError(f"the VM gave no exit status (qemu rc={proc.returncode}); "
                      f"qemu stderr:\n{stderr}\nconsole:\n{console_text[-6000:]}")
    return VMResult(exit_code=code, output=output, console=console_text, accel=accel,
                    kernel=kernel.version, results_dir=results, timings=timings)


def _stream(path: Path, offset: int) -> int:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            chunk = fh.read()
    except FileNotFoundError:
        return offset
    if chunk:
        sys.stdout.write(chunk.decode(errors="replace"))
        sys.stdout.flush()
    return offset + len(chunk)


def _die_with_parent() -> None:
    """preexec_fn: qemu gets SIGTERM if this process dies without cleaning up."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _stop(proc: subprocess.Popen) -> None:
    """Stop qemu by its pid: SIGTERM, then SIGKILL."""
    if proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


def default_pytest_args(init: str = "shell") -> list[str]:
    """What the VM stage runs: tests/vm/inside, without the opt-in salt-call
    test unless EDGE_HA_VM_SALT_CALL=1 (each salt-call costs ~75 s under TCG);
    under systemd (``init="systemd"``): tests/vm/inside_systemd."""
    if init == "systemd":
        return ["tests/vm/inside_systemd", "-q", "-rfEs", "--durations=8"]
    args = ["tests/vm/inside", "-q", "-rfEs", "--durations=8"]
    if os.environ.get("EDGE_HA_VM_SALT_CALL") != "1":
        args += ["--ignore", "tests/vm/inside/test_salt_call.py"]
    return args


def run_pytest_in_vm(pytest_args: list[str] | None = None, **kwargs) -> VMResult:
    """Run pytest inside the VM with the host's interpreter (the venv's)."""
    args = pytest_args if pytest_args is not None else default_pytest_args(kwargs.get("init", "shell"))
    # only the plugins the VM tests use: autoloading every installed plugin
    # (salt-factories...) costs seconds under TCG
    extra = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    extra.update(kwargs.pop("extra_env", None) or {})
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "pytest_timeout",
               "--confcutdir", str(REPO / "tests" / "vm"),
               "--junitxml", f"{GUEST_RESULTS}/junit.xml", *args]
    return run_in_vm(command, extra_env=extra, **kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=None)
    parser.add_argument("--memory", default="2048")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--stream", action="store_true", help="print the job output live")
    parser.add_argument("--systemd", action="store_true",
                        help="boot systemd as PID 1 on an overlay of the host root and run the job "
                             "as a unit (default command: pytest tests/vm/inside_systemd)")
    parser.add_argument("--prepare-only", action="store_true",
                        help="download/extract the kernel and build the initramfs, no boot")
    parser.add_argument("command", nargs="*",
                        help="command to run in the VM (default: pytest tests/vm/inside); "
                             "'python' means this interpreter")
    opts = parser.parse_args(argv)
    if opts.prepare_only:
        kernel = ensure_kernel()
        initrd, modules = build_initramfs(kernel)
        print(f"kernel {kernel.version}: {kernel.vmlinuz}\ninitramfs {initrd}\n"
              f"modules ({len(modules)}): {' '.join(modules)}")
        return 0
    kwargs = dict(timeout=opts.timeout, memory=opts.memory, cpus=opts.cpus, stream=opts.stream,
                  init="systemd" if opts.systemd else "shell")
    try:
        if opts.command:
            cmd = [sys.executable if c == "python" and i == 0 else c
                   for i, c in enumerate(opts.command)]
            result = run_in_vm(cmd, **kwargs)
        else:
            result = run_pytest_in_vm(**kwargs)
    except QemuUnavailable as exc:
        print(f"qemu unavailable: {exc}", file=sys.stderr)
        return 77
    if not opts.stream:
        sys.stdout.write(result.output)
    log(f"exit {result.exit_code}; kernel {result.kernel}, accel {result.accel}; "
        f"timings {result.timings}; results {result.results_dir}")
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
