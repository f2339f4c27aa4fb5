"""
A protocol-level Kubernetes API server emulator for tests.

``KubeAPIEmulator`` is a real HTTP server (``http.server`` with one thread per
connection) on 127.0.0.1 that speaks the Kubernetes REST/JSON protocol for the
part of core/v1 the edge-ha plugin uses: Services, Pods, Nodes, Events (and
Namespaces, so the real-cluster test backend can be exercised against it).

The official ``kubernetes`` Python client talks to it over a generated
kubeconfig file (``server: http://127.0.0.1:PORT`` and a bearer-token user),
exactly as it would talk to a real cluster.

Protocol coverage:

* GET of one object, LIST with ``labelSelector`` (``=``, ``==``, ``!=``,
  ``in``, ``notin``, exists, ``!key``) and ``fieldSelector`` (``=``, ``==``,
  ``!=`` on the fields the real API server supports for each resource);
* WATCH (``?watch=true``): a chunked stream of JSON lines ``{type, object}``;
  without ``resourceVersion`` (or with ``0``) it starts with synthetic ADDED
  events, with a resourceVersion it replays history after it, or sends an
  ERROR event with a 410 ``Expired`` Status when it is too old;
  ``timeoutSeconds`` ends the stream;
* POST (create, ``generateName``), PUT (update; 409 ``Conflict`` when
  ``metadata.resourceVersion`` is stale), DELETE;
* PATCH as ``application/json-patch+json`` (RFC 6902),
  ``application/merge-patch+json`` (RFC 7386) and
  ``application/strategic-merge-patch+json`` (merge keys for the fields used,
  ``$patch`` directives); a patch whose result carries a stale
  ``metadata.resourceVersion`` gets 409, as on a real API server (a patch
  without a resourceVersion is unconditional). Apply patches get 415;
* a server-assigned ``resourceVersion`` (one global counter, a string) and
  ``uid``; writes that change nothing do not bump the resourceVersion;
* Go's ``omitempty`` where the plugin reads it: a Node's
  ``spec.unschedulable: false`` is not stored (cordon/uncordon by any patch
  type reads back as on a real server); Events get the API server's legacy
  validation (``involvedObject.namespace`` must be the Event's namespace);
* the status of Pods, Services and Nodes is kept on PUT/PATCH of the main
  resource, and only the status changes through the ``/status`` subresource
  (PUT or PATCH, with the same 409 on a stale ``metadata.resourceVersion``);
  a Service's ``status.loadBalancer.ingress[].ip`` must be an IP address;
* Services of ``type: LoadBalancer``: ``spec.loadBalancerClass`` is a
  qualified name (``example.com/name``; unprefixed names are the users'), only with that type, immutable
  while the type stays LoadBalancer (the API server's validation);
* the ``DenyServiceExternalIPs`` admission plugin (``deny_external_ips=True``
  or ``set_deny_external_ips``): a create or update of a Service that adds an
  address to ``spec.externalIPs`` gets 403 Forbidden; removing addresses, the
  status subresource and the seed helpers are not affected;
* errors in the ``Status`` format (``kind: Status``, ``status: Failure``,
  ``message``, ``reason``, ``details``, ``code``); 401 without the token.

Fault injection (all thread-safe, counted, cleared by ``reset_faults``):
``inject_conflicts`` (N x 409 on the next writes, with an optional callback
run before each, e.g. to emulate a concurrent writer), ``inject_errors``
(5xx for N requests), ``set_latency``, ``drop_watches``, ``forbid`` (403 on a
verb/resource pair).

Every request is logged (``requests``: method, path, query, body, verb,
resource, namespace, name, status); seed helpers add nodes, pods and
services directly (``cordon``/``label_node`` change Nodes). A tiny "kubelet" marks Pods created *through the API* on a
known node Running, and Ready unless a container declares a readinessProbe.

Usage::

    with KubeAPIEmulator() as api:
        api.add_node("n1", "10.0.0.1")
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        ...

Run ``python -m tests.support.kube_api --help`` for a standalone server.
"""

import argparse
import copy
import datetime
import ipaddress
import contextlib
import json
import re
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional
from urllib.parse import parse_qs, urlsplit

__all__ = ["KubeAPIEmulator", "RequestRecord", "status_body"]

RESOURCES = {
    "pods": {"kind": "Pod", "namespaced": True, "status": True},
    "services": {"kind": "Service", "namespaced": True, "status": True},
    "events": {"kind": "Event", "namespaced": True, "status": False},
    "nodes": {"kind": "Node", "namespaced": False, "status": True},
    "namespaces": {"kind": "Namespace", "namespaced": False, "status": True},
}

# Field selectors the real API server accepts, per resource.
_COMMON_FIELDS = {"metadata.name", "metadata.namespace"}
FIELD_SELECTORS = {
    "pods": _COMMON_FIELDS
    | {
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    },
    "services": _COMMON_FIELDS | {"spec.clusterIP", "spec.type"},
    "nodes": _COMMON_FIELDS | {"spec.unschedulable"},
    "namespaces": _COMMON_FIELDS | {"status.phase"},
    "events": _COMMON_FIELDS
    | {
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    },
}

# Boolean fields the API server selects on as "true"/"false" (Go's zero value
# when the field is absent, e.g. a Node that was never cordoned).
FIELD_DEFAULTS = {("nodes", "spec.unschedulable"): "false", ("pods", "spec.hostNetwork"): "false"}

# Strategic-merge-patch merge keys (path of map keys -> merge key) for the
# lists of the objects emulated here; lists not named here are replaced.
STRATEGIC_MERGE_KEYS = {
    ("spec", "ports"): "port",
    ("spec", "containers"): "name",
    ("spec", "initContainers"): "name",
    ("spec", "volumes"): "name",
    ("status", "conditions"): "type",
    ("status", "addresses"): "type",
    ("metadata", "ownerReferences"): "uid",
}
# Lists of primitives with patchStrategy "merge" (set union).
STRATEGIC_MERGE_PRIMITIVES = {("metadata", "finalizers")}

WRITE_VERBS = ("create", "update", "patch", "delete")
# a qualified name as spec.loadBalancerClass needs it: [DNS-subdomain prefix "/"] name
_QUALIFIED_NAME_RE = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
HISTORY_LIMIT = 10000
_DELETE = object()


def _now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_body(code, reason, message, details=None):
    """A Kubernetes ``Status`` object for a failed request."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details or {},
        "code": code,
    }


class ApiError(Exception):
    """An error answered to the client as a ``Status`` object."""

    def __init__(self, code, reason, message, details=None, headers=None):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details or {}
        self.headers = headers or {}

    def body(self):
        return status_body(self.code, self.reason, self.message, self.details)


class _Dropped(Exception):
    """A watch connection was cut on purpose."""


@dataclass
class RequestRecord:
    """One request as the emulator saw it."""

    method: str
    path: str
    query: dict
    body: Any
    content_type: Optional[str]
    verb: Optional[str] = None
    resource: Optional[str] = None
    namespace: Optional[str] = None
    name: Optional[str] = None
    subresource: Optional[str] = None
    status: Optional[int] = None
    time: float = field(default_factory=time.time)

    @property
    def is_write(self):
        return self.method in ("POST", "PUT", "PATCH", "DELETE")


@dataclass
class _Fault:
    kind: str
    remaining: Optional[int]
    verbs: Optional[frozenset] = None
    resource: Optional[str] = None
    namespace: Optional[str] = None
    status: int = 503
    seconds: float = 0.0
    callback: Optional[Callable] = None
    after_events: int = 0
    retry_after: Optional[int] = None

    def matches(self, verb, resource, namespace):
        if self.verbs is not None and verb not in self.verbs:
            return False
        if self.resource is not None and resource != self.resource:
            return False
        if self.namespace is not None and namespace != self.namespace:
            return False
        return True


# --------------------------------------------------------------------------
# selectors


_LABEL_SET_RE = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
_LABEL_KEY_RE = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?/)?[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?$")


def _split_selector(text):
    """Split on commas that are not inside parentheses."""
    parts, depth, cur = [], 0, ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += char
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def parse_label_selector(text):
    """Parse a label selector into a list of (key, op, values) requirements."""
    reqs = []
    for part in _split_selector(text or ""):
        match = _LABEL_SET_RE.match(part)
        if match:
            values = {v.strip() for v in match.group(3).split(",") if v.strip()}
            reqs.append((match.group(1), match.group(2), values))
            continue
        for op in ("!=", "==", "="):
            if op in part:
                key, value = part.split(op, 1)
                key, value = key.strip(), value.strip()
                if not _LABEL_KEY_RE.match(key):
                    raise ApiError(400, "BadRequest", f"unable to parse requirement: invalid label key {key!r}")
                reqs.append((key, "!=" if op == "!=" else "=", {value}))
                break
        else:
            if part.startswith("!"):
                key, op = part[1:].strip(), "!exists"
            else:
                key, op = part, "exists"
            if not _LABEL_KEY_RE.match(key):
                raise ApiError(400, "BadRequest", f"unable to parse requirement: {part!r}")
            reqs.append((key, op, set()))
    return reqs


def label_selector_matches(reqs, labels):
    labels = labels or {}
    for key, op, values in reqs:
        present = key in labels
        value = labels.get(key)
        if op == "=" and (not present or value not in values):
            return False
        if op == "!=" and present and value in values:
            return False
        if op == "in" and (not present or value not in values):
            return False
        if op == "notin" and present and value in values:
            return False
        if op == "exists" and not present:
            return False
        if op == "!exists" and present:
            return False
    return True


def parse_field_selector(text, resource):
    reqs = []
    for part in _split_selector(text or ""):
        for op in ("!=", "==", "="):
            if op in part:
                key, value = part.split(op, 1)
                key, value = key.strip(), value.strip()
                break
        else:
            raise ApiError(400, "BadRequest", f"invalid selector: '{part}'; can't understand '{part}'")
        if key not in FIELD_SELECTORS.get(resource, _COMMON_FIELDS):
            raise ApiError(400, "BadRequest", f'field label not supported: {key}')
        reqs.append((key, "!=" if op == "!=" else "=", value, FIELD_DEFAULTS.get((resource, key), "")))
    return reqs


def _field_value(obj, dotted):
    cur = obj
    for part in dotted.split("."):
        if not isinstance(cur, dict):
            return ""
        cur = cur.get(part)
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    if isinstance(cur, dict):  # events' "source" selects on source.component
        return cur.get("component", "")
    return str(cur)


def field_selector_matches(reqs, obj):
    for key, op, value, default in reqs:
        actual = _field_value(obj, key) or default
        if op == "=" and actual != value:
            return False
        if op == "!=" and actual == value:
            return False
    return True


# --------------------------------------------------------------------------
# patches


def merge_patch(target, patch):
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(orig, patch, path=()):
    """Strategic merge patch for the fields of the emulated objects."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "delete":
        return _DELETE
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive is not None:
        raise ApiError(400, "BadRequest", f"unknown patch type: {directive}")
    result = copy.deepcopy(orig) if isinstance(orig, dict) else {}
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            name = key.split("/", 1)[1]
            result[name] = [v for v in result.get(name) or [] if v not in value]
            continue
        if value is None:
            result.pop(key, None)
            continue
        sub_path = path + (key,)
        current = result.get(key)
        if isinstance(value, dict):
            merged = strategic_merge_patch(current if isinstance(current, dict) else {}, value, sub_path)
            if merged is _DELETE:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list):
            merge_key = STRATEGIC_MERGE_KEYS.get(sub_path)
            if merge_key is not None:
                result[key] = _merge_keyed_list(current or [], value, merge_key, sub_path)
            elif sub_path in STRATEGIC_MERGE_PRIMITIVES:
                merged_list = list(current or [])
                merged_list += [v for v in value if v not in merged_list]
                result[key] = merged_list
            else:
                result[key] = copy.deepcopy(value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def _merge_keyed_list(current, patch_items, merge_key, path):
    if any(isinstance(i, dict) and i.get("$patch") == "replace" and len(i) == 1 for i in patch_items):
        return [copy.deepcopy(i) for i in patch_items if not (isinstance(i, dict) and "$patch" in i)]
    result = copy.deepcopy(list(current))
    for item in patch_items:
        if not isinstance(item, dict) or merge_key not in item:
            raise ApiError(400, "BadRequest", f"map in {'.'.join(path)} is missing merge key {merge_key!r}")
        index = next((n for n, old in enumerate(result) if old.get(merge_key) == item[merge_key]), None)
        if item.get("$patch") == "delete":
            if index is not None:
                result.pop(index)
            continue
        if index is None:
            result.append({k: copy.deepcopy(v) for k, v in item.items() if k != "$patch"})
        else:
            result[index] = strategic_merge_patch(result[index], item, path)
    return result


def _pointer_tokens(pointer):
    if pointer == "":
        return []
    if not isinstance(pointer, str) or not pointer.startswith("/"):
        raise ApiError(400, "BadRequest", f"invalid JSON pointer {pointer!r}")
    return [t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/")]


def _unprocessable(message):
    return ApiError(422, "Invalid", f"the server rejected our request due to an error in our request: {message}")


def _pointer_get(doc, tokens):
    cur = doc
    for token in tokens:
        if isinstance(cur, dict) and token in cur:
            cur = cur[token]
        elif isinstance(cur, list) and token.isdigit() and int(token) < len(cur):
            cur = cur[int(token)]
        else:
            raise _unprocessable(f"path /{'/'.join(tokens)} not found")
    return cur


def json_patch(doc, operations):
    """RFC 6902 JSON patch."""
    if not isinstance(operations, list):
        raise ApiError(400, "BadRequest", "json patch must be a list of operations")
    doc = copy.deepcopy(doc)

    def add(tokens, value):
        nonlocal doc
        if not tokens:
            doc = value
            return
        parent = _pointer_get(doc, tokens[:-1])
        last = tokens[-1]
        if isinstance(parent, dict):
            parent[last] = value
        elif isinstance(parent, list):
            if last == "-":
                parent.append(value)
            elif last.isdigit() and int(last) <= len(parent):
                parent.insert(int(last), value)
            else:
                raise _unprocessable(f"index {last} out of range")
        else:
            raise _unprocessable("cannot add to a scalar")

    def remove(tokens):
        nonlocal doc
        if not tokens:
            raise _unprocessable("cannot remove the whole document")
        parent = _pointer_get(doc, tokens[:-1])
        last = tokens[-1]
        if isinstance(parent, dict) and last in parent:
            return parent.pop(last)
        if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
            return parent.pop(int(last))
        raise _unprocessable(f"path /{'/'.join(tokens)} not found")

    for op in operations:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise ApiError(400, "BadRequest", f"invalid json patch operation {op!r}")
        kind, tokens = op["op"], _pointer_tokens(op["path"])
        if kind == "add":
            add(tokens, copy.deepcopy(op.get("value")))
        elif kind == "remove":
            remove(tokens)
        elif kind == "replace":
            _pointer_get(doc, tokens)  # must exist
            if tokens:
                remove(tokens)
            add(tokens, copy.deepcopy(op.get("value")))
        elif kind == "move":
            value = remove(_pointer_tokens(op.get("from")))
            add(tokens, value)
        elif kind == "copy":
            add(tokens, copy.deepcopy(_pointer_get(doc, _pointer_tokens(op.get("from")))))
        elif kind == "test":
            if _pointer_get(doc, tokens) != op.get("value"):
                raise _unprocessable(f"test operation on {op['path']} failed")
        else:
            raise ApiError(400, "BadRequest", f"unknown json patch operation {kind!r}")
    return doc


# --------------------------------------------------------------------------
# the server


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class KubeAPIEmulator:
    """A Kubernetes API server emulator on 127.0.0.1 (see module docstring)."""

    def __init__(self, token="emulator-token", user="system:serviceaccount:salt-edge-ha:salt-edge-ha", port=0,
                 deny_external_ips=False):
        self.token = token
        self.deny_external_ips = deny_external_ips
        self.user = user
        self._requested_port = port
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._objects = {}
        self._rv = 100
        self._history = []
        self._history_floor = self._rv
        self._faults = []
        self._log = []
        self._ip_counter = 10
        self._server = None
        self._thread = None
        self._stopping = threading.Event()
        self._connections = set()
        self._handler_threads = set()
        self.default_watch_timeout = 300.0

    # ------------------------------------------------------------ lifecycle

    def start(self):
        handler = type("_BoundHandler", (_Handler,), {"emulator": self})
        self._server = _Server(("127.0.0.1", self._requested_port), handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="kube-api-emulator", daemon=True
        )
        self._thread.start()
        return self

    def stop(self):
        """Stop serving, cut open connections (watches too) and join threads."""
        if self._server is None:
            return
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        self._server.shutdown()
        with self._lock:
            connections = list(self._connections)
            threads = list(self._handler_threads)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._server.server_close()
        self._thread.join(5)
        for thread in threads:
            thread.join(5)
        self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    @property
    def port(self):
        return self._server.server_address[1]

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def kubeconfig(self, context="kube-emulator", namespace="default", token=None):
        """The kubeconfig (as a dict) for this server."""
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": context, "cluster": {"server": self.url}}],
            "users": [{"name": f"{context}-user", "user": {"token": token or self.token}}],
            "contexts": [
                {"name": context, "context": {"cluster": context, "user": f"{context}-user", "namespace": namespace}}
            ],
            "current-context": context,
        }

    def write_kubeconfig(self, path, context="kube-emulator", namespace="default", token=None):
        """Write a kubeconfig file (JSON is valid YAML) and return its path."""
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(self.kubeconfig(context, namespace, token), fh, indent=2)
        return str(path)

    # ------------------------------------------------------------ request log

    @property
    def requests(self):
        """A copy of the request log."""
        with self._lock:
            return list(self._log)

    def clear_requests(self):
        with self._lock:
            self._log.clear()

    def find_requests(self, method=None, verb=None, resource=None, name=None):
        return [
            r
            for r in self.requests
            if (method is None or r.method == method)
            and (verb is None or r.verb == verb)
            and (resource is None or r.resource == resource)
            and (name is None or r.name == name)
        ]

    def writes(self):
        return [r for r in self.requests if r.is_write]

    # ------------------------------------------------------------ faults

    def _add_fault(self, fault):
        with self._lock:
            self._faults.append(fault)
        return fault

    def inject_conflicts(self, count, resource="services", verbs=("update", "patch"), callback=None):
        """Answer the next ``count`` matching writes with 409 Conflict.

        ``callback(emulator, record)`` runs before each answer (outside the
        server lock), e.g. to change the object like a concurrent writer.
        """
        return self._add_fault(
            _Fault("conflict", count, frozenset(verbs) if verbs else None, resource, callback=callback)
        )

    def inject_errors(self, count, status=503, verbs=None, resource=None, retry_after=None):
        """Answer the next ``count`` matching requests with a 5xx (or any) Status."""
        return self._add_fault(
            _Fault("error", count, frozenset(verbs) if verbs else None, resource, status=status, retry_after=retry_after)
        )

    def set_latency(self, seconds, verbs=None, resource=None, count=None):
        """Delay matching requests by ``seconds`` (``count`` None: until reset)."""
        return self._add_fault(
            _Fault("latency", count, frozenset(verbs) if verbs else None, resource, seconds=seconds)
        )

    def drop_watches(self, count=1, after_events=0, resource=None):
        """Cut the next ``count`` watch connections after ``after_events`` events."""
        return self._add_fault(_Fault("drop", count, frozenset({"watch"}), resource, after_events=after_events))

    def forbid(self, verb, resource, namespace=None):
        """Answer (verb, resource) with 403 Forbidden until ``allow``/``reset_faults``."""
        return self._add_fault(_Fault("forbid", None, frozenset({verb}), resource, namespace))

    def allow(self, verb, resource):
        with self._lock:
            self._faults = [
                f
                for f in self._faults
                if not (f.kind == "forbid" and f.verbs == frozenset({verb}) and f.resource == resource)
            ]

    def set_deny_external_ips(self, enabled=True):
        """Turn the ``DenyServiceExternalIPs`` admission plugin on or off (a hardened cluster)."""
        with self._lock:
            self.deny_external_ips = bool(enabled)

    def reset_faults(self):
        with self._lock:
            self._faults.clear()

    def _take_fault(self, kind, verb, resource, namespace):
        with self._lock:
            for fault in self._faults:
                if fault.kind != kind or not fault.matches(verb, resource, namespace):
                    continue
                if fault.remaining is not None:
                    if fault.remaining <= 0:
                        continue
                    fault.remaining -= 1
                return fault
        return None

    def compact_history(self):
        """Forget watch history: older resourceVersions get 410 Gone."""
        with self._lock:
            self._history.clear()
            self._history_floor = self._rv

    # ------------------------------------------------------------ store

    def _key(self, resource, namespace, name):
        return (resource, namespace if RESOURCES[resource]["namespaced"] else None, name)

    def _commit(self, resource, obj, event_type):
        """Store (or delete) an object with a new resourceVersion; lock held."""
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        key = self._key(resource, obj["metadata"].get("namespace"), obj["metadata"]["name"])
        if event_type == "DELETED":
            self._objects.pop(key, None)
        else:
            self._objects[key] = obj
        self._history.append((self._rv, event_type, resource, obj["metadata"].get("namespace"), copy.deepcopy(obj)))
        if len(self._history) > HISTORY_LIMIT:
            dropped = self._history.pop(0)
            self._history_floor = dropped[0]
        self._cond.notify_all()
        return copy.deepcopy(obj)

    def _new_object(self, resource, obj, via_api):
        meta = obj.setdefault("metadata", {})
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        meta.pop("resourceVersion", None)
        obj["kind"] = RESOURCES[resource]["kind"]
        obj["apiVersion"] = "v1"
        if resource == "services":
            spec = obj.setdefault("spec", {})
            spec.setdefault("type", "ClusterIP")
            spec.setdefault("sessionAffinity", "None")
            if "clusterIP" not in spec:
                self._ip_counter += 1
                spec["clusterIP"] = f"10.96.{self._ip_counter // 250}.{self._ip_counter % 250 + 1}"
                spec["clusterIPs"] = [spec["clusterIP"]]
            if via_api or "status" not in obj:  # the API server ignores a status sent with the create
                obj["status"] = {"loadBalancer": {}}
        elif resource == "pods":
            obj.setdefault("spec", {})
            if via_api and "status" not in obj:
                obj["status"] = self._kubelet_status(obj)
        elif resource == "namespaces":
            obj["status"] = {"phase": "Active"}
        elif resource == "nodes":
            obj.setdefault("status", {})
        return obj

    def _kubelet_status(self, pod):
        node = self._objects.get(("nodes", None, pod["spec"].get("nodeName")))
        if node is None:
            return {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False"}]}
        ready = not any("readinessProbe" in c for c in pod["spec"].get("containers", []))
        return _pod_status(ready, _internal_ip(node), f"10.244.0.{len(self._objects) % 250 + 2}")

    @staticmethod
    def _omit_empty(resource, obj):
        """Fields the API server does not send when empty (Go ``omitempty``): a
        Node's ``spec.unschedulable: false`` is stored as no field at all, so an
        uncordon by ``{"spec": {"unschedulable": false}}`` or ``null`` reads the same."""
        if resource == "nodes" and isinstance(obj.get("spec"), dict) and obj["spec"].get("unschedulable") is False:
            del obj["spec"]["unschedulable"]

    def _admit(self, resource, old, new, sub):
        """Admission plugins after validation: ``DenyServiceExternalIPs`` (net-new externalIPs -> 403)."""
        if resource != "services" or sub is not None or not self.deny_external_ips:
            return
        before = set(((old or {}).get("spec") or {}).get("externalIPs") or [])
        added = [ip for ip in (new.get("spec") or {}).get("externalIPs") or [] if ip not in before]
        if added:
            name = new["metadata"]["name"]
            raise ApiError(
                403, "Forbidden",
                f'services "{name}" is forbidden: use of external IPs is denied by admission control',
                {"name": name, "kind": "services"},
            )

    def _validate_service(self, obj, old):
        name = obj["metadata"]["name"]
        spec = obj.get("spec") or {}
        details = {"name": name, "kind": "Service"}
        cls = spec.get("loadBalancerClass")
        if cls is not None:
            if spec.get("type") != "LoadBalancer":
                raise ApiError(422, "Invalid", f'Service "{name}" is invalid: spec.loadBalancerClass: Invalid value: '
                                               f'"{cls}": may only be used when `type` is \'LoadBalancer\'', details)
            if not isinstance(cls, str) or not _QUALIFIED_NAME_RE.match(cls):
                raise ApiError(422, "Invalid", f'Service "{name}" is invalid: spec.loadBalancerClass: Invalid value: '
                                               f'"{cls}": must be a qualified name (e.g. example.com/my-lb)', details)
        old_spec = (old or {}).get("spec") or {}
        if old is not None and old_spec.get("type") == "LoadBalancer" and spec.get("type") == "LoadBalancer" \
                and old_spec.get("loadBalancerClass") != cls:
            raise ApiError(422, "Invalid", f'Service "{name}" is invalid: spec.loadBalancerClass: Invalid value: '
                                           f'"{cls}": Field is immutable', details)
        for index, ingress in enumerate(((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []):
            ip = ingress.get("ip") if isinstance(ingress, dict) else None
            if ip is None:
                continue
            try:
                ipaddress.ip_address(ip)
            except (ValueError, TypeError):
                raise ApiError(422, "Invalid", f'Service "{name}" is invalid: status.loadBalancer.ingress[{index}].ip: '
                                               f'Invalid value: "{ip}": must be a valid IP address', details) from None

    def _validate(self, resource, obj, old=None):
        self._omit_empty(resource, obj)
        meta = obj.get("metadata")
        if not isinstance(meta, dict) or not meta.get("name"):
            raise ApiError(422, "Invalid", f"{RESOURCES[resource]['kind']} is invalid: metadata.name: Required value")
        name = meta["name"]
        kind = RESOURCES[resource]["kind"]
        if not re.match(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", name) or len(name) > 253:
            raise ApiError(
                422, "Invalid", f'{kind} "{name}" is invalid: metadata.name: Invalid value: "{name}"',
                {"name": name, "kind": kind},
            )
        for which in ("labels", "annotations"):
            values = meta.get(which)
            if values is None:
                continue
            if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
                raise ApiError(
                    400, "BadRequest",
                    f"json: cannot unmarshal into Go struct field ObjectMeta.metadata.{which} of type string",
                )
        if resource == "events":
            # the API server's legacy Event validation (no eventTime): the
            # involved object's namespace must be the Event's
            involved = obj.get("involvedObject") or {}
            wanted = involved.get("namespace") or ""
            if wanted != meta.get("namespace") and not (wanted == "" and meta.get("namespace") in ("", "default")):
                raise ApiError(
                    422, "Invalid",
                    f'Event "{name}" is invalid: involvedObject.namespace: Invalid value: "{wanted}": '
                    "does not match event.namespace",
                    {"name": name, "kind": "Event"},
                )
        if resource == "services":
            self._validate_service(obj, old)
            ips = (obj.get("spec") or {}).get("externalIPs")
            if ips is not None:
                if not isinstance(ips, list):
                    raise ApiError(400, "BadRequest", "json: cannot unmarshal into Go struct field ServiceSpec.spec.externalIPs of type []string")
                for index, ip in enumerate(ips):
                    try:
                        ipaddress.ip_address(ip)
                    except (ValueError, TypeError):
                        raise ApiError(
                            422, "Invalid",
                            f'Service "{name}" is invalid: spec.externalIPs[{index}]: Invalid value: "{ip}": '
                            "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                            {"name": name, "kind": "Service"},
                        ) from None

    def put_object(self, resource, obj):
        """Create or replace an object directly (seeding); returns a copy."""
        obj = copy.deepcopy(obj)
        with self._lock:
            key = self._key(resource, obj["metadata"].get("namespace"), obj["metadata"]["name"])
            old = self._objects.get(key)
            if old is None:
                self._new_object(resource, obj, via_api=False)
                return self._commit(resource, obj, "ADDED")
            for k in ("uid", "creationTimestamp"):
                obj["metadata"][k] = old["metadata"][k]
            obj["kind"], obj["apiVersion"] = old["kind"], old["apiVersion"]
            return self._commit(resource, obj, "MODIFIED")

    def get_object(self, resource, namespace, name):
        """A copy of the stored object, or None."""
        with self._lock:
            obj = self._objects.get(self._key(resource, namespace, name))
            return copy.deepcopy(obj)

    def list_objects(self, resource, namespace=None):
        with self._lock:
            return [
                copy.deepcopy(o)
                for (res, ns, _), o in sorted(self._objects.items(), key=lambda kv: (kv[0][1] or "", kv[0][2]))
                if res == resource and (namespace is None or ns == namespace)
            ]

    def mutate(self, resource, namespace, name, fn):
        """Change a stored object like another API client would (new resourceVersion)."""
        with self._lock:
            obj = copy.deepcopy(self._objects[self._key(resource, namespace, name)])
            fn(obj)
            return self._commit(resource, obj, "MODIFIED")

    def delete_object(self, resource, namespace, name):
        with self._lock:
            obj = copy.deepcopy(self._objects[self._key(resource, namespace, name)])
            return self._commit(resource, obj, "DELETED")

    # ------------------------------------------------------------ seeding

    def add_namespace(self, name):
        return self.put_object("namespaces", {"metadata": {"name": name}})

    def add_node(self, name, internal_ip, labels=None, ready=True, hostname=None):
        """Add a Node with an InternalIP (and Hostname) address."""
        return self.put_object(
            "nodes",
            {
                "metadata": {"name": name, "labels": dict(labels or {"kubernetes.io/hostname": name})},
                "spec": {},
                "status": {
                    "addresses": [
                        {"type": "InternalIP", "address": internal_ip},
                        {"type": "Hostname", "address": hostname or name},
                    ],
                    "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                },
            },
        )

    def cordon(self, name, unschedulable=True):
        """Mark a Node unschedulable (``kubectl cordon``) or not (``uncordon``), like another client."""

        def change(node):
            spec = node.setdefault("spec", {})
            if unschedulable:
                spec["unschedulable"] = True
            else:
                spec.pop("unschedulable", None)

        return self.mutate("nodes", None, name, change)

    def label_node(self, name, labels):
        """Set (value) or remove (None) labels of a Node, like ``kubectl label node``."""

        def change(node):
            current = node["metadata"].setdefault("labels", {})
            for key, value in labels.items():
                if value is None:
                    current.pop(key, None)
                else:
                    current[key] = value

        return self.mutate("nodes", None, name, change)

    def add_pod(self, namespace, name, node, ready=True, labels=None, phase="Running"):
        """Add a Pod scheduled on ``node`` whose Ready condition is ``ready``."""
        node_obj = self.get_object("nodes", None, node)
        host_ip = _internal_ip(node_obj) if node_obj else None
        status = _pod_status(ready, host_ip, f"10.244.1.{len(self._objects) % 250 + 2}")
        status["phase"] = phase
        return self.put_object(
            "pods",
            {
                "metadata": {"name": name, "namespace": namespace, "labels": dict(labels or {})},
                "spec": {"nodeName": node, "containers": [{"name": "controller", "image": "ingress-controller"}]},
                "status": status,
            },
        )

    def set_pod_ready(self, namespace, name, ready):
        """Flip the Ready (and ContainersReady) condition of a Pod."""

        def flip(pod):
            for cond in pod["status"].setdefault("conditions", []):
                if cond["type"] in ("Ready", "ContainersReady"):
                    cond["status"] = "True" if ready else "False"

        return self.mutate("pods", namespace, name, flip)

    def add_service(self, namespace, name, external_ips=None, annotations=None, labels=None, ports=None, **spec):
        """Add a Service (ClusterIP by default) with optional externalIPs."""
        body_spec = {"ports": ports or [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 80}]}
        if external_ips is not None:
            body_spec["externalIPs"] = list(external_ips)
        body_spec.update(spec)
        meta = {"name": name, "namespace": namespace}
        if annotations:
            meta["annotations"] = dict(annotations)
        if labels:
            meta["labels"] = dict(labels)
        return self.put_object("services", {"metadata": meta, "spec": body_spec})

    # ------------------------------------------------------------ request handling

    def _record(self, record):
        with self._lock:
            self._log.append(record)

    def handle(self, handler):
        """Serve one request (called from the handler thread)."""
        split = urlsplit(handler.path)
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        content_type = (handler.headers.get("Content-Type") or "").split(";")[0].strip() or None
        body = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
        record = RequestRecord(handler.command, split.path, query, body, content_type)
        self._record(record)
        try:
            self._route(handler, record, split.path, query, body, raw)
        except _Dropped:
            record.status = -1
        except ApiError as err:
            record.status = err.code
            handler.send_json(err.code, err.body(), err.headers)

    def _parse_path(self, path):
        parts = [p for p in path.split("/") if p]
        if parts[:2] != ["api", "v1"]:
            return None
        rest = parts[2:]
        namespaced = {r for r, m in RESOURCES.items() if m["namespaced"]}
        if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] in namespaced:
            if len(rest) > 5:
                return None
            return rest[2], rest[1], (rest[3] if len(rest) > 3 else None), (rest[4] if len(rest) > 4 else None)
        if rest and rest[0] in RESOURCES and len(rest) <= 3:
            if len(rest) == 3 and rest[0] != "namespaces" and RESOURCES[rest[0]]["namespaced"]:
                return None
            return rest[0], None, (rest[1] if len(rest) > 1 else None), (rest[2] if len(rest) > 2 else None)
        return None

    def _route(self, handler, record, path, query, body, raw):
        if handler.headers.get("Authorization") != f"Bearer {self.token}":
            raise ApiError(401, "Unauthorized", "Unauthorized")
        if path in ("/version", "/version/"):
            return handler.send_json(200, {"major": "1", "minor": "34", "gitVersion": "v1.34.0-edge-ha-emulator"})
        if path in ("/api", "/api/"):
            return handler.send_json(200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})
        if path.rstrip("/") == "/api/v1":
            return handler.send_json(200, self._discovery())
        parsed = self._parse_path(path)
        if parsed is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        resource, namespace, name, sub = parsed
        method = handler.command
        watching = query.get("watch") in ("true", "1", "True")
        verb = {
            "GET": "get" if name else ("watch" if watching else "list"),
            "POST": "create",
            "PUT": "update",
            "PATCH": "patch",
            "DELETE": "delete" if name else "deletecollection",
        }.get(method)
        record.verb, record.resource, record.namespace, record.name, record.subresource = (
            verb, resource, namespace, name, sub,
        )
        if sub not in (None, "status"):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")

        latency = self._take_fault("latency", verb, resource, namespace)
        if latency is not None:
            self._stopping.wait(latency.seconds)
        if self._take_fault("forbid", verb, resource, namespace) is not None:
            raise self._forbidden(verb, resource, namespace, name)
        error = self._take_fault("error", verb, resource, namespace)
        if error is not None:
            reason, message = {
                500: ("InternalError", "an error on the server (\"internal error\") has prevented the request from succeeding"),
                429: ("TooManyRequests", "the server has received too many requests and has asked us to try again later"),
                502: ("InternalError", "bad gateway"),
                503: ("ServiceUnavailable", "the server is currently unable to handle the request"),
                504: ("Timeout", "the server was unable to return a response in the time allotted"),
            }.get(error.status, ("InternalError", f"injected error {error.status}"))
            headers = {"Retry-After": str(error.retry_after)} if error.retry_after is not None else {}
            raise ApiError(error.status, reason, message, {}, headers)
        if verb in ("update", "patch", "create", "delete"):
            conflict = self._take_fault("conflict", verb, resource, namespace)
            if conflict is not None:
                if conflict.callback is not None:
                    conflict.callback(self, record)
                raise self._conflict(resource, name)

        dry_run = query.get("dryRun") == "All"
        if verb == "get":
            obj = self.get_object(resource, namespace, name)
            if obj is None:
                raise self._not_found(resource, name)
            return self._send(handler, record, 200, obj)
        if verb == "list":
            return self._send(handler, record, 200, self._list(resource, namespace, query))
        if verb == "watch":
            return self._watch(handler, record, resource, namespace, query)
        if verb == "create":
            if name is not None:
                raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
            return self._send(handler, record, 201, self._create(resource, namespace, body, dry_run))
        if verb == "update":
            return self._send(handler, record, 200, self._update(resource, namespace, name, body, dry_run, sub))
        if verb == "patch":
            return self._send(
                handler, record, 200,
                self._patch(resource, namespace, name, body, record.content_type, dry_run, sub, raw),
            )
        if verb == "delete":
            return self._send(handler, record, 200, self._delete(resource, namespace, name, dry_run))
        raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")

    def _send(self, handler, record, code, obj):
        record.status = code
        handler.send_json(code, obj)

    def _discovery(self):
        return {
            "kind": "APIResourceList",
            "groupVersion": "v1",
            "resources": [
                {
                    "name": res,
                    "singularName": meta["kind"].lower(),
                    "namespaced": meta["namespaced"],
                    "kind": meta["kind"],
                    "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
                }
                for res, meta in RESOURCES.items()
            ],
        }

    def _forbidden(self, verb, resource, namespace, name):
        what = f'{resource} "{name}"' if name else resource
        where = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
        return ApiError(
            403, "Forbidden",
            f'{what} is forbidden: User "{self.user}" cannot {verb} resource "{resource}" in API group "" {where}',
            {"name": name, "kind": resource} if name else {"kind": resource},
        )

    def _not_found(self, resource, name):
        return ApiError(404, "NotFound", f'{resource} "{name}" not found', {"name": name, "kind": resource})

    def _conflict(self, resource, name):
        return ApiError(
            409, "Conflict",
            f'Operation cannot be fulfilled on {resource} "{name}": the object has been modified; '
            "please apply your changes to the latest version and try again",
            {"name": name, "kind": resource},
        )

    def _list(self, resource, namespace, query):
        labels = parse_label_selector(query.get("labelSelector", ""))
        fields = parse_field_selector(query.get("fieldSelector", ""), resource)
        with self._lock:
            items = [
                o
                for o in self.list_objects(resource, namespace)
                if label_selector_matches(labels, o["metadata"].get("labels"))
                and field_selector_matches(fields, o)
            ]
            rv = str(self._rv)
        for item in items:  # list items carry no kind/apiVersion on the wire
            item.pop("kind", None)
            item.pop("apiVersion", None)
        return {
            "kind": RESOURCES[resource]["kind"] + "List",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": rv},
            "items": items,
        }

    def _check_body(self, resource, body):
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body of the request was in an unknown format")
        kind = body.get("kind")
        if kind is not None and kind != RESOURCES[resource]["kind"]:
            raise ApiError(400, "BadRequest", f"the object kind {kind!r} does not match the resource {resource!r}")

    def _create(self, resource, namespace, body, dry_run):
        self._check_body(resource, body)
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if RESOURCES[resource]["namespaced"]:
            if meta.get("namespace") not in (None, "", namespace):
                raise ApiError(
                    400, "BadRequest",
                    "the namespace of the provided object does not match the namespace sent on the request",
                )
            meta["namespace"] = namespace
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        self._validate(resource, obj)
        self._admit(resource, None, obj, None)
        with self._lock:
            key = self._key(resource, namespace, meta["name"])
            if key in self._objects:
                raise ApiError(
                    409, "AlreadyExists", f'{resource} "{meta["name"]}" already exists',
                    {"name": meta["name"], "kind": resource},
                )
            self._new_object(resource, obj, via_api=True)
            if dry_run:
                obj["metadata"]["resourceVersion"] = str(self._rv)
                return obj
            return self._commit(resource, obj, "ADDED")

    def _finish_write(self, resource, current, new, dry_run, sub):
        """Shared tail of PUT and PATCH: precondition, system fields, no-op, commit."""
        sent_rv = (new.get("metadata") or {}).get("resourceVersion")
        name = current["metadata"]["name"]
        if sent_rv not in (None, "") and sent_rv != current["metadata"]["resourceVersion"]:
            raise self._conflict(resource, name)
        meta = new.setdefault("metadata", {})
        if meta.get("name", name) != name:
            raise ApiError(400, "BadRequest", "the name of the object does not match the name on the URL")
        for key in ("name", "namespace", "uid", "creationTimestamp"):
            if key in current["metadata"]:
                meta[key] = current["metadata"][key]
            else:
                meta.pop(key, None)
        new["kind"], new["apiVersion"] = current["kind"], current["apiVersion"]
        if RESOURCES[resource]["status"]:
            if sub == "status":  # only the status changes through the subresource
                new = dict(current, status=new.get("status", {}))
            elif "status" in current:
                new["status"] = current["status"]
            else:
                new.pop("status", None)
        meta = new["metadata"]
        meta["resourceVersion"] = current["metadata"]["resourceVersion"]
        self._validate(resource, new, current)
        self._admit(resource, current, new, sub)
        if new == current or dry_run:
            return new
        return self._commit(resource, new, "MODIFIED")

    def _update(self, resource, namespace, name, body, dry_run, sub):
        self._check_body(resource, body)
        with self._lock:
            current = self.get_object(resource, namespace, name)
            if current is None:
                raise self._not_found(resource, name)
            return self._finish_write(resource, current, copy.deepcopy(body), dry_run, sub)

    def _patch(self, resource, namespace, name, body, content_type, dry_run, sub, raw):
        with self._lock:
            current = self.get_object(resource, namespace, name)
            if current is None:
                raise self._not_found(resource, name)
            if content_type == "application/json-patch+json":
                new = json_patch(current, body)
            elif content_type == "application/merge-patch+json":
                if not isinstance(body, dict):
                    raise ApiError(400, "BadRequest", "merge patch must be a JSON object")
                new = merge_patch(current, body)
            elif content_type == "application/strategic-merge-patch+json":
                if not isinstance(body, dict):
                    raise ApiError(400, "BadRequest", "strategic merge patch must be a JSON object")
                new = strategic_merge_patch(current, body)
                if new is _DELETE:
                    raise ApiError(400, "BadRequest", "cannot delete the whole object with a patch")
            else:
                raise ApiError(
                    415, "UnsupportedMediaType",
                    f'the body of the request was in an unknown format - accepted media types include: '
                    "application/json-patch+json, application/merge-patch+json, "
                    f"application/strategic-merge-patch+json (got {content_type!r})",
                )
            if not isinstance(new, dict):
                raise ApiError(422, "Invalid", "the patched object is not an object")
            return self._finish_write(resource, current, new, dry_run, sub)

    def _delete(self, resource, namespace, name, dry_run):
        with self._lock:
            current = self.get_object(resource, namespace, name)
            if current is None:
                raise self._not_found(resource, name)
            if dry_run:
                return current
            return self.delete_object(resource, namespace, name)

    def _watch(self, handler, record, resource, namespace, query):
        labels = parse_label_selector(query.get("labelSelector", ""))
        fields = parse_field_selector(query.get("fieldSelector", ""), resource)
        timeout = float(query.get("timeoutSeconds") or self.default_watch_timeout)
        rv_param = query.get("resourceVersion")
        gone = None
        with self._lock:
            if rv_param in (None, "", "0"):
                initial = [
                    ("ADDED", o)
                    for o in self.list_objects(resource, namespace)
                    if label_selector_matches(labels, o["metadata"].get("labels")) and field_selector_matches(fields, o)
                ]
                cursor = self._rv
            else:
                try:
                    cursor = int(rv_param)
                except ValueError:
                    raise ApiError(400, "BadRequest", f"invalid resource version {rv_param!r}") from None
                initial = []
                if cursor < self._history_floor:
                    gone = status_body(
                        410, "Expired", f"too old resource version: {cursor} ({self._history_floor})"
                    )
        drop = self._take_fault("drop", "watch", resource, namespace)
        record.status = 200
        handler.start_chunked(200)
        sent = 0

        def emit(event_type, obj):
            nonlocal sent
            handler.write_chunk(json.dumps({"type": event_type, "object": obj}).encode() + b"\n")
            sent += 1
            if drop is not None and sent >= drop.after_events:
                handler.abort()
                raise _Dropped()

        if drop is not None and drop.after_events == 0:
            handler.abort()
            raise _Dropped()
        if gone is not None:
            emit("ERROR", gone)
            handler.end_chunked()
            return None
        for event_type, obj in initial:
            emit(event_type, obj)
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                pending = None
                while not self._stopping.is_set():
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    newer = [h for h in self._history if h[0] > cursor]
                    if newer:
                        pending = newer
                        cursor = newer[-1][0]
                        break
                    self._cond.wait(min(remaining, 1.0))
            if pending is None:
                break
            for _rv, event_type, res, ns, obj in pending:
                if res != resource or (namespace is not None and ns != namespace):
                    continue
                if not (label_selector_matches(labels, obj["metadata"].get("labels")) and field_selector_matches(fields, obj)):
                    continue
                emit(event_type, obj)
        handler.end_chunked()
        return None


def _internal_ip(node):
    for addr in (node or {}).get("status", {}).get("addresses", []):
        if addr.get("type") == "InternalIP":
            return addr.get("address")
    return None


def _pod_status(ready, host_ip, pod_ip):
    flag = "True" if ready else "False"
    status = {
        "phase": "Running",
        "conditions": [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Initialized", "status": "True"},
            {"type": "ContainersReady", "status": flag},
            {"type": "Ready", "status": flag},
        ],
        "podIP": pod_ip,
        "startTime": _now(),
    }
    if host_ip:
        status["hostIP"] = host_ip
    return status


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "kube-api-emulator/1"
    emulator = None  # set on the bound subclass

    def setup(self):
        super().setup()
        with self.emulator._lock:
            self.emulator._connections.add(self.connection)
            self.emulator._handler_threads.add(threading.current_thread())

    def finish(self):
        try:
            super().finish()
        except OSError:
            pass
        with self.emulator._lock:
            self.emulator._connections.discard(self.connection)
            self.emulator._handler_threads.discard(threading.current_thread())

    def log_message(self, *args):  # keep test output quiet
        pass

    def _serve(self):
        try:
            self.emulator.handle(self)
        except OSError:  # the client went away (or the emulator is stopping)
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def send_json(self, code, obj, headers=None):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def start_chunked(self, code):
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()

    def write_chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def end_chunked(self):
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def abort(self):
        """Cut the connection without ending the chunked stream."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def main(argv=None):
    """Run the emulator standalone (e.g. to try the real-cluster test path)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--kubeconfig", required=True, help="where to write the kubeconfig")
    parser.add_argument("--nodes", type=int, default=3, help="seed this many nodes (node-1..N, 10.0.0.1..N)")
    args = parser.parse_args(argv)
    with KubeAPIEmulator(port=args.port) as api:
        for n in range(1, args.nodes + 1):
            api.add_node(f"node-{n}", f"10.0.0.{n}")
        api.write_kubeconfig(args.kubeconfig)
        print(f"serving on {api.url}; kubeconfig {args.kubeconfig}; Ctrl-C to stop", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())


# ------------------------------------------------------- client side, for the tests that talk to the emulator


@contextlib.contextmanager
def core_api(server, directory):
    """A CoreV1Api of the official client on ``server`` (an emulator), no retries."""
    from kubernetes import client, config  # pylint: disable=import-outside-toplevel

    configuration = client.Configuration()
    config.load_kube_config(config_file=server.write_kubeconfig(directory / "kc"),
                            client_configuration=configuration, persist_config=False)
    configuration.retries = False
    with client.ApiClient(configuration) as api_client:
        yield client.CoreV1Api(api_client)


def raw(response):
    """The JSON body of a ``_preload_content=False`` response (connection released)."""
    data = json.loads(response.data)
    response.release_conn()
    return data
