"""Writer schemas from outside: checked for safety, read through a projection, parsed once.

A container file embeds its writer schema, and a schema registry serves them: both come from outside,
and a writer schema decides how much work and memory the bytes after it cost. :func:`check_writer_schema`
rejects the schemas that let a few bytes cost without bound:

- a recursive named type (a record that holds itself, via a union): every level costs one byte and
  fastavro's compiled reader recurses on the C stack, so a 100 kB message crashes the process
  (segmentation fault, measured with fastavro 1.13);
- nesting deeper than :data:`MAX_SCHEMA_DEPTH` (the same C stack, without recursion);
- array items that encode in zero bytes (``null``, a ``fixed`` of size 0, a record of only such fields):
  an array declares its count, so ``[null] * 2**40`` is a few bytes that fastavro loops over 2**40 times
  (and, read, holds a list that large); map entries always cost a byte (their key);
- a top-level record that encodes in zero bytes: a container block declares its record count the same way;
- a top-level type that is not a record (no alert is anything else).

Decimal logical types are removed from outside schemas before parsing (:func:`strip_decimals`): fastavro
converts each decimal's bytes to a :class:`decimal.Decimal` in time quadratic in their length (a 1 MB
decimal takes minutes), and no field the pipeline reads is a decimal.

Alerts are then read through a *projected* reader schema (:func:`project`) that leaves out every array
and map: the per-object history (Rubin ``prvDiaSources``/``prvDiaForcedSources``, ZTF
``prv_candidates``/``fp_hists``: hundreds of records the image-sequence model does not use) and any other
array or map at any depth (no real alert has one outside the history, and none is read). fastavro skips
the bytes of what the reader leaves out without building Python objects (and :mod:`.skipping` skips the
history's bytes faster still), so building the Python dicts of the history is avoided; and what is built
is a fixed tree of records whose size follows the schema and the bytes, never a count the bytes declare.
Projection is exact for everything kept: a named type first defined inside a left-out field is defined
where it is first kept.

ZTF sends a whole container file per message, schema text included; parsing that 27 kB schema each time
costs more than the record, so checked, parsed schemas (and the errors of bad ones) are cached by text.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import fastavro

from broker_plugin.exceptions import (
    AlertDecodeError,
    MalformedAvroError,
    ResourceLimitError,
    UnsupportedAlertError,
)
from broker_plugin.serde.skipping import RecordReader, definitions_of, is_named

#: Top-level alert fields the pipeline never reads (per-object history arrays).
HISTORY_FIELDS = frozenset(
    {"prvDiaSources", "prvDiaForcedSources", "prvDiaNondetectionLimits", "prv_candidates", "fp_hists"}
)
#: Deepest nesting of types a writer schema may have (Rubin and ZTF have 5): fastavro's compiled reader
#: recurses on the C stack once per level.
MAX_SCHEMA_DEPTH = 32
#: Deepest nesting of JSON a schema text may have (a type level is 2-3 JSON levels), checked before the
#: text reaches the JSON and Avro parsers.
MAX_SCHEMA_JSON_DEPTH = 3 * MAX_SCHEMA_DEPTH
_MIN_BYTES = {"null": 0, "boolean": 1, "int": 1, "long": 1, "float": 4, "double": 8, "bytes": 1, "string": 1}
_MAX_CACHED = 64
#: Largest schema text cached, and the most cached text in all (Rubin's is ~100 kB, ZTF's 27 kB) [bytes].
_MAX_CACHED_TEXT = 1_000_000
_MAX_CACHED_TOTAL = 8_000_000


def check_writer_schema(parsed: Any) -> int:
    """Check a parsed writer schema of an alert; return the fewest bytes one record can encode in.

    Raises
    ------
    UnsupportedAlertError
        The top-level type is not a record.
    ResourceLimitError
        A recursive named type, nesting deeper than :data:`MAX_SCHEMA_DEPTH`, array items or a whole
        record that encode in zero bytes.
    """
    if not (isinstance(parsed, dict) and parsed.get("type") in ("record", "error")):
        kind = parsed.get("type") if isinstance(parsed, dict) else parsed
        raise UnsupportedAlertError(f"writer schema is a {str(kind)[:40]}, not an alert record")
    size = _min_bytes(parsed, 0, [], {})
    if size == 0:
        raise ResourceLimitError(
            "writer schema lets a record encode in zero bytes: a block could declare any number of them"
        )
    return size


def _min_bytes(schema: Any, depth: int, defining: list[str], sizes: dict[str, int]) -> int:
    """Fewest bytes ``schema`` encodes in, checking it on the way (see :func:`check_writer_schema`)."""
    if depth > MAX_SCHEMA_DEPTH:
        raise ResourceLimitError(f"writer schema nests deeper than {MAX_SCHEMA_DEPTH} levels")
    if isinstance(schema, str):
        if schema in _MIN_BYTES:
            return _MIN_BYTES[schema]
        if schema in defining:
            raise ResourceLimitError(f"writer schema type {schema[:80]} contains itself (unbounded nesting)")
        if schema not in sizes:
            raise MalformedAvroError(f"writer schema uses the undefined type {schema[:80]}")
        return sizes[schema]
    if isinstance(schema, list):
        for branch in schema:
            _min_bytes(branch, depth + 1, defining, sizes)
        return 1  # the branch index, a varint
    if not isinstance(schema, dict):
        raise MalformedAvroError(f"writer schema holds a {type(schema).__name__} where a type belongs")
    kind = schema.get("type")
    if kind in ("record", "error"):
        defining.append(schema["name"])
        size = sum(_min_bytes(field["type"], depth + 1, defining, sizes) for field in schema["fields"])
        defining.pop()
    elif kind == "enum":
        size = 1
    elif kind == "fixed":
        size = schema["size"]
        if not isinstance(size, int) or size < 0:
            raise MalformedAvroError(f"writer schema has a fixed of size {str(size)[:40]}")
    elif kind == "array":
        if _min_bytes(schema["items"], depth + 1, defining, sizes) == 0:
            raise ResourceLimitError(
                "writer schema has an array whose items encode in zero bytes: it could declare any count"
            )
        return 1  # the terminating zero count
    elif kind == "map":
        _min_bytes(schema["values"], depth + 1, defining, sizes)
        return 1
    else:  # a primitive with attributes (a logical type) or a nested type expression
        return _min_bytes(kind, depth + 1, defining, sizes)
    sizes[schema["name"]] = size
    return size


def _json_depth(value: Any) -> int:
    """Nesting depth of a JSON value, without recursion (the value may be hostile)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if isinstance(node, dict):
            stack.extend((child, depth + 1) for child in node.values())
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node)
    return deepest


def strip_decimals(schema: Any) -> Any:
    """A copy of a JSON schema without ``decimal`` logical types (their values stay plain bytes)."""
    if isinstance(schema, list):
        return [strip_decimals(item) for item in schema]
    if isinstance(schema, dict):
        return {
            key: strip_decimals(value)
            for key, value in schema.items()
            if not (key == "logicalType" and value == "decimal")
        }
    return schema


def parse_outside_schema(schema: Any) -> tuple[Any, int]:
    """Parse and check a JSON writer schema that came from outside: a container header or a registry.

    Returns
    -------
    tuple
        The parsed schema, and the fewest bytes one record encodes in (see :func:`check_writer_schema`).

    Raises
    ------
    AlertDecodeError
        ``MalformedAvroError`` if it is not a valid Avro schema, otherwise as :func:`check_writer_schema`.
    """
    if _json_depth(schema) > MAX_SCHEMA_JSON_DEPTH:
        raise ResourceLimitError(f"writer schema nests deeper than {MAX_SCHEMA_JSON_DEPTH} JSON levels")
    try:
        parsed = fastavro.parse_schema(strip_decimals(schema), named_schemas={})
    except Exception as exc:  # fastavro raises SchemaParseException, KeyError, TypeError, ...
        raise MalformedAvroError(f"writer schema is not valid Avro: {type(exc).__name__}: {exc}") from exc
    return parsed, check_writer_schema(parsed)


def _holds_array_or_map(schema: Any) -> bool:
    if isinstance(schema, list):
        return any(_holds_array_or_map(branch) for branch in schema)
    if isinstance(schema, dict):
        kind = schema.get("type")
        return kind in ("array", "map") or (isinstance(kind, dict | list) and _holds_array_or_map(kind))
    return False


def project(parsed_writer: Any) -> Any | None:
    """Reader schema of ``parsed_writer`` without :data:`HISTORY_FIELDS` and without any array or map.

    Returns
    -------
    Any or None
        The parsed reader schema, or ``None`` when it would keep everything (read with the writer).

    Raises
    ------
    UnsupportedAlertError
        fastavro does not accept the projection (cannot happen for a schema it parsed).
    """
    if not isinstance(parsed_writer, dict) or parsed_writer.get("type") not in ("record", "error"):
        return None
    definitions = definitions_of(parsed_writer)
    emitted: set[str] = set()
    dropped = False

    def reader_of(schema: Any, top: bool = False) -> Any:
        nonlocal dropped
        if isinstance(schema, str):
            if schema in definitions and schema not in emitted:  # first defined in a left-out field
                return reader_of(definitions[schema])
            return schema
        if isinstance(schema, list):
            return [reader_of(branch) for branch in schema]
        kind = schema.get("type")
        if is_named(schema):
            emitted.add(schema["name"])
        if kind in ("record", "error"):
            fields = []
            for field in schema["fields"]:
                if (top and field["name"] in HISTORY_FIELDS) or _holds_array_or_map(field["type"]):
                    dropped = True
                    continue
                fields.append({"name": field["name"], "type": reader_of(field["type"])})
            return {"type": kind, "name": schema["name"], "fields": fields}
        if isinstance(kind, dict | list):
            return reader_of(kind)
        return {key: value for key, value in schema.items() if not key.startswith("__")}

    reader = reader_of(parsed_writer, top=True)
    if not dropped:
        return None
    try:
        return fastavro.parse_schema(reader, named_schemas={})
    except Exception as exc:
        raise UnsupportedAlertError(f"no reader schema can skip this writer's arrays: {exc}") from exc


@dataclass(frozen=True, slots=True)
class ContainerSchema:
    """A checked writer schema of a container header.

    Attributes
    ----------
    writer
        The parsed writer schema.
    reader
        Its projection (see :func:`project`), or ``None`` if that keeps everything.
    min_record_bytes
        Fewest bytes one record encodes in (at least 1).
    records
        Reads one record through ``reader``, history skipped as bytes (see :mod:`.skipping`).
    """

    writer: Any
    reader: Any | None
    min_record_bytes: int
    records: RecordReader


class ContainerSchemaCache:
    """Checked, parsed container schemas (or the error of a bad one) keyed by the header's schema text."""

    def __init__(self) -> None:
        self._cache: OrderedDict[bytes, ContainerSchema | AlertDecodeError] = OrderedDict()
        self._text_bytes = 0
        self._lock = threading.Lock()

    def get(self, schema_text: bytes) -> ContainerSchema:
        """Parse and check (once) the writer schema text, and project it.

        Raises
        ------
        AlertDecodeError
            ``MalformedAvroError`` for text that is not an Avro schema, else as
            :func:`check_writer_schema` (the same error again for the same text).
        """
        cached = self._cache.get(schema_text)
        if cached is None:
            cached = self._build(schema_text)
            self._store(schema_text, cached)
        if isinstance(cached, AlertDecodeError):
            raise type(cached)(str(cached))
        return cached

    @staticmethod
    def _build(schema_text: bytes) -> ContainerSchema | AlertDecodeError:
        try:
            schema = json.loads(schema_text)
        except Exception as exc:  # ValueError, UnicodeDecodeError, RecursionError
            return MalformedAvroError(f"container schema is not JSON: {type(exc).__name__}: {exc}")
        try:
            writer, min_record_bytes = parse_outside_schema(schema)
            reader = project(writer)
            return ContainerSchema(writer, reader, min_record_bytes, RecordReader(writer, reader))
        except AlertDecodeError as exc:
            return exc

    def _store(self, schema_text: bytes, entry: ContainerSchema | AlertDecodeError) -> None:
        if len(schema_text) > _MAX_CACHED_TEXT:
            return  # a huge schema is parsed every time rather than pinned in memory
        with self._lock:
            if schema_text in self._cache:
                return
            while self._cache and (
                len(self._cache) >= _MAX_CACHED or self._text_bytes + len(schema_text) > _MAX_CACHED_TOTAL
            ):
                old, _ = self._cache.popitem(last=False)
                self._text_bytes -= len(old)
            self._cache[schema_text] = entry
            self._text_bytes += len(schema_text)
