"""Environments on the real engine: uv installs exactly the lock, one wheel cache serves every
environment of a namespace, a new one builds on the environment it shares most pins with, and
the host's own wheel folders are mounted into builds (an air-gapped host builds from them)."""

from __future__ import annotations

import base64
import hashlib
import json
import zipfile

import pytest

from conftest import NAMESPACE
from mlcontainer_magics.backends.docker.backend import DockerBackend
from mlcontainer_magics.backends.docker.pipconfig import BuildNetwork, host_build_network
from mlcontainer_magics.core.spec import EnvSpec
from mlcontainer_magics.errors import BuildError

BASE = "python:3.11-slim"
pytestmark = pytest.mark.docker

# Every distribution of the environment, as the image has it: name, version, its installer.
INSTALLED = (
    "import json, importlib.metadata as m; print(json.dumps({d.metadata['Name'].lower(): "
    "[d.version, (d.read_text('INSTALLER') or '').strip()] for d in m.distributions()}))"
)


class Events(list):
    def __call__(self, phase, **info):
        self.append((str(phase), info))

    def of(self, phase):
        return [info for p, info in self if p == phase]


def installed(docker_client, image_id) -> dict:
    out = docker_client.containers.run(image_id, ["python", "-c", INSTALLED], remove=True)
    return json.loads(out)


def remove_images(docker_client, *envs):
    for env in envs:
        for ref in (env.image, env.image_id):
            try:
                docker_client.images.remove(ref, force=True)
            except Exception:
                pass  # gone with its tag already


def test_uv_installs_exactly_the_lock_and_a_second_environment_builds_on_the_first(
    docker_client, no_leaks
):
    backend = DockerBackend(namespace=NAMESPACE)
    first_events, second_events = Events(), Events()
    first = backend.ensure_environment(
        EnvSpec(BASE, (), ("requests==2.32.3", "six==1.16.0")), events=first_events
    )
    second = backend.ensure_environment(
        EnvSpec(BASE, (), ("requests==2.32.2",)), events=second_events
    )
    try:
        # The lock: every package with exact version and hashes; the image has exactly it, by uv.
        names = {e["name"] for e in first.lock}
        assert {"requests", "six", "idna", "urllib3", "certifi", "charset-normalizer"} <= names
        assert all(e["hashes"] and e["hashes"][0].startswith("sha256:") for e in first.lock)
        have = installed(docker_client, first.image_id)
        for e in first.lock:
            assert have[e["name"]] == [e["version"], "uv"], e["name"]
        built = first_events.of("built")[0]
        assert built["installer"] == "uv"
        assert {"uv resolve", "uv install", "compile bytecode", "commit"} <= set(built["steps"])
        assert built["wheels"]["installed"] == len(first.lock)

        # The second shares all but requests (and six, which it lacks): it is built on the
        # first, installs one package and removes six.
        assert second_events.of("building")[0]["on"] == first.image
        have = installed(docker_client, second.image_id)
        for e in second.lock:
            assert have[e["name"]] == [e["version"], "uv"], e["name"]
        assert have["requests"][0] == "2.32.2" and "six" not in have
        wheels = second_events.of("built")[0]["wheels"]
        assert wheels["installed"] == 1
        labels = docker_client.images.get(second.image_id).labels
        assert labels["org.mlcontainer.parent"] == first.image_id
        assert json.loads(labels["org.mlcontainer.lock"]) == second.lock
    finally:
        remove_images(docker_client, second, first)


def test_a_lock_whose_hash_does_not_match_fails_the_build_and_leaves_nothing(
    docker_client, no_leaks
):
    backend = DockerBackend(namespace=NAMESPACE)
    good = backend.ensure_environment(EnvSpec(BASE, (), ("six==1.16.0",)))
    remove_images(docker_client, good)
    bad = [dict(good.lock[0], hashes=["sha256:" + "0" * 64])]
    ours = {"label": f"org.mlcontainer.namespace={NAMESPACE}"}
    images_before = {i.id for i in docker_client.images.list(filters=ours)}
    with pytest.raises(BuildError, match="(?i)hash"):
        backend.ensure_environment(EnvSpec(BASE, (), ("six==1.16.0",)), lock=bad)
    assert {i.id for i in docker_client.images.list(filters=ours)} == images_before
    # ... and the recorded lock rebuilds the same environment from nothing
    again = backend.ensure_environment(EnvSpec(BASE, (), ("six==1.16.0",)), lock=good.lock)
    try:
        assert not again.cached and again.lock == good.lock
        assert installed(docker_client, again.image_id)["six"] == ["1.16.0", "uv"]
    finally:
        remove_images(docker_client, again)


def test_a_build_resolving_on_a_guessed_environment_stops_where_the_lock_says_otherwise(
    docker_client, monkeypatch, no_leaks
):
    """A new environment resolves in its own build container, of the environment it guesses
    the lock will build on, and installs once the lock is checked. Where the lock is built
    already (other words for the same packages), the build stops and the image is reused;
    where it shares more pins with another environment, it is built on that one instead."""
    backend = DockerBackend(namespace=NAMESPACE)
    six = backend.ensure_environment(EnvSpec(BASE, (), ("six==1.16.0",)))
    idna = backend.ensure_environment(EnvSpec(BASE, (), ("idna==3.7", "certifi==2024.8.30")))
    envs = [six, idna]
    try:
        # other words: the lock check finds six's image; nothing is built or committed
        events = Events()
        again = backend.ensure_environment(EnvSpec(BASE, (), ("Six==1.16.0",)), events=events)
        assert again.cached and again.image_id == six.image_id
        assert events.of("building")[0]["on"] == six.image and not events.of("built")
        # a wrong guess (six's environment, one pin shared): built on idna's (two) instead
        monkeypatch.setattr(
            DockerBackend, "_guessed_parent", lambda self, build: backend._find(six.image)
        )
        events = Events()
        spec = EnvSpec(BASE, (), ("idna==3.7", "certifi==2024.8.30", "six==1.16.0"))
        both = backend.ensure_environment(spec, events=events)
        envs.append(both)
        assert [i["on"] for i in events.of("building")] == [six.image, idna.image]
        labels = docker_client.images.get(both.image_id).labels
        assert labels["org.mlcontainer.parent"] == idna.image_id
        have = installed(docker_client, both.image_id)
        for e in both.lock:
            assert have[e["name"]] == [e["version"], "uv"], e["name"]
        assert events.of("built")[0]["wheels"]["installed"] == 1  # six, on idna's
        # a right guess: resolved and installed in one container (no throwaway one)
        monkeypatch.undo()
        events = Events()
        idna36 = backend.ensure_environment(
            EnvSpec(BASE, (), ("idna==3.6", "certifi==2024.8.30")), events=events
        )
        envs.append(idna36)
        assert [i["on"] for i in events.of("building")] == [idna.image]
        steps = events.of("built")[0]["steps"]
        assert {"uv resolve", "lock check", "uv install", "commit"} <= set(steps)
        assert installed(docker_client, idna36.image_id)["idna"] == ["3.6", "uv"]
    finally:
        remove_images(docker_client, *reversed(envs))


def _wheel(folder, name: str, version: str, code: str) -> None:
    """A pure-Python wheel that exists nowhere but in ``folder``."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": code,
        f"{name}/tests/test_it.py": "def test_it():\n    pass\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = "\n".join(record) + "\n"
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as z:
        for path, text in files.items():
            z.writestr(path, text)


@pytest.mark.parametrize("kind", ["find-links", "file-index"])
def test_a_package_only_in_a_local_folder_builds_with_no_index_reachable(
    docker_client, tmp_path, no_leaks, kind
):
    """Air-gapped: no network index at all. The package is in a folder of wheels (find-links),
    or in a file:// simple index whose pages link to ../../files/ as such indexes do."""
    host = host_build_network()
    if kind == "find-links":
        folder = tmp_path / "wheels"
        folder.mkdir()
        _wheel(folder, "mlc_localonly", "0.3", "ANSWER = 42\n")
        net = BuildNetwork(find_links=(str(folder),), no_index=True, cert_path=host.cert_path)
    else:
        (tmp_path / "pypi" / "files").mkdir(parents=True)
        _wheel(tmp_path / "pypi" / "files", "mlc_localonly", "0.3", "ANSWER = 42\n")
        page = tmp_path / "pypi" / "simple" / "mlc-localonly"
        page.mkdir(parents=True)
        page.joinpath("index.html").write_text(
            '<a href="../../files/mlc_localonly-0.3-py3-none-any.whl">'
            "mlc_localonly-0.3-py3-none-any.whl</a>\n"
        )
        index = f"file://{tmp_path}/pypi/simple"
        net = BuildNetwork(index_url=index, cert_path=host.cert_path)
    backend = DockerBackend(namespace=NAMESPACE, network=net)
    events = Events()
    env = backend.ensure_environment(EnvSpec(BASE, (), ("mlc-localonly==0.3",)), events=events)
    try:
        assert [(e["name"], e["version"]) for e in env.lock] == [("mlc-localonly", "0.3")]
        out = docker_client.containers.run(
            env.image_id,
            ["python", "-c", "import mlc_localonly; print(mlc_localonly.ANSWER)"],
            remove=True,
        )
        assert out == b"42\n"
        assert events.of("built")[0]["wheels"]["local"] == 1
        # its bytecode was compiled at build time, but for its test suite
        pyc = docker_client.containers.run(
            env.image_id, ["sh", "-c", "find / -name '*.pyc' -path '*mlc_localonly*'"], remove=True
        ).decode()
        assert "/mlc_localonly/__pycache__/__init__." in pyc and "test_it" not in pyc
        # the folder was a read-only bind mount of the build: the image does not name it, and
        # of the mount points only numbered, empty ones are left
        assert str(tmp_path) not in json.dumps(docker_client.images.get(env.image_id).attrs)
        left = docker_client.containers.run(
            env.image_id, ["find", "/mlc-host"], remove=True
        ).decode()
        assert sorted(left.split()) == ["/mlc-host", "/mlc-host/.uv", "/mlc-host/0"]
    finally:
        remove_images(docker_client, env)


def test_where_uv_cannot_run_pip_builds_and_says_so_once(
    docker_client, tmp_path, monkeypatch, no_leaks
):
    """A base image uv cannot run in (here: a uv that fails, as a glibc binary does on musl):
    pip resolves and installs, and the build says why once, not at every build."""
    from mlcontainer_magics.backends.docker import environments as docker_envs

    broken = tmp_path / "uv"
    broken.write_text("#!/bin/sh\necho 'uv: not found (musl)' >&2\nexit 127\n")
    broken.chmod(0o755)
    monkeypatch.setattr(docker_envs, "host_uv", lambda: str(broken))
    monkeypatch.setattr(docker_envs, "_NO_UV_SAID", set())
    backend = DockerBackend(namespace=NAMESPACE)
    first, second = Events(), Events()
    one = backend.ensure_environment(EnvSpec(BASE, (), ("six==1.16.0",)), events=first)
    two = backend.ensure_environment(EnvSpec(BASE, (), ("idna==3.7",)), events=second)
    try:
        notes = [i["line"] for i in first.of("build-log") if i["line"].startswith("note:")]
        assert notes == [
            "note: uv cannot run in python:3.11-slim: uv: not found (musl); "
            "installing with pip (slower)"
        ]
        assert not [i for i in second.of("build-log") if i["line"].startswith("note:")]
        for events, env, name in ((first, one, "six"), (second, two, "idna")):
            assert events.of("built")[0]["installer"] == "pip"
            assert installed(docker_client, env.image_id)[name][1] == "pip"
            assert env.lock[0]["name"] == name and env.lock[0]["hashes"]
    finally:
        remove_images(docker_client, one, two)


def test_an_engine_on_another_machine_gets_no_uv_and_pip_builds(monkeypatch):
    """Its builds cannot mount this machine's uv (nor its wheel folders): uv is not tried."""
    from mlcontainer_magics.backends.docker import environments

    monkeypatch.setattr(environments, "host_uv", lambda: "/opt/bin/uv")
    monkeypatch.setattr(environments, "_NO_UV_SAID", set())
    monkeypatch.setenv("DOCKER_HOST", "unix:///var/run/docker.sock")
    assert environments._no_host_uv() is None and environments._uv_worth_trying("sha256:a")
    monkeypatch.setenv("DOCKER_HOST", "tcp://10.0.0.5:2376")
    assert "another machine" in environments._no_host_uv()
    assert not environments._uv_worth_trying("sha256:a")
