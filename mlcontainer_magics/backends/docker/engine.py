"""Connecting to the Docker engine: the one place a missing engine becomes a clear error."""
from __future__ import annotations

import os

from ...errors import EngineUnavailable

HOW_TO_START = (
    "Start a Docker engine: run `mlcontainer doctor --fix` (starts dockerd, installing Debian's "
    "docker.io where there is none and you are root), or start Docker Desktop, or point "
    "DOCKER_HOST at a running engine.")


def connect(timeout: int = 600):
    """Return a docker.DockerClient that has answered a ping, or raise EngineUnavailable."""
    import docker  # imported here so that `%load_ext` stays fast

    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except Exception as e:  # the SDK raises DockerException, requests and OS errors alike
        where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        raise EngineUnavailable(
            f"No Docker engine answers at {where} ({type(e).__name__}). {HOW_TO_START}") from None
    return client
