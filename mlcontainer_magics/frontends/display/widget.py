"""The status as ipywidgets: a header line over two collapsed sections (build log, details).

ipywidgets is imported only when a WidgetView is made, so importing this module stays cheap.
"""

from __future__ import annotations

import html
from collections.abc import Callable

from ...core.events import ENV_PHASES, RUN_PHASES, Phase
from .state import RunStatus
from .text import (
    BADGES,
    PHASE_TEXT,
    describe_build,
    describe_data,
    describe_failures,
    describe_map,
    describe_progress,
    describe_sources,
    fmt_seconds,
    fmt_size,
    plural,
)

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
COLORS = {
    "done": "#2e7d32",
    "cached": "#00796b",
    "built": "#00796b",
    "building": "#1565c0",
    "pushing": "#1565c0",
    "running": "#1565c0",
    "mapped": "#1565c0",
    "serving": "#2e7d32",
    "stopping": "#ef6c00",
    "stopped": "#ef6c00",
    "interrupted": "#ef6c00",
    "failed": "#c62828",
    "timeout": "#c62828",
    "oom": "#c62828",
    "killed": "#c62828",
}
GREY = "#607d8b"


class WidgetView:
    """Header line (badge, phase, progress, elapsed, image, snapshot, Stop) over two collapsed
    sections: the build log and the failure's detail. ``render`` only reads a RunStatus.

    Saved widget state shows the outcome: ``badge.value`` carries ``data-status="done"`` and
    ``data-snapshot="<id>"``; the outer box has the CSS class ``mlc-status-<state>``.
    """

    def __init__(self, on_click: Callable[[], object] | None) -> None:
        import ipywidgets as w

        def item(**layout):
            return w.HTML(layout=w.Layout(margin="0 0.8em 0 0", **layout))

        self.badge = item()
        self.phase = item()
        self.progress = w.IntProgress(
            value=0,
            min=0,
            max=1,
            layout=w.Layout(width="110px", display="none", margin="0 0.8em 0 0"),
        )
        self.elapsed = item()
        self.image = item()
        self.snapshot = item()
        self.stop = w.Button(
            description="Stop",
            icon="stop",
            tooltip="Stop this run",
            layout=w.Layout(width="auto", height="24px", display="" if on_click else "none"),
            disabled=on_click is None,
        )
        if on_click is not None:
            self.stop.on_click(lambda _button: on_click())
        self.header = w.HBox(
            [
                self.badge,
                self.phase,
                self.progress,
                self.elapsed,
                self.image,
                self.snapshot,
                self.stop,
            ],
            layout=w.Layout(align_items="center", flex_flow="row wrap"),
        )
        self.log_text = w.HTML()
        self.log = w.Accordion(
            [self.log_text],
            titles=("Build log",),
            selected_index=None,
            layout=w.Layout(display="none"),
        )
        self.detail_text = w.HTML()
        self.details = w.Accordion(
            [self.detail_text],
            titles=("Details",),
            selected_index=None,
            layout=w.Layout(display="none"),
        )
        self.widget = w.VBox(
            [self.header, self.log, self.details], _dom_classes=("mlc-status", "mlc-status-pending")
        )
        self._log_auto: int | None = None  # what render last set the log's selected_index to
        self._has_stop = on_click is not None

    def render(self, s: RunStatus, now: float) -> None:
        state = s.state
        color = COLORS.get(state, GREY)
        self.badge.value = (
            f'<span class="mlc-badge" data-status="{_e(state)}" data-snapshot="{_e(s.snapshot)}" '
            f'style="background:{color};color:#fff;border-radius:4px;padding:1px 7px;'
            f'font-size:0.85em;font-weight:600;white-space:nowrap">'
            f"{_e(BADGES.get(state, state))}</span>"
        )
        self.phase.value = _e(self._phase_text(s))
        done, total = s.progress.fraction
        building = s.phase == Phase.BUILDING and total > 0
        if s.items is not None and s.items.count:  # a map: its items, to the end
            self.progress.max, self.progress.value = s.items.count, s.items.done
            self.progress.bar_style = "danger" if s.items.failed else ""
            self.progress.layout.display = ""
        else:
            self.progress.max, self.progress.value = (total, done) if building else (1, 0)
            self.progress.layout.display = "" if building else "none"
        self.elapsed.value = f'<span style="color:{GREY}">{_e(self._elapsed_text(s, now))}</span>'
        data = f'<br><span style="color:{GREY}">{_e(describe_data(s))}</span>' if s.data else ""
        how = describe_build(s)
        build = f'<br><span class="mlc-build" style="color:{GREY}">{_e(how)}</span>' if how else ""
        took = describe_sources(s)
        took = (
            f'<br><span class="mlc-inputs-from" style="color:{GREY}">{_e(took)}</span>'
            if took
            else ""
        )
        failures = describe_failures(s.items) if s.items is not None else []
        failed = (
            '<br><span class="mlc-map-failures" style="color:#c62828">'
            + "<br>".join(_e(line) for line in failures)
            + "</span>"
            if failures
            else ""
        )
        self.image.value = self._image_html(s) + build + data + took + failed
        self.snapshot.value = f"snapshot <code>{_e(s.snapshot)}</code>" if s.snapshot else ""
        if s.url:
            self.snapshot.value += f' · <a href="{_e(s.url)}" target="_blank">{_e(s.url)}</a>'
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
        if s.items is not None:
            text += f" · {describe_map(s.items)}"
        if s.phase == Phase.BUILDING:
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
        extra = [
            x
            for x in (fmt_size(s.size), {"hit": "cached", "miss": "built"}.get(s.cache))
            if x and not (x == "built" and s.phase == Phase.BUILDING)
        ]
        tail = f" · {_e(' · '.join(extra))}" if extra else ""
        return f'<code title="{_e(s.image)}">{_e(short)}</code>{tail}'

    def _render_log(self, s: RunStatus) -> None:
        self.log.layout.display = "" if s.log_total else "none"
        if s.log_total > len(s.log):
            self.log.titles = (f"Build log (last {len(s.log)} of {s.log_total} lines)",)
        else:
            self.log.titles = (f"Build log ({plural(s.log_total, 'line')})",)
        self.log_text.value = _pre("\n".join(s.log), bottom=True) if s.log else ""
        # Open while building, closed otherwise; leave it alone once the user changed it.
        want = 0 if s.phase == Phase.BUILDING else None
        if want != self._log_auto:
            if self.log.selected_index == self._log_auto:
                self.log.selected_index = want
            self._log_auto = want


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _pre(text: str, bottom: bool = False) -> str:
    # column-reverse keeps a scrolled box pinned to its newest line
    box = "max-height:16em;overflow:auto" + (
        ";display:flex;flex-direction:column-reverse" if bottom else ""
    )
    return (
        f'<div style="{box}"><pre style="margin:0;font-size:0.85em;line-height:1.35;'
        f'white-space:pre-wrap">{_e(text)}</pre></div>'
    )
