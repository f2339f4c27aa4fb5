"""
Fixtures for the Kubernetes tests (``_modules/edge_k8s.py``, ``_states/edge_k8s.py``).

By default every test gets a fresh API emulator (``tests/support/kube_api.py``)
and the official client talks to it over a generated kubeconfig.

Against a real cluster: set ``KUBECONFIG`` and pass ``--real-cluster`` (or
set ``EDGE_HA_REAL_CLUSTER=1``; use the variable when pytest is started
without ``tests/k8s`` on its command line, because pytest only registers
command-line options from the conftest files of the given paths). The tests
then create a namespace ``edge-ha-test-XXXXXX`` with a Service and pause pods
pinned to the cluster's first nodes, and delete it at the end; tests that
need fault injection are skipped.
"""

import importlib.util
import json
import os
import pathlib
import sys
import time
import uuid
from types import SimpleNamespace

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.kube_api import KubeAPIEmulator  # noqa: E402

SELECTOR_KEY = "app.kubernetes.io/component"
SELECTOR_VALUE = "controller"
NEEDS_EMULATOR = "needs fault injection / the request log of the API emulator; not possible on a real cluster"


# --real-cluster is declared in tests/conftest.py (the root conftest), so it works from any directory.


def real_cluster_requested(config):
    try:
        flag = config.getoption("--real-cluster")
    except ValueError:
        flag = False
    return bool(flag) or os.environ.get("EDGE_HA_REAL_CLUSTER") == "1"


def load_module(path, name):
    spec = importlib.util.spec_from_file_location(name, REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session", autouse=True)
def _drain_salt_temp_log_handler():
    """Importing salt installs a deferred stderr log handler that replays every
    WARNING at interpreter exit, onto pytest's already closed capture stream
    ("--- Logging error ---"). pytest has captured those records already."""
    yield
    try:
        from salt._logging import impl
    except ImportError:
        return
    handler = impl.get_temp_handler()
    if handler is not None:
        handler.sync_with_handlers(())


@pytest.fixture(scope="session")
def edge_k8s():
    """_modules/edge_k8s.py loaded as a plain module (no Salt loader)."""
    return load_module("_modules/edge_k8s.py", "edge_k8s_under_test")


@pytest.fixture(scope="session")
def real_cluster(pytestconfig):
    """None on the emulator; a RealClusterSession when --real-cluster + KUBECONFIG."""
    if not real_cluster_requested(pytestconfig):
        yield None
        return
    if not os.environ.get("KUBECONFIG"):
        pytest.exit("--real-cluster / EDGE_HA_REAL_CLUSTER=1 needs KUBECONFIG pointing at the cluster", returncode=4)
    session = RealClusterSession()
    try:
        yield session
    finally:
        session.close()


@pytest.fixture
def cluster(real_cluster, tmp_path):
    """The backend a test seeds and inspects: EmulatorCluster or RealCluster."""
    if real_cluster is not None:
        backend = RealCluster(real_cluster)
        try:
            yield backend
        finally:
            backend.cleanup()
        return
    with KubeAPIEmulator() as api:  # stopped on test failure too
        yield EmulatorCluster(api, tmp_path)


@pytest.fixture
def make_edge(cluster):
    """Factory: Kubernetes nodes with one ingress pod each (ready flags), the Service.

    Returns a namespace with ``nodes`` (the edge node map, as in the pillar),
    ``addresses`` (edge -> address), ``pods`` (edge -> pod name),
    ``k8s_nodes`` (edge -> Kubernetes node) and ``settings`` (the
    ``edge_ha:kubernetes`` section).
    """

    def make(ready=(True, True, False), external_ips=None, annotations=None):
        nodes, pods = {}, {}
        for n, ((k8s_name, address), is_ready) in enumerate(zip(cluster.nodes(len(ready)), ready), 1):
            edge = f"edge{n}"
            nodes[edge] = {"address": address, "interface": "eth0", "kubernetes_node": k8s_name}
            pods[edge] = cluster.ingress_pod(k8s_name, is_ready)
        cluster.service(external_ips, annotations)
        return SimpleNamespace(
            nodes=nodes,
            pods=pods,
            addresses={e: n["address"] for e, n in nodes.items()},
            k8s_nodes={e: n["kubernetes_node"] for e, n in nodes.items()},
            settings=cluster.settings(),
        )

    return make


@pytest.fixture
def emulator(cluster):
    """The emulator of the current test; skips on a real cluster."""
    if cluster.real:
        pytest.skip(NEEDS_EMULATOR)
    return cluster.api


class EmulatorCluster:
    """Seeds and inspects the API emulator (direct store access)."""

    real = False

    def __init__(self, api, tmp_path):
        self.api = api
        self.kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        self.namespace = "ingress-nginx"
        self.service_name = "ingress-nginx-controller"
        self.labels = {SELECTOR_KEY: SELECTOR_VALUE, "app.kubernetes.io/name": "ingress-nginx"}
        self._pods = 0

    def settings(self, **overrides):
        data = {
            "kubeconfig": self.kubeconfig,
            "context": None,
            "service": {"namespace": self.namespace, "name": self.service_name},
            "ingress_pods": {"namespace": self.namespace, "label_selector": f"{SELECTOR_KEY}={SELECTOR_VALUE}"},
            "external_ips": "vips_and_healthy_nodes",
            "request_timeout": 5,
            "conflict_retries": 5,
        }
        data.update(overrides)
        return data

    def nodes(self, count):
        """Create ``count`` Kubernetes nodes; returns [(name, InternalIP)]."""
        result = []
        for n in range(1, count + 1):
            name, address = f"k8s-edge{n}", f"198.18.0.{10 + n}"
            self.api.add_node(name, address)
            result.append((name, address))
        # a non-edge node with an ingress-looking pod elsewhere
        self.api.add_node("k8s-worker1", "198.18.1.21")
        return result

    def ingress_pod(self, node, ready):
        self._pods += 1
        name = f"ingress-nginx-controller-{self._pods:02d}x"
        self.api.add_pod(self.namespace, name, node, ready=ready, labels=self.labels)
        return name

    def set_ready(self, pod, ready):
        self.api.set_pod_ready(self.namespace, pod, ready)

    def service(self, external_ips=None, annotations=None):
        return self.api.add_service(
            self.namespace, self.service_name, external_ips=external_ips, annotations=annotations,
            selector={"app.kubernetes.io/name": "ingress-nginx"},
        )

    def read_service(self):
        return self.api.get_object("services", self.namespace, self.service_name)

    def events(self):
        return [
            e for e in self.api.list_objects("events", self.namespace)
            if e["involvedObject"]["name"] == self.service_name
        ]

    def user_edit(self, external_ips):
        """Set spec.externalIPs by hand, like a user with kubectl edit."""

        def edit(svc):
            svc["spec"]["externalIPs"] = list(external_ips)

        self.api.mutate("services", self.namespace, self.service_name, edit)

    def cleanup(self):
        pass


class RealClusterSession:
    """One test namespace on the real cluster for the whole session."""

    def __init__(self):
        from kubernetes import client, config

        configuration = client.Configuration()
        config.load_kube_config(
            config_file=os.environ["KUBECONFIG"], client_configuration=configuration, persist_config=False
        )
        self.api_client = client.ApiClient(configuration)
        self.core = client.CoreV1Api(self.api_client)
        self.client = client
        self.namespace = f"edge-ha-test-{uuid.uuid4().hex[:6]}"
        self.core.create_namespace({"metadata": {"name": self.namespace}})
        self.counter = 0

    def close(self):
        try:
            self.core.delete_namespace(self.namespace)
        finally:
            self.api_client.close()


class RealCluster:
    """Seeds and inspects a real cluster through the official client."""

    real = True
    api = None
    PAUSE_IMAGE = os.environ.get("EDGE_HA_TEST_IMAGE", "registry.k8s.io/pause:3.10")

    def __init__(self, session):
        session.counter += 1
        self.session = session
        self.core = session.core
        self.kubeconfig = None  # the module falls back to KUBECONFIG
        self.namespace = session.namespace
        self.case = f"case{session.counter}"
        self.service_name = f"ingress-{self.case}"
        self.labels = {SELECTOR_KEY: SELECTOR_VALUE, "edge-ha-test": self.case}
        self._pods = []

    def settings(self, **overrides):
        data = {
            "kubeconfig": None,
            "context": None,
            "service": {"namespace": self.namespace, "name": self.service_name},
            "ingress_pods": {
                "namespace": self.namespace,
                "label_selector": f"{SELECTOR_KEY}={SELECTOR_VALUE},edge-ha-test={self.case}",
            },
            "external_ips": "vips_and_healthy_nodes",
            "request_timeout": 10,
            "conflict_retries": 5,
        }
        data.update(overrides)
        return data

    def nodes(self, count):
        found = []
        for node in self.core.list_node().items:
            for address in node.status.addresses or []:
                if address.type == "InternalIP":
                    found.append((node.metadata.name, address.address))
                    break
        if len(found) < count:
            pytest.skip(f"needs {count} nodes with an InternalIP; the cluster has {len(found)}")
        return found[:count]

    def ingress_pod(self, node, ready):
        name = f"ingress-{self.case}-{len(self._pods) + 1}"
        container = {"name": "pause", "image": self.PAUSE_IMAGE}
        if not ready:  # the pause image has no shell: this probe always fails
            container["readinessProbe"] = {"exec": {"command": ["/not-there"]}, "periodSeconds": 2}
        self.core.create_namespaced_pod(
            self.namespace,
            {
                "metadata": {"name": name, "labels": self.labels},
                "spec": {
                    "nodeName": node,
                    "containers": [container],
                    "tolerations": [{"operator": "Exists"}],
                    "terminationGracePeriodSeconds": 0,
                },
            },
        )
        self._pods.append(name)
        self._wait_pod(name, ready)
        return name

    def _wait_pod(self, name, ready, timeout=180):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pod = self.core.read_namespaced_pod(name, self.namespace)
            conditions = {c.type: c.status for c in (pod.status.conditions or [])}
            if pod.status.phase == "Running" and (conditions.get("Ready") == "True") == ready:
                return
            time.sleep(1)
        pytest.fail(f"pod {name} did not become {'ready' if ready else 'running/unready'} in {timeout}s")

    def set_ready(self, pod, ready):
        pytest.skip("flipping readiness of a running pod needs the emulator")

    def service(self, external_ips=None, annotations=None):
        body = {
            "metadata": {"name": self.service_name, "annotations": dict(annotations or {})},
            "spec": {
                "selector": {"edge-ha-test": self.case},
                "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 80}],
            },
        }
        if external_ips:
            body["spec"]["externalIPs"] = list(external_ips)
        self.core.create_namespaced_service(self.namespace, body)
        return self.read_service()

    def read_service(self):
        response = self.core.read_namespaced_service(self.service_name, self.namespace, _preload_content=False)
        return json.loads(response.data)

    def user_edit(self, external_ips):
        self.core.patch_namespaced_service(
            self.service_name, self.namespace, {"spec": {"externalIPs": list(external_ips)}},
            _content_type="application/merge-patch+json",
        )

    def events(self):
        response = self.core.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={self.service_name}", _preload_content=False
        )
        return json.loads(response.data)["items"]

    def cleanup(self):
        for name in self._pods:
            try:
                self.core.delete_namespaced_pod(name, self.namespace, grace_period_seconds=0)
            except self.session.client.exceptions.ApiException:
                pass
        try:
            self.core.delete_namespaced_service(self.service_name, self.namespace)
        except self.session.client.exceptions.ApiException:
            pass
