"""A served cell as Kubernetes objects, and a rollout's progress in words: pure functions over
plain dicts, as :mod:`.objects` is for runs (nothing here talks to a cluster).

A service named NAME is:

* a ``v1`` **Secret** per snapshot (``mlc-NAME-<snapshot>``), the payload the Job of a run has
  (runner, cell, manifest with its ``serve`` block, values in), so the environment image is the
  one a run of the snapshot uses and nothing is baked into a new image;
* an ``apps/v1`` **Deployment** ``mlc-NAME``: ``replicas`` pods running
  ``python /mlc/runner.py --http 8080``, rolled one pod at a time with no pod taken away before
  its replacement is ready (maxSurge 1, maxUnavailable 0); a startup probe gives the cell time to
  load its model, then readiness and liveness probes ask ``GET /healthz``; non-root, a read-only
  root filesystem (``/mlc``, ``/mlc/out`` and ``/tmp``, the runner's ``HOME``, are emptyDirs), no
  privilege escalation, no capabilities;
* a ``v1`` **Service** ``mlc-NAME`` (ClusterIP, port 80 to the pods' 8080), which a notebook
  reaches through the API server's service proxy (:func:`proxy_path`), with its kubeconfig's
  credentials.

The Deployment selects its pods by service name only (a selector cannot change), so a new
snapshot under the same name rolls out in place.
"""

from __future__ import annotations

import dataclasses

from ...core.spec import RunSpec
from ...errors import SpecError
from ...runner import SERVE_COMMAND, SERVE_PORT
from . import objects
from .objects import K8sSettings
from .pods import crash_loop, pod_progress
from .slugs import safe_name

SERVICE_PORT = 80  # the Service's port; the pods listen on SERVE_PORT
PORT_NAME = "http"
HEALTH_PATH = "/healthz"
TMP_VOLUME = "tmp"
TMP_DIR = "/tmp"  # HOME of the runner (CONTAINER_ENV): written by libraries that cache
LABEL_SERVICE = "mlcontainer.org/service"
LABEL_COMPONENT = "app.kubernetes.io/component"
ANNOTATION_SERVICE = "mlcontainer.org/service"
ANNOTATION_ENTRY = "mlcontainer.org/entry"
# How long the cell may take (loading its model) before /healthz must answer: the startup
# probe's period times its failures. Liveness starts only after it, so a slow load is no crash.
STARTUP_PERIOD = 2
STARTUP_SECONDS = 600
PROGRESS_DEADLINE = 600  # the Deployment controller's progressDeadlineSeconds
REVISION_HISTORY = 3


def deployment_name(service: str) -> str:
    """The name of a service's Deployment and Service: ``mlc-<name>``, a DNS-1035 label (it
    starts with a letter, as a Service's name must)."""
    return safe_name(f"mlc-{service}")


def proxy_path(namespace: str, service: str) -> str:
    """The API server's proxy to the Service's port, which a client with the kubeconfig's
    credentials can call: ``/api/v1/namespaces/NS/services/mlc-NAME:80/proxy/``."""
    return (
        f"/api/v1/namespaces/{namespace}/services/{deployment_name(service)}:{SERVICE_PORT}/proxy/"
    )


def selector(service: str) -> dict[str, str]:
    """The labels that pick a service's pods, whichever snapshot they run."""
    return {
        objects.LABEL_MANAGED_BY: objects.MANAGED_BY,
        LABEL_SERVICE: safe_name(service, "label-value"),
    }


def selector_text(service: str) -> str:
    return ",".join(f"{k}={v}" for k, v in selector(service).items())


def service_labels(spec: RunSpec, snapshot_id: str, service: str) -> dict[str, str]:
    return {
        **objects.labels(spec, snapshot_id),
        **selector(service),
        LABEL_COMPONENT: "service",
    }


def _service_annotations(spec: RunSpec, snapshot_id: str, service: str, entry: str) -> dict:
    return {
        **objects._annotations(spec, snapshot_id),
        ANNOTATION_SERVICE: service,
        ANNOTATION_ENTRY: entry,
    }


def serve_container(
    spec: RunSpec, secret: str, image: str, settings: K8sSettings, files, claims
) -> dict:
    """The run's container (:func:`objects._container`: env, resources, payload and mounts),
    serving: the runner with ``--http``, its port named, probes on /healthz, and a read-only
    root filesystem with /tmp writable."""
    container = objects._container(spec, secret, image, settings, files, claims)
    container["command"] = list(SERVE_COMMAND)
    container["ports"] = [{"name": PORT_NAME, "containerPort": SERVE_PORT, "protocol": "TCP"}]
    probe = {"httpGet": {"path": HEALTH_PATH, "port": PORT_NAME}, "timeoutSeconds": 2}
    container["startupProbe"] = {
        **probe,
        "periodSeconds": STARTUP_PERIOD,
        "failureThreshold": STARTUP_SECONDS // STARTUP_PERIOD,
    }
    container["readinessProbe"] = {**probe, "periodSeconds": 5, "failureThreshold": 2}
    container["livenessProbe"] = {**probe, "periodSeconds": 10, "failureThreshold": 3}
    container["securityContext"]["readOnlyRootFilesystem"] = True
    container["volumeMounts"].append({"name": TMP_VOLUME, "mountPath": TMP_DIR})
    return container


def deployment_manifest(
    spec: RunSpec,
    *,
    image: str,
    snapshot_id: str,
    namespace: str,
    settings: K8sSettings,
    service: str,
    entry: str = "predict",
    replicas: int = 1,
    files=objects.DEFAULT_FILES,
    progress_deadline: int = PROGRESS_DEADLINE,
) -> dict:
    """The ``apps/v1`` Deployment that serves ``spec``'s cell from ``image``, its payload
    (``files``) mounted from the snapshot's Secret."""
    objects._check_namespace(namespace)
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 1:
        raise SpecError(f"--replicas must be a whole number of 1 or more, not {replicas!r}.")
    if not image or any(c.isspace() for c in image):
        raise SpecError(f"Image reference {image!r} is empty or contains whitespace.")
    spec = dataclasses.replace(spec, name=service)
    secret = objects.secret_name(snapshot_id, service)
    claims = objects.claim_mounts(spec)
    volumes = [*objects._volumes(secret, claims), {"name": TMP_VOLUME, "emptyDir": {}}]
    pod_spec = objects._pod_spec(
        "Always", serve_container(spec, secret, image, settings, files, claims), volumes, settings
    )
    labels = service_labels(spec, snapshot_id, service)
    annotations = _service_annotations(spec, snapshot_id, service, entry)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployment_name(service),
            "namespace": namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector(service)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "progressDeadlineSeconds": progress_deadline,
            "revisionHistoryLimit": REVISION_HISTORY,
            "template": {
                "metadata": {"labels": dict(labels), "annotations": dict(annotations)},
                "spec": pod_spec,
            },
        },
    }


def service_manifest(spec: RunSpec, *, snapshot_id: str, namespace: str, service: str) -> dict:
    """The ``v1`` Service in front of the Deployment's pods: ClusterIP, port 80 -> 8080."""
    objects._check_namespace(namespace)
    spec = dataclasses.replace(spec, name=service)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": deployment_name(service),
            "namespace": namespace,
            "labels": service_labels(spec, snapshot_id, service),
            "annotations": {ANNOTATION_SERVICE: service},
        },
        "spec": {
            "type": "ClusterIP",
            "selector": selector(service),
            "ports": [
                {
                    "name": PORT_NAME,
                    "port": SERVICE_PORT,
                    "targetPort": PORT_NAME,
                    "protocol": "TCP",
                }
            ],
        },
    }


def service_manifests(
    spec: RunSpec,
    *,
    image: str,
    snapshot_id: str,
    namespace: str,
    settings: K8sSettings,
    service: str,
    files,
    entry: str = "predict",
    replicas: int = 1,
    progress_deadline: int = PROGRESS_DEADLINE,
) -> list[dict]:
    """Everything a service needs, in the order to apply it: the Secret (the payload
    ``files``, path -> content, whose manifest.json carries the ``serve`` block), the
    Deployment and the Service."""
    named = dataclasses.replace(spec, name=service)
    secret = objects.secret_manifest(
        named, snapshot_id=snapshot_id, namespace=namespace, files=files
    )
    secret["metadata"]["labels"].update(selector(service))
    return [
        secret,
        deployment_manifest(
            spec,
            image=image,
            snapshot_id=snapshot_id,
            namespace=namespace,
            settings=settings,
            service=service,
            entry=entry,
            replicas=replicas,
            files=list(files),
            progress_deadline=progress_deadline,
        ),
        service_manifest(spec, snapshot_id=snapshot_id, namespace=namespace, service=service),
    ]


# -- a rollout's progress ------------------------------------------------------------------------


@dataclasses.dataclass
class Rollout:
    """Where a rollout is: ``state`` "done", "waiting" or "failed"; ``kind`` of a failure
    ("image-pull", "image-retry", "unschedulable", "crash-loop", "config-error", "deadline");
    ``pod``: the pod it concerns, whose log a crash loop's message wants."""

    state: str
    message: str
    kind: str | None = None
    pod: str | None = None
    ready: int = 0
    wanted: int = 0


def _condition(deployment: dict, type_: str) -> dict | None:
    for condition in (deployment.get("status") or {}).get("conditions") or []:
        if condition.get("type") == type_:
            return condition
    return None


def rollout_progress(deployment: dict, pods: list[dict]) -> Rollout:
    """Judge a Deployment's rollout as ``kubectl rollout status`` does (observedGeneration,
    updatedReplicas, availableReplicas, the Progressing condition), and its new pods (those of
    the snapshot the template runs) for what keeps them from serving."""
    spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
    meta = deployment.get("metadata") or {}
    wanted = spec.get("replicas", 1)
    ready = status.get("availableReplicas") or 0
    snapshot = (
        ((spec.get("template") or {}).get("metadata") or {})
        .get("labels", {})
        .get(objects.LABEL_SNAPSHOT)
    )
    new = [
        p
        for p in pods
        if ((p.get("metadata") or {}).get("labels") or {}).get(objects.LABEL_SNAPSHOT) == snapshot
        and not (p.get("metadata") or {}).get("deletionTimestamp")
    ]
    for pod in new:  # the first pod that cannot serve says why
        problem = pod_problem(pod)
        if problem is not None:
            kind, words = problem
            return Rollout(
                "waiting" if kind in ("image-retry", "unschedulable") else "failed",
                words,
                kind,
                pod["metadata"]["name"],
                ready,
                wanted,
            )
    progressing = _condition(deployment, "Progressing") or {}
    if progressing.get("reason") == "ProgressDeadlineExceeded":
        return Rollout(
            "failed",
            f"{progressing.get('message') or 'the rollout timed out'}: its new pods did not "
            f"become ready within {spec.get('progressDeadlineSeconds', PROGRESS_DEADLINE)} s",
            "deadline",
            None,
            ready,
            wanted,
        )
    if meta.get("generation", 0) > status.get("observedGeneration", 0):
        return Rollout(
            "waiting", "the Deployment controller has not seen it yet", ready=ready, wanted=wanted
        )
    updated = status.get("updatedReplicas") or 0
    total = status.get("replicas") or 0
    if updated < wanted:
        words = f"{updated} of {wanted} new replicas have been updated"
    elif total > updated:
        words = f"{total - updated} old replicas are pending termination"
    elif ready < updated:
        words = f"{ready} of {updated} updated replicas are available"
    else:
        return Rollout("done", f"{ready} of {wanted} replicas ready", None, None, ready, wanted)
    return Rollout("waiting", words, None, None, ready, wanted)


def pod_problem(pod: dict) -> tuple[str, str] | None:
    """What keeps a pod of a service from serving, as (kind, the cluster's words), or None."""
    looping = crash_loop(pod)
    if looping is not None:
        return "crash-loop", looping
    state, message = pod_progress(pod)
    if state in ("image-pull", "image-retry", "config-error", "unschedulable"):
        return state, message
    return None
