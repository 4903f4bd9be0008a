"""A run's mounted data as its snapshot keeps it: what the cell read (a digest per mount and one
per file) and what it wrote in writable mounts. Rerun --verify and diff compare these.

The snapshot record carries one line per mount (``mounts``) and the files the cell wrote
(``written``); the per-file manifests of the inputs, which can be long, go to the snapshot's
folder (``mounts.json``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .datatree import DigestCache, changed_files, digest_tree, snapshot_files, written_since
from .spec import MountSpec, RunSpec

MANIFEST = "mounts.json"
__all__ = [
    "DigestCache",
    "digest_inputs",
    "before_writes",
    "written",
    "keep_manifests",
    "kept_manifests",
    "input_changes",
    "written_changes",
    "diff_lines",
    "is_local",
]


def digest_inputs(spec: RunSpec, cache: DigestCache | None) -> tuple[list[dict], dict, float]:
    """(record lines, {target: files}, seconds) of every mount as the cell will see it."""
    started = time.perf_counter()
    lines: list[dict] = []
    manifests: dict = {}
    for mount in spec.mounts:
        if not is_local(mount):  # the backend's own storage: nothing here to digest
            lines.append(
                {
                    "source": mount.source,
                    "target": mount.target,
                    "mode": mount.mode,
                    "digest": None,
                    "count": None,
                    "size": None,
                }
            )
            continue
        tree = digest_tree(Path(mount.source), cache)
        lines.append(
            {
                "source": mount.source,
                "target": mount.target,
                "mode": mount.mode,
                "digest": tree.digest,
                "count": tree.count,
                "size": tree.size,
            }
        )
        manifests[mount.target] = tree.files
    return lines, manifests, round(time.perf_counter() - started, 3)


def before_writes(spec: RunSpec) -> dict[str, dict]:
    """What the writable mounts hold before the cell runs (names, sizes, times)."""
    return {m.target: snapshot_files(Path(m.source)) for m in _writable(spec)}


def written(spec: RunSpec, before: dict[str, dict], cache: DigestCache | None) -> dict:
    """{target: {path: [size, digest]}} of the files the cell created or changed."""
    out = {}
    for mount in _writable(spec):
        source = Path(mount.source)
        paths = written_since(before.get(mount.target, {}), snapshot_files(source))
        if paths:  # links the cell made are recorded as links, never followed
            files = digest_tree(source, cache, only=paths).files
            out[mount.target] = {rel: [size, digest] for rel, (size, digest) in files.items()}
    return out


def keep_manifests(folder: Path, manifests: dict) -> None:
    if manifests:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MANIFEST).write_text(json.dumps(manifests, sort_keys=True))


def kept_manifests(folder: Path) -> dict:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}


def input_changes(record: dict, manifests: dict, cache: DigestCache | None) -> list[str]:
    """How the read-only mounts of a snapshot differ now from when it ran, file by file."""
    problems = []
    for line in record.get("mounts") or []:
        if line.get("mode") != "ro" or not line.get("digest"):
            continue  # writable: the cell's output, it changes by design; or not local
        source = Path(line["source"])
        if not source.exists():
            problems.append(f"input {line['target']}: {source} is gone")
            continue
        tree = digest_tree(source, cache)
        if tree.digest == line.get("digest"):
            continue
        old = manifests.get(line["target"])
        detail = changed_files(_pairs(old), tree.files) if old else []
        problems.append(
            f"input {line['target']} ({source}) changed: "
            + ("; ".join(detail[:10]) or "its digest differs")
        )
    return problems


def written_changes(old: dict, new: dict) -> list[str]:
    """Files written in a writable mount that differ between two snapshots."""
    problems = []
    for target in sorted(set(old) | set(new)):
        a, b = _pairs(old.get(target, {})), _pairs(new.get(target, {}))
        problems += [f"written {target}: {line}" for line in changed_files(a, b)]
    return problems


def diff_lines(a: dict, b: dict) -> list[str]:
    """The data sections of `diff`: mounts whose content changed, and written files."""
    out = []
    ma = {m["target"]: m for m in a.get("mounts") or []}
    mb = {m["target"]: m for m in b.get("mounts") or []}
    for target in sorted(set(ma) | set(mb)):
        da, db = ma.get(target, {}).get("digest"), mb.get(target, {}).get("digest")
        if da != db:
            out.append(f"mount {target}: {da} -> {db}")
    out += written_changes(a.get("written") or {}, b.get("written") or {})
    return out


def is_local(mount: MountSpec) -> bool:
    """A path of this machine, as opposed to a backend's own volume (``pvc:NAME``)."""
    return mount.source.startswith("/")


def _writable(spec: RunSpec) -> list[MountSpec]:
    return [m for m in spec.mounts if m.writable and is_local(m)]


def _pairs(files: dict) -> dict:
    """Manifests read back from JSON hold lists; datatree compares tuples."""
    return {k: tuple(v) for k, v in (files or {}).items()}
