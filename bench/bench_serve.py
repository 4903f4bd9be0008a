"""Scenario 10 of bench/run.py (`--only serve`): a served cell's trivial /predict, as users call
it (the URL of the kernel's proxy), against a plain standard-library ThreadingHTTPServer running
the same function in a container of the same image started with plain `docker run -p`.

What is here: the plain server, and the load generator. The load runs in processes of its own
(by default one per client: no client waits for another's turn at a GIL, and none shares the
process of our proxy), each client one thread with one `http.client.HTTPConnection` reused for
as long as the server keeps it (HTTP/1.1 keep-alive) and opened again when the server closes it
(HTTP/1.0): the same client code for both sides, and the time of a reconnect is in the latency
of the request that needed it. Every client sends from a common start for ``warmup`` + ``duration``
seconds; requests that end in the last ``duration`` seconds are the measured ones.

    python bench/bench_serve.py clients HOST PORT THREADS WARMUP DURATION   (one client process)
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit

FUNCTION = "def predict(x):\n    return x\n"
BODY = b"[1, 2, 3]"
HEADERS = {"Content-Type": "application/json"}
PORT = 8080  # the plain server's, inside its container
# What a user writes without this tool, with two changes that make the baseline faster: no
# access log (BaseHTTPRequestHandler writes a line per request to stderr by default), and the
# runner's listen backlog (128) for the default 5. With 5, 16 clients that reconnect for every
# request overflow it: the engine's proxy in front sees its connection dropped and tries again
# after 1 s, and that second is the baseline's p99 in most rounds.
PLAIN_SERVER = (
    FUNCTION
    + f"""
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        out = json.dumps(predict(json.loads(body))).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        pass

class Server(ThreadingHTTPServer):
    request_queue_size = 128

Server(("0.0.0.0", {PORT}), Handler).serve_forever()
"""
)


def plain_run_argv(image: str, name: str, labels: dict) -> list:
    """`docker run` of the plain server: detached, its port published on 127.0.0.1 only."""
    argv = ["docker", "run", "-d", "--name", name, "-p", f"127.0.0.1::{PORT}"]
    for key, value in labels.items():
        argv += ["--label", f"{key}={value}"]
    return [*argv, image, "python", "-c", PLAIN_SERVER]


def published_url(name: str) -> str:
    port = subprocess.run(
        ["docker", "port", name, str(PORT)], check=True, capture_output=True, text=True
    ).stdout
    return f"http://127.0.0.1:{port.splitlines()[0].rsplit(':', 1)[1]}"


def answers(url: str, timeout: float = 30.0) -> bool:
    """Whether ``url`` answers a POST /predict of BODY with BODY, trying for ``timeout`` s."""
    parts = urlsplit(url)
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
            conn.request("POST", "/predict", BODY, HEADERS)
            answer = conn.getresponse()
            ok = answer.status == 200 and json.loads(answer.read()) == json.loads(BODY)
            conn.close()
            return ok
        except (OSError, http.client.HTTPException):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)


def load(url: str, clients: int, procs: int, warmup: float, duration: float) -> dict:
    """Drive ``url`` with ``clients`` keep-alive clients spread over ``procs`` processes.

    Returns req/s, p50 and p99 (s) of the requests that ended in the measured window; how many
    were sent in all and failed; how many connections the clients opened; and the CPU the load
    generator itself used in the window, in cores (it shares the machine with the servers)."""
    if clients % procs:
        raise ValueError(f"{clients} clients do not split evenly over {procs} processes")
    parts = urlsplit(url)
    argv = [sys.executable, __file__, "clients", parts.hostname, str(parts.port)]
    argv += [str(clients // procs), str(warmup), str(duration)]
    children = [
        subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(procs)
    ]
    try:
        for child in children:  # all started (interpreters loaded) before the clock starts
            if child.stdout.readline().strip() != "ready":
                raise RuntimeError("a client process did not start")
        start = time.monotonic() + 0.05
        for child in children:
            child.stdin.write(f"{start}\n")
            child.stdin.flush()
        outs = [
            json.loads(child.communicate(timeout=warmup + duration + 120)[0]) for child in children
        ]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    latencies = sorted(x for out in outs for x in out["latencies"])
    if not latencies:
        raise RuntimeError(f"no request to {url} ended in the measured window: {outs}")
    total = {k: sum(out[k] for out in outs) for k in ("sent", "failures", "connections", "cpu")}
    return {
        "rps": len(latencies) / duration,
        "p50": percentile(latencies, 0.50),
        "p99": percentile(latencies, 0.99),
        "requests": len(latencies),
        "sent": total["sent"],
        "failures": total["failures"],
        "failure_examples": [x for out in outs for x in out["examples"]][:3],
        "connections": total["connections"],
        "client_cpu_cores": round(total["cpu"] / duration, 3),
    }


def percentile(ordered: list, q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _clients(host: str, port: int, threads: int, warmup: float, duration: float) -> None:
    """One client process: ``threads`` clients from the start the parent writes on stdin."""
    print("ready", flush=True)
    start = float(sys.stdin.readline())
    measured_from, until = start + warmup, start + warmup + duration
    expected = json.loads(BODY)
    counts = {"sent": 0, "failures": 0, "connections": 0}
    examples: list = []
    latencies: list = []
    lock = threading.Lock()

    def client() -> None:
        conn = None
        mine, sent, failures, connections = [], 0, 0, 0
        time.sleep(max(0.0, start - time.monotonic()))
        while True:
            t0 = time.monotonic()
            if t0 >= until:
                break
            error = None
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(host, port, timeout=30)
                    connections += 1
                conn.request("POST", "/predict", BODY, HEADERS)
                answer = conn.getresponse()
                body = answer.read()
                if answer.status != 200 or json.loads(body) != expected:
                    error = f"{answer.status} {body[:200]!r}"
                if answer.will_close:  # HTTP/1.0, or Connection: close
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException, ValueError) as e:
                error = repr(e)
                if conn is not None:
                    conn.close()
                conn = None
            t1 = time.monotonic()
            sent += 1
            if error is not None:
                failures += 1
                if len(examples) < 3:
                    examples.append(error)
            elif measured_from <= t1 < until:
                mine.append(round(t1 - t0, 7))
        if conn is not None:
            conn.close()
        with lock:
            latencies.extend(mine)
            counts["sent"] += sent
            counts["failures"] += failures
            counts["connections"] += connections

    workers = [threading.Thread(target=client) for _ in range(threads)]
    for worker in workers:
        worker.start()
    time.sleep(max(0.0, measured_from - time.monotonic()))
    cpu = time.process_time()
    time.sleep(max(0.0, until - time.monotonic()))
    cpu = time.process_time() - cpu
    for worker in workers:
        worker.join()
    print(json.dumps(dict(counts, cpu=cpu, examples=examples, latencies=latencies)))


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "clients":
        host, port, threads, warmup, duration = sys.argv[2:]
        _clients(host, int(port), int(threads), float(warmup), float(duration))
    else:
        sys.exit(__doc__)
