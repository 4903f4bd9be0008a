"""Snapshot records: the one state that the kernel magics, the CLI and the server extension share.

Every ``%%containerize`` run is kept as a *snapshot*: one JSON record in a SQLite database plus a
folder of files (inputs, outputs) next to it::

    <root>/store.sqlite3          the records (WAL mode; safe for many kernels and processes)
    <root>/artifacts/<id>/        that snapshot's files, made on demand by ``artifacts_dir``

``root`` is ``$MLCONTAINER_STORE``, else ``$XDG_DATA_HOME/mlcontainer``, else
``~/.local/share/mlcontainer``; it is created on first use.

Record fields (all optional except ``id``; unknown fields are kept as they are):

==============  =================================================================================
id              12 hex chars from :meth:`Store.new_id` (any name-like string is accepted)
name            the user's ``--name``; several snapshots may share one (the newest wins in ``get``)
notebook        path of the notebook the cell ran in
cell            execution count or cell id
status          one of ``STATUSES``: building, running, serving, done, failed, stopped, timeout,
                oom, interrupted
created         epoch seconds (float) when the run began; ``put`` fills in the current time
finished        epoch seconds (float) when it ended
duration        seconds (float) the cell ran
code            the cell's source
spec            the RunSpec as a dict (``RunSpec.to_dict()``); record it with env values masked
requirements    list of requirement strings asked for
captured        list of pins captured from the kernel (``"numpy==1.26.4"``)
lock            list of ``{"name", "version", "hashes"}``: what was installed
base_image      base image reference; ``base_image_id`` its image id
env_image       environment image reference; ``env_image_id`` its image id
image_size      environment image size in bytes (int)
env             environment variables, secrets masked as ``***`` (dict)
resources       limits that applied: cpus, memory (bytes), gpus, network, timeout (dict)
inputs/outputs  variable name -> ``{"format", "digest", "size"}``; the digest names its algorithm:
                ``xxh3-128:<hex>``, or ``sha256:<hex>`` in records made before 2026-12
stdout/stderr   what the cell printed
exit_code       the container's exit status (int)
reason          why it ended when not ``done`` (free text)
timings         phase -> seconds, e.g. ``{"build": 31.2, "run": 4.1}``
host            ``{"hostname", "platform", "python", "docker"}``
versions        package name -> version of the tools that made the run
session         id of the kernel session the run belongs to
kernel          the kernel (host:pid) that ran it; lineage links only within one kernel
parents         per --in value, where it came from: ``{"input", "snapshot", "output", "digest"}``
                (an earlier snapshot's --out value, by digest) or ``{"input", "from":
                "notebook", "digest"}`` (see core/lineage.py)
service         a served cell's ``{"name", "url", "port", "entry", "replicas", "backend",
                "started"}``; ``replaced_by`` the snapshot that took its place
==============  =================================================================================

The summary columns (``SUMMARY_FIELDS``) are copied out of the record into indexed columns, so
listing and filtering never parse JSON; likewise each snapshot's output digests and parents
(tables ``snapshot_outputs``, ``snapshot_parents``) for lineage. A write is one SQLite
transaction: a crash or an error in the middle leaves the previous state, and ``update``
merges inside its transaction, so two processes updating the same record lose nothing. SQLite
errors become :class:`StoreError` here and nowhere else.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import re
import secrets
import shutil
import sqlite3
import threading
import time
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path, PurePath

from ..config import default_store_root as default_root
from ..errors import (
    AmbiguousReference,
    SnapshotNotFound,
    StoreError,
    StoreUnavailable,
)
from .lineage import output_rows, parent_ids

STATUSES = (
    "building",
    "running",
    "serving",
    "done",
    "failed",
    "stopped",
    "timeout",
    "oom",
    "interrupted",
)
# A service (--serve) is "serving" from the moment it answers until it is stopped.
ACTIVE_STATUSES = ("building", "running", "serving")
SUMMARY_FIELDS = (
    "id",
    "name",
    "notebook",
    "status",
    "created",
    "finished",
    "duration",
    "exit_code",
    "env_image",
    "image_size",
    "session",
)
SCHEMA_VERSION = 2
DB_NAME = "store.sqlite3"
ID_LENGTH = 12
MIN_PREFIX = 4
BUSY_TIMEOUT = 30.0  # seconds a writer waits for another one before giving up

_TEXT_FIELDS = ("name", "notebook", "status", "env_image", "session")
_REAL_FIELDS = ("created", "finished", "duration")
_INT_FIELDS = ("exit_code", "image_size")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_SHOWN_CANDIDATES = 10
# Connections a forked child inherited: SQLite must not use (or close) them in the child.
_INHERITED: list = []


def _create_v1(conn: sqlite3.Connection) -> None:
    conn.execute("""
        CREATE TABLE snapshots (
            id         TEXT NOT NULL UNIQUE,
            name       TEXT,
            notebook   TEXT,
            status     TEXT,
            created    REAL NOT NULL,
            finished   REAL,
            duration   REAL,
            exit_code  INTEGER,
            env_image  TEXT,
            image_size INTEGER,
            session    TEXT,
            record     TEXT NOT NULL
        )""")
    # Each index ends (implicitly) in rowid, which breaks ties in created: newest first.
    for column in (
        "created",
        "name, created",
        "notebook, created",
        "status, created",
        "session, created",
    ):
        ident = column.split(",")[0]
        conn.execute(f"CREATE INDEX snapshots_by_{ident} ON snapshots ({column})")


def _create_v2(conn: sqlite3.Connection) -> None:
    """Lineage: each snapshot's --out digests (by kernel) and the snapshots it took --in values
    from, as rows derived from its record (kept in step by every write), so that finding who
    produced a digest, or a snapshot's children, reads an index and parses no JSON."""
    conn.execute("""
        CREATE TABLE snapshot_outputs (
            snapshot TEXT NOT NULL,
            name     TEXT NOT NULL,
            digest   TEXT NOT NULL,
            kernel   TEXT
        )""")
    conn.execute("CREATE INDEX snapshot_outputs_by_digest ON snapshot_outputs (digest, kernel)")
    conn.execute("CREATE INDEX snapshot_outputs_by_snapshot ON snapshot_outputs (snapshot)")
    conn.execute("CREATE TABLE snapshot_parents (snapshot TEXT NOT NULL, parent TEXT NOT NULL)")
    conn.execute("CREATE INDEX snapshot_parents_by_parent ON snapshot_parents (parent)")
    conn.execute("CREATE INDEX snapshot_parents_by_snapshot ON snapshot_parents (snapshot)")
    for sid, text in conn.execute("SELECT id, record FROM snapshots").fetchall():
        try:
            record = json.loads(text)
        except ValueError:
            continue  # a damaged record: `get` says so
        if isinstance(record, dict):
            _index(conn, sid, record)


def _index(conn: sqlite3.Connection, sid: str, record: dict) -> None:
    """The lineage rows of one record (see _create_v2), replacing its old ones."""
    _unindex(conn, sid)
    conn.executemany(
        "INSERT INTO snapshot_outputs (snapshot, name, digest, kernel) VALUES (?, ?, ?, ?)",
        [(sid, name, digest, record.get("kernel")) for name, digest in output_rows(record)],
    )
    conn.executemany(
        "INSERT INTO snapshot_parents (snapshot, parent) VALUES (?, ?)",
        [(sid, parent) for parent in parent_ids(record)],
    )


def _unindex(conn: sqlite3.Connection, sid: str) -> None:
    conn.execute("DELETE FROM snapshot_outputs WHERE snapshot = ?", (sid,))
    conn.execute("DELETE FROM snapshot_parents WHERE snapshot = ?", (sid,))


# _MIGRATIONS[n] upgrades a store at schema version n to n + 1 (0 is an empty file).
_MIGRATIONS = {0: _create_v1, 1: _create_v2}


def _json_default(obj):
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=str)
    if isinstance(obj, tuple):
        return list(obj)
    if isinstance(obj, (PurePath, datetime, date)):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def canonical_json(obj) -> str:
    """Deterministic JSON (sorted keys, no spaces, ASCII) used for ids and stored records."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)


def _nonce() -> str:
    return f"{time.time_ns()}-{os.getpid()}-{secrets.token_hex(8)}"


def _check_id(value) -> str:
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise StoreError(
            f"Snapshot id {value!r} is not valid: use letters, digits, '.', '_' "
            "or '-' (up to 128), as Store.new_id() makes."
        )
    return value


def _check_status(value, what="status"):
    if value is not None and value not in STATUSES:
        raise StoreError(
            f"{what} {value!r} is not a snapshot status; use one of {', '.join(STATUSES)}."
        )


def _encode(record) -> tuple:
    """Validate a record and return its row (summary columns + JSON), before any write."""
    if not isinstance(record, dict):
        raise StoreError(f"A snapshot record must be a dict, not {type(record).__name__}.")
    if "id" not in record:
        raise StoreError("A snapshot record needs an 'id'; make one with Store.new_id().")
    sid = _check_id(record["id"])
    _check_status(record.get("status"), f"Snapshot {sid}: status")
    for key in _TEXT_FIELDS:
        value = record.get(key)
        if value is not None and not isinstance(value, str):
            raise StoreError(
                f"Snapshot {sid}: {key!r} must be a string, not {type(value).__name__}."
            )
    for key in _REAL_FIELDS + _INT_FIELDS:
        value = record.get(key)
        ok = (int,) if key in _INT_FIELDS else (int, float)
        if value is not None and (isinstance(value, bool) or not isinstance(value, ok)):
            raise StoreError(f"Snapshot {sid}: {key!r} must be a number, not {value!r}.")
    if record.get("created") is None:
        record = {**record, "created": time.time()}
    try:
        text = canonical_json(record)
    except (TypeError, ValueError) as e:
        bad = []
        for key, value in record.items():
            try:
                canonical_json(value)
            except (TypeError, ValueError):
                bad.append(key)
        raise StoreError(
            f"Snapshot {sid} cannot be saved: field(s) {', '.join(bad) or '?'} "
            f"hold values JSON cannot represent ({e})."
        ) from None
    return tuple(record.get(k) for k in SUMMARY_FIELDS) + (text,)


_UPSERT = (
    f"INSERT INTO snapshots ({', '.join(SUMMARY_FIELDS)}, record) "
    f"VALUES ({', '.join('?' * (len(SUMMARY_FIELDS) + 1))}) "
    f"ON CONFLICT(id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in SUMMARY_FIELDS[1:] + ("record",))
)
_SUMMARY_COLUMNS = ", ".join(SUMMARY_FIELDS)


class Store:
    """Snapshot records in SQLite at ``root``; see the module docstring for the record fields.

    One instance may be shared by threads (each gets its own connection) and survives a fork
    (the child opens its own). Any number of processes may open the same root at once.
    """

    def __init__(self, root=None) -> None:
        self.root = (
            Path(root).expanduser().absolute() if root is not None else default_root().absolute()
        )
        self._local = threading.local()
        self._issued: set[str] = set()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    def __reduce__(self):
        return (type(self), (str(self.root),))

    @property
    def db_path(self) -> Path:
        return self.root / DB_NAME

    # -- connections and errors ---------------------------------------------------------------

    def _error(self, action: str, exc: BaseException) -> StoreError:
        text = str(exc)
        low = text.lower()
        if "full" in low:
            hint = f"Free some disk space on the drive holding {self.root}."
        elif (
            "readonly" in low
            or "read-only" in low
            or "permission" in low
            or "unable to open" in low
        ):
            hint = (
                f"Check that you may write to {self.root}, or set MLCONTAINER_STORE to a "
                "writable folder."
            )
        elif "locked" in low or "busy" in low:
            hint = f"Another process kept the store locked for over {BUSY_TIMEOUT:.0f}s; try again."
        elif "not a database" in low or "malformed" in low:
            hint = (
                f"The file is damaged or not a snapshot store; move {self.db_path} away "
                "to start a new, empty store."
            )
        else:
            hint = ""
        return StoreUnavailable(
            f"Could not {action} in the snapshot store {self.db_path}: {text}. {hint}".rstrip()
        )

    def _connect(self) -> sqlite3.Connection:
        """This thread's connection, opened (and the schema made or migrated) on first use."""
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is not None and local.pid == os.getpid():
            return conn
        if conn is not None:  # forked: keep the parent's connection alive but never use it
            _INHERITED.append(conn)
            local.conn = None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreUnavailable(
                f"Could not create the snapshot store folder {self.root}: "
                f"{e.strerror or e}. Set MLCONTAINER_STORE to a writable "
                "folder."
            ) from None
        try:
            conn = sqlite3.connect(str(self.db_path), timeout=BUSY_TIMEOUT, isolation_level=None)
        except sqlite3.Error as e:
            raise self._error("open the database", e) from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
            _use_wal(conn)
            conn.execute("PRAGMA synchronous = NORMAL")  # atomic in WAL; fsync at checkpoints
            self._migrate(conn)
        except BaseException as e:
            conn.close()
            if isinstance(e, sqlite3.Error):
                raise self._error("open the database", e) from None
            raise
        local.conn, local.pid = conn, os.getpid()
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"The snapshot store {self.db_path} has schema version {version}, "
                f"newer than this mlcontainer-magics knows ({SCHEMA_VERSION}); "
                "upgrade mlcontainer-magics."
            )
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]  # another may have won
            while version < SCHEMA_VERSION:
                _MIGRATIONS[version](conn)
                version += 1
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Close this thread's connection (others close when their thread ends)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            conn.close()
        self._local.conn = None

    @contextmanager
    def _transaction(self, action: str):
        """A write transaction holding the write lock from its start (no lost updates)."""
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise self._error(action, e) from None
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as e:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # SQLite already rolled back (e.g. disk full)
            if isinstance(e, sqlite3.Error):
                raise self._error(action, e) from None
            raise

    def _read(self, action: str, sql: str, params=()) -> list:
        conn = self._connect()
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.Error as e:
            raise self._error(action, e) from None

    # -- ids and resolution --------------------------------------------------------------------

    def new_id(self, seed: dict) -> str:
        """A fresh id: sha256 over ``seed`` and a time+random nonce, 12 hex chars, unused here."""
        base = canonical_json(seed)
        while True:
            sid = hashlib.sha256(f"{base}\n{_nonce()}".encode()).hexdigest()[:ID_LENGTH]
            with self._lock:
                if sid in self._issued:
                    continue
            if self._read("look up an id", "SELECT 1 FROM snapshots WHERE id = ?", (sid,)):
                continue
            with self._lock:
                if sid in self._issued:
                    continue
                self._issued.add(sid)
            return sid

    def _resolve(self, conn: sqlite3.Connection, ref) -> tuple[str, str]:
        """(id, record JSON) of ``ref``: a full id, then a name, then a unique id prefix."""
        if not isinstance(ref, str) or not ref.strip():
            raise StoreError(
                f"{ref!r} is not a snapshot reference; give an id, an id prefix "
                f"of at least {MIN_PREFIX} characters, or a name."
            )
        ref = ref.strip()
        variants = [ref] + ([ref.lower()] if ref.lower() != ref else [])
        for key in variants:
            row = conn.execute("SELECT id, record FROM snapshots WHERE id = ?", (key,)).fetchone()
            if row:
                return row
        row = conn.execute(
            "SELECT id, record FROM snapshots WHERE name = ? "
            "ORDER BY created DESC, rowid DESC LIMIT 1",
            (ref,),
        ).fetchone()
        if row:
            return row
        if len(ref) < MIN_PREFIX:
            raise SnapshotNotFound(
                f"No snapshot is named {ref!r}, and an id prefix needs at least "
                f"{MIN_PREFIX} characters."
            )
        for key in variants:
            # Ids are ASCII below DEL, so [key, key + DEL) holds exactly the ids starting with key.
            rows = conn.execute(
                f"SELECT {_SUMMARY_COLUMNS} FROM snapshots WHERE id >= ? AND id < ? "
                f"ORDER BY id LIMIT {_SHOWN_CANDIDATES + 1}",
                (key, key + "\x7f"),
            ).fetchall()
            if len(rows) == 1:
                return conn.execute(
                    "SELECT id, record FROM snapshots WHERE id = ?", (rows[0][0],)
                ).fetchone()
            if rows:
                shown = [_candidate(dict(zip(SUMMARY_FIELDS, r))) for r in rows[:_SHOWN_CANDIDATES]]
                more = "\n  and more" if len(rows) > _SHOWN_CANDIDATES else ""
                raise AmbiguousReference(
                    f"Snapshot prefix {ref!r} is ambiguous; it matches:\n  "
                    + "\n  ".join(shown)
                    + more
                    + "\nGive more characters of the id."
                )
        raise SnapshotNotFound(
            f"No snapshot matches {ref!r} (as an id, an id prefix or a name) in "
            f"{self.root}. List them with `%container list` or `mlcontainer list`."
        )

    # -- reads ---------------------------------------------------------------------------------

    def get(self, ref: str) -> dict:
        """The full record of ``ref`` (full id, unique id prefix of >= 4 chars, or a name)."""
        conn = self._connect()
        try:
            sid, text = self._resolve(conn, ref)
        except sqlite3.Error as e:
            raise self._error(f"look up snapshot {ref!r}", e) from None
        return self._decode(sid, text)

    def _decode(self, sid: str, text: str) -> dict:
        try:
            record = json.loads(text)
        except ValueError as e:
            raise StoreUnavailable(
                f"Snapshot {sid} in {self.db_path} is damaged ({e}); remove it "
                f"with `mlcontainer rm {sid}`."
            ) from None
        return record

    def _where(self, notebook, name, status) -> tuple[str, list]:
        clauses, params = [], []
        if notebook is not None:
            clauses.append("notebook = ?")
            params.append(str(notebook))
        if name is not None:
            clauses.append("name = ?")
            params.append(name)
        if status is not None:
            wanted = [status] if isinstance(status, str) else list(status)
            for s in wanted:
                _check_status(s)
            clauses.append(f"status IN ({', '.join('?' * len(wanted))})")
            params.extend(wanted)
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), params

    def list(self, *, limit=50, offset=0, notebook=None, name=None, status=None) -> list[dict]:
        """Summaries (``SUMMARY_FIELDS``), newest first. ``limit=None`` lists all;
        ``status`` may be one status or several."""
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise StoreError(f"limit {limit!r} must be a whole number >= 0, or None for all.")
        if not isinstance(offset, int) or offset < 0:
            raise StoreError(f"offset {offset!r} must be a whole number >= 0.")
        where, params = self._where(notebook, name, status)
        rows = self._read(
            "list snapshots",
            f"SELECT {_SUMMARY_COLUMNS} FROM snapshots{where} "
            f"ORDER BY created DESC, rowid DESC LIMIT ? OFFSET ?",
            params + [-1 if limit is None else limit, offset],
        )
        return [dict(zip(SUMMARY_FIELDS, row)) for row in rows]

    def map_summaries(self, ids) -> dict[str, dict]:
        """Of those of ``ids`` that are maps (``--map``): ``{id: {"name", "count", "failed",
        "parallel"}}``, read out of their records (``count`` and ``failed`` are None until
        the items ended). For a page of the list, so only those records' JSON is parsed."""
        ids = list(dict.fromkeys(ids))
        if not ids:
            return {}
        rows = self._read(
            "look up maps",
            "SELECT id, coalesce(json_extract(record, '$.map.name'), "
            "json_extract(record, '$.spec.map.name')), "
            "json_extract(record, '$.map.count'), "
            "(SELECT COUNT(*) FROM json_each(record, '$.map.items') "
            " WHERE json_extract(value, '$.reason') IS NOT 'done'), "
            "json_extract(record, '$.map.items') IS NOT NULL, "
            "coalesce(json_extract(record, '$.map.parallel'), "
            "json_extract(record, '$.spec.map.parallel')) "
            f"FROM snapshots WHERE id IN ({', '.join('?' * len(ids))}) "
            "AND coalesce(json_extract(record, '$.spec.map.name'), "
            "json_extract(record, '$.map.name')) IS NOT NULL",
            ids,
        )
        return {
            sid: {
                "name": name,
                "count": count,
                "failed": failed if ended else None,
                "parallel": parallel,
            }
            for sid, name, count, failed, ended, parallel in rows
        }

    def count(self, *, notebook=None, name=None, status=None) -> int:
        where, params = self._where(notebook, name, status)
        return self._read("count snapshots", f"SELECT COUNT(*) FROM snapshots{where}", params)[0][0]

    def producers(
        self, digests, *, kernel: str, exclude: str | None = None
    ) -> builtins.list[tuple]:
        """(digest, snapshot, output name, snapshot name) of the --out values of ``kernel``'s
        done snapshots (but ``exclude``) whose digest is one of ``digests``; newest first.
        Only done: a run that failed (an output missing) gave the kernel none of its values."""
        digests = list(dict.fromkeys(digests))
        if not digests:
            return []
        return [
            tuple(row)
            for row in self._read(
                "look up values by digest",
                "SELECT o.digest, o.snapshot, o.name, s.name FROM snapshot_outputs o "
                "JOIN snapshots s ON s.id = o.snapshot "
                f"WHERE o.digest IN ({', '.join('?' * len(digests))}) AND o.kernel = ? "
                "AND o.snapshot != ? AND s.status = 'done' ORDER BY s.created DESC, s.rowid DESC",
                digests + [kernel, exclude or ""],
            )
        ]

    def children(self, sid: str) -> builtins.list[dict]:
        """Summaries of the snapshots that took values from ``sid``, oldest first."""
        columns = ", ".join(f"s.{c}" for c in SUMMARY_FIELDS)
        rows = self._read(
            "look up children",
            f"SELECT DISTINCT {columns} FROM snapshot_parents p JOIN snapshots s "
            "ON s.id = p.snapshot WHERE p.parent = ? ORDER BY s.created, s.rowid",
            (sid,),
        )
        return [dict(zip(SUMMARY_FIELDS, row)) for row in rows]

    # -- writes --------------------------------------------------------------------------------

    def _upsert(self, conn: sqlite3.Connection, row: tuple, record: dict) -> None:
        conn.execute(_UPSERT, row)
        _index(conn, row[0], record)

    def put(self, record: dict) -> None:
        """Insert or replace the whole record, atomically. ``created`` defaults to now."""
        row = _encode(record)
        with self._transaction(f"save snapshot {row[0]}") as conn:
            self._upsert(conn, row, record)

    def put_many(self, records) -> None:
        """``put`` every record in one transaction: all are saved or none."""
        records = list(records)
        rows = [_encode(r) for r in records]
        with self._transaction(f"save {len(rows)} snapshots") as conn:
            for row, record in zip(rows, records):
                self._upsert(conn, row, record)

    def update(self, ref: str, **fields) -> dict:
        """Merge ``fields`` into the record (top-level keys replace) in one transaction."""
        with self._transaction(f"update snapshot {ref!r}") as conn:
            sid, text = self._resolve(conn, ref)
            if "id" in fields and fields["id"] != sid:
                raise StoreError(
                    f"Snapshot {sid}: the id cannot be changed (to "
                    f"{fields['id']!r}); put a new record instead."
                )
            record = {**self._decode(sid, text), **fields}
            row = _encode(record)
            self._upsert(conn, row, record)
        return json.loads(row[-1])

    def remove(self, ref: str) -> dict:
        """Delete the record and its artifacts folder; return the removed record."""
        with self._transaction(f"remove snapshot {ref!r}") as conn:
            sid, text = self._resolve(conn, ref)
            conn.execute("DELETE FROM snapshots WHERE id = ?", (sid,))
            _unindex(conn, sid)
        folder = self.root / "artifacts" / sid
        try:
            shutil.rmtree(folder)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise StoreUnavailable(
                f"Removed snapshot {sid}, but could not delete its files in "
                f"{folder}: {e.strerror or e}. Delete that folder by hand."
            ) from None
        return self._decode(sid, text)

    def artifacts_dir(self, id: str) -> Path:
        """``<root>/artifacts/<id>``, created on demand."""
        folder = self.root / "artifacts" / _check_id(id)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreUnavailable(
                f"Could not create the artifacts folder {folder}: {e.strerror or e}."
            ) from None
        return folder


def _use_wal(conn: sqlite3.Connection) -> None:
    """Switch a new database to WAL. The switch takes an exclusive lock and SQLite may answer
    "locked" at once, without waiting for busy_timeout, when several open a new store together;
    so retry it, within the same time. WAL then persists in the file: later opens only read."""
    deadline = time.monotonic() + BUSY_TIMEOUT
    delay = 0.01
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) and "busy" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


def _candidate(summary: dict) -> str:
    try:
        when = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(summary["created"]))
    except (TypeError, ValueError, OverflowError, OSError):
        when = "-"
    return f"{summary['id']}  {summary.get('name') or '-'}  {summary.get('status') or '-'}  {when}"
