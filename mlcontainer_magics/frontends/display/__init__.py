"""The live status of one run: a compact widget in a notebook, concise lines anywhere else.

Driven only by events (``display(phase, **info)``, the phases of core/events.py); imports no
backend, and no ipywidgets until a widget is shown (``%load_ext`` stays fast).

    state.py     RunStatus + apply(): the state and its transitions; pure, no I/O, no widgets
    text.py      text_lines(), choose_mode(), the words (badges, durations, sizes)
    widget.py    WidgetView: renders a RunStatus into ipywidgets (imported only in widget mode)
    here         RunDisplay, the events callback: owns the state, a view, the ticker, Stop;
                 open_display() picks the mode (choose_mode) and makes a RunDisplay

Events, in the order a run sends them::

    resolving(base)  cached(image, size) | building(image, apt, requirements) build-log(line)...
    built(image, size)  starting  running(container)  collecting  recorded(snapshot)
    serving(name, url, snapshot)  [a served cell]  finished(status, message, detail, exit_code)
"""

from __future__ import annotations

import contextvars
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Mapping

from ...core.events import Phase
from .state import (
    ENV_PHASES,
    LOG_LIMIT,
    RUN_PHASES,
    BuildProgress,
    RunStatus,
    apply,
    error_info,
    parse_build_line,
)
from .text import (
    BADGES,
    ENV_VAR,
    PREFIX,
    choose_mode,
    describe_progress,
    fmt_seconds,
    fmt_size,
    text_lines,
)
from .widget import WIDGET_MIME, WidgetView

__all__ = [
    "BADGES",
    "ENV_PHASES",
    "ENV_VAR",
    "LOG_LIMIT",
    "PREFIX",
    "RUN_PHASES",
    "TICK",
    "WIDGET_MIME",
    "BuildProgress",
    "RunDisplay",
    "RunStatus",
    "WidgetView",
    "apply",
    "choose_mode",
    "describe_progress",
    "fmt_seconds",
    "fmt_size",
    "open_display",
    "parse_build_line",
    "text_lines",
]

TICK = 0.5  # seconds between redraws of a running widget


class RunDisplay:
    """The status display of one run; call it as the run's ``events`` callback.

    ``mode`` is "widget", "text" or "off" (see ``choose_mode``). ``on_stop`` is called (once)
    when the user clicks Stop; if it raises or returns False the button comes back. Events may
    come from any thread. In widget mode a daemon thread redraws the elapsed times every
    ``interval`` seconds until the run is finished or ``close()`` is called.
    """

    def __init__(
        self,
        on_stop: Callable[[], object] | None = None,
        *,
        mode: str = "text",
        stream=None,
        display: Callable | None = None,
        clock: Callable[[], float] = time.monotonic,
        interval: float = TICK,
    ) -> None:
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
                # Log lines (and a map's items, which may end many a second) redraw at most
                # once an interval; the ticker draws those held back.
                often = phase in ("build-log", Phase.MAPPED)
                if not often or now - self._last_render >= self._interval:
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
                self.event(Phase.FINISHED, error_info(error))
            self._closed = True
            self._halt.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=1.0)

    def __enter__(self) -> RunDisplay:
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
        return {
            "text/plain": plain,
            WIDGET_MIME: {"version_major": 2, "version_minor": 0, "model_id": self.widget.model_id},
        }

    def _render(self, now: float) -> None:
        assert self.view is not None  # widget mode only
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
        self._thread = threading.Thread(
            target=context.run, args=(self._tick,), name="mlcontainer-status", daemon=True
        )
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


def _ipython_display(bundle, **kwargs):
    from IPython.display import display

    return display(bundle, **kwargs)


def open_display(
    on_stop: Callable[[], object] | None = None,
    *,
    shell=None,
    env: Mapping[str, str] | None = None,
    **kwargs,
) -> RunDisplay:
    """A RunDisplay in the mode that suits where we run (``choose_mode``)."""
    if shell is None:
        try:
            from IPython import get_ipython

            shell = get_ipython()
        except ImportError:
            shell = None
    mode = choose_mode(shell, os.environ if env is None else env)
    return RunDisplay(on_stop, mode=mode, **kwargs)
