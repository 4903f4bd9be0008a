"""Reliability against the real engine: bad input, faults, concurrency.

Each bad input must fail with one message that says what to do, and leave nothing behind that
should not be there: no container, build volume, environment image, snapshot or run folder.
Cases marked xfail(strict) would be known bugs in files being edited elsewhere; their reasons
say what is wrong.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import types
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from IPython.core.error import UsageError

from conftest import NAMESPACE, STORE, env_images, wait_for
from mlcontainer_magics.errors import (
    BaseImageMissing,
    BuildError,
    EngineUnavailable,
    MlcError,
    RunError,
    SpecError,
    StoreError,
)

pytestmark = [pytest.mark.docker]

LABEL = "org.mlcontainer"
BASE = "python:3.11-slim"
ROOT = Path(__file__).resolve().parents[1]
SIX = "six==1.16.0"  # the environment most tests of the session already built


def magics(ip):
    return ip.magics_manager.registry["ContainerizeMagics"]


def run(ip, line, cell):
    ip.run_cell_magic("containerize", line, cell)


def containers(client, namespace=NAMESPACE, role=None, all=True):
    labels = [f"{LABEL}.namespace={namespace}"] + ([f"{LABEL}.role={role}"] if role else [])
    return client.containers.list(all=all, filters={"label": labels})


def cli(*argv, env=None, timeout=120):
    """`mlcontainer ARGV` in a fresh process, as a terminal would run it."""
    return subprocess.run(
        [sys.executable, "-m", "mlcontainer_magics.frontends.cli", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def host_tmp(monkeypatch):
    """Runs make their folders (mounted at /mlc) here; the test fails if one is left."""
    folder = Path(tempfile.mkdtemp(prefix="mlcrel-host-"))
    folder.chmod(0o755)  # the container's user traverses it to /mlc
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    monkeypatch.setenv("MLCONTAINER_RUN_DIR", str(folder))  # not /dev/shm: here, to be checked
    yield folder
    for thread in threading.enumerate():
        if thread.name == "mlcontainer-cleanup":  # run folders are removed on another thread
            thread.join(30)
    left = sorted(p.name for p in folder.iterdir())
    shutil.rmtree(folder, ignore_errors=True)
    assert not left, f"run folders left on the host: {left}"


@pytest.fixture(scope="module")
def six_env(docker_client):
    """The six environment, built once (most sessions have it already)."""
    from mlcontainer_magics.backends.docker.backend import DockerBackend
    from mlcontainer_magics.core.spec import EnvSpec

    return DockerBackend(namespace=NAMESPACE).ensure_environment(EnvSpec(BASE, (), (SIX,)))


# == 1. Bad input =================================================================================


@dataclass
class Case:
    line: str
    cell: str = "pass"
    error: type = UsageError
    words: str = ""  # a regex: what went wrong and what to do
    snapshots: int = 0  # a run that reached its container is recorded, as failed
    absent: tuple = ()  # text the message must not show (a password)
    main: dict = field(default_factory=dict)  # the notebook's __main__ module, as in a kernel
    gpu: bool = False  # assumes an engine without GPUs


def case(id, *args, xfail=None, **kwargs):
    marks = [pytest.mark.xfail(reason=xfail, strict=True)] if xfail else []
    return pytest.param(Case(*args, **kwargs), id=id, marks=marks)


BAD_INPUT = [
    # -- flags --------------------------------------------------------------------------------
    case("unknown-flag", "--no-such-flag", words=r"unrecognized arguments: --no-such-flag"),
    case("unknown-flag-points-to-help", "--no-such-flag", words=r"%%containerize\?"),
    case("flag-without-value", "--memory", words=r"--memory: expected one argument"),
    case("unclosed-quote", "-n 'oops", words=r"Cannot parse the options: No closing quotation"),
    case("memory-word", "--memory lots", words=r"--memory 'lots' is not a size; use .*512m or 2g"),
    case("memory-below-docker-minimum", "--memory 1m", words=r"minimum of 6m; use at least 6m"),
    case("cpus-negative", "--cpus -1", words=r"--cpus '-1' must be a positive number of CPUs"),
    case("cpus-word", "--cpus two", words=r"--cpus 'two' is not a number; use for example 0.5"),
    # Was accepted: 1e-9 CPUs rounds to 0 nanoCPUs, which Docker takes as no limit at all.
    case(
        "cpus-rounding-to-no-limit",
        "--cpus 0.000000001",
        words=r"below Docker's minimum of 0.01; use at least 0.01",
    ),
    case(
        "cpus-more-than-the-engine-has",
        "--cpus 1000",
        error=RunError,
        words=r"engine refused the run: Range of CPUs is from 0.01 to",
        snapshots=1,
    ),
    case("timeout-zero", "--timeout 0", words=r"--timeout '0' must be a positive number of sec"),
    case("timeout-nan", "--timeout nan", words=r"must be a positive number of seconds"),
    # Was accepted: the timer thread overflowed and the run went on with no timeout at all.
    case("timeout-overflowing-the-timer", "--timeout 1e20", words=r"too long; use at most"),
    case("gpus-zero", "--gpus 0", words=r"--gpus '0': use 'all' or a positive number of GPUs"),
    # Was a bare ValueError: '²'.isdigit() is true, int('²') fails.
    case("gpus-superscript-digit", "--gpus ²", words=r"use 'all' or a positive number of GPUs"),
    case(
        "gpus-on-an-engine-without-gpus",
        "--gpus 1",
        error=RunError,
        words=r"GPU.*(--gpus|NVIDIA|toolkit)",
        snapshots=1,
        gpu=True,
    ),
    case("network-host", "--network host", words=r"--network 'host': use one of bridge, none"),
    case(
        "network-of-another-container", "--network container:abc", words=r"use one of bridge, none"
    ),
    # -- requirements -------------------------------------------------------------------------
    case("requirement-invalid", "-r numpy==", words=r"Invalid requirement 'numpy=='.*PEP 508"),
    case("requirement-with-shell", "-r 'six; rm -rf /'", words=r"Invalid requirement.*PEP 508"),
    case(
        "requirement-local-path",
        "-r 'pkg @ file:///tmp/pkg'",
        words=r"cannot reach; use a package name with a version",
    ),
    # Was accepted: the password was kept in the snapshot and in the image's labels.
    case(
        "requirement-url-with-credentials",
        "-r 'six @ https://me:hunter2@files.example/six-1.16.0-py2.py3-none-any.whl'",
        words=r"credentials in its URL.*pip config",
        absent=("hunter2",),
    ),
    case(
        "requirement-twice", "-r six==1.16.0 six==1.15.0", words=r"six is required twice.*keep one"
    ),
    # Was accepted: foo__bar and foo.bar are one project (PEP 503) but were not compared so.
    case(
        "requirement-twice-spelled-differently",
        "-r Foo__Bar==1.0 foo.bar==2.0",
        words=r"required twice.*keep one",
    ),
    case(
        "requirements-file-missing",
        "-f {tmp}/nope.txt",
        words=r"Cannot read requirements file .*nope.txt",
    ),
    case(
        "requirements-file-with-pip-option",
        "-f {tmp}/options.txt",
        words=r"options.txt, line 1: pip options \(--extra-index-url\) are not supported",
    ),
    case(
        "requirements-file-not-text", "-f {tmp}/binary.txt", words=r"Cannot read requirements file"
    ),
    case(
        "requirement-unresolvable",
        "--no-capture -r six==99.0",
        error=BuildError,
        words=r"six==99.0.*unsatisfiable",
    ),
    case(
        "requirement-that-fails-to-build",
        "--no-capture -r sklearn==0.0.post12",
        error=BuildError,
        words=r"use 'scikit-learn'",
    ),
    # -- base image and Debian packages ----------------------------------------------------------
    case(
        "base-missing",
        "--base mlctest-no-such-image:1",
        error=BaseImageMissing,
        words=r"cannot be pulled.*mlcontainer doctor --fix",
    ),
    # Was a bare docker APIError ('invalid reference format').
    case(
        "base-not-an-image-reference",
        "--base 'Bad Image!'",
        words=r"not an image reference; use a name such as python:3.11-slim",
    ),
    case("apt-invalid", "--apt 'Bad;Name'", words=r"not a Debian package name"),
    case(
        "apt-missing",
        "--apt mlc-no-such-pkg",
        error=BuildError,
        words=r"Unable to locate package mlc-no-such-pkg",
    ),
    # -- the cell -------------------------------------------------------------------------------
    case(
        "syntax-error",
        "-r six==1.16.0",
        "x = (1,\nprint(x)\n",
        words=r"syntax error at line 1.*nothing was built",
    ),
    # Was 'syntax error at line None'.
    case("null-byte", "", "print(1)\x00", words=r"^The cell has a syntax error: .*null bytes"),
    # -- values in and out ------------------------------------------------------------------------
    case(
        "in-undefined",
        "--in nope",
        words=r"--in nope: no such variable in the notebook; "
        r"define it first",
    ),
    case("in-not-a-name", "--in a-b", words=r"--in 'a-b' is not a Python variable name"),
    case(
        "in-lambda",
        "--in lam",
        words=r"--in lam: a function cannot be sent into a container"
        r".*Send plain data",
    ),
    case("in-open-file", "--in fh", words=r"--in fh: a TextIOWrapper cannot be sent"),
    # Was accepted in a real kernel (whose __main__ holds the function): the container then
    # failed with an AttributeError from pickle.
    case(
        "in-function-of-the-notebook",
        "--in kfunc",
        words=r"--in kfunc: it needs function kfunc, defined in the notebook.*Define it in "
        r"the cell",
        main={"kfunc": "def kfunc(x):\n    return x\n"},
    ),
    case(
        "in-class-the-container-lacks",
        "--in ver",
        error=RunError,
        words=r"--in ver.*(-r packaging|install)",
        snapshots=1,
    ),
    case("out-not-a-name", "--out 1x", words=r"--out '1x' is not a Python variable name"),
    case(
        "out-never-assigned",
        "--out never",
        "x = 1",
        error=RunError,
        words=r"--out never: the cell never assigned never",
        snapshots=1,
    ),
    case(
        "out-cannot-be-pickled",
        "--out c",
        "class C:\n    pass\nc = C()",
        error=RunError,
        words=r"--out c: c could not be written",
        snapshots=1,
    ),
    # Was a bare ModuleNotFoundError out of the magic, after the run.
    case(
        "out-whose-module-the-kernel-lacks",
        "--out thing",
        "import os, sys\nos.makedirs('/tmp/m', exist_ok=True)\n"
        "open('/tmp/m/mlc_only_here.py', 'w').write('class Thing:\\n    pass\\n')\n"
        "sys.path.insert(0, '/tmp/m')\nimport mlc_only_here\nthing = mlc_only_here.Thing()",
        error=RunError,
        snapshots=1,
        words=r"--out thing: it came back but cannot be read in the kernel "
        r"\(ModuleNotFoundError.*install what it needs",
    ),
    # -- names and variables ----------------------------------------------------------------------
    case("name-with-shell", "-n 'a;rm -rf /'", words=r"Name 'a;rm -rf /': use up to 64 letters"),
    case("name-with-tag-colon", "-n 'x:y'", words=r"Name 'x:y': use up to 64 letters"),
    case("name-too-long", "-n " + "a" * 65, words=r"use up to 64 letters"),
    case("session-name-with-shell", "--session '$(id)'", words=r"Name '\$\(id\)': use up to 64"),
    case("env-bad-key", "-e '1A=x'", words=r"-e '1A=x': use KEY=VALUE"),
    case("env-without-value", "-e NOVALUE", words=r"-e 'NOVALUE': use KEY=VALUE"),
]


@pytest.fixture
def notebook(ip, tmp_path, monkeypatch):
    """Notebook variables and files the bad-input cases refer to."""
    (tmp_path / "options.txt").write_text("--extra-index-url https://example.invalid/simple\n")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00\x81six\n")
    fh = open(tmp_path / "options.txt")
    from packaging.version import Version

    values = {"lam": lambda: 1, "fh": fh, "ver": Version("1.0")}
    ip.user_ns.update(values)
    for name in ("never", "c", "thing", "outputs"):
        ip.user_ns.pop(name, None)
    yield tmp_path
    fh.close()
    for name in values:
        ip.user_ns.pop(name, None)


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_fails_clearly_and_leaves_nothing(
    case, ip, notebook, docker_client, monkeypatch, no_leaks, host_tmp
):
    if case.gpu and "nvidia" in docker_client.info().get("Runtimes", {}):
        pytest.skip("this engine has GPUs")
    if case.main:  # a real kernel's __main__ is the notebook's namespace
        main = types.ModuleType("__main__")
        for name, source in case.main.items():
            exec(source, main.__dict__)
            ip.user_ns[name] = main.__dict__[name]
        monkeypatch.setitem(sys.modules, "__main__", main)
    store = magics(ip).store
    images, records = env_images(docker_client), store.count()
    with pytest.raises(Exception) as info:
        run(ip, case.line.format(tmp=notebook), case.cell)
    error = info.value
    # Nothing made that should not be: images, snapshots (containers, volumes: no_leaks).
    assert env_images(docker_client) == images
    assert store.count() == records + case.snapshots
    if case.snapshots:
        assert store.list(limit=1)[0]["status"] == "failed"
    # One clear message of ours, saying what to do.
    assert isinstance(error, case.error), f"{type(error).__name__}: {error}"
    assert isinstance(error, (UsageError, MlcError))
    message = str(error)
    assert "Traceback" not in message
    assert re.search(case.words, message, re.S), message
    for secret in case.absent:
        assert secret not in message


def test_an_out_named_outputs_is_returned(ip, no_leaks, host_tmp):
    """`--out NAME` returns the cell's value whatever the name."""
    ip.user_ns.pop("outputs", None)
    run(ip, "--out outputs", "outputs = [1, 2, 3]")
    assert ip.user_ns["outputs"] == [1, 2, 3]


# -- the snapshot verbs --------------------------------------------------------------------------


def record(sid, **over):
    base = {
        "id": sid,
        "status": "done",
        "created": time.time(),
        "code": "print(1)\n",
        "stdout": "1\n",
        "stderr": "",
        "exit_code": 0,
        "spec": {
            "code": "print(1)\n",
            "env_spec": {"base_image": BASE, "apt": [], "requirements": []},
            "env": [],
            "network": "none",
            "inputs": [],
            "outputs": [],
        },
    }
    base.update(over)
    return base


@pytest.fixture(scope="module")
def prefixed(docker_client):
    """Two snapshots whose ids share the prefix abcd1234, one still running, one whose secret
    was masked; removed at the end."""
    from mlcontainer_magics.core.store import Store

    store = Store(STORE)
    secret = record("5ec7e7000001", name="mlcrel-secret")
    secret["spec"]["env"] = [["MLCREL_TOKEN", "***"]]
    ids = ["abcd12340001", "abcd12340002", "dead0000beef", "5ec7e7000001"]
    store.put_many(
        [
            record(ids[0], name="mlcrel-first"),
            record(ids[1]),
            record(ids[2], name="mlcrel-running", status="running"),
            secret,
        ]
    )
    yield store
    for sid in ids:
        try:
            store.remove(sid)
        except StoreError:
            pass
    store.close()


VERB_CASES = [
    pytest.param(
        "show 0123nosuch",
        StoreError,
        r"No snapshot matches '0123nosuch'.*`%container list` or `mlcontainer list`",
        id="show-unknown",
    ),
    pytest.param(
        "show abcd1234",
        StoreError,
        r"prefix 'abcd1234' is ambiguous.*abcd12340001.*abcd12340002.*Give more "
        r"characters",
        id="show-ambiguous-prefix",
    ),
    pytest.param(
        "show ab",
        StoreError,
        r"an id prefix needs at least 4 characters",
        id="show-prefix-too-short",
    ),
    pytest.param(
        "logs ''", StoreError, r"is not a snapshot reference; give an id", id="logs-empty-reference"
    ),
    pytest.param(
        "rm abcd12340001 nosuch99",
        StoreError,
        r"No snapshot matches 'nosuch99'.*Nothing was removed",
        id="rm-one-unknown",
    ),
    pytest.param(
        "rm abcd1234", StoreError, r"ambiguous.*Nothing was removed", id="rm-ambiguous-prefix"
    ),
    pytest.param(
        "rm mlcrel-running", StoreError, r"still running; stop it first, or force", id="rm-running"
    ),
    pytest.param(
        "diff abcd12340001 nosuch99",
        StoreError,
        r"No snapshot matches 'nosuch99'",
        id="diff-unknown",
    ),
    pytest.param(
        "rerun nosuch99", StoreError, r"No snapshot matches 'nosuch99'", id="rerun-unknown"
    ),
    pytest.param(
        "rerun mlcrel-secret",
        SpecError,
        r"used the secret MLCREL_TOKEN.*set MLCREL_TOKEN in the environment and rerun",
        id="rerun-secret-not-set",
    ),
    pytest.param(
        "export abcd12340001 {tmp}/full",
        SpecError,
        r"full exists and is not empty; export into a new folder",
        id="export-into-non-empty-folder",
    ),
    # Was a bare NotADirectoryError.
    pytest.param(
        "export abcd12340001 {tmp}/full/keep.txt",
        SpecError,
        r"keep.txt exists and is a file; export into a new folder",
        id="export-onto-a-file",
    ),
    # Was a bare OSError.
    pytest.param(
        "export abcd12340001 /proc/mlcrel-export",
        SpecError,
        r"Cannot write the export to /proc/mlcrel-export: .*Choose a new folder",
        id="export-where-nothing-can-be-written",
    ),
    pytest.param(
        "list --status bogus",
        StoreError,
        r"'bogus' is not a snapshot status; use one of building",
        id="list-bad-status",
    ),
    pytest.param(
        "list -n -5", StoreError, r"limit -5 must be a whole number >= 0", id="list-negative-limit"
    ),
    pytest.param("list -n many", UsageError, r"Usage", id="list-limit-not-a-number"),
    pytest.param("frobnicate", UsageError, r"Usage", id="unknown-verb"),
    pytest.param("show", UsageError, r"Usage", id="verb-without-its-argument"),
    pytest.param(
        "stop nosuch",
        MlcError,
        r"No session 'nosuch' runs in this kernel",
        id="stop-unknown-session",
    ),
]


@pytest.mark.parametrize("line, error, words", VERB_CASES)
def test_bad_snapshot_reference_fails_clearly_and_changes_nothing(
    line, error, words, ip, prefixed, tmp_path, no_leaks
):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    before = prefixed.count()
    with pytest.raises(error) as info:
        ip.run_line_magic("container", line.format(tmp=tmp_path))
    assert re.search(words, str(info.value), re.S), str(info.value)
    assert prefixed.count() == before
    assert prefixed.get("abcd12340001")["status"] == "done"
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]  # no partial export


def test_cli_errors_are_one_line_with_exit_status_2(prefixed, tmp_path):
    """The same verbs from a terminal: `mlcontainer: message`, exit 2, no traceback; and a store
    that is a file or not a database says how to get a working one."""
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "store.sqlite3").write_bytes(b"not a database" * 100)
    no_engine = {"DOCKER_HOST": "unix:///tmp/mlcrel-no-engine.sock"}
    cases = [
        (["show", "nosuch99"], {}, 2, r"mlcontainer: No snapshot matches 'nosuch99'"),
        (
            ["export", "abcd12340001", str(tmp_path / "full")],
            {},
            2,
            r"exists and is not empty; export into a new folder",
        ),
        (
            ["list"],
            {"MLCONTAINER_STORE": str(tmp_path / "a-file")},
            2,
            r"Set MLCONTAINER_STORE to a writable folder",
        ),
        (
            ["list"],
            {"MLCONTAINER_STORE": str(tmp_path / "damaged")},
            2,
            r"not a snapshot store; move .*store.sqlite3 away",
        ),
        (["prune"], no_engine, 2, r"No Docker engine answers.*mlcontainer doctor --fix"),
        (["list", "--name", "mlcrel-first"], no_engine, 0, r"^$"),  # the store needs no engine
    ]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "mlcontainer_magics.frontends.cli", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, **env},
        )
        for argv, env, _, _ in cases
    ]
    for proc, (argv, _env, status, words) in zip(procs, cases):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == status, (argv, out, err)
        assert "Traceback" not in err, err
        assert re.search(words, err.strip(), re.S), (argv, err)
        if status == 0:
            assert out.startswith("abcd12340001"), out


# -- huge output -----------------------------------------------------------------------------------


def test_fifty_megabytes_of_output_neither_crash_the_kernel_nor_the_store(
    ip, capsys, no_leaks, host_tmp
):
    size = 50 * 2**20
    run(
        ip,
        "-n mlcrel-huge",
        "import sys\nblock = 'x' * (1 << 20)\n"
        "for _ in range(50):\n    sys.stdout.write(block)\nprint('END')",
    )
    out = capsys.readouterr().out
    assert out.count("x" * 1024) >= size // 1024 - 1 and "END" in out
    store = magics(ip).store
    t0 = time.monotonic()
    record = store.get("mlcrel-huge")
    assert record["status"] == "done" and len(record["stdout"]) == size + len("END\n")
    assert store.list(limit=5) and time.monotonic() - t0 < 10
    ip.run_cell("1 + 1")  # the kernel goes on
    store.remove(record["id"])


def test_non_ascii_output_is_not_corrupted_at_chunk_boundaries(ip, capsys, no_leaks, host_tmp):
    run(ip, "-n mlcrel-euro", "print('€' * 2_000_000)")
    capsys.readouterr()
    record = magics(ip).store.get("mlcrel-euro")
    magics(ip).store.remove(record["id"])
    assert record["stdout"] == "€" * 2_000_000 + "\n"


# == 2. Faults =====================================================================================


def kill_when_running(docker_client, seen="", after=0.3):
    """Kill the run's container from outside (as `docker kill` would) once it printed ``seen``."""

    def kill():
        found = wait_for(lambda: containers(docker_client, role="run", all=False))
        if found and wait_for(lambda: seen in found[0].logs().decode(), timeout=30):
            time.sleep(after)
            found[0].kill()

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


def test_container_killed_from_outside(ip, docker_client, no_leaks, host_tmp):
    thread = kill_when_running(docker_client, "ready")
    with pytest.raises(RunError) as info:
        run(ip, "-n mlcrel-killed", "import time\nprint('ready', flush=True)\ntime.sleep(120)")
    thread.join(5)
    assert info.value.reason == "killed" and info.value.exit_code == 137
    assert "killed" in str(info.value)
    rec = magics(ip).store.get("mlcrel-killed")
    assert (rec["status"], rec["reason"], rec["exit_code"]) == ("failed", "killed", 137)
    assert rec["stdout"] == "ready\n" and rec["finished"] >= rec["created"]


def test_container_killed_from_outside_says_what_happened(ip, docker_client, no_leaks, host_tmp):
    thread = kill_when_running(docker_client, "ready")
    with pytest.raises(RunError) as info:
        run(ip, "", "import time\nprint('ready', flush=True)\ntime.sleep(120)")
    thread.join(5)
    assert "was killed" in str(info.value) and "docker" in str(info.value)


def test_out_of_memory(ip, no_leaks, host_tmp):
    with pytest.raises(RunError) as info:
        run(ip, "--memory 32m -n mlcrel-oom", "x = bytearray(200 * 2**20)\nprint('survived')")
    assert info.value.reason == "oom"
    assert "Out of memory" in str(info.value) and "--memory limit of 32 MiB" in str(info.value)
    rec = magics(ip).store.get("mlcrel-oom")
    assert rec["status"] == "oom" and "survived" not in rec["stdout"]
    assert rec["resources"]["memory"] == 32 * 2**20


def test_timeout_ends_the_run_and_is_recorded(ip, no_leaks, host_tmp):
    t0 = time.monotonic()
    with pytest.raises(RunError, match=r"Stopped after 2 s \(--timeout\)") as info:
        run(
            ip,
            "--timeout 2 -n mlcrel-timeout",
            "import time\nprint('start', flush=True)\ntime.sleep(120)",
        )
    assert info.value.reason == "timeout" and time.monotonic() - t0 < 30
    rec = magics(ip).store.get("mlcrel-timeout")
    assert rec["status"] == "timeout" and rec["stdout"] == "start\n"


def test_interrupt_during_an_install_leaves_nothing(ip, docker_client, no_leaks, host_tmp):
    """Ctrl-C while uv installs: no build container or volume, no snapshot, no image."""
    store = magics(ip).store
    images, records = env_images(docker_client), store.count()
    seen = []

    def installing():
        for c in containers(docker_client, role="build", all=False):
            try:
                log = c.logs().decode()
            except Exception:
                continue  # the resolving container, gone meanwhile
            if "--- uv install" in log:
                return log
        return None

    def interrupt_during_install():
        log = wait_for(installing, timeout=120, every=0.01)
        if log:
            seen.append(log)
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    thread = threading.Thread(target=interrupt_during_install, daemon=True)
    thread.start()
    with pytest.raises(KeyboardInterrupt):
        # a large wheel (numpy), so the install is still on when the interrupt comes
        run(ip, "--no-capture -r numpy==1.26.4 -n mlcrel-build-interrupted", "pass")
    thread.join(5)
    assert seen and "--- uv install" in seen[0]
    assert containers(docker_client, role="build") == []
    assert (
        docker_client.volumes.list(
            filters={"label": [f"{LABEL}.namespace={NAMESPACE}", f"{LABEL}.role=build"]}
        )
        == []
    )
    assert env_images(docker_client) == images
    assert store.count() == records and store.list(name="mlcrel-build-interrupted") == []


# -- the kernel dies mid-run -----------------------------------------------------------------------

KERNEL = """
from IPython.core.interactiveshell import InteractiveShell
ip = InteractiveShell.instance()
ip.run_line_magic("load_ext", "mlcontainer_magics")
ip.run_cell_magic("containerize", "-n doomed --no-capture",
                  "import time\\nprint('ready', flush=True)\\ntime.sleep(300)")
"""


@pytest.fixture(scope="module")
def dead_kernel(docker_client):
    """A kernel (a subprocess) SIGKILLed while its container runs, then `mlcontainer prune`.
    Uses a namespace and store of its own so prune sees nothing else."""
    namespace = f"{NAMESPACE}-dead"
    store_dir = tempfile.mkdtemp(prefix="mlcrel-store-")
    tmp = Path(tempfile.mkdtemp(prefix="mlcrel-kernel-tmp-"))
    tmp.chmod(0o755)
    env = {
        **os.environ,
        "MLCONTAINER_NAMESPACE": namespace,
        "MLCONTAINER_STORE": store_dir,
        "TMPDIR": str(tmp),
        "MLCONTAINER_RUN_DIR": str(tmp),
    }
    facts = {}
    kernel = subprocess.Popen(
        [sys.executable, "-c", KERNEL],
        cwd=ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        lines = []
        for line in kernel.stdout:
            lines.append(line)
            if line.strip() == "ready":
                break
        assert lines and lines[-1].strip() == "ready", "".join(lines)
        running = containers(docker_client, namespace, role="run", all=False)
        assert len(running) == 1
        mounts = {m["Destination"]: m["Source"] for m in running[0].attrs["Mounts"]}
        facts["workdir"] = Path(mounts["/mlc"])
        kernel.kill()
        kernel.wait(30)
        facts["orphan_running"] = running[0].id in [
            c.id for c in containers(docker_client, namespace, all=False)
        ]
        prune = cli(
            "prune", env={"MLCONTAINER_NAMESPACE": namespace, "MLCONTAINER_STORE": store_dir}
        )
        facts["prune"] = prune
        facts["left"] = containers(docker_client, namespace)
        facts["volumes"] = docker_client.volumes.list(
            filters={"label": f"{LABEL}.namespace={namespace}"}
        )
        from mlcontainer_magics.core.store import Store

        store = Store(store_dir)
        facts["record"] = store.get("doomed")
        store.close()
        facts["workdir_left"] = facts["workdir"].exists()
        yield facts
    finally:
        if kernel.poll() is None:
            kernel.kill()
        for c in containers(docker_client, namespace):
            c.remove(force=True)
        for v in docker_client.volumes.list(filters={"label": f"{LABEL}.namespace={namespace}"}):
            v.remove(force=True)
        shutil.rmtree(store_dir, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)


def test_kernel_death_prune_removes_the_orphan_and_marks_the_snapshot(dead_kernel):
    assert dead_kernel["orphan_running"]  # the scenario: a container outlived its kernel
    prune = dead_kernel["prune"]
    assert prune.returncode == 0, prune.stderr
    rec = dead_kernel["record"]
    assert f"marked {rec['id']} interrupted (its kernel went away)" in prune.stdout
    assert "removed container" in prune.stdout
    assert dead_kernel["left"] == [] and dead_kernel["volumes"] == []
    assert rec["status"] == "interrupted" and rec["reason"] == "its kernel went away"


def test_kernel_death_prune_removes_the_runs_host_folder(dead_kernel):
    assert not dead_kernel["workdir_left"], dead_kernel["workdir"]


# -- the disk fills up -----------------------------------------------------------------------------


@pytest.fixture
def tiny_disk(ip):
    """The store on a 512 KiB tmpfs (we are root), set as the kernel's store; unmounted after."""
    folder = tempfile.mkdtemp(prefix="mlcrel-tiny-")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", folder], capture_output=True, text=True
    )
    if done.returncode:
        os.rmdir(folder)
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    m = magics(ip)
    ip.run_line_magic("config", f"ContainerizeMagics.store_dir = {folder!r}")
    try:
        yield Path(folder)
    finally:
        m.store.close()
        ip.run_line_magic("config", f"ContainerizeMagics.store_dir = {STORE!r}")
        if subprocess.run(["umount", folder]).returncode:
            subprocess.run(["umount", "-l", folder])
        os.rmdir(folder)


def fill(folder: Path) -> None:
    with open(folder / "filler", "wb", buffering=0) as f:
        for size in (65536, 4096, 512, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError:
                pass


def test_disk_full_before_the_run_fails_before_anything_starts(
    ip, tiny_disk, docker_client, no_leaks, host_tmp
):
    magics(ip).store.count()  # the store exists; then the disk fills
    fill(tiny_disk)
    images = env_images(docker_client)
    with pytest.raises(StoreError, match=r"database or disk is full. Free some disk space"):
        run(ip, "-n mlcrel-nospace", "print('never')")
    assert env_images(docker_client) == images and magics(ip).store.count() == 0


def test_disk_full_while_saving_the_result(ip, tiny_disk, no_leaks, host_tmp):
    with pytest.raises(
        StoreError,
        match=r"database or disk is full. Free some disk space on "
        r"the drive holding",
    ):
        run(ip, "-n mlcrel-full", "print('y' * 2_000_000)")
    assert magics(ip).store.count() <= 1


def test_disk_full_while_saving_the_result_leaves_no_running_record(
    ip, tiny_disk, no_leaks, host_tmp
):
    with pytest.raises(StoreError):
        run(ip, "-n mlcrel-full", "print('y' * 2_000_000)")
    assert magics(ip).store.get("mlcrel-full")["status"] not in ("building", "running")


def test_disk_full_while_keeping_the_inputs(ip, tiny_disk, no_leaks, host_tmp):
    ip.user_ns["blob"] = b"z" * 2_000_000
    try:
        with pytest.raises(StoreError, match=r"Free some disk space"):
            run(ip, "--in blob -n mlcrel-blob", "print(len(blob))")
    finally:
        ip.user_ns.pop("blob", None)


# -- the engine stops answering --------------------------------------------------------------------


@pytest.fixture
def lost_engine(docker_client, tmp_path):
    """A backend that talks to the real engine through a relay the test can cut, and a store."""
    import docker
    from engine_proxy import EngineProxy

    from mlcontainer_magics.backends.docker.backend import DockerBackend
    from mlcontainer_magics.core.store import Store

    proxy = EngineProxy().start()
    backend = DockerBackend(
        client=docker.DockerClient(base_url=proxy.url, timeout=60), namespace=NAMESPACE
    )
    yield proxy, backend, Store(tmp_path / "store")
    proxy.close()
    for c in docker_client.containers.list(
        all=True, filters={"label": f"org.mlcontainer.namespace={NAMESPACE}"}
    ):
        c.remove(force=True, v=True)  # only when the test failed: no_leaks reports it


def test_engine_gone_during_a_run_says_so_and_cleans_up_when_back(
    lost_engine, docker_client, no_leaks, host_tmp
):
    from mlcontainer_magics.core import runs
    from mlcontainer_magics.core.spec import EnvSpec, RunSpec

    proxy, backend, store = lost_engine
    spec = RunSpec(
        code="import time\nprint('started', flush=True)\ntime.sleep(300)", env_spec=EnvSpec(BASE)
    )

    def output(stream, text):
        if "started" in text:
            proxy.cut()  # the engine stops answering while the cell runs

    with pytest.raises(
        EngineUnavailable,
        match=r"stopped answering while running the cell .*"
        r"mlcontainer doctor --fix.*run the cell again",
    ):
        runs.execute(spec, backend, output=output, store=store)
    record = store.get(store.list()[0]["id"])
    assert record["status"] == "failed" and "EngineUnavailable" in record["reason"]
    flt = {"label": f"org.mlcontainer.namespace={NAMESPACE}"}
    assert len(docker_client.containers.list(filters=flt)) == 1  # it ran on, out of reach

    proxy.restore()
    backend.ensure_environment(EnvSpec(BASE))  # the next call that reaches it removes it
    assert docker_client.containers.list(all=True, filters=flt) == []


def test_engine_gone_before_a_run_fails_clearly_and_records_nothing(
    lost_engine, no_leaks, host_tmp
):
    from mlcontainer_magics.core import runs
    from mlcontainer_magics.core.spec import EnvSpec, RunSpec

    proxy, backend, store = lost_engine
    backend.ensure_environment(EnvSpec(BASE))  # connected, then the engine goes away
    proxy.cut()
    with pytest.raises(
        EngineUnavailable,
        match=r"stopped answering while preparing the "
        r"environment .*mlcontainer doctor --fix",
    ):
        runs.execute(RunSpec(code="print(1)", env_spec=EnvSpec(BASE)), backend, store=store)
    assert store.count() == 0


# == 3. Concurrency ================================================================================

WORKER = '''
import json, os, socket, sys, threading, time
from mlcontainer_magics.core import runs
from mlcontainer_magics.backends.docker.backend import DockerBackend
from mlcontainer_magics.core.spec import EnvSpec
from mlcontainer_magics.core.spec import RunSpec
from mlcontainer_magics.core.store import Store

CELL = """import time
print('start', time.time(), flush=True)
time.sleep(4)
print('token {token}')
print('end', time.time())
"""


def run_many(tag, n, start_at, namespace, store_root, base, requirement):
    """n runs at once from threads of this process; what each saw."""
    backend, store = DockerBackend(namespace=namespace), Store(store_root)
    context = {"kernel": f"{socket.gethostname()}:{os.getpid()}"}
    results = [None] * n

    def one(i):
        token = f"{tag}-{i}"
        spec = RunSpec(code=CELL.format(token=token), name=f"mlcrel-{token}",
                       env_spec=EnvSpec(base, (), (requirement,)))
        while time.time() < start_at:
            time.sleep(0.005)
        try:
            o = runs.execute(spec, backend, store=store, context=context)
            results[i] = {"token": token, "run_id": o.run_id, "reason": o.result.reason,
                          "container": o.result.container_id, "stdout": o.result.stdout}
        except BaseException as e:
            results[i] = {"token": token, "error": repr(e)}

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results
'''


def check_concurrent(results, store, records_before):
    assert all("error" not in r for r in results), results
    assert len({r["run_id"] for r in results}) == len(results)
    assert len({r["container"] for r in results}) == len(results)  # no container shared
    starts, ends = [], []
    for r in results:
        assert r["reason"] == "done", r
        lines = r["stdout"].splitlines()
        assert lines[1] == f"token {r['token']}" and len(lines) == 3, r["stdout"]
        starts.append(float(lines[0].split()[1]))
        ends.append(float(lines[2].split()[1]))
        rec = store.get(r["run_id"])  # each record intact, with its own output
        assert rec["status"] == "done" and rec["stdout"] == r["stdout"]
        assert rec["name"] == f"mlcrel-{r['token']}" and rec["env_image"] and rec["finished"]
    assert max(starts) < min(ends), "the cells did not all run at the same time"
    assert store.count() == records_before + len(results)  # no lost or merged records


def test_eight_runs_at_once_from_threads(six_env, no_leaks, host_tmp):
    from mlcontainer_magics.core.store import Store

    store = Store(STORE)
    before = store.count()
    ns = {}
    exec(WORKER, ns)
    results = ns["run_many"]("thread", 8, time.time() + 0.5, NAMESPACE, STORE, BASE, SIX)
    check_concurrent(results, store, before)


def test_eight_runs_at_once_from_two_processes(six_env, no_leaks, host_tmp):
    from mlcontainer_magics.core.store import Store

    store = Store(STORE)
    before = store.count()
    start_at = time.time() + 4  # both processes import, then start together
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WORKER
                + textwrap.dedent(f"""
            print(json.dumps(run_many({tag!r}, 4, {start_at}, {NAMESPACE!r}, {STORE!r},
                                      {BASE!r}, {SIX!r})))"""),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "TMPDIR": tempfile.gettempdir()},
        )
        for tag in ("proc-a", "proc-b")
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        results += json.loads(out.strip().splitlines()[-1])
    check_concurrent(results, store, before)


def test_concurrent_first_builds_of_one_environment_make_one_image(docker_client, no_leaks):
    from mlcontainer_magics.backends.docker.backend import DockerBackend
    from mlcontainer_magics.core.spec import EnvSpec

    backend = DockerBackend(namespace=NAMESPACE)
    # Both builds look for an image of their lock before either commits: the race made certain.
    # An implementation that serializes look-up and commit passes after the barrier's timeout.
    look_up, barrier = backend._by_lock_key, threading.Barrier(2, timeout=5)

    def look_up_together(lkey):
        found = look_up(lkey)
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            pass
        return found

    backend._by_lock_key = look_up_together
    labelled = {"label": f"{LABEL}.namespace={NAMESPACE}"}
    before = {i.id for i in docker_client.images.list(all=True, filters=labelled)}
    envs, errors = [], []

    def build():
        try:
            envs.append(backend.ensure_environment(EnvSpec(BASE, (), ("six==1.14.0",))))
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    after = {i.id for i in docker_client.images.list(all=True, filters=labelled)}
    assert len(after - before) == 1, "two images for one environment"
    assert len({e.image_id for e in envs}) == 1


def test_prune_while_another_run_builds_leaves_it_alone(six_env, docker_client, no_leaks, host_tmp):
    """Was: prune marked a live kernel's building run 'interrupted' (it has no run container
    yet), and so too a cell running in a warm session."""
    import socket

    from mlcontainer_magics.backends.docker.backend import DockerBackend
    from mlcontainer_magics.backends.docker.engine import settle_background
    from mlcontainer_magics.core import runs, snapshots
    from mlcontainer_magics.core.spec import EnvSpec, RunSpec
    from mlcontainer_magics.core.store import Store

    settle_background()  # six_env's build container, removed once committed: gone by now
    backend, store = DockerBackend(namespace=NAMESPACE), Store(STORE)
    spec = RunSpec(
        code="print('built')", env_spec=EnvSpec(BASE, (), (SIX,)), name="mlcrel-building"
    )
    outcome = {}
    runner = threading.Thread(
        target=lambda: outcome.update(
            o=runs.execute(
                spec,
                backend,
                rebuild=True,
                store=store,
                context={"kernel": f"{socket.gethostname()}:{os.getpid()}"},
            )
        )
    )
    runner.start()
    try:
        assert wait_for(lambda: containers(docker_client, role="build", all=False))
        rec = store.get("mlcrel-building")
        assert rec["status"] == "building"
        done = snapshots.prune(store, backend)
        assert not any(rec["id"] in line for line in done), done
        assert store.get(rec["id"])["status"] != "interrupted"
    finally:
        runner.join(120)
    assert outcome["o"].ok and store.get(rec["id"])["status"] == "done"


def test_a_chore_waiting_for_a_run_goes_when_the_process_exits(tmp_path):
    """What a build leaves to remove waits for the first run to end; a process that ran none
    (a push, an export) must not sit out that wait at exit, and the chore must still run."""
    done = tmp_path / "done"
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from mlcontainer_magics.backends.docker.engine import in_background
        in_background(Path({str(done)!r}).write_text, "removed", until_a_run_ends=600)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert done.read_text() == "removed"


def test_a_chore_waiting_for_a_run_goes_when_a_run_ends():
    from mlcontainer_magics.backends.docker.engine import in_background, run_ended

    went = threading.Event()
    in_background(went.set, until_a_run_ends=600)
    assert not went.wait(0.3), "went before any run ended"
    run_ended()
    assert went.wait(30)
