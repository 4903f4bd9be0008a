"""Plumbing for bench/run.py: timing, subprocesses, the docker CLI, a real jupyter server,
cleanup of everything the bench made, and the results table. No scenario logic here."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

NS_LABEL = "org.mlcontainer.namespace"
BENCH_LABEL = "org.mlcontainer.bench"  # on every image the plain-docker baselines build


# -- timing ---------------------------------------------------------------------------------


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def ratio(a, b):
    if a is None or b is None or b <= 0:
        return None
    return a / b


def busy_core_seconds() -> float:
    """CPU time the whole machine has spent busy (every process and the kernel: the engine,
    containerd, the shims, the containers, ours), in core-seconds since boot; Linux only."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait; steal (fields[7]) is the hypervisor's
    return (sum(fields[:7]) - idle) / os.sysconf("SC_CLK_TCK")


def stolen_core_seconds() -> float:
    """CPU time the hypervisor gave to others while this machine wanted it (steal), in
    core-seconds since boot; Linux only. A cloud machine's steal comes and goes: it explains
    a slow repetition that the load average does not."""
    with open("/proc/stat") as f:
        return int(f.readline().split()[8]) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """Busy core-seconds spent while each labelled piece of work ran (with what it left to
    finish in the background, where the caller waits for that too)."""

    def __init__(self) -> None:
        self.spent: dict[str, list[float]] = {}

    def measure(self, label: str, fn, *args):
        b0 = busy_core_seconds()
        try:
            return fn(*args)
        finally:
            self.spent.setdefault(label, []).append(round(busy_core_seconds() - b0, 2))


def alternate(i: int, ours, baseline):
    """Run both sides once, ours first on even repetitions, the baseline first on odd ones,
    so that drift in the machine's load falls on both sides alike."""
    if i % 2 == 0:
        return ours(), baseline()
    b = baseline()
    return ours(), b


def timed_run(argv, *, env=None, check=True, input=None, timeout=None):
    """(seconds, CompletedProcess) of a subprocess, wall clock."""
    t0 = time.perf_counter()
    proc = subprocess.run(
        argv, env=env, capture_output=True, text=True, input=input, timeout=timeout
    )
    dt = time.perf_counter() - t0
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(map(str, argv))[:200]} failed ({proc.returncode}):\n"
            f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        )
    return dt, proc


def docker(*args, env=None, check=True, timeout=None):
    """(seconds, CompletedProcess) of the plain docker CLI."""
    return timed_run(["docker", *args], env=env, check=check, timeout=timeout)


# -- results --------------------------------------------------------------------------------


@dataclass
class Row:
    """One measured comparison: median of ours against median of its baseline."""

    measure: str
    ours: list = field(default_factory=list)  # samples, in unit
    baseline: list = field(default_factory=list)  # samples, in unit
    target: float | None = None  # ours/baseline must be <= target (>= target if higher)
    primary: bool = True  # the row the scenario's verdict is on
    higher: bool = False  # the more the better (a rate): the ratio must reach the target
    unit: str = "s"  # of the samples: seconds, or a rate such as "req/s"
    ours_value: float | None = None  # when ours is derived (a difference)
    baseline_value: float | None = None
    ours_label: str = ""
    baseline_label: str = ""

    def to_dict(self, judge: bool) -> dict:
        o = self.ours_value if self.ours_value is not None else median(self.ours)
        b = self.baseline_value if self.baseline_value is not None else median(self.baseline)
        r = ratio(o, b)
        verdict = None
        if judge and self.target is not None and r is not None:
            verdict = r >= self.target if self.higher else r <= self.target
        paired = None
        if (
            self.ours_value is None
            and self.baseline_value is None
            and self.ours
            and len(self.ours) == len(self.baseline)
        ):
            # each repetition's own ratio: insensitive to load drifting between repetitions
            paired = statistics.median(x / y for x, y in zip(self.ours, self.baseline) if y)
        return {
            "measure": self.measure,
            "ours": o,
            "baseline": b,
            "ratio": r,
            "paired_ratio": paired,
            "target": self.target,
            "higher": self.higher,
            "unit": self.unit,
            "pass": verdict,
            "primary": self.primary,
            "ours_label": self.ours_label,
            "baseline_label": self.baseline_label,
            "ours_samples": [round(x, 6) for x in self.ours],
            "baseline_samples": [round(x, 6) for x in self.baseline],
        }


@dataclass
class Scenario:
    key: str
    number: int
    title: str
    rows: list = field(default_factory=list)
    checks: dict = field(default_factory=dict)  # name -> bool
    notes: list = field(default_factory=list)
    info: dict = field(default_factory=dict)
    error: str | None = None

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        ok = bool(ok)
        self.checks[name] = ok and self.checks.get(name, True)
        if not ok:
            self.notes.append(f"CHECK FAILED {name}: {detail}"[:2000])
        return ok

    def to_dict(self, judge: bool) -> dict:
        rows = [r.to_dict(judge) for r in self.rows]
        primary = [r for r in rows if r["primary"]]
        # Several judged rows (scenario 6: CLI and REST): the worst one speaks for it.
        worst = max(
            primary, key=lambda r: (r["ratio"] is not None, shortfall(r) or 0), default=None
        )
        verdicts = [r["pass"] for r in primary]
        return {
            "number": self.number,
            "title": self.title,
            "rows": rows,
            "ratio": worst["ratio"] if worst else None,
            "target": worst["target"] if worst else None,
            "pass": None if not verdicts or None in verdicts else all(verdicts),
            "checks": self.checks,
            "checks_passed": self.error is None and bool(self.checks) and all(self.checks.values()),
            "notes": self.notes,
            "info": self.info,
            "error": self.error,
        }


def shortfall(row: dict) -> float | None:
    """How far a row's ratio is from its target: above 1 it misses it (1.2 = 20% short)."""
    r, target = row["ratio"], row["target"]
    if r is None or not target:
        return None
    if row.get("higher"):
        return target / r if r > 0 else math.inf
    return r / target


def _fmt(x, unit="s"):
    if x is None:
        return "-"
    if unit != "s":
        return f"{x:.0f} {unit}"
    if abs(x) >= 10:
        return f"{x:.1f}s"
    if abs(x) >= 0.1:
        return f"{x:.3f}s"
    return f"{x * 1e3:.1f}ms"


def table(scenarios: dict, judge: bool) -> str:
    head = ("#", "measure", "ours", "baseline", "ratio", "paired", "target", "verdict", "n")
    lines = []
    for sc in scenarios.values():
        d = sc.to_dict(judge)
        for r in d["rows"]:
            if r["target"] is None:
                verdict = "info"
            elif not judge:
                verdict = "(short)"
            elif r["pass"] is None:
                verdict = "-"
            else:
                verdict = "PASS" if r["pass"] else f"MISS +{(shortfall(r) - 1) * 100:.0f}%"
            if not r["primary"] and verdict == "PASS":
                verdict = "pass"  # lower case: a secondary row, not the scenario's verdict
            n = max(len(r["ours_samples"]), len(r["baseline_samples"]))
            lines.append(
                (
                    f"{d['number']}{'*' if r['primary'] else ' '}",
                    r["measure"],
                    _fmt(r["ours"], r["unit"]),
                    _fmt(r["baseline"], r["unit"]),
                    "-" if r["ratio"] is None else f"{r['ratio']:.3f}",
                    "-" if r["paired_ratio"] is None else f"{r['paired_ratio']:.3f}",
                    "-"
                    if r["target"] is None
                    else f"{'>=' if r['higher'] else '<='} {r['target']:g}",
                    verdict,
                    str(n),
                )
            )
        if d["error"]:
            lines.append(
                (str(d["number"]), f"ERROR: {d['error']}"[:90], "", "", "", "", "", "", "")
            )
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]
    out = ["  ".join(str(c).ljust(w) for c, w in zip(head, widths))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)) for line in lines]
    return "\n".join(out)


def finite_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# -- a real jupyter server -----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JupyterServer:
    """`python -m jupyter_server` on 127.0.0.1 with a token, the extension enabled and the
    snapshot store given by MLCONTAINER_STORE; its config and runtime dirs are private."""

    def __init__(self, store: Path, workdir: Path, env: dict) -> None:
        self.port = free_port()
        self.token = os.urandom(16).hex()
        self.workdir = workdir
        cfg = workdir / "config"
        cfg.mkdir(parents=True, exist_ok=True)
        (workdir / "root").mkdir(exist_ok=True)
        (cfg / "jupyter_server_config.json").write_text(
            json.dumps(
                {
                    "ServerApp": {
                        "ip": "127.0.0.1",
                        "port": self.port,
                        "port_retries": 0,
                        "open_browser": False,
                        "allow_root": True,
                        "root_dir": str(workdir / "root"),
                        "jpserver_extensions": {"mlcontainer_magics": True},
                    },
                    "IdentityProvider": {"token": self.token},
                }
            )
        )
        self.env = {
            **env,
            "MLCONTAINER_STORE": str(store),
            "JUPYTER_CONFIG_DIR": str(cfg),
            "JUPYTER_RUNTIME_DIR": str(workdir / "runtime"),
            "JUPYTER_PLATFORM_DIRS": "1",
        }
        self.proc = None
        self.log = workdir / "server.log"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> JupyterServer:
        self._log = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyter_server"],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter server exited:\n{self.log.read_text()[-3000:]}")
            try:
                self.get("/api/status")
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.2)
        raise RuntimeError(
            f"jupyter server did not answer in {timeout}s:\n{self.log.read_text()[-3000:]}"
        )

    def get(self, path: str):
        req = urllib.request.Request(
            self.base + path, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)  # its own session, started here
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()
        self.proc = None


# -- cleanup --------------------------------------------------------------------------------


class Janitor:
    """Removes what this bench run made: containers, images and volumes labelled with one of
    its namespaces, and images the baselines built (labelled org.mlcontainer.bench=<run>).
    Nothing else: the engine is shared."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.namespaces: set[str] = set()
        self.servers: list[JupyterServer] = []
        self._client = None

    @property
    def client(self):
        if self._client is None:
            import docker

            self._client = docker.from_env(timeout=300)
        return self._client

    def namespace(self, ns: str) -> str:
        self.namespaces.add(ns)
        return ns

    def _images(self, label: str):
        return self.client.images.list(all=True, filters={"label": label})

    def remove_namespace(self, ns: str) -> None:
        c = self.client
        for ctr in c.containers.list(all=True, filters={"label": f"{NS_LABEL}={ns}"}):
            _quietly(ctr.remove, force=True)
        for _ in range(3):  # children before parents; a few passes settle it
            images = self._images(f"{NS_LABEL}={ns}")
            if not images:
                break
            for image in images:
                for tag in image.tags:
                    _quietly(c.images.remove, tag, force=True)
                _quietly(c.images.remove, image.id, force=True)
        for vol in c.volumes.list(filters={"label": f"{NS_LABEL}={ns}"}):
            _quietly(vol.remove, force=True)

    def remove_baseline_images(self) -> None:
        c = self.client
        label = f"{BENCH_LABEL}={self.run_id}"
        for ctr in c.containers.list(all=True, filters={"label": label}):
            _quietly(ctr.remove, force=True)
        for _ in range(3):
            images = self._images(label)
            if not images:
                break
            for image in images:
                for tag in image.tags:
                    _quietly(c.images.remove, tag, force=True)
                _quietly(c.images.remove, image.id, force=True)

    def cleanup(self, settle: float = 0.0) -> None:
        """Remove everything; with ``settle`` (after an interrupt), keep looking for that many
        seconds: a commit or build the engine was in the middle of can still land an image
        after its client went away."""
        for server in self.servers:
            _quietly(server.stop)
        deadline = time.monotonic() + settle
        quiet = 0
        while True:
            for ns in sorted(self.namespaces):
                _quietly(self.remove_namespace, ns)
            _quietly(self.remove_baseline_images)
            if time.monotonic() >= deadline:
                break
            time.sleep(2)
            try:
                quiet = quiet + 1 if not self.leftovers() and not self._busy() else 0
            except Exception:
                quiet = 0
            if quiet >= 3:
                break

    def _busy(self) -> bool:
        """Whether the engine is still committing one of our containers (paused) or running
        a build step of ours."""
        for ns in self.namespaces:
            if self.client.containers.list(all=True, filters={"label": f"{NS_LABEL}={ns}"}):
                return True
        return bool(
            self.client.containers.list(all=True, filters={"label": f"{BENCH_LABEL}={self.run_id}"})
        )

    def leftovers(self) -> dict:
        c = self.client
        left = {}
        for ns in sorted(self.namespaces):
            flt = {"label": f"{NS_LABEL}={ns}"}
            found = {
                "containers": [x.name for x in c.containers.list(all=True, filters=flt)],
                "images": [x.id for x in c.images.list(all=True, filters=flt)],
                "volumes": [x.name for x in c.volumes.list(filters=flt)],
            }
            found = {k: v for k, v in found.items() if v}
            if found:
                left[ns] = found
        base = [x.id for x in self._images(f"{BENCH_LABEL}={self.run_id}")]
        if base:
            left["baseline-images"] = base
        return left


def _quietly(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except Exception:  # cleanup goes on whatever one removal says
        pass


@contextmanager
def interrupts_become_keyboardinterrupt():
    """SIGTERM (and SIGHUP) raise KeyboardInterrupt, like Ctrl-C, so cleanup runs."""

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextmanager
def no_interrupts():
    """While cleaning up, a second Ctrl-C must not leave half the objects behind."""
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = {s: signal.signal(s, signal.SIG_IGN) for s in sigs}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
