"""Requirements: locks from pip's installation report. Pure functions."""

from __future__ import annotations

import json

from packaging.utils import canonicalize_name

from .spec import digest


def lock_from_report(report: dict | str | bytes) -> list[dict]:
    """Exact pins from `pip install --report`: [{name, version, hashes}], sorted by name."""
    data: dict = json.loads(report) if isinstance(report, (str, bytes)) else report
    lock = []
    for item in data.get("install", []):
        meta = item.get("metadata", {})
        archive = item.get("download_info", {}).get("archive_info", {})
        hashes = archive.get("hashes") or {}
        if not hashes and archive.get("hash"):
            algo, _, value = archive["hash"].partition("=")
            hashes = {algo: value}
        lock.append(
            {
                "name": canonicalize_name(meta["name"]),
                "version": meta["version"],
                "hashes": [f"{algo}:{value}" for algo, value in sorted(hashes.items())],
            }
        )
    return sorted(lock, key=lambda e: e["name"])


def lock_from_compiled(text: str) -> tuple[list[dict], dict[str, str]]:
    """Exact pins from a requirements file with hashes (``uv pip compile --generate-hashes
    --emit-index-annotation``): ([{name, version, hashes}] sorted by name, {name: where it came
    from}). Every file of a version is listed, as pip-tools does: the install takes the one that
    fits its platform, and the hash check holds for whichever."""
    lock: dict[str, dict] = {}
    sources: dict[str, str] = {}
    current = None
    for raw in text.replace("\\\n", " ").splitlines():
        line = raw.strip()
        if line.startswith("# from "):
            if current:
                sources[current] = line[len("# from ") :].strip()
            continue
        if not line or line.startswith(("#", "-")):
            continue
        spec, *options = line.split()
        name, sep, version = spec.partition("==")
        if not sep:
            raise ValueError(f"not an exact pin in the resolved lock: {spec!r}")
        current = canonicalize_name(name.split("[")[0])
        hashes = [o[len("--hash=") :] for o in options if o.startswith("--hash=")]
        lock[current] = {"name": current, "version": version.split(";")[0], "hashes": hashes}
    return sorted(lock.values(), key=lambda e: e["name"]), sources


def lock_key(base_image_id: str, apt, lock) -> str:
    """What an environment image is: its base, its Debian packages and its exact pins."""
    return digest(
        {
            "base": base_image_id,
            "apt": sorted(apt),
            "lock": sorted((e["name"], e["version"]) for e in lock),
        }
    )


def extend_lock(parent: list[dict], installed: list[dict]) -> list[dict]:
    """The lock of an environment built on ``parent``: its pins, with what pip installed on top
    (new packages, and any it upgraded) taking their place."""
    by_name = {e["name"]: e for e in parent}
    by_name.update({e["name"]: e for e in installed})
    return sorted(by_name.values(), key=lambda e: e["name"])


def closest_parent(candidates, requirements, apt):
    """Of ``candidates`` (key, requirements, apt) on one base, the environment this one only adds
    to: the same Debian packages and a strict subset of its requirements, the largest such.
    Building on it installs just the difference; None when there is none."""
    wanted, apt = set(requirements), sorted(apt)
    best, best_n = None, 0
    for key, reqs, cand_apt in candidates:
        reqs = set(reqs)
        if sorted(cand_apt) == apt and reqs and reqs < wanted and len(reqs) > best_n:
            best, best_n = key, len(reqs)
    return best


def closest_locked_parent(candidates, lock, apt):
    """Of ``candidates`` (key, lock, apt) on one base with the same Debian packages, the
    environment that ``lock`` shares the most exact pins with, to install only the difference
    on (and remove what it has that the lock does not). None when none shares at least as many
    pins as it would have removed."""
    apt = sorted(apt)
    best, best_score = None, (0, 0)
    for key, cand_lock, cand_apt in candidates:
        if sorted(cand_apt) != apt:
            continue
        score = locked_parent_score(cand_lock, lock)
        if score is not None and score > best_score:
            best, best_score = key, score
    return best


def locked_parent_score(cand_lock, lock) -> tuple[int, int] | None:
    """How well an environment locked ``cand_lock`` suits building ``lock`` on it: (pins
    shared, -names it has that ``lock`` lacks), the higher the better; None when it does not
    (it shares no pin, or would have more removed than it shares)."""
    wanted = {(e["name"], e["version"]) for e in lock}
    have = {(e["name"], e["version"]) for e in cand_lock}
    shared = len(have & wanted)
    extra = len({n for n, _ in have} - {n for n, _ in wanted})
    return (shared, -extra) if shared and extra <= shared else None


def guess_locked_parent(candidates, requirements, apt):
    """Of ``candidates`` (key, lock, apt), the one closest_locked_parent will most likely pick
    once ``requirements`` are resolved, guessed before they are: the same Debian packages, and
    the most of the requirements' exact pins (``name==version``) in its lock, then the most of
    their names, then the fewest packages. None when none has any of them."""
    from packaging.requirements import InvalidRequirement, Requirement

    wanted: dict[str, str | None] = {}
    for text in requirements:
        try:
            req = Requirement(text)
        except InvalidRequirement:
            continue
        pins = [
            s.version for s in req.specifier if s.operator in ("==", "===") and "*" not in s.version
        ]
        wanted[canonicalize_name(req.name)] = pins[0] if pins else None
    apt = sorted(apt)
    best, best_score = None, (0, 0, 0)
    for key, cand_lock, cand_apt in candidates:
        if sorted(cand_apt) != apt:
            continue
        have: dict[str, str] = {canonicalize_name(e["name"]): e["version"] for e in cand_lock}
        pinned = sum(1 for n, v in wanted.items() if v is not None and have.get(n) == v)
        named = sum(1 for n in wanted if n in have)
        score = (pinned, named, -len(have))
        if named and score > best_score:
            best, best_score = key, score
    return best


def imported_modules(code: str) -> list[str]:
    """Top-level names of absolute imports anywhere in the code, in first-seen order."""
    import ast

    names: dict[str, None] = {}
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names[alias.name.split(".")[0]] = None
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names[node.module.split(".")[0]] = None
    return list(names)


# The kernel's own machinery: the runner provides IPython.display inside the container.
NOT_CAPTURED = frozenset(
    {
        "IPython",
        "ipykernel",
        "ipywidgets",
        "matplotlib_inline",
        "mlcontainer_magics",
        "google",
        "__future__",
    }
)


def capture_pins(
    code: str,
    explicit,
    installed: dict[str, str] | None = None,
    module_dists: dict[str, list[str]] | None = None,
) -> list[str]:
    """Pins `dist==version` for what the code imports, as installed in this kernel.

    Skips the standard library, modules the kernel does not have, and distributions already
    named in ``explicit`` (the user's -r wins).
    """
    import sys
    from importlib import metadata

    if module_dists is None:
        module_dists = _packages_distributions()
    named = {canonicalize_name(_req_name(r)) for r in explicit}
    stdlib: frozenset[str] = getattr(sys, "stdlib_module_names", frozenset())
    pins: dict[str, str] = {}
    for module in imported_modules(code):
        if module in stdlib or module in sys.builtin_module_names or module in NOT_CAPTURED:
            continue
        for dist in module_dists.get(module, []):
            name = canonicalize_name(dist)
            if name in named or name in pins:
                continue
            try:
                version = (installed or {}).get(name) or metadata.version(dist)
            except metadata.PackageNotFoundError:
                continue
            pins[name] = f"{name}=={version}"
    return sorted(pins.values())


def _req_name(requirement: str) -> str:
    from packaging.requirements import Requirement

    return Requirement(requirement).name


_MODULE_DISTS: dict | None = None


def _packages_distributions() -> dict[str, list[str]]:
    # Scanning every installed distribution takes ~0.1 s: once per kernel is enough.
    global _MODULE_DISTS
    if _MODULE_DISTS is None:
        from importlib import metadata

        _MODULE_DISTS = dict(metadata.packages_distributions())
    return _MODULE_DISTS
