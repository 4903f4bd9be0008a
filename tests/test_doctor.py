"""Tests of mlcontainer_magics.frontends.doctor (and of the pip settings it reports).

Unit tests need no daemon. Tests marked ``docker`` use the real (shared) engine: they record every
image and container they make, remove exactly those, and check that nothing else changed.
"""

from __future__ import annotations

import glob
import json
import os
import secrets
import stat
import sys
import tempfile
import time
import types

import pytest

from mlcontainer_magics.backends.docker import pipconfig
from mlcontainer_magics.errors import BaseImageMissing, EngineUnavailable
from mlcontainer_magics.frontends import doctor
from mlcontainer_magics.frontends.doctor import engine as doctor_engine
from mlcontainer_magics.frontends.doctor import offline_base, pip

ROOT_ONLY = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="debootstrap needs root"
)


@pytest.fixture(autouse=True)
def _state_in_tmp(tmp_path, monkeypatch):
    # doctor writes logs under $XDG_STATE_HOME; keep them out of the real home.
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    return tmp_path / "state" / "mlcontainer"


# ---------------------------------------------------------------------------------------------
# Pure parts


def test_default_base_image():
    assert doctor.default_base_image((3, 11, 7, "final", 0)) == "python:3.11-slim"
    assert doctor.default_base_image((3, 9)) == "python:3.9-slim"
    assert doctor.default_base_image() == f"python:{sys.version_info[0]}.{sys.version_info[1]}-slim"


def test_state_dir():
    def sd(env):
        return str(doctor.state_dir(env))

    assert sd({"XDG_STATE_HOME": "/x/state", "HOME": "/h"}) == "/x/state/mlcontainer"
    # a relative XDG_STATE_HOME is invalid per the spec and ignored
    assert sd({"XDG_STATE_HOME": "rel", "HOME": "/h"}) == "/h/.local/state/mlcontainer"
    assert str(doctor.state_dir({"HOME": "/h"})) == "/h/.local/state/mlcontainer"


F = doctor.HostFacts


@pytest.mark.parametrize(
    "facts, install, start, says",
    [
        # root with dockerd: start it detached
        (
            F(dockerd="/usr/sbin/dockerd", is_root=True, apt_get="/usr/bin/apt-get", debian=True),
            False,
            "dockerd",
            ["mlcontainer doctor --fix", "setsid dockerd </dev/null"],
        ),
        # root with dockerd under systemd: let systemd start it
        (
            F(dockerd="/usr/sbin/dockerd", is_root=True, systemd=True),
            False,
            "systemd",
            ["systemctl start docker"],
        ),
        # root on Debian without dockerd: install docker.io, then start
        (
            F(is_root=True, apt_get="/usr/bin/apt-get", debian=True),
            True,
            "dockerd",
            ["apt-get update && apt-get install -y docker.io"],
        ),
        # not root: cannot fix, says what to run with sudo
        (
            F(dockerd="/usr/sbin/dockerd", apt_get="/usr/bin/apt-get", debian=True),
            False,
            "",
            ["sudo setsid dockerd", "usermod -aG docker"],
        ),
        (
            F(apt_get="/usr/bin/apt-get", debian=True),
            False,
            "",
            ["sudo apt-get install -y docker.io"],
        ),
        # root but not Debian and no dockerd: nothing to do automatically
        (F(is_root=True), False, "", ["docs.docker.com/engine/install"]),
        # DOCKER_HOST elsewhere: a local dockerd would not help
        (
            F(dockerd="/usr/sbin/dockerd", is_root=True, docker_host="tcp://10.0.0.5:2376"),
            False,
            "",
            ["DOCKER_HOST=tcp://10.0.0.5:2376", "unset DOCKER_HOST"],
        ),
        # DOCKER_HOST set to the default socket is the local engine
        (
            F(dockerd="/usr/sbin/dockerd", is_root=True, docker_host="unix:///var/run/docker.sock"),
            False,
            "dockerd",
            ["setsid dockerd"],
        ),
    ],
)
def test_plan_engine(facts, install, start, says):
    plan = doctor.plan_engine(facts)
    assert (plan.install, plan.start) == (install, start)
    for s in says:
        assert s in plan.manual


@pytest.mark.parametrize(
    "image, ok",
    [
        ("python:3.11-slim", True),
        ("docker.io/library/python:3.11-slim", True),
        ("library/python:3.11-slim", True),
        ("python:3.11-slim-bookworm", True),
        ("python:3.12-slim", False),
        ("python:3.99-slim", False),
        ("python:3.11", False),  # the full image is not what we can build
        ("python:3.11-slim-bullseye", False),
        ("mlc-debian:bookworm", False),
        ("example.com/python:3.11-slim", False),
    ],
)
def test_offline_buildable(image, ok):
    assert doctor.offline_buildable(image) is ok


def test_render_offline_dockerfile():
    text = doctor.render_offline_dockerfile("rootfs-x:import")
    lines = text.splitlines()
    assert lines[0] == "FROM rootfs-x:import"
    # RUN right after FROM, so that a failing install commits no step image
    assert lines[1].startswith("RUN ")
    assert (
        "apt-get install -y --no-install-recommends python3 python3-venv python3-pip "
        "python-is-python3 ca-certificates"
    ) in text
    assert "rm -rf /var/lib/apt/lists/* /usr/lib/python3*/EXTERNALLY-MANAGED" in text
    assert "sys.version_info[:2] == (3, 11)" in text
    assert "ENV LANG=C.UTF-8" in lines
    assert 'LABEL org.mlcontainer.offline-base="debian-bookworm"' in lines
    assert lines[-1] == 'CMD ["python3"]'
    # every RUN continuation line ends in a backslash, the last one does not
    run = lines[1 : lines.index("ENV LANG=C.UTF-8")]
    assert all(x.endswith("\\") for x in run[:-1]) and not run[-1].endswith("\\")


def test_debootstrap_progress_shows_first_of_each_phase_and_all_problems():
    seen: set = set()
    out = [
        doctor.debootstrap_progress(x, seen)
        for x in [
            "I: Retrieving InRelease",
            "I: Retrieving Packages",
            "I: Validating Packages",
            "I: Retrieving adduser",
            "W: Failure trying to run: chroot",
            "I: Extracting base-files...",
            "I: Extracting bash...",
            "E: Couldn't download packages",
            "",
            "junk",
        ]
    ]
    assert out == [
        "I: Retrieving InRelease",
        None,
        "I: Validating Packages",
        None,
        "W: Failure trying to run: chroot",
        "I: Extracting base-files...",
        None,
        "E: Couldn't download packages",
        None,
        None,
    ]


def test_mount_points_under():
    mounts = (
        "proc /proc proc rw 0 0\n"
        "proc /tmp/mlc-rootfs-ab/rootfs/proc proc rw 0 0\n"
        "sysfs /tmp/mlc-rootfs-ab/rootfs/sys sysfs rw 0 0\n"
        "udev /tmp/mlc-rootfs-ab/rootfs/dev/pts devpts rw 0 0\n"
        "proc /tmp/mlc-rootfs-abc/rootfs/proc proc rw 0 0\n"  # a sibling, not ours
        "tmpfs /tmp/mlc-rootfs-ab/with\\040space tmpfs rw 0 0\n"
    )
    assert doctor.mount_points_under(mounts, "/tmp/mlc-rootfs-ab/") == [
        "/tmp/mlc-rootfs-ab/with space",
        "/tmp/mlc-rootfs-ab/rootfs/sys",
        "/tmp/mlc-rootfs-ab/rootfs/proc",
        "/tmp/mlc-rootfs-ab/rootfs/dev/pts",
    ]
    assert doctor.mount_points_under(mounts, "/tmp/mlc-rootfs-x") == []


# What `pip config list` printed on this project's machines (values are Python reprs).
PIP_CONFIG_LIST = """\
:env:.cert='/etc/ssl/certs/ca-certificates.crt'
:env:.default-timeout='180'
:env:.find-links='/opt/wheels'
global.cert='/etc/ssl/certs/ca-certificates.crt'
global.extra-index-url='file:///opt/pypi/simple file:///opt/pypi-more/simple'
global.find-links='/opt/wheels'
install.trusted-host="pypi.corp.example it's.example"
WARNING: something pip said
no equals sign here
"""


def test_parse_pip_config_list():
    cfg = pipconfig.parse_config_list(PIP_CONFIG_LIST)
    assert cfg == {
        ":env:.cert": "/etc/ssl/certs/ca-certificates.crt",
        ":env:.default-timeout": "180",
        ":env:.find-links": "/opt/wheels",
        "global.cert": "/etc/ssl/certs/ca-certificates.crt",
        "global.extra-index-url": "file:///opt/pypi/simple file:///opt/pypi-more/simple",
        "global.find-links": "/opt/wheels",
        "install.trusted-host": "pypi.corp.example it's.example",
    }
    assert pipconfig.parse_config_list("") == {}


def test_effective_pip_settings_precedence():
    text = (
        "global.index-url='https://g/simple'\ninstall.index-url='https://i/simple'\n"
        "global.cert='/g.pem'\nglobal.find-links='/w'\n"
        "install.trusted-host='i.example'\n:env:.trusted-host='stale.example'\n"
    )
    env = {
        "PIP_EXTRA_INDEX_URL": "https://e/simple",
        "PIP_CERT": "/e.pem",
        "OTHER": "x",
        "PIP_TRUSTED_HOST": "e.example",
    }
    got = pipconfig.effective_settings(text, env)
    assert got == {
        "index-url": ("https://i/simple", "install"),  # [install] over [global]
        "extra-index-url": ("https://e/simple", "env"),  # PIP_* names map to keys
        "cert": ("/e.pem", "env"),  # env over files
        "find-links": ("/w", "global"),
        "trusted-host": ("e.example", "env"),
    }  # env over [install]
    # pip's own `:env:` lines count when the variables are not at hand
    assert pipconfig.effective_settings(text, {})["trusted-host"] == ("stale.example", "env")
    # an empty value does not count: pip falls through to the next section
    assert pipconfig.effective_settings(text, {"PIP_INDEX_URL": " "})["index-url"] == (
        "https://i/simple",
        "install",
    )


@pytest.mark.parametrize(
    "key, value, usable, why",
    [
        ("index-url", "https://pypi.org/simple", True, "network index"),
        ("extra-index-url", "http://pypi.corp.example:8080/simple", True, "network index"),
        ("index-url", "http://localhost:3141/root/pypi", False, "loopback"),
        ("index-url", "http://127.0.0.1:3141/simple", False, "loopback"),
        ("index-url", "http://[::1]:3141/simple", False, "loopback"),
        ("extra-index-url", "file:///opt/pypi/simple", True, "mounted read-only"),
        ("extra-index-url", "file:///gone/simple", False, "no such folder"),
        ("find-links", "/opt/wheels", True, "mounted read-only"),
        ("find-links", "wheels", False, "no such folder"),
        ("find-links", "https://download.example/wheels.html", True, "page of links"),
        ("find-links", "http://localhost:8000/wheels", False, "loopback"),
        ("no-index", "true", True, "find-links only"),
        ("index-url", "ftp://mirror.example/simple", False, "unsupported scheme"),
        ("trusted-host", "pypi.corp.example", True, "host name"),
        ("cert", "/exists.pem", True, "CA bundle"),
        ("cert", "/missing.pem", False, "no such file"),
    ],
)
def test_container_view(key, value, usable, why):
    got = pipconfig.container_view(
        key,
        value,
        is_file=lambda p: p == "/exists.pem",
        is_dir=lambda p: p in ("/opt/pypi/simple", "/opt/wheels"),
    )
    assert got[0] is usable and why in got[1]


def test_pip_report_from():
    env = {"PIP_INDEX_URL": "https://mirror.example/simple"}
    rep = doctor.pip_report_from(
        PIP_CONFIG_LIST, env, is_file=lambda p: True, is_dir=lambda p: p == "/opt/pypi/simple"
    )
    assert rep["ok"] and rep["error"] is None
    s = rep["settings"]
    assert list(s) == ["index-url", "extra-index-url", "find-links", "cert", "trusted-host"]
    assert s["index-url"] == [
        {
            "value": "https://mirror.example/simple",
            "origin": "env",
            "container": True,
            "why": s["index-url"][0]["why"],
        }
    ]
    assert [e["value"] for e in s["extra-index-url"]] == [
        "file:///opt/pypi/simple",
        "file:///opt/pypi-more/simple",
    ]
    # a folder on the host is mounted into builds; one that is not there stays out
    assert [e["container"] for e in s["extra-index-url"]] == [True, False]
    assert s["find-links"][0]["origin"] == "env"
    assert [e["value"] for e in s["trusted-host"]] == ["pypi.corp.example", "it's.example"]
    assert rep["container_usable"] == {
        "index-url": ["https://mirror.example/simple"],
        "extra-index-url": ["file:///opt/pypi/simple"],
        "cert": ["/etc/ssl/certs/ca-certificates.crt"],
        "trusted-host": ["pypi.corp.example", "it's.example"],
    }
    assert rep["host_only"] == [
        "extra-index-url file:///opt/pypi-more/simple",
        "find-links /opt/wheels",
    ]
    json.dumps(rep)  # a plain dict


def test_pip_report_defaults_to_pypi_and_carries_errors():
    rep = doctor.pip_report_from(None, {}, error="No module named pip")
    assert rep["ok"] is False and rep["error"] == "No module named pip"
    assert rep["settings"] == {
        "index-url": [
            {
                "value": "https://pypi.org/simple",
                "origin": "default",
                "container": True,
                "why": "pip's default index",
            }
        ]
    }


# What builds use and what doctor reports come from one reading of pip's settings.
SAME_INPUTS = [
    (PIP_CONFIG_LIST, {}),
    (PIP_CONFIG_LIST, {"PIP_INDEX_URL": "https://mirror.example/simple"}),
    # [install] from /etc/pip.conf printed before [global] from the user's file: install wins
    # (the old build-side parser ranked both alike and took the later line, global)
    (
        "install.index-url='https://install.example/simple'\n"
        "global.index-url='https://global.example/simple'\n",
        {},
    ),
    # a PIP_INDEX_URL variable beats both, also when pip's `:env:` line is not in the text
    (
        "install.index-url='https://install.example/simple'\n"
        "global.index-url='https://global.example/simple'\n",
        {"PIP_INDEX_URL": "https://var.example/simple"},
    ),
    # loopback and path indexes are host-only; the build falls back to PyPI
    (
        "global.index-url='http://127.0.0.1:3141/simple'\n"
        "global.extra-index-url='https://x.example/simple file:///srv/simple'\n"
        "global.cert='/missing.pem'\n",
        {},
    ),
    ("", {}),
]


@pytest.mark.parametrize("text, env", SAME_INPUTS)
def test_doctor_reports_what_builds_use(text, env):
    def is_file(p):
        return p != "/missing.pem"

    net = pipconfig.build_network(pipconfig.effective_settings(text, env), is_file)
    rep = pip.pip_report_from(text, env, is_file=is_file)
    assert rep["container_usable"] == pip.build_uses(net)
    usable = {k: [e["value"] for e in v if e["container"]] for k, v in rep["settings"].items()}
    assert {k: v for k, v in usable.items() if v} == pip.build_uses(net)
    assert usable["index-url"] == [net.index_url or pipconfig.PYPI]
    assert [x.split(" ", 1)[1] for x in rep["host_only"]] == list(net.dropped)


def test_install_over_global_and_variables_over_both():
    text = SAME_INPUTS[2][0]
    assert pip.pip_report_from(text, {})["settings"]["index-url"][0]["origin"] == "install"
    assert (
        pipconfig.build_network(pipconfig.effective_settings(text, {})).index_url
        == "https://install.example/simple"
    )
    env = {"PIP_INDEX_URL": "https://var.example/simple"}
    assert (
        pipconfig.build_network(pipconfig.effective_settings(text, env)).index_url
        == "https://var.example/simple"
    )
    assert pip.pip_report_from(text, env)["settings"]["index-url"][0] == {
        "value": "https://var.example/simple",
        "origin": "env",
        "container": True,
        "why": "a network index; reachable from containers if the host reaches it",
    }


def test_host_only_index_reports_the_pypi_fallback():
    rep = pip.pip_report_from(SAME_INPUTS[4][0], {}, is_file=lambda p: False)
    assert [(e["value"], e["container"]) for e in rep["settings"]["index-url"]] == [
        ("http://127.0.0.1:3141/simple", False),
        ("https://pypi.org/simple", True),
    ]
    assert "builds use it instead" in rep["settings"]["index-url"][1]["why"]


def test_pip_settings_report_runs_pip(tmp_path):
    # A real `pip config list`, with a config file of ours and a home without any.
    conf = tmp_path / "pip.conf"
    conf.write_text(
        "[global]\nindex-url = https://idx.example/simple\nfind-links = /nowhere/wheels\n"
    )
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "PIP_CONFIG_FILE": str(conf),
        "PIP_TRUSTED_HOST": "idx.example",
    }
    rep = doctor.pip_settings_report(environ=env)
    assert rep["ok"], rep["error"]
    s = rep["settings"]
    assert s["index-url"][0]["value"] == "https://idx.example/simple"
    assert s["index-url"][0]["container"] is True
    assert s["find-links"] == [
        {
            "value": "/nowhere/wheels",
            "origin": "global",
            "container": False,
            "why": s["find-links"][0]["why"],
        }
    ]
    assert s["trusted-host"][0] == {
        "value": "idx.example",
        "origin": "env",
        "container": True,
        "why": s["trusted-host"][0]["why"],
    }


def test_pip_settings_report_without_pip():
    rep = doctor.pip_settings_report(python="/nonexistent/python3", environ={})
    assert rep["ok"] is False and "FileNotFoundError" in rep["error"]
    assert rep["settings"]["index-url"][0]["origin"] == "default"


REPORT_OK = {
    "engine": {"ok": True, "version": "20.10.24", "address": "unix:///var/run/docker.sock"},
    "base_image": {
        "ok": True,
        "image": "python:3.11-slim",
        "id": "sha256:" + "ab" * 32,
        "source": "built",
        "offline": True,
        "offline_from": "debian-bookworm",
    },
    "pip": doctor.pip_report_from(
        PIP_CONFIG_LIST, {}, is_file=lambda p: True, is_dir=lambda p: p == "/opt/wheels"
    ),
    "ok": True,
}


def test_format_report(monkeypatch):
    monkeypatch.setattr(sys, "stdout", types.SimpleNamespace(encoding="utf-8"))
    lines = doctor.format_report(REPORT_OK)
    assert lines[0] == "✔ engine: Docker 20.10.24 at unix:///var/run/docker.sock"
    assert lines[1] == (
        "✔ base image python:3.11-slim: sha256:abababababab "
        "(built offline, offline build from debian-bookworm)"
    )
    text = "\n".join(lines)
    assert "! pip extra-index-url: file:///opt/pypi/simple (global; no such folder" in text
    assert "✔ pip find-links: /opt/wheels (env; a folder on the host; mounted read-only" in text
    bad = dict(
        REPORT_OK,
        engine={"ok": False, "error": "No Docker engine answers at X. To fix: Y."},
        base_image={"ok": False, "image": "python:3.11-slim", "skipped": True},
    )
    lines = doctor.format_report(bad)
    assert lines[:2] == [
        "✘ engine: No Docker engine answers at X. To fix: Y.",
        "✘ base image python:3.11-slim: not checked (no engine)",
    ]
    # terminals that cannot print the marks get ASCII
    monkeypatch.setattr(sys, "stdout", types.SimpleNamespace(encoding="ascii"))
    assert doctor.format_report(bad)[0].startswith("FAIL engine: ")


@pytest.mark.parametrize("ok, code", [(True, 0), (False, 1)])
def test_cmd_doctor(monkeypatch, capsys, ok, code):
    calls = []

    def fake_run_doctor(fix, base_image, log):
        calls.append((fix, base_image))
        log("progress line")
        return dict(REPORT_OK, ok=ok)

    monkeypatch.setattr(doctor, "run_doctor", fake_run_doctor)
    args = types.SimpleNamespace(fix=True, base="python:3.11-slim", json=True)
    assert doctor.cmd_doctor(args) == code
    out, err = capsys.readouterr()
    assert json.loads(out)["ok"] is ok  # stdout is one JSON document
    assert "progress line" in err
    assert calls == [(True, "python:3.11-slim")]
    assert doctor.cmd_doctor(types.SimpleNamespace(fix=False, base=None, json=False)) == code
    out, _ = capsys.readouterr()
    assert "progress line" in out and "engine: Docker 20.10.24" in out
    assert calls[-1] == (False, None)


# ---------------------------------------------------------------------------------------------
# ensure_engine without touching the real engine: connect() is faked to fail, dockerd is a script.


def _no_engine(*a, **k):
    raise EngineUnavailable("No Docker engine answers at unix:///nowhere (FileNotFoundError). x")


def _fake_dockerd(tmp_path, body: str) -> str:
    path = tmp_path / "dockerd"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


@pytest.fixture
def own_procs():
    """Kill, at teardown, every dockerd stand-in a test made doctor start."""
    before = len(doctor_engine._started)
    yield
    for proc in doctor_engine._started[before:]:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    del doctor_engine._started[before:]


def test_ensure_engine_without_fix_says_what_to_run(monkeypatch, own_procs):
    monkeypatch.setattr(doctor_engine, "connect", _no_engine)
    monkeypatch.setattr(
        doctor_engine, "host_facts", lambda: F(dockerd="/usr/sbin/dockerd", is_root=True)
    )
    n = len(doctor_engine._started)
    with pytest.raises(EngineUnavailable) as e:
        doctor.ensure_engine(fix=False, log=lambda m: None)
    assert "mlcontainer doctor --fix" in str(e.value) and "setsid dockerd" in str(e.value)
    assert len(doctor_engine._started) == n


def test_ensure_engine_fix_not_root_does_nothing(monkeypatch, own_procs):
    monkeypatch.setattr(doctor_engine, "connect", _no_engine)
    monkeypatch.setattr(
        doctor_engine, "host_facts", lambda: F(apt_get="/usr/bin/apt-get", debian=True)
    )
    monkeypatch.setattr(doctor_engine, "apt_install", lambda *a: pytest.fail("must not apt-get"))
    n = len(doctor_engine._started)
    with pytest.raises(EngineUnavailable, match="sudo apt-get install -y docker.io"):
        doctor.ensure_engine(fix=True, log=lambda m: None)
    assert len(doctor_engine._started) == n


def test_ensure_engine_install_failure_is_engine_unavailable(monkeypatch, own_procs):
    from mlcontainer_magics.errors import MlcError

    calls = []

    def failing_apt(packages, log, log_file):
        calls.append(packages)
        raise MlcError("apt-get update failed (exited 100)")

    monkeypatch.setattr(doctor_engine, "connect", _no_engine)
    monkeypatch.setattr(
        doctor_engine,
        "host_facts",
        lambda: F(is_root=True, apt_get="/usr/bin/apt-get", debian=True),
    )
    monkeypatch.setattr(doctor_engine, "apt_install", failing_apt)
    n = len(doctor_engine._started)
    with pytest.raises(EngineUnavailable) as e:
        doctor.ensure_engine(fix=True, log=lambda m: None)
    assert calls == [["docker.io"]]
    assert "apt-get update failed" in str(e.value)
    assert (
        "To fix by hand: run `mlcontainer doctor --fix`, or run `apt-get update && "
        "apt-get install -y docker.io`" in str(e.value)
    )
    assert len(doctor_engine._started) == n


def test_ensure_engine_reports_dockerd_that_dies(monkeypatch, tmp_path, own_procs, _state_in_tmp):
    fake = _fake_dockerd(tmp_path, 'echo "failed to start daemon: boom"; exit 3')
    monkeypatch.setattr(doctor_engine, "connect", _no_engine)
    monkeypatch.setattr(doctor_engine, "host_facts", lambda: F(dockerd=fake, is_root=True))
    monkeypatch.setattr(doctor_engine, "find_exe", lambda name: fake if name == "dockerd" else None)
    with pytest.raises(EngineUnavailable) as e:
        doctor.ensure_engine(fix=True, log=lambda m: None, wait=20)
    assert "exited with status 3" in str(e.value) and "boom" in str(e.value)
    assert "boom" in (_state_in_tmp / "dockerd.log").read_text()


def test_ensure_engine_starts_dockerd_detached_and_waits(monkeypatch, tmp_path, own_procs):
    fake = _fake_dockerd(tmp_path, "exec sleep 60")
    monkeypatch.setattr(doctor_engine, "host_facts", lambda: F(dockerd=fake, is_root=True))
    monkeypatch.setattr(doctor_engine, "find_exe", lambda name: fake if name == "dockerd" else None)
    answers = iter([False, False, False, True])  # the first call is the initial check
    client = object()

    def connect(**k):
        if not next(answers, True):
            _no_engine()
        return client

    monkeypatch.setattr(doctor_engine, "connect", connect)
    got, actions = doctor_engine.obtain_engine(fix=True, log=lambda m: None, wait=20)
    assert got is client
    proc = doctor_engine._started[-1]
    assert actions == [f"started dockerd pid {proc.pid}"]
    assert proc.poll() is None
    assert os.getsid(proc.pid) == proc.pid  # its own session: it outlives the notebook


def test_ensure_engine_gives_up_after_wait(monkeypatch, tmp_path, own_procs):
    fake = _fake_dockerd(tmp_path, "exec sleep 60")
    monkeypatch.setattr(doctor_engine, "connect", _no_engine)
    monkeypatch.setattr(doctor_engine, "host_facts", lambda: F(dockerd=fake, is_root=True))
    monkeypatch.setattr(doctor_engine, "find_exe", lambda name: fake if name == "dockerd" else None)
    t0 = time.monotonic()
    with pytest.raises(EngineUnavailable, match=r"did not answer within 1 s"):
        doctor.ensure_engine(fix=True, log=lambda m: None, wait=1.0)
    assert time.monotonic() - t0 < 10


# ---------------------------------------------------------------------------------------------
# ensure_base_image decisions with a fake client (no daemon)


class _FakeImages:
    def __init__(self, present: dict):
        self.present = present
        self.pulled = []

    def get(self, name):
        import docker.errors

        if name in self.present:
            return types.SimpleNamespace(id=self.present[name], labels={})
        raise docker.errors.ImageNotFound(f"No such image: {name}")

    def pull(self, repo, tag=None):
        import docker.errors

        self.pulled.append((repo, tag))
        raise docker.errors.APIError("Get https://registry-1.docker.io/v2/: no such host")


@pytest.fixture
def fake_build(monkeypatch):
    built = []

    def build(client, tag, log):
        built.append(tag)
        return "sha256:built"

    monkeypatch.setattr(offline_base, "build_offline_base", build)
    return built


def test_ensure_base_image_present_does_not_pull(fake_build):
    c = types.SimpleNamespace(images=_FakeImages({"python:3.11-slim": "sha256:here"}))
    got = offline_base.obtain_base_image(c, "python:3.11-slim", True, print)
    assert got == ("sha256:here", "local")
    assert c.images.pulled == [] and fake_build == []


def test_ensure_base_image_builds_3_11_offline_only_with_fix(fake_build):
    c = types.SimpleNamespace(images=_FakeImages({}))
    with pytest.raises(
        BaseImageMissing,
        match=r"run `mlcontainer doctor --fix` to build it "
        r"offline from Debian bookworm",
    ):
        doctor.ensure_base_image(c, "python:3.11-slim", fix=False, log=lambda m: None)
    assert fake_build == []
    got = offline_base.obtain_base_image(c, "python:3.11-slim", True, lambda m: None)
    assert got == ("sha256:built", "built") and fake_build == ["python:3.11-slim"]
    assert c.images.pulled == [("python", "3.11-slim")] * 2


def test_ensure_base_image_other_versions_say_how_to_provide_one(fake_build):
    c = types.SimpleNamespace(images=_FakeImages({}))
    with pytest.raises(BaseImageMissing) as e:
        doctor.ensure_base_image(c, "python:3.12-slim", fix=True, log=lambda m: None)
    msg = str(e.value)
    assert "python:3.12-slim missing" in msg and "no such host" in msg
    assert "docker load" in msg and "--base" in msg
    assert fake_build == []
    # an untagged name pulls :latest, never every tag
    with pytest.raises(BaseImageMissing):
        doctor.ensure_base_image(c, "myorg/base", fix=True, log=lambda m: None)
    assert c.images.pulled[-1] == ("myorg/base", "latest")


def test_descendants_are_listed_leaves_first():
    rows = [
        {"Id": "root", "ParentId": ""},
        {"Id": "a", "ParentId": "root"},
        {"Id": "b", "ParentId": "a"},
        {"Id": "c", "ParentId": "b"},
        {"Id": "a2", "ParentId": "root"},
        {"Id": "other", "ParentId": "x"},
        {"Id": "x", "ParentId": ""},
    ]
    client = types.SimpleNamespace(api=types.SimpleNamespace(images=lambda all: rows))
    got = offline_base._descendants(client, "root")
    assert sorted(got) == ["a", "a2", "b", "c"]
    assert got.index("c") < got.index("b") < got.index("a")


# ---------------------------------------------------------------------------------------------
# The real engine


@pytest.fixture(scope="module")
def client():
    from mlcontainer_magics.backends.docker.engine import connect

    try:
        return connect()
    except EngineUnavailable as e:  # fail, not skip: deselect with -m "not docker" instead
        pytest.fail(f"integration tests need a Docker engine: {e}")


def _image_ids(client) -> set:
    return {i["Id"] for i in client.api.images(all=True)}


def _tags(client) -> set:
    return {t for i in client.api.images(all=True) for t in (i.get("RepoTags") or [])}


def _rootfs_dirs() -> set:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "mlc-rootfs-*")))


# Images that exist on this machine already and belong to others: they must survive.
KEEP = ("python:3.11-slim", "mlc-debian:bookworm")


def _kept(client) -> dict:
    import docker.errors

    out = {}
    for name in KEEP:
        try:
            out[name] = client.images.get(name).id
        except docker.errors.ImageNotFound:
            pass
    return out


@pytest.mark.docker
def test_engine_check_real(client):
    c, actions = doctor_engine.obtain_engine(fix=False, log=lambda m: None)
    assert actions == [] and c.ping()
    info = doctor.engine_info(c)
    assert info["ok"] and info["version"] == client.version()["Version"]


@pytest.mark.docker
def test_run_doctor_real(client, capsys):
    present = next(iter(_kept(client)), None)
    if present is None:
        pytest.skip("no pre-existing base image to check against")
    report = doctor.run_doctor(fix=False, base_image=present, log=lambda m: None)
    assert report["ok"] is True
    assert report["engine"]["version"] == client.version()["Version"]
    assert report["base_image"] == dict(
        report["base_image"],
        ok=True,
        image=present,
        source="local",
        id=client.images.get(present).id,
    )
    assert report["pip"]["settings"]["index-url"]
    code = doctor.cmd_doctor(types.SimpleNamespace(fix=False, base=present, json=True))
    assert code == 0 and json.loads(capsys.readouterr().out)["ok"] is True


@pytest.mark.docker
def test_ensure_base_image_present_real(client, monkeypatch):
    name = next(iter(_kept(client)), None)
    if name is None:
        pytest.skip("no pre-existing base image to check against")
    monkeypatch.setattr(client.images, "pull", lambda *a, **k: pytest.fail("must not pull"))
    assert (
        doctor.ensure_base_image(client, name, fix=False, log=lambda m: None)
        == client.images.get(name).id
    )


@pytest.mark.docker
def test_missing_3_99_is_reported_and_leaves_nothing(client, monkeypatch, _state_in_tmp):
    monkeypatch.setattr(
        offline_base,
        "build_offline_base",
        lambda *a, **k: pytest.fail("3.99 must not be built offline"),
    )
    before_tags, dirs = _tags(client), _rootfs_dirs()
    with pytest.raises(BaseImageMissing) as e:
        doctor.ensure_base_image(client, "python:3.99-slim", fix=True, log=lambda m: None)
    msg = str(e.value)
    assert msg.startswith("base image python:3.99-slim missing (not present locally; pull failed")
    assert "docker load" in msg and "--base" in msg and "python:3.11-slim" in msg
    new_tags = _tags(client) - before_tags
    assert not [t for t in new_tags if t.startswith(("python:3.99", "mlc-offline-rootfs-"))]
    assert _rootfs_dirs() == dirs
    assert not _state_in_tmp.exists()  # no log written: nothing was attempted


def _purge_tree(client, root_id: str) -> None:
    """Remove ``root_id`` and every image built on it, leaves first (test-side, independent of
    doctor's own cleanup so that a regression there still leaves nothing behind)."""
    import docker.errors

    children: dict = {}
    for row in client.api.images(all=True):
        children.setdefault(row.get("ParentId") or "", []).append(row["Id"])
    order, todo = [], [root_id]
    while todo:
        i = todo.pop()
        order.append(i)
        todo.extend(children.get(i, []))
    for i in reversed(order):
        try:
            client.images.remove(i, force=True)
        except docker.errors.NotFound:
            pass


@pytest.fixture
def imports(client, monkeypatch):
    """Ids of the rootfs images build_offline_base imported; purged with descendants at the end."""
    import docker.errors

    seen: list = []
    real = offline_base._drop_import

    def spy(client_, import_ref, build_ok, log):
        try:
            seen.append(client_.images.get(import_ref).id)
        except docker.errors.ImageNotFound:
            pass
        return real(client_, import_ref, build_ok, log)

    monkeypatch.setattr(offline_base, "_drop_import", spy)
    yield seen
    for root in seen:
        _purge_tree(client, root)


@pytest.fixture
def own_images(client):
    """Tags this test makes; force-removed at teardown if the test left them."""
    import docker.errors

    tags: list = []
    yield tags
    for t in tags:
        try:
            client.images.remove(t, force=True)
        except docker.errors.NotFound:
            pass


@pytest.mark.docker
@ROOT_ONLY
def test_offline_build_debootstrap_failure(client, own_images, imports, _state_in_tmp):
    """An unreachable mirror (a closed port on loopback) fails fast, says why, leaves nothing."""
    tag = f"mlctest-nobase-{secrets.token_hex(4)}:latest"
    own_images.append(tag)
    before_tags, dirs = _tags(client), _rootfs_dirs()
    messages: list = []
    with pytest.raises(BaseImageMissing) as e:
        doctor.build_offline_base(
            client, tag, log=messages.append, mirror="http://127.0.0.1:9/debian"
        )
    assert "debootstrap failed" in str(e.value)
    assert "Failed getting release file" in str(e.value)  # the log's tail is in the message
    assert str(_state_in_tmp / "offline-base.log") in str(e.value)
    assert any("debootstrap: E:" in m for m in messages)
    assert imports == []  # nothing was imported
    assert _rootfs_dirs() == dirs
    assert not [
        t for t in _tags(client) - before_tags if t == tag or t.startswith("mlc-offline-rootfs-")
    ]


@pytest.mark.docker
@ROOT_ONLY
def test_offline_build_failure_cleans_up(client, monkeypatch, own_images, imports):
    """A build failing after the import removes the imported image and its step images."""
    tag = f"mlctest-failbase-{secrets.token_hex(4)}:latest"
    own_images.append(tag)

    def tiny_rootfs(rootfs, suite, mirror, log, log_file):  # instead of 30 s of debootstrap
        (rootfs / "etc/apt").mkdir(parents=True)
        (rootfs / "marker").write_text("x")

    def failing_dockerfile(from_ref, suite="bookworm"):
        # two steps that commit images, then one that fails without needing a shell
        return f"FROM {from_ref}\nENV A=1\nLABEL mlctest=1\nCOPY missing-file /x\n"

    monkeypatch.setattr(offline_base, "_run_debootstrap", tiny_rootfs)
    monkeypatch.setattr(offline_base, "render_offline_dockerfile", failing_dockerfile)
    seen: dict = {}
    real_descendants = offline_base._descendants

    def spy(client_, root_id):  # records what cleanup found hanging off the imported image
        seen["root"], seen["children"] = root_id, real_descendants(client_, root_id)
        return seen["children"]

    monkeypatch.setattr(offline_base, "_descendants", spy)
    before_tags, dirs, kept = _tags(client), _rootfs_dirs(), _kept(client)
    with pytest.raises(BaseImageMissing, match="building the offline base failed"):
        doctor.build_offline_base(client, tag, log=lambda m: None)
    # the failed build had committed the ENV and LABEL steps on top of the import ...
    assert imports and seen.get("root") == imports[0] and len(seen["children"]) == 2
    # ... and all three are gone, as are the tags and the temp dir
    assert not ({imports[0], *seen["children"]} & _image_ids(client))
    new_tags = _tags(client) - before_tags
    assert not [t for t in new_tags if t == tag or t.startswith("mlc-offline-rootfs-")]
    assert _rootfs_dirs() == dirs
    assert _kept(client) == kept


@pytest.mark.docker
@ROOT_ONLY
def test_build_offline_base_real(client, own_images, imports, _state_in_tmp, record_property):
    """The real thing: debootstrap, import, build; then the image works and removes cleanly."""
    import docker.errors

    tag = f"mlctest-base-{secrets.token_hex(4)}:latest"
    own_images.append(tag)
    before_tags, dirs, kept = _tags(client), _rootfs_dirs(), _kept(client)
    messages: list = []

    t0 = time.monotonic()
    image_id = doctor.build_offline_base(client, tag, log=messages.append)
    took = time.monotonic() - t0
    record_property("offline_base_build_seconds", round(took, 1))
    print(f"offline base build took {took:.1f} s")

    image = client.images.get(tag)
    assert image.id == image_id
    cfg = image.attrs["Config"]
    assert image.labels.get("org.mlcontainer.offline-base") == "debian-bookworm"
    assert "LANG=C.UTF-8" in cfg["Env"] and cfg["Cmd"] == ["python3"]
    assert any(e.startswith("PATH=/usr/local/sbin:/usr/local/bin:") for e in cfg["Env"])
    chain = [h["Id"] for h in client.api.history(image_id) if h["Id"] != "<missing>"]
    # the imported rootfs is the root of the new image's chain
    assert len(chain) >= 2 and imports == [chain[-1]]
    # the imported intermediate is untagged (it is the root layer of the new image)
    assert not [t for t in _tags(client) - before_tags if t.startswith("mlc-offline-rootfs-")]
    assert _rootfs_dirs() == dirs
    assert any("debootstrap" in m for m in messages) and any("Step " in m for m in messages)
    assert "Base system installed successfully" in (_state_in_tmp / "offline-base.log").read_text()

    # It behaves like python:3.11-slim: python is 3.11, pip has no PEP 668 block.
    script = (
        "import glob, subprocess, sys; assert sys.version_info[:2] == (3, 11); "
        "assert not glob.glob('/usr/lib/python3*/EXTERNALLY-MANAGED'); "
        "subprocess.run([sys.executable, '-m', 'pip', '--version'], check=True); "
        "print('fine')"
    )
    container = client.containers.create(tag, ["python", "-c", script], network_disabled=True)
    try:
        container.start()
        status = container.wait(timeout=120)
        logs = container.logs().decode()
        assert status["StatusCode"] == 0, logs
        assert logs.strip().endswith("fine")
    finally:
        container.remove(force=True)

    # Removing the tag removes the whole chain: nothing of ours remains.
    client.images.remove(tag)
    after = _image_ids(client)
    assert not set(chain) & after
    try:
        client.images.get(tag)
        pytest.fail(f"{tag} still exists")
    except docker.errors.ImageNotFound:
        pass
    assert not [
        c.id for c in client.containers.list(all=True) if c.attrs.get("Image") in set(chain)
    ]
    assert _kept(client) == kept
