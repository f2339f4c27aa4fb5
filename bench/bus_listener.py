"""
Record the salt-master's event bus: one JSON line per event (receive time,
tag, the payload fields the benchmarks need) until SIGTERM. Run inside the
master's namespace.

    python bench/bus_listener.py MASTER_CONFIG OUT.jsonl
"""

import json
import signal
import sys
import time

import salt.config
import salt.utils.event

KEEP = ("id", "time", "seen", "_stamp", "fun", "fun_args", "jid", "instance", "old", "new", "user", "success",
        "why")


def main(conf, out):
    opts = salt.config.master_config(conf)
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    bus = salt.utils.event.get_master_event(opts, opts["sock_dir"], listen=True)
    with open(out, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"recv": time.time(), "tag": "bench/listener/ready"}) + "\n")
        fh.flush()
        while not stop:
            event = bus.get_event(full=True, wait=0.2)
            if not event:
                continue
            tag, data = event["tag"], event["data"] if isinstance(event["data"], dict) else {}
            # beacons, runner jobs, minion jobs (new and returns: their fun), the project's own events
            # (edge_ha/kubernetes/services from the Services engine)
            if not tag.startswith(("salt/beacon/", "salt/run/", "salt/job/", "edge_ha/")):
                continue
            rec = {"recv": time.time(), "tag": tag}
            for key in KEEP:
                if key in data:
                    rec[key] = data[key]
            if "data" in data and isinstance(data["data"], dict):  # beacon payloads may be nested
                for key in ("time", "seen", "id"):
                    if key in data["data"]:
                        rec.setdefault(key, data["data"][key])
            fh.write(json.dumps(rec, default=str) + "\n")
            fh.flush()
    bus.destroy()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
