"""Pure rendering: pip settings, scripts, locks and the export Dockerfile, as text."""

from mlcontainer_magics.backends.docker import build as render
from mlcontainer_magics.backends.docker.pipconfig import (
    BuildNetwork,
    build_network,
    effective_settings,
)
from mlcontainer_magics.core.requirements import lock_from_report, lock_key

# `pip config list`: one block per config file; the section is pip's ([global], [install]) or
# `:env:` for PIP_* variables, never the file's scope (so `user.` is a section pip never reads).
PIP_LIST = """\
:env:.cert='/etc/ssl/certs/ca-certificates.crt'
:env:.find-links='/opt/wheels'
install.index-url='https://user:pw@private.example/simple'
global.cert='/etc/ssl/global.crt'
global.extra-index-url='file:///opt/pypi/simple https://mirror.example/simple'
global.index-url='https://global.example/simple'
user.index-url='https://ignored.example/simple'
"""


def test_pip_config_priority_and_usable_urls():
    settings = effective_settings(PIP_LIST, {})
    assert settings["cert"] == ("/etc/ssl/certs/ca-certificates.crt", "env")  # env beats global
    # [install] beats [global] though printed before it; pip reads no [user] section
    assert settings["index-url"] == ("https://user:pw@private.example/simple", "install")
    net = build_network(settings, is_file=lambda p: True, is_dir=lambda p: p == "/opt/pypi/simple")
    assert net.index_url == "https://user:pw@private.example/simple"
    # a file:// index on the host is kept (mounted into builds); a missing folder is dropped
    assert net.extra_index_urls == ("file:///opt/pypi/simple", "https://mirror.example/simple")
    assert net.cert_path == "/etc/ssl/certs/ca-certificates.crt"
    assert net.dropped == ("/opt/wheels",) and net.find_links == ()


def test_pip_variables_beat_every_section():
    env = {"PIP_INDEX_URL": "https://var.example/simple", "PIP_CERT": "/var.pem"}
    net = build_network(effective_settings(PIP_LIST, env), is_file=lambda p: True)
    assert (net.index_url, net.cert_path) == ("https://var.example/simple", "/var.pem")


def test_build_network_drops_what_a_container_cannot_reach():
    text = (
        "global.index-url='http://localhost:3141/simple'\n"
        "global.find-links='https://wheels.example/links.html /missing-wheels'\n"
        "global.cert='/missing.pem'\nglobal.trusted-host='a.example b.example'\n"
    )
    net = build_network(
        effective_settings(text, {}), is_file=lambda p: False, is_dir=lambda p: False
    )
    assert net == BuildNetwork(
        trusted_hosts=("a.example", "b.example"),
        find_links=("https://wheels.example/links.html",),
        dropped=("http://localhost:3141/simple", "/missing-wheels", "/missing.pem"),
    )


def test_local_wheel_folders_are_mounted_at_their_path_under_host_dir():
    net = BuildNetwork(
        index_url="https://i.example/simple",
        extra_index_urls=("file:///opt/pypi/simple", "file:///simple"),
        find_links=("/opt/wheels/", "https://w.example/links.html"),
        no_index=True,
    )
    # an index's parent is mounted: its pages link to ../../files/...
    assert render.host_folders(net) == ["/opt/wheels", "/opt/pypi", "/simple"]
    pip = render.pip_conf(net)
    assert "extra-index-url = file:///mlc-host/1/simple file:///mlc-host/2" in pip
    assert "find-links = /mlc-host/0 https://w.example/links.html" in pip
    assert "no-index = true" in pip
    uv = render.uv_toml(net)
    assert 'index-url = "https://i.example/simple"' in uv
    assert 'find-links = ["/mlc-host/0", "https://w.example/links.html"]' in uv
    assert "no-index = true" in uv and 'index-strategy = "unsafe-best-match"' in uv
    assert "/opt" not in pip + uv  # no host path is named in the build's settings
    assert render.from_host_folder("file:///mlc-host/1/simple")
    assert render.from_host_folder("/mlc-host/0")
    assert not render.from_host_folder("https://pypi.org/simple")
    # an engine on another machine cannot mount them: dropped, and said
    remote = render.with_local_folders_dropped(net)
    assert remote.extra_index_urls == () and remote.find_links == ("https://w.example/links.html",)
    assert set(remote.dropped) == {"file:///opt/pypi/simple", "file:///simple", "/opt/wheels/"}
    assert render.host_folders(remote) == []


def test_build_steps_and_wheel_counts_from_the_log():
    timed = [
        (10.0, "--- apt-get install curl"),
        (10.5, "x"),
        (11.0, "--- uv install (the lock)"),
        (13.5, "--- compile bytecode"),
    ]
    assert render.step_seconds(timed, 14.0) == {
        "apt-get install": 1.0,
        "uv install": 2.5,
        "compile bytecode": 0.5,
    }
    assert render.step_seconds([], 1.0) == {}
    log = [
        "Resolved 10 packages in 1ms",
        "Prepared 3 packages in 1.1s",
        "Installed 10 packages in 9ms",
    ]
    assert render.uv_counts(log) == {"prepared": 3, "installed": 10}
    assert render.uv_counts(["Installed 1 package in 1ms"]) == {"prepared": 0, "installed": 1}


def test_pip_conf_points_at_the_build_copy_of_the_ca():
    net = BuildNetwork(index_url="https://i/simple", trusted_hosts=("i",), cert_path="/x.pem")
    text = render.pip_conf(net)
    assert "index-url = https://i/simple" in text and "trusted-host = i" in text
    assert f"cert = {render.BUILD_DIR}/ca.pem" in text and "/x.pem" not in text


def test_build_files_without_ca_do_not_name_one():
    files = render.build_files(BuildNetwork(cert_path="/missing.pem"), requirements=["six"])
    assert b"cert" not in files["pip.conf"] and "ca.pem" not in files
    assert files["requirements.txt"] == b"six\n"


def test_the_host_settings_are_read_once_ahead_and_again_when_pips_variables_change(
    monkeypatch,
):
    import threading
    import time

    from mlcontainer_magics.backends.docker import pipconfig
    from mlcontainer_magics.frontends.magics import ContainerizeMagics

    reads = []
    reading = threading.Event()

    def slow_read(*args, environ, **kwargs):
        reads.append(environ.get("PIP_INDEX_URL"))
        reading.set()
        time.sleep(0.3)  # pip's own start-up, as on the host
        return PIP_LIST, None

    monkeypatch.setattr(pipconfig, "read_config_list", slow_read)
    monkeypatch.delenv("PIP_INDEX_URL", raising=False)
    monkeypatch.delenv("MLCONTAINER_BACKEND", raising=False)
    monkeypatch.setattr(pipconfig, "_READ", {})  # nothing read yet, and nothing kept after
    # a kernel loading the extension starts the reading; a build asking meanwhile waits for it
    ContainerizeMagics()
    assert reading.wait(10) and reads == [None]  # started at load
    assert pipconfig.host_build_network().index_url == "https://user:pw@private.example/simple"
    assert reads == [None]
    pipconfig.host_build_network()
    assert reads == [None]  # read once
    monkeypatch.setenv("PIP_INDEX_URL", "https://var.example/simple")  # `%env` in a notebook
    assert pipconfig.host_build_network().index_url == "https://var.example/simple"
    assert reads == [None, "https://var.example/simple"]


def test_uv_scripts_take_values_only_from_files_and_install_exactly_the_lock():
    resolve = render.resolve_script()
    assert "--generate-hashes" in resolve and "--emit-index-annotation" in resolve
    assert f"{render.BUILD_DIR}/requirements.txt" in resolve and "no-uv" in resolve
    script = render.install_script(apt=("tesseract-ocr",), installer="uv", remove=True)
    assert "tesseract-ocr" not in script and f"-r {render.BUILD_DIR}/remove.txt" in script
    assert "--no-deps --require-hashes" in script and f"{render.BUILD_DIR}/bytecode.py" in script
    assert "pip uninstall" not in render.install_script(installer="uv", remove=False)
    files = render.build_files(
        BuildNetwork(), requirements=["six"], lock=[], installer="uv", remove=["a", "b"]
    )
    assert files["remove.txt"] == b"a\nb\n" and b"UV_CONFIG_FILE" in files["install.sh"]


def test_install_script_takes_values_only_from_files():
    script = render.install_script(apt=("tesseract-ocr",), has_requirements=True)
    assert "tesseract-ocr" not in script  # package names come from apt.txt, never the shell
    assert f"xargs -a {render.BUILD_DIR}/apt.txt" in script
    assert "--report" in script and "PIP_CACHE_DIR" in script
    locked = render.install_script(has_requirements=True, from_lock=True)
    assert "--require-hashes" in locked and "--no-deps" in locked
    assert "apt-get" not in render.install_script(apt=(), has_requirements=False)


def _run_after_built(script: str, path: str, log):
    """Run what install.sh does once it has said render.BUILT, with ``path`` as PATH."""
    import subprocess

    tail = script[script.index(f"echo '{render.BUILT}'") :]
    env = {"PATH": path, "LOG": str(log)}
    return subprocess.run(["/bin/sh", "-eu", "-c", tail], env=env, capture_output=True, text=True)


def test_a_built_script_flushes_the_disks_while_committed_and_never_fails_for_it(tmp_path):
    # The install's writes are flushed while the bytecode compiles, the commit's while it runs
    # (a bounded number of times); then it sleeps until committed and removed.
    script = render.install_script(installer="uv")
    assert script.index("sync -f / || sync; } 2>/dev/null &") < script.index("compile bytecode")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "sleep").write_text('#!/bin/sh\necho "sleep $*" >> "$LOG"\n')
    for refused in (False, True):
        # the filesystem of its layers (sync -f /); where that is refused, every one
        status = "exit 1" if refused else "exit 0"
        (fake / "sync").write_text(f'#!/bin/sh\necho "sync $*" >> "$LOG"\n{status}\n')
        for f in fake.iterdir():
            f.chmod(0o755)
        log = tmp_path / f"log-{refused}"
        done = _run_after_built(script, str(fake), log)
        assert done.returncode == 0, done.stderr
        lines = log.read_text().splitlines()
        assert lines.count("sync -f /") == 20 and lines[-1] == "sleep 3600"
        assert lines.count("sync ") == (20 if refused else 0)
    # no sync in the image at all: straight to sleep
    (fake / "sync").unlink()
    log = tmp_path / "log"
    done = _run_after_built(render.install_script(has_requirements=True), str(fake), log)
    assert done.returncode == 0 and log.read_text().splitlines() == ["sleep 3600"]


REPORT = {
    "version": "1",
    "install": [
        {
            "metadata": {"name": "Six", "version": "1.16.0"},
            "download_info": {"archive_info": {"hash": "sha256=abc"}},
        },
        {
            "metadata": {"name": "numpy", "version": "1.26.4"},
            "download_info": {"archive_info": {"hashes": {"sha256": "def"}}},
        },
    ],
}


def test_lock_from_pip_report():
    lock = lock_from_report(REPORT)
    assert lock == [
        {"name": "numpy", "version": "1.26.4", "hashes": ["sha256:def"]},
        {"name": "six", "version": "1.16.0", "hashes": ["sha256:abc"]},
    ]
    text = render.lock_txt(lock)
    assert "numpy==1.26.4 \\\n    --hash=sha256:def\n" in text
    assert lock_key("sha256:b", [], lock) == lock_key("sha256:b", [], list(reversed(lock)))
    assert lock_key("sha256:b", [], lock) != lock_key("sha256:c", [], lock)


def test_export_dockerfile():
    text = render.dockerfile("python:3.11-slim", apt=("tesseract-ocr",))
    assert text.startswith("FROM python:3.11-slim\n")
    assert "apt-get install -y --no-install-recommends tesseract-ocr" in text
    assert "--require-hashes -r /tmp/requirements.lock" in text
    assert f"USER {render.RUN_USER}" in text
    assert "requirements.lock" not in render.dockerfile("python:3.11-slim", has_lock=False)


def test_untar_keeps_a_lone_files_name():
    from mlcontainer_magics.backends.docker.archive import tar_bytes, untar_files

    assert untar_files([tar_bytes({"report.json": b"{}"})]) == {"report.json": b"{}"}
    assert untar_files([tar_bytes({"a/b.txt": b"x"}, root="out")]) == {"a/b.txt": b"x"}
