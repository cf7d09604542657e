"""The embedded state store: one SQLite file, one process, durable across kill -9.

WAL journal with ``synchronous=FULL``: a commit has been fsynced to the WAL when ``add_frames`` returns,
so neither a killed process nor a power cut loses it. Token caches are written without their own fsync
(``synchronous=NORMAL`` for that transaction): a cache a power cut takes back is older than the stored
frames, which the pipeline's cache check sees, and is rebuilt. One connection, guarded by a lock, is
shared by all threads: SQLite serialises writers anyway, and one connection keeps the page cache warm.

Templates live in their own table, one row per object and distinct template (see :mod:`.sequence`): a
frame's ``template_digest`` names its row, inserted with the frame's, and a template no frame of its
object names any more (pruned, invalid) is deleted in the same transaction. A database written before
templates existed gets the column and the table when opened; its frames read as they are.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from broker_plugin.exceptions import StateUrlError
from broker_plugin.records import Frame
from broker_plugin.state.base import AddResult, StateStore, StateStoreClosedError
from broker_plugin.state.rows import FrameRow, add_result, read_frames, templates_of, to_rows

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    object_key TEXT PRIMARY KEY,
    last_write REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS objects_last_write ON objects (last_write);
CREATE TABLE IF NOT EXISTS frames (
    object_key TEXT NOT NULL,
    dia_source_id INTEGER NOT NULL,
    mjd REAL NOT NULL,
    blob BLOB NOT NULL,
    template_digest BLOB,
    UNIQUE (object_key, dia_source_id)
);
CREATE INDEX IF NOT EXISTS frames_order ON frames (object_key, mjd, dia_source_id);
CREATE TABLE IF NOT EXISTS templates (
    object_key TEXT NOT NULL,
    digest BLOB NOT NULL,
    blob BLOB NOT NULL,
    PRIMARY KEY (object_key, digest)
);
CREATE TABLE IF NOT EXISTS token_cache (
    object_key TEXT NOT NULL,
    model_version TEXT NOT NULL,
    blob BLOB NOT NULL,
    PRIMARY KEY (object_key, model_version)
);
"""

#: Our tables and the columns we use: a database with tables of these names must have these columns
#: (``frames.template_digest`` is added to a database written before templates were stored).
_TABLES = {
    "objects": ("object_key", "last_write"),
    "frames": ("object_key", "dia_source_id", "mjd", "blob"),
    "token_cache": ("object_key", "model_version", "blob"),
    "templates": ("object_key", "digest", "blob"),
}

_FRAMES = (
    "SELECT f.dia_source_id, f.mjd, f.blob, t.blob FROM frames AS f"
    " LEFT JOIN templates AS t ON t.object_key = f.object_key AND t.digest = f.template_digest"
    " WHERE f.object_key = ? ORDER BY f.mjd, f.dia_source_id"
)
#: Templates of an object that none of its frames names any more.
_DROP_UNUSED_TEMPLATES = (
    "DELETE FROM templates WHERE object_key = ? AND digest NOT IN"
    " (SELECT template_digest FROM frames WHERE object_key = ? AND template_digest IS NOT NULL)"
)

_NEWEST = "SELECT mjd, dia_source_id FROM frames WHERE object_key = ? ORDER BY mjd DESC, dia_source_id DESC"


class SqliteStateStore(StateStore):
    """State in one SQLite file.

    Parameters
    ----------
    path
        The database file (created with its schema if missing).
    max_frames_per_object
        Newest frames kept per object; older ones are pruned at write time.
    clock
        Wall clock [s] stamped on writes and read by :meth:`expire` (injectable for tests).

    Raises
    ------
    StateUrlError
        ``path`` cannot be opened as a state database: not SQLite, unreadable, read-only, a folder, or a
        database of another application (see :meth:`_check_schema`).
    """

    def __init__(
        self, path: str | Path, max_frames_per_object: int = 200, *, clock: Callable[[], float] = time.time
    ) -> None:
        if max_frames_per_object < 1:
            raise ValueError(f"max_frames_per_object must be >= 1, got {max_frames_per_object}")
        self.path = Path(path)
        self.max_frames_per_object = max_frames_per_object
        self._clock = clock
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        try:
            self._open()
        except sqlite3.Error as exc:
            self.close()
            raise StateUrlError(f"{self.path} cannot be used as a state database: {exc}") from exc
        except StateUrlError:
            self.close()
            raise

    def _open(self) -> None:
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, one transaction per public call.
        # check_same_thread=False: the lock, not the thread, guards the connection.
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        # The first statement that reads the file: "file is not a database" shows here.
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._check_schema()
        with self._transaction() as conn:
            # Not executescript: it commits first, and the schema belongs in one transaction.
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            columns = {row[1] for row in conn.execute("PRAGMA table_info(frames)")}
            if "template_digest" not in columns:  # written before templates were stored: NULL, none
                conn.execute("ALTER TABLE frames ADD COLUMN template_digest BLOB")

    def _check_schema(self) -> None:
        """Refuse a database of another application: tables, but none of ours, or ours with other columns."""
        assert self._conn is not None  # noqa: S101 - called by _open only
        tables = {
            name for (name,) in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        ours = tables & _TABLES.keys()
        if tables and not ours:
            raise StateUrlError(
                f"{self.path} is an SQLite database of something else (tables {sorted(tables)[:5]}), "
                "not a state database"
            )
        for table in sorted(ours):
            columns = {row[1] for row in self._conn.execute(f"PRAGMA table_info({table})")}
            missing = set(_TABLES[table]) - columns
            if missing:
                raise StateUrlError(
                    f"{self.path} is not a state database: its table {table} lacks {sorted(missing)}"
                )

    @contextmanager
    def _transaction(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """The connection inside ``BEGIN IMMEDIATE`` ... ``COMMIT`` (rolled back on error), under the lock.

        ``durable=False``: the commit is not fsynced (``synchronous=NORMAL`` for this transaction): it is
        atomic, and durable once the next durable commit fsyncs the WAL behind it.
        """
        with self._lock:
            conn = self._conn
            if conn is None:
                raise StateStoreClosedError("the state store is closed")
            if not durable:
                conn.execute("PRAGMA synchronous=NORMAL")
            try:
                # IMMEDIATE takes the write lock up front: no reader-to-writer upgrade that could fail midway.
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            finally:
                if not durable:
                    conn.execute("PRAGMA synchronous=FULL")

    @contextmanager
    def _reader(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn is None:
                raise StateStoreClosedError("the state store is closed")
            yield self._conn

    def add_frames(self, key: str, frames: list[Frame]) -> AddResult:
        """Store frames of one object, idempotently by ``diaSourceId``, in one durable transaction."""
        return self.add_batch([(key, frames)])[0]

    def add_batch(self, items: Sequence[tuple[str, list[Frame]]]) -> list[AddResult]:
        """Store frames of several objects in one durable transaction (one fsync for the batch)."""
        prepared = [(key, to_rows(frames)) for key, frames in items]
        with self._transaction() as conn:
            return [self._add(conn, key, rows) for key, rows in prepared]

    def _add(self, conn: sqlite3.Connection, key: str, rows: list[FrameRow]) -> AddResult:
        last = conn.execute(_NEWEST + " LIMIT 1", (key,)).fetchone()
        inserted = set()
        for row in rows:
            cur = conn.execute(
                "INSERT OR IGNORE INTO frames (object_key, dia_source_id, mjd, blob, template_digest)"
                " VALUES (?, ?, ?, ?, ?)",
                (key, row.diaSourceId, row.midpointMjdTai, row.blob, row.template_digest),
            )
            if cur.rowcount == 1:
                inserted.add(row.diaSourceId)
        # Only inserted frames bring their template: a redelivery adds nothing, not even an orphan.
        conn.executemany(
            "INSERT OR IGNORE INTO templates (object_key, digest, blob) VALUES (?, ?, ?)",
            [(key, digest, blob) for digest, blob in templates_of(rows, inserted)],
        )
        pruned = self._prune(conn, key) if inserted else set()
        if pruned:
            conn.execute(_DROP_UNUSED_TEMPLATES, (key, key))
        (n_frames,) = conn.execute("SELECT COUNT(*) FROM frames WHERE object_key = ?", (key,)).fetchone()
        if inserted - pruned:
            conn.execute(
                "INSERT INTO objects (object_key, last_write) VALUES (?, ?)"
                " ON CONFLICT (object_key) DO UPDATE SET last_write = excluded.last_write",
                (key, self._clock()),
            )
        return add_result(rows, inserted, pruned, tuple(last) if last else None, n_frames)

    def _prune(self, conn: sqlite3.Connection, key: str) -> set[int]:
        """Delete all but the newest ``max_frames_per_object`` frames; return the deleted ids."""
        boundary = conn.execute(
            _NEWEST + " LIMIT 1 OFFSET ?", (key, self.max_frames_per_object - 1)
        ).fetchone()
        if boundary is None:
            return set()
        cur = conn.execute(
            "DELETE FROM frames WHERE object_key = ? AND (mjd, dia_source_id) < (?, ?)"
            " RETURNING dia_source_id",
            (key, *boundary),
        )
        return {source_id for (source_id,) in cur.fetchall()}

    def frames(self, key: str) -> list[Frame]:
        """The object's valid frames, oldest first; invalid ones are skipped and deleted (see ``base``)."""
        with self._reader() as conn:
            rows = conn.execute(_FRAMES, (key,)).fetchall()
        frames, invalid = read_frames(rows)
        if invalid:
            with self._transaction() as conn:
                conn.executemany(
                    "DELETE FROM frames WHERE object_key = ? AND dia_source_id = ?",
                    [(key, source_id) for source_id, _ in invalid],
                )
                conn.execute(_DROP_UNUSED_TEMPLATES, (key, key))
            self._report_invalid(key, invalid)
        return frames

    def frame_count(self, key: str) -> int:
        """How many frames the object has."""
        with self._reader() as conn:
            return conn.execute("SELECT COUNT(*) FROM frames WHERE object_key = ?", (key,)).fetchone()[0]

    def get_cache(self, key: str, model_version: str) -> bytes | None:
        """The cached token blob, if any."""
        with self._reader() as conn:
            row = conn.execute(
                "SELECT blob FROM token_cache WHERE object_key = ? AND model_version = ?",
                (key, model_version),
            ).fetchone()
        return None if row is None else bytes(row[0])

    def put_cache(self, key: str, model_version: str, blob: bytes) -> None:
        """Replace the cached blob; ignored for an object without frames (expired or never stored)."""
        self.put_caches([(key, model_version, blob)])

    def put_caches(self, items: Sequence[tuple[str, str, bytes]]) -> None:
        """Replace several cached blobs in one transaction, not fsynced.

        A cache is only a cache: one lost to a power cut is older than the stored frames (it does not end
        with the newest of them) and is rebuilt. The next frame write's fsync makes it durable anyway,
        and the pipeline waits on one fsync per micro-batch, not two.
        """
        with self._transaction(durable=False) as conn:
            conn.executemany(
                "INSERT INTO token_cache (object_key, model_version, blob)"
                " SELECT ?, ?, ? WHERE EXISTS (SELECT 1 FROM objects WHERE object_key = ?)"
                " ON CONFLICT (object_key, model_version) DO UPDATE SET blob = excluded.blob",
                [(key, version, bytes(blob), key) for key, version, blob in items],
            )

    def expire(self, idle_seconds: float) -> int:
        """Drop objects (frames and cache) whose last new frame is ``idle_seconds`` old or older."""
        cutoff = self._clock() - idle_seconds
        with self._transaction() as conn:
            keys = conn.execute("SELECT object_key FROM objects WHERE last_write <= ?", (cutoff,)).fetchall()
            for table in ("frames", "templates", "token_cache", "objects"):
                conn.executemany(f"DELETE FROM {table} WHERE object_key = ?", keys)  # noqa: S608
        count = len(keys)
        return count

    def object_count(self) -> int:
        """Number of tracked objects."""
        with self._reader() as conn:
            return conn.execute("SELECT COUNT(*) FROM objects").fetchone()[0]

    def close(self) -> None:
        """Close the connection (idempotent)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
