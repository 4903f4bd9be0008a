"""The runner's HTTP server (``runner.py --http PORT``) and the client that calls it.

The server runs here as a plain process on a folder laid out as /mlc is (the runner's MLC
constant pointed at it, as tests/test_runner_signals.py does), listening on a free port of
127.0.0.1 (``--http 0 127.0.0.1``; its serving line says which). Requests go through urllib,
raw sockets (for what urllib will not send) and ``mlcontainer_magics.service``. The last test
serves a cell from a container of the real engine, as the Docker backend starts runs.
"""

from __future__ import annotations

import ast
import io
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import NAMESPACE, wait_for
from mlcontainer_magics import service
from mlcontainer_magics.client import ServiceClient
from mlcontainer_magics.errors import NotFound, ServiceError, ServiceUnavailable, SpecError
from mlcontainer_magics.runner import (
    MESSAGE_PREFIX,
    SERVE_COMMAND,
    SERVE_PORT,
    SERVING_MARK,
    runner_source,
    serving_line,
)

NPY, PARQUET = "application/x-npy", "application/vnd.apache.parquet"
HOST = "127.0.0.1"
SERVE = {"name": "echo", "snapshot": "0123456789ab", "lock_digest": "sha256:feed"}
# A model that loads (with an --in value), then answers each kind of body in kind.
ECHO = """\
import numpy as np
import pandas as pd
print("model loaded, scale", scale, flush=True)

def predict(x):
    if isinstance(x, np.ndarray):
        return x * scale
    if isinstance(x, pd.DataFrame):
        return x.assign(b=x["a"] * scale)
    if isinstance(x, bytes):
        return x[::-1]
    if x == "boom":
        raise ValueError("boom at scale %d" % scale)
    if x == "array":
        return np.arange(3) * scale
    if x == "frame":
        return pd.DataFrame({"a": [1, 2]})
    if x == "set":
        return {1, 2}
    return {"echo": x, "scale": scale}
"""


class Served:
    """``python runner.py --http 0 127.0.0.1`` on ``folder`` (laid out as /mlc), its output in
    files; ``ready()`` waits for the serving line."""

    def __init__(self, folder: Path, cell: str, serve=None, inputs=None, env=None, where=None):
        folder.mkdir()
        source = runner_source()
        assert source.count(b'MLC = "/mlc"') == 1
        here = f"MLC = {json.dumps(str(folder))}".encode()
        (folder / "runner.py").write_bytes(source.replace(b'MLC = "/mlc"', here))
        (folder / "cell.py").write_text(cell, encoding="utf-8")
        (folder / "in").mkdir()
        (folder / "out").mkdir()
        records = {}
        for name, value in (inputs or {}).items():
            (folder / "in" / f"{name}.json").write_text(json.dumps(value))
            records[name] = {"file": f"in/{name}.json", "format": "json"}
        manifest = {
            "inputs": records,
            "outputs": [],
            "host": {"python": "{}.{}".format(*sys.version_info[:2])},
            "serve": {**SERVE, **(serve or {})},
        }
        (folder / "manifest.json").write_text(json.dumps(manifest))
        self._out, self._err = folder / "stdout", folder / "stderr"
        with open(self._out, "wb") as out, open(self._err, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(folder / "runner.py"), "--http", *(where or ("0", HOST))],
                stdout=out,
                stderr=err,
                cwd=folder,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            )
        self.url = None

    @property
    def stdout(self) -> str:
        return self._out.read_text("utf-8", "replace")

    @property
    def stderr(self) -> str:
        return self._err.read_text("utf-8", "replace")

    def serving_line(self) -> dict | None:
        return serving_line(self.stdout)

    def ready(self, timeout: float = 60.0) -> Served:
        wait_for(lambda: self.serving_line() or self.proc.poll() is not None, timeout)
        line = self.serving_line()
        assert line, f"no serving line (exit {self.proc.poll()}):\n{self.stdout}\n{self.stderr}"
        self.port = line["port"]
        self.url = f"http://{HOST}:{self.port}" if self.port else None
        return self

    def wait(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.close()
            pytest.fail(f"the server still ran after {timeout} s:\n{self.stderr}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def start(tmp_path):
    made = []

    def start(cell, **kwargs):
        made.append(Served(tmp_path / f"served{len(made)}", cell, **kwargs))
        return made[-1]

    yield start
    for served in made:
        served.close()


@pytest.fixture(scope="module")
def echo(tmp_path_factory):
    served = Served(tmp_path_factory.mktemp("echo") / "run", ECHO, inputs={"scale": 3})
    yield served.ready()
    served.close()


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http(url, path="/predict", body=None, content_type="application/json", headers=None):
    """(status, headers, body) of one request; ``body`` None is a GET."""
    headers = dict(headers or {})
    if body is not None:
        headers["Content-Type"] = content_type
    request = urllib.request.Request(url + path, data=body, headers=headers)
    try:
        with _NO_PROXY.open(request, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def raw(where: int | str, head: bytes) -> tuple[int, dict]:
    """Status and JSON of the answer to a hand-made request (what urllib will not send), to a
    port of 127.0.0.1 or a Unix socket's path."""
    if isinstance(where, str):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(30)
        s.connect(where)
    else:
        s = socket.create_connection((HOST, where), timeout=30)
    with s:
        s.sendall(head)
        s.shutdown(socket.SHUT_WR)  # a body shorter than its Content-Length ends here
        answer = b""
        for block in iter(lambda: s.recv(65536), b""):
            answer += block
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


# == the protocol =================================================================================


def test_the_cell_runs_with_its_in_values_then_one_serving_line_says_where(echo):
    assert "model loaded, scale 3" in echo.stdout
    assert echo.serving_line() == {"port": echo.port, "entry": "predict", "signature": "predict(x)"}
    assert echo.stdout.count(SERVING_MARK) == 1
    assert http(echo.url, "/healthz")[::2] == (200, b'{"status": "ok"}')


def test_json_in_json_out_on_the_entry_and_its_aliases(echo):
    for path in ("/predict", "/", "/predict?x=1"):
        status, headers, body = http(echo.url, path, b'{"a": [1, 2.5, null]}')
        assert status == 200, body
        assert headers["Content-Type"] == "application/json"
        assert json.loads(body) == {"echo": {"a": [1, 2.5, None]}, "scale": 3}


def test_npy_parquet_and_bytes_bodies_round_trip(echo):
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    status, headers, body = http(echo.url, body=npy(array), content_type=NPY)
    assert (status, headers["Content-Type"]) == (200, NPY)
    got = np.load(io.BytesIO(body))
    assert got.dtype == np.float32 and np.array_equal(got, array * 3)

    frame = pd.DataFrame({"a": [1, 2, 3], "s": ["x", "y", "z"]})
    for content_type in (PARQUET, "application/x-parquet"):
        status, headers, body = http(echo.url, body=frame.to_parquet(), content_type=content_type)
        assert (status, headers["Content-Type"]) == (200, PARQUET), body
        pd.testing.assert_frame_equal(pd.read_parquet(io.BytesIO(body)), frame.assign(b=[3, 6, 9]))

    png = bytes(range(256)) * 3
    for content_type in ("application/octet-stream", "image/png"):
        status, headers, body = http(echo.url, body=png, content_type=content_type)
        assert (status, headers["Content-Type"], body) == (
            200,
            "application/octet-stream",
            png[::-1],
        )


def test_a_json_request_gets_arrays_and_frames_as_json(echo):
    assert json.loads(http(echo.url, body=b'"array"')[2]) == [0, 3, 6]
    assert json.loads(http(echo.url, body=b'"frame"')[2]) == [{"a": 1}, {"a": 2}]
    # ... and so does any request that accepts JSON only.
    status, headers, body = http(
        echo.url,
        body=npy(np.array([1, 2])),
        content_type=NPY,
        headers={"Accept": "application/json"},
    )
    assert (status, headers["Content-Type"], json.loads(body)) == (200, "application/json", [3, 6])


def test_an_exception_is_a_500_with_its_traceback_and_the_next_request_succeeds(echo):
    status, _, body = http(echo.url, body=b'"boom"')
    error = json.loads(body)
    assert status == 500
    assert error["type"] == "ValueError"
    assert error["error"] == "predict raised ValueError: boom at scale 3"
    # The traceback starts in the cell: none of the server's own frames.
    assert error["traceback"].startswith("Traceback (most recent call last):\n  File ")
    assert "cell.py" in error["traceback"] and "runner.py" not in error["traceback"]
    assert "ValueError: boom at scale 3" in echo.stderr  # and in the service's log
    assert http(echo.url, body=b'"ok"')[0] == 200


def test_a_value_that_cannot_be_sent_back_is_a_500_that_says_what_to_return(echo):
    status, _, body = http(echo.url, body=b'"set"')
    assert status == 500
    assert json.loads(body)["error"].startswith("a set cannot be sent as JSON")
    assert "numpy array or a DataFrame" in json.loads(body)["error"]


def test_bad_requests_get_4xx_json_and_the_server_stays_up(echo):
    status, _, body = http(echo.url, body=b'{"a": ')
    assert status == 400 and json.loads(body)["error"].startswith("the body is not JSON")
    status, _, body = http(echo.url, body=b"not npy", content_type=NPY)
    assert status == 400 and "is not application/x-npy" in json.loads(body)["error"]

    status, _, body = http(echo.url, "/nope", b"{}")
    assert status == 404
    assert json.loads(body)["routes"] == ["POST /predict", "GET /healthz", "GET /metadata"]

    status, headers, body = http(echo.url, "/predict")
    assert (status, headers["Allow"]) == (405, "POST")
    assert (
        json.loads(body)["error"] == "GET /predict is not served; send the value with POST /predict"
    )
    status, headers, _ = http(echo.url, "/healthz", b"{}")
    assert (status, headers["Allow"]) == (405, "GET")

    chunked = b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    status, error = raw(echo.port, chunked)
    assert status == 411 and "Content-Length" in error["error"]
    status, error = raw(echo.port, b"POST /predict HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % 2**31)
    assert status == 413 and "1 GiB" in error["error"]  # refused before a byte was read
    status, error = raw(echo.port, b"POST /predict HTTP/1.0\r\nContent-Length: 10\r\n\r\n[1]")
    assert status == 400 and error["error"] == "the body ended after 3 of its 10 bytes"
    status, error = raw(echo.port, b"POST / HTTP/1.0\r\nContent-Length: ten\r\n\r\n")
    assert status == 400 and error["error"] == "Content-Length 'ten' is not a number of bytes"
    # What the standard library's parser refuses itself is answered in JSON too.
    status, error = raw(echo.port, b"BREW /predict HTTP/1.0\r\n\r\n")
    assert status == 501 and error["error"] == "Unsupported method ('BREW')"

    assert http(echo.url, body=b"[1]")[0] == 200


def test_one_access_log_line_per_request(echo):
    http(echo.url, "/healthz")
    http(echo.url, "/missing")
    # (written once the answer is out: it may come a moment after the client has it)
    for line in (r"^GET /healthz 200 \d+\.\d ms$", r"^GET /missing 404 \d+\.\d ms$"):
        assert wait_for(lambda: re.search(line, echo.stderr, re.M), 10), echo.stderr


def test_the_access_log_never_holds_a_request_and_writes_what_piled_up_at_once():
    from mlcontainer_magics.runner import mlc_runner

    unblocked, writes = threading.Event(), []

    class UnreadPipe:  # a log nobody reads for a while: its first write blocks
        def write(self, text):
            writes.append(text)
            unblocked.wait(30)

        def flush(self):
            pass

    log = mlc_runner._AccessLog(UnreadPipe())
    log.add("first\n")
    assert wait_for(lambda: writes, 10)  # the writer is stuck in its write...
    for i in range(100):
        log.add(f"{i}\n")  # ... and the requests' lines are queued, not waited on
    unblocked.set()
    log.close()
    assert writes == ["first\n", "".join(f"{i}\n" for i in range(100))]
    assert not log.thread.is_alive()


def test_a_body_the_container_cannot_read_is_415(start, tmp_path):
    # numpy "not installed": a stand-in that fails to import, first on the path.
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    (stubs / "numpy.py").write_text("raise ImportError('No module named numpy')\n")
    served = start("def predict(x):\n    return x\n", env={"PYTHONPATH": str(stubs)}).ready()
    status, _, body = http(served.url, body=npy(np.array([1])), content_type=NPY)
    error = json.loads(body)
    assert status == 415
    assert error["error"] == (
        "a application/x-npy body needs numpy to be read, and this Python lacks it; "
        "serve the cell with -r numpy, or send JSON"
    )
    assert error["needs"] == ["numpy"]
    assert http(served.url, body=b"[1]")[2] == b"[1]"


def test_metadata_counts_the_calls_and_their_errors(start):
    served = start("def predict(x):\n    return 1 / x\n").ready()
    for body in (b"1", b"2", b"0", b"{", b"4"):
        http(served.url, body=body)
    http(served.url, "/healthz")  # not calls: not counted
    http(served.url, "/predict")
    status, _, body = http(served.url, "/metadata")
    meta = json.loads(body)
    assert status == 200
    assert {k: meta[k] for k in ("requests", "errors")} == {"requests": 5, "errors": 2}
    assert {k: meta[k] for k in ("name", "snapshot", "lock_digest", "entry", "signature")} == {
        **SERVE,
        "entry": "predict",
        "signature": "predict(x)",
    }
    assert meta["python"] == "{}.{}".format(*sys.version_info[:2])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", meta["started"])


@pytest.mark.parametrize("python", ["3.7+", "3.6"])
def test_16_concurrent_clients_all_get_their_answers(start, tmp_path, python):
    env = {}
    if python == "3.6":  # no ThreadingHTTPServer: the runner makes its own
        (tmp_path / "sitecustomize.py").write_text(
            "import http.server\ndel http.server.ThreadingHTTPServer\n"
        )
        env["PYTHONPATH"] = str(tmp_path)
    # The barrier opens only when all 16 calls are in the function at once: a server that
    # handled them one by one would answer each with a 500 (BrokenBarrierError) after 20 s.
    served = start(
        "import threading\nbarrier = threading.Barrier(16, timeout=20)\n"
        "def predict(x):\n    barrier.wait()\n    return {'square': x * x}\n",
        env=env,
    ).ready()
    ocr = service(served.url)
    answers = {}

    def call(i):
        answers[i] = ocr(i)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert answers == {i: {"square": i * i} for i in range(16)}
    assert ocr.metadata()["requests"] == 16


# == on a Unix socket (a service with --network none) ============================================


@pytest.fixture
def short_dir():
    """A folder whose socket path fits a Unix socket's (pytest's tmp_path may not)."""
    import tempfile

    folder = tempfile.mkdtemp(prefix="mlc-sock-", dir="/tmp")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("python", ["3.7+", "3.6"])
def test_on_a_unix_socket_it_serves_anyone_says_where_and_logs_each_request(
    start, tmp_path, short_dir, python
):
    from mlcontainer_magics.core.proxy import Proxy

    env = {}
    if python == "3.6":  # no ThreadingHTTPServer: the runner makes its own
        (tmp_path / "sitecustomize.py").write_text(
            "import http.server\ndel http.server.ThreadingHTTPServer\n"
        )
        env["PYTHONPATH"] = str(tmp_path)
    path = os.path.join(short_dir, "serve.sock")
    # One left by a server that was killed: taken over.
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()
    served = start(ECHO, inputs={"scale": 2}, env=env, where=(f"unix:{path}",)).ready()
    assert served.serving_line() == {
        "port": None,
        "socket": path,
        "entry": "predict",
        "signature": "predict(x)",
    }
    # Any user may connect: the host's user is rarely the container's.
    assert stat.S_ISSOCK(os.stat(path).st_mode) and stat.S_IMODE(os.stat(path).st_mode) == 0o666
    head = b"POST /predict HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\n"
    assert raw(path, head + b'"abc"') == (200, {"echo": "abc", "scale": 2})
    assert raw(path, b"GET /healthz HTTP/1.0\r\n\r\n") == (200, {"status": "ok"})
    assert raw(path, b"BREW /predict HTTP/1.0\r\n\r\n")[0] == 501  # answered by send_error
    # The kernel's proxy fronts it: a TCP port here, the socket behind.
    proxy = Proxy(upstream=path)
    try:
        assert service(proxy.url)([1, 2]) == {"echo": [1, 2], "scale": 2}
        assert proxy.served == {path: 1}
    finally:
        proxy.close()
    for line in (r"^POST /predict 200 \d+\.\d ms$", r"^GET /healthz 200 ", r"^BREW /predict 501$"):
        assert wait_for(lambda: re.search(line, served.stderr, re.M), 10), served.stderr
    assert "Traceback" not in served.stderr
    served.proc.send_signal(signal.SIGTERM)
    assert served.wait(10) == 0


def test_the_address_of_a_unix_socket_client_is_unix():
    from mlcontainer_magics.runner.mlc_runner import _http_handler

    handler = _http_handler(None)
    request = handler.__new__(handler)  # as the server makes one, without the connection
    for address, said in ((("10.0.0.1", 4711), "10.0.0.1"), ("", "unix"), ("/tmp/c.sock", "unix")):
        request.client_address = address
        assert request.address_string() == said


# == the cell's outcome, and SIGTERM ==============================================================


def test_a_cell_without_the_entry_function_exits_2_and_says_so(start):
    for cell, serve in (
        ("x = 1\n", None),
        ("predict = 3\n", None),
        ("def f(x): pass\n", {"entry": "embed"}),
    ):
        served = start(cell, serve=serve)
        assert served.wait() == 2
        entry = (serve or {}).get("entry", "predict")
        assert served.stderr.startswith(
            f"{MESSAGE_PREFIX}the cell defines no function {entry}(...); "
        ), served.stderr
        assert SERVING_MARK not in served.stdout


def test_another_entry_is_served_at_its_name(start):
    served = start(
        "def embed(text, dim=2):\n    return [len(text)] * dim\n", serve={"entry": "embed"}
    )
    served.ready()
    assert served.serving_line()["signature"] == "embed(text, dim=2)"
    for path in ("/embed", "/predict", "/"):
        assert json.loads(http(served.url, path, b'"abc"')[2]) == [3, 3]
    assert http(served.url, "/other", b'"abc"')[0] == 404
    client = service(served.url)
    assert client.entry == "embed"  # asked of the service
    assert client("ab") == [2, 2]


def test_a_failing_cell_exits_1_and_never_serves(start):
    served = start("print('loading')\nraise RuntimeError('no model file')\n")
    assert served.wait() == 1
    assert "RuntimeError: no model file" in served.stderr
    assert "loading" in served.stdout and SERVING_MARK not in served.stdout


def test_sigterm_lets_the_request_in_flight_finish_then_exits_0(start):
    served = start(
        "import time\n"
        "def predict(seconds):\n"
        "    print('working', flush=True)\n"
        "    time.sleep(seconds)\n"
        "    return 'slept %s' % seconds\n"
    ).ready()
    answer = {}
    slow = threading.Thread(target=lambda: answer.update(r=http(served.url, body=b"3")))
    slow.start()
    assert wait_for(lambda: "working" in served.stdout, 30)
    served.proc.send_signal(signal.SIGTERM)

    def refused():
        try:
            socket.create_connection(("127.0.0.1", served.port), timeout=1).close()
        except OSError:
            return True
        return False

    assert wait_for(refused, 5), "still accepting connections after SIGTERM"
    assert served.proc.poll() is None  # ... but still finishing the request
    slow.join(30)
    assert answer["r"][::2] == (200, b'"slept 3"')
    assert served.wait(10) == 0
    assert "POST /predict 200" in served.stderr


def test_a_thread_the_cell_left_running_does_not_hold_the_exit(start):
    served = start(
        "import threading, time\n"
        "threading.Thread(target=time.sleep, args=(600,)).start()  # not a daemon\n"
        "def predict(x):\n    return x\n"
    ).ready()
    served.proc.send_signal(signal.SIGTERM)
    assert served.wait(10) == 0


# == the client ===================================================================================


def test_the_client_sends_and_reads_every_format(echo):
    client = service(echo.url, entry="predict")
    assert client.url == echo.url and client.entry == "predict"
    assert repr(client) == f"ServiceClient(url={echo.url!r}, entry='predict')"
    assert client.health() == {"status": "ok"}
    assert client.metadata()["name"] == "echo"
    assert client({"k": [1, 2]}) == {"echo": {"k": [1, 2]}, "scale": 3}
    got = client(np.eye(3))
    assert isinstance(got, np.ndarray) and np.array_equal(got, np.eye(3) * 3)
    frame = pd.DataFrame({"a": [5, 6]})
    pd.testing.assert_frame_equal(client(frame), frame.assign(b=[15, 18]))
    assert client(b"\x00\x01\x02") == b"\x02\x01\x00"
    assert client(np.int64(7)) == {"echo": 7, "scale": 3}  # numpy scalars go as JSON numbers
    # What cannot travel is refused before anything is sent, saying why.
    with pytest.raises(SpecError, match="a object cannot be sent as JSON"):
        client(object())
    with pytest.raises(SpecError, match=r"a float cannot be sent as JSON \(Out of range"):
        client(float("nan"))
    with pytest.raises(SpecError, match=f"a DataFrame cannot be sent as {PARQUET} "):
        client(pd.DataFrame({"a": [1, "x"]}))  # a column of mixed types has no Parquet type


def test_an_error_answer_raises_service_error_with_the_remote_traceback(echo):
    client = service(echo.url)
    with pytest.raises(ServiceError) as caught:
        client("boom")
    e = caught.value
    assert (e.status, e.payload["type"]) == (500, "ValueError")
    message = str(e)
    assert message.startswith(
        f"the service at {echo.url} answered 500: predict raised ValueError: boom at scale 3\n"
    )
    assert "cell.py" in message and message.endswith("ValueError: boom at scale 3")
    with pytest.raises(ServiceError, match="answered 404: there is no /nope here") as caught:
        ServiceClient(echo.url, entry="nope")(1)
    assert caught.value.status == 404


def test_a_service_that_does_not_answer_raises_service_unavailable(start):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ServiceUnavailable, match=r"does not answer \(.*refused"):
        service(f"http://127.0.0.1:{port}").health()
    served = start("import time\ndef predict(x):\n    time.sleep(x)\n    return x\n").ready()
    with pytest.raises(ServiceUnavailable, match="did not answer POST / within 0.5 s"):
        service(served.url, timeout=0.5)(3)


@pytest.fixture
def services_store(tmp_path, monkeypatch):
    """An empty snapshot store where service() looks for names: the environment's, and the
    magics' where a shell of this process has them loaded (a kernel's store wins)."""
    from mlcontainer_magics.core import store as store_module

    folder = str(tmp_path / "store")
    monkeypatch.setenv("MLCONTAINER_STORE", folder)
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    magics = shell.magics_manager.registry.get("ContainerizeMagics") if shell else None
    if magics is not None:
        monkeypatch.setattr(magics, "store_dir", folder)
    return store_module.Store(folder)


def _record(store, name, url, status="serving", created=None, kernel=None):
    from mlcontainer_magics.core.owner import OWNER

    sid = store.new_id({"name": name})
    info = {"name": name, "url": url, "port": 0, "entry": "predict", "replicas": 1}
    record = {"id": sid, "status": status, "created": created, "service": info}
    store.put({**record, "kernel": kernel or OWNER})


def test_a_name_is_the_newest_running_service_of_that_name(echo, services_store):
    with pytest.raises(NotFound, match="No service 'echo' is running, nor any other; .* URL"):
        service("echo")
    now = time.time()
    dead = f"{socket.gethostname()}:{2**22 + 7}"  # no such process
    _record(services_store, "echo", "http://127.0.0.1:9", created=now - 60)  # replaced
    _record(services_store, "echo", echo.url + "/", created=now)
    _record(services_store, "echo", "http://127.0.0.1:9", status="stopped", created=now + 1)
    # Its process died: still "serving" in its record until prune, but not running.
    _record(services_store, "echo", "http://127.0.0.1:9", created=now + 2, kernel=dead)
    _record(services_store, "ocr", "http://127.0.0.1:9", created=now)
    _record(services_store, "gone", "http://127.0.0.1:9", created=now, kernel=dead)
    client = service("echo")
    assert repr(client) == f"ServiceClient('echo', url={echo.url!r}, entry='predict')"
    assert client([1]) == {"echo": [1], "scale": 3}
    with pytest.raises(NotFound, match="No service 'translate' is running; running: echo, ocr."):
        service("translate")
    with pytest.raises(NotFound, match="No service 'gone' is running"):
        service("gone")


def test_service_is_exported_lazily():
    code = (
        "import sys, mlcontainer_magics as m\n"
        "assert 'mlcontainer_magics.client' not in sys.modules\n"
        "from mlcontainer_magics import service\n"
        "assert service is m.service and 'mlcontainer_magics.client' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_runner_keeps_to_python_3_6_syntax():
    ast.parse(runner_source(), feature_version=(3, 6))


# == in a container of the real engine ============================================================


@pytest.mark.docker
def test_a_cell_served_from_a_container_answers_on_its_published_port(docker_client, no_leaks):
    from mlcontainer_magics.backends.docker.backend import DockerBackend
    from mlcontainer_magics.core.runs import prepare_workdir
    from mlcontainer_magics.core.spec import EnvSpec, RunSpec

    base = "python:3.11-slim"
    spec = RunSpec("def predict(x):\n    return {'sum': sum(x)}\n", EnvSpec(base))
    workdir, _ = prepare_workdir(spec, {})
    container = None
    try:
        manifest = json.loads((workdir / "manifest.json").read_text())
        (workdir / "manifest.json").write_text(json.dumps({**manifest, "serve": SERVE}))
        backend = DockerBackend(client=docker_client, namespace=NAMESPACE)
        opts = backend._container_options(spec, f"serve-{uuid.uuid4().hex[:8]}", workdir)
        opts["ports"] = {f"{SERVE_PORT}/tcp": ("127.0.0.1", None)}
        container = docker_client.containers.run(base, list(SERVE_COMMAND), detach=True, **opts)
        assert wait_for(lambda: SERVING_MARK.encode() in container.logs(stderr=False), 60), (
            container.logs().decode()
        )
        container.reload()
        port = container.attrs["NetworkSettings"]["Ports"][f"{SERVE_PORT}/tcp"][0]["HostPort"]
        client = service(f"http://127.0.0.1:{port}")
        assert client([1, 2, 3]) == {"sum": 6}
        assert client.metadata()["python"] == "3.11"
        with pytest.raises(ServiceError, match="answered 500: predict raised TypeError"):
            client("abc")
        container.stop(timeout=15)
        assert container.wait(timeout=15)["StatusCode"] == 0
        assert "POST / 200" in container.logs(stdout=False, stderr=True).decode()
    finally:
        if container is not None:
            container.remove(force=True, v=True)
        shutil.rmtree(workdir, ignore_errors=True)
