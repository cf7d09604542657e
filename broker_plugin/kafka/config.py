"""librdkafka configuration dictionaries built from :class:`~broker_plugin.config.KafkaSettings`.

Every client logs through a :class:`~broker_plugin.kafka.clientlog.RateLimitedLog` (its ``logger``) and
reports errors to an ``error_cb``: a :class:`~broker_plugin.kafka.connection.ConnectionMonitor`'s when the
caller keeps one, else one that logs them, rate-limited too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError

from broker_plugin.config import KafkaSettings
from broker_plugin.kafka.clientlog import RateLimitedLog
from broker_plugin.kafka.connection import ConnectionMonitor

ErrorCallback = Callable[[KafkaError], None]


def client_hooks(error_cb: ErrorCallback | None = None) -> dict[str, Any]:
    """``logger`` (rate-limited) and ``error_cb`` (``error_cb``, or one that logs) of one client."""
    log = RateLimitedLog()
    return {"logger": log, "error_cb": error_cb or ConnectionMonitor(log).on_error}


def admin_config(bootstrap_servers: str) -> dict[str, Any]:
    """Settings of the administrative helpers' clients (topics, reading back, offsets)."""
    return {"bootstrap.servers": bootstrap_servers} | client_hooks()


def _common(settings: KafkaSettings, error_cb: ErrorCallback | None) -> dict[str, Any]:
    config: dict[str, Any] = client_hooks(error_cb) | {
        "bootstrap.servers": settings.bootstrap_servers,
        "security.protocol": settings.security_protocol.lower(),
        # Idle connections closed by the broker are normal; librdkafka's notice about each is noise.
        "log.connection.close": False,
    }
    if "SASL" in settings.security_protocol:
        config["sasl.mechanism"] = settings.sasl_mechanism
        config["sasl.username"] = settings.sasl_username or ""
        config["sasl.password"] = settings.sasl_password.get_secret_value() if settings.sasl_password else ""
    if settings.ssl_ca_location:
        config["ssl.ca.location"] = settings.ssl_ca_location
    return config


def consumer_config(
    settings: KafkaSettings, client_id: str, error_cb: ErrorCallback | None = None
) -> dict[str, Any]:
    """Consumer settings: manual commits only after outputs are delivered (at-least-once)."""
    return _common(settings, error_cb) | {
        "group.id": settings.group_id,
        "client.id": client_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": settings.auto_offset_reset,
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": settings.session_timeout_ms,
        "heartbeat.interval.ms": settings.heartbeat_interval_ms,
        "fetch.wait.max.ms": settings.fetch_wait_max_ms,
        # Transactions: never hand the service records of aborted transactions.
        "isolation.level": "read_committed",
        # Alerts are up to a few MB with cutouts; keep the prefetch queue bounded in bytes.
        "queued.max.messages.kbytes": 65536,
    }


def producer_config(
    settings: KafkaSettings, client_id: str, error_cb: ErrorCallback | None = None
) -> dict[str, Any]:
    """Producer settings: idempotent (no duplicates from retries), or transactional when configured."""
    config = _common(settings, error_cb) | {
        "client.id": client_id,
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": settings.compression_type,
        "linger.ms": 5,
        # Every produced message fits the broker's limit: dead letters are truncated to this size.
        "message.max.bytes": settings.max_produce_bytes,
    }
    if settings.transactional_id:
        config["transactional.id"] = settings.transactional_id
    return config
