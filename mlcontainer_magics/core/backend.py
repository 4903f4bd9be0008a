"""The contract every backend implements: everything the core and the front ends ask of one.

A backend builds environments, runs cells, stops and lists runs, and keeps its own house
(prune). Warm sessions are an optional capability: ``sessions`` is None where a backend has
none, and callers check for it. So are standby containers: ``claim_run_folder`` returns None
where a backend has none. So are services (``--serve``): ``services`` is None where a backend
serves no cells. A map (``--map``) runs every item through ``run_map``, whose default runs one
container per item with ``run_item`` (which a backend without one leaves refusing), and which
a backend may override as a whole (a Kubernetes Indexed Job). A backend raises only MlcError
subclasses (errors.py): the third-party errors of its engine or cluster are translated where it
talks to them.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from ..errors import CapabilityMissing, MlcError, RunError
from .events import Events, Output, Phase, no_events
from .spec import EnvSpec, RunSpec

__all__ = [
    "Backend",
    "Environment",
    "Events",
    "ItemResult",
    "Output",
    "RunResult",
    "RunningRun",
    "ServiceHandle",
    "Transport",
    "Services",
    "WarmSessions",
    "item_out_dir",
    "no_events",
]


@dataclass
class Environment:
    image: str  # a reference that runs it (tag, id, or a pushed reference by digest)
    image_id: str
    base_image_id: str
    lock: list = field(default_factory=list)
    cached: bool = False
    size: int | None = None
    build_log: str = ""


@dataclass
class RunResult:
    exit_code: int | None
    reason: str  # done | failed | timeout | oom | interrupted | stopped | killed
    stdout: str = ""
    stderr: str = ""
    container_id: str = ""
    # Why the run ended, in the backend's words, when the cell's own output cannot say
    # (an image the cluster cannot pull, a Job deleted before its pod started, ...).
    message: str | None = None


@dataclass
class ItemResult:
    """How one item of a map ended (its last attempt)."""

    index: int  # its position in the map's items (the manifest's "map" items)
    reason: str  # as RunResult's: done | failed | timeout | oom | interrupted | stopped | killed
    exit_code: int | None
    attempts: int  # 0: never started (the map was stopped first)
    duration: float  # seconds, of its last attempt
    stdout: str = ""
    stderr: str = ""
    out_dir: Path | None = None  # its --out values: item_out_dir(workdir, index)
    message: str | None = None  # why it ended, in the backend's words (RunResult.message)


def item_out_dir(workdir: Path, index: int) -> Path:
    """Where item ``index`` of a map writes its --out values: ``workdir/out/NNNNN``, mounted
    as the item container's /mlc/out."""
    return Path(workdir) / "out" / f"{index:05d}"


# Items whose failure another attempt may mend: not a map someone stopped.
RETRIED = ("failed", "timeout", "oom", "killed")


@dataclass
class RunningRun:
    """One live run as the sidebar lists it."""

    id: str | None  # the snapshot id
    container: str  # a container id (short) or a pod name
    name: str | None = None
    namespace: str | None = None
    image: str | None = None
    state: str | None = None  # running, paused, pending, ...
    status: str | None = None  # in the engine's words: "Up 3 seconds"
    started: str | None = None  # ISO 8601
    container_name: str | None = None
    items: int | None = None  # a map's (--map): its item containers running now (one entry)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class WarmSessions(ABC):
    """Optional capability: interpreters that stay alive between cells of one kernel."""

    @abstractmethod
    def workdir_parent(self, spec: RunSpec, env: Environment, events: Events) -> Path:
        """Start the session ``spec.session`` if it is not running; the folder a run's own
        folder must be made in so that the session sees it."""

    @abstractmethod
    def run(
        self,
        spec: RunSpec,
        env: Environment,
        workdir: Path,
        *,
        run_id: str,
        events: Events = no_events,
        output: Output | None = None,
        secrets: Mapping[str, str] | None = None,
    ) -> RunResult:
        """Run one cell in the session."""

    @abstractmethod
    def stop(self, name: str) -> bool:
        """End a session; False when none runs under that name."""

    @abstractmethod
    def names(self) -> list[str]:
        """The sessions running now."""


@dataclass
class ServiceHandle:
    """One started service, as its backend knows it."""

    name: str  # --serve NAME
    run_id: str  # its snapshot
    # where the backend serves it: a published port, a cluster Service's address, or
    # unix:PATH, a Unix socket of this machine (a container without a network)
    url: str
    backend: str = ""
    ident: str = ""  # what names it to the backend: a container id, a Deployment's name
    # The same server one hop closer, where this machine may reach it so (a container's own
    # address on the engine's bridge, skipping the engine's port forwarder); "" if none.
    direct: str = ""
    ref: Any = field(default=None, repr=False, compare=False)  # the backend's own object

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "ref"}


# One HTTP request to a service: (method, path, body, headers, timeout) -> (status, headers,
# body), whatever the status. Raises OSError (TimeoutError when it took longer than timeout) or
# an MlcError when the request does not reach the service.
Transport = Callable[
    [str, str, Optional[bytes], Mapping[str, str], Optional[float]],
    tuple[int, Mapping[str, str], bytes],
]


class Services(ABC):
    """Optional capability: a cell served over HTTP (``--serve``). Its container runs the cell
    once, then ``runner.py --http SERVE_PORT`` (or ``unix:PATH``) answers requests until it is
    stopped."""

    # More than one copy of a service behind one address: where the backend can (a Deployment).
    max_replicas = 1

    def why_not_without_network(self) -> str | None:
        """Why this backend cannot serve a cell with ``--network none`` (a container with no
        network at all that this machine still reaches), in the user's words; None if it can."""
        return "its services keep their network; serve the cell with --backend docker"

    @abstractmethod
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
        """Start the service and stream its output until its runner prints SERVING_MARK
        (it answers: return its handle). Ended before that (the cell failed, no entry
        function), or not ready within ``spec.timeout``: ServiceFailed with its output, and
        nothing of it left. ``workdir`` stays the backend's until ``wait`` returns."""

    @abstractmethod
    def wait(self, handle: ServiceHandle) -> RunResult:
        """Block until the service ends (stopped, crashed, killed from outside); its whole
        log; what was left of it removed. Raises only MlcError (the engine went away)."""

    @abstractmethod
    def stop(self, handle: ServiceHandle, grace: float = 10.0) -> bool:
        """Ask it to end, finishing requests in flight for up to ``grace`` seconds, then end
        it; False when it was not running."""

    @abstractmethod
    def logs(self, handle: ServiceHandle) -> str:
        """What it has printed so far: the cell's output, then one line per request."""

    @abstractmethod
    def running(self) -> list[ServiceHandle]:
        """The services of this namespace running now, whichever process started them."""

    def transport(self, handle: ServiceHandle) -> Transport | None:
        """Optional capability: how a client reaches the service where a plain HTTP request
        to ``handle.url`` does not (a cluster's API server proxy, which wants the
        kubeconfig's credentials). None (the default): its URL answers plain HTTP."""
        return None


class Backend(ABC):
    name = "abstract"
    namespace = "mlcontainer"  # prefix of what it makes (images, labels, volumes)
    # Optional capability: the cell sees this machine's files (spec.mounts).
    supports_mounts = False

    def named_volumes(self) -> dict[str, str]:
        """Mount names that mean storage of the backend's own rather than a local path, as
        ``{name: source}`` (e.g. a PersistentVolumeClaim: ``{"data": "pvc:training-data"}``)."""
        return {}

    def check_mounts(self, spec: RunSpec) -> None:
        """Refuse (CapabilityMissing), before anything is built, mounts this backend cannot
        give the cell."""
        if spec.mounts and not self.supports_mounts:
            raise CapabilityMissing(
                f"--mount is not supported with --backend {self.name}: its containers do not "
                "see this machine's files. Run the cell with --backend docker, or pass small "
                "values with --in."
            )

    def check_map(self, spec: RunSpec, item_sizes: Sequence[int], shared: int = 0) -> None:
        """Refuse (SpecError), before the environment is built or pushed, a map (spec.map)
        this backend cannot carry: ``item_sizes`` about the bytes of each item's file, at
        least (transfer.encoded_size), ``shared`` those of the --in values every item
        shares. The default refuses nothing."""
        return None

    def map_size_limit(self) -> int | None:
        """Optional capability: the bytes past which check_map refuses a map whatever else it
        holds (a Kubernetes Secret's 1 MiB), so that the sizes it is given need be measured
        only that far; a value that would be pickled is then pickled (into nothing) that far
        to know its size (transfer.encoded_size). None (the default): check_map needs no
        size of a pickled value, which then counts as 0 and costs nothing."""
        return None

    # -- where -----------------------------------------------------------------------------

    @abstractmethod
    def target(self) -> dict[str, str]:
        """Where runs go, as a snapshot records it: an engine's address, or a cluster's
        context and namespace. A rerun goes there again."""

    @abstractmethod
    def status(self) -> dict:
        """{"up": bool, "version": str | None, "message": str | None}: never raises."""

    # -- environments ------------------------------------------------------------------------

    @abstractmethod
    def ensure_environment(
        self,
        env_spec: EnvSpec,
        *,
        events: Events = no_events,
        rebuild: bool = False,
        lock: list | None = None,
    ) -> Environment:
        """Return an environment image for env_spec, building it only if none exists."""

    @abstractmethod
    def base_image_id(self, base: str) -> str:
        """The id of a base image, pulled if needed; BaseImageMissing when it cannot be had."""

    @abstractmethod
    def fetch_wheels(self, base_image: str, lock: list) -> dict[str, bytes]:
        """Every file of ``lock``, downloaded (hash-checked) as a build would: for export."""

    @abstractmethod
    def save_image(self, ref: str, path: Path) -> None:
        """Write an image as a `docker load`-able tar to ``path``."""

    # -- runs --------------------------------------------------------------------------------

    @abstractmethod
    def run(
        self,
        spec: RunSpec,
        env: Environment,
        workdir: Path,
        *,
        run_id: str,
        events: Events = no_events,
        output: Output | None = None,
        secrets: Mapping[str, str] | None = None,
    ) -> RunResult:
        """Run the cell with ``workdir`` as /mlc (its out/ writable); stream output as it comes.
        ``secrets`` (the values of spec.secrets) reach the cell as environment variables and
        as files /run/secrets/NAME, and nowhere that outlives the run."""

    def run_item(
        self,
        spec: RunSpec,
        env: Environment,
        workdir: Path,
        *,
        run_id: str,
        index: int,
        events: Events = no_events,
        output: Output | None = None,
        secrets: Mapping[str, str] | None = None,
    ) -> RunResult:
        """Optional capability: one item of a map (spec.map) as a container of its own, as
        ``run`` runs a cell, but with ``item_out_dir(workdir, index)`` as its /mlc/out and
        MLC_INDEX=index; labelled with ``run_id`` (and the item), so that ``stop(run_id)``
        stops every item of the map at once. The default run_map runs items with it."""
        raise CapabilityMissing(
            f"--map is not supported with --backend {self.name}. Map the cell with --backend "
            "docker, or loop over the items in the notebook."
        )

    def run_map(
        self,
        spec: RunSpec,
        env: Environment,
        workdir: Path,
        *,
        run_id: str,
        count: int,
        parallel: int | None = None,
        retries: int = 0,
        events: Events = no_events,
        output: Output | None = None,
        secrets: Mapping[str, str] | None = None,
        cancel: threading.Event | None = None,
    ) -> list[ItemResult]:
        """Run items 0..count-1 of the map whose folder is ``workdir`` (its manifest's "map"
        block), at most ``parallel`` at once (None: this machine's cores), each retried up to
        ``retries`` times; their results in item order, once every item has ended. Progress
        goes to ``events`` as Phase.MAPPED. ``cancel`` set (or an interrupt): no item starts
        any more and the running ones are stopped; an interrupt (or an error) is raised once
        every item's container is gone.

        The default: one container per item with ``run_item``."""
        return _ItemPool(self, spec, env, workdir, run_id, events, output, secrets).run(
            count, parallel or os.cpu_count() or 1, retries, cancel or threading.Event()
        )

    @abstractmethod
    def stop(self, run_id: str, grace: float = 0) -> bool:
        """Stop a run started by this process or another (after ``grace`` seconds of asking it
        to end, where the backend can ask); True if something was stopped."""

    @abstractmethod
    def is_running(self, run_id: str) -> bool:
        """Whether the run still has a container (or a Job) that has not ended."""

    @abstractmethod
    def running(self, *, all_namespaces: bool = False, services: bool = False) -> list[RunningRun]:
        """The live runs of this namespace (or of every one), newest first; with ``services``,
        also the containers that serve (listed as services elsewhere, but stopped as runs)."""

    @property
    def sessions(self) -> WarmSessions | None:
        """Warm sessions, where this backend has them; None where it has not."""
        return None

    @property
    def services(self) -> Services | None:
        """Served cells (--serve), where this backend has them; None where it has not."""
        return None

    # -- standby containers (optional) ---------------------------------------------------------

    def claim_run_folder(self, spec: RunSpec, env: Environment) -> Path | None:
        """Optional capability: the folder of a container already started (and not used) for
        ``spec``'s settings in ``env``, claimed for this run so that no other run takes it. The
        run's files are written there, and ``run()`` with it as ``workdir`` runs the cell in
        that container. None (the default): the run makes a folder of its own."""
        return None

    def release_run_folder(self, folder: Path) -> None:
        """The run of a claimed folder is over, or never reached ``run()``: what is left of
        its container is the backend's to remove. Never raises."""
        return None

    # -- housekeeping -----------------------------------------------------------------------

    @abstractmethod
    def prune_orphans(self) -> list[str]:
        """Remove what runs of dead kernels left behind; a line per thing removed."""

    @abstractmethod
    def prune_images(self, keep) -> list[str]:
        """Remove this namespace's environment images but those tagged in ``keep``."""


# -- the default run_map: a bounded pool of item containers -------------------------------------

STOP_EVERY = 0.5  # seconds between stops of a map being stopped: an item may start meanwhile
STOP_FOR = 120.0  # seconds a stopped map's containers may take to go


class _ItemPool:
    """Items of one map on a pool of ``parallel`` threads, each running one item's container
    at a time through ``backend.run_item``."""

    def __init__(self, backend, spec, env, workdir, run_id, events, output, secrets) -> None:
        self.backend, self.spec, self.env = backend, spec, env
        self.workdir, self.run_id, self.secrets = Path(workdir), run_id, secrets
        self.events, self.output = events, output
        self.lock = threading.Lock()
        self.count = 0
        self.done = self.running = 0
        self.failed: list[dict] = []  # {index, reason, why}, as the display shows them
        self.started_at = time.monotonic()

    def run(
        self, count: int, parallel: int, retries: int, cancel: threading.Event
    ) -> list[ItemResult]:
        self.count = count
        self._progress()
        pool = ThreadPoolExecutor(min(parallel, count), thread_name_prefix="mlcontainer-map")
        futures = [pool.submit(self._item, i, retries, cancel) for i in range(count)]
        try:
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=STOP_EVERY)
                for future in done:
                    future.result()  # a worker's own error (the engine went away) ends the map
                if cancel.is_set() and pending:
                    # Stopped from outside (a stop button): running items end, none starts.
                    self._stop_quietly()
            return [f.result() for f in futures]
        except BaseException:
            cancel.set()
            self._stop_all(futures)
            raise
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _item(self, index: int, retries: int, cancel: threading.Event) -> ItemResult:
        out = item_out_dir(self.workdir, index)
        attempts, result, duration = 0, None, 0.0
        while not cancel.is_set():
            attempts += 1
            _empty(out)  # what a failed attempt wrote is not the item's
            with self.lock:
                self.running += 1
            self._progress()
            lines = _Lines(self.output, self.lock)
            t0 = time.monotonic()
            try:
                result = self.backend.run_item(
                    self.spec,
                    self.env,
                    self.workdir,
                    run_id=self.run_id,
                    index=index,
                    output=lines,
                    secrets=self.secrets,
                )
            except RunError as e:  # the engine refused this container: the item failed
                result = RunResult(e.exit_code, "failed", "", e.logs, message=str(e))
            finally:
                duration = time.monotonic() - t0
                lines.close()
                with self.lock:
                    self.running -= 1
            if result.reason == "stopped":  # the run was stopped: so is every item
                cancel.set()
            if result.reason == "done" or attempts > retries or result.reason not in RETRIED:
                break
        if result is None:  # stopped before it started
            return ItemResult(index, "stopped", None, 0, 0.0, out_dir=out)
        item = ItemResult(
            index,
            result.reason,
            result.exit_code,
            attempts,
            round(duration, 3),
            result.stdout,
            result.stderr,
            out,
            result.message,
        )
        with self.lock:
            self.done += 1
            if item.reason != "done":
                self.failed.append({"index": index, "reason": item.reason, "why": _why(item)})
        self._progress()
        return item

    def _progress(self) -> None:
        with self.lock:
            elapsed = max(time.monotonic() - self.started_at, 1e-6)
            rate = self.done / elapsed
            left = self.count - self.done
            info = dict(
                done=self.done,
                running=self.running,
                failed=len(self.failed),
                count=self.count,
                rate=round(rate, 3),
                eta=round(left / rate, 1) if rate > 0 else None,
                failures=sorted(self.failed, key=lambda f: f["index"]),
            )
            self.events(Phase.MAPPED, **info)

    def _stop_quietly(self) -> None:
        try:
            self.backend.stop(self.run_id)
        except MlcError:
            pass  # the engine went away: its items end anyway

    def _stop_all(self, futures) -> None:
        """Stop every item's container until no item runs (one may start between two stops);
        a second interrupt does not cut this short: it would leave containers."""
        deadline = time.monotonic() + STOP_FOR
        while time.monotonic() < deadline:
            try:
                self._stop_quietly()
                if not wait(futures, timeout=STOP_EVERY).not_done:
                    return
            except KeyboardInterrupt:
                continue


def _empty(folder: Path) -> None:
    """``folder`` exists, empty, and the container's user may write there."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o777)


def _why(item: ItemResult) -> str:
    """One line of why an item failed: its exception's last line, else the backend's word."""
    lines = [line for line in (item.stderr or "").strip().splitlines() if line.strip()]
    return (lines[-1] if lines else item.message or item.reason).strip()[:200]


class _Lines:
    """An item's output, passed on in whole lines: items running at once do not cut into
    each other's lines (nor into the rich output's marked lines)."""

    def __init__(self, output: Output | None, lock: threading.Lock) -> None:
        self.output, self.lock = output, lock
        self.partial = {"stdout": "", "stderr": ""}

    def __call__(self, stream: str, text: str) -> None:
        if self.output is None:
            return
        text = self.partial.get(stream, "") + text
        head, sep, rest = text.rpartition("\n")
        self.partial[stream] = rest
        if sep:
            with self.lock:
                self.output(stream, head + sep)

    def close(self) -> None:
        for stream, text in self.partial.items():
            if text and self.output is not None:
                with self.lock:
                    self.output(stream, text + "\n")
        self.partial = {"stdout": "", "stderr": ""}
