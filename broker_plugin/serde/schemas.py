"""Rubin alert writer schemas, chosen by the id in each message, never one pinned reader.

Rubin frames every Kafka message as byte 0x00, a 4-byte big-endian schema id, then a schemaless Avro
body; the id is ``major * 100 + minor`` (11.1 -> 1101). Versions differ in field names and nullability
(v10 -> v11 changed nullability), so a body must be read with exactly the schema that wrote it. Every
version that ``lsst-alert-packet`` ships is loaded lazily from its package data; ids it does not ship
are asked of a Confluent Schema Registry when one is configured, and the answer is cached.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import fastavro
import fastavro.schema

from broker_plugin.config import SchemaRegistrySettings
from broker_plugin.exceptions import SchemaRegistryError, UnknownSchemaError
from broker_plugin.serde.projection import project

_VERSION_DIR = re.compile(r"^\d+$")
#: How long an id the registry did not know stays unknown before we ask again [s].
_NEGATIVE_CACHE_S = 60.0


@dataclass(frozen=True, slots=True)
class WriterSchema:
    """A parsed writer schema and what it is.

    Attributes
    ----------
    schema_id
        Registry id (``major * 100 + minor`` for bundled Rubin schemas).
    version
        ``"major.minor"`` for bundled schemas, ``"registry:<id>"`` for fetched ones.
    parsed
        The fastavro-parsed schema.
    reader
        The projected reader schema that skips history arrays (see :mod:`.projection`), or ``None``.
    """

    schema_id: int
    version: str
    parsed: Any
    reader: Any = None


def schema_id_of(version: str) -> int:
    """Registry id of a Rubin schema version (``"11.1"`` -> 1101)."""
    major, minor = (int(p) for p in version.split("."))
    return major * 100 + minor


def _schema_root() -> Path:
    return Path(str(resources.files("lsst.alert.packet").joinpath("schema")))


def bundled_rubin_versions() -> tuple[str, ...]:
    """Every Rubin schema version shipped in ``lsst-alert-packet``, oldest first."""
    root = _schema_root()
    found = []
    for major in root.iterdir():
        if not (major.is_dir() and _VERSION_DIR.match(major.name)):
            continue
        for minor in major.iterdir():
            name = f"lsst.v{major.name}_{minor.name}.alert.avsc"
            if minor.is_dir() and _VERSION_DIR.match(minor.name) and (minor / name).exists():
                found.append((int(major.name), int(minor.name)))
    return tuple(f"{a}.{b}" for a, b in sorted(found))


def latest_rubin_version() -> str:
    """The newest bundled Rubin schema version."""
    return bundled_rubin_versions()[-1]


def load_bundled_schema(version: str) -> WriterSchema:
    """Parse the bundled Rubin alert schema of ``version`` (its named types resolved from its folder)."""
    major, minor = version.split(".")
    path = _schema_root() / major / minor / f"lsst.v{major}_{minor}.alert.avsc"
    if not path.exists():
        raise UnknownSchemaError(f"no bundled Rubin schema {version}")
    parsed = fastavro.schema.load_schema(str(path))
    return WriterSchema(schema_id_of(version), version, parsed, project(parsed))


class SchemaRegistryClient:
    """Minimal Confluent Schema Registry reader: ``GET /schemas/ids/{id}``.

    Parameters
    ----------
    settings
        Registry URL, credentials and timeout.
    """

    def __init__(self, settings: SchemaRegistrySettings) -> None:
        if settings.url is None:
            raise ValueError("schema registry URL is not set")
        self._base = str(settings.url).rstrip("/")
        self._timeout = settings.timeout_s
        self._auth: str | None = None
        if settings.username is not None:
            secret = settings.password.get_secret_value() if settings.password else ""
            token = base64.b64encode(f"{settings.username}:{secret}".encode()).decode()
            self._auth = f"Basic {token}"

    def fetch(self, schema_id: int) -> WriterSchema:
        """Fetch and parse the writer schema with this id.

        Raises
        ------
        UnknownSchemaError
            The registry answered 404.
        SchemaRegistryError
            Unreachable registry or an answer that is not an Avro schema.
        """
        request = urllib.request.Request(  # noqa: S310 - URL is the operator's configured registry
            f"{self._base}/schemas/ids/{schema_id}",
            headers={"Accept": "application/vnd.schemaregistry.v1+json"},
        )
        if self._auth:
            request.add_header("Authorization", self._auth)
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:  # noqa: S310
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise UnknownSchemaError(f"schema id {schema_id} unknown to the registry") from exc
            raise SchemaRegistryError(f"schema registry answered HTTP {exc.code}") from exc
        except (urllib.error.URLError, TimeoutError, OSError, ValueError) as exc:
            raise SchemaRegistryError(f"schema registry unreachable: {exc}") from exc
        try:
            parsed = fastavro.parse_schema(json.loads(body["schema"]), named_schemas={})
        except Exception as exc:  # fastavro raises several types on an invalid schema
            raise SchemaRegistryError(f"registry schema {schema_id} is not valid Avro: {exc}") from exc
        return WriterSchema(schema_id, f"registry:{schema_id}", parsed, project(parsed))


class RubinSchemaStore:
    """Writer schemas by id: bundled first, then the registry; both cached. Thread-safe.

    Parameters
    ----------
    registry
        Optional registry client for ids no bundled schema has.
    """

    def __init__(self, registry: SchemaRegistryClient | None = None) -> None:
        self._registry = registry
        self._bundled = {schema_id_of(v): v for v in bundled_rubin_versions()}
        self._cache: dict[int, WriterSchema] = {}
        self._unknown_until: dict[int, float] = {}
        self._lock = threading.Lock()

    @property
    def known_ids(self) -> tuple[int, ...]:
        """Ids of the bundled schemas."""
        return tuple(sorted(self._bundled))

    def get(self, schema_id: int) -> WriterSchema:
        """The writer schema for ``schema_id``.

        Raises
        ------
        UnknownSchemaError
            Neither bundled nor known to the registry (or no registry configured).
        SchemaRegistryError
            The registry could not be asked.
        """
        cached = self._cache.get(schema_id)
        if cached is not None:
            return cached
        with self._lock:
            if schema_id in self._cache:
                return self._cache[schema_id]
            if schema_id in self._bundled:
                schema = load_bundled_schema(self._bundled[schema_id])
            else:
                schema = self._from_registry(schema_id)
            self._cache[schema_id] = schema
            return schema

    def _from_registry(self, schema_id: int) -> WriterSchema:
        if self._registry is None:
            raise UnknownSchemaError(
                f"schema id {schema_id} is not a bundled Rubin schema "
                f"({min(self._bundled)}..{max(self._bundled)}) and no schema registry is configured"
            )
        if time.monotonic() < self._unknown_until.get(schema_id, 0.0):
            raise UnknownSchemaError(f"schema id {schema_id} unknown to the registry (cached)")
        try:
            return self._registry.fetch(schema_id)
        except UnknownSchemaError:
            self._unknown_until[schema_id] = time.monotonic() + _NEGATIVE_CACHE_S
            raise
