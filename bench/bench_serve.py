"""Serving: requests per second and p50/p99 latency of a trivial /predict, 16 concurrent clients
(keep-alive where the server keeps the connection), against a plain standard-library HTTP server
running the same function in a container started with plain `docker run -p`.

Ours is what a notebook gets from `%%containerize --serve`: the URL of the kernel's proxy, in
front of the runner's server. The clients run in a process of their own (as an application
would), alternating ours and the baseline round by round so that the machine's load falls on
both alike. Targets (issue 15): throughput >= 0.9x, p99 <= 1.2x.

    python bench/bench_serve.py [--rounds 6] [--requests 100] [--clients 16]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

BASE = "python:3.11-slim"
FUNCTION = "def predict(x):\n    return x\n"
PLAIN_SERVER = (
    FUNCTION
    + """
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

ThreadingHTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
"""
)
# The clients: threads each sending `requests` POSTs on one connection while the server keeps
# it (HTTP/1.1), on a new one after it closes it (HTTP/1.0, as both servers here do).
CLIENTS = """
import http.client, json, sys, threading, time
host, port, clients, requests = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
latencies, failures = [], []

def client():
    conn = None
    for _ in range(requests):
        t = time.perf_counter()
        try:
            if conn is None:
                conn = http.client.HTTPConnection(host, port, timeout=30)
            conn.request("POST", "/predict", b"[1, 2, 3]", {"Content-Type": "application/json"})
            answer = conn.getresponse()
            body = answer.read()
            if answer.status != 200 or json.loads(body) != [1, 2, 3]:
                failures.append(answer.status)
            if answer.will_close:
                conn.close()
                conn = None
        except OSError as e:
            failures.append(repr(e))
            conn = None
        latencies.append(time.perf_counter() - t)

threads = [threading.Thread(target=client) for _ in range(clients)]
start = time.perf_counter()
for t in threads:
    t.start()
for t in threads:
    t.join()
elapsed = time.perf_counter() - start
latencies.sort()
print(json.dumps({"rps": len(latencies) / elapsed, "p50": latencies[len(latencies) // 2],
                  "p99": latencies[int(len(latencies) * 0.99)], "failures": len(failures)}))
"""


def measure(url: str, clients: int, requests: int) -> dict:
    host, port = url.split("//", 1)[1].rstrip("/").split(":")
    out = subprocess.run(
        [sys.executable, "-c", CLIENTS, host, port, str(clients), str(requests)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return json.loads(out.stdout)


def plain_container(name: str) -> str:
    """A plain `docker run -p` of the baseline server; its URL once it answers."""
    subprocess.run(
        ["docker", "run", "-d", "--rm", "--name", name, "-p", "127.0.0.1::8080", BASE,
         "python", "-c", PLAIN_SERVER],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    port = (
        subprocess.run(["docker", "port", name, "8080"], check=True, capture_output=True, text=True)
        .stdout.split(":")[-1]
        .strip()
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            measure(url, 1, 1)
            return url
        except subprocess.CalledProcessError:
            time.sleep(0.1)
    raise RuntimeError("the plain server did not answer")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--requests", type=int, default=100, help="per client and round")
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args(argv)

    from mlcontainer_magics.backends.docker.backend import DockerBackend
    from mlcontainer_magics.core import services
    from mlcontainer_magics.core import spec as specs
    from mlcontainer_magics.core.store import Store

    namespace = f"mlcbench-{uuid.uuid4().hex[:6]}"
    plain = f"{namespace}-plain"
    spec = specs.RunSpec(
        code=FUNCTION, env_spec=specs.EnvSpec(BASE), serve=specs.parse_serve("bench")
    )
    with tempfile.TemporaryDirectory() as store_dir:
        service = services.serve(spec, DockerBackend(namespace=namespace), store=Store(store_dir))
        try:
            urls = {"ours": service.url, "plain": plain_container(plain)}
            results: dict[str, list[dict]] = {"ours": [], "plain": []}
            for i in range(args.rounds):
                order = ("ours", "plain") if i % 2 == 0 else ("plain", "ours")
                for side in order:
                    results[side].append(measure(urls[side], args.clients, args.requests))
        finally:
            services.REGISTRY.stop("bench")
            subprocess.run(["docker", "rm", "-f", plain], capture_output=True)
    med = {
        side: {k: statistics.median(r[k] for r in rounds) for k in ("rps", "p50", "p99")}
        for side, rounds in results.items()
    }
    failures = {side: sum(r["failures"] for r in rounds) for side, rounds in results.items()}
    rps, p99 = med["ours"]["rps"] / med["plain"]["rps"], med["ours"]["p99"] / med["plain"]["p99"]
    print(f"{args.clients} clients x {args.requests} requests, {args.rounds} rounds (medians)")
    for side in ("ours", "plain"):
        m = med[side]
        print(
            f"  {side:5}  {m['rps']:7.0f} req/s  p50 {m['p50'] * 1000:6.1f} ms  "
            f"p99 {m['p99'] * 1000:6.1f} ms  failures {failures[side]}"
        )
    print(f"  throughput {rps:.2f}x (target >= 0.9)   p99 {p99:.2f}x (target <= 1.2)")
    ok = rps >= 0.9 and p99 <= 1.2 and not any(failures.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
