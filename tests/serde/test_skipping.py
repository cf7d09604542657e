"""The skipping reader gives exactly the records fastavro's projected read gives, faster.

Exactness is the contract (see :mod:`broker_plugin.serde.skipping`): a matched pattern ends where
fastavro's skip ends, and anything the pattern does not match is read by fastavro. Checked on every real
alert, on history with random values and strings of every length (fallback beyond 255 bytes), on
blocks that state their byte size, and on corrupt bytes (same record or both fail).
"""

from __future__ import annotations

import copy
import io
import struct
import zlib
from pathlib import Path
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker_plugin.serde.alerts import _HEADER_SCHEMA, _SCHEMAS, _read_long, iter_container
from broker_plugin.serde.projection import ContainerSchema
from broker_plugin.serde.schemas import load_bundled_schema
from broker_plugin.serde.skipping import MAX_SHORT_TEXT, RecordReader, SkippingReader, item_pattern
from tests.factories import ZTF_GOLDEN, rubin_record, shared_ztf_dir
from tests.serde.hostile import ZTF_FILE, varint, write_container, ztf_schema_and_record

DEMO = Path(__file__).resolve().parents[2] / "broker_plugin" / "demo_data"
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def blocks(raw: bytes) -> tuple[ContainerSchema, list[tuple[int, bytes]]]:
    """A container's checked schema and its blocks ``(count, inflated bytes)``."""
    fo = io.BytesIO(raw)
    header = fastavro.schemaless_reader(fo, _HEADER_SCHEMA, None)
    out = []
    while fo.read(1):
        fo.seek(-1, io.SEEK_CUR)
        count, size = _read_long(fo), _read_long(fo)
        data = fo.read(size)
        fo.read(16)
        if header["meta"].get("avro.codec") == b"deflate":
            data = zlib.decompress(data, -15)
        out.append((count, data))
    return _SCHEMAS.get(header["meta"]["avro.schema"]), out


def same_as_fastavro(raw: bytes, expect_fast: bool = True) -> SkippingReader:
    """Read every record of ``raw`` both ways; assert equal records and end positions."""
    schema, parts = blocks(raw)
    fast = SkippingReader.build(schema.writer, schema.reader)
    assert fast is not None
    for count, data in parts:
        ours, theirs = io.BytesIO(data), io.BytesIO(data)
        for _ in range(count):
            mine = fast.read(ours, data)
            reference = fastavro.schemaless_reader(theirs, schema.writer, schema.reader)
            assert mine == reference and list(mine) == list(reference)
            assert ours.tell() == theirs.tell()
    if expect_fast:
        assert fast.fallbacks == 0
    return fast


def real_files() -> list[Path]:
    files = sorted(ZTF_GOLDEN.glob("*.avro")) + sorted(DEMO.glob("*.avro"))
    shared = shared_ztf_dir()
    return files + (sorted(shared.glob("*.avro")) if shared else [])


def test_every_real_alert_reads_the_same_without_falling_back() -> None:
    files = real_files()
    assert len(files) >= 54
    for path in files:
        same_as_fastavro(path.read_bytes())


def test_the_history_is_actually_skipped_by_the_pattern() -> None:
    schema, _ = blocks(ZTF_FILE.read_bytes())
    fast = SkippingReader.build(schema.writer, schema.reader)
    assert fast is not None
    kinds = ["skip" if callable(step) else "read" for step in fast._plan]
    assert kinds == ["read", "skip", "skip", "read"]  # head, prv_candidates, fp_hists, cutouts


@pytest.mark.parametrize("use_fast", [True, False])
def test_iter_container_gives_the_same_records_either_way(use_fast: bool) -> None:
    raw = ZTF_FILE.read_bytes()
    records = [r for _ in range(3) for r, _ in iter_container(io.BytesIO(raw), skip_history_bytes=use_fast)]
    reference = next(fastavro.reader(io.BytesIO(raw)))
    for record in records:
        assert record == {k: v for k, v in reference.items() if k not in ("prv_candidates", "fp_hists")}


def test_record_reader_builds_the_fast_path_only_for_a_schema_read_often() -> None:
    schema, [(_, data)] = blocks(ZTF_FILE.read_bytes())
    reader = RecordReader(schema.writer, schema.reader)
    records = [reader.read(io.BytesIO(data), data) for _ in range(RecordReader.FAST_AFTER)]
    assert reader._fast is None
    records.append(reader.read(io.BytesIO(data), data))
    assert reader._fast is not None and all(record == records[0] for record in records)
    assert reader.read(io.BytesIO(data), data, skip_bytes=False) == records[0]


# --- random history ------------------------------------------------------------------------------

_TEXT_LENGTHS = st.integers(0, 70) | st.integers(MAX_SHORT_TEXT - 3, MAX_SHORT_TEXT + 3) | st.integers(0, 400)


@st.composite
def history_values(draw: st.DrawFn, template: dict[str, Any], text_fields: tuple[str, ...]) -> dict[str, Any]:
    entry = copy.deepcopy(template)
    for name in text_fields:
        if name in entry:
            entry[name] = "x" * draw(_TEXT_LENGTHS)
    for name, value in entry.items():
        if isinstance(value, float) and draw(st.booleans()):
            entry[name] = draw(st.floats(width=32, allow_nan=False))
        elif isinstance(value, int) and not isinstance(value, bool) and draw(st.booleans()):
            entry[name] = draw(st.integers(-(2**31), 2**31 - 1))
    return entry


ZTF_SCHEMA, ZTF_RECORD = ztf_schema_and_record()
ZTF_PRV = next(fastavro.reader(io.BytesIO(ZTF_FILE.read_bytes())))["prv_candidates"][0]


@FAST
@given(
    st.lists(history_values(ZTF_PRV, ("pdiffimfilename", "programpi", "rbversion", "ssnamenr")), max_size=6)
)
def test_random_ztf_history_reads_the_same(history: list[dict[str, Any]]) -> None:
    record = dict(ZTF_RECORD, prv_candidates=history or None)
    long_text = any(len(v) > MAX_SHORT_TEXT for h in history for v in h.values() if isinstance(v, str))
    fast = same_as_fastavro(write_container(ZTF_SCHEMA, [record]), expect_fast=not long_text)
    assert fast.fallbacks == (1 if long_text else 0)


RUBIN_SOURCE = rubin_record("11.1")["diaSource"]


@FAST
@given(st.lists(history_values(RUBIN_SOURCE, ("band",)), max_size=5), st.sampled_from(["null", "deflate"]))
def test_random_rubin_history_reads_the_same(history: list[dict[str, Any]], codec: str) -> None:
    record = rubin_record("11.1", cutout=b"fits")
    record["prvDiaSources"] = history
    record["prvDiaForcedSources"] = None
    buffer = io.BytesIO()
    fastavro.writer(buffer, load_bundled_schema("11.1").parsed, [record, record], codec=codec)
    long_text = any(len(h["band"] or "") > MAX_SHORT_TEXT for h in history)
    same_as_fastavro(buffer.getvalue(), expect_fast=not long_text)


def test_history_blocks_that_state_their_byte_size_are_jumped_like_fastavro() -> None:
    """Avro lets a writer encode an array block as -count, byte size; fastavro jumps it, so must we."""
    schema = {
        "type": "record",
        "name": "alert",
        "fields": [
            {"name": "a", "type": "long"},
            {"name": "prv_candidates", "type": {"type": "array", "items": "double"}},
            {"name": "b", "type": "string"},
        ],
    }
    items = b"".join(fastavro_double(x) for x in (1.0, 2.0, 3.0))
    body = varint(7) + varint(-3) + varint(len(items)) + items + varint(1) + fastavro_double(4.0) + varint(0)
    body += varint(2) + b"ok"
    raw = write_container(schema, [{"a": 7, "prv_candidates": [], "b": "ok"}])
    schema_parsed, _ = blocks(raw)
    fast = SkippingReader.build(schema_parsed.writer, schema_parsed.reader)
    assert fast is not None
    assert (
        fast.read(io.BytesIO(body), body)
        == {"a": 7, "b": "ok"}
        == fastavro.schemaless_reader(io.BytesIO(body), schema_parsed.writer, schema_parsed.reader)
    )
    assert fast.fallbacks == 0


def fastavro_double(value: float) -> bytes:
    return struct.pack("<d", value)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_corrupt_bytes_give_the_same_record_or_both_fail(data: st.DataObject) -> None:
    schema, [(_, block)] = blocks(ZTF_FILE.read_bytes())
    fast = SkippingReader.build(schema.writer, schema.reader)
    assert fast is not None
    raw = bytearray(block)
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] ^= data.draw(st.integers(1, 255))
    corrupt = bytes(raw)
    outcomes = []
    for read in (
        lambda b: fast.read(b, corrupt),
        lambda b: fastavro.schemaless_reader(b, schema.writer, schema.reader),
    ):
        buffer = io.BytesIO(corrupt)
        try:
            outcomes.append((read(buffer), buffer.tell()))
        except Exception:  # fastavro's own errors, typed later by the container reader
            outcomes.append(None)
    assert outcomes[0] == outcomes[1]


def test_patterns_exist_only_for_types_without_arrays_or_maps() -> None:
    assert item_pattern({"type": "array", "items": "long"}, {}) is None
    assert item_pattern({"type": "map", "values": "long"}, {}) is None
    assert item_pattern(["null", "double", "string"], {}) is not None
    assert item_pattern({"type": "fixed", "name": "f", "size": 16}, {}) == b".{16}"
    assert SkippingReader.build({"type": "record", "name": "r", "fields": []}, None) is None
