"""Served cells (``--serve NAME``): a snapshot whose container answers HTTP until it is stopped.

The cell runs once in a container of its own (as any run: environment, folder, record), then
its runner serves the cell's function. Users see ``http://127.0.0.1:PORT``, the port of a small
TCP proxy in this process: serving NAME again starts the new container, waits until it answers,
points the proxy at it and only then stops the old one, so the address never changes and no
request is refused. A watcher thread records how each service ends (stopped, failed) with its
log. Services live as long as the process that started them (a kernel, ``mlcontainer serve``):
the registry stops them at exit, and prune removes those of processes that died.

No IPython and no HTTP here: the proxy passes bytes, whatever they say.
"""

from __future__ import annotations

import atexit
import os
import shutil
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from ..errors import (
    CapabilityMissing,
    Conflict,
    MlcError,
    NotFound,
    ServiceFailed,
    SnapshotNotFound,
)
from . import runs, snapshots
from .backend import Backend, RunResult, ServiceHandle, Services
from .events import Events, Output, Phase, no_events
from .owner import OWNER
from .owner import alive as owner_alive
from .proxy import Address, Proxy, reachable, upstream_of
from .secrets import resolve
from .spec import RunSpec, parse_serve

STOP_GRACE = 10.0  # seconds a stopped service may take to finish the requests it has


# -- the services of this process --------------------------------------------------------------


@dataclass(eq=False)
class Service:
    """One service this process started, while it lives."""

    name: str
    run_id: str
    handle: ServiceHandle
    services: Services
    backend: str
    url: str  # what users call: the proxy's, or the backend's own where no proxy fronts it
    entry: str  # the cell's function it serves
    proxy: Proxy | None
    upstream: Address | None  # where the proxy sends its requests
    workdir: Path
    store: Any = None
    mask: Callable[[str], str] = str
    started: float = field(default_factory=time.time)
    stopping: bool = False
    replaced_by: str | None = None
    watcher: threading.Thread | None = None
    # Set once its end is recorded. Waited on rather than joining the watcher: a Ctrl-C
    # during Thread.join() can mark a live thread as ended (CPython 3.11).
    ended: threading.Event = field(default_factory=threading.Event)

    @property
    def requests(self) -> int | None:
        if self.proxy is None:
            return None
        return self.proxy.served.get(self.upstream or ("", 0), 0)

    def row(self) -> dict:
        return {
            "name": self.name,
            "url": self.url,
            "snapshot": self.run_id,
            "backend": self.backend,
            "requests": self.requests,
            "uptime": time.time() - self.started,
            "here": True,
        }


class Registry:
    """The services of this process by name. At exit it stops them all: a service lives as
    long as its kernel (or `mlcontainer serve`)."""

    def __init__(self) -> None:
        self._services: dict[str, Service] = {}
        self._lock = threading.RLock()
        self._at_exit = False

    def get(self, name: str) -> Service | None:
        with self._lock:
            return self._services.get(name)

    def all(self) -> list[Service]:
        with self._lock:
            return list(self._services.values())

    def put(self, service: Service) -> Service | None:
        """Register ``service`` under its name; the one it replaces, if any."""
        with self._lock:
            if not self._at_exit:
                atexit.register(self.stop_all)
                self._at_exit = True
            old = self._services.get(service.name)
            self._services[service.name] = service
            return old

    def ended(self, service: Service) -> None:
        """``service`` has ended: forgotten, and its proxy closed unless another uses it."""
        with self._lock:
            if self._services.get(service.name) is service:
                del self._services[service.name]
            used = any(s.proxy is service.proxy for s in self._services.values())
        if service.proxy is not None and not used:
            service.proxy.close()

    def stop(self, name: str, grace: float = STOP_GRACE) -> Service:
        """Stop the service ``name`` and wait until its end is recorded."""
        service = self.get(name)
        if service is None:
            here = ", ".join(sorted(s.name for s in self.all())) or "none"
            raise NotFound(f"No service {name!r} runs in this process; running: {here}.")
        _stop(service, grace)
        return service

    def wait(self, every: float = 0.5) -> None:
        """Block until every service of this process has ended (a KeyboardInterrupt gets
        through: the joins are short)."""
        while True:
            running = self.all()
            if not running:
                return
            running[0].ended.wait(timeout=every)

    def stop_all(self, grace: float = 2.0) -> None:
        """Every service at once (at exit: a kernel shutting down waits for none of them long)."""
        threads = [threading.Thread(target=_stop, args=(s, grace), daemon=True) for s in self.all()]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=grace + 15)


REGISTRY = Registry()


def _stop(service: Service, grace: float) -> None:
    service.stopping = True
    try:
        service.services.stop(service.handle, grace=grace)
    except MlcError:
        pass  # its watcher records how it ended, whatever stopped it
    if service.watcher is not None and service.watcher is not threading.current_thread():
        service.ended.wait(timeout=grace + 30)


# -- serve -------------------------------------------------------------------------------------


def services_of(backend: Backend, spec: RunSpec) -> Services:
    """The backend's services, refused (before any work) where it has none, cannot run
    ``spec.serve.replicas`` copies or cannot serve without a network (``--network none``)."""
    assert spec.serve is not None, "a served spec"
    pool = backend.services
    if pool is None:
        raise CapabilityMissing(
            f"--serve is not supported with --backend {backend.name}. Serve the cell with "
            "--backend docker."
        )
    why = pool.why_not_without_network() if spec.network == "none" else None
    if why:
        raise CapabilityMissing(
            f"--serve with --network none is not supported with --backend {backend.name}: "
            f"{why}. Or drop --network none; nothing was built."
        )
    if spec.serve.replicas > pool.max_replicas:
        raise CapabilityMissing(
            f"--replicas {spec.serve.replicas}: the {backend.name} backend runs "
            f"{'one copy' if pool.max_replicas == 1 else f'up to {pool.max_replicas} copies'} "
            "of a service. Serve more copies on a cluster with --backend kubernetes (or "
            "`mlcontainer deploy ID --replicas N`), or drop --replicas; nothing was built."
        )
    return pool


def serve(
    spec: RunSpec, backend: Backend, *, registry: Registry = REGISTRY, **options: Any
) -> Service:
    """Run the cell of ``spec`` (with ``spec.serve``) as a service, recorded as a snapshot with
    status "serving"; replaces a service of the same name in ``registry`` once the new one
    answers. A cell that fails (or defines no entry function) raises RunError, its snapshot
    recorded as failed and nothing left running; what fails before its container starts
    leaves no snapshot. ``options`` are runs.run_steps' (inputs, events, output, rebuild,
    store, context, lock, secrets)."""
    store, events = options.get("store"), options.get("events") or no_events
    serving = spec.serve
    assert serving is not None, "a served spec"
    pool = services_of(backend, spec)
    if spec.name is None:  # its snapshots go by its name: `mlcontainer serve NAME` serves the last
        spec = replace(spec, name=serving.name)
    # Recorded as this process's, whichever front end: its service lives and ends with it.
    context = dict(options.get("context") or {})
    options["context"] = dict(context, kernel=context.get("kernel") or OWNER)
    name = serving.name
    old = registry.get(name)
    # The address stays when a service is served again; a port taken is refused before work.
    if old is not None and old.proxy is not None and serving.port in (None, old.proxy.port):
        proxy, reuse = old.proxy, True
    else:
        proxy, reuse = Proxy(serving.port), False
    started: dict = {}

    def start(outcome, workdir, hashing, masker, values) -> bool:
        try:
            handle = pool.start(
                spec,
                outcome.env,
                workdir,
                run_id=outcome.run_id,
                events=events,
                output=masker,
                secrets=values,
            )
        except ServiceFailed as e:
            # Recorded (stdout, stderr) and raised as any failed cell's run would be.
            outcome.result = RunResult(
                e.exit_code, e.reason, masker.mask(e.stdout), masker.mask(e.stderr)
            )
            raise runs.failure(outcome) from None
        try:
            hashing.fill(outcome.inputs)
        except BaseException:
            _end_now(pool, handle)
            raise
        started.update(handle=handle, workdir=workdir, mask=masker.mask)
        return True  # the folder is the service's until it ends

    try:
        outcome = runs.run_steps(spec, backend, start, **options)
    except BaseException:
        if not reuse:
            proxy.close()
        raise
    handle: ServiceHandle = started["handle"]
    if reuse and proxy.closed:  # the old one ended meanwhile, and its proxy with it
        try:
            proxy = Proxy(proxy.port)
        except Conflict:  # taken since: the address changes, the service comes up all the same
            proxy = Proxy()
    target = reachable(handle.direct) or upstream_of(handle.url)
    if target is None:  # served where a TCP proxy cannot front it (a cluster's API proxy)
        if not reuse:
            proxy.close()
        url, own_proxy = handle.url, None
    else:
        url, own_proxy = proxy.url, proxy
    service = Service(
        name=name,
        run_id=outcome.run_id,
        handle=handle,
        services=pool,
        backend=backend.name,
        url=url,
        entry=serving.entry,
        proxy=own_proxy,
        upstream=target if own_proxy is not None else None,
        workdir=started["workdir"],
        store=store,
        mask=started["mask"],
    )
    try:
        if store is not None:
            store.update(
                outcome.run_id,
                status="serving",
                inputs=outcome.inputs,
                parents=outcome.parents or [],
                service=_block(service, spec),
            )
    except BaseException:
        _end_now(pool, handle)
        shutil.rmtree(service.workdir, ignore_errors=True)
        raise
    if own_proxy is not None and target is not None:
        own_proxy.switch(target)
    registry.put(service)
    service.watcher = threading.Thread(
        target=_watch, args=(service, registry), name=f"mlcontainer-service-{name}", daemon=True
    )
    service.watcher.start()
    if old is not None:
        # No gap: the old one stops once the connections it has are answered.
        old.replaced_by = outcome.run_id
        if old.proxy is not None:
            old.proxy.drain(old.upstream)
        _stop(old, STOP_GRACE)
    events(Phase.SERVING, name=name, url=url, snapshot=outcome.run_id)
    return service


def serve_snapshot(
    store,
    ref: str,
    backend: Backend,
    *,
    name: str | None = None,
    port: int | None = None,
    entry: str | None = None,
    events: Events = no_events,
    output: Output | None = None,
    context: dict | None = None,
    secrets_file: str | None = None,
    registry: Registry = REGISTRY,
) -> Service:
    """Serve a snapshot's cell again, as a new snapshot: its recorded inputs, lock (rebuilt
    from it when its image is gone) and base; its service name unless ``name`` is given."""
    record = store.get(ref)
    spec = snapshots.spec_from_record(record)
    was = spec.serve
    if was is None and name is None:
        raise CapabilityMissing(
            f"Snapshot {record['id']} was not served; give it a name to serve its cell's "
            "function under (mlcontainer serve ID --name NAME)."
        )
    serve_spec = parse_serve(
        name or (was.name if was else None),
        port=port if port is not None else (was.port if was else None),
        entry=entry or (was.entry if was else None),
        replicas=was.replicas if was else None,
    )
    # A name that was the service's (the default) follows the service's new name.
    named = spec.name if was is None or spec.name != was.name else None
    spec = replace(spec, serve=serve_spec, name=named)
    values = resolve(spec.secrets, os.environ, secrets_file)
    inputs = snapshots.recorded_inputs(store, record)
    service = serve(
        spec,
        backend,
        inputs=inputs,
        events=events,
        output=output,
        store=store,
        context=dict(context or {}, rerun_of=record["id"]),
        secrets=values,
        lock=record.get("lock") or None,
        registry=registry,
    )
    store.update(service.run_id, rerun_of=record["id"])
    return service


def _block(service: Service, spec: RunSpec) -> dict:
    """The record's ``service`` block."""
    assert spec.serve is not None
    return {
        "name": service.name,
        "url": service.url,
        "port": service.proxy.port if service.proxy is not None else urlsplit(service.url).port,
        "entry": spec.serve.entry,
        "replicas": spec.serve.replicas,
        "backend": service.backend,
        "started": service.started,
    }


def _end_now(pool: Services, handle: ServiceHandle) -> None:
    """A service started but not handed over (what followed failed): gone at once."""
    try:
        pool.stop(handle, grace=0)
        pool.wait(handle)
    except MlcError:
        pass  # the error that got us here matters more


def _watch(service: Service, registry: Registry) -> None:
    """Wait for the service to end, however it ends; then record it and let it go."""
    try:
        result = service.services.wait(service.handle)
    except MlcError as e:
        result = RunResult(None, "failed", message=str(e))
    try:
        registry.ended(service)
        _record_end(service, result)
    finally:
        shutil.rmtree(service.workdir, ignore_errors=True)
        service.ended.set()


def _record_end(service: Service, result: RunResult) -> None:
    store = service.store
    if store is None:
        return
    try:
        asked = service.stopping or store.get(service.run_id).get("stop_requested")
    except MlcError:
        return  # its record was removed meanwhile
    # Stopped: asked to, or it exited cleanly (SIGTERM from `docker stop`); else it failed.
    stopped = asked or service.replaced_by or result.reason in ("done", "stopped")
    fields = {
        "status": "stopped" if stopped else "failed",
        "reason": _end_reason(service, result, bool(stopped)),
        "exit_code": result.exit_code,
        "stdout": service.mask(result.stdout),
        "stderr": service.mask(result.stderr),
        "finished": time.time(),
        "duration": round(time.time() - service.started, 3),
    }
    if service.replaced_by:
        fields["replaced_by"] = service.replaced_by
    try:
        store.update(service.run_id, **fields)
    except MlcError:
        pass  # a watcher thread has no one to tell


def _end_reason(service: Service, result: RunResult, stopped: bool) -> str:
    if service.replaced_by:
        return f"replaced by {service.replaced_by}"
    if stopped:
        return "stopped"
    why = result.message or f"{result.reason}, exit code {result.exit_code}"
    return f"the service ended on its own ({why})"


# -- what the front ends show ------------------------------------------------------------------


def rows(store=None, registry: Registry = REGISTRY) -> list[dict]:
    """The services running now: this process's (with requests served), then those recorded
    as serving by other processes. Each: name, url, snapshot, backend, requests, uptime, here."""
    mine = [s.row() for s in registry.all()]
    seen = {r["snapshot"] for r in mine}
    others = []
    for record in serving_records(store):
        if record["id"] in seen:
            continue
        block = record.get("service") or {}
        began = block.get("started") or record.get("created")
        others.append(
            {
                "name": block.get("name") or record.get("name"),
                "url": block.get("url"),
                "snapshot": record["id"],
                "backend": block.get("backend"),
                "requests": None,
                "uptime": time.time() - began if began else None,
                "here": False,
            }
        )
    return sorted(mine, key=lambda r: r["name"]) + others


def serving_records(store) -> list[dict]:
    """The records serving now, newest first: not those whose process died (until prune
    marks them stopped, they still say serving), nor one removed since it was listed."""
    if store is None:
        return []
    found = []
    for summary in store.list(limit=None, status="serving"):
        try:
            record = store.get(summary["id"])
        except SnapshotNotFound:
            continue
        if owner_alive(record.get("kernel")):
            found.append(record)
    return found


def serving_record(store, name: str) -> dict:
    """The newest snapshot recorded as serving under ``name`` by a live process (any one's);
    NotFound names those that are."""
    records = serving_records(store)
    for record in records:
        if (record.get("service") or {}).get("name") == name:
            return record
    running = sorted({str((r.get("service") or {}).get("name")) for r in records})
    if not running:
        raise NotFound(
            f"No service {name!r} is running, nor any other; start one with "
            f"`%%containerize --serve {name}`."
        )
    raise NotFound(f"No service {name!r} is running; running: {', '.join(running)}.")


def handle_of(record: dict) -> ServiceHandle:
    """A handle for a recorded service, for its backend to find it by its snapshot id."""
    block = record.get("service") or {}
    return ServiceHandle(
        name=block.get("name") or "", run_id=record["id"], url=block.get("url") or ""
    )


def logs(name: str, *, store=None, backend_of=None, registry: Registry = REGISTRY) -> str:
    """What the service ``name`` has printed so far: this process's, else one recorded as
    serving (``backend_of(record)`` is the backend it runs on)."""
    service = registry.get(name)
    if service is not None:
        return service.mask(service.services.logs(service.handle))
    if store is None or backend_of is None:
        raise NotFound(f"No service {name!r} runs in this process.")
    record = serving_record(store, name)
    pool = backend_of(record).services
    if pool is None:
        raise NotFound(f"Service {name!r} runs on a backend that cannot show its log here.")
    return pool.logs(handle_of(record))
