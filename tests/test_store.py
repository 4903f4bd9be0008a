"""Unit tests of the snapshot store (SQLite in tmp_path; no Docker)."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import sqlite3
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlcontainer_magics.core import store as store_mod
from mlcontainer_magics.core.store import DB_NAME, SCHEMA_VERSION, STATUSES, SUMMARY_FIELDS, Store
from mlcontainer_magics.errors import MlcError, StoreError

HEX = "0123456789abcdef"


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "store")
    yield s
    s.close()


def rec(sid, **fields):
    return {"id": sid, "status": "done", **fields}


def full_record(sid="3f2a9c1b0d4e"):
    """A record with every documented field."""
    return {
        "id": sid,
        "name": "baseline",
        "notebook": "work/analysis.ipynb",
        "cell": 12,
        "status": "failed",
        "created": 1_700_000_000.25,
        "finished": 1_700_000_050.5,
        "duration": 50.25,
        "code": "import numpy as np\nprint(np.ones(3))\n",
        "spec": {
            "code": "import numpy as np",
            "env_spec": {
                "base_image": "python:3.11-slim",
                "apt": ["libgomp1"],
                "requirements": ["numpy==1.26.4"],
            },
            "cpus": 2.0,
        },
        "requirements": ["numpy==1.26.4"],
        "captured": ["numpy==1.26.4"],
        "lock": [{"name": "numpy", "version": "1.26.4", "hashes": ["sha256:" + "a" * 64]}],
        "base_image": "python:3.11-slim",
        "base_image_id": "sha256:" + "b" * 64,
        "env_image": "mlc-env:ab12",
        "env_image_id": "sha256:" + "c" * 64,
        "image_size": 1_234_567_890,
        "env": {"A": "1", "TOKEN": "***"},
        "resources": {"cpus": 2.0, "memory": 2 * 1024**3, "network": "bridge"},
        "inputs": {"df": {"format": "parquet", "digest": "sha256:" + "d" * 64, "size": 10}},
        "outputs": {"model": {"format": "pickle", "digest": "sha256:" + "e" * 64, "size": 3}},
        "stdout": "hello\n",
        "stderr": "Killed\n",
        "exit_code": 137,
        "reason": "oom",
        "timings": {"build": 31.5, "run": 50.25},
        "host": {"hostname": "box", "platform": "Linux", "python": "3.11.7", "docker": "24.0"},
        "versions": {"mlcontainer-magics": "0.1.0"},
        "session": "sess-1",
    }


# -- where the store lives -----------------------------------------------------------------------


def test_root_from_mlcontainer_store(monkeypatch, tmp_path):
    monkeypatch.setenv("MLCONTAINER_STORE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert Store().root == tmp_path / "explicit"


def test_root_from_xdg_data_home(monkeypatch, tmp_path):
    monkeypatch.delenv("MLCONTAINER_STORE", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert Store().root == tmp_path / "xdg" / "mlcontainer"


def test_root_defaults_to_local_share(monkeypatch, tmp_path):
    monkeypatch.delenv("MLCONTAINER_STORE", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", "")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert Store().root == tmp_path / ".local" / "share" / "mlcontainer"


def test_relative_root_is_made_absolute(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert Store("rel").root == tmp_path / "rel"


def test_root_is_created_on_first_use(tmp_path):
    root = tmp_path / "a" / "b"
    s = Store(root)
    assert not root.exists()
    assert s.count() == 0
    assert (root / DB_NAME).is_file()


def test_root_that_is_a_file_is_a_clear_error(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(StoreError, match="Could not create .*f"):
        Store(tmp_path / "f" / "store").count()


def test_wal_mode_busy_timeout_and_schema_version(store):
    conn = store._connect()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_newer_schema_is_refused(tmp_path):
    root = tmp_path / "s"
    root.mkdir()
    with sqlite3.connect(root / DB_NAME) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer"):
        Store(root).count()


def test_a_file_that_is_not_a_database(tmp_path):
    root = tmp_path / "s"
    root.mkdir()
    (root / DB_NAME).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError) as e:
        Store(root).list()
    assert str(root / DB_NAME) in str(e.value) and "move" in str(e.value)


def test_records_survive_reopening(tmp_path):
    Store(tmp_path).put(full_record())
    assert Store(tmp_path).get("3f2a9c1b0d4e") == full_record()


def test_store_error_is_an_mlc_error():
    assert issubclass(StoreError, MlcError)


# -- ids -----------------------------------------------------------------------------------------


def test_new_id_is_12_hex_and_differs_per_run(store):
    ids = {store.new_id({"code": "x"}) for _ in range(500)}
    assert len(ids) == 500
    assert all(len(i) == 12 and set(i) <= set(HEX) for i in ids)


def test_new_id_accepts_sets_paths_and_tuples(store):
    assert len(store.new_id({"s": {1, 2}, "p": Path("/x"), "t": (1, 2)})) == 12


def test_new_id_skips_ids_already_issued_or_stored(store, monkeypatch):
    nonces = iter(["n1", "n1", "n2", "n1", "n3"])
    monkeypatch.setattr(store_mod, "_nonce", lambda: next(nonces))
    first = store.new_id({"a": 1})
    second = store.new_id({"a": 1})  # "n1" again: issued already, so it takes "n2"
    assert first != second
    store.put(rec(first))
    other = Store(store.root)  # knows nothing issued, must see `first` in the database
    third = other.new_id({"a": 1})  # "n1" is taken in the store, so "n3"
    assert third not in (first, second)
    other.close()


@settings(max_examples=50, deadline=None)
@given(
    seed=st.dictionaries(
        st.text(),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(),
            lambda c: st.lists(c) | st.dictionaries(st.text(), c),
            max_leaves=10,
        ),
    )
)
def test_new_id_for_any_seed(seed):
    with tempfile.TemporaryDirectory() as d:
        s = Store(d)
        a, b = s.new_id(seed), s.new_id(seed)
        s.close()
    assert a != b and len(a) == 12 and set(a) <= set(HEX)


# -- put and get ---------------------------------------------------------------------------------


def test_put_get_roundtrip_of_every_field(store):
    store.put(full_record())
    assert store.get("3f2a9c1b0d4e") == full_record()


def test_put_fills_in_created_and_does_not_touch_the_callers_dict(store):
    record = rec("aaaa00000001")
    store.put(record)
    assert "created" not in record
    assert isinstance(store.get("aaaa00000001")["created"], float)


def test_put_replaces_the_whole_record(store):
    store.put(rec("aaaa00000001", stdout="old", name="n1"))
    store.put(rec("aaaa00000001", status="failed"))
    got = store.get("aaaa00000001")
    assert "stdout" not in got and "name" not in got and got["status"] == "failed"
    assert store.count() == 1
    assert store.list()[0]["name"] is None


def test_surrogates_and_unicode_survive(store):
    store.put(rec("aaaa00000001", stdout="caf\u00e9 \udcff \U0001f600"))
    assert store.get("aaaa00000001")["stdout"] == "caf\u00e9 \udcff \U0001f600"


@pytest.mark.parametrize(
    "record, message",
    [
        ({"status": "done"}, "needs an 'id'"),
        ({"id": ""}, "not valid"),
        ({"id": "../etc"}, "not valid"),
        ({"id": "a/b"}, "not valid"),
        ({"id": 12}, "not valid"),
        ({"id": "aaaa1", "status": "finished"}, "not a snapshot status"),
        ({"id": "aaaa1", "name": 3}, "'name' must be a string"),
        ({"id": "aaaa1", "created": "yesterday"}, "'created' must be a number"),
        ({"id": "aaaa1", "exit_code": 1.5}, "'exit_code' must be a number"),
        ({"id": "aaaa1", "image_size": True}, "'image_size' must be a number"),
        ({"id": "aaaa1", "spec": object()}, "spec"),
    ],
)
def test_put_refuses_bad_records_and_writes_nothing(store, record, message):
    with pytest.raises(StoreError, match=message):
        store.put(record)
    assert store.count() == 0


def test_put_refuses_a_non_dict(store):
    with pytest.raises(StoreError, match="must be a dict"):
        store.put(["id", "x"])


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(), c, max_size=4),
    max_leaves=20,
)


@settings(max_examples=100, deadline=None)
@given(
    extra=st.dictionaries(st.text().filter(lambda k: k not in SUMMARY_FIELDS), JSON, max_size=6),
    status=st.sampled_from(STATUSES),
)
def test_any_json_record_roundtrips(extra, status):
    record = {**extra, "id": "abcd12345678", "status": status, "created": 1.5}
    with tempfile.TemporaryDirectory() as d:
        s = Store(d)
        s.put(record)
        assert s.get("abcd12345678") == record
        assert s.update("abcd", name="n") == {**record, "name": "n"}
        s.close()


# -- resolving references ------------------------------------------------------------------------


def test_get_by_full_id_prefix_uppercase_prefix_and_name(store):
    store.put(rec("3f2a9c1b0d4e", name="baseline"))
    for ref in ("3f2a9c1b0d4e", "3f2a", "3f2a9c1", "3F2A9C", " 3f2a "):
        assert store.get(ref)["id"] == "3f2a9c1b0d4e"
    assert store.get("baseline")["id"] == "3f2a9c1b0d4e"


def test_a_name_means_the_newest_snapshot_with_it(store):
    store.put(rec("aaaa00000001", name="exp", created=100.0))
    store.put(rec("aaaa00000002", name="exp", created=300.0))
    store.put(rec("aaaa00000003", name="exp", created=200.0))
    assert store.get("exp")["id"] == "aaaa00000002"


def test_full_id_beats_name_and_name_beats_prefix(store):
    store.put(rec("beef00000001", created=1.0))
    store.put(rec("cafe00000001", name="beef", created=2.0))
    store.put(rec("dddd00000001", name="beef00000001", created=3.0))
    assert store.get("beef00000001")["id"] == "beef00000001"
    assert store.get("beef")["id"] == "cafe00000001"
    assert store.get("beef0")["id"] == "beef00000001"


def test_a_short_prefix_is_refused(store):
    store.put(rec("abcd00000001"))
    with pytest.raises(StoreError, match="at least 4"):
        store.get("abc")


def test_an_ambiguous_prefix_lists_the_candidates(store):
    store.put(rec("abcd00000001", name="one"))
    store.put(rec("abcd00000002", name="two"))
    store.put(rec("abce00000003"))
    with pytest.raises(StoreError) as e:
        store.get("abcd")
    message = str(e.value)
    assert "ambiguous" in message and "abcd00000001" in message and "abcd00000002" in message
    assert "one" in message and "two" in message and "abce00000003" not in message
    assert store.get("abcd00000002")["name"] == "two"
    assert store.get("abce")["id"] == "abce00000003"


def test_many_candidates_are_cut_short(store):
    store.put_many(rec(f"abcd{i:08d}") for i in range(30))
    with pytest.raises(StoreError) as e:
        store.get("abcd")
    assert str(e.value).count("abcd0000") == 10 and "and more" in str(e.value)


@pytest.mark.parametrize("ref", ["nothing", "ffff", "ffff00000000", ""])
def test_no_match_is_a_clear_error(store, ref):
    store.put(rec("abcd00000001", name="one"))
    with pytest.raises(StoreError, match="snapshot"):
        store.get(ref)


def test_no_match_names_the_reference_and_the_store(store):
    store.put(rec("abcd00000001"))
    with pytest.raises(StoreError) as e:
        store.get("zzzzz")
    assert "'zzzzz'" in str(e.value) and str(store.root) in str(e.value)


def test_prefix_with_glob_or_like_characters_matches_nothing(store):
    store.put(rec("abcd00000001"))
    for ref in ("abc%", "abc_", "ab*d", "abc?", "[abc]"):
        with pytest.raises(StoreError):
            store.get(ref)


ids_with_shared_prefixes = st.sets(
    st.builds(
        lambda head, tail: head + tail,
        st.text("ab", min_size=4, max_size=6),
        st.text(HEX, min_size=6, max_size=6),
    ).map(lambda s: s[:12].ljust(12, "0")),
    min_size=1,
    max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(ids=ids_with_shared_prefixes, data=st.data())
def test_prefix_resolution_property(ids, data):
    """A prefix resolves iff exactly one id starts with it; otherwise the error names them."""
    with tempfile.TemporaryDirectory() as d:
        s = Store(d)
        s.put_many(rec(i) for i in ids)
        target = data.draw(st.sampled_from(sorted(ids)))
        k = data.draw(st.integers(4, 12))
        prefix = target[:k]
        matching = sorted(i for i in ids if i.startswith(prefix))
        if len(matching) == 1 or prefix in ids:
            assert s.get(prefix)["id"] == (prefix if prefix in ids else target)
        else:
            with pytest.raises(StoreError, match="ambiguous") as e:
                s.get(prefix)
            for m in matching[:10]:
                assert m in str(e.value)
        s.close()


# -- update --------------------------------------------------------------------------------------


def test_update_merges_and_returns_the_new_record(store):
    store.put(rec("aaaa00000001", status="running", stdout="a", timings={"build": 1.0}))
    new = store.update("aaaa", status="done", exit_code=0, timings={"run": 2.0})
    assert new == store.get("aaaa00000001")
    assert new["stdout"] == "a" and new["exit_code"] == 0
    assert new["timings"] == {"run": 2.0}  # top-level keys replace
    assert store.list(status="done")[0]["exit_code"] == 0
    assert store.count(status="running") == 0


def test_update_by_name(store):
    store.put(rec("aaaa00000001", name="exp"))
    assert store.update("exp", reason="x")["reason"] == "x"


def test_update_keeps_the_list_position(store):
    store.put(rec("aaaa00000001", created=5.0))
    store.put(rec("aaaa00000002", created=5.0))
    store.update("aaaa00000001", status="failed")
    assert [s["id"] for s in store.list()] == ["aaaa00000002", "aaaa00000001"]


def test_update_of_unknown_ref(store):
    with pytest.raises(StoreError, match="No snapshot"):
        store.update("nope", status="done")


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"id": "bbbb00000001"}, "id cannot be changed"),
        ({"status": "weird"}, "not a snapshot status"),
        ({"duration": "long"}, "must be a number"),
    ],
)
def test_bad_update_leaves_the_record_as_it_was(store, fields, message):
    store.put(rec("aaaa00000001", stdout="x"))
    before = store.get("aaaa00000001")
    with pytest.raises(StoreError, match=message):
        store.update("aaaa00000001", **fields)
    assert store.get("aaaa00000001") == before
    assert store.count() == 1


def test_update_with_the_same_id_is_fine(store):
    store.put(rec("aaaa00000001"))
    assert store.update("aaaa", id="aaaa00000001", name="n")["name"] == "n"


# -- list and count ------------------------------------------------------------------------------


def test_list_newest_first_with_summary_fields_only(store):
    store.put(full_record("aaaa00000001") | {"created": 10.0})
    store.put(full_record("aaaa00000002") | {"created": 30.0})
    store.put(full_record("aaaa00000003") | {"created": 20.0})
    got = store.list()
    assert [s["id"] for s in got] == ["aaaa00000002", "aaaa00000003", "aaaa00000001"]
    assert all(tuple(s) == SUMMARY_FIELDS for s in got)
    first = full_record("aaaa00000002") | {"created": 30.0}
    assert got[0] == {k: first.get(k) for k in SUMMARY_FIELDS}


def test_equal_created_times_list_the_last_put_first(store):
    store.put_many(rec(f"aaaa{i:08d}", created=1.0) for i in range(5))
    assert [s["id"] for s in store.list()] == [f"aaaa{i:08d}" for i in reversed(range(5))]


def test_pagination_covers_everything_once(store):
    store.put_many(rec(f"aaaa{i:08d}", created=float(i)) for i in range(30))
    pages = [store.list(limit=7, offset=o) for o in range(0, 35, 7)]
    assert [len(p) for p in pages] == [7, 7, 7, 7, 2]
    ids = [s["id"] for p in pages for s in p]
    assert ids == [f"aaaa{i:08d}" for i in reversed(range(30))]
    assert store.list(limit=None) == [s for p in pages for s in p]
    assert store.list(limit=0) == []
    assert store.list(offset=100) == []


def test_filters_and_count(store):
    nbs, names = ["a.ipynb", "b.ipynb"], ["x", "y", None]
    records = [
        rec(
            f"aaaa{i:08d}",
            created=float(i),
            notebook=nbs[i % 2],
            name=names[i % 3],
            status=STATUSES[i % len(STATUSES)],
        )
        for i in range(48)
    ]
    store.put_many(records)
    for notebook in (None, *nbs, "c.ipynb"):
        for name in (None, "x", "y"):
            for status in (None, "done", ("done", "failed"), ["running"]):
                wanted = [
                    r["id"]
                    for r in reversed(records)
                    if (notebook is None or r["notebook"] == notebook)
                    and (name is None or r["name"] == name)
                    and (
                        status is None
                        or r["status"] in ([status] if isinstance(status, str) else status)
                    )
                ]
                got = store.list(limit=None, notebook=notebook, name=name, status=status)
                assert [s["id"] for s in got] == wanted
                assert store.count(notebook=notebook, name=name, status=status) == len(wanted)
    assert len(store.list()) == 48 and store.count() == 48


def test_notebook_filter_accepts_a_path(store):
    store.put(rec("aaaa00000001", notebook="dir/a.ipynb"))
    assert store.count(notebook=Path("dir/a.ipynb")) == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"limit": -1},
        {"limit": "5"},
        {"offset": -2},
        {"status": "nope"},
        {"status": ["done", "nope"]},
    ],
)
def test_list_refuses_bad_arguments(store, kwargs):
    with pytest.raises(StoreError):
        store.list(**kwargs)


def test_count_refuses_a_bad_status(store):
    with pytest.raises(StoreError, match="not a snapshot status"):
        store.count(status="complete")


def test_ten_thousand_snapshots_list_newest_first_through_an_index(store):
    n = 10_000

    def sid(i):
        return f"{i:06x}abcdef"

    order = list(range(n))
    random.Random(4).shuffle(order)  # put in random order; created decides
    store.put_many(
        rec(
            sid(i),
            created=1_000_000.0 + i,
            name=f"run{i % 10}",
            notebook="nb.ipynb",
            stdout="x" * 200,
        )
        for i in order
    )
    assert store.count() == n
    assert [s["id"] for s in store.list()] == [sid(i) for i in range(n - 1, n - 51, -1)]
    assert [s["id"] for s in store.list(limit=10, offset=n - 10)] == [
        sid(i) for i in range(9, -1, -1)
    ]
    assert store.list(name="run3", limit=1)[0]["id"] == sid(n - 7)
    # "Fast" without timing: the listing queries walk an index and never sort the table.
    conn = store._connect()
    statements = []
    conn.set_trace_callback(statements.append)
    store.list()
    store.list(name="run3")
    store.list(notebook="nb.ipynb", offset=100)
    store.list(status="done")
    store.get(sid(n - 1)[:6])
    conn.set_trace_callback(None)
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert len(selects) >= 5
    for sql in selects:
        plan = " ".join(row[-1] for row in conn.execute("EXPLAIN QUERY PLAN " + sql))
        assert "TEMP B-TREE" not in plan, (sql, plan)
        assert "INDEX" in plan, (sql, plan)


# -- remove and artifacts ------------------------------------------------------------------------


def test_remove_deletes_the_record_and_its_files(store):
    store.put(full_record())
    folder = store.artifacts_dir("3f2a9c1b0d4e")
    (folder / "out.pkl").write_bytes(b"x")
    (folder / "sub").mkdir()
    (folder / "sub" / "f").write_text("y")
    removed = store.remove("baseline")
    assert removed == full_record()
    assert not folder.exists()
    with pytest.raises(StoreError):
        store.get("3f2a9c1b0d4e")
    assert store.count() == 0


def test_remove_without_files_and_of_unknown_ref(store):
    store.put(rec("aaaa00000001"))
    assert store.remove("aaaa")["id"] == "aaaa00000001"
    with pytest.raises(StoreError, match="No snapshot"):
        store.remove("aaaa00000001")


def test_remove_refuses_an_ambiguous_prefix(store):
    store.put_many([rec("aaaa00000001"), rec("aaaa00000002")])
    with pytest.raises(StoreError, match="ambiguous"):
        store.remove("aaaa")
    assert store.count() == 2


def test_artifacts_dir_is_under_root_and_made_on_demand(store):
    folder = store.artifacts_dir("abcd00000001")
    assert folder.is_dir() and folder.parent.parent == store.root
    assert store.artifacts_dir("abcd00000001") == folder


@pytest.mark.parametrize("bad", ["../x", "a/b", "", ".hidden", "..", None])
def test_artifacts_dir_refuses_paths(store, bad):
    with pytest.raises(StoreError):
        store.artifacts_dir(bad)


# -- atomicity and failures ----------------------------------------------------------------------


def _failing_upsert(monkeypatch, exc=RuntimeError("boom")):
    """Make every write fail after its row was written, before the commit."""
    original = Store._upsert

    def upsert(self, conn, *row_and_record):
        original(self, conn, *row_and_record)
        raise exc

    monkeypatch.setattr(Store, "_upsert", upsert)


def test_a_failure_inside_put_keeps_the_old_record(store, monkeypatch):
    store.put(full_record())
    with monkeypatch.context() as m:
        _failing_upsert(m)
        with pytest.raises(RuntimeError, match="boom"):
            store.put(rec("3f2a9c1b0d4e", status="done", stdout="new"))
        with pytest.raises(RuntimeError, match="boom"):
            store.put(rec("bbbb00000001"))
    assert store.get("3f2a9c1b0d4e") == full_record()
    assert store.count() == 1
    store.put(rec("bbbb00000001"))  # the write lock was released
    assert store.count() == 2


def test_a_failure_inside_update_keeps_the_old_record(store, monkeypatch):
    store.put(full_record())
    with monkeypatch.context() as m:
        _failing_upsert(m, KeyboardInterrupt())
        with pytest.raises(KeyboardInterrupt):
            store.update("3f2a", status="done", stdout="new")
    assert store.get("3f2a") == full_record()


def test_a_failure_inside_put_many_saves_none(store, monkeypatch):
    original, calls = Store._upsert, []

    def upsert(self, conn, row, record):
        original(self, conn, row, record)
        calls.append(row[0])
        if len(calls) == 3:
            raise RuntimeError("boom")

    monkeypatch.setattr(Store, "_upsert", upsert)
    with pytest.raises(RuntimeError):
        store.put_many(rec(f"aaaa{i:08d}") for i in range(5))
    assert store.count() == 0


def test_a_failure_inside_remove_keeps_the_record(store):
    store.put(full_record())
    store.artifacts_dir("3f2a9c1b0d4e")
    conn = store._connect()  # the DELETE happens, then fails inside the transaction
    conn.execute(
        "CREATE TEMP TRIGGER fail AFTER DELETE ON snapshots "
        "BEGIN SELECT RAISE(ABORT, 'simulated failure'); END"
    )
    with pytest.raises(StoreError, match="simulated failure"):
        store.remove("3f2a")
    conn.execute("DROP TRIGGER temp.fail")
    assert store.get("3f2a9c1b0d4e") == full_record()
    assert store.artifacts_dir("3f2a9c1b0d4e").is_dir()


def _crash_in_the_middle_of_a_put(root):
    """Child process: die (no cleanup at all) after writing the row, before committing."""
    original = Store._upsert

    def upsert(self, conn, row, record):
        original(self, conn, row, record)
        os._exit(3)

    Store._upsert = upsert
    Store(root).put(rec("3f2a9c1b0d4e", status="done", stdout="half-written"))


def test_a_process_dying_mid_write_leaves_the_previous_state(tmp_path):
    s = Store(tmp_path)
    s.put(full_record())
    proc = multiprocessing.get_context("spawn").Process(
        target=_crash_in_the_middle_of_a_put, args=(str(tmp_path),)
    )
    proc.start()
    proc.join(60)
    assert proc.exitcode == 3
    assert s.get("3f2a9c1b0d4e") == full_record()
    assert Store(tmp_path).get("3f2a9c1b0d4e") == full_record()
    s.update("3f2a", status="done")  # nothing left locked
    assert s.get("3f2a")["status"] == "done"


def test_a_full_disk_is_a_store_error_and_keeps_the_old_record(store):
    store.put(full_record())
    conn = store._connect()
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(StoreError) as e:
        store.put(full_record() | {"stdout": os.urandom(1 << 20).hex()})
    assert "full" in str(e.value) and str(store.db_path) in str(e.value)
    assert "3f2a9c1b0d4e" in str(e.value)
    assert store.get("3f2a9c1b0d4e") == full_record()


def test_a_read_only_store_is_a_store_error(store):
    store.put(full_record())
    store._connect().execute("PRAGMA query_only = 1")
    with pytest.raises(StoreError, match="readonly") as e:
        store.update("3f2a", status="done")
    assert str(store.db_path) in str(e.value) and "MLCONTAINER_STORE" in str(e.value)
    assert store.get("3f2a") == full_record()


def test_a_damaged_record_is_reported(store):
    store.put(rec("aaaa00000001"))
    store._connect().execute("UPDATE snapshots SET record = '{broken' WHERE id = 'aaaa00000001'")
    with pytest.raises(StoreError, match="damaged"):
        store.get("aaaa")


# -- concurrency ---------------------------------------------------------------------------------

PER_WORKER = 25


def _work(store, worker, shared):
    """Each worker makes PER_WORKER snapshots, updates each twice and the shared one once each."""
    ids = []
    for j in range(PER_WORKER):
        sid = store.new_id({"worker": worker, "j": j})
        store.put(
            {
                "id": sid,
                "name": f"w{worker}",
                "status": "running",
                "n": j,
                "code": f"print({worker}, {j})",
                "notebook": f"nb{worker}.ipynb",
            }
        )
        store.update(sid, stdout=f"out {worker} {j}")
        store.update(sid, status="done", exit_code=j)
        store.update(shared, **{f"w{worker}_{j}": j})
        ids.append(sid)
    return ids


def _check_after(store, ids_by_worker, shared):
    all_ids = [i for ids in ids_by_worker.values() for i in ids]
    assert len(set(all_ids)) == len(all_ids) == len(ids_by_worker) * PER_WORKER
    assert store.count() == len(all_ids) + 1
    for worker, ids in ids_by_worker.items():
        for j, sid in enumerate(ids):
            r = store.get(sid)
            assert {
                k: r[k] for k in ("name", "status", "n", "code", "stdout", "exit_code", "notebook")
            } == {
                "name": f"w{worker}",
                "status": "done",
                "n": j,
                "code": f"print({worker}, {j})",
                "stdout": f"out {worker} {j}",
                "exit_code": j,
                "notebook": f"nb{worker}.ipynb",
            }
        assert store.count(name=f"w{worker}", status="done") == PER_WORKER
    record = store.get(shared)
    assert {k: v for k, v in record.items() if k.startswith("w")} == {
        f"w{w}_{j}": j for w in ids_by_worker for j in range(PER_WORKER)
    }


def test_eight_threads_write_and_update_at_once(store):
    store.put(rec("5ea5ed000000", name="shared"))
    barrier, results, errors = threading.Barrier(8), {}, []

    def run(worker):
        try:
            barrier.wait()
            results[worker] = _work(store, worker, "shared")
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    _check_after(store, results, "shared")


def _process_worker(args):
    store, worker, start = args
    start.wait(60)
    try:
        return worker, _work(store, worker, "5ea5ed000000")
    finally:
        store.close()


@pytest.mark.parametrize("processes", [2, 4])
def test_processes_write_and_update_one_store_at_once(tmp_path, processes):
    store = Store(tmp_path / "fresh")  # the schema is made by the racing workers themselves
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        start = manager.Event()
        Store(tmp_path / "fresh").put(rec("5ea5ed000000", name="shared"))
        with ctx.Pool(processes) as pool:
            pending = pool.map_async(_process_worker, [(store, w, start) for w in range(processes)])
            start.set()
            results = dict(pending.get(180))
    _check_after(store, results, "5ea5ed000000")


def _first_open(args):
    root, start = args
    start.wait(60)
    s = Store(root)
    s.put(rec(s.new_id({}), status="done"))
    return s.count()


def test_processes_creating_the_store_at_once(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    root = str(tmp_path / "new")
    with ctx.Manager() as manager:
        start = manager.Event()
        with ctx.Pool(4) as pool:
            pending = pool.map_async(_first_open, [(root, start)] * 4)
            start.set()
            pending.get(180)
    assert Store(root).count() == 4


def test_a_store_survives_fork(tmp_path):
    if not hasattr(os, "fork"):
        pytest.skip("no fork here")
    s = Store(tmp_path)
    s.put(rec("aaaa00000001"))
    ctx = multiprocessing.get_context("fork")
    proc = ctx.Process(target=lambda: (s.update("aaaa", stdout="from child"), os._exit(0)))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0
    assert s.get("aaaa")["stdout"] == "from child"


def test_a_store_pickles_as_its_root(tmp_path):
    import pickle

    s = Store(tmp_path)
    s.put(rec("aaaa00000001"))
    clone = pickle.loads(pickle.dumps(s))
    assert clone.root == s.root and clone.get("aaaa")["id"] == "aaaa00000001"


def test_records_are_json_in_the_database(store):
    store.put(full_record())
    text = store._connect().execute("SELECT record FROM snapshots").fetchone()[0]
    assert json.loads(text) == full_record()


def test_many_open_a_new_store_at_once(tmp_path):
    """Opening a brand-new store from many threads at once: every one gets in (the switch to
    WAL used to answer 'database is locked' to the losers)."""
    import threading

    for round_ in range(30):
        root = tmp_path / f"new-{round_}"
        errors, barrier = [], threading.Barrier(12)

        def open_and_write(i):
            try:
                barrier.wait()
                st = Store(root)
                st.put({"id": f"{round_:02d}{i:02d}aaaaaaaa", "status": "done"})
                st.close()
            except Exception as e:  # collected and reported below
                errors.append(e)

        threads = [threading.Thread(target=open_and_write, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert Store(root).count() == 12
