"""The contract every backend implements: everything the core and the front ends ask of one.

A backend builds environments, runs cells, stops and lists runs, and keeps its own house
(prune). Warm sessions are an optional capability: ``sessions`` is None where a backend has
none, and callers check for it. So are standby containers: ``claim_run_folder`` returns None
where a backend has none. So are services (``--serve``): ``services`` is None where a backend
serves no cells. A backend raises only MlcError subclasses (errors.py): the
third-party errors of its engine or cluster are translated where it talks to them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from ..errors import CapabilityMissing
from .events import Events, Output, no_events
from .spec import EnvSpec, RunSpec

__all__ = [
    "Backend",
    "Environment",
    "Events",
    "Output",
    "RunResult",
    "RunningRun",
    "ServiceHandle",
    "Transport",
    "Services",
    "WarmSessions",
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
