"""
Scale: the pillar model of many VIPs on many nodes, in pure Python (no Salt
daemons; the modules are loaded like the unit tests do). For each size:
validate, normalize (the model), render every node's keepalived.conf, diff
after a one-VIP change, the VIP report, the reconcile plan with every node's
simulated state, and the process's peak memory. Each size runs in its own
interpreter, so the peak memory is that size's alone.

The model: VIPs in instances of 5 (VRRP needs one VRID per instance and
interface, at most 255), every instance on every node, unicast (each node's
config lists every other node as a peer), no virtual_servers (Kubernetes
externalIPs mode). This is the worst case for nodes: the config grows with
instances x nodes per node, instances x nodes^2 over the edge.

    python bench/scale.py                 # the sizes below, prints a JSON summary
    python bench/scale.py --one 1000 50   # one size
"""

import argparse
import copy
import ipaddress
import json
import pathlib
import resource
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "_utils")]  # the repo and the pure core (edge_ha_core)

VIPS_PER_INSTANCE = 5
# (VIPs, nodes): a VIP series at 50 nodes and a node series at 1,000 VIPs
SIZES = [(250, 50), (500, 50), (1000, 50), (1000, 10), (1000, 25)]
QUICK_SIZES = [(100, 10), (1000, 10), (1000, 50)]
PATHS = {"state_dir": "/run/edge-ha", "notify_script": "/usr/local/sbin/edge-ha-notify"}


def pillar(vips, nodes):
    net = ipaddress.ip_network("198.18.0.0/15")
    hosts = net.hosts()
    node_map = {}
    for i in range(nodes):
        node_map[f"edge{i + 1:03d}"] = {"address": str(next(hosts)), "interface": "eth0"}
    vip_addrs = [str(ipaddress.ip_address("198.19.0.0") + 1 + i) for i in range(vips)]
    instances = {}
    for k in range(0, vips, VIPS_PER_INSTANCE):
        n = k // VIPS_PER_INSTANCE
        instances[f"VI_{n + 1:03d}"] = {
            "virtual_router_id": n + 1,
            "advert_int": 1,
            "vrrp_version": 2,
            "unicast": True,
            "authentication": {"auth_type": "PASS", "auth_pass": "s3cret"},
            "virtual_ipaddress": [f"{a}/15" for a in vip_addrs[k:k + VIPS_PER_INSTANCE]],
        }
    if len(instances) > 255:
        raise ValueError("more than 255 instances: VRIDs per interface run out")
    return {
        "nodes": node_map,
        "vrrp_instances": instances,
        "kubernetes": {
            "service": {"namespace": "ingress-nginx", "name": "ingress-nginx-controller"},
            "ingress_pods": {"namespace": "ingress-nginx", "label_selector": "app.kubernetes.io/component=controller"},
            "external_ips": "vips_and_healthy_nodes",
        },
    }


def reports_for(model, holder_of):
    """Every node's edge_node.report as a minion would return it; ``holder_of(instance)`` owns it."""
    out = {}
    for node in model["nodes"]:
        instances = {}
        for name, inst in model["vrrp_instances"].items():
            master = holder_of(name) == node
            instances[name] = {"state": "MASTER" if master else "BACKUP", "priority": inst["priorities"][node],
                               "since": 1000.0, "vips_present": [v.split("/")[0] for v in inst["vips"]] if master else []}
        out[node] = {"node": node, "keepalived": {"running": True, "instances": instances},
                     "out_of_service": {"out_of_service": False, "reason": ""}, "ingress": {"healthy": True}}
    return out


def mine_read(model):
    """Seconds to read every node's report from a localfs mine (what a reconcile reads on each event)."""
    import tempfile  # pylint: disable=import-outside-toplevel

    import salt.cache  # pylint: disable=import-outside-toplevel
    import salt.config  # pylint: disable=import-outside-toplevel
    from edge_ha_core import fleet  # pylint: disable=import-outside-toplevel

    names = sorted(model["nodes"])
    data = reports_for(model, lambda inst: names[0])
    with tempfile.TemporaryDirectory() as tmp:
        opts = salt.config.master_config(None)
        opts.update(cachedir=tmp, cache="localfs")
        cache = salt.cache.factory(opts)
        for node, rep in data.items():
            cache.store("mine", node, {fleet.MINE_KEY: rep})
        now = time.time()
        spent, got = timed(lambda: fleet.read_reports(cache, names, now, 35))
        if any(r is None for r in got.values()):
            raise RuntimeError("a report was not read back")
    return spent


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def one(vips, nodes):
    from tests.support.modload import load  # pylint: disable=import-outside-toplevel

    from edge_ha_core import desired  # pylint: disable=import-outside-toplevel
    from edge_ha_core import fleet  # pylint: disable=import-outside-toplevel
    from edge_ha_core import model as edge_ha  # pylint: disable=import-outside-toplevel
    from edge_ha_core import planner  # pylint: disable=import-outside-toplevel
    from edge_ha_core import report as views  # pylint: disable=import-outside-toplevel
    keepalived = load("_modules/keepalived.py")
    k8s = load("_modules/edge_k8s.py")
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    data = pillar(vips, nodes)
    res = {"vips": vips, "nodes": nodes, "instances": len(data["vrrp_instances"])}
    res["validate"], errors = timed(lambda: edge_ha.validate_model(data))
    if errors:
        raise RuntimeError(errors[:5])
    res["model"], model = timed(lambda: edge_ha.normalize(data))

    def render_all(mdl):
        return {n: keepalived.render_config(edge_ha.view_for_node(mdl, n), PATHS) for n in mdl["nodes"]}

    res["render"], configs = timed(lambda: render_all(model))
    res["config_lines_per_node"] = max(c.count("\n") for c in configs.values())
    res["config_bytes_total"] = sum(len(c) for c in configs.values())
    changed = copy.deepcopy(data)
    first = next(iter(changed["vrrp_instances"].values()))
    first["virtual_ipaddress"][0] = "198.19.255.254/15"  # one VIP replaced

    def rerender_and_diff():
        mdl = edge_ha.normalize(changed)
        new = render_all(mdl)
        return [n for n in new if keepalived.unified_diff(configs[n], new[n], "keepalived.conf")]

    res["rerender_diff"], diffs = timed(rerender_and_diff)
    res["diff_nodes"] = len(diffs)
    names = sorted(model["nodes"])
    order = list(model["vrrp_instances"])
    res["digests"], digests = timed(lambda: desired.node_digests(model))
    reports = fleet.as_reports(reports_for(model, lambda inst: names[order.index(inst) % len(names)]))
    kube = planner.KubeView({n: True for n in names})

    def reconcile_pure():
        wanted = planner.plan(model, reports, kube, desired=digests)
        vip_list = [v for inst in model["vrrp_instances"].values() for v in inst["vips"]]
        addrs = {n: v["address"] for n, v in model["nodes"].items()}
        return wanted, k8s.desired_external_ips([], [], vip_list, addrs, wanted.service_nodes)

    res["reconcile"], (wanted, _) = timed(reconcile_pure)
    if wanted.fence or wanted.release or wanted.split_fence or len(wanted.service_nodes) != nodes:
        raise RuntimeError(f"unexpected plan: {wanted}")
    res["report"], text = timed(lambda: views.format_table(views.build_report(model, reports, {"match": True})))
    res["mine_read"] = mine_read(model)
    res["report_rows"] = text.count("\n")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    res["rss_peak_mib"] = peak / 1024
    res["rss_after_imports_mib"] = base_rss / 1024
    return res


def run(quick=False, log=print):
    results = []
    for vips, nodes in QUICK_SIZES if quick else SIZES:
        proc = subprocess.run([sys.executable, __file__, "--one", str(vips), str(nodes)], capture_output=True,
                              text=True, check=False, timeout=1800)
        if proc.returncode:
            raise RuntimeError(f"scale {vips}x{nodes} failed: {proc.stderr[-2000:]}")
        res = json.loads(proc.stdout)
        log(f"scale {vips} VIPs x {nodes} nodes: " + ", ".join(
            f"{k} {res[k]:.3f}s" for k in ("validate", "model", "render", "rerender_diff", "reconcile", "report"))
            + f", peak {res['rss_peak_mib']:.0f} MiB")
        results.append(res)
    return results


STEPS = [("validate", "validate"), ("model", "normalize (model)"), ("render", "render all nodes"),
         ("rerender_diff", "re-render + diff all nodes"), ("digests", "desired digests (per pillar change)"),
         ("mine_read", "read reports from the mine (per event)"), ("reconcile", "reconcile plan"),
         ("report", "VIP report")]


def markdown(results, command):
    from bench.common import fmt, ratio, table  # pylint: disable=import-outside-toplevel

    lines = [f"Command: `{command}`.", ""]
    header = ["VIPs x nodes (instances)"] + [name for _, name in STEPS] + ["total", "config lines/node", "peak RSS MiB"]
    rows = []
    for r in results:
        total = sum(r[k] for k, _ in STEPS)
        rows.append([f"{r['vips']} x {r['nodes']} ({r['instances']})"] + [fmt(r[k], 3) for k, _ in STEPS]
                    + [fmt(total, 3), r["config_lines_per_node"], fmt(r["rss_peak_mib"], 0)])
    lines.append("Seconds (one run each, each size in a fresh interpreter):")
    lines.append("")
    lines.append(table(header, rows))
    lines.append("")

    def series(filter_fn, label, base_key):
        sel = sorted((r for r in results if filter_fn(r)), key=lambda r: r[base_key])
        if len(sel) < 2:
            return
        base = sel[0]
        lines.append(f"{label} (ratio against {base['vips']} x {base['nodes']}, same run; "
                     f"size ratio {' / '.join(str(r[base_key] // base[base_key]) if r[base_key] % base[base_key] == 0 else f'{r[base_key] / base[base_key]:.1f}' for r in sel)}):")
        lines.append("")
        hdr = ["VIPs x nodes"] + [name for _, name in STEPS] + ["total", "peak RSS"]
        body = []
        for r in sel:
            tot = sum(r[k] for k, _ in STEPS)
            btot = sum(base[k] for k, _ in STEPS)
            body.append([f"{r['vips']} x {r['nodes']}"] + [ratio(r[k], base[k]) for k, _ in STEPS]
                        + [ratio(tot, btot), ratio(r["rss_peak_mib"], base["rss_peak_mib"])])
        lines.append(table(hdr, body))
        lines.append("")

    top_nodes = max(r["nodes"] for r in results)
    top_vips = max(r["vips"] for r in results)
    series(lambda r: r["nodes"] == top_nodes, f"Growth with VIPs at {top_nodes} nodes", "vips")
    series(lambda r: r["vips"] == top_vips, f"Growth with nodes at {top_vips} VIPs", "nodes")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--one", nargs=2, type=int, metavar=("VIPS", "NODES"))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(*args.one)))
        return 0
    results = run(args.quick, log=lambda m: print(m, file=sys.stderr))
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
