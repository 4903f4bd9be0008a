"""The live status of one run: a compact widget in a notebook, concise lines anywhere else.

Driven only by events (``display(phase, **info)``, see backends/base.py); imports no backend.

    RunStatus + apply()       the state and its transitions: pure, no I/O, no widgets
    text_lines()              pure: the lines a change of state prints in text mode
    WidgetView                renders a RunStatus into ipywidgets (imported only in widget mode)
    RunDisplay                the events callback: owns the state, a view, the ticker, Stop
    open_display()            picks the mode (choose_mode) and makes a RunDisplay

Events, in the order a run sends them::

    resolving(base)  cached(image, size) | building(image, apt, requirements) build-log(line)...
    built(image, size)  starting  running(container)  collecting  recorded(snapshot)
    finished(status, message, detail, exit_code)
"""
from __future__ import annotations

import contextvars
import html
import importlib.util
import os
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping

PREFIX = "[mlcontainer]"
ENV_VAR = "MLCONTAINER_DISPLAY"  # widget | text | off; unset: widget in a notebook kernel
LOG_LIMIT = 200  # build-log lines a status keeps (the newest)
TICK = 0.5  # seconds between redraws of a running widget
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"

PHASES = ("resolving", "cached", "building", "built", "pushing", "starting", "scheduling",
          "pulling", "running", "collecting", "finished")
ENV_PHASES = ("resolving", "building", "pushing")
# scheduling and pulling: a Kubernetes pod waiting for a node, then for its image.
RUN_PHASES = ("starting", "scheduling", "pulling", "running", "collecting")

# What the badge says, per phase while running and per final status at the end.
BADGES = {
    "pending": "waiting", "resolving": "resolving", "cached": "cache hit",
    "building": "building", "built": "built", "pushing": "pushing", "starting": "starting",
    "scheduling": "scheduling", "pulling": "pulling", "running": "running",
    "collecting": "collecting", "stopping": "stopping",
    "done": "done", "failed": "failed", "timeout": "timed out", "oom": "out of memory",
    "interrupted": "interrupted", "stopped": "stopped", "killed": "killed",
}
PHASE_TEXT = {
    "pending": "waiting", "resolving": "resolving environment",
    "cached": "environment found (cache hit)", "building": "building environment",
    "built": "environment built", "pushing": "pushing image to the registry",
    "starting": "starting container", "scheduling": "waiting for a node",
    "pulling": "pulling image", "running": "running",
    "collecting": "collecting results",
}
COLORS = {
    "done": "#2e7d32", "cached": "#00796b", "built": "#00796b",
    "building": "#1565c0", "pushing": "#1565c0", "running": "#1565c0",
    "stopping": "#ef6c00", "stopped": "#ef6c00", "interrupted": "#ef6c00",
    "failed": "#c62828", "timeout": "#c62828", "oom": "#c62828", "killed": "#c62828",
}
GREY = "#607d8b"
RUN_STATUSES = ("done", "failed", "timeout", "oom", "interrupted", "stopped", "killed")


# -- state ------------------------------------------------------------------------------------

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
    if text.startswith("--- "):
        words = text[4:].split()
        step = " ".join(words[:2]) if len(words) > 1 else text[4:]
        done = progress.steps_done + (1 if progress.step else 0)
        return replace(progress, step=step, steps_done=done,
                       steps_known=max(progress.steps_known, done + 1), current="")
    if text.startswith("Collecting "):
        return replace(progress, known=progress.known + 1, current=text.split()[1])
    if text.startswith(("Downloading ", "Using cached ")):
        return replace(progress, fetched=progress.fetched + 1)
    if text.startswith("Installing collected packages:"):
        names = tuple(n.strip() for n in text.partition(":")[2].split(",") if n.strip())
        return replace(progress, installing=names, current="")
    if text.startswith("Successfully installed "):
        return replace(progress, installed=len(text.split()) - 2, current="")
    return progress


@dataclass(frozen=True)
class RunStatus:
    """Everything the display shows about one run. Times are ``time.monotonic()`` seconds.

    Immutable: ``apply`` returns a new one, so a view may read it from any thread.
    """

    phase: str = "pending"  # one of PHASES, or "pending" before the first event
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
    note: str = ""  # why a pod waits (the scheduler's words)
    snapshot: str = ""
    progress: BuildProgress = field(default_factory=BuildProgress)
    log: tuple = ()  # the newest LOG_LIMIT build-log lines
    log_total: int = 0
    stopping: bool = False
    stop_error: str = ""
    status: str = ""  # at the end: done|failed|timeout|oom|interrupted|stopped|killed
    message: str = ""  # one line
    detail: str = ""  # traceback, pip's message
    exit_code: int | None = None

    @property
    def finished(self) -> bool:
        return self.phase == "finished"

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


def apply(status: RunStatus, phase: str, info: Mapping | None = None, *,
          now: float | None = None) -> RunStatus:
    """The status after one event. Pure: ``status`` is left as it was; unknown phases are no-ops.

    Besides the backend's events it takes "stopping" (the user asked to stop) and
    "stop-failed" (message=...) from the display itself.
    """
    info = info or {}
    now = time.monotonic() if now is None else now
    if phase == "recorded":
        return replace(status, snapshot=str(info.get("snapshot") or status.snapshot))
    if status.finished:
        return status
    if phase in ("done", "failed"):  # the older end events
        phase, info = "finished", {"status": phase, **info}
    if phase == "build-log":
        line = str(info.get("line", ""))
        return replace(status, log=(status.log + (line,))[-LOG_LIMIT:],
                       log_total=status.log_total + 1,
                       progress=parse_build_line(status.progress, line))
    if phase == "stopping":
        return replace(status, stopping=True, stop_error="")
    if phase == "stop-failed":
        return replace(status, stopping=False, stop_error=_first_line(info.get("message", "")))
    if phase not in PHASES:
        return status
    status = _enter(status, phase, now)
    if phase == "resolving":
        return replace(status, base=str(info.get("base") or status.base))
    if phase == "cached":
        return replace(status, cache="hit", image=str(info.get("image") or status.image),
                       size=info.get("size", status.size))
    if phase == "building":
        reqs, apt = tuple(info.get("requirements") or ()), tuple(info.get("apt") or ())
        return replace(status, cache="miss", image=str(info.get("image") or status.image),
                       requirements=reqs, apt=apt, parent=str(info.get("on") or ""),
                       progress=BuildProgress(steps_known=bool(reqs) + bool(apt)))
    if phase == "built":
        p = status.progress
        return replace(status, image=str(info.get("image") or status.image),
                       size=info.get("size", status.size),
                       progress=replace(p, steps_done=max(p.steps_known, p.steps_done), step=""))
    if phase == "pushing":
        return replace(status, image=str(info.get("image") or status.image))
    if phase == "scheduling":
        return replace(status, note=str(info.get("message") or status.note))
    if phase == "running":
        return replace(status, container=str(info.get("container") or ""), note="")
    if phase == "finished":
        message, rest = _split_message(info.get("message"))
        detail = str(info.get("detail") or "")
        return replace(status, ended=now, stopping=False, status=str(info.get("status") or "failed"),
                       message=message, detail=detail or rest, exit_code=info.get("exit_code"))
    return status


def _enter(status: RunStatus, phase: str, now: float) -> RunStatus:
    if phase == status.phase:
        return status
    timings = dict(status.timings)
    if status.phase_started is not None and status.phase != "pending":
        timings[status.phase] = timings.get(status.phase, 0.0) + max(0.0, now - status.phase_started)
    return replace(status, phase=phase, phase_started=now, timings=timings,
                   started=status.started if status.started is not None else now)


def _split_message(message) -> tuple[str, str]:
    lines = [line for line in str(message or "").strip().splitlines()]
    if not lines:
        return "", ""
    return lines[0].strip(), "\n".join(lines[1:]).strip()


def _first_line(text) -> str:
    return _split_message(text)[0]


# -- words ------------------------------------------------------------------------------------

def fmt_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def fmt_size(size) -> str:
    """Bytes as Docker shows them (powers of 1000)."""
    if not isinstance(size, (int, float)) or size < 0:
        return ""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            value = size / scale
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    return f"{int(size)} B"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def describe_progress(p: BuildProgress) -> str:
    """A few words on a build's progress, e.g. "pip install · 3/7 packages fetched · numpy"."""
    parts = []
    if p.steps_known > 1 and p.step:
        parts.append(f"step {min(p.steps_done + 1, p.steps_known)}/{p.steps_known}")
    if p.step:
        parts.append(p.step)
    if p.installed:
        parts.append(f"installed {_plural(p.installed, 'package')}")
    elif p.installing:
        names = ", ".join(p.installing[:3]) + (", …" if len(p.installing) > 3 else "")
        parts.append(f"installing {_plural(len(p.installing), 'package')} ({names})")
    elif p.known:
        parts.append(f"{min(p.fetched, p.known)}/{p.known} packages fetched")
        if p.current:
            parts.append(p.current)
    return " · ".join(parts)


def _times(s: RunStatus) -> str:
    """The duration a final line reports: the run's own if it ran, else the whole wait."""
    seconds = s.seconds(RUN_PHASES) if s.ran else s.elapsed(s.ended or 0.0)
    return fmt_seconds(seconds)


def _phase_line(s: RunStatus) -> str | None:
    if s.phase == "resolving":
        return f"resolving environment (base {s.base})…" if s.base else "resolving environment…"
    if s.phase == "cached":
        size = f", {fmt_size(s.size)}" if fmt_size(s.size) else ""
        return f"environment {s.image} (cache hit{size})"
    if s.phase == "building":
        n = len(s.requirements) + len(s.apt)
        adding = f", adding to {s.parent}" if s.parent else ""
        what = f" ({_plural(n, 'package')}{adding})" if n else ""
        return f"building environment {s.image}{what}…"
    if s.phase == "built":
        size = f" ({fmt_size(s.size)})" if fmt_size(s.size) else ""
        return f"environment ready in {fmt_seconds(s.seconds(ENV_PHASES))}{size}"
    if s.phase == "pushing":
        return f"pushing {s.image}…"
    if s.phase == "scheduling":
        return f"waiting for a node: {s.note}" if s.note else None
    if s.phase == "pulling":
        return "pulling the image on the node…"
    if s.phase == "running":
        return f"running in container {s.container}…" if s.container else "running…"
    if s.phase == "collecting":
        return "collecting results…"
    if s.phase == "finished":
        snap = f" · snapshot {s.snapshot}" if s.snapshot else ""
        if s.status == "done":
            return f"done in {_times(s)}{snap}"
        message = f": {s.message}" if s.message else ""
        return f"{BADGES.get(s.status, s.status)} after {_times(s)}{message}{snap}"
    return None  # "starting" is followed at once by "running": no line of its own


def text_lines(before: RunStatus, after: RunStatus) -> list[str]:
    """The lines to print for the change ``before`` -> ``after``: one per phase, never a repeat."""
    lines = []
    if after.stopping and not before.stopping:
        lines.append("stopping…")
    if after.stop_error and after.stop_error != before.stop_error:
        lines.append(f"could not stop: {after.stop_error}")
    if after.phase != before.phase:
        line = _phase_line(after)
        if line:
            lines.append(line)
    elif after.note and after.note != before.note:
        lines.append(f"waiting for a node: {after.note}")
    elif after.finished and after.snapshot != before.snapshot:
        lines.append(f"snapshot {after.snapshot}")
    return [f"{PREFIX} {line}" for line in lines]


# -- mode -------------------------------------------------------------------------------------

def choose_mode(shell, env: Mapping[str, str], widgets_available: bool | None = None) -> str:
    """"widget", "text" or "off": widgets in an ipykernel shell when ipywidgets is there.

    ``MLCONTAINER_DISPLAY`` in ``env`` decides first: ``text``, ``off`` (nothing shown) or
    ``widget`` (widgets even outside a kernel shell, if ipywidgets is importable).
    """
    wanted = str(env.get(ENV_VAR) or "").strip().lower()
    if wanted in ("off", "none", "quiet"):
        return "off"
    if wanted == "text":
        return "text"
    if widgets_available is None:
        widgets_available = importlib.util.find_spec("ipywidgets") is not None
    if not widgets_available:
        return "text"
    if wanted == "widget":
        return "widget"
    in_kernel = any(c.__name__ == "ZMQInteractiveShell" for c in type(shell).__mro__)
    return "widget" if shell is not None and in_kernel else "text"


# -- the widget -------------------------------------------------------------------------------

class WidgetView:
    """Header line (badge, phase, progress, elapsed, image, snapshot, Stop) over two collapsed
    sections: the build log and the failure's detail. ``render`` only reads a RunStatus.

    Saved widget state shows the outcome: ``badge.value`` carries ``data-status="done"`` and
    ``data-snapshot="<id>"``; the outer box has the CSS class ``mlc-status-<state>``.
    """

    def __init__(self, on_click: Callable[[], None] | None) -> None:
        import ipywidgets as w

        def item(**layout):
            return w.HTML(layout=w.Layout(margin="0 0.8em 0 0", **layout))

        self.badge = item()
        self.phase = item()
        self.progress = w.IntProgress(value=0, min=0, max=1,
                                      layout=w.Layout(width="110px", display="none",
                                                      margin="0 0.8em 0 0"))
        self.elapsed = item()
        self.image = item()
        self.snapshot = item()
        self.stop = w.Button(description="Stop", icon="stop", tooltip="Stop this run",
                             layout=w.Layout(width="auto", height="24px",
                                             display="" if on_click else "none"),
                             disabled=on_click is None)
        if on_click is not None:
            self.stop.on_click(lambda _button: on_click())
        self.header = w.HBox([self.badge, self.phase, self.progress, self.elapsed, self.image,
                              self.snapshot, self.stop],
                             layout=w.Layout(align_items="center", flex_flow="row wrap"))
        self.log_text = w.HTML()
        self.log = w.Accordion([self.log_text], titles=("Build log",), selected_index=None,
                               layout=w.Layout(display="none"))
        self.detail_text = w.HTML()
        self.details = w.Accordion([self.detail_text], titles=("Details",), selected_index=None,
                                   layout=w.Layout(display="none"))
        self.widget = w.VBox([self.header, self.log, self.details],
                             _dom_classes=("mlc-status", "mlc-status-pending"))
        self._log_auto = None  # what render last set the log's selected_index to
        self._has_stop = on_click is not None

    def render(self, s: RunStatus, now: float) -> None:
        state = s.state
        color = COLORS.get(state, GREY)
        self.badge.value = (
            f'<span class="mlc-badge" data-status="{_e(state)}" data-snapshot="{_e(s.snapshot)}" '
            f'style="background:{color};color:#fff;border-radius:4px;padding:1px 7px;'
            f'font-size:0.85em;font-weight:600;white-space:nowrap">'
            f'{_e(BADGES.get(state, state))}</span>')
        self.phase.value = _e(self._phase_text(s))
        done, total = s.progress.fraction
        building = s.phase == "building" and total > 0
        self.progress.max, self.progress.value = (total, done) if building else (1, 0)
        self.progress.layout.display = "" if building else "none"
        self.elapsed.value = f'<span style="color:{GREY}">{_e(self._elapsed_text(s, now))}</span>'
        self.image.value = self._image_html(s)
        self.snapshot.value = (f'snapshot <code>{_e(s.snapshot)}</code>' if s.snapshot else "")
        self.stop.layout.display = "" if self._has_stop and not s.finished else "none"
        self.stop.disabled = not self._has_stop or s.finished or s.stopping
        self.stop.description = "stopping…" if s.stopping else "Stop"
        # JupyterLab: the sidebar extension stops the run through the server on this click,
        # since the kernel, busy with this very cell, hears the widget click only afterwards.
        self.stop._dom_classes = ("mlc-stop-run", f"mlc-run-{s.snapshot}") if s.snapshot else ()
        self._render_log(s)
        self.detail_text.value = _pre(s.detail) if s.detail else ""
        self.details.layout.display = "" if s.finished and s.detail else "none"
        self.widget._dom_classes = ("mlc-status", f"mlc-status-{state}")

    @staticmethod
    def _phase_text(s: RunStatus) -> str:
        if s.finished:
            return s.message or BADGES.get(s.status, s.status)
        if s.stopping:
            return "stopping…"
        text = PHASE_TEXT.get(s.phase, s.phase)
        if s.note:
            text += f" · {s.note}"
        if s.phase == "building":
            text += f" · adding to {s.parent}" if s.parent else ""
            progress = describe_progress(s.progress)
            text += f" · {progress}" if progress else ""
        if s.stop_error:
            text += f" (could not stop: {s.stop_error})"
        return text

    @staticmethod
    def _elapsed_text(s: RunStatus, now: float) -> str:
        if s.started is None:
            return ""
        if s.finished:
            parts = []
            if s.seconds(ENV_PHASES):
                parts.append(f"environment {fmt_seconds(s.seconds(ENV_PHASES))}")
            if s.ran:
                parts.append(f"run {fmt_seconds(s.seconds(RUN_PHASES))}")
            return " · ".join(parts) or fmt_seconds(s.elapsed(now))
        phase, total = s.phase_elapsed(now), s.elapsed(now)
        text = fmt_seconds(phase)
        return text if total - phase < 0.05 else f"{text} (total {fmt_seconds(total)})"

    @staticmethod
    def _image_html(s: RunStatus) -> str:
        if not s.image:
            return ""
        repo, colon, tag = s.image.rpartition(":")
        short = f"{repo}:{tag[:12]}…" if colon and "/" not in tag and len(tag) > 14 else s.image
        extra = [x for x in (fmt_size(s.size), {"hit": "cached", "miss": "built"}.get(s.cache))
                 if x and not (x == "built" and s.phase == "building")]
        tail = f" · {_e(' · '.join(extra))}" if extra else ""
        return f'<code title="{_e(s.image)}">{_e(short)}</code>{tail}'

    def _render_log(self, s: RunStatus) -> None:
        self.log.layout.display = "" if s.log_total else "none"
        if s.log_total > len(s.log):
            self.log.titles = (f"Build log (last {len(s.log)} of {s.log_total} lines)",)
        else:
            self.log.titles = (f"Build log ({_plural(s.log_total, 'line')})",)
        self.log_text.value = _pre("\n".join(s.log), bottom=True) if s.log else ""
        # Open while building, closed otherwise; leave it alone once the user changed it.
        want = 0 if s.phase == "building" else None
        if want != self._log_auto:
            if self.log.selected_index == self._log_auto:
                self.log.selected_index = want
            self._log_auto = want


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _pre(text: str, bottom: bool = False) -> str:
    # column-reverse keeps a scrolled box pinned to its newest line
    box = "max-height:16em;overflow:auto" + (";display:flex;flex-direction:column-reverse"
                                             if bottom else "")
    return (f'<div style="{box}"><pre style="margin:0;font-size:0.85em;line-height:1.35;'
            f'white-space:pre-wrap">{_e(text)}</pre></div>')


# -- the display ------------------------------------------------------------------------------

class RunDisplay:
    """The status display of one run; call it as the run's ``events`` callback.

    ``mode`` is "widget", "text" or "off" (see ``choose_mode``). ``on_stop`` is called (once)
    when the user clicks Stop; if it raises or returns False the button comes back. Events may
    come from any thread. In widget mode a daemon thread redraws the elapsed times every
    ``interval`` seconds until the run is finished or ``close()`` is called.
    """

    def __init__(self, on_stop: Callable[[], object] | None = None, *, mode: str = "text",
                 stream=None, display: Callable | None = None,
                 clock: Callable[[], float] = time.monotonic, interval: float = TICK) -> None:
        if mode not in ("widget", "text", "off"):
            raise ValueError(f"mode must be widget, text or off, not {mode!r}")
        self.mode = mode
        self.status = RunStatus()
        self._on_stop = on_stop
        self._stream = stream
        self._display = display
        self._clock = clock
        self._interval = interval
        self._lock = threading.RLock()
        self._lines: list[str] = []  # the text lines so far: the widget's plain-text fallback
        self._handle = None
        self._shown = False
        self._closed = False
        self._broken = False  # the frontend failed us once: draw no more
        self._last_render = float("-inf")
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self.view = WidgetView(self.stop if on_stop else None) if mode == "widget" else None

    @property
    def widget(self):
        return self.view.widget if self.view is not None else None

    # events -----------------------------------------------------------------------------------

    def __call__(self, phase: str, **info) -> None:
        self.event(phase, info)

    def event(self, phase: str, info: Mapping | None = None) -> None:
        with self._lock:
            before = self.status
            now = self._clock()
            after = apply(before, phase, info, now=now)
            if after is before:
                return
            self.status = after
            lines = text_lines(before, after)
            self._lines += lines
            if self.mode == "text":
                self._write(lines)
            if self.view is None or self._broken:
                return
            try:
                self.show()
                # Log lines redraw at most once an interval; the ticker draws those held back.
                if phase != "build-log" or now - self._last_render >= self._interval:
                    self._render(now)
            except Exception as e:  # a display must never fail the run it shows
                self._give_up(e)
                return
            if after.finished:
                self._finish()
            elif self._thread is None and not self._closed:
                self._start_ticker()

    def stop(self) -> bool:
        """What the Stop button does: show "stopping…" and call on_stop, at most once a run."""
        with self._lock:
            s = self.status
            if self._on_stop is None or s.finished or s.stopping:
                return False
        self.event("stopping")
        try:
            result = self._on_stop()
        except Exception as e:  # the button must not raise into the kernel's comm handler
            self.event("stop-failed", {"message": str(e) or type(e).__name__})
            return False
        if result is False:
            self.event("stop-failed", {"message": "nothing was running to stop yet"})
            return False
        return True

    def close(self, error: BaseException | None = None) -> None:
        """End the display: the ticker stops; a run that never said ``finished`` ends here,
        as interrupted (KeyboardInterrupt) or failed with ``error``'s message and log."""
        with self._lock:
            if self._closed:
                return
            if not self.status.finished and (self.status.started is not None or self._shown):
                self.event("finished", _error_info(error))
            self._closed = True
            self._halt.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=1.0)

    def __enter__(self) -> "RunDisplay":
        return self

    def __exit__(self, etype, error, tb) -> None:
        self.close(error)

    # widget -----------------------------------------------------------------------------------

    def show(self) -> None:
        """Put the widget in the output (once). Call it from the cell's thread, before the run
        starts, so the widget sits above the cell's own output; the first event calls it too."""
        with self._lock:
            if self.view is None or self._shown:
                return
            self._shown = True
            self._render(self._clock())
            display = self._display or _ipython_display
            self._handle = display(self._bundle(), raw=True, display_id=True)

    def _bundle(self) -> dict:
        # The view, plus the text a frontend without a widget manager shows instead.
        plain = "\n".join(self._lines) or f"{PREFIX} {BADGES.get(self.status.state, 'waiting')}…"
        return {"text/plain": plain,
                WIDGET_MIME: {"version_major": 2, "version_minor": 0,
                              "model_id": self.widget.model_id}}

    def _render(self, now: float) -> None:
        self.view.render(self.status, now)
        self._last_render = now

    def _finish(self) -> None:
        self._halt.set()
        if self._handle is not None:  # the fallback text becomes the whole story
            try:
                self._handle.update(self._bundle(), raw=True)
            except Exception:
                pass

    def _start_ticker(self) -> None:
        context = contextvars.copy_context()  # keeps the kernel's parent message in the thread
        self._thread = threading.Thread(target=context.run, args=(self._tick,),
                                        name="mlcontainer-status", daemon=True)
        self._thread.start()

    def refresh(self) -> None:
        """Redraw the widget now (elapsed times, log lines held back): what the ticker does."""
        with self._lock:
            if self.view is not None and not self._broken:
                self._render(self._clock())

    def _tick(self) -> None:
        while not self._halt.wait(self._interval):
            with self._lock:
                if self.status.finished or self._closed:
                    return
                try:
                    self.refresh()
                except Exception as e:  # a closed comm, a torn-down kernel
                    self._give_up(e)
                    return

    def _give_up(self, error: Exception) -> None:
        self._broken = True
        self._halt.set()
        warnings.warn(f"{PREFIX} the status widget stopped updating: {error!r}", stacklevel=2)

    # text -------------------------------------------------------------------------------------

    def _write(self, lines: list[str]) -> None:
        if not lines:
            return
        stream = self._stream or sys.stdout
        stream.write("".join(line + "\n" for line in lines))
        stream.flush()


def _error_info(error: BaseException | None) -> dict:
    if isinstance(error, KeyboardInterrupt):
        return {"status": "interrupted", "message": "interrupted"}
    if error is None:
        return {"status": "failed", "message": "ended without a final status"}
    message, rest = _split_message(str(error) or type(error).__name__)
    log = getattr(error, "logs", "") or getattr(error, "log", "") or ""
    detail = "\n\n".join(x for x in (rest, str(log).strip()) if x)
    reason = getattr(error, "reason", None)  # RunError's: timeout, oom, stopped...
    return {"status": reason if reason in RUN_STATUSES else "failed", "message": message,
            "detail": detail, "exit_code": getattr(error, "exit_code", None)}


def _ipython_display(bundle, **kwargs):
    from IPython.display import display

    return display(bundle, **kwargs)


def open_display(on_stop: Callable[[], object] | None = None, *, shell=None,
                 env: Mapping[str, str] | None = None, **kwargs) -> RunDisplay:
    """A RunDisplay in the mode that suits where we run (``choose_mode``)."""
    if shell is None:
        try:
            from IPython import get_ipython

            shell = get_ipython()
        except ImportError:
            shell = None
    mode = choose_mode(shell, os.environ if env is None else env)
    return RunDisplay(on_stop, mode=mode, **kwargs)
