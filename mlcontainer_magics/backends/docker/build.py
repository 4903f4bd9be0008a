"""Pure: a spec in, build artifacts out (scripts, pip.conf, Dockerfile text). No I/O here."""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import replace

from ...core.events import STEP, step_name
from ...runner import CONTAINER_ENV, MLC_DIR, RUN_USER, RUNNER_COMMAND, WORK_DIR
from .pipconfig import BuildNetwork, local_folder

BUILD_DIR = "/tmp/mlc-build"  # holds the CA bundle and index settings; deleted before commit
CACHE_DIR = "/mlc-cache"  # a named volume: the wheel caches shared by every build
PIP_CACHE = f"{CACHE_DIR}/pip"
UV_CACHE = f"{CACHE_DIR}/uv"
# The host's wheel folders appear read-only at HOST_DIR/0, HOST_DIR/1, ... (numbered, so that no
# host path is named in an image, where the empty mount points stay).
HOST_DIR = "/mlc-host"
UV_PATH = f"{HOST_DIR}/.uv"  # the host's uv binary, mounted read-only; never in an image


def host_folders(net: BuildNetwork) -> list[str]:
    """The host folders a build mounts read-only, the i-th at HOST_DIR/i: find-links folders,
    and the folder holding each file:// index (its pages link to ../../files/x.whl)."""
    out: dict[str, None] = {}
    for value in net.find_links:
        folder = local_folder(value)
        if folder:
            out[folder.rstrip("/") or "/"] = None
    for value in (*([net.index_url] if net.index_url else []), *net.extra_index_urls):
        index = local_folder(value)
        if index:
            index = index.rstrip("/") or "/"
            parent = os.path.dirname(index)
            out[parent if parent not in ("", "/") else index] = None
    return list(out)


def _in_container(value: str, folders: list[str]) -> str:
    """A pip setting's value as the build container sees it: a local folder (or a path in
    one) under the HOST_DIR/i where ``folders[i]`` (host_folders) is mounted."""
    path = local_folder(value)
    if path is None:
        return value
    path = path.rstrip("/") or "/"
    for i, root in enumerate(folders):
        if path == root or path.startswith(root.rstrip("/") + "/"):
            inside = f"{HOST_DIR}/{i}{path[len(root.rstrip('/')) :]}"
            return ("file://" if value.startswith("file:") else "") + inside
    raise ValueError(f"{value!r} is in no mounted folder")


def from_host_folder(source: str) -> bool:
    """Whether a lock's "from" annotation names one of the host's mounted folders."""
    return source.removeprefix("file://").startswith(HOST_DIR + "/")


def with_local_folders_dropped(net: BuildNetwork) -> BuildNetwork:
    """``net`` for an engine on another machine, which cannot mount this one's folders."""
    local = [
        v for v in (net.index_url, *net.extra_index_urls, *net.find_links) if v and local_folder(v)
    ]
    if not local:
        return net
    return replace(
        net,
        index_url=None if net.index_url in local else net.index_url,
        extra_index_urls=tuple(v for v in net.extra_index_urls if v not in local),
        find_links=tuple(v for v in net.find_links if v not in local),
        dropped=(*net.dropped, *local),
    )


def pip_conf(net: BuildNetwork) -> str:
    folders = host_folders(net)

    def in_container(value: str) -> str:
        return _in_container(value, folders)

    lines = ["[global]"]
    if net.index_url:
        lines.append(f"index-url = {in_container(net.index_url)}")
    if net.extra_index_urls:
        lines.append("extra-index-url = " + " ".join(map(in_container, net.extra_index_urls)))
    if net.find_links:
        lines.append("find-links = " + " ".join(map(in_container, net.find_links)))
    if net.no_index:
        lines.append("no-index = true")
    if net.trusted_hosts:
        lines.append("trusted-host = " + " ".join(net.trusted_hosts))
    if net.cert_path:
        lines.append(f"cert = {BUILD_DIR}/ca.pem")
    return "\n".join(lines) + "\n"


def uv_toml(net: BuildNetwork) -> str:
    """uv's settings for a build: the same indexes, find-links and trusted hosts as pip's (the
    CA bundle goes by SSL_CERT_FILE), its cache on the shared volume."""
    q = json.dumps  # a JSON string is a TOML basic string
    folders = host_folders(net)

    def in_container(value: str) -> str:
        return _in_container(value, folders)

    lines = [
        f"cache-dir = {q(UV_CACHE)}",
        'python-downloads = "never"',
        # The cache is a volume and the target the container's overlay: no hard links across.
        'link-mode = "copy"',
        # pip's way: the best version over every index, not the first index that has the name.
        'index-strategy = "unsafe-best-match"',
    ]
    if net.index_url:
        lines.append(f"index-url = {q(in_container(net.index_url))}")
    if net.extra_index_urls:
        urls = ", ".join(q(in_container(u)) for u in net.extra_index_urls)
        lines.append(f"extra-index-url = [{urls}]")
    if net.find_links:
        lines.append(f"find-links = [{', '.join(q(in_container(u)) for u in net.find_links)}]")
    if net.no_index:
        lines.append("no-index = true")
    if net.trusted_hosts:
        lines.append(f"allow-insecure-host = [{', '.join(q(h) for h in net.trusted_hosts)}]")
    lines += ["[pip]", "break-system-packages = true"]  # a Debian python3 marks itself managed
    return "\n".join(lines) + "\n"


def requirements_txt(requirements) -> str:
    return "".join(f"{r}\n" for r in requirements)


def lock_txt(lock) -> str:
    """A pip requirements file with exact pins and hashes, from lock entries."""
    out = []
    for entry in lock:
        line = f"{entry['name']}=={entry['version']}"
        for h in entry.get("hashes", ()):
            line += f" \\\n    --hash={h}"
        out.append(line)
    return "".join(f"{line}\n" for line in out)


def download_script() -> str:
    """Fetch every locked file (checked by hash) into BUILD_DIR/wheels, for `export`."""
    return (
        "\n".join(
            [
                "set -eu",
                f"export PIP_CONFIG_FILE={BUILD_DIR}/pip.conf PIP_CACHE_DIR={PIP_CACHE}",
                "export PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off",
                f"python -m pip download --no-deps --require-hashes -r {BUILD_DIR}/lock.txt "
                f"-d {BUILD_DIR}/wheels",
            ]
        )
        + "\n"
    )


_PIP_ENV = [
    f"export PIP_CONFIG_FILE={BUILD_DIR}/pip.conf PIP_CACHE_DIR={PIP_CACHE}",
    "export PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore",
    "export PIP_PROGRESS_BAR=off DEBIAN_FRONTEND=noninteractive",
]
_UV_ENV = [
    f"export UV_CONFIG_FILE={BUILD_DIR}/uv.toml UV_NO_PROGRESS=1 UV={UV_PATH}",
    f"if [ -f {BUILD_DIR}/ca.pem ]; then export SSL_CERT_FILE={BUILD_DIR}/ca.pem; fi",
    "PY=$(command -v python3 || command -v python || echo python3)",
]
_PYTHON_VERSION = (
    f"python -c 'import platform; print(platform.python_version())' > {BUILD_DIR}/python.txt"
)


# Bytecode, as pip writes it: the cell's user cannot write site-packages, so without it every
# fresh container compiles what it imports (`import numpy, pandas, sklearn`: 3.5 s, not 1.1 s).
# Only the packages this build installed (an environment built on another has the rest), and
# not their test suites: half the files, and no cell imports them. Standard library only.
BYTECODE_PY = """\
import compileall, re, sys, sysconfig
from concurrent.futures import ProcessPoolExecutor

TESTS = re.compile(r"(^|/)tests?/")

def files():
    try:
        import importlib.metadata as md
    except ImportError:  # Python < 3.8: all of site-packages
        return None
    out = []
    with open(sys.argv[1], encoding="utf-8", errors="replace") as log:
        names = [line.split()[1].split("==")[0] for line in log if line.startswith(" + ")]
    for name in names:
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        for f in dist.files or ():
            if str(f).endswith(".py") and not TESTS.search(str(f)):
                out.append(str(dist.locate_file(f)))
    return out

def compile_one(path):
    return compileall.compile_file(path, quiet=2)

if __name__ == "__main__":
    todo = files()
    if todo is None:
        for key in ("purelib", "platlib"):
            compileall.compile_dir(sysconfig.get_paths()[key], quiet=2, rx=TESTS, workers=0)
    elif todo:
        with ProcessPoolExecutor() as pool:
            list(pool.map(compile_one, todo, chunksize=16))
"""


def resolve_script() -> str:
    """Run in a throwaway container of the base: resolve the requirements into BUILD_DIR/lock.txt
    (exact pins, the hashes of every file of each, and the index each came from). Where uv cannot
    run in this base (no glibc, an old one), write why to BUILD_DIR/no-uv and stop: pip builds."""
    lines = [
        "set -eu",
        *_UV_ENV,
        f'if ! "$UV" --version > {BUILD_DIR}/uv-version.txt 2>&1; then',
        f"  cp {BUILD_DIR}/uv-version.txt {BUILD_DIR}/no-uv; exit 0",
        "fi",
        *_UV_RESOLVE,
        _PYTHON_VERSION,
    ]
    return "\n".join(lines) + "\n"


_UV_RESOLVE = [
    f"echo '{STEP}uv resolve' $(cat {BUILD_DIR}/requirements.txt)",
    f'"$UV" pip compile --python "$PY" --generate-hashes --no-header --no-annotate '
    f"--emit-index-annotation --quiet {BUILD_DIR}/requirements.txt -o {BUILD_DIR}/lock.txt",
]
# The report pip writes is the lock: exact versions and hashes of what it installed.
_PIP_RESOLVE = [
    f"echo '{STEP}pip install' $(cat {BUILD_DIR}/requirements.txt)",
    f"python -m pip install -r {BUILD_DIR}/requirements.txt --report {BUILD_DIR}/report.json",
]


# A build that resolves on the environment it guessed it would build on stops here, its lock
# written, until the host has read it: it writes BUILD_DIR/go (and remove.txt) to go on, or
# BUILD_DIR/stop (the lock is built already, or fits another environment better).
LOCK_CHECK = f"{STEP}lock check"
_WAIT_FOR_GO = [
    f"echo '{LOCK_CHECK} (the host reads the lock)'",
    "waited=0",
    f"while [ ! -e {BUILD_DIR}/go ] && [ ! -e {BUILD_DIR}/stop ]; do",
    "  waited=$((waited + 1))",
    "  if [ $waited -gt 30000 ]; then echo 'the host never read the lock'; exit 1; fi",
    "  sleep 0.02 2>/dev/null || sleep 1",
    "done",
    f"if [ -e {BUILD_DIR}/stop ]; then exit 0; fi",
]


def install_script(
    apt=(),
    has_requirements=True,
    from_lock=False,
    installer="pip",
    remove=False,
    resolve=False,
    wait_for_go=False,
) -> str:
    """Shell script run in a throwaway container whose filesystem becomes the environment image.

    Every value it uses comes from files in BUILD_DIR, so no user text is ever part of the shell
    command; the index settings are exported here, not in the container config, so they are not
    kept by `docker commit`. With uv it installs exactly BUILD_DIR/lock.txt (hash-checked),
    first removing what ``remove`` lists (packages of the environment it builds on that the
    lock does not have), after resolving it there first with ``resolve`` (one container, not
    two); with ``wait_for_go`` as well (a build on the environment it guessed the lock would
    share the most pins with), it stops after resolving until the host, having read the lock,
    writes BUILD_DIR/go (with remove.txt) or BUILD_DIR/stop; where uv cannot run it then only
    says so (BUILD_DIR/no-uv): pip builds elsewhere. With pip it resolves and installs (or
    installs a given lock).
    """
    lines = ["set -eu", *_PIP_ENV]
    if apt:
        lines += [
            f"echo '{STEP}apt-get install' $(cat {BUILD_DIR}/apt.txt)",
            "apt-get update -qq",
            f"xargs -a {BUILD_DIR}/apt.txt apt-get install -y --no-install-recommends",
            "rm -rf /var/lib/apt/lists/*",
        ]
    if installer == "uv":
        lines += _UV_ENV
        if resolve and wait_for_go:  # where uv cannot run, say why and stop: pip builds
            fallback = [f"  cp {BUILD_DIR}/uv-version.txt {BUILD_DIR}/no-uv"]
        elif resolve:  # where uv cannot run, say why (BUILD_DIR/no-uv) and let pip resolve
            fallback = [f"  cp {BUILD_DIR}/uv-version.txt {BUILD_DIR}/no-uv", *_PIP_RESOLVE]
        else:  # a recorded lock, rebuilt where uv cannot run: pip installs it the same
            fallback = [
                "  echo 'note: uv cannot run in this image; installing the lock with pip'",
                f"  python -m pip install --no-deps --require-hashes -r {BUILD_DIR}/lock.txt",
            ]
        lines += [
            f'if ! "$UV" --version > {BUILD_DIR}/uv-version.txt 2>&1; then',
            *(line if line.startswith("  ") else "  " + line for line in fallback),
            f"  {_PYTHON_VERSION}; exit 0",
            "fi",
            *(_UV_RESOLVE if resolve else []),
            *(_WAIT_FOR_GO if resolve and wait_for_go else []),
        ]
        uninstall = [
            f"echo '{STEP}uv uninstall' $(cat {BUILD_DIR}/remove.txt)",
            f'"$UV" pip uninstall --python "$PY" -r {BUILD_DIR}/remove.txt',
        ]
        if resolve and wait_for_go:  # remove.txt comes with go
            lines += [
                f"if [ -s {BUILD_DIR}/remove.txt ]; then",
                *("  " + x for x in uninstall),
                "fi",
            ]
        elif remove:
            lines += uninstall
        lines += [
            f"echo '{STEP}uv install (exactly the lock, hash-checked)'",
            # uv says what it installed (" + name==version"): the bytecode step needs the list.
            f'if ! "$UV" pip install --python "$PY" --no-deps --require-hashes '
            f"-r {BUILD_DIR}/lock.txt > {BUILD_DIR}/installed.log 2>&1; then",
            f"  cat {BUILD_DIR}/installed.log; exit 1",
            "fi",
            f"cat {BUILD_DIR}/installed.log",
            _SYNC_IN_BACKGROUND,
            f"echo '{STEP}compile bytecode'",
            f'"$PY" {BUILD_DIR}/bytecode.py {BUILD_DIR}/installed.log',
        ]
    elif has_requirements:
        if from_lock:
            # Rebuild exactly what was recorded: no resolution, every file checked by hash.
            lines += [
                f"echo '{STEP}pip install (from lock)'",
                f"python -m pip install --no-deps --require-hashes -r {BUILD_DIR}/lock.txt "
                f"--report {BUILD_DIR}/report.json",
            ]
        else:
            lines += _PIP_RESOLVE
    lines += [_PYTHON_VERSION, f"echo '{BUILT}'", *_SYNC_WHILE_COMMITTED, "exec sleep 3600"]
    return "\n".join(lines) + "\n"


# The engine's first container of a new image waits until the filesystem's dirty pages are on
# disk (its init layer's unmount syncs it): the installed files, the wheel cache's, the
# commit's copy of them (~900 MB: 0.4-0.9 s after a cold build). Written while uv's bytecode
# compiles and while the commit runs instead, with the disk otherwise idle. `sync -f /` flushes
# the filesystem under this container's layers (the engine's: the commit's and the volumes'
# too), not the machine's other mounts (a hung network one would hang it); `sync` where -f is
# unknown. Neither changes a file of this container. Once a second: every 0.5 s slowed the
# commit by as much as it saved (its file creations wait on each flush). The loop ends with the
# container, removed once the first run has ended (5 s after the commit at most).
_SYNC = "{ sync -f / || sync; } 2>/dev/null"
_SYNC_IN_BACKGROUND = f"if command -v sync >/dev/null; then {_SYNC} & fi"
_SYNC_WHILE_COMMITTED = [
    "if command -v sync >/dev/null; then",
    "  n=0; while [ $n -lt 20 ]; do",
    f"    {_SYNC} || :; sleep 1; n=$((n + 1))",
    "  done",
    "fi",
]


# The last line of a successful install.sh: all it writes is written; it then flushes the disks
# and sleeps (_SYNC_WHILE_COMMITTED) until committed as it is and removed (no waiting for the
# container to exit first).
BUILT = "mlc-build: built, to be committed"


def build_files(
    net: BuildNetwork,
    *,
    requirements=(),
    apt=(),
    lock=None,
    ca_bundle=b"",
    installer="pip",
    remove=(),
    wait_for_go=False,
) -> dict[str, bytes]:
    """Files to place in BUILD_DIR for install_script() and resolve_script()."""
    files = {
        "install.sh": install_script(
            apt,
            bool(requirements or lock),
            lock is not None,
            installer,
            bool(remove),
            resolve=installer == "uv" and lock is None and bool(requirements),
            wait_for_go=wait_for_go,
        ),
        "resolve.sh": resolve_script(),
        "pip.conf": pip_conf(net if ca_bundle else _without_cert(net)),
        "uv.toml": uv_toml(net),
        "requirements.txt": requirements_txt(requirements),
        "apt.txt": "\n".join(apt) + "\n",
        "remove.txt": "".join(f"{name}\n" for name in remove),
        "bytecode.py": BYTECODE_PY,
    }
    if lock is not None:
        files["lock.txt"] = lock_txt(lock)
    out = {k: v.encode() for k, v in files.items()}
    if ca_bundle:
        out["ca.pem"] = ca_bundle
    return out


def step_seconds(timed_lines, end: float) -> dict[str, float]:
    """{step: seconds} from (arrival time, line) pairs of a build log: a step runs from its
    STEP line to the next one (or ``end``)."""
    out: dict[str, float] = {}
    current, since = None, 0.0
    for t, line in timed_lines:
        if line.startswith(STEP):
            if current:
                out[current] = round(out.get(current, 0) + t - since, 3)
            current, since = step_name(line) or "step", t
    if current:
        out[current] = round(out.get(current, 0) + end - since, 3)
    return out


_UV_COUNT = re.compile(r"^(Prepared|Installed) (\d+) packages? in ")


def uv_counts(lines) -> dict[str, int]:
    """{"prepared": N, "installed": M} from uv's summary lines: prepared ones were fetched (or
    built); the others it installed came from the wheel cache."""
    out = {"prepared": 0, "installed": 0}
    for line in lines:
        m = _UV_COUNT.match(line.strip())
        if m:
            out[m.group(1).lower()] = int(m.group(2))
    return out


def _without_cert(net: BuildNetwork) -> BuildNetwork:
    return replace(net, cert_path=None)


def dockerfile(
    base_image: str, apt=(), has_lock=True, wheels=False, data=False, serve_port: int | None = None
) -> str:
    """A plain Dockerfile that rebuilds the environment and runs the cell: used by `export`.

    With ``wheels``, every locked file ships beside it, so the build needs no index: it works
    offline, behind any proxy, and after a package is yanked. With ``serve_port`` the cell is
    served (`runner.py --http PORT`): the port exposed, and a health check that needs nothing
    but the image's Python.
    """
    out = [f"FROM {base_image}"]
    if apt:
        out.append(
            "RUN apt-get update \\\n && DEBIAN_FRONTEND=noninteractive apt-get install -y "
            "--no-install-recommends "
            + " ".join(shlex.quote(a) for a in apt)
            + " \\\n && rm -rf /var/lib/apt/lists/*"
        )
    if has_lock and wheels:
        out += [
            "COPY requirements.lock /tmp/requirements.lock",
            "COPY wheels/ /tmp/wheels/",
            "RUN python -m pip install --no-cache-dir --no-index --find-links /tmp/wheels "
            "--no-deps --require-hashes -r /tmp/requirements.lock \\\n"
            " && rm -rf /tmp/requirements.lock /tmp/wheels",
        ]
    elif has_lock:
        out += [
            "COPY requirements.lock /tmp/requirements.lock",
            "RUN python -m pip install --no-cache-dir --no-deps --require-hashes "
            "-r /tmp/requirements.lock && rm /tmp/requirements.lock",
        ]
    out.append(f"COPY --chown={RUN_USER} mlc/ {MLC_DIR}/")
    if data:  # the mounted inputs that travel with the export, where the cell found them
        out.append(f"COPY --chown={RUN_USER} data/ /")
    out += [
        f"USER {RUN_USER}",
        f"WORKDIR {WORK_DIR}",
        "ENV " + " ".join(f"{k}={v}" for k, v in CONTAINER_ENV.items()),
    ]
    command = list(RUNNER_COMMAND)
    if serve_port is not None:
        probe = (
            "import urllib.request; urllib.request.urlopen("
            f"'http://127.0.0.1:{serve_port}/healthz', timeout=3)"
        )
        out += [
            f"EXPOSE {serve_port}",
            # Healthy once the cell has run and the server answers; the cell may take a while
            # to load its model (start-period).
            "HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 "
            "CMD " + json.dumps(["python", "-c", probe]),
        ]
        command += ["--http", str(serve_port)]
    out.append("CMD " + json.dumps(command))
    return "\n".join(out) + "\n"
