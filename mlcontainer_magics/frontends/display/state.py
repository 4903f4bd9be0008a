"""The state of one run's display and its transitions: pure, no I/O, no widgets.

BuildProgress + parse_build_line()   how far an environment build is, read from its log
MapProgress                          how far a map's items are (Phase.MAPPED)
RunStatus + apply()                  what the display knows, and the status after an event
error_info()                         the finished event for a run that ended by an exception
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from ...core.events import ENV_PHASES, REASONS, RUN_PHASES, STEP, Phase, step_name
from ...core.lineage import sources

__all__ = [
    "ENV_PHASES",
    "LOG_LIMIT",
    "RUN_PHASES",
    "STEPS",
    "BuildProgress",
    "MapProgress",
    "RunStatus",
    "apply",
    "error_info",
    "parse_build_line",
]

LOG_LIMIT = 200  # build-log lines a status keeps (the newest)
# The events that move a run into a phase of its own; build-log and recorded only add to one.
STEPS = tuple(
    p for p in Phase if p not in (Phase.BUILD_LOG, Phase.RECORDED, Phase.MOUNTED, Phase.LINKED)
)


@dataclass(frozen=True)
class BuildProgress:
    """How far an environment build is, read from its log (install.sh's ``---`` lines, pip's)."""

    steps_known: int = 0  # install steps announced: apt-get, pip
    steps_done: int = 0
    step: str = ""  # the step now running: "apt-get install", "pip install"
    known: int = 0  # packages pip is collecting
    fetched: int = 0  # of those, downloaded or taken from pip's cache
    installing: tuple = ()  # names from "Installing collected packages: a, b"
    installed: int = 0  # from "Successfully installed a-1 b-2"
    current: str = ""  # the package pip collected last

    @property
    def fraction(self) -> tuple[int, int]:
        """(done, total): packages fetched, plus one for the install step; (0, 0) if unknown."""
        if not self.known:
            return 0, 0
        total = self.known + 1
        if self.installed:
            return total, total
        if self.installing:
            return self.known, total
        return min(self.fetched, self.known), total


def parse_build_line(progress: BuildProgress, line: str) -> BuildProgress:
    text = line.strip()
    if text.startswith(STEP):
        step = step_name(text)
        done = progress.steps_done + (1 if progress.step else 0)
        return replace(
            progress,
            step=step,
            steps_done=done,
            steps_known=max(progress.steps_known, done + 1),
            current="",
        )
    if text.startswith("Collecting "):
        return replace(progress, known=progress.known + 1, current=text.split()[1])
    if text.startswith(("Downloading ", "Using cached ")):
        return replace(progress, fetched=progress.fetched + 1)
    if text.startswith("Installing collected packages:"):
        names = tuple(n.strip() for n in text.partition(":")[2].split(",") if n.strip())
        return replace(progress, installing=names, current="")
    if text.startswith("Successfully installed "):
        return replace(progress, installed=len(text.split()) - 2, current="")
    uv = _UV_SUMMARY.match(text)  # uv: "Resolved 10 packages in 0.2s", "Prepared 3 ..."
    if uv:
        n = int(uv.group(2))
        if uv.group(1) == "Resolved":
            return replace(progress, known=n, current="")
        if uv.group(1) == "Prepared":
            return replace(progress, fetched=n, current="")
        return replace(progress, installed=n, current="")
    return progress


_UV_SUMMARY = re.compile(r"^(Resolved|Prepared|Installed) (\d+) packages? in ")


@dataclass(frozen=True)
class MapProgress:
    """How far a map's items are, as its last Phase.MAPPED said."""

    done: int = 0  # ended, whichever way
    running: int = 0
    failed: int = 0
    count: int = 0
    rate: float = 0.0  # items ended per second
    eta: float | None = None  # seconds left, once one has ended
    failures: tuple = ()  # ((index, reason, why), ...), by index

    @classmethod
    def of(cls, info: Mapping) -> MapProgress:
        def whole(key) -> int:
            value = info.get(key)
            return value if isinstance(value, int) else 0

        rate, eta = info.get("rate"), info.get("eta")
        return cls(
            done=whole("done"),
            running=whole("running"),
            failed=whole("failed"),
            count=whole("count"),
            rate=float(rate) if isinstance(rate, (int, float)) else 0.0,
            eta=float(eta) if isinstance(eta, (int, float)) else None,
            failures=tuple(
                (f.get("index"), str(f.get("reason", "")), str(f.get("why", "")))
                for f in info.get("failures") or ()
                if isinstance(f, Mapping)
            ),
        )


@dataclass(frozen=True)
class RunStatus:
    """Everything the display shows about one run. Times are ``time.monotonic()`` seconds.

    Immutable: ``apply`` returns a new one, so a view may read it from any thread.
    """

    phase: str = "pending"  # one of STEPS, or "pending" before the first event
    started: float | None = None  # first event
    phase_started: float | None = None
    ended: float | None = None  # the finished event
    timings: Mapping[str, float] = field(default_factory=dict)  # phase -> seconds, ended phases
    base: str = ""
    image: str = ""
    size: int | None = None
    cache: str = ""  # "hit" | "miss" | "" (not known yet)
    requirements: tuple = ()
    apt: tuple = ()
    parent: str = ""  # the environment a build adds to, if any
    container: str = ""
    standby: bool = False  # the container was started before the cell, as a standby
    note: str = ""  # why a pod waits (the scheduler's words)
    snapshot: str = ""
    service: str = ""  # --serve NAME, once it answers
    url: str = ""  # ... and where
    progress: BuildProgress = field(default_factory=BuildProgress)
    log: tuple = ()  # the newest LOG_LIMIT build-log lines
    log_total: int = 0
    stopping: bool = False
    stop_error: str = ""
    status: str = ""  # at the end: one of events.REASONS (done, failed, timeout, oom...)
    message: str = ""  # one line
    detail: str = ""  # traceback, pip's message
    exit_code: int | None = None
    data: tuple = ()  # the mounts: (target, mode, size, files), as digested
    data_seconds: float | None = None  # how long digesting them took
    installer: str = ""  # what installed the packages: "uv" or "pip"
    build_steps: tuple = ()  # ((step, seconds), ...): resolve, install, bytecode, commit...
    wheels: Mapping = field(default_factory=dict)  # installed, cached, fetched, local: counts
    consumed: tuple = ()  # ((snapshot, its name), ...): whose --out values came in
    from_notebook: tuple = ()  # names of the --in values the notebook made
    items: MapProgress | None = None  # a map's (--map), once its items run

    @property
    def finished(self) -> bool:
        return self.phase == Phase.FINISHED

    @property
    def state(self) -> str:
        """One word for the badge and CSS class: the phase, "stopping", or the final status."""
        if self.finished:
            return self.status
        return "stopping" if self.stopping else self.phase

    def seconds(self, phases, now: float | None = None) -> float:
        """Time spent in ``phases`` so far (the running phase counted up to ``now``)."""
        total = sum(t for p, t in self.timings.items() if p in phases)
        if self.phase in phases and self.phase_started is not None and now is not None:
            total += max(0.0, now - self.phase_started)
        return total

    def phase_elapsed(self, now: float) -> float:
        return 0.0 if self.phase_started is None else max(0.0, now - self.phase_started)

    def elapsed(self, now: float) -> float:
        if self.started is None:
            return 0.0
        return max(0.0, (self.ended if self.ended is not None else now) - self.started)

    @property
    def ran(self) -> bool:
        return any(p in self.timings for p in RUN_PHASES) or self.phase in RUN_PHASES


def apply(
    status: RunStatus, phase: str, info: Mapping | None = None, *, now: float | None = None
) -> RunStatus:
    """The status after one event. Pure: ``status`` is left as it was; unknown phases are no-ops.

    Besides the backend's events (a ``Phase`` or its string) it takes "stopping" (the user
    asked to stop) and "stop-failed" (message=...) from the display itself.
    """
    info = info or {}
    now = time.monotonic() if now is None else now
    phase = str(phase)  # a Phase's value: the status holds plain strings
    if phase == Phase.RECORDED:
        return replace(status, snapshot=str(info.get("snapshot") or status.snapshot))
    if phase == Phase.MOUNTED:
        data = tuple(
            (str(m.get("target", "")), str(m.get("mode", "")), m.get("size"), m.get("count"))
            for m in info.get("mounts") or ()
        )
        return replace(status, data=data, data_seconds=info.get("seconds"))
    if phase == Phase.LINKED:
        snapshots, notebook = sources(info.get("parents") or (), info.get("names") or {})
        return replace(status, consumed=tuple(snapshots), from_notebook=tuple(notebook))
    if status.finished:
        return status
    if phase in ("done", "failed"):  # the older end events
        phase, info = Phase.FINISHED.value, {"status": phase, **info}
    if phase == Phase.BUILD_LOG:
        line = str(info.get("line", ""))
        return replace(
            status,
            log=(status.log + (line,))[-LOG_LIMIT:],
            log_total=status.log_total + 1,
            progress=parse_build_line(status.progress, line),
        )
    if phase == "stopping":
        return replace(status, stopping=True, stop_error="")
    if phase == "stop-failed":
        return replace(status, stopping=False, stop_error=_first_line(info.get("message", "")))
    if phase not in STEPS:
        return status
    status = _enter(status, phase, now)
    if phase == Phase.RESOLVING:
        return replace(status, base=str(info.get("base") or status.base))
    if phase == Phase.CACHED:
        return replace(
            status,
            cache="hit",
            image=str(info.get("image") or status.image),
            size=info.get("size", status.size),
        )
    if phase == Phase.BUILDING:
        reqs, apt = tuple(info.get("requirements") or ()), tuple(info.get("apt") or ())
        return replace(
            status,
            cache="miss",
            image=str(info.get("image") or status.image),
            requirements=reqs,
            apt=apt,
            parent=str(info.get("on") or ""),
            progress=BuildProgress(steps_known=bool(reqs) + bool(apt)),
        )
    if phase == Phase.BUILT:
        p = status.progress
        return replace(
            status,
            image=str(info.get("image") or status.image),
            size=info.get("size", status.size),
            installer=str(info.get("installer") or ""),
            build_steps=tuple((str(k), v) for k, v in (info.get("steps") or {}).items()),
            wheels=dict(info.get("wheels") or {}),
            progress=replace(p, steps_done=max(p.steps_known, p.steps_done), step=""),
        )
    if phase == Phase.PUSHING:
        return replace(status, image=str(info.get("image") or status.image))
    if phase == Phase.SCHEDULING:
        return replace(status, note=str(info.get("message") or status.note))
    if phase == Phase.RUNNING:
        return replace(
            status,
            container=str(info.get("container") or ""),
            standby=bool(info.get("standby")),
            note="",
        )
    if phase == Phase.MAPPED:
        return replace(status, items=MapProgress.of(info))
    if phase == Phase.SERVING:
        return replace(
            status,
            service=str(info.get("name") or ""),
            url=str(info.get("url") or ""),
            snapshot=str(info.get("snapshot") or status.snapshot),
        )
    if phase == Phase.FINISHED:
        message, rest = _split_message(info.get("message"))
        detail = str(info.get("detail") or "")
        return replace(
            status,
            ended=now,
            stopping=False,
            status=str(info.get("status") or "failed"),
            message=message,
            detail=detail or rest,
            exit_code=info.get("exit_code"),
        )
    return status


def _enter(status: RunStatus, phase: str, now: float) -> RunStatus:
    if phase == status.phase:
        return status
    timings = dict(status.timings)
    if status.phase_started is not None and status.phase != "pending":
        spent = max(0.0, now - status.phase_started)
        timings[status.phase] = timings.get(status.phase, 0.0) + spent
    return replace(
        status,
        phase=phase,
        phase_started=now,
        timings=timings,
        started=status.started if status.started is not None else now,
    )


def _split_message(message) -> tuple[str, str]:
    lines = str(message or "").strip().splitlines()
    if not lines:
        return "", ""
    return lines[0].strip(), "\n".join(lines[1:]).strip()


def _first_line(text) -> str:
    return _split_message(text)[0]


def error_info(error: BaseException | None) -> dict:
    """The finished event's info for a run that ended without one: by ``error``, or by nothing."""
    if isinstance(error, KeyboardInterrupt):
        return {"status": "interrupted", "message": "interrupted"}
    if error is None:
        return {"status": "failed", "message": "ended without a final status"}
    message, rest = _split_message(str(error) or type(error).__name__)
    log = getattr(error, "logs", "") or getattr(error, "log", "") or ""
    detail = "\n\n".join(x for x in (rest, str(log).strip()) if x)
    reason = getattr(error, "reason", None)  # RunError's: timeout, oom, stopped...
    known = isinstance(reason, str) and reason in REASONS
    return {
        "status": reason if known else "failed",
        "message": message,
        "detail": detail,
        "exit_code": getattr(error, "exit_code", None),
    }
