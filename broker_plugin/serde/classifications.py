"""Our output record: :class:`~broker_plugin.records.Classification` <-> Avro bytes.

The schema lives in ``broker_plugin/schemas/<major>/<minor>/`` (:data:`SCHEMA_VERSION`). Messages are
schemaless Avro bodies, optionally with Confluent framing (0x00 + 4-byte schema id) when the operator
registers the schema in a registry; the Kafka key is the ``diaObjectId`` as UTF-8 text, so all records
of one object land in one partition, in order.
"""

from __future__ import annotations

import importlib.resources
import io
import json
from dataclasses import asdict
from functools import cache
from pathlib import Path
from typing import Any

import fastavro

from broker_plugin.exceptions import MalformedAvroError, WrongMagicByteError
from broker_plugin.records import Classification, ClassProbability
from broker_plugin.serde.rubin import WIRE_HEADER

#: Version of our output schema (directory ``broker_plugin/schemas/1/0``).
SCHEMA_VERSION = "1.0"
_SCHEMA_FILE = "broker_plugin.v1_0.classification.avsc"


def schema_path() -> Path:
    """Path of the output schema file: package data, found wherever the package is installed."""
    return Path(str(importlib.resources.files("broker_plugin").joinpath("schemas", "1", "0", _SCHEMA_FILE)))


@cache
def classification_schema() -> Any:
    """The parsed output schema."""
    return fastavro.parse_schema(json.loads(schema_path().read_text()), named_schemas={})


def classification_key(classification: Classification) -> bytes:
    """Kafka key of a record: its ``diaObjectId`` as UTF-8 text."""
    return str(classification.diaObjectId).encode()


def encode_classification(classification: Classification, schema_id: int | None = None) -> bytes:
    """Serialise a classification; with ``schema_id``, prefixed with the Confluent wire header."""
    buffer = io.BytesIO()
    if schema_id is not None:
        buffer.write(WIRE_HEADER.pack(0, schema_id))
    record = asdict(classification)
    record["survey"] = str(classification.survey)
    fastavro.schemaless_writer(buffer, classification_schema(), record)
    return buffer.getvalue()


def decode_classification(raw: bytes, framed: bool = False) -> Classification:
    """Read a classification back (consumers of our topic, and our tests).

    Raises
    ------
    AlertDecodeError
        Wrong framing or bytes that are not this schema.
    """
    buffer = io.BytesIO(raw)
    if framed:
        if len(raw) < WIRE_HEADER.size or raw[0] != 0:
            raise WrongMagicByteError("classification lacks the Confluent wire header")
        buffer.seek(WIRE_HEADER.size)
    try:
        record = fastavro.schemaless_reader(buffer, classification_schema(), None)
    except Exception as exc:  # fastavro raises several types on bad bytes
        raise MalformedAvroError(f"not a classification record: {exc}") from exc
    record["classes"] = tuple(ClassProbability(**c) for c in record["classes"])
    record["bandsUsed"] = tuple(record["bandsUsed"])
    for key in ("alertTimestamp", "publishTimestamp"):
        value = record[key]
        if value is not None and not isinstance(value, int):
            # fastavro returns timestamp-millis as datetime; keep milliseconds end to end.
            record[key] = round(value.timestamp() * 1000)
    return Classification(**record)
