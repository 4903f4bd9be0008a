"""The in-container runner and SIGTERM: a deleted pod, `docker stop`.

A Kubernetes pod has no init process: the runner is PID 1, and PID 1 ignores SIGTERM unless it
handles it, so without a handler a pod deletion waits out the grace period and ends in SIGKILL.
The runner stops the cell on the first SIGTERM (its finally blocks run), says so in one line,
sends no values back and exits with 143; a second SIGTERM ends it whatever the cell does.

The first tests run the runner as a plain process (with its folder somewhere else than /mlc);
the docker ones run it as PID 1 of a container started without an init process, as in a pod.
MLC_TEST_RUNNER=path/to/mlc_runner.py runs them all against another runner (e.g. an older one).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from conftest import NAMESPACE, wait_for
from mlcontainer_magics.runner import (
    MESSAGE_PREFIX,
    ONE_STREAM_ENV,
    PREFIX,
    RUNNER_COMMAND,
    STDERR_MARK,
    runner_source,
)

BASE = "python:3.11-slim"
STOPPED = MESSAGE_PREFIX + "stopped by SIGTERM"
PROMPTLY = 5.0  # seconds from SIGTERM to the end of the process


def runner_bytes() -> bytes:
    path = os.environ.get("MLC_TEST_RUNNER")
    return Path(path).read_bytes() if path else runner_source()


# == the runner as a process ======================================================================


class Runner:
    """``python runner.py`` on a folder laid out as /mlc is, its streams read as they come."""

    def __init__(self, folder: Path, cell: str, outputs=(), env=None):
        source = runner_bytes()
        assert source.count(b'MLC = "/mlc"') == 1
        here = f"MLC = {json.dumps(str(folder))}".encode()
        (folder / "runner.py").write_bytes(source.replace(b'MLC = "/mlc"', here))
        (folder / "cell.py").write_text(cell, encoding="utf-8")
        host = {"python": "{}.{}".format(*sys.version_info[:2])}
        manifest = {"inputs": {}, "outputs": list(outputs), "host": host}
        (folder / "manifest.json").write_text(json.dumps(manifest))
        (folder / "out").mkdir()
        self.out_dir = folder / "out"
        self.proc = subprocess.Popen(
            [sys.executable, str(folder / "runner.py")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=folder,
            env={
                **os.environ,
                "PYTHONUNBUFFERED": "1",
                "PYTHONDONTWRITEBYTECODE": "1",
                **(env or {}),
            },
        )
        self._chunks: dict[str, list[bytes]] = {"out": [], "err": []}
        self._readers = [
            threading.Thread(target=self._read, args=(stream, self._chunks[name]), daemon=True)
            for name, stream in (("out", self.proc.stdout), ("err", self.proc.stderr))
        ]
        for t in self._readers:
            t.start()

    @staticmethod
    def _read(stream, chunks):
        for line in iter(stream.readline, b""):
            chunks.append(line)

    @property
    def stdout(self) -> str:
        return b"".join(self._chunks["out"]).decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        return b"".join(self._chunks["err"]).decode("utf-8", "replace")

    def wait_for_output(self, text: str, timeout: float = 30.0) -> None:
        if not wait_for(lambda: text in self.stdout or self.proc.poll() is not None, timeout):
            pytest.fail(f"no {text!r} in {timeout} s")
        assert text in self.stdout, (self.stdout, self.stderr)

    def signal(self, sig=signal.SIGTERM) -> float:
        self.proc.send_signal(sig)
        return time.monotonic()

    def wait(self, since: float, timeout: float = PROMPTLY) -> tuple[int, float]:
        """(exit status, seconds since ``since``); the process is killed if it goes on."""
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"the runner still ran {timeout} s after the signal:\n{self.stderr}")
        for t in self._readers:
            t.join(5)
        return code, time.monotonic() - since

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            stream.close()


@pytest.fixture
def start(tmp_path):
    made = []

    def start(cell, **kwargs):
        folder = tmp_path / f"run{len(made)}"
        folder.mkdir()
        made.append(Runner(folder, cell, **kwargs))
        return made[-1]

    yield start
    for runner in made:
        runner.close()


SLEEP_WITH_CLEANUP = (
    "import time\nx = 1\n"
    "try:\n    print('started', flush=True)\n    time.sleep(600)\n"
    "finally:\n    print('cleaned up', flush=True)\n"
)


def test_sigterm_stops_the_cell_runs_its_finally_and_exits_143(start):
    run = start(SLEEP_WITH_CLEANUP, outputs=["x"])
    run.wait_for_output("started")
    code, took = run.wait(run.signal())
    assert code == 143, run.stderr
    assert took < PROMPTLY
    assert "cleaned up" in run.stdout  # the cell's finally block ran
    assert run.stderr.strip() == STOPPED  # one line, no traceback
    assert sorted(p.name for p in run.out_dir.iterdir()) == []  # no values go back


def test_sigterm_in_one_stream_mode_says_so_in_a_marked_line(start):
    run = start(SLEEP_WITH_CLEANUP, outputs=["x"], env={ONE_STREAM_ENV: "1"})
    run.wait_for_output("started")
    code, _ = run.wait(run.signal())
    assert code == 143
    # The line, marked as stderr; the only marked line: no --out values are offered either.
    # (split, not splitlines(): the marks hold \x1e, a line boundary to splitlines)
    assert [line for line in run.stdout.split("\n") if line.startswith(PREFIX)] == [
        STDERR_MARK + json.dumps(STOPPED + "\n")
    ]
    assert run.stdout.index("cleaned up") < run.stdout.index(STDERR_MARK)
    assert run.stderr == ""


def test_a_second_sigterm_ends_a_cell_that_swallowed_the_first(start):
    run = start(
        "import time\nprint('started', flush=True)\n"
        "try:\n    time.sleep(600)\n"
        "except BaseException:\n    print('swallowed', flush=True)\n    time.sleep(600)\n"
    )
    run.wait_for_output("started")
    run.signal()
    run.wait_for_output("swallowed", timeout=PROMPTLY)
    time.sleep(0.3)
    assert run.proc.poll() is None  # the cell goes on, as it asked
    code, took = run.wait(run.signal())
    assert code == 143
    assert took < PROMPTLY
    assert run.stderr.strip() == STOPPED


def test_a_cell_that_swallows_sigterm_and_finishes_still_sends_no_values(start):
    run = start(
        "import time\nprint('started', flush=True)\n"
        "try:\n    time.sleep(600)\nexcept BaseException:\n    pass\nx = 1\n",
        outputs=["x"],
    )
    run.wait_for_output("started")
    code, _ = run.wait(run.signal())
    assert code == 143
    assert run.stderr.strip() == STOPPED
    assert list(run.out_dir.iterdir()) == []


def test_a_non_daemon_thread_of_the_cell_does_not_keep_it_alive_after_sigterm(start):
    run = start(
        "import threading, time\n"
        "threading.Thread(target=time.sleep, args=(600,)).start()\n"
        "print('started', flush=True)\ntime.sleep(600)\n"
    )
    run.wait_for_output("started")
    code, took = run.wait(run.signal(), timeout=PROMPTLY + 5)
    assert code == 143
    assert took < PROMPTLY
    assert run.stderr.strip() == STOPPED

    # The cell is over, its values are back, the process waits for the thread: SIGTERM then.
    run = start(
        "import threading, time\n"
        "threading.Thread(target=time.sleep, args=(600,)).start()\n"
        "x = 1\nprint('started', flush=True)\n",
        outputs=["x"],
    )
    run.wait_for_output("started")
    assert wait_for(lambda: (run.out_dir / "outputs.json").exists(), 10)
    time.sleep(0.3)
    code, took = run.wait(run.signal())
    assert code == 143
    assert took < PROMPTLY
    assert run.stderr.strip() == STOPPED  # and no "Exception ignored in threading"


def test_sigint_and_the_cells_own_errors_are_unchanged(start):
    run = start("import time\nprint('started', flush=True)\ntime.sleep(600)\n")
    run.wait_for_output("started")
    code, _ = run.wait(run.signal(signal.SIGINT))
    assert code == 130
    assert "KeyboardInterrupt" in run.stderr and "stopped by SIGTERM" not in run.stderr

    run = start("x = 1\n1 / 0\n", outputs=["x"])
    code, _ = run.wait(time.monotonic(), timeout=30)
    assert code == 1
    assert "ZeroDivisionError" in run.stderr and "mlc_runner" not in run.stderr
    assert 'File "' in run.stderr and "cell.py" in run.stderr

    run = start("x = {'a': 1}\nprint('done')\n", outputs=["x"])
    code, _ = run.wait(time.monotonic(), timeout=30)
    assert code == 0, run.stderr
    assert json.loads((run.out_dir / "outputs.json").read_text())["x"]["format"] == "json"


# == the runner as PID 1 of a container without init, as in a Kubernetes pod =====================


@pytest.fixture
def pid1(docker_client, no_leaks):
    """Starts the runner on a cell the way the Docker backend does, but with no init process."""
    from mlcontainer_magics.backends.docker.backend import DockerBackend
    from mlcontainer_magics.core.runs import prepare_workdir
    from mlcontainer_magics.core.spec import EnvSpec, RunSpec

    backend = DockerBackend(client=docker_client, namespace=NAMESPACE)
    made = []

    def start(code):
        spec = RunSpec(code, EnvSpec(BASE))
        workdir, _ = prepare_workdir(spec, {})
        made.append(workdir)
        (workdir / "runner.py").write_bytes(runner_bytes())
        opts = backend._container_options(spec, f"sigterm-{uuid.uuid4().hex[:8]}", workdir)
        assert opts["init"] is True  # what the backend does: this test takes it away
        opts["init"] = False
        container = docker_client.containers.create(BASE, list(RUNNER_COMMAND), **opts)
        made.append(container)
        container.start()
        if not wait_for(lambda: b"started" in container.logs(stdout=True, stderr=False)):
            pytest.fail(f"the cell never started: {container.logs().decode()}")
        return container

    yield start
    for thing in made:
        if isinstance(thing, Path):
            shutil.rmtree(thing, ignore_errors=True)
        else:
            thing.remove(force=True, v=True)


def _state(container) -> dict:
    container.reload()
    return container.attrs["State"]


def _stderr(container) -> str:
    return container.logs(stdout=False, stderr=True).decode("utf-8", "replace")


@pytest.mark.docker
def test_docker_stop_ends_the_runner_as_pid_1_at_once(pid1):
    container = pid1("import time\nprint('started', flush=True)\ntime.sleep(600)")
    t0 = time.monotonic()
    container.stop(timeout=30)
    took = time.monotonic() - t0
    state = _state(container)
    assert (state["ExitCode"], state["OOMKilled"]) == (143, False), _stderr(container)
    assert took < PROMPTLY
    assert _stderr(container).strip() == STOPPED


@pytest.mark.docker
def test_a_second_sigterm_ends_the_runner_as_pid_1_that_swallowed_the_first(pid1):
    container = pid1(
        "import time\nprint('started', flush=True)\n"
        "try:\n    time.sleep(600)\n"
        "except BaseException:\n    print('swallowed', flush=True)\n    time.sleep(600)\n"
    )
    container.kill(signal="SIGTERM")
    assert wait_for(lambda: b"swallowed" in container.logs(stdout=True, stderr=False), PROMPTLY)
    time.sleep(0.3)
    assert _state(container)["Running"]  # the cell goes on, as it asked
    t0 = time.monotonic()
    container.kill(signal="SIGTERM")
    assert container.wait(timeout=PROMPTLY)["StatusCode"] == 143
    assert time.monotonic() - t0 < PROMPTLY
    assert _stderr(container).strip() == STOPPED
