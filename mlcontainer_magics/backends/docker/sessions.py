"""Warm sessions: one container per session name that keeps its interpreter between cells.

The session's runner listens on a Unix socket inside the session's own folder (bind-mounted at
/mlc), so a warm cell costs a socket round trip and no Docker API call. State (a loaded model, a
dataset in memory) persists, like a remote kernel, until `%container stop NAME` or the kernel ends.
"""

from __future__ import annotations

import atexit
import json
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...core.backend import Environment, RunResult, WarmSessions
from ...core.events import Events, Output, Phase, no_events
from ...errors import RunError, SpecError
from ...runner import MARK, MLC_DIR, runner_source

SOCKET = "io/session.sock"


@dataclass
class Session:
    name: str
    env_key: str  # image id + limits: a cell asking for another environment is refused
    folder: Path
    container: Any  # a docker Container
    cells: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class SessionPool(WarmSessions):
    """The sessions of one kernel. The Docker backend makes their containers."""

    def __init__(self, backend) -> None:
        self.backend = backend
        self.sessions: dict[str, Session] = {}
        atexit.register(self.stop_all)

    def workdir_parent(self, spec, env: Environment, events) -> Path:
        return self.ensure(spec, env, events).folder / "io"

    def names(self) -> list[str]:
        return list(self.sessions)

    def run(
        self,
        spec,
        env: Environment,
        workdir: Path,
        *,
        run_id: str,
        events: Events = no_events,
        output: Output | None = None,
        secrets: Mapping[str, str] | None = None,  # refused before a session runs a cell
    ) -> RunResult:
        """Run one cell whose files are in ``workdir``, inside the session's folder."""
        session = self.ensure(spec, env, events)
        with session.lock:
            session.cells += 1
            events(Phase.RUNNING, container=session.container.id[:12], session=session.name)
            return self._send(session, spec, workdir, output or (lambda stream, text: None))

    def ensure(self, spec, env: Environment, events) -> Session:
        """The running session for spec.session, started now if there is none."""
        key = _env_key(spec, env)
        session = self.sessions.get(spec.session)
        if session is not None and not self.backend.container_running(session.container):
            self._drop(session)
            session = None
        if session is not None:
            if session.env_key != key:
                raise SpecError(
                    f"Session {spec.session!r} runs another environment or other limits; "
                    f"stop it first (`%container stop {spec.session}`) or pick another name."
                )
            return session
        events(Phase.STARTING, session=spec.session)
        folder = Path(tempfile.mkdtemp(prefix=f"mlc-session-{spec.session}-"))
        folder.chmod(0o711)  # the container's user traverses it; nobody else lists it
        (folder / "runner.py").write_bytes(runner_source())
        (folder / "io").mkdir()
        (folder / "io").chmod(0o777)
        try:
            container = self.backend.start_session(spec, env, folder)
            _wait_for(folder / SOCKET, container, self.backend)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        session = Session(spec.session, key, folder, container)
        self.sessions[spec.session] = session
        return session

    def _send(self, session: Session, spec, workdir: Path, output) -> RunResult:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stdout: list[str] = []
        stderr: list[str] = []
        reason, code = "failed", None
        try:
            sock.connect(str(session.folder / SOCKET))
            sock.sendall((json.dumps({"dir": f"{MLC_DIR}/io/{workdir.name}"}) + "\n").encode())
            sock.settimeout(spec.timeout)
            reader = _LineReader(sock)
            deadline_hit = False
            while True:
                try:
                    line = reader.readline()
                except socket.timeout:
                    # Like a kernel: interrupt the cell, keep the session.
                    deadline_hit = True
                    self.backend.signal(session.container, "SIGINT")
                    sock.settimeout(10)
                    continue
                except KeyboardInterrupt:
                    self.backend.signal(session.container, "SIGINT")
                    raise
                if not line:
                    break
                frame = json.loads(line)
                if "exit" in frame:
                    code = frame["exit"]
                    reason = (
                        "timeout"
                        if deadline_hit
                        else ("done" if code == 0 else "interrupted" if code == 130 else "failed")
                    )
                    break
                if "d" in frame:
                    text = MARK + json.dumps({"data": frame["d"]}) + "\n"
                    stdout.append(text)
                    output("stdout", text)
                else:
                    (stdout if frame["s"] == "stdout" else stderr).append(frame["t"])
                    output(frame["s"], frame["t"])
        except OSError as e:
            raise RunError(
                f"Session {session.name!r} cannot be reached ({e}); "
                f"stop it with `%container stop {session.name}` and rerun."
            ) from None
        finally:
            sock.close()
        if code is None:  # the interpreter died: out of memory, or killed
            state = self.backend.container_state(session.container, wait=10)
            reason = "oom" if state.get("OOMKilled") else "killed"
            code = state.get("ExitCode")
            self._drop(session)
        return RunResult(code, reason, "".join(stdout), "".join(stderr), session.container.id)

    def stop(self, name: str) -> bool:
        session = self.sessions.get(name)
        if session is None:
            return False
        self._drop(session)
        return True

    def stop_all(self) -> None:
        for session in list(self.sessions.values()):
            self._drop(session)

    def _drop(self, session: Session) -> None:
        self.sessions.pop(session.name, None)
        self.backend.remove_container(session.container)
        shutil.rmtree(session.folder, ignore_errors=True)


class _LineReader:
    """Lines from a socket. Unlike a file object or a generator, it survives a timeout:
    the next call reads on from where it was."""

    def __init__(self, sock) -> None:
        self.sock, self.pending = sock, b""

    def readline(self) -> str:
        while b"\n" not in self.pending:
            chunk = self.sock.recv(65536)
            if not chunk:
                line, self.pending = self.pending, b""
                return line.decode("utf-8", "replace")
            self.pending += chunk
        line, _, self.pending = self.pending.partition(b"\n")
        return line.decode("utf-8", "replace") + "\n"


def _env_key(spec, env: Environment) -> str:
    return json.dumps(
        [env.image_id, spec.cpus, spec.memory, spec.gpus, spec.network, sorted(spec.env)]
    )


def _wait_for(path: Path, container, backend, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if not backend.container_running(container):
            logs = backend.container_logs(container)
            raise RunError(f"The session container exited while starting:\n{logs}")
        if time.monotonic() > deadline:
            raise RunError("The session container did not start within 30 s.")
        time.sleep(0.02)
