"""Secrets for a cell: taken where the user keeps them, given to the run, never recorded.

``--secret NAME`` reads the kernel's environment variable NAME, else the ``secrets_file``
setting (``NAME=VALUE`` lines, as a .env file); ``--secret NAME=@path`` reads a file. Only the
names reach the spec and the snapshot. ``Masker`` hides the values in streamed output, even
when one arrives split across two chunks.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

from ..errors import SpecError

MASK = "***"


def resolve(
    items, environ: Mapping[str, str] = os.environ, secrets_file: str | None = None
) -> dict[str, str]:
    """{name: value} for ``--secret`` items; a SpecError naming where to put a missing one."""
    from_file = _read_env_file(secrets_file) if secrets_file else {}
    values = {}
    for item in items:
        name, sep, source = str(item).partition("=")
        if sep:
            if not source.startswith("@"):
                raise SpecError(
                    f"--secret {item!r}: give NAME (from the environment or the "
                    "secrets_file setting) or NAME=@path (from a file), never the "
                    "value itself: it would stay in the notebook."
                )
            values[name] = _read_secret_file(Path(source[1:]).expanduser(), name)
        elif environ.get(name):
            values[name] = environ[name]
        elif name in from_file:
            values[name] = from_file[name]
        else:
            where = f" or in {secrets_file}" if secrets_file else ""
            raise SpecError(
                f"Secret {name} is not set: set the environment variable {name} in the kernel "
                f"(e.g. %env {name}=...){where}, point the secrets_file setting "
                f"(MLCONTAINER_SECRETS_FILE) at a file of NAME=VALUE lines, or use "
                f"--secret {name}=@/path/to/file."
            )
    return values


def _read_secret_file(path: Path, name: str) -> str:
    try:
        return path.read_text(encoding="utf-8").rstrip("\n")
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) else "it is not UTF-8 text"
        raise SpecError(f"Secret {name}: cannot read {path}: {why}.") from None


def _read_env_file(path: str) -> dict[str, str]:
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) else "it is not UTF-8 text"
        raise SpecError(f"The secrets_file {path} cannot be read: {why}.") from None
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key.strip()] = value
    return out


class Masker:
    """Wraps an ``output(stream, text)`` callback: secret values become ``***``. A tail that
    could be the start of a value is held back until the next chunk (or ``close``)."""

    def __init__(self, output: Callable[[str, str], None], values) -> None:
        self.output = output
        self.values = sorted({v for v in values if v}, key=len, reverse=True)
        self._pending: dict[str, str] = {}

    def mask(self, text: str) -> str:
        for value in self.values:
            text = text.replace(value, MASK)
        return text

    def __call__(self, stream: str, text: str) -> None:
        if not self.values:
            self.output(stream, text)
            return
        data = self.mask(self._pending.pop(stream, "") + text)
        keep = self._partial(data)
        if keep:
            self._pending[stream] = data[-keep:]
            data = data[:-keep]
        if data:
            self.output(stream, data)

    def close(self) -> None:
        for stream, rest in list(self._pending.items()):
            self.output(stream, rest)
        self._pending.clear()

    def _partial(self, data: str) -> int:
        """The length of the longest tail of ``data`` that begins some secret value."""
        for n in range(min(len(data), max(len(v) for v in self.values) - 1), 0, -1):
            if any(v.startswith(data[-n:]) for v in self.values):
                return n
        return 0
