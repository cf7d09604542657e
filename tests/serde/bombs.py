"""Decode every bomb once, in this process, and print what each cost as JSON.

Run as ``python -m tests.serde.bombs`` (``test_bombs.py`` does, in a subprocess, so that a regression
costs that process, not the test run). Address space is capped at 4 GiB first: a bomb that gets through
fails with MemoryError instead of taking the machine. For each bomb: the error it raised, the seconds it
took, and the peak of Python allocations while decoding it (tracemalloc); for the whole run, the growth
of the process's peak resident memory (ru_maxrss) over the baseline taken before the first decode.
"""

from __future__ import annotations

import io
import json
import resource
import time
import tracemalloc
from collections.abc import Callable

import fastavro

from broker_plugin.config import LimitsSettings
from broker_plugin.serde.alerts import AlertDecoder, iter_container, iter_payload
from broker_plugin.serde.schemas import RubinSchemaStore, load_bundled_schema, schema_id_of
from tests.factories import rubin_record
from tests.serde.hostile import container, container_header, deflate_raw, deflate_zeros, rubin_schema, varint

ONE_LONG = {"type": "record", "name": "tiny", "fields": [{"name": "n", "type": "long"}]}


def _array_schema(items: object) -> dict:
    return {
        "type": "record",
        "name": "a",
        "fields": [{"name": "n", "type": "long"}, {"name": "xs", "type": {"type": "array", "items": items}}],
    }


def _inflating_rubin_alerts(n: int) -> bytes:
    """``n`` blocks of one valid Rubin 11.1 alert each, with 15 MiB of zeros as cutoutScience."""
    record = rubin_record("11.1", cutout=b"fits")
    record["cutoutScience"] = bytes(15 << 20)
    body = io.BytesIO()
    fastavro.schemaless_writer(body, load_bundled_schema("11.1").parsed, record)
    return container(rubin_schema(), [(1, deflate_raw(body.getvalue()))] * n, codec="deflate")


def bombs() -> dict[str, Callable[[AlertDecoder], object]]:
    """Name -> a call that decodes one bomb (its bytes built beforehand)."""
    deflate_bomb = container(ONE_LONG, [(1, deflate_zeros(2250))], codec="deflate")  # 2.3 MB -> 2.36 GB
    many_blocks = _inflating_rubin_alerts(8)
    record_count = container({"type": "record", "name": "e", "fields": []}, [(2**40, b"\x00")])
    record_count_nonempty = container(ONE_LONG, [(2**40, b"\x02" * 64)])
    null_array = container(_array_schema("null"), [(1, b"\x02" + varint(2**40) + b"\x00")])
    long_array = container(_array_schema("long"), [(1, b"\x02" + varint(2**40) + b"\x02" * 1000)])
    block_size = container_header(ONE_LONG) + varint(1) + varint(2**62) + b"\x02"
    recursive = container(
        {"type": "record", "name": "node", "fields": [{"name": "next", "type": ["null", "node"]}]},
        [(1, b"\x02" * 1_000_000 + b"\x00")],
    )
    # Rubin framing with the bundled 11.1 schema: prvDiaSources (a union, then an array) declares 2**40.
    rubin_array = (
        b"\x00" + schema_id_of("11.1").to_bytes(4, "big") + varint(1) + b"\x00" * 2 + b"\x02" + varint(2**40)
    )
    decimal_type = {"type": "bytes", "logicalType": "decimal", "precision": 10**9}
    decimal = container(
        {"type": "record", "name": "d", "fields": [{"name": "d", "type": decimal_type}]},
        [(1, varint(1_000_000) + b"\x7f" * 1_000_000)],
    )
    return {
        "deflate_bomb_2.36GB": lambda d: d.decode_message(deflate_bomb),
        "rubin_8_blocks_of_15MB": lambda d: d.decode_message(many_blocks),
        "rubin_8_blocks_of_15MB_file": lambda d: list(iter_payload(many_blocks, d)),
        "record_count_2^40_empty_schema": lambda d: d.decode_message(record_count),
        "record_count_2^40": lambda d: d.decode_message(record_count_nonempty),
        "array_count_2^40_null_items": lambda d: d.decode_message(null_array),
        "array_count_2^40_long_items": lambda d: d.decode_message(long_array),
        "array_count_2^40_long_items_full": lambda d: list(iter_container(io.BytesIO(long_array), full=True)),
        "block_size_2^62": lambda d: d.decode_message(block_size),
        "recursive_schema_1M_deep": lambda d: d.decode_message(recursive),
        "rubin_prvDiaSources_2^40": lambda d: d.decode_message(rubin_array),
        "decimal_1MB": lambda d: list(iter_container(io.BytesIO(decimal))),
    }


def _summary(items: list) -> str:
    """The outcome of a list-returning call: the error class it ended with, else what it yielded."""
    errors = [type(item).__name__ for item in items if isinstance(item, Exception)]
    return errors[-1] if errors else f"{len(items)} items"


def main() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
    decoder = AlertDecoder(RubinSchemaStore(), LimitsSettings())
    calls = bombs()
    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report: dict[str, dict[str, object]] = {}
    for name, call in calls.items():
        tracemalloc.start()
        start = time.perf_counter()
        try:
            result = call(decoder)
            outcome = _summary(result) if isinstance(result, list) else "no error"
        except Exception as exc:  # the report names whatever escaped
            outcome = type(exc).__name__
        seconds = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        report[name] = {"outcome": outcome, "seconds": round(seconds, 3), "peak_mb": round(peak / 1e6, 1)}
    growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline_kb) / 1024
    print(
        json.dumps(
            {"bombs": report, "maxrss_growth_mb": round(growth_mb, 1), "baseline_mb": baseline_kb // 1024}
        )
    )


if __name__ == "__main__":
    main()
