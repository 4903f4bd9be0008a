"""Unit tests of the store-only snapshot verbs and their pure formatters (no Docker)."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlcontainer_magics.core import verbs
from mlcontainer_magics.core.store import STATUSES, SUMMARY_FIELDS, Store
from mlcontainer_magics.core.verbs import (
    format_duration,
    format_list,
    format_logs,
    format_record,
    format_size,
    format_time,
    list_snapshots,
    logs,
    rm,
    show,
)
from mlcontainer_magics.errors import StoreError

T0 = 1_700_000_000.0


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "store")
    yield s
    s.close()


def full_record(sid="3f2a9c1b0d4e", **over):
    record = {
        "id": sid,
        "name": "baseline",
        "notebook": "work/analysis.ipynb",
        "cell": 12,
        "status": "failed",
        "created": T0,
        "finished": T0 + 50,
        "duration": 50.25,
        "code": "import numpy as np\nprint(np.ones(3))\n",
        "spec": {
            "code": "ignored",
            "env_spec": {
                "base_image": "python:3.11-slim",
                "apt": ["libgomp1"],
                "requirements": ["numpy==1.26.4"],
            },
            "env": [["TOKEN", "s3cr3t-value"]],
            "cpus": 2.0,
            "memory": 2 * 1024**3,
            "network": "none",
            "timeout": 600.0,
            "inputs": ["df"],
            "outputs": ["model"],
        },
        "requirements": ["numpy==1.26.4", "pandas>=2,<3"],
        "captured": ["scipy==1.13.0"],
        "lock": [
            {"name": "numpy", "version": "1.26.4", "hashes": ["sha256:" + "a" * 64]},
            {"name": "pandas", "version": "2.2.1", "hashes": []},
        ],
        "base_image": "python:3.11-slim",
        "base_image_id": "sha256:" + "b" * 64,
        "env_image": "mlc-env:ab12",
        "env_image_id": "sha256:" + "c" * 64,
        "image_size": 1_234_567_890,
        "env": {"A": "1", "TOKEN": "***"},
        "resources": {
            "cpus": 2.0,
            "memory": 2 * 1024**3,
            "gpus": None,
            "network": "none",
            "timeout": 600.0,
        },
        "inputs": {"df": {"format": "parquet", "digest": "sha256:" + "d" * 64, "size": 1_200_000}},
        "outputs": {"model": {"format": "pickle", "digest": "sha256:" + "e" * 64, "size": 3400}},
        "stdout": "hello\n",
        "stderr": "Killed",
        "exit_code": 137,
        "reason": "out of memory",
        "timings": {"build": 31.5, "run": 50.25},
        "host": {
            "hostname": "box",
            "platform": "Linux-6.1",
            "python": "3.11.7",
            "docker": "24.0.7",
        },
        "versions": {"mlcontainer-magics": "0.1.0"},
        "session": "sess-1",
    }
    record.update(over)
    return record


def local(epoch):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(epoch))


# -- small formatters ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "seconds, text",
    [
        (None, "-"),
        ("12", "-"),
        (True, "-"),
        (float("nan"), "-"),
        (-1, "-"),
        (float("inf"), "-"),
        (0, "0.0s"),
        (12.34, "12.3s"),
        (59.94, "59.9s"),
        (59.96, "1m00s"),
        (245, "4m05s"),
        (3599.4, "59m59s"),
        (3599.6, "1h00m"),
        (7380, "2h03m"),
        (90000, "25h00m"),
    ],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_format_time_is_local_iso_in_one_word():
    assert format_time(T0) == local(T0)
    assert " " not in format_time(T0) and len(format_time(T0)) == 19
    for bad in (None, "yesterday", float("nan"), 1e300):
        assert format_time(bad) == "-"


@pytest.mark.parametrize(
    "size, binary, text",
    [
        (0, False, "0 B"),
        (999, False, "999 B"),
        (1000, False, "1.0 kB"),
        (1_234_567_890, False, "1.2 GB"),
        (2 * 1024**3, True, "2.0 GiB"),
        (None, False, "-"),
        (-5, False, "-"),
        (10**16, False, "10000.0 TB"),
    ],
)
def test_format_size(size, binary, text):
    assert format_size(size, binary=binary) == text


# -- list ----------------------------------------------------------------------------------------


def summary(sid, **fields):
    return dict.fromkeys(SUMMARY_FIELDS) | {"id": sid} | fields


def test_format_list_columns():
    text = format_list(
        [
            summary(
                "3f2a9c1b0d4e",
                name="baseline",
                status="done",
                duration=12.3,
                created=T0,
                notebook="work/my notebook.ipynb",
            ),
            summary("abcdef123456", status="interrupted", created=T0 + 60),
            summary("0123456789ab", name="x", status="running"),
        ]
    )
    lines = text.splitlines()
    assert [line.split()[:5] for line in lines] == [
        ["3f2a9c1b0d4e", "baseline", "done", "12.3s", local(T0)],
        ["abcdef123456", "-", "interrupted", "-", local(T0 + 60)],
        ["0123456789ab", "x", "running", "-", "-"],
    ]
    assert lines[0].split(None, 5)[5] == "work/my notebook.ipynb"  # the last column keeps spaces
    assert lines[1].split()[5] == "-"
    # Aligned: every column starts at the same offset on every line.
    for word in range(5):
        starts = {_column_start(line, word) for line in lines}
        assert len(starts) == 1 or word == 3  # durations are right-aligned
    assert all(line == line.rstrip() for line in lines)


def _column_start(line, n):
    pos = 0
    for _ in range(n):
        pos = line.index(" ", pos)
        while line[pos] == " ":
            pos += 1
    return pos


def test_status_column_width_does_not_depend_on_the_page():
    a = format_list([summary("aaaa00000001", name="n", status="done")])
    b = format_list([summary("aaaa00000001", name="n", status="interrupted")])
    assert a.index("-") == b.index("-")


def test_format_list_of_nothing_is_empty():
    assert format_list([]) == ""


def test_whitespace_in_a_word_column_cannot_shift_columns():
    line = format_list([summary("aaaa00000001", name="two words", status="done")])
    assert line.split()[:3] == ["aaaa00000001", "two_words", "done"]


word = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "id": st.text("0123456789abcdef", min_size=12, max_size=12),
                "name": st.none() | word,
                "status": st.none() | st.sampled_from(STATUSES),
                "duration": st.none() | st.floats(),
                "created": st.none() | st.floats(0, 4e9),
                "notebook": st.none() | word,
            }
        ),
        max_size=10,
    )
)
def test_format_list_always_has_one_awkable_line_per_snapshot(summaries):
    text = format_list(summaries)
    lines = text.splitlines() if text else []
    assert len(lines) == len(summaries)
    for line, s in zip(lines, summaries):
        fields = line.split()
        assert fields[0] == s["id"]
        assert fields[2] == (s["status"] or "-")
        assert len(fields) >= 6


def test_list_snapshots_text_and_json(store):
    store.put_many(
        [
            full_record(
                f"aaaa{i:08d}",
                created=T0 + i,
                notebook="a.ipynb" if i % 2 else "b.ipynb",
                name=f"n{i % 3}",
            )
            for i in range(10)
        ]
    )
    text = list_snapshots(store, limit=4)
    assert [line.split()[0] for line in text.splitlines()] == [f"aaaa{i:08d}" for i in (9, 8, 7, 6)]
    assert list_snapshots(store, limit=3, offset=4).splitlines()[0].startswith("aaaa00000005")
    only_a = list_snapshots(store, limit=50, notebook="a.ipynb")
    assert len(only_a.splitlines()) == 5 and all(l.endswith("a.ipynb") for l in only_a.splitlines())
    assert len(list_snapshots(store, limit=50, name="n0").splitlines()) == 4
    assert list_snapshots(store, limit=50, name="nobody") == ""
    data = json.loads(list_snapshots(store, limit=50, name="n1", as_json=True))
    assert data == store.list(name="n1")
    assert [d["id"] for d in data] == ["aaaa00000007", "aaaa00000004", "aaaa00000001"]
    assert json.loads(list_snapshots(store, limit=5, name="nobody", as_json=True)) == []
    assert len(list_snapshots(store, limit=50, status="failed").splitlines()) == 10


# -- show ----------------------------------------------------------------------------------------


def test_show_text_has_spec_packages_timings_exit_and_image(store):
    store.put(full_record())
    text = show(store, "baseline")
    lines = {line.split()[0]: line for line in text.splitlines() if line and line[0] != " "}
    assert lines["snapshot"].split()[1] == "3f2a9c1b0d4e"
    assert "failed, exit 137 (out of memory)" in lines["status"]
    assert "work/analysis.ipynb, cell 12" in lines["notebook"]
    assert "mlc-env:ab12" in lines["image"] and "1.2 GB" in lines["image"]
    assert "sha256:cccccccccccc" in lines["image"]
    assert "python:3.11-slim" in lines["base"] and "sha256:bbbbbbbbbbbb" in lines["base"]
    assert "numpy==1.26.4" in lines["requires"] and "pandas>=2,<3" in lines["requires"]
    assert "libgomp1" in lines["apt"]
    assert "cpus 2.0" in lines["resources"] and "memory 2.0 GiB" in lines["resources"]
    assert "timeout 10m00s" in lines["resources"] and "gpus" not in lines["resources"]
    assert "df: parquet, 1.2 MB, sha256:dddddddddddd" in lines["inputs"]
    assert "model: pickle, 3.4 kB" in lines["outputs"]
    assert "scipy==1.13.0" in lines["captured"]
    assert "2 packages" in lines["lock"]
    assert "numpy==1.26.4" in text and "pandas==2.2.1" in text
    assert "build 31.5s" in lines["timings"] and "total 1m22s" in lines["timings"]
    assert "box" in lines["host"] and "docker 24.0.7" in lines["host"]
    assert "ran 50.2s" in lines["finished"] or "ran 50.3s" in lines["finished"]
    assert lines["created"].split()[1] == local(T0)
    assert "    import numpy as np" in text and "ignored" not in text


def test_show_never_prints_the_specs_unmasked_env():
    text = format_record(full_record())
    assert "s3cr3t-value" not in text and "TOKEN=***" in text


def test_show_json_is_the_whole_record(store):
    store.put(full_record())
    assert json.loads(show(store, "3f2a", as_json=True)) == full_record()


def test_show_of_a_fresh_building_record():
    text = format_record({"id": "aaaa00000001", "status": "building", "created": T0})
    assert text.splitlines() == [
        "snapshot    aaaa00000001",
        "status      building",
        f"created     {local(T0)}",
    ]


def test_show_falls_back_to_the_spec():
    text = format_record({"id": "x", "spec": full_record()["spec"]})
    assert "numpy==1.26.4" in text and "network none" in text and "timeout 10m00s" in text
    assert "inputs      df" in text and "ignored" in text  # the spec's code


def test_show_of_an_unknown_ref(store):
    with pytest.raises(StoreError, match="No snapshot"):
        show(store, "nothing")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(full_record())), json_values))
def test_format_record_never_fails_on_odd_records(fields):
    """Old, partial or hand-edited records still show (only the id line is guaranteed)."""
    text = format_record({"id": "abcd00000001", **{k: v for k, v in fields.items() if k != "id"}})
    assert text.splitlines()[0] == "snapshot    abcd00000001"


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(full_record())), json_values))
def test_format_record_of_partial_real_records(fields):
    record = {k: v for k, v in full_record().items() if k in fields or k == "id"}
    assert format_record(record).startswith("snapshot    3f2a9c1b0d4e")


# -- logs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "stdout, stderr, text",
    [
        ("out\n", "err\n", "out\nerr\n"),
        ("out", "err", "out\nerr"),
        ("out", None, "out"),
        (None, "err", "err"),
        (None, None, ""),
        ("", "", ""),
    ],
)
def test_format_logs(stdout, stderr, text):
    assert format_logs({"stdout": stdout, "stderr": stderr}) == text


def test_logs_by_name(store):
    store.put(full_record())
    assert logs(store, "baseline") == "hello\nKilled"


# -- rm ------------------------------------------------------------------------------------------


def test_rm_removes_several_and_says_which(store):
    store.put_many(
        [
            full_record("aaaa00000001", name="one"),
            full_record("bbbb00000001", name=None),
            full_record("cccc00000001"),
        ]
    )
    folder = store.artifacts_dir("aaaa00000001")
    text = rm(store, ["one", "bbbb", "aaaa00000001"])  # 'one' and the id are the same
    assert text.splitlines() == ["removed aaaa00000001 (one)", "removed bbbb00000001"]
    assert not folder.exists()
    assert [s["id"] for s in store.list()] == ["cccc00000001"]


def test_rm_accepts_one_ref_as_a_string(store):
    store.put(full_record())
    assert rm(store, "3f2a") == "removed 3f2a9c1b0d4e (baseline)"
    assert store.count() == 0


def test_rm_with_an_unknown_ref_removes_nothing(store):
    store.put_many([full_record("aaaa00000001"), full_record("aaaa00000002")])
    with pytest.raises(StoreError) as e:
        rm(store, ["aaaa00000001", "nope", "aaaa"])
    message = str(e.value)
    assert "'nope'" in message and "ambiguous" in message and "Nothing was removed" in message
    assert store.count() == 2


@pytest.mark.parametrize("status", ["running", "building"])
def test_rm_keeps_active_snapshots_unless_forced(store, status):
    store.put(full_record(status=status))
    with pytest.raises(StoreError, match=f"still {status}"):
        rm(store, ["3f2a"])
    assert store.count() == 1
    assert rm(store, ["3f2a"], force=True).startswith("removed 3f2a9c1b0d4e")
    assert store.count() == 0


def test_rm_of_nothing(store):
    with pytest.raises(StoreError, match="at least one"):
        rm(store, [])


def test_show_says_where_a_snapshot_ran():
    k8s = {
        "id": "abc123abc123",
        "status": "done",
        "backend": "kubernetes",
        "target": {"context": "kind-dev", "namespace": "ml"},
    }
    assert verbs.format_where(k8s) == "kubernetes (context kind-dev, namespace ml)"
    assert "ran on      kubernetes (context kind-dev, namespace ml)" in verbs.format_record(k8s)
    local = {
        "id": "abc123abc124",
        "backend": "docker",
        "target": {"engine": "unix:///var/run/docker.sock"},
    }
    assert verbs.format_where(local) == "docker"
    assert verbs.format_where({"id": "old"}) == "docker"  # before the field existed
    assert "ran on" not in verbs.format_record({"id": "old"})
    odd = {"backend": "kubernetes", "target": {"context": "a\nb", "namespace": 3}}
    assert verbs.format_where(odd) == "kubernetes (context a?b)"


def test_show_lists_mounted_data_written_files_and_secret_names():
    record = {
        "id": "d474d474d474",
        "spec": {"secrets": ["HF_TOKEN"]},
        "mounts": [
            {
                "target": "/work/data",
                "mode": "ro",
                "size": 2_000_000,
                "count": 3,
                "digest": "xxh3-128:0123456789abcdef0123",
            }
        ],
        "written": {"/work/models": {"model.json": [26, "xxh3-128:ff"]}},
    }
    text = verbs.format_record(record)
    assert "data in     /work/data  ro  2.0 MB, 3 files  xxh3-128:0123456789ab" in text
    assert "data out    /work/models/model.json  26 B" in text
    assert "secrets     HF_TOKEN" in text
    assert "data in" not in verbs.format_record({"id": "old"})
