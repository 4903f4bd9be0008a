"""Snapshots on the real engine: record, list, rerun --verify, diff, export, concurrency."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from importlib import metadata

import pytest

from mlcontainer_magics.backends import make_backend
from mlcontainer_magics.backends.docker.backend import DockerBackend
from mlcontainer_magics.config import MlcontainerSettings
from mlcontainer_magics.core import runs, snapshots
from mlcontainer_magics.core.spec import EnvSpec, RunSpec
from mlcontainer_magics.core.store import Store
from mlcontainer_magics.errors import VerificationFailed

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("no_leaks")]


@pytest.fixture
def store(tmp_path, ip, monkeypatch):
    root = tmp_path / "store"
    monkeypatch.setenv("MLCONTAINER_STORE", str(root))
    ip.run_line_magic("config", f"ContainerizeMagics.store_dir = {str(root)!r}")
    return Store(root)


def cli(*args, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "mlcontainer_magics.frontends.cli", *args],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"mlcontainer {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def test_a_run_is_recorded_and_listed(ip, store, capsys):
    ip.run_cell_magic(
        "containerize",
        "-n hello -r six==1.16.0 -e TOKEN=s3cret",
        "import six\nprint('six', six.__version__)",
    )
    [summary] = store.list()
    record = store.get(summary["id"])
    assert record["status"] == "done" and record["exit_code"] == 0
    assert record["name"] == "hello" and "six 1.16.0" in record["stdout"]
    assert [(e["name"], e["version"]) for e in record["lock"]] == [("six", "1.16.0")]
    assert record["env"] == {"TOKEN": "***"} and "s3cret" not in json.dumps(record)
    assert record["env_image_id"].startswith("sha256:") and record["base_image_id"]
    assert set(record["timings"]) >= {"environment", "run"}
    out = cli("list").stdout.splitlines()
    assert out[0].split()[:3] == [record["id"], "hello", "done"]
    assert json.loads(cli("list", "--json").stdout)[0]["id"] == record["id"]
    assert "six 1.16.0" in cli("logs", record["id"][:6]).stdout


def test_export_rebuilds_with_plain_docker(ip, store, tmp_path, docker_client):
    ip.user_ns["words"] = ["alpha", "beta"]
    ip.run_cell_magic(
        "containerize",
        "-r six==1.16.0 --in words",
        "import six\nprint(six.__version__, '-'.join(words))",
    )
    sid = store.list()[0]["id"]
    dest = tmp_path / "export"
    cli("export", sid, str(dest))
    assert (dest / "Dockerfile").exists() and (dest / "requirements.lock").exists()
    assert list((dest / "wheels").glob("six-1.16.0*.whl"))
    tag = f"mlctest-export-{sid}"
    try:
        subprocess.run(
            ["docker", "build", "-q", "-t", tag, str(dest)],
            check=True,
            capture_output=True,
            timeout=600,
        )
        run = subprocess.run(
            ["docker", "run", "--rm", "--network", "none", tag],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout == store.get(sid)["stdout"] == "1.16.0 alpha-beta\n"


def test_rerun_verify_after_images_are_removed_and_on_tampering(
    ip, store, namespace, docker_client
):
    ip.user_ns["x"] = [float(i) for i in range(10)]
    ip.run_cell_magic(
        "containerize",
        "-r six==1.16.0 --in x --out y --no-capture",
        "import six\ny = {'total': float(sum(x)), 'six': six.__version__}",
    )
    assert ip.user_ns["y"] == {"total": 45.0, "six": "1.16.0"}
    record = store.list()[0]
    docker_client.images.remove(record["env_image"], force=True)
    ip.run_line_magic("container", f"rerun {record['id']} --verify")
    assert store.count() == 2
    rerun = store.list()[0]
    assert store.get(rerun["id"])["rerun_of"] == record["id"]
    # A snapshot recorded before values were digested with xxh3-128 says sha256: it verifies.
    assert store.get(record["id"])["outputs"]["y"]["digest"].startswith("xxh3-128:")
    kept = store.artifacts_dir(record["id"]) / "out" / "v-y.json"
    old = "sha256:" + hashlib.sha256(kept.read_bytes()).hexdigest()
    store.update(record["id"], outputs={"y": {"format": "json", "digest": old}})
    ip.run_line_magic("container", f"rerun {record['id']} --verify")
    assert store.get(store.list()[0]["id"])["outputs"]["y"]["digest"] == old
    store.update(record["id"], outputs={"y": {"format": "json", "digest": "sha256:0"}})
    with pytest.raises(VerificationFailed, match="output y differs"):
        ip.run_line_magic("container", f"rerun {record['id']} --verify")
    proc = cli("rerun", record["id"], "--verify", check=False)
    assert proc.returncode == 1 and "NOT reproduced" in proc.stderr


def test_an_environment_built_on_another_reruns_from_its_lock_alone(ip, store, docker_client):
    """Built on the six environment, its lock still holds everything: with its image gone,
    rerun --verify rebuilds it from the base and the lock, exactly."""
    ip.run_cell_magic("containerize", "-r six==1.16.0 --no-capture", "pass")
    ip.run_cell_magic(
        "containerize",
        "-n layered -r six==1.16.0 idna==3.5 --no-capture",
        "import idna, six\nprint(idna.__version__, six.__version__)",
    )
    record = store.get("layered")
    assert record["stdout"] == "3.5 1.16.0\n"
    assert docker_client.images.get(record["env_image_id"]).labels["org.mlcontainer.parent"]
    docker_client.images.remove(record["env_image"])  # its only tag: the image goes
    ip.run_line_magic("container", "rerun layered --verify")
    rerun = store.get(store.list()[0]["id"])
    assert rerun["rerun_of"] == record["id"] and rerun["env_cached"] is False
    assert [(e["name"], e["version"]) for e in rerun["lock"]] == [
        ("idna", "3.5"),
        ("six", "1.16.0"),
    ]
    assert docker_client.images.get(rerun["env_image_id"]).labels["org.mlcontainer.parent"] == ""


def test_diff_names_the_package_change(ip, store):
    ip.run_cell_magic("containerize", "-n old -r six==1.15.0", "import six; print(six.__version__)")
    ip.run_cell_magic("containerize", "-n new -r six==1.16.0", "import six; print(six.__version__)")
    text = cli("diff", "old", "new").stdout
    assert "~ six 1.15.0 -> 1.16.0" in text
    assert "-1.15.0" in text and "+1.16.0" in text  # the stdout changed too


def test_captured_pins_are_the_kernels_versions(ip, store, capsys):
    ip.run_cell_magic(
        "containerize", "", "import packaging\nprint('packaging', packaging.__version__)"
    )
    out = capsys.readouterr().out
    kernel = metadata.version("packaging")
    assert f"pinned from the kernel: packaging=={kernel}" in out
    assert f"packaging {kernel}" in out
    record = store.get(store.list()[0]["id"])
    assert record["captured"] == [f"packaging=={kernel}"]


def test_failed_build_leaves_no_snapshot(ip, store):
    with pytest.raises(Exception):
        ip.run_cell_magic("containerize", "-r mlctest-no-such-package==1.0", "pass")
    assert store.count() == 0


def test_concurrent_runs_into_one_store(store, namespace):
    backend = DockerBackend(namespace=namespace)
    errors = []

    def one(i):
        try:
            spec = RunSpec(code=f"print({i})", env_spec=EnvSpec("python:3.11-slim"), name=f"c{i}")
            runs.execute(spec, backend, store=Store(store.root))
        except Exception as e:  # collected and reported below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    records = [store.get(s["id"]) for s in store.list()]
    assert sorted(r["stdout"] for r in records) == [f"{i}\n" for i in range(6)]
    assert all(r["status"] == "done" and r["name"] == f"c{r['stdout'].strip()}" for r in records)


def _dead_owner() -> str:
    proc = subprocess.Popen(["true"])  # a process of this host that has ended
    proc.wait()
    return f"{socket.gethostname()}:{proc.pid}"


def _orphan(docker_client, namespace, owner):
    return docker_client.containers.create(
        "python:3.11-slim",
        ["sleep", "60"],
        labels={
            "org.mlcontainer.managed": "1",
            "org.mlcontainer.namespace": namespace,
            "org.mlcontainer.owner": owner,
        },
    )


def test_orphans_of_dead_kernels_are_cleaned_when_a_kernel_connects(namespace, docker_client):
    dead = _orphan(docker_client, namespace, _dead_owner())
    elsewhere = _orphan(docker_client, namespace, "another-machine:1")
    try:
        make_backend(
            "docker", MlcontainerSettings(), namespace=namespace, clean_orphans=True
        ).client  # a new kernel's first connection
        names = []
        for _ in range(100):
            names = [
                c.name
                for c in docker_client.containers.list(
                    all=True,
                    ignore_removed=True,
                    filters={"label": f"org.mlcontainer.namespace={namespace}"},
                )
            ]
            if dead.name not in names:
                break
            time.sleep(0.1)
        assert dead.name not in names and elsewhere.name in names
    finally:
        elsewhere.remove(force=True)


def test_prune_removes_orphans_and_unused_images(store, namespace, docker_client):
    backend = DockerBackend(namespace=namespace)
    orphan = _orphan(docker_client, namespace, _dead_owner())
    store.put({"id": "abcdef123456", "status": "running"})
    done = snapshots.prune(store, backend)
    assert any(orphan.name in line for line in done)
    assert store.get("abcdef123456")["status"] == "interrupted"
