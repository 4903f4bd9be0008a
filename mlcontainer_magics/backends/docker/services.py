"""Served cells on Docker: one container per service, its runner's HTTP port published on
127.0.0.1 only (a random host port), named ``<namespace>-service-<NAME>-<short id>`` and
labelled as runs are (run id, owner) plus ``role=service`` and ``service=NAME``."""

from __future__ import annotations

import codecs
import contextlib
import threading
from collections.abc import Mapping
from pathlib import Path

from ...core.backend import Environment, RunResult, ServiceHandle, Services
from ...core.events import Events, Output, Phase, no_events
from ...core.richoutput import ServingWatch
from ...core.spec import RunSpec
from ...errors import ServiceFailed
from ...runner import SERVE_COMMAND, SERVE_PORT, SERVING_MARK
from .engine import LABEL, engine_errors, translated

HOST = "127.0.0.1"  # never published on other interfaces: the kernel's proxy is the way in


def container_name(namespace: str, name: str, run_id: str) -> str:
    return f"{namespace}-service-{name}-{run_id[:8]}"


class DockerServices(Services):
    def __init__(self, backend) -> None:
        self.backend = backend
        # run id -> what a service holds until it ends: its secrets' folder
        self._held: dict[str, contextlib.ExitStack] = {}

    @property
    def client(self):
        return self.backend.client

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
                opts["ports"] = {f"{SERVE_PORT}/tcp": (HOST, None)}
                events(Phase.STARTING)
                container = self.client.containers.create(
                    env.image_id,
                    list(SERVE_COMMAND),
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
                network = container.attrs["NetworkSettings"]
                port = network["Ports"][f"{SERVE_PORT}/tcp"][0]
                ip = network.get("IPAddress") or ""
                handle = ServiceHandle(
                    name=spec.serve.name,
                    run_id=run_id,
                    url=f"http://{HOST}:{port['HostPort']}",
                    backend="docker",
                    ident=container.id,
                    direct=f"http://{ip}:{SERVE_PORT}" if ip else "",
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
            ports = (c.attrs.get("NetworkSettings") or {}).get("Ports") or {}
            bound = (ports.get(f"{SERVE_PORT}/tcp") or [{}])[0]
            out.append(
                ServiceHandle(
                    name=c.labels.get(f"{LABEL}.service", ""),
                    run_id=c.labels.get(f"{LABEL}.run", ""),
                    url=f"http://{HOST}:{bound.get('HostPort')}" if bound else "",
                    backend="docker",
                    ident=c.id,
                    ref=c,
                )
            )
        return out


def _text(data: bytes) -> str:
    """A log as text, without the runner's serving line (protocol, not output)."""
    text = data.decode("utf-8", "replace")
    # Not splitlines(): it splits at the mark's own \x1e too.
    lines = text.split("\n")
    return "\n".join(line for line in lines if not line.startswith(SERVING_MARK))
