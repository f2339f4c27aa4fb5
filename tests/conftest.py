import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def pytest_addoption(parser):
    # declared here (the root conftest) so that `make test PYTEST_ARGS=--real-cluster` works;
    # tests/k8s/conftest.py reads it (see docs/kubernetes.md)
    parser.addoption(
        "--real-cluster",
        action="store_true",
        default=False,
        help="run tests/k8s against the cluster in KUBECONFIG instead of the API emulator "
        "(same as EDGE_HA_REAL_CLUSTER=1)",
    )
