"""The run status display: state transitions (pure), the widget view, the text lines."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
import time

import pytest

from mlcontainer_magics.frontends import display as status_display
from mlcontainer_magics.frontends.display import (
    BuildProgress,
    RunDisplay,
    RunStatus,
    apply,
    choose_mode,
    describe_progress,
    fmt_seconds,
    fmt_size,
    text_lines,
)

TAG = "mlcontainer-env:3f2a9c1d0e4b5a6b7c8d9e0f"
SNAP = "3f2a9c1d0e4b"
PIP_LOG = [
    "--- pip install numpy==1.26.4 six==1.16.0",
    "Collecting numpy==1.26.4",
    "  Downloading numpy-1.26.4-cp311-cp311-manylinux_2_17_x86_64.whl (18.3 MB)",
    "Collecting six==1.16.0",
    "  Using cached six-1.16.0-py2.py3-none-any.whl (11 kB)",
    "Installing collected packages: six, numpy",
    "Successfully installed numpy-1.26.4 six-1.16.0",
]


def run_events(events, status=None):
    """Apply (time, phase, info) triples; return every intermediate status."""
    states = [status or RunStatus()]
    for now, phase, info in events:
        states.append(apply(states[-1], phase, info, now=now))
    return states


CACHE_HIT = [
    (0.0, "resolving", {"base": "python:3.11-slim"}),
    (0.3, "cached", {"image": TAG, "size": 369_000_000}),
    (0.4, "starting", {}),
    (0.9, "running", {"container": "1a2b3c4d5e6f"}),
    (1.5, "recorded", {"snapshot": SNAP}),
    (1.5, "finished", {"status": "done", "message": "done", "detail": "", "exit_code": 0}),
]

BUILD = (
    [
        (0.0, "resolving", {"base": "python:3.11-slim"}),
        (
            0.2,
            "building",
            {"image": TAG, "apt": [], "requirements": ["numpy==1.26.4", "six==1.16.0"]},
        ),
    ]
    + [(1.0 + i, "build-log", {"line": line}) for i, line in enumerate(PIP_LOG)]
    + [
        (9.0, "built", {"image": TAG, "size": 412_000_000}),
        (9.1, "starting", {}),
        (9.5, "running", {"container": "abcdef012345"}),
        (10.0, "collecting", {}),
        (10.2, "recorded", {"snapshot": SNAP}),
        (10.2, "finished", {"status": "done", "message": "done", "exit_code": 0}),
    ]
)

OOM = [
    (0.0, "resolving", {"base": "python:3.11-slim"}),
    (0.1, "cached", {"image": TAG, "size": 1000}),
    (0.2, "starting", {}),
    (0.3, "running", {"container": "abcdef012345"}),
    (0.4, "recorded", {"snapshot": SNAP}),
    (
        2.3,
        "finished",
        {
            "status": "oom",
            "exit_code": 137,
            "message": "Out of memory: the cell used more than its --memory limit of 64 MiB.",
            "detail": "Traceback (most recent call last):\nMemoryError",
        },
    ),
]


# -- apply ------------------------------------------------------------------------------------


def test_cache_hit_run():
    states = run_events(CACHE_HIT)
    assert [s.phase for s in states] == [
        "pending",
        "resolving",
        "cached",
        "starting",
        "running",
        "running",
        "finished",
    ]
    cached = states[2]
    assert (cached.cache, cached.image, cached.size, cached.base) == (
        "hit",
        TAG,
        369_000_000,
        "python:3.11-slim",
    )
    assert cached.log == () and cached.progress == BuildProgress()
    final = states[-1]
    assert final.finished and final.status == "done" and final.state == "done"
    assert final.snapshot == SNAP and final.container == "1a2b3c4d5e6f" and final.exit_code == 0
    assert final.timings == pytest.approx(
        {"resolving": 0.3, "cached": 0.1, "starting": 0.5, "running": 0.6}
    )
    assert final.seconds(status_display.ENV_PHASES) == pytest.approx(0.3)
    assert final.seconds(status_display.RUN_PHASES) == pytest.approx(1.1)
    assert final.elapsed(now=99.0) == pytest.approx(1.5)  # frozen at the end


def test_apply_leaves_its_argument_alone():
    before = apply(RunStatus(), "resolving", {"base": "b"}, now=0.0)
    after = apply(before, "building", {"image": TAG, "requirements": ["x"]}, now=1.0)
    assert before.phase == "resolving" and before.timings == {} and before.image == ""
    assert after.timings == {"resolving": 1.0}


def test_running_phase_elapsed_counts_up_to_now():
    s = run_events(CACHE_HIT[:4])[-1]
    assert s.phase_elapsed(now=2.0) == pytest.approx(1.1)
    assert s.elapsed(now=2.0) == pytest.approx(2.0)
    assert s.seconds(status_display.RUN_PHASES, now=2.0) == pytest.approx(1.6)


def test_build_run_counts_pip_progress():
    states = run_events(BUILD)
    building = states[2]
    assert building.cache == "miss" and building.requirements == ("numpy==1.26.4", "six==1.16.0")
    assert building.progress == BuildProgress(steps_known=1)
    progress = [s.progress for s in states[3 : 3 + len(PIP_LOG)]]
    assert [(p.known, p.fetched) for p in progress] == [
        (0, 0),
        (1, 0),
        (1, 1),
        (2, 1),
        (2, 2),
        (2, 2),
        (2, 2),
    ]
    assert [p.fraction for p in progress] == [
        (0, 0),
        (0, 2),
        (1, 2),
        (1, 3),
        (2, 3),
        (2, 3),
        (3, 3),
    ]
    assert progress[0].step == "pip install" and progress[2].current == "numpy==1.26.4"
    assert progress[5].installing == ("six", "numpy") and progress[6].installed == 2
    assert describe_progress(progress[2]) == "pip install · 1/1 packages fetched · numpy==1.26.4"
    assert describe_progress(progress[3]) == "pip install · 1/2 packages fetched · six==1.16.0"
    assert describe_progress(progress[5]) == "pip install · installing 2 packages (six, numpy)"
    assert describe_progress(progress[6]) == "pip install · installed 2 packages"
    built = states[3 + len(PIP_LOG)]
    assert built.phase == "built" and built.size == 412_000_000
    assert built.progress.steps_done == 1 and built.progress.step == ""
    assert built.log == tuple(PIP_LOG) and built.log_total == len(PIP_LOG)
    assert built.seconds(status_display.ENV_PHASES) == pytest.approx(9.0)
    final = states[-1]
    assert final.status == "done" and final.snapshot == SNAP
    assert final.seconds(status_display.RUN_PHASES) == pytest.approx(1.1)


def test_apt_then_pip_counts_steps():
    s = apply(
        RunStatus(), "building", {"image": TAG, "apt": ["curl"], "requirements": ["six"]}, now=0
    )
    assert s.progress.steps_known == 2
    s = apply(s, "build-log", {"line": "--- apt-get install curl"}, now=1)
    assert describe_progress(s.progress) == "step 1/2 · apt-get install"
    s = apply(s, "build-log", {"line": "--- pip install six"}, now=2)
    s = apply(s, "build-log", {"line": "Collecting six"}, now=3)
    assert describe_progress(s.progress) == "step 2/2 · pip install · 0/1 packages fetched · six"


def test_build_log_is_bounded():
    s = RunStatus()
    for i in range(status_display.LOG_LIMIT + 50):
        s = apply(s, "build-log", {"line": f"line {i}"}, now=0)
    assert len(s.log) == status_display.LOG_LIMIT and s.log_total == status_display.LOG_LIMIT + 50
    assert s.log[-1] == f"line {status_display.LOG_LIMIT + 49}" and s.log[0] == "line 50"


def test_oom_failure_keeps_message_and_detail():
    final = run_events(OOM)[-1]
    assert final.finished and final.status == "oom" and final.state == "oom"
    assert final.message.startswith("Out of memory") and "\n" not in final.message
    assert final.detail == "Traceback (most recent call last):\nMemoryError"
    assert final.exit_code == 137 and final.snapshot == SNAP


def test_multiline_message_keeps_one_line_and_moves_the_rest_to_detail():
    s = apply(RunStatus(), "building", {"image": TAG, "requirements": ["nope==0"]}, now=0)
    s = apply(
        s,
        "finished",
        {
            "status": "failed",
            "message": "Building the environment failed (exit 1):\n"
            "ERROR: No matching distribution found for nope==0",
        },
        now=3,
    )
    assert s.message == "Building the environment failed (exit 1):"
    assert s.detail == "ERROR: No matching distribution found for nope==0"


def test_stop_then_stopped():
    s = run_events(CACHE_HIT[:4])[-1]
    s = apply(s, "stopping", {}, now=1.0)
    assert s.stopping and s.phase == "running" and s.state == "stopping"
    s = apply(s, "finished", {"status": "stopped", "message": "stopped", "exit_code": 137}, now=1.4)
    assert s.state == "stopped" and not s.stopping and s.status == "stopped"


def test_after_finished_only_the_snapshot_id_can_change():
    s = run_events(OOM[:3] + OOM[5:])[-1]
    assert s.snapshot == ""
    assert apply(s, "running", {"container": "x"}, now=9) is s
    assert apply(s, "build-log", {"line": "x"}, now=9) is s
    assert apply(s, "recorded", {"snapshot": SNAP}, now=9).snapshot == SNAP


def test_unknown_events_change_nothing():
    s = RunStatus()
    assert apply(s, "something-new", {"x": 1}, now=0) is s


# -- text mode --------------------------------------------------------------------------------


def lines_for(events):
    states = run_events(events)
    return [line for a, b in zip(states, states[1:]) for line in text_lines(a, b)]


def test_text_lines_cache_hit():
    assert lines_for(CACHE_HIT) == [
        "[mlcontainer] resolving environment (base python:3.11-slim)…",
        f"[mlcontainer] environment {TAG} (cache hit, 369 MB)",
        "[mlcontainer] running in container 1a2b3c4d5e6f…",
        f"[mlcontainer] done in 1.1 s · snapshot {SNAP}",
    ]


def test_text_lines_say_when_the_container_was_a_standby():
    events = [
        (0.9, "running", {"container": "1a2b3c4d5e6f", "standby": True}) if e[1] == "running" else e
        for e in CACHE_HIT
    ]
    assert "[mlcontainer] running in standby container 1a2b3c4d5e6f…" in lines_for(events)


def test_text_lines_build_have_no_log_lines():
    assert lines_for(BUILD) == [
        "[mlcontainer] resolving environment (base python:3.11-slim)…",
        f"[mlcontainer] building environment {TAG} (2 packages)…",
        "[mlcontainer] environment ready in 9.0 s (412 MB)",
        "[mlcontainer] running in container abcdef012345…",
        "[mlcontainer] collecting results…",
        f"[mlcontainer] done in 1.1 s · snapshot {SNAP}",
    ]


def test_a_build_on_another_environment_says_which():
    on = [
        (t, phase, dict(info, on="mlcontainer-env:parent") if phase == "building" else info)
        for t, phase, info in BUILD
    ]
    assert lines_for(on)[1] == (
        f"[mlcontainer] building environment {TAG} (2 packages, adding to mlcontainer-env:parent)…"
    )
    assert "waiting for a node" not in " ".join(lines_for(on))


def test_text_lines_failure_and_late_snapshot():
    events = OOM[:4] + OOM[5:] + [(2.5, "recorded", {"snapshot": SNAP})]
    assert lines_for(events)[-2:] == [
        "[mlcontainer] out of memory after 2.1 s: Out of memory: the cell used more than its "
        "--memory limit of 64 MiB.",
        f"[mlcontainer] snapshot {SNAP}",
    ]


def test_text_display_prints_exactly_the_lines(capsys):
    clock = FakeClock()
    display = RunDisplay(mode="text", clock=clock)
    for now, phase, info in BUILD:
        clock.now = now
        display(phase, **info)
    display.close()
    assert capsys.readouterr().out.splitlines() == lines_for(BUILD)
    assert display.widget is None and display._thread is None


def test_text_display_stop(capsys):
    calls = []
    display = RunDisplay(lambda: calls.append(1), mode="text", clock=FakeClock())
    display("running", container="c")
    assert display.stop() and not display.stop()
    display("finished", status="stopped", message="stopped by the user")
    assert calls == [1]
    assert capsys.readouterr().out.splitlines() == [
        "[mlcontainer] running in container c…",
        "[mlcontainer] stopping…",
        "[mlcontainer] stopped after 0.0 s: stopped by the user",
    ]


def test_off_mode_prints_nothing(capsys):
    display = RunDisplay(mode="off")
    for _, phase, info in BUILD:
        display(phase, **info)
    assert capsys.readouterr() == ("", "") and display.status.status == "done"


def test_close_finishes_a_run_that_raised(capsys):
    class BuildError(Exception):
        log = "Collecting nope==0\nERROR: No matching distribution found for nope==0"

    display = RunDisplay(mode="text", clock=FakeClock())
    display("building", image=TAG, requirements=["nope==0"])
    display.close(BuildError("Building the environment failed (exit 1):\nERROR: No matching"))
    s = display.status
    assert s.status == "failed" and s.message == "Building the environment failed (exit 1):"
    assert s.detail.startswith("ERROR: No matching\n\nCollecting nope==0")
    display.close()  # again: nothing more
    assert capsys.readouterr().out.splitlines()[-1] == (
        "[mlcontainer] failed after 0.0 s: Building the environment failed (exit 1):"
    )


def test_close_on_keyboard_interrupt():
    display = RunDisplay(mode="off")
    display("running", container="c")
    display.close(KeyboardInterrupt())
    assert display.status.status == "interrupted"


def test_formats():
    assert fmt_seconds(0.64) == "0.6 s" and fmt_seconds(75) == "1 min 15 s"
    assert fmt_seconds(3725) == "1 h 02 min"
    assert fmt_size(369_000_000) == "369 MB" and fmt_size(1_500_000_000) == "1.5 GB"
    assert fmt_size(512) == "512 B" and fmt_size(None) == ""


# -- choosing the mode ------------------------------------------------------------------------


class ZMQInteractiveShell:  # what matters is the class name, as in ipykernel
    pass


class TerminalInteractiveShell:
    pass


class MyKernelShell(ZMQInteractiveShell):
    pass


@pytest.mark.parametrize(
    "shell, env, available, mode",
    [
        (ZMQInteractiveShell(), {}, True, "widget"),
        (MyKernelShell(), {}, True, "widget"),
        (ZMQInteractiveShell(), {}, False, "text"),
        (ZMQInteractiveShell(), {"MLCONTAINER_DISPLAY": "text"}, True, "text"),
        (ZMQInteractiveShell(), {"MLCONTAINER_DISPLAY": " Text "}, True, "text"),
        (ZMQInteractiveShell(), {"MLCONTAINER_DISPLAY": "off"}, True, "off"),
        (TerminalInteractiveShell(), {}, True, "text"),
        (None, {}, True, "text"),
        (TerminalInteractiveShell(), {"MLCONTAINER_DISPLAY": "widget"}, True, "widget"),
        (TerminalInteractiveShell(), {"MLCONTAINER_DISPLAY": "widget"}, False, "text"),
        (ZMQInteractiveShell(), {"MLCONTAINER_DISPLAY": "bogus"}, True, "widget"),
    ],
)
def test_choose_mode(shell, env, available, mode):
    assert choose_mode(shell, env, widgets_available=available) == mode


def test_choose_mode_finds_ipywidgets_itself():
    assert choose_mode(ZMQInteractiveShell(), {}) == "widget"


def test_no_backend_or_docker_imported():
    code = (
        "import sys, mlcontainer_magics.frontends.display\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('docker', 'ipywidgets') "
        "or '.backends' in m]\n"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- the widget -------------------------------------------------------------------------------


class FakeClock:
    def __init__(self, now=0.0):
        self.now = now

    def __call__(self):
        return self.now


class FakeHandle:
    def __init__(self, bundle):
        self.bundles = [bundle]

    def update(self, bundle, **kwargs):
        self.bundles.append(bundle)


@pytest.fixture
def test_comm():
    """ipywidgets without a frontend: its own tests' dummy comm (ipywidgets 8)."""
    utils = pytest.importorskip("ipywidgets.widgets.tests.utils")
    utils.setup_test_comm()
    yield
    utils.teardown_test_comm()


@pytest.fixture
def make_display(test_comm):
    made = []

    def make(on_stop=None, **kwargs):
        handles = []

        def display(bundle, **kw):
            assert kw == {"raw": True, "display_id": True}
            handles.append(FakeHandle(bundle))
            return handles[-1]

        kwargs.setdefault("interval", 3600)  # no ticks unless a test asks for them
        d = RunDisplay(on_stop, mode="widget", display=display, clock=FakeClock(), **kwargs)
        d.handles = handles
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()


def feed(display, events):
    for now, phase, info in events:
        display._clock.now = now
        display(phase, **info)


def header(display):
    v = display.view
    return {
        "badge": v.badge.value,
        "phase": v.phase.value,
        "elapsed": v.elapsed.value,
        "image": v.image.value,
        "snapshot": v.snapshot.value,
        "stop": v.stop.description,
        "stop_disabled": v.stop.disabled,
        "stop_shown": v.stop.layout.display != "none",
        "log_shown": v.log.layout.display != "none",
        "log_open": v.log.selected_index,
        "details_shown": v.details.layout.display != "none",
        "progress_shown": v.progress.layout.display != "none",
        "classes": v.widget._dom_classes,
    }


def test_widget_layout_is_one_header_line_and_two_sections(make_display):
    import ipywidgets

    d = make_display(lambda: None)
    v = d.view
    assert isinstance(d.widget, ipywidgets.VBox)
    assert d.widget.children == (v.header, v.log, v.details)
    assert isinstance(v.header, ipywidgets.HBox)
    assert v.header.children == (
        v.badge,
        v.phase,
        v.progress,
        v.elapsed,
        v.image,
        v.snapshot,
        v.stop,
    )
    assert isinstance(v.log, ipywidgets.Accordion) and isinstance(v.details, ipywidgets.Accordion)


def test_widget_cache_hit(make_display):
    d = make_display(lambda: None)
    feed(d, CACHE_HIT[:1])
    assert len(d.handles) == 1  # shown at the first event
    bundle = d.handles[0].bundles[0]
    assert bundle[status_display.WIDGET_MIME]["model_id"] == d.widget.model_id
    h = header(d)
    assert 'data-status="resolving"' in h["badge"] and ">resolving<" in h["badge"]
    assert h["phase"] == "resolving environment"
    assert h["stop"] == "Stop" and not h["stop_disabled"] and h["stop_shown"]
    assert not h["log_shown"] and not h["details_shown"] and not h["progress_shown"]

    feed(d, CACHE_HIT[1:2])
    h = header(d)
    assert ">cache hit<" in h["badge"] and h["phase"] == "environment found (cache hit)"
    assert "mlcontainer-env:3f2a9c1d0e4b…" in h["image"] and f'title="{TAG}"' in h["image"]
    assert "369 MB · cached" in h["image"]
    assert not h["log_shown"] and h["log_open"] is None  # no build: no log, collapsed

    feed(d, CACHE_HIT[2:4])
    d._clock.now = 1.4
    d.view.render(d.status, d._clock())
    h = header(d)
    assert ">running<" in h["badge"] and h["phase"] == "running"
    assert "0.5 s (total 1.4 s)" in h["elapsed"]
    assert h["classes"] == ("mlc-status", "mlc-status-running")

    feed(d, CACHE_HIT[4:])
    h = header(d)
    assert 'data-status="done"' in h["badge"] and f'data-snapshot="{SNAP}"' in h["badge"]
    assert ">done<" in h["badge"] and h["phase"] == "done"
    assert h["snapshot"] == f"snapshot <code>{SNAP}</code>"
    assert "environment 0.3 s · run 1.1 s" in h["elapsed"]
    assert not h["stop_shown"] and h["stop_disabled"]
    assert h["classes"] == ("mlc-status", "mlc-status-done")
    # Without a widget manager a frontend shows the text: at the end, the whole story.
    assert d.handles[0].bundles[-1]["text/plain"].splitlines() == lines_for(CACHE_HIT)


def test_widget_build_shows_progress_and_a_live_log(make_display):
    d = make_display(lambda: None, interval=0.5)
    feed(d, BUILD[:2])
    h = header(d)
    assert ">building<" in h["badge"] and h["phase"] == "building environment"
    assert not h["log_shown"] and not h["progress_shown"]

    feed(d, BUILD[2 : 2 + 4])  # one second apart: each redraws
    v = d.view
    h = header(d)
    assert h["phase"] == ("building environment · pip install · 1/2 packages fetched · six==1.16.0")
    assert h["progress_shown"] and (v.progress.value, v.progress.max) == (1, 3)
    assert h["log_shown"] and h["log_open"] == 0  # open while building
    assert v.log.titles == ("Build log (4 lines)",)
    assert "Collecting six==1.16.0" in v.log_text.value

    feed(d, [(4.1, "build-log", {"line": PIP_LOG[4]})])  # 0.1 s after the last redraw: later
    feed(d, [(4.2, "build-log", {"line": PIP_LOG[5]})])
    assert (v.progress.value, v.log.titles) == (1, ("Build log (4 lines)",))
    d.refresh()  # what the ticker does every interval
    assert v.progress.value == 2 and v.log.titles == ("Build log (6 lines)",)
    assert (
        header(d)["phase"] == "building environment · pip install · installing 2 packages "
        "(six, numpy)"
    )

    feed(d, BUILD[2 + 6 :])
    h = header(d)
    assert h["log_shown"] and h["log_open"] is None  # collapsed once built
    assert v.log.titles == ("Build log (7 lines)",) and not h["progress_shown"]
    assert "412 MB · built" in h["image"]
    assert 'data-status="done"' in h["badge"] and SNAP in h["snapshot"]
    assert "environment 9.0 s · run 1.1 s" in h["elapsed"]


def test_widget_leaves_the_log_as_the_user_set_it(make_display):
    d = make_display()
    feed(d, BUILD[:3])
    d.view.log.selected_index = None  # the user collapsed it while building
    feed(d, BUILD[3:])
    assert d.view.log.selected_index is None
    d2 = make_display()
    feed(d2, BUILD[:3])
    d2.view.log.selected_index = 0
    feed(d2, BUILD[3:])
    assert d2.view.log.selected_index is None


def test_widget_failure_one_line_with_detail_one_click_away(make_display):
    d = make_display(lambda: None)
    feed(d, OOM)
    v = d.view
    h = header(d)
    assert 'data-status="oom"' in h["badge"] and ">out of memory<" in h["badge"]
    assert "#c62828" in h["badge"]
    assert h["phase"] == "Out of memory: the cell used more than its --memory limit of 64 MiB."
    assert h["details_shown"] and v.details.selected_index is None  # collapsed
    assert v.details.titles == ("Details",)
    assert "Traceback (most recent call last):\nMemoryError" in v.detail_text.value
    assert not h["log_shown"] and not h["stop_shown"]
    assert h["classes"] == ("mlc-status", "mlc-status-oom")


def test_widget_escapes_what_it_shows(make_display):
    d = make_display()
    feed(
        d,
        [
            (0, "building", {"image": TAG, "requirements": ["x"]}),
            (1, "build-log", {"line": "<script>alert(1)</script>"}),
            (2, "finished", {"status": "failed", "message": "bad <b>", "detail": "a < b"}),
        ],
    )
    v = d.view
    assert "<script>" not in v.log_text.value and "&lt;script&gt;" in v.log_text.value
    assert v.phase.value == "bad &lt;b&gt;" and "a &lt; b" in v.detail_text.value


def test_stop_button_calls_on_stop_once_and_disables(make_display):
    calls = []
    d = make_display(lambda: calls.append("stop"))
    feed(d, CACHE_HIT[:4])
    button = d.view.stop
    button.click()
    assert calls == ["stop"]
    h = header(d)
    assert h["stop_disabled"] and h["stop"] == "stopping…"
    assert ">stopping<" in h["badge"] and h["phase"] == "stopping…"
    button.click()  # a second click (or one queued behind a busy kernel) does nothing
    assert calls == ["stop"]
    feed(d, [(2.0, "finished", {"status": "stopped", "message": "stopped", "exit_code": 137})])
    h = header(d)
    assert ">stopped<" in h["badge"] and not h["stop_shown"]
    button.click()  # after the end: nothing to stop
    assert calls == ["stop"]


def test_stop_that_fails_brings_the_button_back(make_display):
    def refuse():
        raise RuntimeError("engine gone")

    d = make_display(refuse)
    feed(d, CACHE_HIT[:4])
    d.view.stop.click()
    h = header(d)
    assert not h["stop_disabled"] and h["stop"] == "Stop"
    assert h["phase"] == "running (could not stop: engine gone)"
    d2 = make_display(lambda: False)  # the backend found nothing to stop (still building)
    feed(d2, BUILD[:2])
    d2.view.stop.click()
    assert "could not stop: nothing was running to stop yet" in header(d2)["phase"]


def test_a_failing_widget_does_not_fail_the_run(make_display):
    d = make_display()
    feed(d, CACHE_HIT[:2])

    def broken(*args):
        raise RuntimeError("comm closed")

    d.view.render = broken
    with pytest.warns(UserWarning, match="stopped updating"):
        feed(d, CACHE_HIT[2:3])
    feed(d, CACHE_HIT[3:])  # no more warnings, no errors; the state still follows
    assert d.status.status == "done" and d.status.snapshot == SNAP


def test_no_on_stop_no_button(make_display):
    d = make_display(None)
    feed(d, CACHE_HIT[:4])
    assert not header(d)["stop_shown"] and d.view.stop.disabled


def test_ticker_redraws_elapsed_time_and_stops_at_the_end(test_comm):
    shown = []
    d = RunDisplay(
        lambda: None,
        mode="widget",
        interval=0.02,
        display=lambda bundle, **kw: shown.append(bundle),
    )
    d("running", container="c")
    first = d.view.elapsed.value
    thread = d._thread
    assert thread is not None and thread.daemon
    deadline = time.monotonic() + 5
    while d.view.elapsed.value == first and time.monotonic() < deadline:
        time.sleep(0.01)
    assert d.view.elapsed.value != first  # it ticks while the phase runs
    d("finished", status="done", message="done")
    thread.join(timeout=2)
    assert not thread.is_alive()
    d.close()
    assert len(shown) == 1  # shown once; redraws are widget updates, not new outputs


def test_close_stops_the_ticker_of_an_unfinished_run(test_comm):
    d = RunDisplay(mode="widget", interval=0.02, display=lambda bundle, **kw: None)
    d("starting")
    thread = d._thread
    d.close()
    assert not thread.is_alive()
    assert d.status.status == "failed" and d.status.message == "ended without a final status"


def test_events_from_many_threads_at_once(test_comm):
    d = RunDisplay(mode="widget", interval=0.001, display=lambda bundle, **kw: None)
    d("building", image=TAG, requirements=["x"])

    def spam(n):
        for i in range(200):
            d("build-log", line=f"{n}-{i}")

    threads = [threading.Thread(target=spam, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    d("finished", status="done")
    d.close()
    assert d.status.log_total == 800 and d.view.log.titles == ("Build log (last 200 of 800 lines)",)


def test_text_mode_writes_to_the_given_stream():
    out = io.StringIO()
    d = RunDisplay(mode="text", stream=out, clock=FakeClock())
    d("collecting")
    d("collecting")  # no repeats
    assert out.getvalue() == "[mlcontainer] collecting results…\n"


def test_open_display_picks_the_mode(monkeypatch, capsys):
    monkeypatch.setenv("MLCONTAINER_DISPLAY", "text")
    d = status_display.open_display(shell=ZMQInteractiveShell())
    assert d.mode == "text"
    d = status_display.open_display(env={}, shell=TerminalInteractiveShell())
    assert d.mode == "text"


def test_mounted_data_is_shown_with_sizes_and_digest_time():
    from mlcontainer_magics.frontends.display.state import RunStatus, apply
    from mlcontainer_magics.frontends.display.text import text_lines

    before = RunStatus()
    mounts = [
        {"target": "/work/data", "mode": "ro", "size": 2_100_000_000, "count": 2000},
        {"target": "/work/models", "mode": "rw", "size": 0, "count": 1},
    ]
    after = apply(before, "mounted", {"mounts": mounts, "seconds": 1.25}, now=1.0)
    assert after.phase == before.phase  # information, not a phase of its own
    lines = text_lines(before, after)
    assert lines == [
        "[mlcontainer] data: /work/data (ro, 2.1 GB, 2,000 files), "
        "/work/models (rw, 0 B, 1 file) · digested in 1.2 s"
    ]
    assert text_lines(after, apply(after, "mounted", {"mounts": mounts}, now=2.0)) == []


def test_a_uv_build_shows_its_steps_and_where_the_wheels_came_from():
    from mlcontainer_magics.frontends.display.text import describe_build

    log = [
        "--- uv install (exactly the lock, hash-checked)",
        "Resolved 10 packages in 200ms",
        "Prepared 4 packages in 1.1s",
        "Installed 10 packages in 1.2s",
        "--- compile bytecode",
    ]
    s = apply(RunStatus(), "building", {"image": TAG, "requirements": ["numpy"]}, now=0)
    for i, line in enumerate(log):
        s = apply(s, "build-log", {"line": line}, now=1 + i)
        if i == 2:
            assert describe_progress(s.progress) == "uv install · 4/10 packages fetched"
    assert s.progress.step == "compile bytecode" and s.progress.installed == 10
    steps = {"resolve": 0.8, "uv install": 2.5, "compile bytecode": 4.7, "commit": 4.2}
    wheels = {"installed": 10, "cached": 6, "fetched": 4, "local": 4}
    built = {"image": TAG, "installer": "uv", "steps": steps, "wheels": wheels}
    s = apply(s, "built", built, now=9)
    assert describe_build(s) == (
        "resolve 0.8 s, uv install 2.5 s, compile bytecode 4.7 s, commit 4.2 s · 10 packages: "
        "6 from the wheel cache, 4 fetched (4 from a local wheelhouse)"
    )
    from mlcontainer_magics.frontends.display.widget import WidgetView

    view = WidgetView(on_click=None)
    view.render(s, 10.0)
    assert "6 from the wheel cache" in view.image.value
