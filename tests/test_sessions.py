"""Warm sessions: state persists between cells; stop, kernel end and death leave nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from mlcontainer_magics.errors import MlcError, RunError, SpecError

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("no_leaks")]


def sessions_of(docker_client, namespace):
    return docker_client.containers.list(
        all=True,
        filters={
            "label": [f"org.mlcontainer.namespace={namespace}", "org.mlcontainer.role=session"]
        },
    )


def test_state_persists_between_cells_until_stopped(ip, capsys, docker_client, namespace):
    ip.run_cell_magic(
        "containerize",
        "--session s1 -n load",
        "import os\nmodel = {'w': 41}\npid = os.getpid()\nprint('loaded')",
    )
    ip.run_cell_magic(
        "containerize",
        "--session s1 --out w,same",
        "model['w'] += 1\nw = model['w']\nsame = os.getpid() == pid",
    )
    assert ip.user_ns["w"] == 42 and ip.user_ns["same"] is True
    assert len(sessions_of(docker_client, namespace)) == 1
    magics = ip.magics_manager.registry["ContainerizeMagics"]
    records = magics.store.list(limit=2)
    assert [r["session"] for r in records] == ["s1", "s1"]  # one snapshot per cell
    ip.run_line_magic("container", "stop s1")
    assert sessions_of(docker_client, namespace) == []
    with pytest.raises(MlcError, match="No session 's1'"):
        ip.run_line_magic("container", "stop s1")
    ip.run_cell_magic("containerize", "--session s1", "print('model' in dir())")
    assert "\nFalse\n" in capsys.readouterr().out  # a new session starts fresh
    ip.run_line_magic("container", "stop s1")


def test_errors_and_timeouts_keep_the_session(ip, capsys):
    ip.run_cell_magic("containerize", "--session s2", "x = 1")
    with pytest.raises(RunError, match="failed"):
        ip.run_cell_magic("containerize", "--session s2", "raise ValueError('no')")
    with pytest.raises(RunError, match="--timeout"):
        ip.run_cell_magic("containerize", "--session s2 --timeout 1", "import time\ntime.sleep(30)")
    ip.run_cell_magic("containerize", "--session s2", "print('x is', x)")
    assert "x is 1" in capsys.readouterr().out
    ip.run_line_magic("container", "stop s2")


def test_another_environment_in_a_session_is_refused(ip):
    ip.run_cell_magic("containerize", "--session s3", "pass")
    try:
        with pytest.raises(SpecError, match="stop it first"):
            ip.run_cell_magic("containerize", "--session s3 --memory 64m", "pass")
    finally:
        ip.run_line_magic("container", "stop s3")


def test_out_of_memory_ends_the_session_clearly(ip, docker_client, namespace):
    with pytest.raises(RunError, match="Out of memory"):
        ip.run_cell_magic("containerize", "--session s4 --memory 32m", "x = bytearray(200 * 2**20)")
    assert sessions_of(docker_client, namespace) == []


KERNEL = textwrap.dedent("""
    from IPython.testing.globalipapp import get_ipython
    ip = get_ipython()
    ip.run_line_magic("load_ext", "mlcontainer_magics")
    ip.run_cell_magic("containerize", "--session s5", "print('up', flush=True)")
    print("READY", flush=True)
    {end}
""")


def test_sessions_stop_when_the_kernel_ends(docker_client, namespace):
    proc = subprocess.run(
        [sys.executable, "-c", KERNEL.format(end="")],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
    )
    assert "READY" in proc.stdout, proc.stderr
    assert sessions_of(docker_client, namespace) == []


def test_a_killed_kernels_session_is_pruned(docker_client, namespace, tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-c", KERNEL.format(end="import time; time.sleep(600)")],
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    try:
        for line in proc.stdout:  # status lines first, then the cell's output
            if line.strip() in ("up", "READY"):
                break
        for _ in range(100):
            if sessions_of(docker_client, namespace):
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert len(sessions_of(docker_client, namespace)) == 1  # orphaned by the dead kernel
        out = subprocess.run(
            [sys.executable, "-m", "mlcontainer_magics.frontends.cli", "prune"],
            capture_output=True,
            text=True,
            env=os.environ.copy(),
            timeout=120,
        )
        assert "removed container" in out.stdout, out.stderr
        assert sessions_of(docker_client, namespace) == []
    finally:
        proc.kill()
