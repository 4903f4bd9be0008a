"""A small, honest fake of the Kubernetes API server, for tests of code that uses the official
``kubernetes`` Python client.

It speaks the real paths and JSON over HTTP on 127.0.0.1 (stdlib ``http.server`` in a thread),
checks a bearer token, and plays the part of the Job controller and the kubelet for the Jobs it
is given, so a client sees what it would see on a cluster:

* ``batch/v1`` Jobs: create (server-side defaults, ``spec.selector``, the ``job-name`` labels),
  read, list, watch, patch, delete with ``propagationPolicy`` (a Job deleted without one
  orphans its pods, as on a real cluster). ``activeDeadlineSeconds``, ``backoffLimit`` and
  ``ttlSecondsAfterFinished`` are honoured, on a clock that ``time_scale`` can speed up.
* ``v1`` Pods, created by the fake controller: read, list by label/field selector, watch,
  delete, and ``/log`` with ``follow=true`` streamed chunk by chunk as lines appear (also
  ``tailLines``, ``timestamps``). A pod goes Pending -> Running -> Succeeded/Failed, with the
  container statuses a kubelet reports; it waits in ContainerCreating while a Secret it mounts
  is missing, and in CreateContainerConfigError while an env ``secretKeyRef`` cannot resolve.
* ``v1`` Secrets (1 MiB limit, key rules, ``immutable``) and ``networking.k8s.io/v1``
  NetworkPolicies: create, read, list, patch, delete; dependents (``ownerReferences``) are
  garbage-collected with their owner.
* Created objects are validated against the official schemas with ``kubernetes-validate``
  (strict: unknown fields are refused with a 422, as ``kubectl --validate=strict`` would).

A test chooses what happens to the pods of a Job by name prefix::

    fake.script("mlc-", scenario="oom")                  # the next matching Jobs' pods
    fake.script("mlc-", logs=["a", "b"], exit_code=3)
    fake.script("mlc-", run=lambda pod: (pod.log("hi"), 0)[1])  # act as the container

Scenarios: ``success`` (default), ``fail``, ``oom`` (terminated reason OOMKilled, exit 137),
``image_pull`` (waiting ErrImagePull <-> ImagePullBackOff, forever), ``unschedulable``
(PodScheduled False, reason Unschedulable, with a message), ``deadline`` (runs until the
Job's deadline — or ``deadline_after`` seconds — then the Job fails with DeadlineExceeded),
``hang`` (runs until deleted or past its deadline).

Use it as a pytest plugin (``pytest_plugins = ["k8s_fake"]``): the ``k8s_fake`` fixture yields a
started :class:`FakeKubernetes` with a kubeconfig written for it (``fake.kubeconfig``).
"""

from __future__ import annotations

import base64
import copy
import json
import random
import re
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable
from urllib.parse import parse_qs, urlsplit

import pytest

TOKEN = "mlc-fake-token"
NODE = "fake-node-1"
SECRET_MAX_BYTES = 1024 * 1024
SCENARIOS = ("success", "fail", "oom", "image_pull", "unschedulable", "deadline", "hang")

# resource -> (group, version, kind, path prefix, namespaced name rule)
RESOURCES = {
    "jobs": ("batch", "v1", "Job", "/apis/batch/v1"),
    "pods": ("", "v1", "Pod", "/api/v1"),
    "secrets": ("", "v1", "Secret", "/api/v1"),
    "networkpolicies": ("networking.k8s.io", "v1", "NetworkPolicy", "/apis/networking.k8s.io/v1"),
}
_ROUTE = re.compile(
    r"^(?P<prefix>/api/v1|/apis/batch/v1|/apis/networking\.k8s\.io/v1)"
    r"/namespaces/(?P<ns>[^/]+)/(?P<res>[a-z]+)(?:/(?P<name>[^/]+))?(?:/(?P<sub>[a-z]+))?$"
)
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


class ApiError(Exception):
    """Answered as a ``Status`` object, as the API server does."""

    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> dict:
        out = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            out["details"] = self.details
        return out


def _qualified(resource: str) -> str:
    group = RESOURCES[resource][0]
    return f"{resource}.{group}" if group else resource


def _not_found(resource: str, name: str) -> ApiError:
    group, _, kind, _ = RESOURCES[resource]
    return ApiError(
        404,
        "NotFound",
        f'{_qualified(resource)} "{name}" not found',
        {"name": name, "group": group, "kind": resource},
    )


def _invalid(resource: str, name: str, causes: list[tuple[str, str]]) -> ApiError:
    group, _, kind, _ = RESOURCES[resource]
    what = f"{kind}.{group}" if group else kind
    text = ", ".join(f"{f}: {m}" for f, m in causes)
    return ApiError(
        422,
        "Invalid",
        f'{what} "{name}" is invalid: {text}',
        {
            "name": name,
            "group": group,
            "kind": kind,
            "causes": [
                {"reason": "FieldValueInvalid", "message": m, "field": f} for f, m in causes
            ],
        },
    )


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now_nano() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")


# -- selectors --------------------------------------------------------------------------------


def parse_label_selector(text: str) -> Callable[[dict], bool]:
    """The label selector grammar of the API (equality- and set-based)."""
    terms = [t.strip() for t in re.split(r",(?![^(]*\))", text or "") if t.strip()]
    checks = []
    for term in terms:
        m = re.match(r"^([^\s!=,()]+)\s+(in|notin)\s+\(([^)]*)\)$", term)
        if m:
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
            if op == "in":
                checks.append(lambda labels, k=key, v=values: labels.get(k) in v)
            else:
                checks.append(lambda labels, k=key, v=values: labels.get(k) not in v)
            continue
        m = re.match(r"^([^\s!=,()]+)\s*(==|=|!=)\s*([^\s!=,()]*)$", term)
        if m:
            key, op, value = m.groups()
            if op == "!=":
                checks.append(lambda labels, k=key, v=value: labels.get(k) != v)
            else:
                checks.append(lambda labels, k=key, v=value: labels.get(k) == v)
            continue
        m = re.match(r"^(!?)([^\s!=,()]+)$", term)
        if m:
            neg, key = m.groups()
            checks.append(lambda labels, k=key, n=bool(neg): (k in labels) != n)
            continue
        raise ApiError(
            400,
            "BadRequest",
            f"unable to parse requirement: found '{term}', expected: in, notin, =, ==, !=, gt, lt",
        )
    return lambda obj: all(c(obj["metadata"].get("labels") or {}) for c in checks)


_FIELDS = {
    "metadata.name": lambda o: o["metadata"]["name"],
    "metadata.namespace": lambda o: o["metadata"].get("namespace", ""),
    "status.phase": lambda o: (o.get("status") or {}).get("phase", ""),
    "spec.nodeName": lambda o: (o.get("spec") or {}).get("nodeName", ""),
}


def parse_field_selector(text: str) -> Callable[[dict], bool]:
    checks = []
    for term in [t.strip() for t in (text or "").split(",") if t.strip()]:
        m = re.match(r"^([^!=]+)(==|=|!=)(.*)$", term)
        if not m:
            raise ApiError(400, "BadRequest", f"invalid field selector: '{term}'")
        key, op, value = m.groups()
        if key not in _FIELDS:
            raise ApiError(400, "BadRequest", f"field label not supported: {key}")
        get = _FIELDS[key]
        if op == "!=":
            checks.append(lambda o, g=get, v=value: g(o) != v)
        else:
            checks.append(lambda o, g=get, v=value: g(o) == v)
    return lambda obj: all(c(obj) for c in checks)


# -- scenarios --------------------------------------------------------------------------------


@dataclass
class Scenario:
    scenario: str = "success"
    logs: Sequence[str] = ("hello from the fake pod",)
    exit_code: int | None = None  # default: 0 for success, 137 for oom, 1 otherwise
    pending_seconds: float = 0.05  # in ContainerCreating before the container starts
    line_seconds: float = 0.01  # between two log lines
    run_seconds: float = 0.02  # after the last line, before the container exits
    deadline_after: float = 0.2  # "deadline" without activeDeadlineSeconds on the Job
    message: str | None = None  # for unschedulable / image_pull
    run: Callable[[PodRun], int] | None = None  # acts as the container; returns its exit code

    def __post_init__(self) -> None:
        self.scenario = self.scenario.replace("-", "_")
        if self.scenario not in SCENARIOS:
            raise ValueError(f"scenario must be one of {', '.join(SCENARIOS)}")

    @property
    def code(self) -> int:
        if self.exit_code is not None:
            return self.exit_code
        return {"success": 0, "oom": 137}.get(self.scenario, 1)


@dataclass
class PodRun:
    """What a ``run`` callable sees: the pod as the kubelet would start it."""

    pod: dict
    files: dict[str, bytes]  # absolute path -> content, from Secret volumes
    env: dict[str, str]  # resolved, secretKeyRef values included
    _append: Callable[[str], None] = field(repr=False, default=print)
    _cancelled: Callable[[], bool] = field(repr=False, default=lambda: False)

    def log(self, text: str) -> None:
        """Write to the container's log (a newline is added when missing)."""
        self._append(text if text.endswith("\n") else text + "\n")

    @property
    def cancelled(self) -> bool:
        """True once the pod was deleted or its Job ran past its deadline."""
        return self._cancelled()


# -- the fake -----------------------------------------------------------------------------------


class FakeKubernetes:
    def __init__(
        self,
        *,
        token: str = TOKEN,
        namespaces: Sequence[str] = ("default",),
        time_scale: float = 1.0,
        validate: bool = True,
        k8s_version: str = "1.37",
        step: float = 0.01,
    ) -> None:
        self.token = token
        self.namespaces = set(namespaces)
        self.time_scale = time_scale  # 0.01: a 60 s deadline passes in 0.6 s
        self.validate = validate
        self.k8s_version = k8s_version
        self.step = step  # how often the fake controller looks again
        self.requests: list[dict] = []  # every request: method, path, query, body
        self.kubeconfig: Path | None = None
        self._cond = threading.Condition(threading.RLock())
        self._objects: dict[str, dict[tuple[str, str], dict]] = {r: {} for r in RESOURCES}
        self._events: list[tuple[int, str, str, dict]] = []
        self._rv = 0
        self._logs: dict[tuple[str, str], list[tuple[str, str]]] = {}  # pod -> [(ts, line)]
        self._scripts: list[tuple[str, Scenario]] = []
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> FakeKubernetes:
        fake = self

        class Handler(_Handler):
            pass

        Handler.fake = fake
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        thread = threading.Thread(
            target=self._server.serve_forever,
            name="k8s-fake",
            kwargs={"poll_interval": 0.05},
            daemon=True,
        )
        thread.start()
        self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for t in self._threads:
            t.join(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def write_kubeconfig(
        self, path: Path, namespace: str = "default", context: str = "mlc-fake"
    ) -> Path:
        """A kubeconfig (JSON, which is YAML) whose current context is this fake."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "preferences": {},
            "clusters": [{"name": "mlc-fake", "cluster": {"server": self.url}}],
            "users": [{"name": "mlc-fake", "user": {"token": self.token}}],
            "contexts": [
                {
                    "name": context,
                    "context": {"cluster": "mlc-fake", "user": "mlc-fake", "namespace": namespace},
                }
            ],
            "current-context": context,
        }
        path = Path(path)
        path.write_text(json.dumps(config, indent=2))
        self.kubeconfig = path
        return path

    def api_client(self, context: str | None = None):
        """An official-client ApiClient for this fake (needs ``write_kubeconfig`` first)."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig), context=context)

    # -- scripting ----------------------------------------------------------------------------

    def script(self, job_name_prefix: str, scenario: str = "success", **params) -> Scenario:
        """Decide what happens to the pods of Jobs whose name starts with the prefix, from the
        next Job created on. The latest matching script wins."""
        s = Scenario(scenario=scenario, **params)
        with self._cond:
            self._scripts.insert(0, (job_name_prefix, s))
        return s

    def _scenario_for(self, job_name: str) -> Scenario:
        for prefix, s in self._scripts:
            if job_name.startswith(prefix):
                return s
        return Scenario()

    # -- inspection ---------------------------------------------------------------------------

    def get(self, resource: str, name: str, namespace: str = "default") -> dict | None:
        with self._cond:
            obj = self._objects[resource].get((namespace, name))
            return copy.deepcopy(obj) if obj else None

    def list(self, resource: str, namespace: str | None = None) -> list[dict]:
        with self._cond:
            return [
                copy.deepcopy(o)
                for (ns, _), o in self._objects[resource].items()
                if namespace is None or ns == namespace
            ]

    def pods_of(self, job_name: str, namespace: str = "default") -> list[dict]:
        return [
            p
            for p in self.list("pods", namespace)
            if (p["metadata"].get("labels") or {}).get("job-name") == job_name
        ]

    def log_of(self, pod_name: str, namespace: str = "default") -> str:
        with self._cond:
            return "".join(line for _, line in self._logs.get((namespace, pod_name), []))

    def wait_for(self, predicate: Callable[[], object], timeout: float = 10.0):
        """Wait until ``predicate()`` is truthy and return its value; fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")
            time.sleep(0.005)

    # -- the store ----------------------------------------------------------------------------

    def _record(self, resource: str, type_: str, obj: dict) -> None:
        """Bump the resource version, log a watch event, wake every waiter. Holds the lock."""
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        self._events.append((self._rv, resource, type_, copy.deepcopy(obj)))
        self._cond.notify_all()

    def _put(self, resource: str, obj: dict, type_: str) -> dict:
        with self._cond:
            key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
            self._objects[resource][key] = obj
            self._record(resource, type_, obj)
            return copy.deepcopy(obj)

    def _update(self, resource: str, namespace: str, name: str, fn: Callable[[dict], None]):
        with self._cond:
            obj = self._objects[resource].get((namespace, name))
            if obj is None:
                return None
            fn(obj)
            self._record(resource, "MODIFIED", obj)
            return copy.deepcopy(obj)

    def _remove(self, resource: str, namespace: str, name: str, propagation: str | None) -> dict:
        with self._cond:
            obj = self._objects[resource].pop((namespace, name), None)
            if obj is None:
                raise _not_found(resource, name)
            obj["metadata"]["deletionTimestamp"] = _now()
            self._record(resource, "DELETED", obj)
            uid = obj["metadata"]["uid"]
            # The garbage collector: dependents go too, unless orphaned.
            for res, objects in self._objects.items():
                for (ns, n), dep in list(objects.items()):
                    refs = dep["metadata"].get("ownerReferences") or []
                    if ns != namespace or not any(r.get("uid") == uid for r in refs):
                        continue
                    if propagation == "Orphan":
                        dep["metadata"]["ownerReferences"] = [
                            r for r in refs if r.get("uid") != uid
                        ]
                        self._record(res, "MODIFIED", dep)
                    elif (ns, n) in objects:
                        self._remove(res, ns, n, propagation)
            return obj

    def _check_namespace(self, namespace: str) -> None:
        if namespace not in self.namespaces:
            raise ApiError(
                404,
                "NotFound",
                f'namespaces "{namespace}" not found',
                {"name": namespace, "kind": "namespaces"},
            )

    # -- verbs --------------------------------------------------------------------------------

    def create(self, resource: str, namespace: str, body: dict, dry_run: bool = False) -> dict:
        self._check_namespace(namespace)
        group, version, kind, _ = RESOURCES[resource]
        api_version = f"{group}/{version}" if group else version
        if (
            not isinstance(body, dict)
            or body.get("kind") != kind
            or body.get("apiVersion") != api_version
        ):
            raise ApiError(
                400, "BadRequest", f"the body must be a {kind} of apiVersion {api_version}"
            )
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if meta.get("namespace", namespace) != namespace:
            raise ApiError(
                400,
                "BadRequest",
                "the namespace of the provided object does not "
                "match the namespace sent on the request",
            )
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise _invalid(
                    resource,
                    "",
                    [("metadata.name", "Required value: name or generateName is required")],
                )
            meta["name"] = meta["generateName"][:58] + _random_suffix()
        name = meta["name"]
        self._validate(resource, obj)
        with self._cond:
            if (namespace, name) in self._objects[resource]:
                raise ApiError(
                    409,
                    "AlreadyExists",
                    f'{_qualified(resource)} "{name}" already exists',
                    {"name": name, "group": group, "kind": resource},
                )
            meta.update(
                namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1
            )
            if resource == "jobs":
                self._default_job(obj)
            if dry_run:
                return obj
            created = self._put(resource, obj, "ADDED")
        if resource == "jobs":
            thread = threading.Thread(
                target=self._drive_job,
                args=(namespace, name),
                name=f"k8s-fake-job-{name}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
        return created

    def _validate(self, resource: str, obj: dict) -> None:
        name = obj["metadata"]["name"]
        if resource == "jobs":
            # The name becomes the value of the pods' job-name label: 63 at most.
            if len(name) > 63 or not _DNS_LABEL.match(name):
                raise _invalid(
                    resource,
                    name,
                    [
                        (
                            "metadata.name",
                            f'Invalid value: "{name}": a lowercase RFC 1123 label '
                            "must consist of lower case alphanumeric characters or '-', and must "
                            "be no more than 63 characters",
                        )
                    ],
                )
            policy = (((obj.get("spec") or {}).get("template") or {}).get("spec") or {}).get(
                "restartPolicy"
            )
            if policy not in ("Never", "OnFailure"):
                raise _invalid(
                    resource,
                    name,
                    [
                        (
                            "spec.template.spec.restartPolicy",
                            f'Unsupported value: "{policy}": supported values: '
                            '"OnFailure", "Never"',
                        )
                    ],
                )
        elif len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
            raise _invalid(
                resource,
                name,
                [("metadata.name", f'Invalid value: "{name}": a lowercase RFC 1123 subdomain')],
            )
        if resource == "secrets":
            data = obj.get("data") or {}
            total = 0
            for key, value in data.items():
                if not _SECRET_KEY.match(key):
                    raise _invalid(
                        resource,
                        name,
                        [
                            (
                                f"data[{key}]",
                                f'Invalid value: "{key}": '
                                "a valid config key must consist of "
                                "alphanumeric characters, '-', '_' or '.'",
                            )
                        ],
                    )
                try:
                    total += len(base64.b64decode(value, validate=True))
                except (ValueError, TypeError):
                    raise ApiError(
                        400, "BadRequest", f"illegal base64 data in data[{key}]"
                    ) from None
            total += sum(len(v.encode()) for v in (obj.get("stringData") or {}).values())
            if total > SECRET_MAX_BYTES:
                raise _invalid(
                    resource,
                    name,
                    [("data", f"Too long: must have at most {SECRET_MAX_BYTES} bytes")],
                )
        if self.validate:
            try:
                import kubernetes_validate
            except ImportError:
                return
            try:
                kubernetes_validate.validate(obj, self.k8s_version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.absolute_path) or "<root>"
                raise _invalid(resource, name, [(path, e.message)]) from None

    def _default_job(self, job: dict) -> None:
        """What the API server and the Job controller add to a new Job."""
        meta, spec = job["metadata"], job.setdefault("spec", {})
        uid, name = meta["uid"], meta["name"]
        spec.setdefault("parallelism", 1)
        spec.setdefault("completions", 1)
        spec.setdefault("backoffLimit", 6)
        spec.setdefault("completionMode", "NonIndexed")
        spec.setdefault("suspend", False)
        spec.setdefault("manualSelector", False)
        spec.setdefault("podReplacementPolicy", "TerminatingOrFailed")
        controller = {
            "batch.kubernetes.io/controller-uid": uid,
            "batch.kubernetes.io/job-name": name,
            "controller-uid": uid,
            "job-name": name,
        }
        spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
        template_meta = spec["template"].setdefault("metadata", {})
        template_meta["labels"] = {**(template_meta.get("labels") or {}), **controller}
        if not meta.get("labels"):
            meta["labels"] = {
                "batch.kubernetes.io/job-name": name,
                "controller-uid": uid,
                "job-name": name,
                "batch.kubernetes.io/controller-uid": uid,
            }
        job["status"] = {}

    def read(self, resource: str, namespace: str, name: str) -> dict:
        self._check_namespace(namespace)
        obj = self.get(resource, name, namespace)
        if obj is None:
            raise _not_found(resource, name)
        return obj

    def list_objects(
        self, resource: str, namespace: str, label_selector: str | None, field_selector: str | None
    ) -> dict:
        self._check_namespace(namespace)
        match_labels = parse_label_selector(label_selector or "")
        match_fields = parse_field_selector(field_selector or "")
        group, version, kind, _ = RESOURCES[resource]
        with self._cond:
            items = [
                copy.deepcopy(o)
                for (ns, _), o in sorted(self._objects[resource].items())
                if ns == namespace and match_labels(o) and match_fields(o)
            ]
            rv = str(self._rv)
        for item in items:  # list items carry no kind/apiVersion, as on a real server
            item.pop("kind", None)
            item.pop("apiVersion", None)
        return {
            "kind": f"{kind}List",
            "apiVersion": f"{group}/{version}" if group else version,
            "metadata": {"resourceVersion": rv},
            "items": items,
        }

    def delete(self, resource: str, namespace: str, name: str, propagation: str | None) -> dict:
        self._check_namespace(namespace)
        if propagation not in (None, "Orphan", "Background", "Foreground"):
            raise ApiError(
                400,
                "BadRequest",
                f"propagationPolicy {propagation!r} is not one of Orphan, Background, Foreground",
            )
        if propagation is None and resource == "jobs":
            propagation = "Orphan"  # batch/v1 Jobs still default to orphaning their pods
        obj = self._remove(resource, namespace, name, propagation)
        # A graceful (pods) or finalized (Foreground, Orphan) deletion answers with the object,
        # marked for deletion; an immediate one with a Status.
        if resource == "pods" or propagation in ("Foreground", "Orphan"):
            if resource != "pods":
                obj["metadata"]["finalizers"] = [
                    "foregroundDeletion" if propagation == "Foreground" else "orphan"
                ]
            return obj
        group = RESOURCES[resource][0]
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": {
                "name": name,
                "group": group,
                "kind": resource,
                "uid": obj["metadata"]["uid"],
            },
        }

    def patch(self, resource: str, namespace: str, name: str, body, content_type: str) -> dict:
        self._check_namespace(namespace)
        with self._cond:
            current = self._objects[resource].get((namespace, name))
            if current is None:
                raise _not_found(resource, name)
            if "json-patch" in content_type:
                if not isinstance(body, list):
                    raise ApiError(400, "BadRequest", "a JSON patch must be a list")
                patched = _json_patch(current, body)
            elif "merge-patch" in content_type:
                if not isinstance(body, dict):
                    raise ApiError(400, "BadRequest", "a merge patch must be an object")
                patched = _merge_patch(current, body)
            else:
                raise ApiError(
                    415,
                    "UnsupportedMediaType",
                    "the body of the request was in an unknown format - "
                    "accepted media types include: application/json-patch+json, "
                    "application/merge-patch+json, "
                    "application/strategic-merge-patch+json",
                )
            for fixed in ("name", "namespace", "uid", "creationTimestamp"):
                if patched["metadata"].get(fixed) != current["metadata"].get(fixed):
                    raise _invalid(
                        resource, name, [(f"metadata.{fixed}", "Invalid value: field is immutable")]
                    )
            if (
                resource == "secrets"
                and current.get("immutable")
                and (patched.get("data") != current.get("data") or not patched.get("immutable"))
            ):
                raise _invalid(
                    resource,
                    name,
                    [("data", "Forbidden: field is immutable when `immutable` is set")],
                )
            if resource == "jobs":
                mutable = (
                    "parallelism",
                    "activeDeadlineSeconds",
                    "suspend",
                    "ttlSecondsAfterFinished",
                )
                before = {k: v for k, v in current["spec"].items() if k not in mutable}
                after = {k: v for k, v in patched["spec"].items() if k not in mutable}
                if before != after:
                    raise _invalid(resource, name, [("spec", "Invalid value: field is immutable")])
            if resource != "pods":
                self._validate(resource, {k: v for k, v in patched.items() if k != "status"})
            current.clear()
            current.update(patched)
            self._record(resource, "MODIFIED", current)
            return copy.deepcopy(current)

    # -- watch and logs (streamed) ------------------------------------------------------------

    def watch_events(
        self,
        resource: str,
        namespace: str,
        label_selector: str | None,
        field_selector: str | None,
        resource_version: str | None,
        timeout: float | None,
    ):
        """Check a watch request (raising ApiError), then return a generator of its events
        (dicts), which ends at ``timeout`` or when the fake stops."""
        self._check_namespace(namespace)
        match_labels = parse_label_selector(label_selector or "")
        match_fields = parse_field_selector(field_selector or "")
        end = time.monotonic() + timeout if timeout else None

        def wanted(obj):
            return (
                obj["metadata"].get("namespace") == namespace
                and match_labels(obj)
                and match_fields(obj)
            )

        with self._cond:
            if resource_version in (None, "", "0"):
                cursor = self._rv
                initial = [
                    copy.deepcopy(o)
                    for (ns, _), o in sorted(self._objects[resource].items())
                    if wanted(o)
                ]
            else:
                cursor, initial = int(resource_version), []
        return self._watch(resource, wanted, cursor, initial, end)

    def _watch(self, resource, wanted, cursor, initial, end):
        for obj in initial:
            yield {"type": "ADDED", "object": obj}
        while not self._stopping.is_set():
            with self._cond:
                pending = [
                    (rv, t, o) for rv, res, t, o in self._events if rv > cursor and res == resource
                ]
                if not pending:
                    remaining = None if end is None else end - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return
                    self._cond.wait(0.1 if remaining is None else min(remaining, 0.1))
                    continue
                cursor = pending[-1][0]
            for _, type_, obj in pending:
                if wanted(obj):
                    yield {"type": type_, "object": copy.deepcopy(obj)}

    def log_chunks(self, namespace: str, name: str, query: dict):
        """Check a log request (raising ApiError as the server would), then return a
        generator of the log's text, which follows it with ``follow=true``."""
        self._check_namespace(namespace)
        pod = self.read("pods", namespace, name)
        container = pod["spec"]["containers"][0]["name"]
        wanted = query.get("container")
        if wanted and wanted != container:
            raise ApiError(400, "BadRequest", f"container {wanted} is not valid for pod {name}")
        if query.get("previous") == "true":
            raise ApiError(
                400,
                "BadRequest",
                f'previous terminated container "{container}" in pod "{name}" not found',
            )
        waiting = _waiting_reason(pod)
        if waiting is not None:
            raise ApiError(
                400,
                "BadRequest",
                f'container "{container}" in pod "{name}" is waiting to start: {waiting}',
            )
        return self._log_stream((namespace, name), query)

    def _log_stream(self, key, query):
        follow = query.get("follow") == "true"
        timestamps = query.get("timestamps") == "true"
        tail = int(query["tailLines"]) if query.get("tailLines") else None

        def fmt(entries):
            return "".join(f"{ts} {line}" if timestamps else line for ts, line in entries)

        with self._cond:
            lines = list(self._logs.get(key, []))
        sent = len(lines)
        if tail is not None:
            lines = lines[-tail:] if tail else []
        if lines:
            yield fmt(lines)
        while follow and not self._stopping.is_set():
            with self._cond:
                lines = self._logs.get(key, [])
                new = lines[sent:]
                pod = self._objects["pods"].get(key)
                done = pod is None or _terminated(pod)
                if not new and not done:
                    self._cond.wait(0.1)
                    continue
                sent += len(new)
            if new:
                yield fmt(new)
            if done and not new:
                return

    # -- the Job controller and the kubelet ----------------------------------------------------

    def _append_log(self, namespace: str, pod: str, text: str) -> None:
        with self._cond:
            entries = self._logs.setdefault((namespace, pod), [])
            for line in text.splitlines(keepends=True):
                entries.append((_now_nano(), line))
            self._cond.notify_all()

    def _drive_job(self, namespace: str, name: str) -> None:
        try:
            self._run_job(namespace, name)
        except _Gone:
            pass

    def _run_job(self, namespace: str, name: str) -> None:
        job = self.get("jobs", name, namespace)
        scenario = self._scenario_for(name)
        started = time.monotonic()
        spec = job["spec"]
        deadline = spec.get("activeDeadlineSeconds")
        deadline = None if deadline is None else deadline * self.time_scale
        if scenario.scenario == "deadline" and deadline is None:
            deadline = scenario.deadline_after
        clock = _Clock(self, namespace, name, started, deadline)
        self._update(
            "jobs",
            namespace,
            name,
            lambda j: j["status"].update(
                startTime=_now(),
                active=0,
                ready=0,
                failed=0,
                succeeded=0,
                terminating=0,
                uncountedTerminatedPods={},
            ),
        )
        failures = 0
        while True:
            pod_name = self._create_pod(job)
            clock.pod = pod_name
            try:
                code, reason = self._run_pod(namespace, pod_name, scenario, clock)
            except _DeadlineExceeded:
                self._exceed_deadline(namespace, name, pod_name)
                break
            except _Gone:
                if clock.gone(require_pod=False):
                    raise
                code = None  # someone deleted the pod: a failed attempt
            if code == 0:
                self._finish_job(
                    namespace,
                    name,
                    True,
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                )
                break
            failures += 1
            self._update(
                "jobs",
                namespace,
                name,
                lambda j: j["status"].update(failed=failures, active=0, ready=0),
            )
            if failures > spec.get("backoffLimit", 6):
                self._finish_job(
                    namespace,
                    name,
                    False,
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit",
                )
                break
        ttl = spec.get("ttlSecondsAfterFinished")
        if ttl is not None:
            clock.deadline = None
            clock.sleep(ttl * self.time_scale, require_pod=False)
            try:
                self._remove("jobs", namespace, name, "Background")
            except ApiError:
                pass

    def _create_pod(self, job: dict) -> str:
        meta, template = job["metadata"], job["spec"]["template"]
        name = meta["name"][:58] + "-" + _random_suffix()
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "generateName": meta["name"][:58] + "-",
                "namespace": meta["namespace"],
                "uid": str(uuid.uuid4()),
                "creationTimestamp": _now(),
                "labels": dict(template["metadata"].get("labels") or {}),
                "annotations": dict(template["metadata"].get("annotations") or {}),
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": meta["name"],
                        "uid": meta["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": copy.deepcopy(template["spec"]),
            "status": {"phase": "Pending", "qosClass": _qos(template["spec"])},
        }
        self._put("pods", pod, "ADDED")
        self._update(
            "jobs", meta["namespace"], meta["name"], lambda j: j["status"].update(active=1, ready=0)
        )
        return name

    def _set_pod(self, namespace: str, pod: str, **status) -> None:
        def change(p):
            p["status"].update(status)

        if self._update("pods", namespace, pod, change) is None:
            raise _Gone()

    def _run_pod(self, namespace: str, pod_name: str, scenario: Scenario, clock: _Clock):
        pod = self.get("pods", pod_name, namespace)
        container = pod["spec"]["containers"][0]
        image, cname = container["image"], container["name"]
        clock.sleep(self.step)
        if scenario.scenario == "unschedulable":
            message = scenario.message or (
                "0/3 nodes are available: 3 Insufficient nvidia.com/gpu. preemption: 0/3 nodes "
                "are available: 3 No preemption victims found for incoming pod."
            )
            self._set_pod(
                namespace,
                pod_name,
                conditions=[_condition("PodScheduled", "False", "Unschedulable", message)],
            )
            clock.sleep(None)
        self._schedule(namespace, pod_name, cname)
        waiting = {
            "name": cname,
            "image": image,
            "imageID": "",
            "ready": False,
            "restartCount": 0,
            "started": False,
            "lastState": {},
        }
        self._set_pod(
            namespace,
            pod_name,
            containerStatuses=[{**waiting, "state": {"waiting": {"reason": "ContainerCreating"}}}],
        )
        if scenario.scenario == "image_pull":
            message = scenario.message or (
                f'rpc error: code = NotFound desc = failed to pull and unpack image "{image}": '
                f'failed to resolve reference "{image}": not found'
            )
            pulls = 0
            while True:
                clock.sleep(self.step * 3)
                pulls += 1
                state = (
                    {"reason": "ErrImagePull", "message": message}
                    if pulls % 2
                    else {
                        "reason": "ImagePullBackOff",
                        "message": f'Back-off pulling image "{image}": ErrImagePull: {message}',
                    }
                )
                self._set_pod(
                    namespace,
                    pod_name,
                    containerStatuses=[{**waiting, "state": {"waiting": state}}],
                )
        # The kubelet mounts Secret volumes and resolves env before the container starts.
        shown = None
        while True:
            problem = self._container_config_problem(namespace, pod)
            if problem is None:
                break
            if problem != shown:
                shown = problem
                state = (
                    {"reason": "ContainerCreating"}
                    if problem[0] == "mount"
                    else {"reason": "CreateContainerConfigError", "message": problem[1]}
                )
                self._set_pod(
                    namespace,
                    pod_name,
                    containerStatuses=[{**waiting, "state": {"waiting": state}}],
                )
            clock.sleep(self.step)
        clock.sleep(scenario.pending_seconds)
        started_at = _now()
        container_id = "containerd://" + uuid.uuid4().hex + uuid.uuid4().hex
        running = {
            **waiting,
            "imageID": _image_id(image),
            "containerID": container_id,
            "ready": True,
            "started": True,
        }
        ip = f"10.244.0.{random.randint(2, 250)}"
        self._set_pod(
            namespace,
            pod_name,
            phase="Running",
            startTime=started_at,
            podIP=ip,
            podIPs=[{"ip": ip}],
            conditions=_pod_conditions(cname, ready=True),
            containerStatuses=[{**running, "state": {"running": {"startedAt": started_at}}}],
        )
        job_name = pod["metadata"]["labels"]["job-name"]
        self._update("jobs", namespace, job_name, lambda j: j["status"].update(ready=1))

        code = scenario.code
        if scenario.run is not None:
            run = PodRun(
                pod=self.get("pods", pod_name, namespace),
                files=self._pod_files(namespace, pod),
                env=self._pod_env(namespace, pod),
                _append=lambda text: self._append_log(namespace, pod_name, text),
                _cancelled=clock.expired,
            )
            code = scenario.run(run)
            clock.check()
        else:
            for line in scenario.logs:
                self._append_log(namespace, pod_name, line if line.endswith("\n") else line + "\n")
                clock.sleep(scenario.line_seconds)
            if scenario.scenario in ("hang", "deadline"):
                clock.sleep(None)
            clock.sleep(scenario.run_seconds)

        oom = scenario.scenario == "oom"
        reason = "OOMKilled" if oom else ("Completed" if code == 0 else "Error")
        terminated = {
            "exitCode": code,
            "reason": reason,
            "startedAt": started_at,
            "finishedAt": _now(),
            "containerID": container_id,
        }
        self._set_pod(
            namespace,
            pod_name,
            phase="Succeeded" if code == 0 else "Failed",
            conditions=_pod_conditions(cname, ready=False, completed=True),
            containerStatuses=[
                {**running, "ready": False, "started": False, "state": {"terminated": terminated}}
            ],
        )
        return code, reason

    def _schedule(self, namespace: str, pod_name: str, container: str) -> None:
        def change(p):
            p["spec"]["nodeName"] = NODE
            p["status"].update(
                hostIP="192.168.49.2",
                hostIPs=[{"ip": "192.168.49.2"}],
                conditions=_pod_conditions(container, ready=False),
            )

        if self._update("pods", namespace, pod_name, change) is None:
            raise _Gone()

    def _container_config_problem(self, namespace: str, pod: dict):
        """('mount', msg) while a mounted Secret is missing; ('config', msg) while an env
        secretKeyRef cannot resolve; None when the container can start."""
        with self._cond:
            secrets = self._objects["secrets"]
            for volume in pod["spec"].get("volumes") or []:
                ref = volume.get("secret")
                if (
                    ref
                    and not ref.get("optional")
                    and (namespace, ref["secretName"]) not in secrets
                ):
                    return ("mount", f'secret "{ref["secretName"]}" not found')
            for var in pod["spec"]["containers"][0].get("env") or []:
                ref = (var.get("valueFrom") or {}).get("secretKeyRef")
                if not ref or ref.get("optional"):
                    continue
                secret = secrets.get((namespace, ref["name"]))
                if secret is None:
                    return ("config", f'secret "{ref["name"]}" not found')
                if ref["key"] not in (secret.get("data") or {}):
                    return (
                        "config",
                        f"couldn't find key {ref['key']} in Secret {namespace}/{ref['name']}",
                    )
        return None

    def _pod_files(self, namespace: str, pod: dict) -> dict[str, bytes]:
        files: dict[str, bytes] = {}
        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        with self._cond:
            for mount in pod["spec"]["containers"][0].get("volumeMounts") or []:
                ref = volumes.get(mount["name"], {}).get("secret")
                if not ref:
                    continue
                secret = self._objects["secrets"].get((namespace, ref["secretName"])) or {}
                data = {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}
                paths = (
                    {i["key"]: i["path"] for i in ref["items"]}
                    if ref.get("items")
                    else {k: k for k in data}
                )
                if mount.get("subPath"):
                    sub = mount["subPath"]
                    key = next((k for k, p in paths.items() if p == sub), None)
                    if key in data:
                        files[mount["mountPath"]] = data[key]
                    continue
                for key, path in paths.items():
                    if key in data:
                        files[f"{mount['mountPath'].rstrip('/')}/{path}"] = data[key]
        return files

    def _pod_env(self, namespace: str, pod: dict) -> dict[str, str]:
        env = {}
        with self._cond:
            for var in pod["spec"]["containers"][0].get("env") or []:
                if "value" in var:
                    env[var["name"]] = var["value"]
                    continue
                ref = (var.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    secret = self._objects["secrets"].get((namespace, ref["name"])) or {}
                    value = (secret.get("data") or {}).get(ref["key"])
                    if value is not None:
                        env[var["name"]] = base64.b64decode(value).decode("utf-8", "replace")
        return env

    def _finish_job(self, namespace: str, name: str, ok: bool, reason: str, message: str):
        def change(j):
            status = j["status"]
            status.update(active=0, ready=0, terminating=0)
            if ok:
                status.update(
                    succeeded=1,
                    completionTime=_now(),
                    conditions=[
                        _condition("SuccessCriteriaMet", "True", reason, message),
                        _condition("Complete", "True", reason, message),
                    ],
                )
            else:
                status["conditions"] = [
                    _condition("FailureTarget", "True", reason, message),
                    _condition("Failed", "True", reason, message),
                ]

        self._update("jobs", namespace, name, change)

    def _exceed_deadline(self, namespace: str, name: str, pod_name: str) -> None:
        """As the Job controller: mark the Job failed, then delete its active pod."""
        self._finish_job(
            namespace,
            name,
            False,
            "DeadlineExceeded",
            "Job was active longer than specified deadline",
        )

        def terminate(p):
            p["metadata"]["deletionTimestamp"] = _now()
            p["metadata"]["deletionGracePeriodSeconds"] = 30
            status = p["status"]
            if status.get("phase") == "Running":
                status["phase"] = "Failed"
                for cs in status.get("containerStatuses") or []:
                    started = cs["state"].get("running", {}).get("startedAt", _now())
                    cs.update(
                        ready=False,
                        started=False,
                        state={
                            "terminated": {
                                "exitCode": 143,
                                "reason": "Error",
                                "startedAt": started,
                                "finishedAt": _now(),
                                "containerID": cs.get("containerID", ""),
                            }
                        },
                    )

        self._update(
            "jobs",
            namespace,
            name,
            lambda j: j["status"].update(failed=j["status"].get("failed", 0) + 1),
        )
        if self._update("pods", namespace, pod_name, terminate) is not None:
            time.sleep(self.step)
            try:
                self._remove("pods", namespace, pod_name, "Background")
            except ApiError:
                pass


class _Gone(Exception):
    """The Job or its pod was deleted: the fake controller stops caring."""


class _DeadlineExceeded(Exception):
    pass


class _Clock:
    """Sleeps of the fake controller, which end early when the pod goes or the deadline hits."""

    def __init__(
        self, fake: FakeKubernetes, namespace: str, job: str, started: float, deadline: float | None
    ) -> None:
        self.fake, self.namespace, self.job = fake, namespace, job
        self.started, self.deadline = started, deadline
        self.pod: str | None = None

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() - self.started >= self.deadline

    def gone(self, require_pod: bool = True) -> bool:
        objects = self.fake._objects
        if self.fake._stopping.is_set() or (self.namespace, self.job) not in objects["jobs"]:
            return True
        return (
            require_pod
            and self.pod is not None
            and (self.namespace, self.pod) not in objects["pods"]
        )

    def check(self, require_pod: bool = True) -> None:
        if self.gone(require_pod):
            raise _Gone()
        if self.expired():
            raise _DeadlineExceeded()

    def sleep(self, seconds: float | None, require_pod: bool = True) -> None:
        """Sleep ``seconds`` (None: until something ends it), waking on every change."""
        end = None if seconds is None else time.monotonic() + seconds
        with self.fake._cond:
            while True:
                self.check(require_pod)
                now = time.monotonic()
                waits = [0.1]
                if end is not None:
                    if now >= end:
                        return
                    waits.append(end - now)
                if self.deadline is not None:
                    waits.append(max(self.started + self.deadline - now, 0.001))
                self.fake._cond.wait(min(waits))


def _condition(
    type_: str, status: str, reason: str | None = None, message: str | None = None
) -> dict:
    c = {"type": type_, "status": status, "lastProbeTime": None, "lastTransitionTime": _now()}
    if reason:
        c["reason"] = reason
    if message:
        c["message"] = message
    return c


def _pod_conditions(container: str, ready: bool, completed: bool = False) -> list[dict]:
    not_ready = None if ready else ("PodCompleted" if completed else "ContainersNotReady")
    msg = None if ready or completed else f"containers with unready status: [{container}]"
    return [
        _condition("PodReadyToStartContainers", "False" if completed else "True"),
        _condition("Initialized", "True", "PodCompleted" if completed else None),
        _condition("Ready", "True" if ready else "False", not_ready, msg),
        _condition("ContainersReady", "True" if ready else "False", not_ready, msg),
        _condition("PodScheduled", "True"),
    ]


def _waiting_reason(pod: dict) -> str | None:
    """Why a pod's log cannot be read yet, in the API server's words; None when it can."""
    statuses = pod["status"].get("containerStatuses") or []
    if not statuses:
        return "ContainerCreating"
    waiting = statuses[0]["state"].get("waiting")
    if waiting is None:
        return None
    return {
        "ErrImagePull": "image can't be pulled",
        "ImagePullBackOff": "trying and failing to pull image",
    }.get(waiting["reason"], waiting["reason"])


def _terminated(pod: dict) -> bool:
    statuses = pod["status"].get("containerStatuses") or []
    return bool(statuses) and "terminated" in statuses[0]["state"]


def _qos(pod_spec: dict) -> str:
    resources = [c.get("resources") or {} for c in pod_spec.get("containers", [])]
    if not any(r.get("requests") or r.get("limits") for r in resources):
        return "BestEffort"
    if all(
        r.get("limits", {}).get("cpu")
        and r.get("limits", {}).get("memory")
        and r.get("requests", r.get("limits")) == r.get("limits")
        for r in resources
    ):
        return "Guaranteed"
    return "Burstable"


def _image_id(image: str) -> str:
    if "@sha256:" in image:
        return image
    return image.split(":")[0] + "@sha256:" + uuid.uuid5(uuid.NAMESPACE_URL, image).hex * 2


def _random_suffix() -> str:
    return "".join(random.choices("bcdfghjklmnpqrstvwxz2456789", k=5))


def _merge_patch(target, patch):
    """RFC 7386 (and, for our purposes, strategic merge: lists are replaced)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):  # strategic-merge directives: not supported, ignored
            continue
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge_patch(out.get(key), value)
    return out


def _json_patch(target: dict, ops: list) -> dict:
    """RFC 6902: add, remove, replace, test."""
    doc = copy.deepcopy(target)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent = doc
        for p in parts[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent[p]
        last = parts[-1]
        kind = op["op"]
        if isinstance(parent, list):
            index = len(parent) if last == "-" else int(last)
            if kind == "add":
                parent.insert(index, op["value"])
            elif kind == "remove":
                parent.pop(index)
            elif kind == "replace":
                parent[index] = op["value"]
            elif kind == "test" and parent[index] != op["value"]:
                raise ApiError(422, "Invalid", f"test failed at {op['path']}")
        else:
            if kind in ("add", "replace"):
                if kind == "replace" and last not in parent:
                    raise ApiError(422, "Invalid", f"replace of missing {op['path']}")
                parent[last] = op["value"]
            elif kind == "remove":
                if last not in parent:
                    raise ApiError(422, "Invalid", f"remove of missing {op['path']}")
                del parent[last]
            elif kind == "test" and parent.get(last) != op["value"]:
                raise ApiError(422, "Invalid", f"test failed at {op['path']}")
    return doc


# -- HTTP -------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeKubernetes

    def log_message(self, format, *args):  # noqa: A002 - quiet; fake.requests records all
        pass

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_DELETE(self):
        self._handle("DELETE")

    def do_PATCH(self):
        self._handle("PATCH")

    def do_PUT(self):
        self._handle("PUT")

    def _handle(self, method: str) -> None:
        fake = self.fake
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        fake.requests.append(
            {
                "method": method,
                "path": url.path,
                "query": query,
                "body": body,
                "content_type": self.headers.get("Content-Type"),
            }
        )
        try:
            if self.headers.get("Authorization") != f"Bearer {fake.token}":
                raise ApiError(401, "Unauthorized", "Unauthorized")
            if raw and body is None:
                raise ApiError(400, "BadRequest", "the request body is not valid JSON")
            self._route(method, url.path, query, body)
        except ApiError as e:
            self._json(e.code, e.status())
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _route(self, method: str, path: str, query: dict, body) -> None:
        fake = self.fake
        if path in ("/version", "/version/") and method == "GET":
            major, minor = fake.k8s_version.split(".")[:2]
            return self._json(
                200,
                {
                    "major": major,
                    "minor": minor,
                    "gitVersion": f"v{major}.{minor}.0-fake",
                    "gitCommit": "0" * 40,
                    "gitTreeState": "clean",
                    "buildDate": "2026-01-01T00:00:00Z",
                    "goVersion": "go1.24.0",
                    "compiler": "gc",
                    "platform": "linux/amd64",
                },
            )
        m = re.match(r"^/api/v1/namespaces/([^/]+)$", path)
        if m and method == "GET":
            ns = m.group(1)
            fake._check_namespace(ns)
            return self._json(
                200,
                {
                    "kind": "Namespace",
                    "apiVersion": "v1",
                    "metadata": {"name": ns},
                    "status": {"phase": "Active"},
                },
            )
        m = _ROUTE.match(path)
        if (
            not m
            or m.group("res") not in RESOURCES
            or RESOURCES[m.group("res")][3] != m.group("prefix")
        ):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        ns, res, name, sub = m.group("ns", "res", "name", "sub")
        if sub is not None and not (res == "pods" and sub == "log"):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if name is None:
            if method == "POST":
                dry = query.get("dryRun") == "All"
                return self._json(200 if dry else 201, fake.create(res, ns, body, dry_run=dry))
            if method == "GET" and query.get("watch") in ("true", "1"):
                timeout = float(query["timeoutSeconds"]) if query.get("timeoutSeconds") else None
                events = fake.watch_events(
                    res,
                    ns,
                    query.get("labelSelector"),
                    query.get("fieldSelector"),
                    query.get("resourceVersion"),
                    timeout,
                )
                return self._stream("application/json", (json.dumps(e) + "\n" for e in events))
            if method == "GET":
                return self._json(
                    200,
                    fake.list_objects(
                        res, ns, query.get("labelSelector"), query.get("fieldSelector")
                    ),
                )
        elif sub == "log":
            if method == "GET":
                return self._stream("text/plain", fake.log_chunks(ns, name, query))
        else:
            if method == "GET":
                return self._json(200, fake.read(res, ns, name))
            if method == "DELETE":
                policy = (body or {}).get("propagationPolicy") or query.get("propagationPolicy")
                return self._json(200, fake.delete(res, ns, name, policy))
            if method == "PATCH":
                return self._json(
                    200, fake.patch(res, ns, name, body, self.headers.get("Content-Type", ""))
                )
        raise ApiError(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )

    def _json(self, code: int, obj) -> None:
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, content_type: str, chunks) -> None:
        """Chunked transfer encoding, one chunk per piece as it is produced."""
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        for piece in chunks:
            self._chunk(piece)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        self.close_connection = True

    def _chunk(self, text: str) -> None:
        data = text.encode("utf-8")
        if data:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()


# -- pytest -----------------------------------------------------------------------------------


@pytest.fixture
def k8s_fake(tmp_path):
    """A started FakeKubernetes, namespaces ``default`` and ``mlc``, kubeconfig written."""
    fake = FakeKubernetes(namespaces=("default", "mlc"))
    fake.start()
    fake.write_kubeconfig(tmp_path / "kubeconfig")
    try:
        yield fake
    finally:
        fake.stop()
