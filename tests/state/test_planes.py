"""Frames with science and template planes in the state stores (SQLite and PostgreSQL).

Real frames: every alert of the bundled demo archive and of ``tests/data/ztf`` normalised. They read back
bit for bit (planes, masks, ``psfFlux``); each object keeps one ``templates`` row per distinct template,
which goes when no frame names it any more; stores written before the planes (format 1, no templates
table) still open and read.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import struct
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from broker_plugin.config import StampSettings
from broker_plugin.records import Alert, Frame
from broker_plugin.serde.alerts import AlertDecoder, iter_payload
from broker_plugin.serde.files import iter_alert_payloads
from broker_plugin.serde.schemas import RubinSchemaStore
from broker_plugin.state.base import StateStore, object_key
from broker_plugin.state.sequence import encode_frame, encode_frame_parts
from broker_plugin.state.sqlite import SqliteStateStore
from tests.factories import ZTF_GOLDEN
from tests.state.conftest import POSTGRES_DSN, FakeClock, assert_same_frame, make_frame

DEMO = Path(__file__).resolve().parents[2] / "broker_plugin" / "demo_data"


@cache
def real_frames() -> dict[str, tuple[Frame, ...]]:
    """Every demo and golden ZTF alert's frame, by object key, in time order."""
    from broker_plugin.stamps import StampNormaliser

    decoder = AlertDecoder(RubinSchemaStore())
    normaliser = StampNormaliser(StampSettings())
    out: dict[str, list[Frame]] = defaultdict(list)
    for folder in (DEMO, ZTF_GOLDEN):
        for _, raw in iter_alert_payloads(folder):
            for alert in iter_payload(raw, decoder):
                assert isinstance(alert, Alert)
                out[object_key(alert.survey, alert.diaObjectId)].append(normaliser.normalise(alert))
    return {key: tuple(sorted(frames, key=lambda f: f.midpointMjdTai)) for key, frames in out.items()}


def sharing(frames: tuple[Frame, ...] | list[Frame], template: Frame) -> list[Frame]:
    """``frames`` with the template plane of ``template``: one reference image shared by all."""
    return [
        dataclasses.replace(f, template=template.template, templateMask=template.templateMask) for f in frames
    ]


@dataclass
class Backend:
    """Stores of one backend on this test's tables, and raw SQL on those tables."""

    make: Callable[..., StateStore]
    sql: Callable[[str], list[tuple[Any, ...]]]
    kind: str

    def literal(self, value: bytes) -> str:
        """``value`` as an SQL blob literal of this backend."""
        return f"X'{value.hex()}'" if self.kind == "sqlite" else f"'\\x{value.hex()}'::bytea"

    def templates(self) -> tuple[int, int]:
        """Rows of the templates table and their blob bytes."""
        ((rows, size),) = self.sql("SELECT COUNT(*), COALESCE(SUM(LENGTH(blob)), 0) FROM {templates}")
        return int(rows), int(size)

    def frame_bytes(self) -> int:
        ((size,),) = self.sql("SELECT COALESCE(SUM(LENGTH(blob)), 0) FROM {frames}")
        return int(size)


@pytest.fixture
def backend_tables(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    clock = FakeClock()
    opened: list[StateStore] = []
    if backend == "sqlite":
        path = tmp_path / "state.db"

        def make(max_frames_per_object: int = 200) -> StateStore:
            opened.append(SqliteStateStore(path, max_frames_per_object, clock=clock))
            return opened[-1]

        def run(text: str) -> list[tuple[Any, ...]]:
            with sqlite3.connect(path) as conn:
                return conn.execute(text.format(frames="frames", templates="templates")).fetchall()

    else:
        import psycopg

        from broker_plugin.state.postgres import PostgresStateStore

        schema = request.getfixturevalue("postgres_schema")
        prefix = f"planes{abs(hash(request.node.name)) % 10**8}_"

        def make(max_frames_per_object: int = 200) -> StateStore:
            store = PostgresStateStore(
                POSTGRES_DSN, max_frames_per_object, schema=schema, table_prefix=prefix, clock=clock
            )
            opened.append(store)
            return store

        def run(text: str) -> list[tuple[Any, ...]]:
            names = {name: f'"{schema}"."{prefix}{name}"' for name in ("frames", "templates")}
            with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
                cur = conn.execute(text.format(**names))
                return cur.fetchall() if cur.description else []

    yield Backend(make, run, backend)
    for store in opened:
        store.close()


def test_real_frames_read_back_with_their_planes_and_photometry(backend_tables: Backend) -> None:
    store = backend_tables.make()
    frames = real_frames()
    store.add_batch([(key, list(object_frames)) for key, object_frames in frames.items()])
    n = 0
    for key, object_frames in frames.items():
        stored = store.frames(key)
        assert len(stored) == len(object_frames)
        for back, original in zip(stored, object_frames, strict=True):
            assert_same_frame(back, original)
            assert back.science is not None and back.template is not None and back.psfFlux is not None
            n += 1
    assert n == 102
    # Real templates differ from visit to visit (each visit's cutout is cut and resampled afresh): one
    # row per frame, none shared.
    assert backend_tables.templates()[0] == n


def test_each_object_keeps_one_template_row_per_distinct_template(backend_tables: Backend) -> None:
    store = backend_tables.make()
    key, frames = next((k, f) for k, f in real_frames().items() if len(f) >= 6)
    shared = sharing(frames[:4], frames[0]) + list(frames[4:6])  # 4 share one template, 2 have their own
    store.add_frames(key, shared)
    rows, size = backend_tables.templates()
    template_blob = encode_frame_parts(frames[0]).template_blob
    assert template_blob is not None
    assert rows == 3 and size == 3 * len(template_blob)
    # The frame rows hold no template bytes: a digest each.
    assert backend_tables.frame_bytes() == sum(len(encode_frame_parts(f).blob) for f in shared)
    assert backend_tables.frame_bytes() + size < sum(len(encode_frame(f)) for f in shared) - 2 * len(
        template_blob
    )
    for back, original in zip(store.frames(key), shared, strict=True):
        assert_same_frame(back, original)
    # Another object with the same template content has a row of its own (objects never share).
    store.add_frames("rubin:other", sharing([make_frame(1, 1.0, size=32)], frames[0]))
    assert backend_tables.templates()[0] == 4
    assert_same_frame(store.frames("rubin:other")[0], sharing([make_frame(1, 1.0)], frames[0])[0])


def test_a_template_no_frame_names_any_more_is_deleted(backend_tables: Backend) -> None:
    store = backend_tables.make(max_frames_per_object=2)
    key, frames = next((k, f) for k, f in real_frames().items() if len(f) >= 4)
    store.add_frames(key, sharing(frames[:2], frames[0]))
    assert backend_tables.templates()[0] == 1
    store.add_frames(key, [frames[2]])  # prunes frames[0]; frames[1] still names the first template
    assert backend_tables.templates()[0] == 2
    store.add_frames(key, [frames[3]])  # prunes frames[1]: nothing names the first template
    assert backend_tables.templates()[0] == 2
    assert [f.diaSourceId for f in store.frames(key)] == [frames[2].diaSourceId, frames[3].diaSourceId]
    assert_same_frame(store.frames(key)[0], frames[2])


def test_a_redelivery_adds_no_template(backend_tables: Backend) -> None:
    store = backend_tables.make()
    key, frames = next(iter(real_frames().items()))
    store.add_frames(key, [frames[0]])
    # The same diaSourceId normalised with another template (another version, say): not stored.
    again = store.add_frames(key, sharing([frames[0]], frames[1]))
    assert again.new == () and backend_tables.templates()[0] == 1
    assert_same_frame(store.frames(key)[0], frames[0])


def test_expiry_drops_the_templates(backend_tables: Backend) -> None:
    store = backend_tables.make()
    for key, frames in list(real_frames().items())[:3]:
        store.add_frames(key, list(frames))
    assert backend_tables.templates()[0] > 0
    assert store.expire(0.0) == 3
    assert backend_tables.templates() == (0, 0) and backend_tables.frame_bytes() == 0


def test_a_frame_whose_stored_template_is_bad_or_gone_is_invalid(backend_tables: Backend) -> None:
    store = backend_tables.make()
    seen: list[tuple[int, str]] = []
    store.watch_invalid_frames(lambda _key, source_id, why: seen.append((source_id, why)))
    key, frames = next((k, f) for k, f in real_frames().items() if len(f) >= 4)
    shared = sharing(frames[:2], frames[0]) + list(frames[2:4])
    store.add_frames(key, shared)
    # Bit rot in the shared template (the digest no longer matches), and a template row gone.
    damaged, gone = encode_frame_parts(frames[0]), encode_frame_parts(frames[3])
    assert damaged.template_blob is not None and damaged.template_digest and gone.template_digest
    rotten = bytearray(damaged.template_blob)
    rotten[100] ^= 1
    literal, digest = backend_tables.literal, damaged.template_digest
    backend_tables.sql(
        f"UPDATE {{templates}} SET blob = {literal(bytes(rotten))} WHERE digest = {literal(digest)}"
    )
    backend_tables.sql(f"DELETE FROM {{templates}} WHERE digest = {literal(gone.template_digest)}")
    back = store.frames(key)
    assert [f.diaSourceId for f in back] == [frames[2].diaSourceId]
    assert_same_frame(back[0], frames[2])
    assert sorted(source_id for source_id, _ in seen) == sorted(
        f.diaSourceId for f in (*frames[:2], frames[3])
    )
    assert all("template" in why for _, why in seen)
    # The invalid frames are deleted, and with them the template no frame names any more.
    assert store.frame_count(key) == 1 and backend_tables.templates()[0] == 1


def test_a_stored_template_of_the_wrong_plane_fails_the_frame_checks(backend_tables: Backend) -> None:
    store = backend_tables.make()
    frame = make_frame(5, 5.0)
    template = np.zeros((32, 32), np.float32)
    template[0, 0] = np.inf  # a plane no normaliser makes: non-finite
    mask = np.ones((32, 32), bool)
    bad = dataclasses.replace(frame, template=template, templateMask=mask)
    store.add_frames("rubin:5", [bad, make_frame(6, 6.0)])
    assert [f.diaSourceId for f in store.frames("rubin:5")] == [6]
    assert backend_tables.templates()[0] == 0


# --- stores written before the planes --------------------------------------------------------------------


def encode_frame_v1(frame: Frame) -> bytes:
    """A frame as format 1 wrote it (the code of ``state/sequence.py`` before the planes)."""
    band = frame.band.encode()
    rows, cols = frame.data.shape
    header = struct.pack(
        "<3sBIqdiiHHB", b"BPF", 1, int(frame.flags), frame.diaSourceId, frame.midpointMjdTai,
        frame.originalShape[0], frame.originalShape[1], rows, cols, len(band),
    )  # fmt: skip
    bits = np.packbits(frame.mask, axis=None).tobytes()
    return header + band + frame.data.astype("<f4").tobytes() + bits


_OLD_SQLITE_SCHEMA = """
CREATE TABLE objects (object_key TEXT PRIMARY KEY, last_write REAL NOT NULL);
CREATE INDEX objects_last_write ON objects (last_write);
CREATE TABLE frames (object_key TEXT NOT NULL, dia_source_id INTEGER NOT NULL, mjd REAL NOT NULL,
    blob BLOB NOT NULL, UNIQUE (object_key, dia_source_id));
CREATE INDEX frames_order ON frames (object_key, mjd, dia_source_id);
CREATE TABLE token_cache (object_key TEXT NOT NULL, model_version TEXT NOT NULL, blob BLOB NOT NULL,
    PRIMARY KEY (object_key, model_version));
"""


def test_a_sqlite_store_written_before_the_planes_opens_and_reads(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = [make_frame(i, float(i)) for i in (1, 2)]
    with sqlite3.connect(path) as conn:
        conn.executescript(_OLD_SQLITE_SCHEMA)
        conn.executemany(
            "INSERT INTO frames VALUES ('rubin:1', ?, ?, ?)",
            [(f.diaSourceId, f.midpointMjdTai, encode_frame_v1(f)) for f in old],
        )
        conn.execute("INSERT INTO objects VALUES ('rubin:1', 1.0)")
    _, frames = next(iter(real_frames().items()))
    with SqliteStateStore(path) as store:
        for back, original in zip(store.frames("rubin:1"), old, strict=True):
            assert_same_frame(back, original)
            assert back.science is None and back.template is None and back.psfFlux is None
        new = dataclasses.replace(frames[0], midpointMjdTai=old[-1].midpointMjdTai + 1.0, diaSourceId=3)
        assert store.add_frames("rubin:1", [new]).new == (3,)
        back = store.frames("rubin:1")
        assert [f.diaSourceId for f in back] == [1, 2, 3]
        assert_same_frame(back[2], new)
    with sqlite3.connect(path) as conn:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(frames)")}
        assert "template_digest" in columns
        assert conn.execute("SELECT COUNT(*) FROM templates").fetchone() == (1,)


@pytest.mark.integration
def test_postgres_tables_written_before_the_planes_open_and_read(postgres_schema: str) -> None:
    import psycopg

    from broker_plugin.state.postgres import PostgresStateStore

    prefix = "old_"
    table = f'"{postgres_schema}"."{prefix}'
    old = [make_frame(i, float(i)) for i in (1, 2)]
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
        conn.execute(
            f'CREATE TABLE {table}objects" (object_key text PRIMARY KEY, last_write float8 NOT NULL)'
        )
        conn.execute(
            f'CREATE TABLE {table}frames" (object_key text NOT NULL, dia_source_id int8 NOT NULL,'
            " mjd float8 NOT NULL, blob bytea NOT NULL, PRIMARY KEY (object_key, dia_source_id))"
        )
        conn.execute(
            f'CREATE TABLE {table}token_cache" (object_key text NOT NULL, model_version text NOT NULL,'
            " blob bytea NOT NULL, PRIMARY KEY (object_key, model_version))"
        )
        for f in old:
            conn.execute(
                f'INSERT INTO {table}frames" VALUES (%s, %s, %s, %s)',
                ("rubin:1", f.diaSourceId, f.midpointMjdTai, encode_frame_v1(f)),
            )
    _, frames = next(iter(real_frames().items()))
    with PostgresStateStore(POSTGRES_DSN, schema=postgres_schema, table_prefix=prefix) as store:
        for back, original in zip(store.frames("rubin:1"), old, strict=True):
            assert_same_frame(back, original)
        new = dataclasses.replace(frames[0], midpointMjdTai=old[-1].midpointMjdTai + 1.0, diaSourceId=3)
        assert store.add_frames("rubin:1", [new]).new == (3,)
        assert_same_frame(store.frames("rubin:1")[2], new)
    # A second instance opening the migrated tables changes nothing.
    with PostgresStateStore(POSTGRES_DSN, schema=postgres_schema, table_prefix=prefix) as store:
        assert [f.diaSourceId for f in store.frames("rubin:1")] == [1, 2, 3]
