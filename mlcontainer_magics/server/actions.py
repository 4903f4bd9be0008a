"""Snapshot actions behind the REST API: the core's verbs, with what a shared server needs.

Exports go only into `<server root>/mlcontainer-exports/`, under a name the server chooses, so no
request can write anywhere else. Reruns go to the backend (and namespace) the snapshot ran on,
unless the request names another backend.
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
    """The rerun action: ``{"verify": bool, "backend": "docker" | "kubernetes"}``."""

    def rerun(store, ref: str, options: dict) -> dict:
        from ..core import snapshots

        record = store.get(ref)
        override = options.get("backend")
        if override is not None and override not in BACKENDS:
            raise SpecError(f"'backend' must be one of {', '.join(BACKENDS)}.")
        backend = backends.for_record(record, override=override)
        verify = bool(options.get("verify"))
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
            "status": outcome.result.reason,
            "verified": (not problems) if verify else None,
            "problems": problems,
        }

    return rerun


def export_under(root_dir, backends: Backends) -> Action:
    """The export action for a server whose files live in ``root_dir``."""

    def export(store, ref: str, options: dict) -> dict:
        from ..backends.export import export as export_snapshot

        if not root_dir:
            raise SpecError("This server has no root directory to export into.")
        record = store.get(ref)
        name = f"{record.get('name') or 'snapshot'}-{record['id']}-{time.strftime('%Y%m%d-%H%M%S')}"
        dest = Path(root_dir) / EXPORTS / name
        dest.parent.mkdir(parents=True, exist_ok=True)
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
