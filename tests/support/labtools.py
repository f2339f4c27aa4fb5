"""Constants and a poller for the lab tests."""

import time

from lab.lab import NODES, USER_IP, VIP

ADDR = {n: f"198.18.0.{o}" for n, o in NODES.items()}
ALL_IPS = sorted([VIP, USER_IP] + list(ADDR.values()))


def wait_for(predicate, timeout, interval=0.1):
    """Poll until predicate() is truthy; seconds waited, or None on timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        value = predicate()
        if value:
            return time.monotonic() - start
        time.sleep(interval)
    return None
