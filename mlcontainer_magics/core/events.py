"""What a run tells its listeners as it goes: one definition of the phases.

Backends and the core send ``events(Phase.X, **info)``; the status display and the magics
listen. A Phase is a ``str``, so listeners may compare with plain strings too.

In the order a run sends them::

    mounted(mounts, seconds)  resolving(base)
    cached(image, size) | building(image, apt, requirements, on)  build-log(line)...
    built(image, size)  pushing(image)  starting  scheduling(message)
    pulling(image, node)  running(container, session)  linked(parents, names)
    mapped(done, running, failed, count, rate, eta, failures)...  [a map: as items go]
    collecting  recorded(snapshot)
    serving(name, url, snapshot)  [a served cell: it answers at url]
    finished(status, message, detail, exit_code)
"""

from __future__ import annotations

from enum import Enum
from typing import Callable


class Phase(str, Enum):
    MOUNTED = "mounted"  # the mounts' digests are taken: mounts, seconds
    RESOLVING = "resolving"
    CACHED = "cached"
    BUILDING = "building"
    BUILD_LOG = "build-log"
    BUILT = "built"
    PUSHING = "pushing"
    STARTING = "starting"
    SCHEDULING = "scheduling"  # a Kubernetes pod waiting for a node
    PULLING = "pulling"  # ... then for its image
    RUNNING = "running"
    # A map's progress, as its items start and end: done, running, failed, count (items),
    # rate (items ended per second), eta (seconds, None until one has ended), failures
    # ([{index, reason, why}]: why, one line).
    MAPPED = "mapped"
    SERVING = "serving"  # a served cell answers: name, url, snapshot
    COLLECTING = "collecting"
    LINKED = "linked"  # the inputs' lineage: parents (lineage.link), names {snapshot: name}
    RECORDED = "recorded"  # the snapshot exists: its id
    FINISHED = "finished"  # sent by the front end once the outcome is known

    def __str__(self) -> str:
        return self.value


ENV_PHASES = (Phase.RESOLVING, Phase.BUILDING, Phase.PUSHING)
RUN_PHASES = (
    Phase.STARTING,
    Phase.SCHEDULING,
    Phase.PULLING,
    Phase.RUNNING,
    Phase.MAPPED,
    Phase.COLLECTING,
)

# How a run ended (RunResult.reason), with the words a person reads in one line.
REASONS = {
    "done": "done",
    "failed": "failed",
    "timeout": "timed out",
    "oom": "out of memory",
    "interrupted": "interrupted",
    "stopped": "stopped",
    "killed": "killed from outside",
}

STEP = "--- "  # a build log line that starts a step: "--- NAME ...", as the build scripts write


def step_name(line: str) -> str:
    """The step a build log's STEP line starts: its first two words ("pip install", "uv
    install", "apt-get install", "compile bytecode")."""
    return " ".join(line.strip()[len(STEP) :].split()[:2])


Events = Callable[..., None]  # events(phase, **info)
Output = Callable[[str, str], None]  # (stream name "stdout"|"stderr", text)


def no_events(phase: str, **info) -> None:
    pass
