"""Served cells on Docker: one container per service, its runner's HTTP port published on
127.0.0.1 only (a random host port), named ``<namespace>-service-<NAME>-<short id>`` and
labelled as runs are (run id, owner) plus ``role=service`` and ``service=NAME``.

With ``--network none`` the container has no network at all, as a run's: its runner serves on
a Unix socket in the run's folder (SERVE_SOCKET, in out/), and the kernel's proxy connects to
that socket on this machine's side of the bind mount. A socket does not cross a virtual
machine's boundary: that needs the engine on this machine (not a remote DOCKER_HOST, not
Docker Desktop's virtual machine).
"""

from __future__ import annotations

import codecs
import contextlib
import os
import threading
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from ...core.backend import Environment, RunResult, ServiceHandle, Services
from ...core.events import Events, Output, Phase, no_events
from ...core.proxy import reachable
from ...core.richoutput import ServingWatch
from ...core.spec import RunSpec
from ...errors import CapabilityMissing, ServiceFailed
from ...runner import (
    MLC_DIR,
    SERVE_COMMAND,
    SERVE_PORT,
    SERVE_SOCKET,
    SERVE_SOCKET_COMMAND,
    SERVING_MARK,
    UNIX_PREFIX,
)
from .engine import LABEL, engine_errors, is_local, translated

HOST = "127.0.0.1"  # never published on other interfaces: the kernel's proxy is the way in
# The longest path a Unix socket can have: 108 bytes with the NUL that ends it (Linux).
SOCKET_PATH_MAX = 107


def container_name(namespace: str, name: str, run_id: str) -> str:
    return f"{namespace}-service-{name}-{run_id[:8]}"


def host_socket(workdir: Path | str) -> str:
    """Where the socket of a service without a network is on this machine: in its run's
    folder ``workdir``, as SERVE_SOCKET is in /mlc."""
    return str(Path(workdir, PurePosixPath(SERVE_SOCKET).relative_to(MLC_DIR)))


class DockerServices(Services):
    def __init__(self, backend) -> None:
        self.backend = backend
        # run id -> what a service holds until it ends: its secrets' folder
        self._held: dict[str, contextlib.ExitStack] = {}

    @property
    def client(self):
        return self.backend.client

    def why_not_without_network(self) -> str | None:
        if is_local():
            return None
        return (
            "the engine runs on another machine (DOCKER_HOST), and a service without a network "
            "is reached through a Unix socket in its run's folder, which does not cross to this "
            "machine; serve it with an engine on this machine"
        )

    def start(
        self,
        spec: RunSpec,
        env: Environment,
        workdir: Path,
        *,
        run_id: str,
        events: Events = no_events,
        output: Output | None = None,
        secrets: Mapping[str, str] | None = None,
    ) -> ServiceHandle:
        assert spec.serve is not None, "a served spec"
        output = output or (lambda stream, text: None)
        held = contextlib.ExitStack()
        container = None
        try:
            with engine_errors("starting the service"):
                # The secrets' files stay as long as the service: its function may read them.
                secrets_dir = held.enter_context(self.backend.secret_files(secrets))
                opts = self.backend._container_options(spec, run_id, workdir, secrets, secrets_dir)
                opts["labels"].update(
                    {f"{LABEL}.role": "service", f"{LABEL}.service": spec.serve.name}
                )
                unix = spec.network == "none"  # network_mode "none", as a run's
                if unix:
                    _check_socket_path(host_socket(workdir))
                else:
                    opts["ports"] = {f"{SERVE_PORT}/tcp": (HOST, None)}
                events(Phase.STARTING)
                container = self.client.containers.create(
                    env.image_id,
                    list(SERVE_SOCKET_COMMAND if unix else SERVE_COMMAND),
                    name=container_name(self.backend.namespace, spec.serve.name, run_id),
                    **opts,
                )
                stream = self.client.api.attach(container.id, stream=True, logs=True, demux=True)
                container.start()
                events(Phase.RUNNING, container=container.id[:12])
                ready = self._until_serving(container, stream, spec.timeout, output, run_id)
                if ready is not None:
                    raise ready
                container.reload()
                url, direct = _addresses(container)
                if unix and reachable(url) is None:
                    raise CapabilityMissing(
                        "--serve with --network none: this machine cannot connect to the "
                        f"service's socket, {host_socket(workdir)}: the Docker engine shares "
                        "this machine's folders but runs elsewhere (Docker Desktop's virtual "
                        "machine). Drop --network none (the port is then published on "
                        "127.0.0.1 only), or serve it with Docker Engine on this machine."
                    )
                handle = ServiceHandle(
                    name=spec.serve.name,
                    run_id=run_id,
                    url=url,
                    backend="docker",
                    ident=container.id,
                    direct=direct,
                    ref=container,
                )
        except BaseException:
            if container is not None:
                self.backend._remove_or_remember(container)
            self.backend._stopped.discard(run_id)
            held.close()
            raise
        self._held[run_id] = held
        # Detached once it serves: what it prints from here on (a line per request) goes to the
        # engine's log alone (`logs`). Read here, each line would take this process's time,
        # and the GIL its proxy needs for every request.
        with contextlib.suppress(Exception):
            stream.close()
        return handle

    def _until_serving(self, container, stream, timeout, output, run_id) -> ServiceFailed | None:
        """Pass on its output until the serving line (None) or its end (the failure)."""
        chunks: dict[str, list[str]] = {"stdout": [], "stderr": []}
        decoders = {s: codecs.getincrementaldecoder("utf-8")("replace") for s in chunks}
        watch = ServingWatch()
        timed_out = threading.Event()
        timer = None
        if timeout:
            timer = threading.Timer(timeout, self.backend._expire, (container, timed_out))
            timer.daemon = True
            timer.start()
        try:
            for out, err in stream:
                if err:
                    text = decoders["stderr"].decode(err)
                    chunks["stderr"].append(text)
                    output("stderr", text)
                if not out:
                    continue
                text, ready = watch.feed(decoders["stdout"].decode(out))
                if text:
                    chunks["stdout"].append(text)
                    output("stdout", text)
                if ready:
                    return None
        finally:
            if timer is not None:
                timer.cancel()
        chunks["stdout"].append(watch.rest() + decoders["stdout"].decode(b"", final=True))
        code = container.wait(timeout=60)["StatusCode"]
        container.reload()
        # "stopped" when the backend's stop(run_id) did it (the widget's Stop, the sidebar)
        reason = self.backend._reason(code, container.attrs["State"], timed_out.is_set(), run_id)
        stdout, stderr = "".join(chunks["stdout"]), "".join(chunks["stderr"])
        if timed_out.is_set():
            message = f"The service was not ready within {timeout:g} s (--timeout)."
        else:
            message = f"The service's container ended before it served (exit code {code})."
        return ServiceFailed(message, code, reason, stdout, stderr)

    def _container(self, handle: ServiceHandle):
        if handle.ref is not None:
            return handle.ref
        found = self.client.containers.list(
            all=True,
            filters={"label": [f"{LABEL}.run={handle.run_id}", f"{LABEL}.role=service"]},
        )
        return found[0] if found else None

    def wait(self, handle: ServiceHandle) -> RunResult:
        import docker.errors

        container = None
        try:
            with engine_errors("watching the service"):
                container = self._container(handle)
                if container is None:
                    return RunResult(None, "killed", message="its container was removed")
                try:
                    code = container.wait(timeout=None)["StatusCode"]
                    container.reload()
                    state = container.attrs["State"]
                    stdout = _text(container.logs(stdout=True, stderr=False))
                    stderr = _text(container.logs(stdout=False, stderr=True))
                except docker.errors.NotFound:  # removed from outside (docker rm -f, prune)
                    return RunResult(None, "killed", message="its container was removed")
            reason = self.backend._reason(code, state, False, handle.run_id)
            return RunResult(code, reason, stdout, stderr, container.id)
        finally:
            if container is not None:
                self.backend._remove_or_remember(container)
            self.backend._stopped.discard(handle.run_id)
            held = self._held.pop(handle.run_id, None)
            if held is not None:
                held.close()

    @translated("stopping the service")
    def stop(self, handle: ServiceHandle, grace: float = 10.0) -> bool:
        container = self._container(handle)
        if container is None:
            return False
        self.backend._stopped.add(handle.run_id)
        self.backend.end_container(container, grace)
        return True

    @translated("reading the service's log")
    def logs(self, handle: ServiceHandle) -> str:
        container = self._container(handle)
        if container is None:
            return ""
        return _text(container.logs())

    @translated("listing services")
    def running(self) -> list[ServiceHandle]:
        found = self.client.containers.list(
            filters={
                "label": [f"{LABEL}.namespace={self.backend.namespace}", f"{LABEL}.role=service"]
            }
        )
        out = []
        for c in found:
            url, direct = _addresses(c)
            out.append(
                ServiceHandle(
                    name=c.labels.get(f"{LABEL}.service", ""),
                    run_id=c.labels.get(f"{LABEL}.run", ""),
                    url=url,
                    backend="docker",
                    ident=c.id,
                    direct=direct,
                    ref=c,
                )
            )
        return out


def _addresses(container) -> tuple[str, str]:
    """(url, direct) of a service's container: its port published on 127.0.0.1, and its own
    address on the engine's bridge ("" if none). Without a network: unix:PATH, its socket on
    this machine, and no direct."""
    attrs = container.attrs
    if (attrs.get("HostConfig") or {}).get("NetworkMode") == "none":
        mounts = attrs.get("Mounts") or []
        folder = next((m["Source"] for m in mounts if m.get("Destination") == MLC_DIR), "")
        return (f"{UNIX_PREFIX}{host_socket(folder)}" if folder else ""), ""
    settings = attrs.get("NetworkSettings") or {}
    bound = ((settings.get("Ports") or {}).get(f"{SERVE_PORT}/tcp") or [{}])[0]
    ip = settings.get("IPAddress") or ""
    url = f"http://{HOST}:{bound['HostPort']}" if bound.get("HostPort") else ""
    return url, (f"http://{ip}:{SERVE_PORT}" if ip else "")


def _check_socket_path(path: str) -> None:
    """Refuse a socket path too long for a Unix socket, before its container is made."""
    if len(os.fsencode(path)) > SOCKET_PATH_MAX:
        raise CapabilityMissing(
            f"--serve with --network none: the service's socket would be {path}, longer than "
            f"a Unix socket's path may be ({SOCKET_PATH_MAX} bytes). Set MLCONTAINER_RUN_DIR "
            "to a folder with a shorter path (e.g. /tmp), or drop --network none."
        )


def _text(data: bytes) -> str:
    """A log as text, without the runner's serving line (protocol, not output)."""
    text = data.decode("utf-8", "replace")
    # Not splitlines(): it splits at the mark's own \x1e too.
    lines = text.split("\n")
    return "\n".join(line for line in lines if not line.startswith(SERVING_MARK))
