"""`mlcontainer export ID DIR --k8s`: the snapshot's run as Kubernetes objects, in ``job.yaml``
(with ``--serve``: the service, in ``service.yaml``; a map's: its Indexed Job).

``kubectl apply -f job.yaml`` runs the exported cell as a Job, as the Kubernetes backend would:
the Secret carries the export's ``mlc/`` folder (runner, cell, manifest, values in) and the
Job mounts it at ``/mlc``. ``service.yaml`` holds the same Secret, a Deployment that serves the
cell and its Service, exactly as ``mlcontainer deploy`` applies them. Pure apart from reading
that folder and writing the one file.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from ...core.spec import RunSpec
from ...errors import SpecError
from . import indexed, serving
from .objects import (
    CLAIM_PREFIX,
    MOUNTED_PREFIX,
    K8sSettings,
    job_name,
    run_manifests,
    secret_env_keys,
    to_yaml,
)

FILE_NAME = "job.yaml"
SERVICE_FILE_NAME = "service.yaml"


def write_job_manifest(record: dict, spec: RunSpec, folder, settings: K8sSettings) -> Path:
    """Write ``folder/job.yaml``: the Secret, the Job and (``--network none``) the
    NetworkPolicy of snapshot ``record``, whose export already wrote ``folder/mlc``.

    The image is the environment image of the run (for a Kubernetes run, the reference it
    pushed, by digest).
    """
    folder = Path(folder)
    image, spec, files = _payload(record, spec, folder, FILE_NAME)
    namespace = settings.namespace
    if spec.map is not None:
        count = _map_count(folder, spec.map.name)
        objects = indexed.map_manifests(
            spec,
            image=image,
            snapshot_id=record["id"],
            namespace=namespace,
            settings=settings,
            files=indexed.map_payload(files),
            count=count,
            parallel=spec.map.parallel,
            retries=spec.map.retries,
        )
        header = _map_header(record, spec, image, namespace, count)
    else:
        objects = run_manifests(
            spec,
            image=image,
            snapshot_id=record["id"],
            namespace=namespace,
            settings=settings,
            files=files,
        )
        header = _header(record, spec, image, namespace)
    path = folder / FILE_NAME
    path.write_text(header + to_yaml(*objects))
    return path


def _map_count(folder: Path, name: str) -> int:
    """How many items the export's folder holds, from its manifest's map block."""
    try:
        mapped = json.loads((folder / "mlc" / "manifest.json").read_text()).get("map") or {}
    except (OSError, ValueError):
        mapped = {}
    items = mapped.get("items") or []
    if not items:
        raise SpecError(
            f"{folder / 'mlc' / 'manifest.json'} lists no items of --map {name}: write the "
            "export's mlc/ folder with the map's manifest before job.yaml."
        )
    return len(items)


def write_service_manifest(
    record: dict, spec: RunSpec, folder, settings: K8sSettings, serve: dict, replicas: int = 1
) -> Path:
    """Write ``folder/service.yaml``: the Secret, the Deployment and the Service that serve
    snapshot ``record``'s cell as ``serve`` (the manifest's serve block) says, with
    ``replicas`` pods; its export already wrote ``folder/mlc`` (with that block)."""
    folder = Path(folder)
    image, spec, files = _payload(record, spec, folder, SERVICE_FILE_NAME)
    objects = serving.service_manifests(
        spec,
        image=image,
        snapshot_id=record["id"],
        namespace=settings.namespace,
        settings=settings,
        service=serve["name"],
        entry=serve["entry"],
        replicas=replicas,
        files=files,
    )
    ns, name = settings.namespace, serving.deployment_name(serve["name"])
    port = serving.SERVE_PORT
    lines = [
        f"Snapshot {record['id']} served as {serve['name']!r} on Kubernetes, exported by "
        "mlcontainer-magics.",
        f"  kubectl apply -f {SERVICE_FILE_NAME}",
        f"  kubectl rollout status -n {ns} deployment/{name}",
        f"  kubectl port-forward -n {ns} service/{name} {port}:{serving.SERVICE_PORT}",
        f"  curl -X POST -H 'Content-Type: application/json' -d '[1, 2]' "
        f"http://127.0.0.1:{port}/{serve['entry']}",
        "The Secret holds the cell, its inputs and the runner (the export's mlc/ folder),",
        f"mounted at /mlc; the pods run the runner with --http {port}.",
        *_image_and_secret_notes(spec, image),
    ]
    path = folder / SERVICE_FILE_NAME
    path.write_text("".join(f"# {line}\n" for line in lines) + to_yaml(*objects))
    return path


def _payload(record: dict, spec: RunSpec, folder: Path, what: str):
    """(image, spec, payload files) of an export's folder: the run's mlc/ and, for mounted
    inputs the export carries (data/, at their container paths), their files."""
    if not (folder / "mlc").is_dir():
        raise SpecError(
            f"{folder / 'mlc'} is missing: write the export's mlc/ folder before {what}."
        )
    image = record.get("env_image") or spec.env_spec.base_image
    files = payload_files(folder / "mlc")
    if (folder / "data").is_dir():
        files.update({MOUNTED_PREFIX + k: v for k, v in payload_files(folder / "data").items()})
    spec = replace(
        spec,
        mounts=tuple(
            m
            for m in spec.mounts
            if m.source.startswith(CLAIM_PREFIX)
            or (folder / "data" / m.target.lstrip("/")).exists()
        ),
    )
    return image, spec, files


def mount_files(spec: RunSpec) -> dict[str, bytes]:
    """The files of the run's local read-only mounts, as payload paths (MOUNTED_PREFIX + the
    path in the container): small inputs travel with the Job."""
    files = {}
    for mount in spec.mounts:
        if mount.source.startswith(CLAIM_PREFIX) or mount.writable:
            continue
        source = Path(mount.source)
        target = MOUNTED_PREFIX + mount.target.lstrip("/")
        if source.is_file():
            files[target] = source.read_bytes()
        else:
            files.update({f"{target}/{k}": v for k, v in payload_files(source).items()})
    return files


def payload_files(folder: Path) -> dict[str, bytes]:
    """A run's folder as its Secret carries it: every file but those of out/ (which the pod
    writes), by path relative to the folder."""
    files = {}
    for path in sorted(Path(folder).rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and rel.split("/")[0] != "out":
            files[rel] = path.read_bytes()
    return files


def _header(record: dict, spec: RunSpec, image: str, namespace: str) -> str:
    name = job_name(record["id"], spec.name)
    lines = [
        f"Snapshot {record['id']} as a Kubernetes Job, exported by mlcontainer-magics.",
        f"  kubectl apply -f {FILE_NAME}",
        f"  kubectl logs -n {namespace} -f job/{name}",
        "The Secret holds the cell, its inputs and the runner (the export's mlc/ folder),",
        "mounted at /mlc. --out values stay in the pod; rerun with mlcontainer to get them.",
    ]
    lines += _image_and_secret_notes(spec, image)
    return "".join(f"# {line}\n" for line in lines)


def _map_header(record: dict, spec: RunSpec, image: str, namespace: str, count: int) -> str:
    assert spec.map is not None
    name = job_name(record["id"], spec.name)
    parallel = indexed.parallelism(count, spec.map.parallel)
    lines = [
        f"Snapshot {record['id']}, a map over {spec.map.name} ({count} items), as a Kubernetes "
        "Indexed Job, exported by mlcontainer-magics.",
        f"  kubectl apply -f {FILE_NAME}",
        f"  kubectl logs -n {namespace} -f -l batch.kubernetes.io/job-name={name} --prefix "
        f"--max-log-requests {max(parallel, 5)}",
        f"  kubectl get job -n {namespace} {name} -o jsonpath='{{.status.completedIndexes}}'",
        "The Secret holds the cell, every item, the shared inputs and the runner (the export's",
        f"mlc/ folder), mounted at /mlc. Each pod runs one item: {spec.map.name} is item",
        "MLC_INDEX (the pod's completion index) of mlc/manifest.json's map block. --out values",
        "stay in the pods; rerun with mlcontainer to gather them.",
        "backoffLimitPerIndex (retries of each item on its own) needs Kubernetes 1.29 or later;",
        f"on an older cluster write backoffLimit: {count * spec.map.retries} instead "
        "(retries shared by all items).",
    ]
    lines += _image_and_secret_notes(spec, image)
    return "".join(f"# {line}\n" for line in lines)


def _image_and_secret_notes(spec: RunSpec, image: str) -> list[str]:
    lines = []
    if "/" not in image or not _has_registry(image):
        lines.append(
            f"The image {image} is local to the machine that ran the cell: push it "
            "to a registry the cluster pulls from and change `image:` below."
        )
    secrets = secret_env_keys(spec)
    if secrets:
        lines.append(
            "Secret variables are never recorded: before applying, set "
            + ", ".join(f'data["env.{k}"]' for k in secrets)
            + " of the Secret (base64)."
        )
    return lines


def _has_registry(image: str) -> bool:
    first = image.split("/", 1)[0]
    return "." in first or ":" in first or first == "localhost"
