"""The display's words: the lines text mode prints, the badges, and which mode to show.

text_lines()      pure: the lines a change of state prints in text mode
choose_mode()     "widget", "text" or "off" for where we run
fmt_seconds(), fmt_size(), describe_progress()   the words for times, sizes, a build
describe_map(), describe_failures()              the words for a map's items
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping

from ...core.events import ENV_PHASES, RUN_PHASES, Phase
from ...core.formatting import format_duration, format_size, plural
from .state import BuildProgress, MapProgress, RunStatus

PREFIX = "[mlcontainer]"
ENV_VAR = "MLCONTAINER_DISPLAY"  # widget | text | off; unset: widget in a notebook kernel

# What the badge says, per phase while running and per final status at the end.
BADGES = {
    "pending": "waiting",
    "resolving": "resolving",
    "cached": "cache hit",
    "building": "building",
    "built": "built",
    "pushing": "pushing",
    "starting": "starting",
    "scheduling": "scheduling",
    "pulling": "pulling",
    "running": "running",
    "mapped": "running",
    "collecting": "collecting",
    "serving": "serving",
    "stopping": "stopping",
    "done": "done",
    "failed": "failed",
    "timeout": "timed out",
    "oom": "out of memory",
    "interrupted": "interrupted",
    "stopped": "stopped",
    "killed": "killed",
}
PHASE_TEXT = {
    "pending": "waiting",
    "resolving": "resolving environment",
    "cached": "environment found (cache hit)",
    "building": "building environment",
    "built": "environment built",
    "pushing": "pushing image to the registry",
    "starting": "starting container",
    "scheduling": "waiting for a node",
    "pulling": "pulling image",
    "running": "running",
    "mapped": "running the items",
    "collecting": "collecting results",
    "serving": "serving",
}


def fmt_seconds(seconds) -> str:
    """``12.3 s``, ``4 min 05 s``, ``1 h 02 min``; "" when unknown."""
    return format_duration(seconds, spaced=True, missing="")


def fmt_size(size) -> str:
    """Bytes as Docker shows them (powers of 1000): ``369 MB``, ``1.5 GB``; "" when unknown."""
    return format_size(size, short=True, missing="")


def describe_progress(p: BuildProgress) -> str:
    """A few words on a build's progress, e.g. "pip install · 3/7 packages fetched · numpy"."""
    parts = []
    if p.steps_known > 1 and p.step:
        parts.append(f"step {min(p.steps_done + 1, p.steps_known)}/{p.steps_known}")
    if p.step:
        parts.append(p.step)
    if p.installed:
        parts.append(f"installed {plural(p.installed, 'package')}")
    elif p.installing:
        names = ", ".join(p.installing[:3]) + (", …" if len(p.installing) > 3 else "")
        parts.append(f"installing {plural(len(p.installing), 'package')} ({names})")
    elif p.known:
        parts.append(f"{min(p.fetched, p.known)}/{p.known} packages fetched")
        if p.current:
            parts.append(p.current)
    return " · ".join(parts)


def describe_map(p: MapProgress) -> str:
    """ "7/12 items · 4 running · 1 failed · 2.3 items/s · about 2 s left"."""
    parts = [f"{p.done}/{p.count} items"]
    if p.running:
        parts.append(f"{p.running} running")
    if p.failed:
        parts.append(f"{p.failed} failed")
    if p.rate:
        parts.append(f"{p.rate:.2g} items/s" if p.rate < 10 else f"{p.rate:.0f} items/s")
    if p.eta is not None and p.done < p.count:
        parts.append(f"about {fmt_seconds(p.eta)} left")
    return " · ".join(parts)


def describe_failures(p: MapProgress, limit: int = 5) -> list[str]:
    """One line per failed item: "item 3: failed (ValueError: boom)"; the first ``limit``."""
    lines = [
        f"item {index}: {BADGES.get(reason, reason)}" + (f" ({why})" if why else "")
        for index, reason, why in p.failures[:limit]
    ]
    if len(p.failures) > limit:
        lines.append(f"and {len(p.failures) - limit} more")
    return lines


def _map_lines(before: MapProgress | None, after: MapProgress | None) -> list[str]:
    """Text mode cannot redraw a bar: a line per new failure, and one per quarter of the
    items done."""
    if after is None or after == before:
        return []
    old = before or MapProgress()
    seen = {f[0] for f in old.failures}
    lines = [
        line for f, line in zip(after.failures, describe_failures(after, 10**9)) if f[0] not in seen
    ]
    step = max(1, after.count // 4)
    if after.done // step != old.done // step or (after.done == after.count != old.done):
        lines.append(describe_map(after))
    return lines


def _times(s: RunStatus) -> str:
    """The duration a final line reports: the run's own if it ran, else the whole wait."""
    seconds = s.seconds(RUN_PHASES) if s.ran else s.elapsed(s.ended or 0.0)
    return fmt_seconds(seconds)


def _phase_line(s: RunStatus) -> str | None:
    if s.phase == Phase.RESOLVING:
        return f"resolving environment (base {s.base})…" if s.base else "resolving environment…"
    if s.phase == Phase.CACHED:
        size = f", {fmt_size(s.size)}" if fmt_size(s.size) else ""
        return f"environment {s.image} (cache hit{size})"
    if s.phase == Phase.BUILDING:
        n = len(s.requirements) + len(s.apt)
        adding = f", adding to {s.parent}" if s.parent else ""
        what = f" ({plural(n, 'package')}{adding})" if n else ""
        return f"building environment {s.image}{what}…"
    if s.phase == Phase.BUILT:
        size = f" ({fmt_size(s.size)})" if fmt_size(s.size) else ""
        return f"environment ready in {fmt_seconds(s.seconds(ENV_PHASES))}{size}"
    if s.phase == Phase.PUSHING:
        return f"pushing {s.image}…"
    if s.phase == Phase.SCHEDULING:
        return f"waiting for a node: {s.note}" if s.note else None
    if s.phase == Phase.PULLING:
        return "pulling the image on the node…"
    if s.phase == Phase.RUNNING:
        where = "standby container" if s.standby else "container"
        return f"running in {where} {s.container}…" if s.container else "running…"
    if s.phase == Phase.MAPPED:
        return f"running {plural(s.items.count, 'item')}…" if s.items else None
    if s.phase == Phase.COLLECTING:
        return "collecting results…"
    if s.phase == Phase.SERVING:
        return f"serving {s.service} at {s.url}"
    if s.phase == Phase.FINISHED:
        snap = f" · snapshot {s.snapshot}" if s.snapshot else ""
        if s.status == "serving":
            return None  # the serving line said it; the service lives on
        if s.status == "done":
            return f"done in {_times(s)}{snap}"
        message = f": {s.message}" if s.message else ""
        return f"{BADGES.get(s.status, s.status)} after {_times(s)}{message}{snap}"
    return None  # "starting" is followed at once by "running": no line of its own


def describe_build(s: RunStatus) -> str:
    """ "resolve 0.8 s, uv install 2.5 s, commit 4.2 s · 10 packages: 6 from the wheel cache,
    4 fetched (4 from a local wheelhouse)": what each step took, and where the wheels came
    from."""
    text = ", ".join(f"{name} {fmt_seconds(sec)}" for name, sec in s.build_steps)
    w = s.wheels
    if w.get("installed"):
        local = f" ({w['local']} from a local wheelhouse)" if w.get("local") else ""
        text += (
            f" · {plural(w['installed'], 'package')}: {w.get('cached', 0)} from the wheel cache,"
            f" {w.get('fetched', 0)} fetched{local}"
        )
    return text


def describe_data(s: RunStatus) -> str:
    """ "data: /work/data (ro, 2.1 GB, 2,000 files) · digested in 1.3 s"."""
    parts = [
        f"{target} ({mode}, {fmt_size(size) or '?'}, {count:,} file{'s' * (count != 1)})"
        if isinstance(count, int)
        else f"{target} ({mode})"
        for target, mode, size, count in s.data
    ]
    took = f" · digested in {fmt_seconds(s.data_seconds)}" if s.data_seconds is not None else ""
    return "data: " + ", ".join(parts) + took


def describe_sources(s: RunStatus) -> str:
    """ "inputs from: ocr (a1b2c3d4e5f6) · notebook: png": the snapshots whose values the run
    took, and the values the notebook made; "" before that is known."""
    parts = [f"{name} ({sid})" if name else sid for sid, name in s.consumed]
    if s.from_notebook:
        parts.append("notebook: " + ", ".join(s.from_notebook))
    return "inputs from: " + " · ".join(parts) if parts else ""


def text_lines(before: RunStatus, after: RunStatus) -> list[str]:
    """The lines to print for the change ``before`` -> ``after``: one per phase, never a repeat."""
    lines = []
    if after.stopping and not before.stopping:
        lines.append("stopping…")
    if after.stop_error and after.stop_error != before.stop_error:
        lines.append(f"could not stop: {after.stop_error}")
    if after.data and after.data != before.data:
        lines.append(describe_data(after))
    if describe_sources(after) != describe_sources(before) and describe_sources(after):
        lines.append(describe_sources(after))
    if after.phase != before.phase:
        line = _phase_line(after)
        if line:
            lines.append(line)
        if after.phase == Phase.BUILT and describe_build(after):
            lines.append("  " + describe_build(after))
    elif after.note and after.note != before.note:
        lines.append(f"waiting for a node: {after.note}")
    elif after.finished and after.snapshot != before.snapshot:
        lines.append(f"snapshot {after.snapshot}")
    lines += _map_lines(before.items, after.items)
    return [f"{PREFIX} {line}" for line in lines]


def choose_mode(shell, env: Mapping[str, str], widgets_available: bool | None = None) -> str:
    """ "widget", "text" or "off": widgets in an ipykernel shell when ipywidgets is there.

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
