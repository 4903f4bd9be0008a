"""The Docker engine: connecting to it, and the one boundary where its SDK's errors (and those
of ``requests`` under it) become ours. Nothing above the Docker backend sees a docker or
requests exception.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading

from ...errors import EngineError, EngineUnavailable, MlcError

HOW_TO_START = (
    "Start a Docker engine: run `mlcontainer doctor --fix` (starts dockerd, installing Debian's "
    "docker.io where there is none and you are root), or start Docker Desktop, or point "
    "DOCKER_HOST at a running engine."
)
DEFAULT_HOST = "unix:///var/run/docker.sock"
LABEL = "org.mlcontainer"  # every object this package makes carries LABEL.namespace=<namespace>


def make_labels(namespace: str, **extra) -> dict[str, str]:
    labels = {f"{LABEL}.managed": "1", f"{LABEL}.namespace": namespace}
    labels.update({f"{LABEL}.{k}": str(v) for k, v in extra.items()})
    return labels


def address() -> str:
    return os.environ.get("DOCKER_HOST") or DEFAULT_HOST


def is_local() -> bool:
    """Whether the engine runs on this machine, so it can bind-mount this machine's folders."""
    return address().startswith(("unix://", "npipe://"))


def connect(timeout: int = 600):
    """Return a docker.DockerClient that has answered a ping, or raise EngineUnavailable."""
    import docker  # imported here so that `%load_ext` stays fast

    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except Exception as e:  # the SDK raises DockerException, requests and OS errors alike
        raise EngineUnavailable(
            f"No Docker engine answers at {address()} ({type(e).__name__}). {HOW_TO_START}"
        ) from None
    return client


def short(e: BaseException) -> str:
    """The first line of what the engine said (its explanation), or the error's name."""
    text = getattr(e, "explanation", None) or str(e)
    return str(text).splitlines()[0][:300] if text else type(e).__name__


_INSIDE = threading.local()  # the outermost boundary names what was being done


@contextlib.contextmanager
def engine_errors(doing: str):
    """Translate what escapes a call to the engine: a lost engine (stopped, restarted, its
    socket gone, a timeout) becomes EngineUnavailable; a refusal becomes EngineError. Errors
    of ours pass through as they are."""
    import docker.errors
    import requests

    if getattr(_INSIDE, "active", False):
        yield
        return
    _INSIDE.active = True
    try:
        yield
    except MlcError:
        raise
    except (
        requests.exceptions.ConnectionError,
        ConnectionError,
        requests.exceptions.Timeout,
        TimeoutError,
    ) as e:
        raise EngineUnavailable(
            f"The Docker engine stopped answering while {doing} ({type(e).__name__}). "
            f"{HOW_TO_START} Then run the cell again (or the command); what was left behind is "
            "removed once the engine is back."
        ) from None
    except docker.errors.APIError as e:
        raise EngineError(f"The Docker engine refused {doing}: {short(e)}.") from None
    except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
        raise EngineUnavailable(
            f"The Docker engine failed while {doing} ({short(e)}). {HOW_TO_START}"
        ) from None
    finally:
        _INSIDE.active = False


def translated(doing: str):
    """Decorator: the method's engine errors pass ``engine_errors``."""

    def wrap(fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            with engine_errors(doing):
                return fn(*args, **kwargs)

        return call

    return wrap


def stream_lines(chunks):
    """Text lines from a stream of byte chunks (a container's log), split where they end."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line.decode("utf-8", "replace").rstrip("\r")
    if pending:
        yield pending.decode("utf-8", "replace")


_CHORES: list[threading.Thread] = []
_CHORES_LOCK = threading.Lock()
_ENDS = threading.Condition()  # counts runs ended (run_ended)
_ends = 0


def in_background(fn, *args, until_a_run_ends: float = 0.0) -> None:
    """``fn(*args)``, quietly, off the caller's critical path: removing what a build no longer
    needs (its container's files can take seconds to delete). With ``until_a_run_ends``, it
    waits (at most that many seconds, and no longer than the main thread lives) for the next
    run's container to end: deleting hundreds of megabytes while the first cell imported its
    packages slowed that run on 2 cores (2.5-2.9 s against 2.2-2.6 s). Not a daemon thread:
    the interpreter waits for it at exit, so what it removes is gone before the process is."""
    import time

    with _ENDS:
        seen = _ends

    def waiting() -> bool:  # the process exiting (a build that ran nothing) waits no more
        return _ends <= seen and threading.main_thread().is_alive()

    def chore() -> None:
        deadline = time.monotonic() + until_a_run_ends
        with _ENDS:
            while waiting() and (left := deadline - time.monotonic()) > 0:
                _ENDS.wait(min(left, 0.1))
        quietly(fn, *args)

    thread = threading.Thread(target=chore, name="mlcontainer-cleanup")
    with _CHORES_LOCK:
        _CHORES[:] = [t for t in _CHORES if t.is_alive()]
        _CHORES.append(thread)
    thread.start()


def run_ended() -> None:
    """A run's container has ended (or one waiting is told to go on): the chores waiting for
    that go on."""
    global _ends
    with _ENDS:
        _ends += 1
        _ENDS.notify_all()


def settle_background(timeout: float = 60.0) -> None:
    """Wait (at most ``timeout`` seconds) until every ``in_background`` chore is done; those
    waiting for a run to end wait no longer."""
    import time

    run_ended()
    deadline = time.monotonic() + timeout
    with _CHORES_LOCK:
        threads = list(_CHORES)
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0))


def quietly(fn, *args, **kwargs) -> None:
    try:
        fn(*args, **kwargs)
    except Exception:  # cleanup must never hide the error that got us here
        pass
