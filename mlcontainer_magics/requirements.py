"""Requirements: locks from pip's installation report. Pure functions."""
from __future__ import annotations

import json

from packaging.utils import canonicalize_name

from .spec import digest


def lock_from_report(report: dict | str | bytes) -> list[dict]:
    """Exact pins from `pip install --report`: [{name, version, hashes}], sorted by name."""
    if isinstance(report, (str, bytes)):
        report = json.loads(report)
    lock = []
    for item in report.get("install", []):
        meta = item.get("metadata", {})
        archive = item.get("download_info", {}).get("archive_info", {})
        hashes = archive.get("hashes") or {}
        if not hashes and archive.get("hash"):
            algo, _, value = archive["hash"].partition("=")
            hashes = {algo: value}
        lock.append({
            "name": canonicalize_name(meta["name"]),
            "version": meta["version"],
            "hashes": [f"{algo}:{value}" for algo, value in sorted(hashes.items())],
        })
    return sorted(lock, key=lambda e: e["name"])


def lock_key(base_image_id: str, apt, lock) -> str:
    """What an environment image is: its base, its Debian packages and its exact pins."""
    return digest({"base": base_image_id, "apt": sorted(apt),
                   "lock": sorted((e["name"], e["version"]) for e in lock)})
