"""Reader schemas that skip what the pipeline never reads, and a cache of parsed writer schemas.

An alert carries its object's history (Rubin ``prvDiaSources``/``prvDiaForcedSources``, ZTF
``prv_candidates``/``fp_hists``): hundreds of records that the image-sequence model does not use (the
frames come from each alert's own cutout). Building Python dicts for them is most of the Avro decoding
time, so alerts are read through a *projected* reader schema without those fields: fastavro then skips
their bytes. Projection is exact for everything kept, and it is only applied where it is valid (a named
type first defined inside a dropped field keeps the full schema).

ZTF sends a whole container file per message, schema text included; parsing that 27 kB schema each time
costs more than the record, so parsed schemas are cached by their text.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import fastavro

#: Top-level alert fields the pipeline never reads (per-object history arrays).
HISTORY_FIELDS = frozenset(
    {"prvDiaSources", "prvDiaForcedSources", "prvDiaNondetectionLimits", "prv_candidates", "fp_hists"}
)
_MAX_CACHED = 64


def project(parsed_writer: Any) -> Any | None:
    """Reader schema of ``parsed_writer`` without :data:`HISTORY_FIELDS`, or ``None`` if not useful."""
    if not isinstance(parsed_writer, dict) or parsed_writer.get("type") != "record":
        return None
    fields = [f for f in parsed_writer["fields"] if f["name"] not in HISTORY_FIELDS]
    if len(fields) == len(parsed_writer["fields"]):
        return None
    reader = {k: v for k, v in parsed_writer.items() if not k.startswith("__")} | {"fields": fields}
    try:
        return fastavro.parse_schema(reader, named_schemas={})
    except Exception:  # a named type defined only in a dropped field: read the full record instead
        return None


class ContainerSchemaCache:
    """Parsed (writer, projected reader) schemas keyed by the schema text of a container header."""

    def __init__(self) -> None:
        self._cache: dict[bytes, tuple[Any, Any | None]] = {}
        self._lock = threading.Lock()

    def get(self, schema_text: bytes) -> tuple[Any, Any | None]:
        """Parse (once) the writer schema text and its projection.

        Raises
        ------
        Exception
            Whatever fastavro or json raise on an invalid schema (the caller types it).
        """
        cached = self._cache.get(schema_text)
        if cached is not None:
            return cached
        writer = fastavro.parse_schema(json.loads(schema_text), named_schemas={})
        entry = (writer, project(writer))
        with self._lock:
            if len(self._cache) >= _MAX_CACHED:
                self._cache.pop(next(iter(self._cache)))
            self._cache[schema_text] = entry
        return entry
