"""Helpers shared by the benchmarks: statistics, machine facts, the docs table rewriter."""

import json
import os
import pathlib
import platform
import re
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "benchmarks.md"


def quantile(values, q):
    """Nearest-rank quantile (p95 of 20 values is the 19th smallest)."""
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return None
    rank = max(1, min(len(vals), int(-(-q * len(vals) // 1))))
    return vals[rank - 1]


def median(values):
    vals = sorted(v for v in values if v is not None)
    if not vals:
        return None
    mid = len(vals) // 2
    return vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2


def summary(values):
    vals = [v for v in values if v is not None]
    return {"n": len(vals), "missing": len(values) - len(vals), "median": median(vals),
            "p95": quantile(vals, 0.95), "max": max(vals) if vals else None}


def fmt(value, digits=2):
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}"


def ratio(value, base, digits=2):
    if value is None or not base:
        return "-"
    return f"{value / base:.{digits}f}"


def table(header, rows):
    align = ["---" if i == 0 else "---:" for i in range(len(header))]
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def machine():
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo", encoding="ascii", errors="replace"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        for line in open("/proc/meminfo", encoding="ascii"):
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB"
    except OSError:
        pass
    keepalived = subprocess.run(["keepalived", "--version"], capture_output=True, text=True, check=False)
    kver = (keepalived.stderr or keepalived.stdout).splitlines()[0] if (keepalived.stderr or keepalived.stdout) else "?"
    try:
        import salt.version  # pylint: disable=import-outside-toplevel

        salt_version = salt.version.__version__
    except ImportError:
        salt_version = "?"
    return {
        "cpus": os.cpu_count(), "cpu": cpu, "memory": mem, "kernel": platform.release(),
        "python": platform.python_version(), "keepalived": kver, "salt": salt_version,
        "host": platform.node(),
    }


def loadavg():
    try:
        return open("/proc/loadavg", encoding="ascii").read().split()[:3]
    except OSError:
        return ["?"] * 3


def other_load(own_pids=()):
    """The busiest processes not started by this benchmark (what else ran on the machine)."""
    proc = subprocess.run(["ps", "-eo", "pid,pcpu,comm", "--sort=-pcpu"], capture_output=True, text=True, check=False)
    rows = []
    for line in proc.stdout.splitlines()[1:8]:
        parts = line.split(None, 2)
        if len(parts) == 3 and int(parts[0]) not in own_pids and float(parts[1]) >= 5:
            rows.append(f"{parts[2]} ({parts[1]}% CPU)")
    return rows


def replace_section(text, name, body):
    """Replace (or append) the block between <!-- bench:NAME --> and <!-- /bench:NAME -->."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        return pattern.sub(lambda m: block, text)
    return text.rstrip() + "\n\n" + block + "\n"


def write_json(path, data):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=str))


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
