"""`mlcontainer export ID DIR --k8s`: the snapshot's run as Kubernetes objects, in ``job.yaml``.

``kubectl apply -f job.yaml`` runs the exported cell as a Job, as the Kubernetes backend would:
the Secret carries the export's ``mlc/`` folder (runner, cell, manifest, values in) and the
Job mounts it at ``/mlc``. Pure apart from reading that folder and writing the one file.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ...core.spec import RunSpec
from ...errors import SpecError
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


def write_job_manifest(record: dict, spec: RunSpec, folder, settings: K8sSettings) -> Path:
    """Write ``folder/job.yaml``: the Secret, the Job and (``--network none``) the
    NetworkPolicy of snapshot ``record``, whose export already wrote ``folder/mlc``.

    The image is the environment image of the run (for a Kubernetes run, the reference it
    pushed, by digest).
    """
    folder = Path(folder)
    if not (folder / "mlc").is_dir():
        raise SpecError(
            f"{folder / 'mlc'} is missing: write the export's mlc/ folder before job.yaml."
        )
    image = record.get("env_image") or spec.env_spec.base_image
    files = payload_files(folder / "mlc")
    # Mounted inputs the export carries (data/, at their container paths) travel as files.
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
    objects = run_manifests(
        spec,
        image=image,
        snapshot_id=record["id"],
        namespace=settings.namespace,
        settings=settings,
        files=files,
    )
    namespace = settings.namespace
    path = folder / FILE_NAME
    path.write_text(_header(record, spec, image, namespace) + to_yaml(*objects))
    return path


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
    return "".join(f"# {line}\n" for line in lines)


def _has_registry(image: str) -> bool:
    first = image.split("/", 1)[0]
    return "." in first or ":" in first or first == "localhost"
