"""Fixtures of the state-store contract tests: one store factory per backend, a controllable clock."""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from broker_plugin.records import Frame, StampFlag
from broker_plugin.state.base import StateStore
from broker_plugin.state.sqlite import SqliteStateStore

POSTGRES_DSN = os.environ.get("BROKER_PLUGIN_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")

StoreFactory = Callable[..., StateStore]


class FakeClock:
    """Wall clock the test moves by hand [s]."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


#: Tests give times as days after this MJD: frames read back must lie in the survey era (check_frame).
MJD_BASE = 60_000.0


def make_frame(diaSourceId: int, mjd: float, band: str = "r", size: int = 32) -> Frame:
    """A valid frame at ``MJD_BASE + mjd`` with pixels and mask derived from its id (no two look alike)."""
    rng = np.random.default_rng(diaSourceId & 0xFFFFFFFF)
    mask = rng.random((size, size)) > 0.1
    data = np.where(mask, rng.normal(0, 100, (size, size)), 0).astype(np.float32)
    return Frame(
        data=data, mask=mask, flags=StampFlag(diaSourceId % 32), band=band, midpointMjdTai=MJD_BASE + mjd,
        diaSourceId=diaSourceId, originalShape=(51, 51),
    )  # fmt: skip


def assert_same_frame(a: Frame, b: Frame) -> None:
    assert a.data.dtype == b.data.dtype == np.float32
    assert a.data.tobytes() == b.data.tobytes()
    assert np.array_equal(a.mask, b.mask)
    assert (a.flags, a.band, a.midpointMjdTai, a.diaSourceId, a.originalShape) == (
        b.flags, b.band, b.midpointMjdTai, b.diaSourceId, b.originalShape,
    )  # fmt: skip
    for plane in ("science", "template"):
        mine, theirs = getattr(a, plane), getattr(b, plane)
        assert (mine is None) == (theirs is None), plane
        if mine is not None:
            assert mine.dtype == theirs.dtype == np.float32 and mine.tobytes() == theirs.tobytes(), plane
            assert np.array_equal(getattr(a, f"{plane}Mask"), getattr(b, f"{plane}Mask")), plane
            assert getattr(a, f"{plane}Mask").dtype == np.bool_
    assert (a.psfFlux, a.psfFluxErr) == (b.psfFlux, b.psfFluxErr)


@pytest.fixture(scope="session")
def postgres_schema() -> Iterator[str]:
    """A schema of its own for this test session, dropped afterwards; skips if no server answers."""
    psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed")
    try:
        conn = psycopg.connect(POSTGRES_DSN, autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL unreachable at {POSTGRES_DSN} (set BROKER_PLUGIN_TEST_POSTGRES_DSN): {exc}")
    schema = f"bp_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield schema
    finally:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        conn.close()


_table_sets = itertools.count()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def make_store(backend: str, request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> Iterator[
    StoreFactory
]:  # fmt: skip
    """Opens stores of this test's backend on this test's tables: every call is another instance on the
    same data (a restart, or another plugin process)."""
    opened: list[StateStore] = []
    if backend == "sqlite":
        path = tmp_path / "state.db"

        def make(max_frames_per_object: int = 200) -> StateStore:
            store = SqliteStateStore(path, max_frames_per_object, clock=clock)
            opened.append(store)
            return store
    else:
        from broker_plugin.state.postgres import PostgresStateStore

        schema = request.getfixturevalue("postgres_schema")
        prefix = f"t{next(_table_sets)}_"

        def make(max_frames_per_object: int = 200) -> StateStore:
            store = PostgresStateStore(
                POSTGRES_DSN, max_frames_per_object, schema=schema, table_prefix=prefix, clock=clock
            )
            opened.append(store)
            return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(make_store: StoreFactory) -> StateStore:
    return make_store()
