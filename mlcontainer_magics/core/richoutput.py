"""Splits the container's stdout into printed text and display messages, in order.

The runner writes each display (display(), the last expression, a matplotlib figure) as one
line starting with MARK; everything else is text and passes through at once, so prints stay live.
"""

from __future__ import annotations

import json
from typing import Callable

from ..runner import MARK, PREFIX, SERVING_MARK, serving_line  # the runner defines the marks

__all__ = ["MARK", "ServingWatch", "StdoutDemux"]


class ServingWatch:
    """A service's stdout as it comes, up to its runner's serving line (SERVING_MARK): the
    server answers from then on. ``feed(text)`` returns (the text to pass on, whether the line
    came); the line itself is protocol, never passed on. Text passes at once, but for the
    start of a line that may be the serving line, held until it is whole or cannot be."""

    def __init__(self) -> None:
        self._pending = ""
        self._mid_line = False  # part of this line was passed on: it is not the serving line

    def feed(self, text: str) -> tuple[str, bool]:
        data, out = self._pending + text, []
        self._pending = ""
        while data:
            end = data.find("\n")
            if self._mid_line or end < 0:
                if not self._mid_line and (
                    data.startswith(SERVING_MARK) or SERVING_MARK.startswith(data)
                ):
                    self._pending = data
                    break
                upto = len(data) if end < 0 else end + 1
                out.append(data[:upto])
                data, self._mid_line = data[upto:], end < 0
                continue
            line, data = data[: end + 1], data[end + 1 :]
            if serving_line(line) is not None:
                return "".join(out) + data, True
            out.append(line)
        return "".join(out), False

    def rest(self) -> str:
        """What was held back when the stream ended."""
        rest, self._pending = self._pending, ""
        return rest


class StdoutDemux:
    """``display`` gets display bundles; in one-stream mode ``stderr`` gets the cell's stderr
    and ``outputs`` the runner's offer of its output files ({"files": [{name, size, sha256}]}:
    they do not travel in the log)."""

    def __init__(
        self,
        text: Callable[[str], None],
        display: Callable[[dict], None],
        stderr: Callable[[str], None] | None = None,
        outputs: Callable[[dict], None] | None = None,
    ) -> None:
        self._text = text
        self._display = display
        self._stderr = stderr or text
        self._outputs = outputs or (lambda offer: None)
        self._pending = ""  # a marked line not complete yet, or a possible start of a mark

    def feed(self, chunk: str) -> None:
        data = self._pending + chunk
        self._pending = ""
        while data:
            at = data.find(PREFIX)
            if at < 0:
                # Hold back a tail that could be the beginning of a MARK split across chunks.
                keep = _partial_mark(data)
                if len(data) > keep:
                    self._text(data[: len(data) - keep])
                self._pending = data[len(data) - keep :] if keep else ""
                return
            if at:
                self._text(data[:at])
            end = data.find("\n", at)
            if end < 0:
                self._pending = data[at:]
                return
            self._emit(data[at + len(PREFIX) : end])
            data = data[end + 1 :]

    def close(self) -> None:
        if self._pending:
            if self._pending.startswith(PREFIX):
                self._emit(self._pending[len(PREFIX) :])
            else:
                self._text(self._pending)
            self._pending = ""

    def _emit(self, line: str) -> None:
        kind, _, payload = line.partition(":")
        try:
            message = json.loads(payload)
        except ValueError:
            self._text(PREFIX + line + "\n")
            return
        if kind == "display":
            self._display(message.get("data", {}))
        elif kind == "stderr":
            self._stderr(message)
        elif kind == "outputs":
            self._outputs(message)
        else:
            self._text(PREFIX + line + "\n")


def _partial_mark(data: str) -> int:
    for n in range(min(len(PREFIX) - 1, len(data)), 0, -1):
        if data.endswith(PREFIX[:n]):
            return n
    return 0
