"""Every error the package raises derives from MlcError and says what to do next.

The class says what kind of problem it is (bad input, not found, ambiguous, unavailable, ...),
so front ends branch on classes, never on messages: the server maps them to HTTP statuses in
one place, the CLI prints ``str(e)`` on one line. Third-party errors (Docker SDK, requests,
the Kubernetes client, SQLite) are translated into these where a backend or the store talks
to them, and nowhere else.
"""

from __future__ import annotations


class MlcError(Exception):
    """Base of all mlcontainer-magics errors; ``str(e)`` is a message for the user."""


# -- kinds: what the user can do about it ------------------------------------------------------


class SpecError(MlcError, ValueError):
    """The user's input (flags, requirements, code, names) is invalid; nothing was started."""


class CapabilityMissing(SpecError):
    """The chosen backend cannot do what was asked (e.g. warm sessions on Kubernetes)."""


class NotFound(MlcError):
    """What was named does not exist."""


class Conflict(MlcError):
    """The request is valid but the current state refuses it (ambiguous, still running, ...)."""


class Unavailable(MlcError):
    """A service the request needs (a Docker engine, a cluster) does not answer."""


# -- the snapshot store ----------------------------------------------------------------------


class StoreError(MlcError):
    """A snapshot reference or record is invalid, or the store cannot be used."""


class SnapshotNotFound(StoreError, NotFound):
    """No snapshot matches the reference."""


class AmbiguousReference(StoreError, Conflict):
    """An id prefix matches several snapshots."""


class SnapshotActive(StoreError, Conflict):
    """The snapshot is still building or running."""


class StoreUnavailable(StoreError):
    """The store's files cannot be read or written (disk full, permissions, damage)."""


# -- engines and clusters -------------------------------------------------------------------


class EngineUnavailable(Unavailable):
    """No Docker engine answers."""


class EngineError(MlcError):
    """The Docker engine refused a request."""


class BaseImageMissing(MlcError):
    """The base image is neither present locally nor pullable."""


class RegistryError(MlcError):
    """A registry refused, could not be reached, or a push failed; ``log`` holds the push output."""

    def __init__(self, message: str, log: str = "") -> None:
        super().__init__(message)
        self.log = log


class RegistryAuthError(RegistryError):
    """The registry wants credentials that were not given, or refused the ones given."""


class KubernetesError(MlcError):
    """The cluster refused a request, or could not be reached."""


class ClusterUnavailable(KubernetesError, Unavailable):
    """No usable kubeconfig, or no API server answers at the configured address."""


class ClusterAuthError(KubernetesError):
    """The cluster refused the credentials (401), or RBAC refused the request (403)."""


class NamespaceMissing(KubernetesError, NotFound):
    """The configured namespace does not exist on the cluster."""


# -- builds and runs ---------------------------------------------------------------------------


class BuildError(MlcError):
    """Building an environment image failed; ``log`` holds the build output."""

    def __init__(self, message: str, log: str = "") -> None:
        super().__init__(message)
        self.log = log


class RunError(MlcError):
    """The cell ran and exited nonzero (or was stopped)."""

    def __init__(
        self, message: str, exit_code: int | None = None, logs: str = "", reason: str = "error"
    ) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.logs = logs
        self.reason = reason  # error | timeout | oom | interrupted | stopped | killed


class MapError(RunError):
    """Items of a map (``--map``) failed, once every item has ended; ``failed`` lists them as
    the map's record does (index, reason, exit_code, attempts, error: the first lines of its
    traceback)."""

    def __init__(
        self,
        message: str,
        failed=(),
        exit_code: int | None = None,
        logs: str = "",
        reason: str = "failed",
    ) -> None:
        super().__init__(message, exit_code=exit_code, logs=logs, reason=reason)
        self.failed = list(failed)


class ServiceFailed(RunError):
    """A service's container ended (or never became ready) before it served: the cell raised,
    or defines no entry function. ``stdout``/``stderr`` hold all it printed."""

    def __init__(
        self,
        message: str,
        exit_code: int | None = None,
        reason: str = "failed",
        stdout: str = "",
        stderr: str = "",
    ) -> None:
        super().__init__(message, exit_code=exit_code, logs=stderr, reason=reason)
        self.stdout = stdout
        self.stderr = stderr


class ServiceError(MlcError):
    """A served cell answered a call with an error; ``status`` is the HTTP status (None: no
    answer) and ``payload`` its JSON (``error``, and for a 500 ``type`` and ``traceback``)."""

    def __init__(self, message: str, status: int | None = None, payload=None) -> None:
        super().__init__(message)
        self.status = status
        self.payload = payload or {}


class ServiceUnavailable(ServiceError, Unavailable):
    """A served cell did not answer at all: not running, unreachable, or too slow."""


class VerificationFailed(MlcError):
    """A rerun did not reproduce the recorded outputs; ``problems`` lists each difference."""

    def __init__(self, message: str, problems=()) -> None:
        super().__init__(message)
        self.problems = list(problems)
