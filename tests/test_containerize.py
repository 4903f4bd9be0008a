"""%%containerize against the real Docker engine."""

from __future__ import annotations

import io
import json
import signal
import tarfile
import threading
import time

import pytest
from IPython.core.error import UsageError

from conftest import env_images
from mlcontainer_magics.backends import Backends
from mlcontainer_magics.errors import BaseImageMissing, BuildError, EngineUnavailable, RunError

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("no_leaks")]


def run(ip, line, cell, capsys=None):
    ip.run_cell_magic("containerize", line, cell)
    return capsys.readouterr() if capsys else None


def test_requirement_version_is_the_containers_not_the_kernels(ip, capsys):
    out = run(
        ip, "-r six==1.16.0", "import six, os\nprint('six', six.__version__, os.getuid())", capsys
    )
    assert "six 1.16.0 1000" in out.out  # and not as root
    from importlib.metadata import PackageNotFoundError, version

    try:
        assert version("six") != "1.16.0"  # the kernel's own six is another version
    except PackageNotFoundError:
        pass  # or the kernel has none at all


def test_same_requirements_other_code_builds_no_new_image(ip, capsys, docker_client):
    run(ip, "-r six==1.16.0", "print('first')", capsys)
    before = env_images(docker_client)
    out = run(ip, "-r six==1.16.0", "import six\nprint('second', six.__version__)", capsys)
    assert "second 1.16.0" in out.out
    assert env_images(docker_client) == before


def test_environment_records_its_lock_and_different_locks_differ(ip, namespace):
    from mlcontainer_magics.backends.docker.backend import DockerBackend
    from mlcontainer_magics.core.spec import EnvSpec

    backend = DockerBackend(namespace=namespace)
    six = backend.ensure_environment(EnvSpec("python:3.11-slim", (), ("six==1.16.0",)))
    assert [(e["name"], e["version"]) for e in six.lock] == [("six", "1.16.0")]
    assert six.lock[0]["hashes"][0].startswith("sha256:")
    other = backend.ensure_environment(EnvSpec("python:3.11-slim", (), ("six==1.15.0",)))
    assert other.image_id != six.image_id and other.lock[0]["version"] == "1.15.0"


def test_adding_a_package_builds_on_the_environment_it_extends(ip, namespace, capsys):
    """-r six then -r six idna: the second build starts from the first image and installs only
    idna; its lock is still complete. --rebuild starts from the base again."""
    from mlcontainer_magics.backends.docker.backend import DockerBackend
    from mlcontainer_magics.core.spec import EnvSpec

    backend = DockerBackend(namespace=namespace)
    six = backend.ensure_environment(EnvSpec("python:3.11-slim", (), ("six==1.16.0",)))
    seen = []
    spec = EnvSpec("python:3.11-slim", (), ("idna==3.7", "six==1.16.0"))
    both = backend.ensure_environment(spec, events=lambda phase, **i: seen.append((phase, i)))
    building = dict(seen)["building"]
    assert building["on"] == backend.client.images.get(six.image_id).tags[0]
    # uv lists what it installs, one " + name==version" line each: idna only, six was there
    installed = [line.strip() for line in both.build_log.splitlines() if line.strip()[:2] == "+ "]
    assert installed == ["+ idna==3.7"]
    assert [(e["name"], e["version"]) for e in both.lock] == [("idna", "3.7"), ("six", "1.16.0")]
    assert both.lock[1] == six.lock[0]  # the parent's pin, with its hash
    image = backend.client.images.get(both.image_id)
    assert image.labels["org.mlcontainer.parent"] == six.image_id
    assert image.attrs["Parent"] == six.image_id  # its layers are shared, not copied

    fresh = backend.ensure_environment(spec, rebuild=True)
    installed = [line.strip() for line in fresh.build_log.splitlines() if line.strip()[:2] == "+ "]
    assert "+ six==1.16.0" in installed and fresh.lock == both.lock
    out = run(
        ip,
        "-r six==1.16.0 idna==3.7 --no-capture",
        "import idna, six\nprint('both', idna.__version__, six.__version__)",
        capsys,
    )
    assert "both 3.7 1.16.0" in out.out


def test_a_deep_environment_is_not_built_on(namespace, monkeypatch):
    """Layers are finite (overlay2 mounts at most 128): past MAX_ENV_LAYERS, from the base."""
    from mlcontainer_magics.backends.docker import environments
    from mlcontainer_magics.backends.docker.backend import DockerBackend
    from mlcontainer_magics.core.spec import EnvSpec

    backend = DockerBackend(namespace=namespace)
    six = backend.ensure_environment(EnvSpec("python:3.11-slim", (), ("six==1.16.0",)))
    layers = len(backend.client.images.get(six.image_id).attrs["RootFS"]["Layers"])
    monkeypatch.setattr(environments, "MAX_ENV_LAYERS", layers)
    seen = []
    env = backend.ensure_environment(
        EnvSpec("python:3.11-slim", (), ("six==1.16.0", "idna==3.6")),
        events=lambda phase, **i: seen.append((phase, i)),
    )
    assert dict(seen)["building"]["on"] is None
    assert backend.client.images.get(env.image_id).labels["org.mlcontainer.parent"] == ""


def test_equivalent_specs_share_one_environment(ip, capsys, docker_client):
    run(ip, "-r six==1.16.0", "pass")
    before = env_images(docker_client)
    run(ip, "-r 'six>=1.16,<1.17'", "import six; print(six.__version__)", capsys)
    assert env_images(docker_client) == before  # same lock -> same image, just another tag


def test_failing_cell_raises_with_its_traceback(ip, capsys):
    with pytest.raises(RunError) as e:
        run(ip, "", "def f():\n    raise ValueError('boom')\nf()")
    assert e.value.exit_code == 1 and e.value.reason == "failed"
    assert "ValueError: boom" in e.value.logs and 'File "/mlc/cell.py", line 3' in e.value.logs
    assert "mlc_runner" not in e.value.logs  # the traceback starts in the cell
    assert "ValueError: boom" in capsys.readouterr().err  # streamed as it happened


def test_failing_cell_shows_the_traceback_in_the_notebook(ip):
    result = ip.run_cell("%%containerize\nraise KeyError('nope')\n")
    assert isinstance(result.error_in_exec, RunError)


def test_no_raise_error(ip, capsys):
    run(ip, "--no-raise-error", "import sys; sys.exit(3)")
    assert "exit code 3" in capsys.readouterr().err


def test_output_streams_while_the_cell_runs(ip):
    seen = []
    real_write = __import__("mlcontainer_magics.frontends.magics", fromlist=["x"])._write_output

    def spy(stream, text):
        seen.append((time.monotonic(), text))
        real_write(stream, text)

    import mlcontainer_magics.frontends.magics as m

    m._write_output, original = spy, m._write_output
    try:
        run(ip, "", "import time\nprint('a')\ntime.sleep(1.5)\nprint('b')")
    finally:
        m._write_output = original
    times = {text.strip(): t for t, text in seen if text.strip() in ("a", "b")}
    assert times["b"] - times["a"] > 1.0  # 'a' arrived before the container finished


def test_env_resources_and_network(ip, capsys):
    out = run(
        ip,
        "-e MODE=fast -e 'GREETING=hi there' --memory 64m --cpus 0.5 --network none",
        "import os, socket\nprint(os.environ['MODE'], os.environ['GREETING'])\n"
        "print(open('/sys/fs/cgroup/memory/memory.limit_in_bytes').read().strip())\n"
        "try:\n    socket.create_connection(('deb.debian.org', 80), timeout=2)\n"
        "    print('net')\nexcept OSError:\n    print('no network')",
        capsys,
    )
    assert "fast hi there" in out.out
    assert str(64 * 2**20) in out.out
    assert "no network" in out.out


def test_timeout_stops_and_removes_the_container(ip, docker_client):
    t0 = time.monotonic()
    with pytest.raises(RunError, match="--timeout") as e:
        run(ip, "--timeout 2", "import time\nprint('start', flush=True)\ntime.sleep(60)")
    assert e.value.reason == "timeout"
    assert time.monotonic() - t0 < 30


def test_interrupt_stops_and_removes_the_container_at_once(ip, docker_client, namespace):
    """Ctrl-C arrives as SIGINT in the kernel's main thread while the cell streams output."""
    flt = {"label": f"org.mlcontainer.namespace={namespace}"}

    def interrupt_when_running():
        for _ in range(200):
            if docker_client.containers.list(filters=flt):
                time.sleep(0.5)
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
                return
            time.sleep(0.05)

    threading.Thread(target=interrupt_when_running, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        run(ip, "-n interrupted", "import time\nprint('working', flush=True)\ntime.sleep(120)")
    assert docker_client.containers.list(all=True, filters=flt) == []
    magics = ip.magics_manager.registry["ContainerizeMagics"]
    assert magics.store.get("interrupted")["status"] == "interrupted"


def test_bad_requirement_fails_before_any_build(ip, docker_client):
    before = env_images(docker_client)
    with pytest.raises(UsageError, match="Invalid requirement 'numpy=='"):
        run(ip, "-r six==1.16.0 numpy==", "print(1)")
    assert env_images(docker_client) == before


def test_syntax_error_fails_before_any_build(ip):
    with pytest.raises(UsageError, match="syntax error at line 2"):
        run(ip, "-r six==1.16.0", "x = 1\nprint(x\n")


def test_bad_flags_are_usage_errors(ip):
    with pytest.raises(UsageError):
        run(ip, "--no-such-flag", "pass")
    with pytest.raises(UsageError, match="--memory 'lots'"):
        run(ip, "--memory lots", "pass")
    with pytest.raises(UsageError, match="--timeout"):
        run(ip, "--timeout 0", "pass")


def test_help_lists_options_and_settings(ip):
    from mlcontainer_magics.frontends.magics import ContainerizeMagics

    doc = ContainerizeMagics.containerize.__doc__
    for flag in ("--requirements", "--base", "--apt", "--timeout", "--no-raise-error"):
        assert flag in doc
    assert "MLCONTAINER_BASE_IMAGE" in ContainerizeMagics.__doc__


def test_config_and_environment_defaults(ip, monkeypatch):
    from mlcontainer_magics.frontends.magics import ContainerizeMagics

    monkeypatch.setenv("MLCONTAINER_BASE_IMAGE", "python:3.11-slim")
    monkeypatch.setenv("MLCONTAINER_TIMEOUT", "12")
    fresh = ContainerizeMagics(shell=None)
    assert fresh.base_image == "python:3.11-slim" and fresh.timeout == 12.0
    ip.run_line_magic("config", "ContainerizeMagics.timeout = 5")
    try:
        magics = ip.magics_manager.registry["ContainerizeMagics"]
        assert magics.timeout == 5
    finally:
        ip.run_line_magic("config", "ContainerizeMagics.timeout = None")


def test_missing_base_image_says_how_to_provide_one(ip):
    with pytest.raises(BaseImageMissing, match="mlcontainer doctor --fix"):
        run(ip, "--base mlctest-no-such-image:1", "pass")


def test_no_engine_says_how_to_start_one(ip, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///tmp/mlctest-no-engine.sock")
    magics = ip.magics_manager.registry["ContainerizeMagics"]
    saved, magics.backends = magics.backends, Backends(magics)  # none connected yet
    try:
        with pytest.raises(EngineUnavailable, match="mlcontainer doctor --fix"):
            run(ip, "", "pass")
    finally:
        magics.backends = saved


def test_failing_install_shows_the_installers_message(ip, docker_client):
    before = env_images(docker_client)
    with pytest.raises(BuildError) as e:
        run(ip, "-r mlctest-no-such-package==9.9", "pass")
    # uv's own words, resolving: the package is in no index the build can see
    assert str(e.value).startswith("Resolving the requirements failed (exit 1):")
    assert "mlctest-no-such-package was not found in the package registry" in str(e.value)
    assert env_images(docker_client) == before


def test_build_secrets_never_reach_the_image(ip, docker_client, namespace):
    """The CA bundle and pip settings used while installing are absent from layers and config."""
    run(ip, "-r six==1.16.0", "pass")
    image = next(
        i
        for i in docker_client.images.list(
            filters={"label": f"org.mlcontainer.namespace={namespace}"}
        )
        if json.loads(i.labels.get("org.mlcontainer.requirements", "[]")) == ["six==1.16.0"]
    )
    assert not any(e.startswith("PIP_") for e in image.attrs["Config"]["Env"])
    saved = io.BytesIO(b"".join(image.save(named=False)))
    base_layers = len(docker_client.images.get("python:3.11-slim").attrs["RootFS"]["Layers"])
    names = []
    with tarfile.open(fileobj=saved) as outer:
        manifest = json.load(outer.extractfile("manifest.json"))
        for top in manifest[0]["Layers"][base_layers:]:  # the committed environment layers
            with tarfile.open(fileobj=outer.extractfile(top)) as layer:
                names += layer.getnames()
                for member in layer.getmembers():
                    assert "mlc-build/" not in member.name and "pip.conf" not in member.name
                    if member.isfile():
                        data = layer.extractfile(member).read()
                        assert b"BEGIN CERTIFICATE" not in data, member.name
    assert any("six.py" in n for n in names)


def test_environment_declares_no_volumes_and_runs_leave_none(ip, docker_client, namespace):
    """The build's cache and settings mounts are not VOLUMEs of the image: a run of it makes no
    anonymous volume (no_leaks counts those too)."""
    run(ip, "-r six==1.16.0 --no-capture", "pass")
    for image in docker_client.images.list(
        filters={"label": [f"org.mlcontainer.namespace={namespace}", "org.mlcontainer.role=env"]}
    ):
        assert not image.attrs["Config"].get("Volumes"), image.tags
