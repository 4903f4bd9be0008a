"""One containerized run, start to finish: spec -> environment -> container -> result.

Shared by the magics, the CLI (rerun) and the server extension; knows nothing of IPython.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from .backends.base import Backend, Environment, Events, Output, RunResult, no_events
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

    @property
    def ok(self) -> bool:
        return self.result is not None and self.result.reason == "done"


def payload(spec: RunSpec) -> dict[str, bytes]:
    """Files the container gets under /mlc."""
    return {"runner.py": runner_source(), "cell.py": spec.code.encode("utf-8"), "out/.keep": b""}


def execute(spec: RunSpec, backend: Backend, *, events: Events = no_events,
            output: Output | None = None, rebuild: bool = False,
            run_id: str | None = None) -> RunOutcome:
    """Build (or reuse) the environment and run the cell; raises nothing for a failed cell."""
    outcome = RunOutcome(run_id or uuid.uuid4().hex[:12], spec)
    t0 = time.perf_counter()
    outcome.env = backend.ensure_environment(spec.env_spec, events=events, rebuild=rebuild)
    t1 = time.perf_counter()
    outcome.timings["environment"] = round(t1 - t0, 3)
    try:
        outcome.result = backend.run(spec, outcome.env, payload(spec), run_id=outcome.run_id,
                                     events=events, output=output)
    finally:
        outcome.timings["run"] = round(time.perf_counter() - t1, 3)
    return outcome


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
