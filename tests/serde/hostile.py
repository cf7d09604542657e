"""Hostile input built from real alerts: containers with edited writer schemas, raw blocks, bombs.

Everything here writes bytes the way an attacker can: a container file's writer schema is the sender's,
block counts and sizes are varints the sender chooses, and the deflate stream is the sender's too.
"""

from __future__ import annotations

import copy
import io
import json
import math
import zlib
from typing import Any

import fastavro
from fastavro.schema import to_parsing_canonical_form

from broker_plugin.records import BANDS, MJD_RANGE, Alert, Survey
from broker_plugin.serde.schemas import load_bundled_schema
from tests.factories import ZTF_GOLDEN, rubin_record

SYNC = bytes(range(16))
_HEADER = fastavro.parse_schema(fastavro.read.HEADER_SCHEMA, named_schemas={})
ZTF_FILE = ZTF_GOLDEN / "2713305823315015047.avro"
#: The diaSource fields the pipeline reads, by their 11.1 names.
RUBIN_FIELDS = ("diaSourceId", "diaObjectId", "midpointMjdTai", "band", "ra", "dec", "psfFlux", "psfFluxErr")
#: The candidate fields the pipeline reads.
ZTF_FIELDS = (
    "candid",
    "jd",
    "fid",
    "ra",
    "dec",
    "magpsf",
    "sigmapsf",
    "magzpsci",
    "xpos",
    "ypos",
    "isdiffpos",
)


def varint(value: int) -> bytes:
    """Avro zig-zag varint of any int64 (the encoding of block counts and sizes)."""
    value = (value << 1) ^ (value >> 63)
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def container_header(schema: Any, codec: str = "null", sync: bytes = SYNC) -> bytes:
    """The header of a container file whose writer schema is ``schema`` (JSON value or text)."""
    text = schema if isinstance(schema, str) else json.dumps(schema)
    buffer = io.BytesIO()
    meta = {"avro.schema": text.encode(), "avro.codec": codec.encode()}
    fastavro.schemaless_writer(buffer, _HEADER, {"magic": b"Obj\x01", "meta": meta, "sync": sync})
    return buffer.getvalue()


def raw_block(count: int, data: bytes, size: int | None = None, sync: bytes = SYNC) -> bytes:
    """One container block with any declared count and size (``size`` defaults to the true one)."""
    return varint(count) + varint(len(data) if size is None else size) + data + sync


def container(schema: Any, blocks: list[tuple[int, bytes]], codec: str = "null") -> bytes:
    """A container of raw blocks ``(declared count, payload)`` (payloads already compressed by ``codec``)."""
    return container_header(schema, codec) + b"".join(raw_block(count, data) for count, data in blocks)


def deflate_raw(data: bytes, level: int = 6) -> bytes:
    """Raw deflate (no zlib header), as Avro's deflate codec stores a block."""
    packer = zlib.compressobj(level, zlib.DEFLATED, -15)
    return packer.compress(data) + packer.flush()


def deflate_zeros(mebibytes: int) -> bytes:
    """Raw deflate of ``mebibytes`` MiB of zeros, built in milliseconds: a deflate bomb (~1030:1).

    After a full flush deflate forgets its history, so the segment that encodes one MiB of zeros is the
    same every time and a stream of N MiB is that segment N times and an empty final block.
    """
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    segment = packer.compress(bytes(1 << 20)) + packer.flush(zlib.Z_FULL_FLUSH)
    again = packer.compress(bytes(1 << 20)) + packer.flush(zlib.Z_FULL_FLUSH)
    assert again == segment
    return segment * mebibytes + packer.flush()


def write_container(schema: Any, records: list[dict[str, Any]], codec: str = "null") -> bytes:
    """A container file of ``records`` written by fastavro with writer schema ``schema``."""
    buffer = io.BytesIO()
    fastavro.writer(
        buffer, fastavro.parse_schema(copy.deepcopy(schema), named_schemas={}), records, codec=codec
    )
    return buffer.getvalue()


def rubin_schema() -> dict[str, Any]:
    """The Rubin 11.1 alert schema as JSON, every named type resolved in place (editable)."""
    return json.loads(to_parsing_canonical_form(load_bundled_schema("11.1").parsed))


def rubin_field_type(schema: dict[str, Any], name: str) -> Any:
    return next(f for f in _fields(schema, "diaSource") if f["name"] == name)["type"]


def set_rubin_field_type(schema: dict[str, Any], name: str, avro_type: Any) -> None:
    next(f for f in _fields(schema, "diaSource") if f["name"] == name)["type"] = avro_type


def ztf_schema_and_record() -> tuple[dict[str, Any], dict[str, Any]]:
    """A real ZTF alert's writer schema (JSON) and its full record, history removed to keep it small."""
    reader = fastavro.reader(io.BytesIO(ZTF_FILE.read_bytes()))
    schema = json.loads(reader.metadata["avro.schema"])
    record = next(reader)
    record["prv_candidates"] = None
    record["fp_hists"] = None
    return schema, record


def set_ztf_field_type(schema: dict[str, Any], name: str, avro_type: Any) -> None:
    field = next(f for f in _fields(schema, "candidate") if f["name"] == name)
    field["type"] = avro_type
    field.pop("default", None)  # a null default does not fit a non-null type


def _fields(schema: dict[str, Any], top: str) -> list[dict[str, Any]]:
    field_type = next(f for f in schema["fields"] if f["name"] == top)["type"]
    return field_type["fields"]


def rubin_container_with(values: dict[str, Any], types: dict[str, Any] | None = None) -> bytes:
    """A one-alert Rubin 11.1 container whose diaSource fields have ``values`` (and writer ``types``)."""
    schema = rubin_schema()
    for name, avro_type in (types or {}).items():
        set_rubin_field_type(schema, name, avro_type)
    record = rubin_record("11.1", cutout=b"fits")
    record["diaSource"].update(values)
    return write_container(schema, [record])


def ztf_container_with(
    values: dict[str, Any], types: dict[str, Any] | None = None, top: dict[str, Any] | None = None
) -> bytes:
    """A real ZTF alert with candidate fields set to ``values`` (writer ``types``), top-level ``top``."""
    schema, record = ztf_schema_and_record()
    for name, avro_type in (types or {}).items():
        set_ztf_field_type(schema, name, avro_type)
    record["candidate"].update(values)
    record.update(top or {})
    return write_container(schema, [record])


def check_alert(alert: Alert) -> None:
    """Assert every field of a decoded alert is of its type, finite and in range."""
    assert isinstance(alert.diaSourceId, int) and not isinstance(alert.diaSourceId, bool)
    assert -(2**63) <= alert.diaSourceId < 2**63
    if alert.survey is Survey.RUBIN:
        assert isinstance(alert.diaObjectId, int) and not isinstance(alert.diaObjectId, bool)
        assert -(2**63) <= alert.diaObjectId < 2**63
        assert alert.ztf is None
    else:
        assert isinstance(alert.diaObjectId, str) and 1 <= len(alert.diaObjectId) <= 32
        assert alert.diaObjectId.isprintable() and alert.diaObjectId.strip() == alert.diaObjectId
        ctx = alert.ztf
        assert ctx is not None and isinstance(ctx.isdiffpos, bool)
        assert isinstance(ctx.magzpsci, float) and 15.0 <= ctx.magzpsci <= 40.0
        for pos in (ctx.xpos, ctx.ypos):
            assert pos is None or (isinstance(pos, float) and math.isfinite(pos))
    assert isinstance(alert.midpointMjdTai, float) and MJD_RANGE[0] <= alert.midpointMjdTai <= MJD_RANGE[1]
    assert alert.band in BANDS
    assert isinstance(alert.ra, float) and 0.0 <= alert.ra < 360.0
    assert isinstance(alert.dec, float) and -90.0 <= alert.dec <= 90.0
    assert alert.psfFlux is None or (isinstance(alert.psfFlux, float) and math.isfinite(alert.psfFlux))
    err = alert.psfFluxErr
    assert err is None or (isinstance(err, float) and math.isfinite(err) and err >= 0.0)
    assert alert.cutoutDifference is None or isinstance(alert.cutoutDifference, bytes)
