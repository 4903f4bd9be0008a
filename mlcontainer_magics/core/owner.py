"""Which process made a run, and whether it still lives: orphans are found this way."""

from __future__ import annotations

import os
import socket

# Stamped on containers (label) and records (`kernel`) as host:pid.
OWNER = f"{socket.gethostname()}:{os.getpid()}"


def alive(owner) -> bool:
    """Whether the host:pid ``owner`` still runs. Another machine's owner counts as alive (not
    ours to judge); an unreadable one as gone."""
    host, _, pid = str(owner or "").rpartition(":")
    if not host or not pid.isdigit():
        return False
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
