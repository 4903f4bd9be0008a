"""The Kubernetes backend: each run is a Job on a cluster, its log streamed back into the cell.

Environments are made exactly as with Docker (a :class:`DockerBackend` of the same namespace
builds or reuses the image), then pushed to the registry the cluster pulls from, only when the
registry does not hold that image yet; the pod runs it by digest.

A run is a Secret (the run's folder: runner, cell, manifest, values in), a Job and, for
``--network none``, a NetworkPolicy, made by the pure builders of :mod:`..k8s.objects` and sent
with the official ``kubernetes`` client. The pod's log is one stream (``MLC_ONE_STREAM=1``): the
runner marks stderr lines, display data and, at the end, each file of ``/mlc/out``, so the
output, the rich output and the ``--out`` values come back as they do from a Docker container.

Every ``ApiException`` (and a cluster that does not answer) becomes a :class:`KubernetesError`
at one boundary, :meth:`KubernetesBackend._cluster_errors`, branching only on the status.
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...config import KubernetesConfig
from ...core.backend import Backend, Environment, RunningRun, RunResult
from ...core.events import Events, Output, Phase, no_events
from ...core.formatting import format_size
from ...core.richoutput import StdoutDemux
from ...core.spec import RunSpec
from ...errors import (
    CapabilityMissing,
    ClusterAuthError,
    ClusterUnavailable,
    KubernetesError,
    MlcError,
    NamespaceMissing,
    SpecError,
)
from ...runner import MARK, MESSAGE_PREFIX, ONE_STREAM_ENV
from . import objects
from . import registry as registries
from .client import Api, api_message, connection_errors, connection_problem, load_client
from .export import mount_files, payload_files
from .pods import container_terminated, job_failure, job_final, pod_progress

WATCH_SECONDS = 5  # a watch of the pods is renewed this often; the Job is read again each time
FINAL_WAIT = 30.0  # after the log ends, how long the pod may take to report its exit
JOB_WAIT = 5.0  # after a nonzero exit, how long to wait for the Job to say why (deadline?)
NO_POD_GRACE = 10.0  # the Job controller's pod may take this long, whatever schedule_timeout
LOG_RETRIES = 20  # reconnects of a log stream that broke while the container still ran

SMALL_MOUNTS = 512 * 1024  # local read-only mounts up to this travel in the run's Secret
_NEEDS_CLAIM = (
    "--mount {target} cannot reach the cluster: {why}. Put the data on a PersistentVolumeClaim "
    "and name it: `%config KubernetesConfig.volumes = {{'{name}': 'pvc:CLAIM'}}` (or "
    "MLCONTAINER_K8S_VOLUMES='{name}=pvc:CLAIM'), then `--mount {name}`."
)
NO_REGISTRY = (
    "Kubernetes runs need a registry the cluster can pull the environment image from, and "
    'none is set. Set one with `%config KubernetesConfig.registry = "host:port/path"` (or '
    "the environment variable MLCONTAINER_K8S_REGISTRY), for example "
    '"registry.example.com/team"; give its login with KubernetesConfig.registry_username '
    "and registry_password, or `docker login` it once."
)


def _register_with_shell(config: KubernetesConfig, parent) -> None:
    """Let `%config KubernetesConfig.x = ...` reach this object after it exists (IPython
    updates only the configurables its shell knows)."""
    shell = getattr(parent, "shell", None)
    configurables = getattr(shell, "configurables", None)
    if isinstance(configurables, list) and config not in configurables:
        configurables.append(config)


@dataclasses.dataclass
class _Waiting:
    """What a run waiting for its pod has seen so far."""

    limit: float  # schedule_timeout: how long a pod may wait for a node
    began: float = dataclasses.field(default_factory=time.monotonic)
    pod_seen: bool = False
    unschedulable_since: float | None = None
    pulling_shown: bool = False

    @property
    def no_pod_limit(self) -> float:
        return max(self.limit, NO_POD_GRACE)  # the Job controller may be slow, whatever limit

    def watch_seconds(self) -> int:
        """How long the next watch may last: until the next deadline, at most WATCH_SECONDS."""
        if self.unschedulable_since is not None:
            remaining = self.limit - (time.monotonic() - self.unschedulable_since)
        elif not self.pod_seen:
            remaining = self.no_pod_limit - (time.monotonic() - self.began)
        else:
            remaining = WATCH_SECONDS
        return int(max(1, min(WATCH_SECONDS, math.ceil(remaining))))


@dataclasses.dataclass
class _Run:
    api: Api
    namespace: str
    name: str  # of the Job, its Secret and its NetworkPolicy
    selector: str  # the run's pods (and Job)
    image: str
    network_policy: bool = False
    abandon: bool = False  # delete the Job too when the run ends (it still runs or waits)


class KubernetesBackend(Backend):
    name = "kubernetes"
    # Mounts: a PersistentVolumeClaim named in KubernetesConfig.volumes, or small read-only
    # files that travel with the Job.
    supports_mounts = True

    def __init__(
        self,
        namespace: str = "mlcontainer",
        parent=None,
        client=None,
        docker_backend=None,
        target: dict | None = None,
    ) -> None:
        self.namespace = namespace  # of images, labels and the registry repository
        # Where a recorded run ran ({"context", "namespace"}), to run it there again.
        self._target = dict(target or {})
        self.config = KubernetesConfig(parent=parent)
        _register_with_shell(self.config, parent)
        self._given_client = client  # a kubernetes.client.ApiClient, used as is
        self._clients: dict[tuple, tuple] = {}  # (in_cluster, kubeconfig, context) -> (api, ns)
        self._docker = docker_backend
        self._active: dict[str, _Run] = {}
        self._stopped: set[str] = set()

    # -- the pieces it builds on --------------------------------------------------------------

    @property
    def docker(self):
        if self._docker is None:
            from ..docker.backend import DockerBackend

            self._docker = DockerBackend(namespace=self.namespace)
        return self._docker

    @property
    def repository(self) -> str:
        return f"{self.namespace}-env"

    def connect(self) -> tuple[Api, str]:
        """The cluster's API and the namespace runs go to, from the current settings (or the
        target a recorded run ran on)."""
        c = self.config
        wanted = self._target.get("namespace") or c.k8s_namespace
        if self._given_client is not None:
            return Api(self._given_client), wanted or "default"
        key = (c.in_cluster, c.kubeconfig, self._target.get("context") or c.context)
        if key not in self._clients:
            self._clients[key] = load_client(*key)
        api, namespace = self._clients[key]
        return api, wanted or namespace

    def named_volumes(self) -> dict[str, str]:
        return dict(self.config.volumes)

    def check_mounts(self, spec: RunSpec) -> None:
        local = [m for m in spec.mounts if not m.source.startswith(objects.CLAIM_PREFIX)]
        for mount in local:
            if mount.writable:
                raise CapabilityMissing(
                    _NEEDS_CLAIM.format(
                        target=mount.target,
                        why="a writable mount must be storage of the cluster's",
                        name=Path(mount.target).name,
                    )
                )
        files = mount_files(dataclasses.replace(spec, mounts=tuple(local)))
        size = sum(len(v) for v in files.values())
        if size > SMALL_MOUNTS:
            raise CapabilityMissing(
                _NEEDS_CLAIM.format(
                    target=", ".join(m.target for m in local),
                    why=f"{format_size(size)} is more than the {format_size(SMALL_MOUNTS)} "
                    "that can travel with the Job",
                    name=Path(local[0].target).name,
                )
            )
        try:
            objects.payload_keys(files)
        except ValueError as e:
            raise SpecError(f"--mount: {e}") from None

    def target(self) -> dict[str, str]:
        api, namespace = self.connect()
        return {"context": api.context, "namespace": namespace}

    def status(self) -> dict:
        try:
            api, namespace = self.connect()
            with self._cluster_errors("answering", namespace):
                info = _json(
                    api.client.call_api(
                        "/version", "GET", _preload_content=False, _return_http_data_only=True
                    )
                )
        except MlcError as e:
            return {"up": False, "version": None, "message": str(e)}
        return {"up": True, "version": info.get("gitVersion"), "message": None}

    # -- environments -------------------------------------------------------------------------

    def ensure_environment(
        self,
        env_spec,
        *,
        events: Events = no_events,
        rebuild: bool = False,
        lock: list | None = None,
    ) -> Environment:
        """Build (or reuse) the image with Docker, then push it unless the registry has it;
        the Environment's ``image`` is the pushed reference, by digest."""
        if not self.config.registry:
            raise SpecError(NO_REGISTRY)
        registries.repository_ref(self.config.registry, self.repository)  # fails before a build
        env = self.docker.ensure_environment(env_spec, events=events, rebuild=rebuild, lock=lock)
        tag = env.image_id.rpartition(":")[2][:24]
        events(Phase.PUSHING, image=f"{self.config.registry}/{self.repository}:{tag}")
        ref = registries.push_image(
            self.docker.client,
            env.image_id,
            self.config.registry,
            self.repository,
            tag,
            auth=self._registry_auth(),
            log=lambda line: events(Phase.BUILD_LOG, line=line),
        )
        return dataclasses.replace(env, image=ref)

    def _registry_auth(self) -> dict | None:
        c = self.config
        if not c.registry_username:
            return None
        return {"username": c.registry_username, "password": c.registry_password or ""}

    # What else the snapshot verbs ask of a backend concerns local images: Docker's.
    def base_image_id(self, base: str) -> str:
        return self.docker.base_image_id(base)

    def fetch_wheels(self, base_image: str, lock: list) -> dict[str, bytes]:
        return self.docker.fetch_wheels(base_image, lock)

    def save_image(self, ref: str, path) -> None:
        self.docker.save_image(ref, path)

    def prune_orphans(self) -> list[str]:
        return self.docker.prune_orphans()

    def prune_images(self, keep) -> list[str]:
        return self.docker.prune_images(keep)

    # -- runs ---------------------------------------------------------------------------------

    def run(
        self,
        spec: RunSpec,
        env: Environment,
        workdir,
        *,
        run_id: str,
        events: Events = no_events,
        output: Output | None = None,
        secrets: Mapping[str, str] | None = None,
    ) -> RunResult:
        output = output or (lambda stream, text: None)
        workdir = Path(workdir)
        api, namespace = self.connect()
        settings = objects.settings_from(self.config, namespace)
        manifests = objects.run_manifests(
            objects.with_secrets(spec, secrets or {}),
            image=env.image,
            snapshot_id=run_id,
            namespace=namespace,
            settings=settings,
            files={**payload_files(workdir), **mount_files(spec)},
        )
        secret, job, policies = manifests[0], manifests[1], manifests[2:]
        _add_env(job, ONE_STREAM_ENV, "1")  # the pod has one log: see the runner
        run = _Run(
            api,
            namespace,
            job["metadata"]["name"],
            objects.pod_selector(run_id),
            env.image,
            network_policy=bool(policies),
        )
        self._active[run_id] = run
        try:
            with self._cluster_errors("starting the run", namespace):
                events(Phase.STARTING)
                self._create(run, secret, job, policies)
                events(Phase.SCHEDULING)
                return self._follow(run, run_id, workdir, events, output)
        except BaseException:
            run.abandon = True  # interrupted, or the cluster failed us: the Job goes at once
            raise
        finally:
            self._active.pop(run_id, None)
            self._stopped.discard(run_id)
            self._remove(run, job=run.abandon)

    def _create(self, run: _Run, secret: dict, job: dict, policies: list) -> None:
        """Secret and NetworkPolicy first (the pod mounts the one and must be covered by the
        other from its start), then the Job; both then belong to the Job, so the cluster
        deletes them with it (its TTL) even if this kernel dies."""
        api, ns = run.api, run.namespace
        api.core.create_namespaced_secret(ns, secret)
        for policy in policies:
            api.net.create_namespaced_network_policy(ns, policy)
        created = _json(api.batch.create_namespaced_job(ns, job, _preload_content=False))
        patch = [
            {
                "op": "add",
                "path": "/metadata/ownerReferences",
                "value": [objects.owner_reference(created)],
            }
        ]
        # Best effort: without it the Secret is still deleted when the run ends.
        with contextlib.suppress(Exception):
            api.core.patch_namespaced_secret(run.name, ns, patch)
            if policies:
                api.net.patch_namespaced_network_policy(run.name, ns, patch)

    def _remove(self, run: _Run, job: bool) -> None:
        """Delete the run's Secret and NetworkPolicy (the pod no longer needs them) and, with
        ``job``, the Job and its pod (Background: at once). A finished Job stays until its TTL,
        so `kubectl logs job/NAME` still works. Never raises: cleanup must not hide the error
        that got us here."""
        api, ns = run.api, run.namespace
        calls: list[tuple[Any, dict]] = [(api.core.delete_namespaced_secret, {})]
        if run.network_policy:
            calls.append((api.net.delete_namespaced_network_policy, {}))
        if job:
            calls.insert(0, (api.batch.delete_namespaced_job, {"propagation_policy": "Background"}))
        for call, kwargs in calls:
            with contextlib.suppress(Exception):
                call(run.name, ns, **kwargs)

    def _follow(
        self, run: _Run, run_id: str, workdir: Path, events: Events, output: Output
    ) -> RunResult:
        started = self._wait_for_start(run, run_id, events)
        if isinstance(started, RunResult):
            return started
        pod_name = started["metadata"]["name"]
        events(Phase.RUNNING, container=pod_name)
        sink = _LogSink(output, workdir / "out")
        self._stream_log(run, pod_name, sink.feed)
        sink.close()
        return self._result(run, run_id, pod_name, sink)

    def _wait_for_start(self, run: _Run, run_id: str, events: Events):
        """Watch the run's pod until its container runs (or already ended): the pod, as a
        dict. Or a RunResult when it never will: the image cannot be pulled, no node takes
        it (or no pod is made) within schedule_timeout, the deadline passed, the Job was
        deleted."""
        from kubernetes import watch

        wait = _Waiting(limit=self.config.schedule_timeout)
        while True:
            job = _get(run.api.batch.read_namespaced_job, run.name, run.namespace)
            ran = self._pod_that_ran(run) if job_final(job) else None
            if ran is not None:  # it ran its course already
                return ran
            ended = self._ended_before_start(run, run_id, job) or self._no_pod_yet(run, wait)
            if ended is not None:
                return ended
            w = watch.Watch()
            for event in w.stream(
                run.api.core.list_namespaced_pod,
                run.namespace,
                label_selector=run.selector,
                timeout_seconds=wait.watch_seconds(),
                _request_timeout=WATCH_SECONDS + 30,
            ):
                if event["type"] == "DELETED":
                    w.stop()  # read the Job again: deleted, or past its deadline?
                    break
                decided = self._judge_pod(run, event["raw_object"], wait, events)
                if decided is not None:
                    w.stop()
                    return decided

    def _pod_that_ran(self, run: _Run) -> dict | None:
        pods = _json(
            run.api.core.list_namespaced_pod(
                run.namespace, label_selector=run.selector, _preload_content=False
            )
        ).get("items")
        ran = [p for p in pods or [] if pod_progress(p)[0] in ("running", "terminated")]
        return ran[-1] if ran else None

    def _no_pod_yet(self, run: _Run, wait: _Waiting) -> RunResult | None:
        if wait.pod_seen or time.monotonic() - wait.began < wait.no_pod_limit:
            return None
        run.abandon = True
        return _failed(
            f"The Job made no pod within {wait.no_pod_limit:g} s: a ResourceQuota or an "
            f"admission policy of namespace {run.namespace} may forbid it (`kubectl "
            f"describe job -n {run.namespace} {run.name}` says why)."
        )

    def _judge_pod(self, run: _Run, pod: dict, wait: _Waiting, events: Events):
        """What one pod event means: the pod (its container started), a RunResult (it never
        will), or None (keep watching)."""
        wait.pod_seen = True
        state, message = pod_progress(pod)
        if state in ("running", "terminated"):
            return pod
        if state in ("pulling", "image-pull", "config-error") and not wait.pulling_shown:
            wait.pulling_shown = True
            events(Phase.PULLING, image=run.image, node=(pod.get("spec") or {}).get("nodeName", ""))
        if state == "image-pull":
            run.abandon = True  # the kubelet would retry forever
            return _failed(
                f"The cluster cannot pull the image {run.image}: {message}. Check that the "
                "cluster's nodes can reach the registry (KubernetesConfig.registry as the "
                "nodes see it) and, for a private registry, set "
                "KubernetesConfig.image_pull_secret to a docker-registry Secret of namespace "
                f"{run.namespace}."
            )
        if state == "config-error":
            run.abandon = True
            return _failed(f"The cluster cannot start the container: {message}.")
        if state == "unschedulable":
            now = time.monotonic()
            if wait.unschedulable_since is None:
                wait.unschedulable_since = now
                events(Phase.SCHEDULING, message=message)
            if now - wait.unschedulable_since >= wait.limit:
                run.abandon = True
                waited = f" within {wait.limit:g} s" if wait.limit else ""
                return _failed(
                    f"The cluster cannot schedule the pod{waited}: {message} Ask for less "
                    "(--cpus, --memory, --gpus, or KubernetesConfig.default_cpus/"
                    "default_memory), or check KubernetesConfig.node_selector and "
                    "tolerations."
                )
        return None

    def _ended_before_start(self, run: _Run, run_id: str, job: dict | None):
        if job is None:
            return RunResult(
                None,
                "stopped" if run_id in self._stopped else "killed",
                message=f"The Job {run.name} was deleted before its pod started.",
            )
        failed = job_failure(job)
        if failed is None:
            return None
        reason, message = failed
        if reason == "DeadlineExceeded":
            return RunResult(
                None,
                "timeout",
                message=f"The Job ran past its --timeout before its pod started ({message}).",
            )
        return _failed(f"The Job failed before its pod started: {message} ({reason}).")

    def _stream_log(self, run: _Run, pod_name: str, feed) -> None:
        """Follow the container's log and ``feed`` it as it comes, until the container ends.
        A stream that breaks while the container still runs is opened again, and what was
        already fed is skipped."""
        import urllib3
        from kubernetes.client.rest import ApiException

        received = 0  # characters fed so far
        attempts = 0
        while True:
            try:
                response = run.api.core.read_namespaced_pod_log(
                    pod_name,
                    run.namespace,
                    container=objects.CONTAINER_NAME,
                    follow=True,
                    _preload_content=False,
                )
            except ApiException as e:
                if e.status == 404:
                    return  # the pod is gone
                if e.status != 400:
                    raise
                # No log to read: the container ended without one (evicted before it
                # started), or has not started after all (a race with the kubelet): wait.
                pod = _get(run.api.core.read_namespaced_pod, pod_name, run.namespace)
                if pod is None or pod_progress(pod)[0] == "terminated":
                    return
                if attempts >= LOG_RETRIES:
                    raise
                attempts += 1
                time.sleep(0.25)
                continue
            skip, decoder = received, codecs.getincrementaldecoder("utf-8")("replace")
            try:
                for chunk in response.stream(amt=None, decode_content=False):
                    text = decoder.decode(chunk)
                    if skip:
                        text, skip = text[skip:], max(0, skip - len(text))
                    if text:
                        received += len(text)
                        feed(text)
                text = decoder.decode(b"", final=True)[skip:]
                if text:
                    received += len(text)
                    feed(text)
            except (urllib3.exceptions.ProtocolError, urllib3.exceptions.ReadTimeoutError):
                pass  # the connection broke: see below whether the container still runs
            finally:
                with contextlib.suppress(Exception):
                    response.release_conn()
            pod = _get(run.api.core.read_namespaced_pod, pod_name, run.namespace)
            if pod is None or pod_progress(pod)[0] == "terminated" or attempts >= LOG_RETRIES:
                return
            attempts += 1
            time.sleep(0.25)

    def _result(self, run: _Run, run_id: str, pod_name: str, sink: _LogSink) -> RunResult:
        pod = self._terminated_pod(run, pod_name)
        term = container_terminated(pod) if pod is not None else None
        code = term.get("exitCode") if term else None
        note = None
        if run_id in self._stopped:
            reason = "stopped"
        elif term and term.get("reason") == "OOMKilled":
            reason = "oom"
        elif code == 0:
            reason = "done"
        else:
            failed = job_failure(self._finished_job(run))
            if failed and failed[0] == "DeadlineExceeded":
                reason = "timeout"
            elif term is None:
                reason = "killed"
                why = ((pod or {}).get("status") or {}).get("message")
                note = (
                    f"The pod {pod_name} ended before its container did: "
                    f"{why or 'it was deleted (by someone else, or the cluster evicted it)'}."
                )
            else:
                reason = "killed" if code in (137, 143) else "failed"
        return RunResult(
            code,
            reason,
            "".join(sink.stdout),
            "".join(sink.stderr),
            container_id=pod_name,
            message=note,
        )

    def _terminated_pod(self, run: _Run, pod_name: str) -> dict | None:
        """The pod once it reports its container's exit (the log may end a moment before), or
        None when the pod is gone."""
        deadline = time.monotonic() + FINAL_WAIT
        while True:
            pod = _get(run.api.core.read_namespaced_pod, pod_name, run.namespace)
            if pod is None or container_terminated(pod) or time.monotonic() > deadline:
                return pod
            time.sleep(0.1)

    def _finished_job(self, run: _Run) -> dict | None:
        """The Job once it has a final condition (a deadline shows there), briefly waited for."""
        deadline = time.monotonic() + JOB_WAIT
        while True:
            job = _get(run.api.batch.read_namespaced_job, run.name, run.namespace)
            if job is None or job_final(job) or time.monotonic() > deadline:
                return job
            time.sleep(0.1)

    def stop(self, run_id: str, grace: float = 0) -> bool:
        """Delete the run's Job (and its pod, Secret, NetworkPolicy), found by its labels."""
        api, namespace = self.connect()
        with self._cluster_errors("stopping the run", namespace):
            jobs = _jobs_of(api, namespace, run_id)
            if not jobs:
                return False
            if run_id in self._active:
                self._stopped.add(run_id)
            for job in jobs:
                name = job["metadata"]["name"]
                _delete_absent_ok(
                    api.batch.delete_namespaced_job,
                    name,
                    namespace,
                    propagation_policy="Background",
                )
                _delete_absent_ok(api.core.delete_namespaced_secret, name, namespace)
        return True

    def is_running(self, run_id: str) -> bool:
        api, namespace = self.connect()
        with self._cluster_errors("listing runs", namespace):
            jobs = _jobs_of(api, namespace, run_id)
        return any(not job_final(job) for job in jobs)

    def running(self, *, all_namespaces: bool = False) -> list[RunningRun]:
        """The Jobs of this package in the Kubernetes namespace that have not ended."""
        api, namespace = self.connect()
        with self._cluster_errors("listing runs", namespace):
            jobs = (
                _json(
                    api.batch.list_namespaced_job(
                        namespace,
                        label_selector=f"{objects.LABEL_MANAGED_BY}={objects.MANAGED_BY}",
                        _preload_content=False,
                    )
                ).get("items")
                or []
            )
        items = []
        for job in jobs:
            if job_final(job):
                continue
            meta = job.get("metadata") or {}
            labels = meta.get("labels") or {}
            active = ((job.get("status") or {}).get("active") or 0) > 0
            items.append(
                RunningRun(
                    id=labels.get(objects.LABEL_SNAPSHOT),
                    container=meta.get("name", ""),
                    name=labels.get(objects.LABEL_NAME),
                    namespace=self.namespace,
                    image=(
                        (((job.get("spec") or {}).get("template") or {}).get("spec") or {}).get(
                            "containers"
                        )
                        or [{}]
                    )[0].get("image"),
                    state="running" if active else "pending",
                    status=f"Job in {namespace}",
                    started=meta.get("creationTimestamp"),
                )
            )
        return sorted(items, key=lambda r: r.started or "", reverse=True)

    # -- the one boundary where the client's errors become ours ---------------------------------

    @contextlib.contextmanager
    def _cluster_errors(self, action: str, namespace: str):
        from kubernetes.client.rest import ApiException

        try:
            yield
        except ApiException as e:
            raise self._translate(e, action, namespace) from None
        except connection_errors() as e:
            raise ClusterUnavailable(
                f"Cannot reach the Kubernetes API server{self._where()} while {action} "
                f"({connection_problem(e)}). Check the kubeconfig context (`kubectl config "
                'current-context`, or `%config KubernetesConfig.context = "NAME"`) and that '
                "the cluster is running."
            ) from None

    def _where(self) -> str:
        try:
            api = self.connect()[0]
            host, context = api.client.configuration.host, api.context
        except Exception:
            return ""
        return f" at {host}" + (f" (context {context})" if context else "")

    def _translate(self, e, action: str, namespace: str) -> KubernetesError:
        status, detail = e.status, api_message(e)
        if status == 401:
            return ClusterAuthError(
                f"The cluster refused the credentials{self._where()} while {action} "
                f"(401 Unauthorized: {detail}). Log in again to refresh the kubeconfig (e.g. "
                "`gcloud container clusters get-credentials`, `aws eks update-kubeconfig`, "
                "`az aks get-credentials`) or choose another context with "
                '`%config KubernetesConfig.context = "NAME"`.'
            )
        if status == 403:
            return ClusterAuthError(
                f"The cluster does not allow your account this in namespace {namespace} while "
                f"{action} (403 Forbidden: {detail}). Ask an administrator for an RBAC Role in "
                f"{namespace} that allows create, get, list, watch, patch and delete on jobs, "
                "secrets and networkpolicies, and get, list and watch on pods and pods/log; or "
                "choose a namespace where you have it: "
                '`%config KubernetesConfig.k8s_namespace = "NAME"`.'
            )
        if status == 404:
            return NamespaceMissing(
                f"The namespace {namespace} does not exist on the cluster{self._where()} "
                f"({detail}). Create it with `kubectl create namespace {namespace}`, or choose "
                'another with `%config KubernetesConfig.k8s_namespace = "NAME"`.'
            )
        if status == 409:
            return KubernetesError(
                f"An object of this run already exists in {namespace} while {action} "
                f"({detail}); run the cell again for a new run id."
            )
        if status in (400, 413, 422):
            return KubernetesError(
                f"The cluster refused the run's objects while {action} ({status}: {detail}). "
                "An admission policy of the cluster may forbid them; ask its administrator."
            )
        if status and status >= 500:
            return KubernetesError(
                f"The cluster's API server failed while {action} ({status}: {detail}); try "
                "again, or check the cluster's health (`kubectl get --raw /readyz`)."
            )
        return KubernetesError(f"The cluster answered {status} while {action}: {detail}.")


# -- reading the pod's log ---------------------------------------------------------------------


class _LogSink:
    """Demultiplexes the one-stream log: text and marked stderr to ``output``, display data
    re-emitted as a MARK line (the magics' own demux shows it), files into ``out_dir``."""

    def __init__(self, output: Output, out_dir: Path) -> None:
        self.output, self.out_dir = output, out_dir
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._demux = StdoutDemux(self._text, self._display, stderr=self._stderr, file=self._file)

    def feed(self, text: str) -> None:
        self._demux.feed(text)

    def close(self) -> None:
        self._demux.close()

    def _text(self, text: str) -> None:
        self.stdout.append(text)
        self.output("stdout", text)

    def _display(self, bundle: dict) -> None:
        self._text(MARK + json.dumps({"data": bundle}) + "\n")

    def _stderr(self, text: str) -> None:
        self.stderr.append(text)
        self.output("stderr", text)

    def _file(self, name: str, data: bytes) -> None:
        if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
            self._stderr(f"{MESSAGE_PREFIX}ignored an output file named {name!r}\n")
            return
        (self.out_dir / name).write_bytes(data)


# -- helpers -----------------------------------------------------------------------------------


def _failed(message: str) -> RunResult:
    return RunResult(None, "failed", message=message)


def _jobs_of(api, namespace: str, run_id: str) -> list[dict]:
    """The Jobs of one run, found by its labels (another kernel may have made them)."""
    listed = api.batch.list_namespaced_job(
        namespace, label_selector=objects.pod_selector(run_id), _preload_content=False
    )
    return _json(listed).get("items") or []


def _add_env(job: dict, name: str, value: str) -> None:
    container = job["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [v for v in container.get("env", []) if v["name"] != name]
    container["env"].append({"name": name, "value": value})


def _json(response) -> dict:
    """The body of a ``_preload_content=False`` response: plain dicts, as the builders make."""
    return json.loads(response.data)


def _get(read, name: str, namespace: str) -> dict | None:
    """An object as a dict, or None when it does not exist (404)."""
    from kubernetes.client.rest import ApiException

    try:
        return _json(read(name, namespace, _preload_content=False))
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def _delete_absent_ok(delete, name: str, namespace: str, **kwargs) -> None:
    from kubernetes.client.rest import ApiException

    try:
        delete(name, namespace, **kwargs)
    except ApiException as e:
        if e.status != 404:
            raise
