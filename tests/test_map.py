"""Fan-out (--map, issue 17): items of a value (pure), the manifest the runner reads, the
default run_map against a fake backend (bounds, retries, interrupt), the display's progress;
then maps on the real engine."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from IPython.core.error import UsageError

from conftest import wait_for
from mlcontainer_magics.core import maps, runs, transfer, verbs
from mlcontainer_magics.core import spec as specs
from mlcontainer_magics.core.backend import Backend, RunResult, item_out_dir
from mlcontainer_magics.core.events import Phase
from mlcontainer_magics.errors import CapabilityMissing, MapError, SpecError
from mlcontainer_magics.frontends.display import RunStatus, apply, text_lines
from mlcontainer_magics.frontends.display.text import describe_failures, describe_map
from mlcontainer_magics.runner import mlc_runner

# -- items of a value (pure) -------------------------------------------------------------------


def test_items_of_lists_tuples_arrays_and_lists_of_frames():
    assert maps.items_of([1, "a", {"k": 2}], "xs") == [1, "a", {"k": 2}]
    assert maps.items_of((3, 4), "xs") == [3, 4]
    rows = maps.items_of(np.arange(24).reshape(8, 3), "arr")
    assert len(rows) == 8 and all(r.shape == (3,) for r in rows)
    assert np.array_equal(rows[5], [15, 16, 17])
    # a 1-D array's elements are 0-d arrays: sent as .npy, with their dtype
    scalars = maps.items_of(np.array([1.5, 2.5], dtype=np.float32), "v")
    assert [s.shape for s in scalars] == [(), ()] and scalars[1].dtype == np.float32
    frames = [pd.DataFrame({"a": [1, 2]}), pd.DataFrame({"a": [3]})]
    assert maps.items_of(frames, "dfs") == frames


@pytest.mark.parametrize(
    "value, words",
    [
        ([], "is empty"),
        ((), "is empty"),
        (np.zeros((0, 3)), "is empty"),
        (np.float64(3.0), "cannot be mapped"),
        (np.array(3.0), "0-dimensional"),
        ({"a": 1}, "list(xs)"),
        ("abc", "a str cannot be mapped"),
        (range(3), "list(xs)"),
        (pd.DataFrame({"a": [1]}), "list of DataFrames"),
        (3, "a int cannot be mapped"),
    ],
)
def test_items_of_refuses_what_it_cannot_map(value, words):
    with pytest.raises(SpecError, match=r"^--map xs") as e:
        maps.items_of(value, "xs")
    assert words in str(e.value)


def test_encoded_size_is_about_an_items_file_at_least():
    """What a backend's check_map is told of the items before anything is built."""
    assert transfer.encoded_size("abc") == 5  # "abc" in JSON
    assert transfer.encoded_size(b"\0" * 10) == 10 and transfer.encoded_size(b"") == 0
    assert transfer.encoded_size(np.zeros((4, 8))) == 256
    assert transfer.encoded_size([1.5, 2, {"a": None}]) == len('[1.5, 2, {"a": null}]')
    assert transfer.encoded_size(object()) == 0  # pickled: not known without pickling it
    # The default check_map (Docker's) refuses no size.
    assert FakeItems().check_map(_spec(map=specs.MapSpec("x")), [10**9], 10**9) is None


def test_an_item_that_cannot_be_sent_is_named_by_its_index():
    with pytest.raises(SpecError, match=r"^--map xs\[1\]: .*cannot be sent"):
        maps.items_of([1, threading.Lock()], "xs")


# -- the spec (pure) ---------------------------------------------------------------------------


def _spec(**kw):
    return specs.RunSpec(code="y = x", env_spec=specs.EnvSpec("python:3.11-slim"), **kw)


@pytest.mark.parametrize(
    "args, words",
    [
        (dict(name="1x"), "not a Python variable name"),
        (dict(name="x", parallel="0"), "--parallel '0': use a number from 1"),
        (dict(name="x", parallel="two"), "--parallel 'two' is not a whole number"),
        (dict(name="x", retries="-1"), "--retries '-1': use a number from 0"),
        (dict(name=None, parallel="2"), "--parallel: only with --map NAME"),
        (dict(name=None, retries="1"), "--retries: only with --map NAME"),
    ],
)
def test_parse_map_refuses_bad_values(args, words):
    name = args.pop("name")
    with pytest.raises(SpecError) as e:
        specs.parse_map(name, **args)
    assert words in str(e.value)


def test_a_map_refuses_its_name_as_in_and_serve_and_session():
    m = specs.parse_map("x", parallel="4", retries="2")
    assert m == specs.MapSpec("x", 4, 2)
    with pytest.raises(SpecError, match="drop x from --in"):
        _spec(inputs=("x",), map=m)
    with pytest.raises(SpecError, match="--map and --serve"):
        _spec(map=m, serve=specs.ServeSpec("svc"))
    with pytest.raises(SpecError, match="--map and --session"):
        _spec(map=m, session="warm")
    assert specs.parse_map(None) is None


def test_the_map_is_in_the_recorded_spec_and_comes_back():
    from mlcontainer_magics.core.snapshots import spec_from_record

    spec = _spec(inputs=("k",), outputs=("y",), map=specs.MapSpec("x", None, 1))
    d = spec.to_dict()
    assert d["map"] == {"name": "x", "parallel": None, "retries": 1}
    assert spec_from_record({"id": "a", "spec": d}) == spec


# -- the runner binds NAME to its item (pure: an environ dict) ---------------------------------


MAPPED = {"name": "x", "count": 3, "items": [{"file": f"in/x/{i:05d}.json"} for i in range(3)]}


def test_the_runner_takes_the_item_of_mlc_index_else_the_job_completion_index():
    env = {"MLC_INDEX": "2"}
    assert mlc_runner.map_item(MAPPED, env) == ("x", MAPPED["items"][2])
    env = {"JOB_COMPLETION_INDEX": "1"}  # a Kubernetes Indexed Job's pod
    assert mlc_runner.map_item(MAPPED, env)[1]["file"] == "in/x/00001.json"
    assert env["MLC_INDEX"] == "1"  # the cell sees MLC_INDEX on every backend
    # a rerun of item 7 alone: one entry, and the cell still sees its own index
    one = {"name": "x", "count": 1, "items": [{"file": "in/x/00007.json", "index": 7}]}
    env = {"MLC_INDEX": "0"}
    assert mlc_runner.map_item(one, env)[1]["index"] == 7 and env["MLC_INDEX"] == "7"


@pytest.mark.parametrize("env, words", [({}, "is unset"), ({"MLC_INDEX": "3"}, "3 items")])
def test_the_runner_says_which_index_is_wrong(env, words):
    with pytest.raises(mlc_runner.CellError, match=words):
        mlc_runner.map_item(MAPPED, env)


def test_the_runner_reads_its_item_from_the_folder(tmp_path, monkeypatch):
    """run_in with a map manifest: NAME is the item, the shared --in values as ever."""
    import json

    (tmp_path / "in" / "x").mkdir(parents=True)
    (tmp_path / "out").mkdir()
    for i in range(3):
        (tmp_path / "in" / "x" / f"{i:05d}.json").write_text(json.dumps(i * 10))
    (tmp_path / "in" / "k.json").write_text("5")
    manifest = {
        "inputs": {"k": {"file": "in/k.json", "format": "json"}},
        "outputs": ["y"],
        "host": {},
        "map": maps.map_manifest(
            "x", [{"file": f"in/x/{i:05d}.json", "format": "json", "index": i} for i in range(3)]
        ),
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "cell.py").write_text("import os\ny = [x + k, os.environ['MLC_INDEX']]\n")
    monkeypatch.setenv("MLC_INDEX", "2")
    assert mlc_runner.run_in(str(tmp_path), {}) == 0
    out = json.loads((tmp_path / "out" / "outputs.json").read_text())
    assert json.loads((tmp_path / "out" / out["y"]["file"]).read_text()) == [25, "2"]


# -- the default run_map, against a fake backend -----------------------------------------------


class FakeItems(Backend):
    """run_item in threads: counts how many run at once; an item fails as ``fails`` says."""

    name = "fake"

    def __init__(self, fails=None, hold=0.05):
        self.fails = fails or {}  # index -> attempts that fail
        self.hold = hold
        self.lock = threading.Lock()
        self.now = self.most = 0
        self.attempts: dict[int, int] = {}
        self.stops = 0
        self.stopped = threading.Event()

    def run_item(
        self, spec, env, workdir, *, run_id, index, events=None, output=None, secrets=None
    ):
        assert item_out_dir(workdir, index).is_dir()
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
            self.attempts[index] = self.attempts.get(index, 0) + 1
            attempt = self.attempts[index]
        try:
            if self.stopped.wait(self.hold):
                return RunResult(137, "stopped")
            if output:
                output("stdout", f"item {index} says")
                output("stdout", " hello\n")
            if attempt <= self.fails.get(index, 0):
                return RunResult(1, "failed", stderr=f"Traceback\nValueError: item {index}\n")
            return RunResult(0, "done", stdout=f"{index}\n")
        finally:
            with self.lock:
                self.now -= 1

    def stop(self, run_id, grace=0):
        self.stops += 1
        self.stopped.set()
        return True

    # the rest of the contract: not used here
    target = status = ensure_environment = base_image_id = fetch_wheels = save_image = None
    run = is_running = running = prune_orphans = prune_images = None


def test_the_default_run_map_bounds_the_items_at_once_and_keeps_their_order(tmp_path):
    backend, seen, printed = FakeItems(), [], []
    results = backend.run_map(
        _spec(map=specs.MapSpec("x")),
        None,
        tmp_path,
        run_id="r1",
        count=12,
        parallel=4,
        events=lambda phase, **info: seen.append((phase, info)),
        output=lambda stream, text: printed.append(text),
    )
    assert [r.index for r in results] == list(range(12))
    assert all(r.reason == "done" and r.attempts == 1 for r in results)
    assert results[3].stdout == "3\n" and results[3].out_dir == tmp_path / "out" / "00003"
    assert 1 <= backend.most <= 4
    # whole lines only, however the item's output came
    assert sorted(printed) == sorted(f"item {i} says hello\n" for i in range(12))
    last = [info for phase, info in seen if phase == Phase.MAPPED][-1]
    assert (last["done"], last["running"], last["failed"], last["count"]) == (12, 0, 0, 12)
    assert last["rate"] > 0 and last["eta"] == 0


def test_the_default_run_map_retries_and_reports_failures(tmp_path):
    backend, seen = FakeItems(fails={2: 1, 5: 9}), []
    results = backend.run_map(
        _spec(map=specs.MapSpec("x")),
        None,
        tmp_path,
        run_id="r1",
        count=6,
        parallel=2,
        retries=2,
        events=lambda phase, **info: seen.append(info),
    )
    assert [(r.reason, r.attempts) for r in results] == [
        ("done", 1),
        ("done", 1),
        ("done", 2),  # failed once, then recovered
        ("done", 1),
        ("done", 1),
        ("failed", 3),  # every attempt failed: 1 + 2 retries
    ]
    assert seen[-1]["failures"] == [{"index": 5, "reason": "failed", "why": "ValueError: item 5"}]


def test_the_default_run_map_stops_every_item_on_cancel(tmp_path):
    backend = FakeItems(hold=30)
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    results = backend.run_map(
        _spec(map=specs.MapSpec("x")),
        None,
        tmp_path,
        run_id="r",
        count=8,
        parallel=2,
        cancel=cancel,
    )
    assert backend.stops >= 1
    assert {r.reason for r in results} == {"stopped"}
    assert sum(r.attempts for r in results) == 2  # the two running; the others never started


def test_an_interrupt_stops_the_items_and_raises_once_they_ended(tmp_path):
    backend = FakeItems(hold=30)

    def interrupt():
        wait_for(lambda: backend.now == 2)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        backend.run_map(
            _spec(map=specs.MapSpec("x")), None, tmp_path, run_id="r", count=8, parallel=2
        )
    assert backend.stops >= 1 and backend.now == 0  # none runs any more


def test_a_backend_without_items_refuses_a_map():
    class Bare(FakeItems):
        run_item = Backend.run_item

    with pytest.raises(CapabilityMissing, match="--map is not supported with --backend fake"):
        Bare().run_item(None, None, Path("."), run_id="r", index=0)


# -- the error, the record's text, the display (pure) ------------------------------------------


def _outcome(items):
    from mlcontainer_magics.core.runs import RunOutcome

    outcome = RunOutcome("r", _spec(map=specs.MapSpec("xs")))
    outcome.map = {"name": "xs", "count": len(items), "parallel": 4, "retries": 0, "items": items}
    return outcome


def _item(index, reason="done", **kw):
    return dict(index=index, reason=reason, exit_code=0 if reason == "done" else 1, **kw)


def test_the_map_error_lists_failed_items_with_their_tracebacks():
    assert maps.map_error(_outcome([_item(0), _item(1)])) is None
    tb = "Traceback (most recent call last):\n  File x\nZeroDivisionError: division by zero"
    error = maps.map_error(
        _outcome([_item(0), _item(1, "failed", error=tb, attempts=3), _item(2, "timeout")])
    )
    assert isinstance(error, MapError) and error.reason == "failed" and error.exit_code == 1
    assert [f["index"] for f in error.failed] == [1, 2]
    text = str(error)
    assert text.startswith("2 of 3 items of --map xs failed")
    assert "item 1: failed, exit code 1, after 3 attempts\n    Traceback" in text
    assert "    ZeroDivisionError: division by zero" in text and "item 2: timed out" in text


def test_short_traceback_keeps_its_head_and_its_error():
    frames = "".join(f'  File "/mlc/cell.py", line {i}\n' for i in range(40))
    tb = maps.short_traceback("noise\nTraceback (most recent call last):\n" + frames + "E: x\n")
    lines = tb.splitlines()
    assert lines[0].startswith("Traceback") and lines[-1] == "E: x" and "  ..." in lines
    assert len(lines) == maps.TRACEBACK_LINES


def test_show_lists_a_maps_items_compactly():
    record = {
        "id": "abc",
        "status": "failed",
        "map": {
            "name": "xs",
            "count": 3,
            "parallel": 4,
            "retries": 1,
            "items": [
                _item(0, duration=1.25),
                _item(1, "failed", duration=0.5, attempts=2, error="Traceback\nValueError: no"),
                _item(2, duration=1.0),
            ],
        },
    }
    text = verbs.format_record(record)
    assert "map         xs: 3 items (--parallel 4, --retries 1); 2 done, 1 failed" in text
    assert "items       0:done 1.2s  1:failed 0.5s x2  2:done 1.0s" in text
    assert "failed      1: ValueError: no" in text


def test_the_display_shows_the_maps_progress_and_failures():
    s = apply(RunStatus(), Phase.STARTING, now=0.0)
    info = dict(done=0, running=4, failed=0, count=12, rate=0.0, eta=None, failures=[])
    s1 = apply(s, Phase.MAPPED, info, now=1.0)
    assert s1.phase == "mapped" and s1.items.count == 12
    assert text_lines(s, s1) == ["[mlcontainer] running 12 items…"]
    failure = {"index": 3, "reason": "failed", "why": "ValueError: boom"}
    info = dict(done=6, running=4, failed=1, count=12, rate=2.0, eta=3.0, failures=[failure])
    s2 = apply(s1, Phase.MAPPED, info, now=4.0)
    assert (
        describe_map(s2.items) == "6/12 items · 4 running · 1 failed · 2 items/s · about 3.0 s left"
    )
    assert describe_failures(s2.items) == ["item 3: failed (ValueError: boom)"]
    lines = text_lines(s1, s2)
    assert "[mlcontainer] item 3: failed (ValueError: boom)" in lines
    assert any("6/12 items" in line for line in lines)


def test_the_widget_draws_a_maps_bar():
    pytest.importorskip("ipywidgets")
    from mlcontainer_magics.frontends.display.widget import WidgetView

    view = WidgetView(on_click=None)
    failure = {"index": 3, "reason": "failed", "why": "ValueError: boom"}
    info = dict(done=5, running=2, failed=1, count=8, rate=1.0, eta=3.0, failures=[failure])
    s = apply(apply(RunStatus(), Phase.STARTING, now=0.0), Phase.MAPPED, info, now=1.0)
    view.render(s, now=2.0)
    assert (view.progress.value, view.progress.max, view.progress.layout.display) == (5, 8, "")
    assert view.progress.bar_style == "danger"
    assert (
        "5/8 items" in view.phase.value and "item 3: failed (ValueError: boom)" in view.image.value
    )


# -- run-items.sh of an exported map (pure: the script's text) ---------------------------------


@pytest.mark.parametrize(
    "record_map, spec_retries, default",
    [({"retries": 2}, 0, "2"), (None, 1, "1"), ({"retries": 0}, 0, "0"), (None, 0, "0")],
)
def test_run_items_retries_as_the_map_recorded_unless_mlc_retries_says(
    tmp_path, record_map, spec_retries, default
):
    from mlcontainer_magics.backends.export import run_items_script

    spec = _spec(map=specs.MapSpec("x", 2, spec_retries))
    record = {"id": "snap1", "spec": spec.to_dict()}
    if record_map is not None:
        record["map"] = {"name": "x", "count": 3, **record_map}
    text = run_items_script(record, spec, {"name": "x", "count": 3})
    assert f'RETRIES="${{MLC_RETRIES:-{default}}}"' in text
    # each attempt empties the item's folder before its container runs; the last one's count
    # is kept beside its exit status; each retry is said
    loop = text[text.index("    while :; do") : text.index("    done")]
    assert loop.index('rm -rf "$dir"') < loop.index("docker run --rm")
    assert '[ "$attempt" -gt "$RETRIES" ]' in loop
    assert "retrying ($((attempt + 1)) of $((RETRIES + 1)))" in loop
    assert 'echo "$attempt" >"$dir/attempts"' in text
    script = tmp_path / "run-items.sh"
    script.write_text(text)
    assert subprocess.run(["sh", "-n", str(script)]).returncode == 0
    # a number that is not one (or that sh would read as octal, or too large for its test) is
    # refused before anything runs
    for wrong in ("two", "08", "010", "1000", "-1"):
        bad = subprocess.run(
            ["sh", str(script)], env={**os.environ, "MLC_RETRIES": wrong}, capture_output=True
        )
        assert bad.returncode == 2 and b"MLC_RETRIES must be a whole number" in bad.stderr, wrong
    assert not (tmp_path / "items").exists()


@pytest.mark.parametrize(
    "retries, words",
    [
        (0, "is not run again, as the map had no `--retries`"),
        (1, "is run again up to 1 more time, as the map's `--retries 1` said"),
        (3, "is run again up to 3 more times, as the map's `--retries 3` said"),
    ],
)
def test_an_exported_maps_readme_says_what_a_failed_item_gets(retries, words):
    from mlcontainer_magics.backends.export import _retried

    assert _retried(retries).endswith(words)


# -- on the real engine --------------------------------------------------------------------------


def on_engine(test):
    """A test on the real Docker engine, which must leave nothing behind."""
    return pytest.mark.docker(pytest.mark.usefixtures("no_leaks")(test))


def cell(ip, line, code):
    ip.run_cell_magic("containerize", line, code)


@pytest.fixture
def store_of_ip(tmp_path, ip, monkeypatch):
    from mlcontainer_magics.core.store import Store

    root = tmp_path / "store"
    monkeypatch.setenv("MLCONTAINER_DISPLAY", "text")
    ip.run_line_magic("config", f"ContainerizeMagics.store_dir = {str(root)!r}")
    return Store(root)


def newest(store) -> dict:
    return store.get(store.list(limit=1)[0]["id"])


def most_at_once(spans) -> int:
    """The most intervals [start, end] that overlap at one moment."""
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    now = most = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


class Watch:
    """Polls the engine for the session's run containers: the most seen at once."""

    def __init__(self, client, namespace):
        self.client, self.most, self.done = client, 0, threading.Event()
        self.flt = {"label": [f"org.mlcontainer.namespace={namespace}", "org.mlcontainer.item"]}
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self):
        while not self.done.is_set():
            # sparse: counted as the engine lists them, none inspected (one removed between
            # the list and its inspection would end this thread)
            running = self.client.containers.list(filters=self.flt, sparse=True)
            self.most = max(self.most, len(running))
            time.sleep(0.05)

    def stop(self) -> int:
        self.done.set()
        self.thread.join()
        return self.most


@on_engine
def test_twelve_items_four_at_a_time_equal_a_loop_in_the_kernel(
    ip, store_of_ip, docker_client, namespace, capsys
):
    store = store_of_ip
    ip.user_ns.update(xs=[3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8], k=10)
    watch = Watch(docker_client, namespace)
    cell(
        ip,
        "-n fan --map xs --parallel 4 --in k --out y,span",
        "import os, time\n"
        "t0 = time.time()\n"
        "time.sleep(1)\n"
        "y = xs * k + int(os.environ['MLC_INDEX'])\n"
        "print('item', os.environ['MLC_INDEX'], flush=True)\n"
        "span = [t0, time.time()]\n",
    )
    seen = watch.stop()
    expected = [x * 10 + i for i, x in enumerate(ip.user_ns["xs"])]  # the loop in the kernel
    assert ip.user_ns["y"] == expected
    spans = ip.user_ns["span"]
    assert len(spans) == 12 and 2 <= most_at_once(spans) <= 4  # in parallel, never over 4
    assert 1 <= seen <= 4  # the engine never had more than 4 item containers
    printed = capsys.readouterr().out
    assert sorted(line for line in printed.splitlines() if line.startswith("item ")) == sorted(
        f"item {i}" for i in range(12)
    )
    assert "[mlcontainer] running 12 items…" in printed and "12/12 items" in printed
    record = newest(store)
    assert record["status"] == "done" and record["name"] == "fan"
    block = record["map"]
    assert (block["name"], block["count"], block["parallel"]) == ("xs", 12, 4)
    assert [i["index"] for i in block["items"]] == list(range(12))
    assert all(i["reason"] == "done" and i["attempts"] == 1 for i in block["items"])
    assert all(i["input_digest"].startswith("xxh3-128:") for i in block["items"])
    assert block["items"][0]["input_digest"] == block["items"][9]["input_digest"]  # both 3
    assert block["items"][0]["input_digest"] != block["items"][1]["input_digest"]
    assert set(block["items"][5]["outputs"]) == {"y", "span"}
    # the map's inputs: the whole value (as any run's, linked to the notebook) and k, once
    assert set(record["inputs"]) == {"xs", "k"}
    assert {p["input"]: p.get("from") for p in record["parents"]} == {
        "xs": "notebook",
        "k": "notebook",
    }
    # its --out lists are values a later cell's --in links to
    cell(ip, "-n total --in y --out t", "t = sum(y)")
    assert ip.user_ns["t"] == sum(expected)
    total = store.get("total")
    assert total["parents"][0]["snapshot"] == record["id"]

    # rerun --verify of a map (whose outputs, unlike spans, are the same every time) re-runs
    # every item; --item I one, which sees its own MLC_INDEX
    ip.user_ns["ws"] = ["a", "bb", "ccc"]
    cell(ip, "-n lens --map ws --out n", "import os\nn = [len(ws), os.environ['MLC_INDEX']]")
    assert ip.user_ns["n"] == [[1, "0"], [2, "1"], [3, "2"]]
    lens = newest(store)
    capsys.readouterr()
    ip.run_line_magic("container", f"rerun {lens['id']} --verify")
    assert "verified" in capsys.readouterr().out
    again = newest(store)
    assert again["rerun_of"] == lens["id"] and again["map"]["count"] == 3
    ip.run_line_magic("container", f"rerun {lens['id']} --verify --item 2")
    out = capsys.readouterr().out
    assert f"rerun {lens['id']} (item 2) as" in out and "verified" in out
    one = newest(store)
    assert [(i["index"], i["reason"]) for i in one["map"]["items"]] == [(2, "done")]
    assert one["map"]["items"][0]["outputs"]["n"] == lens["map"]["items"][2]["outputs"]["n"]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
@on_engine
def test_a_failing_item_is_reported_by_index_and_the_others_are_kept(ip, store_of_ip, capsys):
    store = store_of_ip
    ip.user_ns["xs"] = [1, 2, 0, 4]
    cell(ip, "--map xs --parallel 2 --out y --no-raise-error", "y = 12 // xs")
    assert ip.user_ns["y"] == [12, 6, None, 3]
    err = capsys.readouterr().err
    assert "1 of 4 items of --map xs failed" in err
    assert "item 2: failed, exit code 1" in err and "ZeroDivisionError" in err
    record = newest(store)
    assert record["status"] == "failed"
    failed = [i for i in record["map"]["items"] if i["reason"] != "done"]
    assert [i["index"] for i in failed] == [2]
    assert failed[0]["error"].startswith("Traceback") and "ZeroDivisionError" in failed[0]["error"]
    assert "failed      2: ZeroDivisionError" in verbs.show(store, record["id"])
    # raised: one MapError that names it
    with pytest.raises(MapError) as e:
        cell(ip, "--map xs --parallel 2 --out y", "y = 12 // xs")
    assert [f["index"] for f in e.value.failed] == [2]


def _export_with_cli(store, record, dest):
    """`mlcontainer export ID DEST` of ``record``, as a user runs it (the finished process)."""
    return subprocess.run(
        [sys.executable, "-m", "mlcontainer_magics.frontends.cli", "export", record["id"], dest],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "MLCONTAINER_STORE": str(store.root)},
    )


@on_engine
def test_an_exported_map_runs_every_item_with_plain_docker(ip, store_of_ip, tmp_path, namespace):
    """`mlcontainer export ID DIR` of a map: the image runs the item MLC_INDEX says (and says
    plainly that it needs one), run-items.sh runs all of them with plain docker, each item's
    --out values in items/NNNNN/ with the digests the map recorded."""
    store = store_of_ip
    ip.user_ns.update(ws=["a", "bb", "ccc", "dddd"], k=3)
    cell(
        ip,
        "-n lens --map ws --parallel 2 --in k --out n",
        "import os\nn = [len(ws) * k, int(os.environ['MLC_INDEX'])]\n"
        "print('item', os.environ['MLC_INDEX'])",
    )
    record = newest(store)
    assert record["status"] == "done" and record["map"]["count"] == 4
    dest = tmp_path / "exported"
    proc = _export_with_cli(store, record, dest)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (
        f"exported the map (4 items) to {dest}: docker build -t snapshot-{record['id']} {dest} "
        f"&& sh {dest}/run-items.sh (README.md says how to run one item)"
    )
    script = dest / "run-items.sh"
    assert subprocess.run(["sh", "-n", str(script)]).returncode == 0
    text = script.read_text()
    assert text.startswith("#!/bin/sh\n") and "set -eu" in text
    assert 'PARALLEL="${MLC_PARALLEL:-2}"' in text and "xargs -n 1 -P" in text
    readme = (dest / "README.md").read_text()
    assert "a map of 4 items" in readme
    assert f'docker run --rm -e MLC_INDEX=3 -v "$PWD/out:/mlc/out" snapshot-{record["id"]}' in (
        readme
    )
    assert "sh run-items.sh" in readme and "items/NNNNN/" in readme
    manifest = json.loads((dest / "mlc" / "manifest.json").read_text())
    assert manifest["map"]["count"] == 4 and "ws" not in manifest["inputs"]

    image = f"{namespace}-map-export:{record['id']}"
    try:
        build = subprocess.run(
            ["docker", "build", "-q", "-t", image, str(dest)],
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert build.returncode == 0, build.stderr[-3000:]
        # Without MLC_INDEX the image runs nothing, and says what to do.
        plain = subprocess.run(
            ["docker", "run", "--rm", image], capture_output=True, text=True, timeout=120
        )
        assert plain.returncode == 2 and plain.stdout == ""
        assert "MLC_INDEX is unset" in plain.stderr and "-e MLC_INDEX=0" in plain.stderr
        assert "run-items.sh" in plain.stderr
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        run = subprocess.run(
            ["sh", str(script)],
            cwd=elsewhere,
            env={**os.environ, "MLC_MAP_IMAGE": image},
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        subprocess.run(["docker", "rmi", "-f", image], capture_output=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert sorted(run.stdout.splitlines()[:-1]) == [f"item {i}: done" for i in range(4)]
    assert run.stdout.splitlines()[-1].startswith("all 4 items done")
    for item in record["map"]["items"]:
        folder = dest / "items" / f"{item['index']:05d}"
        recorded = item["outputs"]["n"]["digest"]
        made = folder / "v-n.json"
        assert transfer.file_digest(made, transfer.digest_algorithm(recorded)) == recorded
        assert json.loads(made.read_text()) == [
            len(ip.user_ns["ws"][item["index"]]) * 3,
            item["index"],
        ]
        stdout = (folder / "stdout.txt").read_text()
        assert stdout == f"item {item['index']}\n"
        assert runs.text_digest(stdout) == item["stdout_digest"]
        assert (folder / "exit-code").read_text() == "0\n"
    gone = subprocess.run(["docker", "image", "inspect", image], capture_output=True)
    assert gone.returncode != 0
    # Without the image, the script says how to build it, and runs nothing.
    again = subprocess.run(
        ["sh", str(script)],
        env={**os.environ, "MLC_MAP_IMAGE": image},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 1 and f"build it first: docker build -t {image}" in again.stderr
    assert (dest / "items" / "00003" / "v-n.json").exists()  # the last run's are kept


@on_engine
def test_an_exported_map_retries_a_failed_item_with_plain_docker(
    ip, store_of_ip, tmp_path, namespace
):
    """run-items.sh applies the map's recorded --retries: an item that fails on its first
    attempt runs again in a fresh container, its folder emptied first, and items/NNNNN/attempts
    says 2; without retries (MLC_RETRIES=0) the same item fails."""
    store = store_of_ip
    marks = tmp_path / "marks"
    marks.mkdir()
    marks.chmod(0o777)  # the image's unprivileged user writes the marks
    ip.user_ns["xs"] = [0, 1, 2]
    cell(
        ip,
        f"--map xs --retries 1 --parallel 2 --mount {marks}:/marks:rw --out y",
        "import os\n"
        "mark = f'/marks/{xs}'\n"
        "if xs == 1 and not os.path.exists(mark):\n"
        "    open(mark, 'w').close()\n"
        "    print('the first attempt')\n"
        "    raise RuntimeError('the first attempt fails')\n"
        "y = xs * 2\n"
        "print('item', xs)",
    )
    record = newest(store)
    assert [i["attempts"] for i in record["map"]["items"]] == [1, 2, 1]
    dest = tmp_path / "exported"
    proc = _export_with_cli(store, record, dest)
    assert proc.returncode == 0, proc.stderr
    script = dest / "run-items.sh"
    assert 'RETRIES="${MLC_RETRIES:-1}"' in script.read_text()
    readme = " ".join((dest / "README.md").read_text().split())
    assert (
        "up to 1 more time, as the map's `--retries 1` said (`MLC_RETRIES=2 sh run-items.sh`"
        in readme
    )
    # A writable --mount does not travel with an export: a `docker` first on PATH mounts the
    # marks folder into each item's container as the map had it, and runs the real one.
    real = shutil.which("docker")
    assert real
    shim = tmp_path / "bin" / "docker"
    shim.parent.mkdir()
    shim.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = run ]; then\n'
        "    shift\n"
        f'    exec {real} run -v {marks}:/marks "$@"\n'
        "fi\n"
        f'exec {real} "$@"\n'
    )
    shim.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{shim.parent}{os.pathsep}{os.environ['PATH']}",
        "MLC_MAP_IMAGE": f"{namespace}-map-retries:{record['id']}",
    }

    def run_items(**more):
        (marks / "1").unlink()  # item 1 fails again on its first attempt
        return subprocess.run(
            ["sh", str(script)], env={**env, **more}, capture_output=True, text=True, timeout=600
        )

    try:
        build = subprocess.run(
            ["docker", "build", "-q", "-t", env["MLC_MAP_IMAGE"], str(dest)],
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert build.returncode == 0, build.stderr[-3000:]
        run = run_items()
        retried = shutil.copytree(
            dest / "items", tmp_path / "retried"
        )  # the next run's replace them
        once = run_items(MLC_RETRIES="0")
    finally:
        subprocess.run(["docker", "rmi", "-f", env["MLC_MAP_IMAGE"]], capture_output=True)
    # as recorded: item 1 failed, ran again, and ended with what the map recorded
    assert run.returncode == 0, run.stdout + run.stderr
    assert sorted(run.stdout.splitlines()[:-1]) == [
        "item 0: done",
        "item 1: done after 2 attempts",
        "item 2: done",
    ]
    assert (
        "item 1: failed (exit status 1), retrying (2 of 2): RuntimeError: the first attempt fails"
        in run.stderr.splitlines()
    )
    assert sum("retrying" in line for line in run.stderr.splitlines()) == 1
    for item in record["map"]["items"]:
        folder = retried / f"{item['index']:05d}"
        assert (folder / "attempts").read_text() == f"{item['attempts']}\n"
        assert (folder / "exit-code").read_text() == "0\n"
        recorded = item["outputs"]["y"]["digest"]
        made = folder / "v-y.json"
        assert transfer.file_digest(made, transfer.digest_algorithm(recorded)) == recorded
        assert json.loads(made.read_text()) == item["index"] * 2
        # the failed attempt's output went with its emptied folder
        assert (folder / "stdout.txt").read_text() == f"item {item['index']}\n"
    # without retries the item fails, after one attempt, and the script says so
    assert once.returncode == 1
    assert "item 1: failed (exit status 1): RuntimeError: the first attempt fails" in once.stderr
    assert "retrying" not in once.stderr and "1 of 3 items failed" in once.stderr
    items = dest / "items"
    assert (items / "00001" / "attempts").read_text() == "1\n"
    assert (items / "00001" / "exit-code").read_text() == "1\n"
    assert (items / "00001" / "stdout.txt").read_text() == "the first attempt\n"
    assert not (items / "00001" / "v-y.json").exists()
    assert (items / "00000" / "v-y.json").exists() and (items / "00002" / "v-y.json").exists()


@on_engine
def test_retries_recover_an_item_that_fails_once(ip, store_of_ip, tmp_path):
    store = store_of_ip
    marks = tmp_path / "marks"
    marks.mkdir()
    ip.user_ns["xs"] = [0, 1, 2, 3]
    cell(
        ip,
        f"--map xs --retries 2 --parallel 2 --mount {marks}:/marks:rw --out y",
        "import os\n"
        "mark = f'/marks/{xs}'\n"
        "if xs == 2 and not os.path.exists(mark):\n"
        "    open(mark, 'w').close()\n"
        "    raise RuntimeError('the first attempt fails')\n"
        "y = xs * 2\n",
    )
    assert ip.user_ns["y"] == [0, 2, 4, 6]
    items = newest(store)["map"]["items"]
    assert [i["attempts"] for i in items] == [1, 1, 2, 1]
    assert {i["reason"] for i in items} == {"done"} and (marks / "2").exists()


@on_engine
def test_an_interrupt_leaves_no_container(ip, store_of_ip, docker_client, namespace):
    store = store_of_ip
    flt = {"label": f"org.mlcontainer.namespace={namespace}"}

    def interrupt_when_running():
        if wait_for(lambda: len(docker_client.containers.list(filters=flt)) >= 2, timeout=120):
            time.sleep(0.5)
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    ip.user_ns["xs"] = list(range(6))
    threading.Thread(target=interrupt_when_running, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        cell(ip, "-n stopped-map --map xs --parallel 2", "import time\ntime.sleep(120)")
    assert docker_client.containers.list(all=True, filters=flt) == []
    assert store.get("stopped-map")["status"] == "interrupted"


@on_engine
def test_a_numpy_array_of_eight_rows_maps_row_by_row(ip, store_of_ip):
    ip.user_ns["arr"] = np.arange(24, dtype=np.int32).reshape(8, 3)
    cell(
        ip,
        "-r numpy==2.1.3 --no-capture --map arr --parallel 4 --out s,twice",
        "s = int(arr.sum())\ntwice = arr * 2\n",
    )
    arr = ip.user_ns["arr"]
    assert ip.user_ns["s"] == [int(row.sum()) for row in arr]
    twice = ip.user_ns["twice"]
    assert len(twice) == 8 and all(np.array_equal(t, row * 2) for t, row in zip(twice, arr))
    assert twice[0].dtype == np.int32
    items = newest(store_of_ip)["map"]["items"]
    assert [i["outputs"]["twice"]["format"] for i in items] == ["npy"] * 8


def test_a_map_of_nothing_is_refused_before_anything_is_built(ip):
    ip.user_ns["xs"] = []
    with pytest.raises(UsageError, match="--map xs is empty"):
        cell(ip, "--map xs", "pass")
    ip.user_ns.pop("nope", None)
    with pytest.raises(UsageError, match="--map nope: no such variable"):
        cell(ip, "--map nope", "pass")
    with pytest.raises(UsageError, match="--retries: only with --map"):
        cell(ip, "--retries 2", "pass")


def test_verify_items_names_each_item_that_differs():
    def rec(*items):
        return {"status": "done", "map": {"items": list(items)}}

    y = {"y": {"digest": "xxh3-128:aa"}}
    old = rec(
        _item(0, outputs=y, stdout_digest="s0"),
        _item(1, outputs=y, stdout_digest="s1"),
    )
    assert maps.verify_items(old, rec(_item(1, outputs=y, stdout_digest="s1"))) == []
    other = {"y": {"digest": "xxh3-128:bb"}}
    problems = maps.verify_items(
        old,
        rec(
            _item(0, outputs=other, stdout_digest="s0"),
            _item(1, "failed", outputs={}, stdout_digest="x"),
        ),
    )
    assert problems == [
        "item 0: output y differs: recorded xxh3-128:aa, now xxh3-128:bb",
        "item 1: ended failed (recorded done)",
        "item 1: stdout differs",
        "item 1: output y differs: recorded xxh3-128:aa, now None",
    ]
    assert maps.item_algorithms(old) == {"y": "xxh3-128"}


@on_engine
def test_a_stop_from_outside_ends_the_map_and_starts_no_other_item(
    ip, store_of_ip, docker_client, namespace
):
    from mlcontainer_magics.core import runs

    store = store_of_ip
    flt = {"label": f"org.mlcontainer.namespace={namespace}"}
    magics = ip.magics_manager.registry["ContainerizeMagics"]

    def stop_when_running():
        if wait_for(lambda: len(docker_client.containers.list(filters=flt)) >= 2, timeout=120):
            running = store.list(limit=1, status="running")
            runs.request_stop(store, magics.backend, running[0]["id"])

    ip.user_ns["xs"] = list(range(6))
    threading.Thread(target=stop_when_running, daemon=True).start()
    with pytest.raises(MapError) as e:
        cell(ip, "-n stop-map --map xs --parallel 2", "import time\ntime.sleep(120)")
    assert e.value.reason == "stopped"
    assert docker_client.containers.list(all=True, filters=flt) == []
    record = store.get("stop-map")
    assert record["status"] == "stopped"
    items = record["map"]["items"]
    assert {i["reason"] for i in items} == {"stopped"}
    assert sum(i["attempts"] for i in items) == 2  # the two that ran; no other started


def test_the_running_list_shows_a_map_as_one_entry_with_its_items():
    from mlcontainer_magics.backends.docker.backend import DockerBackend

    class C:
        def __init__(self, cid, run, created, item=None):
            labels = {
                "org.mlcontainer.run": run,
                "org.mlcontainer.snapshot": run,
                "org.mlcontainer.role": "run",
            }
            if item is not None:
                labels["org.mlcontainer.item"] = str(item)
            self.id = cid
            self.attrs = {"Id": cid, "Labels": labels, "Created": created, "Names": [f"/{cid}"]}

    class Client:
        class containers:
            @staticmethod
            def list(**kw):
                return [
                    C("a1", "map1", 3, 1),
                    C("a0", "map1", 2, 0),
                    C("b", "one", 4),
                    C("a2", "map1", 5, 2),
                ]

    backend = DockerBackend(client=Client(), namespace="ns")
    rows = backend.running()
    assert [(r.id, r.items, r.container) for r in rows] == [("one", None, "b"), ("map1", 3, "a0")]


@on_engine
def test_the_timeout_applies_to_each_item(ip, store_of_ip):
    ip.user_ns["xs"] = [0, 30, 0]
    cell(
        ip,
        "--map xs --parallel 3 --timeout 3 --out y --no-raise-error",
        "import time\ntime.sleep(xs)\ny = xs + 1",
    )
    assert ip.user_ns["y"] == [1, None, 1]
    items = newest(store_of_ip)["map"]["items"]
    assert [i["reason"] for i in items] == ["done", "timeout", "done"]


@on_engine
def test_a_list_of_dataframes_maps_frame_by_frame(ip, store_of_ip):
    frames = [pd.DataFrame({"a": range(i, i + 3)}) for i in (0, 10, 20)]
    ip.user_ns["dfs"] = frames
    cell(
        ip,
        "-r pandas==2.2.3 pyarrow==18.1.0 --no-capture --map dfs --out total,doubled",
        "total = int(dfs['a'].sum())\ndoubled = dfs * 2",
    )
    assert ip.user_ns["total"] == [int(f["a"].sum()) for f in frames]
    assert all(d.equals(f * 2) for d, f in zip(ip.user_ns["doubled"], frames))
    items = newest(store_of_ip)["map"]["items"]
    assert [i["outputs"]["doubled"]["format"] for i in items] == ["parquet"] * 3
