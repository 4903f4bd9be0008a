"""A Docker engine on this host: find dockerd, install Debian's docker.io (as root), start it
detached (or through systemd) and wait until it answers; else say exactly what to run."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ...backends.docker.engine import DEFAULT_HOST, address, connect, engine_errors
from ...errors import EngineUnavailable, MlcError
from .host import Log, apt_install, find_exe, is_root, run, state_dir, tail

ENGINE_WAIT = 60.0

# dockerd processes this interpreter started; kept referenced so that they are not reaped (and
# warned about) by the garbage collector while they keep serving.
_started: list[subprocess.Popen] = []


@dataclass(frozen=True)
class HostFacts:
    """What decides how an engine can be had on this host (gathered by ``host_facts()``)."""

    dockerd: str | None = None  # path of an installed dockerd
    is_root: bool = False
    apt_get: str | None = None  # path of apt-get
    debian: bool = False  # /etc/debian_version exists (Debian, Ubuntu, ...)
    systemd: bool = False  # systemd is PID 1 and systemctl exists
    docker_host: str | None = None  # $DOCKER_HOST


@dataclass(frozen=True)
class EnginePlan:
    """What ``ensure_engine(fix=True)`` would do, and what to tell a user who fixes it by hand."""

    install: bool  # apt-get install docker.io first
    start: str  # "dockerd" | "systemd" | "" (cannot start one)
    manual: str  # the exact commands for a person to run


def plan_engine(f: HostFacts) -> EnginePlan:
    """Decide how to get an engine, given the host's facts and that none answers now."""
    if f.docker_host and f.docker_host != DEFAULT_HOST:
        # Starting a local daemon would not make the engine the user points at answer.
        return EnginePlan(
            False,
            "",
            (
                f"DOCKER_HOST={f.docker_host} does not answer: start the engine there, or unset "
                "DOCKER_HOST to use a local one."
            ),
        )
    sudo = "" if f.is_root else "sudo "
    start_cmd = (
        f"{sudo}systemctl start docker"
        if f.systemd
        else f"{sudo}setsid dockerd </dev/null >dockerd.log 2>&1 &"
    )
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
            return EnginePlan(
                True,
                "systemd" if f.systemd else "dockerd",
                f"run `mlcontainer doctor --fix`, or {manual}",
            )
        return EnginePlan(False, "", manual)
    return EnginePlan(
        False,
        "",
        (
            "install Docker Engine (https://docs.docker.com/engine/install/) or Docker Desktop and "
            "start it"
        ),
    )


def host_facts() -> HostFacts:
    return HostFacts(
        dockerd=find_exe("dockerd"),
        is_root=is_root(),
        apt_get=find_exe("apt-get"),
        debian=os.path.exists("/etc/debian_version"),
        systemd=os.path.isdir("/run/systemd/system") and find_exe("systemctl") is not None,
        docker_host=os.environ.get("DOCKER_HOST") or None,
    )


def _start_dockerd(dockerd: str, log_file: Path) -> subprocess.Popen:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as out:
        # Own session, no terminal, stdin closed: it outlives this process and the notebook.
        proc = subprocess.Popen(
            [dockerd],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
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
                    f"of {log_file}:\n{tail(log_file)}"
                ) from None
        if time.monotonic() > deadline:
            pid = f" (pid {proc.pid}, still running)" if proc is not None else ""
            raise EngineUnavailable(
                f"Docker engine started{pid} but did not answer within {wait:.0f} s; see {log_file}"
            ) from None
        time.sleep(0.5)


def obtain_engine(fix: bool, log: Log, wait: float = ENGINE_WAIT):
    """(client, actions taken) -- see ensure_engine."""
    try:
        return connect(), []
    except EngineUnavailable:
        pass
    plan = plan_engine(host_facts())
    if not fix or not plan.start:
        raise EngineUnavailable(f"No Docker engine answers at {address()}. To fix: {plan.manual}.")
    try:
        return _fix_engine(plan, log, wait)
    except EngineUnavailable:
        raise
    except (MlcError, OSError) as e:  # apt-get, systemctl or Popen failed
        raise EngineUnavailable(
            f"Could not start a Docker engine: {e}\nTo fix by hand: {plan.manual}."
        ) from None


def _fix_engine(plan: EnginePlan, log: Log, wait: float):
    logs = state_dir()
    actions: list[str] = []
    if plan.install:
        log("no dockerd here: installing Debian's docker.io (about 15 s)")
        apt_install(["docker.io"], log, logs / "apt.log")
        actions.append("installed docker.io")
        try:  # its postinst may already have started the engine
            return connect(), actions
        except EngineUnavailable:
            pass
    proc = None
    if plan.start == "systemd":
        run(["systemctl", "start", "docker"], log, "starting docker", logs / "systemctl.log")
        actions.append("systemctl start docker")
    else:
        dockerd = find_exe("dockerd")
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
    return obtain_engine(fix, log, wait)[0]


def engine_info(client) -> dict:
    with engine_errors("reporting its version"):
        v = client.version()
    return {
        "ok": True,
        "version": v.get("Version", "?"),
        "api_version": v.get("ApiVersion"),
        "os": f"{v.get('Os', '?')}/{v.get('Arch', '?')}",
        "address": address(),
    }
