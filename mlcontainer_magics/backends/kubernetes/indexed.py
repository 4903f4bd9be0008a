"""A map (``--map NAME``) on Kubernetes: one Indexed Job, made by pure functions as plain dicts.

Standard library only, like :mod:`.objects`, which it builds on. The map's run folder (runner,
cell, a manifest whose ``map`` block lists the items, every item's file under ``in/NAME/`` and
the shared ``--in`` values) travels in the Job's one Secret, exactly as a single run's folder
does; every pod mounts all of it and the runner binds NAME to item ``MLC_INDEX``.

The Job (``completionMode: Indexed``, ``completions: N``, ``parallelism: P``) makes one pod per
index, at most P at once, and gives each pod its index in the annotation
``batch.kubernetes.io/job-completion-index``; the container gets ``MLC_INDEX`` from it (a
fieldRef). A failed index is retried on its own up to ``backoffLimitPerIndex`` times, where the
cluster has that field (beta in 1.29, on by default; GA in 1.33); the other indexes run on
whatever one of them does, and the Job fails with reason FailedIndexes once all have ended.
An older cluster drops the field silently, so there the Job gets a ``backoffLimit`` shared by
all items instead (:func:`per_index_backoff` decides, from the server's version).

``--timeout`` bounds each item, not the map: it is the pods' ``activeDeadlineSeconds``
(counted from the pod's start, image pull included), not the Job's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence

from ...core.spec import RunSpec
from ...errors import SpecError
from . import objects

# Set by the Job controller on every pod of an Indexed Job (a label too, since 1.28).
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
# How many pods of the pod's index failed before it (with backoffLimitPerIndex).
INDEX_FAILURES = "batch.kubernetes.io/job-index-failure-count"
INDEX_ENV = "MLC_INDEX"  # what the runner reads (runner.INDEX_ENV)
ANNOTATION_MAP = "mlcontainer.org/map"  # the notebook variable mapped over
# backoffLimitPerIndex: alpha (off) in 1.28, beta and on by default from 1.29, GA in 1.33.
PER_INDEX_SINCE = (1, 29)
# The API server refuses an Indexed Job of more completions (or parallelism) than this.
MAX_COMPLETIONS = 100_000

MAP_TOO_LARGE = (
    "A map's items travel in the Job's Secret, with the shared --in values. Map over smaller "
    "items (file names or ids, say, the cell loading the data from storage the cluster can "
    "reach), or run the map with the Docker backend."
)

_VERSION = re.compile(r"^v?(\d+)\.(\d+)")


def server_version(info: Mapping | None) -> tuple[int, int] | None:
    """(major, minor) of the API server's ``/version`` answer; None when it does not say.
    Managed clusters write the minor as "29+" (GKE, EKS): the digits count."""
    if not info:
        return None
    try:
        minor = re.match(r"\d+", str(info["minor"]))
        return int(info["major"]), int(minor.group())  # type: ignore[union-attr]
    except (KeyError, TypeError, ValueError, AttributeError):
        pass
    m = _VERSION.match(str(info.get("gitVersion") or ""))
    return (int(m.group(1)), int(m.group(2))) if m else None


def per_index_backoff(version: tuple[int, int] | None) -> bool:
    """Whether a cluster of ``version`` honours ``backoffLimitPerIndex`` (unknown: no, since
    an API server without it drops the field and the Job would fall back to 6 retries in
    all)."""
    return version is not None and tuple(version) >= PER_INDEX_SINCE


def shared_backoff_note(version: tuple[int, int] | None, count: int, retries: int) -> str:
    """What a map loses on a cluster without per-index retries, in the user's words."""
    where = f"Kubernetes {version[0]}.{version[1]}" if version else "This cluster (version unknown)"
    return (
        f"{where} has no per-item retries (backoffLimitPerIndex, Kubernetes 1.29+): the map's "
        f"Job shares {count * retries} retries among its {count} items (--retries {retries} "
        "each), and once an item fails beyond them the Job ends every item still running."
    )


def parallelism(count: int, parallel: int | None) -> int:
    """Pods at once: --parallel, at most one per item; without it every item at once (the
    cluster's scheduler keeps waiting whatever the nodes have no room for yet)."""
    return count if parallel is None else max(1, min(parallel, count))


def _check(count, parallel, retries) -> None:
    for what, value, least in (("items", count, 1), ("--parallel", parallel, 1)):
        if value is None and what != "items":
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise SpecError(f"A map needs {what} of {least} or more, not {value!r}.")
    if count > MAX_COMPLETIONS:
        raise SpecError(
            f"A map on Kubernetes runs at most {MAX_COMPLETIONS} items (an Indexed Job's "
            f"completions), not {count}: map over batches of items instead."
        )
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise SpecError(f"--retries must be a whole number of 0 or more, not {retries!r}.")


def map_job_manifest(
    spec: RunSpec,
    *,
    image: str,
    snapshot_id: str,
    namespace: str,
    settings: objects.K8sSettings,
    files,
    count: int,
    parallel: int | None = None,
    retries: int = 0,
    per_index: bool = True,
) -> dict:
    """The ``batch/v1`` Indexed Job that runs ``spec`` once per item, ``count`` items, at most
    ``parallel`` pods at once, each item tried up to ``1 + retries`` times (``per_index``:
    on its own; else from a budget all items share, for clusters older than 1.29).

    ``files`` are the payload's paths, as for :func:`objects.job_manifest`.
    """
    _check(count, parallel, retries)
    job = objects.job_manifest(
        spec,
        image=image,
        snapshot_id=snapshot_id,
        namespace=namespace,
        settings=settings,
        files=files,
    )
    job_spec = job["spec"]
    template = job_spec["template"]
    pod_spec = template["spec"]
    deadline = job_spec.pop("activeDeadlineSeconds", None)
    if deadline is not None:  # --timeout is each item's
        pod_spec["activeDeadlineSeconds"] = deadline
    job_spec.pop("backoffLimit", None)
    indexed = {
        "completionMode": "Indexed",
        "completions": count,
        "parallelism": parallelism(count, parallel),
    }
    if per_index:
        # backoffLimit left out: with a per-index limit it defaults to unlimited, so that a
        # failing item never ends the others.
        indexed["backoffLimitPerIndex"] = retries
    else:
        indexed["backoffLimit"] = count * retries
    # Before the template, where a reader of the YAML looks first.
    job["spec"] = {**indexed, **job_spec}
    name = getattr(getattr(spec, "map", None), "name", None)
    if name:
        for meta in (job["metadata"], template["metadata"]):
            meta["annotations"][ANNOTATION_MAP] = name
    container = pod_spec["containers"][0]
    container["env"] = [v for v in container["env"] if v["name"] != INDEX_ENV] + [
        {
            "name": INDEX_ENV,
            "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX}']"}},
        }
    ]
    return job


def map_manifests(
    spec: RunSpec,
    *,
    image: str,
    snapshot_id: str,
    namespace: str,
    settings: objects.K8sSettings,
    files: Mapping[str, bytes | str],
    count: int,
    parallel: int | None = None,
    retries: int = 0,
    per_index: bool = True,
) -> list[dict]:
    """Everything a map needs, in the order to create it (as :func:`objects.run_manifests`):
    the Secret with the map's folder (every item and the shared inputs), the Indexed Job, and
    for ``--network none`` a NetworkPolicy covering all its pods. Raises SpecError, before
    anything is sent, when the folder is too large for a Secret."""
    out = [
        objects.secret_manifest(
            spec, snapshot_id=snapshot_id, namespace=namespace, files=files, advice=MAP_TOO_LARGE
        ),
        map_job_manifest(
            spec,
            image=image,
            snapshot_id=snapshot_id,
            namespace=namespace,
            settings=settings,
            files=list(files),
            count=count,
            parallel=parallel,
            retries=retries,
            per_index=per_index,
        ),
    ]
    if spec.network == "none":
        out.append(
            objects.network_policy_manifest(spec, snapshot_id=snapshot_id, namespace=namespace)
        )
    return out


# Bytes of an item's line in the manifest's map block, at least ({"file": "in/x/00000.json",
# "format": "json", "size": 1, "index": 0, "digest": "xxh3-128:" + 32 hex digits}).
ITEM_ENTRY_BYTES = 100


def check_map_size(
    spec: RunSpec, item_sizes: Sequence[int], shared: int = 0, *, runner: int = 0
) -> None:
    """Refuse (SpecError) a map whose Secret would be over Kubernetes' 1 MiB for certain, from
    what is known before anything is built: ``item_sizes`` (each item's file, at least),
    ``shared`` (the --in values every item shares), the cell and ``runner`` (runner.py's
    bytes). The Secret's exact size is checked again when it is made (secret_manifest)."""
    items = sum(item_sizes)
    total = (
        items
        + shared
        + len(spec.code.encode("utf-8"))
        + runner
        + ITEM_ENTRY_BYTES * len(item_sizes)
    )
    if total <= objects.SECRET_MAX_BYTES:
        return
    largest = max(item_sizes, default=0)
    parts = [f"{len(item_sizes)} items of {objects._size(items)}"]
    if len(item_sizes) > 1:
        parts[0] += f", the largest {objects._size(largest)}"
    if shared:
        parts.append(f"the shared --in values {objects._size(shared)}")
    raise SpecError(
        f"The map's items, code and inputs add up to at least {objects._size(total)} "
        f"({'; '.join(parts)}), over the 1 MiB Kubernetes allows in the Job's Secret; nothing "
        f"was built or pushed. {MAP_TOO_LARGE}"
    )


def map_payload(files: Mapping[str, bytes]) -> dict[str, bytes]:
    """The map's folder as its Secret carries it: only the values its manifest names (the
    shared --in values and every item), not the mapped value whole, which the folder holds
    too (the snapshot digests and keeps it) but no pod reads."""
    try:
        manifest = json.loads(files["manifest.json"])
    except (KeyError, ValueError):
        return dict(files)
    named = {entry.get("file") for entry in (manifest.get("inputs") or {}).values()}
    named |= {entry.get("file") for entry in (manifest.get("map") or {}).get("items") or []}
    return {
        path: data for path, data in files.items() if not path.startswith("in/") or path in named
    }


# -- reading an Indexed Job's status --------------------------------------------------------------


def parse_indexes(text: str | None) -> set[int]:
    """The indexes of ``status.completedIndexes`` / ``failedIndexes``: "1,3-5,7" -> {1,3,4,5,7}."""
    out: set[int] = set()
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        first, _, last = part.partition("-")
        out.update(range(int(first), int(last or first) + 1))
    return out


def pod_index(pod: Mapping) -> int | None:
    """The completion index of a pod of an Indexed Job (its annotation; None if it has none)."""
    meta = pod.get("metadata") or {}
    for where in (meta.get("annotations") or {}, meta.get("labels") or {}):
        value = where.get(COMPLETION_INDEX)
        if value is not None and str(value).isdigit():
            return int(value)
    return None
