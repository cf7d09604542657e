"""The shared state store: PostgreSQL, written concurrently by every plugin instance of a consumer group.

Rubin's stream is not keyed by object, so two instances may receive alerts of one object at the same
moment. Every write to an object therefore runs in one transaction that first takes a transaction-scoped
advisory lock on the object (``pg_advisory_xact_lock(namespace, hashtext(object_key))``): writers of one
object queue up, writers of different objects do not wait for each other, and a writer sees every frame
its predecessor committed (READ COMMITTED takes a new snapshot per statement, after the lock). So a
frame is reported new by exactly one writer, and pruning never races with an insert. :meth:`expire`
only *tries* that lock: an object being written right now is not idle, and is skipped.

Connections come from a small lock-protected pool (one per concurrent caller, up to ``pool_size``).

Templates live in their own table, one row per object and distinct template (see :mod:`.sequence`),
written by the statement that inserts the frames (for the frames it inserted only) and deleted, under the
object's lock, once no frame of the object names them. Tables written before templates were stored get
the column and the table when a store opens them (``ADD COLUMN IF NOT EXISTS``, nullable: instances of
the older version keep inserting as before).
"""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from broker_plugin.exceptions import StateUrlError
from broker_plugin.records import Frame
from broker_plugin.state.base import AddResult, StateStore, StateStoreClosedError
from broker_plugin.state.rows import FrameRow, add_result, read_frames, to_rows

#: Objects expired per transaction: each holds one advisory lock until commit, and the server's lock
#: table is shared by all sessions (max_locks_per_transaction x max_connections).
_EXPIRE_BATCH = 200


class _Pool:
    """At most ``size`` autocommit connections, handed to one caller at a time."""

    def __init__(self, dsn: str, size: int) -> None:
        if size < 1:
            raise ValueError(f"pool_size must be >= 1, got {size}")
        self._dsn = dsn
        self._size = size
        self._cond = threading.Condition()
        self._idle: list[psycopg.Connection] = []
        self._open = 0
        self._closed = False

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        conn = self._acquire()
        try:
            yield conn
        finally:
            self._release(conn)

    def _acquire(self) -> psycopg.Connection:
        with self._cond:
            while True:
                if self._closed:
                    raise StateStoreClosedError("the state store is closed")
                if self._idle:
                    return self._idle.pop()
                if self._open < self._size:
                    self._open += 1
                    break
                self._cond.wait()
        try:
            # autocommit: transactions are explicit (conn.transaction()), never left open by a read.
            return psycopg.connect(self._dsn, autocommit=True)
        except BaseException:
            with self._cond:
                self._open -= 1
                self._cond.notify()
            raise

    def _release(self, conn: psycopg.Connection) -> None:
        with self._cond:
            healthy = not (conn.closed or conn.broken) and (
                conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            )
            if healthy and not self._closed:
                self._idle.append(conn)
            else:
                # A broken connection (server restart, network) is dropped; the next caller opens anew.
                conn.close()
                self._open -= 1
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            for conn in self._idle:
                conn.close()
            self._open -= len(self._idle)
            self._idle.clear()
            self._cond.notify_all()


class PostgresStateStore(StateStore):
    """State in four PostgreSQL tables, shared by any number of processes.

    Parameters
    ----------
    dsn
        libpq connection string or URL (``postgresql://user@host:5432/db``).
    max_frames_per_object
        Newest frames kept per object; older ones are pruned at write time.
    pool_size
        Most connections this instance opens (one per concurrent call).
    schema
        Schema of the tables (created if missing); ``None``: the connection's search path.
    table_prefix
        Prefix of the table names (``<prefix>objects``, ``<prefix>frames``, ``<prefix>templates``,
        ``<prefix>token_cache``); the default keeps them apart from other applications' tables in a shared
        database.
    clock
        Wall clock [s] stamped on writes and read by :meth:`expire`; instances sharing a database must
        agree on it (NTP is plenty for idle times of days).

    Raises
    ------
    StateUrlError
        ``dsn`` is not a libpq connection string, or tables of our names have other columns.
    psycopg.OperationalError
        The server cannot be reached (an infrastructure failure, not a bad URL).
    """

    def __init__(
        self, dsn: str, max_frames_per_object: int = 200, pool_size: int = 4, *, schema: str | None = None,
        table_prefix: str = "broker_plugin_", clock: Callable[[], float] = time.time,
    ) -> None:  # fmt: skip
        if max_frames_per_object < 1:
            raise ValueError(f"max_frames_per_object must be >= 1, got {max_frames_per_object}")
        self.max_frames_per_object = max_frames_per_object
        self._clock = clock
        # Lock namespace per table set, so that stores on other tables never contend (signed int4).
        self._ns = zlib.crc32(f"{schema}.{table_prefix}".encode()) - 2**31
        self._q = _Queries(schema, table_prefix)
        try:
            conninfo_to_dict(dsn)
        except psycopg.ProgrammingError:
            # Not the parser's message: it quotes the string, password included.
            raise StateUrlError("not a PostgreSQL connection URL (libpq cannot parse it)") from None
        self._pool = _Pool(dsn, pool_size)
        try:
            self._create_schema(schema)
        except BaseException:
            self._pool.close()
            raise

    def _create_schema(self, schema: str | None) -> None:
        with self._pool.connection() as conn, conn.transaction():
            # Concurrent CREATE ... IF NOT EXISTS can still collide in the catalogue: serialise creators.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._ns,))
            if schema is not None:
                conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
            try:
                for statement in self._q.schema:
                    conn.execute(statement)
                try:
                    with conn.transaction():  # a savepoint: the failed probe must not end the transaction
                        conn.execute(self._q.has_template_digest)
                except psycopg.errors.UndefinedColumn:
                    conn.execute(self._q.add_template_digest)
                # Tables of our names made by something else: refuse them now, not on the first alert (an
                # index over a missing column fails above already).
                for probe in self._q.probes:
                    conn.execute(probe)
            except psycopg.errors.UndefinedColumn as exc:
                raise StateUrlError(
                    f"not a state database: tables of its names lack columns ({exc})"
                ) from exc

    @contextmanager
    def _locked(self, *keys: str) -> Iterator[psycopg.Connection]:
        """A connection in a transaction holding the objects' advisory locks."""
        with self._pool.connection() as conn, conn.transaction():
            if len(keys) == 1:
                conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (self._ns, keys[0]))
            else:
                # Several objects: locks taken in one global order, so two batches cannot deadlock.
                conn.execute(self._q.lock_many, (self._ns, list(keys)))
            yield conn

    def add_frames(self, key: str, frames: list[Frame]) -> AddResult:
        """Store frames of one object, idempotently by ``diaSourceId``, in one transaction."""
        return self.add_batch([(key, frames)])[0]

    def add_batch(self, items: Sequence[tuple[str, list[Frame]]]) -> list[AddResult]:
        """Store frames of several objects in one transaction (one commit for the batch)."""
        prepared = [(key, to_rows(frames)) for key, frames in items]
        results: dict[int, AddResult] = {}
        if prepared:
            with self._locked(*sorted({key for key, _ in prepared})) as conn:
                for round_ in _rounds([key for key, _ in prepared]):
                    self._add_round(conn, [(i, *prepared[i]) for i in round_], results)
        return [results[i] for i in range(len(prepared))]

    def _add_round(
        self, conn: psycopg.Connection, items: list[tuple[int, str, list[FrameRow]]],
        results: dict[int, AddResult],
    ) -> None:  # fmt: skip
        """Add distinct objects' frames in three pipelined steps (read + insert, prune, stamp).

        Pipelining makes it a few round trips per batch instead of a few per object.
        """
        with conn.pipeline():
            pending = [
                (conn.execute(self._q.newest, (key,)), conn.execute(self._q.insert, _insert_args(key, rows)))
                for _, key, rows in items
            ]
        newest = [cur_newest.fetchone() for cur_newest, _ in pending]
        inserted = [{source_id for (source_id,) in cur_insert.fetchall()} for _, cur_insert in pending]
        n_frames = [
            (0 if top is None else top[2]) + len(new) for top, new in zip(newest, inserted, strict=True)
        ]
        with conn.pipeline():
            pruning = {
                j: conn.execute(self._q.prune, (key, key, self.max_frames_per_object - 1))
                for j, (_, key, _) in enumerate(items)
                if n_frames[j] > self.max_frames_per_object
            }
            # After the prune of the same object (statements of one transaction run in order).
            for j in pruning:
                key = items[j][1]
                conn.execute(self._q.drop_unused_templates, (key, key))
        pruned = [
            {sid for (sid,) in pruning[j].fetchall()} if j in pruning else set() for j in range(len(items))
        ]
        now = self._clock()
        with conn.pipeline():
            for j, (i, key, rows) in enumerate(items):
                if inserted[j] - pruned[j]:
                    conn.execute(self._q.touch, (key, now))
                top = newest[j]
                last = None if top is None else (top[0], top[1])
                results[i] = add_result(rows, inserted[j], pruned[j], last, n_frames[j] - len(pruned[j]))

    def frames(self, key: str) -> list[Frame]:
        """The object's valid frames, oldest first; invalid ones are skipped and deleted (see ``base``)."""
        with self._pool.connection() as conn:
            rows = conn.execute(self._q.frames, (key,)).fetchall()
        frames, invalid = read_frames(rows)
        if invalid:
            with self._locked(key) as conn:
                conn.execute(self._q.drop_frame_ids, (key, [source_id for source_id, _ in invalid]))
                conn.execute(self._q.drop_unused_templates, (key, key))
            self._report_invalid(key, invalid)
        return frames

    def frame_count(self, key: str) -> int:
        """How many frames the object has."""
        with self._pool.connection() as conn:
            row = conn.execute(self._q.count, (key,)).fetchone()
        return 0 if row is None else int(row[0])

    def get_cache(self, key: str, model_version: str) -> bytes | None:
        """The cached token blob, if any."""
        with self._pool.connection() as conn:
            row = conn.execute(self._q.get_cache, (key, model_version)).fetchone()
        return None if row is None else bytes(row[0])

    def put_cache(self, key: str, model_version: str, blob: bytes) -> None:
        """Replace the cached blob; ignored for an object without frames (expired or never stored)."""
        self.put_caches([(key, model_version, blob)])

    def put_caches(self, items: Sequence[tuple[str, str, bytes]]) -> None:
        """Replace several cached blobs in one transaction: one pipelined commit, no wait for WAL flush."""
        if not items:
            return
        # Under the objects' locks (an expire running now cannot leave an entry behind as an orphan), the
        # same as add_batch takes, in one global order: no deadlock with a concurrent batch.
        with self._locked(*sorted({key for key, _, _ in items})) as conn, conn.pipeline():
            # A cache is only a cache: no wait for the WAL flush (a crash may take back the last caches,
            # which are then older than the stored frames, and are rebuilt).
            conn.execute("SET LOCAL synchronous_commit = off")
            for key, model_version, blob in items:
                conn.execute(self._q.put_cache, (key, model_version, bytes(blob), key))

    def expire(self, idle_seconds: float) -> int:
        """Drop objects (frames and cache) whose last new frame is ``idle_seconds`` old or older."""
        cutoff = self._clock() - idle_seconds
        removed = 0
        after = ""
        while True:
            with self._pool.connection() as conn, conn.transaction():
                candidates = [
                    k for (k,) in conn.execute(self._q.idle, (cutoff, after, _EXPIRE_BATCH)).fetchall()
                ]
                if not candidates:
                    break
                keys = [k for (k,) in conn.execute(self._q.expire, (candidates, cutoff, self._ns)).fetchall()]
                if keys:
                    conn.execute(self._q.drop_frames, (keys,))
                    conn.execute(self._q.drop_templates, (keys,))
                    conn.execute(self._q.drop_cache, (keys,))
                removed += len(keys)
            if len(candidates) < _EXPIRE_BATCH:
                break
            after = candidates[-1]
        return removed

    def object_count(self) -> int:
        """Number of tracked objects."""
        with self._pool.connection() as conn:
            row = conn.execute(self._q.object_count).fetchone()
        return 0 if row is None else int(row[0])

    def close(self) -> None:
        """Close the pool's connections (idempotent)."""
        self._pool.close()


def _insert_args(key: str, rows: list[FrameRow]) -> tuple[object, ...]:
    # Arrays for unnest(): one statement inserts the whole list (an empty one inserts nothing), and the
    # templates of the rows it inserted (each digest once: ON CONFLICT cannot meet one row twice).
    templates = {r.template_digest: r.template_blob for r in rows if r.template_digest is not None}
    return (
        key, [r.diaSourceId for r in rows], [r.midpointMjdTai for r in rows], [r.blob for r in rows],
        [r.template_digest for r in rows], key, list(templates), list(templates.values()),
    )  # fmt: skip


def _rounds(keys: list[str]) -> list[list[int]]:
    """Indices of ``keys`` in rounds where no key repeats.

    An object's second item in a batch must see the effects of its first.
    """
    rounds: list[list[int]] = []
    depth: dict[str, int] = {}
    for i, key in enumerate(keys):
        r = depth[key] = depth.get(key, -1) + 1
        if r == len(rounds):
            rounds.append([])
        rounds[r].append(i)
    return rounds


class _Queries:
    """Every statement, composed once for the configured schema and table prefix."""

    def __init__(self, schema: str | None, prefix: str) -> None:
        def table(name: str) -> sql.Identifier:
            return sql.Identifier(prefix + name) if schema is None else sql.Identifier(schema, prefix + name)

        names = {
            "objects": table("objects"), "frames": table("frames"), "templates": table("templates"),
            "cache": table("token_cache"),
        }  # fmt: skip

        def q(text: str) -> sql.Composed:
            return sql.SQL(text).format(**names)

        def index(name: str) -> sql.Identifier:
            return sql.Identifier(prefix + name)

        self.schema = [
            q(
                "CREATE TABLE IF NOT EXISTS {objects}"
                " (object_key text PRIMARY KEY, last_write float8 NOT NULL)"
            ),
            sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (last_write)").format(
                index("objects_last_write"), names["objects"]
            ),
            q(
                "CREATE TABLE IF NOT EXISTS {frames} (object_key text NOT NULL, dia_source_id int8 NOT NULL,"
                " mjd float8 NOT NULL, blob bytea NOT NULL, PRIMARY KEY (object_key, dia_source_id))"
            ),
            sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (object_key, mjd, dia_source_id)").format(
                index("frames_order"), names["frames"]
            ),
            q(
                "CREATE TABLE IF NOT EXISTS {templates} (object_key text NOT NULL, digest bytea NOT NULL,"
                " blob bytea NOT NULL, PRIMARY KEY (object_key, digest))"
            ),
            q(
                "CREATE TABLE IF NOT EXISTS {cache} (object_key text NOT NULL, model_version text NOT NULL,"
                " blob bytea NOT NULL, PRIMARY KEY (object_key, model_version))"
            ),
        ]
        # Nullable: rows written before templates were stored (and by older instances) have none. Run only
        # when the column is missing: ALTER TABLE locks the table exclusively even when it adds nothing.
        self.has_template_digest = q("SELECT template_digest FROM {frames} LIMIT 0")
        self.add_template_digest = q("ALTER TABLE {frames} ADD COLUMN IF NOT EXISTS template_digest bytea")
        # The newest frame and, via the window, how many the object has: one round trip.
        self.newest = q(
            "SELECT mjd, dia_source_id, COUNT(*) OVER () FROM {frames} WHERE object_key = %s"
            " ORDER BY mjd DESC, dia_source_id DESC LIMIT 1"
        )
        # The frames, then the templates of those it inserted (a redelivery adds no orphan template):
        # both in one statement, one round trip.
        self.insert = q(
            "WITH inserted AS (INSERT INTO {frames} (object_key, dia_source_id, mjd, blob, template_digest)"
            " SELECT %s, * FROM unnest(%s::int8[], %s::float8[], %s::bytea[], %s::bytea[])"
            " ON CONFLICT (object_key, dia_source_id) DO NOTHING RETURNING dia_source_id, template_digest),"
            " added AS (INSERT INTO {templates} (object_key, digest, blob)"
            " SELECT %s, d, b FROM unnest(%s::bytea[], %s::bytea[]) AS u (d, b)"
            " WHERE d IN (SELECT template_digest FROM inserted) ON CONFLICT (object_key, digest) DO NOTHING)"
            " SELECT dia_source_id FROM inserted"
        )
        self.prune = q(
            "DELETE FROM {frames} WHERE object_key = %s AND (mjd, dia_source_id) < ("
            " SELECT mjd, dia_source_id FROM {frames} WHERE object_key = %s"
            " ORDER BY mjd DESC, dia_source_id DESC OFFSET %s LIMIT 1) RETURNING dia_source_id"
        )
        self.touch = q(
            "INSERT INTO {objects} (object_key, last_write) VALUES (%s, %s)"
            " ON CONFLICT (object_key) DO UPDATE SET last_write = EXCLUDED.last_write"
        )
        self.frames = q(
            "SELECT f.dia_source_id, f.mjd, f.blob, t.blob FROM {frames} AS f LEFT JOIN {templates} AS t"
            " ON t.object_key = f.object_key AND t.digest = f.template_digest"
            " WHERE f.object_key = %s ORDER BY f.mjd, f.dia_source_id"
        )
        self.drop_frame_ids = q("DELETE FROM {frames} WHERE object_key = %s AND dia_source_id = ANY(%s)")
        self.drop_unused_templates = q(
            "DELETE FROM {templates} AS t WHERE t.object_key = %s AND NOT EXISTS (SELECT 1 FROM {frames} AS f"
            " WHERE f.object_key = %s AND f.template_digest = t.digest)"
        )
        # Selecting every column we use from a table of another application fails with UndefinedColumn.
        self.probes = [
            q("SELECT object_key, last_write FROM {objects} LIMIT 0"),
            q("SELECT object_key, dia_source_id, mjd, blob, template_digest FROM {frames} LIMIT 0"),
            q("SELECT object_key, digest, blob FROM {templates} LIMIT 0"),
            q("SELECT object_key, model_version, blob FROM {cache} LIMIT 0"),
        ]
        self.count = q("SELECT COUNT(*) FROM {frames} WHERE object_key = %s")
        self.get_cache = q("SELECT blob FROM {cache} WHERE object_key = %s AND model_version = %s")
        self.put_cache = q(
            "INSERT INTO {cache} (object_key, model_version, blob)"
            " SELECT %s, %s, %s WHERE EXISTS (SELECT 1 FROM {objects} WHERE object_key = %s)"
            " ON CONFLICT (object_key, model_version) DO UPDATE SET blob = EXCLUDED.blob"
        )
        # Keyset pages of idle objects, then delete those whose lock is free (not being written now).
        self.idle = q(
            "SELECT object_key FROM {objects} WHERE last_write <= %s AND object_key > %s"
            " ORDER BY object_key LIMIT %s"
        )
        self.expire = q(
            "DELETE FROM {objects} WHERE object_key = ANY(%s) AND last_write <= %s"
            " AND pg_try_advisory_xact_lock(%s, hashtext(object_key)) RETURNING object_key"
        )
        self.drop_frames = q("DELETE FROM {frames} WHERE object_key = ANY(%s)")
        self.drop_templates = q("DELETE FROM {templates} WHERE object_key = ANY(%s)")
        self.drop_cache = q("DELETE FROM {cache} WHERE object_key = ANY(%s)")
        self.object_count = q("SELECT COUNT(*) FROM {objects}")
        self.lock_many = sql.SQL(
            "SELECT pg_advisory_xact_lock(%s, h) FROM"
            " (SELECT DISTINCT hashtext(k) AS h FROM unnest(%s::text[]) AS k ORDER BY h) AS ordered"
        )
