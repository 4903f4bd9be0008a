"""Served cells on Docker: one container per service, its runner's HTTP port published on
127.0.0.1 only (a random host port), named ``<namespace>-service-<NAME>-<short id>`` and
labelled as runs are (run id, owner) plus ``role=service`` and ``service=NAME``.

With ``--network none`` the container joins ``<namespace>-serve-none`` instead: an internal
bridge network (no route beyond it) whose containers cannot reach one another either. Nothing
can be published from it: the kernel's proxy connects to the container's address on it, which
only the machine the engine runs on reaches. Made on first use, kept, removed by prune once no
container uses it. Its gateway is that machine: unlike a run's ``--network none``, the container
can connect to what listens there on all interfaces.
"""

from __future__ import annotations

import codecs
import contextlib
import threading
from collections.abc import Mapping
from pathlib import Path

from ...core.backend import Environment, RunResult, ServiceHandle, Services
from ...core.events import Events, Output, Phase, no_events
from ...core.proxy import reachable
from ...core.richoutput import ServingWatch
from ...core.spec import RunSpec
from ...errors import CapabilityMissing, ServiceFailed
from ...runner import SERVE_COMMAND, SERVE_PORT, SERVING_MARK
from .engine import LABEL, engine_errors, make_labels, translated

HOST = "127.0.0.1"  # never published on other interfaces: the kernel's proxy is the way in
ISOLATED_ROLE = "serve-network"  # LABEL.role of the internal network of --network none


def container_name(namespace: str, name: str, run_id: str) -> str:
    return f"{namespace}-service-{name}-{run_id[:8]}"


def isolated_network_name(namespace: str) -> str:
    return f"{namespace}-serve-none"


def isolated_network(client, namespace: str) -> str:
    """The name of the namespace's internal network for services with ``--network none``,
    made when there is none yet."""
    import docker.errors

    name = isolated_network_name(namespace)
    if any(n.name == name for n in client.networks.list(names=[name])):
        return name
    try:
        client.networks.create(
            name,
            driver="bridge",
            internal=True,  # no route out: no internet, no other network
            # ... and none between its containers: one service cannot call another.
            options={"com.docker.network.bridge.enable_icc": "false"},
            labels=make_labels(namespace, role=ISOLATED_ROLE),
            check_duplicate=True,
        )
    except docker.errors.APIError as e:
        if e.status_code != 409:  # 409: another process made it meanwhile
            raise
    return name


def remove_isolated_networks(client, namespace: str) -> list[str]:
    """Remove the namespace's internal networks no container uses (the engine refuses the
    others); what was removed."""
    import docker.errors

    done = []
    labels = [f"{LABEL}.namespace={namespace}", f"{LABEL}.role={ISOLATED_ROLE}"]
    for network in client.networks.list(filters={"label": labels}):
        try:
            network.remove()
        except docker.errors.APIError:
            continue  # a service uses it (or it went meanwhile)
        done.append(f"removed network {network.name}")
    return done


class DockerServices(Services):
    isolates = True  # --network none: the internal network

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
                isolated = spec.network == "none"
                if isolated:  # an internal network publishes nothing
                    opts["network_mode"] = isolated_network(self.client, self.backend.namespace)
                else:
                    opts["ports"] = {f"{SERVE_PORT}/tcp": (HOST, None)}
                events(Phase.STARTING)
                container = self._create(env.image_id, spec, run_id, opts)
                stream = self.client.api.attach(container.id, stream=True, logs=True, demux=True)
                container.start()
                events(Phase.RUNNING, container=container.id[:12])
                ready = self._until_serving(container, stream, spec.timeout, output, run_id)
                if ready is not None:
                    raise ready
                container.reload()
                url, direct = _addresses(container)
                if isolated and reachable(direct) is None:
                    raise CapabilityMissing(
                        f"--serve with --network none: this machine cannot reach the "
                        f"service's container at {direct or 'its address'}, and nothing can "
                        "be published from its internal network. That works where the Docker "
                        "engine runs on this machine itself (Docker Engine on Linux), not "
                        "through Docker Desktop's virtual machine or a remote DOCKER_HOST. "
                        "Drop --network none (the port is then published on 127.0.0.1 only)."
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
        # Read on (and drop) what it prints: an unread attach would block its writes. The
        # engine keeps the log for `logs`.
        threading.Thread(target=_drain, args=(stream,), daemon=True).start()
        return handle

    def _create(self, image_id: str, spec: RunSpec, run_id: str, opts: dict):
        import docker.errors

        assert spec.serve is not None, "a served spec"
        name = container_name(self.backend.namespace, spec.serve.name, run_id)
        command = list(SERVE_COMMAND)
        try:
            return self.client.containers.create(image_id, command, name=name, **opts)
        except docker.errors.NotFound:
            if spec.network != "none":
                raise
            # Its network was pruned between being found and being used: made again, once.
            opts["network_mode"] = isolated_network(self.client, self.backend.namespace)
            return self.client.containers.create(image_id, command, name=name, **opts)

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
    address on its network. On the internal network of --network none nothing is published:
    its own address is both."""
    settings = container.attrs.get("NetworkSettings") or {}
    bound = ((settings.get("Ports") or {}).get(f"{SERVE_PORT}/tcp") or [{}])[0]
    ips = [settings.get("IPAddress")]
    ips += [n.get("IPAddress") for n in (settings.get("Networks") or {}).values()]
    ip = next((i for i in ips if i), "")
    direct = f"http://{ip}:{SERVE_PORT}" if ip else ""
    return (f"http://{HOST}:{bound['HostPort']}" if bound.get("HostPort") else direct), direct


def _text(data: bytes) -> str:
    """A log as text, without the runner's serving line (protocol, not output)."""
    text = data.decode("utf-8", "replace")
    # Not splitlines(): it splits at the mark's own \x1e too.
    lines = text.split("\n")
    return "\n".join(line for line in lines if not line.startswith(SERVING_MARK))


def _drain(stream) -> None:
    with contextlib.suppress(Exception):
        for _ in stream:
            pass
