"""`mlcontainer doctor`: get a working Docker engine and base image on this machine, and say what
the host's pip settings mean inside containers.

``engine`` finds, installs and starts dockerd; ``offline_base`` gets the base image (local,
pulled, or built offline with debootstrap); ``pip`` reports the host's pip settings as builds
use them. Decisions (what to run, what a setting means) are pure functions, tested without a
daemon; the functions that act on them stay thin. Every failure ends as an MlcError whose
message says exactly what to run next.
"""

from __future__ import annotations

import json
import sys

from ...config import MlcontainerSettings
from ...errors import MlcError
from .engine import (
    ENGINE_WAIT,
    EnginePlan,
    HostFacts,
    engine_info,
    ensure_engine,
    host_facts,
    obtain_engine,
    plan_engine,
)
from .host import Log, state_dir
from .offline_base import (
    OFFLINE_LABEL,
    build_offline_base,
    debootstrap_progress,
    ensure_base_image,
    mount_points_under,
    obtain_base_image,
    offline_buildable,
    offline_origin,
    render_offline_dockerfile,
)
from .pip import pip_report_from, pip_settings_report

__all__ = [
    "ENGINE_WAIT",
    "OFFLINE_LABEL",
    "EnginePlan",
    "HostFacts",
    "build_offline_base",
    "cmd_doctor",
    "debootstrap_progress",
    "default_base_image",
    "engine_info",
    "ensure_base_image",
    "ensure_engine",
    "format_report",
    "host_facts",
    "mount_points_under",
    "offline_buildable",
    "pip_report_from",
    "pip_settings_report",
    "plan_engine",
    "render_offline_dockerfile",
    "run_doctor",
    "state_dir",
]


def default_base_image(version_info: tuple = tuple(sys.version_info)) -> str:
    """The official slim image matching the running interpreter, e.g. ``python:3.11-slim``."""
    return f"python:{version_info[0]}.{version_info[1]}-slim"


def _tick(ok: bool | None) -> str:
    # Fall back to ASCII where the terminal cannot print the marks.
    marks = {True: "✔", False: "✘", None: "!"}
    enc = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        "✔✘".encode(enc)
    except (UnicodeEncodeError, LookupError):
        marks = {True: "OK", False: "FAIL", None: "WARN"}
    return marks[ok]


def _engine_line(eng: dict) -> str:
    if eng.get("ok"):
        return f"{_tick(True)} engine: Docker {eng['version']} at {eng['address']}"
    return f"{_tick(False)} engine: {eng.get('error')}"


def _base_line(base: dict) -> str:
    if base.get("ok"):
        how = {"local": "present", "pulled": "pulled", "built": "built offline"}[base["source"]]
        what = f", offline build from {base['offline_from']}" if base.get("offline") else ""
        return f"{_tick(True)} base image {base['image']}: {base['id'][:19]} ({how}{what})"
    if base.get("skipped"):
        return f"{_tick(False)} base image {base['image']}: not checked (no engine)"
    return f"{_tick(False)} {base.get('error')}"


def format_report(report: dict) -> list[str]:
    """Human-readable lines for a ``run_doctor`` report."""
    lines = [_engine_line(report["engine"]), _base_line(report["base_image"])]
    pip = report["pip"]
    if not pip.get("ok"):
        lines.append(f"{_tick(None)} pip: could not read pip config: {pip.get('error')}")
    for key, entries in pip.get("settings", {}).items():
        for e in entries:
            lines.append(
                f"{_tick(True if e['container'] else None)} pip {key}: {e['value']} "
                f"({e['origin']}; {e['why']})"
            )
    uv = pip.get("uv")
    if uv is not None:
        lines.append(
            f"{_tick(True)} uv {uv['version']} at {uv['path']}: builds lock and install with it"
            if uv["ok"]
            else f"{_tick(None)} uv: none usable on this machine; builds use pip, slower "
            "(pip install uv)"
        )
    return lines + _standby_lines(report.get("standby") or {"skipped": True})


def _base_image_report(client, image: str, fix: bool, log: Log) -> dict:
    if client is None:
        return {"ok": False, "image": image, "skipped": True}
    try:
        image_id, source = obtain_base_image(client, image, fix, log)
    except MlcError as e:
        return {"ok": False, "image": image, "error": str(e)}
    offline = offline_origin(client, image_id)
    return {
        "ok": True,
        "image": image,
        "id": image_id,
        "source": source,
        "offline": bool(offline),
        "offline_from": offline,
    }


def _standby_report(client, namespace: str) -> dict:
    if client is None:
        return {"ok": None, "namespace": namespace, "skipped": True}
    from ...backends.docker.backend import list_standbys

    try:
        return {"ok": True, "namespace": namespace, "containers": list_standbys(client, namespace)}
    except MlcError as e:
        return {"ok": None, "namespace": namespace, "error": str(e)}


def _standby_lines(sb: dict) -> list[str]:
    if sb.get("skipped"):
        return []
    if "error" in sb:
        return [f"{_tick(None)} standby containers: {sb['error']}"]
    items = sb.get("containers") or []
    if not items:
        return [f"{_tick(True)} standby containers ({sb['namespace']}): none"]
    lines = [
        f"{_tick(True)} standby containers ({sb['namespace']}): {len(items)}, each started "
        "ahead for the next cell of a kernel (removed when idle, at kernel exit and by "
        "`mlcontainer prune`)"
    ]
    for c in items:
        kernel = f"kernel {c['owner'] or '?'}" + ("" if c["owner_alive"] else " (gone)")
        use = f"running {c['run']}" if c.get("run") else "waiting"
        lines.append(f"    {c['name']}: {c['status']}, {use}, {kernel}, image {c['image'][:19]}")
    return lines


def run_doctor(
    fix: bool, base_image: str | None, log: Log = print, namespace: str | None = None
) -> dict:
    """Check (and with ``fix`` repair) engine, base image and pip settings, and list the
    namespace's standby containers; return a report."""
    report: dict = {}
    client = None
    try:
        client, actions = obtain_engine(fix, log)
        report["engine"] = dict(engine_info(client), actions=actions)
    except MlcError as e:
        report["engine"] = {"ok": False, "error": str(e)}
    report["base_image"] = _base_image_report(client, base_image or default_base_image(), fix, log)
    report["pip"] = pip_settings_report()
    report["standby"] = _standby_report(client, namespace or MlcontainerSettings().namespace)
    report["ok"] = bool(report["engine"]["ok"] and report["base_image"]["ok"])
    return report


def cmd_doctor(args) -> int:
    """``mlcontainer doctor [--fix] [--base IMAGE] [--json]``; 0 if all is well, else 1."""
    as_json = bool(getattr(args, "json", False))

    def log(msg: str) -> None:
        # Progress goes to stderr under --json so that stdout stays one JSON document.
        print(msg, file=sys.stderr if as_json else sys.stdout, flush=True)

    report = run_doctor(bool(getattr(args, "fix", False)), getattr(args, "base", None), log)
    if as_json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print("\n".join(format_report(report)))
    return 0 if report["ok"] else 1
