"""registry.push_image against a real registry (Debian's docker-registry) on 127.0.0.1."""

from __future__ import annotations

import io
import re
import tarfile
import uuid

import pytest

from mlcontainer_magics.backends.kubernetes.registry import (
    RegistryAuthError,
    RegistryError,
    _follow_push,
    push_image,
    repository_ref,
)

pytest_plugins = ["registry_fixture"]

MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
    ]
)


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _tiny_image(client, docker_images, content: bytes) -> str:
    """An image of one small file, imported from a tarball (no base image involved)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("payload.txt")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    ref = f"mlc-test-registry:{_unique('tiny')}"
    name, tag = ref.split(":")
    client.api.import_image_from_data(buf.getvalue(), repository=name, tag=tag)
    docker_images.append(ref)
    return ref


def _remote_digest(registry, repository: str, tag: str) -> str | None:
    """The tag's manifest digest, asked of the registry's HTTP API directly."""
    r = registry.http().head(
        f"{registry.url}/v2/{repository}/manifests/{tag}",
        headers={"Accept": MANIFEST_TYPES},
        timeout=10,
    )
    if r.status_code == 404:
        return None
    r.raise_for_status()
    return r.headers["Docker-Content-Digest"]


def _uploads(registry) -> int:
    """Requests that write to the registry (blob uploads and manifest puts), from its log."""
    return len(
        re.findall(
            r'msg="response completed".*http\.request\.method=(?:PUT|POST|PATCH)\b', registry.log()
        )
    )


@pytest.fixture(scope="module")
def env_image(docker_engine, registry):
    """An 'environment image': python:3.11-slim plus one small layer, made by committing a
    container (python:3.11-slim itself is only read)."""
    container = docker_engine.containers.create("python:3.11-slim", command=["true"])
    try:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            data = b"print('hello from the environment')\n"
            info = tarfile.TarInfo("opt/mlc-test/hello.py")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        container.put_archive("/", buf.getvalue())
        image = container.commit()
    finally:
        container.remove(force=True)
    yield image.id
    from registry_fixture import remove_images

    repo = f"{registry.host}/mlc-test/env:"
    tags = [t for t in docker_engine.images.get(image.id).tags if t.startswith(repo)]
    remove_images(docker_engine, tags + [image.id])


# -- with a real engine and registry ---------------------------------------------------------


@pytest.mark.docker
def test_push_uploads_once_then_finds_the_image_in_the_registry(
    docker_engine, registry, env_image, monkeypatch
):
    tag = _unique("t")
    lines: list[str] = []
    ref = push_image(
        docker_engine,
        env_image,
        registry.host,
        "mlc-test/env",
        tag,
        auth=registry.auth,
        log=lines.append,
    )

    digest = _remote_digest(registry, "mlc-test/env", tag)
    assert digest and ref == f"{registry.host}/mlc-test/env@{digest}"
    assert any("layer(s) uploaded" in line for line in lines)
    assert f"{registry.host}/mlc-test/env:{tag}" in docker_engine.images.get(env_image).tags

    # The second push asks the registry, finds the same digest, and sends nothing.
    uploads_before = _uploads(registry)
    import docker.models.images

    def no_push(*args, **kwargs):
        raise AssertionError("pushed although the registry holds the image")

    monkeypatch.setattr(docker.models.images.ImageCollection, "push", no_push)
    again: list[str] = []
    assert (
        push_image(
            docker_engine,
            env_image,
            registry.host,
            "mlc-test/env",
            tag,
            auth=registry.auth,
            log=again.append,
        )
        == ref
    )
    assert any("nothing to push" in line for line in again)
    assert _uploads(registry) == uploads_before


@pytest.mark.docker
def test_a_different_image_under_the_same_tag_is_pushed(docker_engine, registry, docker_images):
    repo, tag = "mlc-test/tiny", _unique("t")
    first = _tiny_image(docker_engine, docker_images, b"one")
    second = _tiny_image(docker_engine, docker_images, b"two")
    docker_images[:0] = [f"{registry.host}/{repo}:{tag}"]  # our tag goes before the images

    ref1 = push_image(docker_engine, first, registry.host, repo, tag, auth=registry.auth)
    uploads = _uploads(registry)
    ref2 = push_image(docker_engine, second, registry.host, repo, tag, auth=registry.auth)
    assert ref1 != ref2
    assert _uploads(registry) > uploads
    assert ref2.endswith("@" + _remote_digest(registry, repo, tag))


@pytest.mark.docker
def test_wrong_credentials_are_a_clear_error(docker_engine, registry, docker_images):
    image = _tiny_image(docker_engine, docker_images, b"secret-ish")
    uploads = _uploads(registry)
    with pytest.raises(RegistryAuthError) as info:
        push_image(
            docker_engine,
            image,
            registry.host,
            "mlc-test/tiny",
            "denied",
            auth={"username": registry.username, "password": "wrong"},
        )
    message = str(info.value)
    assert registry.host in message and "refused user 'mlc'" in message
    assert "wrong" not in message  # never echo a password
    assert _uploads(registry) == uploads
    assert _remote_digest(registry, "mlc-test/tiny", "denied") is None


@pytest.mark.docker
def test_missing_credentials_say_how_to_log_in(docker_engine, registry, docker_images):
    image = _tiny_image(docker_engine, docker_images, b"anonymous")
    docker_images[:0] = [f"{registry.host}/mlc-test/tiny:anon"]
    with pytest.raises(RegistryAuthError, match=r"asks for a login.*docker login"):
        push_image(docker_engine, image, registry.host, "mlc-test/tiny", "anon", auth=None)


@pytest.mark.docker
def test_unreachable_registry(docker_engine, docker_images):
    from registry_fixture import _free_port

    image = _tiny_image(docker_engine, docker_images, b"nowhere")
    host = f"127.0.0.1:{_free_port()}"  # nothing listens there
    with pytest.raises(RegistryError, match=r"Cannot reach the registry 127\.0\.0\.1"):
        push_image(
            docker_engine,
            image,
            host,
            "mlc-test/tiny",
            "x",
            auth={"username": "u", "password": "p"},
        )


@pytest.mark.docker
def test_missing_local_image(docker_engine, registry):
    with pytest.raises(RegistryError, match="no image 'mlc-test-no-such-image:1'"):
        push_image(
            docker_engine,
            "mlc-test-no-such-image:1",
            registry.host,
            "mlc-test/x",
            "1",
            auth=registry.auth,
        )


# -- without an engine -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "registry_host, repository, expected",
    [
        ("127.0.0.1:5000", "mlc/env", "127.0.0.1:5000/mlc/env"),
        ("ghcr.io/org/", "/env/", "ghcr.io/org/env"),
        ("localhost", "a.b_c--d", "localhost/a.b_c--d"),
    ],
)
def test_repository_ref(registry_host, repository, expected):
    assert repository_ref(registry_host, repository) == expected


@pytest.mark.parametrize(
    "registry_host, repository",
    [
        ("not a host", "env"),
        ("myregistry", "env"),
        ("127.0.0.1:5000", "Env"),
        ("127.0.0.1:5000", "a//b"),
        ("127.0.0.1:5000", "a-"),
    ],
)
def test_repository_ref_rejects(registry_host, repository):
    with pytest.raises(RegistryError):
        repository_ref(registry_host, repository)


def test_bad_tag_is_refused_before_touching_the_engine():
    with pytest.raises(RegistryError, match="Tag '-x'"):
        push_image(object(), "img", "127.0.0.1:5000", "mlc/env", "-x")


def test_push_stream_is_logged_once_per_layer_and_errors_raise():
    digest = "sha256:" + "a" * 64
    stream = [
        {"status": "The push refers to repository [127.0.0.1:5000/mlc/env]"},
        {"status": "Preparing", "progressDetail": {}, "id": "l1"},
        {"status": "Preparing", "progressDetail": {}, "id": "l2"},
        {"status": "Pushing", "progressDetail": {"current": 1, "total": 2}, "id": "l1"},
        {"status": "Pushed", "progressDetail": {}, "id": "l1"},
        {"status": "Layer already exists", "progressDetail": {}, "id": "l2"},
        {"status": f"t: digest: {digest} size: 523"},
        {"progressDetail": {}, "aux": {"Tag": "t", "Digest": digest, "Size": 523}},
    ]
    lines: list[str] = []
    assert _follow_push(iter(stream), lines.append)[0] == digest
    assert lines == [
        "  l1: Pushed",
        "  l2: Layer already exists",
        "1 layer(s) uploaded, 1 already in the registry.",
    ]

    failing = stream[:3] + [
        {
            "errorDetail": {"message": "unauthorized: authentication required"},
            "error": "unauthorized: authentication required",
        }
    ]
    with pytest.raises(RegistryError, match="unauthorized"):
        _follow_push(iter(failing), lines.append)
