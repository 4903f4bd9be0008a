"""Snapshot actions behind the REST API: the core's verbs, with what a shared server needs.

Exports go only into `<server root>/mlcontainer-exports/`, under a name the server chooses, so no
request can write anywhere else. Reruns use the namespace the snapshot was made in.
"""
from __future__ import annotations

import time
from pathlib import Path

from ..errors import SpecError

EXPORTS = "mlcontainer-exports"


def _backend(record: dict):
    from ..backends.docker.backend import DockerBackend
    from ..frontends.magics import ContainerizeMagics

    namespace = record.get("namespace") or ContainerizeMagics(shell=None).namespace
    return DockerBackend(namespace=namespace)


def rerun(store, ref: str, options: dict) -> dict:
    from ..core import snapshots

    record = store.get(ref)
    verify = bool(options.get("verify"))
    outcome, problems = snapshots.rerun(store, record["id"], _backend(record), verify=verify)
    return {"id": outcome.run_id, "rerun_of": record["id"], "status": outcome.result.reason,
            "verified": (not problems) if verify else None, "problems": problems}


def export_under(root_dir) -> callable:
    """The export action for a server whose files live in ``root_dir``."""

    def export(store, ref: str, options: dict) -> dict:
        from ..core import snapshots

        if not root_dir:
            raise SpecError("This server has no root directory to export into.")
        record = store.get(ref)
        name = f"{record.get('name') or 'snapshot'}-{record['id']}-{time.strftime('%Y%m%d-%H%M%S')}"
        dest = Path(root_dir) / EXPORTS / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        snapshots.export(store, record["id"], dest, _backend(record),
                         tar=bool(options.get("tar")), k8s=bool(options.get("k8s")))
        return {"path": f"{EXPORTS}/{name}", "files": sorted(p.name for p in dest.iterdir())}

    return export
