"""Durations, times and sizes as people read them: the one definition, for the CLI and the display.

Pure and standard library only, so both the core and the front ends import it. One
implementation, two styles chosen by parameters:

    format_duration(245)                  "4m05s"       one word, for columns awk splits
    format_duration(245, spaced=True)     "4 min 05 s"  the status display's words
    format_size(1_234_567_890)            "1.2 GB"      one decimal, as ``show`` prints it
    format_size(369e6, short=True)        "369 MB"      no decimal from 10 up, as the display

A value that is missing or not a number gives ``missing``: ``-`` unless told otherwise.
"""

from __future__ import annotations

import math
import time

MISSING = "-"
_DECIMAL = (1000, ("B", "kB", "MB", "GB", "TB"))
_BINARY = (1024, ("B", "KiB", "MiB", "GiB", "TiB"))


def as_number(value) -> float | None:
    """``value`` as a float if it is a real number (not a bool, not NaN); else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return None
    return float(value)


def format_duration(seconds, *, spaced: bool = False, missing: str = MISSING) -> str:
    """``12.3s``, ``4m05s``, ``2h03m``; with ``spaced``: ``12.3 s``, ``4 min 05 s``,
    ``2 h 03 min``. ``missing`` for a value that is unknown, negative or infinite."""
    s = as_number(seconds)
    if s is None or s < 0 or math.isinf(s):
        return missing
    sec, mins, hours, sep = (" s", " min", " h", " ") if spaced else ("s", "m", "h", "")
    if s < 59.95:  # would print as 60.0s
        return f"{s:.1f}{sec}"
    whole = int(round(s))
    if whole < 3600:
        return f"{whole // 60}{mins}{sep}{whole % 60:02d}{sec}"
    return f"{whole // 3600}{hours}{sep}{whole % 3600 // 60:02d}{mins}"


def format_time(epoch, *, missing: str = MISSING) -> str:
    """Local time as ``2024-05-01T12:34:56`` (one word, sorts as text)."""
    t = as_number(epoch)
    if t is None:
        return missing
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t))
    except (OverflowError, OSError, ValueError):
        return missing


def format_size(size, binary: bool = False, *, short: bool = False, missing: str = MISSING) -> str:
    """Bytes in powers of 1000 as ``docker images`` counts (``1.2 GB``), or of 1024 when
    ``binary`` (``2.0 GiB``). One decimal; with ``short`` none from 10 up (``369 MB``)."""
    n = as_number(size)
    if n is None or n < 0 or math.isinf(n):
        return missing
    base, units = _BINARY if binary else _DECIMAL
    if n < base:
        return f"{int(n)} {units[0]}"
    for unit in units[1:]:
        n /= base
        decimals = 0 if short and round(n, 1) >= 10 else 1
        if round(n, decimals) < base or unit == units[-1]:  # else it would print as 1000.0 kB
            return f"{n:.{decimals}f} {unit}"
    raise AssertionError("unreachable")


def short_digest(value) -> str:
    """``xxh3-128:1234abcd5678`` of a digest that names its algorithm; else its first 12."""
    text = str(value)
    algo, sep, hexpart = text.partition(":")
    return f"{algo}:{hexpart[:12]}" if sep else text[:12]


def plural(n: int, word: str) -> str:
    """``1 item``, ``3 items``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
