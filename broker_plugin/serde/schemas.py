"""Rubin alert writer schemas, chosen by the id in each message, never one pinned reader.

Rubin frames every Kafka message as byte 0x00, a 4-byte big-endian schema id, then a schemaless Avro
body; the id is ``major * 100 + minor`` (11.1 -> 1101). Versions differ in field names and nullability
(v10 -> v11 changed nullability), so a body must be read with exactly the schema that wrote it. Every
version that ``lsst-alert-packet`` ships is loaded lazily from its package data; ids it does not ship
are asked of a Confluent Schema Registry when one is configured, and the answer is cached. Registry
schemas come from outside: they are checked like a container's (:mod:`.projection`), and the registry is
asked under a time budget, with back-off and a negative cache, so that it cannot stall the consumer.
"""

from __future__ import annotations

import base64
import functools
import json
import queue
import re
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import fastavro
import fastavro.schema

from broker_plugin.config import SchemaRegistrySettings
from broker_plugin.exceptions import (
    AlertDecodeError,
    SchemaRegistryError,
    UnknownSchemaError,
    UnsupportedAlertError,
)
from broker_plugin.serde.projection import parse_outside_schema, project
from broker_plugin.serde.skipping import RecordReader

_VERSION_DIR = re.compile(r"^\d+$")
#: A request is not started with less of the lookup budget left than this [s].
_MIN_REQUEST_S = 0.05


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
    records
        Reads one record through ``reader``, history skipped as bytes (see :mod:`.skipping`).
    """

    schema_id: int
    version: str
    parsed: Any
    reader: Any = None
    records: RecordReader = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "records", RecordReader(self.parsed, self.reader))


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


@functools.cache
def load_bundled_schema(version: str) -> WriterSchema:
    """Parse the bundled Rubin alert schema of ``version`` (its named types resolved from its folder).

    Parsed once per version (a parse costs ~10 ms; building a test record used to parse it every time).
    The result is shared: read it, never change it.
    """
    major, minor = version.split(".")
    path = _schema_root() / major / minor / f"lsst.v{major}_{minor}.alert.avsc"
    if not path.exists():
        raise UnknownSchemaError(f"no bundled Rubin schema {version}")
    parsed = fastavro.schema.load_schema(str(path))
    return WriterSchema(schema_id_of(version), version, parsed, project(parsed))


class SchemaRegistryClient:
    """Confluent Schema Registry reader (``GET /schemas/ids/{id}``) that cannot stall its caller.

    The decoder runs on the Kafka consumer's thread, so every lookup is bounded three ways:

    - **Budget.** All requests together may take at most ``lookup_budget_s`` per sliding
      ``lookup_window_s`` (defaults 3 s per 60 s); a request is given what is left of the budget, at
      most ``timeout_s``, as a hard deadline on the whole exchange (connect, headers, body: a registry
      that drips one byte at a time is cut off too). Once the budget is spent, lookups fail fast. The
      consumer thus waits on the registry at most 3 s a minute, far below the Kafka session (45 s) and
      poll (300 s) timeouts, however many unknown ids arrive.
    - **Back-off.** A failure of the registry itself (deadline passed, connection refused, HTTP status
      other than 200 and 404, an answer that is not a registry answer) makes every lookup fail fast with
      :class:`~broker_plugin.exceptions.SchemaRegistryError` for ``backoff_s``: a registry that is down
      costs one deadline per back-off period, not one per message.
    - **Negative cache.** An id the registry does not know (404), or answers with a schema that is not
      a usable alert schema (see :func:`~.projection.check_writer_schema`), fails with the same error,
      without a request, for ``negative_cache_s``; an id that failed with the registry is remembered
      for ``backoff_s``.

    A request cut off by its deadline finishes (or times out) in a daemon thread; the back-off keeps
    such threads to about one per ``backoff_s``. Answers larger than ``max_response_bytes`` are refused.
    During a back-off, messages with new schema ids are rejected with reason
    ``schema_registry_unavailable`` (the service dead-letters them) rather than holding up the partition.

    Parameters
    ----------
    settings
        Registry URL, credentials, timeouts and the bounds above.
    """

    _MAX_REMEMBERED = 10_000

    def __init__(self, settings: SchemaRegistrySettings) -> None:
        if settings.url is None:
            raise ValueError("schema registry URL is not set")
        self.settings = settings
        self._base = str(settings.url).rstrip("/")
        self._auth: str | None = None
        if settings.username is not None:
            secret = settings.password.get_secret_value() if settings.password else ""
            token = base64.b64encode(f"{settings.username}:{secret}".encode()).decode()
            self._auth = f"Basic {token}"
        self._lock = threading.Lock()
        self._failed: dict[int, tuple[float, AlertDecodeError]] = {}
        self._unavailable_until = 0.0
        self._unavailable_reason = ""
        self._spent: deque[tuple[float, float]] = deque()  # (end, duration) of recent requests

    def fetch(self, schema_id: int) -> WriterSchema:
        """The checked, parsed writer schema with this id, or a typed error (fast when known to fail).

        Raises
        ------
        UnknownSchemaError
            The registry answered 404 (now or within ``negative_cache_s``).
        SchemaRegistryError
            The registry failed, is backing off, or the lookup budget is spent.
        AlertDecodeError
            The registry's schema is not a usable alert schema (``MalformedAvroError``,
            ``ResourceLimitError``, ``UnsupportedAlertError``).
        """
        with self._lock:
            now = time.monotonic()
            failed = self._failed.get(schema_id)
            if failed is not None and now < failed[0]:
                raise type(failed[1])(f"{failed[1]} (cached)")
            if now < self._unavailable_until:
                raise SchemaRegistryError(
                    f"schema registry unavailable for {self._unavailable_until - now:.1f} s more after:"
                    f" {self._unavailable_reason}"
                )
            left = self._budget_left(now)
            if left < _MIN_REQUEST_S:
                raise SchemaRegistryError(
                    f"schema registry lookup budget of {self.settings.lookup_budget_s:g} s per"
                    f" {self.settings.lookup_window_s:g} s is spent"
                )
            deadline = min(self.settings.timeout_s, left)
            start = time.monotonic()
            try:
                return self._fetch_within(schema_id, deadline)
            except SchemaRegistryError as exc:
                self._unavailable_until = time.monotonic() + self.settings.backoff_s
                self._unavailable_reason = str(exc)
                self._remember(schema_id, exc, self.settings.backoff_s)
                raise
            except AlertDecodeError as exc:  # 404 or an unusable schema: the registry itself is fine
                self._remember(schema_id, exc, self.settings.negative_cache_s)
                raise
            finally:
                end = time.monotonic()
                self._spent.append((end, end - start))

    def _budget_left(self, now: float) -> float:
        while self._spent and self._spent[0][0] < now - self.settings.lookup_window_s:
            self._spent.popleft()
        return self.settings.lookup_budget_s - sum(duration for _, duration in self._spent)

    def _remember(self, schema_id: int, error: AlertDecodeError, seconds: float) -> None:
        now = time.monotonic()
        if len(self._failed) >= self._MAX_REMEMBERED:  # many distinct ids: drop the expired, else all
            self._failed = {k: v for k, v in self._failed.items() if v[0] > now}
            if len(self._failed) >= self._MAX_REMEMBERED:
                self._failed.clear()
        self._failed[schema_id] = (now + seconds, error)

    def _fetch_within(self, schema_id: int, deadline: float) -> WriterSchema:
        """Run one request in a daemon thread and wait for it at most ``deadline`` seconds."""
        answer: queue.Queue[tuple[WriterSchema | None, BaseException | None]] = queue.Queue(maxsize=1)

        def work() -> None:
            try:
                answer.put((self._request(schema_id, deadline), None))
            except BaseException as exc:  # handed to the waiting thread, which types it
                answer.put((None, exc))

        threading.Thread(target=work, name=f"schema-registry-{schema_id}", daemon=True).start()
        try:
            schema, error = answer.get(timeout=deadline)
        except queue.Empty:
            raise SchemaRegistryError(f"schema registry did not answer within {deadline:.2f} s") from None
        if schema is not None:
            return schema
        if isinstance(error, AlertDecodeError):
            raise error
        raise SchemaRegistryError(f"schema registry request failed: {type(error).__name__}: {error}")

    def _request(self, schema_id: int, timeout: float) -> WriterSchema:
        """The blocking request and parse (runs in the worker thread).

        Raises
        ------
        UnknownSchemaError
            HTTP 404.
        SchemaRegistryError
            Unreachable, another HTTP status, an answer too large or not a registry answer.
        AlertDecodeError
            As :func:`~.projection.parse_outside_schema`.
        """
        request = urllib.request.Request(  # noqa: S310 - URL is the operator's configured registry
            f"{self._base}/schemas/ids/{schema_id}",
            headers={"Accept": "application/vnd.schemaregistry.v1+json"},
        )
        if self._auth:
            request.add_header("Authorization", self._auth)
        limit = self.settings.max_response_bytes
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
                raw = response.read(limit + 1)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise UnknownSchemaError(f"schema id {schema_id} unknown to the registry") from exc
            raise SchemaRegistryError(f"schema registry answered HTTP {exc.code}") from exc
        except (urllib.error.URLError, TimeoutError, OSError, ValueError) as exc:
            raise SchemaRegistryError(f"schema registry unreachable: {exc}") from exc
        if len(raw) > limit:
            raise SchemaRegistryError(f"schema registry answer exceeds {limit} bytes")
        try:
            body = json.loads(raw)
            kind = body.get("schemaType", "AVRO")
            text = body["schema"]
            schema = json.loads(text)
        except Exception as exc:  # ValueError, KeyError, TypeError, AttributeError, RecursionError
            raise SchemaRegistryError(
                f"schema registry answer is not a schema: {type(exc).__name__}"
            ) from exc
        if kind != "AVRO":
            raise UnsupportedAlertError(f"registry schema {schema_id} is a {str(kind)[:20]} schema, not Avro")
        parsed, _ = parse_outside_schema(schema)
        return WriterSchema(schema_id, f"registry:{schema_id}", parsed, project(parsed))


class RubinSchemaStore:
    """Writer schemas by id: bundled first, then the registry; found schemas are cached. Thread-safe.

    Registry lookups are bounded in time and failures cached (see :class:`SchemaRegistryClient`).

    Parameters
    ----------
    registry
        Optional registry client for ids no bundled schema has.
    """

    def __init__(self, registry: SchemaRegistryClient | None = None) -> None:
        self._registry = registry
        self._bundled = {schema_id_of(v): v for v in bundled_rubin_versions()}
        self._cache: dict[int, WriterSchema] = {}
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
            The registry could not be asked (down, backing off, or its lookup budget spent).
        AlertDecodeError
            The registry's schema is not a usable alert schema.
        """
        cached = self._cache.get(schema_id)
        if cached is not None:
            return cached
        if schema_id in self._bundled:
            with self._lock:
                schema = self._cache.get(schema_id) or load_bundled_schema(self._bundled[schema_id])
        elif self._registry is None:
            raise UnknownSchemaError(
                f"schema id {schema_id} is not a bundled Rubin schema "
                f"({min(self._bundled)}..{max(self._bundled)}) and no schema registry is configured"
            )
        else:
            schema = self._registry.fetch(schema_id)
        self._cache[schema_id] = schema
        return schema
