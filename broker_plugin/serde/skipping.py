"""Read an alert record while skipping its history arrays as bytes, not as Avro values.

The projected reader (:mod:`.projection`) already keeps fastavro from building Python objects for the
history, but fastavro still walks it value by value: a ZTF alert's ~130 ``prv_candidates`` of 57 fields
each are ~7,500 values and 2 ms, most of the decoding time. This module skips them 6-7 times faster
(``benchmarks/bench_decode.py``: a ZTF record in ~0.3 ms instead of ~2.2 ms).

How: the Avro encoding of a record made only of primitives, unions, enums, fixed and nested records is
a regular language given its schema: a double is any 8 bytes, a long a varint (bytes >= 0x80 then one
< 0x80), a union branch index one byte, a string a length then that many bytes. The only part a regular
expression cannot count is a length read from the data, so strings and bytes of up to
:data:`MAX_SHORT_TEXT` bytes (one- and two-byte lengths) are spelled out as an alternation of every
length, and an array is a Python loop over its blocks that matches one item pattern per item. The
pattern is deterministic (every alternative starts with a different byte), so a match is the one way to
parse the bytes: it ends exactly where fastavro's skip would. Where it does not match (a longer string,
a non-canonical varint, corrupt bytes) the whole record is read again by fastavro through the projected
reader, so the result is always exactly fastavro's, and errors are fastavro's too.

The fields that are kept are read by fastavro as before, in runs between the skipped fields, each run
through a standalone record schema of those fields (named types defined elsewhere are inlined).

The fast reader is built only where it applies: every skipped top-level field is an array, map or
union of them whose items have a pattern, and no kept field holds an array or map. It is built from the
:attr:`RecordReader.FAST_AFTER`-th record of a schema on, and patterns are capped at
:data:`MAX_PATTERN_BYTES`: compiling costs ~2.5 ms per kB of pattern (ZTF's 12 kB: 27 ms, once), so a
sender who changes the writer schema every few messages cannot make each message pay a compile.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Mapping
from typing import Any

import fastavro

#: Strings and bytes up to this long are skipped by the pattern; longer ones make the record fall back.
MAX_SHORT_TEXT = 255
#: Largest pattern compiled for one item type [bytes of regular expression]: ~160 ms of compile at most.
MAX_PATTERN_BYTES = 64_000
_VARINT = rb"[\x80-\xff]{0,9}[\x00-\x7f]"
_FIXED_PATTERNS = {
    "null": b"",
    "boolean": b".",
    "int": _VARINT,
    "long": _VARINT,
    "float": b".{4}",
    "double": b".{8}",
}
_MAX_UNION_BRANCHES = 64  # union indexes of one varint byte
_MAX_FIXED = 65_535


_NAMED = ("record", "error", "enum", "fixed")


def is_named(schema: Any) -> bool:
    """Whether a parsed type is the definition of a named type."""
    return isinstance(schema, dict) and schema.get("type") in _NAMED


def definitions_of(schema: Any, out: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every named type defined in a parsed schema, by full name."""
    out = {} if out is None else out
    if isinstance(schema, list):
        for branch in schema:
            definitions_of(branch, out)
    elif isinstance(schema, dict):
        if is_named(schema):
            out.setdefault(schema["name"], schema)
        for field in schema.get("fields", ()) if schema.get("type") in ("record", "error") else ():
            definitions_of(field["type"], out)
        for key in ("items", "values", "type"):
            if isinstance(schema.get(key), dict | list):
                definitions_of(schema[key], out)
    return out


def standalone(schema: Any, definitions: dict[str, Any], defined: set[str]) -> Any:
    """A copy of a parsed type in which every named type not in ``defined`` is defined where first used.

    ``defined`` collects the names defined on the way, so that types copied one after the other into one
    new schema define each name once.
    """
    if isinstance(schema, str):
        if schema in definitions and schema not in defined:
            return standalone(definitions[schema], definitions, defined)
        return schema
    if isinstance(schema, list):
        return [standalone(branch, definitions, defined) for branch in schema]
    if not isinstance(schema, dict):
        return schema
    if is_named(schema):
        defined.add(schema["name"])
    copy = {key: value for key, value in schema.items() if not key.startswith("__")}
    if schema.get("type") in ("record", "error"):
        copy["fields"] = [
            {"name": field["name"], "type": standalone(field["type"], definitions, defined)}
            for field in schema["fields"]
        ]
    for key in ("items", "values"):
        if key in schema:
            copy[key] = standalone(schema[key], definitions, defined)
    if not is_named(schema) and (
        isinstance(schema.get("type"), dict | list) or schema.get("type") in definitions
    ):
        copy["type"] = standalone(schema["type"], definitions, defined)  # a nested type expression
    return copy


class NoMatchError(Exception):
    """The bytes do not match the pattern: read the record with fastavro instead."""


def _byte(value: int) -> bytes:
    return re.escape(bytes([value]))


def _text_pattern() -> bytes:
    """Avro ``string``/``bytes`` of 0..MAX_SHORT_TEXT bytes: zig-zag length varint, then the bytes."""
    short = [_byte(2 * n) + (b".{%d}" % n if n else b"") for n in range(64)]
    by_first_byte: dict[int, list[bytes]] = {}
    for n in range(64, MAX_SHORT_TEXT + 1):
        zigzag = 2 * n
        by_first_byte.setdefault((zigzag & 0x7F) | 0x80, []).append(_byte(zigzag >> 7) + b".{%d}" % n)
    long = [_byte(first) + b"(?>" + b"|".join(rest) + b")" for first, rest in by_first_byte.items()]
    return b"(?>" + b"|".join(short + long) + b")"


_TEXT = _text_pattern()


def item_pattern(schema: Any, definitions: dict[str, Any], depth: int = 0) -> bytes | None:
    """Regular expression (bytes) of one encoded value of ``schema``, or None if it has none."""
    if depth > 64:
        return None
    if isinstance(schema, str):
        if schema in _FIXED_PATTERNS:
            return _FIXED_PATTERNS[schema]
        if schema in ("string", "bytes"):
            return _TEXT
        if schema in definitions:
            return item_pattern(definitions[schema], definitions, depth + 1)
        return None
    if isinstance(schema, list):
        if len(schema) > _MAX_UNION_BRANCHES:
            return None
        branches = [item_pattern(branch, definitions, depth + 1) for branch in schema]
        if any(branch is None for branch in branches):
            return None
        # Alternatives start with distinct index bytes, so their order only matters for speed: a null
        # branch (the one empty alternative) goes last, as history values are mostly not null.
        order = sorted(range(len(schema)), key=lambda i: schema[i] == "null")
        return b"(?>" + b"|".join(_byte(2 * i) + branches[i] for i in order) + b")"  # type: ignore[operator]
    if not isinstance(schema, dict):
        return None
    kind = schema.get("type")
    if kind in ("record", "error"):
        parts = [item_pattern(field["type"], definitions, depth + 1) for field in schema["fields"]]
        return None if any(part is None for part in parts) else b"".join(parts)  # type: ignore[arg-type]
    if kind == "enum":
        return _VARINT
    if kind == "fixed":
        size = schema.get("size")
        return b".{%d}" % size if isinstance(size, int) and 0 <= size <= _MAX_FIXED else None
    if kind in ("array", "map"):
        return None
    return item_pattern(kind, definitions, depth + 1)  # a primitive with a logical type


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """A zig-zag varint at ``pos`` and the position after it."""
    shift = value = 0
    for _ in range(10):
        if pos >= len(data):
            raise NoMatchError
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return (value >> 1) ^ -(value & 1), pos
        shift += 7
    raise NoMatchError


Skip = Callable[[bytes, int], int]
#: Skips one field's value like a :data:`Skip`, putting what it reads into its third argument (a sink).
Extract = Callable[[bytes, int, Any], int]


def _blocks_skipper(item: re.Pattern[bytes]) -> Skip:
    """Skip an array (or map) whose items (or key + value) match ``item``."""
    match = item.match

    def skip(data: bytes, pos: int) -> int:
        while True:
            count, pos = read_varint(data, pos)
            if count == 0:
                return pos
            if count < 0:  # a block that states its byte size: jump, as fastavro does
                size, pos = read_varint(data, pos)
                if size < 0 or pos + size > len(data):
                    raise NoMatchError
                pos += size
                continue
            for _ in range(count):  # each item is at least one byte: bounded by the data
                found = match(data, pos)
                if found is None:
                    raise NoMatchError
                pos = found.end()

    return skip


def _compile(pattern: bytes | None) -> re.Pattern[bytes] | None:
    if pattern is None or len(pattern) > MAX_PATTERN_BYTES:
        return None
    return re.compile(pattern, re.DOTALL)


def field_skipper(schema: Any, definitions: dict[str, Any]) -> Skip | None:
    """How to skip one top-level field's value, or None if this module cannot."""
    if isinstance(schema, str) and schema in definitions:
        return field_skipper(definitions[schema], definitions)
    if isinstance(schema, list):
        if len(schema) > _MAX_UNION_BRANCHES:
            return None
        branches = [field_skipper(branch, definitions) for branch in schema]
        if any(branch is None for branch in branches):
            return None

        def skip_union(data: bytes, pos: int) -> int:
            if pos >= len(data) or data[pos] >= 2 * len(branches) or data[pos] & 1:
                raise NoMatchError
            return branches[data[pos] >> 1](data, pos + 1)  # type: ignore[misc]

        return skip_union
    kind = schema.get("type") if isinstance(schema, dict) else None
    if kind == "array":
        item = _compile(item_pattern(schema["items"], definitions))
        return None if item is None else _blocks_skipper(item)
    if kind == "map":
        value = item_pattern(schema["values"], definitions)
        entry = _compile(None if value is None else _TEXT + value)
        return None if entry is None else _blocks_skipper(entry)
    single = _compile(item_pattern(schema, definitions))
    if single is None:
        return None

    def skip_value(data: bytes, pos: int) -> int:
        found = single.match(data, pos)
        if found is None:
            raise NoMatchError
        return found.end()

    return skip_value


def _holds_array_or_map(schema: Any, definitions: dict[str, Any], seen: frozenset[str] = frozenset()) -> bool:
    if isinstance(schema, str):
        if schema in definitions and schema not in seen:
            return _holds_array_or_map(definitions[schema], definitions, seen | {schema})
        return False
    if isinstance(schema, list):
        return any(_holds_array_or_map(branch, definitions, seen) for branch in schema)
    if not isinstance(schema, dict):
        return False
    kind = schema.get("type")
    if kind in ("array", "map"):
        return True
    if kind in ("record", "error"):
        inner = seen | {schema["name"]}
        return any(_holds_array_or_map(field["type"], definitions, inner) for field in schema["fields"])
    return isinstance(kind, dict | list) and _holds_array_or_map(kind, definitions, seen)


class SkippingReader:
    """Reads records of one writer schema exactly as fastavro would through its projected reader.

    Build with :meth:`build`, which returns None where the fast path does not apply.
    """

    def __init__(self, writer: Any, reader: Any, plan: list[Any], skipped: list[str | None]) -> None:
        self._writer = writer
        self._reader = reader
        self._plan = plan
        #: The name of the field each skipping step of the plan skips (None for a read segment).
        self._skipped = skipped
        #: Records read by fastavro because the pattern did not match (none, for real alerts).
        self.fallbacks = 0

    @classmethod
    def build(cls, writer: Any, reader: Any | None) -> SkippingReader | None:
        """The fast reader of ``writer`` whose projection is ``reader``, or None if it would not help."""
        if reader is None or not isinstance(writer, dict) or writer.get("type") not in ("record", "error"):
            return None
        definitions = definitions_of(writer)
        kept_names = {field["name"] for field in reader["fields"]}
        plan: list[Any] = []
        skipped: list[str | None] = []
        run: list[dict[str, Any]] = []
        for field in writer["fields"]:
            if field["name"] in kept_names:
                if _holds_array_or_map(field["type"], definitions):
                    return None  # the projection reads part of it: leave it to fastavro
                run.append(field)
                continue
            if run:
                plan.append(cls._segment(run, definitions, len(plan)))
                skipped.append(None)
                run = []
            skip = field_skipper(field["type"], definitions)
            if skip is None:
                return None
            plan.append(skip)
            skipped.append(field["name"])
        if run:
            plan.append(cls._segment(run, definitions, len(plan)))
            skipped.append(None)
        return cls(writer, reader, plan, skipped)

    @staticmethod
    def _segment(fields: list[dict[str, Any]], definitions: dict[str, Any], index: int) -> Any:
        """A parsed standalone record schema of consecutive kept ``fields`` (its own named types)."""
        defined: set[str] = set()
        record = {
            "type": "record",
            "name": f"skipping_reader_part_{index}",
            "fields": [
                {"name": f["name"], "type": standalone(f["type"], definitions, defined)} for f in fields
            ],
        }
        return fastavro.parse_schema(record, named_schemas={})

    def read(self, buffer: io.BytesIO, data: bytes) -> dict[str, Any]:
        """The next record from ``buffer`` (whose bytes are ``data``), history skipped.

        Raises
        ------
        Exception
            Whatever fastavro raises on bytes that are not a record of the writer schema.
        """
        return self.read_extracting(buffer, data, None, None)[0]

    def read_extracting(
        self, buffer: io.BytesIO, data: bytes, extractors: Mapping[str, Extract] | None, sink: Any
    ) -> tuple[dict[str, Any], bool]:
        """As :meth:`read`, with ``extractors[name]`` in place of the skip of field ``name``.

        An extractor skips the same bytes as the skip it replaces, putting what it reads into ``sink``.

        Returns
        -------
        tuple
            The record, and whether it was read by fastavro because a pattern did not match (then
            ``sink`` holds whatever the extractors put into it before, to be discarded).
        """
        start = buffer.tell()
        record: dict[str, Any] = {}
        try:
            pos = start
            for step, name in zip(self._plan, self._skipped, strict=True):
                if not callable(step):
                    buffer.seek(pos)
                    record.update(fastavro.schemaless_reader(buffer, step, None))
                    pos = buffer.tell()
                elif extractors is not None and name in extractors:
                    pos = extractors[name](data, pos, sink)
                else:
                    pos = step(data, pos)
            buffer.seek(pos)
            return record, False
        except NoMatchError:
            self.fallbacks += 1
            buffer.seek(start)
            return fastavro.schemaless_reader(buffer, self._writer, self._reader), True


class RecordReader:
    """Reads records of one writer schema through its projection, skipping history as bytes once worth it.

    The first :attr:`FAST_AFTER` records are read by fastavro alone; then a :class:`SkippingReader` is
    built (patterns compiled: 27 ms for ZTF's schema, at most ~160 ms) and used for every later record of
    this schema. A schema seen a few times - as a hostile sender can make every message's - never pays the
    compile, and one that pays it has been read at least this many times.

    Parameters
    ----------
    writer
        The parsed writer schema.
    reader
        Its projection, or None to read whole records.
    """

    #: Records read by fastavro alone before the skipping reader is built.
    FAST_AFTER = 8

    def __init__(self, writer: Any, reader: Any | None) -> None:
        self.writer = writer
        self.reader = reader
        self._reads = 0
        self._decided = False
        self._fast: SkippingReader | None = None
        self._history: Any = None  # history.HistoryPlan, built on the first read with history
        self._extractors: dict[str, Extract] | None = None
        self._extractors_built = False

    def _fast_reader(self) -> SkippingReader | None:
        """The skipping reader once this schema has been read :attr:`FAST_AFTER` times, else None."""
        if self.reader is None:
            return None
        if not self._decided:
            self._reads += 1
            if self._reads > self.FAST_AFTER:
                self._fast = SkippingReader.build(self.writer, self.reader)
                self._decided = True
        return self._fast

    def read(
        self, buffer: io.BytesIO, data: bytes, *, skip_bytes: bool = True, history: bool = False
    ) -> dict[str, Any]:
        """The next record from ``buffer`` (whose bytes are ``data``), as fastavro's projected read gives.

        Parameters
        ----------
        buffer
            Positioned at the record.
        data
            All of ``buffer``'s bytes.
        skip_bytes
            Use the skipping reader when built (False: fastavro alone, the reference).
        history
            Also read the photometric history (:mod:`.history`) into the record's
            :data:`~.history.HISTORY_KEY`: a :class:`~.history.RawHistory`, or the
            :class:`~.history.HistoryMissing` reason it could not be read. False: skipped, as ever.

        Raises
        ------
        Exception
            Whatever fastavro raises on bytes that are not a record of the writer schema.
        """
        if history:
            return self._read_with_history(buffer, data, skip_bytes)
        fast = self._fast_reader() if skip_bytes else None
        if fast is not None:
            return fast.read(buffer, data)
        return fastavro.schemaless_reader(buffer, self.writer, self.reader)

    def _read_with_history(self, buffer: io.BytesIO, data: bytes, skip_bytes: bool) -> dict[str, Any]:
        # Imported here: history builds on this module's patterns, and this module is imported first.
        from broker_plugin.serde.history import HISTORY_KEY, HistoryMissing, HistoryPlan, HistorySink

        if self._history is None:
            self._history = HistoryPlan.of(self.writer)
        plan = self._history
        if plan.missing is not None:
            record = self.read(buffer, data, skip_bytes=skip_bytes)
            record[HISTORY_KEY] = plan.missing
            return record
        start = buffer.tell()
        fast = self._fast_reader() if skip_bytes else None
        if fast is not None and not self._extractors_built:
            self._extractors = plan.extractors()  # compiled once, with the skipping reader
            self._extractors_built = True
        if fast is not None and self._extractors is not None:
            sink = HistorySink()
            record, fell_back = fast.read_extracting(buffer, data, self._extractors, sink)
            if not fell_back:
                record[HISTORY_KEY] = plan.raw(sink)
                return record
        else:
            record = fastavro.schemaless_reader(buffer, self.writer, self.reader)
        # The record is read (framing errors raised above); its history by the plain walk.
        sink = HistorySink()
        try:
            end = plan.walk(data, start, self.writer, sink)
        except (NoMatchError, IndexError, ValueError):  # bytes the schema's walk cannot frame
            end = -1
        record[HISTORY_KEY] = plan.raw(sink) if end == buffer.tell() else HistoryMissing.MALFORMED
        return record
