"""Kubernetes runs where a real cluster differs from a kind one: stopping a cell, and bringing a
big --out value back over exec.

    python bench/bench_k8s.py [--repeat 5] [--size-mb 50] [--json out.json]

1. **stop**: the runner as PID 1 of a container with no init process (as a kubelet starts a
   pod's container) running a sleeping cell, `docker stop`ped (30 s grace), vs the same cell as
   a plain `python -c` under `docker run --init` (tini forwards SIGTERM, Python dies of it).
   Target: ratio of medians <= 2 (as prompt as an init process makes it). Before the runner
   handled SIGTERM itself, the first side took the whole grace period: 30 s.
2. **out**: a ``--size-mb`` file taken from a pod of the fake API server (tests/k8s_fake.py)
   over ``pods/exec`` by the backend's resumable, checksummed fetch, vs one plain exec of
   `cat` of the same file through the same server and client (the plain server doing the same
   work). Target: ratio <= 1.5. Then the fetch again with the stream cut 5 times at random
   points (reported: what resuming costs).

Both sides alternate in one process; the table gives min/median/max and the ratio of medians.
Needs the Docker engine and python:3.11-slim (`mlcontainer doctor --fix`) for 1. Everything it
makes is removed at the end. Exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from k8s_fake import FakeKubernetes  # noqa: E402

from mlcontainer_magics.backends.kubernetes.backend import fetch_out_file  # noqa: E402
from mlcontainer_magics.backends.kubernetes.client import Api, exec_output  # noqa: E402
from mlcontainer_magics.runner import RUNNER_COMMAND, RUNNER_PATH, runner_source  # noqa: E402

BASE = "python:3.11-slim"
SLEEPER = "import time\nprint('started', flush=True)\ntime.sleep(600)\n"
TARGET_STOP = 2.0
TARGET_OUT = 1.5
LABEL = "org.mlcontainer.bench"


def summary(samples: list[float]) -> dict:
    return {
        "min": min(samples),
        "median": statistics.median(samples),
        "max": max(samples),
        "samples": samples,
    }


# -- 1. stop ---------------------------------------------------------------------------------------


def _wait_started(container, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while b"started" not in container.logs(stdout=True, stderr=False):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the cell never started: {container.logs().decode()}")
        time.sleep(0.02)


def _timed_stop(container) -> tuple[float, int]:
    _wait_started(container)
    t0 = time.monotonic()
    container.stop(timeout=30)
    took = time.monotonic() - t0
    container.reload()
    return took, container.attrs["State"]["ExitCode"]


def bench_stop(repeat: int) -> dict:
    import docker

    from mlcontainer_magics.backends.docker.backend import DockerBackend
    from mlcontainer_magics.core.runs import prepare_workdir
    from mlcontainer_magics.core.spec import EnvSpec, RunSpec

    client = docker.from_env()
    backend = DockerBackend(client=client, namespace=f"mlcbench-{uuid.uuid4().hex[:8]}")
    ours: list[float] = []
    plain: list[float] = []
    codes: set[int] = set()
    made: list = []
    try:
        for _ in range(repeat):
            spec = RunSpec(SLEEPER, EnvSpec(BASE))
            workdir, _ = prepare_workdir(spec, {})
            made.append(workdir)
            (workdir / "runner.py").write_bytes(runner_source())
            opts = backend._container_options(spec, f"bench-{uuid.uuid4().hex[:8]}", workdir)
            opts["init"] = False  # PID 1, as in a pod
            c = client.containers.create(BASE, list(RUNNER_COMMAND), **opts)
            made.append(c)
            c.start()
            took, code = _timed_stop(c)
            ours.append(took)
            codes.add(code)
            p = client.containers.run(
                BASE, ["python", "-c", SLEEPER], init=True, detach=True, labels={LABEL: "1"}
            )
            made.append(p)
            plain.append(_timed_stop(p)[0])
    finally:
        for thing in made:
            if isinstance(thing, Path):
                shutil.rmtree(thing, ignore_errors=True)
            else:
                thing.remove(force=True, v=True)
    ratio = statistics.median(ours) / statistics.median(plain)
    return {
        "ours": summary(ours),
        "plain": summary(plain),
        "exit_codes": sorted(codes),
        "ratio": ratio,
        "target": TARGET_STOP,
        "ok": ratio <= TARGET_STOP and codes == {143},
    }


# -- 2. --out over exec --------------------------------------------------------------------------


def _exec_locally(root: Path):
    """pods/exec of the fake pod: the command run on this machine, /mlc being ``root``."""

    def run(command: list[str]):
        program, args = command[:2], command[2:]
        if program != list(RUNNER_COMMAND):
            program, args = command[:1], command[1:]  # cat FILE
        if program == list(RUNNER_COMMAND):
            program = [sys.executable, str(RUNNER_PATH)]
        done = subprocess.run(
            [*program, *(a.replace("/mlc", str(root)) for a in args)], capture_output=True
        )
        return done.stdout, done.stderr, done.returncode

    return run


def bench_out(repeat: int, size_mb: int) -> dict:
    root = Path(tempfile.mkdtemp(prefix="mlcbench-k8s-"))
    (root / "out").mkdir()
    data = os.urandom(size_mb << 20)
    (root / "out" / "x.bin").write_bytes(data)
    want = hashlib.sha256(data).hexdigest()
    ours: list[float] = []
    plain: list[float] = []
    cut: list[float] = []
    fake = FakeKubernetes(namespaces=("mlc",)).start()
    try:
        fake.write_kubeconfig(root / "kubeconfig")
        started = {}

        def pod(p):
            p.on_exec(_exec_locally(root))
            started["pod"] = p.pod["metadata"]["name"]
            while not p.cancelled:
                time.sleep(0.05)
            return 0

        fake.script("mlc-", run=pod)
        api = Api(fake.api_client())
        from kubernetes import client

        job = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "mlc-bench"},
            "spec": {
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [{"name": "cell", "image": BASE}],
                    }
                }
            },
        }
        client.BatchV1Api(api.client).create_namespaced_job("mlc", job)
        fake.wait_for(lambda: started.get("pod"))
        dest = root / "dest"
        dest.mkdir()

        def fetch_once() -> float:
            t0 = time.monotonic()
            digest = fetch_out_file(api, "mlc", started["pod"], "x.bin", len(data), dest)
            took = time.monotonic() - t0
            assert digest == want, "the file came back changed"
            return took

        def cat_once() -> float:
            t0 = time.monotonic()
            h = hashlib.sha256()
            with open(dest / "plain.bin", "wb") as f:
                cat = ["cat", "/mlc/out/x.bin"]
                for piece in exec_output(api, "mlc", started["pod"], "cell", cat):
                    f.write(piece)
                    h.update(piece)
            took = time.monotonic() - t0
            assert h.hexdigest() == want
            return took

        for _ in range(repeat):
            ours.append(fetch_once())
            plain.append(cat_once())
        for _ in range(repeat):  # last: the cuts stay armed
            fake.dropped = 0
            fake.drop_streams(every_bytes=(1 << 20, (size_mb << 20) // 2), times=5)
            cut.append(fetch_once())
    finally:
        fake.stop()
        shutil.rmtree(root, ignore_errors=True)
    ratio = statistics.median(ours) / statistics.median(plain)
    return {
        "size_mb": size_mb,
        "ours": summary(ours),
        "plain_cat": summary(plain),
        "ours_cut_5_times": summary(cut),
        "ratio": ratio,
        "target": TARGET_OUT,
        "ok": ratio <= TARGET_OUT,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--size-mb", type=int, default=50)
    parser.add_argument("--json")
    parser.add_argument("--only", choices=("stop", "out"))
    args = parser.parse_args(argv)
    results = {}
    if args.only in (None, "out"):
        results["out"] = bench_out(args.repeat, args.size_mb)
    if args.only in (None, "stop"):
        results["stop"] = bench_stop(args.repeat)
    rows = [
        ("stop, runner as PID 1 (no init)", "stop", "ours", "plain"),
        (f"--out {args.size_mb} MB over exec", "out", "ours", "plain_cat"),
    ]
    print(f"{'scenario':36} {'ours min/med/max (s)':26} {'plain med':>10} {'ratio':>6} target")
    for title, key, mine, base in rows:
        if key not in results:
            continue
        r = results[key]
        m = r[mine]
        print(
            f"{title:36} {m['min']:.3f}/{m['median']:.3f}/{m['max']:.3f}{'':6} "
            f"{r[base]['median']:>10.3f} {r['ratio']:>6.2f} <= {r['target']} "
            f"{'ok' if r['ok'] else 'MISSED'}"
        )
    if "out" in results:
        c = results["out"]["ours_cut_5_times"]
        spread = f"{c['min']:.3f}/{c['median']:.3f}/{c['max']:.3f}"
        print(f"{'  the same, stream cut 5 times':36} {spread}")
    if "stop" in results:
        print(f"  exit codes of the runner: {results['stop']['exit_codes']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
