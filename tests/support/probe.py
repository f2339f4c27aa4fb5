"""
A client that probes a URL at a fixed rate for a fixed time and writes a JSON
summary: requests, failures, who answered, and the failure times. Bounded in
count and time; run inside a client namespace.

    python probe.py URL RATE_PER_S SECONDS OUT.json [TIMEOUT_S]

TIMEOUT_S (default 1) bounds each request; ``slowest`` is the longest
successful request in seconds.
"""

import json
import sys
import time
import urllib.request


def main(url, rate, seconds, out, timeout=1.0):
    interval = 1.0 / rate
    stats = {"requests": 0, "failures": 0, "answers": {}, "failed_at": [], "slowest": 0.0, "timeout": timeout}
    start = time.monotonic()
    next_at = start
    while time.monotonic() - start < seconds:
        stats["requests"] += 1
        began = time.monotonic()
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                who = resp.read().decode().strip()
            stats["answers"][who] = stats["answers"].get(who, 0) + 1
            stats["slowest"] = max(stats["slowest"], round(time.monotonic() - began, 3))
        except Exception as exc:  # pylint: disable=broad-except
            stats["failures"] += 1
            stats["failed_at"].append([round(time.monotonic() - start, 3), str(exc)[:80]])
        next_at += interval
        time.sleep(max(0.0, next_at - time.monotonic()))
    with open(out + ".tmp", "w", encoding="utf-8") as fh:
        json.dump(stats, fh)
    import os  # pylint: disable=import-outside-toplevel

    os.replace(out + ".tmp", out)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4], float(sys.argv[5]) if len(sys.argv) > 5 else 1.0)
