"""The host's pip settings, turned into what a build container can use.

Users behind a TLS-intercepting proxy or with a private index have told pip so on the host (pip
config files, PIP_* variables). Builds reuse exactly that: http(s) indexes and the CA bundle.
Local paths (file:// indexes, find-links folders) do not exist inside a container and are dropped.
"""
from __future__ import annotations

import functools
import subprocess
import sys
from dataclasses import dataclass

# pip config list prints each scope; later scopes win, as in pip itself.
_SCOPE_ORDER = {"global": 0, "user": 1, "site": 2, ":env:": 3}
_KEYS = ("index-url", "extra-index-url", "trusted-host", "cert", "find-links")


@dataclass(frozen=True)
class BuildNetwork:
    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    trusted_hosts: tuple[str, ...] = ()
    cert_path: str | None = None  # a host file, fed to the build and deleted before commit
    dropped: tuple[str, ...] = ()  # settings a container cannot use, for `doctor` to report


def parse_config_list(text: str) -> dict[str, str]:
    """Parse `pip config list` output into {key: value}, highest-priority scope winning."""
    best: dict[str, tuple[int, str]] = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if not sep:
            continue
        scope, _, key = name.rpartition(".")
        if key not in _KEYS:
            continue
        rank = _SCOPE_ORDER.get(scope, 0)
        value = value.strip().strip("'\"")
        if key not in best or rank >= best[key][0]:
            best[key] = (rank, value)
    return {k: v for k, (_, v) in best.items()}


def build_network(settings: dict[str, str]) -> BuildNetwork:
    """Keep what a container can reach: http(s) indexes, trusted hosts and the CA bundle."""
    dropped = []

    def usable(url: str) -> bool:
        ok = url.startswith(("https://", "http://"))
        if not ok:
            dropped.append(url)
        return ok

    index = settings.get("index-url")
    if index and not usable(index):
        index = None
    extras = tuple(u for u in settings.get("extra-index-url", "").split() if usable(u))
    for link in settings.get("find-links", "").split():
        dropped.append(link)
    return BuildNetwork(
        index_url=index,
        extra_index_urls=extras,
        trusted_hosts=tuple(settings.get("trusted-host", "").split()),
        cert_path=settings.get("cert") or None,
        dropped=tuple(dropped),
    )


@functools.lru_cache(maxsize=1)
def host_build_network() -> BuildNetwork:
    """Read the host's pip settings once per process (a subprocess costs ~0.3 s)."""
    try:
        out = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    return build_network(parse_config_list(out))
