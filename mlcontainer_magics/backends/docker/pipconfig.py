"""The host's pip settings, turned into what a build container can use.

Users behind a TLS-intercepting proxy or with a private index have told pip so on the host (pip
config files, PIP_* variables). Builds reuse exactly that: http(s) indexes, find-links, the CA
bundle, no-index. Local folders (file:// indexes, find-links folders) are mounted read-only into
builds; loopback addresses do not exist inside a container and are dropped. This module is the
one reading of those settings: builds use ``host_build_network()``, and ``mlcontainer doctor``
reports from the same functions.
"""

from __future__ import annotations

import ast
import functools
import ipaddress
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlsplit

KEYS = ("index-url", "extra-index-url", "find-links", "no-index", "cert", "trusted-host")
MULTI = frozenset({"extra-index-url", "find-links", "trusted-host"})  # pip splits on whitespace
PYPI = "https://pypi.org/simple"
# `pip install` reads these sections of the merged config, later ones winning; PIP_* variables
# (which `pip config list` shows as `:env:`) win over all.
_SECTIONS = (("env", ":env:"), ("install", "install"), ("global", "global"))

# {key: (value, origin)}, origin one of "env", "install", "global"
Settings = dict[str, tuple[str, str]]


@dataclass(frozen=True)
class BuildNetwork:
    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    trusted_hosts: tuple[str, ...] = ()
    cert_path: str | None = None  # a host file, fed to the build and deleted before commit
    dropped: tuple[str, ...] = ()  # settings a container cannot use, for `doctor` to report
    find_links: tuple[str, ...] = ()  # URLs or host folders (mounted read-only)
    no_index: bool = False  # an air-gapped host: packages come from find-links only


def local_folder(value: str) -> str | None:
    """The host folder a find-links value or file:// index names, or None for a URL."""
    url = urlsplit(value)
    if url.scheme == "file":
        return url.path or None
    if not url.scheme or len(url.scheme) == 1:  # a path (1: a Windows drive)
        return os.path.abspath(value)
    return None


def parse_config_list(text: str) -> dict[str, str]:
    """``pip config list`` output (``section.key='value'``, values Python reprs) as
    {"section.key": value}. Sections are pip's (global, install, :env:, ...), not files: pip
    prints one block per config file, so a key set in two files appears twice and the later
    line (pip's later file) wins."""
    out = {}
    for line in text.splitlines():
        name, sep, raw = line.partition("=")
        if not sep or "." not in name:
            continue
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        out[name.strip()] = str(value)
    return out


def effective_settings(config_list_text: str, environ: Mapping[str, str]) -> Settings:
    """{key: (value, origin)} for KEYS, as ``pip install`` sees them: PIP_* variables in
    ``environ`` over ``:env:`` over ``[install]`` over ``[global]``; empty values do not count."""
    config = parse_config_list(config_list_text)
    env = {k[4:].lower().replace("_", "-"): v for k, v in environ.items() if k.startswith("PIP_")}
    found = {}
    for key in KEYS:
        candidates = [("env", env.get(key))] + [
            (origin, config.get(f"{section}.{key}")) for origin, section in _SECTIONS
        ]
        for origin, value in candidates:
            if value is not None and value.strip():
                found[key] = (value, origin)
                break
    return found


def values(key: str, value: str) -> list[str]:
    """The separate values of one setting (pip splits the multi-valued keys on whitespace)."""
    return value.split() if key in MULTI else [value.strip()]


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def container_view(
    key: str,
    value: str,
    is_file: Callable[[str], bool] = os.path.isfile,
    is_dir: Callable[[str], bool] = os.path.isdir,
) -> tuple[bool, str]:
    """(a build container uses it, why) for one value of one pip setting."""
    if key == "trusted-host":
        return True, "a host name; applies to the indexes above"
    if key == "no-index":
        return True, "builds use find-links only" if _true(value) else "indexes are used"
    if key == "cert":
        if is_file(value):
            return True, "a CA bundle on the host; usable once copied into the build"
        return False, "no such file on the host"
    folder = local_folder(value)
    if folder is not None:
        if is_dir(folder):
            return True, "a folder on the host; mounted read-only into builds"
        return False, "no such folder on the host"
    url = urlsplit(value)
    if url.scheme not in ("http", "https"):
        return False, f"unsupported scheme {url.scheme}://"
    if _is_loopback(url.hostname or ""):
        return False, "loopback: inside a container that is the container itself"
    if key == "find-links":
        return True, "a page of links on the network; reachable if the host reaches it"
    return True, "a network index; reachable from containers if the host reaches it"


def _true(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def build_network(
    settings: Settings,
    is_file: Callable[[str], bool] = os.path.isfile,
    is_dir: Callable[[str], bool] = os.path.isdir,
) -> BuildNetwork:
    """What a build uses of ``effective_settings(...)``: every value ``container_view`` accepts;
    the others are ``dropped``."""
    usable: dict[str, list[str]] = {}
    dropped: list[str] = []
    for key, (value, _) in settings.items():
        for v in values(key, value):
            if v:
                ok, _why = container_view(key, v, is_file, is_dir)
                (usable.setdefault(key, []) if ok else dropped).append(v)
    return BuildNetwork(
        index_url=next(iter(usable.get("index-url", ())), None),
        extra_index_urls=tuple(usable.get("extra-index-url", ())),
        trusted_hosts=tuple(usable.get("trusted-host", ())),
        cert_path=next(iter(usable.get("cert", ())), None),
        dropped=tuple(dropped),
        find_links=tuple(usable.get("find-links", ())),
        no_index=_true(next(iter(usable.get("no-index", ())), "")),
    )


def read_config_list(
    python: str = sys.executable, environ: Mapping[str, str] = os.environ, timeout: float = 30
) -> tuple[str, str | None]:
    """(``pip config list`` output, None) or ("", why it could not be read)."""
    try:
        # The same environment for pip as for effective_settings, so that `:env:` agrees.
        proc = subprocess.run(
            [python, "-m", "pip", "config", "list"],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            env=dict(environ),
        )
    except (OSError, subprocess.SubprocessError) as e:
        return "", f"{type(e).__name__}: {e}"
    if proc.returncode != 0:
        return proc.stdout, (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
    return proc.stdout, None


@functools.lru_cache(maxsize=1)
def host_uv() -> str | None:
    """The uv binary builds mount: this package's own dependency's, else one on PATH. Looked
    up once per process: every build asks."""
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        return shutil.which("uv")


# Besides its files, `pip config list` reads PIP_* and where its files are.
_CONFIG_PLACES = frozenset({"HOME", "XDG_CONFIG_HOME", "XDG_CONFIG_DIRS"})
_READING = threading.Lock()
_READ: dict[tuple, BuildNetwork] = {}


def host_build_network() -> BuildNetwork:
    """The host's pip settings as builds use them. A subprocess reads them (~0.3 s), once per
    process for the variables pip reads (`%env PIP_INDEX_URL=...` in a notebook is seen by
    the next build; an edited pip.conf is not); a build that asks while warm_up reads waits
    for that reading."""
    environ = dict(os.environ)  # one snapshot: the key, pip and the settings agree
    key = tuple(
        sorted((k, v) for k, v in environ.items() if k.startswith("PIP_") or k in _CONFIG_PLACES)
    )
    with _READING:
        if key not in _READ:
            text, _ = read_config_list(environ=environ)
            _READ[key] = build_network(effective_settings(text, environ))
        return _READ[key]


def warm_up() -> None:
    """Read ahead what a kernel's first build would wait for (the host's pip settings, where
    uv is), in the background while the user writes the first cell."""
    host_uv()
    host_build_network()
