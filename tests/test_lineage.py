"""Lineage between snapshots: the pure parts (linking, the graph, its order, text and JSON), the
store's index, the display's line, and chained cells on the real engine."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pytest

from mlcontainer_magics.core import lineage, verbs
from mlcontainer_magics.core.events import Phase
from mlcontainer_magics.core.store import DB_NAME, SCHEMA_VERSION, Store
from mlcontainer_magics.errors import SnapshotNotFound
from mlcontainer_magics.frontends.commands import build_parser, run_verb
from mlcontainer_magics.frontends.display import RunStatus, apply, text_lines

K = "host:1"  # a kernel
D = {n: f"xxh3-128:{n * 32}" for n in "abcdefgh"}  # digests


def out(**digests) -> dict:
    return {name: {"format": "json", "digest": D[d], "size": 3} for name, d in digests.items()}


def rec(sid, created, *, outputs=None, parents=None, kernel=K, name=None, status="done"):
    return {
        "id": sid,
        "name": name,
        "status": status,
        "created": created,
        "kernel": kernel,
        "outputs": outputs or {},
        "parents": parents or [],
    }


def edge(inp, sid, output, d):
    return {"input": inp, "snapshot": sid, "output": output, "digest": D[d]}


def nb(inp, d):
    return {"input": inp, "from": "notebook", "digest": D[d]}


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "store")
    yield s
    s.close()


# -- link: pure -------------------------------------------------------------------------------


def test_link_names_the_producer_or_the_notebook():
    inputs = {"text": D["a"], "png": D["b"], "late": None}
    producers = {D["a"]: [("s2", "summary"), ("s1", "text")]}
    assert lineage.link(inputs, producers) == [
        edge("text", "s1", "text", "a"),  # an output of the input's own name wins over newer
        nb("png", "b"),
    ]  # "late" has no digest (the run failed before): nothing said of it


def test_link_takes_the_newest_producer_when_no_name_matches():
    producers = {D["a"]: [("new", "y"), ("old", "z")]}
    assert lineage.link({"x": D["a"]}, producers) == [edge("x", "new", "y", "a")]


def test_background_digests_call_then_with_all_digests(tmp_path):
    from mlcontainer_magics.core import transfer

    records = transfer.write_inputs(
        {"a": b"x" * 3_000_000, "b": [1, 2]}, tmp_path / "in", digests=False
    )
    seen = []
    hashing = transfer.BackgroundDigests(records, tmp_path, then=seen.append)
    hashing.fill(records)
    assert seen == [{"a": records["a"]["digest"], "b": records["b"]["digest"]}]

    def broken(digests):
        raise RuntimeError("no store")

    hashing = transfer.BackgroundDigests(records, tmp_path, then=broken)
    hashing.wait()
    with pytest.raises(RuntimeError, match="no store"):
        hashing.fill(records)


# -- the store's index ------------------------------------------------------------------------


def test_producers_are_of_the_same_kernel_newest_first_and_never_the_run_itself(store):
    store.put_many(
        [
            rec("aaaa00000001", 1.0, outputs=out(x="a"), name="first"),
            rec("aaaa00000002", 2.0, outputs=out(y="a"), name="second"),
            rec("aaaa00000003", 3.0, outputs=out(x="a"), kernel="host:2"),
            rec("aaaa00000004", 4.0, outputs=out(x="a")),
            # failed for another output: the kernel got none of its values
            rec("aaaa00000005", 5.0, outputs=out(x="a"), status="failed"),
        ]
    )
    rows = store.producers([D["a"], D["b"]], kernel=K, exclude="aaaa00000004")
    assert rows == [
        (D["a"], "aaaa00000002", "y", "second"),
        (D["a"], "aaaa00000001", "x", "first"),
    ]
    assert store.producers([], kernel=K) == []


def test_find_parents_reads_the_index(store):
    store.put(rec("aaaa00000001", 1.0, outputs=out(text="a"), name="ocr"))
    inputs = {"text": D["a"], "png": D["b"]}
    parents, names = lineage.find_parents(store, inputs, kernel=K, run_id="bbbb00000001")
    assert parents == [edge("text", "aaaa00000001", "text", "a"), nb("png", "b")]
    assert names == {"aaaa00000001": "ocr"}
    # another kernel's run: the same digest is a value its own notebook made
    parents, _ = lineage.find_parents(store, inputs, kernel="host:9", run_id="bbbb00000001")
    assert parents == [nb("text", "a"), nb("png", "b")]


def test_the_index_follows_updates_and_removals(store):
    store.put(rec("aaaa00000001", 1.0))
    assert store.producers([D["a"]], kernel=K) == []
    store.update("aaaa00000001", outputs=out(x="a"))  # outputs arrive at the run's end
    assert [r[1] for r in store.producers([D["a"]], kernel=K)] == ["aaaa00000001"]
    store.put(rec("aaaa00000002", 2.0, parents=[edge("x", "aaaa00000001", "x", "a")]))
    assert [c["id"] for c in store.children("aaaa00000001")] == ["aaaa00000002"]
    store.update("aaaa00000002", parents=[nb("x", "b")])
    assert store.children("aaaa00000001") == []
    store.update("aaaa00000002", parents=[edge("x", "aaaa00000001", "x", "a")])
    store.remove("aaaa00000002")
    assert store.children("aaaa00000001") == []
    store.remove("aaaa00000001")
    assert store.producers([D["a"]], kernel=K) == []


def test_a_version_1_store_is_indexed_when_opened(tmp_path):
    """A store made before lineage: its records' outputs and parents are indexed on upgrade."""
    from mlcontainer_magics.core import store as store_module

    root = tmp_path / "old"
    root.mkdir()
    with sqlite3.connect(root / DB_NAME) as conn:
        store_module._create_v1(conn)
        conn.execute("PRAGMA user_version = 1")
        for r in (
            rec("aaaa00000001", 1.0, outputs=out(x="a")),
            rec("aaaa00000002", 2.0, parents=[edge("x", "aaaa00000001", "x", "a")]),
        ):
            conn.execute(
                "INSERT INTO snapshots (id, status, created, record) VALUES (?, ?, ?, ?)",
                (r["id"], r["status"], r["created"], json.dumps(r)),
            )
        conn.execute("INSERT INTO snapshots (id, created, record) VALUES ('bad0', 3, '{')")
    old = Store(root)
    assert [r[1] for r in old.producers([D["a"]], kernel=K)] == ["aaaa00000001"]
    assert [c["id"] for c in old.children("aaaa00000001")] == ["aaaa00000002"]
    assert old._connect().execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    old.close()


# -- the graph: pure --------------------------------------------------------------------------


def diamond() -> dict:
    """ocr -> detect, ocr -> translate, detect -> translate; a notebook input at each end."""
    return {
        "s1": rec("s1", 10.0, name="ocr", parents=[nb("png", "a")]),
        "s2": rec("s2", 20.0, name="detect", parents=[edge("text", "s1", "text", "b")]),
        "s3": rec(
            "s3",
            30.0,
            name="translate",
            parents=[
                edge("text", "s1", "text", "b"),
                edge("lang", "s2", "lang", "c"),
                nb("target", "d"),
            ],
        ),
    }


def put_diamond(store) -> dict:
    """diamond() in the store, under ids a store accepts: s1 -> s1aaaaaaaaaa."""
    ids = {sid: sid + "aaaaaaaaaa" for sid in diamond()}
    for r in diamond().values():
        parents = [
            dict(p, snapshot=ids[p["snapshot"]]) if "snapshot" in p else p for p in r["parents"]
        ]
        store.put(dict(r, id=ids[r["id"]], parents=parents))
    return ids


def test_steps_put_parents_first_then_the_oldest():
    g = lineage.graph_of("s3", diamond())
    assert lineage.steps(g) == ["s1", "s2", "s3"]
    assert lineage.steps(lineage.graph_of("s2", diamond())) == ["s1", "s2"]
    # a parent made after its child (clocks): still first
    records = diamond()
    records["s1"]["created"] = 99.0
    assert lineage.steps(lineage.graph_of("s3", records)) == ["s1", "s2", "s3"]


def test_lineage_json_shape():
    data = lineage.lineage_json(lineage.graph_of("s3", diamond()))
    assert data["snapshot"] == "s3" and data["steps"] == ["s1", "s2", "s3"]
    assert [(n["id"], n["step"], n["name"], n["status"]) for n in data["nodes"]] == [
        ("s1", 1, "ocr", "done"),
        ("s2", 2, "detect", "done"),
        ("s3", 3, "translate", "done"),
    ]
    assert data["nodes"][0]["notebook"] == [{"input": "png", "digest": D["a"]}]
    assert data["nodes"][2]["inputs"] == ["text", "lang", "target"]
    assert sorted((e["from"], e["to"], e["output"], e["input"]) for e in data["edges"]) == [
        ("s1", "s2", "text", "text"),
        ("s1", "s3", "text", "text"),
        ("s2", "s3", "lang", "lang"),
    ]
    json.dumps(data)  # plain JSON


def test_format_lineage_lists_the_steps_with_their_values():
    text = lineage.format_lineage(lineage.graph_of("s3", diamond()))
    assert text.splitlines() == [
        "3 steps led to s3 (translate)",
        "1  s1  ocr        done",
        f"     png ← notebook  xxh3-128:{'a' * 12}",
        "2  s2  detect     done",
        "     text ← 1 ocr: text",
        "3  s3  translate  done",
        "     text ← 1 ocr: text",
        "     lang ← 2 detect: lang",
        f"     target ← notebook  xxh3-128:{'d' * 12}",
    ]


def test_a_removed_parent_is_a_node_of_its_own(store):
    records = diamond()
    del records["s1"]
    g = lineage.graph_of("s3", records)
    assert g.nodes["s1"] == {"id": "s1", "missing": True}
    assert "removed" in lineage.format_lineage(g).splitlines()[1]
    # through the store too
    ids = put_diamond(store)
    store.remove(ids["s1"])
    g = lineage.graph(store, ids["s3"])
    assert g.nodes[ids["s1"]] == {"id": ids["s1"], "missing": True}
    assert lineage.steps(g)[-1] == ids["s3"]


def test_lineage_of_an_unknown_snapshot_is_a_clear_error(store):
    args = build_parser().parse_args(["lineage", "nope1234"])
    with pytest.raises(SnapshotNotFound, match="No snapshot matches 'nope1234'"):
        run_verb(args, store=store, backends=None)


def test_show_names_parents_and_children(store):
    put_diamond(store)
    text = verbs.show(store, "s2aaaaaaaaaa")
    assert "parents     text ← s1aaaaaaaaaa (ocr): text" in text
    assert "children    s3aaaaaaaaaa (translate)" in text
    first = verbs.show(store, "s1aaaaaaaaaa")
    assert f"parents     png ← notebook  xxh3-128:{'a' * 12}" in first
    assert "children    s2aaaaaaaaaa (detect), s3aaaaaaaaaa (translate)" in first


# -- the status display ---------------------------------------------------------------------


def test_the_display_names_the_snapshots_a_step_consumed():
    before = apply(RunStatus(), Phase.RUNNING, {"container": "c1"}, now=1.0)
    after = apply(
        before,
        Phase.LINKED,
        {
            "parents": [
                edge("text", "a1b2c3d4e5f6", "text", "a"),
                edge("more", "a1b2c3d4e5f6", "more", "b"),
                nb("png", "c"),
            ],
            "names": {"a1b2c3d4e5f6": "ocr"},
        },
    )
    assert after.phase == "running"  # no phase of its own
    assert text_lines(before, after) == [
        "[mlcontainer] inputs from: ocr (a1b2c3d4e5f6) · notebook: png"
    ]
    assert text_lines(after, after) == []
    pytest.importorskip("ipywidgets")
    from mlcontainer_magics.frontends.display.widget import WidgetView

    view = WidgetView(on_click=None)
    view.render(after, 2.0)
    assert "inputs from: ocr (a1b2c3d4e5f6) · notebook: png" in view.image.value
    view.render(before, 2.0)
    assert "inputs from" not in view.image.value


# -- on the real engine ---------------------------------------------------------------------


def on_engine(test):
    """A test on the real Docker engine, which must leave nothing behind."""
    return pytest.mark.docker(pytest.mark.usefixtures("no_leaks")(test))


def cell(ip, line, code):
    ip.run_cell_magic("containerize", line, code)


def newest(store) -> dict:
    return store.get(store.list(limit=1)[0]["id"])


@on_engine
def test_three_chained_cells_are_a_lineage_of_three(ip, store_of_ip, capsys):
    store = store_of_ip
    ip.user_ns["words"] = ["bonjour", "le", "monde"]
    cell(ip, "-n ocr --in words --out text", "text = ' '.join(words)")
    cell(ip, "-n detect --in text --out lang", "lang = 'fr' if 'bonjour' in text else '?'")
    cell(ip, "-n translate --in text,lang --out english", "english = text.upper() + lang")
    ocr, detect, translate = (store.get(n) for n in ("ocr", "detect", "translate"))
    assert ip.user_ns["english"] == "BONJOUR LE MONDEfr"
    printed = capsys.readouterr().out
    assert f"inputs from: ocr ({ocr['id']})" in printed  # the status display of detect
    assert f"inputs from: ocr ({ocr['id']}) · detect ({detect['id']})" in printed

    assert ocr["parents"] == [
        {"input": "words", "from": "notebook", "digest": ocr["inputs"]["words"]["digest"]}
    ]
    digest = ocr["outputs"]["text"]["digest"]
    assert detect["parents"] == [
        {"input": "text", "snapshot": ocr["id"], "output": "text", "digest": digest}
    ]
    assert [p["snapshot"] for p in translate["parents"]] == [ocr["id"], detect["id"]]

    g = lineage.graph(store, "translate")
    assert lineage.steps(g) == [ocr["id"], detect["id"], translate["id"]]
    ip.run_line_magic("container", f"lineage {translate['id']}")
    text = capsys.readouterr().out
    assert text.startswith(f"3 steps led to {translate['id']} (translate)")
    assert "words ← notebook  xxh3-128:" in text and "lang ← 2 detect: lang" in text

    # the CLI answers from the store alone: nodes and edges
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlcontainer_magics.frontends.cli",
            "lineage",
            "translate",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["steps"] == [ocr["id"], detect["id"], translate["id"]]
    assert {(e["from"], e["to"], e["input"]) for e in data["edges"]} == {
        (ocr["id"], detect["id"], "text"),
        (ocr["id"], translate["id"], "text"),
        (detect["id"], translate["id"], "lang"),
    }
    shown = verbs.show(store, detect["id"])
    assert f"text ← {ocr['id']} (ocr): text" in shown
    assert f"children    {translate['id']} (translate)" in shown


@on_engine
def test_a_fan_in_is_a_dag(ip, store_of_ip):
    store = store_of_ip
    cell(ip, "-n left --out a", "a = [1, 2]")
    cell(ip, "-n right --out b", "b = {'k': 3}")
    cell(ip, "-n join --in a,b --out c", "c = a + [b['k']]")
    left, right, join = (store.get(n) for n in ("left", "right", "join"))
    assert ip.user_ns["c"] == [1, 2, 3]
    assert [(p["input"], p["snapshot"]) for p in join["parents"]] == [
        ("a", left["id"]),
        ("b", right["id"]),
    ]
    data = lineage.lineage_json(lineage.graph(store, join["id"]))
    assert data["steps"] == [left["id"], right["id"], join["id"]]  # two roots, oldest first
    assert len(data["edges"]) == 2 and {e["to"] for e in data["edges"]} == {join["id"]}
    assert [c["id"] for c in store.children(left["id"])] == [join["id"]]


@on_engine
def test_a_value_edited_in_the_notebook_breaks_the_link(ip, store_of_ip):
    store = store_of_ip
    cell(ip, "-n make --out a", "a = [1, 2, 3]")
    ip.user_ns["a"].append(4)  # edited between the steps
    cell(ip, "-n use --in a --out n", "n = len(a)")
    make, use = store.get("make"), store.get("use")
    assert ip.user_ns["n"] == 4
    [parent] = use["parents"]
    assert parent == {"input": "a", "from": "notebook", "digest": use["inputs"]["a"]["digest"]}
    assert parent["digest"] != make["outputs"]["a"]["digest"]
    assert lineage.steps(lineage.graph(store, "use")) == [use["id"]]
    assert store.children(make["id"]) == []
    # set back as it came: the same bytes, so the same value, linked again
    ip.user_ns["a"] = [1, 2, 3]
    cell(ip, "-n again --in a --out n", "n = len(a)")
    assert [p.get("snapshot") for p in store.get("again")["parents"]] == [make["id"]]


@on_engine
def test_a_notebook_value_passed_unchanged_is_shown_from_the_notebook(ip, store_of_ip, capsys):
    store = store_of_ip
    ip.user_ns["png"] = b"\x89PNG fake"
    cell(ip, "-n first --in png --out size", "size = len(png)")
    cell(ip, "-n second --in png,size --out ok", "ok = len(png) == size")
    first, second = store.get("first"), store.get("second")
    assert ip.user_ns["ok"] is True
    digest = first["inputs"]["png"]["digest"]
    assert second["inputs"]["png"]["digest"] == digest
    assert second["parents"] == [
        {"input": "png", "from": "notebook", "digest": digest},
        {
            "input": "size",
            "snapshot": first["id"],
            "output": "size",
            "digest": first["outputs"]["size"]["digest"],
        },
    ]
    printed = capsys.readouterr().out
    line = f"inputs from: first ({first['id']}) · notebook: png"
    assert line in printed
    assert printed.index(line) < printed.rindex("done in")  # before the run's last line
    text = lineage.format_lineage(lineage.graph(store, "second"))
    assert f"png ← notebook  {digest[:21]}" in text
    assert "size ← 1 first: size" in text


@on_engine
def test_another_kernels_values_are_not_linked(ip, store_of_ip):
    """The same bytes produced in another kernel are this notebook's own value here."""
    store = store_of_ip
    cell(ip, "-n make --out a", "a = 'same'")
    store.update("make", kernel="elsewhere:1")
    cell(ip, "-n use --in a", "print(a)")
    assert [p.get("from") for p in store.get("use")["parents"]] == ["notebook"]


@on_engine
def test_a_served_cell_is_linked_too(ip, store_of_ip):
    from mlcontainer_magics.core import services

    store = store_of_ip
    cell(ip, "-n weights --out w", "w = 3")
    cell(ip, "--serve lineage-svc --in w", "def predict(x):\n    return x * w")
    try:
        served = store.get(services.REGISTRY.get("lineage-svc").run_id)
        assert served["status"] == "serving"
        assert [p.get("snapshot") for p in served["parents"]] == [store.get("weights")["id"]]
    finally:
        services.REGISTRY.stop("lineage-svc")


@on_engine
def test_a_running_step_names_its_parents_as_soon_as_they_are_known(store, namespace):
    """Through the core alone: the record has its parents when the display hears of them,
    while the cell still runs (it sleeps)."""
    from mlcontainer_magics.backends.docker.backend import DockerBackend
    from mlcontainer_magics.core import runs
    from mlcontainer_magics.core.spec import EnvSpec, RunSpec

    backend = DockerBackend(namespace=namespace)
    context = {"kernel": "host:42"}

    def spec(code, **io):
        return RunSpec(code=code, env_spec=EnvSpec("python:3.11-slim"), **io)

    first = runs.execute(spec("x = 41", outputs=("x",)), backend, store=store, context=context)
    run, seen = {}, []

    def events(phase, **info):
        if phase == Phase.RECORDED:
            run["id"] = info["snapshot"]
        if phase == Phase.LINKED:
            seen.append((info, store.get(run["id"])))

    code = "import time\ntime.sleep(2)\ny = x + 1"
    second = runs.execute(
        spec(code, inputs=("x",), outputs=("y",)),
        backend,
        store=store,
        inputs=first.values,
        context=context,
        events=events,
    )
    [(info, record)] = seen
    assert second.values == {"y": 42}
    assert info["names"] == {first.run_id: None}
    # building or running: its status turns to running on the main thread meanwhile
    assert record["status"] in ("building", "running") and "finished" not in record
    assert record["parents"] == info["parents"] == store.get(second.run_id)["parents"]
    assert [p["snapshot"] for p in record["parents"]] == [first.run_id]
