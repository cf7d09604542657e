r"""Kafka messages and Avro container files -> :class:`~broker_plugin.records.Alert`, typed errors only.

A message is recognised by its first bytes: ``0x00`` is Rubin's Confluent framing (schemaless body,
writer schema by id), ``Obj\\x01`` an Avro container file (a ZTF message, or an archive of Rubin or
ZTF alerts) whose writer schema is embedded. Anything else, and any failure while reading, becomes an
:class:`~broker_plugin.exceptions.AlertDecodeError` subclass: nothing else escapes this module.
"""

from __future__ import annotations

import io
import re
import zlib
from collections.abc import Iterator
from typing import IO, Any

import fastavro

from broker_plugin.exceptions import (
    AlertDecodeError,
    MalformedAvroError,
    TruncatedMessageError,
    UnsupportedAlertError,
    WrongMagicByteError,
)
from broker_plugin.records import Alert
from broker_plugin.serde.projection import ContainerSchemaCache
from broker_plugin.serde.rubin import WIRE_HEADER, rubin_record_to_alert
from broker_plugin.serde.schemas import RubinSchemaStore
from broker_plugin.serde.ztf import is_ztf_record, ztf_record_to_alert

CONTAINER_MAGIC = b"Obj\x01"
_RUBIN_NAME = re.compile(r"lsst\.v(\d+)_(\d+)\.alert$")
_HEADER_SCHEMA = fastavro.parse_schema(fastavro.read.HEADER_SCHEMA, named_schemas={})
_SYNC_SIZE = 16
_SCHEMAS = ContainerSchemaCache()


def _read_long(fo: IO[bytes]) -> int:
    """One Avro zig-zag varint (block counts and sizes)."""
    shift = value = 0
    while True:
        byte = fo.read(1)
        if not byte:
            raise EOFError("end of data inside a varint")
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return (value >> 1) ^ -(value & 1)
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 64 bits")


def _read_error(exc: BaseException, what: str) -> AlertDecodeError:
    """Map whatever fastavro raised on bad bytes to our typed error."""
    if isinstance(exc, EOFError | StopIteration):
        return TruncatedMessageError(f"{what} ends early: {exc or 'end of data'}")
    return MalformedAvroError(f"{what} is not valid Avro: {type(exc).__name__}: {exc}")


def record_to_alert(record: Any, version: str = "") -> Alert:
    """Map a decoded record (Rubin or ZTF) to an :class:`Alert`.

    Raises
    ------
    UnsupportedAlertError
        Neither a Rubin nor a ZTF alert.
    MissingFieldError
        A needed field is null.
    """
    if not isinstance(record, dict):
        raise UnsupportedAlertError(f"record is a {type(record).__name__}, not an alert")
    if is_ztf_record(record):
        return ztf_record_to_alert(record)
    if "diaSource" in record:
        return rubin_record_to_alert(record, version)
    raise UnsupportedAlertError("record is neither a Rubin (diaSource) nor a ZTF (candidate) alert")


def container_version(writer_schema: Any) -> str:
    """Version of an embedded writer schema: ``"11.1"`` for Rubin, ``schemavsn``'s source for ZTF."""
    name = writer_schema.get("name", "") if isinstance(writer_schema, dict) else ""
    namespace = writer_schema.get("namespace", "") if isinstance(writer_schema, dict) else ""
    match = _RUBIN_NAME.search(name if "." in name else f"{namespace}.{name}")
    return f"{match.group(1)}.{match.group(2)}" if match else ""


def iter_container(fo: IO[bytes], *, full: bool = False) -> Iterator[tuple[dict[str, Any], str]]:
    """Yield ``(record, version)`` from an Avro container file, one block at a time.

    Records are read through the cached, projected schema (history arrays skipped, see
    :mod:`.projection`) unless ``full``. Codecs ``null`` and ``deflate`` are read here; any other goes
    through fastavro's generic reader (always full records).

    Raises
    ------
    AlertDecodeError
        Not a container, or corrupt part-way (records before the damage are still yielded).
    """
    try:
        header = fastavro.schemaless_reader(fo, _HEADER_SCHEMA, None)
        if header["magic"] != CONTAINER_MAGIC:
            raise ValueError("not an Avro container file (bad magic)")
        meta = header["meta"]
        writer, reader = _SCHEMAS.get(meta["avro.schema"])
        codec = meta.get("avro.codec", b"null")
        version = container_version(writer)
    except Exception as exc:  # fastavro/json: ValueError, EOFError, KeyError, SchemaParseException, ...
        raise _read_error(exc, "container header") from exc
    if codec not in (b"null", b"deflate"):
        yield from _iter_generic(fo, version)
        return
    while True:
        try:
            first = fo.read(1)
            if not first:
                return
            fo.seek(-1, io.SEEK_CUR)
            count, size = _read_long(fo), _read_long(fo)
            data = fo.read(size)
            if size < 0 or len(data) != size:
                raise EOFError(f"block of {size} bytes ends early")
            if fo.read(_SYNC_SIZE) != header["sync"]:
                raise ValueError("block sync marker does not match the header's")
            block = io.BytesIO(zlib.decompress(data, -15) if codec == b"deflate" else data)
            projection = None if full else reader
            records = [fastavro.schemaless_reader(block, writer, projection) for _ in range(count)]
        except Exception as exc:  # EOFError, zlib.error, ValueError, UnicodeDecodeError, ...
            raise _read_error(exc, "container block") from exc
        for record in records:
            yield record, version


def _iter_generic(fo: IO[bytes], version: str) -> Iterator[tuple[dict[str, Any], str]]:
    """Container records through fastavro's own reader (codecs this module does not handle)."""
    fo.seek(0)
    try:
        reader = fastavro.reader(fo)
    except Exception as exc:
        raise _read_error(exc, "container header") from exc
    while True:
        try:
            record = next(reader)
        except StopIteration:
            return
        except Exception as exc:
            raise _read_error(exc, "container block") from exc
        yield record, version


def iter_payload(raw: bytes, decoder: AlertDecoder) -> Iterator[Alert | AlertDecodeError]:
    """Every alert in one file's bytes, or the error that stopped each one, in order.

    Unlike :meth:`AlertDecoder.decode_message`, a container with one bad record still yields the
    good records around it (a whole archive is not lost to one record).
    """
    if not raw.startswith(CONTAINER_MAGIC):
        try:
            yield from decoder.decode_message(raw)
        except AlertDecodeError as exc:
            yield exc
        return
    try:
        for record, version in iter_container(io.BytesIO(raw)):
            try:
                yield record_to_alert(record, version)
            except AlertDecodeError as exc:
                yield exc
    except AlertDecodeError as exc:
        yield exc


class AlertDecoder:
    """Decode Kafka message values into alerts.

    Parameters
    ----------
    schemas
        Writer schemas by id for Rubin's framed messages.
    """

    def __init__(self, schemas: RubinSchemaStore) -> None:
        self._schemas = schemas

    def decode_rubin_body(self, raw: bytes) -> tuple[dict[str, Any], str]:
        """Read a Confluent-framed Rubin message into ``(record, version)``.

        Raises
        ------
        AlertDecodeError
            Wrong magic byte, unknown schema id, truncated or malformed body, trailing bytes.
        """
        if len(raw) < WIRE_HEADER.size:
            raise TruncatedMessageError(f"message of {len(raw)} bytes is shorter than the wire header")
        magic, schema_id = WIRE_HEADER.unpack_from(raw)
        if magic != 0:
            raise WrongMagicByteError(f"first byte is 0x{raw[0]:02x}, expected 0x00")
        writer = self._schemas.get(schema_id)
        buffer = io.BytesIO(raw)
        buffer.seek(WIRE_HEADER.size)
        try:
            record = fastavro.schemaless_reader(buffer, writer.parsed, writer.reader)
        except Exception as exc:  # fastavro raises EOFError, ValueError, UnicodeDecodeError, ...
            raise _read_error(exc, f"schema {schema_id} body") from exc
        if buffer.tell() != len(raw):
            raise MalformedAvroError(
                f"{len(raw) - buffer.tell()} trailing bytes after the schema {schema_id} record"
            )
        return record, writer.version

    def decode_message(self, raw: bytes) -> list[Alert]:
        """All alerts in one Kafka message value (Rubin framed, or a container file).

        Raises
        ------
        AlertDecodeError
            A subclass naming what is wrong; no other exception escapes.
        """
        if not isinstance(raw, bytes | bytearray | memoryview) or len(raw) == 0:
            raise TruncatedMessageError("empty message")
        raw = bytes(raw)
        if raw.startswith(CONTAINER_MAGIC):
            return [record_to_alert(rec, ver) for rec, ver in iter_container(io.BytesIO(raw))]
        if raw[0] != 0:
            raise WrongMagicByteError(
                f"first byte is 0x{raw[0]:02x}: neither Confluent framing (0x00) nor an Avro container"
            )
        record, version = self.decode_rubin_body(raw)
        return [record_to_alert(record, version)]
