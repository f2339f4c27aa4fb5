"""
LoadBalancer Services on the lab (issue #15), shared by the lab test
(tests/lab/test_load_balancer.py) and the benchmark (bench/lab_bench.py,
block ``lb``): the address pools, creating and reading a Service of the
project's class through the Kubernetes API emulator, and HTTP from the client
namespace to an address.

Run as a script inside a namespace (``ip netns exec NS python lab/load_balancer.py ...``):

    get ADDRESS                        # one GET of http://ADDRESS/: the body, or "ERROR ..."
    wait ADDRESS SECONDS OUT.json      # a GET every 50 ms (each in its own thread, 1 s deadline)
                                       # until one answers: OUT.json {"time", "sent", "body", "attempts"}
                                       # (wall clock; "time": null after SECONDS); OUT.json.ready once started
"""

import json
import os
import pathlib
import subprocess
import sys
import threading
import time
import urllib.request

REPO = pathlib.Path(__file__).resolve().parents[1]
if __name__ == "__main__" and sys.path and pathlib.Path(sys.path[0]).resolve() == REPO / "lab":
    sys.path.pop(0)  # run as a script: lab/ itself on the path would hide the lab package (lab/lab.py)
for _path in (REPO / "_utils", REPO):  # the pure core (edge_ha_core, in _utils as Salt ships it) and the repo
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from edge_ha_core import lb  # noqa: E402  pylint: disable=wrong-import-position
from lab.lab import KUBE_NS, lab_pillar  # noqa: E402  pylint: disable=wrong-import-position

VRRP = {"vrrp_version": 3, "advert_int": 1, "unicast": True}
POOL = {"lab": {"addresses": ["198.18.0.120-198.18.0.127"], "virtual_router_ids": "60-67", "prefix": 24, "vrrp": VRRP},
        # one address, only on request: taken by dns, so the next Service asking for the pool finds it full
        "tiny": {"addresses": ["198.18.0.130-198.18.0.130"], "virtual_router_ids": 68, "prefix": 24,
                 "auto_assign": False, "vrrp": VRRP}}
TINY = "198.18.0.130"
SVC = f"/api/v1/namespaces/{KUBE_NS}/services"


def with_pools(data):
    """An edge_ha pillar (dict) with the lab's address pools added (a copy of POOL)."""
    return dict(data, address_pools=json.loads(json.dumps(POOL)))


def pool_pillar(lab):
    """The lab pillar with the address pools."""
    return with_pools(lab_pillar(lab.dir / "kubeconfig"))


def create(lab, name, cls=lb.LB_CLASS, annotations=None, **spec_extra):
    """POST a ``type: LoadBalancer`` Service (port 80) of class ``cls`` (default the project's) in KUBE_NS."""
    spec = {"type": "LoadBalancer", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}], **spec_extra}
    if cls:
        spec["loadBalancerClass"] = cls
    meta = {"name": name, "namespace": KUBE_NS}
    if annotations:
        meta["annotations"] = annotations
    return lab.kube("POST", SVC, {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec})


def delete(lab, name):
    """DELETE the Service; False if it was not there."""
    try:
        lab.kube("DELETE", f"{SVC}/{name}")
        return True
    except RuntimeError:
        return False


def get(lab, name):
    try:
        return lab.kube("GET", f"{SVC}/{name}")
    except RuntimeError:
        return None


def ingress(lab, name):
    """The Service's status.loadBalancer.ingress IPs ([] while none, or without the Service)."""
    return lb.ingress_ips(get(lab, name) or {})


def assigned(service):
    """The address the runner recorded on a Service (wire dict; its assignment annotation), or None."""
    notes = ((service or {}).get("metadata") or {}).get("annotations") or {}
    recorded = lb.parse_recorded(notes.get(lb.ASSIGNMENT_ANNOTATION))
    return recorded.address if recorded else None


def _script(*args):
    return [sys.executable, str(pathlib.Path(__file__).resolve()), *args]


def http_get(ns, address):
    """GET http://address/ from namespace ``ns``: the body (the node name of the ingress stand-in) or None."""
    out = subprocess.run(["ip", "netns", "exec", ns, *_script("get", address)],
                         capture_output=True, text=True, timeout=30, check=False).stdout.strip()
    return None if out.startswith("ERROR") or not out else out


def http_from_client(lab, address):
    """GET http://address/ from the lab's client namespace: the body or None."""
    return http_get(lab.ns("client"), address)


def wait_command(address, seconds, out):
    """The command line (without ``ip netns exec``) of the waiter: see the module's docstring."""
    return _script("wait", address, str(seconds), str(out))


def _fetch(address, timeout):
    with urllib.request.urlopen(f"http://{address}/", timeout=timeout) as resp:
        return resp.read().decode().strip()


def _wait(address, seconds, out, interval=0.05, timeout=1.0):
    out = pathlib.Path(out)
    done = threading.Event()
    lock = threading.Lock()
    attempts = [0]

    def write(data):
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, out)

    def attempt():
        sent = time.time()
        try:
            body = _fetch(address, timeout)
        except Exception:  # pylint: disable=broad-except
            return
        end = time.time()
        with lock:
            if not done.is_set():
                write({"time": end, "sent": sent, "body": body, "attempts": attempts[0]})
                done.set()

    pathlib.Path(f"{out}.ready").write_text(str(time.time()))
    deadline = time.monotonic() + float(seconds)
    while not done.is_set() and time.monotonic() < deadline:
        attempts[0] += 1
        threading.Thread(target=attempt, daemon=True).start()
        done.wait(interval)
    with lock:
        if not done.is_set():
            write({"time": None, "sent": None, "body": None, "attempts": attempts[0]})
            done.set()
    return 0


def main(argv):
    if argv[:1] == ["get"] and len(argv) == 2:
        try:
            print(_fetch(argv[1], 2))
        except Exception as exc:  # pylint: disable=broad-except
            print("ERROR", exc)
        return 0
    if argv[:1] == ["wait"] and len(argv) == 4:
        return _wait(argv[1], argv[2], argv[3])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
