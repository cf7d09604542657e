"""State-store throughput, one writer: ``add_frames`` calls/s and ``frames()`` reads/s (SQLite, PostgreSQL).

Usage: ``python benchmarks/bench_state.py [--objects 200] [--frames 10] [--out FILE]``

Each ``add_frames`` call stores one new 32x32 frame (what the service does per alert), objects taken in
turn, so every call is one durable transaction (SQLite: an fsync of the WAL; PostgreSQL: a commit); then the
same with ``add_batch`` (one transaction per micro-batch of 100 objects). Reads
fetch and decode one object's whole sequence. PostgreSQL runs against ``BROKER_PLUGIN_TEST_POSTGRES_DSN``
(default ``postgresql://postgres@127.0.0.1:5432/test``) in a scratch schema dropped afterwards; it is
skipped when no server answers. Rates are wall clock (the database server's work counts too).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from broker_plugin import __version__
from broker_plugin.records import Frame, StampFlag
from broker_plugin.state.base import StateStore
from broker_plugin.state.sqlite import SqliteStateStore

ROOT = Path(__file__).resolve().parents[1]
#: Frames per ``add_batch`` call (one frame per object).
BATCH = 100
DSN = os.environ.get("BROKER_PLUGIN_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")


def frames(n: int, seed: int = 0) -> list[Frame]:
    rng = np.random.default_rng(seed)
    return [
        Frame(
            data=rng.normal(0, 100, (32, 32)).astype(np.float32),
            mask=rng.random((32, 32)) > 0.05,
            flags=StampFlag.NONE,
            band="ugrizy"[i % 6],
            midpointMjdTai=60_000.0 + i,
            diaSourceId=i,
            originalShape=(51, 51),
        )
        for i in range(n)
    ]


def measure(store: StateStore, n_objects: int, per_object: int) -> dict[str, float]:
    pool = frames(n_objects * per_object)
    calls = [(f"rubin:{i % n_objects}", [frame]) for i, frame in enumerate(pool)]
    t0 = time.perf_counter()
    for key, batch in calls:
        store.add_frames(key, batch)
    t_add = time.perf_counter() - t0
    t0 = time.perf_counter()
    for key, batch in calls[: len(calls) // 2]:  # redeliveries: idempotent no-ops
        store.add_frames(key, batch)
    t_dup = time.perf_counter() - t0
    # Micro-batches as the service forms them: one frame each of up to 100 objects, one commit per batch.
    batched = [(key, [replace(frame, diaSourceId=frame.diaSourceId + len(pool))]) for key, (frame,) in calls]
    t0 = time.perf_counter()
    for i in range(0, len(batched), BATCH):
        store.add_batch(batched[i : i + BATCH])
    t_batch = time.perf_counter() - t0
    t0 = time.perf_counter()
    n_read = 0
    for _ in range(3):
        for i in range(n_objects):
            n_read += len(store.frames(f"rubin:{i}"))
    t_read = time.perf_counter() - t0
    return {
        "add_frames_per_second": round(len(calls) / t_add, 1),
        f"add_batch_of_{BATCH}_frames_per_second": round(len(batched) / t_batch, 1),
        "redelivered_add_frames_per_second": round(len(calls) // 2 / t_dup, 1),
        "frames_reads_per_second": round(3 * n_objects / t_read, 1),
        "frames_decoded_per_second": round(n_read / t_read, 1),
    }


def bench_sqlite(n_objects: int, per_object: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp, SqliteStateStore(Path(tmp) / "state.db") as store:
        return measure(store, n_objects, per_object)


def bench_postgres(n_objects: int, per_object: int) -> dict[str, float] | str:
    try:
        import psycopg

        from broker_plugin.state.postgres import PostgresStateStore

        admin = psycopg.connect(DSN, autocommit=True, connect_timeout=3)
    except Exception as exc:  # any failure means "not measured", said in the JSON
        return f"skipped: {exc}"
    schema = f"bp_bench_{uuid.uuid4().hex[:8]}"
    try:
        with PostgresStateStore(DSN, schema=schema) as store:
            return measure(store, n_objects, per_object)
    finally:
        admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--objects", type=int, default=200)
    parser.add_argument("--frames", type=int, default=10, help="frames per object")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "state.json")
    args = parser.parse_args()
    runs: dict[str, Callable[[int, int], object]] = {"sqlite": bench_sqlite, "postgres": bench_postgres}
    result = {
        "benchmark": "state stores, single writer",
        "plugin_version": __version__,
        "machine": {"cpu": platform.machine(), "cores": os.cpu_count(), "python": platform.python_version()},
        "objects": args.objects,
        "frames_per_object": args.frames,
        **{name: run(args.objects, args.frames) for name, run in runs.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
