"""A snapshot as artifacts other tools run: a plain Docker build context that rebuilds the
environment offline and reruns the cell, and (``--k8s``) a Kubernetes Job manifest.

It draws on both backends (the Docker build's pure renderers, the Kubernetes object builders)
and asks the snapshot's backend only for what the contract declares (wheels, a saved image).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..config import KubernetesConfig
from ..core.backend import Backend
from ..core.formatting import format_size
from ..core.snapshots import spec_from_record
from ..errors import SpecError
from ..runner import runner_source
from .docker import build as render
from .kubernetes.export import write_job_manifest
from .kubernetes.objects import settings_from, with_secrets

# -- export -----------------------------------------------------------------------------------

EXPORT_README = """# Snapshot {id}{name}

A containerized notebook cell, exported by mlcontainer-magics. Rebuild and rerun it with Docker
alone:

    docker build -t snapshot-{id} .
    docker run --rm snapshot-{id}

- `Dockerfile` starts from `{base}` (image id `{base_id}` when recorded), installs the Debian
  packages and the exact pins of `requirements.lock` (with hashes) from `wheels/`, offline.
- `mlc/cell.py` is the cell's code; `mlc/in/` holds the values it received; `mlc/runner.py`
  runs it as a notebook would (standard library only).
- Recorded stdout: `expected-stdout.txt`.
{data}{secrets}"""

DATA_COPIED = """\
- Mounted inputs travel in `data/` (at the paths the cell read them); `DATA.md` lists
  their recorded digests.
"""
DATA_LISTED = """\
- Some mounted inputs were too large to copy (over {limit}): `DATA.md` lists them with
  their digests; mount them when you run it, e.g. `docker run --rm {mounts} snapshot-{id}`.
"""
SECRETS_NOTE = """\
- The cell used the secrets {names}, whose values are never recorded: pass them with
  `docker run -e NAME=...` (and mount a folder holding NAME as /run/secrets/NAME if it
  reads the file).
"""


def export(
    store,
    ref: str,
    dest,
    backend: Backend,
    *,
    tar: bool = False,
    k8s: bool = False,
    k8s_config: KubernetesConfig | None = None,
    data_limit: int = 100 * 2**20,
) -> Path:
    """Write a folder that rebuilds and reruns the snapshot with plain `docker build`/`run`;
    with ``k8s``, also the Job that reruns it on a cluster (placed as ``k8s_config`` says).
    Mounted inputs up to ``data_limit`` bytes in all are copied in; larger ones are listed."""
    record = store.get(ref)
    dest = Path(dest).expanduser()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        what = "is not empty" if dest.is_dir() else "is a file"
        raise SpecError(f"{dest} exists and {what}; export into a new folder.")
    spec = spec_from_record(record, environ={k: "" for k, _ in record["spec"].get("env", [])})
    folder = store.artifacts_dir(record["id"])
    staging = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        _write_run_folder(staging / "mlc", record, spec, folder)
        _write_build_context(staging, record, spec, backend, data_limit)
        if tar:
            backend.save_image(
                record.get("env_image_id") or spec.env_spec.base_image, staging / "image.tar"
            )
        if k8s:
            config = k8s_config or KubernetesConfig()
            write_job_manifest(
                record,
                with_secrets(spec, {}),
                staging,
                settings_from(config, config.k8s_namespace or "default"),
            )
        if dest.exists():
            dest.rmdir()
        staging.rename(dest)
    except BaseException as e:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(e, OSError):
            raise SpecError(
                f"Cannot write the export to {dest}: {e.strerror or e}. Choose a "
                "new folder in a place you may write to."
            ) from None
        raise
    return dest


def _write_run_folder(mlc: Path, record: dict, spec, kept: Path) -> None:
    """mlc/: the runner, the cell, the values it received and its manifest, as a run has them."""
    (mlc / "out").mkdir(parents=True)
    (mlc / "out" / ".keep").write_bytes(b"")
    (mlc / "runner.py").write_bytes(runner_source())
    (mlc / "cell.py").write_text(record["code"], encoding="utf-8")
    if (kept / "in").is_dir():
        shutil.copytree(kept / "in", mlc / "in")
    manifest = {
        "inputs": record.get("inputs") or {},
        "outputs": list(spec.outputs),
        "host": {"python": "", "numpy": False, "pyarrow": False},
    }
    (mlc / "manifest.json").write_text(json.dumps(manifest, indent=2))


def _write_build_context(
    staging: Path, record: dict, spec, backend: Backend, data_limit: int
) -> None:
    """The locked wheels, the mounted inputs, the Dockerfile and the README."""
    lock = record.get("lock") or []
    if lock:
        (staging / "requirements.lock").write_text(render.lock_txt(lock))
        wheels = backend.fetch_wheels(spec.env_spec.base_image, lock)
        (staging / "wheels").mkdir()
        for name, data in wheels.items():
            (staging / "wheels" / name).write_bytes(data)
    inputs = [
        m
        for m in record.get("mounts") or []
        if m.get("mode") == "ro" and str(m.get("source", "")).startswith("/")
    ]
    copied = sum(m.get("size") or 0 for m in inputs) <= data_limit
    if inputs:
        _write_data(staging, inputs, copied)
    (staging / "Dockerfile").write_text(
        render.dockerfile(
            spec.env_spec.base_image,
            spec.env_spec.apt,
            has_lock=bool(lock),
            wheels=bool(lock),
            data=bool(inputs) and copied,
        )
    )
    (staging / "expected-stdout.txt").write_text(record.get("stdout") or "")
    (staging / "snapshot.json").write_text(json.dumps(record, indent=2, sort_keys=True))
    data_note = ""
    if inputs:
        mounts = " ".join(f"-v {m['source']}:{m['target']}:ro" for m in inputs)
        data_note = (
            DATA_COPIED
            if copied
            else DATA_LISTED.format(limit=format_size(data_limit), id=record["id"], mounts=mounts)
        )
    (staging / "README.md").write_text(
        EXPORT_README.format(
            id=record["id"],
            name=f" ({record['name']})" if record.get("name") else "",
            base=spec.env_spec.base_image,
            base_id=(record.get("base_image_id") or "?")[:19],
            data=data_note,
            secrets=SECRETS_NOTE.format(names=", ".join(spec.secrets)) if spec.secrets else "",
        )
    )


def _write_data(staging: Path, inputs: list[dict], copy: bool) -> None:
    """DATA.md (each input, its digest, size and files) and, with ``copy``, the inputs
    themselves under data/ at their path in the container."""
    lines = [
        "# Mounted inputs",
        "",
        "| in the container | from | files | size | digest |",
        "| --- | --- | --- | --- | --- |",
    ]
    for m in inputs:
        lines.append(
            f"| {m['target']} | {m['source']} | {m.get('count')} | "
            f"{format_size(m.get('size'))} | `{m.get('digest')}` |"
        )
        if copy:
            source, target = Path(m["source"]), staging / "data" / m["target"].lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, target, symlinks=True)
            else:
                shutil.copy2(source, target)
    lines += ["", "Copied into `data/`." if copy else "Not copied: mount them when you run it."]
    (staging / "DATA.md").write_text("\n".join(lines) + "\n")
