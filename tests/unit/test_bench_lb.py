"""bench block lb (issue #15): the split of a repetition from the master's records, and its docs section."""

from bench import lab_bench, report

T0 = 1000.0
NAME = "bench-lb-0"
ADDRESS = "198.18.0.120"


def records():
    events = [
        {"recv": T0 - 5, "tag": "edge_ha/kubernetes/services", "why": "list"},
        {"recv": T0 + 0.1, "tag": "edge_ha/kubernetes/services", "why": "change"},
        {"recv": T0 + 1.0, "tag": "salt/job/1/new", "fun": "saltutil.refresh_pillar"},
        {"recv": T0 + 1.2, "tag": "salt/job/1/ret/edge1", "fun": "saltutil.refresh_pillar"},
        {"recv": T0 + 1.3, "tag": "salt/job/1/ret/edge3", "fun": "saltutil.refresh_pillar"},
        {"recv": T0 + 1.5, "tag": "salt/job/2/new", "fun": "state.apply"},
        {"recv": T0 + 2.4, "tag": "salt/job/2/ret/edge2", "fun": "state.apply"},
        {"recv": T0 + 2.5, "tag": "salt/job/3/new", "fun": "state.apply"},
    ]
    history = [
        {"kind": "reconcile", "time": T0 - 3, "seconds": 0.1, "actions": []},
        {"kind": "load_balancer", "time": T0 + 0.5, "added": ["lb_lab_60"], "removed": []},
        {"kind": "rollout", "time": T0 + 4.0, "steps": [["edge2", "ok"], ["edge1", "ok, in place"]]},
        {"kind": "reconcile", "time": T0 + 5.0, "seconds": 4.7, "actions": [
            f"LoadBalancer ingress-nginx/{NAME}: {ADDRESS} (pool lab, VRID 60) recorded",
            f"LoadBalancer ingress-nginx/{NAME}: status.loadBalancer.ingress ['{ADDRESS}']"]},
    ]
    requests = [
        {"method": "PATCH", "path": f"/api/v1/namespaces/ingress-nginx/services/{NAME}", "start": T0 + 0.4,
         "end": T0 + 0.45},
        {"method": "PATCH", "path": f"/api/v1/namespaces/ingress-nginx/services/{NAME}/status", "start": T0 + 4.8,
         "end": T0 + 4.9},
    ]
    return events, requests, history


def test_split_follows_the_assigning_reconcile_to_the_status_write():
    run = {"t0": T0, "name": NAME, "address": ADDRESS, "held": 6.0, "body": "edge2"}
    split = lab_bench.lb_split(run, *records())
    got = {k: round(v, 3) for k, v in split.items() if isinstance(v, float)}
    assert got == {"watch": 0.1, "reactor": 0.2, "assign": 0.2, "pillar": 1.0, "rollout": 2.5, "status": 0.9,
                   "status_write": 4.9, "election": 3.6}
    assert [(j["fun"], j["node"], round(j["seconds"], 3)) for j in split["jobs"]] == [
        ("saltutil.refresh_pillar", "edge1", 0.2), ("saltutil.refresh_pillar", "edge3", 0.3),
        ("state.apply", "edge2", 0.9)]
    assert split["same_reconcile"] is True and split["reconciles"] == 1
    assert split["rollout_steps"] == ["edge2 ok", "edge1 ok, in place"]


def test_split_without_the_assigning_reconcile_keeps_what_it_knows():
    events, requests, _ = records()
    split = lab_bench.lb_split({"t0": T0, "name": NAME, "address": ADDRESS}, events, requests, [])
    assert round(split["watch"], 3) == 0.1 and split["rollout"] is None and split["status"] is None
    assert lab_bench.lb_split({"t0": T0, "name": NAME, "address": None}, events, requests, []) is None


def test_section_reports_p50_against_the_bound_and_the_plain_baseline():
    plain = [{"held": 0.1, "answered": a, "ok": True, "gone_after_remove": 0.05} for a in (0.2, 0.4, 0.3)]
    project = [{"assigned": 0.5, "held": 4.0, "answered": b, "status": b - 0.1, "both": b, "ok": True,
                "gone_after_delete": 3.0, "split": lab_bench.lb_split({"t0": T0, "name": NAME, "address": ADDRESS},
                                                                      *records())}
               for b in (4.0, 6.0, 4.5)]
    res = {"command": "bench/run_all.py --only lb", "reps": 3, "seconds": 120, "started": "2026-12-01", "commit": "abc",
           "machine": {"cpus": 2, "cpu": "x", "keepalived": "k", "salt": "s"}, "load_start": ["1", "1", "1"],
           "load_end": ["2", "2", "2"], "blocks": ["lb"], "lb": {"plain": plain, "project": project, "warmup": []}}
    sections = report.sections(res)
    assert list(sections) == ["lb"], "an lb run alone rewrites its own section only"
    text = sections["lb"]
    assert "4.50 s, **met**" in text
    assert "| 4.50 / 6.00 / 6.00 | 15.00 |" in text  # p50 / p90 / max, and p50 vs the plain p50 (0.30 s)
    assert "| `state.apply` | 1.0 | 0.90 / 0.90 / 0.90 | 0.90 |" in text
    assert "| `saltutil.refresh_pillar` | 1.0 | 0.30 / 0.30 / 0.30 | 0.30 |" in text  # one job, its last return
    res["lb"]["project"][0]["both"] = 9.0
    assert "**not met**" in report.sections(res)["lb"]
