"""Served cells (--serve): the proxy and the display without an engine, then services on the
real engine: a scikit-learn model answering like the model in the cell, the body formats,
errors, concurrency, the published port, stop/exit/prune, re-serving with no gap, failures,
and `mlcontainer serve ID`."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import NAMESPACE, STORE, wait_for
from mlcontainer_magics.core import services, verbs
from mlcontainer_magics.core.events import Phase
from mlcontainer_magics.core.proxy import Proxy, upstream_of
from mlcontainer_magics.errors import CapabilityMissing, Conflict, NotFound, RunError
from mlcontainer_magics.frontends.display import RunStatus, apply, text_lines

LABEL = "org.mlcontainer"

# -- the proxy, on plain local servers --------------------------------------------------------


class _Named(BaseHTTPRequestHandler):
    """Answers with the server's name; /slow after a pause (a request in flight)."""

    protocol_version = "HTTP/1.0"

    def do_GET(self):
        if self.path == "/slow":
            time.sleep(0.5)
        body = self.server.name.encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))[::-1]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def local_server(name):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Named)
    server.name = name  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address
    finally:
        server.shutdown()
        server.server_close()


# This machine's own addresses: never through a proxy the environment may name.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def get(url, path="/", body=None, ctype="application/json", accept=None, timeout=30.0):
    """(status, content type, body) of one request."""
    headers = {"Content-Type": ctype} if body is not None else {}
    if accept:
        headers["Accept"] = accept
    request = urllib.request.Request(url + path, data=body, headers=headers)
    try:
        with _DIRECT.open(request, timeout=timeout) as r:
            return r.status, r.headers.get_content_type(), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get_content_type(), e.read()


def test_proxy_passes_requests_and_switches_without_cutting_one_in_flight():
    with local_server("a") as a, local_server("b") as b:
        proxy = Proxy(upstream=a)
        try:
            assert get(proxy.url)[2] == b"a"
            assert get(proxy.url, body=b"x" * 300_000)[2] == b"x" * 300_000  # larger than a chunk
            slow = {}
            t = threading.Thread(target=lambda: slow.update(answer=get(proxy.url, "/slow")))
            t.start()
            assert wait_for(lambda: proxy.served.get(a) == 3, timeout=5)  # the slow one is in
            assert proxy.switch(b) == a
            assert get(proxy.url)[2] == b"b"  # new connections: the new upstream
            assert not proxy.drain(a, timeout=0.01)  # the slow one is still open...
            assert proxy.drain(a, timeout=5)  # ... and finishes where it began
            t.join()
            assert slow["answer"][2] == b"a"
            assert proxy.served == {a: 3, b: 1}
        finally:
            proxy.close()
        with pytest.raises(urllib.error.URLError):
            get(proxy.url, timeout=2)


def test_a_closed_proxy_frees_its_port_at_once_and_finishes_what_it_has():
    with local_server("a") as a:
        proxy = Proxy(upstream=a)
        slow = {}
        t = threading.Thread(target=lambda: slow.update(answer=get(proxy.url, "/slow")))
        t.start()
        assert wait_for(lambda: proxy.served.get(a) == 1, timeout=5)
        started = time.monotonic()
        proxy.close()
        assert time.monotonic() - started < 0.4  # not waiting for the slow one
        again = Proxy(proxy.port, upstream=a)  # the same address, for what comes next
        try:
            assert get(again.url)[2] == b"a"
        finally:
            again.close()
        t.join()
        assert slow["answer"][2] == b"a"


def test_proxy_refuses_a_port_in_use_and_closes_connections_with_no_upstream():
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        with pytest.raises(Conflict, match=r"in use.*another --port"):
            Proxy(taken.getsockname()[1])
    finally:
        taken.close()
    proxy = Proxy()
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
            assert s.recv(10) == b""  # closed at once: nothing serves yet
        assert proxy.served == {}
    finally:
        proxy.close()


def test_proxy_passes_a_half_close_on():
    """A client that shuts its sending side after the request still gets the answer."""
    with local_server("a") as a:
        proxy = Proxy(upstream=a)
        try:
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                s.shutdown(socket.SHUT_WR)
                answer = b"".join(iter(lambda: s.recv(4096), b""))
            assert answer.startswith(b"HTTP/1.0 200") and answer.endswith(b"\r\n\r\na")
        finally:
            proxy.close()


def test_the_serving_line_is_found_in_any_chunks_and_the_rest_passes_at_once():
    from mlcontainer_magics.core.richoutput import ServingWatch
    from mlcontainer_magics.runner import SERVING_MARK

    line = SERVING_MARK + json.dumps({"port": 8080, "entry": "predict"}) + "\n"
    text = "loading" + "." * 3 + " done\nready?\n" + line + "after\n"
    for size in (1, 2, 5, 7, 64, len(text)):
        watch, passed, ready = ServingWatch(), [], False
        for i in range(0, len(text), size):
            got, ready = watch.feed(text[i : i + size])
            passed.append(got)
            if ready:
                break
        after = text.index("after")  # what came in the same chunk as the line passes too
        seen = "loading... done\nready?\n" + text[after : max(after, i + size)]
        assert ready and "".join(passed) == seen, size
    watch = ServingWatch()
    assert watch.feed("50%\r") == ("50%\r", False)  # a line not ended passes at once
    assert watch.feed("100%\n") == ("100%\n", False)
    assert watch.feed(SERVING_MARK[:3]) == ("", False)  # but not what may be the mark's start
    assert watch.feed("\n") == (SERVING_MARK[:3] + "\n", False)
    assert watch.feed("x" + SERVING_MARK + "{}\n") == ("x" + SERVING_MARK + "{}\n", False)
    assert watch.feed(SERVING_MARK[:4]) == ("", False) and watch.rest() == SERVING_MARK[:4]


@pytest.mark.parametrize(
    "url,upstream",
    [
        ("http://127.0.0.1:4000", ("127.0.0.1", 4000)),
        ("http://127.0.0.1:4000/", ("127.0.0.1", 4000)),
        ("https://cluster:6443/api/v1/namespaces/ml/services/x:http/proxy", None),
        ("http://svc/proxy/path", None),
    ],
)
def test_what_the_proxy_can_front(url, upstream):
    assert upstream_of(url) == upstream


def test_a_served_spec_survives_its_record():
    from mlcontainer_magics.core import snapshots
    from mlcontainer_magics.core import spec as specs

    spec = specs.RunSpec(
        code="def predict(x): return x",
        env_spec=specs.EnvSpec("python:3.11-slim"),
        serve=specs.parse_serve("ocr", port="8123", entry="predict", replicas="2"),
    )
    record = json.loads(json.dumps({"id": "abc", "spec": spec.to_dict()}))
    assert snapshots.spec_from_record(record) == spec


def test_network_none_is_refused_before_any_work_where_the_backend_cannot_isolate(monkeypatch):
    from mlcontainer_magics.backends.docker.services import DockerServices
    from mlcontainer_magics.backends.kubernetes.services import KubernetesServices
    from mlcontainer_magics.core import spec as specs

    class Backend:
        name = "kubernetes"
        services = KubernetesServices(None)

    spec = specs.RunSpec(
        code="def predict(x): return x",
        env_spec=specs.EnvSpec("python:3.11-slim"),
        serve=specs.parse_serve("m"),
        network="none",
    )
    with pytest.raises(CapabilityMissing, match=r"--network none.*--backend kubernetes.*docker"):
        services.services_of(Backend(), spec)  # type: ignore[arg-type]
    services.services_of(Backend(), dataclasses.replace(spec, network="bridge"))  # type: ignore[arg-type]
    Backend.services = DockerServices(None)  # type: ignore[assignment]
    Backend.name = "docker"
    monkeypatch.delenv("DOCKER_HOST", raising=False)  # the engine of this machine
    assert services.services_of(Backend(), spec) is Backend.services  # type: ignore[arg-type]
    # An engine elsewhere: its containers' sockets stay there.
    monkeypatch.setenv("DOCKER_HOST", "tcp://10.0.0.1:2376")
    with pytest.raises(CapabilityMissing, match=r"--backend docker: the engine runs on another"):
        services.services_of(Backend(), spec)  # type: ignore[arg-type]


def test_services_table_and_status_line():
    rows = [
        {"name": "ocr", "url": "http://127.0.0.1:5000", "snapshot": "abc", "requests": 3,
         "uptime": 65},
        {"name": "lang", "url": "http://127.0.0.1:5001", "snapshot": "def", "requests": None,
         "uptime": None},
    ]  # fmt: skip
    lines = verbs.format_services(rows).splitlines()
    assert lines[0].split() == ["NAME", "URL", "SNAPSHOT", "REQUESTS", "UPTIME"]
    assert lines[1].split()[:4] == ["ocr", "http://127.0.0.1:5000", "abc", "3"]
    assert lines[2].split()[3] == "-"  # another process's: not counted here
    assert verbs.format_services([]) == ""
    s = apply(RunStatus(), Phase.RUNNING, {"container": "c1"}, now=0)
    after = apply(s, Phase.SERVING, {"name": "ocr", "url": "http://x:1", "snapshot": "abc"}, now=1)
    assert after.url == "http://x:1" and after.snapshot == "abc"
    assert text_lines(s, after) == ["[mlcontainer] serving ocr at http://x:1"]
    end = apply(after, Phase.FINISHED, {"status": "serving", "message": "serving"}, now=2)
    assert end.state == "serving" and text_lines(after, end) == []
    pytest.importorskip("ipywidgets")
    from mlcontainer_magics.frontends.display import WidgetView

    view = WidgetView(None)
    view.render(end, now=3)
    assert 'data-status="serving"' in view.badge.value
    assert 'href="http://x:1"' in view.snapshot.value and "abc" in view.snapshot.value


# -- on the engine ------------------------------------------------------------------------------

docker = pytest.mark.docker
SK = "-r numpy==2.1.3 pandas==2.2.3 pyarrow==18.1.0 scikit-learn==1.5.2 --no-capture"
SK_CELL = """
import json
import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

model = LogisticRegression(max_iter=1000).fit(X, y)
print("IN-CELL", json.dumps(model.predict(X_test).tolist()))

def predict(x):
    if isinstance(x, dict):
        raise ValueError(x["raise"])
    if isinstance(x, bytes):
        return x[::-1]
    if isinstance(x, pd.DataFrame):
        return x.assign(label=model.predict(x[["a", "b", "c", "d"]].to_numpy()))
    return model.predict(np.asarray(x, dtype=float))
"""
ECHO_CELL = (
    "import os\nprint('loading')\ndef predict(x):\n    return {'x': x, 'pid': os.getpid()}\n"
)


def _shell():
    from IPython.testing.globalipapp import get_ipython

    shell = get_ipython()
    shell.run_line_magic("load_ext", "mlcontainer_magics")
    shell.run_line_magic("config", f"ContainerizeMagics.namespace = {NAMESPACE!r}")
    shell.run_line_magic("config", f"ContainerizeMagics.store_dir = {STORE!r}")
    return shell


def _store():
    from mlcontainer_magics.core.store import Store

    return Store(STORE)


def _service_containers(client, name=None):
    labels = [f"{LABEL}.namespace={NAMESPACE}", f"{LABEL}.role=service"]
    if name:
        labels.append(f"{LABEL}.service={name}")
    return client.containers.list(all=True, filters={"label": labels})


def _serve(shell, line, cell) -> str:
    """Run a served cell; what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        shell.run_cell_magic("containerize", line, cell)
    return out.getvalue()


@pytest.fixture(scope="module")
def model():
    """A scikit-learn model served from a cell, trained on values sent with --in."""
    np = pytest.importorskip("numpy")
    rng = np.random.default_rng(7)
    X = rng.normal(size=(300, 4))
    y = (X[:, 0] + X[:, 1] > 0).astype(int) + (X[:, 2] > 0.8).astype(int)
    X_test = rng.normal(size=(64, 4))
    shell = _shell()
    shell.user_ns.update(X=X, y=y, X_test=X_test)
    printed = _serve(shell, f"--serve sk --in X,y,X_test {SK}", SK_CELL)
    expected = json.loads(printed.split("IN-CELL ", 1)[1].splitlines()[0])
    service = services.REGISTRY.get("sk")
    assert service is not None, printed
    yield {"url": service.url, "X_test": X_test, "expected": expected, "printed": printed,
           "run_id": service.run_id, "shell": shell}  # fmt: skip
    services.REGISTRY.stop("sk")


@docker
def test_served_model_answers_like_the_model_in_the_cell(model):
    np = pytest.importorskip("numpy")
    assert "service 'sk' at http://127.0.0.1:" in model["printed"]
    assert "mlcontainer_magics.service('sk')" in model["printed"]
    record = _store().get(model["run_id"])
    assert record["status"] == "serving"
    assert record["service"]["url"] == model["url"] and record["service"]["entry"] == "predict"
    status, ctype, body = get(
        model["url"], "/predict", json.dumps(model["X_test"].tolist()).encode()
    )
    assert (status, ctype) == (200, "application/json")
    assert json.loads(body) == model["expected"]
    buf = io.BytesIO()
    np.save(buf, model["X_test"])
    status, ctype, body = get(model["url"], "/predict", buf.getvalue(), "application/x-npy")
    assert (status, ctype) == (200, "application/x-npy")
    assert np.load(io.BytesIO(body)).tolist() == model["expected"]
    import mlcontainer_magics

    sk = mlcontainer_magics.service("sk")  # as the cell's output says to call it
    assert sk(model["X_test"]).tolist() == model["expected"]
    meta = json.loads(get(model["url"], "/metadata")[2])
    assert meta["snapshot"] == model["run_id"] and meta["name"] == "sk"
    assert meta["signature"] == "predict(x)"


@docker
def test_parquet_and_bytes_round_trip(model):
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(model["X_test"], columns=list("abcd")).assign(row=range(64))
    buf = io.BytesIO()
    frame.to_parquet(buf)
    status, ctype, body = get(
        model["url"], "/predict", buf.getvalue(), "application/vnd.apache.parquet"
    )
    assert (status, ctype) == (200, "application/vnd.apache.parquet")
    back = pd.read_parquet(io.BytesIO(body))
    assert back["row"].tolist() == list(range(64))
    assert back["label"].tolist() == model["expected"]
    assert (back[list("abcd")].to_numpy() == model["X_test"]).all()
    blob = os.urandom(5000)
    status, ctype, body = get(model["url"], "/predict", blob, "application/octet-stream")
    assert (status, ctype, body) == (200, "application/octet-stream", blob[::-1])


@docker
def test_bad_body_is_4xx_an_exception_500_and_the_next_request_succeeds(model):
    url, good = model["url"], json.dumps(model["X_test"][:3].tolist()).encode()
    status, _, body = get(url, "/predict", b"{not json")
    assert status == 400 and "not JSON" in json.loads(body)["error"]
    status, _, body = get(url, "/predict", b"garbage", "application/x-npy")
    assert status == 400 and "error" in json.loads(body)
    status, _, body = get(url, "/predict", json.dumps({"raise": "no such row"}).encode())
    error = json.loads(body)
    assert status == 500 and error["type"] == "ValueError"
    assert "no such row" in error["traceback"]
    status, _, body = get(url, "/predict", good)
    assert status == 200 and json.loads(body) == model["expected"][:3]
    assert get(url, "/healthz")[0] == 200


@docker
def test_sixteen_concurrent_clients_all_get_their_own_answers(model):
    X, expected = model["X_test"], model["expected"]
    answers, errors = {}, []

    def client(i):
        rows = list(range(i * 4, i * 4 + 4))
        try:
            for _ in range(5):
                status, _, body = get(
                    model["url"], "/predict", json.dumps(X[rows].tolist()).encode()
                )
                assert status == 200, body
                answers.setdefault(i, []).append(json.loads(body))
        except Exception as e:  # reported below, with which client
            errors.append((i, repr(e)))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for i in range(16):
        assert answers[i] == [expected[i * 4 : i * 4 + 4]] * 5


def _bridge_address(client) -> str:
    """This machine's own address on Docker's bridge (not loopback)."""
    return client.networks.get("bridge").attrs["IPAM"]["Config"][0]["Gateway"]


@docker
def test_the_published_port_is_bound_to_127_0_0_1_only(model, docker_client):
    (container,) = _service_containers(docker_client, "sk")
    bindings = container.attrs["HostConfig"]["PortBindings"]["8080/tcp"]
    assert [b["HostIp"] for b in bindings] == ["127.0.0.1"]
    published = container.attrs["NetworkSettings"]["Ports"]["8080/tcp"]
    assert {p["HostIp"] for p in published} == {"127.0.0.1"}
    assert container.name.startswith(f"{NAMESPACE}-service-sk-")
    assert container.labels[f"{LABEL}.run"] == model["run_id"]
    from mlcontainer_magics.backends.docker.backend import DockerBackend

    backend = DockerBackend(namespace=NAMESPACE)
    listed = {h.name: h for h in backend.services.running()}
    assert listed["sk"].run_id == model["run_id"]
    assert listed["sk"].url == f"http://127.0.0.1:{published[0]['HostPort']}"
    assert model["run_id"] not in [r.id for r in backend.running()]  # a service, not a run
    assert backend.is_running(model["run_id"])
    other = _bridge_address(docker_client)
    for port in (int(published[0]["HostPort"]), int(model["url"].rsplit(":", 1)[1])):
        assert get(f"http://127.0.0.1:{port}", "/healthz")[0] == 200
        with pytest.raises(OSError):  # neither the container's port nor the proxy's
            socket.create_connection((other, port), timeout=2).close()


@docker
@pytest.mark.usefixtures("no_leaks")
def test_reserving_replaces_without_a_gap_and_stop_leaves_nothing(docker_client):
    shell = _shell()
    _serve(shell, "--serve echo", ECHO_CELL)
    first = services.REGISTRY.get("echo")
    url = first.url
    pid = json.loads(get(url, "/predict", b"1")[2])["pid"]
    polls, failures, stop = [0], [], threading.Event()

    def poll():
        while not stop.is_set():
            try:
                status = get(url, "/healthz", timeout=5)[0]
                if status != 200:
                    failures.append(status)
            except OSError as e:
                failures.append(repr(e))
            polls[0] += 1

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        time.sleep(0.3)
        printed = _serve(shell, "--serve echo", ECHO_CELL)
        time.sleep(0.3)
    finally:
        stop.set()
        poller.join()
    second = services.REGISTRY.get("echo")
    assert failures == [] and polls[0] > 20
    assert second.url == url and second.run_id != first.run_id and url in printed
    assert json.loads(get(url, "/predict", b"2")[2])["x"] == 2
    old = _store().get(first.run_id)
    assert old["status"] == "stopped" and old["replaced_by"] == second.run_id
    assert old["name"] == "echo" and _store().get("echo")["id"] == second.run_id  # the newest
    assert "loading" in old["stdout"] and "GET /healthz 200" in old["stderr"]
    assert [c.labels[f"{LABEL}.run"] for c in _service_containers(docker_client, "echo")] == [
        second.run_id
    ]
    assert pid  # each container's own process
    with pytest.raises(RunError, match="failed") as broken:  # a broken new version...
        _serve(shell, "--serve echo", "predict = undefined_name")
    assert "NameError" in broken.value.logs
    assert services.REGISTRY.get("echo") is second  # ... leaves the one that serves
    assert json.loads(get(url, "/predict", b"4")[2])["x"] == 4
    shell.run_line_magic("container", "stop echo")
    assert _service_containers(docker_client, "echo") == []
    assert _store().get(second.run_id)["status"] == "stopped"
    with pytest.raises(OSError):
        get(url, "/healthz", timeout=2)
    with pytest.raises(NotFound):
        services.REGISTRY.stop("echo")


@docker
@pytest.mark.usefixtures("no_leaks")
def test_services_list_logs_and_the_snapshot_show(docker_client, capsys):
    shell = _shell()
    _serve(shell, "--serve lister -n lister-snap", ECHO_CELL)
    try:
        service = services.REGISTRY.get("lister")
        get(service.url, "/predict", b"5")
        capsys.readouterr()
        shell.run_line_magic("container", "services")
        table = capsys.readouterr().out
        row = next(line for line in table.splitlines() if line.startswith("lister "))
        assert row.split()[1:4] == [service.url, service.run_id, "1"]
        shell.run_line_magic("container", "logs lister")
        log = capsys.readouterr().out
        assert "loading" in log and "POST /predict 200" in log
        shell.run_line_magic("container", "show lister-snap")
        shown = capsys.readouterr().out
        assert "serving" in shown and f"lister at {service.url}" in shown
    finally:
        shell.run_line_magic("container", "stop lister")
    shell.run_line_magic("container", "logs lister-snap")  # a snapshot's log, by its name
    assert "loading" in capsys.readouterr().out


@docker
@pytest.mark.usefixtures("no_leaks")
def test_a_failing_cell_or_missing_entry_is_a_clear_error_and_leaves_no_container(docker_client):
    shell = _shell()
    with pytest.raises(RunError, match=r"failed \(exit code 1\)") as failed:
        _serve(shell, "--serve broken -n broken-cell", "print('half')\nraise KeyError('weights')")
    assert "KeyError" in failed.value.logs
    record = _store().get("broken-cell")
    assert record["status"] == "failed" and "weights" in record["stderr"]
    assert "half" in record["stdout"] and record["exit_code"] == 1
    with pytest.raises(RunError, match="defines no function predict"):
        _serve(shell, "--serve broken -n no-entry", "model = 1")
    assert _store().get("no-entry")["status"] == "failed"
    with pytest.raises(RunError, match="defines no function answer"):
        _serve(shell, "--serve broken --entry answer", ECHO_CELL)
    assert _service_containers(docker_client, "broken") == []
    assert services.REGISTRY.get("broken") is None


@docker
@pytest.mark.usefixtures("no_leaks")
def test_bad_combinations_are_refused_before_any_work(docker_client):
    from IPython.core.error import UsageError

    shell = _shell()
    store = _store()
    before = store.count()
    with pytest.raises(CapabilityMissing, match=r"--replicas 3.*--backend kubernetes"):
        _serve(shell, "--serve many --replicas 3 -r numpy==1.0.0", ECHO_CELL)
    with pytest.raises(UsageError, match="--session"):
        _serve(shell, "--serve s --session warm", ECHO_CELL)
    with pytest.raises(UsageError, match="--out"):
        _serve(shell, "--serve s --out y", ECHO_CELL)
    with pytest.raises(UsageError, match="only with --serve"):
        _serve(shell, "--port 8000", ECHO_CELL)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        port = taken.getsockname()[1]
        with pytest.raises(Conflict, match=f"Port {port}.*in use"):
            _serve(shell, f"--serve p --port {port} -r numpy==1.0.0", ECHO_CELL)
    finally:
        taken.close()
    assert store.count() == before  # nothing recorded (numpy 1.0.0 would not even build)
    assert services.REGISTRY.get("p") is None


@docker
@pytest.mark.usefixtures("no_leaks")
def test_a_service_keeps_its_secrets_while_it_serves_and_masks_them_in_its_log(
    docker_client, monkeypatch
):
    token = "tok-" + os.urandom(8).hex()
    monkeypatch.setenv("SERVE_TOKEN", token)
    shell = _shell()
    cell = (
        "import os\nprint('token', os.environ['SERVE_TOKEN'])\n"
        "def predict(x):\n    return open('/run/secrets/SERVE_TOKEN').read() == x\n"
    )
    printed = _serve(shell, "--serve secretive --secret SERVE_TOKEN", cell)
    assert token not in printed and "token ***" in printed
    service = services.REGISTRY.get("secretive")
    (container,) = _service_containers(docker_client, "secretive")
    (folder,) = [
        m["Source"] for m in container.attrs["Mounts"] if m["Destination"] == "/run/secrets"
    ]
    # read at a request, long after the cell ran: the file is there as long as the service
    assert json.loads(get(service.url, "/predict", json.dumps(token).encode())[2]) is True
    shell.run_line_magic("container", "stop secretive")
    record = _store().get(service.run_id)
    assert "token ***" in record["stdout"] and token not in json.dumps(record)
    assert not os.path.exists(folder)


@docker
@pytest.mark.usefixtures("no_leaks")
def test_a_cell_slower_than_its_timeout_never_serves(docker_client):
    shell = _shell()
    started = time.monotonic()
    with pytest.raises(RunError, match=r"Stopped after 2 s \(--timeout\)") as late:
        _serve(shell, "--serve late --timeout 2", "import time\ntime.sleep(60)\n" + ECHO_CELL)
    assert late.value.reason == "timeout" and time.monotonic() - started < 30
    assert _service_containers(docker_client, "late") == []
    assert services.REGISTRY.get("late") is None


_SERVE_AND_EXIT = """
import sys
from mlcontainer_magics.backends.docker.backend import DockerBackend
from mlcontainer_magics.core import services, spec as S
from mlcontainer_magics.core.store import Store

spec = S.RunSpec(code=sys.argv[2], env_spec=S.EnvSpec("python:3.11-slim"),
                 serve=S.parse_serve(sys.argv[1]))
service = services.serve(spec, DockerBackend(namespace=sys.argv[3]), store=Store(sys.argv[4]))
print(service.run_id, service.url, flush=True)
if sys.argv[5] == "die":
    import os, signal
    os.kill(os.getpid(), signal.SIGKILL)  # no atexit: what a crashed kernel leaves
"""


def _serve_in_process(name, how):
    proc = subprocess.run(
        [sys.executable, "-c", _SERVE_AND_EXIT, name, ECHO_CELL, NAMESPACE, STORE, how],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.stdout, proc.stderr
    return proc, proc.stdout.split()


@docker
@pytest.mark.usefixtures("no_leaks")
def test_a_process_that_exits_stops_its_services(docker_client):
    proc, (run_id, url) = _serve_in_process("leaving", "exit")
    assert proc.returncode == 0, proc.stderr
    assert _service_containers(docker_client, "leaving") == []
    record = _store().get(run_id)
    assert record["status"] == "stopped" and "loading" in record["stdout"]


@docker
@pytest.mark.usefixtures("no_leaks")
def test_a_kernel_that_shuts_down_stops_its_services(docker_client):
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3", env=dict(os.environ))
    try:
        kc.execute_interactive("%load_ext mlcontainer_magics", timeout=60)
        msg_id = kc.execute(f"%%containerize --serve kern\n{ECHO_CELL}")
        printed = ""
        while True:
            msg = kc.get_iopub_msg(timeout=120)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream":
                printed += msg["content"]["text"]
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                break
        assert "service 'kern' at http://127.0.0.1:" in printed, printed
        (container,) = _service_containers(docker_client, "kern")
        run_id = container.labels[f"{LABEL}.run"]
        assert _store().get(run_id)["status"] == "serving"
    finally:
        kc.stop_channels()
        km.shutdown_kernel()  # as Jupyter does: the kernel exits, its atexit handlers run
    assert _service_containers(docker_client, "kern") == []
    assert _store().get(run_id)["status"] == "stopped"


@docker
@pytest.mark.usefixtures("no_leaks")
def test_prune_removes_the_services_of_a_process_that_died(docker_client):
    from mlcontainer_magics.backends.docker.backend import DockerBackend
    from mlcontainer_magics.core import snapshots

    proc, (run_id, url) = _serve_in_process("orphan", "die")
    assert proc.returncode == -signal.SIGKILL
    (container,) = _service_containers(docker_client, "orphan")
    folder = next(m["Source"] for m in container.attrs["Mounts"] if m["Destination"] == "/mlc")
    assert get(url.rsplit(":", 1)[0] + ":" + _published(container), "/healthz")[0] == 200
    assert _store().get(run_id)["status"] == "serving"  # as its process last said...
    assert run_id not in [r["snapshot"] for r in services.rows(_store())]  # ... not listed
    done = snapshots.prune(_store(), DockerBackend(namespace=NAMESPACE))
    assert any(container.name in line for line in done)
    assert _service_containers(docker_client, "orphan") == []
    assert not os.path.exists(folder)
    record = _store().get(run_id)
    assert record["status"] == "stopped" and record["reason"] == "its kernel went away"


PROBE_CELL = """
import socket

def predict(x):
    # One connection attempt from inside the service: whether it gets through.
    try:
        socket.create_connection((x["host"], x["port"]), timeout=3).close()
        return "connected"
    except OSError as e:
        return f"{type(e).__name__}: {e}"
"""


def _probe(url, host, port) -> str:
    status, _, body = get(url, "/predict", json.dumps({"host": host, "port": port}).encode())
    assert status == 200, body
    return json.loads(body)


# A process of its own, as another user of this machine: connects to the socket, asks /healthz.
_HEALTH_OVER_SOCKET = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
s.sendall(b"GET /healthz HTTP/1.0\\r\\n\\r\\n")
print(s.recv(65536).split(b" ")[1].decode())
"""


@docker
@pytest.mark.usefixtures("no_leaks")
def test_network_none_serves_through_the_proxy_and_reaches_nothing(docker_client, monkeypatch):
    from mlcontainer_magics.backends.docker import services as docker_services
    from mlcontainer_magics.backends.docker.backend import DockerBackend

    gateway = docker_client.networks.get("bridge").attrs["IPAM"]["Config"][0]["Gateway"]
    # A service of this machine on all its interfaces: what the old design's containers reached.
    listener = socket.create_server(("0.0.0.0", 0))
    port = listener.getsockname()[1]
    listener.settimeout(10)
    shell = _shell()
    try:
        _serve(shell, "--serve cut --network none", PROBE_CELL)
        cut = services.REGISTRY.get("cut")
        (container,) = _service_containers(docker_client, "cut")
        # No network at all, as a run's; nothing published; its runner as the unprivileged user.
        host_config = container.attrs["HostConfig"]
        assert host_config["NetworkMode"] == "none" and not host_config["PortBindings"]
        assert list(container.attrs["NetworkSettings"]["Networks"]) == ["none"]
        assert container.attrs["Config"]["User"] == "1000:1000"
        # Reached through the proxy, which connects to its socket in the run's folder.
        path = upstream_of(cut.handle.url)
        assert cut.handle.url == f"unix:{path}" and not cut.handle.direct
        assert path == f"{cut.workdir}/out/serve.sock" and cut.upstream == path
        assert cut.url.startswith("http://127.0.0.1:")
        assert get(cut.url, "/healthz")[0] == 200
        assert os.stat(path).st_uid == 1000  # made by the container's user...
        if os.getuid() == 0:  # ... and usable by another user of this machine
            health = subprocess.run(
                ["python3", "-c", _HEALTH_OVER_SOCKET, path],
                user=65534,
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert health.stdout.strip() == "200", health.stderr
        # A container with a network reaches the listener through its gateway (this machine)...
        docker_client.containers.run(
            container.image.id,
            ["python", "-c", f"import socket; socket.create_connection(({gateway!r}, {port}), 5)"],
            remove=True,
        )
        listener.accept()[0].close()
        # ... the service does not; nor the internet (one try).
        assert _probe(cut.url, gateway, port).startswith("OSError")
        assert _probe(cut.url, "1.1.1.1", 443).startswith("OSError")
        # Listed with the socket it is reached at.
        listed = {h.name: h for h in DockerBackend(namespace=NAMESPACE).services.running()}
        assert listed["cut"].url == cut.handle.url
        # A machine that cannot connect to the socket (Docker Desktop) is told so; nothing left.
        monkeypatch.setattr(docker_services, "reachable", lambda url: None)
        with pytest.raises(CapabilityMissing, match="cannot connect to the service's socket"):
            _serve(shell, "--serve cut3 --network none", PROBE_CELL)
        monkeypatch.undo()
        # A run folder too deep for a socket's path: refused before its container is made.
        deep = os.path.join(STORE, "d" * 90)
        os.makedirs(deep, exist_ok=True)
        monkeypatch.setenv("MLCONTAINER_RUN_DIR", deep)
        with pytest.raises(CapabilityMissing, match="longer than a Unix socket's path may be"):
            _serve(shell, "--serve cut4 --network none", PROBE_CELL)
        for name in ("cut3", "cut4"):
            assert _service_containers(docker_client, name) == []
            assert services.REGISTRY.get(name) is None
        assert os.listdir(deep) == []
    finally:
        listener.close()
        if services.REGISTRY.get("cut") is not None:
            services.REGISTRY.stop("cut")
        shutil.rmtree(os.path.join(STORE, "d" * 90), ignore_errors=True)


def _published(container) -> str:
    return container.attrs["NetworkSettings"]["Ports"]["8080/tcp"][0]["HostPort"]


def _cli(*argv, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "mlcontainer_magics.frontends.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def _served_by_cli(cli, name):
    """(url, snapshot id) from the line `mlcontainer serve` prints once it serves."""
    line = ""
    while f"service {name!r} at" not in line:
        line = cli.stdout.readline()
        assert line or cli.poll() is None, cli.stderr.read()
    return line.split(" at ", 1)[1].split()[0], line.split("(snapshot ", 1)[1].split(",")[0]


@docker
@pytest.mark.usefixtures("no_leaks")
def test_mlcontainer_serve_serves_a_snapshot_again_until_interrupted(docker_client):
    proc, (run_id, _) = _serve_in_process("original", "exit")
    cli = _cli("serve", run_id[:8], "--name", "again")
    try:
        url, new_id = _served_by_cli(cli, "again")
        assert json.loads(get(url, "/predict", b"3")[2])["x"] == 3
        record = _store().get(new_id)
        assert record["status"] == "serving" and record["rerun_of"] == run_id
        assert record["service"]["name"] == "again" and record["code"] == ECHO_CELL
        assert record["name"] == "again"  # was "original", the old service's (by default)
        cli.send_signal(signal.SIGINT)
        assert cli.wait(timeout=60) == 0
    finally:
        if cli.poll() is None:
            cli.kill()
    assert _service_containers(docker_client, "again") == []
    assert _store().get(new_id)["status"] == "stopped"


@docker
@pytest.mark.usefixtures("no_leaks")
def test_mlcontainer_stop_stops_a_service_another_process_serves(docker_client):
    proc, (run_id, _) = _serve_in_process("first", "exit")
    cli = _cli("serve", run_id, "--name", "elsewhere")
    try:
        url, new_id = _served_by_cli(cli, "elsewhere")
        listed = _cli("services")
        listed.wait(timeout=60)
        row = next(r for r in listed.stdout.read().splitlines() if r.startswith("elsewhere "))
        assert row.split()[1:4] == [url, new_id, "-"]  # its requests are the other's to count
        stop = _cli("stop", "elsewhere")
        stop.wait(timeout=60)
        assert stop.returncode == 0 and f"stopped service elsewhere (snapshot {new_id})" in (
            stop.stdout.read()
        ), stop.stderr.read()
        assert cli.wait(timeout=60) == 0  # its one service ended: `serve` is done
    finally:
        if cli.poll() is None:
            cli.kill()
    record = _store().get(new_id)
    assert record["status"] == "stopped" and record["reason"] == "stopped"
    assert _service_containers(docker_client, "elsewhere") == []
