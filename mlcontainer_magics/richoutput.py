"""Splits the container's stdout into printed text and display messages, in order.

The runner writes each display (display(), the last expression, a matplotlib figure) as one
line starting with MARK; everything else is text and passes through at once, so prints stay live.
"""
from __future__ import annotations

import json
from typing import Callable

MARK = "\x1e\x1fmlc-display:"  # the same as runner/mlc_runner.py


class StdoutDemux:
    def __init__(self, text: Callable[[str], None], display: Callable[[dict], None]) -> None:
        self._text = text
        self._display = display
        self._pending = ""  # a display line not complete yet, or a possible start of MARK

    def feed(self, chunk: str) -> None:
        data = self._pending + chunk
        self._pending = ""
        while data:
            at = data.find(MARK)
            if at < 0:
                # Hold back a tail that could be the beginning of a MARK split across chunks.
                keep = _partial_mark(data)
                if len(data) > keep:
                    self._text(data[: len(data) - keep])
                self._pending = data[len(data) - keep:] if keep else ""
                return
            if at:
                self._text(data[:at])
            end = data.find("\n", at)
            if end < 0:
                self._pending = data[at:]
                return
            self._emit(data[at + len(MARK): end])
            data = data[end + 1:]

    def close(self) -> None:
        if self._pending:
            if self._pending.startswith(MARK):
                self._emit(self._pending[len(MARK):])
            else:
                self._text(self._pending)
            self._pending = ""

    def _emit(self, payload: str) -> None:
        try:
            message = json.loads(payload)
        except ValueError:
            self._text(payload + "\n")
            return
        self._display(message.get("data", {}))


def _partial_mark(data: str) -> int:
    for n in range(min(len(MARK) - 1, len(data)), 0, -1):
        if data.endswith(MARK[:n]):
            return n
    return 0
