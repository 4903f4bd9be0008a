"""Standby containers: a started, never-used container kept ready for the next cell.

After a run, the kernel starts (in the background) one container for that run's environment and
everything else fixed when a container is created: limits, network, user, mounts, variables.
Its runner waits, blocked (no CPU) reading a FIFO in the container's own folder. The next cell
with the same settings claims it, fills that folder (it is the run's folder: /mlc) and writes one
line to the FIFO; the runner then runs the cell exactly as a fresh container's runner would, and
the container is removed after, like any run's. One container, one cell.

Runs with secrets never use one: their values (variables, a folder of files) are fixed when a
container is created, and must not sit in a container waiting for a cell that may never come.

The pool keeps the books (what is ready, starting, claimed; the bound; idle expiry); the Docker
backend makes and removes the containers.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import json
import os
import select
import shutil
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...core.spec import digest
from ...runner import END_MARK
from .engine import quietly

GO = ".go"  # the FIFO in a standby's folder: the runner waits on /mlc/.go
PREFIX = "mlc-standby-"  # its folder's name starts so (orphan cleanup knows it by that)
READY_WAIT = 60.0  # seconds a new standby's runner may take to reach the FIFO


@dataclass(eq=False)
class Standby:
    key: str
    folder: Path
    container: Any = None  # the engine's handle
    fd: int | None = None  # the FIFO's write end, held while it waits
    timer: threading.Timer | None = None


def standby_key(image_id: str, options: dict, folder: Path, mounts: Iterable) -> str:
    """Everything a container is fixed to when it is created, as one digest: the image and its
    creation options (limits, network, user, variables, the user's mounts), but not its labels
    (who runs in it) or its own folder. A mount's source is a file or folder by its inode: one
    replaced since (an editor's save, rm -rf and mkdir) is another mount."""
    own = {str(folder), str(folder / "out")}
    fixed = {k: v for k, v in options.items() if k != "labels"}
    fixed["volumes"] = {k: v for k, v in options.get("volumes", {}).items() if k not in own}
    fixed["image"] = image_id
    fixed["inodes"] = [_inode(m.source) for m in mounts]
    return digest(fixed)


def _inode(path: str) -> list:
    try:
        st = os.stat(path)
    except OSError:
        return []
    return [st.st_dev, st.st_ino]


def make_folder(folder: Path, runner: bytes) -> None:
    """A standby's folder: the runner, out/ (mounted writable) and the FIFO it waits on."""
    folder.chmod(0o755)
    (folder / "runner.py").write_bytes(runner)
    (folder / "out").mkdir()
    (folder / "out").chmod(0o777)  # the container's non-root user writes here
    os.mkfifo(folder / GO)
    (folder / GO).chmod(0o644)  # any user of the container opens it for reading


def open_go(path: Path, running: Callable[[], bool], wait: float = READY_WAIT) -> int:
    """The FIFO's write end, once the runner waits at the other: opening it without blocking
    fails (ENXIO) until a reader has it open. Holding it keeps the runner waiting, in read()."""
    deadline = time.monotonic() + wait
    checked = time.monotonic()
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as e:
            if e.errno != errno.ENXIO:
                raise
        else:
            os.set_blocking(fd, True)
            return fd
        now = time.monotonic()
        if now > deadline:
            raise TimeoutError(f"the standby's runner did not start within {wait:g} s")
        if now - checked > 0.5:  # an API call: not at every turn
            checked = now
            if not running():
                raise RuntimeError("the standby container exited before its runner started")
        time.sleep(0.005)


def reader_gone(fd: int) -> bool:
    """Whether the runner at the FIFO's other end has gone (its container killed or removed):
    the write end of a pipe reports an error then. No API call."""
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))


def close_fd(standby: Standby) -> None:
    fd, standby.fd = standby.fd, None
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


def go(standby: Standby) -> None:
    """Tell the standby's runner to run the cell now in its folder; OSError if it is gone."""
    fd = standby.fd
    if fd is None:
        raise OSError(errno.EPIPE, "the standby was already used")
    try:
        os.write(fd, b"go\n")
    finally:
        close_fd(standby)


class EndMarks:
    """Takes the runner's end marks (END_MARK) out of a standby run's two streams. Once both
    have come, all the output is in and ``status`` is the runner's exit status: no need to wait
    for the engine to report the container's end. Text is passed on as it comes, but for a
    tail that may be the start of a mark."""

    def __init__(self) -> None:
        self._held = {"stdout": "", "stderr": ""}
        self._said: dict[str, dict] = {}

    def feed(self, stream: str, text: str) -> str:
        """``text`` of ``stream`` (stdout or stderr) without the mark: what to pass on."""
        text = self._held[stream] + text
        self._held[stream] = ""
        at = text.find(END_MARK)
        if at >= 0:
            end = text.find("\n", at)
            if end < 0:
                self._held[stream] = text[at:]
                return text[:at]
            try:
                self._said[stream] = json.loads(text[at + len(END_MARK) : end])
            except ValueError:
                self._said[stream] = {}
            return text[:at] + text[end + 1 :]
        tail = text.rfind(END_MARK[0])
        if tail >= 0 and END_MARK.startswith(text[tail:]):
            self._held[stream] = text[tail:]
            return text[:tail]
        return text

    def rest(self, stream: str) -> str:
        """What was held back of ``stream`` when it ended without a mark."""
        text, self._held[stream] = self._held[stream], ""
        return text

    @property
    def status(self) -> int | None:
        """The exit status both marks agree on, when the memory limit killed nothing."""
        out, err = self._said.get("stdout"), self._said.get("stderr")
        if not out or out != err or out.get("oom") != 0 or not isinstance(out.get("exit"), int):
            return None
        return out["exit"]


class StandbyPool:
    """The standbys of one kernel (one backend object), at most ``settings.standby_max``.

    ``engine`` makes and removes containers: ``discard_standby(standby)`` removes one with its
    folder, ``remove_used(container)`` a container that ran its cell. ``settings`` is read at
    each use (``standby``, ``standby_max``, ``standby_idle``), so `%config` takes effect at once.
    """

    def __init__(self, engine, settings) -> None:
        self.engine = engine
        self.settings = settings
        self._lock = threading.Lock()
        self._ready: list[Standby] = []  # least recently made first
        self._starting: dict[str, threading.Thread] = {}  # key -> the thread making it
        self._claimed: dict[str, Standby] = {}  # folder -> standby claimed by a run
        self._chores: list[threading.Thread] = []  # removals in the background
        self._closed = False
        atexit.register(self.close)

    @property
    def enabled(self) -> bool:
        return bool(self.settings.standby) and self.settings.standby_max > 0 and not self._closed

    def ready_keys(self) -> list[str]:
        with self._lock:
            return [s.key for s in self._ready]

    def count(self) -> int:
        """Standbys ready or starting."""
        with self._lock:
            return len(self._ready) + len(self._starting)

    # -- a run takes one ---------------------------------------------------------------------

    def claim(self, key: str) -> Standby | None:
        """A ready standby for ``key``, now this run's (None: the run makes its own container).
        One whose runner has gone (killed, pruned) is dropped, not handed out."""
        while True:
            with self._lock:
                found = next((s for s in self._ready if s.key == key), None)
                if found is None:
                    return None
                self._ready.remove(found)
                if found.timer is not None:
                    found.timer.cancel()
                alive = found.fd is not None and not reader_gone(found.fd)
                if alive:
                    self._claimed[str(found.folder)] = found
                    return found
            self._in_background(self.engine.discard_standby, found)

    def take(self, folder) -> Standby | None:
        """The standby claimed for the run whose folder is ``folder``; it is the run's now."""
        with self._lock:
            return self._claimed.pop(str(folder), None)

    def release(self, folder) -> None:
        """A claimed standby whose run never came to use it: removed."""
        standby = self.take(folder)
        if standby is not None:
            self._in_background(self.engine.discard_standby, standby)

    def remove_used(self, container) -> None:
        """A container whose cell has ended (its runner said so, or it exited), removed off
        the cell's critical path: whatever it still does (Python's last cleanup) is over."""
        self._in_background(self.engine.remove_used, container)

    # -- after a run: one ready for next time ------------------------------------------------

    def replenish(self, key: str, make: Callable[[], Standby]) -> None:
        """Start a standby for ``key`` in the background, unless one is ready or starting.
        At the bound, the least recently made standby of another key goes first."""
        if not self.enabled:
            return
        evicted = []
        with self._lock:
            if key in self._starting or any(s.key == key for s in self._ready):
                return
            bound = self.settings.standby_max
            if len(self._starting) >= bound:
                return  # all the room is being made already
            while len(self._ready) + len(self._starting) >= bound:
                evicted.append(self._pop(self._ready[0]))
            thread = threading.Thread(
                target=self._start, args=(key, make), daemon=True, name="mlcontainer-standby"
            )
            self._starting[key] = thread
            thread.start()
        for standby in evicted:
            self._in_background(self.engine.discard_standby, standby)

    def _start(self, key: str, make: Callable[[], Standby]) -> None:
        try:
            standby = make()
        except Exception:  # no standby then: the next run makes its container, as without
            standby = None
        with self._lock:
            self._starting.pop(key, None)
            keep = standby is not None and self.enabled
            if keep:
                assert standby is not None
                standby.timer = threading.Timer(
                    max(float(self.settings.standby_idle), 0.0), self._expire, (standby,)
                )
                standby.timer.daemon = True
                standby.timer.start()
                self._ready.append(standby)
        if standby is not None and not keep:
            self.engine.discard_standby(standby)

    def _expire(self, standby: Standby) -> None:
        with self._lock:
            if standby not in self._ready:
                return  # claimed or dropped meanwhile
            self._pop(standby)
        self.engine.discard_standby(standby)

    def _pop(self, standby: Standby) -> Standby:
        self._ready.remove(standby)
        if standby.timer is not None:
            standby.timer.cancel()
        return standby

    # -- housekeeping --------------------------------------------------------------------------

    def _in_background(self, fn, *args) -> None:
        thread = threading.Thread(target=quietly, args=(fn, *args), daemon=True)
        with self._lock:
            self._chores = [t for t in self._chores if t.is_alive()]
            self._chores.append(thread)
        thread.start()

    def settle(self, timeout: float = 60.0) -> None:
        """Wait until no standby is starting and no container is being removed."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                threads = list(self._starting.values()) + [t for t in self._chores if t.is_alive()]
            if not threads or time.monotonic() > deadline:
                return
            for t in threads:
                t.join(max(deadline - time.monotonic(), 0))

    def clear(self) -> None:
        """Remove every standby that is ready now (prune); claimed ones are their runs'."""
        with self._lock:
            ready, self._ready = self._ready, []
        for standby in ready:
            if standby.timer is not None:
                standby.timer.cancel()
            quietly(self.engine.discard_standby, standby)

    def close(self) -> None:
        """The kernel ends: no new standbys; those starting finish and go with the rest."""
        self._closed = True
        self.settle(timeout=30.0)
        self.clear()
        with self._lock:
            claimed, self._claimed = list(self._claimed.values()), {}
        for standby in claimed:
            quietly(self.engine.discard_standby, standby)
        self.settle(timeout=30.0)


def remove_folder(standby: Standby) -> None:
    close_fd(standby)
    shutil.rmtree(standby.folder, ignore_errors=True)
