"""Serving a cell on Kubernetes: the Secret, Deployment and Service of :mod:`.serving` applied
with the official client (created, or patched in place so that a new snapshot rolls out), the
rollout followed until it serves or cannot, and why in plain words (an image the nodes cannot
pull, no node that fits, a crash loop with the container's last log lines), and the objects
removed. A notebook calls the service through the API server's service proxy, with the
kubeconfig's credentials (:meth:`ServiceMixin.call_service`).

:class:`ServiceMixin` is part of :class:`KubernetesBackend`: it uses the backend's connection,
settings and its one boundary for the client's errors (``_cluster_errors``).
:class:`KubernetesServices` is the backend's side of the services contract (``--serve NAME
--backend kubernetes``): a service is its Deployment, replaced in place when served again, and
it ends when the Deployment is deleted or serves another snapshot.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...core.backend import Environment, RunResult, ServiceHandle, Services, Transport
from ...core.events import Events, Output, Phase, no_events
from ...core.owner import OWNER
from ...core.owner import alive as owner_alive
from ...core.spec import MAX_REPLICAS, RunSpec
from ...errors import KubernetesError, MlcError, NotFound, ServiceFailed
from ...runner import SERVING_MARK
from . import objects, serving
from .client import Api, Backoff, connection_errors, connection_problem
from .client import body_of as _json
from .client import read_or_none as _get
from .pods import PULL_PATIENCE, cannot_pull, cannot_schedule, cannot_start, failing_pull

MERGE_PATCH = "application/merge-patch+json"
ANNOTATION_OWNER = "mlcontainer.org/owner"  # host:pid of the kernel a service lives as long as
WAIT_POLL = 2.0  # seconds between two looks at a service's Deployment, while it serves
# A service whose Deployment rolled to another snapshot (served again) ends when whoever served
# it again stops it (the core, once the new one answers), or after this many seconds.
REPLACED_GRACE = 60.0
JSON_PATCH = "application/json-patch+json"
LOG_TAIL = 20  # lines of a crash-looping container's log a failure shows
CLEANUP_PATIENCE = 5.0


class RolloutFailed(KubernetesError):
    """A service's new pods cannot serve: ``kind`` says why ("image-pull", "unschedulable",
    "crash-loop", "config-error", "deadline", "timeout"), ``logs`` the container's last lines."""

    def __init__(self, summary: str, kind: str | None = None, logs: str | None = None) -> None:
        shown = ""
        if logs is not None:
            shown = f" Its last log lines:\n{logs}" if logs else " It wrote nothing to its log."
        super().__init__(summary + shown)
        self.summary, self.kind, self.logs = summary, kind, logs or ""

    def noting(self, note: str) -> RolloutFailed:
        """The same failure, with what was done about it said before the log."""
        logs = self.logs if self.kind == "crash-loop" else None
        return RolloutFailed(f"{self.summary} {note}", self.kind, logs)


@dataclasses.dataclass
class DeployedService:
    name: str  # the service's name (the user's)
    namespace: str
    deployment: str  # the Deployment's and the Service's name
    url: str  # through the API server's service proxy
    replicas: int
    snapshot: str
    image: str
    entry: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class ServiceMixin:
    """Deployments and Services of served cells (part of KubernetesBackend)."""

    if TYPE_CHECKING:  # what KubernetesBackend gives it
        name: str
        config: Any

        def connect(self) -> tuple[Api, str]: ...

        def _cluster_errors(
            self, action: str, namespace: str
        ) -> contextlib.AbstractContextManager[None]: ...

    def deploy_service(
        self,
        spec: RunSpec,
        env: Environment,
        files: Mapping[str, bytes],
        *,
        run_id: str,
        service: str,
        entry: str = "predict",
        replicas: int = 1,
        secrets: Mapping[str, str] | None = None,
        events: Events = no_events,
        timeout: float | None = None,
        owner: str | None = None,
    ) -> DeployedService:
        """Serve snapshot ``run_id``'s cell as ``service`` with ``replicas`` pods of
        ``env.image`` (pushed), its payload ``files`` (the run's folder, whose manifest.json
        carries the serve block): create the objects, or patch the Deployment and Service that
        serve ``service`` already (a rollout, no pod taken away before its replacement is
        ready), and wait until the rollout is done. RolloutFailed says why it cannot be: a
        first deployment is then removed, a re-deployment rolled back to what served before.
        ``owner`` (host:pid): the process it lives as long as (a kernel); prune removes it once
        that process is gone. None: it stays until removed."""
        api, namespace = self.connect()
        settings = objects.settings_from(self.config, namespace)
        secret, deployment, svc = serving.service_manifests(
            objects.with_secrets(spec, secrets or {}),
            image=env.image,
            snapshot_id=run_id,
            namespace=namespace,
            settings=settings,
            service=service,
            files=files,
            entry=entry,
            replicas=replicas,
        )
        name = deployment["metadata"]["name"]
        # Set, or (None) cleared by the merge patch: a deployed service outlives any kernel.
        deployment["metadata"]["annotations"][ANNOTATION_OWNER] = owner
        events(Phase.STARTING)
        with self._cluster_errors("deploying the service", namespace):
            previous = _get(api.apps.read_namespaced_deployment, name, namespace)
        try:
            with self._cluster_errors("deploying the service", namespace):
                self._apply(api, namespace, secret, deployment, svc, previous)
        except BaseException:
            if previous is None:  # refused, or interrupted: nothing of a first one stays
                self._undo(api, namespace, service, None)
            raise
        try:
            self.rollout_status(service, wait=True, timeout=timeout, events=events)
        except BaseException as e:
            undone = self._undo(api, namespace, service, previous)
            if isinstance(e, RolloutFailed) and undone:
                raise e.noting(undone) from None
            raise
        with self._cluster_errors("removing the previous payload", namespace):
            self._forget_payloads(api, namespace, service, keep=secret["metadata"]["name"])
        events(Phase.RUNNING, container=name)
        return DeployedService(
            name=service,
            namespace=namespace,
            deployment=name,
            url=self.service_url(service),
            replicas=replicas,
            snapshot=run_id,
            image=env.image,
            entry=entry,
        )

    def _apply(self, api, namespace, secret, deployment, svc, previous) -> None:
        """The Secret (kept when this snapshot's is there: a change of replicas), the
        Deployment created or merge-patched (a rollout), owning the Secret, and the Service."""
        name = deployment["metadata"]["name"]
        _created(api.core.create_namespaced_secret, namespace, secret)
        if previous is None:
            annotations = deployment["metadata"]["annotations"]
            created = {k: v for k, v in annotations.items() if v is not None}
            deployment = {
                **deployment,
                "metadata": {**deployment["metadata"], "annotations": created},
            }
            api.apps.create_namespaced_deployment(namespace, deployment, _preload_content=False)
        else:
            api.apps.patch_namespaced_deployment(
                name,
                namespace,
                _updates(deployment),
                _content_type=MERGE_PATCH,
                _preload_content=False,
            )
        owner = _get(api.apps.read_namespaced_deployment, name, namespace)
        with contextlib.suppress(Exception):  # best effort: removal deletes it by label
            assert owner is not None, "made a moment ago"
            api.core.patch_namespaced_secret(
                secret["metadata"]["name"],
                namespace,
                [
                    {
                        "op": "add",
                        "path": "/metadata/ownerReferences",
                        "value": [objects.owner_reference(owner)],
                    }
                ],
                _content_type=JSON_PATCH,
                _preload_content=False,
            )
        if _get(api.core.read_namespaced_service, name, namespace) is None:
            _created(api.core.create_namespaced_service, namespace, svc)
        else:
            api.core.patch_namespaced_service(
                name, namespace, _updates(svc), _content_type=MERGE_PATCH, _preload_content=False
            )

    def rollout_status(
        self,
        service: str,
        *,
        wait: bool = False,
        timeout: float | None = None,
        events: Events = no_events,
    ) -> serving.Rollout:
        """Where the rollout of ``service`` is. With ``wait``, follow it until it is done
        (the Rollout), or raise RolloutFailed when it cannot be: an image the nodes cannot
        pull, pods no node takes within KubernetesConfig.schedule_timeout, a crash loop (with
        the container's last log lines), the Deployment's progress deadline, or ``timeout``
        seconds."""
        api, namespace = self.connect()
        name = serving.deployment_name(service)
        began = time.monotonic()
        since: dict[str, float] = {}  # kind of a waiting problem -> when first seen
        shown = None
        backoff = Backoff(0.1, 2.0)
        while True:
            with self._cluster_errors("following the rollout", namespace):
                deployment = _get(api.apps.read_namespaced_deployment, name, namespace)
                if deployment is None:
                    raise NotFound(
                        f"No service {service!r} is deployed in namespace {namespace} "
                        f"(no Deployment {name}); deploy it with `mlcontainer deploy ID`."
                    )
                pods = _listed(
                    api.core.list_namespaced_pod, namespace, serving.selector_text(service)
                )
                rollout = serving.rollout_progress(deployment, pods)
                if not wait or rollout.state == "done":
                    return rollout
                if rollout.message != shown:
                    shown = rollout.message
                    events(Phase.SCHEDULING, message=f"{service}: {rollout.message}")
                    backoff.reset()
                failure = self._failure(api, namespace, service, deployment, rollout, since)
            if failure is not None:
                raise failure
            if timeout is not None and time.monotonic() - began > timeout:
                raise RolloutFailed(
                    f"The service {service} did not roll out within {timeout:g} s "
                    f"({rollout.message}). `kubectl describe deployment -n {namespace} {name}` "
                    "says more.",
                    "timeout",
                )
            backoff.sleep()

    def _failure(self, api, namespace, service, deployment, rollout, since) -> RolloutFailed | None:
        """The error a rollout's state means, once it means one (some waits are given the
        time a cluster may need: a node an autoscaler adds, a registry that is slow)."""
        image = _image(deployment)
        kind, words = rollout.kind, rollout.message
        now = time.monotonic()
        if rollout.state == "waiting":
            for waiting in list(since):
                if waiting != kind:
                    del since[waiting]
            if kind is None:
                return None
            first = since.setdefault(kind, now)
            limit = self.config.schedule_timeout
            if kind == "unschedulable" and now - first >= limit:
                return RolloutFailed(_cannot(service, cannot_schedule(words, limit)), kind)
            if kind == "image-retry" and now - first >= max(limit, PULL_PATIENCE):
                return RolloutFailed(
                    _cannot(service, failing_pull(image, words, now - first)), kind
                )
            return None
        if kind == "image-pull":
            return RolloutFailed(_cannot(service, cannot_pull(image, words, namespace)), kind)
        if kind == "config-error":
            return RolloutFailed(_cannot(service, cannot_start(words)), kind)
        if kind == "crash-loop":
            logs = _last_lines(api, namespace, rollout.pod)
            return RolloutFailed(_cannot(service, f"its pod {rollout.pod}: {words}."), kind, logs)
        return RolloutFailed(
            _cannot(
                service,
                f"{words}. `kubectl describe deployment -n {namespace} "
                f"{serving.deployment_name(service)}` says more.",
            ),
            kind,
        )

    def _undo(self, api, namespace: str, service: str, previous: dict | None) -> str:
        """After a failed rollout: remove a first deployment; roll a re-deployment back to
        the template that served before. What was done, in words ("" when nothing could)."""
        name = serving.deployment_name(service)
        with api.patience(CLEANUP_PATIENCE), contextlib.suppress(Exception):
            if previous is None:
                self._delete_service_objects(api, namespace, service)
                return f"Nothing of it was left on the cluster (namespace {namespace})."
            spec = previous["spec"]
            api.apps.patch_namespaced_deployment(
                name,
                namespace,
                {"spec": {"template": spec["template"], "replicas": spec.get("replicas", 1)}},
                _content_type=MERGE_PATCH,
            )
            was = (previous["metadata"].get("annotations") or {}).get(
                objects.ANNOTATION_SNAPSHOT, "?"
            )
            return f"The service was rolled back: snapshot {was} serves as before."
        return ""

    def remove_service(self, service: str) -> bool:
        """Delete the Deployment (its pods go, after their grace period), the Service and the
        payload Secrets of ``service``; False when none was there."""
        api, namespace = self.connect()
        with self._cluster_errors("removing the service", namespace):
            return self._delete_service_objects(api, namespace, service)

    def _delete_service_objects(self, api, namespace: str, service: str) -> bool:
        from kubernetes.client.rest import ApiException

        name = serving.deployment_name(service)
        found = False
        for delete, kwargs in (
            (api.apps.delete_namespaced_deployment, {"propagation_policy": "Background"}),
            (api.core.delete_namespaced_service, {}),
        ):
            try:
                delete(name, namespace, _preload_content=False, **kwargs)
                found = True
            except ApiException as e:
                if e.status != 404:
                    raise
        return self._forget_payloads(api, namespace, service) or found

    def _forget_payloads(self, api, namespace: str, service: str, keep: str | None = None) -> bool:
        """Delete the service's payload Secrets but ``keep``: True if any was there."""
        from kubernetes.client.rest import ApiException

        listed = _listed(api.core.list_namespaced_secret, namespace, serving.selector_text(service))
        for secret in listed:
            if secret["metadata"]["name"] == keep:
                continue
            try:
                api.core.delete_namespaced_secret(
                    secret["metadata"]["name"], namespace, _preload_content=False
                )
            except ApiException as e:
                if e.status != 404:
                    raise
        return any(s["metadata"]["name"] != keep for s in listed)

    def prune_services(self) -> list[str]:
        """Remove the services whose kernel is gone (a `mlcontainer deploy`ed one has none:
        it stays); a line per service removed."""
        done = []
        api, namespace = self.connect()
        for found in self.deployed_services():
            if found["owner"] and not owner_alive(found["owner"]):
                if self.remove_service(found["name"]):
                    done.append(
                        f"removed service {found['name']} (deployment/"
                        f"{serving.deployment_name(found['name'])} in {namespace}; its kernel "
                        f"{found['owner']} is gone)"
                    )
        return done

    def deployed_services(self) -> list[dict]:
        """The services deployed in the namespace: name, snapshot, replicas (wanted, ready),
        image, url."""
        api, namespace = self.connect()
        with self._cluster_errors("listing services", namespace):
            items = _listed(
                api.apps.list_namespaced_deployment,
                namespace,
                f"{serving.LABEL_COMPONENT}=service,{objects.LABEL_MANAGED_BY}={objects.MANAGED_BY}",
            )
        out = []
        for d in items:
            notes = d["metadata"].get("annotations") or {}
            service = notes.get(serving.ANNOTATION_SERVICE) or d["metadata"]["name"]
            out.append(
                {
                    "name": service,
                    "namespace": namespace,
                    "snapshot": notes.get(objects.ANNOTATION_SNAPSHOT),
                    "entry": notes.get(serving.ANNOTATION_ENTRY),
                    "replicas": (d.get("spec") or {}).get("replicas"),
                    "ready": (d.get("status") or {}).get("availableReplicas") or 0,
                    "image": _image(d),
                    "url": self.service_url(service),
                    "owner": notes.get(ANNOTATION_OWNER),
                }
            )
        return out

    # -- calling it ------------------------------------------------------------------------------

    def service_url(self, service: str) -> str:
        """The service's URL through the API server's proxy (it needs the kubeconfig's
        credentials: see call_service)."""
        api, namespace = self.connect()
        host = api.client.configuration.host.rstrip("/")
        return host + serving.proxy_path(namespace, service).rstrip("/")

    def call_service(
        self,
        service: str,
        path: str = "",
        *,
        method: str = "GET",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = 300,
    ) -> tuple[int, dict[str, str], bytes]:
        """One HTTP request to the service through the API server's service proxy, with the
        kubeconfig's credentials and TLS settings: (status, headers, body). The transport a
        client (``mlcontainer_magics.service``) needs for a service on a cluster."""
        api, namespace = self.connect()
        resource = serving.proxy_path(namespace, service) + path.lstrip("/")
        _, url, sent, _, _ = api.client.param_serialize(
            method, resource, header_params=dict(headers or {}), auth_settings=["BearerToken"]
        )
        try:
            answer = api.client.rest_client.pool_manager.request(
                method, url, body=body, headers=sent, timeout=timeout, retries=False
            )
        except connection_errors() as e:
            raise KubernetesError(
                f"Cannot reach the service {service} through the API server "
                f"({connection_problem(e)}); check that the cluster is running."
            ) from None
        return answer.status, dict(answer.headers), answer.data


_PROBE = re.compile(rf'^"?GET {serving.HEALTH_PATH} 200 ')  # the kubelet's, in the access log


def _listed(list_call, namespace: str, selector: str) -> list[dict]:
    """The objects a list call finds by ``selector``, as dicts."""
    return (
        _json(list_call(namespace, label_selector=selector, _preload_content=False)).get("items")
        or []
    )


def _cannot(service: str, why: str) -> str:
    return f"The service {service} cannot roll out: {why}"


def _image(deployment: dict) -> str:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    ours = [c for c in containers if c.get("name") == objects.CONTAINER_NAME] or containers
    return ours[0].get("image", "")


def _updates(obj: dict) -> dict:
    """A merge patch that makes ``obj``'s labels, annotations and spec the object's (lists,
    such as the container's volume mounts, replaced whole, unlike a strategic merge)."""
    meta = obj["metadata"]
    return {
        "metadata": {"labels": meta.get("labels"), "annotations": meta.get("annotations")},
        "spec": obj["spec"],
    }


def _last_lines(api, namespace: str, pod: str | None) -> str:
    """The last lines of the container's previous life (it crashed), else of this one."""
    from kubernetes.client.rest import ApiException

    if not pod:
        return ""
    for previous in (True, False):
        try:
            text = api.core.read_namespaced_pod_log(
                pod,
                namespace,
                container=objects.CONTAINER_NAME,
                previous=previous,
                tail_lines=LOG_TAIL,
            )
        except ApiException:
            continue
        if text and text.strip():
            return text.rstrip("\n")
    return ""


def _created(create, namespace: str, body: dict) -> bool:
    """Create ``body``; False when it exists already (409)."""
    from kubernetes.client.rest import ApiException

    try:
        create(namespace, body, _preload_content=False)
    except ApiException as e:
        if e.status != 409:
            raise
        return False
    return True


# -- the services contract ---------------------------------------------------------------------


class KubernetesServices(Services):
    """``--serve NAME --backend kubernetes``: the Deployment and Service of NAME, with
    ``--replicas`` pods, reached through the API server's service proxy."""

    max_replicas = MAX_REPLICAS

    def __init__(self, backend) -> None:
        self.backend = backend
        self._started: dict[str, str] = {}  # run id -> what its pods printed up to serving
        self._let_go: dict[str, threading.Event] = {}  # run id -> set by stop()

    def start(
        self,
        spec: RunSpec,
        env: Environment,
        workdir: Path,
        *,
        run_id: str,
        events: Events = no_events,
        output: Output | None = None,
        secrets: Mapping[str, str] | None = None,
    ) -> ServiceHandle:
        from .export import mount_files, payload_files

        assert spec.serve is not None, "a served spec"
        output = output or (lambda stream, text: None)
        try:
            deployed = self.backend.deploy_service(
                spec,
                env,
                {**payload_files(workdir), **mount_files(spec)},
                run_id=run_id,
                service=spec.serve.name,
                entry=spec.serve.entry,
                replicas=spec.serve.replicas,
                secrets=secrets,
                events=events,
                timeout=spec.timeout,
                owner=OWNER,  # it lives as long as this kernel
            )
        except RolloutFailed as e:
            raise ServiceFailed(str(e), reason="failed", stderr=e.logs) from None
        handle = ServiceHandle(
            name=spec.serve.name,
            run_id=run_id,
            url=deployed.url,
            backend=self.backend.name,
            ident=deployed.deployment,
        )
        printed = self.logs(handle, until_serving=True)
        self._started[run_id] = printed
        if printed:
            output("stdout", printed)
        return handle

    def _serves(self, handle: ServiceHandle) -> str | None:
        """Whether the service's Deployment runs ``handle``'s snapshot: "this", "other" (it
        was served again), "gone", or None (the cluster did not say)."""
        api, namespace = self.backend.connect()
        try:
            with self.backend._cluster_errors("reading the service", namespace):
                deployment = _get(
                    api.apps.read_namespaced_deployment,
                    serving.deployment_name(handle.name),
                    namespace,
                )
        except MlcError:
            return None
        if deployment is None:
            return "gone"
        notes = deployment["spec"]["template"]["metadata"].get("annotations") or {}
        return "this" if notes.get(objects.ANNOTATION_SNAPSHOT) == handle.run_id else "other"

    def wait(self, handle: ServiceHandle) -> RunResult:
        """Until the Deployment is deleted, or rolled to another snapshot (served again) and
        this one let go (``stop``)."""
        let_go = self._let_go.setdefault(handle.run_id, threading.Event())
        backoff = Backoff(WAIT_POLL, 30.0)
        while True:
            serves = self._serves(handle)
            if serves == "other":
                let_go.wait(REPLACED_GRACE)
            if serves in ("gone", "other"):
                self._let_go.pop(handle.run_id, None)
                printed = self._started.pop(handle.run_id, "")
                return RunResult(0, "stopped", printed, container_id=handle.ident)
            if serves is not None:
                backoff.reset()
            if let_go.wait(backoff.next()):  # the cluster may be out of reach a while
                let_go.clear()

    def stop(self, handle: ServiceHandle, grace: float = 10.0) -> bool:
        """Remove the service's objects while they serve ``handle``'s snapshot (its pods get
        SIGTERM and finish the requests they have); False when they serve another or none."""
        serves = self._serves(handle)
        if serves == "other":  # served again: its pods are gone already
            self._let_go.setdefault(handle.run_id, threading.Event()).set()
            return True
        if serves != "this":
            return False
        removed = self.backend.remove_service(handle.name)
        self._let_go.setdefault(handle.run_id, threading.Event()).set()
        return removed

    def logs(self, handle: ServiceHandle, until_serving: bool = False) -> str:
        """What the pods of ``handle``'s snapshot printed: the cell's output, the serving
        line's words left out, then a line per request but the kubelet's probes (each pod's
        under its name when there are several). ``until_serving``: the cell's output, of one
        pod."""
        api, namespace = self.backend.connect()
        snapshot = objects.safe_name(handle.run_id, "label-value")
        with self.backend._cluster_errors("reading the service's log", namespace):
            pods = _listed(
                api.core.list_namespaced_pod,
                namespace,
                f"{serving.selector_text(handle.name)},{objects.LABEL_SNAPSHOT}={snapshot}",
            )
            texts = []
            for pod in pods:
                name = pod["metadata"]["name"]
                try:
                    text = api.core.read_namespaced_pod_log(
                        name, namespace, container=objects.CONTAINER_NAME
                    )
                except Exception:  # not started yet, or gone meanwhile
                    continue
                if until_serving:
                    return text.split(SERVING_MARK, 1)[0]
                text = "".join(
                    line
                    for line in text.splitlines(True)
                    if not line.startswith(SERVING_MARK) and not _PROBE.match(line)
                )
                texts.append((name, text))
        if len(texts) == 1:
            return texts[0][1]
        return "".join(f"== {name} ==\n{text}" for name, text in texts)

    def transport(self, handle: ServiceHandle) -> Transport:
        """Requests through the API server's service proxy, with the kubeconfig's
        credentials (call_service)."""

        def call(method, path, body, headers, timeout):
            return self.backend.call_service(
                handle.name, path, method=method, body=body, headers=headers, timeout=timeout
            )

        return call

    def running(self) -> list[ServiceHandle]:
        return [
            ServiceHandle(
                name=s["name"],
                run_id=s["snapshot"] or "",
                url=s["url"],
                backend=self.backend.name,
                ident=serving.deployment_name(s["name"]),
            )
            for s in self.backend.deployed_services()
        ]
