"""SQLite keeps every frame whose ``add_frames`` returned, across a kill -9 of the writing process."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from broker_plugin.exceptions import StateUrlError
from broker_plugin.state.factory import open_state_store
from broker_plugin.state.sqlite import SqliteStateStore

REPO = Path(__file__).resolve().parents[2]

# Adds one frame per call, forever, and says so after each call returned.
WRITER = """
import sys
from broker_plugin.state.sqlite import SqliteStateStore
from tests.state.conftest import make_frame

store = SqliteStateStore(sys.argv[1], 10_000)
i = 0
while True:
    store.add_frames(f"rubin:{i % 3}", [make_frame(i, float(i))])
    print("added", i, flush=True)
    i += 1
"""


def test_sqlite_survives_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True, cwd=REPO, env=env
    )
    reported: list[int] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            reported.append(int(line.split()[1]))
            if len(reported) == 40:
                break
    finally:
        # Mid-stream: the writer is inside its next transaction or about to be.
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    assert len(reported) == 40
    with SqliteStateStore(path) as store:
        stored = {f.diaSourceId for k in range(3) for f in store.frames(f"rubin:{k}")}
        assert set(reported) <= stored
        assert store.object_count() == 3


def test_factory_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with open_state_store("sqlite:///rel/state.db", 5) as store:
        assert isinstance(store, SqliteStateStore)
        assert store.path == Path("rel/state.db")
        assert store.max_frames_per_object == 5
    absolute = tmp_path / "abs" / "state.db"
    with open_state_store(f"sqlite:///{absolute}", 5) as store:
        assert store.path == absolute
    with open_state_store(str(tmp_path / "bare.db"), 5) as store:
        assert isinstance(store, SqliteStateStore)
    assert absolute.exists() and (tmp_path / "rel" / "state.db").exists()


def test_factory_rejects_unknown_schemes() -> None:
    for url in ("redis://localhost", "sqlite://", "sqlite://host/file.db"):
        with pytest.raises(StateUrlError):
            open_state_store(url, 5)
    with pytest.raises(StateUrlError, match="'redis'") as caught:
        open_state_store("redis://user:hunter2@localhost", 5)
    assert "hunter2" not in str(caught.value)


def test_factory_rejects_what_is_not_a_state_database(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a database, but long enough to have a header page " * 20)
    with pytest.raises(StateUrlError, match=r"notes\.txt"):
        open_state_store(f"sqlite:///{text}", 5)
    assert text.read_text().startswith("not a database")  # untouched
    with pytest.raises(StateUrlError):
        open_state_store(str(tmp_path), 5)  # a folder
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER)")
    with pytest.raises(StateUrlError, match="invoices"):
        open_state_store(str(other), 5)
    clash = tmp_path / "clash.db"
    with sqlite3.connect(clash) as conn:
        conn.execute("CREATE TABLE frames (id INTEGER)")
    with pytest.raises(StateUrlError, match="frames"):
        open_state_store(str(clash), 5)
    blocked = tmp_path / "file"
    blocked.write_text("x")
    with pytest.raises(StateUrlError, match="folder"):
        open_state_store(f"sqlite:///{blocked}/state.db", 5)


@pytest.mark.integration
def test_factory_rejects_what_is_not_a_postgres_state_database(postgres_schema: str) -> None:
    import psycopg

    from tests.state.conftest import POSTGRES_DSN

    with pytest.raises(StateUrlError, match="not a PostgreSQL connection URL") as caught:
        open_state_store("postgresql://u:secret@127.0.0.1:5432/test?nonsense_option=1", 5)
    assert "secret" not in str(caught.value)
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
        conn.execute(f'CREATE TABLE "{postgres_schema}".broker_plugin_frames (id int8)')
    url = f"{POSTGRES_DSN}{'&' if '?' in POSTGRES_DSN else '?'}options=-csearch_path%3D{postgres_schema}"
    try:
        with pytest.raises(StateUrlError, match="not a state database"):
            open_state_store(url, 5)
    finally:
        with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
            conn.execute(f'DROP TABLE "{postgres_schema}".broker_plugin_frames')


@pytest.mark.integration
def test_factory_postgres_url(postgres_schema: str) -> None:
    from broker_plugin.state.postgres import PostgresStateStore
    from tests.state.conftest import POSTGRES_DSN

    # search_path puts the default-named tables in this session's schema (dropped afterwards).
    url = f"{POSTGRES_DSN}{'&' if '?' in POSTGRES_DSN else '?'}options=-csearch_path%3D{postgres_schema}"
    with open_state_store(url, 7) as store:
        assert isinstance(store, PostgresStateStore)
        assert store.max_frames_per_object == 7
        assert store.object_count() == 0


def test_undecodable_stored_bytes_are_skipped(tmp_path: Path) -> None:
    from tests.state.conftest import make_frame

    path = tmp_path / "state.db"
    seen: list[int] = []
    with SqliteStateStore(path) as store:
        store.watch_invalid_frames(lambda _key, source_id, _why: seen.append(source_id))
        store.add_frames("k", [make_frame(i, float(i)) for i in range(1, 5)])
        with sqlite3.connect(path) as conn:  # bit rot, or a format of another version
            conn.execute("UPDATE frames SET blob = x'425046ff' WHERE dia_source_id = 2")
            conn.execute("UPDATE frames SET blob = substr(blob, 1, 100) WHERE dia_source_id = 3")
        # Bytes of another frame under this row: decodable, valid, but not this row's frame.
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE frames SET blob = (SELECT blob FROM frames WHERE dia_source_id = 1)"
                         " WHERE dia_source_id = 4")  # fmt: skip
        assert [f.diaSourceId for f in store.frames("k")] == [1]
        assert seen == [2, 3, 4]
        assert store.frame_count("k") == 1


def _synchronous(store: SqliteStateStore) -> int:
    assert store._conn is not None
    return int(store._conn.execute("PRAGMA synchronous").fetchone()[0])


def test_sqlite_cache_writes_skip_the_fsync_and_frames_keep_it(tmp_path: Path) -> None:
    from tests.state.conftest import make_frame

    store = SqliteStateStore(tmp_path / "s.db")
    full = _synchronous(store)
    assert full == 2  # FULL
    store.add_frames("o", [make_frame(1, 0.0)])
    seen: list[int] = []
    real = store._transaction

    def spying(*, durable: bool = True):
        seen.append(durable)
        return real(durable=durable)

    store._transaction = spying  # type: ignore[method-assign]
    store.put_caches([("o", "v1", b"cache")])
    store.add_frames("o", [make_frame(2, 1.0)])
    assert seen == [False, True]
    assert _synchronous(store) == full  # frame writes after a cache write are fsynced again
    assert store.get_cache("o", "v1") == b"cache"
    store.close()
    reopened = SqliteStateStore(tmp_path / "s.db")
    assert reopened.get_cache("o", "v1") == b"cache"
    assert [f.diaSourceId for f in reopened.frames("o")] == [1, 2]
    reopened.close()


def test_sqlite_failed_cache_write_restores_durable_commits(tmp_path: Path) -> None:
    from tests.state.conftest import make_frame

    store = SqliteStateStore(tmp_path / "s.db")
    store.add_frames("o", [make_frame(1, 0.0)])
    with pytest.raises(sqlite3.IntegrityError):  # model_version is NOT NULL: the transaction rolls back
        store.put_caches([("o", None, b"x")])  # type: ignore[list-item]
    assert _synchronous(store) == 2
    store.close()


@pytest.mark.integration
def test_postgres_cache_writes_do_not_change_the_session(postgres_schema: str) -> None:
    from broker_plugin.state.postgres import PostgresStateStore
    from tests.state.conftest import POSTGRES_DSN, make_frame

    store = PostgresStateStore(POSTGRES_DSN, 10, schema=postgres_schema, table_prefix="sync_", pool_size=1)
    try:
        store.add_frames("o", [make_frame(1, 0.0)])
        store.put_caches([("o", "v1", b"cache")])
        assert store.get_cache("o", "v1") == b"cache"
        with store._pool.connection() as conn:
            # SET LOCAL ends with the cache transaction: the pooled connection commits synchronously again.
            assert conn.execute("SHOW synchronous_commit").fetchone()[0] == "on"
    finally:
        store.close()
