"""A small, honest fake of the Kubernetes API server, for tests of code that uses the official
``kubernetes`` Python client.

It speaks the real paths and JSON over HTTP on 127.0.0.1 (stdlib ``http.server`` in a thread),
checks a bearer token, and plays the part of the Job controller and the kubelet for the Jobs it
is given, so a client sees what it would see on a cluster:

* ``batch/v1`` Jobs: create (server-side defaults, ``spec.selector``, the ``job-name`` labels),
  read, list, watch, patch, delete with ``propagationPolicy`` (a Job deleted without one
  orphans its pods, as on a real cluster). ``activeDeadlineSeconds``, ``backoffLimit`` and
  ``ttlSecondsAfterFinished`` are honoured, on a clock that ``time_scale`` can speed up.
  Indexed Jobs (``completionMode: Indexed``): a pod per index with the completion-index
  annotation and label and ``JOB_COMPLETION_INDEX``, at most ``parallelism`` at once,
  ``backoffLimitPerIndex`` (dropped before 1.29, as a server with its gate off does),
  ``completedIndexes``/``failedIndexes``, the pods' own ``activeDeadlineSeconds``, and the
  Complete / Failed (FailedIndexes) conditions; ``fake.peak_running`` keeps the most pods of
  one that ran at once. Env ``fieldRef`` values (the downward API) resolve.
* ``v1`` Pods, created by the fake controller: read, list by label/field selector, watch,
  delete, and ``/log`` with ``follow=true`` streamed chunk by chunk as lines appear (also
  ``tailLines``, ``timestamps``). A pod goes Pending -> Running -> Succeeded/Failed, with the
  container statuses a kubelet reports; it waits in ContainerCreating while a Secret it mounts
  is missing, and in CreateContainerConfigError while an env ``secretKeyRef`` cannot resolve.
  Init containers run first, one after the other, each to completion (phase Pending,
  ``initContainerStatuses``, condition Initialized); one that fails fails the pod, and its
  main container never starts. Each has its own log (``/log?container=NAME``).
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
import hashlib
import http.client
import io
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
SCENARIOS = (
    "success",
    "fail",
    "oom",
    "image_pull",
    "unschedulable",
    "deadline",
    "hang",
    "evicted",  # by the node (memory pressure) while its image is pulled: it never runs
    "crash_loop",  # a Deployment's pod whose container keeps exiting (CrashLoopBackOff)
)

# resource -> (group, version, kind, path prefix, namespaced name rule)
RESOURCES = {
    "jobs": ("batch", "v1", "Job", "/apis/batch/v1"),
    "pods": ("", "v1", "Pod", "/api/v1"),
    "secrets": ("", "v1", "Secret", "/api/v1"),
    "networkpolicies": ("networking.k8s.io", "v1", "NetworkPolicy", "/apis/networking.k8s.io/v1"),
    "deployments": ("apps", "v1", "Deployment", "/apis/apps/v1"),
    "replicasets": ("apps", "v1", "ReplicaSet", "/apis/apps/v1"),
    "services": ("", "v1", "Service", "/api/v1"),
}
_ROUTE = re.compile(
    r"^(?P<prefix>/api/v1|/apis/batch/v1|/apis/apps/v1|/apis/networking\.k8s\.io/v1)"
    r"/namespaces/(?P<ns>[^/]+)/(?P<res>[a-z]+)(?:/(?P<name>[^/]+))?(?:/(?P<sub>[a-z]+))?$"
)
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_PROXY = re.compile(
    r"^/api/v1/namespaces/(?P<ns>[^/]+)/services/(?:https?:)?(?P<name>[^/:]+)(?::(?P<port>[^/]+))?"
    r"/proxy(?P<rest>/.*)?$"
)
POD_TEMPLATE_HASH = "pod-template-hash"
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


def _parse_time(text: str) -> datetime:
    """An RFC 3339 time of the API (``sinceTime`` has whole seconds once it reaches the
    kubelet: the API server passes it on without its fraction)."""
    whole = text.split(".")[0].rstrip("Z")
    return datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)


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
    # What the container does on SIGTERM: "exit" (143 at once, as a process that handles it),
    # "ignore" (PID 1 without a handler: it runs on until SIGKILL at the grace period's end).
    sigterm: str = "exit"
    pull_failures: int = 0  # ErrImagePull / ImagePullBackOff this many times, then it pulls
    sidecar: str | None = None  # a container a mutating webhook injects (a mesh proxy)
    suspended_seconds: float | None = None  # a queue (Kueue) holds the Job suspended this long
    evict_after: float | None = None  # the node evicts the running pod (memory pressure)

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
    # The container it runs, as the pod spec has it: an init container's, else the main one's.
    container: dict = field(default_factory=dict)
    _container: _Container | None = field(repr=False, default=None)

    def log(self, text: str) -> None:
        """Write to the container's log (a newline is added when missing)."""
        self._append(text if text.endswith("\n") else text + "\n")

    def write(self, text: str) -> None:
        """Write to the container's log as is (a line ends only at a newline)."""
        self._append(text)

    @property
    def cancelled(self) -> bool:
        """True once the kubelet sent SIGTERM (the pod is deleted, or past its deadline)."""
        return self._container is not None and self._container.term_sent

    def on_signal(self, handler: Callable[[str], None]) -> None:
        """Call ``handler("SIGTERM")`` when the pod is deleted, ``handler("SIGKILL")`` at the
        end of its grace period: for a container that really runs somewhere."""
        if self._container is not None:
            self._container.signal_handlers.append(handler)

    def serve_at(self, port: int, host: str = "127.0.0.1") -> None:
        """The container's port is reachable at ``host:port`` (a container of the test's):
        the kubelet's readiness probes and the Service proxy go there."""
        if self._container is not None:
            self._container.endpoint = (host, port)

    def on_exec(self, handler: Callable[[list[str]], tuple[bytes, bytes, int]]) -> None:
        """Answer ``pods/exec`` of this pod: ``handler(command) -> (stdout, stderr, code)``."""
        if self._container is not None:
            self._container.exec_handler = handler


@dataclass
class _Container:
    """The kubelet's view of the one container it runs for a pod."""

    term_sent: bool = False
    kill_sent: bool = False
    signal_handlers: list = field(default_factory=list)
    exec_handler: Callable[[list[str]], tuple[bytes, bytes, int]] | None = None
    endpoint: tuple[str, int] | None = None  # where its port is served (PodRun.serve_at)

    def signal(self, name: str) -> None:
        if name == "SIGTERM":
            self.term_sent = True
        else:
            self.kill_sent = True
        for handler in self.signal_handlers:
            try:
                handler(name)
            except Exception:  # the container may be gone already
                pass


@dataclass
class Fault:
    status: int | str
    method: str | None
    path: re.Pattern
    times: int | None
    message: str | None
    reason: str | None
    hits: int = 0  # how many requests it answered


@dataclass
class _Drops:
    every_bytes: tuple[int, int]
    every_seconds: float | None
    times: int | None

    def budget(self, dropped: int) -> tuple[int | None, float | None]:
        """Bytes, and the time, after which the next stream is cut (None, None: it is not)."""
        if self.times is not None and dropped >= self.times:
            return None, None
        cut_at = None if self.every_seconds is None else time.monotonic() + self.every_seconds
        return random.randint(*self.every_bytes), cut_at


class _StreamCut(Exception):
    """A follow stream is cut: the connection closes without the last chunk."""


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
        # pod -> the log of its container's previous life (restarted: ?previous=true)
        self._previous_logs: dict[tuple[str, str], list[tuple[str, str]]] = {}
        self._scripts: list[tuple[str, Scenario]] = []
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._containers: dict[tuple[str, str], _Container] = {}  # running pods
        # Misbehaviour of a real cluster, off unless a test asks for it:
        self.log_rotate_bytes: int | None = None  # the kubelet rotates the log file at this size
        self._rotated: dict[tuple[str, str], int] = {}  # pod -> entries in rotated files
        self._log_size: dict[tuple[str, str], int] = {}  # pod -> size of its current file
        self._drops: _Drops | None = None  # streams (log, exec) cut at random points
        self.dropped = 0  # how many streams were cut
        self.rotations = 0  # how many log files were rotated away
        # Seconds from SuccessCriteriaMet/FailureTarget to Complete/Failed (1.31+): the
        # controller waits for every pod to be terminated and accounted for.
        self.final_condition_delay: float | None = None
        self._faults: list[Fault] = []
        # A restarting container's back-off (10 s, 20 s, ... up to 300 s), times this.
        self.restart_scale = 0.01
        # (namespace, Job) -> the most pods of an Indexed Job that ran at once.
        self.peak_running: dict[tuple[str, str], int] = {}

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

    def drop_streams(
        self,
        every_bytes: tuple[int, int] = (1, 64 * 1024),
        *,
        every_seconds: float | None = None,
        times: int | None = None,
    ):
        """Cut streams (``pods/log``, ``pods/exec``) as load balancers and idle timeouts do:
        after a random number of bytes in ``every_bytes`` or after ``every_seconds``; at most
        ``times`` streams (None: every one)."""
        self._drops = _Drops(every_bytes, every_seconds, times)

    def fault(
        self,
        status: int | str,
        *,
        method: str | None = None,
        path: str = "",
        times: int | None = 1,
        message: str | None = None,
        reason: str | None = None,
    ) -> Fault:
        """Answer matching requests (``path``: a regex searched in the path) with ``status``:
        an HTTP status (429 comes with Retry-After), ``"reset"`` (the connection is closed
        without an answer), ``"lost"`` (the request is carried out, its answer lost on the
        way back) or ``"watch-error"`` (a watch that sends an ERROR event, 410 Expired, and
        ends). ``times``: how many requests (None: all)."""
        f = Fault(status, method, re.compile(path), times, message, reason)
        with self._cond:
            self._faults.append(f)
        return f

    def _fault_for(self, method: str, path: str, watch: bool) -> Fault | None:
        with self._cond:
            for f in self._faults:
                if f.status == "watch-error" and not watch:
                    continue
                if (f.method and f.method != method) or not f.path.search(path):
                    continue
                if f.times is not None and f.hits >= f.times:
                    continue
                f.hits += 1
                return f
        return None

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
        if resource == "pods":
            pod = self._delete_pod(namespace, name)
            if pod is None:
                raise _not_found(resource, name)
            return pod
        with self._cond:
            obj = self._objects[resource].pop((namespace, name), None)
            if obj is None:
                raise _not_found(resource, name)
            obj["metadata"]["deletionTimestamp"] = _now()
            self._record(resource, "DELETED", obj)
            self._collect_garbage(namespace, obj["metadata"]["uid"], propagation)
            return obj

    def _collect_garbage(self, namespace: str, uid: str, propagation: str | None) -> None:
        """The garbage collector, once the object ``uid`` is gone: its dependents go too
        when none of their owners is left (unless orphaned). Holds the lock."""
        with self._cond:
            alive = {
                o["metadata"]["uid"] for objects in self._objects.values() for o in objects.values()
            }
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
                    elif (ns, n) in objects and not any(r.get("uid") in alive for r in refs):
                        self._remove(res, ns, n, propagation)

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
                if self._scenario_for(name).suspended_seconds is not None:
                    obj.setdefault("spec", {})["suspend"] = True  # a queue's webhook (Kueue)
                self._default_job(obj)
            elif resource == "deployments":
                self._default_deployment(obj)
            elif resource == "services":
                self._default_service(obj)
            if dry_run:
                return obj
            created = self._put(resource, obj, "ADDED")
        if resource == "deployments":
            self._spawn(self._drive_deployment, (namespace, name), f"deployment-{name}")
        if resource == "jobs":
            self._spawn(self._drive_job, (namespace, name), f"job-{name}")
        return created

    def _spawn(self, target, args: tuple, name: str) -> None:
        """A thread of the fake's controllers (stopped with the fake: they watch for it)."""
        thread = threading.Thread(target=target, args=args, name=f"k8s-fake-{name}", daemon=True)
        thread.start()
        self._threads.append(thread)

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
            problem = _indexed_problem(obj.get("spec") or {}, policy)
            if problem:
                raise _invalid(resource, name, [problem])
        elif resource == "services" and (len(name) > 63 or not _DNS_1035.match(name)):
            raise _invalid(
                resource,
                name,
                [
                    (
                        "metadata.name",
                        f'Invalid value: "{name}": a DNS-1035 label must consist of lower case '
                        "alphanumeric characters or '-', start with an alphabetic character, and "
                        "end with an alphanumeric character",
                    )
                ],
            )
        elif len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
            raise _invalid(
                resource,
                name,
                [("metadata.name", f'Invalid value: "{name}": a lowercase RFC 1123 subdomain')],
            )
        if resource == "deployments":
            spec = obj.get("spec") or {}
            template = spec.get("template") or {}
            wanted = (spec.get("selector") or {}).get("matchLabels") or {}
            labels = (template.get("metadata") or {}).get("labels") or {}
            if not wanted or any(labels.get(k) != v for k, v in wanted.items()):
                raise _invalid(
                    resource,
                    name,
                    [
                        (
                            "spec.template.metadata.labels",
                            f"Invalid value: {labels}: `selector` does not match template `labels`",
                        )
                    ],
                )
            policy = (template.get("spec") or {}).get("restartPolicy", "Always")
            if policy != "Always":
                raise _invalid(
                    resource,
                    name,
                    [
                        (
                            "spec.template.spec.restartPolicy",
                            f'Unsupported value: "{policy}": supported values: "Always"',
                        )
                    ],
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

    def _minor(self) -> tuple[int, int]:
        major, minor = self.k8s_version.split(".")[:2]
        return int(major), int(minor)

    def _default_job(self, job: dict) -> None:
        """What the API server and the Job controller add to a new Job."""
        meta, spec = job["metadata"], job.setdefault("spec", {})
        uid, name = meta["uid"], meta["name"]
        if self._minor() < (1, 29):  # alpha in 1.28, its gate off: the server drops it
            spec.pop("backoffLimitPerIndex", None)
        spec.setdefault("parallelism", 1)
        spec.setdefault("completions", 1)
        # With a per-index limit, the Job's own defaults to "never" (MaxInt32).
        spec.setdefault("backoffLimit", 2147483647 if "backoffLimitPerIndex" in spec else 6)
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
        # A namespace that does not exist lists as empty on a real server: no 404.
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
        # marked for deletion; an immediate one with a Status, but a Service's with the
        # Service (its storage returns the deleted object).
        if resource == "services":
            return obj
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
            if resource == "deployments" and patched["spec"].get("selector") != current["spec"].get(
                "selector"
            ):
                raise _invalid(
                    resource,
                    name,
                    [("spec.selector", "Invalid value: field is immutable")],
                )
            if resource == "services" and patched["spec"].get("clusterIP") != current["spec"].get(
                "clusterIP"
            ):
                raise _invalid(
                    resource, name, [("spec.clusterIP", "Invalid value: field is immutable")]
                )
            if resource == "deployments":  # defaulted on every write, as on create
                _default_pod_spec(patched["spec"]["template"]["spec"])
            if resource != "pods":
                self._validate(resource, {k: v for k, v in patched.items() if k != "status"})
            if resource != "pods" and patched.get("spec") != current.get("spec"):
                patched["metadata"]["generation"] = current["metadata"].get("generation", 1) + 1
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
        container = _main_container(pod)["name"]
        names = [c["name"] for c in pod["spec"]["containers"]]
        wanted = query.get("container")
        if not wanted and len(names) > 1:
            raise ApiError(
                400,
                "BadRequest",
                f"a container name must be specified for pod {name}, choose one of: "
                f"[{' '.join(names)}]",
            )
        inits = [c["name"] for c in pod["spec"].get("initContainers") or []]
        if wanted and wanted in inits:
            status = next(
                (
                    c
                    for c in pod["status"].get("initContainerStatuses") or []
                    if c["name"] == wanted
                ),
                None,
            )
            if status is None or "waiting" in status["state"]:
                raise ApiError(
                    400,
                    "BadRequest",
                    f'container "{wanted}" in pod "{name}" is waiting to start: PodInitializing',
                )
            return self._log_stream((namespace, f"{name}/{wanted}"), query)
        if wanted and wanted not in names:
            raise ApiError(400, "BadRequest", f"container {wanted} is not valid for pod {name}")
        if wanted and wanted != container:
            return iter(())  # the sidecar's log: nothing of ours
        if query.get("previous") == "true":
            with self._cond:
                previous = self._previous_logs.get((namespace, name))
            if previous is not None:
                tail = int(query["tailLines"]) if query.get("tailLines") else None
                lines = previous[-tail:] if tail else previous
                stamp = query.get("timestamps") == "true"
                return iter(["".join(f"{ts} {line}" if stamp else line for ts, line in lines)])
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
        """The log as the kubelet serves it: from the current file only (earlier ones were
        rotated away), a line's timestamp at its start, cut when the fake drops streams."""
        follow = query.get("follow") == "true"
        timestamps = query.get("timestamps") == "true"
        tail = int(query["tailLines"]) if query.get("tailLines") else None
        since = _parse_time(query["sinceTime"]) if query.get("sinceTime") else None
        budget, cut_at = self._drops.budget(self.dropped) if self._drops else (None, None)
        previous = {"ended": True}  # did the last entry end its line?

        def fmt(entries):
            out = []
            for ts, line in entries:
                if since is not None and _parse_time(ts) < since:
                    previous["ended"] = line.endswith("\n")
                    continue
                out.append(f"{ts} {line}" if timestamps and previous["ended"] else line)
                previous["ended"] = line.endswith("\n")
            return "".join(out)

        def cut(text):
            nonlocal budget
            if budget is None and cut_at is None:
                return text, False
            if cut_at is not None and time.monotonic() >= cut_at:
                return "", True
            if budget is not None and len(text) >= budget:
                text, budget = text[:budget], 0
                return text, True
            if budget is not None:
                budget -= len(text)
            return text, False

        with self._cond:
            lines = self._logs.get(key, [])
            sent = len(lines)
            lines = lines[self._rotated.get(key, 0) :]
        if tail is not None:
            lines = lines[-tail:] if tail else []
        while True:
            text, dropped = cut(fmt(lines) if lines else "")  # an idle stream is cut too
            if text:
                yield text
            if dropped:
                with self._cond:
                    self.dropped += 1
                raise _StreamCut()
            if not follow or self._stopping.is_set():
                return
            with self._cond:
                entries = self._logs.get(key, [])
                lines = entries[sent:]
                pod = self._objects["pods"].get(key)
                done = pod is None or _terminated(pod)
                if not lines and done:
                    return
                if not lines:
                    self._cond.wait(0.05)
                sent += len(lines)

    def exec_in(self, namespace: str, name: str, container: str | None, command: list[str]):
        """Check an exec request (raising ApiError as the server would), then return a
        callable that runs it: (stdout, stderr, exit code)."""
        pod = self.read("pods", namespace, name)
        names = [c["name"] for c in pod["spec"]["containers"]]
        if not container and len(names) > 1:
            raise ApiError(
                400,
                "BadRequest",
                f"a container name must be specified for pod {name}, choose one of: "
                f"[{' '.join(names)}]",
            )
        if not command:
            raise ApiError(400, "BadRequest", "you must specify at least 1 command")
        if _terminated(pod) or pod["status"].get("phase") in ("Succeeded", "Failed"):
            raise ApiError(
                400,
                "BadRequest",
                "cannot exec into a container in a completed pod; current phase is "
                + pod["status"].get("phase", "Failed"),
            )
        with self._cond:
            handler = (self._containers.get((namespace, name)) or _Container()).exec_handler
        if handler is None:
            return lambda: (b"", f"exec: {command[0]!r}: not found\n".encode(), 127)
        return lambda: handler(list(command))

    # -- the Job controller and the kubelet ----------------------------------------------------

    def _append_log(self, namespace: str, pod: str, text: str) -> None:
        """As the container runtime writes the log file: an entry per line, split only at
        newlines (a text without one is a partial entry); rotated past log_rotate_bytes."""
        key = (namespace, pod)
        with self._cond:
            entries = self._logs.setdefault(key, [])
            for line in re.split(r"(?<=\n)", text):
                if line:
                    entries.append((_now_nano(), line))
            self._log_size[key] = self._log_size.get(key, 0) + len(text)
            if self.log_rotate_bytes and self._log_size[key] > self.log_rotate_bytes:
                self._rotated[key], self._log_size[key] = len(entries), 0
                self.rotations += 1
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
        clock = _Clock(self, namespace, name, started, deadline, scenario)
        if spec.get("suspend"):
            self._hold_suspended(namespace, name, scenario, clock)
            clock.started = time.monotonic()  # the deadline counts from the resume
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
        run = self._run_indexed if spec.get("completionMode") == "Indexed" else self._run_pods
        if not run(namespace, name, job, scenario, clock):
            return  # deleted, or the fake stops: no TTL to wait for
        ttl = spec.get("ttlSecondsAfterFinished")
        if ttl is not None:
            clock.deadline = None
            clock.sleep(ttl * self.time_scale, require_pod=False)
            try:  # the TTL controller deletes in the foreground
                self._remove("jobs", namespace, name, "Foreground")
            except ApiError:
                pass

    def _run_pods(self, namespace: str, name: str, job: dict, scenario: Scenario, clock) -> bool:
        """A Job's pods one after another, until one succeeds or backoffLimit more failed;
        False when the Job (or the fake) went meanwhile."""
        spec = job["spec"]
        failures = 0
        while True:
            pod_name = self._create_pod(job, scenario)
            container = _Container()
            clock.pod, clock.container = pod_name, container
            with self._cond:
                self._containers[(namespace, pod_name)] = container
            try:
                code, reason = self._run_pod(namespace, pod_name, scenario, clock)
            except _Gone:
                if self._stopping.is_set():
                    return False
                code = None  # deleted before its container ran: a failed attempt
            finally:
                with self._cond:
                    self._containers.pop((namespace, pod_name), None)
            self._kubelet_forgets(namespace, pod_name)
            if clock.deadline_hit:
                self._finish_job(namespace, name, False, *_DEADLINE, target_set=True)
                return True
            if self.get("jobs", name, namespace) is None:
                return False  # deleted: no new pod
            if code == 0:
                self._finish_job(namespace, name, True, *_COMPLETED)
                return True
            failures += 1
            self._update(
                "jobs",
                namespace,
                name,
                lambda j: j["status"].update(failed=failures, active=0, ready=0),
            )
            if failures > spec.get("backoffLimit", 6):
                self._finish_job(namespace, name, False, *_BACKOFF)
                return True

    # -- Indexed Jobs (completionMode: Indexed) -----------------------------------------------

    def _run_indexed(self, namespace: str, name: str, job: dict, scenario: Scenario, clock) -> bool:
        """The Job controller for an Indexed Job: a pod per index (annotated and labelled with
        it, JOB_COMPLETION_INDEX in its containers' env), at most ``parallelism`` at once (read
        again as it goes: a patch changes it), lowest index first. A failed index is retried
        after a back-off: with backoffLimitPerIndex up to that many times on its own, then it
        is a failed index and the others go on; without, while the Job's failures stay within
        backoffLimit, past which the running pods are deleted and the Job fails. The status
        says completedIndexes (and failedIndexes) as the controller writes them. False when
        the Job (or the fake) went meanwhile."""
        spec = job["spec"]
        count = spec["completions"]
        per_index = spec.get("backoffLimitPerIndex")
        pending = list(range(count))
        retry_at: dict[int, float] = {}
        failures = dict.fromkeys(range(count), 0)
        succeeded: set[int] = set()
        failed: set[int] = set()
        running: dict[int, str] = {}
        ended: list[tuple[int, int | None]] = []  # (index, exit code) of pods that ended
        total_failed = 0
        ending: tuple[str, str] | None = None  # why the Job fails before its indexes ran
        while True:
            with self._cond:
                current = self._objects["jobs"].get((namespace, name))
            if current is None or self._stopping.is_set():
                return False
            if ending is None and clock.expired():
                clock.deadline_hit, ending = True, _DEADLINE
            elif ending is None and per_index is None and total_failed > spec["backoffLimit"]:
                ending = _BACKOFF
            if ending is not None:
                if not _has_condition(current, "FailureTarget"):
                    self._fail_target(namespace, name, *ending)
                for pod_name in running.values():  # gracefully, as the controller does
                    self._delete_pod(namespace, pod_name)
            else:
                now = time.monotonic()
                for index in sorted(pending):
                    if len(running) >= current["spec"].get("parallelism", 1):
                        break
                    if retry_at.get(index, 0.0) > now:
                        continue
                    pending.remove(index)
                    running[index] = self._start_index_pod(
                        namespace, job, scenario, index, failures[index], ended
                    )
                with self._cond:
                    peak = self.peak_running.get((namespace, name), 0)
                    self.peak_running[(namespace, name)] = max(peak, len(running))
            self._index_status(namespace, name, succeeded, failed, total_failed, per_index)
            if not running and (ending is not None or len(succeeded) + len(failed) == count):
                break
            with self._cond:
                if not ended:
                    self._cond.wait(self.step)
                done, ended[:] = list(ended), []
            for index, code in done:
                running.pop(index, None)
                if code == 0:
                    succeeded.add(index)
                    continue
                failures[index] += 1
                total_failed += 1
                if per_index is not None and failures[index] > per_index:
                    failed.add(index)
                elif ending is None:
                    pending.append(index)  # 10 s, 20 s, ... up to 6 min, times restart_scale
                    delay = min(10 * 2 ** (failures[index] - 1), 360) * self.restart_scale
                    retry_at[index] = time.monotonic() + delay
        self._index_status(namespace, name, succeeded, failed, total_failed, per_index)
        if ending is not None:
            self._finish_job(namespace, name, False, *ending, target_set=True)
        elif failed:
            self._finish_job(namespace, name, False, *_FAILED_INDEXES)
        else:
            self._finish_job(namespace, name, True, *_COMPLETED)
        return True

    def _start_index_pod(
        self, namespace: str, job: dict, scenario: Scenario, index: int, failures: int, ended
    ) -> str:
        """Create the pod of one index and let a kubelet thread run it; its exit code (None:
        deleted before it ran) goes to ``ended``."""
        pod_name = self._create_pod(job, scenario, index=index, index_failures=failures)
        clock = _Clock(self, namespace, job["metadata"]["name"], time.monotonic(), None, scenario)
        deadline = job["spec"]["template"]["spec"].get("activeDeadlineSeconds")
        clock.pod_deadline = None if deadline is None else deadline * self.time_scale

        def kubelet():
            container = _Container()
            clock.pod, clock.container = pod_name, container
            with self._cond:
                self._containers[(namespace, pod_name)] = container
            code = None
            try:
                code = self._run_pod(namespace, pod_name, scenario, clock)[0]
            except _Gone:
                pass
            except Exception:  # noqa: BLE001 - a run callback that raised: the container failed
                code = 1
            finally:
                with self._cond:
                    self._containers.pop((namespace, pod_name), None)
            self._kubelet_forgets(namespace, pod_name)
            with self._cond:
                ended.append((index, code))
                self._cond.notify_all()

        self._spawn(kubelet, (), f"pod-{pod_name}")
        return pod_name

    def _index_status(
        self, namespace: str, name: str, succeeded, failed, failures: int, per_index
    ) -> None:
        """The Job's counts from its pods, and its indexes; written only when they change."""
        with self._cond:
            job = self._objects["jobs"].get((namespace, name))
            if job is None:
                return
            uid = job["metadata"]["uid"]
            pods = [
                p
                for (ns, _), p in self._objects["pods"].items()
                if ns == namespace and p["metadata"]["labels"].get("controller-uid") == uid
            ]
            live = [
                p
                for p in pods
                if not _terminated(p)
                and p["status"].get("phase")
                not in (
                    "Succeeded",
                    "Failed",
                )
            ]
            wanted = {
                "active": sum(1 for p in live if not p["metadata"].get("deletionTimestamp")),
                "ready": sum(1 for p in live if _ready(p)),
                "terminating": sum(1 for p in live if p["metadata"].get("deletionTimestamp")),
                "succeeded": len(succeeded),
                "failed": failures,
            }
            if succeeded:
                wanted["completedIndexes"] = format_indexes(succeeded)
            if per_index is not None:
                wanted["failedIndexes"] = format_indexes(failed)
            if all(job["status"].get(k) == v for k, v in wanted.items()):
                return
            job["status"].update(wanted)
            self._record("jobs", "MODIFIED", job)

    def _deadline_pod(self, namespace: str, pod_name: str) -> None:
        """The kubelet ends a pod past its activeDeadlineSeconds: Failed, DeadlineExceeded."""

        def change(p):
            p["status"].update(
                reason="DeadlineExceeded",
                message="Pod was active on the node longer than the specified deadline",
            )

        self._update("pods", namespace, pod_name, change)
        container = self._containers.get((namespace, pod_name))
        if container is not None:
            container.signal("SIGKILL")

    def _hold_suspended(self, namespace: str, name: str, scenario: Scenario, clock) -> None:
        """A queue (Kueue) admitted the Job suspended: no pod until it resumes it."""
        suspended = _condition("Suspended", "True", "JobSuspended", "Job suspended")
        self._update("jobs", namespace, name, lambda j: j["status"].update(conditions=[suspended]))
        clock.sleep(scenario.suspended_seconds, require_pod=False)
        resumed = _condition("Suspended", "False", "JobResumed", "Job resumed")

        def resume(j):
            j["spec"]["suspend"] = False
            j["status"]["conditions"] = [resumed]

        self._update("jobs", namespace, name, resume)

    def _never_pull(self, namespace, pod_name, image, message, status: dict, sleep) -> None:
        """The kubelet failing to pull ``image`` for ever: ErrImagePull, then ImagePullBackOff,
        again and again (``status``: the container's status but its state)."""
        pulls = 0
        while True:
            sleep(self.step * 3)
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
                namespace, pod_name, containerStatuses=[{**status, "state": {"waiting": state}}]
            )

    def _kubelet_forgets(self, namespace: str, pod_name: str) -> None:
        """A pod marked for deletion goes once its container has ended."""
        with self._cond:
            pod = self._objects["pods"].get((namespace, pod_name))
            if pod is None or not pod["metadata"].get("deletionTimestamp"):
                return
            self._objects["pods"].pop((namespace, pod_name))
            self._record("pods", "DELETED", pod)
            self._collect_garbage(namespace, pod["metadata"]["uid"], "Background")

    def _delete_pod(self, namespace: str, pod_name: str) -> dict | None:
        """A graceful deletion, as the kubelet carries it out: a pod whose container runs is
        marked, its container gets SIGTERM, then SIGKILL at the end of the grace period, and
        the pod goes when the container has ended. Others go at once."""
        with self._cond:
            pod = self._objects["pods"].get((namespace, pod_name))
            container = self._containers.get((namespace, pod_name))
            if pod is None:
                return None
            if container is None or _terminated(pod) or not _running(pod):
                self._objects["pods"].pop((namespace, pod_name))
                pod["metadata"]["deletionTimestamp"] = _now()
                self._record("pods", "DELETED", pod)
                self._collect_garbage(namespace, pod["metadata"]["uid"], "Background")
                if container is not None:
                    container.signal("SIGKILL")
                return pod
            if pod["metadata"].get("deletionTimestamp"):
                return copy.deepcopy(pod)
            grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
            pod["metadata"]["deletionTimestamp"] = _now()
            pod["metadata"]["deletionGracePeriodSeconds"] = grace
            self._record("pods", "MODIFIED", pod)
            marked = copy.deepcopy(pod)

        def kubelet():
            container.signal("SIGTERM")
            end = time.monotonic() + grace * self.time_scale
            with self._cond:
                while (namespace, pod_name) in self._containers and time.monotonic() < end:
                    self._cond.wait(min(0.05, max(end - time.monotonic(), 0.001)))
                if (namespace, pod_name) not in self._containers:
                    return
            container.signal("SIGKILL")

        thread = threading.Thread(target=kubelet, name=f"k8s-fake-kill-{pod_name}", daemon=True)
        thread.start()
        self._threads.append(thread)
        return marked

    def _evict(self, namespace: str, pod_name: str) -> None:
        """The node under memory pressure evicts the pod: no grace, the pod stays Failed."""
        message = (
            "The node was low on resource: memory. Threshold quantity: 100Mi, available: "
            "51200Ki. Container cell was using 1900Mi, request is 0, has larger consumption "
            "of memory."
        )

        def change(p):
            conditions = list(p["status"].get("conditions") or [])
            conditions.append(
                _condition("DisruptionTarget", "True", "TerminationByKubelet", message)
            )
            p["status"].update(conditions=conditions, reason="Evicted", message=message)

        self._update("pods", namespace, pod_name, change)
        container = self._containers.get((namespace, pod_name))
        if container is not None:
            container.signal("SIGKILL")

    def _create_pod(
        self, job: dict, scenario: Scenario, index: int | None = None, index_failures: int = 0
    ) -> str:
        meta, template = job["metadata"], job["spec"]["template"]
        # generateName "JOB-" ("JOB-INDEX-" of an Indexed Job), cut to 58 characters by the
        # API server, then 5 random ones.
        generate = meta["name"] + "-" + ("" if index is None else f"{index}-")
        name = generate[:58] + _random_suffix()
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "generateName": generate,
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
        if scenario.sidecar:  # a mutating webhook injects it, first in the list
            pod["spec"]["containers"].insert(
                0, {"name": scenario.sidecar, "image": "docker.io/istio/proxyv2:1.24.0"}
            )
            pod["metadata"]["annotations"][SIDECAR_ANNOTATION] = scenario.sidecar
        if index is not None:
            _index_pod(pod, job, index, index_failures)
        self._put("pods", pod, "ADDED")
        if index is None:  # an Indexed Job's counts: _index_status
            self._update(
                "jobs",
                meta["namespace"],
                meta["name"],
                lambda j: j["status"].update(active=1, ready=0),
            )
        return name

    def _set_pod(self, namespace: str, pod: str, **status) -> None:
        def change(p):
            p["status"].update(status)
            sidecar = (p["metadata"].get("annotations") or {}).get(SIDECAR_ANNOTATION)
            if sidecar and "containerStatuses" in status:
                # The kubelet lists container statuses sorted by name: the sidecar's first.
                ours = [c for c in status["containerStatuses"] if c["name"] != sidecar]
                ended = any("terminated" in c["state"] for c in ours)
                state = (
                    {"terminated": {"exitCode": 0, "reason": "Completed"}}
                    if ended
                    else {"running": {"startedAt": _now()}}
                )
                side = {
                    "name": sidecar,
                    "image": "docker.io/istio/proxyv2:1.24.0",
                    "imageID": _image_id("docker.io/istio/proxyv2:1.24.0"),
                    "containerID": "containerd://" + "5" * 64,
                    "ready": not ended,
                    "started": not ended,
                    "restartCount": 0,
                    "state": state,
                }
                p["status"]["containerStatuses"] = sorted([side, *ours], key=lambda c: c["name"])

        if self._update("pods", namespace, pod, change) is None:
            raise _Gone()

    def _run_pod(self, namespace: str, pod_name: str, scenario: Scenario, clock: _Clock):
        pod = self.get("pods", pod_name, namespace)
        container = _main_container(pod)
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
        for pull in range(scenario.pull_failures):  # a registry that fails for a while
            transient = (
                f'rpc error: code = Unavailable desc = failed to pull and unpack image "{image}": '
                "failed to do request: dial tcp 10.0.0.9:443: i/o timeout"
            )
            state = (
                {"reason": "ErrImagePull", "message": transient}
                if pull % 2 == 0
                else {"reason": "ImagePullBackOff", "message": f'Back-off pulling image "{image}"'}
            )
            self._set_pod(
                namespace, pod_name, containerStatuses=[{**waiting, "state": {"waiting": state}}]
            )
            clock.sleep(self.step * 5)
        if scenario.scenario == "evicted":
            clock.sleep(self.step * 3)
            self._evict(namespace, pod_name)
            self._set_pod(namespace, pod_name, phase="Failed")
            return 137, "Evicted"
        if scenario.scenario == "image_pull":
            message = scenario.message or (
                f'rpc error: code = NotFound desc = failed to pull and unpack image "{image}": '
                f'failed to resolve reference "{image}": not found'
            )
            self._never_pull(namespace, pod_name, image, message, waiting, clock.sleep)
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
        failed = self._run_init_containers(namespace, pod_name, pod, scenario, clock, waiting)
        if failed is not None:
            return failed, "Error"
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
        if COMPLETION_INDEX not in pod["metadata"]["annotations"]:  # else: _index_status
            self._update("jobs", namespace, job_name, lambda j: j["status"].update(ready=1))

        clock.running_since = time.monotonic()
        try:
            code = self._run_container(namespace, pod_name, pod, scenario, clock)
        except _Exit as e:
            code = e.code
        clock.running_since = None

        oom = scenario.scenario == "oom"
        reason = "OOMKilled" if oom else ("Completed" if code == 0 else "Error")
        terminated = {
            "exitCode": code,
            "reason": reason,
            "startedAt": started_at,
            "finishedAt": _now(),
            "containerID": container_id,
        }
        disruption = [
            c
            for c in (self.get("pods", pod_name, namespace) or {"status": {}})["status"].get(
                "conditions"
            )
            or []
            if c["type"] == "DisruptionTarget"
        ]
        self._set_pod(
            namespace,
            pod_name,
            phase="Succeeded" if code == 0 else "Failed",
            conditions=_pod_conditions(cname, ready=False, completed=True) + disruption,
            containerStatuses=[
                {**running, "ready": False, "started": False, "state": {"terminated": terminated}}
            ],
        )
        return code, reason

    def _run_init_containers(self, namespace, pod_name, pod, scenario, clock, main_waiting):
        """The kubelet runs a pod's init containers in order, each to completion, before its
        main container: the pod stays Pending (Initialized False). Returns the exit code of
        the first that fails (the pod is then Failed: restartPolicy Never), else None."""
        inits = pod["spec"].get("initContainers") or []
        if not inits:
            return None
        statuses = [
            {
                "name": c["name"],
                "image": c["image"],
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "started": False,
                "state": {"waiting": {"reason": "PodInitializing"}},
            }
            for c in inits
        ]
        main = {**main_waiting, "state": {"waiting": {"reason": "PodInitializing"}}}
        names = [c["name"] for c in inits]
        for i, spec_container in enumerate(inits):
            started_at = _now()
            container_id = "containerd://" + uuid.uuid4().hex + uuid.uuid4().hex
            statuses[i].update(
                imageID=_image_id(spec_container["image"]),
                containerID=container_id,
                started=True,
                state={"running": {"startedAt": started_at}},
            )
            self._set_pod(
                namespace,
                pod_name,
                phase="Pending",
                conditions=_init_conditions(names[i:], main["name"]),
                initContainerStatuses=copy.deepcopy(statuses),
                containerStatuses=[main],
            )
            try:
                code = self._run_container(
                    namespace, pod_name, pod, scenario, clock, spec_container
                )
            except _Exit as e:
                code = e.code
            statuses[i].update(
                started=False,
                ready=code == 0,
                state={
                    "terminated": {
                        "exitCode": code,
                        "reason": "Completed" if code == 0 else "Error",
                        "startedAt": started_at,
                        "finishedAt": _now(),
                        "containerID": container_id,
                    }
                },
            )
            if code != 0:
                self._set_pod(
                    namespace,
                    pod_name,
                    phase="Failed",
                    conditions=_init_conditions(names[i:], main["name"]),
                    initContainerStatuses=copy.deepcopy(statuses),
                    containerStatuses=[main],
                )
                return code
        self._set_pod(namespace, pod_name, initContainerStatuses=copy.deepcopy(statuses))
        return None

    def _run_container(
        self, namespace, pod_name, pod, scenario: Scenario, clock, spec_container=None
    ) -> int:
        """The container's life: the script's lines, or the ``run`` callback (in a thread of
        its own, so that SIGKILL ends it whatever it does). Raises _Exit on a signal.
        ``spec_container``: an init container (its own log; without a ``run`` callback it
        just succeeds), else the main one."""
        init = spec_container is not None
        spec_container = spec_container or _main_container(pod)
        log_key = f"{pod_name}/{spec_container['name']}" if init else pod_name
        if scenario.run is None and init:
            clock.sleep(scenario.run_seconds)
            return 0
        if scenario.run is None:
            for line in scenario.logs:
                self._append_log(namespace, pod_name, line if line.endswith("\n") else line + "\n")
                clock.sleep(scenario.line_seconds)
            if scenario.scenario in ("hang", "deadline"):
                clock.sleep(None)
            clock.sleep(scenario.run_seconds)
            return scenario.code
        run = PodRun(
            pod=self.get("pods", pod_name, namespace),
            files=self._pod_files(namespace, pod, spec_container),
            env=self._pod_env(namespace, pod, spec_container),
            _append=lambda text: self._append_log(namespace, log_key, text),
            _container=clock.container,
            container=copy.deepcopy(spec_container),
        )
        result: list = []

        def container():
            try:
                result.append(scenario.run(run))
            except BaseException as e:  # noqa: BLE001 - reported as the container's failure
                result.append(e)

        thread = threading.Thread(target=container, name=f"k8s-fake-run-{pod_name}", daemon=True)
        thread.start()
        while thread.is_alive():
            thread.join(self.step)
            clock.tick()
            if clock.container.kill_sent:
                raise _Exit(137)
        if isinstance(result[0], BaseException):
            raise result[0]
        return result[0]

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
            for var in _main_container(pod).get("env") or []:
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

    def _pod_files(self, namespace: str, pod: dict, container=None) -> dict[str, bytes]:
        files: dict[str, bytes] = {}
        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        with self._cond:
            for mount in (container or _main_container(pod)).get("volumeMounts") or []:
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

    def _pod_env(self, namespace: str, pod: dict, container=None) -> dict[str, str]:
        env = {}
        with self._cond:
            for var in (container or _main_container(pod)).get("env") or []:
                if "value" in var:
                    env[var["name"]] = var["value"]
                    continue
                field_ref = (var.get("valueFrom") or {}).get("fieldRef")
                if field_ref:
                    value = _field_value(pod, field_ref["fieldPath"])
                    if value is not None:
                        env[var["name"]] = value
                    continue
                ref = (var.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    secret = self._objects["secrets"].get((namespace, ref["name"])) or {}
                    value = (secret.get("data") or {}).get(ref["key"])
                    if value is not None:
                        env[var["name"]] = base64.b64decode(value).decode("utf-8", "replace")
        return env

    def _finish_job(
        self, namespace: str, name: str, ok: bool, reason: str, message: str, target_set=False
    ):
        """The Job controller's end of a Job. Since 1.31 the interim condition
        (SuccessCriteriaMet, FailureTarget) comes first, the final one (Complete, Failed)
        only once every pod has terminated: a moment later."""
        interim, final = ("SuccessCriteriaMet", "Complete") if ok else ("FailureTarget", "Failed")
        staged = self._minor() >= (1, 31)

        def add(*types):
            def change(j):
                status = j["status"]
                status.update(active=0, ready=0, terminating=0)
                if ok:
                    succeeded = max(status.get("succeeded") or 0, 1)  # an Indexed Job's: all
                    status.update(succeeded=succeeded, completionTime=_now())
                conditions = [c for c in status.get("conditions") or [] if c["type"] != "Suspended"]
                known = {c["type"] for c in conditions}
                conditions += [
                    _condition(t, "True", reason, message) for t in types if t not in known
                ]
                status["conditions"] = conditions

            self._update("jobs", namespace, name, change)

        if not staged:
            add(interim, final)
            return
        if not target_set:
            add(interim)
        time.sleep(self.final_condition_delay or self.step * 5)
        add(final)

    def _fail_target(self, namespace: str, name: str, reason: str, message: str) -> None:
        def change(j):
            conditions = j["status"].setdefault("conditions", [])
            conditions.append(_condition("FailureTarget", "True", reason, message))

        self._update("jobs", namespace, name, change)

    # -- Deployments, ReplicaSets, Services (the Deployment controller and the kubelet) ---------

    def _default_deployment(self, deployment: dict) -> None:
        """What the API server adds to a new Deployment."""
        spec = deployment.setdefault("spec", {})
        spec.setdefault("replicas", 1)
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
        strategy = spec.setdefault("strategy", {"type": "RollingUpdate"})
        if strategy.get("type", "RollingUpdate") == "RollingUpdate":
            rolling = strategy.setdefault("rollingUpdate", {})
            rolling.setdefault("maxSurge", "25%")
            rolling.setdefault("maxUnavailable", "25%")
        _default_pod_spec(spec["template"]["spec"])
        deployment["status"] = {}

    def _default_service(self, service: dict) -> None:
        spec = service.setdefault("spec", {})
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        if spec.get("clusterIP") != "None":
            ip = f"10.96.{random.randint(0, 255)}.{random.randint(1, 254)}"
            spec.setdefault("clusterIP", ip)
            spec["clusterIPs"] = [spec["clusterIP"]]
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        spec.setdefault("internalTrafficPolicy", "Cluster")
        for port in spec.get("ports") or []:
            port.setdefault("protocol", "TCP")
            port.setdefault("targetPort", port["port"])
        service["status"] = {"loadBalancer": {}}

    def _drive_deployment(self, namespace: str, name: str) -> None:
        """The Deployment controller for one Deployment, until it is deleted."""
        progress: dict = {}
        while not self._stopping.is_set():
            with self._cond:
                deployment = self._objects["deployments"].get((namespace, name))
                if deployment is None:
                    return
                deployment = copy.deepcopy(deployment)
            self._reconcile(namespace, deployment, progress)
            with self._cond:
                self._cond.wait(self.step * 5)

    def _reconcile(self, namespace: str, deployment: dict, progress: dict) -> None:
        """One pass of the controller: a ReplicaSet per template (named by its hash), new pods
        up to replicas + maxSurge, old pods removed while availability allows (maxUnavailable),
        and the status a real controller reports, Progressing and Available conditions too."""
        meta, spec = deployment["metadata"], deployment["spec"]
        name, uid = meta["name"], meta["uid"]
        template_hash = _template_hash(spec["template"])
        rs_name = f"{name}-{template_hash}"
        desired = spec.get("replicas", 1)
        rolling = (spec.get("strategy") or {}).get("rollingUpdate") or {}
        surge = _scaled(rolling.get("maxSurge", "25%"), desired, up=True)
        unavailable = _scaled(rolling.get("maxUnavailable", "25%"), desired, up=False)
        if surge == 0 and unavailable == 0:
            unavailable = 1
        with self._cond:
            owned = [
                rs
                for (ns, _), rs in self._objects["replicasets"].items()
                if ns == namespace and _owned_by(rs, uid)
            ]
        if rs_name not in {rs["metadata"]["name"] for rs in owned}:
            self._create_replica_set(namespace, deployment, rs_name, template_hash, len(owned) + 1)
            progress.update(
                hash=template_hash,
                at=time.monotonic(),
                reason="NewReplicaSetCreated",
                message=f'Created new replica set "{rs_name}"',
                mark=None,
            )
        elif progress.get("hash") != template_hash:  # a controller that started again
            progress.update(hash=template_hash, at=time.monotonic(), mark=None)
            progress.update(
                reason="FoundNewReplicaSet", message=f'Found new replica set "{rs_name}"'
            )
        with self._cond:
            rs_uids = {
                rs["metadata"]["uid"]: rs["metadata"]["name"]
                for (ns, _), rs in self._objects["replicasets"].items()
                if ns == namespace and _owned_by(rs, uid)
            }
            pods = [
                copy.deepcopy(p)
                for (ns, _), p in self._objects["pods"].items()
                if ns == namespace
                and not p["metadata"].get("deletionTimestamp")
                and any(r.get("uid") in rs_uids for r in p["metadata"].get("ownerReferences") or [])
            ]
        new = [p for p in pods if p["metadata"]["labels"].get(POD_TEMPLATE_HASH) == template_hash]
        old = [p for p in pods if p not in new]
        if len(new) < desired and len(new) + len(old) < desired + surge:
            self._create_replica_pod(namespace, deployment, rs_name, template_hash)
        elif len(new) > desired:
            extra = sorted(new, key=lambda p: (_ready(p), p["metadata"]["creationTimestamp"]))
            self._delete_pod(namespace, extra[0]["metadata"]["name"])
            new.remove(extra[0])
        available = sum(1 for p in new + old if _ready(p))
        for pod in sorted(old, key=_ready):  # unready old pods first: they serve no one
            if not _ready(pod):
                self._delete_pod(namespace, pod["metadata"]["name"])
                old.remove(pod)
            elif available - 1 >= desired - unavailable:
                self._delete_pod(namespace, pod["metadata"]["name"])
                old.remove(pod)
                available -= 1
        ready_new = sum(1 for p in new if _ready(p))
        complete = len(new) == desired and ready_new >= desired and not old
        mark = (len(new), ready_new, len(old))
        deadline = spec.get("progressDeadlineSeconds", 600) * self.time_scale
        if complete:
            progress.update(
                reason="NewReplicaSetAvailable",
                message=f'ReplicaSet "{rs_name}" has successfully progressed.',
                at=time.monotonic(),
                mark=mark,
            )
        elif progress.get("reason") == "ProgressDeadlineExceeded":
            pass  # until the template changes
        elif mark != progress.get("mark"):
            progress.update(
                reason="ReplicaSetUpdated",
                message=f'ReplicaSet "{rs_name}" is progressing.',
                at=time.monotonic(),
                mark=mark,
            )
        elif time.monotonic() - progress["at"] > deadline:
            progress.update(
                reason="ProgressDeadlineExceeded",
                message=f'ReplicaSet "{rs_name}" has timed out progressing.',
            )
        status = {
            "observedGeneration": meta.get("generation", 1),
            "replicas": len(new) + len(old),
            "updatedReplicas": len(new),
            "readyReplicas": available,
            "availableReplicas": available,
            "unavailableReplicas": max(0, len(new) + len(old) - available),
        }
        status = {k: v for k, v in status.items() if v or k == "observedGeneration"}
        minimum = available >= desired - unavailable
        conditions = [
            (
                "Available",
                "True" if minimum else "False",
                "MinimumReplicasAvailable" if minimum else "MinimumReplicasUnavailable",
                "Deployment has minimum availability."
                if minimum
                else "Deployment does not have minimum availability.",
            ),
            (
                "Progressing",
                "False" if progress["reason"] == "ProgressDeadlineExceeded" else "True",
                progress["reason"],
                progress["message"],
            ),
        ]

        def change(d):
            before = {c["type"]: c for c in (d.get("status") or {}).get("conditions") or []}
            status["conditions"] = []
            for type_, state, reason, message in conditions:
                old_c = before.get(type_) or {}
                same = (old_c.get("status"), old_c.get("reason"), old_c.get("message")) == (
                    state,
                    reason,
                    message,
                )
                status["conditions"].append(
                    {
                        "type": type_,
                        "status": state,
                        "lastUpdateTime": old_c["lastUpdateTime"] if same else _now(),
                        "lastTransitionTime": old_c.get("lastTransitionTime", _now())
                        if old_c.get("status") == state
                        else _now(),
                        "reason": reason,
                        "message": message,
                    }
                )
            d["status"] = status

        with self._cond:
            current = self._objects["deployments"].get((namespace, meta["name"]))
            if current is None:
                return
            trial = copy.deepcopy(current)
            change(trial)
            if trial["status"] != current.get("status"):
                current["status"] = trial["status"]
                self._record("deployments", "MODIFIED", current)
            for rs_uid, name_ in rs_uids.items():
                rs = self._objects["replicasets"].get((namespace, name_))
                if rs is None:
                    continue
                mine = [
                    p
                    for p in pods
                    if any(r.get("uid") == rs_uid for r in p["metadata"]["ownerReferences"])
                ]
                rs_status = {"replicas": len(mine), "observedGeneration": 1}
                ready = sum(1 for p in mine if _ready(p))
                if ready:
                    rs_status.update(readyReplicas=ready, availableReplicas=ready)
                wanted = desired if name_ == rs_name else len(mine)
                if rs.get("status") != rs_status or rs["spec"].get("replicas") != wanted:
                    rs["status"], rs["spec"]["replicas"] = rs_status, wanted
                    self._record("replicasets", "MODIFIED", rs)

    def _create_replica_set(
        self, namespace: str, deployment: dict, rs_name: str, template_hash: str, revision: int
    ) -> None:
        template = copy.deepcopy(deployment["spec"]["template"])
        labels = {**(template["metadata"].get("labels") or {}), POD_TEMPLATE_HASH: template_hash}
        template["metadata"]["labels"] = labels
        selector = copy.deepcopy(deployment["spec"]["selector"])
        selector.setdefault("matchLabels", {})[POD_TEMPLATE_HASH] = template_hash
        rs = {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": rs_name,
                "namespace": namespace,
                "uid": str(uuid.uuid4()),
                "creationTimestamp": _now(),
                "generation": 1,
                "labels": dict(labels),
                "annotations": {"deployment.kubernetes.io/revision": str(revision)},
                "ownerReferences": [_controller_ref(deployment)],
            },
            "spec": {"replicas": 0, "selector": selector, "template": template},
            "status": {"replicas": 0},
        }
        self._put("replicasets", rs, "ADDED")

        def annotate(d):
            d["metadata"].setdefault("annotations", {})["deployment.kubernetes.io/revision"] = str(
                revision
            )

        self._update("deployments", namespace, deployment["metadata"]["name"], annotate)

    def _create_replica_pod(
        self, namespace: str, deployment: dict, rs_name: str, template_hash: str
    ) -> None:
        rs = self.get("replicasets", rs_name, namespace)
        if rs is None:
            return
        template = rs["spec"]["template"]
        name = f"{rs_name}-{_random_suffix()}"
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "generateName": f"{rs_name}-",
                "namespace": namespace,
                "uid": str(uuid.uuid4()),
                "creationTimestamp": _now(),
                "labels": dict(template["metadata"].get("labels") or {}),
                "annotations": dict(template["metadata"].get("annotations") or {}),
                "ownerReferences": [_controller_ref(rs)],
            },
            "spec": copy.deepcopy(template["spec"]),
            "status": {"phase": "Pending", "qosClass": _qos(template["spec"])},
        }
        with self._cond:  # not for a ReplicaSet deleted meanwhile: its pod would be orphaned
            if (namespace, rs_name) not in self._objects["replicasets"]:
                return
            self._put("pods", pod, "ADDED")
        scenario = self._scenario_for(deployment["metadata"]["name"])
        self._spawn(self._drive_replica_pod, (namespace, name, scenario), f"pod-{name}")

    def _drive_replica_pod(self, namespace: str, pod_name: str, scenario: Scenario) -> None:
        container = _Container()
        with self._cond:
            self._containers[(namespace, pod_name)] = container
        try:
            self._run_replica_pod(namespace, pod_name, scenario, container)
        except _Gone:
            pass
        finally:
            with self._cond:
                self._containers.pop((namespace, pod_name), None)
                self._cond.notify_all()
            self._kubelet_forgets(namespace, pod_name)

    def _pod_sleep(self, namespace: str, pod_name: str, seconds: float | None, container=None):
        """Sleep, ending early (_Gone) when the pod goes, the fake stops, or (with
        ``container``) the container gets a signal."""
        end = None if seconds is None else time.monotonic() + seconds
        with self._cond:
            while True:
                if self._stopping.is_set() or (namespace, pod_name) not in self._objects["pods"]:
                    raise _Gone()
                if container is not None and (container.term_sent or container.kill_sent):
                    raise _Gone()
                now = time.monotonic()
                if end is not None and now >= end:
                    return
                self._cond.wait(0.05 if end is None else min(0.05, end - now))

    def _run_replica_pod(self, namespace, pod_name, scenario: Scenario, container: _Container):
        """The kubelet for a pod of a ReplicaSet (restartPolicy Always): scheduled, pulled,
        started, probed for readiness (GET on the port the container serves at), restarted
        with a back-off when its container ends (CrashLoopBackOff)."""
        pod = self.get("pods", pod_name, namespace)
        spec_container = _main_container(pod)
        image, cname = spec_container["image"], spec_container["name"]
        self._pod_sleep(namespace, pod_name, self.step, container)
        if scenario.scenario == "unschedulable":
            message = scenario.message or (
                "0/3 nodes are available: 3 Insufficient cpu. preemption: 0/3 nodes are "
                "available: 3 No preemption victims found for incoming pod."
            )
            self._set_pod(
                namespace,
                pod_name,
                conditions=[_condition("PodScheduled", "False", "Unschedulable", message)],
            )
            self._pod_sleep(namespace, pod_name, None, container)
        self._schedule(namespace, pod_name, cname)
        base = {"name": cname, "image": image, "imageID": "", "ready": False, "started": False}
        self._set_pod(
            namespace,
            pod_name,
            containerStatuses=[
                {
                    **base,
                    "restartCount": 0,
                    "lastState": {},
                    "state": {"waiting": {"reason": "ContainerCreating"}},
                }
            ],
        )
        if scenario.scenario == "image_pull":
            message = scenario.message or (
                f'rpc error: code = NotFound desc = failed to pull and unpack image "{image}": '
                f'failed to resolve reference "{image}": not found'
            )
            self._never_pull(
                namespace,
                pod_name,
                image,
                message,
                {**base, "restartCount": 0, "lastState": {}},
                lambda seconds: self._pod_sleep(namespace, pod_name, seconds, container),
            )
        while self._container_config_problem(namespace, pod) is not None:
            self._pod_sleep(namespace, pod_name, self.step, container)
        self._pod_sleep(namespace, pod_name, scenario.pending_seconds, container)
        restarts, last = 0, {}
        ip = f"10.244.0.{random.randint(2, 250)}"
        while True:
            started_at = _now()
            container_id = "containerd://" + uuid.uuid4().hex + uuid.uuid4().hex
            running = {
                **base,
                "imageID": _image_id(image),
                "containerID": container_id,
                "started": True,
                "restartCount": restarts,
                "lastState": last,
            }

            def show(ready: bool, running=running, started_at=started_at):
                self._set_pod(
                    namespace,
                    pod_name,
                    phase="Running",
                    startTime=started_at,
                    podIP=ip,
                    podIPs=[{"ip": ip}],
                    conditions=_pod_conditions(cname, ready=ready),
                    containerStatuses=[
                        {**running, "ready": ready, "state": {"running": {"startedAt": started_at}}}
                    ],
                )

            show(False)
            code = self._serve_container(namespace, pod_name, scenario, container, show)
            if code is None:
                return  # stopped: the pod is being deleted
            restarts += 1
            last = {
                "terminated": {
                    "exitCode": code,
                    "reason": "Completed" if code == 0 else "Error",
                    "startedAt": started_at,
                    "finishedAt": _now(),
                    "containerID": container_id,
                }
            }
            with self._cond:
                key = (namespace, pod_name)
                self._previous_logs[key] = self._logs.pop(key, [])
                self._rotated.pop(key, None)
                self._log_size.pop(key, None)
            back_off = min(10 * 2 ** (restarts - 1), 300)
            self._set_pod(
                namespace,
                pod_name,
                conditions=_pod_conditions(cname, ready=False),
                containerStatuses=[
                    {
                        **running,
                        "ready": False,
                        "started": False,
                        "restartCount": restarts,
                        "lastState": last,
                        "state": {
                            "waiting": {
                                "reason": "CrashLoopBackOff",
                                "message": f"back-off {back_off}s restarting failed "
                                f"container={cname} pod={pod_name}_{namespace}"
                                f"({pod['metadata']['uid']})",
                            }
                        },
                    }
                ],
            )
            self._pod_sleep(namespace, pod_name, back_off * self.restart_scale, container)

    def _serve_container(self, namespace, pod_name, scenario: Scenario, container, show):
        """One life of a replica's container: its exit code, or None when the pod is being
        deleted (SIGTERM). Readiness follows GET readinessProbe on the address the container
        serves at (PodRun.serve_at); one that serves nowhere is ready once it runs, unless
        it is scripted to exit."""
        pod = self.get("pods", pod_name, namespace)
        if pod is None:
            raise _Gone()
        container.endpoint = None
        result: list = []
        thread = None
        if scenario.run is not None:
            run = PodRun(
                pod=pod,
                files=self._pod_files(namespace, pod),
                env=self._pod_env(namespace, pod),
                _append=lambda text: self._append_log(namespace, pod_name, text),
                _container=container,
            )

            def main():
                try:
                    result.append(scenario.run(run))
                except BaseException as e:  # noqa: BLE001 - the container's failure
                    result.append(e)

            thread = threading.Thread(target=main, name=f"k8s-fake-run-{pod_name}", daemon=True)
            thread.start()
        else:
            for line in scenario.logs:
                self._append_log(namespace, pod_name, line if line.endswith("\n") else line + "\n")
        probe = (_main_container(pod).get("readinessProbe") or {}).get("httpGet") or {}
        ready, began = None, time.monotonic()
        while True:
            if container.term_sent or container.kill_sent or self._stopping.is_set():
                if thread is not None:
                    thread.join(30)
                return None
            if thread is not None and not thread.is_alive():
                outcome = result[0] if result else 1
                return outcome if isinstance(outcome, int) else 1
            if thread is None and scenario.scenario != "success":
                if time.monotonic() - began >= scenario.run_seconds:
                    return scenario.code
            # A scripted container that serves nowhere: ready if it is to succeed; one that is
            # to exit (a crash loop) never answered its probe, as on a kubelet.
            if thread is not None:
                now_ready = self._probe(container, probe)
            else:
                now_ready = scenario.scenario == "success"
            if now_ready != ready:
                ready = now_ready
                show(ready)
            with self._cond:
                if (namespace, pod_name) not in self._objects["pods"]:
                    raise _Gone()
                self._cond.wait(self.step * 2)

    def _probe(self, container: _Container, probe: dict) -> bool:
        """An httpGet probe of the container: 200-399 within its timeout is a success."""
        if container.endpoint is None:
            return False
        host, port = container.endpoint
        connection = http.client.HTTPConnection(host, port, timeout=1)
        try:
            connection.request("GET", probe.get("path") or "/")
            return 200 <= connection.getresponse().status < 400
        except (OSError, http.client.HTTPException):
            return False
        finally:
            connection.close()

    def proxy(
        self, namespace: str, name: str, port: str | None, method: str, rest: str, headers, body
    ):
        """The API server's service proxy: the request, to a ready endpoint of the Service
        (a pod its selector picks, Ready, serving at an address of the test's), and its
        answer as it is. Raises ApiError as the API server answers (404, 503)."""
        self._check_namespace(namespace)
        service = self.read("services", namespace, name)
        ports = service["spec"].get("ports") or []
        chosen = next((p for p in ports if port in (None, str(p["port"]), p.get("name"))), None)
        if chosen is None:
            raise ApiError(
                503, "ServiceUnavailable", f'no endpoints available for service "{name}"'
            )
        selector = service["spec"].get("selector") or {}
        with self._cond:
            endpoints = [
                self._containers[key].endpoint
                for key, p in self._objects["pods"].items()
                if key[0] == namespace
                and selector
                and all(
                    (p["metadata"].get("labels") or {}).get(k) == v for k, v in selector.items()
                )
                and _ready(p)
                and not p["metadata"].get("deletionTimestamp")
                and key in self._containers
                and self._containers[key].endpoint is not None
            ]
        if not endpoints:
            raise ApiError(
                503, "ServiceUnavailable", f'no endpoints available for service "{name}"'
            )
        host, target = random.choice(endpoints)
        connection = http.client.HTTPConnection(host, target, timeout=300)
        try:
            connection.request(method, rest or "/", body=body, headers=headers)
            answer = connection.getresponse()
            return answer.status, answer.getheaders(), answer.read()
        except (OSError, http.client.HTTPException) as e:
            raise ApiError(
                503,
                "ServiceUnavailable",
                f"error trying to reach service: dial tcp 10.244.0.9:{target}: {e}",
            ) from None
        finally:
            connection.close()


def _default_pod_spec(spec: dict) -> None:
    """What the API server adds to a pod template."""
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    for container in spec.get("containers") or []:
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")


def _template_hash(template: dict) -> str:
    """The pod-template-hash of a template: its ReplicaSet's name suffix."""
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()
    return "".join("bcdfghjklmnpqrstvwxz2456789"[int(c, 16)] for c in digest[:10])


def _scaled(value, replicas: int, up: bool) -> int:
    """maxSurge (rounded up) or maxUnavailable (rounded down): a number or a percentage."""
    if isinstance(value, int):
        return value
    share = int(str(value).rstrip("%")) * replicas
    return -(-share // 100) if up else share // 100


def _owned_by(obj: dict, uid: str) -> bool:
    return any(r.get("uid") == uid for r in obj["metadata"].get("ownerReferences") or [])


def _controller_ref(owner: dict) -> dict:
    return {
        "apiVersion": owner.get("apiVersion", "apps/v1"),
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _ready(pod: dict) -> bool:
    return any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in (pod.get("status") or {}).get("conditions") or []
    )


class _Gone(Exception):
    """The Job or its pod was deleted: the fake controller stops caring."""


class _Exit(Exception):
    """The container ended on a signal: 143 (it handled SIGTERM) or 137 (SIGKILL)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


_DEADLINE = ("DeadlineExceeded", "Job was active longer than specified deadline")
_COMPLETED = ("CompletionsReached", "Reached expected number of succeeded pods")
_BACKOFF = ("BackoffLimitExceeded", "Job has reached the specified backoff limit")
_FAILED_INDEXES = ("FailedIndexes", "Job has failed indexes")
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
INDEX_FAILURES = "batch.kubernetes.io/job-index-failure-count"
SIDECAR_ANNOTATION = "sidecar.fake.mlcontainer.org/injected"


class _Clock:
    """The time of one Job: sleeps of the fake controller and kubelet that end early when the
    pod goes or its container gets a signal, and the timers they keep (the Job's deadline,
    the node's eviction)."""

    def __init__(
        self,
        fake: FakeKubernetes,
        namespace: str,
        job: str,
        started: float,
        deadline: float | None,
        scenario: Scenario,
    ) -> None:
        self.fake, self.namespace, self.job = fake, namespace, job
        self.started, self.deadline, self.scenario = started, deadline, scenario
        self.pod: str | None = None
        self.container: _Container | None = None
        self.deadline_hit = False
        self.running_since: float | None = None
        self.evicted = False
        # A pod's activeDeadlineSeconds (an Indexed Job's item), counted here from its
        # container's start (a kubelet counts from the pod's, the image pull included).
        self.pod_deadline: float | None = None
        self.pod_deadline_hit = False

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() - self.started >= self.deadline

    def tick(self) -> None:
        """The timers: past the deadline, the Job controller sets FailureTarget and deletes
        the pod (gracefully); past evict_after, the node evicts it."""
        if self.expired() and not self.deadline_hit:
            self.deadline_hit = True
            self.fake._fail_target(self.namespace, self.job, *_DEADLINE)
            if self.pod is not None:
                self.fake._delete_pod(self.namespace, self.pod)
        after = self.scenario.evict_after
        if (
            after is not None
            and not self.evicted
            and self.running_since is not None
            and time.monotonic() - self.running_since >= after
        ):
            self.evicted = True
            self.fake._evict(self.namespace, self.pod)
        if (
            self.pod_deadline is not None
            and not self.pod_deadline_hit
            and self.running_since is not None
            and time.monotonic() - self.running_since >= self.pod_deadline
        ):
            self.pod_deadline_hit = True
            self.fake._deadline_pod(self.namespace, self.pod)

    def check(self, require_pod: bool = True) -> None:
        self.tick()
        objects = self.fake._objects
        if self.fake._stopping.is_set():
            raise _Gone()
        c = self.container
        if require_pod and c is not None and self.running_since is not None:
            if c.kill_sent:
                raise _Exit(137)
            if c.term_sent and self.scenario.sigterm == "exit":
                raise _Exit(143)
        if require_pod:
            if self.pod is not None and (self.namespace, self.pod) not in objects["pods"]:
                raise _Gone()
        elif (self.namespace, self.job) not in objects["jobs"]:
            raise _Gone()

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
                if self.deadline is not None and not self.deadline_hit:
                    waits.append(max(self.started + self.deadline - now, 0.001))
                if self.pod_deadline is not None and self.running_since is not None:
                    waits.append(max(self.running_since + self.pod_deadline - now, 0.001))
                self.fake._cond.wait(min(waits))


def format_indexes(indexes) -> str:
    """Indexes as the Job controller writes them: "1,3-5,7" (two in a row: "3,4")."""
    out, run = [], []
    for i in sorted(indexes):
        if run and i == run[-1] + 1:
            run.append(i)
            continue
        if run:
            out.append(_index_run(run))
        run = [i]
    if run:
        out.append(_index_run(run))
    return ",".join(out)


def _index_run(run: list[int]) -> str:
    if len(run) >= 3:
        return f"{run[0]}-{run[-1]}"
    return ",".join(str(i) for i in run)


def _index_pod(pod: dict, job: dict, index: int, failures: int) -> None:
    """What the Job controller puts in a pod of an Indexed Job: the index (annotation, and a
    label since 1.28), the index's failures so far (with backoffLimitPerIndex), the hostname
    JOB-INDEX and JOB_COMPLETION_INDEX in every container's env."""
    meta = pod["metadata"]
    meta["annotations"][COMPLETION_INDEX] = str(index)
    meta["labels"][COMPLETION_INDEX] = str(index)
    if job["spec"].get("backoffLimitPerIndex") is not None:
        meta["annotations"][INDEX_FAILURES] = str(failures)
    hostname = f"{job['metadata']['name']}-{index}"
    if len(hostname) <= 63:
        pod["spec"].setdefault("hostname", hostname)
    ref = {"fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX}']"}}
    for container in pod["spec"]["containers"]:
        env = [v for v in container.get("env") or [] if v["name"] != "JOB_COMPLETION_INDEX"]
        container["env"] = [*env, {"name": "JOB_COMPLETION_INDEX", "valueFrom": ref}]


_FIELD = re.compile(r"^metadata\.(annotations|labels)\['([^']+)'\]$")


def _field_value(pod: dict, path: str) -> str | None:
    """A downward-API fieldRef of the pod, as the kubelet resolves it."""
    m = _FIELD.match(path)
    if m:
        return (pod["metadata"].get(m.group(1)) or {}).get(m.group(2), "")
    simple = {
        "metadata.name": pod["metadata"].get("name"),
        "metadata.namespace": pod["metadata"].get("namespace"),
        "metadata.uid": pod["metadata"].get("uid"),
        "spec.nodeName": pod["spec"].get("nodeName"),
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName", "default"),
        "status.podIP": pod["status"].get("podIP"),
        "status.hostIP": pod["status"].get("hostIP"),
    }
    return simple.get(path)


def _indexed_problem(spec: dict, policy: str) -> tuple[str, str] | None:
    """What the API server's validation says of a Job's Indexed fields (pkg/apis/batch)."""
    indexed = spec.get("completionMode") == "Indexed"
    if indexed and spec.get("completions") is None:
        return ("spec.completions", "Required value: when completion mode is Indexed")
    if indexed and spec["completions"] > 100_000:
        return ("spec.completions", "Invalid value: must be less than or equal to 100000")
    if spec.get("backoffLimitPerIndex") is not None:
        if not indexed:
            return (
                "spec.backoffLimitPerIndex",
                "Invalid value: requires indexed completion mode",
            )
        if policy != "Never":
            return (
                "spec.backoffLimitPerIndex",
                'Invalid value: requires specifying the pod restart policy "Never"',
            )
    return None


def _has_condition(obj: dict, type_: str) -> bool:
    return any(
        c.get("type") == type_ and c.get("status") == "True"
        for c in (obj.get("status") or {}).get("conditions") or []
    )


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


def _init_conditions(waiting: list[str], main: str) -> list[dict]:
    """A pod's conditions while init containers (``waiting``: those not yet done) run."""
    inits = f"containers with incomplete status: [{' '.join(waiting)}]"
    unready = f"containers with unready status: [{main}]"
    return [
        _condition("PodReadyToStartContainers", "True"),
        _condition("Initialized", "False", "ContainersNotInitialized", inits),
        _condition("Ready", "False", "ContainersNotReady", unready),
        _condition("ContainersReady", "False", "ContainersNotReady", unready),
        _condition("PodScheduled", "True"),
    ]


def _main_container(pod: dict) -> dict:
    """The Job's container, not one a webhook injected."""
    injected = (pod["metadata"].get("annotations") or {}).get(SIDECAR_ANNOTATION)
    return next(c for c in pod["spec"]["containers"] if c["name"] != injected)


def _main_status(pod: dict) -> dict | None:
    name = _main_container(pod)["name"]
    statuses = pod["status"].get("containerStatuses") or []
    return next((c for c in statuses if c["name"] == name), None)


def _running(pod: dict) -> bool:
    status = _main_status(pod)
    return status is not None and "running" in status["state"]


def _waiting_reason(pod: dict) -> str | None:
    """Why a pod's log cannot be read yet, in the API server's words; None when it can."""
    status = _main_status(pod)
    if status is None:
        return "ContainerCreating"
    waiting = status["state"].get("waiting")
    if waiting is None:
        return None
    return {
        "ErrImagePull": "image can't be pulled",
        "ImagePullBackOff": "trying and failing to pull image",
    }.get(waiting["reason"], waiting["reason"])


def _terminated(pod: dict) -> bool:
    status = _main_status(pod)
    return status is not None and "terminated" in status["state"]


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


_FAULTS = {  # status -> (reason, message), as API servers and their proxies answer
    429: ("TooManyRequests", "Too many requests, please try again later."),
    500: ("InternalError", "Internal error occurred: etcdserver: leader changed"),
    502: ("InternalError", "Bad Gateway"),
    503: ("ServiceUnavailable", "The server is currently unable to handle the request"),
    504: ("Timeout", "Timeout: request did not complete within the allowed duration"),
}


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
        proxied = _PROXY.match(url.path)
        if proxied:
            return self._proxy(method, url, proxied, raw)
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
            fault = fake._fault_for(method, url.path, query.get("watch") in ("true", "1"))
            if fault is not None and fault.status == "lost":
                self.wfile, answered = io.BytesIO(), self.wfile  # done, but not told
                self._route(method, url.path, query, body)
                self.wfile, self.close_connection = answered, True
                return
            if fault is not None:
                return self._fault(fault)
            self._route(method, url.path, query, body)
        except ApiError as e:
            self._json(e.code, e.status())
        except (BrokenPipeError, ConnectionResetError, _StreamCut):
            self.close_connection = True

    def _proxy(self, method: str, url, match, raw: bytes) -> None:
        """``/api/v1/namespaces/NS/services/NAME[:PORT]/proxy/PATH``: authenticated as any
        request, then passed on to the Service's endpoint with its body and answered as it
        answered."""
        fake = self.fake
        fake.requests.append(
            {
                "method": method,
                "path": url.path,
                "query": {},
                "body": None,
                "content_type": self.headers.get("Content-Type"),
            }
        )
        try:
            if self.headers.get("Authorization") != f"Bearer {fake.token}":
                raise ApiError(401, "Unauthorized", "Unauthorized")
            rest = (match.group("rest") or "/") + (f"?{url.query}" if url.query else "")
            headers = {
                k: v
                for k, v in self.headers.items()
                if k.lower() in ("content-type", "accept", "content-length")
            }
            status, answer_headers, body = fake.proxy(
                match.group("ns"),
                match.group("name"),
                match.group("port"),
                method,
                rest,
                headers,
                raw if raw or method in ("POST", "PUT", "PATCH") else None,
            )
        except ApiError as e:
            return self._json(e.code, e.status())
        self.send_response(status)
        for key, value in answer_headers:
            if key.lower() not in (
                "content-length",
                "connection",
                "transfer-encoding",
                "date",
                "server",
            ):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _fault(self, fault: Fault) -> None:
        if fault.status == "reset":
            self.close_connection = True  # closed without a word
            return
        if fault.status == "watch-error":
            expired = ApiError(410, "Expired", fault.message or "too old resource version: 1 (2)")
            event = {"type": "ERROR", "object": expired.status()}
            return self._stream("application/json", iter([json.dumps(event) + "\n"]))
        code = int(fault.status)
        reason, message = _FAULTS.get(code, ("InternalError", "an error on the server"))
        error = ApiError(code, fault.reason or reason, fault.message or message)
        headers = {"Retry-After": "1"} if code == 429 else {}
        self._json(code, error.status(), headers)

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
        if sub is not None and not (res == "pods" and sub in ("log", "exec")):
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
        elif sub == "exec":
            if method == "GET" and self.headers.get("Upgrade", "").lower() == "websocket":
                command = parse_qs(urlsplit(self.path).query).get("command") or []
                answer = fake.exec_in(ns, name, query.get("container"), command)
                return self._websocket_exec(answer)
            raise ApiError(400, "BadRequest", "Upgrade request required")
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

    def _websocket_exec(self, answer) -> None:
        """The exec subprotocol v4.channel.k8s.io over a WebSocket: each binary message is
        a channel byte (1 stdout, 2 stderr, 3 the Status) and data."""
        key = self.headers.get("Sec-WebSocket-Key", "")
        offered = [p.strip() for p in self.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        if "v4.channel.k8s.io" not in offered:
            raise ApiError(400, "BadRequest", "the v4.channel.k8s.io subprotocol is required")
        accept = base64.b64encode(
            hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
        ).decode()
        self.send_response(101, "Switching Protocols")
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.send_header("Sec-WebSocket-Protocol", "v4.channel.k8s.io")
        self.end_headers()
        self.close_connection = True
        stdout, stderr, code = answer()
        budget, _ = self.fake._drops.budget(self.fake.dropped) if self.fake._drops else (None, None)
        for channel, data in ((1, stdout), (2, stderr)):
            for at in range(0, len(data), 32 * 1024):
                piece = data[at : at + 32 * 1024]
                if budget is not None:
                    if len(piece) >= budget:
                        self._ws_frame(bytes([channel]) + piece[:budget])
                        with self.fake._cond:
                            self.fake.dropped += 1
                        return  # cut: no Status, no close frame
                    budget -= len(piece)
                self._ws_frame(bytes([channel]) + piece)
        if code == 0:
            status = {"metadata": {}, "status": "Success"}
        else:
            status = {
                "metadata": {},
                "status": "Failure",
                "message": f"command terminated with non-zero exit code: exit status {code}",
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
            }
        self._ws_frame(b"\x03" + json.dumps(status).encode())
        self._ws_frame(b"\x03\xe8", opcode=0x8)  # close, 1000

    def _ws_frame(self, payload: bytes, opcode: int = 0x2) -> None:
        n = len(payload)
        if n < 126:
            head = bytes([0x80 | opcode, n])
        elif n < 1 << 16:
            head = bytes([0x80 | opcode, 126]) + n.to_bytes(2, "big")
        else:
            head = bytes([0x80 | opcode, 127]) + n.to_bytes(8, "big")
        self.wfile.write(head + payload)
        self.wfile.flush()

    def _json(self, code: int, obj, headers: dict | None = None) -> None:
        data = json.dumps(obj).encode()
        self.send_response(code)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
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
