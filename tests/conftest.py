import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
# the repo (tests.support, lab) and the pure core (edge_ha_core, in _utils as Salt ships it)
for _path in (REPO / "_utils", REPO):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))


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
