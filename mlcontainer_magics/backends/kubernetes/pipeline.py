"""`mlcontainer export ID DIR --pipeline --k8s`: the pipeline as Kubernetes objects, in
``pipeline.yaml``.

One Job whose pod runs the steps in order: steps 1..n-1 are its init containers (the kubelet
runs them one after the other, each to completion, and fails the pod when one fails) and step n
is its container. Each runs its own image, the one ``run.sh`` builds from ``steps/NN-NAME/``.
Values pass through emptyDir volumes, one per step (``values-NN-NAME``): mounted as that step's
``/mlc/out``, and file by file (``subPath``) as the ``/mlc/in`` files of the steps that read
them, under the names their manifests expect. The notebook's values travel in the Secret,
mounted the same way. One pod rather than one Job per step: values stay on the node, with no
PersistentVolume to provision and no controller to order the Jobs.

Pure apart from reading the export's ``inputs/`` and writing the one file; the objects are
those of objects.py (security context, placement, resources, secret variables).
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

from ...runner import MLC_DIR
from .export import _has_registry
from .objects import (
    ANNOTATION_NAME,
    ANNOTATION_SNAPSHOT,
    CONTAINER_SECURITY_CONTEXT,
    OUT_DIR,
    RUNNER_PATH,
    K8sSettings,
    _copy,
    _pod_spec,  # the pod of every run's Job: placement, pull secret, non-root context
    container_env,
    job_name,
    labels,
    network_policy_manifest,
    payload_keys,
    resources,
    secret_env_keys,
    secret_manifest,
    settings_from,
    to_yaml,
    with_secrets,
)
from .slugs import safe_name

FILE_NAME = "pipeline.yaml"
INPUTS_VOLUME = "inputs"

K8S_README = """
## On Kubernetes

`{file}` runs the same steps on a cluster as one Job: steps 1 to n-1 are its init
containers, which Kubernetes runs one after the other, each to completion (a failing one fails
the Job), and the last step is its container. Each step runs its own image, the one `run.sh`
builds, `{repository}:NN-NAME`. Push them where the cluster pulls from, then apply:

    MLC_PIPELINE_IMAGE={push} sh run.sh push
    kubectl apply -f {file}
{change}
`kubectl logs job/NAME -c step-NN-NAME` shows a step's output. Values pass through an emptyDir
volume per step, mounted as its `/mlc/out` and, file by file, as the `/mlc/in` files of the
steps that read them; the notebook's values travel in the Secret. One Job rather than one per
step: the values stay in the pod, with no volume to provision and no controller needed to
order the steps (the outputs stay in the pod too). The pod asks for the largest of its steps'
resources, as Kubernetes counts init containers.
"""
CHANGE_IMAGES = """
(or push them under another name and change each `image:` in `{file}` to match).
"""


def k8s_readme(repository: str) -> str:
    """The README's part on pipeline.yaml, whose images are ``repository:NN-NAME``."""
    pushed = _has_registry(repository)
    return K8S_README.format(
        file=FILE_NAME,
        repository=repository,
        push=repository if pushed else f"registry.example.com/team/{repository}",
        change="" if pushed else CHANGE_IMAGES.format(file=FILE_NAME),
    )


def k8s_repository(root_repository: str, config) -> str:
    """Where pipeline.yaml's images are: under the configured registry, if any."""
    registry = (config.registry or "").rstrip("/")
    return f"{registry}/{root_repository}" if registry else root_repository


def pipeline_manifests(
    steps, *, root: str, repository: str, settings: K8sSettings, files: dict[str, bytes]
) -> list[dict]:
    """The Secret (the notebook's values, ``files``: path under inputs/ -> content, and the
    secret variables, empty), the Job and, when no step may use the network, a NetworkPolicy.
    ``steps``: pipeline_export.ExportStep in run order; step NN-NAME runs
    ``repository:NN-NAME``."""
    last = steps[-1]
    specs = [with_secrets(s.spec, {}) for s in steps]
    env: dict[str, str] = {}
    for spec in specs:
        env.update(spec.env)
    # One spec for the objects' names, labels and Secret: the last step's, with every step's
    # secret variables.
    spec = replace(
        specs[-1],
        name="-".join(["pipeline", *([last.spec.name] if last.spec.name else [])]),
        env=tuple(env.items()),
        secret_env=frozenset().union(*(s.secret_env for s in specs)),
    )
    name = job_name(root, spec.name)
    keys = payload_keys(files)
    secret = secret_manifest(spec, snapshot_id=root, namespace=settings.namespace, files=files)
    containers = [
        _container(s, sp, name, repository, settings, keys) for s, sp in zip(steps, specs)
    ]
    volumes = [{"name": _values(s.folder), "emptyDir": {}} for s in steps] + [
        {"name": INPUTS_VOLUME, "secret": {"secretName": name, "defaultMode": 0o440}}
    ]
    pod_spec = _pod_spec("Never", containers[-1], volumes, settings)
    if containers[:-1]:
        pod_spec["initContainers"] = containers[:-1]
    run_labels = labels(spec, root)
    annotations = {ANNOTATION_SNAPSHOT: root, ANNOTATION_NAME: spec.name}
    job_spec: dict = {"backoffLimit": settings.backoff_limit}
    timeouts = [s.spec.timeout for s in steps]
    if all(t is not None for t in timeouts):  # counted from the Job's start, as one run's
        job_spec["activeDeadlineSeconds"] = max(1, math.ceil(sum(timeouts)))
    if settings.ttl_seconds is not None:
        job_spec["ttlSecondsAfterFinished"] = settings.ttl_seconds
    job_spec["template"] = {
        "metadata": {"labels": dict(run_labels), "annotations": dict(annotations)},
        "spec": pod_spec,
    }
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": settings.namespace,
            "labels": run_labels,
            "annotations": annotations,
        },
        "spec": job_spec,
    }
    out = [secret, job]
    if all(s.spec.network == "none" for s in steps):  # one pod: one network for all
        out.append(network_policy_manifest(spec, snapshot_id=root, namespace=settings.namespace))
    return out


def _values(folder: str) -> str:
    """The emptyDir of step ``folder``'s out folder (a DNS label: folders are slugs)."""
    return safe_name(f"values-{folder}")


def container_name(step) -> str:
    return safe_name(f"step-{step.folder}")


def _container(step, spec, secret: str, repository: str, settings, keys) -> dict:
    """One step: its image, the runner, its out folder and, file by file, what it reads."""
    mounts: list[dict] = [{"name": _values(step.folder), "mountPath": OUT_DIR}]
    for _name, inside, source in step.inputs:
        path = f"{MLC_DIR}/in/{inside}"
        if source.kind == "notebook":
            mount = {"name": INPUTS_VOLUME, "subPath": keys[source.path]}
        else:
            mount = {"name": _values(source.step), "subPath": source.path}
        mounts.append({**mount, "mountPath": path, "readOnly": True})
    return {
        "name": container_name(step),
        "image": f"{repository}:{step.folder}",
        "imagePullPolicy": "IfNotPresent",
        "command": ["python", RUNNER_PATH],
        "env": container_env(spec, secret),
        "resources": resources(spec, settings),
        "securityContext": _copy(CONTAINER_SECURITY_CONTEXT),
        "volumeMounts": mounts,
    }


def write_pipeline_manifest(root: str, steps, folder, config, repository: str) -> Path:
    """Write ``folder/pipeline.yaml`` for the export in ``folder`` (its ``inputs/`` written),
    placed as KubernetesConfig ``config`` says; the step images are ``repository:NN-NAME``."""
    folder = Path(folder)
    settings = settings_from(config, config.k8s_namespace or "default")
    inputs = folder / "inputs"
    files = {
        p.relative_to(inputs).as_posix(): p.read_bytes()
        for p in sorted(inputs.rglob("*"))
        if p.is_file()
    }
    objects = pipeline_manifests(
        steps, root=root, repository=repository, settings=settings, files=files
    )
    job = objects[1]
    ns, name = settings.namespace, job["metadata"]["name"]
    lines = [
        f"The {len(steps)} steps that led to snapshot {root} as one Kubernetes Job, exported by "
        "mlcontainer-magics.",
        f"  kubectl apply -f {FILE_NAME}",
        f"  kubectl logs -n {ns} job/{name} -c {container_name(steps[-1])}",
        "Steps 1..n-1 are its init containers, run in order; the last step is its container.",
        "Values pass through an emptyDir per step; the notebook's values are in the Secret.",
    ]
    if not _has_registry(repository):
        lines.append(
            f"The images {repository}:NN-NAME are built by run.sh on this machine: push them "
            "to a registry the cluster pulls from (README.md says how) and change `image:`."
        )
    names = sorted({k for s in steps for k in secret_env_keys(with_secrets(s.spec, {}))})
    if names:
        lines.append(
            "Secret variables are never recorded: before applying, set "
            + ", ".join(f'data["env.{k}"]' for k in names)
            + " of the Secret (base64)."
        )
    path = folder / FILE_NAME
    path.write_text("".join(f"# {line}\n" for line in lines) + to_yaml(*objects))
    return path
