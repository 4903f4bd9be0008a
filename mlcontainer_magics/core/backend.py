"""What a backend does: make an environment, run a cell in it, stop a run."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .spec import EnvSpec, RunSpec

# events(phase, **info): phases are "resolving", "building", "build-log", "cached", "built",
# "starting", "running", "collecting", "done", "failed". The status display and the store
# listen to these; backends never import either.
Events = Callable[..., None]
Output = Callable[[str, str], None]  # (stream name "stdout"|"stderr", text)


def no_events(phase: str, **info) -> None:
    pass


@dataclass
class Environment:
    image: str  # a reference that runs it (tag or id)
    image_id: str
    base_image_id: str
    lock: list = field(default_factory=list)
    cached: bool = False
    size: int | None = None
    build_log: str = ""


@dataclass
class RunResult:
    exit_code: int | None
    reason: str  # done | failed | timeout | oom | interrupted | stopped | killed
    stdout: str = ""
    stderr: str = ""
    container_id: str = ""


class Backend(ABC):
    name = "abstract"

    @abstractmethod
    def ensure_environment(self, env_spec: EnvSpec, *, events: Events = no_events,
                           rebuild: bool = False, lock: list | None = None) -> Environment:
        """Return an environment image for env_spec, building it only if none exists."""

    @abstractmethod
    def run(self, spec: RunSpec, env: Environment, workdir: Path, *, run_id: str,
            events: Events = no_events, output: Output | None = None) -> RunResult:
        """Run the cell with ``workdir`` as /mlc (its out/ writable); stream output as it comes."""

    @abstractmethod
    def stop(self, run_id: str) -> bool:
        """Stop a run started by this process or another; True if something was stopped."""
