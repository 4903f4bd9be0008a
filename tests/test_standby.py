"""Standby containers: the next cell runs in a container started before it, with its limits;
other settings get their own; standbys go when idle, at kernel exit and by prune.

Unit tests (no engine) check the key, the end marks and the pool's books; the rest run on the
real engine. The test session turns standbys off (conftest); these tests turn them on.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import wait_for
from mlcontainer_magics.backends.docker.backend import DockerBackend
from mlcontainer_magics.backends.docker.standby import (
    EndMarks,
    Standby,
    StandbyPool,
    standby_key,
)
from mlcontainer_magics.core.backend import Environment
from mlcontainer_magics.core.spec import EnvSpec, MountSpec, RunSpec
from mlcontainer_magics.errors import RunError
from mlcontainer_magics.runner import END_MARK, MARK

LABEL = "org.mlcontainer"
ENV = Environment("python:3.11-slim", "sha256:abc", "sha256:abc")


def spec(**kw) -> RunSpec:
    return RunSpec(code=kw.pop("code", "print(1)"), env_spec=EnvSpec("python:3.11-slim"), **kw)


def key(s: RunSpec, env: Environment = ENV) -> str | None:
    return DockerBackend(client=object(), namespace="unit")._standby_key(s, env)


# -- the key: what a container is fixed to when it is made ------------------------------------


def test_the_key_ignores_what_the_cell_brings_and_follows_what_its_container_is_made_with(
    tmp_path,
):
    base = key(spec())
    assert base is not None
    assert key(spec(code="x = 2", name="other", outputs=("x",), timeout=5.0)) == base
    different = [
        key(spec(memory=256 * 2**20)),
        key(spec(cpus=0.5)),
        key(spec(network="none")),
        key(spec(env=(("A", "1"),))),
        key(spec(gpus="all")),
        key(spec(mounts=(MountSpec(str(tmp_path), "/work/data"),))),
        key(spec(), Environment("other", "sha256:def", "sha256:def")),
    ]
    assert base not in different and len(set(different)) == len(different)
    assert key(spec(memory=256 * 2**20)) == key(spec(memory=256 * 2**20))


def test_runs_with_secrets_never_use_a_standby():
    assert key(spec(secrets=("TOKEN",))) is None


def test_a_mount_replaced_since_is_another_key(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    mounted = spec(mounts=(MountSpec(str(data), "/work/data"),))
    before = key(mounted)
    assert key(mounted) == before
    data.rmdir()
    (tmp_path / "keep").mkdir()  # so that the new folder cannot reuse the inode
    data.mkdir()
    assert key(mounted) != before  # a standby's bind mount would show the old, empty folder


def test_standby_key_leaves_out_the_labels_and_its_own_folder():
    a = {"labels": {"run": "1"}, "volumes": {"/f": 1, "/f/out": 2, "/data": 3}, "user": "u"}
    b = {"labels": {"run": "2"}, "volumes": {"/g": 1, "/g/out": 2, "/data": 3}, "user": "u"}
    assert standby_key("img", a, Path("/f"), ()) == standby_key("img", b, Path("/g"), ())
    b["volumes"]["/data"] = 4
    assert standby_key("img", a, Path("/f"), ()) != standby_key("img", b, Path("/g"), ())


# -- the end marks ---------------------------------------------------------------------------


def end(code=0, oom=0) -> str:
    return END_MARK + f'{{"exit": {code}, "oom": {oom}}}\n'


def test_end_marks_are_taken_out_even_when_split_across_chunks():
    marks = EndMarks()
    line = end(3)
    passed = marks.feed("stdout", "a\n" + line[:4]) + marks.feed("stdout", line[4:9])
    assert marks.status is None
    passed += marks.feed("stdout", line[9:])
    assert passed == "a\n" and marks.status is None  # stderr's has not come yet
    assert marks.feed("stderr", "oops\n" + line) == "oops\n"
    assert marks.status == 3


def test_display_marks_pass_and_a_missing_or_oom_end_says_nothing():
    marks = EndMarks()
    display = MARK + '{"data": {"text/plain": "1"}}\n'
    assert marks.feed("stdout", display[:3]) + marks.feed("stdout", display[3:]) == display
    assert marks.feed("stdout", "tail\x1e") == "tail"
    assert marks.rest("stdout") == "\x1e"  # the stream ended: what was held is output
    oom = EndMarks()
    oom.feed("stdout", end(0, oom=1))
    oom.feed("stderr", end(0, oom=1))
    assert oom.status is None  # the memory limit killed something: the engine says what
    unknown = EndMarks()
    unknown.feed("stdout", END_MARK + '{"exit": 0, "oom": null}\n')
    unknown.feed("stderr", END_MARK + '{"exit": 0, "oom": null}\n')
    assert unknown.status is None


def test_a_standby_runner_not_needed_exits_without_running_anything(tmp_path):
    from mlcontainer_magics.backends.docker.standby import open_go
    from mlcontainer_magics.runner import RUNNER_PATH

    fifo = tmp_path / ".go"
    os.mkfifo(fifo)
    proc = subprocess.Popen(
        [sys.executable, str(RUNNER_PATH), "--standby", str(fifo)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    fd = open_go(fifo, lambda: proc.poll() is None, wait=30)
    os.close(fd)  # end of file: discarded before any cell came
    out, err = proc.communicate(timeout=30)
    assert (proc.returncode, out, err) == (0, "", "")


# -- the pool's books, with a fake engine --------------------------------------------------


class FakeEngine:
    def __init__(self) -> None:
        self.discarded: list[str] = []
        self.removed: list = []

    def discard_standby(self, standby: Standby) -> None:
        self.discarded.append(standby.key)
        if standby.fd is not None:
            os.close(standby.fd)
            standby.fd = None

    def remove_used(self, container) -> None:
        self.removed.append(container)


def made(key: str):
    """A standby whose runner waits: the write end of a pipe whose read end stays open."""
    read, write = os.pipe()
    made.readers.append(read)
    return lambda: Standby(key, Path(f"/tmp/{key}"), container=key, fd=write)


made.readers = []  # type: ignore[attr-defined]


def pool(**settings) -> tuple[StandbyPool, FakeEngine]:
    engine = FakeEngine()
    values = dict(standby=True, standby_max=2, standby_idle=600.0)
    values.update(settings)
    p = StandbyPool(engine, SimpleNamespace(**values))
    return p, engine


def test_the_pool_keeps_at_most_standby_max_and_drops_the_oldest():
    p, engine = pool(standby_max=2)
    for k in ("a", "b", "a", "c"):
        p.replenish(k, made(k))
        p.settle()
    assert sorted(p.ready_keys()) == ["b", "c"] and engine.discarded == ["a"]
    p.close()
    assert p.ready_keys() == [] and sorted(engine.discarded) == ["a", "b", "c"]


def test_a_claimed_standby_is_the_runs_alone_and_off_turns_new_ones_off():
    p, engine = pool()
    p.replenish("a", made("a"))
    p.settle()
    got = p.claim("a")
    assert got is not None and got.key == "a"
    assert p.claim("a") is None  # no other run gets it
    assert p.take(got.folder) is got and p.take(got.folder) is None
    p.settings.standby = False
    p.replenish("a", made("a"))
    p.settle()
    assert p.ready_keys() == []
    p.close()


def test_a_standby_whose_runner_has_gone_is_not_handed_out():
    p, engine = pool()
    p.replenish("a", made("a"))
    p.settle()
    os.close(made.readers.pop())  # the container was killed: the FIFO's reader is gone
    assert p.claim("a") is None
    p.settle()
    assert engine.discarded == ["a"]
    p.close()


def test_a_claimed_standby_that_never_ran_is_removed():
    p, engine = pool()
    p.replenish("a", made("a"))
    p.settle()
    got = p.claim("a")
    assert got is not None
    p.release(got.folder)
    p.settle()
    assert engine.discarded == ["a"]
    p.close()


def test_an_idle_standby_is_removed():
    p, engine = pool(standby_idle=0.05)
    p.replenish("a", made("a"))
    assert wait_for(lambda: engine.discarded == ["a"], timeout=10)
    assert p.ready_keys() == []
    p.close()


def test_a_standby_that_fails_to_start_is_no_error():
    p, engine = pool()

    def broken():
        raise RuntimeError("engine said no")

    p.replenish("a", broken)
    p.settle()
    assert p.ready_keys() == [] and p.count() == 0
    p.close()


# -- on the real engine -----------------------------------------------------------------------

docker_only = pytest.mark.docker


def standbys(client, namespace) -> list:
    return client.containers.list(
        all=True,
        ignore_removed=True,  # one being removed meanwhile (an idle one, the oldest)
        filters={"label": [f"{LABEL}.namespace={namespace}", f"{LABEL}.role=standby"]},
    )


def magics(ip):
    return ip.magics_manager.registry["ContainerizeMagics"]


@pytest.fixture
def sip(ip, no_leaks):
    """The test shell with standbys on; afterwards its standbys are gone (as at kernel exit)."""
    m = magics(ip)
    ip.run_line_magic("config", "ContainerizeMagics.standby = True")
    yield ip
    ip.run_line_magic("config", "ContainerizeMagics.standby = False")
    ip.run_line_magic("config", "ContainerizeMagics.standby_idle = 600.0")
    pool = m.backend.standbys
    pool.settle()
    pool.clear()
    pool.settle()


def ran_in(out: str) -> str:
    """The container id the status line names."""
    return re.findall(r"running in (?:standby )?container ([0-9a-f]{12})", out)[-1]


def ready_standby(ip, client, namespace):
    magics(ip).backend.standbys.settle()
    found = standbys(client, namespace)
    assert len(found) == 1, [c.name for c in found]
    return found[0]


@docker_only
def test_the_next_cell_runs_in_the_standby_with_its_limits(
    sip, capsys, docker_client, namespace, monkeypatch
):
    from docker.models.containers import ContainerCollection

    line = "--memory 256m"
    sip.run_cell_magic("containerize", line, "print('first')")
    waiting = ready_standby(sip, docker_client, namespace)
    assert waiting.name.startswith(f"{namespace}-standby-")
    assert waiting.labels[f"{LABEL}.owner"] and waiting.status == "running"
    host = waiting.attrs["HostConfig"]  # made as a run's container is
    assert host["Memory"] == 256 * 2**20 and host["CapDrop"] == ["ALL"] and host["Init"]
    assert "no-new-privileges" in host["SecurityOpt"] and waiting.attrs["Config"]["User"]
    capsys.readouterr()

    created = []
    real_create = ContainerCollection.create

    def spy(self, *args, **kwargs):
        created.append(kwargs.get("name"))
        return real_create(self, *args, **kwargs)

    monkeypatch.setattr(ContainerCollection, "create", spy)
    sip.run_cell_magic(
        "containerize",
        line + " --out limit",
        "limit = int(open('/sys/fs/cgroup/memory/memory.limit_in_bytes').read())\n"
        "print('second', limit)",
    )
    monkeypatch.undo()
    out = capsys.readouterr().out
    assert "second 268435456" in out and sip.user_ns["limit"] == 256 * 2**20
    assert ran_in(out) == waiting.id[:12] and "standby container" in out
    # The only container made meanwhile is the next standby, after the cell's output.
    assert all(name and "-standby-" in name for name in created), created
    record = magics(sip).store.get(magics(sip).store.list(limit=1)[0]["id"])
    assert record["status"] == "done" and record["resources"]["memory"] == 256 * 2**20


@docker_only
def test_other_memory_or_network_get_their_own_container(sip, capsys, docker_client, namespace):
    sip.run_cell_magic("containerize", "--memory 256m", "pass")
    waiting = ready_standby(sip, docker_client, namespace)
    capsys.readouterr()
    sip.run_cell_magic(
        "containerize",
        "--memory 128m",
        "print('limit', open('/sys/fs/cgroup/memory/memory.limit_in_bytes').read())",
    )
    out = capsys.readouterr().out
    assert "limit 134217728" in out and ran_in(out) != waiting.id[:12]
    sip.run_cell_magic(
        "containerize",
        "--memory 256m --network none",
        "import os\nprint(os.listdir('/sys/class/net'))",
    )
    out = capsys.readouterr().out
    assert "['lo']" in out and ran_in(out) != waiting.id[:12]


@docker_only
def test_values_timeout_and_failure_in_a_standby(sip, capsys, docker_client, namespace):
    sip.user_ns["a"] = [1, 2, 3]
    sip.run_cell_magic("containerize", "--in a --out b", "b = a + [4]")
    ready_standby(sip, docker_client, namespace)
    sip.run_cell_magic("containerize", "--in a --out b", "b = a + [5]")
    assert sip.user_ns["b"] == [1, 2, 3, 5]
    ready_standby(sip, docker_client, namespace)
    with pytest.raises(RunError, match="--timeout") as e:
        sip.run_cell_magic("containerize", "--timeout 2", "import time\ntime.sleep(60)")
    assert e.value.reason == "timeout"
    ready_standby(sip, docker_client, namespace)
    with pytest.raises(RunError, match="exit code 1"):
        sip.run_cell_magic("containerize", "", "import sys\nprint('x', file=sys.stderr)\n1 / 0")
    out = capsys.readouterr()
    assert END_MARK not in out.out + out.err


@docker_only
def test_a_running_standby_cell_is_seen_and_stopped_by_its_run_id(
    sip, capsys, docker_client, namespace
):
    sip.run_cell_magic("containerize", "", "pass")
    waiting = ready_standby(sip, docker_client, namespace)
    m = magics(sip)
    other = DockerBackend(namespace=namespace)  # as another process (the CLI, the server) sees it
    seen = {}

    def stop_when_running():
        try:
            run = wait_for(lambda: [r for r in other.running() if r.container == waiting.id[:12]])
            if run:
                seen["id"] = run[0].id
                seen["running"] = other.is_running(run[0].id)
                seen["stopped"] = other.stop(run[0].id)
        except Exception as e:  # said by the assertion below
            seen["error"] = repr(e)
        finally:
            for run_id in list(m.backend._runs):  # not stopped: the test need not wait 60 s
                if "stopped" not in seen:
                    m.backend.stop(run_id)

    t = threading.Thread(target=stop_when_running)
    t.start()
    with pytest.raises(RunError):
        sip.run_cell_magic("containerize", "-n long", "import time\ntime.sleep(60)")
    t.join()
    out = capsys.readouterr().out
    record = m.store.get("long")
    assert seen == {"id": record["id"], "running": True, "stopped": True}, (seen, out)
    assert record["status"] in ("stopped", "failed")


@docker_only
def test_prune_removes_standbys_and_the_next_cell_still_runs(sip, capsys, docker_client, namespace):
    sip.run_cell_magic("containerize", "", "pass")
    waiting = ready_standby(sip, docker_client, namespace)
    # A new kernel's orphan cleanup leaves a live kernel's standby alone ...
    DockerBackend(namespace=namespace)._prune_orphans(False)
    assert [c.id for c in standbys(docker_client, namespace)] == [waiting.id]
    # ... prune does not.
    out = subprocess.run(
        [sys.executable, "-m", "mlcontainer_magics.frontends.cli", "prune"],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
    )
    assert out.returncode == 0, out.stderr
    assert f"removed standby container {waiting.name}" in out.stdout
    assert standbys(docker_client, namespace) == []
    capsys.readouterr()
    sip.run_cell_magic("containerize", "", "print('after prune')")  # its standby is gone
    out = capsys.readouterr().out
    assert "after prune" in out and ran_in(out) != waiting.id[:12]


@docker_only
def test_an_idle_standby_goes(sip, docker_client, namespace):
    sip.run_line_magic("config", "ContainerizeMagics.standby_idle = 1.0")
    sip.run_cell_magic("containerize", "", "pass")
    magics(sip).backend.standbys.settle()
    assert wait_for(lambda: not standbys(docker_client, namespace), timeout=60)


KERNEL = textwrap.dedent("""
    from IPython.testing.globalipapp import get_ipython
    ip = get_ipython()
    ip.run_line_magic("load_ext", "mlcontainer_magics")
    ip.run_cell_magic("containerize", "", "print('up')")
    m = ip.magics_manager.registry["ContainerizeMagics"]
    m.backend.standbys.settle()
    [sb] = m.backend.standbys._ready
    print("READY", sb.container.name, sb.folder, flush=True)
""")


@docker_only
def test_standbys_go_when_the_kernel_exits(docker_client, namespace, no_leaks):
    proc = subprocess.run(
        [sys.executable, "-c", KERNEL],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MLCONTAINER_STANDBY": "1"},
    )
    ready = [line.split() for line in proc.stdout.splitlines() if line.startswith("READY")]
    assert ready, proc.stdout + proc.stderr
    _, name, folder = ready[0]
    assert name.startswith(f"{namespace}-standby-")
    assert standbys(docker_client, namespace) == []
    assert not Path(folder).exists()


@docker_only
def test_doctor_lists_the_standbys(sip, docker_client, namespace):
    sip.run_cell_magic("containerize", "", "pass")
    waiting = ready_standby(sip, docker_client, namespace)
    assert waiting.labels[f"{LABEL}.role"] == "standby"
    out = subprocess.run(
        [sys.executable, "-m", "mlcontainer_magics.frontends.cli", "doctor"],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
    )
    lines = [line.strip() for line in out.stdout.splitlines()]
    assert f"standby containers ({namespace}): 1" in out.stdout, out.stdout + out.stderr
    mine = [line for line in lines if line.startswith(waiting.name)]
    assert mine and "running, waiting, kernel" in mine[0] and "(gone)" not in mine[0]


@docker_only
def test_a_killed_kernels_standby_goes_with_its_folder(docker_client, namespace, no_leaks):
    proc = subprocess.Popen(
        [sys.executable, "-c", KERNEL + "import time; time.sleep(600)\n"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "MLCONTAINER_STANDBY": "1"},
    )
    try:
        ready = None
        for line in proc.stdout:  # type: ignore[union-attr]
            if line.startswith("READY"):
                ready = line.split()
                break
        assert ready is not None
    finally:
        proc.kill()
        proc.wait(10)
    _, name, folder = ready
    assert [c.name for c in standbys(docker_client, namespace)] == [name]  # orphaned
    # What a new kernel's backend does on its first connection: not other kernels' live
    # standbys, but those whose kernel is gone, with their folders.
    done = DockerBackend(namespace=namespace)._prune_orphans(False)
    assert any(name in line for line in done), done
    assert standbys(docker_client, namespace) == []
    assert not Path(folder).exists()


@docker_only
def test_a_standby_gone_after_its_claim_is_no_failure(
    sip, capsys, docker_client, namespace, monkeypatch
):
    sip.run_cell_magic("containerize", "", "pass")
    waiting = ready_standby(sip, docker_client, namespace)
    pool = magics(sip).backend.standbys
    real_claim = pool.claim

    def claim_then_remove(key):
        found = real_claim(key)
        if found is not None:  # removed from outside between the claim and the hand-over
            docker_client.containers.get(found.container.id).remove(force=True)
        return found

    monkeypatch.setattr(pool, "claim", claim_then_remove)
    capsys.readouterr()
    sip.user_ns["a"] = 20
    sip.run_cell_magic("containerize", "--in a --out b", "b = a + 1\nprint('ran')")
    out = capsys.readouterr().out
    assert "ran" in out and sip.user_ns["b"] == 21
    assert ran_in(out) != waiting.id[:12] and "standby container" not in out


@docker_only
@pytest.mark.parametrize(
    "cell",
    [
        "x = bytearray(200 * 2**20)",  # the runner itself is killed
        # a child is killed, the runner goes on to exit 0: the engine still says out of memory
        "import subprocess, sys\n"
        "subprocess.run([sys.executable, '-c', 'x = bytearray(200 * 2**20)'])\nprint('on')",
    ],
)
def test_out_of_memory_in_a_standby_says_so(sip, docker_client, namespace, cell):
    sip.run_cell_magic("containerize", "--memory 48m", "pass")
    ready_standby(sip, docker_client, namespace)
    with pytest.raises(RunError, match="Out of memory") as e:
        sip.run_cell_magic("containerize", "--memory 48m", cell)
    assert e.value.reason == "oom"


@docker_only
def test_interrupt_in_a_standby_stops_and_removes_it_at_once(sip, docker_client, namespace):
    import signal
    import time

    sip.run_cell_magic("containerize", "", "pass")
    waiting = ready_standby(sip, docker_client, namespace)

    def interrupt_when_running():
        if wait_for(lambda: magics(sip).backend._runs):
            time.sleep(0.5)
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    threading.Thread(target=interrupt_when_running, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        sip.run_cell_magic(
            "containerize",
            "-n sb-interrupted",
            "import time\nprint('on', flush=True)\ntime.sleep(120)",
        )
    flt = {"label": f"{LABEL}.namespace={namespace}"}
    assert waiting.id not in {c.id for c in docker_client.containers.list(all=True, filters=flt)}
    assert magics(sip).store.get("sb-interrupted")["status"] == "interrupted"
