"""
make demo: salt-edge-ha on the local lab, from nothing to torn down.

1. bring up the lab: namespaces, a salt-master, three edge minions, a client,
   the Kubernetes API emulator; highstate renders and starts keepalived;
2. print the VIP report;
3. kill the VIP owner's keepalived hard (SIGKILL) and time how long until the
   VIP answers from another node, and until the Service and the report are
   right;
4. mark one node's ingress unhealthy: the VIP moves away; healthy again: back;
5. print the report again and tear everything down.
"""

import os
import pathlib
import signal
import sys
import tempfile
import time

sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])  # the repo, not lab/ (lab/lab.py would shadow the package)

from lab.lab import NODES, VIP, Lab  # noqa: E402  pylint: disable=wrong-import-position
from tests.support.labtools import wait_for  # noqa: E402  pylint: disable=wrong-import-position

ADDR = {n: f"198.18.0.{o}" for n, o in NODES.items()}


def say(text=""):
    print(text, flush=True)


def step(title):
    say()
    say(f"== {title}")


def client_get(lab):
    """Ask the VIP who answers, from the client's namespace."""
    proc = lab.topo.run("client", "curl", "-s", "--max-time", "1", f"http://{VIP}/", check=False)
    return proc.stdout.strip() or f"(no answer: curl exit {proc.returncode})"


def main():
    if os.geteuid() != 0:
        say("make demo needs root: the lab uses network namespaces")
        return 1
    started = time.monotonic()
    lab = Lab(tempfile.mkdtemp(prefix="salt-edge-ha-demo-", dir="/run"), prefix="ehdemo")
    try:
        step("1. Bringing up the lab (salt-master, 3 edge minions, client, Kubernetes API emulator)")
        lab.up(log=lambda msg: say("   " + msg))
        say(f"   up in {time.monotonic() - started:.0f}s; keepalived runs on every edge node from highstate")
        say(f"   the client asks http://{VIP}/ -> {client_get(lab)}")

        step("2. salt-run edge.vip_report")
        say(lab.report_table())
        say(f"   Service externalIPs: {', '.join(lab.external_ips())} (198.18.0.200 was added by hand: kept)")

        owner = lab.holders()[0]
        step(f"3. kill -9 keepalived on {owner}, the VIP owner")
        start = time.monotonic()
        killed = lab.kill_keepalived(owner, signal.SIGKILL)
        say(f"   SIGKILL to keepalived's whole process group at once (pids {', '.join(map(str, killed))}:"
            " parent, VRRP and checker children): no goodbye advert")
        moved = wait_for(lambda: any(n != owner for n in lab.holders()), 30, 0.05)
        new_owner = [n for n in lab.holders() if n != owner]
        say(f"   VRRP: {new_owner[0] if new_owner else '?'} took the VIP after {moved:.2f}s"
            if moved is not None else "   the VIP did not move within 30s")
        say(f"   ({owner} still has the address on its interface: a killed keepalived leaves it behind)")
        service_ok = wait_for(lambda: ADDR[owner] not in lab.external_ips(), 60, 0.2)
        say(f"   Service externalIPs without {owner}: {time.monotonic() - start:.2f}s after the kill"
            if service_ok is not None else "   Service not updated within 60s")
        report_ok = wait_for(lambda: lab.report()["vips"][0]["owner"] == new_owner[:1], 60, 0.5)
        say(f"   report shows {new_owner[0]} as the only owner (stale VIP on {owner} removed): "
            f"{time.monotonic() - start:.2f}s after the kill" if report_ok is not None else "   report not right in 60s")
        say(lab.report_table())
        say(f"   the client asks http://{VIP}/ -> {client_get(lab)}")
        say(f"   restarting keepalived on {owner} with highstate")
        lab.salt(owner, "state.apply", timeout=120)
        wait_for(lambda: lab.holders() == [owner], 30, 0.05)

        victim = lab.holders()[0]
        step(f"4. The ingress controller on {victim} (the VIP owner) becomes unhealthy")
        start = time.monotonic()
        lab.set_ingress_healthy(victim, False)
        moved = wait_for(lambda: lab.holders() and victim not in lab.holders(), 60, 0.05)
        say(f"   beacon -> reactor -> edge.reconcile took {victim} out of VIP ownership; "
            f"the VIP is on {', '.join(lab.holders())} after {moved:.2f}s" if moved is not None else "   VIP did not move")
        dropped = wait_for(lambda: ADDR[victim] not in lab.external_ips(), 60, 0.2)
        say(f"   Service externalIPs: {', '.join(lab.external_ips())} ({time.monotonic() - start:.2f}s)"
            if dropped is not None else "   Service still lists it")
        say(lab.report_table())
        start = time.monotonic()
        lab.set_ingress_healthy(victim, True)
        back = wait_for(lambda: lab.holders() == [victim], 60, 0.05)
        say(f"   healthy again: {victim} is back in VIP ownership and, as preemption is on, owns the VIP "
            f"again after {back:.2f}s" if back is not None else "   VIP did not come back")
        wait_for(lambda: ADDR[victim] in lab.external_ips(), 60, 0.2)
        say(f"   Service externalIPs: {', '.join(lab.external_ips())}")

        owner = lab.holders()[0]
        step(f"5. Planned maintenance: salt-run edge.drain {owner}, a client sending 20 requests/s meanwhile")
        lab.start_probe(60, rate=20, timeout=5)
        time.sleep(2)
        result = lab.run("edge.drain", owner, "reason=kernel update", timeout=300)
        say(f"   drain {'done' if result.get('ok') else 'FAILED: ' + str(result.get('error'))} in {result.get('seconds')}s:")
        for line in result.get("steps", []) + result.get("reconcile", []):
            say(f"     - {line}")
        say(lab.report_table())
        result = lab.run("edge.undrain", owner, timeout=300)
        say(f"   salt-run edge.undrain {owner}: {'done' if result.get('ok') else 'FAILED'} in {result.get('seconds')}s; "
            f"VIP on {', '.join(lab.holders())}")
        stats = lab.probe_result(timeout=120)
        say(f"   the client: {stats['requests']} requests, {stats['failures']} failed, slowest {stats['slowest']}s, "
            f"answered by {stats['answers']}")

        step("6. Final report")
        say(lab.report_table())
        runs = [r for r in lab.reconcile_log() if r["kind"] == "reconcile"]
        say(f"   {len(runs)} reconcile runs, triggered by beacon events; actions taken:")
        for run in runs:
            for action in run["actions"]:
                say(f"     - {action}")
    finally:
        step("Tearing down")
        lab.down(quiet=True)
        say(f"   done in {time.monotonic() - started:.0f}s; network namespaces left: "
            f"{[n for n in os.popen('ip netns list').read().split() if n.startswith('ehdemo')] or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
