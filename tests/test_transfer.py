"""Values' files on the host, without a Docker engine: digests (the algorithm named in each, old
sha256 records still verified), inputs kept with the snapshot, where run folders are made, and
the runner's check before it writes a large output into a folder in RAM."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import xxhash

from mlcontainer_magics.core import runs, snapshots, transfer
from mlcontainer_magics.core.spec import EnvSpec, RunSpec
from mlcontainer_magics.errors import SpecError
from mlcontainer_magics.runner import mlc_runner

DATA = bytes(range(256)) * 5000  # more than one read block


def test_a_digest_names_its_algorithm_and_sha256_is_still_computed(tmp_path):
    path = tmp_path / "v.bin"
    path.write_bytes(DATA)
    assert transfer.file_digest(path) == "xxh3-128:" + xxhash.xxh3_128(DATA).hexdigest()
    assert transfer.DIGEST == "xxh3-128"
    assert transfer.file_digest(path, "sha256") == "sha256:" + hashlib.sha256(DATA).hexdigest()
    assert transfer.digest_algorithm("sha256:ab12") == "sha256"
    assert transfer.digest_algorithm(None) is None and transfer.digest_algorithm("ab") is None
    with pytest.raises(SpecError, match="Unknown digest algorithm 'md7'.*Upgrade"):
        transfer.file_digest(path, "md7")


def test_an_input_is_kept_by_a_link_on_one_filesystem_and_a_copy_across(tmp_path, monkeypatch):
    src = tmp_path / "in" / "a.bin"
    src.parent.mkdir()
    src.write_bytes(DATA)
    linked = tmp_path / "store" / "in" / "a.bin"
    assert transfer.keep_digest(src, linked) == transfer.file_digest(src)
    assert linked.stat().st_ino == src.stat().st_ino

    def cross_device(a, b):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(transfer.os, "link", cross_device)
    copied = tmp_path / "other" / "in" / "a.bin"
    assert transfer.keep_digest(src, copied) == transfer.file_digest(src)
    assert copied.read_bytes() == DATA and copied.stat().st_ino != src.stat().st_ino
    assert transfer.keep_digest(src, None) == transfer.file_digest(src)


def test_background_digests_keep_the_inputs_and_say_when_they_cannot(tmp_path):
    workdir = tmp_path / "run"
    records = transfer.write_inputs({"a": np.arange(10.0), "s": "text"}, workdir / "in")
    wanted = {name: rec.pop("digest") for name, rec in records.items()}
    keep = tmp_path / "snapshot"
    transfer.BackgroundDigests(records, workdir, keep=keep).fill(records)
    assert {name: rec["digest"] for name, rec in records.items()} == wanted
    assert (keep / records["a"]["file"]).read_bytes() == (
        workdir / records["a"]["file"]
    ).read_bytes()
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the snapshot's folder should be")
    with pytest.raises(OSError):
        transfer.BackgroundDigests(records, workdir, keep=blocked).fill(records)


def test_value_sizes_are_known_for_arrays_bytes_text_and_frames():
    import pandas as pd

    assert transfer.value_size(np.zeros(1000)) == 8000
    assert transfer.value_size(b"abc") == 3 and transfer.value_size("abcd") == 4
    assert transfer.value_size(pd.DataFrame({"x": np.zeros(100)})) >= 800
    assert transfer.value_size({"a": 1}) == 0


class Point:  # pickled (by reference to this module), not JSON
    def __init__(self, x):
        self.x = x


class Tripwire:
    """Notes whether pickle got as far as it."""

    reached = False

    def __reduce__(self):
        Tripwire.reached = True
        return (Tripwire, ())


@pytest.mark.parametrize(
    "value",
    [{1, 2, 3}, {(1, 2): "a", (3, 4): "b"}, [Point(1), Point(2.5)], frozenset(range(1000))],
    ids=["set", "tuple-keys", "objects", "frozenset"],
)
def test_a_pickled_values_encoded_size_under_the_limit_is_its_files_size(value, tmp_path):
    assert transfer.choose_format(value) == "pickle"
    path = transfer.write_value(value, tmp_path, "v", "pickle")
    size = path.stat().st_size
    assert transfer.encoded_size(value, limit=1 << 20) == size
    assert transfer.encoded_size(value, limit=size) == size  # at the limit: still exact
    assert transfer.encoded_size(value, limit=size - 1) > size - 1  # one under: over it
    # Without a limit, nothing is pickled: a backend without a bound (Docker) pays nothing.
    assert transfer.encoded_size(value) == 0


def test_a_large_pickled_value_is_measured_only_a_little_past_the_limit():
    import pickle

    Tripwire.reached = False
    value = [set(range(1_000_000)), Tripwire()]  # about 4.6 MB pickled
    limit = 100 * 1024
    size = transfer.encoded_size(value, limit=limit)
    assert limit < size <= limit + 2 * 64 * 1024  # over it, by at most about a pickle frame
    assert not Tripwire.reached  # the pickling stopped there, long before the end
    assert len(pickle.dumps(value, protocol=transfer.PICKLE_PROTOCOL)) > 30 * size
    assert Tripwire.reached  # (the tripwire does trip when the whole value is pickled)
    assert 0 < transfer.encoded_size({1}, limit=0)  # nothing is left: over at the first byte


def test_a_value_pickle_cannot_write_is_an_error_not_a_size():
    import threading

    with pytest.raises(TypeError, match="lock"):
        transfer.encoded_size([threading.Lock()], limit=1 << 20)
    with pytest.raises(SpecError, match=r"^--in x: a list cannot be sent into a container"):
        transfer.check_inputs(["x"], {"x": [threading.Lock()]})


# -- where run folders are made --------------------------------------------------------------


def spec(**kw) -> RunSpec:
    return RunSpec(code="pass", env_spec=EnvSpec("python:3.11-slim"), **kw)


@pytest.fixture
def ram_root(tmp_path, monkeypatch):
    """A folder that run_folder_root takes for RAM, with a given room."""
    root = tmp_path / "ram"
    root.mkdir()
    room = {"bytes": 64 << 30}
    monkeypatch.delenv(runs.RUN_DIR_ENV, raising=False)
    monkeypatch.setattr(runs, "RAM_ROOTS", (str(root),))
    monkeypatch.setattr(runs, "in_memory", lambda path: str(path).startswith(str(root)))
    monkeypatch.setattr(runs, "ram_room", lambda path: room["bytes"])
    return root, room


def test_run_folders_go_to_ram_when_it_has_room(ram_root):
    root, room = ram_root
    assert runs.run_folder_root() == str(root)
    room["bytes"] = runs.RAM_RESERVE  # nothing to spare
    assert runs.run_folder_root() is None


def test_a_run_folder_stays_on_disk_for_large_inputs_or_a_memory_limit(ram_root, tmp_path):
    root, room = ram_root
    room["bytes"] = runs.RAM_RESERVE + (3 << 20)
    small = np.zeros(1 << 17)  # 1 MiB: it and an output as large fit
    assert runs.run_folder_for(spec(), {"a": small}) == str(root)
    big = np.zeros(1 << 18)  # 2 MiB: twice that does not
    assert runs.run_folder_for(spec(), {"a": big}) is None
    # What the cell writes to a tmpfs counts against its --memory; page cache on disk need not.
    assert runs.run_folder_for(spec(memory=2**30), {}) is None
    workdir, _ = runs.prepare_workdir(spec(), {"a": small})
    try:
        assert workdir.parent == root
    finally:
        runs.remove_soon(workdir)


def test_a_run_folder_root_of_the_users_choice(tmp_path, monkeypatch):
    monkeypatch.setenv(runs.RUN_DIR_ENV, str(tmp_path))
    assert runs.run_folder_root() == str(tmp_path)
    workdir, _ = runs.prepare_workdir(spec(), {})
    assert workdir.parent == tmp_path
    runs.remove_soon(workdir)
    monkeypatch.setenv(runs.RUN_DIR_ENV, str(tmp_path / "nope"))
    with pytest.raises(SpecError, match="MLCONTAINER_RUN_DIR=.*nope: no such folder"):
        runs.prepare_workdir(spec(), {})


def test_tmpfs_is_found_from_the_mount_table():
    if not Path("/proc/self/mounts").exists():
        pytest.skip("no mount table (not Linux)")
    mounts = [line.split() for line in Path("/proc/self/mounts").read_text().splitlines()]
    tmpfs = [m[1] for m in mounts if m[2] == "tmpfs" and os.path.isdir(m[1])]
    if tmpfs:
        assert runs.in_memory(tmpfs[0]) and mlc_runner._in_memory(tmpfs[0])
    assert not runs.in_memory("/proc") and not mlc_runner._in_memory("/proc")
    assert runs.ram_room("/no/such/folder") == 0


# -- the runner's check before it writes into a folder in RAM ---------------------------------


def test_the_runner_refuses_an_output_that_would_fill_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(mlc_runner, "_in_memory", lambda folder: True)
    monkeypatch.setattr(mlc_runner, "_memory_available", lambda: mlc_runner.RAM_RESERVE + (3 << 20))
    out = tmp_path / "out"
    out.mkdir()
    ns = {"big": np.zeros(1 << 19), "fits": np.zeros(1 << 17), "small": [1, 2]}  # 4, 1 MiB
    mlc_runner.write_outputs(["big", "fits", "small"], ns, {"numpy": True}, str(out))
    result = json.loads((out / "outputs.json").read_text())
    assert "run's folder is in memory" in result["big"]["error"]
    assert "MLCONTAINER_RUN_DIR" in result["big"]["error"]
    assert result["fits"]["format"] == "npy" and result["small"]["format"] == "json"
    assert not (out / "v-big.npy").exists()
    monkeypatch.setattr(mlc_runner, "_in_memory", lambda folder: False)  # on disk: no limit
    assert mlc_runner.no_room(ns["big"], str(out)) is None


# -- verify and diff across digest algorithms -------------------------------------------------


def test_verify_compares_digests_of_the_recorded_algorithm():
    old = {"status": "done", "outputs": {"y": {"digest": "sha256:aa"}, "z": {"digest": "md7:1"}}}
    new = {
        "status": "done",
        "outputs": {"y": {"digest": "sha256:aa"}, "z": {"digest": "xxh3-128:2"}},
    }
    problems = snapshots.verify_against(old, new)
    assert problems == [
        "output z cannot be compared: recorded as md7:1, an algorithm this version does not "
        "know; upgrade mlcontainer-magics"
    ]
    new["outputs"]["y"]["digest"] = "sha256:bb"
    assert "output y differs: recorded sha256:aa, now sha256:bb" in snapshots.verify_against(
        old, new
    )


def test_diff_says_when_two_digests_are_of_different_algorithms():
    a = {"id": "a", "outputs": {"y": {"digest": "sha256:aa"}}}
    b = {"id": "b", "outputs": {"y": {"digest": "xxh3-128:bb"}}}
    assert "(digests of two algorithms: the values may be equal)" in snapshots.diff(a, b)


def test_a_standby_folder_is_used_only_where_the_runs_own_would_be(ram_root, tmp_path):
    """A standby's folder was made for its settings without the inputs: a run whose inputs
    keep it out of RAM gives the claim back (runs._same_root decides)."""
    root, room = ram_root
    room["bytes"] = runs.RAM_RESERVE + (3 << 20)
    standby = root / "mlc-standby-x"
    standby.mkdir()
    assert runs._same_root(standby, runs.run_folder_for(spec(), {"a": np.zeros(1 << 17)}))
    assert not runs._same_root(standby, runs.run_folder_for(spec(), {"a": np.zeros(1 << 18)}))
    on_disk = Path(tempfile.mkdtemp(prefix="mlc-standby-"))
    try:
        assert runs._same_root(on_disk, runs.run_folder_for(spec(memory=2**30), {}))
    finally:
        on_disk.rmdir()
