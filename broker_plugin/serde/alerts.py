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
from collections.abc import Callable, Iterator
from typing import IO, Any

import fastavro

from broker_plugin.config import LimitsSettings
from broker_plugin.exceptions import (
    AlertDecodeError,
    MalformedAvroError,
    ResourceLimitError,
    TruncatedMessageError,
    UnsupportedAlertError,
    WrongMagicByteError,
)
from broker_plugin.records import Alert
from broker_plugin.serde.history_points import missing_reason
from broker_plugin.serde.projection import ContainerSchemaCache
from broker_plugin.serde.rubin import WIRE_HEADER, rubin_record_to_alert
from broker_plugin.serde.schemas import RubinSchemaStore
from broker_plugin.serde.ztf import is_ztf_record, ztf_record_to_alert

CONTAINER_MAGIC = b"Obj\x01"
_RUBIN_NAME = re.compile(r"lsst\.v(\d+)_(\d+)\.alert$")
_HEADER_SCHEMA = fastavro.parse_schema(fastavro.read.HEADER_SCHEMA, named_schemas={})
_SYNC_SIZE = 16
#: Codecs read here. Others (snappy, zstandard, lz4, bzip2, xz) are rejected: no survey sends them, and
#: each is another decompressor to bound (a snappy or zstd frame inflates to whatever size it says, read
#: by a library that allocates it first) - a container codec is the sender's choice, so every codec
#: accepted is attack surface.
CODECS = (b"null", b"deflate")
_SCHEMAS = ContainerSchemaCache()
_DEFAULT_LIMITS = LimitsSettings()


def _read_long(fo: IO[bytes], first: bytes = b"") -> int:
    """One Avro zig-zag varint (block counts and sizes); ``first`` is its first byte if already read."""
    shift = value = 0
    byte = first or fo.read(1)
    while True:
        if not byte:
            raise EOFError("end of data inside a varint")
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return (value >> 1) ^ -(value & 1)
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 64 bits")
        byte = fo.read(1)


def _read_error(exc: BaseException, what: str) -> AlertDecodeError:
    """Map whatever fastavro raised on bad bytes to our typed error."""
    if isinstance(exc, AlertDecodeError):
        return exc
    if isinstance(exc, EOFError | StopIteration):
        return TruncatedMessageError(f"{what} ends early: {exc or 'end of data'}")
    return MalformedAvroError(f"{what} is not valid Avro: {type(exc).__name__}: {str(exc)[:200]}")


def record_to_alert(record: Any, version: str = "", limits: LimitsSettings | None = None) -> Alert:
    """Map a decoded record (Rubin or ZTF) to a validated :class:`Alert`.

    See :func:`~.rubin.rubin_record_to_alert` and :func:`~.ztf.ztf_record_to_alert` for the rules.

    Raises
    ------
    UnsupportedAlertError
        Neither a Rubin nor a ZTF alert.
    MissingFieldError
        A needed field is null.
    InvalidFieldError
        A subclass naming a field of the wrong type, not finite or out of range.
    ResourceLimitError
        The cutout is larger than ``limits.max_cutout_bytes``.
    """
    if not isinstance(record, dict):
        raise UnsupportedAlertError(f"record is a {type(record).__name__}, not an alert")
    if is_ztf_record(record):
        return ztf_record_to_alert(record, limits)
    if "diaSource" in record:
        return rubin_record_to_alert(record, version, limits)
    raise UnsupportedAlertError("record is neither a Rubin (diaSource) nor a ZTF (candidate) alert")


def container_version(writer_schema: Any) -> str:
    """Version of an embedded writer schema: ``"11.1"`` for Rubin, ``schemavsn``'s source for ZTF."""
    name = writer_schema.get("name", "") if isinstance(writer_schema, dict) else ""
    namespace = writer_schema.get("namespace", "") if isinstance(writer_schema, dict) else ""
    match = _RUBIN_NAME.search(name if "." in name else f"{namespace}.{name}")
    return f"{match.group(1)}.{match.group(2)}" if match else ""


def _inflate(data: bytes, codec: bytes, max_bytes: int) -> bytes:
    """A block's bytes decompressed by its codec, never more than ``max_bytes`` of them.

    Raises
    ------
    ResourceLimitError
        The block inflates to more than ``max_bytes``.
    AlertDecodeError
        ``TruncatedMessageError`` or ``MalformedAvroError`` for a broken deflate stream.
    """
    if codec == b"null":
        return data
    inflater = zlib.decompressobj(-15)
    try:
        out = inflater.decompress(data, max_bytes)
    except zlib.error as exc:
        raise MalformedAvroError(f"container block is not valid deflate data: {exc}") from exc
    if inflater.unconsumed_tail:
        raise ResourceLimitError(f"container block inflates to more than {max_bytes} bytes")
    if not inflater.eof:
        raise TruncatedMessageError("container block's deflate stream ends early")
    # Bytes after the end of the stream are ignored, as zlib.decompress does: fastavro's writer leaves
    # three bytes of a zlib checksum there.
    return out


def iter_container(
    fo: IO[bytes],
    *,
    full: bool = False,
    limits: LimitsSettings | None = None,
    max_records: int | None = None,
    max_inflated_bytes: int | None = None,
    skip_history_bytes: bool = True,
    history: bool = False,
) -> Iterator[tuple[dict[str, Any], str]]:
    """Yield ``(record, version)`` from an Avro container file, one record at a time.

    Records are read through the cached, projected schema (history arrays, and any other array or map,
    skipped: see :mod:`.projection`; the history's bytes are skipped by pattern, see :mod:`.skipping`)
    unless ``full``. The header's writer schema is checked first
    (:func:`~.projection.check_writer_schema`), so no schema can make a record cost more than its bytes.
    Every block must declare 1 to ``limits.max_block_records`` records and at most
    ``limits.max_block_bytes`` bytes, inflate (deflate) to at most that many, hold at least as many bytes
    as its records need, and be used up exactly by its records. Memory is one block and one record,
    whatever the input declares. ``full`` builds every array too: only for trusted files (an array of
    one-byte records costs ~200 bytes of Python objects per byte).

    Parameters
    ----------
    fo
        The container's bytes.
    full
        Read whole records, history included.
    limits
        Resource bounds; ``LimitsSettings()`` if not given.
    max_records
        Most records in the whole container (one Kafka message: ``max_alerts_per_message``).
    max_inflated_bytes
        Most bytes all blocks together may inflate to (one Kafka message: ``max_message_inflated_bytes``).
    skip_history_bytes
        False: let fastavro walk the history value by value (the reference, for tests and benchmarks).
    history
        Read the photometric history into each record too (:mod:`.history`; not with ``full``).

    Raises
    ------
    AlertDecodeError
        Not a container, unsupported codec, over a limit, or corrupt part-way (records before the damage
        are still yielded).
    """
    limits = limits or _DEFAULT_LIMITS
    try:
        header = fastavro.schemaless_reader(fo, _HEADER_SCHEMA, None)
        if header["magic"] != CONTAINER_MAGIC:
            raise ValueError("not an Avro container file (bad magic)")
        meta = header["meta"]
        schema = _SCHEMAS.get(meta["avro.schema"])
        codec = meta.get("avro.codec", b"null")
        version = container_version(schema.writer)
    except Exception as exc:  # fastavro/json: ValueError, EOFError, KeyError, typed schema errors, ...
        raise _read_error(exc, "container header") from exc
    if codec not in CODECS:
        raise UnsupportedAlertError(
            f"container codec {codec[:40]!r} is not supported: only null and deflate are read, with a bound"
        )
    records = inflated = 0
    while True:
        first = fo.read(1)
        if not first:
            return
        count, data = _read_block(fo, first, header["sync"], codec, schema.min_record_bytes, limits)
        records += count
        inflated += len(data)
        if max_records is not None and records > max_records:
            raise ResourceLimitError(f"container holds more than {max_records} records")
        if max_inflated_bytes is not None and inflated > max_inflated_bytes:
            raise ResourceLimitError(f"container blocks inflate to more than {max_inflated_bytes} bytes")
        buffer = io.BytesIO(data)
        for _ in range(count):
            try:
                if full:
                    record = fastavro.schemaless_reader(buffer, schema.writer, None)
                else:
                    record = schema.records.read(buffer, data, skip_bytes=skip_history_bytes, history=history)
            except Exception as exc:  # EOFError, ValueError, UnicodeDecodeError, IndexError, ...
                raise _read_error(exc, "container record") from exc
            yield record, version
        if buffer.tell() != len(data):
            raise MalformedAvroError(
                f"{len(data) - buffer.tell()} bytes left in a block after its {count} records"
            )


def _read_block(
    fo: IO[bytes], first: bytes, sync: bytes, codec: bytes, min_record_bytes: int, limits: LimitsSettings
) -> tuple[int, bytes]:
    """One container block: its record count and its inflated bytes, every bound checked before use.

    Raises
    ------
    AlertDecodeError
        A count or size out of bounds, a short block, a wrong sync marker, bad deflate data.
    """
    try:
        count, size = _read_long(fo, first), _read_long(fo)
    except Exception as exc:  # EOFError, ValueError (overlong varint)
        raise _read_error(exc, "container block header") from exc
    if count <= 0:
        raise MalformedAvroError(f"container block declares {count} records (a block holds at least one)")
    if count > limits.max_block_records:
        raise ResourceLimitError(
            f"container block declares {count} records (limit {limits.max_block_records})"
        )
    if size <= 0:
        raise MalformedAvroError(f"container block declares {size} bytes")
    if size > limits.max_block_bytes:
        raise ResourceLimitError(f"container block declares {size} bytes (limit {limits.max_block_bytes})")
    data = fo.read(size)
    if len(data) != size:
        raise TruncatedMessageError(f"container block of {size} bytes ends after {len(data)}")
    if fo.read(_SYNC_SIZE) != sync:
        raise MalformedAvroError("container block sync marker does not match the header's")
    data = _inflate(data, codec, limits.max_block_bytes)
    if count * min_record_bytes > len(data):
        raise MalformedAvroError(
            f"container block declares {count} records of at least {min_record_bytes} bytes each"
            f" in {len(data)} bytes"
        )
    return count, data


def iter_payload(
    raw: bytes, decoder: AlertDecoder, limits: LimitsSettings | None = None
) -> Iterator[Alert | AlertDecodeError]:
    """Every alert in one file's bytes, or the error that stopped each one, in order.

    Unlike :meth:`AlertDecoder.decode_message`, a container with one bad record still yields the
    good records around it (a whole archive is not lost to one record), and it may hold any number of
    alerts (the per-block limits still hold; memory is one block and one record).

    Parameters
    ----------
    raw
        A container file, or one Kafka message value.
    decoder
        Reads non-container values.
    limits
        Resource bounds; the decoder's if not given.
    """
    limits = limits or decoder.limits
    if not raw.startswith(CONTAINER_MAGIC):
        try:
            yield from decoder.decode_message(raw)
        except AlertDecodeError as exc:
            yield exc
        return
    try:
        records = iter_container(
            io.BytesIO(raw),
            limits=limits,
            skip_history_bytes=decoder.skip_history_bytes,
            history=decoder.history,
        )
        for record, version in records:
            try:
                yield decoder.alert_of(record, version, limits)
            except AlertDecodeError as exc:
                yield exc
    except AlertDecodeError as exc:
        yield exc


class AlertDecoder:
    """Decode Kafka message values into validated alerts; nothing but an AlertDecodeError escapes.

    Parameters
    ----------
    schemas
        Writer schemas by id for Rubin's framed messages.
    limits
        Resource bounds (``LimitsSettings()`` if not given).
    skip_history_bytes
        Skip history arrays by byte pattern (:mod:`.skipping`); False lets fastavro walk them value by
        value, the reference the fast path is tested and benchmarked against. Same records either way.
    history
        Read each alert's photometric history (:attr:`Alert.history <broker_plugin.records.Alert.history>`,
        see :mod:`.history`); False skips it as bytes, at no cost, and every alert's history is None.
    """

    def __init__(
        self,
        schemas: RubinSchemaStore,
        limits: LimitsSettings | None = None,
        *,
        skip_history_bytes: bool = True,
        history: bool = True,
    ) -> None:
        self._schemas = schemas
        self.limits = limits or _DEFAULT_LIMITS
        self.skip_history_bytes = skip_history_bytes
        self.history = history
        self._history_listeners: list[Callable[[str], None]] = []

    def watch_missing_history(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(reason)`` for every alert decoded without its history (history on).

        ``reason`` is a :class:`~.history.HistoryMissing` value; alerts rejected are not told.
        """
        self._history_listeners.append(listener)

    def alert_of(self, record: Any, version: str, limits: LimitsSettings | None = None) -> Alert:
        """:func:`record_to_alert` of a record this decoder read, telling a missing history's reason.

        Raises
        ------
        AlertDecodeError
            As :func:`record_to_alert`.
        """
        alert = record_to_alert(record, version, limits or self.limits)
        if self.history and alert.history is None:
            reason = missing_reason(record) if isinstance(record, dict) else None
            for listener in self._history_listeners:
                listener(str(reason or "absent"))
        return alert

    def decode_rubin_body(self, raw: bytes) -> tuple[dict[str, Any], str]:
        """Read a Confluent-framed Rubin message into ``(record, version)``.

        Raises
        ------
        AlertDecodeError
            Wrong magic byte, unknown schema id, registry unavailable, truncated or malformed body,
            trailing bytes.
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
            record = writer.records.read(
                buffer, raw, skip_bytes=self.skip_history_bytes, history=self.history
            )
        except Exception as exc:  # fastavro raises EOFError, ValueError, UnicodeDecodeError, ...
            raise _read_error(exc, f"schema {schema_id} body") from exc
        if buffer.tell() != len(raw):
            raise MalformedAvroError(
                f"{len(raw) - buffer.tell()} trailing bytes after the schema {schema_id} record"
            )
        return record, writer.version

    def decode_message(self, raw: bytes) -> list[Alert]:
        """All alerts in one Kafka message value (Rubin framed, or a container file), validated.

        A container may hold at most ``limits.max_alerts_per_message`` records whose blocks inflate to
        at most ``limits.max_message_inflated_bytes`` together; one bad record rejects the message.

        Raises
        ------
        AlertDecodeError
            A subclass naming what is wrong; no other exception escapes.
        """
        if not isinstance(raw, bytes | bytearray | memoryview) or len(raw) == 0:
            raise TruncatedMessageError("empty message")
        raw = bytes(raw)
        if raw.startswith(CONTAINER_MAGIC):
            records = iter_container(
                io.BytesIO(raw),
                limits=self.limits,
                max_records=self.limits.max_alerts_per_message,
                max_inflated_bytes=self.limits.max_message_inflated_bytes,
                skip_history_bytes=self.skip_history_bytes,
                history=self.history,
            )
            return [self.alert_of(record, version) for record, version in records]
        if raw[0] != 0:
            raise WrongMagicByteError(
                f"first byte is 0x{raw[0]:02x}: neither Confluent framing (0x00) nor an Avro container"
            )
        record, version = self.decode_rubin_body(raw)
        return [self.alert_of(record, version)]
