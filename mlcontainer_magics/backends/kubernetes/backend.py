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
import hashlib
import json
import math
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ...config import KubernetesConfig
from ...core.backend import (
    Backend,
    Environment,
    ItemResult,
    RunningRun,
    RunResult,
    item_out_dir,
)
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
from ...runner import COLLECTED, MARK, ONE_STREAM_ENV, OUT_DIR, RUNNER_COMMAND, runner_source
from . import indexed, objects
from . import registry as registries
from .client import (
    API_PATIENCE,
    TRANSIENT_STATUSES,
    Api,
    Backoff,
    ExecBroken,
    api_message,
    connection_errors,
    connection_problem,
    exec_output,
    load_client,
    open_pod_log,
)
from .client import body_of as _json
from .client import read_or_none as _get
from .export import mount_files, payload_files
from .pods import (
    PULL_PATIENCE,
    cannot_pull,
    cannot_schedule,
    cannot_start,
    container_terminated,
    disruption,
    failing_pull,
    job_failure,
    job_final,
    job_outcome,
    job_suspended,
    pod_progress,
)
from .services import KubernetesServices, ServiceMixin

WATCH_SECONDS = 5  # a watch of the pods is renewed this often; the Job is read again each time
FINAL_WAIT = 30.0  # after the log ends, how long the pod may take to report its exit
JOB_WAIT = 5.0  # after a nonzero exit, how long to wait for the Job to say why (deadline?)
NO_POD_GRACE = 10.0  # the Job controller's pod may take this long, whatever schedule_timeout
FINAL_LOG_TRIES = 10  # reads of the log's end, once the container has ended
CLEANUP_PATIENCE = 5.0  # seconds a cleanup call retries: it must not hold up an interrupt

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
    pull_failing_since: float | None = None
    suspended_since: float | None = None
    pulling_shown: bool = False

    @property
    def no_pod_limit(self) -> float:
        return max(self.limit, NO_POD_GRACE)  # the Job controller may be slow, whatever limit

    def watch_seconds(self) -> int:
        """How long the next watch may last: until the next deadline, at most WATCH_SECONDS."""
        now = time.monotonic()
        patient_since = (
            self.suspended_since if self.suspended_since is not None else self.pull_failing_since
        )
        if self.unschedulable_since is not None:
            remaining = self.limit - (now - self.unschedulable_since)
        elif patient_since is not None:
            remaining = max(self.limit, PULL_PATIENCE) - (now - patient_since)
        elif not self.pod_seen:
            remaining = self.no_pod_limit - (now - self.began)
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
    pod_owns_policy: bool = False  # the policy goes with the pod (see _guard_isolation)
    container_ended: bool = False  # the cell's process is over: isolation may go
    abandon: bool = False  # delete the Job too when the run ends (it still runs or waits)


class KubernetesBackend(ServiceMixin, Backend):
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
        self._given_api: Api | None = None
        self._clients: dict[tuple, tuple] = {}  # (in_cluster, kubeconfig, context) -> (api, ns)
        self._docker = docker_backend
        self._active: dict[str, _Run] = {}
        self._stopped: set[str] = set()
        self._versions: dict[int, tuple[int, int] | None] = {}  # id(api) -> server version
        self._shared_backoff_said: set = set()  # contexts told they have no per-item retries

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
            if self._given_api is None:
                self._given_api = Api(self._given_client)
            return self._given_api, wanted or "default"
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
                info = _json(api.version.get_code(_preload_content=False))
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
        """The engine's orphans, and the services on the cluster whose kernel is gone (when
        the cluster answers: prune is not the place to fail for it)."""
        done = self.docker.prune_orphans()
        try:
            done += self.prune_services()
        except MlcError as e:
            done.append(f"left the cluster's services as they are ({e})")
        return done

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
        run, (secret, job, *policies) = self._prepared(api, namespace, manifests, run_id, env)
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

    def check_map(self, spec: RunSpec, item_sizes, shared: int = 0) -> None:
        """A map whose items cannot travel in the Job's Secret is refused before the image
        is built and pushed (indexed.check_map_size)."""
        indexed.check_map_size(spec, item_sizes, shared, runner=len(runner_source()))

    def map_size_limit(self) -> int:
        """All of a map travels in the Job's Secret: what is over its limit is refused."""
        return objects.SECRET_MAX_BYTES

    def run_map(
        self,
        spec: RunSpec,
        env: Environment,
        workdir,
        *,
        run_id: str,
        count: int,
        parallel: int | None = None,
        retries: int = 0,
        events: Events = no_events,
        output: Output | None = None,
        secrets: Mapping[str, str] | None = None,
        cancel: threading.Event | None = None,
    ) -> list[ItemResult]:
        """The map as one Indexed Job (indexed.py): its folder, every item in it, in the Job's
        Secret; a pod per item, at most ``parallel`` at once (None: every item at once, the
        scheduler keeping what the nodes have no room for), each item retried on its own up
        to ``retries`` times where the cluster can (1.29+; else from a budget all share, said
        once). Each pod is followed as a run's is: its output streamed (in whole lines), its
        --out values brought back over exec into ``item_out_dir(workdir, index)``. Results
        in item order once the Job has ended. ``cancel`` set: the Job goes, its items end
        "stopped"; an interrupt deletes the Job (and its pods) and is raised."""
        output = output or (lambda stream, text: None)
        workdir = Path(workdir)
        api, namespace = self.connect()
        settings = objects.settings_from(self.config, namespace)
        # Too large for a Secret: a SpecError here, before anything is sent.
        files = indexed.map_payload({**payload_files(workdir), **mount_files(spec)})
        version = self._server_version(api)
        per_index = indexed.per_index_backoff(version)
        manifests = indexed.map_manifests(
            objects.with_secrets(spec, secrets or {}),
            image=env.image,
            snapshot_id=run_id,
            namespace=namespace,
            settings=settings,
            files=files,
            count=count,
            parallel=parallel,
            retries=retries,
            per_index=per_index,
        )
        run, (secret, job, *policies) = self._prepared(api, namespace, manifests, run_id, env)
        mapped = _MapRun(self, run, run_id, workdir, count, retries, per_index, events, output)
        try:
            with self._cluster_errors("running the map", namespace):
                events(Phase.STARTING)
                self._create(run, secret, job, policies)
                if not per_index and api.context not in self._shared_backoff_said:
                    self._shared_backoff_said.add(api.context)  # once per cluster
                    note = indexed.shared_backoff_note(version, count, retries)
                    output("stderr", f"Note: {note}\n")
                events(Phase.SCHEDULING)
                return mapped.follow(cancel or threading.Event())
        except BaseException:
            run.abandon = True  # interrupted, or the cluster failed us: the Job goes at once
            raise
        finally:
            self._active.pop(run_id, None)
            self._remove(run, job=run.abandon)
            mapped.join()  # their pods have ended, or go with the Job
            self._stopped.discard(run_id)

    def _prepared(self, api: Api, namespace: str, manifests: list, run_id: str, env) -> tuple:
        """(the run to follow, its manifests): a Secret, a Job and the NetworkPolicies of a
        run's or a map's, the Job's pods with one log each (see the runner); the run is
        this process's active one for ``run_id`` until the caller removes it."""
        job = manifests[1]
        _add_env(job, ONE_STREAM_ENV, "1")
        run = _Run(
            api,
            namespace,
            job["metadata"]["name"],
            objects.pod_selector(run_id),
            env.image,
            network_policy=len(manifests) > 2,
        )
        self._active[run_id] = run
        return run, manifests

    def _server_version(self, api: Api) -> tuple[int, int] | None:
        """(major, minor) of the cluster's API server, read once per connection; None when it
        does not say (then a map takes the older cluster's way)."""
        key = id(api)
        if key not in self._versions:
            try:
                info = _json(api.version.get_code(_preload_content=False))
            except Exception:  # noqa: BLE001 - no version: the safe way, said to the user
                info = None
            self._versions[key] = indexed.server_version(info)
        return self._versions[key]

    def _create(self, run: _Run, secret: dict, job: dict, policies: list) -> None:
        """Secret and NetworkPolicy first (the pod mounts the one and must be covered by the
        other from its start), then the Job; both then belong to the Job, so the cluster
        deletes them with it (its TTL) even if this kernel dies."""
        api, ns = run.api, run.namespace
        api.core.create_namespaced_secret(ns, secret)
        for policy in policies:
            api.net.create_namespaced_network_policy(ns, policy)
        answer = api.batch.create_namespaced_job(ns, job, _preload_content=False)
        # None: its answer was lost, and the retry found it made; read it for its uid.
        created = (
            _json(answer)
            if answer is not None
            else _get(api.batch.read_namespaced_job, run.name, ns)
        )
        if created is None:
            raise KubernetesError(f"The Job {run.name} was made, then gone at once.")
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
        """Delete the run's Secret and, with ``job``, the Job and its pod (Background: at
        once). The NetworkPolicy goes once the pod has: by the garbage collector when the pod
        owns it, else here when the pod ran its course. A finished Job stays until its TTL, so
        `kubectl logs job/NAME` still works. Never raises: cleanup must not hide the error
        that got us here."""
        api, ns = run.api, run.namespace
        calls: list[tuple[Any, dict]] = [(api.core.delete_namespaced_secret, {})]
        if run.network_policy and (not run.pod_owns_policy or run.container_ended):
            calls.append((api.net.delete_namespaced_network_policy, {}))
        if job:
            calls.insert(0, (api.batch.delete_namespaced_job, {"propagation_policy": "Background"}))
        with api.patience(CLEANUP_PATIENCE):
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
        self._guard_isolation(run, started)
        out_dir = workdir / "out"
        sink = _LogSink(output, lambda offer: self._collect(run, run_id, pod_name, offer, out_dir))
        self._stream_log(run, pod_name, sink.feed)
        sink.close()
        return self._result(run, run_id, pod_name, sink)

    def _guard_isolation(self, run: _Run, pod: dict) -> None:
        """Make the pod an owner of its NetworkPolicy too: the garbage collector deletes an
        object only once all its owners are gone, so the policy outlives the pod's last
        moment whoever deletes the Job (a stop, the TTL, an interrupt)."""
        if not run.network_policy:
            return
        meta = pod["metadata"]
        owner = {
            "apiVersion": "v1",
            "kind": "Pod",
            "name": meta["name"],
            "uid": meta["uid"],
            "blockOwnerDeletion": False,
        }
        patch = [{"op": "add", "path": "/metadata/ownerReferences/-", "value": owner}]
        with contextlib.suppress(Exception):  # the Job owns it still: deleted with the Job
            run.api.net.patch_namespaced_network_policy(run.name, run.namespace, patch)
            run.pod_owns_policy = True

    def _collect(self, run: _Run, run_id: str, pod_name: str, offer: dict, out_dir: Path) -> None:
        """Bring the files of /mlc/out the runner offers (it waits for them to be taken)
        over ``pods/exec``, each checked against its SHA-256; then tell the runner it may
        exit. They do not travel in the log, which the kubelet rotates and a reconnect cannot
        read back."""
        from kubernetes.client.rest import ApiException

        try:
            for entry in offer.get("files") or []:
                name = str(entry["name"])
                if not _safe_file_name(name):
                    continue  # a runner lists out/: never a path
                digest = fetch_out_file(
                    run.api, run.namespace, pod_name, name, int(entry["size"]), out_dir
                )
                if digest != entry.get("sha256"):
                    raise KubernetesError(
                        f"The output file {name} came back from the pod {pod_name} changed "
                        "(its SHA-256 differs); run the cell again."
                    )

            def collected() -> None:  # the runner may exit now
                command = [*RUNNER_COMMAND, "--collected", COLLECTED]
                cell = objects.CONTAINER_NAME
                for _ in exec_output(run.api, run.namespace, pod_name, cell, command):
                    pass

            exec_patiently(collected)
        except (RuntimeError, ExecBroken) as e:
            if run_id in self._stopped:
                return  # stopped while its values came: they do not matter
            raise KubernetesError(
                f"Taking the outputs from the pod {pod_name} failed: {e}"
            ) from None
        except ApiException as e:
            if run_id in self._stopped:
                return
            if e.status == 403:
                raise ClusterAuthError(
                    f"The cluster does not allow your account to exec into the run's pod in "
                    f"namespace {run.namespace} ({api_message(e)}); --out values come back "
                    "that way. Ask an administrator for `create` on pods/exec in "
                    f"{run.namespace}."
                ) from None
            if e.status in (400, 404):
                raise KubernetesError(
                    f"The pod {pod_name} ended before its --out values were taken "
                    f"({api_message(e)}); run the cell again."
                ) from None
            raise

    def _wait_for_start(self, run: _Run, run_id: str, events: Events):
        """Watch the run's pod until its container runs (or already ended): the pod, as a
        dict. Or a RunResult when it never will: the image cannot be pulled, no node takes
        it (or no pod is made) within schedule_timeout, the deadline passed, the Job was
        deleted."""
        from kubernetes import watch
        from kubernetes.client.rest import ApiException

        wait = _Waiting(limit=self.config.schedule_timeout)
        backoff = Backoff()
        while True:
            job = _get(run.api.batch.read_namespaced_job, run.name, run.namespace)
            ran = self._pod_that_ran(run) if job_outcome(job) else None
            if ran is not None:  # it ran its course already
                return ran
            ended = (
                self._ended_before_start(run, run_id, job)
                or self._queued(run, job, wait, events)
                or self._no_pod_yet(run, wait)
            )
            if ended is not None:
                return ended
            w = watch.Watch()
            try:
                for event in w.stream(
                    run.api.core_raw.list_namespaced_pod,
                    run.namespace,
                    label_selector=run.selector,
                    timeout_seconds=wait.watch_seconds(),
                    _request_timeout=WATCH_SECONDS + 30,
                ):
                    if event["type"] in ("DELETED", "ERROR"):
                        w.stop()  # read the Job again: deleted, or past its deadline?
                        break
                    decided = self._judge_pod(run, event["raw_object"], wait, events)
                    if decided is not None:
                        w.stop()
                        return decided
                backoff.reset()
            except ApiException as e:
                # An expired watch (410) or a busy server: start again from a fresh read.
                if e.status != 410 and e.status not in TRANSIENT_STATUSES:
                    raise
                backoff.sleep()
            except connection_errors():
                backoff.sleep()

    def _queued(self, run: _Run, job: dict | None, wait: _Waiting, events: Events):
        """A Job a queue holds suspended (Kueue) makes no pod until it is admitted: wait for
        that up to schedule_timeout, saying so."""
        if not job_suspended(job):
            if wait.suspended_since is not None:  # admitted: its pod may take a while now
                wait.suspended_since, wait.began = None, time.monotonic()
            return None
        now = time.monotonic()
        if wait.suspended_since is None:
            wait.suspended_since = now
            events(
                Phase.SCHEDULING,
                message=f"queued: the Job {run.name} is suspended until a queue (such as "
                "Kueue) admits it",
            )
        if now - wait.suspended_since < max(wait.limit, PULL_PATIENCE):
            return None
        run.abandon = True
        return _failed(
            f"The Job stayed suspended (queued) for {now - wait.suspended_since:.0f} s: a queue "
            f"of namespace {run.namespace} (such as Kueue) has not admitted it. Check its "
            f"queue (`kubectl describe job -n {run.namespace} {run.name}`), or wait longer: "
            "KubernetesConfig.schedule_timeout."
        )

    def _pod_that_ran(self, run: _Run) -> dict | None:
        pods = _json(
            run.api.core.list_namespaced_pod(
                run.namespace, label_selector=run.selector, _preload_content=False
            )
        ).get("items")
        ran = [p for p in pods or [] if pod_progress(p)[0] in ("running", "terminated")]
        return ran[-1] if ran else None

    def _no_pod_yet(self, run: _Run, wait: _Waiting) -> RunResult | None:
        if (
            wait.pod_seen
            or wait.suspended_since is not None  # queued: no pod is expected yet
            or time.monotonic() - wait.began < wait.no_pod_limit
        ):
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
        if state != "image-retry":
            wait.pull_failing_since = None
        if (
            state in ("pulling", "image-pull", "image-retry", "config-error")
            and not wait.pulling_shown
        ):
            wait.pulling_shown = True
            events(Phase.PULLING, image=run.image, node=(pod.get("spec") or {}).get("nodeName", ""))
        if state == "image-pull":
            run.abandon = True  # the kubelet would retry forever
            return _failed(cannot_pull(run.image, message, run.namespace))
        if state == "image-retry":  # the kubelet retries; a registry may be slow for a while
            now = time.monotonic()
            if wait.pull_failing_since is None:
                wait.pull_failing_since = now
            if now - wait.pull_failing_since >= max(wait.limit, PULL_PATIENCE):
                run.abandon = True
                return _failed(failing_pull(run.image, message, now - wait.pull_failing_since))
        if state == "config-error":
            run.abandon = True
            return _failed(cannot_start(message))
        if state == "unschedulable":
            now = time.monotonic()
            if wait.unschedulable_since is None:
                wait.unschedulable_since = now
                events(Phase.SCHEDULING, message=message)
            if now - wait.unschedulable_since >= wait.limit:
                run.abandon = True
                return _failed(cannot_schedule(message, wait.limit))
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
        Streams break on real clusters (load balancers, idle timeouts, an API server that
        restarts): one that breaks while the container runs is opened again, with backoff,
        for as long as it runs, from the second of the last line fed (``sinceTime``); lines
        already fed are known by their timestamps and skipped. Once the container has ended,
        the log is read once more, unfollowed, to the end (a few tries: it may have none)."""
        from kubernetes.client.rest import ApiException

        position = _LogPosition()
        backoff = Backoff()
        follow = True
        final_tries = FINAL_LOG_TRIES
        while True:
            try:
                response = open_pod_log(
                    run.api,
                    run.namespace,
                    pod_name,
                    objects.CONTAINER_NAME,
                    follow=follow,
                    since=position.since(),
                )
            except ApiException as e:
                if e.status == 404 or (e.status == 400 and not follow):
                    return  # the pod is gone, or ended without a log (evicted before it ran)
                if e.status != 400 and e.status not in TRANSIENT_STATUSES:
                    raise
                response = None  # no log yet (a race with the kubelet), or a busy server
            except connection_errors():
                response = None
            clean = False
            if response is not None:
                position.reopen()
                try:
                    for line in _log_lines(response):
                        if position.take(line, feed):
                            backoff.reset()
                    clean = True
                except connection_errors():
                    pass  # the connection broke, or went silent
                finally:
                    with contextlib.suppress(Exception):
                        response.release_conn()
            if not follow and clean:
                position.flush(feed)
                return
            if not follow:
                final_tries -= 1
                if final_tries <= 0:
                    return  # the end of the log cannot be had: what came is what there is
            pod = _get(run.api.core.read_namespaced_pod, pod_name, run.namespace)
            if pod is None:
                return
            if follow and pod_progress(pod)[0] == "terminated":
                follow = False  # read what is left, to the end, at once
                continue
            backoff.sleep()

    def _result(
        self, run: _Run, run_id: str, pod_name: str, sink: _LogSink, item: bool = False
    ) -> RunResult:
        """How the pod's container ended. ``item``: a pod of a map, whose Job goes on with the
        other items (its --timeout is the pod's own deadline, not the Job's)."""
        pod = self._terminated_pod(run, pod_name)
        term = container_terminated(pod) if pod is not None else None
        run.container_ended = pod is None or term is not None
        code = term.get("exitCode") if term else None
        note = None
        evicted = disruption(pod)
        if run_id in self._stopped:
            reason = "stopped"
        elif term and term.get("reason") == "OOMKilled":
            reason = "oom"
        elif code == 0:
            reason = "done"
        elif evicted:
            reason = "killed"
            note = (
                f"The cluster took the pod {pod_name} away ({evicted}). Run the cell again; "
                "ask for the memory it uses (--memory) so that the node keeps room for it."
            )
        elif item and ((pod or {}).get("status") or {}).get("reason") == "DeadlineExceeded":
            reason = "timeout"
        else:
            failed = None if item else job_failure(self._finished_job(run))
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
            ended = pod is not None and pod_progress(pod)[0] == "terminated"  # maybe never ran
            if pod is None or container_terminated(pod) or ended or time.monotonic() > deadline:
                return pod
            time.sleep(0.1)

    def _finished_job(self, run: _Run) -> dict | None:
        """The Job once the controller knows how it ends (a deadline shows there: since 1.31
        in FailureTarget, before the pod has gone), briefly waited for."""
        deadline = time.monotonic() + JOB_WAIT
        while True:
            job = _get(run.api.batch.read_namespaced_job, run.name, run.namespace)
            if job is None or job_outcome(job) or time.monotonic() > deadline:
                return job
            time.sleep(0.1)

    @property
    def services(self) -> KubernetesServices:
        """Served cells: a Deployment and a Service per name (services.py)."""
        if getattr(self, "_services", None) is None:
            self._services = KubernetesServices(self)
        return self._services

    def stop(self, run_id: str, grace: float = 0) -> bool:
        """Delete the run's Job, found by its labels: its pod gets SIGTERM (the runner exits
        at once); the Secret goes with the Job, the NetworkPolicy with the pod. A served
        snapshot's Deployment and Service go (whichever process served it)."""
        api, namespace = self.connect()
        with self._cluster_errors("stopping the run", namespace):
            jobs = _jobs_of(api, namespace, run_id)
            if not jobs:
                served = [s for s in self.deployed_services() if s["snapshot"] == run_id]
                removed = [self.remove_service(s["name"]) for s in served]  # every one
                return any(removed)
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
        return True

    def is_running(self, run_id: str) -> bool:
        api, namespace = self.connect()
        with self._cluster_errors("listing runs", namespace):
            jobs = _jobs_of(api, namespace, run_id)
        if any(not job_final(job) for job in jobs):
            return True
        return any(s["snapshot"] == run_id for s in self.deployed_services())

    def running(self, *, all_namespaces: bool = False, services: bool = False) -> list[RunningRun]:
        """The Jobs of this package in the Kubernetes namespace that have not ended (services
        are Deployments: services.running() lists them)."""
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

    def _forbidden(self, detail: str, action: str, namespace: str) -> KubernetesError:
        """A 403 says why in its message: RBAC is one reason among several."""
        if "exceeded quota" in detail:
            return KubernetesError(
                f"A ResourceQuota of namespace {namespace} refuses the run while {action} "
                f"({detail}). Ask for less (--cpus, --memory, --gpus, or KubernetesConfig."
                "default_cpus/default_memory), wait for other runs to end (`kubectl describe "
                f"resourcequota -n {namespace}`), or ask its administrator for more."
            )
        if "being terminated" in detail:
            return NamespaceMissing(
                f"The namespace {namespace} is being deleted, so nothing new may be made in "
                f"it ({detail}). Choose another: "
                '`%config KubernetesConfig.k8s_namespace = "NAME"`.'
            )
        if _ADMISSION.search(detail):
            return KubernetesError(
                f"An admission policy of the cluster refused the run while {action}: {detail}. "
                "Change what it names (KubernetesConfig settings such as node_selector, "
                "tolerations, service_account, or --cpus/--memory), or ask the cluster's "
                "administrator."
            )
        return ClusterAuthError(
            f"The cluster does not allow your account this in namespace {namespace} while "
            f"{action} (403 Forbidden: {detail}). Ask an administrator for an RBAC Role in "
            f"{namespace} that allows create, get, list, watch, patch and delete on jobs, "
            "secrets and networkpolicies (and, to serve cells, deployments and services), get, "
            "list and watch on pods and pods/log, and create on pods/exec; or choose a "
            "namespace where you have it: "
            '`%config KubernetesConfig.k8s_namespace = "NAME"`.'
        )

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
            return self._forbidden(detail, action, namespace)
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
            if _ADMISSION.search(detail):
                return self._forbidden(detail, action, namespace)
            return KubernetesError(
                f"The cluster refused the run's objects while {action} ({status} "
                f"{_reason(e)}: {detail}). {_field_hint(detail)}"
            )
        if status and status >= 500:
            return KubernetesError(
                f"The cluster's API server failed while {action} ({status}: {detail}); try "
                "again, or check the cluster's health (`kubectl get --raw /readyz`)."
            )
        return KubernetesError(f"The cluster answered {status} while {action}: {detail}.")


# -- a map: one Indexed Job, a follower per pod ----------------------------------------------------

MAP_POLL = (0.05, 1.0)  # seconds between reads of a map's Job and pods: while it changes, idle
JOIN_WAIT = 10.0  # after the map, how long its followers may take to see their pods end


class _MapRun:
    """Follows the pods of one map's Indexed Job: each pod whose container runs (one per
    attempt of an item) gets a thread that streams its log and brings its --out values back
    as a single run's are (the backend's own _stream_log, _collect and _result), while this
    one reads the Job and its pods, says the progress (Phase.MAPPED) and decides when the map
    is over."""

    def __init__(
        self,
        backend: KubernetesBackend,
        run: _Run,
        run_id: str,
        workdir: Path,
        count: int,
        retries: int,
        per_index: bool,
        events: Events,
        output: Output,
    ) -> None:
        self.backend, self.run, self.run_id, self.workdir = backend, run, run_id, workdir
        self.count, self.retries, self.per_index = count, retries, per_index
        self.events, self.output = events, output
        self.lock = threading.Lock()  # guards what the followers write, and the output
        self.changed = threading.Event()  # a follower ended: look again at once
        self.followers: dict[str, threading.Thread] = {}  # pod name -> its follower
        self.attempts = [0] * count
        self.last: dict[int, tuple[RunResult, float]] = {}  # index -> its last attempt's end
        self.failed_indexes: set[int] = set()  # of the Job's status: retried no more
        self.fatal: str | None = None  # why no item can run (an image the cluster cannot pull)
        self.started_at = time.monotonic()
        self.pulling_shown = False
        self.unschedulable: dict[str, float] = {}  # pod -> since when no node takes it
        self.pull_failing: dict[str, float] = {}  # pod -> since when its pull fails (retried)
        self.shown: tuple | None = None  # the progress last said

    # -- the Job --------------------------------------------------------------------------

    def follow(self, cancel: threading.Event) -> list[ItemResult]:
        run, api = self.run, self.run.api
        wait = _Waiting(limit=self.backend.config.schedule_timeout)
        pause, job, seen = MAP_POLL[0], None, None
        self._progress()
        while True:
            if cancel.is_set() and self.run_id not in self.backend._stopped:
                self.backend._stopped.add(self.run_id)  # its items end "stopped"
                _delete_absent_ok(
                    api.batch.delete_namespaced_job,
                    run.name,
                    run.namespace,
                    propagation_policy="Background",
                )
            job = _get(api.batch.read_namespaced_job, run.name, run.namespace)
            pods = (
                _json(
                    api.core.list_namespaced_pod(
                        run.namespace, label_selector=run.selector, _preload_content=False
                    )
                ).get("items")
                or []
            )
            for pod in pods:
                self._look_at(pod, wait)
            self.failed_indexes = indexed.parse_indexes(
                ((job or {}).get("status") or {}).get("failedIndexes")
            )
            self._progress()
            if job is None or self.fatal is not None:
                break  # deleted (stopped, or by someone else), or no item can run
            if job_final(job) and not self._following():
                break
            if not pods:  # queued too long, no pod made, or the Job failed before any ran
                ended = (
                    self.backend._queued(run, job, wait, self.events)
                    or self.backend._no_pod_yet(run, wait)
                    or self.backend._ended_before_start(run, self.run_id, job)
                )
                if ended is not None:
                    self.fatal = ended.message or "The Job ended before any item ran."
                    break
            now = (
                (job or {}).get("status"),
                [(p["metadata"]["name"], p["metadata"].get("resourceVersion")) for p in pods],
            )
            pause = MAP_POLL[0] if now != seen else min(pause * 2, MAP_POLL[1])
            seen = now
            if self.changed.wait(pause):
                self.changed.clear()
                pause = MAP_POLL[0]
        if self.fatal is not None:
            run.abandon = True  # the Job would wait, or retry, for ever
        else:
            self.join()  # a deleted Job's pods are going: their items end "stopped"
        return self._results(job)

    def _look_at(self, pod: dict, wait: _Waiting) -> None:
        """A pod of the map: followed once its container runs (or ran); while it waits, the
        reasons it might never run, as a single run's pod is judged."""
        wait.pod_seen = True
        name = pod["metadata"]["name"]
        index = indexed.pod_index(pod)
        if name in self.followers or index is None or not 0 <= index < self.count:
            return
        state, message = pod_progress(pod)
        if state in ("running", "terminated"):
            self.unschedulable.pop(name, None)
            self.pull_failing.pop(name, None)
            with self.lock:
                self.attempts[index] += 1
            thread = threading.Thread(
                target=self._follow_pod,
                args=(pod, index),
                name=f"mlcontainer-map-{name}",
                daemon=True,
            )
            self.followers[name] = thread
            thread.start()
            return
        now = time.monotonic()
        if state in ("pulling", "image-pull", "image-retry", "config-error"):
            if not self.pulling_shown:
                self.pulling_shown = True
                node = (pod.get("spec") or {}).get("nodeName", "")
                self.events(Phase.PULLING, image=self.run.image, node=node)
        if state == "image-pull":
            self.fatal = cannot_pull(self.run.image, message, self.run.namespace)
        elif state == "image-retry":
            since = self.pull_failing.setdefault(name, now)
            if now - since >= max(wait.limit, PULL_PATIENCE):
                self.fatal = failing_pull(self.run.image, message, now - since)
        elif state == "config-error":
            self.fatal = cannot_start(message)
        elif state == "unschedulable":
            if not self.unschedulable:
                self.events(Phase.SCHEDULING, message=message)
            since = self.unschedulable.setdefault(name, now)
            # Items wait for room while others run; with none running, no node fits at all.
            if not self._following() and now - since >= wait.limit:
                self.fatal = cannot_schedule(message, wait.limit)
        else:
            self.pull_failing.pop(name, None)

    def _following(self) -> bool:
        return any(t.is_alive() for t in self.followers.values())

    def join(self) -> None:
        deadline = time.monotonic() + JOIN_WAIT
        for thread in list(self.followers.values()):
            thread.join(max(0.0, deadline - time.monotonic()))

    # -- one pod: one attempt of one item ---------------------------------------------------

    def _follow_pod(self, pod: dict, index: int) -> None:
        backend, run = self.backend, self.run
        name = pod["metadata"]["name"]
        out_dir = item_out_dir(self.workdir, index)
        _empty(out_dir)  # what an earlier attempt brought back is not this one's
        lines = _ItemLines(self.output, self.lock)
        sink = _LogSink(
            lines, lambda offer: backend._collect(run, self.run_id, name, offer, out_dir)
        )
        began = time.monotonic()
        try:
            with backend._cluster_errors(f"following item {index} of the map", run.namespace):
                backend._guard_isolation(run, pod)
                backend._stream_log(run, name, sink.feed)
                sink.close()
                lines.close()
                result = backend._result(run, self.run_id, name, sink, item=True)
        except Exception as e:  # noqa: BLE001 - this item's failure, not the map's
            lines.close()
            stopped = self.run_id in backend._stopped
            result = RunResult(
                None,
                "stopped" if stopped else "failed",
                "".join(sink.stdout),
                "".join(sink.stderr),
                container_id=name,
                message=None if stopped else str(e),
            )
        with self.lock:
            self.last[index] = (result, time.monotonic() - began)
        self.changed.set()

    # -- what the map says ------------------------------------------------------------------

    def _ended(self, index: int) -> bool:
        """Whether item ``index`` will run no more (a failed attempt may be retried)."""
        last = self.last.get(index)
        if last is None:
            return False
        reason = last[0].reason
        if reason == "done" or index in self.failed_indexes or reason == "stopped":
            return True
        return self.per_index and self.attempts[index] > self.retries

    def _progress(self) -> None:
        with self.lock:
            ended = [i for i in range(self.count) if self._ended(i)]
            failures = [
                {"index": i, "reason": self.last[i][0].reason, "why": _why(self.last[i][0])}
                for i in ended
                if self.last[i][0].reason != "done"
            ]
        running = sum(1 for t in self.followers.values() if t.is_alive())
        shown = (len(ended), running, len(failures))
        if shown == self.shown:
            return
        self.shown = shown
        rate = len(ended) / max(time.monotonic() - self.started_at, 1e-6)
        left = self.count - len(ended)
        self.events(
            Phase.MAPPED,
            done=len(ended),
            running=running,
            failed=len(failures),
            count=self.count,
            rate=round(rate, 3),
            eta=round(left / rate, 1) if rate > 0 else None,
            failures=failures,
        )

    def _results(self, job: dict | None) -> list[ItemResult]:
        """Each item's last attempt, in item order; an item that never ran says why."""
        stopped = self.run_id in self.backend._stopped
        failure = job_failure(job)
        results = []
        for index in range(self.count):
            out_dir = item_out_dir(self.workdir, index)
            if index in self.last:
                result, duration = self.last[index]
                message = result.message
                if result.reason != "done" and failure and not message and not stopped:
                    message = f"The Job failed ({failure[0]}: {failure[1]}) while it ran."
                results.append(
                    ItemResult(
                        index,
                        result.reason,
                        result.exit_code,
                        self.attempts[index],
                        round(duration, 3),
                        result.stdout,
                        result.stderr,
                        out_dir,
                        message,
                    )
                )
                continue
            if stopped:
                reason, message = "stopped", None
            elif self.fatal is not None:
                reason, message = "failed", self.fatal
            elif failure is not None:
                reason = "timeout" if failure[0] == "DeadlineExceeded" else "failed"
                message = f"The Job failed ({failure[0]}: {failure[1]}) before item {index} ran."
            else:
                reason = "killed"
                message = f"The Job {self.run.name} was deleted before item {index} ran."
            attempts = self.attempts[index]  # a follower that did not end in time
            results.append(
                ItemResult(index, reason, None, attempts, 0.0, out_dir=out_dir, message=message)
            )
        return results


class _ItemLines:
    """An item's output passed on in whole lines, so that items running at once do not cut
    into each other's lines (nor into the rich output's marked lines)."""

    def __init__(self, output: Output, lock: threading.Lock) -> None:
        self.output, self.lock = output, lock
        self.partial = {"stdout": "", "stderr": ""}

    def __call__(self, stream: str, text: str) -> None:
        head, sep, rest = (self.partial.get(stream, "") + text).rpartition("\n")
        self.partial[stream] = rest
        if sep:
            with self.lock:
                self.output(stream, head + sep)

    def close(self) -> None:
        for stream, text in self.partial.items():
            if text:
                with self.lock:
                    self.output(stream, text + "\n")
        self.partial = {"stdout": "", "stderr": ""}


def _empty(folder: Path) -> None:
    """``folder`` exists and is empty."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)


def _why(result: RunResult) -> str:
    """One line of why an item failed: its exception's last line, else the backend's word."""
    lines = [line for line in (result.stderr or "").strip().splitlines() if line.strip()]
    return (lines[-1] if lines else result.message or result.reason).strip()[:200]


# -- reading the pod's log ---------------------------------------------------------------------


class _LogSink:
    """Demultiplexes the one-stream log: text and marked stderr to ``output``, display data
    re-emitted as a MARK line (the magics' own demux shows it), the runner's offer of its
    output files to ``collect``."""

    def __init__(self, output: Output, collect: Callable[[dict], None]) -> None:
        self.output = output
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self._demux = StdoutDemux(self._text, self._display, stderr=self._stderr, outputs=collect)

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


class _LogPosition:
    """How far the log was read: the timestamp of the last line fed (in nanoseconds) and how
    many lines had it, so a stream opened again from that second skips what was fed."""

    def __init__(self) -> None:
        self.last: int | None = None
        self.at_last = 0
        self._skip = 0
        self._replaying = False  # a stream opened again sends what was fed once more
        self._partial = ""  # the end of a log without its newline (it may still grow)

    def since(self) -> str | None:
        if self.last is None:
            return None
        seconds = self.last // 1_000_000_000
        return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

    def reopen(self) -> None:
        self._skip, self._partial = self.at_last, ""
        self._replaying = self.last is not None

    def take(self, line: str, feed) -> bool:
        """Feed one line (its timestamp first) unless it was fed before; True if fed."""
        if not line.endswith("\n"):
            self._partial = line
            return False
        stamp, _, text = line.partition(" ")
        at = _log_time(stamp)
        if at is None:  # no timestamp: the rest of a line that started before
            feed(line)
            return True
        if self._replaying and self.last is not None:
            if at < self.last:
                return False  # fed before the stream broke
            if at == self.last and self._skip:
                self._skip -= 1
                return False
            self._replaying = False
        # Lines of the container's two streams may come slightly out of time order: each
        # is fed as it comes; the position is the newest.
        if self.last is None or at > self.last:
            self.last, self.at_last = at, 1
        elif at == self.last:
            self.at_last += 1
        feed(text)
        return True

    def flush(self, feed) -> None:
        """The log ended: a last line without a newline is complete after all."""
        if self._partial:
            self.take(self._partial + "\n", lambda text: feed(text[:-1]))
            self._partial = ""


def _log_lines(response) -> Iterator[str]:
    """The lines of a log response, as they come (the last one without its newline if the
    stream ends there)."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    pending: list[str] = []  # pieces of a line not ended yet (a long one comes in many)
    for chunk in response.stream(amt=None, decode_content=False):
        text = decoder.decode(chunk)
        if "\n" not in text:
            pending.append(text)
            continue
        first, *lines, rest = text.split("\n")
        yield "".join(pending) + first + "\n"
        for line in lines:
            yield line + "\n"
        pending = [rest] if rest else []
    tail = "".join(pending) + decoder.decode(b"", final=True)
    if tail:
        yield tail


def _log_time(stamp: str) -> int | None:
    """Nanoseconds since the epoch of a kubelet timestamp (RFC 3339, up to 9 digits of
    fraction); None when ``stamp`` is not one."""
    m = _STAMP.match(stamp)
    if not m:
        return None
    whole, fraction, zone = m.groups()
    try:
        at = datetime.strptime(whole + (zone if zone != "Z" else "+00:00"), "%Y-%m-%dT%H:%M:%S%z")
    except ValueError:
        return None
    return int(at.timestamp()) * 1_000_000_000 + int((fraction or "").ljust(9, "0")[:9] or 0)


_STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$")


def _safe_file_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and not any(c in name for c in "/\\\0")


# -- helpers -----------------------------------------------------------------------------------


_ADMISSION = re.compile(
    r"admission webhook|denied (the )?request|ValidatingAdmissionPolicy|violates PodSecurity"
)


def _reason(e) -> str:
    try:
        return str(json.loads(e.body).get("reason") or e.reason or "")
    except (TypeError, ValueError, AttributeError):
        return str(e.reason or "")


def _field_hint(detail: str) -> str:
    """What to change, by the fields the server names."""
    if "toleration" in detail:
        return "Check KubernetesConfig.tolerations."
    if "nodeSelector" in detail or "affinity" in detail:
        return "Check KubernetesConfig.node_selector."
    if "resources" in detail:
        return "Check --cpus, --memory, --gpus (or KubernetesConfig.default_cpus/default_memory)."
    if "volume" in detail.lower():
        return "Check --mount and KubernetesConfig.volumes."
    return (
        "An admission policy of the cluster may forbid them; ask its administrator, or report "
        "the message to mlcontainer-magics."
    )


def _failed(message: str) -> RunResult:
    return RunResult(None, "failed", message=message)


def fetch_out_file(api: Api, namespace: str, pod: str, name: str, size: int, out_dir: Path) -> str:
    """One file of the pod's out/ into ``out_dir`` over exec, resumed at the byte where a broken
    stream left it: its SHA-256. Gives up after API_PATIENCE seconds without a byte."""
    digest = hashlib.sha256()
    with open(out_dir / name, "wb") as f:

        def more() -> None:
            at = f.tell()
            command = [*RUNNER_COMMAND, "--send", f"{OUT_DIR}/{name}", str(at)]
            for data in exec_output(api, namespace, pod, objects.CONTAINER_NAME, command):
                f.write(data)
                digest.update(data)
            if f.tell() == at:  # a whole answer, and nothing in it
                raise RuntimeError(f"{name} is shorter than the {size} bytes offered")

        while f.tell() < size:
            exec_patiently(more, progress=f.tell)
    return digest.hexdigest()


def exec_patiently(once: Callable[[], None], progress: Callable[[], object] = lambda: None):
    """``once()`` (it execs), again with backoff while the stream breaks or the server is
    busy, until API_PATIENCE seconds pass without ``progress()`` changing."""
    from kubernetes.client.rest import ApiException

    broken: tuple[type[BaseException], ...] = (ExecBroken, *connection_errors())
    backoff = Backoff()
    seen, since = progress(), time.monotonic()
    while True:
        try:
            return once()
        except broken:
            pass
        except ApiException as e:
            if e.status != 0 and e.status not in TRANSIENT_STATUSES:
                raise  # status 0: the websocket could not connect
        now = progress()
        if now != seen:
            seen, since = now, time.monotonic()
            backoff.reset()
            continue
        if time.monotonic() - since > API_PATIENCE:
            raise ExecBroken(f"no progress for {API_PATIENCE:g} s")
        backoff.sleep()


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


def _delete_absent_ok(delete, name: str, namespace: str, **kwargs) -> None:
    from kubernetes.client.rest import ApiException

    try:
        delete(name, namespace, **kwargs)
    except ApiException as e:
        if e.status != 404:
            raise
