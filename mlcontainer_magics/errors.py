"""Every error the package raises derives from MlcError and says what to do next.

Third-party errors (docker SDK, pip, the kernel) are translated into these at one boundary
per subsystem, so callers (magics, CLI, server) only ever catch MlcError.
"""
from __future__ import annotations


class MlcError(Exception):
    """Base of all mlcontainer-magics errors; ``str(e)`` is a message for the user."""


class SpecError(MlcError, ValueError):
    """The user's input (flags, requirements, code, names) is invalid; nothing was started."""


class EngineUnavailable(MlcError):
    """No Docker engine answers."""


class BaseImageMissing(MlcError):
    """The base image is neither present locally nor pullable."""


class BuildError(MlcError):
    """Building an environment image failed; ``log`` holds the build output."""

    def __init__(self, message: str, log: str = "") -> None:
        super().__init__(message)
        self.log = log


class RunError(MlcError):
    """The cell ran and exited nonzero (or was stopped)."""

    def __init__(self, message: str, exit_code: int | None = None, logs: str = "",
                 reason: str = "error") -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.logs = logs
        self.reason = reason  # error | timeout | oom | interrupted | stopped | killed


class StoreError(MlcError):
    """The snapshot store cannot be read or written, or an id does not resolve."""


class VerificationFailed(MlcError):
    """A rerun did not reproduce the recorded outputs; ``problems`` lists each difference."""

    def __init__(self, message: str, problems=()) -> None:
        super().__init__(message)
        self.problems = list(problems)
