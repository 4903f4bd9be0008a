"""One containerized run, start to finish: spec -> environment -> container -> result.

Shared by the magics, the CLI (rerun) and the server extension; knows nothing of IPython.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .backends.base import Backend, Environment, Events, Output, RunResult, no_events
from . import transfer
from .errors import RunError
from .runner import runner_source
from .spec import RunSpec

# Words a person reads in one line, per reason a run ended.
REASONS = {
    "done": "done",
    "failed": "the cell raised an error",
    "timeout": "timed out",
    "oom": "out of memory",
    "interrupted": "interrupted",
    "stopped": "stopped",
    "killed": "killed from outside",
}


@dataclass
class RunOutcome:
    run_id: str
    spec: RunSpec
    env: Environment | None = None
    result: RunResult | None = None
    timings: dict = field(default_factory=dict)
    inputs: dict = field(default_factory=dict)  # name -> {format, digest, size}
    outputs: dict = field(default_factory=dict)  # name -> {format, digest, size} or {error}
    values: dict = field(default_factory=dict)  # the --out values, read back

    @property
    def ok(self) -> bool:
        return self.result is not None and self.result.reason == "done"


def prepare_workdir(spec: RunSpec, inputs: dict) -> tuple[Path, dict]:
    """The run's own folder, mounted at /mlc: runner, cell, manifest, values in, out/."""
    workdir = Path(tempfile.mkdtemp(prefix="mlc-run-"))
    try:
        workdir.chmod(0o755)
        (workdir / "runner.py").write_bytes(runner_source())
        (workdir / "cell.py").write_text(spec.code, encoding="utf-8")
        records = transfer.write_inputs(inputs, workdir / "in") if inputs else {}
        manifest = {"inputs": records, "outputs": list(spec.outputs),
                    "host": transfer.host_capabilities()}
        (workdir / "manifest.json").write_text(json.dumps(manifest))
        out = workdir / "out"
        out.mkdir()
        out.chmod(0o777)  # the container's non-root user writes here
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return workdir, records


def execute(spec: RunSpec, backend: Backend, *, inputs: dict | None = None,
            events: Events = no_events, output: Output | None = None, rebuild: bool = False,
            run_id: str | None = None) -> RunOutcome:
    """Build (or reuse) the environment and run the cell; a failed cell raises nothing."""
    outcome = RunOutcome(run_id or uuid.uuid4().hex[:12], spec)
    t0 = time.perf_counter()
    outcome.env = backend.ensure_environment(spec.env_spec, events=events, rebuild=rebuild)
    t1 = time.perf_counter()
    outcome.timings["environment"] = round(t1 - t0, 3)
    workdir, outcome.inputs = prepare_workdir(spec, inputs or {})
    try:
        outcome.result = backend.run(spec, outcome.env, workdir, run_id=outcome.run_id,
                                     events=events, output=output)
        t2 = time.perf_counter()
        outcome.timings["run"] = round(t2 - t1, 3)
        if outcome.result.reason == "done" and spec.outputs:
            events("collecting")
            outcome.values, outcome.outputs = transfer.read_outputs(workdir / "out",
                                                                    spec.outputs)
            outcome.timings["collect"] = round(time.perf_counter() - t2, 3)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return outcome


def output_errors(outcome: RunOutcome) -> list[str]:
    return [f"--out {name}: {rec['error']}" for name, rec in outcome.outputs.items()
            if "error" in rec]


def failure(outcome: RunOutcome) -> RunError:
    """The error a failed run raises: one line of what happened, then the container's traceback."""
    r = outcome.result
    what = REASONS.get(r.reason, r.reason)
    if r.reason == "timeout":
        head = f"Stopped after {outcome.spec.timeout:g} s (--timeout); the container was removed."
    elif r.reason == "oom":
        limit = f" of {outcome.spec.memory // 2**20} MiB" if outcome.spec.memory else ""
        head = f"Out of memory: the cell used more than its --memory limit{limit}."
    else:
        head = f"The containerized cell {what} (exit code {r.exit_code})."
    return RunError(head, exit_code=r.exit_code, logs=_traceback_tail(r.stderr), reason=r.reason)


def _traceback_tail(stderr: str, limit: int = 60) -> str:
    lines = stderr.rstrip().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback")]
    if starts:
        lines = lines[starts[-1]:]
    return "\n".join(lines[-limit:])
