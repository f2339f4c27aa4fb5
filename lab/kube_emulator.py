"""
The lab's Kubernetes API: the project's API emulator (tests/support/kube_api.py)
as a process inside the master's namespace, seeded with the edge nodes, one
ingress controller pod per node and the ingress Service.

It serves the Kubernetes REST protocol on 127.0.0.1:PORT (for the salt-master's
runners, through a kubeconfig) and the same protocol on a Unix socket (for the
lab tool and the tests in the root namespace, which has no route to the lab).

    python lab/kube_emulator.py --seed seed.json --port 6443 \
        --kubeconfig kubeconfig --socket kube.sock [--deny-external-ips]

``--deny-external-ips`` (or ``"deny_external_ips": true`` in the seed) makes it
a hardened cluster: the ``DenyServiceExternalIPs`` admission plugin answers
403 to a create or update that adds ``spec.externalIPs`` to a Service. The
seed's ingress Service is stored directly, as before.
"""

import argparse
import json
import os
import pathlib
import signal
import socketserver
import sys
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from tests.support.kube_api import KubeAPIEmulator, _Handler  # noqa: E402  pylint: disable=wrong-import-position


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self):
        request, _ = super().get_request()
        return request, ("unix", 0)


def seed(api, data):
    for ns in data["namespaces"]:
        api.add_namespace(ns)
    for node in data["nodes"]:
        api.add_node(node["name"], node["address"])
    for pod in data["pods"]:
        api.add_pod(pod["namespace"], pod["name"], pod["node"], ready=pod.get("ready", True), labels=pod["labels"])
    svc = data["service"]
    api.add_service(svc["namespace"], svc["name"], external_ips=svc.get("external_ips", []),
                    ports=[{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 80},
                           {"name": "https", "port": 443, "protocol": "TCP", "targetPort": 443}])


def log_requests(api, path):
    """Append one JSON line per request (method, path, start, end: wall-clock seconds) to ``path``
    (set EDGE_HA_KUBE_REQUEST_LOG; the benchmarks use it to time the Kubernetes calls)."""
    handle = api.handle
    lock = threading.Lock()

    def logged(handler):
        start = time.time()
        try:
            return handle(handler)
        finally:
            line = json.dumps({"method": handler.command, "path": handler.path, "start": start, "end": time.time()})
            with lock, open(path, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")

    api.handle = logged


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", required=True)
    parser.add_argument("--port", type=int, default=6443)
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--socket", required=True)
    parser.add_argument("--deny-external-ips", action="store_true",
                        help="emulate the DenyServiceExternalIPs admission plugin (a hardened cluster)")
    args = parser.parse_args()
    data = json.loads(pathlib.Path(args.seed).read_text())
    api = KubeAPIEmulator(port=args.port,
                          deny_external_ips=args.deny_external_ips or bool(data.get("deny_external_ips"))).start()
    seed(api, data)
    if os.environ.get("EDGE_HA_KUBE_REQUEST_LOG"):
        log_requests(api, os.environ["EDGE_HA_KUBE_REQUEST_LOG"])
    api.write_kubeconfig(args.kubeconfig)
    if os.path.exists(args.socket):
        os.unlink(args.socket)
    unix = _UnixServer(args.socket, type("_UnixHandler", (_Handler,), {"emulator": api}))
    threading.Thread(target=unix.serve_forever, daemon=True).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    print(f"kube emulator on {api.url} and {args.socket}", flush=True)
    stop.wait()
    unix.shutdown()
    unix.server_close()
    api.stop()
    os.unlink(args.socket)
    return 0


if __name__ == "__main__":
    sys.exit(main())
