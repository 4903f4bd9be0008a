"""A real OCI registry on 127.0.0.1 for tests: Debian's ``docker-registry`` (distribution 2.8).

Use it as a pytest plugin::

    pytest_plugins = ["registry_fixture"]

    def test_push(registry, docker_images):
        ...  # registry.host == "127.0.0.1:PORT", registry.auth == {"username": ..., ...}

``registry`` (session scope) writes its own config — listening on 127.0.0.1 on a free port only,
storage in a temporary directory, htpasswd (bcrypt) auth — starts ``docker-registry serve`` and
stops it at the end of the session. Docker treats 127.0.0.0/8 registries as insecure-allowed,
so the engine pushes to it over plain http without any daemon configuration.

``docker_images`` (function scope) is a list to append every image reference (``repo:tag``) or
image id a test creates; they are removed, without force, in teardown, and then every image
they pointed to that is left with no tag (only digests, as after a push) goes too. An image that
still has a tag — ``python:3.11-slim`` when a test tagged it — is never removed.

The registry binary comes from ``apt-get install docker-registry``; without it (or without a
Docker engine) the tests that use these fixtures are skipped, saying what is missing.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REGISTRY_BINARY = "/usr/bin/docker-registry"
START_TIMEOUT = 20.0


@dataclass
class Registry:
    host: str  # "127.0.0.1:PORT": what goes in front of an image reference
    username: str
    password: str
    root: Path  # config, htpasswd, storage and log live here
    process: subprocess.Popen = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def auth(self) -> dict:
        """An ``auth_config`` for the docker SDK."""
        return {"username": self.username, "password": self.password}

    @property
    def log_path(self) -> Path:
        return self.root / "registry.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def http(self):
        """A requests session for the registry's own HTTP API, authenticated, and never sent
        through a proxy (the registry is on loopback)."""
        import requests

        session = requests.Session()
        session.trust_env = False
        session.auth = (self.username, self.password)
        return session


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _htpasswd_line(username: str, password: str) -> str:
    """A bcrypt htpasswd entry, the only kind distribution accepts."""
    try:
        import bcrypt
    except ImportError:
        htpasswd = shutil.which("htpasswd")
        if not htpasswd:
            pytest.skip(
                "Making the registry's htpasswd needs the `bcrypt` package or "
                "`htpasswd` (apt-get install apache2-utils)."
            )
        out = subprocess.run(
            [htpasswd, "-nbB", username, password], check=True, capture_output=True, text=True
        ).stdout
        return out.strip() + "\n"
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=10)).decode()
    return f"{username}:{hashed}\n"


CONFIG_TEMPLATE = """\
version: 0.1
log:
  level: info
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
  secret: {secret}
auth:
  htpasswd:
    realm: mlc-test-registry
    path: {htpasswd}
"""


def start_registry(root: Path, username: str = "mlc", password: str | None = None) -> Registry:
    """Start a registry whose files live under ``root``; return once it answers."""
    if not Path(REGISTRY_BINARY).exists():
        pytest.skip(f"{REGISTRY_BINARY} is missing: apt-get install -y docker-registry")
    password = password or secrets.token_urlsafe(16)
    (root / "storage").mkdir(parents=True)
    (root / "htpasswd").write_text(_htpasswd_line(username, password))
    port = _free_port()
    config = root / "config.yml"
    config.write_text(
        CONFIG_TEMPLATE.format(
            storage=root / "storage",
            port=port,
            secret=secrets.token_hex(16),
            htpasswd=root / "htpasswd",
        )
    )
    with open(root / "registry.log", "wb") as log:
        process = subprocess.Popen(
            [REGISTRY_BINARY, "serve", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    registry = Registry(f"127.0.0.1:{port}", username, password, root, process)
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"docker-registry exited with {process.returncode}:\n" + registry.log()
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.05)
    else:
        stop_registry(registry)
        raise RuntimeError(
            f"docker-registry did not listen within {START_TIMEOUT}s:\n" + registry.log()
        )
    return registry


def stop_registry(registry: Registry) -> None:
    registry.process.terminate()
    try:
        registry.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        registry.process.kill()
        registry.process.wait()


@pytest.fixture(scope="session")
def docker_engine():
    """A Docker SDK client for the shared engine, or a skip when none answers."""
    from mlcontainer_magics.backends.docker.engine import connect
    from mlcontainer_magics.errors import EngineUnavailable

    try:
        client = connect(timeout=120)
    except EngineUnavailable as e:
        pytest.skip(str(e))
    yield client
    client.close()


@pytest.fixture(scope="session")
def registry():
    root = Path(tempfile.mkdtemp(prefix="mlc-registry-"))
    try:
        reg = start_registry(root)
        try:
            yield reg
        finally:
            stop_registry(reg)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def docker_images(docker_engine):
    """Image references and ids a test creates; removed (never forced) in teardown."""

    created: list[str] = []
    yield created
    remove_images(docker_engine, created)


def remove_images(client, refs) -> None:
    """Remove the references ``refs`` (never forced), then their images if left untagged."""
    import docker

    ids = []
    for ref in refs:
        try:
            ids.append(client.images.get(ref).id)
        except docker.errors.ImageNotFound:
            pass
    for ref in list(refs) + ids:
        try:
            image = client.images.get(ref)
        except docker.errors.ImageNotFound:
            continue
        if ref in ids and image.tags:
            continue  # someone else's tag still points at it
        try:
            client.images.remove(ref)
        except docker.errors.ImageNotFound:
            pass
