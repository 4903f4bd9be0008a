"""The sidebar in a real JupyterLab, driven by headless Chromium through Playwright.

Each test starts JupyterLab on 127.0.0.1 with its own config, data and runtime dirs, a tmp
snapshot store ($MLCONTAINER_STORE) and the built labextension on $JUPYTER_PATH, then opens
the panel. Screenshots go to tests/artifacts/ (git-ignored) for a person to look at.

Needs Debian's chromium (`apt-get install -y chromium`): Playwright's own browser download
does not work here, so it is pointed at /usr/bin/chromium.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import fake_service
import pytest
from test_server import map_record, pipeline_records

from mlcontainer_magics.core.store import Store

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parent.parent
LABEXT_SRC = REPO / "labextension"
LABEXT_BUILT = REPO / "mlcontainer_magics" / "labextension"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = os.environ.get("MLC_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SIDEBAR = "#mlcontainer-magics-sidebar"
TAB = 'li.lm-TabBar-tab[data-id="mlcontainer-magics-sidebar"]'

NOW = time.time()
LOG = "\n".join(f"epoch {i}: loss={1 / (i + 1):.4f}" for i in range(12)) + "\n"
RECORDS = [
    {
        "id": "5e1f0a2b3c4d",
        "name": "prepare-data",
        "notebook": "nb/train.ipynb",
        "status": "done",
        "created": NOW - 3 * 86400,
        "finished": NOW - 3 * 86400 + 4.2,
        "duration": 4.2,
        "exit_code": 0,
        "env_image": "mlcontainer-env:5e1f0a2b3c4d",
        "image_size": 198_000_000,
        "stdout": "wrote 1797 rows\n",
        "lock": [{"name": "pandas", "version": "2.2.3"}],
    },
    {
        "id": "7a8b9c0d1e2f",
        "name": "train",
        "notebook": "nb/train.ipynb",
        "status": "done",
        "created": NOW - 2 * 3600,
        "finished": NOW - 2 * 3600 + 41.3,
        "duration": 41.3,
        "exit_code": 0,
        "env_image": "mlcontainer-env:7a8b9c0d1e2f",
        "image_size": 512_300_000,
        "base_image": "python:3.11-slim",
        "stdout": LOG,
        "stderr": "",
        "timings": {"build": 30.4, "start": 0.4, "run": 41.3},
        "backend": "kubernetes",
        "target": {"context": "kind-dev", "namespace": "ml"},
        "mounts": [
            {
                "source": "/home/me/nb/data",
                "target": "/work/data",
                "mode": "ro",
                "digest": "xxh3-128:0123456789abcdef",
                "count": 3,
                "size": 2_100_000,
            },
        ],
        "written": {"/work/models": {"model.pkl": [123_456, "xxh3-128:ff"]}},
        "lock": [
            {"name": "numpy", "version": "2.1.3"},
            {"name": "scikit-learn", "version": "1.5.2"},
            {"name": "scipy", "version": "1.14.1"},
        ],
    },
    {
        "id": "9f8e7d6c5b4a",
        "name": "plot-errors",
        "notebook": "nb/report.ipynb",
        "status": "failed",
        "created": NOW - 25 * 60,
        "finished": NOW - 25 * 60 + 2.1,
        "duration": 2.1,
        "exit_code": 1,
        "env_image": "mlcontainer-env:9f8e7d6c5b4a",
        "image_size": 230_000_000,
        "stdout": "",
        "stderr": 'Traceback (most recent call last):\n  File "cell.py", line 3\n'
        "ValueError: no column named 'err'\n",
    },
]
NOTEBOOK = {
    "cells": [{"cell_type": "markdown", "id": "intro", "metadata": {}, "source": ["# Train"]}],
    # A kernelspec that exists: without one JupyterLab asks for a kernel in a dialog, which may
    # open late (on a busy machine) over the sidebar the test clicks next.
    "metadata": {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
    },
    "nbformat": 4,
    "nbformat_minor": 5,
}


# -- JupyterLab ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_labextension_built() -> Path:
    """The built sidebar; built here (npm) when this checkout has not built it yet."""
    if not (LABEXT_BUILT / "package.json").exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail(
                "The labextension is not built and npm is not on PATH: run "
                "`npm ci && npm run build:prod` in labextension/ (or build the wheel)."
            )
        env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        for cmd in ([npm, "ci"], [npm, "run", "build:prod"]):
            subprocess.run(cmd, cwd=LABEXT_SRC, env=env, check=True, timeout=600)
    return LABEXT_BUILT


class Lab:
    def __init__(self, url: str, token: str, root: Path, store: Store, proc, log: Path):
        self.url, self.token, self.root, self.store, self.proc, self.log = (
            url,
            token,
            root,
            store,
            proc,
            log,
        )

    def api(self, path: str):
        req = urllib.request.Request(
            f"{self.url}{path}", headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(req, timeout=10) as r:  # noqa: S310 - loopback only
            return json.loads(r.read())


@pytest.fixture
def start_lab(tmp_path):
    """Factory: start a JupyterLab on 127.0.0.1; every one is stopped at teardown."""
    started: list[Lab] = []

    def start(records=(), *, server_extension=True, env=None, name="lab") -> Lab:
        base = tmp_path / name
        root, config, data, runtime, path, settings = (
            base / d for d in ("root", "config", "data", "runtime", "path", "settings")
        )
        for d in (root / "nb", config, data, runtime, path / "labextensions", settings):
            d.mkdir(parents=True)
        (root / "nb" / "train.ipynb").write_text(json.dumps(NOTEBOOK))
        os.symlink(ensure_labextension_built(), path / "labextensions" / "mlcontainer-magics")
        store = Store(base / "store")
        if records:
            store.put_many(records)
        # No outside network: no news, no update checks.
        (config / "jupyter_server_config.json").write_text(
            json.dumps(
                {
                    "ServerApp": {"jpserver_extensions": {"mlcontainer_magics": server_extension}},
                    "LabApp": {
                        "news_url": None,
                        "check_for_updates_class": "jupyterlab.NeverCheckForUpdate",
                    },
                }
            )
        )
        notif = settings / "@jupyterlab" / "apputils-extension"
        notif.mkdir(parents=True)
        (notif / "notification.jupyterlab-settings").write_text(
            json.dumps({"fetchNews": "false", "checkForUpdates": False})
        )
        port, token = _free_port(), uuid.uuid4().hex
        env_vars = {
            **os.environ,
            "JUPYTER_CONFIG_DIR": str(config),
            "JUPYTER_DATA_DIR": str(data),
            "JUPYTER_RUNTIME_DIR": str(runtime),
            "JUPYTER_PATH": str(path),
            "MLCONTAINER_STORE": str(store.root),
            "JUPYTER_PLATFORM_DIRS": "1",
            **(env or {}),
        }
        log = base / "jupyterlab.log"
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyterlab",
                "--no-browser",
                "--ip=127.0.0.1",
                f"--port={port}",
                "--ServerApp.port_retries=0",
                "--allow-root",
                f"--IdentityProvider.token={token}",
                f"--ServerApp.root_dir={root}",
                f"--LabApp.user_settings_dir={settings}",
                f"--LabApp.workspaces_dir={base / 'workspaces'}",
            ],
            env=env_vars,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        lab = Lab(f"http://127.0.0.1:{port}/", token, root, store, proc, log)
        started.append(lab)
        deadline = time.monotonic() + 90
        while True:
            try:
                lab.api("api/status")
                return lab
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "JupyterLab did not start:\n" + log.read_text()[-4000:]
                    ) from None
                time.sleep(0.3)

    yield start
    for lab in started:
        lab.proc.terminate()
        try:
            lab.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            lab.proc.kill()
            lab.proc.wait(timeout=15)


@pytest.fixture
def browser(tmp_path):
    """A Chromium context with a fresh profile; Playwright's own browsers are not used."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: `apt-get install -y chromium`")
        pytest.skip(f"{CHROMIUM} is missing: `apt-get install -y chromium`")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 800},
        )
        try:
            yield context
        finally:
            context.close()


def open_lab(context, lab: Lab):
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    for attempt in range(3):
        page.goto(f"{lab.url}lab?token={lab.token}", wait_until="domcontentloaded")
        page.wait_for_selector(TAB, timeout=60_000)
        page.wait_for_selector("#jupyterlab-splash", state="detached", timeout=60_000)
        # On a busy machine JupyterLab can give up on its theme's stylesheet and say so in a
        # modal dialog: that is JupyterLab's hiccup, not ours, so load the page again.
        if not page.locator(".jp-Dialog").count() or attempt == 2:
            break
    page.click(TAB)
    page.wait_for_selector(f"{SIDEBAR} .mlc-Panel", state="visible", timeout=20_000)
    return page, errors


def element_shot(locator, name: str) -> None:
    """A screenshot of one element; a widget may redraw (and replace its DOM) meanwhile."""
    for attempt in range(3):
        try:
            locator.screenshot(path=str(ARTIFACTS / name))
            return
        except Exception:
            if attempt == 2:
                raise
            time.sleep(0.5)


def shot(page, name: str) -> Path:
    path = ARTIFACTS / name
    page.screenshot(path=str(path))
    return path


# -- tests --------------------------------------------------------------------------------------


def test_sidebar_lists_snapshots_and_details(start_lab, browser):
    lab = start_lab(RECORDS)
    page, errors = open_lab(browser, lab)
    sidebar = page.locator(SIDEBAR)

    rows = sidebar.locator("li.mlc-Row[data-snapshot]")
    rows.first.wait_for(timeout=20_000)
    assert [rows.nth(i).get_attribute("data-snapshot") for i in range(rows.count())] == [
        r["id"] for r in reversed(RECORDS)
    ]  # newest first
    train = sidebar.locator('li[data-snapshot="7a8b9c0d1e2f"]')
    text = train.inner_text()
    assert "train" in text and "done" in text and "41.3s" in text and "512.3 MB" in text
    assert "train.ipynb" in text and "2 h ago" in text
    assert "failed" in sidebar.locator('li[data-snapshot="9f8e7d6c5b4a"]').inner_text()
    counts = sidebar.locator(".mlc-SectionTitle .mlc-Count")
    assert [counts.nth(i).inner_text() for i in range(counts.count())] == ["0", "3"]
    assert "Nothing is running" in sidebar.inner_text()
    shot(page, "sidebar.png")

    # Details: packages, timings, logs.
    train.locator("button.mlc-RowToggle").click()
    details = train.locator(".mlc-Details")
    details.locator("pre.mlc-Log").wait_for(timeout=10_000)
    dtext = details.inner_text()
    assert "numpy==2.1.3" in dtext and "scikit-learn==1.5.2" in dtext
    assert "build" in dtext and "30.4s" in dtext
    assert "epoch 11: loss=0.0833" in dtext
    assert "mlcontainer-env:7a8b9c0d1e2f" in dtext
    # Where it ran, and the data it read and wrote.
    assert "kubernetes (context kind-dev, namespace ml)" in dtext
    assert "/work/data (ro, 2.1 MB, 3 files)" in details.locator(".mlc-DataIn").inner_text()
    assert "/work/models/model.pkl" in details.locator(".mlc-DataOut").inner_text()
    shot(page, "sidebar-details.png")

    # Re-run reaches the core; this hand-made record has no spec, and the core's message shows.
    details.get_by_role("button", name="Re-run").click()
    details.locator(".mlc-Notice", has_text="cannot be rerun").wait_for(timeout=30_000)

    # Open notebook: a document tab for nb/train.ipynb opens.
    details.get_by_role("button", name="Open notebook").click()
    page.locator('.lm-DockPanel-tabBar li.lm-TabBar-tab:has-text("train.ipynb")').wait_for(
        timeout=30_000
    )

    # Delete the failed one through the confirmation dialog (a real, XSRF-checked DELETE).
    failed = sidebar.locator('li[data-snapshot="9f8e7d6c5b4a"]')
    failed.locator("button.mlc-RowToggle").click()
    failed.get_by_role("button", name="Delete").click()
    page.locator(".jp-Dialog").get_by_role("button", name="Delete").click()
    failed.wait_for(state="detached", timeout=10_000)
    assert lab.store.count() == 2
    assert errors == [], errors


def test_sidebar_shows_a_pipelines_lineage(start_lab, browser):
    """Three chained steps (records with `parents`, as lineage writes them): the last one's
    details show the graph, notebook -> ocr -> detect-language -> translate, and a box opens
    its step, whose own graph leads on to the step that took its values."""
    ocr, detect, translate = records = pipeline_records(time.time())
    lab = start_lab(records)
    page, errors = open_lab(browser, lab)
    sidebar = page.locator(SIDEBAR)
    last = sidebar.locator(f'li.mlc-Row[data-snapshot="{translate["id"]}"]')
    last.locator("button.mlc-RowToggle").click()
    graph = last.locator(".mlc-Lineage")
    graph.locator(".mlc-GraphNode").nth(3).wait_for(timeout=20_000)
    # In the default (narrow) sidebar the graph scrolls sideways, the shown step in view.
    pane = graph.locator(".mlc-Graph")
    shown = pane.locator(f'[data-node="{translate["id"]}"]').bounding_box()
    view = pane.bounding_box()
    assert view["x"] <= shown["x"] and shown["x"] + shown["width"] <= view["x"] + view["width"]
    element_shot(graph, "sidebar-lineage-narrow.png")
    # Wider, as one makes the sidebar to look at a pipeline: all of it in view.
    handle = page.locator("#jp-main-split-panel > .lm-SplitPanel-handle").first
    box = handle.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + 360, box["y"] + box["height"] / 2, steps=5)
    page.mouse.up()
    assert graph.locator(".mlc-SubTitle").inner_text().lower() == "lineage (3 steps)"

    steps = graph.locator(".mlc-GraphNode-step")
    assert [steps.nth(i).get_attribute("data-node") for i in range(steps.count())] == [
        ocr["id"],
        detect["id"],
        translate["id"],
    ]
    texts = [steps.nth(i).inner_text().split("\n") for i in range(3)]
    assert texts == [
        ["ocr", f"1 · {ocr['id'][:6]}"],
        ["detect-language", f"2 · {detect['id'][:6]}"],
        ["translate", f"3 · {translate['id'][:6]}"],
    ]
    # Left to right in step order, on one line, after the notebook; the shown one marked.
    start = graph.locator(".mlc-GraphNode-notebook")
    boxes = [start.bounding_box()] + [steps.nth(i).bounding_box() for i in range(3)]
    assert all(a["x"] + a["width"] < b["x"] for a, b in zip(boxes, boxes[1:])), boxes
    assert len({round(b["y"]) for b in boxes}) == 1, boxes
    assert "mlc-selected" in steps.nth(2).get_attribute("class")
    assert "mlc-ok" in steps.nth(0).get_attribute("class")
    assert "mlc-bad" in steps.nth(2).get_attribute("class")  # translate failed
    # Two values between the steps, and the image from the notebook.
    edges = graph.locator(".mlc-GraphEdge")
    pairs = {
        (edges.nth(i).get_attribute("data-from"), edges.nth(i).get_attribute("data-to")): (
            edges.nth(i).locator("text").text_content()
        )
        for i in range(edges.count())
    }
    assert pairs == {
        ("@notebook", ocr["id"]): "image",
        (ocr["id"], detect["id"]): "text",
        (detect["id"], translate["id"]): "doc",
    }
    for name in ("Re-run pipeline", "Export pipeline"):
        assert graph.get_by_role("button", name=name).is_visible()
    # Everything of the graph in view: nothing cut off at the sidebar's edge.
    assert pane.evaluate("e => e.scrollWidth <= e.clientWidth"), "the graph scrolls"
    shot(page, "sidebar-lineage.png")
    element_shot(graph, "sidebar-lineage-graph.png")

    # A box opens its step: ocr's details, whose graph goes on to the step that took its text.
    steps.nth(0).click()
    first = sidebar.locator(f'li.mlc-Row[data-snapshot="{ocr["id"]}"]')
    first.locator(".mlc-Details .mlc-Lineage .mlc-GraphNode-child").wait_for(timeout=20_000)
    first_graph = first.locator(".mlc-Lineage")
    assert first_graph.locator(".mlc-GraphNode-child").get_attribute("data-node") == detect["id"]
    assert "mlc-selected" in first_graph.locator(f'[data-node="{ocr["id"]}"]').get_attribute(
        "class"
    )
    assert not first_graph.get_by_role("button", name="Re-run pipeline").count()
    assert errors == [], errors


def test_sidebar_shows_a_map_with_its_items(start_lab, browser):
    """A map (--map shards, 12 items, one failed) is one entry in the list that says so; its
    details show every item (index, colour, duration, attempts) and the failed one's error,
    whose traceback opens."""
    record = map_record(time.time())
    lab = start_lab([RECORDS[0], record])
    page, errors = open_lab(browser, lab)
    sidebar = page.locator(SIDEBAR)
    row = sidebar.locator(f'li.mlc-Row[data-snapshot="{record["id"]}"]')
    row.wait_for(timeout=20_000)
    assert row.locator(".mlc-MapTag").inner_text() == "map · 12 items · 1 failed"
    assert not sidebar.locator(f'li[data-snapshot="{RECORDS[0]["id"]}"] .mlc-MapTag').count()
    row.locator("button.mlc-RowToggle").click()
    grid = row.locator(".mlc-MapGrid")
    grid.locator(".mlc-MapItem").nth(11).wait_for(timeout=20_000)
    cells = grid.locator(".mlc-MapItem")
    assert [cells.nth(i).get_attribute("data-item") for i in range(12)] == [
        str(i) for i in range(12)
    ]
    assert "mlc-MapItem-bad" in cells.nth(7).get_attribute("class")
    assert all("mlc-MapItem-ok" in cells.nth(i).get_attribute("class") for i in range(7))
    assert cells.nth(3).inner_text().split() == ["3", "2.2s", "×2"]
    assert cells.nth(3).get_attribute("title") == "item 3: done · 2.2s · 2 attempts"
    assert cells.nth(0).inner_text().split() == ["0", "1.1s"]
    details = row.locator(".mlc-Details")
    assert "11 done, 1 failed · over shards · parallel 4 · retries 1" in details.inner_text()
    failed = details.locator(".mlc-MapFailedItem")
    assert failed.count() == 1
    assert failed.locator("summary").inner_text().split("\n") == [
        "item 7 · failed · exit 1 · 1.8s · 2 attempts",
        "KeyError: 'n'",
    ]
    trace = failed.locator("pre.mlc-MapTrace")
    assert not trace.is_visible()
    failed.locator("summary").click()
    trace.wait_for(state="visible", timeout=5_000)
    assert "return int(shard['n'])" in trace.inner_text()
    # Nothing of the items is cut off at the sidebar's edge.
    assert grid.evaluate("e => e.scrollWidth <= e.clientWidth"), "the items scroll"
    # In the default (narrow) sidebar the items sit several to a line.
    tops = {round(cells.nth(i).bounding_box()["y"]) for i in range(12)}
    assert len(tops) <= 6, tops
    row.evaluate("e => e.scrollIntoView({block: 'start'})")
    shot(page, "sidebar-map.png")
    element_shot(row, "sidebar-map-details.png")
    assert errors == [], errors


def test_empty_state_and_engine_down(start_lab, browser):
    # An engine that cannot answer: the status route says so, and the panel tells what to do.
    lab = start_lab(env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"}, name="empty")
    page, errors = open_lab(browser, lab)
    sidebar = page.locator(SIDEBAR)
    sidebar.locator(".mlc-Banner").wait_for(timeout=20_000)
    text = sidebar.inner_text()
    assert "Docker engine is down: run mlcontainer doctor --fix" in text
    # A new user still learns how to start while the engine is down.
    assert "%load_ext mlcontainer_magics" in sidebar.locator(".mlc-Empty").inner_text()
    shot(page, "sidebar-engine-down.png")
    assert errors == [], errors


def test_empty_state_tells_how_to_start(start_lab, browser):
    lab = start_lab(name="new-user")
    page, errors = open_lab(browser, lab)
    sidebar = page.locator(SIDEBAR)
    empty = sidebar.locator(".mlc-Empty")
    empty.wait_for(timeout=20_000)
    text = empty.inner_text()
    assert "%load_ext mlcontainer_magics" in text and "%%containerize" in text
    shot(page, "sidebar-empty.png")
    # A run appears without a reload: the panel polls while it is visible.
    lab.store.put(RECORDS[1])
    sidebar.locator('li[data-snapshot="7a8b9c0d1e2f"]').wait_for(timeout=20_000)
    assert errors == [], errors


def test_server_extension_missing_is_said_plainly(start_lab, browser):
    lab = start_lab(RECORDS, server_extension=False, name="no-server-ext")
    page, errors = open_lab(browser, lab)
    banner = page.locator(f"{SIDEBAR} .mlc-Banner")
    banner.wait_for(timeout=20_000)
    assert "Server extension not installed" in banner.inner_text()
    shot(page, "sidebar-no-server-extension.png")


@pytest.fixture
def engine():
    """A client of the Docker engine; the test is skipped without one."""
    from mlcontainer_magics.backends.docker.engine import connect
    from mlcontainer_magics.errors import EngineUnavailable

    try:
        client = connect(timeout=60)
    except EngineUnavailable as e:
        pytest.skip(str(e))
    yield client
    client.close()


@pytest.fixture
def sleeper(engine):
    """A running container labelled as the product labels a run; removed at teardown."""
    from mlcontainer_magics.backends.docker.backend import make_labels

    client = engine
    sid = uuid.uuid4().hex[:12]
    container = client.containers.run(
        "python:3.11-slim",
        ["sleep", "300"],
        detach=True,
        name=f"mlc-test-browser-{sid}",
        labels=make_labels(
            os.environ["MLCONTAINER_NAMESPACE"], role="run", run=sid, snapshot=sid, owner="test"
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
def test_running_container_shows_and_stops(start_lab, browser, sleeper):
    sid, container = sleeper
    record = {
        "id": sid,
        "name": "long-training",
        "notebook": "nb/train.ipynb",
        "status": "running",
        "created": time.time(),
    }
    lab = start_lab(RECORDS + [record], name="running")
    page, errors = open_lab(browser, lab)
    row = page.locator(f'{SIDEBAR} li.mlc-RunningRow[data-snapshot="{sid}"]')
    row.wait_for(timeout=20_000)
    assert "long-training" in row.inner_text() and "running" in row.inner_text()
    shot(page, "sidebar-running.png")
    row.get_by_role("button", name="Stop").click()
    row.wait_for(state="detached", timeout=30_000)
    container.reload()
    assert container.status != "running"
    assert errors == [], errors


@pytest.fixture
def served(engine):
    """A real container serving as service "ocr" (tests/fake_service.py answers /metadata as
    the runner does), labelled as the product labels a service; removed at teardown."""
    sid = uuid.uuid4().hex[:12]
    namespace = os.environ["MLCONTAINER_NAMESPACE"]
    with fake_service.serving_container(engine, namespace, sid, "ocr") as (container, url):
        yield sid, container, url


@pytest.mark.docker
def test_services_show_with_their_url_and_stop(start_lab, browser, served):
    sid, container, url = served
    for _ in range(3):
        fake_service.post(url)
    lab = start_lab(RECORDS + [fake_service.service_record(sid, "ocr", url)], name="services")
    page, errors = open_lab(browser, lab)
    sidebar = page.locator(SIDEBAR)
    row = sidebar.locator(f'li.mlc-ServiceRow[data-snapshot="{sid}"]')
    row.wait_for(timeout=20_000)
    row.get_by_text("3 requests").wait_for(timeout=20_000)
    text = row.inner_text()
    assert "ocr" in text and "serving" in text and url in text and sid in text
    assert "predict(x)" in text and "up " in text
    assert row.locator("a.mlc-Url").get_attribute("href") == url
    # Its container is listed with the service, not with the running cells.
    assert sidebar.locator(f'li.mlc-RunningRow[data-snapshot="{sid}"]').count() == 0
    assert "Nothing is running" in sidebar.inner_text()
    shot(page, "sidebar-services.png")

    # The snapshot id opens the snapshot below.
    row.locator("button.mlc-SnapshotLink").click()
    snapshot = sidebar.locator(f'li.mlc-Row.mlc-open[data-snapshot="{sid}"]:not(.mlc-ServiceRow)')
    snapshot.locator(".mlc-Details").wait_for(timeout=10_000)
    assert "serving" in snapshot.inner_text()

    # Stop: the container ends (a real, XSRF-checked POST), and the service stops answering.
    row.get_by_role("button", name="Stop").click()
    row.locator(".mlc-Badge", has_text="stopping").wait_for(timeout=30_000)
    container.reload()
    assert container.status != "running"
    assert lab.store.get(sid)["stop_requested"] is True
    shot(page, "sidebar-services-stopped.png")
    # As the kernel's watcher records the end of it: off the list of services.
    lab.store.update(sid, status="stopped", finished=time.time())
    row.wait_for(state="detached", timeout=20_000)
    assert errors == [], errors


RUN_NOTEBOOK = {
    "cells": [
        {
            "cell_type": "code",
            "id": "load",
            "metadata": {},
            "outputs": [],
            "execution_count": None,
            "source": "%load_ext mlcontainer_magics",
        },
        {
            "cell_type": "code",
            "id": "quick",
            "metadata": {},
            "outputs": [],
            "execution_count": None,
            "source": "%%containerize -n browser-run\nprint('hello from the container')",
        },
        {
            "cell_type": "code",
            "id": "long",
            "metadata": {},
            "outputs": [],
            "execution_count": None,
            "source": "%%containerize -n browser-stop --no-raise-error\nimport time\n"
            "print('working', flush=True)\ntime.sleep(120)",
        },
    ],
    "metadata": {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
    },
    "nbformat": 4,
    "nbformat_minor": 5,
}


@pytest.mark.docker
@pytest.mark.usefixtures("no_leaks")
def test_containerized_cells_in_a_real_notebook(start_lab, browser):
    """A notebook runs %%containerize cells: output, the status widget, the run in the panel,
    and the widget's Stop button stopping a run while its cell is still executing."""
    lab = start_lab(name="notebook")
    (lab.root / "run.ipynb").write_text(json.dumps(RUN_NOTEBOOK))
    page, errors = open_lab(browser, lab)
    page.goto(f"{lab.url}lab/tree/run.ipynb?token={lab.token}", wait_until="domcontentloaded")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    dialog = page.locator(".jp-Dialog")
    try:  # JupyterLab asks which kernel a new notebook should use
        dialog.get_by_role("button", name="Select").click(timeout=15_000)
    except Exception:
        pass
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=60_000)
    page.click(TAB)
    page.get_by_role("menuitem", name="Run").click()
    page.locator("li[data-command='runmenu:run-all']").click()

    quick = page.locator(".jp-Cell").nth(1)
    quick.locator(".jp-OutputArea").get_by_text("hello from the container").wait_for(
        timeout=120_000
    )
    quick.locator('.mlc-badge[data-status="done"]').wait_for(timeout=60_000)
    sid = lab.store.get("browser-run")["id"]
    assert sid in quick.locator(".mlc-status").inner_text()
    element_shot(quick.locator(".mlc-status"), "status-widget-done.png")
    # In the snapshot list (the Running list may still show its container for a poll or two).
    snapshots = page.locator(f'{SIDEBAR} section[aria-label="Snapshots"]')
    snapshots.locator(f'li[data-snapshot="{sid}"]').wait_for(timeout=30_000)

    long = page.locator(".jp-Cell").nth(2)
    long.locator(".jp-OutputArea").get_by_text("working").wait_for(timeout=120_000)
    stop = long.locator("button.mlc-stop-run")
    stop.wait_for(timeout=30_000)
    element_shot(long.locator(".mlc-status"), "status-widget-running.png")
    shot(page, "notebook-running.png")
    stop.click()
    long.locator('.mlc-badge[data-status="stopped"]').wait_for(timeout=30_000)
    assert lab.store.get("browser-stop")["status"] == "stopped"
    element_shot(long.locator(".mlc-status"), "status-widget-stopped.png")
    shot(page, "notebook-stopped.png")
    assert errors == [], errors
