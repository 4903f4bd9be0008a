"""Shared fixtures. Docker tests run in a namespace of their own and fail if they leak.

Every object the product makes carries the label org.mlcontainer.namespace=<ns>. Each test
session uses a fresh namespace, so these checks never see another session's (or a user's) objects.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
import uuid

import pytest
from hypothesis import HealthCheck, settings

NAMESPACE = f"mlctest-{uuid.uuid4().hex[:8]}"
LABEL = "org.mlcontainer.namespace"
# A 2-core CI machine also runs Docker builds: judge properties, not how fast examples come.
settings.register_profile("default", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("default")

STORE = tempfile.mkdtemp(prefix="mlctest-store-")
# Kernels that nbval starts for the notebooks inherit these, so they use the session's namespace
# and store too, never the user's.
os.environ["MLCONTAINER_NAMESPACE"] = NAMESPACE
os.environ["MLCONTAINER_STORE"] = STORE
# A standby container outlives the cell that made it (until the kernel ends): off, so that
# each test's leak check sees only what the test made; tests/test_standby.py turns it on.
os.environ["MLCONTAINER_STANDBY"] = "0"


def _client():
    from mlcontainer_magics.backends.docker.engine import connect

    return connect(timeout=120)


def _objects(client, namespace=NAMESPACE):
    flt = {"label": f"{LABEL}={namespace}"}
    return {
        "containers": sorted(c.name for c in client.containers.list(all=True, filters=flt)),
        "volumes": sorted(v.name for v in client.volumes.list(filters=flt)),
        # None is made (a service with --network none has none at all): none is left either.
        "networks": sorted(n.name for n in client.networks.list(filters=flt)),
        # Unlabelled: what a container makes for a VOLUME its image declares, left behind
        # when the container is removed without its volumes.
        "anonymous volumes": sorted(
            v.name
            for v in client.volumes.list()
            if _ANONYMOUS.match(v.name) and LABEL not in (v.attrs.get("Labels") or {})
        ),
    }


_ANONYMOUS = re.compile(r"^[0-9a-f]{64}$")


@pytest.fixture(scope="session")
def docker_client():
    return _client()


@pytest.fixture(scope="session")
def namespace():
    return NAMESPACE


_BEFORE: dict = {}


def pytest_sessionstart(session):
    try:
        _BEFORE.update(_objects(_client()))
    except Exception:
        pass  # no engine yet: nothing was there before


def pytest_sessionfinish(session, exitstatus):
    """At the end, the session's images and cache volume are removed, and anything else still
    carrying its namespace fails the run. A hook, not a fixture: notebook items (nbval) make
    Docker objects too and do not run fixtures."""
    shutil.rmtree(STORE, ignore_errors=True)
    try:
        from mlcontainer_magics.backends.docker.engine import settle_background

        settle_background()
        docker_client = _client()
    except Exception:
        return  # no engine: nothing could have been made
    flt = {"label": f"{LABEL}={NAMESPACE}"}
    # An environment built on another is its child: the engine removes children first, so a
    # few passes settle it (untagging a parent leaves it to go with its last child).
    for _ in range(4):
        images = docker_client.images.list(all=True, filters=flt)
        if not images:
            break
        for image in images:
            for tag in image.tags:
                try:
                    docker_client.images.remove(tag, force=True)
                except Exception:
                    pass  # gone already, with a child of it
            try:
                docker_client.images.remove(image.id, force=True)
            except Exception:
                pass  # already gone with its last tag, or a child is still there
    for volume in docker_client.volumes.list(filters=flt):
        if volume.name == f"{NAMESPACE}-pip-cache":
            volume.remove(force=True)
    left = _objects(docker_client)
    left = {k: sorted(set(v) - set(_BEFORE.get(k, ()))) for k, v in left.items()}
    left["images"] = [i.id for i in docker_client.images.list(all=True, filters=flt)]
    if any(left.values()):
        print(f"\nthe test session leaked: {left}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def no_leaks(docker_client, namespace):
    """Fails the test if it leaves a container or a build volume of its namespace behind."""
    from mlcontainer_magics.backends.docker.engine import settle_background

    before = _objects(docker_client)
    yield
    settle_background()  # what a build removes off its critical path: gone by now
    after = _objects(docker_client)
    leaked = {k: sorted(set(after[k]) - set(before[k])) for k in after}
    leaked["volumes"] = [v for v in leaked["volumes"] if not v.endswith("-pip-cache")]
    assert not any(leaked.values()), f"the test leaked: {leaked}"


@pytest.fixture
def ip(namespace):
    """An IPython shell with the extension loaded, in the session's namespace."""
    from IPython.testing.globalipapp import get_ipython

    shell = get_ipython()
    shell.run_line_magic("load_ext", "mlcontainer_magics")
    shell.run_line_magic("config", f"ContainerizeMagics.namespace = {namespace!r}")
    shell.run_line_magic("config", f"ContainerizeMagics.store_dir = {STORE!r}")
    yield shell


@pytest.fixture
def store_of_ip(tmp_path, ip, monkeypatch):
    """A store of the test's own, which the ``ip`` shell (and the CLI, through the
    environment) records in; the status display as text lines (capsys sees them)."""
    from mlcontainer_magics.core.store import Store

    root = tmp_path / "store"
    monkeypatch.setenv("MLCONTAINER_STORE", str(root))
    monkeypatch.setenv("MLCONTAINER_DISPLAY", "text")
    ip.run_line_magic("config", f"ContainerizeMagics.store_dir = {str(root)!r}")
    store = Store(root)
    yield store
    store.close()


def env_images(client, namespace=NAMESPACE):
    return sorted(i.id for i in client.images.list(filters={"label": f"{LABEL}={namespace}"}))


@pytest.fixture(autouse=True)
def _no_docker_host_leak(monkeypatch):
    # Tests that point DOCKER_HOST elsewhere must not affect the next test.
    monkeypatch.setenv("DOCKER_HOST", os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock"))


@pytest.fixture
def workdirs():
    """Makes the run folder of a spec, as runs.execute does; removes them all afterwards."""
    from mlcontainer_magics.core import runs

    made = []

    def make(spec, inputs=None):
        workdir, _ = runs.prepare_workdir(spec, inputs or {})
        made.append(workdir)
        return workdir

    yield make
    for w in made:
        shutil.rmtree(w, ignore_errors=True)


def wait_for(predicate, timeout=60.0, every=0.05):
    """``predicate()``'s first truthy value within ``timeout`` seconds, else None."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    return None
