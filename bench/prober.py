"""
A client that sends one HTTP request to a URL every 1/RATE seconds, each in
its own thread (a slow answer does not delay the next request), until SIGTERM
or SECONDS have passed; then writes a JSON summary: requests sent, requests
lost (no complete answer within TIMEOUT s), who answered, and each lost
request's send time (wall clock); ``final`` is False in the snapshot it
rewrites every second while it runs. Run inside the client's namespace.

    python bench/prober.py URL RATE TIMEOUT SECONDS OUT.json
"""

import json
import os
import signal
import socket
import sys
import threading
import time
import urllib.parse


def fetch(host, port, path, timeout):
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.") or b" 200 " not in head.split(b"\r\n")[0] + b" ":
        raise OSError(f"bad answer {head[:40]!r}")
    return body.decode(errors="replace").strip()


def main(url, rate, timeout, seconds, out):
    parsed = urllib.parse.urlsplit(url)
    host, port, path = parsed.hostname, parsed.port or 80, parsed.path or "/"
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    lock = threading.Lock()
    stats = {"requests": 0, "lost": 0, "answers": {}, "lost_at": [], "started": time.time()}

    def one(sent):
        try:
            who = fetch(host, port, path, timeout)
            with lock:
                stats["answers"][who] = stats["answers"].get(who, 0) + 1
        except Exception as exc:  # pylint: disable=broad-except
            with lock:
                stats["lost"] += 1
                stats["lost_at"].append([round(sent, 3), type(exc).__name__])

    def write(final):
        with lock:
            snapshot = dict(stats, requests=n, lost_at=sorted(stats["lost_at"]), final=final,
                            answers=dict(stats["answers"]))
        with open(out + ".tmp", "w", encoding="utf-8") as fh:
            json.dump(snapshot, fh)
        os.replace(out + ".tmp", out)

    n = 0
    threads = []
    interval = 1.0 / rate
    start = time.monotonic()
    while not stop.is_set() and time.monotonic() - start < seconds:
        thread = threading.Thread(target=one, args=(time.time(),), daemon=True)
        thread.start()
        threads.append(thread)
        n += 1
        if n % max(1, int(rate)) == 0:  # a snapshot every second: a prober killed hard still leaves its counts
            write(False)
        stop.wait(max(0.0, start + n * interval - time.monotonic()))
        threads = [t for t in threads if t.is_alive()]
    stats["stopped"] = time.time()
    for thread in threads:  # the last requests get their full timeout
        thread.join(timeout + 1)
    write(True)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5])
