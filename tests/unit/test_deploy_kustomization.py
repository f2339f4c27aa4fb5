"""deploy/ as a kustomization: the defaults render exactly deploy/rbac.yaml, and
each parameter (deploy/params.yaml) reaches every field that names it."""

import pathlib
import shutil
import subprocess

import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
KUBECTL = shutil.which("kubectl")

pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl (with its built-in kustomize) is not installed")


def _render(directory):
    proc = subprocess.run([KUBECTL, "kustomize", str(directory)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def _key(doc):
    return doc["kind"], doc["metadata"]["name"]


def test_defaults_render_rbac_yaml():
    rendered = {_key(d): d for d in _render(REPO / "deploy")}
    plain = {_key(d): d for d in yaml.safe_load_all((REPO / "deploy" / "rbac.yaml").read_text()) if d}
    assert rendered == plain  # the params ConfigMap is local-config: not rendered
    assert ("Secret", "salt-edge-ha-token") not in rendered


def test_parameters_reach_every_field(tmp_path):
    deploy = tmp_path / "deploy"
    shutil.copytree(REPO / "deploy", deploy)
    params = yaml.safe_load((deploy / "params.yaml").read_text())
    params["data"] = {"namespace": "edge-ops", "serviceNamespace": "ingress", "serviceName": "traefik"}
    (deploy / "params.yaml").write_text(yaml.safe_dump(params))
    docs = {_key(d): d for d in _render(deploy)}
    text = yaml.safe_dump_all(docs.values())
    assert "salt-edge-ha\n" not in text.replace("name: salt-edge-ha\n", "")  # only names keep salt-edge-ha
    assert "ingress-nginx" not in text
    assert docs[("Namespace", "edge-ops")]
    assert docs[("ServiceAccount", "salt-edge-ha")]["metadata"]["namespace"] == "edge-ops"
    role = docs[("Role", "salt-edge-ha")]
    assert role["metadata"]["namespace"] == "ingress"
    assert [r.get("resourceNames") for r in role["rules"] if "services" in r["resources"]] == [["traefik"]]
    binding = docs[("RoleBinding", "salt-edge-ha")]
    assert binding["metadata"]["namespace"] == "ingress"
    subject = {"kind": "ServiceAccount", "name": "salt-edge-ha", "namespace": "edge-ops"}
    assert binding["subjects"] == [subject]
    assert docs[("ClusterRoleBinding", "salt-edge-ha-nodes")]["subjects"] == [subject]


def test_long_lived_token_is_opt_in():
    (secret,) = yaml.safe_load_all((REPO / "deploy" / "long-lived-token.yaml").read_text())
    assert secret["type"] == "kubernetes.io/service-account-token"
    assert secret["metadata"]["annotations"]["kubernetes.io/service-account.name"] == "salt-edge-ha"
    kustomization = yaml.safe_load((REPO / "deploy" / "kustomization.yaml").read_text())
    assert "long-lived-token.yaml" not in kustomization["resources"]
