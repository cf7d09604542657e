"""librdkafka configuration dictionaries built from :class:`~broker_plugin.config.KafkaSettings`."""

from __future__ import annotations

from typing import Any

from broker_plugin.config import KafkaSettings


def _common(settings: KafkaSettings) -> dict[str, Any]:
    config: dict[str, Any] = {
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


def consumer_config(settings: KafkaSettings, client_id: str) -> dict[str, Any]:
    """Consumer settings: manual commits only after outputs are delivered (at-least-once)."""
    return _common(settings) | {
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


def producer_config(settings: KafkaSettings, client_id: str) -> dict[str, Any]:
    """Producer settings: idempotent (no duplicates from retries), or transactional when configured."""
    config = _common(settings) | {
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
