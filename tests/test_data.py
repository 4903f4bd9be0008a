"""Files, data folders and secrets in a cell, against the real Docker engine: paths as in the
notebook, read-only unless asked, writes owned by the user, digests that rerun --verify checks,
and secrets that reach the cell and nowhere else."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import uuid

import pytest
from IPython.core.error import UsageError

from mlcontainer_magics.core import secrets as secret_values
from mlcontainer_magics.core import snapshots
from mlcontainer_magics.core.spec import parse_mounts, parse_secret_names
from mlcontainer_magics.errors import RunError, SpecError, VerificationFailed
from mlcontainer_magics.frontends import cli

CSV = "x,y\n1,2\n3,4\n"


@pytest.fixture
def notebook_dir(tmp_path, monkeypatch):
    """A notebook's folder with a CSV and a data folder; the kernel runs in it."""
    root = tmp_path / "nb"
    (root / "data" / "raw").mkdir(parents=True)
    (root / "x.csv").write_text(CSV)
    for i in range(3):
        (root / "data" / "raw" / f"part{i}.txt").write_text(f"part {i}\n" * (i + 1))
    (root / "models").mkdir()
    monkeypatch.chdir(root)
    return root


def magics(ip):
    return ip.magics_manager.registry["ContainerizeMagics"]


def last_record(ip):
    store = magics(ip).store
    return store.get(store.list(limit=1)[0]["id"])


# -- parsing: before anything is built -------------------------------------------------------


def test_mount_paths_map_to_the_same_relative_place(notebook_dir, tmp_path):
    outside = tmp_path / "shared"
    outside.mkdir()
    mounts = parse_mounts(["x.csv", "data:rw", str(outside), "data/raw:/raw"], notebook_dir)
    by_target = {m.target: m for m in mounts}
    assert by_target["/work/x.csv"].source == str(notebook_dir / "x.csv")
    assert by_target["/work/data"].writable and not by_target["/work/x.csv"].writable
    assert by_target[str(outside)].source == str(outside)  # outside: the same absolute path
    assert by_target["/raw"].source == str(notebook_dir / "data" / "raw")


@pytest.mark.parametrize(
    "item,words",
    [
        ("../etc", "'..' is not allowed"),
        ("data/../x.csv", "'..' is not allowed"),
        ("missing.csv", "does not exist"),
        ("x.csv:/etc/passwd", "system folder"),
        ("x.csv:/mlc/cell.py", "system folder"),
        ("a:b:c:d", "use PATH"),
    ],
)
def test_bad_mounts_are_refused_with_what_to_do(notebook_dir, item, words):
    with pytest.raises(SpecError, match=words):
        parse_mounts([item], notebook_dir)


def test_a_symlink_out_of_a_mounted_folder_is_refused(notebook_dir):
    (notebook_dir / "data" / "raw" / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(SpecError, match="passwd"):
        parse_mounts(["data"], notebook_dir)
    (notebook_dir / "data" / "raw" / "passwd").unlink()
    (notebook_dir / "data" / "up").symlink_to("../x.csv")
    with pytest.raises(SpecError, match="up"):
        parse_mounts(["data"], notebook_dir)


def test_secrets_come_from_the_environment_a_file_or_the_secrets_file(tmp_path):
    key = tmp_path / "key.txt"
    key.write_text("from-a-file\n")
    env_file = tmp_path / "secrets.env"
    env_file.write_text("# tokens\nexport B_TOKEN='from-the-env-file'\n")
    got = secret_values.resolve(
        ["A_TOKEN", "B_TOKEN", f"C_KEY=@{key}"], {"A_TOKEN": "from-env"}, str(env_file)
    )
    assert got == {"A_TOKEN": "from-env", "B_TOKEN": "from-the-env-file", "C_KEY": "from-a-file"}
    with pytest.raises(SpecError, match="MISSING_TOKEN is not set"):
        secret_values.resolve(["MISSING_TOKEN"], {}, None)
    with pytest.raises(SpecError, match="never the value itself"):
        secret_values.resolve(["A_TOKEN=hunter2"], {}, None)
    assert parse_secret_names(["B", "A=@x", "B"]) == ("A", "B")
    with pytest.raises(SpecError):
        parse_secret_names(["not-a-name"])


def test_the_masker_hides_a_value_split_across_chunks():
    seen = []
    mask = secret_values.Masker(lambda stream, text: seen.append((stream, text)), ["s3cr3t!"])
    for chunk in ("token: s3", "cr", "3t! and s3cr3t!", " done s3"):
        mask("stdout", chunk)
    mask.close()
    text = "".join(t for _, t in seen)
    assert text == "token: *** and *** done s3" and "s3cr3t" not in text


# -- against the engine ------------------------------------------------------------------------


@pytest.mark.docker
@pytest.mark.usefixtures("no_leaks")
def test_a_cell_reads_a_csv_and_a_folder_by_the_notebooks_paths(ip, notebook_dir, capsys):
    ip.run_cell_magic(
        "containerize",
        "--mount x.csv data",
        "import os\nprint(open('x.csv').read().splitlines()[1])\n"
        "print(sorted(os.listdir('data/raw')), open('data/raw/part2.txt').read().count('part'))",
    )
    out = capsys.readouterr().out
    assert "1,2\n" in out and "['part0.txt', 'part1.txt', 'part2.txt'] 3" in out
    record = last_record(ip)
    mounts = {m["target"]: m for m in record["mounts"]}
    assert mounts["/work/x.csv"]["size"] == len(CSV) and mounts["/work/data"]["count"] == 3
    assert all(m["mode"] == "ro" and m["digest"] for m in mounts.values())


@pytest.mark.docker
@pytest.mark.usefixtures("no_leaks")
def test_a_read_only_mount_cannot_be_written(ip, notebook_dir):
    with pytest.raises(RunError) as info:
        ip.run_cell_magic("containerize", "--mount data", "open('data/new.txt', 'w')")
    assert "Read-only file system" in info.value.logs
    assert not (notebook_dir / "data" / "new.txt").exists()


@pytest.mark.docker
@pytest.mark.usefixtures("no_leaks")
def test_a_writable_mount_lands_on_the_host_as_the_users(ip, notebook_dir):
    ip.run_cell_magic(
        "containerize",
        "--mount x.csv models:rw",
        "import os\nos.makedirs('models/v1')\n"
        "open('models/v1/model.txt', 'w').write(open('x.csv').read().upper())",
    )
    written = notebook_dir / "models" / "v1" / "model.txt"
    assert written.read_text() == CSV.upper()
    assert (written.stat().st_uid, written.stat().st_gid) == (os.getuid(), os.getgid())
    record = last_record(ip)
    assert set(record["written"]["/work/models"]) == {"v1/model.txt"}
    size, digest = record["written"]["/work/models"]["v1/model.txt"]
    assert size == len(CSV) and digest


@pytest.mark.docker
@pytest.mark.usefixtures("no_leaks")
def test_rerun_verify_passes_on_unchanged_data_and_names_a_changed_file(
    ip, notebook_dir, capsys, monkeypatch
):
    name = f"data-{uuid.uuid4().hex[:6]}"
    ip.run_cell_magic(
        "containerize",
        f"-n {name} --mount data",
        "import os\nprint(sum(len(open('data/raw/' + f).read()) for f in os.listdir('data/raw')))",
    )
    capsys.readouterr()
    original = last_record(ip)["id"]  # reruns take the same name
    monkeypatch.setenv("MLCONTAINER_STORE", str(magics(ip).store.root))
    assert cli.main(["rerun", original, "--verify"]) == 0
    assert "verified" in capsys.readouterr().out
    (notebook_dir / "data" / "raw" / "part1.txt").write_text("changed!\n")
    assert cli.main(["rerun", original, "--verify"]) == 1
    err = capsys.readouterr().err
    assert "NOT reproduced" in err and "raw/part1.txt changed" in err
    with pytest.raises(VerificationFailed, match="part1.txt"):
        ip.run_line_magic("container", f"rerun {original} --verify")


@pytest.mark.docker
@pytest.mark.usefixtures("no_leaks")
def test_a_secret_reaches_the_cell_and_nowhere_else(
    ip, notebook_dir, tmp_path, capsys, monkeypatch, docker_client
):
    value = f"s3cret-{uuid.uuid4().hex}"
    monkeypatch.setenv("MLC_TEST_TOKEN", value)
    name = f"sec-{uuid.uuid4().hex[:6]}"
    ip.run_cell_magic(
        "containerize",
        f"-n {name} -r six==1.16.0 --secret MLC_TEST_TOKEN",
        "import os, hashlib\n"
        "v = os.environ['MLC_TEST_TOKEN']\n"
        "assert open('/run/secrets/MLC_TEST_TOKEN').read() == v\n"
        "print('sha', hashlib.sha256(v.encode()).hexdigest())\n"
        "print('leak', v)\n",
    )
    out = capsys.readouterr().out
    import hashlib

    assert f"sha {hashlib.sha256(value.encode()).hexdigest()}" in out  # the cell read it
    assert "leak ***" in out and value not in out  # masked as it streamed
    record = last_record(ip)
    assert record["spec"]["secrets"] == ["MLC_TEST_TOKEN"]
    needle = value.encode()
    store = magics(ip).store
    # The store: the database (and its WAL) and every file kept with snapshots. Searched by
    # another process: closing a file of an open SQLite database here would drop this
    # process's locks on it (POSIX), which the store's own connections rely on.
    found = subprocess.run(
        ["grep", "-r", "-l", "-a", "-F", value, str(store.root)], capture_output=True, text=True
    )
    assert found.returncode == 1 and not found.stdout, found.stdout
    # The environment image: its layers and config.
    image = b"".join(docker_client.images.get(record["env_image_id"]).save())
    with tarfile.open(fileobj=io.BytesIO(image)) as tar:
        for member in tar.getmembers():
            if member.isfile():
                assert needle not in tar.extractfile(member).read(), member.name
    # The logs, an export and its Kubernetes manifests.
    monkeypatch.setenv("MLCONTAINER_STORE", str(store.root))
    assert cli.main(["logs", name]) == 0 and value not in capsys.readouterr().out
    assert cli.main(["export", name, str(tmp_path / "export"), "--k8s"]) == 0
    for path in (tmp_path / "export").rglob("*"):
        if path.is_file():
            assert needle not in path.read_bytes(), path
    job = (tmp_path / "export" / "job.yaml").read_text()
    assert "MLC_TEST_TOKEN" in job  # referenced by name, to fill in
    assert "MLC_TEST_TOKEN" in (tmp_path / "export" / "README.md").read_text()
    # A rerun takes the value from the environment again.
    monkeypatch.delenv("MLC_TEST_TOKEN")
    assert cli.main(["rerun", name]) == 2
    assert "MLC_TEST_TOKEN is not set" in capsys.readouterr().err


@pytest.mark.docker
@pytest.mark.usefixtures("no_leaks")
def test_bad_mounts_fail_in_the_cell_before_anything_runs(ip, notebook_dir):
    store = magics(ip).store
    before = store.count()
    for line in ("--mount ../nb", "--mount nothere.csv", "--secret NOT_SET_ANYWHERE"):
        with pytest.raises(UsageError):
            ip.run_cell_magic("containerize", line, "print('never')")
    assert store.count() == before


@pytest.mark.docker
@pytest.mark.usefixtures("no_leaks")
def test_export_carries_small_inputs_and_lists_large_ones(ip, notebook_dir, tmp_path, capsys):
    name = f"exp-{uuid.uuid4().hex[:6]}"
    ip.run_cell_magic("containerize", f"-n {name} --mount x.csv data", "print('ok')")
    capsys.readouterr()
    store = magics(ip).store
    small = tmp_path / "small"
    from mlcontainer_magics.backends.export import export

    export(store, name, small, magics(ip).backend)
    assert (small / "data" / "work" / "x.csv").read_text() == CSV
    assert (small / "data" / "work" / "data" / "raw" / "part0.txt").exists()
    assert "COPY --chown=1000:1000 data/ /" in (small / "Dockerfile").read_text()
    large = tmp_path / "large"
    export(store, name, large, magics(ip).backend, data_limit=10)
    assert not (large / "data").exists()
    listing = (large / "DATA.md").read_text()
    record = store.get(name)
    for m in record["mounts"]:
        assert m["digest"] in listing and m["target"] in listing
    assert "-v " in (large / "README.md").read_text()


def test_kubernetes_refuses_what_cannot_reach_the_cluster_before_any_push(tmp_path):
    from mlcontainer_magics.backends.kubernetes.backend import KubernetesBackend
    from mlcontainer_magics.core import runs
    from mlcontainer_magics.core.spec import EnvSpec, RunSpec
    from mlcontainer_magics.core.store import Store
    from mlcontainer_magics.errors import CapabilityMissing

    (tmp_path / "models").mkdir()
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "blob.bin").write_bytes(b"x" * (600 * 1024))
    store = Store(tmp_path / "store")
    backend = KubernetesBackend(client=object())
    for item, words in (("models:rw", "a writable mount"), ("big", "more than the 524.3 kB")):
        spec = RunSpec(
            code="pass",
            env_spec=EnvSpec("python:3.11-slim"),
            mounts=parse_mounts([item], tmp_path),
        )
        with pytest.raises(CapabilityMissing, match=words) as info:
            runs.execute(spec, backend, store=store)
        assert "KubernetesConfig.volumes" in str(info.value) and "pvc:CLAIM" in str(info.value)
    assert store.count() == 0


def test_a_named_volume_is_a_claim_and_need_not_exist_here(tmp_path):
    mounts = parse_mounts(
        ["data", "models:rw"],
        tmp_path,
        volumes={"data": "pvc:training-data/v2", "models": "pvc:models"},
    )
    assert [(m.source, m.target, m.writable) for m in mounts] == [
        ("pvc:training-data/v2", "/work/data", False),
        ("pvc:models", "/work/models", True),
    ]


def test_diff_shows_data_changes():
    a = {
        "id": "a",
        "mounts": [{"target": "/work/data", "digest": "x:1"}],
        "written": {"/work/models": {"m.bin": [3, "x:a"]}},
    }
    b = {
        "id": "b",
        "mounts": [{"target": "/work/data", "digest": "x:2"}],
        "written": {"/work/models": {"m.bin": [4, "x:b"]}},
    }
    text = snapshots.diff(a, b)
    assert "mount /work/data: x:1 -> x:2" in text
    assert "written /work/models: m.bin changed" in text


@pytest.mark.docker
@pytest.mark.usefixtures("no_leaks")
def test_links_and_a_single_writable_file_are_recorded_as_written(ip, notebook_dir):
    (notebook_dir / "log.txt").write_text("start\n")
    ip.run_cell_magic(
        "containerize",
        "--mount log.txt:rw models:rw",
        "import os\nopen('log.txt', 'a').write('more\\n')\n"
        "os.symlink('nowhere', 'models/dangling')\nopen('models/m.txt', 'w').write('m')",
    )
    written = last_record(ip)["written"]
    assert set(written["/work/log.txt"]) == {"log.txt"}
    assert written["/work/models"]["dangling"][1].startswith("link:")
    assert written["/work/models"]["m.txt"][0] == 1
