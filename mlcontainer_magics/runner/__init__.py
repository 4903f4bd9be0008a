"""The program that runs inside the container (``mlc_runner.py``, standard library only), and
the protocol the host speaks with it: defined once, in the runner, and re-exported here.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import mlc_runner
from .mlc_runner import (
    BODY_TYPES,
    COLLECT_WAIT_ENV,
    COLLECTED,
    CONTAINER_PORT,
    DEFAULT_ENTRY,
    END_MARK,
    INDEX_ENV,
    JOB_INDEX_ENV,
    MARK,
    MESSAGE_PREFIX,
    MLC,
    ONE_STREAM_ENV,
    OUT,
    OUTPUTS_MARK,
    PREFIX,
    SERVING_MARK,
    STDERR_MARK,
    UNIX_PREFIX,
    VALUES_EXIT,
)

RUNNER_PATH = Path(__file__).with_name("mlc_runner.py")
MLC_DIR = MLC  # where the run's folder is mounted in the container
OUT_DIR = OUT  # the cell's --out values, in files
RUNNER_COMMAND = ("python", f"{MLC}/runner.py")
SERVE_PORT = CONTAINER_PORT  # the port a service listens on in its container
SERVE_COMMAND = (*RUNNER_COMMAND, "--http", str(SERVE_PORT))  # prints SERVING_MARK when ready
# A service without a network (--network none) serves on a Unix socket in its out/ folder
# instead (writable by the container's user; a service has no --out), reached from the host.
SERVE_SOCKET = f"{OUT}/serve.sock"
SERVE_SOCKET_COMMAND = (*RUNNER_COMMAND, "--http", f"{UNIX_PREFIX}{SERVE_SOCKET}")
RUN_USER = "1000:1000"  # the unprivileged user cells run as, in every backend
WORK_DIR = "/work"  # the cell's working directory: the notebook's folder, as far as mounted
SECRETS_DIR = "/run/secrets"  # --secret NAME is also the file SECRETS_DIR/NAME
# The environment every run's container starts with, whichever backend (or export) runs it.
CONTAINER_ENV = {
    "PYTHONUNBUFFERED": "1",
    "HOME": "/tmp",
    "MPLBACKEND": "Agg",
    "PYTHONDONTWRITEBYTECODE": "1",
}

__all__ = [
    "BODY_TYPES",
    "COLLECTED",
    "COLLECT_WAIT_ENV",
    "CONTAINER_ENV",
    "DEFAULT_ENTRY",
    "END_MARK",
    "INDEX_ENV",
    "JOB_INDEX_ENV",
    "MARK",
    "MESSAGE_PREFIX",
    "MLC_DIR",
    "ONE_STREAM_ENV",
    "OUTPUTS_MARK",
    "OUT_DIR",
    "PREFIX",
    "RUNNER_COMMAND",
    "RUN_USER",
    "SECRETS_DIR",
    "SERVE_COMMAND",
    "SERVE_PORT",
    "SERVE_SOCKET",
    "SERVE_SOCKET_COMMAND",
    "SERVING_MARK",
    "STDERR_MARK",
    "VALUES_EXIT",
    "WORK_DIR",
    "mlc_runner",
    "runner_source",
    "serving_line",
]


def runner_source() -> bytes:
    return RUNNER_PATH.read_bytes()


def serving_line(stdout: str) -> dict | None:
    """What a service's serving line says ({"port", "entry", "signature"}; on a Unix socket
    "port" None and "socket" its path), if ``stdout`` (its output so far) has it: the server
    is ready then."""
    # split, not splitlines(): the marks hold \x1e, a line boundary to splitlines; the last
    # piece is a line still being written
    for line in stdout.split("\n")[:-1]:
        if line.startswith(SERVING_MARK):
            return json.loads(line[len(SERVING_MARK) :])
    return None
