"""
Kubernetes side of salt-edge-ha: ingress health and the Service's externalIPs.

The edge nodes run keepalived/IPVS in front of an ingress controller that
runs as pods in a bare-metal Kubernetes cluster. This module tells which edge
nodes have a *ready* ingress controller pod, and keeps the ``externalIPs`` of
the ingress controller's Service in line with the edge: the VIPs, plus (policy
``vips_and_healthy_nodes``) the addresses of the edge nodes whose ingress pod
is ready.

Configuration comes from the pillar key ``edge_ha:kubernetes`` (see
``docs/kubernetes.md``), or from explicit keyword arguments (a master-side
runner passes the data itself)::

    edge_ha:
      kubernetes:
        kubeconfig: /etc/salt/edge-ha.kubeconfig   # optional
        context: null                              # optional
        service: {namespace: ingress-nginx, name: ingress-nginx-controller}
        ingress_pods: {namespace: ingress-nginx,
                       label_selector: "app.kubernetes.io/component=controller"}
        external_ips: vips_and_healthy_nodes       # or vips_only
        request_timeout: 10
        conflict_retries: 5

The Kubernetes configuration is loaded the standard way, first match wins:
the pillar's ``kubeconfig`` (and ``context``), the ``KUBECONFIG`` environment
variable, ``~/.kube/config``, the in-cluster service account.

Ownership: the addresses this module put on the Service are recorded in the
annotation ``edge-ha.salt/managed-external-ips`` (a JSON list); addresses
added by hand are never removed. Updates are PATCHes that carry
``metadata.resourceVersion``, retried (bounded, with backoff) on 409 Conflict
and transient 5xx/429 answers.

Everything that does not talk to Kubernetes is a plain function of this
module (``desired_external_ips``, ``parse_managed``, ``rbac_message``...),
callable without Salt; only the names in ``__load__`` are Salt functions.
"""

import datetime
import ipaddress
import json
import logging
import os
import random
import re
import socket
import time

from edge_ha_core import lb
from edge_ha_core import model as edge_ha_model
from salt.exceptions import CommandExecutionError, SaltInvocationError

import yaml

try:
    import urllib3
    from kubernetes import client as k8s_client
    from kubernetes import config as k8s_config
    from kubernetes import watch as k8s_watch
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config.config_exception import ConfigException

    HAS_KUBERNETES = True
    _IMPORT_ERROR = None
except ImportError as _exc:  # pragma: no cover - depends on the environment
    HAS_KUBERNETES = False
    _IMPORT_ERROR = str(_exc)

log = logging.getLogger(__name__)



__virtualname__ = "edge_k8s"

# Only these are Salt functions (edge_k8s.<name>); the rest are helpers.
__load__ = [
    "ingress_pods",
    "node_addresses",
    "node_health",
    "external_ips",
    "set_external_ips",
    "wait_ingress_ready",
    "desired_external_ips",
    "set_vip_owners",
    "record_event",
    "excluded_nodes",
    "load_balancer_services",
    "watch_load_balancer_services",
    "set_load_balancer_status",
    "record_assignment",
    "service_event",
]

MANAGED_ANNOTATION = "edge-ha.salt/managed-external-ips"
VIP_OWNERS_ANNOTATION = "edge-ha.salt/vip-owners"
EXCLUDE_LABEL = "node.kubernetes.io/exclude-from-external-load-balancers"
COMPONENT = "salt-edge-ha"
EVENT_REASON = "ExternalIPsUpdated"
# The reasons of the Events the edge runner creates with record_event().
EVENT_REASONS = (
    EVENT_REASON,
    "VIPFailover",
    "VIPFenced",
    "StaleVIPRemoved",
    "SplitBrainFenced",
    "NodeDrained",
    "NodeUndrained",
    "RolloutStopped",
    "PillarInvalid",
    # LoadBalancer Services (service_event): assigned, released, refused (edge_ha_core.lb.REFUSAL_REASONS)
    "AddressAssigned",
    "AddressReleased",
) + lb.REFUSAL_REASONS
EVENT_REASON_RE = re.compile(r"^[A-Z][A-Za-z0-9]*$")
EVENT_TYPES = ("Normal", "Warning")
POLICIES = edge_ha_model.EXTERNAL_IPS_POLICIES
ADDRESS_SOURCES = ("kubernetes", "pillar")
TRANSIENT_STATUSES = (429, 500, 502, 503, 504)
BACKOFF_BASE = 0.05  # seconds; doubled per attempt, jittered, capped
BACKOFF_CAP = 1.0

# Every Kubernetes API call this module makes: (verb, resource, scope, used by).
# deploy/rbac.yaml must grant exactly these; tests/unit/test_edge_k8s_logic.py
# checks the table against rbac.yaml and against the _call()/_check_call()
# sites in this file, and the emulator tests check it against the requests.
API_CALLS = (
    ("list", "pods", "namespaced", "ingress_pods, node_health, wait_ingress_ready, set_external_ips"),
    ("watch", "pods", "namespaced", "wait_ingress_ready"),
    ("list", "nodes", "cluster", "node_addresses, node_health, set_external_ips, excluded_nodes"),
    ("get", "nodes", "cluster", "node_addresses (one node)"),
    ("get", "services", "namespaced", "external_ips, set_external_ips, set_vip_owners, record_event"),
    ("patch", "services", "namespaced", "set_external_ips, set_vip_owners"),
    ("create", "events", "namespaced", "set_external_ips, record_event"),
    # LoadBalancer Services in every namespace (issue #15): a ClusterRole in deploy/rbac.yaml
    ("list", "services", "cluster", "load_balancer_services"),
    ("watch", "services", "cluster", "watch_load_balancer_services"),
    ("patch", "services", "cluster", "record_assignment"),
    ("patch", "services/status", "cluster", "set_load_balancer_status"),
    ("create", "events", "cluster", "service_event"),
)


def __virtual__():
    if not HAS_KUBERNETES:
        return (False, f"edge_k8s: the kubernetes Python client is not importable: {_IMPORT_ERROR}")
    return __virtualname__


class KubernetesAPIError(CommandExecutionError):
    """A failed Kubernetes API call, with the HTTP status when there was one."""

    def __init__(self, message, status=None, retry_after=None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after

    @property
    def transient(self):
        return self.status in TRANSIENT_STATUSES

    @property
    def conflict(self):
        return self.status == 409


# ---------------------------------------------------------------------------
# pure helpers (no Salt, no network)


def settings(section=None):
    """The kubernetes section merged over the model's defaults (``edge_ha.DEFAULT_KUBERNETES``; a new dict)."""
    section = dict(section or {})
    result = {}
    for key, default in edge_ha_model.DEFAULT_KUBERNETES.items():
        value = section.get(key)
        if isinstance(default, dict):
            if value is not None and not isinstance(value, dict):
                raise SaltInvocationError(f"edge_ha:kubernetes:{key} must be a mapping, not {value!r}")
            merged = dict(default)
            merged.update({k: v for k, v in (value or {}).items() if v is not None})
            result[key] = merged
        else:
            result[key] = default if value is None else value
    if result["external_ips"] not in POLICIES:
        raise SaltInvocationError(
            f"edge_ha:kubernetes:external_ips must be one of {', '.join(POLICIES)}, not {result['external_ips']!r}"
        )
    try:
        result["request_timeout"] = float(result["request_timeout"])
        result["conflict_retries"] = int(result["conflict_retries"])
    except (TypeError, ValueError) as exc:
        raise SaltInvocationError(f"edge_ha:kubernetes: bad request_timeout/conflict_retries: {exc}") from None
    if result["request_timeout"] <= 0 or result["conflict_retries"] < 0:
        raise SaltInvocationError("edge_ha:kubernetes: request_timeout must be > 0 and conflict_retries >= 0")
    return result


def normalize_address(value):
    """An IP address without prefix length, canonical form ('198.18.0.100/24' -> '198.18.0.100').

    Also accepts keepalived's ``"ADDR/LEN dev eth0 ..."`` form and dicts with an
    ``address`` (or ``ip``) key. Raises SaltInvocationError if it is not an IP.
    """
    if isinstance(value, dict):
        value = value.get("address", value.get("ip"))
    if not isinstance(value, str) or not value.strip():
        raise SaltInvocationError(f"not an IP address: {value!r}")
    text = value.strip().split()[0].split("/")[0]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise SaltInvocationError(f"not an IP address: {value!r}") from None


def _canon(value):
    """Comparison key of an address found on the Service (never raises)."""
    try:
        return str(ipaddress.ip_address(str(value).strip()))
    except ValueError:
        return str(value).strip()


def _as_list(value):
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return list(value)


def vips_from_model(model):
    """The VIPs (no prefix length) of every VRRP instance of the normalised model, by instance name."""
    vips = []
    for name in sorted((model or {}).get("vrrp_instances") or {}):
        for address in model["vrrp_instances"][name]["vips"]:
            if address not in vips:
                vips.append(address)
    return vips


def edge_nodes(nodes):
    """Normalize the node map: ``{edge: {"address": ip|None, "kubernetes_node": name}}``.

    ``nodes`` is ``edge_ha:nodes`` (a dict), or a list of node names.
    ``kubernetes_node`` defaults to the edge node's name.
    """
    if nodes is None:
        return {}
    if isinstance(nodes, str):
        nodes = _as_list(nodes)
    if isinstance(nodes, (list, tuple)):
        nodes = {n: {} for n in nodes}
    if not isinstance(nodes, dict):
        raise SaltInvocationError(f"nodes must be a dict (edge_ha:nodes) or a list of names, not {nodes!r}")
    result = {}
    for name, node in nodes.items():
        node = node or {}
        address = node.get("address")
        result[str(name)] = {
            "address": normalize_address(address) if address else None,
            "kubernetes_node": str(node.get("kubernetes_node") or name),
        }
    return result


def parse_managed(value):
    """The address list stored in the ownership annotation (JSON list; tolerant)."""
    if not value:
        return []
    try:
        data = json.loads(value)
    except ValueError:
        data = value.replace(",", " ").split()
    if not isinstance(data, list):
        log.warning("edge_k8s: ignoring malformed %s annotation %r", MANAGED_ANNOTATION, value)
        return []
    return [_canon(a) for a in data if isinstance(a, str) and a.strip()]


def format_managed(managed):
    """The annotation value for a managed address list."""
    return json.dumps(list(managed), separators=(",", ":"))


def desired_external_ips(
    current,
    managed_before,
    vips,
    node_addresses=None,
    healthy_nodes=None,
    policy="vips_and_healthy_nodes",
):
    """
    Compute the new ``spec.externalIPs`` list and the new managed set (pure).

    current
        the Service's ``spec.externalIPs`` now
    managed_before
        the addresses this plugin managed so far (the ownership annotation)
    vips
        the VIPs (addresses, prefix length tolerated)
    node_addresses
        ``{edge node: address}``
    healthy_nodes
        the edge nodes whose ingress pod is ready
    policy
        ``vips_and_healthy_nodes`` or ``vips_only``

    Returns ``(new_list, new_managed)``. Addresses in ``current`` that are not
    in ``managed_before`` belong to the user and are always kept (and never
    claimed, even when also desired); managed addresses that are no longer
    desired are removed; new desired addresses are appended (VIPs first, then
    node addresses by node name). The order of kept entries is preserved, so
    an unchanged situation gives ``new_list == current``.

    CLI Example:

    .. code-block:: bash

        salt-call edge_k8s.desired_external_ips '["198.18.0.100", "203.0.113.9"]' '["198.18.0.100"]' '["198.18.0.100"]' '{edge1: 198.18.0.11}' '[edge1]'
    """
    if policy not in POLICIES:
        raise SaltInvocationError(f"policy must be one of {', '.join(POLICIES)}, not {policy!r}")
    current = [str(a) for a in _as_list(current)]
    managed_set = {_canon(a) for a in _as_list(managed_before)}
    user = [a for a in current if _canon(a) not in managed_set]
    user_set = {_canon(a) for a in user}

    wanted = [normalize_address(v) for v in _as_list(vips)]
    if policy == "vips_and_healthy_nodes":
        addresses = node_addresses or {}
        for node in sorted({str(n) for n in _as_list(healthy_nodes)}):
            if addresses.get(node):
                wanted.append(normalize_address(addresses[node]))
    new_managed = []
    for address in wanted:
        if address not in user_set and address not in new_managed:
            new_managed.append(address)
    managed_now = set(new_managed)

    new_list, seen = [], set()
    for address in current:
        key = _canon(address)
        if key in user_set:
            new_list.append(address)  # the user's, untouched (even duplicates)
        elif key in managed_now and key not in seen:
            new_list.append(address)
            seen.add(key)
    for address in new_managed:
        if address not in seen and address not in user_set:
            new_list.append(address)
            seen.add(address)
    return new_list, new_managed


def needs_update(current, managed_before, new_list, new_managed):
    """True if the Service must be written (list or ownership record differs)."""
    return list(current) != list(new_list) or set(managed_before) != set(new_managed)


def build_patch(resource_version, new_list, new_managed):
    """The JSON merge patch: only spec.externalIPs and the ownership annotation.

    It carries ``metadata.resourceVersion``, so the API server rejects it with
    409 Conflict if the Service changed since it was read.
    """
    return {
        "metadata": {
            "resourceVersion": resource_version,
            "annotations": {MANAGED_ANNOTATION: format_managed(new_managed) if new_managed else None},
        },
        "spec": {"externalIPs": list(new_list) if new_list else None},
    }


def pod_is_ready(pod):
    """True if a Pod (wire dict) is Running, not being deleted, and Ready=True."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    if meta.get("deletionTimestamp") or status.get("phase") != "Running":
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


def summarize_ingress_pods(pods):
    """``{kubernetes node: {"pod": name, "ready": bool, "pods": {name: ready}}}`` (pure).

    ``pod`` is a ready pod's name if there is one (else the first by name);
    pods that are not scheduled yet are left out.
    """
    result = {}
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        node = (pod.get("spec") or {}).get("nodeName")
        if not node:
            continue
        entry = result.setdefault(node, {"pod": None, "ready": False, "pods": {}})
        ready = pod_is_ready(pod)
        entry["pods"][pod["metadata"]["name"]] = ready
        if ready and not entry["ready"]:
            entry["pod"], entry["ready"] = pod["metadata"]["name"], True
        elif entry["pod"] is None:
            entry["pod"] = pod["metadata"]["name"]
    return result


def node_internal_ip(node):
    """The InternalIP of a Node (wire dict), or None."""
    for address in (node.get("status") or {}).get("addresses") or []:
        if address.get("type") == "InternalIP" and address.get("address"):
            return address["address"]
    return None


def rbac_message(verb, resource, namespace=None, name=None, server_message=None):
    """The error text for a 403: what was denied and which grant is missing."""
    if namespace:
        where = f"in namespace {namespace}"
        grant = f'a Role in namespace "{namespace}"'
    else:
        where = "at cluster scope"
        grant = "a ClusterRole (cluster-scoped resource)"
    restricted = f', resourceNames: ["{name}"]' if name and verb in ("get", "patch", "update") else ""
    text = (
        f"forbidden: {verb} {resource} {where} — grant verb \"{verb}\" on resource \"{resource}\" "
        f"(API group \"\"{restricted}) in {grant}; see deploy/rbac.yaml"
    )
    if server_message:
        text += f". API server: {server_message}"
    return text


def external_ips_message(old, new, reason):
    """The message of the ``ExternalIPsUpdated`` Event: what was added/removed and why."""
    added = [a for a in new if a not in old]
    removed = [a for a in old if a not in new]
    return (
        f"{COMPONENT} changed spec.externalIPs: added {', '.join(added) or 'none'}; "
        f"removed {', '.join(removed) or 'none'}; now [{', '.join(new)}]. "
        f"Reason: {reason or 'not given'}"
    )


def check_event(reason, event_type):
    """Raise SaltInvocationError unless ``reason`` is UpperCamelCase (<= 128) and the type Normal/Warning."""
    if not isinstance(reason, str) or not EVENT_REASON_RE.match(reason) or len(reason) > 128:
        raise SaltInvocationError(
            f"reason must be an UpperCamelCase word of at most 128 characters (e.g. VIPFailover), not {reason!r}"
        )
    if event_type not in EVENT_TYPES:
        raise SaltInvocationError(f"event_type must be one of {', '.join(EVENT_TYPES)}, not {event_type!r}")


def event_body(service, reason, message, host, event_type="Normal", now=None):
    """A core/v1 Event about ``service`` (wire dict): every Event of this module is built here."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    meta = service["metadata"]
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": f"{meta['name']}.{time.time_ns():x}",
            "namespace": meta["namespace"],
            "labels": {"app.kubernetes.io/managed-by": COMPONENT},
        },
        "involvedObject": {
            "apiVersion": "v1",
            "kind": "Service",
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        },
        "reason": reason,
        "message": str(message)[:1024],
        "type": event_type,
        "source": {"component": COMPONENT, "host": host},
        "reportingComponent": COMPONENT,
        "reportingInstance": host,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


def format_owners(owners):
    """The ``edge-ha.salt/vip-owners`` annotation value: compact JSON, sorted keys."""
    return json.dumps(owners, sort_keys=True, separators=(",", ":"))


def parse_owners(value):
    """The annotation's value read back: a dict, None when absent, the raw text when it is not a JSON object."""
    if value is None:
        return None
    try:
        data = json.loads(value)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        log.warning("edge_k8s: malformed %s annotation %r; it will be rewritten", VIP_OWNERS_ANNOTATION, value)
        return value
    return data


def normalize_owners(owners):
    """``{vip: owner}`` in canonical form (pure): VIP without prefix length; owner a node name,
    None (nobody has it) or, when several nodes hold it (split brain), their sorted names as a list.

    An empty list means None and a one-name list the name. Raises SaltInvocationError naming the
    offending VIP.
    """
    if not isinstance(owners, dict):
        raise SaltInvocationError(f"owners must be a mapping {{vip: node name or null}}, not {owners!r}")
    result = {}
    for vip, owner in owners.items():
        address = normalize_address(vip)
        if address in result:
            raise SaltInvocationError(f"owners: VIP {address} is given twice")
        names = owner if isinstance(owner, (list, tuple)) else ([] if owner is None else [owner])
        if not all(isinstance(n, str) and n.strip() for n in names):
            raise SaltInvocationError(
                f"owners:{address}: the owner must be a node name, null or a list of node names, not {owner!r}"
            )
        names = sorted({n.strip() for n in names})
        result[address] = None if not names else names[0] if len(names) == 1 else names
    return result


def node_exclusions(nodes):
    """``{node name: reason}`` of the Nodes (wire dicts) that must not carry external traffic (pure).

    Reasons: ``cordoned`` (``spec.unschedulable: true``) and/or ``label
    node.kubernetes.io/exclude-from-external-load-balancers`` (any value),
    joined with "; ". Other nodes are left out.
    """
    result = {}
    for node in nodes:
        reasons = []
        if (node.get("spec") or {}).get("unschedulable") is True:
            reasons.append("cordoned")
        if EXCLUDE_LABEL in ((node.get("metadata") or {}).get("labels") or {}):
            reasons.append(f"label {EXCLUDE_LABEL}")
        if reasons:
            result[node["metadata"]["name"]] = "; ".join(reasons)
    return result


def backoff_delay(attempt, retry_after=None):
    """Seconds to wait before attempt ``attempt + 1`` (exponential, jittered, capped)."""
    if retry_after:
        return min(float(retry_after), 5.0)
    return min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)


# ---------------------------------------------------------------------------
# Salt context (only touched inside functions)


def _edge_ha_pillar():
    try:
        pillar = __pillar__  # noqa: F821 - injected by the Salt loader
    except NameError:
        return {}
    return (pillar or {}).get("edge_ha") or {}


def _host():
    try:
        return str(__opts__["id"])  # noqa: F821
    except (NameError, KeyError, TypeError):
        return socket.gethostname()


def _pillar_model():
    """The normalised ``edge_ha`` model of this minion's pillar (``edge_ha.normalize``), or None.

    None when the pillar has no ``edge_ha`` (then the defaults apply, no VIPs,
    no nodes); an invalid ``edge_ha`` raises SaltInvocationError listing every
    error, as ``edge_ha.model`` does.
    """
    data = _edge_ha_pillar()
    return edge_ha_model.normalize(data) if data else None


def _resolve(kubernetes, vips=None, nodes=None, need_vips=False):
    """Explicit arguments, else the pillar's model; returns (settings, vips, nodes)."""
    model = {}
    if kubernetes is None or (need_vips and vips is None) or nodes is None:
        model = _pillar_model() or {}
    k8s = settings(kubernetes if kubernetes is not None else model.get("kubernetes"))
    if need_vips:
        vips = vips_from_model(model) if vips is None else [normalize_address(v) for v in _as_list(vips)]
    return k8s, vips, edge_nodes(nodes if nodes is not None else model.get("nodes"))


# ---------------------------------------------------------------------------
# talking to Kubernetes


def _load_configuration(k8s):
    """A kubernetes.client.Configuration loaded the standard way, and where from."""
    configuration = k8s_client.Configuration()
    context = k8s.get("context")
    attempts = []
    try:
        if k8s.get("kubeconfig"):
            path = os.path.expanduser(str(k8s["kubeconfig"]))
            source = f"kubeconfig {path}"
            if not os.path.exists(path):
                raise CommandExecutionError(
                    f"cannot load Kubernetes configuration: edge_ha:kubernetes:kubeconfig {path} does not exist"
                )
            k8s_config.load_kube_config(
                config_file=path, context=context, client_configuration=configuration, persist_config=False
            )
        elif os.environ.get("KUBECONFIG"):
            source = f"KUBECONFIG={os.environ['KUBECONFIG']}"
            k8s_config.load_kube_config(
                config_file=os.environ["KUBECONFIG"],
                context=context,
                client_configuration=configuration,
                persist_config=False,
            )
        elif os.path.exists(os.path.expanduser("~/.kube/config")):
            source = "~/.kube/config"
            k8s_config.load_kube_config(
                config_file=os.path.expanduser("~/.kube/config"),
                context=context,
                client_configuration=configuration,
                persist_config=False,
            )
        else:
            source = "in-cluster service account"
            attempts = ["edge_ha:kubernetes:kubeconfig is unset", "KUBECONFIG is unset", "~/.kube/config is missing"]
            k8s_config.load_incluster_config(client_configuration=configuration)
    except (ConfigException, OSError, ValueError, TypeError, KeyError, AttributeError, yaml.YAMLError) as exc:
        if isinstance(exc, yaml.YAMLError):
            # the problem and where, never the parser's excerpt of the file (it may hold a token)
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            exc = f"not valid YAML ({getattr(exc, 'problem', None) or type(exc).__name__}{where})"
        if attempts:
            raise CommandExecutionError(
                f"cannot load Kubernetes configuration: {', '.join(attempts)}, and the in-cluster "
                f"service account failed: {exc}"
            ) from None
        context_text = f", context {context}" if context else ""
        raise CommandExecutionError(f"cannot load Kubernetes configuration from {source}{context_text}: {exc}") from None
    if context:
        source += f" (context {context})"
    return configuration, source


class _Session:
    """One API client for the duration of a public function call."""

    def __init__(self, k8s):
        self.k8s = k8s
        self.timeout = k8s["request_timeout"]
        configuration, self.source = _load_configuration(k8s)
        # urllib3 may resend an idempotent request (GET) once after a read
        # error (e.g. a pooled connection the server closed); it never
        # resends writes and never retries on HTTP statuses: 409/429/5xx are
        # handled here, with the API's semantics.
        configuration.retries = urllib3.Retry(
            total=1, connect=0, read=1, status=0, other=0, redirect=0,
            respect_retry_after_header=False, raise_on_status=False,
        )
        self.host = configuration.host
        self.api_client = k8s_client.ApiClient(configuration)
        self.api_client.user_agent = f"{COMPONENT} (kubernetes-python)"
        self.core = k8s_client.CoreV1Api(self.api_client)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            self.api_client.close()
        except Exception:  # pylint: disable=broad-except
            pass
        return False

    def error(self, exc, verb, resource, namespace=None, name=None):
        """Translate a client exception into a clear KubernetesAPIError."""
        target = f"{resource} {namespace + '/' if namespace else ''}{name}" if name else resource
        scope = f" in namespace {namespace}" if namespace and not name else ""
        if isinstance(exc, ApiException):
            status, reason, message = exc.status, exc.reason, None
            try:
                body = json.loads(exc.body or "{}")
                message, reason = body.get("message") or None, body.get("reason") or reason
            except ValueError:
                message = (exc.body or "").strip()[:200] or None
            retry_after = None
            try:
                retry_after = float((exc.headers or {}).get("Retry-After"))
            except (TypeError, ValueError):
                pass
            if status == 401:
                text = (
                    f"unauthorized: the Kubernetes API at {self.host} rejected the credentials from "
                    f"{self.source} while trying to {verb} {target}{scope} ({message or reason})"
                )
            elif status == 403:
                text = rbac_message(verb, resource, namespace, name, message)
            elif status == 404:
                hint = " (check edge_ha:kubernetes:service)" if resource == "services" else ""
                text = f"not found: {target} does not exist{hint} ({message or reason})"
            elif status == 409:
                text = f"conflict: {verb} {target}: {message or reason}"
            else:
                text = f"Kubernetes API error {status} {reason} on {verb} {target}{scope}: {message or reason}"
            return KubernetesAPIError(text, status=status, retry_after=retry_after)
        cause = exc.reason if isinstance(exc, urllib3.exceptions.MaxRetryError) else exc
        where = f"the Kubernetes API at {self.host} ({self.source})"
        # NewConnectionError subclasses ConnectTimeoutError: test it first.
        if isinstance(cause, urllib3.exceptions.NewConnectionError) or isinstance(cause, ConnectionRefusedError):
            return KubernetesAPIError(f"unreachable: cannot connect to {where} to {verb} {target}{scope}: {cause}")
        if isinstance(cause, (urllib3.exceptions.TimeoutError, TimeoutError, socket.timeout)):
            outcome = " (the outcome of the write is unknown; run again to converge)" if verb in ("patch", "create") else ""
            return KubernetesAPIError(
                f"timeout: no answer from {where} within {self.timeout:g}s "
                f"(edge_ha:kubernetes:request_timeout) to {verb} {target}{scope}{outcome}"
            )
        if isinstance(cause, (urllib3.exceptions.ProtocolError, OSError)):
            return KubernetesAPIError(f"connection failed: {where} while trying to {verb} {target}{scope}: {cause}")
        return KubernetesAPIError(f"{where} failed to {verb} {target}{scope}: {type(exc).__name__}: {exc}")

    def call(self, verb, resource, method, *args, namespace=None, name=None, **kwargs):
        """Run one API call (raw JSON), translating every failure."""
        _check_call(verb, resource)
        kwargs.setdefault("_request_timeout", self.timeout)
        try:
            response = getattr(self.core, method)(*args, _preload_content=False, **kwargs)
            try:
                data = response.data
            finally:
                response.release_conn()
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise self.error(exc, verb, resource, namespace, name) from None
        try:
            return json.loads(data)
        except ValueError:
            raise KubernetesAPIError(
                f"Kubernetes API at {self.host} sent a non-JSON answer to {verb} {resource}"
            ) from None

    def retrying(self, func):
        """Run ``func()``; retry transient errors (429/5xx) with backoff, bounded."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return func()
            except KubernetesAPIError as err:
                if not err.transient:
                    raise
                if attempt > self.k8s["conflict_retries"]:
                    raise KubernetesAPIError(f"{err} (gave up after {attempt} attempts)", status=err.status) from None
                time.sleep(backoff_delay(attempt, err.retry_after))


def _check_call(verb, resource):
    """Every API call must be in API_CALLS (and so granted by deploy/rbac.yaml)."""
    if not any(c[0] == verb and c[1] == resource for c in API_CALLS):
        raise RuntimeError(f"edge_k8s: ({verb}, {resource}) is not in API_CALLS; add it there and to deploy/rbac.yaml")


def _list_ingress_pods(session, node=None):
    pods = session.k8s["ingress_pods"]
    kwargs = {"label_selector": pods["label_selector"]}
    if node:
        kwargs["field_selector"] = f"spec.nodeName={node}"
    return session.retrying(
        lambda: session.call(
            "list", "pods", "list_namespaced_pod", pods["namespace"], namespace=pods["namespace"], **kwargs
        )
    )


def _node_items(session):
    return session.retrying(lambda: session.call("list", "nodes", "list_node")).get("items") or []


def _list_nodes(session):
    return {n["metadata"]["name"]: node_internal_ip(n) for n in _node_items(session)}


def _read_service(session):
    svc = session.k8s["service"]
    return session.call(
        "get", "services", "read_namespaced_service", svc["name"], svc["namespace"],
        namespace=svc["namespace"], name=svc["name"],
    )


def _update_service(session, plan, test=False):
    """Read the Service, plan, and PATCH it if the plan says so; retried as a whole.

    ``plan(service, attempt)`` returns ``(result, patch)``: ``patch`` is a
    JSON merge patch carrying the ``metadata.resourceVersion`` that was read
    (so a concurrent change gives 409), or None when nothing is to be written.
    On 409 Conflict and 429/5xx the Service is re-read and planned again, with
    backoff, at most ``conflict_retries`` times. Returns ``(result, patched
    Service or None)``; with ``test`` nothing is written.
    """
    svc = session.k8s["service"]
    max_attempts = session.k8s["conflict_retries"] + 1
    attempts = 0
    while True:
        attempts += 1
        try:
            result, patch = plan(_read_service(session), attempts)
            if patch is None or test:
                return result, None
            patched = session.call(
                "patch", "services", "patch_namespaced_service",
                svc["name"], svc["namespace"], patch,
                namespace=svc["namespace"], name=svc["name"],
                _content_type="application/merge-patch+json",
            )
            return result, patched
        except KubernetesAPIError as err:
            if (err.conflict or err.transient) and attempts < max_attempts:
                log.info("edge_k8s: %s; retrying (attempt %d of %d)", err, attempts + 1, max_attempts)
                time.sleep(backoff_delay(attempts, err.retry_after))
                continue
            if err.transient:
                raise KubernetesAPIError(
                    f"{err} (gave up after {attempts} attempts; nothing was written)", status=err.status
                ) from None
            if err.conflict:
                raise KubernetesAPIError(
                    f"conflict: service {svc['namespace']}/{svc['name']} kept changing; gave up after "
                    f"{attempts} attempts (edge_ha:kubernetes:conflict_retries={session.k8s['conflict_retries']}); "
                    "nothing was written",
                    status=409,
                ) from None
            raise


def _create_event(session, service, reason, message, event_type="Normal"):
    """Create an Event on ``service``; ``{"created", "name", "error"}``, never raises for an API failure."""
    event = event_body(service, reason, message, _host(), event_type)
    namespace = event["metadata"]["namespace"]
    try:
        session.call("create", "events", "create_namespaced_event", namespace, event, namespace=namespace)
    except KubernetesAPIError as err:
        log.warning("edge_k8s: the %s Event was not created: %s", reason, err)
        return {"created": False, "name": None, "error": str(err)}
    return {"created": True, "name": event["metadata"]["name"], "error": None}


def _health(session, nodes, address_source, with_pods=True):
    """Per edge node: kubernetes_node, address, address_from, pod, ready (+ warnings).

    address_source "pillar": the node map's ``address``, the Kubernetes
    node's InternalIP only when the map has none; "kubernetes": the other
    way round. Nodes are listed only when an InternalIP is needed.
    """
    pods = summarize_ingress_pods(_list_ingress_pods(session).get("items") or []) if with_pods else {}
    need_nodes = address_source == "kubernetes" or any(not n["address"] for n in nodes.values())
    internal = _list_nodes(session) if need_nodes else {}
    result, warnings = {}, []
    for name, node in sorted(nodes.items()):
        k8s_node = node["kubernetes_node"]
        k8s_address = normalize_address(internal[k8s_node]) if internal.get(k8s_node) else None
        first, second = ("pillar", "kubernetes") if address_source == "pillar" else ("kubernetes", "pillar")
        candidates = {"pillar": node["address"], "kubernetes": k8s_address}
        address, source = candidates[first], first
        if not address and candidates[second]:
            address, source = candidates[second], second
            if second == "pillar":
                missing = "not found" if k8s_node not in internal else "has no InternalIP"
                warnings.append(
                    f"Kubernetes node {k8s_node} (edge node {name}) {missing}; using the pillar address {address}"
                )
            else:
                warnings.append(
                    f"edge node {name} has no address in the node map; using the InternalIP {address} of {k8s_node}"
                )
        pod = pods.get(k8s_node, {})
        result[name] = {
            "kubernetes_node": k8s_node,
            "address": address,
            "address_from": source if address else None,
            "pod": pod.get("pod"),
            "ready": bool(pod.get("ready")),
        }
    return result, warnings


# ---------------------------------------------------------------------------
# Salt functions


def ingress_pods(kubernetes=None):
    """
    The ingress controller pods per Kubernetes node, with their readiness.

    Pods are listed in ``ingress_pods:namespace`` with
    ``ingress_pods:label_selector``. A pod counts as ready when it is Running,
    not being deleted and its Ready condition is True.

    kubernetes
        the ``edge_ha:kubernetes`` section (default: from the pillar)

    Returns ``{kubernetes node: {"pod": name, "ready": bool, "pods": {name: ready}}}``.

    CLI Example:

    .. code-block:: bash

        salt edge1 edge_k8s.ingress_pods
    """
    k8s, _, _ = _resolve(kubernetes, nodes={})
    with _Session(k8s) as session:
        return summarize_ingress_pods(_list_ingress_pods(session).get("items") or [])


def node_addresses(names=None, kubernetes=None):
    """
    The InternalIP of Kubernetes nodes.

    names
        one node name (read with ``get``), a list of names, or None for all
    kubernetes
        the ``edge_ha:kubernetes`` section (default: from the pillar)

    Returns ``{kubernetes node: InternalIP or None}``; a single name that does
    not exist raises an error, unknown names in a list are left out.

    CLI Example:

    .. code-block:: bash

        salt edge1 edge_k8s.node_addresses
        salt edge1 edge_k8s.node_addresses k8s-edge1
    """
    k8s, _, _ = _resolve(kubernetes, nodes={})
    with _Session(k8s) as session:
        if isinstance(names, str) and "," not in names:
            node = session.retrying(
                lambda: session.call("get", "nodes", "read_node", names, name=names)
            )
            return {names: node_internal_ip(node)}
        found = _list_nodes(session)
        if names is None:
            return found
        return {n: found[n] for n in _as_list(names) if n in found}


def node_health(nodes=None, address_source="pillar", kubernetes=None):
    """
    Per edge node: its Kubernetes node, address and ingress pod readiness.

    nodes
        the edge node map (``edge_ha:nodes``: ``{edge: {address, kubernetes_node}}``)
        or a list of names; default: from the pillar
    address_source
        ``pillar`` (the node map's ``address``, i.e. ``edge_ha:nodes:<n>:address``;
        the Kubernetes node's InternalIP if it has none) or ``kubernetes``
        (the InternalIP, falling back to the node map's address)
    kubernetes
        the ``edge_ha:kubernetes`` section (default: from the pillar)

    Returns ``{"nodes": {edge: {"kubernetes_node", "address", "address_from",
    "pod", "ready"}}, "healthy": [edge...], "warnings": [...]}``.

    CLI Example:

    .. code-block:: bash

        salt edge1 edge_k8s.node_health
    """
    if address_source not in ADDRESS_SOURCES:
        raise SaltInvocationError(f"address_source must be one of {', '.join(ADDRESS_SOURCES)}")
    k8s, _, nodes = _resolve(kubernetes, nodes=nodes)
    with _Session(k8s) as session:
        health, warnings = _health(session, nodes, address_source)
    return {
        "nodes": health,
        "healthy": [n for n, h in health.items() if h["ready"]],
        "warnings": warnings,
    }


def external_ips(kubernetes=None):
    """
    The Service's current ``spec.externalIPs`` and which of them this plugin manages.

    kubernetes
        the ``edge_ha:kubernetes`` section (default: from the pillar)

    Returns ``{"namespace", "name", "uid", "resource_version", "external_ips":
    [...], "managed": [...], "user": [...]}``; ``managed`` are the listed
    addresses recorded in the ``edge-ha.salt/managed-external-ips``
    annotation, ``user`` the others (never removed by this plugin).

    CLI Example:

    .. code-block:: bash

        salt edge1 edge_k8s.external_ips
    """
    k8s, _, _ = _resolve(kubernetes, nodes={})
    with _Session(k8s) as session:
        service = session.retrying(lambda: _read_service(session))
    return _service_summary(service)


def _service_summary(service):
    meta = service.get("metadata") or {}
    current = list((service.get("spec") or {}).get("externalIPs") or [])
    recorded = set(parse_managed((meta.get("annotations") or {}).get(MANAGED_ANNOTATION)))
    return {
        "namespace": meta.get("namespace"),
        "name": meta.get("name"),
        "uid": meta.get("uid"),
        "resource_version": meta.get("resourceVersion"),
        "external_ips": current,
        "managed": [a for a in current if _canon(a) in recorded],
        "user": [a for a in current if _canon(a) not in recorded],
    }


def set_external_ips(
    vips=None,
    nodes=None,
    healthy=None,
    reason="",
    policy=None,
    address_source="pillar",
    kubernetes=None,
    test=False,
):
    """
    Make the managed part of the Service's ``spec.externalIPs`` what it should be.

    desired = the VIPs, plus (policy ``vips_and_healthy_nodes``) the address of
    every healthy edge node. Addresses put on the Service by hand are kept;
    the ones this plugin manages are recorded in the
    ``edge-ha.salt/managed-external-ips`` annotation. The Service is read,
    the new list computed, and -- only if it differs -- written with one JSON
    merge PATCH of ``spec.externalIPs`` and that annotation, carrying the
    ``resourceVersion`` that was read; on 409 Conflict (or 429/5xx) it is
    re-read and retried with backoff, at most ``conflict_retries`` times.
    After a change a Kubernetes Event (reason ``ExternalIPsUpdated``, message
    with ``reason``) is created on the Service; if that fails the change
    stays and the failure is reported in ``event``.

    vips
        the VIP addresses (default: every ``edge_ha:vrrp_instances:*:virtual_ipaddress``)
    nodes
        the edge node map, ``{edge: {address, kubernetes_node}}`` (default: ``edge_ha:nodes``)
    healthy
        the edge nodes to count as healthy; default: those whose ingress pod is ready
    reason
        why (goes into the Event)
    policy
        ``vips_and_healthy_nodes`` or ``vips_only`` (default: ``edge_ha:kubernetes:external_ips``)
    address_source
        ``pillar`` (the node map's ``address``; InternalIP as fallback) or
        ``kubernetes`` (the node's InternalIP; the node map's address as fallback)
    kubernetes
        the ``edge_ha:kubernetes`` section (default: from the pillar)
    test
        compute only, write nothing

    Returns ``{"changed", "old", "new", "managed_before", "managed", "healthy",
    "attempts", "resource_version", "event", "warnings", "test"}``; ``changed``
    tells whether the Service was (or, with test, would be) written;
    ``event`` is ``{"created": bool, "name", "error"}`` or None when nothing
    changed.

    CLI Example:

    .. code-block:: bash

        salt edge1 edge_k8s.set_external_ips reason="edge2 ingress down"
        salt-call edge_k8s.set_external_ips vips='[198.18.0.100]' healthy='[edge1]' test=True
    """
    if address_source not in ADDRESS_SOURCES:
        raise SaltInvocationError(f"address_source must be one of {', '.join(ADDRESS_SOURCES)}")
    k8s, vips, nodes = _resolve(kubernetes, vips=vips, nodes=nodes, need_vips=True)
    policy = policy or k8s["external_ips"]
    if policy not in POLICIES:
        raise SaltInvocationError(f"policy must be one of {', '.join(POLICIES)}, not {policy!r}")
    if healthy is not None:
        healthy = [str(h) for h in _as_list(healthy)]
        unknown = [h for h in healthy if h not in nodes]
        if unknown:
            raise SaltInvocationError(f"healthy names unknown edge nodes: {', '.join(unknown)}")

    with _Session(k8s) as session:
        warnings, addresses = [], {}
        if policy == "vips_and_healthy_nodes" and nodes:
            health, warnings = _health(session, nodes, address_source, with_pods=healthy is None)
            if healthy is None:
                healthy = [n for n, h in health.items() if h["ready"]]
            addresses = {n: h["address"] for n, h in health.items()}
            for name in healthy:
                if not addresses.get(name):
                    warnings.append(f"healthy edge node {name} has no address; left out")
        healthy = sorted(healthy or [])

        def plan(service, attempt):
            summary = _service_summary(service)
            current = summary["external_ips"]
            managed_before = parse_managed((service["metadata"].get("annotations") or {}).get(MANAGED_ANNOTATION))
            new_list, new_managed = desired_external_ips(current, managed_before, vips, addresses, healthy, policy)
            changed = needs_update(current, managed_before, new_list, new_managed)
            result = {
                "changed": changed,
                "old": current,
                "new": new_list,
                "managed_before": managed_before,
                "managed": new_managed,
                "healthy": healthy,
                "attempts": attempt,
                "resource_version": summary["resource_version"],
                "event": None,
                "warnings": warnings,
                "test": bool(test),
            }
            return result, build_patch(summary["resource_version"], new_list, new_managed) if changed else None

        result, patched = _update_service(session, plan, test)
        if patched is None:
            return result
        result["resource_version"] = patched["metadata"].get("resourceVersion")
        result["new"] = list((patched.get("spec") or {}).get("externalIPs") or [])
        message = external_ips_message(result["old"], result["new"], reason)
        result["event"] = _create_event(session, patched, EVENT_REASON, message)
        return result


def set_vip_owners(owners, kubernetes=None, test=False):
    """
    Record which node really holds each VIP in the Service annotation ``edge-ha.salt/vip-owners``.

    owners
        ``{vip: node}`` -- the *observed* owner of each VIP (the node that has
        the address); null when no node has it; a list of node names when
        several hold it (split brain). The annotation is replaced as a whole.
    kubernetes
        the ``edge_ha:kubernetes`` section (default: from the pillar)
    test
        compute only, write nothing

    The value is compact JSON with sorted keys, e.g.
    ``{"198.18.0.100":"edge2","198.18.0.101":null,"198.18.0.102":["edge1","edge3"]}``
    (VIPs without prefix length, lists sorted; a one-name list is stored as
    the name). The Service is written only when the annotation differs: one
    JSON merge PATCH of that annotation carrying the ``resourceVersion`` that
    was read, re-read and retried on 409 Conflict and 429/5xx like
    ``set_external_ips`` (at most ``conflict_retries`` times).

    Returns ``{"changed", "old", "new", "test"}``: ``old`` is the annotation
    read (a dict; None when absent), ``new`` what is (or, with test, would
    be) stored.

    CLI Example:

    .. code-block:: bash

        salt-call edge_k8s.set_vip_owners '{"198.18.0.100": edge2, "198.18.0.101": null}'
        salt-call edge_k8s.set_vip_owners '{"198.18.0.100": [edge1, edge2]}' test=True
    """
    new = normalize_owners(owners)
    value = format_owners(new)
    k8s, _, _ = _resolve(kubernetes, nodes={})

    def plan(service, attempt):
        meta = service["metadata"]
        current = (meta.get("annotations") or {}).get(VIP_OWNERS_ANNOTATION)
        result = {"changed": current != value, "old": parse_owners(current), "new": new, "test": bool(test)}
        if current == value:
            return result, None
        return result, {"metadata": {"resourceVersion": meta["resourceVersion"], "annotations": {VIP_OWNERS_ANNOTATION: value}}}

    with _Session(k8s) as session:
        result, _ = _update_service(session, plan, test)
    return result


def record_event(reason, message, event_type="Normal", kubernetes=None):
    """
    Create a Kubernetes Event on the ingress controller Service.

    reason
        an UpperCamelCase word; the edge runner uses ``VIPFailover``,
        ``VIPFenced``, ``StaleVIPRemoved``, ``SplitBrainFenced``,
        ``NodeDrained``, ``NodeUndrained`` and ``RolloutStopped``
    message
        the text (cut at 1024 characters)
    event_type
        ``Normal`` or ``Warning``
    kubernetes
        the ``edge_ha:kubernetes`` section (default: from the pillar)

    The Event (core/v1) is created in the Service's namespace, with
    ``involvedObject`` the Service (uid included, so ``kubectl describe``
    shows it), ``source.component``/``reportingComponent`` ``salt-edge-ha``
    and ``source.host``/``reportingInstance`` the minion (master) id.

    Returns ``{"created": bool, "name", "error"}``. A failure to create the
    Event (API error, RBAC, no configuration) is logged and returned in
    ``error``, never raised: the caller's action must not fail because of
    its Event. Only an invalid ``reason`` or ``event_type`` raises
    SaltInvocationError.

    CLI Example:

    .. code-block:: bash

        salt-call edge_k8s.record_event VIPFailover "198.18.0.100 moved from edge1 to edge2"
        salt-call edge_k8s.record_event SplitBrainFenced "198.18.0.100 was on edge1 and edge2" event_type=Warning
    """
    check_event(reason, event_type)
    try:
        k8s, _, _ = _resolve(kubernetes, nodes={})
        with _Session(k8s) as session:
            service = session.retrying(lambda: _read_service(session))
            return _create_event(session, service, reason, message, event_type)
    except (CommandExecutionError, SaltInvocationError) as err:
        log.warning("edge_k8s: the %s Event was not created: %s", reason, err)
        return {"created": False, "name": None, "error": str(err)}


def excluded_nodes(kubernetes=None):
    """
    The Kubernetes nodes that must not carry external traffic, and why.

    A node is excluded when it is cordoned (``spec.unschedulable: true``,
    ``kubectl cordon``/``drain``) or has the label
    ``node.kubernetes.io/exclude-from-external-load-balancers`` (any value;
    the label Kubernetes' own load balancers honour).

    kubernetes
        the ``edge_ha:kubernetes`` section (default: from the pillar)

    Returns ``{kubernetes node: reason}``; reason ``cordoned``, ``label
    node.kubernetes.io/exclude-from-external-load-balancers`` or both joined
    with "; ". Nodes that are not excluded are left out. An API failure
    raises CommandExecutionError (a 403 names the missing ``list nodes``
    grant).

    CLI Example:

    .. code-block:: bash

        salt-call edge_k8s.excluded_nodes
    """
    k8s, _, _ = _resolve(kubernetes, nodes={})
    with _Session(k8s) as session:
        return node_exclusions(_node_items(session))


def wait_ingress_ready(node, ready=True, timeout=60, kubernetes=None, nodes=None):
    """
    Wait (list, then watch) until the ingress pod on ``node`` is ready (or not).

    node
        an edge node name (mapped through ``edge_ha:nodes:<node>:kubernetes_node``)
        or a Kubernetes node name
    ready
        the state to wait for: True (a ready ingress pod) or False (none ready)
    timeout
        seconds to wait at most
    kubernetes
        the ``edge_ha:kubernetes`` section (default: from the pillar)
    nodes
        the edge node map (default: ``edge_ha:nodes``)

    A dropped watch or an expired resourceVersion (410) restarts the
    list+watch. Returns ``{"node", "kubernetes_node", "reached": bool, "ready":
    bool, "pod", "waited": seconds, "watch_restarts": n}``.

    CLI Example:

    .. code-block:: bash

        salt edge1 edge_k8s.wait_ingress_ready edge1 timeout=120
    """
    k8s, _, nodes = _resolve(kubernetes, nodes=nodes)
    ready = bool(ready)
    timeout = float(timeout)
    k8s_node = nodes.get(str(node), {}).get("kubernetes_node", str(node))
    pods_cfg = k8s["ingress_pods"]
    start = time.monotonic()
    deadline = start + timeout
    restarts = 0

    def result(state, reached):
        summary = summarize_ingress_pods(list(state.values())).get(k8s_node, {})
        return {
            "node": str(node),
            "kubernetes_node": k8s_node,
            "reached": reached,
            "ready": bool(summary.get("ready")),
            "pod": summary.get("pod"),
            "waited": round(time.monotonic() - start, 3),
            "watch_restarts": restarts,
        }

    def node_ready(state):
        return bool(summarize_ingress_pods(list(state.values())).get(k8s_node, {}).get("ready"))

    with _Session(k8s) as session:
        while True:
            listing = _list_ingress_pods(session, k8s_node)
            state = {p["metadata"]["name"]: p for p in listing.get("items") or []}
            if node_ready(state) == ready:
                return result(state, True)
            resource_version = (listing.get("metadata") or {}).get("resourceVersion")
            _check_call("watch", "pods")
            watcher = k8s_watch.Watch()
            try:
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return result(state, False)
                    stream = watcher.stream(
                        session.core.list_namespaced_pod,
                        pods_cfg["namespace"],
                        label_selector=pods_cfg["label_selector"],
                        field_selector=f"spec.nodeName={k8s_node}",
                        resource_version=resource_version,
                        timeout_seconds=max(1, int(remaining)),
                        _request_timeout=(session.timeout, remaining + session.timeout),
                        # deserialize=False would be enough, but kubernetes 37.0.2's
                        # Watch then fails on ERROR events (KeyError 'raw_object'),
                        # e.g. the 410 of an expired resourceVersion.
                    )
                    try:
                        for event in stream:
                            obj = event.get("raw_object") or {}
                            name = (obj.get("metadata") or {}).get("name")
                            resource_version = (obj.get("metadata") or {}).get("resourceVersion", resource_version)
                            if event.get("type") == "DELETED":
                                state.pop(name, None)
                            elif event.get("type") in ("ADDED", "MODIFIED"):
                                state[name] = obj
                            if node_ready(state) == ready:
                                return result(state, True)
                    finally:
                        stream.close()  # ends the HTTP stream (the generator's finally)
            except ApiException as exc:
                if exc.status != 410:  # 410: resourceVersion too old -> list again
                    raise session.error(exc, "watch", "pods", pods_cfg["namespace"]) from None
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                log.info("edge_k8s: pod watch interrupted (%s); listing again", exc)
            restarts += 1
            if time.monotonic() >= deadline:
                return result(state, False)
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))


# ---------------------------------------------------------------------------
# LoadBalancer Services (issue #15): what the runner calls to serve them


LB_FIELD_SELECTOR = "spec.type=LoadBalancer"


def _lb_service_view(service):
    """The part of a Service (wire dict) the assignment and the status need (lb.service_record reads it)."""
    meta = service.get("metadata") or {}
    return {
        "metadata": {k: meta.get(k) for k in ("namespace", "name", "uid", "resourceVersion", "annotations")},
        "spec": dict(service.get("spec") or {}),
        "status": dict(service.get("status") or {}),
    }


def load_balancer_services(kubernetes=None):
    """
    Every Service of ``type: LoadBalancer`` in the cluster, whatever its class.

    One LIST of Services in all namespaces with the field selector
    ``spec.type=LoadBalancer``; transient errors (429/5xx) are retried.
    ``edge_ha_core.lb.service_record`` turns each item into the record the
    assignment plans with, and ``lb.is_ours`` tells which of them this
    project serves.

    kubernetes
        the ``edge_ha:kubernetes`` section (default: from the pillar)

    Returns ``{"resource_version": the list's (to watch from), "services":
    [{"metadata": {namespace, name, uid, resourceVersion, annotations},
    "spec": ..., "status": ...}]}`` sorted by namespace and name. A 403 names
    the missing ``list services`` grant (a ClusterRole).

    CLI Example:

    .. code-block:: bash

        salt-run salt.cmd edge_k8s.load_balancer_services
        salt-call edge_k8s.load_balancer_services
    """
    k8s, _, _ = _resolve(kubernetes, nodes={})
    with _Session(k8s) as session:
        listing = session.retrying(lambda: session.call(
            "list", "services", "list_service_for_all_namespaces", field_selector=LB_FIELD_SELECTOR))
    items = [_lb_service_view(s) for s in listing.get("items") or []]
    items.sort(key=lambda s: (s["metadata"]["namespace"] or "", s["metadata"]["name"] or ""))
    return {"resource_version": (listing.get("metadata") or {}).get("resourceVersion"), "services": items}


def watch_load_balancer_services(resource_version, timeout=60, kubernetes=None):
    """
    Wait until a LoadBalancer Service changes (added, modified, deleted) after
    ``resource_version``, or ``timeout`` seconds pass.

    resource_version
        where to start: the ``resource_version`` of ``load_balancer_services``
        (or of the previous call), so no change between the two is missed
    timeout
        seconds to wait at most (the server ends the watch then)
    kubernetes
        the ``edge_ha:kubernetes`` section (default: from the pillar)

    Returns ``{"events": [{"type", "namespace", "name", "resource_version"}],
    "resource_version": the newest seen, "expired": bool}``. The events are
    the ones of the first answer (a burst arrives together); ``expired``
    true (410 Gone: the version is too old) means: list again with
    ``load_balancer_services``, then watch from its resource_version. No
    event and not expired: the timeout passed; a resync is the caller's.

    CLI Example:

    .. code-block:: bash

        salt-call edge_k8s.watch_load_balancer_services 12345 timeout=30
    """
    k8s, _, _ = _resolve(kubernetes, nodes={})
    timeout = float(timeout)
    result = {"events": [], "resource_version": str(resource_version), "expired": False}
    with _Session(k8s) as session:
        _check_call("watch", "services")
        watcher = k8s_watch.Watch()
        stream = watcher.stream(
            session.core.list_service_for_all_namespaces,
            field_selector=LB_FIELD_SELECTOR,
            resource_version=str(resource_version),
            timeout_seconds=max(1, int(timeout)),
            _request_timeout=(session.timeout, timeout + session.timeout),
        )
        try:
            for event in stream:
                obj = event.get("raw_object") or {}
                meta = obj.get("metadata") or {}
                if event.get("type") == "ERROR":
                    if obj.get("code") == 410:
                        result["expired"] = True
                        break
                    raise KubernetesAPIError(f"watch services: {obj.get('message') or obj}", status=obj.get("code"))
                if event.get("type") == "BOOKMARK":
                    result["resource_version"] = meta.get("resourceVersion", result["resource_version"])
                    continue
                result["events"].append({"type": event.get("type"), "namespace": meta.get("namespace"),
                                         "name": meta.get("name"), "resource_version": meta.get("resourceVersion")})
                result["resource_version"] = meta.get("resourceVersion", result["resource_version"])
                break  # the caller reconciles now; it watches again from here
        except ApiException as exc:
            if exc.status != 410:
                raise session.error(exc, "watch", "services") from None
            result["expired"] = True
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise session.error(exc, "watch", "services") from None
        finally:
            stream.close()
    return result


def _service_name_args(namespace, name, resource_version):
    for label, value in (("namespace", namespace), ("name", name)):
        if not isinstance(value, str) or not value:
            raise SaltInvocationError(f"{label} must be the Service's {label}, not {value!r}")
    if resource_version is not None and (not isinstance(resource_version, (str, int)) or str(resource_version) == ""):
        raise SaltInvocationError(f"resource_version must be the Service's metadata.resourceVersion, "
                                  f"not {resource_version!r}")


def load_balancer_status_patch(addresses, resource_version):
    """The JSON merge patch of ``status.loadBalancer.ingress`` (pure): one ``{"ip"}`` per address, in order;
    no address removes the list. Carries ``metadata.resourceVersion`` when given."""
    ips = [normalize_address(a) for a in _as_list(addresses)]
    patch = {"status": {"loadBalancer": {"ingress": [{"ip": ip} for ip in ips] or None}}}
    if resource_version is not None:
        patch["metadata"] = {"resourceVersion": str(resource_version)}
    return patch


def set_load_balancer_status(namespace, name, addresses, resource_version, kubernetes=None, test=False):
    """
    Write ``status.loadBalancer.ingress`` of a LoadBalancer Service: one
    ``{"ip": address}`` per address; an empty list removes them.

    One JSON merge PATCH of the ``status`` subresource carrying
    ``resource_version`` (the version the caller planned from): if the
    Service changed since, the API server answers 409 and nothing is written
    (KubernetesAPIError with ``conflict`` true: list again and re-plan).
    Transient errors (429/5xx) are retried with the same version.

    namespace, name
        the Service
    addresses
        the addresses that answer now (the runner writes an address only
        once an edge node holds it)
    resource_version
        the Service's ``metadata.resourceVersion`` as listed; None writes
        unconditionally
    kubernetes
        the ``edge_ha:kubernetes`` section (default: from the pillar)
    test
        build the patch only

    Returns ``{"changed", "patch", "resource_version", "ingress", "test"}``:
    the new resourceVersion and the ingress list the API server stored.

    CLI Example:

    .. code-block:: bash

        salt-call edge_k8s.set_load_balancer_status apps web '[203.0.113.5]' 4711
        salt-call edge_k8s.set_load_balancer_status apps web '[]' 4712
    """
    _service_name_args(namespace, name, resource_version)
    patch = load_balancer_status_patch(addresses, resource_version)
    if test:
        return {"changed": True, "patch": patch, "resource_version": resource_version, "ingress": None, "test": True}
    k8s, _, _ = _resolve(kubernetes, nodes={})
    with _Session(k8s) as session:
        patched = session.retrying(lambda: session.call(
            "patch", "services/status", "patch_namespaced_service_status", name, namespace, patch,
            namespace=namespace, name=name, _content_type="application/merge-patch+json"))
    return {
        "changed": True,
        "patch": patch,
        "resource_version": patched["metadata"].get("resourceVersion"),
        "ingress": ((patched.get("status") or {}).get("loadBalancer") or {}).get("ingress") or [],
        "test": False,
    }


def _assignment_value(assignment):
    """The annotation text of an assignment given as lb.Assignment, lb.Recorded, a dict or its JSON; None removes."""
    if assignment is None:
        return None
    if isinstance(assignment, lb.Assignment):
        return assignment.annotation
    if isinstance(assignment, lb.Recorded):
        return lb.format_recorded(assignment)
    text = json.dumps(assignment) if isinstance(assignment, dict) else str(assignment)
    recorded = lb.parse_recorded(text)
    if recorded is None:
        raise SaltInvocationError(
            f"assignment must be {{address, pool, vrid}} (as edge_ha_core.lb records it) or null, not {assignment!r}")
    return lb.format_recorded(recorded)


def record_assignment(namespace, name, assignment, resource_version, kubernetes=None, test=False):
    """
    Record a Service's address assignment in its annotation
    ``edge-ha.salt/assignment`` (or remove it: ``assignment`` null), so the
    next plan keeps it (``edge_ha_core.lb``: stable across restarts).

    One JSON merge PATCH of that annotation only, carrying
    ``resource_version``: 409 (the Service changed since it was listed)
    raises KubernetesAPIError with ``conflict`` true and writes nothing.

    namespace, name
        the Service
    assignment
        ``{"address", "pool", "vrid"}`` (``lb.Assignment.annotation``), or
        null to remove the record
    resource_version
        the Service's ``metadata.resourceVersion`` as listed; None writes
        unconditionally
    kubernetes
        the ``edge_ha:kubernetes`` section (default: from the pillar)
    test
        build the patch only

    Returns ``{"changed", "patch", "resource_version", "test"}``.

    CLI Example:

    .. code-block:: bash

        salt-call edge_k8s.record_assignment apps web '{"address": "203.0.113.5", "pool": "public", "vrid": 100}' 4711
        salt-call edge_k8s.record_assignment apps web null 4712
    """
    _service_name_args(namespace, name, resource_version)
    patch = {"metadata": {"annotations": {lb.ASSIGNMENT_ANNOTATION: _assignment_value(assignment)}}}
    if resource_version is not None:
        patch["metadata"]["resourceVersion"] = str(resource_version)
    if test:
        return {"changed": True, "patch": patch, "resource_version": resource_version, "test": True}
    k8s, _, _ = _resolve(kubernetes, nodes={})
    with _Session(k8s) as session:
        patched = session.retrying(lambda: session.call(
            "patch", "services", "patch_namespaced_service", name, namespace, patch,
            namespace=namespace, name=name, _content_type="application/merge-patch+json"))
    return {"changed": True, "patch": patch, "resource_version": patched["metadata"].get("resourceVersion"),
            "test": False}


def service_event(namespace, name, reason, message, event_type="Normal", uid=None, kubernetes=None):
    """
    Create a Kubernetes Event on any Service (a LoadBalancer Service this
    project serves): why it got an address, or why not.

    namespace, name
        the Service
    reason
        an UpperCamelCase word: ``AddressAssigned``, ``AddressReleased``, or
        a refusal of ``edge_ha_core.lb`` (``AddressPoolExhausted``,
        ``AddressTaken``, ``AddressOutsidePools``, ``AddressPoolUnknown``,
        ``AddressRequestInvalid``; use ``event_type=Warning`` for those)
    message
        the text (cut at 1024 characters)
    event_type
        ``Normal`` or ``Warning``
    uid
        the Service's uid (``kubectl describe service`` shows Events whose
        involvedObject has it)
    kubernetes
        the ``edge_ha:kubernetes`` section (default: from the pillar)

    Returns ``{"created": bool, "name", "error"}``; an API failure is logged
    and returned in ``error``, never raised (as ``record_event``).

    CLI Example:

    .. code-block:: bash

        salt-call edge_k8s.service_event apps web AddressPoolExhausted "pool public: every address is taken" event_type=Warning
    """
    check_event(reason, event_type)
    _service_name_args(namespace, name, None)
    service = {"metadata": {"namespace": namespace, "name": name, "uid": uid}}
    try:
        k8s, _, _ = _resolve(kubernetes, nodes={})
        with _Session(k8s) as session:
            return _create_event(session, service, reason, message, event_type)
    except (CommandExecutionError, SaltInvocationError) as err:
        log.warning("edge_k8s: the %s Event was not created: %s", reason, err)
        return {"created": False, "name": None, "error": str(err)}
