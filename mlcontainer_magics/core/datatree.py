"""Content digests of mounted files and folders, so a snapshot says exactly what data a cell saw.

    digest_tree(path, cache)     TreeDigest: one digest of the tree plus (size, digest) per file
    check_tree(path)             refuse, before anything runs, what would expose more than named
    changed_files(old, new)      "train.csv changed (1.2 MB -> 1.3 MB)", for rerun --verify
    snapshot_files(path)         names, sizes and mtimes, to find what a cell wrote
    written_since(before, after) the files created or modified between two such maps

The hash is xxh3-128: about 9 GB/s on one core here (sha256: ~1.2 GB/s), so a few GB digest at
the speed of reading them; it guards against accidents, not against an attacker who crafts
collisions. The tree digest covers every relative path, size and file digest, every link (by its
target) and every empty folder, so renames, edits and added folders all change it.

A ``DigestCache`` keeps file digests by real path, size, mtime, ctime, inode and device, so an
unchanged dataset is only stat'ed, not read again. A file modified less than ``RACY_SECONDS``
before it was read is not cached: a later write in the same clock tick could keep its mtime.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import xxhash

from ..errors import SpecError
from .formatting import format_size

ALGORITHM = "xxh3-128"
CHUNK = 1 << 20  # read size: large enough that syscalls cost nothing, small enough for L2/L3
THREADS = 2  # the hash and reads release the GIL; more threads measured no faster on 2 cores
PARALLEL_FROM = 256 << 10  # smaller files are read in the calling thread
RACY_SECONDS = 2.0  # covers coarse (jiffy) and 1-2 s filesystem timestamp granularity
CACHE_FILE = "digest-cache.sqlite3"
DIR = "dir"  # the digest of an empty folder's entry ("name/")
LINK = "link:"  # prefix of a link's entry digest, followed by the link's target as written

_O_READ = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)  # a link put in a file's place is not followed
    | getattr(os, "O_NONBLOCK", 0)  # nor is a fifo waited on
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)
_local = threading.local()


@dataclass(frozen=True)
class TreeDigest:
    """A mount's content. ``files`` maps relative posix paths (a single file: its name) to
    (size, hex digest); a link maps to (0, "link:<target>"), an empty folder "name/" to
    (0, "dir"). ``size``/``count`` are the regular files' bytes and number; ``read_bytes``
    what was actually read (0 when every digest came from the cache). Two digests of the same
    content are equal, however long they took and whatever the cache held."""

    digest: str
    files: dict[str, tuple[int, str]]
    size: int
    count: int
    seconds: float = field(compare=False)
    read_bytes: int = field(compare=False)


# -- checks ----------------------------------------------------------------------------------


def check_tree(path: Path) -> None:
    """Raise SpecError if mounting ``path`` would expose more than it: a link inside that points
    out of it or nowhere, or a fifo, socket or device (which cannot be digested, and reading
    one may block or never end). Links that stay inside are fine."""
    _scan(Path(path))


def _scan(path: Path) -> tuple[str, list[tuple[str, str, os.stat_result]], dict]:
    """("file" | "dir", [(rel, real path, lstat)] of regular files, {rel: entry} of the rest)."""
    name = str(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise SpecError(_dangling(name, os.readlink(path))) from None
        raise SpecError(f"{name} does not exist: mount a file or folder that exists.") from None
    except OSError as e:
        raise SpecError(_unreadable(name, e)) from None
    root = os.path.realpath(path)
    if stat.S_ISREG(st.st_mode):
        return "file", [(path.name or name, root, st)], {}
    if not stat.S_ISDIR(st.st_mode):
        raise SpecError(_special(name, st.st_mode, None))
    files: list[tuple[str, str, os.stat_result]] = []
    others: dict[str, tuple[int, str]] = {}
    stack = [(root, "")]
    while stack:
        folder, prefix = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError as e:
            raise SpecError(_unreadable(os.path.join(name, prefix), e)) from None
        if not entries and prefix:
            others[prefix] = (0, DIR)
        for entry in entries:
            rel = prefix + entry.name
            shown = f"{name}{os.sep}{rel}"  # only for messages
            try:
                if entry.is_symlink():
                    target = os.readlink(entry.path)
                    if not _within(os.path.realpath(entry.path), root):
                        raise SpecError(
                            f"{shown} is a link to {target}, outside {name}: mounting {name} "
                            "would expose it. Copy what it points to into the folder, or mount "
                            f"{os.path.realpath(entry.path)} separately."
                        )
                    try:
                        os.stat(entry.path)
                    except OSError:
                        raise SpecError(_dangling(shown, target)) from None
                    others[rel] = (0, LINK + target)
                elif entry.is_dir(follow_symlinks=False):
                    stack.append((entry.path, rel + "/"))
                elif entry.is_file(follow_symlinks=False):
                    files.append((rel, entry.path, entry.stat(follow_symlinks=False)))
                else:
                    mode = entry.stat(follow_symlinks=False).st_mode
                    raise SpecError(_special(shown, mode, name))
            except OSError as e:
                raise SpecError(_unreadable(shown, e)) from None
    return "dir", files, others


def _scan_only(path: Path, only: Iterable[str]) -> tuple[str, list, dict]:
    """Just the named relative paths (files a cell wrote): links recorded, never followed."""
    root = os.path.realpath(path)
    try:
        st = os.stat(root)
    except OSError as e:
        raise SpecError(_unreadable(str(path), e)) from None
    if stat.S_ISREG(st.st_mode):
        return "file", [(path.name, root, st)], {}
    files, others = [], {}
    for rel in sorted(set(only)):
        parts = rel.split("/")
        if not rel or rel.startswith("/") or ".." in parts:
            raise SpecError(f"{rel!r} is not a path inside {path}.")
        real = os.path.join(root, *parts)
        try:
            st = os.lstat(real)
            if stat.S_ISLNK(st.st_mode):
                others[rel] = (0, LINK + os.readlink(real))
            elif stat.S_ISREG(st.st_mode):
                files.append((rel, real, st))
        except FileNotFoundError:
            continue  # removed since it was listed
        except OSError as e:
            raise SpecError(_unreadable(os.path.join(str(path), rel), e)) from None
    return "dir", files, others


def _within(real: str, root: str) -> bool:
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def _dangling(shown: str, target: str) -> str:
    return (
        f"{shown} is a link to {target}, which does not exist (or loops). Remove the link or "
        "create what it points to, then run the cell again."
    )


def _special(shown: str, mode: int, folder: str | None) -> str:
    kind = (
        "fifo (named pipe)"
        if stat.S_ISFIFO(mode)
        else "socket"
        if stat.S_ISSOCK(mode)
        else "device"
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
        else "special file"
    )
    if folder is None:
        return f"{shown} is a {kind}: only files and folders can be mounted."
    return (
        f"{shown} is a {kind}: a mount may hold only files, folders and links inside it. "
        f"Move it out of {folder}, or mount a folder without it."
    )


def _unreadable(shown: str, e: OSError) -> str:
    return f"Cannot read {shown}: {e.strerror or e}. Make it readable, or mount something else."


# -- digests ---------------------------------------------------------------------------------


def digest_tree(
    path: Path, cache: DigestCache | None = None, *, only: Iterable[str] | None = None
) -> TreeDigest:
    """The digest of a file or folder, after check_tree's checks (all made before any file is
    read). With ``only`` (relative paths, e.g. from written_since): just those entries, and
    links among them are recorded as they are, wherever they point, never followed."""
    started = time.perf_counter()
    now_ns = time.time_ns()
    kind, regular, entries = _scan(Path(path)) if only is None else _scan_only(Path(path), only)
    known = cache.get_many([(real, st) for _, real, st in regular]) if cache else {}
    todo = []
    for rel, real, st in regular:
        if real in known:
            entries[rel] = (st.st_size, known[real])
        else:
            todo.append((rel, real, st.st_size))
    read_bytes = 0
    fresh = []
    for (rel, real, _), (size, hexdigest, st) in zip(todo, _hash_all(todo)):
        entries[rel] = (size, hexdigest)
        read_bytes += size
        if st is not None and st.st_mtime_ns < now_ns - int(RACY_SECONDS * 1e9):
            fresh.append((real, st, hexdigest))
    if cache and fresh:
        cache.put_many(fresh)
    files = dict(sorted(entries.items()))
    return TreeDigest(
        digest=f"{ALGORITHM}:{_tree_hash(kind, files)}",
        files=files,
        size=sum(files[rel][0] for rel, _, _ in regular),
        count=len(regular),
        seconds=time.perf_counter() - started,
        read_bytes=read_bytes,
    )


def _hash_all(todo: list[tuple[str, str, int]]) -> list[tuple[int, str, os.stat_result | None]]:
    """_hash_file of each, in order. Files from PARALLEL_FROM bytes go to THREADS threads in
    contiguous runs of about equal bytes (read in path order, as they lie on disk); smaller ones
    are read here meanwhile: in threads they would only add GIL hand-offs."""
    big = [i for i, job in enumerate(todo) if job[2] >= PARALLEL_FROM]
    if THREADS < 2 or len(big) < 2:
        return [_hash_file(real) for _, real, _ in todo]
    runs: list[list[int]] = [[] for _ in range(THREADS)]
    share, done = sum(todo[i][2] for i in big) / THREADS, 0
    for i in big:
        runs[min(int(done // share), THREADS - 1)].append(i)
        done += todo[i][2]
    results: list = [None] * len(todo)

    def work(indexes: list[int]) -> None:
        for i in indexes:
            results[i] = _hash_file(todo[i][1])

    with ThreadPoolExecutor(THREADS) as pool:
        futures = [pool.submit(work, run) for run in runs if run]
        work([i for i, job in enumerate(todo) if job[2] < PARALLEL_FROM])
        for future in futures:
            future.result()
    return results


def _hash_file(real: str) -> tuple[int, str, os.stat_result | None]:
    """(bytes read, hex digest, stat to cache it under, or None if it changed while read)."""
    buf = getattr(_local, "buf", None)
    if buf is None:  # one buffer per thread, reused: allocating 1 MiB per file costs more
        buf = _local.buf = bytearray(CHUNK)
    view = memoryview(buf)
    try:
        fd = os.open(real, _O_READ)
    except OSError as e:
        raise SpecError(_unreadable(real, e)) from None
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            raise SpecError(f"{real} is no longer a regular file; run the cell again.")
        h = xxhash.xxh3_128()
        total = 0
        with open(fd, "rb", buffering=0, closefd=False) as f:
            while n := f.readinto(buf):
                h.update(view[:n])
                total += n
        after = os.fstat(fd)
    except OSError as e:
        raise SpecError(_unreadable(real, e)) from None
    finally:
        os.close(fd)
    same = (before.st_size, before.st_mtime_ns, before.st_ctime_ns) == (
        after.st_size,
        after.st_mtime_ns,
        after.st_ctime_ns,
    )
    return total, h.hexdigest(), before if same and total == before.st_size else None


def _tree_hash(kind: str, files: dict[str, tuple[int, str]]) -> str:
    """Over (path, size, digest) in path order; NUL ends each field (no name or target holds
    one), so no two different trees give the same bytes."""
    parts = [f"mlcontainer tree 1 {kind}\0".encode()]
    for rel, (size, digest) in files.items():
        parts.append(f"{rel}\0{size}\0{digest}\0".encode("utf-8", "surrogateescape"))
    return xxhash.xxh3_128(b"".join(parts)).hexdigest()


# -- the cache -------------------------------------------------------------------------------


class DigestCache:
    """File digests kept across runs in ``<folder>/digest-cache.sqlite3`` (WAL: many processes
    read and write it at once). It only ever saves time: a damaged file is replaced, a locked
    or unwritable one is skipped, and no error from it reaches the caller."""

    def __init__(self, folder: Path):
        self.path = Path(folder) / CACHE_FILE
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._off = False  # could not be opened or repaired: work without it
        self._inherited: list[sqlite3.Connection] = []

    def get_many(self, items: list[tuple[str, os.stat_result]]) -> dict[str, str]:
        """{real path: digest} for the files whose recorded stat matches ``st``."""
        if not items:
            return {}

        def query(conn: sqlite3.Connection) -> dict[str, str]:
            found = {}
            want = {os.fsencode(real): (real, _key(st)) for real, st in items}
            keys = list(want)
            for i in range(0, len(keys), 500):
                chunk = keys[i : i + 500]
                rows = conn.execute(
                    "SELECT path, size, mtime_ns, ctime_ns, ino, dev, digest FROM digests "
                    f"WHERE algo = ? AND path IN ({','.join('?' * len(chunk))})",
                    [ALGORITHM, *chunk],
                )
                for path, *key, digest in rows:
                    real, expected = want[path]
                    if tuple(key) == expected:
                        found[real] = digest
            return found

        return self._use(query) or {}

    def put_many(self, items: list[tuple[str, os.stat_result, str]]) -> None:
        """Record (real path, stat of what was read, digest); skipped if the cache is busy."""
        rows = [(os.fsencode(real), *_key(st), ALGORITHM, digest) for real, st, digest in items]

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(
                    "INSERT OR REPLACE INTO digests "
                    "(path, size, mtime_ns, ctime_ns, ino, dev, algo, digest) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        if rows:
            self._use(write)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None

    def _use(self, fn):
        """fn(connection), or None if the cache cannot serve now (locked, read-only, disk
        full). A damaged file (not a database, malformed) is deleted and made anew, once."""
        with self._lock:
            for attempt in (0, 1):
                if self._off:
                    return None
                try:
                    return fn(self._connect())
                except sqlite3.Error as e:
                    if not _damaged(e):
                        return None
                    self._drop()
                    if attempt or not self._remove():
                        self._off = True
                except (OSError, ValueError, OverflowError):
                    return None
            return None

    def _connect(self) -> sqlite3.Connection:
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        if self._conn is not None:  # forked: never use (nor close) the parent's connection
            self._inherited.append(self._conn)
            self._conn = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError:
            self._off = True
            raise
        conn = sqlite3.connect(
            str(self.path), timeout=2.0, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute("PRAGMA busy_timeout = 2000")
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS digests (path BLOB PRIMARY KEY, size INTEGER, "
                "mtime_ns INTEGER, ctime_ns INTEGER, ino INTEGER, dev INTEGER, algo TEXT, "
                "digest TEXT) WITHOUT ROWID"
            )
        except BaseException:
            conn.close()
            raise
        self._conn, self._pid = conn, os.getpid()
        return conn

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
        self._conn = None

    def _remove(self) -> bool:
        try:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        except OSError:
            return False
        return True


def _damaged(e: sqlite3.Error) -> bool:
    code = getattr(e, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return code & 0xFF in (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB
    return "not a database" in str(e) or "malformed" in str(e)


def _key(st: os.stat_result) -> tuple[int, int, int, int, int]:
    """What identifies a file's content without reading it; inode and device folded into
    SQLite's signed 64 bits (some filesystems use the top bit)."""
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, _i64(st.st_ino), _i64(st.st_dev))


def _i64(n: int) -> int:
    n &= (1 << 64) - 1
    return n - (1 << 64) if n >= 1 << 63 else n


# -- comparing -------------------------------------------------------------------------------


def changed_files(old: dict, new: dict) -> list[str]:
    """One line per difference between two ``TreeDigest.files`` maps (tuples or the lists JSON
    gives back), in path order: what rerun --verify prints so the user sees WHICH file."""
    lines = []
    for rel in sorted(set(old) | set(new)):
        if rel not in new:
            lines.append(f"{rel} removed")
        elif rel not in old:
            lines.append(f"{rel} added")
        else:
            (a_size, a), (b_size, b) = old[rel], new[rel]
            if a_size == b_size and a == b:
                continue
            if _is_link(a) or _is_link(b):
                lines.append(f"{rel} changed ({_describe(a_size, a)} -> {_describe(b_size, b)})")
            elif a_size == b_size:
                lines.append(f"{rel} changed (same size, other content)")
            else:
                x, y = format_size(a_size), format_size(b_size)
                if x == y:  # 1.2 MB -> 1.2 MB says nothing
                    x, y = f"{a_size:,} B", f"{b_size:,} B"
                lines.append(f"{rel} changed ({x} -> {y})")
    return lines


def _is_link(digest: str) -> bool:
    return str(digest).startswith(LINK)


def _describe(size: int, digest: str) -> str:
    return f"link to {digest[len(LINK) :]}" if _is_link(digest) else f"{format_size(size)} file"


def snapshot_files(path: Path) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime_ns)} of the regular files and links under ``path`` (a file:
    its name), links not followed. Taken before and after a cell, it shows what the cell wrote
    in a writable mount without reading anything. Unreadable folders are left out."""
    path = Path(path)
    try:
        st = os.lstat(path)
        is_dir = os.path.isdir(path)  # a named link to a folder: that folder
    except OSError:
        return {}
    if not is_dir:
        return {path.name: (st.st_size, st.st_mtime_ns)}
    out = {}
    stack = [(os.path.realpath(path), "")]
    while stack:
        folder, prefix = stack.pop()
        try:
            with os.scandir(folder) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append((entry.path, f"{prefix}{entry.name}/"))
                    elif entry.is_file(follow_symlinks=False) or entry.is_symlink():
                        est = entry.stat(follow_symlinks=False)
                        out[prefix + entry.name] = (est.st_size, est.st_mtime_ns)
        except OSError:
            continue
    return dict(sorted(out.items()))


def written_since(before: dict, after: dict) -> list[str]:
    """Paths in ``after`` that are new or whose (size, mtime_ns) differs from ``before``."""
    return sorted(p for p in after if p not in before or tuple(before[p]) != tuple(after[p]))
