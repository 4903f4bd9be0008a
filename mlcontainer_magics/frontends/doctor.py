"""`mlcontainer doctor`: get a working Docker engine and base image on this machine, and say what
the host's pip settings mean inside containers.

Decisions (what to run, what a setting means) are pure functions, tested without a daemon; the
functions that act on them (start dockerd, apt-get, debootstrap, docker import/build) stay thin.
Every failure ends as an MlcError whose message says exactly what to run next.
"""
from __future__ import annotations

import ast
import ipaddress
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator
from urllib.parse import urlsplit

from ..backends.docker.engine import connect
from ..errors import BaseImageMissing, EngineUnavailable, MlcError

Log = Callable[[str], None]

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# The Python each Debian suite ships; an offline base is only honest for that X.Y.
DEBIAN_SUITE_PYTHON = {"bookworm": "3.11"}
OFFLINE_SUITE = "bookworm"
OFFLINE_LABEL = "org.mlcontainer.offline-base"
OFFLINE_PACKAGES = ("python3", "python3-venv", "python3-pip", "python-is-python3",
                    "ca-certificates")
# docker import leaves the config empty; give the image the PATH the official one has.
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ENGINE_WAIT = 60.0
PIP_KEYS = ("index-url", "extra-index-url", "find-links", "cert", "trusted-host")
_PIP_MULTI = {"extra-index-url", "find-links", "trusted-host"}  # pip splits these on whitespace
PYPI = "https://pypi.org/simple"

# dockerd processes this interpreter started; kept referenced so that they are not reaped (and
# warned about) by the garbage collector while they keep serving.
_started: list[subprocess.Popen] = []


# ---------------------------------------------------------------------------------------------
# Pure parts

def default_base_image(version_info: tuple = tuple(sys.version_info)) -> str:
    """The official slim image matching the running interpreter, e.g. ``python:3.11-slim``."""
    return f"python:{version_info[0]}.{version_info[1]}-slim"


def state_dir(environ=os.environ) -> Path:
    """Where doctor writes logs: $XDG_STATE_HOME/mlcontainer or ~/.local/state/mlcontainer."""
    xdg = environ.get("XDG_STATE_HOME", "")
    # The XDG spec says relative values are invalid and must be ignored.
    if os.path.isabs(xdg):
        base = Path(xdg)
    else:
        base = Path(environ.get("HOME") or Path.home()) / ".local" / "state"
    return base / "mlcontainer"


@dataclass(frozen=True)
class HostFacts:
    """What decides how an engine can be had on this host (gathered by ``host_facts()``)."""

    dockerd: str | None = None      # path of an installed dockerd
    is_root: bool = False
    apt_get: str | None = None      # path of apt-get
    debian: bool = False            # /etc/debian_version exists (Debian, Ubuntu, ...)
    systemd: bool = False           # systemd is PID 1 and systemctl exists
    docker_host: str | None = None  # $DOCKER_HOST


@dataclass(frozen=True)
class EnginePlan:
    """What ``ensure_engine(fix=True)`` would do, and what to tell a user who fixes it by hand."""

    install: bool       # apt-get install docker.io first
    start: str          # "dockerd" | "systemd" | "" (cannot start one)
    manual: str         # the exact commands for a person to run


def plan_engine(f: HostFacts) -> EnginePlan:
    """Decide how to get an engine, given the host's facts and that none answers now."""
    if f.docker_host and f.docker_host != DEFAULT_DOCKER_HOST:
        # Starting a local daemon would not make the engine the user points at answer.
        return EnginePlan(False, "", (
            f"DOCKER_HOST={f.docker_host} does not answer: start the engine there, or unset "
            "DOCKER_HOST to use a local one."))
    sudo = "" if f.is_root else "sudo "
    start_cmd = (f"{sudo}systemctl start docker" if f.systemd else
                 f"{sudo}setsid dockerd </dev/null >dockerd.log 2>&1 &")
    group = "" if f.is_root else " (and `sudo usermod -aG docker $USER`, then log in again)"
    if f.dockerd:
        manual = f"run `{start_cmd}`{group}"
        if f.is_root:
            manual = f"run `mlcontainer doctor --fix`, or {manual}"
        start = ("systemd" if f.systemd else "dockerd") if f.is_root else ""
        return EnginePlan(False, start, manual)
    if f.debian and f.apt_get:
        install = f"{sudo}apt-get update && {sudo}apt-get install -y docker.io"
        manual = f"run `{install}`, then `{start_cmd}`{group}"
        if f.is_root:
            return EnginePlan(True, "systemd" if f.systemd else "dockerd",
                              f"run `mlcontainer doctor --fix`, or {manual}")
        return EnginePlan(False, "", manual)
    return EnginePlan(False, "", (
        "install Docker Engine (https://docs.docker.com/engine/install/) or Docker Desktop and "
        "start it"))


def _normalize_ref(image: str) -> str:
    """``docker.io/library/python:3.11-slim`` -> ``python:3.11-slim`` (Docker Hub's short form)."""
    for prefix in ("docker.io/library/", "index.docker.io/library/", "library/"):
        if image.startswith(prefix):
            return image[len(prefix):]
    return image


def offline_buildable(image: str, suite: str = OFFLINE_SUITE) -> bool:
    """True if ``image`` names the official slim image for the suite's own Python."""
    xy = DEBIAN_SUITE_PYTHON[suite]
    return _normalize_ref(image) in (f"python:{xy}-slim", f"python:{xy}-slim-{suite}")


def render_offline_dockerfile(from_ref: str, suite: str = OFFLINE_SUITE) -> str:
    """The layer that turns a debootstrapped rootfs into a stand-in for ``python:X.Y-slim``."""
    xy = DEBIAN_SUITE_PYTHON[suite]
    major, minor = xy.split(".")
    # RUN comes first so that a failing step leaves no committed child image behind; the
    # version check fails the build loudly if the suite's Python ever differs from the name.
    return "\n".join([
        f"FROM {from_ref}",
        "RUN set -eux; \\",
        "    export DEBIAN_FRONTEND=noninteractive; \\",
        "    apt-get update; \\",
        f"    apt-get install -y --no-install-recommends {' '.join(OFFLINE_PACKAGES)}; \\",
        "    apt-get clean; \\",
        # PEP 668's marker makes `pip install` refuse; the official image has no such marker.
        "    rm -rf /var/lib/apt/lists/* /usr/lib/python3*/EXTERNALLY-MANAGED; \\",
        "    python3 -c 'import sys; "
        f"assert sys.version_info[:2] == ({major}, {minor}), sys.version'",
        "ENV LANG=C.UTF-8",
        f'LABEL {OFFLINE_LABEL}="debian-{suite}"',
        'CMD ["python3"]',
        "",
    ])


def debootstrap_progress(line: str, seen: set) -> str | None:
    """The lines of debootstrap's output worth showing: the first of each phase, and problems."""
    parts = line.split()
    if len(parts) < 2:
        return None
    if parts[0] in ("W:", "E:"):
        return line.strip()
    if parts[0] == "I:" and parts[1] not in seen:
        seen.add(parts[1])
        return line.strip()
    return None


def parse_pip_config_list(text: str) -> dict[str, str]:
    """Parse ``pip config list`` output (``section.key='value'``) into {"section.key": value}.

    Environment variables appear as ``:env:.key``; values are Python reprs.
    """
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


def effective_pip_settings(config: dict[str, str], environ) -> dict[str, tuple[str, str]]:
    """{key: (value, origin)} for PIP_KEYS, as ``pip install`` would see them.

    pip's precedence: PIP_* variables over the [install] section over [global].
    """
    env = {k[4:].lower().replace("_", "-"): v for k, v in environ.items() if k.startswith("PIP_")}
    found = {}
    for key in PIP_KEYS:
        for origin, value in (("env", env.get(key)), ("env", config.get(f":env:.{key}")),
                              ("install", config.get(f"install.{key}")),
                              ("global", config.get(f"global.{key}"))):
            if value is not None:
                found[key] = (value, origin)
                break
    return found


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def container_view(key: str, value: str, is_file: Callable[[str], bool] = os.path.isfile
                   ) -> tuple[bool, str]:
    """(usable in a container build, why) for one pip setting value."""
    if key == "trusted-host":
        return True, "a host name; applies to the indexes above"
    if key == "cert":
        if is_file(value):
            return True, "a CA bundle on the host; usable once copied into the build"
        return False, "no such file on the host"
    url = urlsplit(value)
    if url.scheme in ("http", "https"):
        if _is_loopback(url.hostname or ""):
            return False, "loopback: inside a container that is the container itself"
        return True, "a network index; reachable from containers if the host reaches it"
    if url.scheme == "file" or not url.scheme or len(url.scheme) == 1:  # 1: a Windows drive
        return False, "a path on the host; it does not exist inside containers"
    return False, f"unsupported scheme {url.scheme}://"


def pip_report_from(config_text: str | None, environ, error: str | None = None,
                    is_file: Callable[[str], bool] = os.path.isfile) -> dict:
    """The pip part of the doctor report, from ``pip config list`` output and the environment."""
    config = parse_pip_config_list(config_text or "")
    settings = {}
    for key, (value, origin) in effective_pip_settings(config, environ).items():
        values = value.split() if key in _PIP_MULTI else [value.strip()]
        settings[key] = [dict(zip(("value", "origin", "container", "why"),
                                  (v, origin, *container_view(key, v, is_file))))
                         for v in values if v]
    if not settings.get("index-url"):
        settings["index-url"] = [{"value": PYPI, "origin": "default", "container": True,
                                  "why": "pip's default index"}]
    settings = {k: settings[k] for k in PIP_KEYS if k in settings}
    usable = {k: [e["value"] for e in v if e["container"]] for k, v in settings.items()}
    return {
        "ok": error is None,
        "error": error,
        "settings": settings,
        "container_usable": {k: v for k, v in usable.items() if v},
        "host_only": [f"{k} {e['value']}" for k, v in settings.items() for e in v
                      if not e["container"]],
    }


def _tick(ok: bool | None) -> str:
    # Fall back to ASCII where the terminal cannot print the marks.
    marks = {True: "✔", False: "✘", None: "!"}
    enc = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        "✔✘".encode(enc)
    except (UnicodeEncodeError, LookupError):
        marks = {True: "OK", False: "FAIL", None: "WARN"}
    return marks[ok]


def format_report(report: dict) -> list[str]:
    """Human-readable lines for a ``run_doctor`` report."""
    lines = []
    eng = report["engine"]
    if eng.get("ok"):
        lines.append(f"{_tick(True)} engine: Docker {eng['version']} at {eng['address']}")
    else:
        lines.append(f"{_tick(False)} engine: {eng.get('error')}")
    base = report["base_image"]
    if base.get("ok"):
        how = {"local": "present", "pulled": "pulled", "built": "built offline"}[base["source"]]
        what = f", offline build from {base['offline_from']}" if base.get("offline") else ""
        lines.append(f"{_tick(True)} base image {base['image']}: {base['id'][:19]} "
                     f"({how}{what})")
    elif base.get("skipped"):
        lines.append(f"{_tick(False)} base image {base['image']}: not checked (no engine)")
    else:
        lines.append(f"{_tick(False)} {base.get('error')}")
    pip = report["pip"]
    if not pip.get("ok"):
        lines.append(f"{_tick(None)} pip: could not read pip config: {pip.get('error')}")
    for key, entries in pip.get("settings", {}).items():
        for e in entries:
            lines.append(f"{_tick(True if e['container'] else None)} pip {key}: {e['value']} "
                         f"({e['origin']}; {e['why']})")
    return lines


# ---------------------------------------------------------------------------------------------
# Engine

def _find_exe(name: str) -> str | None:
    # /usr/sbin is often missing from a non-root PATH (and from some root shells).
    found = shutil.which(name)
    if found:
        return found
    for d in ("/usr/sbin", "/sbin", "/usr/bin"):
        p = os.path.join(d, name)
        if os.access(p, os.X_OK):
            return p
    return None


def host_facts() -> HostFacts:
    return HostFacts(
        dockerd=_find_exe("dockerd"),
        is_root=hasattr(os, "geteuid") and os.geteuid() == 0,
        apt_get=_find_exe("apt-get"),
        debian=os.path.exists("/etc/debian_version"),
        systemd=os.path.isdir("/run/systemd/system") and _find_exe("systemctl") is not None,
        docker_host=os.environ.get("DOCKER_HOST") or None,
    )


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def _run(argv: list[str], log: Log, what: str, log_file: Path, env: dict | None = None) -> None:
    """Run one command (an argument list, never a shell string), output appended to log_file."""
    log(f"running: {' '.join(argv)}")
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as out:
        out.write(f"\n$ {' '.join(argv)}\n".encode())
        out.flush()
        rc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                            env=env).returncode
    if rc != 0:
        raise MlcError(f"{what} failed (`{' '.join(argv)}` exited {rc}); last lines of "
                       f"{log_file}:\n{_tail(log_file)}")


def _apt_install(packages: list[str], log: Log, log_file: Path) -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    apt = _find_exe("apt-get") or "apt-get"
    _run([apt, "update"], log, "apt-get update", log_file, env)
    _run([apt, "install", "-y", *packages], log, f"installing {' '.join(packages)}", log_file, env)


def _start_dockerd(dockerd: str, log_file: Path) -> subprocess.Popen:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as out:
        # Own session, no terminal, stdin closed: it outlives this process and the notebook.
        proc = subprocess.Popen([dockerd], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    _started.append(proc)
    return proc


def _wait_for_engine(proc: subprocess.Popen | None, wait: float, log_file: Path):
    deadline = time.monotonic() + wait
    while True:
        try:
            connect(timeout=5)
            return connect()
        except EngineUnavailable:
            pass
        if proc is not None and proc.poll() is not None:
            # It may have lost a race to a dockerd someone else just started: ask once more.
            try:
                return connect()
            except EngineUnavailable:
                raise EngineUnavailable(
                    f"dockerd exited with status {proc.returncode} before answering; last lines "
                    f"of {log_file}:\n{_tail(log_file)}") from None
        if time.monotonic() > deadline:
            pid = f" (pid {proc.pid}, still running)" if proc is not None else ""
            raise EngineUnavailable(
                f"Docker engine started{pid} but did not answer within {wait:.0f} s; see "
                f"{log_file}") from None
        time.sleep(0.5)


def _ensure_engine(fix: bool, log: Log, wait: float = ENGINE_WAIT):
    """(client, actions taken) -- see ensure_engine."""
    try:
        return connect(), []
    except EngineUnavailable:
        pass
    plan = plan_engine(host_facts())
    if not fix or not plan.start:
        where = os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST
        raise EngineUnavailable(f"No Docker engine answers at {where}. To fix: {plan.manual}.")
    try:
        return _fix_engine(plan, log, wait)
    except EngineUnavailable:
        raise
    except (MlcError, OSError) as e:  # apt-get, systemctl or Popen failed
        raise EngineUnavailable(f"Could not start a Docker engine: {e}\nTo fix by hand: "
                                f"{plan.manual}.") from None


def _fix_engine(plan: EnginePlan, log: Log, wait: float):
    logs = state_dir()
    actions: list[str] = []
    if plan.install:
        log("no dockerd here: installing Debian's docker.io (about 15 s)")
        _apt_install(["docker.io"], log, logs / "apt.log")
        actions.append("installed docker.io")
        try:  # its postinst may already have started the engine
            return connect(), actions
        except EngineUnavailable:
            pass
    proc = None
    if plan.start == "systemd":
        _run(["systemctl", "start", "docker"], log, "starting docker", logs / "systemctl.log")
        actions.append("systemctl start docker")
    else:
        dockerd = _find_exe("dockerd")
        if dockerd is None:
            raise EngineUnavailable(f"dockerd is still not installed. To fix: {plan.manual}.")
        log_file = logs / "dockerd.log"
        proc = _start_dockerd(dockerd, log_file)
        log(f"started {dockerd} (pid {proc.pid}, log {log_file}); waiting for it to answer")
        actions.append(f"started dockerd pid {proc.pid}")
    client = _wait_for_engine(proc, wait, logs / ("dockerd.log" if proc else "systemctl.log"))
    return client, actions


def ensure_engine(fix: bool, log: Log = print, wait: float = ENGINE_WAIT):
    """A pinged docker.DockerClient; with ``fix``, start (or install and start) one first.

    Raises EngineUnavailable saying exactly what to run when there is none and it cannot start one.
    """
    return _ensure_engine(fix, log, wait)[0]


def engine_info(client) -> dict:
    v = client.version()
    return {"ok": True, "version": v.get("Version", "?"), "api_version": v.get("ApiVersion"),
            "os": f"{v.get('Os', '?')}/{v.get('Arch', '?')}",
            "address": os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST}


# ---------------------------------------------------------------------------------------------
# Base image

def _split_ref(image: str) -> tuple[str, str]:
    from docker.utils import parse_repository_tag

    repo, tag = parse_repository_tag(image)
    # Without a tag the SDK would pull every tag of the repository.
    return repo, tag or "latest"


def _short(e: Exception, n: int = 200) -> str:
    text = str(getattr(e, "explanation", None) or e).strip().replace("\n", " ")
    return text if len(text) <= n else text[:n] + "..."


def _missing_message(image: str, why: str) -> str:
    head = f"base image {image} missing (not present locally; pull failed: {why})"
    if offline_buildable(image):
        return (f"{head}: run `mlcontainer doctor --fix` to build it offline from Debian "
                f"{OFFLINE_SUITE} packages, or `docker load -i FILE.tar` a copy saved with "
                f"`docker save {image}` where a registry is reachable.")
    xy = DEBIAN_SUITE_PYTHON[OFFLINE_SUITE]
    return (f"{head}. Without a registry it cannot be made here: `docker load -i FILE.tar` a copy "
            f"saved with `docker save {image}` where a registry is reachable, or use `--base` "
            f"with an image that exists locally (python:{xy}-slim can be built offline: "
            f"`mlcontainer doctor --fix --base python:{xy}-slim`).")


def _ensure_base_image(client, image: str, fix: bool, log: Log) -> tuple[str, str]:
    """(image id, "local" | "pulled" | "built") -- see ensure_base_image."""
    import docker.errors
    import requests.exceptions

    try:
        return client.images.get(image).id, "local"
    except docker.errors.ImageNotFound:
        pass
    except docker.errors.APIError as e:
        raise BaseImageMissing(f"cannot inspect base image {image}: {_short(e)}") from None
    repo, tag = _split_ref(image)
    log(f"base image {image} not present; trying to pull it")
    try:
        return client.images.pull(repo, tag=tag).id, "pulled"
    except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
        why = _short(e)
    if fix and offline_buildable(image):
        log(f"pull failed ({why}); building {image} offline from Debian {OFFLINE_SUITE}")
        return build_offline_base(client, image, log), "built"
    raise BaseImageMissing(_missing_message(image, why))


def ensure_base_image(client, image: str, fix: bool, log: Log = print) -> str:
    """The id of ``image``: present locally, else pulled, else (with ``fix``, for Debian
    bookworm's python:3.11-slim only) built offline. Raises BaseImageMissing saying what to do."""
    return _ensure_base_image(client, image, fix, log)[0]


def mount_points_under(mounts_text: str, path: str) -> list[str]:
    """Mount points at or below ``path`` in /proc/self/mounts text, deepest first."""
    points = []
    for line in mounts_text.splitlines():
        fields = line.split()
        if len(fields) > 1:
            # the kernel writes space, tab, newline and backslash as octal escapes (\040)
            points.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1]))
    path = path.rstrip("/") or "/"
    return sorted((p for p in points if p == path or p.startswith(path + "/")), reverse=True)


def _mounts_under(path: str) -> list[str]:
    try:
        with open("/proc/self/mounts") as f:
            text = f.read()
    except OSError:
        return []
    return mount_points_under(text, os.path.realpath(path))


def _remove_rootfs_dir(path: str, log: Log) -> None:
    """Remove the debootstrap temp dir; never recurse into /proc, /sys or /dev mounted inside.

    debootstrap mounts those in the target and unmounts them on exit; a killed run may not.
    """
    for mnt in _mounts_under(path):
        subprocess.run(["umount", "-l", mnt], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    left = _mounts_under(path)
    if left:
        log(f"warning: not removing {path}: still mounted: {', '.join(left)}")
        return
    shutil.rmtree(path, ignore_errors=True)


def _slim_rootfs(rootfs: Path) -> None:
    """Drop what debootstrap leaves that an image does not need (downloaded .debs, apt lists)."""
    for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin",
                    "var/lib/apt/lists/*_*"):
        for p in rootfs.glob(pattern):
            p.unlink()


class _TarStream:
    """Iterate a tar of ``root`` made by GNU tar in chunks; ``close()`` reports tar's failure."""

    def __init__(self, root: Path) -> None:
        self.proc = subprocess.Popen(["tar", "--numeric-owner", "-C", str(root), "-c", "."],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)

    def __iter__(self) -> Iterator[bytes]:
        while True:
            chunk = self.proc.stdout.read(1 << 20)
            if not chunk:
                return
            yield chunk

    def close(self, check: bool = True) -> None:
        self.proc.stdout.close()
        if self.proc.poll() is None and not check:
            self.proc.kill()
        err = self.proc.stderr.read().decode(errors="replace")
        self.proc.stderr.close()
        if self.proc.wait() != 0 and check:
            raise MlcError(f"tar of the rootfs failed: {err.strip()[-500:]}")


def _descendants(client, root_id: str) -> list[str]:
    """Ids of images built on ``root_id`` (classic builder step images), leaves first."""
    children: dict = {}
    for i in client.api.images(all=True):
        children.setdefault(i.get("ParentId") or "", []).append(i["Id"])
    order, todo = [], list(children.get(root_id, []))
    while todo:
        i = todo.pop()
        order.append(i)
        todo.extend(children.get(i, []))
    # A parent is always reached before its children, so reversed is leaves first.
    return order[::-1]


def _remove_images(client, ids: Iterable[str], log: Log) -> None:
    import docker.errors

    for i in ids:
        try:
            client.images.remove(i, force=True, noprune=False)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            log(f"warning: could not remove intermediate image {i[:19]}: {_short(e)}")


def _run_debootstrap(rootfs: Path, suite: str, mirror: str, log: Log, log_file: Path) -> None:
    debootstrap = _find_exe("debootstrap")
    argv = [debootstrap or "debootstrap", "--variant=minbase", suite, str(rootfs), mirror]
    log(f"running: {' '.join(argv)} (about 30 s)")
    seen: set = set()
    with open(log_file, "a") as out:
        out.write(f"\n$ {' '.join(argv)}\n")
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace")
        try:
            for line in proc.stdout:
                out.write(line)
                shown = debootstrap_progress(line, seen)
                if shown:
                    log(f"  debootstrap: {shown}")
            rc = proc.wait()
        finally:
            if proc.poll() is None:
                # SIGTERM lets debootstrap's exit trap unmount /proc and /sys in the target.
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    if rc != 0:
        raise BaseImageMissing(f"debootstrap failed (exit {rc}); last lines of {log_file}:\n"
                               f"{_tail(log_file)}")


def _build(client, dockerfile: str, tag: str, log: Log, log_file: Path) -> str:
    import io

    import docker.errors

    image_id = None
    with open(log_file, "a") as out:
        try:
            for chunk in client.api.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag,
                                          rm=True, forcerm=True, pull=False, decode=True):
                text = chunk.get("stream", "")
                out.write(text)
                if text.startswith("Step "):
                    log(f"  build: {text.strip()}")
                if "error" in chunk:
                    out.write(chunk["error"] + "\n")
                    raise BaseImageMissing(
                        f"building the offline base failed: {chunk['error'].strip()}; last lines "
                        f"of {log_file}:\n{_tail(log_file)}")
                if "aux" in chunk and "ID" in chunk["aux"]:
                    image_id = chunk["aux"]["ID"]
        except docker.errors.APIError as e:
            raise BaseImageMissing(f"building the offline base failed: {_short(e)}") from None
    return image_id or client.images.get(tag).id


def build_offline_base(client, tag: str, log: Log = print, suite: str = OFFLINE_SUITE,
                       mirror: str = DEBIAN_MIRROR) -> str:
    """Build a stand-in for ``python:X.Y-slim`` from Debian packages alone and tag it ``tag``.

    debootstrap a minbase rootfs, import it, add Python on top with the classic builder, label it
    ``org.mlcontainer.offline-base=debian-SUITE``. The temp dir and the imported intermediate
    tag are removed whatever happens; on failure no image of this build stays. Needs root (for
    debootstrap) and a reachable Debian mirror. Returns the image id.
    """
    if suite not in DEBIAN_SUITE_PYTHON:
        raise BaseImageMissing(f"no offline base recipe for Debian {suite}")
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    if not is_root:
        raise BaseImageMissing(
            "building the offline base needs root (debootstrap): run `sudo mlcontainer doctor "
            f"--fix --base {tag}`, or `docker load` a saved image.")
    t0 = time.monotonic()
    logs = state_dir()
    logs.mkdir(parents=True, exist_ok=True)
    log_file = logs / "offline-base.log"
    with open(log_file, "w") as out:
        out.write(f"offline base {tag} from Debian {suite} ({mirror})\n")
    if _find_exe("debootstrap") is None:
        if not _find_exe("apt-get"):
            raise BaseImageMissing("debootstrap is not installed and there is no apt-get to "
                                   "install it: install debootstrap, or `docker load` an image.")
        log("installing debootstrap")
        try:
            _apt_install(["debootstrap"], log, log_file)
        except MlcError as e:
            raise BaseImageMissing(f"could not install debootstrap: {e}") from None

    token = secrets.token_hex(4)
    tmp = tempfile.mkdtemp(prefix="mlc-rootfs-")
    rootfs = Path(tmp) / "rootfs"
    import_repo, import_tag = f"mlc-offline-rootfs-{token}", "import"
    import_ref = f"{import_repo}:{import_tag}"
    ok = False
    try:
        _run_debootstrap(rootfs, suite, mirror, log, log_file)
        log(f"debootstrap done ({time.monotonic() - t0:.0f} s); importing the rootfs")
        _slim_rootfs(rootfs)
        # Updates and security sources, as Debian's own images have (security only where we
        # know where it lives: other mirrors need not carry it).
        sources = f"deb {mirror} {suite} main\ndeb {mirror} {suite}-updates main\n"
        if mirror == DEBIAN_MIRROR:
            sources += f"deb {mirror}-security {suite}-security main\n"
        (rootfs / "etc/apt/sources.list").write_text(sources)
        stream = _TarStream(rootfs)
        try:
            client.api.import_image_from_stream(iter(stream), repository=import_repo,
                                                tag=import_tag, changes=[f"ENV PATH={IMAGE_PATH}"])
        except BaseException:
            stream.close(check=False)  # tar's own complaint would hide the import's error
            raise
        stream.close()
        imported_id = client.images.get(import_ref).id
        _remove_rootfs_dir(tmp, log)  # free the disk before the build
        log(f"imported {imported_id[:19]} ({time.monotonic() - t0:.0f} s); "
            f"installing {' '.join(OFFLINE_PACKAGES)}")
        image_id = _build(client, render_offline_dockerfile(import_ref, suite), tag, log, log_file)
        ok = True
        log(f"built {tag} ({image_id[:19]}) offline in {time.monotonic() - t0:.0f} s")
        return image_id
    except BaseImageMissing:
        raise
    except Exception as e:  # apt/tar (MlcError), the SDK, requests and OS errors alike
        raise BaseImageMissing(f"building the offline base failed: {type(e).__name__}: "
                               f"{_short(e, 2000)}") from None
    finally:
        _remove_rootfs_dir(tmp, log)
        _drop_import(client, import_ref, ok, log)


def _drop_import(client, import_ref: str, build_ok: bool, log: Log) -> None:
    """Remove the imported rootfs image (and, after a failed build, the step images on it)."""
    try:
        imported_id = client.images.get(import_ref).id
    except Exception:  # never imported, or already gone
        return
    if not build_ok:
        _remove_images(client, _descendants(client, imported_id), log)
    # After a good build this only untags: the imported layer is the root of the new image.
    _remove_images(client, [import_ref], log)


# ---------------------------------------------------------------------------------------------
# pip settings

def pip_settings_report(python: str = sys.executable, environ=os.environ) -> dict:
    """Read-only: the host's pip index/cert settings and which of them a container can use."""
    try:
        # The same environment for pip as for the parsing, so that `:env:` entries agree.
        proc = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True,
                              text=True, timeout=60, stdin=subprocess.DEVNULL, env=dict(environ))
        text, error = proc.stdout, None
        if proc.returncode != 0:
            error = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
    except (OSError, subprocess.TimeoutExpired) as e:
        text, error = "", f"{type(e).__name__}: {e}"
    return pip_report_from(text, environ, error)


# ---------------------------------------------------------------------------------------------
# Doctor

def run_doctor(fix: bool, base_image: str | None, log: Log = print) -> dict:
    """Check (and with ``fix`` repair) engine, base image and pip settings; return a report."""
    image = base_image or default_base_image()
    report: dict = {}
    client = None
    try:
        client, actions = _ensure_engine(fix, log)
        report["engine"] = dict(engine_info(client), actions=actions)
    except MlcError as e:
        report["engine"] = {"ok": False, "error": str(e)}
    if client is None:
        report["base_image"] = {"ok": False, "image": image, "skipped": True}
    else:
        try:
            image_id, source = _ensure_base_image(client, image, fix, log)
            try:
                offline = (client.images.get(image_id).labels or {}).get(OFFLINE_LABEL)
            except Exception:  # removed meanwhile by someone else: the check itself passed
                offline = None
            report["base_image"] = {"ok": True, "image": image, "id": image_id,
                                    "source": source, "offline": bool(offline),
                                    "offline_from": offline}
        except MlcError as e:
            report["base_image"] = {"ok": False, "image": image, "error": str(e)}
    report["pip"] = pip_settings_report()
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
