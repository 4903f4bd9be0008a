"""Snapshot actions behind the REST API: the core's verbs, with what a shared server needs.

Exports go only into `<server root>/mlcontainer-exports/`, under a name the server chooses, so no
request can write anywhere else. Reruns go to the backend (and namespace) the snapshot ran on,
unless the request names another backend. With ``{"pipeline": true}`` both act on every step that
led to the snapshot (core/pipelines.py, backends/export.py's export_pipeline).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from ..backends import BACKENDS, Backends
from ..config import KubernetesConfig
from ..errors import SpecError

EXPORTS = "mlcontainer-exports"
Action = Callable[..., dict]


def rerun_on(backends: Backends) -> Action:
    """The rerun action: ``{"verify": bool, "backend": "docker" | "kubernetes", "pipeline":
    bool}``."""

    def rerun(store, ref: str, options: dict) -> dict:
        from ..core import snapshots

        record = store.get(ref)
        override = options.get("backend")
        if override is not None and override not in BACKENDS:
            raise SpecError(f"'backend' must be one of {', '.join(BACKENDS)}.")
        verify = bool(options.get("verify"))
        if options.get("pipeline"):
            return _rerun_pipeline(store, record, backends, override, verify)
        backend = backends.for_record(record, override=override)
        outcome, problems = snapshots.rerun(
            store,
            record["id"],
            backend,
            verify=verify,
            secrets_file=backends.settings.secrets_file,
        )
        return {
            "id": outcome.run_id,
            "rerun_of": record["id"],
            "backend": backend.name,
            "status": outcome.reason,
            "verified": (not problems) if verify else None,
            "problems": problems,
        }

    return rerun


def _rerun_pipeline(store, record: dict, backends: Backends, override, verify: bool) -> dict:
    """Every step that led to ``record``, re-run in order: the last new run as a rerun's
    answer, and each step's under ``pipeline``."""
    from ..core import pipelines  # on first use, as the other actions import theirs

    result = pipelines.rerun_pipeline(
        store,
        record["id"],
        lambda rec: backends.for_record(rec, override=override),
        verify=verify,
        secrets_file=backends.settings.secrets_file,
    )
    steps: list[dict] = [
        {
            "rerun_of": old_id,
            "id": outcome.run_id,
            "status": outcome.reason,
            "problems": list(problems),
        }
        for old_id, outcome, problems in result.steps
    ]
    last = steps[-1] if steps else {"id": None, "status": None, "problems": []}
    return {
        "id": last["id"],
        "rerun_of": record["id"],
        "status": last["status"],
        "verified": bool(result.ok) if verify else None,
        "problems": [p for step in steps for p in step["problems"]],
        "pipeline": {"steps": steps, "first_difference": result.first_difference},
    }


def export_under(root_dir, backends: Backends) -> Action:
    """The export action for a server whose files live in ``root_dir``."""

    def export(store, ref: str, options: dict) -> dict:
        from ..backends.export import export as export_snapshot

        if not root_dir:
            raise SpecError("This server has no root directory to export into.")
        record = store.get(ref)
        pipeline = bool(options.get("pipeline"))
        kind = "-pipeline" if pipeline else ""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = f"{record.get('name') or 'snapshot'}{kind}-{record['id']}-{stamp}"
        dest = Path(root_dir) / EXPORTS / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if pipeline:
            from ..backends.pipeline_export import export_pipeline

            export_pipeline(
                store,
                record["id"],
                dest,
                backends.for_record(record),
                k8s=bool(options.get("k8s")),
                k8s_config=KubernetesConfig(parent=backends.settings),
                data_limit=backends.settings.export_data_limit,
            )
            return {"path": f"{EXPORTS}/{name}", "files": sorted(p.name for p in dest.iterdir())}
        export_snapshot(
            store,
            record["id"],
            dest,
            backends.for_record(record),
            tar=bool(options.get("tar")),
            k8s=bool(options.get("k8s")),
            k8s_config=KubernetesConfig(parent=backends.settings),
            data_limit=backends.settings.export_data_limit,
        )
        return {"path": f"{EXPORTS}/{name}", "files": sorted(p.name for p in dest.iterdir())}

    return export
