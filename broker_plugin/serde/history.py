"""Photometric history: the few fields of each earlier epoch an alert carries, read from its bytes.

An alert carries its object's earlier epochs as arrays of records (Rubin ``prvDiaSources`` and
``prvDiaForcedSources``; ZTF ``prv_candidates`` and ``fp_hists``) of 14 to 57 fields, of which the model
needs four or five. Building those records as Python dicts is what made decoding slow (see
:mod:`.skipping`), so the history is read from the bytes, one entry at a time, keeping only the wanted
fields' bytes and skipping the others:

- **Fast path** (a schema's records once :class:`~.skipping.SkippingReader` is built): one regular
  expression per entry, the skipping reader's item pattern with a capture group around each wanted field
  (:meth:`HistoryPlan.extractors`); the captured bytes are decoded column by column afterwards (floats in
  one ``numpy.frombuffer``, :mod:`.history_points`).
- **Walker** (a schema's first records, and any record the patterns do not match, e.g. a string longer
  than :data:`~.skipping.MAX_SHORT_TEXT`): a plain Avro walk in Python over the whole record
  (:meth:`HistoryPlan.walk`), no pattern to compile, giving the same bytes.

Both keep at most :data:`MAX_HISTORY_POINTS` entries per alert (in the order of the bytes, sources in
schema order) and skip the rest: a hostile count costs time bounded by the message's bytes (every entry is
at least one byte: :func:`~.projection.check_writer_schema`) and memory bounded by the cap.

:mod:`.history_points` turns the captured bytes into a :class:`~broker_plugin.records.PhotometryHistory`.
A history is side information: one that cannot be read costs the alert its history, never the alert.
The record then carries a :class:`HistoryMissing` reason instead (counted by the service as
``broker_plugin_cutout_planes_missing_total{plane="history",reason}``); bytes so broken that the record
itself cannot be framed are rejected by the record's own read, as before.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from broker_plugin.serde.skipping import (
    MAX_PATTERN_BYTES,
    NoMatchError,
    definitions_of,
    item_pattern,
    read_varint,
)

#: Most history entries kept per alert (all sources together); the others are skipped.
MAX_HISTORY_POINTS = 4096
#: Key of the extracted history in a decoded record: not an Avro name, so no field can collide with it.
HISTORY_KEY = "@history"


class HistoryMissing(enum.StrEnum):
    """Why an alert decoded with history on has none (``Alert.history is None``)."""

    #: The writer schema has no history array this module reads.
    ABSENT = "absent"
    #: A history array is not an array of records with the needed fields of usable types.
    UNSUPPORTED = "unsupported_schema"
    #: The history's bytes do not decode (the rest of the record does).
    MALFORMED = "malformed"


_RUBIN_ROLES = {
    "time": ("midpointMjdTai", "midPointTai"),
    "band": ("band", "filterName"),
    "flux": ("psfFlux", "psFlux"),
    "err": ("psfFluxErr", "psFluxErr"),
}
#: History array -> role -> the field names it has had (first found wins).
SOURCES: dict[str, dict[str, tuple[str, ...]]] = {
    "prvDiaSources": _RUBIN_ROLES,
    "prvDiaForcedSources": _RUBIN_ROLES,
    "prv_candidates": {
        "jd": ("jd",),
        "fid": ("fid",),
        "magpsf": ("magpsf",),
        "sigmapsf": ("sigmapsf",),
        "isdiffpos": ("isdiffpos",),
        "diffmaglim": ("diffmaglim",),
        "exptime": ("exptime",),
    },
    "fp_hists": {
        "jd": ("jd",),
        "fid": ("fid",),
        "forcediffimflux": ("forcediffimflux",),
        "forcediffimfluxunc": ("forcediffimfluxunc",),
        "magzpsci": ("magzpsci",),
        "exptime": ("exptime",),
    },
}
#: Roles an entry may lack (ZTF's ``prv_candidates`` have no ``exptime``: the default is used).
_OPTIONAL_ROLES = frozenset({"exptime"})
#: Roles read as text; every other role is a number.
TEXT_ROLES = frozenset({"band", "isdiffpos"})
_NUMBER_TYPES = frozenset({"boolean", "int", "long", "float", "double"})
_TEXT_TYPES = frozenset({"string"})
_VALUE_TYPES = _NUMBER_TYPES | _TEXT_TYPES | {"null"}
_MAX_BRANCHES = 64  # union indexes of one byte, as the skipping patterns have


# --- what a writer schema's history looks like ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HistoryColumn:
    """One wanted field of an entry: its role and its value's type (branch names, one if not a union)."""

    role: str
    index: int
    branches: tuple[str, ...]
    union: bool


@dataclass(frozen=True, slots=True)
class _Source:
    """One history array of a writer schema: where it is and which fields of its entries are read."""

    name: str
    field_index: int
    array_branches: tuple[bool, ...]  # per union branch: an array (True) or null; () if not a union
    item: dict[str, Any]
    columns: tuple[HistoryColumn, ...]


@dataclass(slots=True)
class HistorySink:
    """The captured bytes of one record's history entries, by source, at most ``room`` in all."""

    rows: dict[str, list[tuple[bytes, ...]]] = field(default_factory=dict)
    room: int = MAX_HISTORY_POINTS


@dataclass(frozen=True, slots=True)
class RawHistory:
    """A record's history as read from its bytes: per source, the columns' captured bytes per entry."""

    rows: dict[str, list[tuple[bytes, ...]]]
    columns: dict[str, tuple[HistoryColumn, ...]]


def _resolve(schema: Any, definitions: dict[str, Any]) -> Any:
    """A type with named references and nested type expressions replaced by their definitions."""
    for _ in range(64):
        if isinstance(schema, str) and schema in definitions:
            schema = definitions[schema]
        elif (
            isinstance(schema, dict)
            and isinstance(schema.get("type"), dict | list | str)
            and (schema.get("type") not in ("record", "error", "enum", "fixed", "array", "map"))
        ):
            schema = schema["type"]
        else:
            return schema
    return schema


def _value_branches(schema: Any, definitions: dict[str, Any]) -> tuple[tuple[str, ...], bool] | None:
    """A wanted field's type as branch names (and whether a union), or None if not a plain value."""
    schema = _resolve(schema, definitions)
    union = isinstance(schema, list)
    branches = schema if union else [schema]
    if union and len(branches) > _MAX_BRANCHES:
        return None
    names = tuple(_resolve(b, definitions) for b in branches)
    if not all(isinstance(n, str) and n in _VALUE_TYPES for n in names):
        return None
    return names, union  # type: ignore[return-value]


class HistoryPlan:
    """How to read the history of records of one writer schema.

    Build with :meth:`of`; :attr:`missing` is set when the schema's history cannot be read (then every
    record of it carries that reason).
    """

    def __init__(
        self, sources: tuple[_Source, ...], definitions: dict[str, Any], missing: HistoryMissing | None
    ) -> None:
        self.sources = sources
        self.missing = missing
        self._definitions = definitions
        self._by_index = {source.field_index: source for source in sources}
        self._walkers: list[Callable[[bytes, int, HistorySink], int]] | None = None

    @classmethod
    def of(cls, writer: Any) -> HistoryPlan:
        """The plan of a parsed writer schema (never raises: an unusable history gives :attr:`missing`)."""
        if not isinstance(writer, dict) or writer.get("type") not in ("record", "error"):
            return cls((), {}, HistoryMissing.ABSENT)
        definitions = definitions_of(writer)
        sources = []
        for index, top in enumerate(writer["fields"]):
            if top["name"] not in SOURCES:
                continue
            source = cls._source(top["name"], index, top["type"], definitions)
            if source is None:
                return cls((), definitions, HistoryMissing.UNSUPPORTED)
            sources.append(source)
        return cls(tuple(sources), definitions, None if sources else HistoryMissing.ABSENT)

    @staticmethod
    def _source(name: str, index: int, schema: Any, definitions: dict[str, Any]) -> _Source | None:
        schema = _resolve(schema, definitions)
        branches = schema if isinstance(schema, list) else [schema]
        kinds, item = [], None
        for branch in (_resolve(b, definitions) for b in branches):
            if branch == "null" and isinstance(schema, list):
                kinds.append(False)
                continue
            if not (isinstance(branch, dict) and branch.get("type") == "array"):
                return None
            this = _resolve(branch["items"], definitions)
            if item is not None and this is not item:
                return None  # two arrays of different entries: no real alert has that
            item = this
            kinds.append(True)
        if not (isinstance(item, dict) and item.get("type") in ("record", "error")):
            return None
        if isinstance(schema, list) and len(schema) > _MAX_BRANCHES:
            return None
        names = [f["name"] for f in item["fields"]]
        columns = []
        for role, candidates in SOURCES[name].items():
            found = next((c for c in candidates if c in names), None)
            if found is None:
                if role in _OPTIONAL_ROLES:
                    continue
                return None
            position = names.index(found)
            kind = _value_branches(item["fields"][position]["type"], definitions)
            wanted = _TEXT_TYPES if role in TEXT_ROLES else _NUMBER_TYPES
            if kind is None or not any(b in wanted for b in kind[0]):
                return None  # a band that is a number, a flux that is text: wrong types
            columns.append(HistoryColumn(role, position, kind[0], kind[1]))
        array_branches = tuple(kinds) if isinstance(schema, list) else ()
        # In the entry's field order: the order of the capture groups, and of every row's values.
        columns.sort(key=lambda column: column.index)
        return _Source(name, index, array_branches, item, tuple(columns))

    # --- fast path: patterns with capture groups ----------------------------------------------------

    def extractors(self) -> dict[str, Callable[[bytes, int, Any], int]] | None:
        """Per history field, a step that reads its wanted bytes into a :class:`HistorySink`.

        Each step skips the rest of the field's bytes (for
        :meth:`~.skipping.SkippingReader.read_extracting`). None where a pattern cannot be made.
        """
        out = {}
        for source in self.sources:
            parts = []
            wanted = {column.index for column in source.columns}
            for position, item_field in enumerate(source.item["fields"]):
                part = item_pattern(item_field["type"], self._definitions)
                if part is None:
                    return None
                parts.append(b"(" + part + b")" if position in wanted else part)
            pattern = b"".join(parts)
            if len(pattern) > MAX_PATTERN_BYTES:
                return None
            out[source.name] = _pattern_extractor(source, re.compile(pattern, re.DOTALL))
        return out

    # --- walker: plain Avro in Python ------------------------------------------------------------------

    def walk(self, data: bytes, pos: int, writer: Any, sink: HistorySink) -> int:
        """Walk one whole record of ``writer`` from ``pos``, reading its history into ``sink``.

        Raises
        ------
        NoMatchError
            The bytes are not a record of the schema.
        """
        if self._walkers is None:
            self._walkers = [
                _walk_source(self._by_index[i], self._definitions)
                if i in self._by_index
                else _sink_ignoring(_walker(f["type"], self._definitions, 0))
                for i, f in enumerate(writer["fields"])
            ]
        for step in self._walkers:
            pos = step(data, pos, sink)
        if pos > len(data):
            raise NoMatchError
        return pos

    def raw(self, sink: HistorySink) -> RawHistory:
        """What ``sink`` collected, with the columns to decode it."""
        return RawHistory(sink.rows, {source.name: source.columns for source in self.sources})


def _array_branch(source: _Source, data: bytes, pos: int) -> tuple[bool, int]:
    """Whether the history field at ``pos`` holds an array (not null), and where its value starts."""
    if not source.array_branches:
        return True, pos
    if pos >= len(data) or data[pos] & 1 or data[pos] >> 1 >= len(source.array_branches):
        raise NoMatchError
    return source.array_branches[data[pos] >> 1], pos + 1


def _blocks(data: bytes, pos: int, item: Callable[[int], int]) -> int:
    """Walk an array's blocks from ``pos``, calling ``item(pos) -> pos`` per entry; the end position."""
    while True:
        count, pos = read_varint(data, pos)
        if count == 0:
            return pos
        end = None
        if count < 0:  # a block that states its byte size: its entries must fill it exactly
            count = -count
            size, pos = read_varint(data, pos)
            end = pos + size
            if size < 0 or end > len(data):
                raise NoMatchError
        for _ in range(count):  # every entry takes at least one byte: bounded by the data
            after = item(pos)
            if after <= pos or after > len(data):
                raise NoMatchError
            pos = after
        if end is not None and pos != end:
            raise NoMatchError


def _pattern_extractor(source: _Source, pattern: re.Pattern[bytes]) -> Callable[[bytes, int, Any], int]:
    match = pattern.match
    name = source.name

    def extract(data: bytes, pos: int, sink: HistorySink) -> int:
        is_array, pos = _array_branch(source, data, pos)
        rows = sink.rows.setdefault(name, [])
        if not is_array:
            return pos

        def item(at: int) -> int:
            found = match(data, at)
            if found is None:
                raise NoMatchError
            if sink.room > 0:
                sink.room -= 1
                rows.append(found.groups())  # type: ignore[arg-type]
            return found.end()

        return _blocks(data, pos, item)

    return extract


Walk = Callable[[bytes, int], int]


def _sink_ignoring(walk: Walk) -> Callable[[bytes, int, HistorySink], int]:
    return lambda data, pos, sink: walk(data, pos)


def _walk_source(source: _Source, definitions: dict[str, Any]) -> Callable[[bytes, int, HistorySink], int]:
    steps = [_walker(f["type"], definitions, 0) for f in source.item["fields"]]
    wanted = [column.index for column in source.columns]
    name = source.name

    def walk(data: bytes, pos: int, sink: HistorySink) -> int:
        is_array, pos = _array_branch(source, data, pos)
        rows = sink.rows.setdefault(name, [])
        if not is_array:
            return pos

        def item(at: int) -> int:
            bounds = []
            for step in steps:
                after = step(data, at)
                bounds.append((at, after))
                at = after
            if at <= len(data) and sink.room > 0:
                sink.room -= 1
                rows.append(tuple(data[slice(*bounds[i])] for i in wanted))
            return at

        return _blocks(data, pos, item)

    return walk


_FIXED_WIDTH = {"null": 0, "boolean": 1, "float": 4, "double": 8}


def _walker(schema: Any, definitions: dict[str, Any], depth: int) -> Walk:
    """A plain Python walk over one value of ``schema``: ``walk(data, pos)`` -> the position after it.

    Positions may run past the data's end inside a value (a hostile length); every array entry and the
    whole record are checked against it, and a varint read past it raises :class:`NoMatchError`.
    """
    if depth > 64:
        raise NoMatchError
    schema = _resolve(schema, definitions)
    if isinstance(schema, str):
        if schema in _FIXED_WIDTH:
            width = _FIXED_WIDTH[schema]
            return lambda data, pos: pos + width
        if schema in ("int", "long"):
            return lambda data, pos: read_varint(data, pos)[1]
        if schema in ("string", "bytes"):

            def text(data: bytes, pos: int) -> int:
                size, pos = read_varint(data, pos)
                if size < 0:
                    raise NoMatchError
                return pos + size

            return text
        raise NoMatchError
    if isinstance(schema, list):
        branches = [_walker(branch, definitions, depth + 1) for branch in schema]

        def union(data: bytes, pos: int) -> int:
            index, pos = read_varint(data, pos)
            if not 0 <= index < len(branches):
                raise NoMatchError
            return branches[index](data, pos)

        return union
    kind = schema.get("type") if isinstance(schema, dict) else None
    if kind in ("record", "error"):
        fields = [_walker(f["type"], definitions, depth + 1) for f in schema["fields"]]

        def record(data: bytes, pos: int) -> int:
            for step in fields:
                pos = step(data, pos)
            return pos

        return record
    if kind == "enum":
        return lambda data, pos: read_varint(data, pos)[1]
    if kind == "fixed":
        size = int(schema["size"])
        return lambda data, pos: pos + size
    if kind in ("array", "map"):
        value = _walker(schema["items"] if kind == "array" else schema["values"], definitions, depth + 1)
        key = _walker("string", definitions, depth + 1)
        entry = value if kind == "array" else (lambda data, pos: value(data, key(data, pos)))
        return lambda data, pos: _blocks(data, pos, lambda at: entry(data, at))
    raise NoMatchError
