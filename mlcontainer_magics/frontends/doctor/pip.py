"""The pip part of the doctor's report: the host's index and CA settings, which of them builds
use, and why the others stay on the host. Read and judged by the Docker backend's pipconfig,
so the report says exactly what builds do."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Callable

from ...backends.docker.pipconfig import (
    KEYS,
    PYPI,
    BuildNetwork,
    build_network,
    container_view,
    effective_settings,
    host_uv,
    read_config_list,
    values,
)


def _entries(
    key: str, value: str, origin: str, is_file: Callable[[str], bool], is_dir: Callable[[str], bool]
) -> list[dict]:
    return [
        dict(
            zip(
                ("value", "origin", "container", "why"),
                (v, origin, *container_view(key, v, is_file, is_dir)),
            )
        )
        for v in values(key, value)
        if v
    ]


def build_uses(net: BuildNetwork) -> dict[str, list[str]]:
    """What a build with ``net`` uses, per pip setting (pip's default index when it has none)."""
    uses = {
        "index-url": [net.index_url or PYPI],
        "extra-index-url": list(net.extra_index_urls),
        "find-links": list(net.find_links),
        "no-index": ["true"] if net.no_index else [],
        "cert": [net.cert_path] if net.cert_path else [],
        "trusted-host": list(net.trusted_hosts),
    }
    return {k: v for k, v in uses.items() if v}


def pip_report_from(
    config_text: str | None,
    environ,
    error: str | None = None,
    is_file: Callable[[str], bool] = os.path.isfile,
    is_dir: Callable[[str], bool] = os.path.isdir,
) -> dict:
    """The pip part of the doctor report, from ``pip config list`` output and the environment."""
    found = effective_settings(config_text or "", environ)
    settings = {
        key: _entries(key, value, origin, is_file, is_dir) for key, (value, origin) in found.items()
    }
    index = settings.setdefault("index-url", [])
    if not any(e["container"] for e in index):  # builds then use pip's default
        why = "pip's default index" + ("; builds use it instead" if index else "")
        index.append({"value": PYPI, "origin": "default", "container": True, "why": why})
    settings = {k: settings[k] for k in KEYS if settings.get(k)}
    return {
        "ok": error is None,
        "error": error,
        "settings": settings,
        "container_usable": build_uses(build_network(found, is_file, is_dir)),
        "host_only": [
            f"{k} {e['value']}" for k, v in settings.items() for e in v if not e["container"]
        ],
    }


def pip_settings_report(python: str = sys.executable, environ=os.environ) -> dict:
    """Read-only: the host's pip index/cert settings and which of them a container can use,
    and the uv that builds lock and install with."""
    text, error = read_config_list(python, environ, timeout=60)
    return {**pip_report_from(text, environ, error), "uv": uv_report()}


def uv_report() -> dict:
    path = host_uv()
    if path is None:
        return {"ok": False, "path": None, "version": None}
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return {"ok": False, "path": path, "version": None}
    return {"ok": True, "path": path, "version": out[1] if len(out) > 1 else None}
