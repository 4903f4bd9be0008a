"""`mlcontainer` with no Docker engine: every verb either works (it needs only the store) or
prints one line that says what to do, and never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mlcontainer_magics.core import runs
from mlcontainer_magics.core.spec import EnvSpec, RunSpec
from mlcontainer_magics.core.store import Store

NOWHERE = "unix:///nowhere/docker.sock"


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "store")
    for sid, code in (("a1b2c3d4e5f6", "print(1)\n"), ("b2c3d4e5f6a1", "print(2)\n")):
        spec = RunSpec(code=code, env_spec=EnvSpec("python:3.11-slim", (), ("six==1.16.0",)))
        s.put(
            dict(
                runs.record_start(spec, sid, {}),
                status="done",
                stdout=code[6:7] + "\n",
                lock=[{"name": "six", "version": "1.16.0", "hashes": ["sha256:" + "0" * 64]}],
                backend="docker",
                target={"engine": NOWHERE},
            )
        )
    return s


def mlcontainer(store, *argv):
    env = dict(os.environ, DOCKER_HOST=NOWHERE, MLCONTAINER_STORE=str(store.root))
    return subprocess.run(
        [sys.executable, "-m", "mlcontainer_magics.frontends.cli", *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["rerun", "a1b2c3d4e5f6"],
        ["rerun", "a1b2c3d4e5f6", "--verify"],
        ["export", "a1b2c3d4e5f6", "{tmp}/out"],
        ["export", "a1b2c3d4e5f6", "{tmp}/out-tar", "--tar"],
        ["prune"],
    ],
)
def test_verbs_that_need_the_engine_say_so_in_one_line(store, tmp_path, argv):
    out = mlcontainer(store, *[a.format(tmp=tmp_path) for a in argv])
    assert out.returncode == 2, out
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlcontainer: "), out.stderr
    assert NOWHERE in lines[0] and "mlcontainer doctor --fix" in lines[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "out-tar").exists()
    assert store.count() == 2  # nothing half-recorded


@pytest.mark.parametrize(
    "argv",
    [
        ["list"],
        ["list", "--json"],
        ["show", "a1b2"],
        ["show", "a1b2", "--json"],
        ["logs", "a1b2"],
        ["diff", "a1b2", "b2c3"],
    ],
)
def test_verbs_of_the_store_alone_work_without_an_engine(store, argv):
    out = mlcontainer(store, *argv)
    assert out.returncode == 0 and out.stdout.strip() and not out.stderr, out


def test_rm_works_without_an_engine(store):
    out = mlcontainer(store, "rm", "b2c3d4e5f6a1")
    assert out.returncode == 0 and "removed b2c3d4e5f6a1" in out.stdout
    assert store.count() == 1


def test_bad_references_are_one_line_too(store):
    for argv in (["show", "nope-nope"], ["rerun", "ffff"], ["rm", "a1b2c3d4e5f6", "nope"]):
        out = mlcontainer(store, *argv)
        assert out.returncode == 2 and "Traceback" not in out.stderr
        assert len(out.stderr.strip().splitlines()) <= 2, (
            out.stderr
        )  # rm adds "Nothing was removed"
    assert store.count() == 2


def test_doctor_reports_the_engine_without_a_traceback(store):
    out = mlcontainer(store, "doctor")
    assert out.returncode != 0 and "Traceback" not in out.stdout + out.stderr
    assert "engine: No Docker engine answers at " + NOWHERE in out.stdout
    assert "To fix:" in out.stdout
