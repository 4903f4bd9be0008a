"""The REST API behind the sidebar, against a real jupyter_server (pytest-jupyter's fixtures).

The store is a real Store in a tmp folder, put into ``web_app.settings`` through the server's
``tornado_settings`` before the extension loads; the stop test drives a real container.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import fake_service
import pytest
from fake_service import service_record
from tornado.httpclient import HTTPClientError

from mlcontainer_magics.backends import Backends
from mlcontainer_magics.backends.docker.backend import make_labels as run_labels
from mlcontainer_magics.core.services import serving_records
from mlcontainer_magics.core.store import Store
from mlcontainer_magics.errors import EngineUnavailable
from mlcontainer_magics.server import handlers, services

pytest_plugins = ("pytest_jupyter.jupyter_server",)

NOW = time.time()
RECORDS = [
    {
        "id": "a1b2c3d4e5f6",
        "name": "train",
        "notebook": "nb/train.ipynb",
        "status": "done",
        "created": NOW - 3600,
        "finished": NOW - 3590,
        "duration": 9.5,
        "exit_code": 0,
        "env_image": "mlcontainer-env:1111",
        "image_size": 420_000_000,
        "session": "s1",
        "stdout": "epoch 1\nepoch 2\n",
        "stderr": "",
        "lock": [{"name": "numpy", "version": "2.1.0"}],
        "timings": {"build": 30.1, "run": 9.5},
    },
    {
        "id": "b2c3d4e5f6a1",
        "name": "plot",
        "notebook": "nb/train.ipynb",
        "status": "failed",
        "created": NOW - 1800,
        "finished": NOW - 1790,
        "duration": 2.0,
        "exit_code": 1,
        "env_image": "mlcontainer-env:2222",
        "image_size": 120_000_000,
        "session": "s1",
        "stdout": "start\n",
        "stderr": "Traceback ...\nValueError: bad\n",
    },
    {
        "id": "c3d4e5f6a1b2",
        "name": "train",
        "notebook": "other.ipynb",
        "status": "done",
        "created": NOW - 600,
        "finished": NOW - 590,
        "duration": 8.0,
        "exit_code": 0,
        "env_image": "mlcontainer-env:1111",
        "image_size": 420_000_000,
        "session": "s2",
    },
    {
        "id": "d4e5f6a1b2c3",
        "name": "live",
        "notebook": "nb/train.ipynb",
        "status": "running",
        "created": NOW - 10,
        "session": "s2",
    },
]


def pipeline_records(now: float = NOW) -> list[dict]:
    """Three chained steps, as lineage records them: ocr takes an image from the notebook,
    detect-language takes ocr's text, translate takes detect-language's doc."""

    def out(digest):
        return {"format": "pickle", "digest": digest, "size": 120}

    return [
        {
            "id": "0c10c10c10c1",
            "name": "ocr",
            "notebook": "nb/pipeline.ipynb",
            "kernel": "k1",
            "status": "done",
            "created": now - 300,
            "duration": 12.5,
            "outputs": {"text": out("xxh3-128:7e7e")},
            "parents": [{"input": "image", "from": "notebook", "digest": "xxh3-128:1a1a"}],
        },
        {
            "id": "de7ec7de7ec7",
            "name": "detect-language",
            "notebook": "nb/pipeline.ipynb",
            "kernel": "k1",
            "status": "done",
            "created": now - 200,
            "duration": 3.1,
            "outputs": {"doc": out("xxh3-128:d0d0")},
            "parents": [
                {
                    "input": "text",
                    "snapshot": "0c10c10c10c1",
                    "output": "text",
                    "digest": "xxh3-128:7e7e",
                }
            ],
        },
        {
            "id": "7a7a7a7a7a7a",
            "name": "translate",
            "notebook": "nb/pipeline.ipynb",
            "kernel": "k1",
            "status": "failed",
            "created": now - 100,
            "duration": 8.0,
            "parents": [
                {
                    "input": "doc",
                    "snapshot": "de7ec7de7ec7",
                    "output": "doc",
                    "digest": "xxh3-128:d0d0",
                }
            ],
        },
    ]


PIPELINE = pipeline_records()

MAP_TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/mlc/cell.py", line 4, in <module>\n'
    "    value = parse(shard)\n"
    '  File "/mlc/cell.py", line 2, in parse\n'
    "    return int(shard['n'])\n"
    "KeyError: 'n'"
)


def map_record(now: float = NOW, count: int = 12, failed=(7,)) -> dict:
    """A done map of ``count`` items, ``--parallel 4 --retries 1``, as core/maps.py records it:
    the items in ``failed`` failed after two attempts, with their traceback; another took two
    attempts to succeed."""

    def item(i):
        ok = i not in failed
        rec = {
            "index": i,
            "input_digest": f"xxh3-128:{i:04x}",
            "reason": "done" if ok else "failed",
            "exit_code": 0 if ok else 1,
            "attempts": 1 if ok and i != 3 else 2,
            "duration": round(1.1 + 0.37 * (i % 5), 2),
            "outputs": {"score": {"format": "json", "digest": f"xxh3-128:{i:04x}ff"}} if ok else {},
            "stdout_digest": "sha256:00",
        }
        if not ok:
            rec["error"] = MAP_TRACEBACK
        return rec

    return {
        "id": "3a93a93a93a9",
        "name": "score-shards",
        "notebook": "nb/sweep.ipynb",
        "kernel": "k1",
        "status": "failed" if failed else "done",
        "reason": (
            f"{len(failed)} item{'s' if len(failed) > 1 else ''} failed" if failed else "done"
        ),
        "created": now - 90,
        "finished": now - 60,
        "duration": 30.4,
        "exit_code": 1 if failed else 0,
        "env_image": "mlcontainer-env:3a93",
        "image_size": 210_000_000,
        "spec": {"map": {"name": "shards", "parallel": 4, "retries": 1}},
        "map": {
            "name": "shards",
            "count": count,
            "parallel": 4,
            "retries": 1,
            "items": [item(i) for i in range(count)],
        },
    }


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "store")
    s.put_many(RECORDS)
    return s


@pytest.fixture
def jp_server_config(store):
    return {
        "ServerApp": {
            "jpserver_extensions": {"mlcontainer_magics": True},
            # Test against a server that requires authentication on every endpoint.
            "allow_unauthenticated_access": False,
            # Domain objects go in before the extension loads; it keeps what it finds.
            "tornado_settings": {"mlcontainer_store": store},
        }
    }


def body(response):
    return json.loads(response.body)


async def error(jp_fetch, *parts, **kwargs) -> tuple[int, dict]:
    with pytest.raises(HTTPClientError) as info:
        await jp_fetch(*parts, **kwargs)
    response = info.value.response
    assert response.headers["Content-Type"].startswith("application/json")
    return info.value.code, json.loads(response.body)


# -- snapshots --------------------------------------------------------------------------------


async def test_list_newest_first_with_total(jp_fetch):
    data = body(await jp_fetch("mlcontainer", "snapshots"))
    assert data["total"] == 4
    assert [i["id"] for i in data["items"]] == [r["id"] for r in reversed(RECORDS)]
    first = data["items"][-1]
    assert first["name"] == "train" and first["image_size"] == 420_000_000
    assert first["notebook_path"] == "nb/train.ipynb"
    assert "stdout" not in first  # summaries only


async def test_list_says_which_snapshots_are_maps(jp_fetch, store):
    """A map is one snapshot; its summary says so (its items, how many failed), and the full
    record has every item."""
    record = map_record()
    running = dict(map_record(), id="4a94a94a94a9", status="running", created=NOW - 5)
    for key in ("map", "finished", "duration", "exit_code", "reason"):
        running.pop(key)
    store.put_many([record, running])
    items = {i["id"]: i for i in body(await jp_fetch("mlcontainer", "snapshots"))["items"]}
    assert items[record["id"]]["map"] == {"name": "shards", "count": 12, "failed": 1, "parallel": 4}
    assert items[running["id"]]["map"] == {
        "name": "shards",
        "count": None,
        "failed": None,
        "parallel": 4,
    }
    assert all(items[r["id"]]["map"] is None for r in RECORDS)
    full = body(await jp_fetch("mlcontainer", "snapshots", record["id"]))
    assert [i["index"] for i in full["map"]["items"]] == list(range(12))
    assert full["map"]["items"][7]["error"].endswith("KeyError: 'n'")


async def test_list_paginates(jp_fetch):
    page1 = body(await jp_fetch("mlcontainer", "snapshots", params={"limit": 3}))
    page2 = body(await jp_fetch("mlcontainer", "snapshots", params={"limit": 3, "offset": 3}))
    assert len(page1["items"]) == 3 and len(page2["items"]) == 1
    assert page1["total"] == page2["total"] == 4
    ids = [i["id"] for i in page1["items"] + page2["items"]]
    assert ids == [r["id"] for r in reversed(RECORDS)]


async def test_list_filters(jp_fetch):
    by_nb = body(await jp_fetch("mlcontainer", "snapshots", params={"notebook": "nb/train.ipynb"}))
    assert by_nb["total"] == 3 and {i["notebook"] for i in by_nb["items"]} == {"nb/train.ipynb"}
    by_name = body(await jp_fetch("mlcontainer", "snapshots", params={"name": "train"}))
    assert [i["id"] for i in by_name["items"]] == ["c3d4e5f6a1b2", "a1b2c3d4e5f6"]
    both = body(
        await jp_fetch(
            "mlcontainer", "snapshots", params={"name": "train", "notebook": "other.ipynb"}
        )
    )
    assert [i["id"] for i in both["items"]] == ["c3d4e5f6a1b2"] and both["total"] == 1
    failed = body(await jp_fetch("mlcontainer", "snapshots", params={"status": "failed"}))
    assert [i["id"] for i in failed["items"]] == ["b2c3d4e5f6a1"]


@pytest.mark.parametrize(
    "params",
    [{"limit": "x"}, {"limit": 0}, {"limit": 100000}, {"offset": -1}, {"status": "nonsense"}],
)
async def test_list_bad_arguments_400(jp_fetch, params):
    code, data = await error(jp_fetch, "mlcontainer", "snapshots", params=params)
    assert code == 400 and data["message"]


async def test_show_full_record(jp_fetch):
    data = body(await jp_fetch("mlcontainer", "snapshots", "a1b2c3d4e5f6"))
    assert data["stdout"] == "epoch 1\nepoch 2\n"
    assert data["timings"] == {"build": 30.1, "run": 9.5}
    assert data["lock"][0]["name"] == "numpy"
    # by unique prefix and by name (the newest of that name) too
    assert body(await jp_fetch("mlcontainer", "snapshots", "b2c3"))["id"] == "b2c3d4e5f6a1"
    assert body(await jp_fetch("mlcontainer", "snapshots", "train"))["id"] == "c3d4e5f6a1b2"


async def test_logs(jp_fetch):
    data = body(await jp_fetch("mlcontainer", "snapshots", "b2c3d4e5f6a1", "logs"))
    assert data["id"] == "b2c3d4e5f6a1"
    assert data["stdout"] == "start\n" and "ValueError: bad" in data["stderr"]
    assert data["logs"] == "start\nTraceback ...\nValueError: bad\n"


async def test_delete(jp_fetch, store):
    data = body(await jp_fetch("mlcontainer", "snapshots", "b2c3d4e5f6a1", method="DELETE"))
    assert data["removed"]["id"] == "b2c3d4e5f6a1"
    assert store.count() == 3
    code, data = await error(jp_fetch, "mlcontainer", "snapshots", "b2c3d4e5f6a1")
    assert code == 404


async def test_delete_running_needs_force(jp_fetch, store):
    code, data = await error(jp_fetch, "mlcontainer", "snapshots", "d4e5f6a1b2c3", method="DELETE")
    assert code == 409 and "still running" in data["message"]
    assert store.count() == 4
    await jp_fetch(
        "mlcontainer", "snapshots", "d4e5f6a1b2c3", method="DELETE", params={"force": "1"}
    )
    assert store.count() == 3


@pytest.mark.parametrize(
    "parts",
    [
        ("snapshots", "ffffffffffff"),
        ("snapshots", "nosuchname"),
        ("snapshots", "ffffffffffff", "logs"),
        ("lineage", "ffffffffffff"),
        ("lineage", "nosuchname"),
    ],
)
async def test_unknown_snapshot_404_json(jp_fetch, parts):
    code, data = await error(jp_fetch, "mlcontainer", *parts)
    assert code == 404
    assert "No snapshot" in data["message"]


async def test_unknown_snapshot_delete_404(jp_fetch, store):
    code, data = await error(jp_fetch, "mlcontainer", "snapshots", "ffffffffffff", method="DELETE")
    assert code == 404 and store.count() == 4


async def test_ambiguous_prefix_409(jp_fetch, store):
    store.put({"id": "a1b2ffffffff", "status": "done"})
    code, data = await error(jp_fetch, "mlcontainer", "snapshots", "a1b2")
    assert code == 409 and "ambiguous" in data["message"]


@pytest.mark.parametrize(
    "ref", ["..", ".hidden", "a" * 129, "a b", "x..y", "-rf", "a;b", "ünï", "a%2Fb"]
)
async def test_bad_ids_400(jp_fetch, ref):
    for parts, method in [
        (("snapshots", ref), "GET"),
        (("snapshots", ref, "logs"), "GET"),
        (("lineage", ref), "GET"),
        (("snapshots", ref), "DELETE"),
        (("running", ref, "stop"), "POST"),
    ]:
        kwargs = {"body": "{}"} if method == "POST" else {}
        code, data = await error(jp_fetch, "mlcontainer", *parts, method=method, **kwargs)
        assert code == 400, (parts, method, code)
        assert "Invalid snapshot reference" in data["message"]


@pytest.mark.parametrize("raw", ["..%2F..%2Fetc%2Fpasswd", "%2e%2e", "a%2F..%2Fb", "%00"])
async def test_path_tricks_400(http_server_client, jp_base_url, jp_auth_header, raw):
    """Escaped slashes and dots reach the handler as one segment, and are refused there."""
    response = await http_server_client.fetch(
        f"{jp_base_url}mlcontainer/snapshots/{raw}", headers=jp_auth_header, raise_error=False
    )
    assert response.code == 400, (raw, response.code)
    assert "Invalid snapshot reference" in json.loads(response.body)["message"]


async def test_unknown_endpoint_404_json(jp_fetch):
    for parts in [("nope",), ("snapshots", "a1b2c3d4e5f6", "nope"), ("snapshots", "..", "etc")]:
        code, data = await error(jp_fetch, "mlcontainer", *parts)
        assert code == 404 and data["message"]


def test_check_ref_accepts_ids_and_names():
    for ok in ("a1b2", "a1b2c3d4e5f6", "f" * 64, "train-v2.1_final", "Run7"):
        assert handlers.check_ref(ok) == ok


# -- lineage ----------------------------------------------------------------------------------


async def test_lineage_of_a_pipeline_in_step_order(jp_fetch, store):
    store.put_many(PIPELINE)
    ocr, detect, translate = (r["id"] for r in PIPELINE)
    data = body(await jp_fetch("mlcontainer", "lineage", "translate"))  # a name works too
    assert data["snapshot"] == translate
    assert data["steps"] == [ocr, detect, translate]
    assert [(n["id"], n["step"], n["name"], n["status"]) for n in data["nodes"]] == [
        (ocr, 1, "ocr", "done"),
        (detect, 2, "detect-language", "done"),
        (translate, 3, "translate", "failed"),
    ]
    assert data["nodes"][0]["notebook"] == [{"input": "image", "digest": "xxh3-128:1a1a"}]
    assert sorted((e["from"], e["to"], e["output"], e["input"]) for e in data["edges"]) == [
        (ocr, detect, "text", "text"),
        (detect, translate, "doc", "doc"),
    ]
    assert data["children"] == [] and data["child_edges"] == []


async def test_lineage_names_the_snapshots_that_took_its_values(jp_fetch, store):
    store.put_many(PIPELINE)
    ocr, detect, _ = (r["id"] for r in PIPELINE)
    data = body(await jp_fetch("mlcontainer", "lineage", ocr[:6]))
    assert data["steps"] == [ocr] and data["edges"] == []
    assert [(c["id"], c["name"], c["status"]) for c in data["children"]] == [
        (detect, "detect-language", "done")
    ]
    assert data["child_edges"] == [
        {"from": ocr, "to": detect, "output": "text", "input": "text", "digest": "xxh3-128:7e7e"}
    ]


async def test_lineage_of_a_snapshot_without_parents(jp_fetch):
    data = body(await jp_fetch("mlcontainer", "lineage", "a1b2c3d4e5f6"))
    assert data["steps"] == ["a1b2c3d4e5f6"] and data["edges"] == [] and data["children"] == []


async def test_lineage_shows_a_removed_parent_as_missing(jp_fetch, store):
    store.put_many(PIPELINE)
    store.remove(PIPELINE[0]["id"])
    data = body(await jp_fetch("mlcontainer", "lineage", PIPELINE[2]["id"]))
    assert data["nodes"][0] == {"id": PIPELINE[0]["id"], "missing": True, "step": 1}
    assert len(data["edges"]) == 2


# -- rerun / export ---------------------------------------------------------------------------


@pytest.mark.parametrize("verb", ["rerun", "export"])
async def test_an_unset_action_answers_501(jp_fetch, jp_serverapp, verb):
    jp_serverapp.web_app.settings["mlcontainer_actions"][verb] = None
    code, data = await error(
        jp_fetch, "mlcontainer", "snapshots", "a1b2c3d4e5f6", verb, method="POST", body="{}"
    )
    assert code == 501 and "not available yet" in data["message"]


@pytest.fixture
def real_snapshot(store, namespace):
    """A snapshot made by a real run on the engine, in the server's store."""
    from mlcontainer_magics.backends.docker.backend import DockerBackend
    from mlcontainer_magics.core import runs
    from mlcontainer_magics.core.spec import EnvSpec, RunSpec

    spec = RunSpec(
        code="print('from the server')", env_spec=EnvSpec("python:3.11-slim"), name="served"
    )
    return runs.execute(spec, DockerBackend(namespace=namespace), store=store).run_id


@pytest.mark.docker
@pytest.mark.usefixtures("no_leaks")
async def test_rerun_with_verification(jp_fetch, store, real_snapshot):
    data = body(
        await jp_fetch(
            "mlcontainer",
            "snapshots",
            real_snapshot,
            "rerun",
            method="POST",
            body=json.dumps({"verify": True}),
        )
    )
    assert data["rerun_of"] == real_snapshot and data["status"] == "done"
    assert data["verified"] is True and store.get(data["id"])["stdout"] == "from the server\n"


@pytest.mark.docker
@pytest.mark.usefixtures("no_leaks")
async def test_export_lands_under_the_server_root_only(jp_fetch, jp_serverapp, real_snapshot):
    data = body(
        await jp_fetch(
            "mlcontainer",
            "snapshots",
            real_snapshot,
            "export",
            method="POST",
            body=json.dumps({"dest": "/etc/evil"}),
        )
    )
    folder = Path(jp_serverapp.root_dir) / data["path"]
    assert data["path"].startswith("mlcontainer-exports/served-") and folder.is_dir()
    assert {"Dockerfile", "README.md", "mlc"} <= set(data["files"])
    assert not Path("/etc/evil").exists()


async def test_action_plugs_in_through_settings(jp_fetch, jp_serverapp, store):
    calls = []

    def rerun(st, ref, options):
        calls.append((st, ref, options))
        return {"id": "new", "from": st.get(ref)["id"]}

    jp_serverapp.web_app.settings["mlcontainer_actions"]["rerun"] = rerun
    data = body(
        await jp_fetch(
            "mlcontainer",
            "snapshots",
            "train",
            "rerun",
            method="POST",
            body=json.dumps({"rebuild": True}),
        )
    )
    assert data == {"id": "new", "from": "c3d4e5f6a1b2"}
    assert [(st.root, ref, opts) for st, ref, opts in calls] == [
        (store.root, "train", {"rebuild": True})
    ]


@pytest.fixture
def real_pipeline(store, namespace):
    """Two chained runs on the engine, in the server's store: the second took the first's
    value (a lineage of two)."""
    from mlcontainer_magics.backends.docker.backend import DockerBackend
    from mlcontainer_magics.core import runs
    from mlcontainer_magics.core.spec import EnvSpec, RunSpec

    backend, base, context = (
        DockerBackend(namespace=namespace),
        EnvSpec("python:3.11-slim"),
        {"kernel": "server-test"},
    )
    first = runs.execute(
        RunSpec(code="x = 21", env_spec=base, name="make", outputs=("x",)),
        backend,
        store=store,
        context=context,
    )
    second = runs.execute(
        RunSpec(code="y = x * 2", env_spec=base, name="double", inputs=("x",), outputs=("y",)),
        backend,
        inputs={"x": first.values["x"]},
        store=store,
        context=context,
    )
    assert [p.get("snapshot") for p in store.get(second.run_id)["parents"]] == [first.run_id]
    return first.run_id, second.run_id


@pytest.mark.docker
@pytest.mark.usefixtures("no_leaks")
async def test_rerun_pipeline_action(jp_fetch, store, real_pipeline):
    first, second = real_pipeline
    data = body(
        await jp_fetch(
            "mlcontainer",
            "snapshots",
            second,
            "rerun",
            method="POST",
            body=json.dumps({"pipeline": True, "verify": True}),
        )
    )
    steps = data["pipeline"]["steps"]
    assert [s["rerun_of"] for s in steps] == [first, second]
    assert [s["status"] for s in steps] == ["done", "done"]
    assert data["verified"] is True and data["problems"] == []
    assert data["pipeline"]["first_difference"] is None
    assert data["id"] == steps[-1]["id"] and store.get(data["id"])["rerun_of"] == second


@pytest.mark.docker
@pytest.mark.usefixtures("no_leaks")
async def test_export_pipeline_action(jp_fetch, jp_serverapp, store, real_pipeline):
    _, second = real_pipeline
    data = body(
        await jp_fetch(
            "mlcontainer",
            "snapshots",
            second,
            "export",
            method="POST",
            body=json.dumps({"pipeline": True}),
        )
    )
    folder = Path(jp_serverapp.root_dir) / data["path"]
    assert data["path"].startswith(f"mlcontainer-exports/double-pipeline-{second}-")
    assert {"run.sh", "steps", "README.md", "pipeline.json"} <= set(data["files"])
    assert sorted(p.name for p in (folder / "steps").iterdir()) == ["01-make", "02-double"]


# -- auth -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method,parts",
    [
        ("GET", ("snapshots",)),
        ("GET", ("snapshots", "a1b2c3d4e5f6")),
        ("GET", ("snapshots", "a1b2c3d4e5f6", "logs")),
        ("DELETE", ("snapshots", "a1b2c3d4e5f6")),
        ("POST", ("snapshots", "a1b2c3d4e5f6", "rerun")),
        ("POST", ("snapshots", "a1b2c3d4e5f6", "export")),
        ("GET", ("lineage", "a1b2c3d4e5f6")),
        ("GET", ("running",)),
        ("POST", ("running", "a1b2c3d4e5f6", "stop")),
        ("GET", ("services",)),
        ("GET", ("status",)),
    ],
)
async def test_unauthenticated_403(jp_fetch, store, method, parts):
    kwargs = {"body": "{}"} if method == "POST" else {}
    code, data = await error(
        jp_fetch, "mlcontainer", *parts, method=method, headers={"Authorization": ""}, **kwargs
    )
    assert code == 403
    assert store.count() == 4  # nothing was removed


async def test_cookie_without_xsrf_is_refused(jp_fetch, store):
    """A write with a browser's cookie but no XSRF token is refused (as jupyter_server does)."""
    code, _ = await error(
        jp_fetch,
        "mlcontainer",
        "snapshots",
        "a1b2c3d4e5f6",
        method="DELETE",
        headers={"Authorization": "", "Cookie": "username-x=forged"},
    )
    assert code == 403 and store.count() == 4


def test_every_endpoint_requires_authentication():
    """Like the extension template's check_auth: jupyter_server warns about any handler that
    lacks an authentication decorator; no warning may come from ours."""
    script = """
import warnings
from jupyter_server.serverapp import ServerApp
from jupyter_server.utils import JupyterServerAuthWarning
app = ServerApp(allow_unauthenticated_access=False,
                jpserver_extensions={"mlcontainer_magics": True},
                reraise_server_extension_failures=True)
with warnings.catch_warnings(record=True) as records:
    warnings.simplefilter("always")
    app.initialize(argv=[], find_extensions=False, new_httpserver=False)
from mlcontainer_magics.server.handlers import BaseHandler
ours = [r for rule in app.web_app.default_router.rules for r in getattr(rule.target, "rules", [])
        if isinstance(r.target, type) and issubclass(r.target, BaseHandler)]
assert len(ours) == 10, ours
bad = [str(r.message) for r in records if issubclass(r.category, JupyterServerAuthWarning)]
print("\\n".join(bad) or "OK")
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "OK", out.stdout


# -- status and the engine ----------------------------------------------------------------------


async def test_status(jp_fetch, store):
    data = body(await jp_fetch("mlcontainer", "status"))
    assert data["store"]["total"] == 4 and data["store"]["root"] == str(store.root)
    assert isinstance(data["engine"]["up"], bool)
    if data["engine"]["up"]:
        assert data["engine"]["version"]
    else:
        assert "doctor" in data["engine"]["message"]


async def test_engine_down_is_reported_not_raised(jp_fetch, jp_serverapp, monkeypatch):
    # The server's own backends, made now: their engine is nowhere.
    monkeypatch.setenv("DOCKER_HOST", "unix:///nowhere/docker.sock")
    settings = jp_serverapp.web_app.settings
    settings["mlcontainer_backends"] = Backends(settings["mlcontainer_settings"])
    data = body(await jp_fetch("mlcontainer", "status"))
    assert data["engine"] == {"up": False, "version": None, "message": data["engine"]["message"]}
    assert "doctor --fix" in data["engine"]["message"]
    assert "unix:///nowhere/docker.sock" in data["engine"]["message"]
    code, err = await error(jp_fetch, "mlcontainer", "running")
    assert code == 503 and "doctor --fix" in err["message"]
    code, err = await error(
        jp_fetch, "mlcontainer", "running", "a1b2c3d4e5f6", "stop", method="POST", body="{}"
    )
    assert code == 503


async def test_stop_validates_timeout(jp_fetch):
    for bad in ({"timeout": -1}, {"timeout": "soon"}, {"timeout": 1000}, [1]):
        code, _ = await error(
            jp_fetch,
            "mlcontainer",
            "running",
            "a1b2c3d4e5f6",
            "stop",
            method="POST",
            body=json.dumps(bad),
        )
        assert code == 400


# -- a real container ---------------------------------------------------------------------------


@pytest.fixture
def docker_client():
    from mlcontainer_magics.backends.docker.engine import connect

    try:
        client = connect(timeout=60)
    except EngineUnavailable as e:
        pytest.skip(str(e))
    yield client
    client.close()


@pytest.fixture
def sleeper(docker_client, store):
    """A container labelled as the product labels a run, with a store record to match."""
    sid = uuid.uuid4().hex[:12]
    store.put({"id": sid, "name": "sleeper", "notebook": "nb/sleep.ipynb", "status": "running"})
    container = docker_client.containers.run(
        "python:3.11-slim",
        ["sleep", "300"],
        detach=True,
        name=f"mlc-test-sleeper-{sid}",
        labels=run_labels(
            os.environ["MLCONTAINER_NAMESPACE"],
            role="run",
            run=sid,
            snapshot=sid,
            name="sleeper",
            owner="test",
        ),
    )
    try:
        yield sid, container
    finally:
        try:
            container.remove(force=True)
        except Exception:  # noqa: BLE001 - already gone is fine
            pass


@pytest.mark.docker
async def test_running_and_stop_a_real_container(jp_fetch, docker_client, sleeper):
    sid, container = sleeper
    data = body(await jp_fetch("mlcontainer", "running"))
    mine = [i for i in data["items"] if i["id"] == sid]
    assert len(mine) == 1, data
    item = mine[0]
    assert item["state"] == "running" and item["status"].startswith("Up")
    assert item["container"] == container.id[:12]
    assert item["namespace"] == os.environ["MLCONTAINER_NAMESPACE"]  # this server's own
    assert item["name"] == "sleeper" and item["notebook_path"] == "nb/sleep.ipynb"
    only_ns = body(await jp_fetch("mlcontainer", "running", params={"namespace": "nope"}))
    assert sid not in [i["id"] for i in only_ns["items"]]
    every = body(await jp_fetch("mlcontainer", "running", params={"namespace": "*"}))
    assert sid in [i["id"] for i in every["items"]]

    t0 = time.monotonic()
    data = body(
        await jp_fetch(
            "mlcontainer", "running", sid, "stop", method="POST", body=json.dumps({"timeout": 1})
        )
    )
    assert [s["container"] for s in data["stopped"]] == [container.id[:12]]
    assert time.monotonic() - t0 < 20
    container.reload()
    assert container.status != "running"
    data = body(await jp_fetch("mlcontainer", "running"))
    assert sid not in [i["id"] for i in data["items"]]
    # Nothing left to stop: 404 JSON.
    code, err = await error(
        jp_fetch, "mlcontainer", "running", sid, "stop", method="POST", body="{}"
    )
    assert code == 404 and sid in err["message"]


@pytest.mark.docker
async def test_stop_unknown_is_404(jp_fetch, docker_client):
    code, err = await error(
        jp_fetch, "mlcontainer", "running", "feedfacecafe", "stop", method="POST", body="{}"
    )
    assert code == 404 and "No running container" in err["message"]


# -- services -----------------------------------------------------------------------------------


@pytest.fixture
def metadata_server():
    """A server answering /metadata as the runner does, in this process."""
    server = fake_service.start("ocr", "e1e2e3e4e5e6", requests=7, errors=1)
    yield fake_service.url_of(server)
    server.shutdown()
    server.server_close()


@pytest.fixture
def silent_url():
    """A URL whose server accepts connections and never answers."""
    sock = fake_service.silent_port()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


async def test_services_none(jp_fetch):
    assert body(await jp_fetch("mlcontainer", "services")) == {"items": []}


async def test_services_list_serving_snapshots_with_what_their_servers_say(
    jp_fetch, store, metadata_server, silent_url
):
    store.put_many(
        [
            service_record("e1e2e3e4e5e6", "ocr", metadata_server),
            service_record("f1f2f3f4f5f6", "hangs", silent_url),
            # Ended: a snapshot like any other, listed no more.
            service_record("a9a8a7a6a5a4", "old", metadata_server, status="stopped"),
        ]
    )
    t0 = time.monotonic()
    data = body(await jp_fetch("mlcontainer", "services"))
    # The server that never answers holds the list up for the timeout, not longer.
    assert time.monotonic() - t0 < services.METADATA_TIMEOUT + 2
    items = {i["id"]: i for i in data["items"]}
    assert set(items) == {"e1e2e3e4e5e6", "f1f2f3f4f5f6"}

    ocr = items["e1e2e3e4e5e6"]
    assert ocr["answering"] is True and ocr["message"] is None
    assert (ocr["name"], ocr["url"], ocr["entry"], ocr["replicas"], ocr["backend"]) == (
        "ocr",
        metadata_server,
        "predict",
        1,
        "docker",
    )
    assert ocr["port"] == int(metadata_server.rsplit(":", 1)[1])
    assert (ocr["requests"], ocr["errors"], ocr["signature"], ocr["python"]) == (
        7,
        1,
        "predict(x)",
        "3.11",
    )
    assert 0 <= ocr["uptime"] < 60 and ocr["started"]
    assert ocr["status"] == "serving" and ocr["notebook_path"] == "nb/serve.ipynb"

    hangs = items["f1f2f3f4f5f6"]
    assert hangs["answering"] is False
    assert hangs["message"] == "No answer to GET /metadata within 1 s."
    assert hangs["requests"] is None and hangs["uptime"] is None
    assert hangs["url"] == silent_url  # still shown: where it should be

    # Requests served are counted live: each listing asks again.
    fake_service.post(metadata_server)
    again = body(await jp_fetch("mlcontainer", "services"))["items"]
    assert {i["id"]: i["requests"] for i in again}["e1e2e3e4e5e6"] == 8


async def test_serving_is_a_status_of_the_snapshot_list(jp_fetch, store, silent_url):
    store.put(service_record("e1e2e3e4e5e6", "ocr", silent_url))
    data = body(await jp_fetch("mlcontainer", "snapshots", params={"status": "serving"}))
    assert [i["id"] for i in data["items"]] == ["e1e2e3e4e5e6"]
    assert data["items"][0]["status"] == "serving"


@pytest.mark.parametrize(
    "url,why",
    [
        ("{server}/nothing", "GET /metadata answered 404, not the service's metadata."),
        ("{server}/broken", "GET /metadata answered something other than a JSON object."),
        ("ftp://127.0.0.1/x", "Its record has no http URL to ask ('ftp://127.0.0.1/x')."),
        (None, "Its record has no http URL to ask (None)."),
        ("http://127.0.0.1:1", "Nothing listens at its URL (connection refused)."),
    ],
)
async def test_a_service_that_cannot_say_is_not_answering(
    jp_fetch, store, metadata_server, url, why
):
    record = service_record("e1e2e3e4e5e6", "ocr", metadata_server)
    record["service"]["url"] = url.format(server=metadata_server) if url else None
    store.put(record)
    (item,) = body(await jp_fetch("mlcontainer", "services"))["items"]
    assert item["answering"] is False and item["requests"] is None
    assert item["message"] == why.format(server=metadata_server)


async def test_metadata_of_the_wrong_shape_is_left_out(jp_fetch, store):
    server = fake_service.start("ocr", "e1e2e3e4e5e6", requests="many", started="yesterday")
    try:
        store.put(service_record("e1e2e3e4e5e6", "ocr", fake_service.url_of(server)))
        (item,) = body(await jp_fetch("mlcontainer", "services"))["items"]
    finally:
        server.shutdown()
        server.server_close()
    assert item["answering"] is True and item["signature"] == "predict(x)"
    assert item["requests"] is None and item["uptime"] is None


def test_a_record_removed_while_listing_is_left_out(store, silent_url, monkeypatch):
    store.put(service_record("e1e2e3e4e5e6", "ocr", silent_url))
    listed = store.list(limit=None, status="serving")
    gone = dict(listed[0], id="f0f0f0f0f0f0")  # listed, then removed by another process
    monkeypatch.setattr(store, "list", lambda **_: [gone, *listed])
    assert [r["id"] for r in serving_records(store)] == ["e1e2e3e4e5e6"]


def test_started_times_read_as_the_runner_writes_them():
    assert services.parse_time("2026-12-01T10:00:00+00:00") == 1796119200.0
    assert services.parse_time("2026-12-01T10:00:00Z") == 1796119200.0
    assert services.parse_time("2026-12-01T10:00:00") == 1796119200.0
    assert services.parse_time("2026-12-01T11:00:00+01:00") == 1796119200.0
    for bad in ("", "soon", None, 12):
        assert services.parse_time(bad) is None


@pytest.fixture
def service_container(docker_client, store):
    """A real container serving as service "ocr" of a serving snapshot in the store."""
    sid = uuid.uuid4().hex[:12]
    namespace = os.environ["MLCONTAINER_NAMESPACE"]
    with fake_service.serving_container(docker_client, namespace, sid, "ocr") as (container, url):
        store.put(service_record(sid, "ocr", url))
        yield sid, container, url


@pytest.mark.docker
async def test_stop_a_real_service(jp_fetch, store, service_container):
    sid, container, url = service_container
    fake_service.post(url)
    (item,) = body(await jp_fetch("mlcontainer", "services"))["items"]
    assert item["id"] == sid and item["answering"] is True and item["requests"] == 1
    assert item["stop_requested"] is False
    assert item["url"] == url

    # A service is a run that serves: the same stop, by its snapshot id.
    data = body(
        await jp_fetch(
            "mlcontainer", "running", sid, "stop", method="POST", body=json.dumps({"timeout": 5})
        )
    )
    assert [s["container"] for s in data["stopped"]] == [container.id[:12]]
    container.reload()
    assert container.status != "running"
    # Said in its record first, for the kernel that records how it ended.
    assert store.get(sid)["stop_requested"] is True
    (item,) = body(await jp_fetch("mlcontainer", "services"))["items"]
    assert item["answering"] is False and item["stop_requested"] is True
    assert item["message"] == "Nothing listens at its URL (connection refused)."
    # Nothing left to stop: 404 JSON.
    code, err = await error(
        jp_fetch, "mlcontainer", "running", sid, "stop", method="POST", body="{}"
    )
    assert code == 404 and sid in err["message"]
