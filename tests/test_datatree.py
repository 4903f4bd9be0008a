"""Digests of mounted data (core/datatree): on real files in tmp_path, no mocked filesystem."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import xxhash

from mlcontainer_magics.core import datatree
from mlcontainer_magics.core.datatree import (
    CACHE_FILE,
    DigestCache,
    changed_files,
    check_tree,
    digest_tree,
    snapshot_files,
    written_since,
)
from mlcontainer_magics.errors import SpecError

ROOT = Path(__file__).resolve().parent.parent
HOUR_AGO = time.time() - 3600


def make(folder: Path, files: dict[str, bytes], *, old: bool = True) -> Path:
    """Write ``files`` under ``folder``; dated an hour back (older than RACY_SECONDS), as a
    dataset that exists already, unless ``old`` is False."""
    folder.mkdir(parents=True, exist_ok=True)
    for rel, content in files.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        if old:
            os.utime(path, (HOUR_AGO, HOUR_AGO))
    return folder


DATA = {
    "train.csv": b"a,b\n1,2\n" * 1000,
    "test.csv": b"a,b\n3,4\n" * 10,
    "images/cat.png": os.urandom(3 * datatree.CHUNK + 17),  # several reads, a partial last
    "images/dog.png": os.urandom(datatree.PARALLEL_FROM + 1),  # big enough for the threads
    "images/bird.png": os.urandom(datatree.PARALLEL_FROM * 2),
    "empty.txt": b"",
}


# -- the digest --------------------------------------------------------------------------------


def test_file_digests_are_xxh3_of_the_content_and_the_tree_sums_them_up(tmp_path):
    tree = digest_tree(make(tmp_path / "data", DATA))
    assert tree.files == {
        rel: (len(content), xxhash.xxh3_128(content).hexdigest())
        for rel, content in sorted(DATA.items())
    }
    assert tree.digest.startswith("xxh3-128:") and len(tree.digest) == len("xxh3-128:") + 32
    assert tree.count == len(DATA)
    assert tree.size == sum(len(c) for c in DATA.values())
    assert tree.read_bytes == tree.size  # no cache: everything read
    assert list(tree.files) == sorted(tree.files)
    assert tree.seconds >= 0


def test_digest_is_stable_and_independent_of_creation_order(tmp_path):
    a = make(tmp_path / "a", DATA)
    b = make(tmp_path / "b", dict(reversed(list(DATA.items()))))
    first = digest_tree(a)
    assert digest_tree(a) == first  # content only: not seconds, nor what was read
    assert digest_tree(b).digest == first.digest
    assert digest_tree(b).files == first.files


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(
            lambda d: (d / "train.csv").write_bytes(b"A" + DATA["train.csv"][1:]), id="content"
        ),
        pytest.param(lambda d: (d / "test.csv").rename(d / "test2.csv"), id="rename"),
        pytest.param(lambda d: (d / "images/cat.png").rename(d / "cat.png"), id="move"),
        pytest.param(lambda d: (d / "new").mkdir(), id="empty-folder"),
        pytest.param(lambda d: (d / "images/deep/er").mkdir(parents=True), id="nested-empty"),
        pytest.param(lambda d: (d / "empty.txt").write_bytes(b"\0"), id="size"),
        pytest.param(lambda d: (d / "train.csv").unlink(), id="removed"),
    ],
)
def test_digest_changes(tmp_path, change):
    folder = make(tmp_path / "data", DATA)
    before = digest_tree(folder)
    change(folder)
    after = digest_tree(folder)
    assert after.digest != before.digest
    assert after.files != before.files


def test_an_empty_folder_is_an_entry_and_a_file_is_not_a_folder_holding_it(tmp_path):
    folder = make(tmp_path / "data", {"x.csv": b"1"})
    (folder / "empty").mkdir()
    tree = digest_tree(folder)
    assert tree.files["empty/"] == (0, datatree.DIR)
    assert tree.count == 1  # folders are entries, not files

    single = digest_tree(folder / "x.csv")
    assert list(single.files) == ["x.csv"]  # a single file: keyed by its name
    alone = make(tmp_path / "alone", {"x.csv": b"1"})
    assert digest_tree(alone).files == single.files
    assert digest_tree(alone).digest != single.digest


def test_only_digests_the_named_paths_and_records_links_without_following(tmp_path):
    folder = make(tmp_path / "out", DATA)
    (folder / "escape").symlink_to("/etc/passwd")  # a cell may write anything in its output
    tree = digest_tree(folder, only=["train.csv", "images/cat.png", "escape", "gone.txt"])
    assert tree.files == {
        "escape": (0, "link:/etc/passwd"),
        "images/cat.png": (
            len(DATA["images/cat.png"]),
            xxhash.xxh3_128(DATA["images/cat.png"]).hexdigest(),
        ),
        "train.csv": (len(DATA["train.csv"]), xxhash.xxh3_128(DATA["train.csv"]).hexdigest()),
    }
    assert tree.read_bytes == len(DATA["images/cat.png"]) + len(DATA["train.csv"])
    with pytest.raises(SpecError, match="not a path inside"):
        digest_tree(folder, only=["../outside"])


# -- the cache ---------------------------------------------------------------------------------


def test_cache_hit_reads_nothing_the_second_time(tmp_path):
    folder = make(tmp_path / "data", DATA)
    cache = DigestCache(tmp_path / "store")
    first = digest_tree(folder, cache)
    assert first.read_bytes == first.size > 0
    assert (tmp_path / "store" / CACHE_FILE).is_file()
    second = digest_tree(folder, cache)
    assert second.read_bytes == 0
    assert (second.digest, second.files) == (first.digest, first.files)
    # Another process (a new cache object on the same folder) finds them too.
    assert digest_tree(folder, DigestCache(tmp_path / "store")).read_bytes == 0


def test_same_size_rewrite_with_new_mtime_is_read_again(tmp_path):
    folder = make(tmp_path / "data", DATA)
    cache = DigestCache(tmp_path / "store")
    first = digest_tree(folder, cache)
    path = folder / "train.csv"
    path.write_bytes(DATA["train.csv"].replace(b"1", b"9"))  # same size, other content
    os.utime(path, (HOUR_AGO + 5, HOUR_AGO + 5))  # an old, but different, mtime
    second = digest_tree(folder, cache)
    assert second.read_bytes == len(DATA["train.csv"])  # only that file
    assert second.digest != first.digest
    assert changed_files(first.files, second.files) == [
        "train.csv changed (same size, other content)"
    ]


def test_replaced_file_with_same_size_and_mtime_is_read_again(tmp_path):
    folder = make(tmp_path / "data", DATA)
    cache = DigestCache(tmp_path / "store")
    first = digest_tree(folder, cache)
    path = folder / "test.csv"
    old = os.stat(path)
    new = folder / "test.csv.tmp"
    new.write_bytes(DATA["test.csv"].replace(b"3", b"5"))
    os.utime(new, ns=(old.st_atime_ns, old.st_mtime_ns))
    os.replace(new, path)  # new inode, same size and mtime
    assert os.stat(path).st_ino != old.st_ino
    assert (os.stat(path).st_size, os.stat(path).st_mtime_ns) == (old.st_size, old.st_mtime_ns)
    second = digest_tree(folder, cache)
    assert second.read_bytes == len(DATA["test.csv"])
    assert second.files["test.csv"] != first.files["test.csv"]


def test_a_file_changed_just_now_is_not_cached(tmp_path):
    """Its mtime could stay the same through a second write in the same clock tick."""
    folder = make(tmp_path / "data", {"fresh.bin": b"x" * 100}, old=False)
    cache = DigestCache(tmp_path / "store")
    digest_tree(folder, cache)
    assert digest_tree(folder, cache).read_bytes == 100


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_a_file_read_other_than_its_stat_says_is_not_cached(tmp_path):
    """/proc files say size 0 and hold more: as a file written while it is read."""
    size, digest, st = datatree._hash_file("/proc/self/status")
    assert size > 0 and st is None
    path = make(tmp_path / "data", {"x": b"12345"}) / "x"
    assert datatree._hash_file(str(path))[2] is not None


def _garbage(store: Path) -> None:
    store.mkdir()
    (store / CACHE_FILE).write_bytes(b"this is not a database" * 100)


def _malformed(store: Path) -> None:
    """A real cache whose table page is overwritten: SQLite opens it, then finds it damaged."""
    folder = make(store.parent / "other", {f"f{i}": bytes([i]) * 100 for i in range(50)})
    cache = DigestCache(store)
    digest_tree(folder, cache)
    cache.close()  # the last connection: the WAL is checkpointed into the file
    with open(store / CACHE_FILE, "r+b") as f:
        f.seek(4096)  # page 2 of 4096: the table's rows
        f.write(b"\xff" * 4096)


@pytest.mark.parametrize("damage", [_garbage, _malformed])
def test_a_corrupt_cache_file_is_ignored_and_replaced(tmp_path, damage):
    folder = make(tmp_path / "data", DATA)
    expected = digest_tree(folder)
    store = tmp_path / "store"
    damage(store)
    cache = DigestCache(store)
    first = digest_tree(folder, cache)
    assert (first.digest, first.read_bytes) == (expected.digest, expected.size)
    assert digest_tree(folder, cache).read_bytes == 0  # made anew, and used
    assert digest_tree(folder, DigestCache(store)).read_bytes == 0


def test_an_unusable_cache_folder_is_no_error(tmp_path):
    folder = make(tmp_path / "data", DATA)
    blocker = tmp_path / "store"
    blocker.write_text("a file where the cache folder would be")
    cache = DigestCache(blocker)
    for _ in range(2):
        tree = digest_tree(folder, cache)
        assert tree.digest == digest_tree(folder).digest
        assert tree.read_bytes == tree.size


def test_several_processes_share_one_cache(tmp_path):
    folder = make(
        tmp_path / "data",
        {f"part{i}/f{j}.bin": os.urandom(5000) for i in range(4) for j in range(50)},
    )
    store = tmp_path / "store"
    code = (
        "import json, sys; from pathlib import Path\n"
        "from mlcontainer_magics.core.datatree import DigestCache, digest_tree\n"
        "for _ in range(5):\n"
        "    t = digest_tree(Path(sys.argv[1]), DigestCache(Path(sys.argv[2])))\n"
        "print(json.dumps([t.digest, t.read_bytes]))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(folder), str(store)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err.decode()
    results = [json.loads(out) for out, _ in outs]
    assert {digest for digest, _ in results} == {digest_tree(folder).digest}
    assert all(read == 0 for _, read in results)  # the fifth pass of each found everything
    assert digest_tree(folder, DigestCache(store)).read_bytes == 0


# -- what a mount may hold ---------------------------------------------------------------------


def test_a_link_to_a_system_file_is_refused_and_named(tmp_path):
    folder = make(tmp_path / "data", DATA)
    (folder / "images" / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(SpecError) as e:
        check_tree(folder)
    message = str(e.value)
    assert f"{folder}/images/passwd" in message and "/etc/passwd" in message
    assert "outside" in message and "mount" in message  # and says what to do
    with pytest.raises(SpecError, match="images/passwd"):
        digest_tree(folder)


def test_a_relative_link_out_of_the_folder_is_refused(tmp_path):
    folder = make(tmp_path / "data", DATA)
    make(tmp_path / "outside", {"secret.txt": b"s"})
    (folder / "images" / "up").symlink_to("../../outside")
    with pytest.raises(SpecError, match=r"images/up is a link to \.\./\.\./outside, outside"):
        check_tree(folder)
    (folder / "images" / "up").unlink()
    (folder / "sneaky").symlink_to("images/../../outside/secret.txt")  # passes through inside
    with pytest.raises(SpecError, match="sneaky"):
        check_tree(folder)


def test_a_dangling_link_is_refused(tmp_path):
    folder = make(tmp_path / "data", DATA)
    (folder / "images" / "missing").symlink_to("nothere.png")
    with pytest.raises(SpecError, match=r"images/missing is a link to nothere.png, which does not"):
        check_tree(folder)
    (folder / "images" / "missing").unlink()
    (folder / "loop").symlink_to("loop")
    with pytest.raises(SpecError, match="loop is a link"):
        check_tree(folder)


def test_a_fifo_is_refused_before_anything_is_read(tmp_path):
    folder = make(tmp_path / "data", DATA)
    os.mkfifo(folder / "images" / "pipe")
    with pytest.raises(SpecError, match=r"images/pipe is a fifo .*Move it out"):
        check_tree(folder)
    with pytest.raises(SpecError, match="fifo"):
        digest_tree(folder)  # and does not hang reading it
    with pytest.raises(SpecError, match="fifo"):
        check_tree(folder / "images" / "pipe")  # named on its own


def test_a_missing_path_is_refused(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        check_tree(tmp_path / "nothere")
    (tmp_path / "dangling").symlink_to(tmp_path / "nothere")
    with pytest.raises(SpecError, match="does not exist"):
        digest_tree(tmp_path / "dangling")


def test_links_that_stay_inside_are_recorded_not_followed(tmp_path):
    folder = make(tmp_path / "data", DATA)
    (folder / "latest.csv").symlink_to("train.csv")
    (folder / "pics").symlink_to("images")
    (folder / "images" / "self").symlink_to("..")  # a loop back to the top: still inside
    (folder / "abs").symlink_to(folder / "test.csv")
    check_tree(folder)
    tree = digest_tree(folder)
    assert tree.files["latest.csv"] == (0, "link:train.csv")
    assert tree.files["pics"] == (0, "link:images")
    assert tree.files["images/self"] == (0, "link:..")
    assert not any(rel.startswith(("pics/", "images/self/")) for rel in tree.files)
    assert tree.count == len(DATA)  # the content once, under its real name
    (folder / "latest.csv").unlink()
    (folder / "latest.csv").symlink_to("test.csv")
    assert digest_tree(folder).digest != tree.digest  # retargeting a link changes it


def test_a_named_link_to_a_file_is_followed(tmp_path):
    """The user named it: what it points to is what they mean to mount."""
    data = make(tmp_path / "data", DATA)
    (tmp_path / "current.csv").symlink_to(data / "train.csv")
    tree = digest_tree(tmp_path / "current.csv")
    assert tree.files == {"current.csv": digest_tree(data / "train.csv").files["train.csv"]}


# -- comparing ---------------------------------------------------------------------------------


def test_changed_files_names_each_difference_in_path_order():
    old = {
        "data/train.csv": (1_200_000, "a" * 32),
        "data/same.csv": (10, "b" * 32),
        "data/old.csv": (5, "c" * 32),
        "data/keep.csv": (7, "d" * 32),
        "data/close.bin": (1_234_567, "e" * 32),
        "data/latest": (0, "link:train.csv"),
    }
    new = {
        "data/train.csv": (1_300_000, "f" * 32),
        "data/same.csv": (10, "0" * 32),
        "data/new.csv": (3, "1" * 32),
        "data/keep.csv": (7, "d" * 32),
        "data/close.bin": (1_234_568, "2" * 32),
        "data/latest": (0, "link:same.csv"),
    }
    assert changed_files(old, new) == [
        "data/close.bin changed (1,234,567 B -> 1,234,568 B)",
        "data/latest changed (link to train.csv -> link to same.csv)",
        "data/new.csv added",
        "data/old.csv removed",
        "data/same.csv changed (same size, other content)",
        "data/train.csv changed (1.2 MB -> 1.3 MB)",
    ]
    as_json = json.loads(json.dumps(old))  # manifests read back hold lists
    assert changed_files(as_json, old) == []
    assert changed_files(old, new) == changed_files(as_json, new)


def test_changed_files_between_real_digests(tmp_path):
    folder = make(tmp_path / "data", DATA)
    before = digest_tree(folder).files
    (folder / "train.csv").write_bytes(DATA["train.csv"] * 2)
    (folder / "test.csv").unlink()
    (folder / "images" / "fish.png").write_bytes(b"fish")
    assert changed_files(before, digest_tree(folder).files) == [
        "images/fish.png added",
        "test.csv removed",
        "train.csv changed (8.0 kB -> 16.0 kB)",
    ]


def test_written_since_finds_new_and_modified_files(tmp_path):
    folder = make(tmp_path / "out", {"keep.txt": b"k", "log/run.txt": b"1", "model.bin": b"m"})
    before = snapshot_files(folder)
    assert before == {
        rel: (os.stat(folder / rel).st_size, os.stat(folder / rel).st_mtime_ns)
        for rel in ("keep.txt", "log/run.txt", "model.bin")
    }
    (folder / "log" / "run.txt").write_bytes(b"2")  # same size, new mtime
    (folder / "model.bin").write_bytes(b"bigger")
    (folder / "new" / "deep").mkdir(parents=True)
    (folder / "new" / "deep" / "result.csv").write_bytes(b"r")
    (folder / "latest").symlink_to("model.bin")
    (folder / "logs").symlink_to("log")  # a link to a folder: one entry, not followed
    after = snapshot_files(folder)
    assert written_since(before, after) == [
        "latest",
        "log/run.txt",
        "logs",
        "model.bin",
        "new/deep/result.csv",
    ]
    assert written_since(after, after) == []
    assert written_since(json.loads(json.dumps(after)), after) == []  # lists from JSON
    assert snapshot_files(folder / "keep.txt") == {"keep.txt": before["keep.txt"]}
    assert snapshot_files(tmp_path / "nothere") == {}
