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
  seconds, default 5; IPv4): ``conflicts`` (VIP -> MAC addresses), ``time``.

The events are hints: the master re-reads the node before acting.

.. code-block:: yaml

    beacons:
      vrrp:
        - interval: 1          # seconds between looks at the state directory
        - state_dir: /run/edge-ha   # optional, default: keepalived:state_dir
        - conflict_check: 5         # seconds between ARP checks for a second VIP holder (0: off)
"""

import os
import time

import salt.utils.beacons

__virtualname__ = "vrrp"

ALLOWED = ("interval", "state_dir", "conflict_check")


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


def beacon(config):
    """Fire the snapshot once, then one event per recorded transition."""
    conf = salt.utils.beacons.list_to_dict(config)
    mod = __salt__  # pylint: disable=undefined-variable
    ctx = __context__.setdefault("edge_ha_vrrp", {})  # pylint: disable=undefined-variable
    state_dir = conf.get("state_dir") or mod["keepalived.settings"]()["state_dir"]
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
