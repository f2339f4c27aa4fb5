"""
Pictures for docs/benchmarks.md, drawn from a results file of
``bench/run_all.py`` (matplotlib, PNG under ``docs/img/``):

- ``failover.png``: every failover run of each setup, one point per run: when
  the VIP moved, when the Service was right, when the report was right
  (seconds after the stop), graceful and SIGKILL side by side: the spread a
  table's median / p95 hides;
- ``scale.png`` (when the results have a scale block): how the per-event work
  grows with the number of nodes (simulated reports);
- ``scale-lab.png`` (a scale-lab run): with 3, 10, ... real salt-minions,
  every run's Service-right time and every reconcile's runner time per size.

    .venv/bin/python bench/plots.py [bench/results/last.json] [docs/img]

``make bench`` installs matplotlib (requirements-bench.txt) and
``bench/run_all.py`` calls this after it has written the tables.
"""

import json
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]

SETUPS = [  # (results key, label)
    ("failover_plain", "plain keepalived (baseline)"),
    ("failover_default", "project defaults"),
    ("failover_watch", "defaults without watch"),
    ("failover_fast", "fast option (VRRPv3 0.1)"),
]
MEASURES = [("moved", "VIP moved", "o"), ("service", "Service right", "x"), ("report", "report right", "^")]


def failover_points(res):
    """``{how: [(setup label, measure label, marker, [seconds...])]}`` from a results dict."""
    out = {}
    for key, label in SETUPS:
        for how, runs in (res.get(key) or {}).items():
            for field, name, marker in MEASURES:
                values = [r[field] for r in runs if isinstance(r.get(field), (int, float))]
                if values:
                    out.setdefault(how, []).append((label, name, marker, values))
    return out


def failover_png(res, path):
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    points = failover_points(res)
    hows = [h for h in ("graceful", "sigkill") if h in points]
    if not hows:
        return None
    fig, axes = plt.subplots(1, len(hows), figsize=(6 * len(hows), 3.6), sharey=True, squeeze=False)
    labels = [label for _, label in SETUPS]
    colors = {"VIP moved": "tab:blue", "Service right": "tab:red", "report right": "tab:green"}
    for ax, how in zip(axes[0], hows):
        for label, name, marker, values in points[how]:
            y = labels.index(label)
            offset = {"VIP moved": -0.2, "Service right": 0.0, "report right": 0.2}[name]
            ax.scatter(values, [y + offset] * len(values), marker=marker, s=18, alpha=0.7, color=colors[name],
                       label=name)
        ax.set_title(f"{how}: seconds after the stop (one point per run)")
        ax.set_xlabel("seconds")
        ax.grid(axis="x", alpha=0.3)
        ax.set_yticks(range(len(labels)))
        ax.set_yticklabels(labels)
    handles, names = axes[0][0].get_legend_handles_labels()
    unique = dict(zip(names, handles))
    fig.legend(unique.values(), unique.keys(), fontsize=8, loc="lower center", ncol=len(unique))
    fig.suptitle(f"Failover runs of {res.get('started', '')}", fontsize=9)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def scale_png(res, path):
    """Per-event costs against the number of nodes, for each column of the scale block that is numeric."""
    scale = res.get("scale")
    rows = scale.get("rows") if isinstance(scale, dict) else None
    if not rows:
        return None
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    nodes = [r.get("nodes") for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for column in sorted({k for r in rows for k, v in r.items() if k != "nodes" and isinstance(v, (int, float))}):
        ax.plot(nodes, [r.get(column) for r in rows], marker="o", label=column)
    ax.set_xlabel("edge nodes")
    ax.set_ylabel("seconds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def scale_lab_points(res):
    """``[(edges, [Service right s per run], [reconcile runner s])]`` for the sizes of a scale-lab run that ran."""
    out = []
    for size in res.get("scale_lab") or []:
        if size.get("error") or not size.get("runs"):
            continue
        service = [r["service"] for r in size["runs"] if isinstance(r.get("service"), (int, float))]
        runner = [r["seconds"] for r in size.get("reconciles") or [] if isinstance(r.get("seconds"), (int, float))]
        out.append((size["edges"], service, runner))
    return out


def scale_lab_png(res, path):
    """Growth with the number of edge nodes: every run's Service-right time and every reconcile's runner time."""
    points = scale_lab_points(res)
    if not points:
        return None
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for ax, index, title in ((axes[0], 1, "Service right after a SIGKILL of the owner, s"),
                             (axes[1], 2, "runner time per event-triggered reconcile, s")):
        data = [p[index] for p in points]
        ax.boxplot(data, tick_labels=[str(p[0]) for p in points], showfliers=True)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("edge nodes (real salt-minions)")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"scale-lab run of {res.get('started', '')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw(res, outdir):
    """Every picture the results allow; returns the paths written."""
    outdir = pathlib.Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    written = [failover_png(res, outdir / "failover.png"), scale_png(res, outdir / "scale.png"),
               scale_lab_png(res, outdir / "scale-lab.png")]
    return [p for p in written if p]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    results = pathlib.Path(argv[0]) if argv else REPO / "bench" / "results" / "last.json"
    outdir = pathlib.Path(argv[1]) if len(argv) > 1 else REPO / "docs" / "img"
    for path in draw(json.loads(results.read_text()), outdir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
