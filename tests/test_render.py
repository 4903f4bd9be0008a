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
    net = build_network(settings, is_file=lambda p: True)
    assert net.index_url == "https://user:pw@private.example/simple"
    assert net.extra_index_urls == ("https://mirror.example/simple",)
    assert net.cert_path == "/etc/ssl/certs/ca-certificates.crt"
    assert set(net.dropped) == {"file:///opt/pypi/simple", "/opt/wheels"}


def test_pip_variables_beat_every_section():
    env = {"PIP_INDEX_URL": "https://var.example/simple", "PIP_CERT": "/var.pem"}
    net = build_network(effective_settings(PIP_LIST, env), is_file=lambda p: True)
    assert (net.index_url, net.cert_path) == ("https://var.example/simple", "/var.pem")


def test_build_network_drops_what_a_container_cannot_reach():
    text = (
        "global.index-url='http://localhost:3141/simple'\n"
        "global.find-links='https://wheels.example/links.html'\n"
        "global.cert='/missing.pem'\nglobal.trusted-host='a.example b.example'\n"
    )
    net = build_network(effective_settings(text, {}), is_file=lambda p: False)
    assert net == BuildNetwork(
        trusted_hosts=("a.example", "b.example"),
        dropped=(
            "http://localhost:3141/simple",
            "https://wheels.example/links.html",
            "/missing.pem",
        ),
    )


def test_pip_conf_points_at_the_build_copy_of_the_ca():
    net = BuildNetwork(index_url="https://i/simple", trusted_hosts=("i",), cert_path="/x.pem")
    text = render.pip_conf(net)
    assert "index-url = https://i/simple" in text and "trusted-host = i" in text
    assert f"cert = {render.BUILD_DIR}/ca.pem" in text and "/x.pem" not in text


def test_build_files_without_ca_do_not_name_one():
    files = render.build_files(BuildNetwork(cert_path="/missing.pem"), requirements=["six"])
    assert b"cert" not in files["pip.conf"] and "ca.pem" not in files
    assert files["requirements.txt"] == b"six\n"


def test_install_script_takes_values_only_from_files():
    script = render.install_script(apt=("tesseract-ocr",), has_requirements=True)
    assert "tesseract-ocr" not in script  # package names come from apt.txt, never the shell
    assert f"xargs -a {render.BUILD_DIR}/apt.txt" in script
    assert "--report" in script and "PIP_CACHE_DIR" in script
    locked = render.install_script(has_requirements=True, from_lock=True)
    assert "--require-hashes" in locked and "--no-deps" in locked
    assert "apt-get" not in render.install_script(apt=(), has_requirements=False)


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
