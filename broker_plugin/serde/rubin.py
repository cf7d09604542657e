"""Rubin alerts: Avro record <-> :class:`~broker_plugin.records.Alert`, and the Confluent wire format.

Names changed across schema versions (3.0 ``midPointTai``/``filterName``/``psFlux``/``decl`` became
``midpointMjdTai``/``band``/``psfFlux``/``dec``; ``alertId`` became ``diaSourceId``); this module is the
one place that knows, so everything downstream uses the current names.
"""

from __future__ import annotations

import functools
import io
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import fastavro

from broker_plugin.config import LimitsSettings
from broker_plugin.exceptions import InvalidPhotometryError, MissingFieldError, UnsupportedAlertError
from broker_plugin.records import Alert, Survey
from broker_plugin.serde import fields
from broker_plugin.serde.history_points import history_of
from broker_plugin.serde.schemas import load_bundled_schema, schema_id_of

#: Confluent wire format: magic byte 0x00, then the schema id as a big-endian 4-byte int.
WIRE_HEADER = struct.Struct(">bI")

_DEFAULT_LIMITS = LimitsSettings()

#: Current field name -> names it had in older schema versions.
_ALIASES: dict[str, tuple[str, ...]] = {
    "midpointMjdTai": ("midPointTai",),
    "band": ("filterName",),
    "psfFlux": ("psFlux",),
    "psfFluxErr": ("psFluxErr",),
    "dec": ("decl",),
}


def _field(record: dict[str, Any], name: str) -> Any:
    """A diaSource field by its current name, whatever version wrote the record."""
    if name in record:
        return record[name]
    for old in _ALIASES.get(name, ()):
        if old in record:
            return record[old]
    return None


_REQUIRED = ("diaSourceId", "diaObjectId", "midpointMjdTai", "band", "ra", "dec")


def rubin_record_to_alert(
    record: dict[str, Any], version: str, limits: LimitsSettings | None = None
) -> Alert:
    """Map one decoded Rubin alert record (any schema version) to a validated :class:`Alert`.

    Rules: ``diaSourceId`` and ``diaObjectId`` integers within int64; ``midpointMjdTai`` finite and
    within :data:`~broker_plugin.records.MJD_RANGE`; ``band`` a string that, stripped and lower-cased, is
    one of :data:`~broker_plugin.records.BANDS` (see :func:`~.fields.rubin_band`); ``ra`` in [0, 360),
    ``dec`` in [-90, 90]; ``psfFlux`` finite or null, ``psfFluxErr`` finite and >= 0 or null;
    ``cutoutDifference`` bytes (at most ``limits.max_cutout_bytes``) or null. ``cutoutScience`` and
    ``cutoutTemplate`` are kept when bytes within the same limit, else None
    (:func:`~.fields.lenient_bytes`): an unusable one costs the frame its plane, never the alert.

    Raises
    ------
    UnsupportedAlertError
        The record has no ``diaSource`` record.
    MissingFieldError
        A field the pipeline needs is null (a solar-system source has no ``diaObjectId``).
    InvalidFieldError
        A subclass naming the field of the wrong type, not finite or out of range.
    ResourceLimitError
        The cutout is larger than the limit.
    """
    limits = limits or _DEFAULT_LIMITS
    source = record.get("diaSource")
    if not isinstance(source, dict):
        raise UnsupportedAlertError("record has no diaSource: not a Rubin alert")
    values = {name: _field(source, name) for name in _REQUIRED}
    missing = [name for name, value in values.items() if value is None]
    if missing:
        raise MissingFieldError(
            f"diaSource {fields.show(values['diaSourceId'])} has null {', '.join(missing)}"
        )
    ra, dec = fields.ra_dec(values["ra"], values["dec"])
    return Alert(
        survey=Survey.RUBIN,
        diaObjectId=fields.identifier(values["diaObjectId"], "diaObjectId"),
        diaSourceId=fields.identifier(values["diaSourceId"], "diaSourceId"),
        midpointMjdTai=fields.mjd(values["midpointMjdTai"], "midpointMjdTai"),
        band=fields.rubin_band(values["band"]),
        ra=ra,
        dec=dec,
        psfFlux=fields.optional_number(_field(source, "psfFlux"), "psfFlux", InvalidPhotometryError),
        psfFluxErr=fields.optional_number(
            _field(source, "psfFluxErr"), "psfFluxErr", InvalidPhotometryError, 0.0
        ),
        cutoutDifference=fields.optional_bytes(
            record.get("cutoutDifference"), "cutoutDifference", limits.max_cutout_bytes
        ),
        schemaVersion=version,
        cutoutScience=fields.lenient_bytes(
            record.get("cutoutScience"), "cutoutScience", limits.max_cutout_bytes
        ),
        cutoutTemplate=fields.lenient_bytes(
            record.get("cutoutTemplate"), "cutoutTemplate", limits.max_cutout_bytes
        ),
        history=history_of(record),
    )


def _placeholder(avro_type: Any) -> Any:
    """A value a required field of ``avro_type`` accepts (null where allowed)."""
    if isinstance(avro_type, list):
        return None if "null" in avro_type else _placeholder(avro_type[0])
    if isinstance(avro_type, dict):
        kind = avro_type.get("type")
        if kind == "array":
            return []
        if kind == "map":
            return {}
        if kind == "enum":
            return avro_type["symbols"][0]
        if kind == "record":
            return {f["name"]: f.get("default", _placeholder(f["type"])) for f in avro_type["fields"]}
        return _placeholder(kind)
    return {"long": 0, "int": 0, "double": 0.0, "float": 0.0, "string": "", "boolean": False}.get(
        avro_type, b"" if avro_type == "bytes" else None
    )


#: The history lists an alert record carries, each an array of records of the type named here.
HISTORY_FIELDS = ("prvDiaSources", "prvDiaForcedSources")


def _named_records(avro_type: Any, found: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every record type defined anywhere in ``avro_type``, by full name (to resolve a reference by name)."""
    if isinstance(avro_type, list):
        for branch in avro_type:
            _named_records(branch, found)
    elif isinstance(avro_type, dict):
        if avro_type.get("type") == "record":
            found[avro_type["name"]] = avro_type
            for f in avro_type["fields"]:
                _named_records(f["type"], found)
        else:
            for key in ("items", "values"):
                _named_records(avro_type.get(key), found)
    return found


@functools.cache
def _history_item_types(version: str) -> dict[str, dict[str, Any]]:
    """The item record type of each history list the alert schema of ``version`` has."""
    parsed = load_bundled_schema(version).parsed
    named = _named_records(parsed, {})
    out = {}
    for f in parsed["fields"]:
        if f["name"] not in HISTORY_FIELDS:
            continue
        branches = f["type"] if isinstance(f["type"], list) else [f["type"]]
        (array,) = (b for b in branches if isinstance(b, dict) and b.get("type") == "array")
        items = array["items"]
        # A type defined earlier in the schema (diaSource) is referred to by its name only.
        out[f["name"]] = named[items] if isinstance(items, str) else items
    return out


def _assign(target: dict[str, Any], values: Mapping[str, Any]) -> None:
    """Set fields of ``target`` by their current name or the older name this version has.

    A None value leaves the field as it is (its placeholder: null where the version allows it, a neutral
    value where it does not); a name the version has under neither name is left out.
    """
    for name, value in values.items():
        if value is None:
            continue
        for candidate in (name, *_ALIASES.get(name, ())):
            if candidate in target:
                target[candidate] = value
                break


def rubin_alert_record(
    version: str,
    *,
    diaSourceId: int,
    diaObjectId: int | None,
    midpointMjdTai: float,
    band: str,
    ra: float,
    dec: float,
    psfFlux: float | None,
    psfFluxErr: float | None,
    cutoutDifference: bytes | None,
    prvDiaSources: Sequence[Mapping[str, Any]] | None = None,
    prvDiaForcedSources: Sequence[Mapping[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Build a complete alert record valid for Rubin schema ``version``.

    Every required field not given is filled with a neutral value; ``extra`` sets any other
    ``diaSource`` field (by its name in that version) or top-level field (e.g. ``cutoutScience``,
    ``cutoutTemplate``: null unless given).

    Parameters
    ----------
    prvDiaSources, prvDiaForcedSources
        The object's earlier detections and forced photometry, one mapping per epoch, by current field
        names (``diaSourceId`` / ``diaForcedSourceId``, ``diaObjectId``, ``midpointMjdTai``, ``band``,
        ``ra``, ``dec``, ``psfFlux``, ``psfFluxErr``, or any field by its name in ``version``). Each
        becomes a complete item record of that version: fields it has under an older name are written
        under that name, fields it lacks (e.g. ``ra``/``dec`` of a forced source before 7.1) are left out,
        the rest are neutral values. None (the default) writes null.

    Returns
    -------
    dict
        A record ``fastavro`` validates against that version's alert schema.

    Raises
    ------
    ValueError
        A history list is given and the version's alert schema has no such field.
    """
    parsed = load_bundled_schema(version).parsed
    top_fields = {f["name"]: f for f in parsed["fields"]}
    record = {name: f.get("default", _placeholder(f["type"])) for name, f in top_fields.items()}
    source_type = top_fields["diaSource"]["type"]
    source = _placeholder(source_type)
    _assign(
        source,
        {
            "diaSourceId": diaSourceId,
            "diaObjectId": diaObjectId,
            "midpointMjdTai": midpointMjdTai,
            "band": band,
            "ra": ra,
            "dec": dec,
            "psfFlux": psfFlux,
            "psfFluxErr": psfFluxErr,
        },
    )
    for name, value in extra.items():
        (source if name in source else record)[name] = value
    item_types = _history_item_types(version)
    for name, history in (("prvDiaSources", prvDiaSources), ("prvDiaForcedSources", prvDiaForcedSources)):
        if history is None:
            continue
        if name not in item_types:
            raise ValueError(f"Rubin schema {version} has no {name}")
        items = []
        for values in history:
            item = _placeholder(item_types[name])
            _assign(item, values)
            items.append(item)
        record[name] = items
    record["diaSource"] = source
    record["alertId" if "alertId" in record else "diaSourceId"] = diaSourceId
    record["cutoutDifference"] = cutoutDifference
    return record


def encode_rubin_message(record: dict[str, Any], version: str) -> bytes:
    """Serialise a record as Rubin does on Kafka: Confluent wire header + schemaless Avro body."""
    buffer = io.BytesIO()
    buffer.write(WIRE_HEADER.pack(0, schema_id_of(version)))
    fastavro.schemaless_writer(buffer, load_bundled_schema(version).parsed, record)
    return buffer.getvalue()
