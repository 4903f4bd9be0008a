"""A stand-in for the runner's HTTP server, for the sidebar's tests: it answers ``GET /metadata``
and ``GET /healthz`` as serve-design's wire protocol fixes them and counts ``POST /predict``.

Standard library only, so the same source serves in a test's thread (``start``) and in a real
container (``python -c SOURCE PORT NAME SNAPSHOT``, see ``container_command``). Also here: the
record a kernel keeps of a service (``service_record``) and a port that accepts connections but
never answers (``silent_port``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CONTAINER_PORT = 8080


def handler_for(metadata: dict):
    """A request handler answering as the runner does, counting into ``metadata``."""
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, data) -> None:
            body = json.dumps(data).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # noqa: N802 - BaseHTTPRequestHandler's name
            if self.path == "/metadata":
                with lock:
                    self._send(200, dict(metadata))
            elif self.path == "/healthz":
                self._send(200, {"status": "ok"})
            elif self.path == "/broken/metadata":  # as from a server that is not a service
                self._send(200, ["not", "metadata"])
            else:
                self._send(404, {"error": f"no route {self.path}"})

        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path in ("/", "/predict"):
                with lock:
                    metadata["requests"] += 1
                self._send(200, {"ok": True})
            else:
                with lock:
                    metadata["errors"] += 1
                self._send(404, {"error": f"no route {self.path}"})

        def log_message(self, *args):
            pass

    return Handler


def metadata(name: str, snapshot: str, **extra) -> dict:
    """What a freshly started runner's ``/metadata`` says."""
    return {
        "name": name,
        "snapshot": snapshot,
        "lock_digest": "xxh3-128:00112233445566778899aabbccddeeff",
        "entry": "predict",
        "signature": "predict(x)",
        "requests": 0,
        "errors": 0,
        "started": datetime.now(timezone.utc).isoformat(),
        "python": "3.11",
        **extra,
    }


def start(name: str = "svc", snapshot: str = "0" * 12, **extra) -> ThreadingHTTPServer:
    """A server on 127.0.0.1 (a free port) in a daemon thread; ``shutdown()`` it when done."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(metadata(name, snapshot, **extra)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def url_of(server: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def silent_port() -> socket.socket:
    """A listening socket nobody reads: connections are accepted (by the kernel) and never
    answered, as from a server that hangs. Close it when done."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock


def container_command(name: str, snapshot: str) -> list[str]:
    """The command that runs this server in a container, on ``CONTAINER_PORT``."""
    source = Path(__file__).read_text()
    return ["python", "-c", source, str(CONTAINER_PORT), name, snapshot]


def service_record(sid: str, name: str, url: str, **fields) -> dict:
    """A serving snapshot as the kernel records it (serve-design's Records)."""
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    return {
        "id": sid,
        "name": name,
        "notebook": "nb/serve.ipynb",
        "status": "serving",
        "created": time.time() - 90,
        # This process, as core.owner.OWNER says it (this file runs in containers too: no
        # import of the package): a live kernel's record.
        "kernel": f"{socket.gethostname()}:{os.getpid()}",
        "env_image": f"mlcontainer-env:{sid}",
        "service": {
            "name": name,
            "url": url,
            "port": port,
            "entry": "predict",
            "replicas": 1,
            "backend": "docker",
        },
        **fields,
    }


@contextmanager
def serving_container(client, namespace: str, sid: str, name: str):
    """A real container serving as a service of snapshot ``sid``, labelled as the product
    labels a service's container, its port published on 127.0.0.1: (container, its URL) once
    it answers; force-removed at the end."""
    from mlcontainer_magics.backends.docker.engine import make_labels

    container = client.containers.run(
        "python:3.11-slim",
        container_command(name, sid),
        detach=True,
        name=f"{namespace}-service-{name}-{sid[:8]}",
        labels=make_labels(
            namespace, role="service", service=name, run=sid, snapshot=sid, name=name, owner="test"
        ),
        ports={f"{CONTAINER_PORT}/tcp": ("127.0.0.1", None)},
    )
    try:
        yield container, _answering_url(container)
    finally:
        try:
            container.remove(force=True)
        except Exception:  # noqa: BLE001 - already gone is fine
            pass


def _answering_url(container, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while True:
        container.reload()
        bound = (container.ports or {}).get(f"{CONTAINER_PORT}/tcp")
        if bound:
            url = f"http://127.0.0.1:{bound[0]['HostPort']}"
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2):  # noqa: S310
                    return url
            except OSError:
                pass
        if container.status == "exited" or time.monotonic() > deadline:
            raise RuntimeError(f"the service container did not answer: {container.logs()!r}")
        time.sleep(0.2)


def post(url: str, path: str = "/predict") -> dict:
    """One request, as a client of the service makes it."""
    request = urllib.request.Request(
        url + path, data=b"[1, 2]", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as r:  # noqa: S310 - loopback only
        return json.loads(r.read())


if __name__ == "__main__":  # in a container: PORT NAME SNAPSHOT
    port, name, snapshot = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    # PID 1 ignores SIGTERM unless it says otherwise; the runner stops on it, so does this.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    ThreadingHTTPServer(("0.0.0.0", port), handler_for(metadata(name, snapshot))).serve_forever()
