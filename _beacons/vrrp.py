"""
Beacon: VRRP transitions of the local keepalived.

Reads what keepalived's notify FIFO script records in the state directory
(``transitions.log``, see the keepalived execution module), and fires

- ``salt/beacon/<id>/vrrp/snapshot`` once when the minion starts: every
  instance's state, priority and the VIPs really on the interface;
- ``salt/beacon/<id>/vrrp/transition`` for every transition, in order:
  instance, old and new state, priority, VIPs on the interface, time;
- ``salt/beacon/<id>/vrrp/stale_vip`` when VIPs are on the interface while
  keepalived is not running (once per occurrence): ``vips``, ``time``;
- ``salt/beacon/<id>/vrrp/split_brain`` when this node holds a VIP and another
  host answers ARP for it too (an RFC 5227 probe every ``conflict_check``
  seconds, default 5; a Neighbour Solicitation for IPv6): ``conflicts`` (VIP -> MAC addresses), ``time``;
- ``salt/beacon/<id>/vrrp/report`` when the node's report changed and none
  of the above says why (a flag set, a VIP added or removed, ingress health).

Before it fires anything, every look publishes the node's report
(``edge_node.publish``) to the master's mine when it changed, and every
``heartbeat`` seconds (default 10) anyway; the master's reconcile reads the
reports from there, stored under the id Salt verified for each minion.
Every event carries ``report``, the digest of the report published.

Every event carries ``seen``: when the beacon produced it (the minion's
clock), next to ``time`` (when keepalived's notify script recorded the
transition).

The events are hints: the master re-reads the node before acting.

Salt runs beacons from a periodic callback of the minion's event loop that is
fixed at 1 s in Salt 3008 (``loop_interval`` does not change it), so a
transition waits up to 1 s for the next look. ``watch`` removes that wait: a
helper thread looks every ``watch`` seconds at two cheap things, the size and
mtime of ``transitions.log`` and whether the pids in keepalived's pid files
(``keepalived.pid_files``: ``keepalived:pid_dir`` in process mode, keepalived's
defaults in ``/run`` under systemd) are alive, and when either changes it
schedules one extra run of this beacon on the minion's event loop (the same
code, between the regular runs, never concurrently with them). The events
are fired exactly as Salt fires beacon events. Cost: a few system calls per
look (measured in docs/benchmarks.md).

.. code-block:: yaml

    beacons:
      vrrp:
        - interval: 1          # seconds between looks at the state directory
        - state_dir: /run/edge-ha   # optional, default: keepalived:state_dir
        - conflict_check: 5         # seconds between ARP checks for a second VIP holder (0: off)
        - watch: 0.05               # optional: react within 50 ms instead of up to 1 s (0: off)
        - heartbeat: 10             # seconds between publications of an unchanged report
        - publish: true             # push the report to the master's mine (edge_node.publish)
"""

import contextvars
import logging
import os
import threading
import time

import salt.utils.beacons
import salt.utils.event

log = logging.getLogger(__name__)

__virtualname__ = "vrrp"

ALLOWED = ("interval", "state_dir", "conflict_check", "watch", "publish", "heartbeat")
HEARTBEAT = 10  # seconds between publications of an unchanged report
WATCH_THREAD = "edge-ha-vrrp-watch"


def __virtual__():
    return __virtualname__


def validate(config):
    """Validate the beacon configuration."""
    if not isinstance(config, list):
        return False, "vrrp beacon: configuration must be a list, e.g. [{interval: 1}]"
    conf = salt.utils.beacons.list_to_dict(config)
    unknown = sorted(set(conf) - set(ALLOWED))
    if unknown:
        return False, f"vrrp beacon: unknown option(s) {', '.join(unknown)}; allowed: {', '.join(ALLOWED)}"
    check = conf.get("conflict_check", 5)
    if not isinstance(check, (int, float)) or isinstance(check, bool) or check < 0:
        return False, "vrrp beacon: conflict_check must be a number of seconds (0 turns the ARP check off)"
    watch = conf.get("watch", 0)
    if not isinstance(watch, (int, float)) or isinstance(watch, bool) or not (watch == 0 or 0.01 <= watch <= 1):
        return False, "vrrp beacon: watch must be 0 (off) or a number of seconds from 0.01 to 1"
    beat = conf.get("heartbeat", HEARTBEAT)
    if not isinstance(beat, (int, float)) or isinstance(beat, bool) or not 1 <= beat <= 3600:
        return False, "vrrp beacon: heartbeat must be a number of seconds from 1 to 3600"
    if not isinstance(conf.get("publish", True), bool):
        return False, "vrrp beacon: publish must be true or false"
    if "state_dir" in conf and (not isinstance(conf["state_dir"], str) or not conf["state_dir"].startswith("/")):
        return False, "vrrp beacon: state_dir must be an absolute path"
    return True, "valid vrrp beacon configuration"


def parse_transitions(text, after):
    """Lines ``TIME INSTANCE STATE PRIORITY`` newer than ``after`` -> list of dicts, in order."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 4:
            continue
        try:
            stamp, prio = float(parts[0]), int(parts[3])
        except ValueError:
            continue
        if stamp > after:
            out.append({"time": stamp, "instance": parts[1], "state": parts[2], "priority": prio})
    return out


def transition_events(transitions, states, vips_present):
    """Events for new transitions; updates ``states`` (instance -> last state)."""
    events = []
    for item in transitions:
        name = item["instance"]
        events.append({
            "tag": "transition",
            "instance": name,
            "old": states.get(name, "UNKNOWN"),
            "new": item["state"],
            "priority": item["priority"],
            "time": item["time"],
            "vips_present": vips_present.get(name, []),
        })
        states[name] = item["state"]
    return events


def stale_vips(status):
    """VIPs on this node's interfaces while its keepalived is not running (a SIGKILL leaves them)."""
    if status["running"]:
        return []
    return sorted({v for inst in status["instances"].values() for v in inst["vips_present"]})


def _read(path):
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError:
        return ""


def watch_signature(log_path, pid_paths):
    """What the watcher compares between looks: the log's size and mtime, and which keepalived pids are alive."""
    try:
        st = os.stat(log_path)
        sig = [st.st_size, st.st_mtime_ns]
    except OSError:
        sig = [None, None]
    for path in pid_paths:
        pid = 0
        try:
            with open(path, encoding="ascii") as fh:
                pid = int(fh.read().strip() or 0)
        except (OSError, ValueError):
            pass
        alive = False
        if pid > 0:
            try:
                with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
                    # the state field; Z = zombie: dead, not reaped (a killed keepalived whose parent never waits)
                    alive = fh.read().rsplit(")", 1)[1].split()[0] != "Z"
            except (OSError, IndexError):
                alive = False
        sig.append((pid, alive))
    return sig


def _watcher(ctx, log_path, pid_paths, loop, run_now):
    """Helper thread: look every ctx['watch'] seconds; on a change, schedule a beacon run on the minion's loop."""
    last = watch_signature(log_path, pid_paths)
    while ctx.get("watch"):
        time.sleep(ctx["watch"])
        sig = watch_signature(log_path, pid_paths)
        if sig != last:
            last = sig
            try:
                loop.add_callback(run_now)
            except RuntimeError:  # the loop is closed: the minion is stopping
                return


def _start_watch(conf, ctx, state_dir, mod):
    """Start the watcher thread once (it ends when ``watch`` is turned off or the minion stops)."""
    ctx["watch"] = conf.get("watch", 0)
    thread = ctx.get("watcher")
    if not ctx["watch"] or (thread and thread.is_alive()):
        return
    # a beacon reload (pillar refresh, beacon changes) gives this module a new context: the
    # watchers of the old ones must stop, or each would fire the same transition again
    for old in threading.enumerate():
        if old.name == WATCH_THREAD and getattr(old, "edge_ha_ctx", None) is not ctx:
            old.edge_ha_ctx["watch"] = 0
    import tornado.ioloop  # pylint: disable=import-outside-toplevel

    opts = __opts__  # pylint: disable=undefined-variable
    # the parent and the VRRP child; process mode: in pid_dir, service mode: where keepalived
    # writes them under the init system (keepalived.pid_files)
    files = mod["keepalived.pid_files"]()
    pid_paths = [files["main"], files["vrrp"]]
    loop = tornado.ioloop.IOLoop.current()

    def run_now():
        # on the minion's event loop, like the regular beacon run
        events = _look(conf, ctx, mod, state_dir)
        if not events:
            return
        base = f"salt/beacon/{opts['id']}/{__virtualname__}/"
        beacons = [{"tag": base + ev.pop("tag"), "data": dict(ev, id=opts["id"]), "beacon_name": __virtualname__}
                   for ev in events]
        with salt.utils.event.get_event("minion", opts=opts, listen=False) as bus:
            bus.fire_event({"beacons": beacons}, "__beacons_return")

    # the thread runs in a copy of this call's context, so the scheduled runs see this module's loader context
    thread = threading.Thread(target=contextvars.copy_context().run,
                              args=(_watcher, ctx, os.path.join(state_dir, "transitions.log"), pid_paths, loop,
                                    run_now),
                              name=WATCH_THREAD, daemon=True)
    thread.edge_ha_ctx = ctx
    ctx["watcher"] = thread
    thread.start()


def beacon(config):
    """Fire the snapshot once, then one event per recorded transition."""
    conf = salt.utils.beacons.list_to_dict(config)
    mod = __salt__  # pylint: disable=undefined-variable
    ctx = __context__.setdefault("edge_ha_vrrp", {})  # pylint: disable=undefined-variable
    state_dir = conf.get("state_dir") or mod["keepalived.settings"]()["state_dir"]
    events = _look(conf, ctx, mod, state_dir)
    _start_watch(conf, ctx, state_dir, mod)
    return events


def _look(conf, ctx, mod, state_dir):
    """
    One look at the node: publish its report to the master's mine if it
    changed (or the heartbeat is due), then the events to fire, each stamped
    with ``seen`` and the digest of the report published (``report``); a
    changed report that no other event explains fires ``report``.
    """
    seen_at = time.time()
    events = _events(conf, ctx, mod, state_dir)
    published = {"changed": False, "digest": None}
    if conf.get("publish", True):
        try:
            # a look that fires events publishes a fresh report too (its time says "as of this event")
            published = mod["edge_node.publish"](force=bool(events), heartbeat=conf.get("heartbeat", HEARTBEAT))
        except Exception as exc:  # pylint: disable=broad-except
            log.warning("vrrp beacon: report not published: %s", exc)
    if published["changed"] and not events:
        events.append({"tag": "report"})
    return [dict(ev, seen=seen_at, report=published["digest"]) for ev in events]


def _events(conf, ctx, mod, state_dir):
    log_text = _read(os.path.join(state_dir, "transitions.log"))
    if "started" not in ctx:
        status = mod["keepalived.status"]()
        seen = parse_transitions(log_text, 0.0)
        ctx["started"] = True
        ctx["last"] = seen[-1]["time"] if seen else 0.0
        ctx["states"] = {name: inst["state"] for name, inst in status["instances"].items()}
        return [{"tag": "snapshot", "running": status["running"], "instances": status["instances"]}]
    new = parse_transitions(log_text, ctx["last"])
    status = mod["keepalived.status"]()
    events = []
    if new:
        ctx["last"] = new[-1]["time"]
        present = {name: inst["vips_present"] for name, inst in status["instances"].items()}
        events = transition_events(new, ctx["states"], present)
    stale = stale_vips(status)
    if stale != ctx.get("stale", []):
        ctx["stale"] = stale
        if stale:
            events.append({"tag": "stale_vip", "vips": stale, "running": status["running"], "time": time.time()})
    check = conf.get("conflict_check", 5)
    holding = status["running"] and any(i["vips_present"] for i in status["instances"].values())
    if check and holding and time.monotonic() - ctx.get("checked", 0) >= check:
        ctx["checked"] = time.monotonic()
        conflicts = mod["edge_node.vip_conflicts"]()
        if conflicts != ctx.get("conflicts", {}):
            ctx["conflicts"] = conflicts
            if conflicts:
                events.append({"tag": "split_brain", "conflicts": conflicts, "time": time.time()})
    elif not holding:
        ctx["conflicts"] = {}
    return events
