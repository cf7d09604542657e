"""Helpers for tests against a real Kafka-protocol broker."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition

from broker_plugin.config import Settings
from broker_plugin.kafka import admin

ROOT = Path(__file__).resolve().parents[2]
#: Client settings that tame the test broker's quirks (see kafka-testing.md).
FAST_GROUP = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000, "fetch_wait_max_ms": 20}


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:10]}"


def create_topics(bootstrap: str, *topics: str, partitions: int = 4) -> None:
    admin.create_topics(bootstrap, list(topics), partitions)


def with_fresh_topics(settings: Settings, partitions: int = 1, **service: object) -> Settings:
    """``settings`` with new input, output and dead-letter topics and group (and ``service`` overrides)."""
    names = {"input": unique("alerts"), "output": unique("classifications"), "dead": unique("dead-letter")}
    create_topics(settings.kafka.bootstrap_servers, *names.values(), partitions=partitions)
    kafka = settings.kafka.model_copy(update={
        "input_topics": [names["input"]], "output_topic": names["output"],
        "dead_letter_topic": names["dead"], "group_id": unique("group"),
    })  # fmt: skip
    return settings.model_copy(
        update={"kafka": kafka, "service": settings.service.model_copy(update=service)}
    )


def produce(
    bootstrap: str,
    topic: str,
    values: list[bytes],
    headers: list | None = None,
    keys: list[bytes] | None = None,
) -> None:
    """Produce ``values`` (keyed by ``keys`` when given: one object's alerts then stay in order)."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "message.max.bytes": 10_000_000})
    for i, value in enumerate(values):
        stamp = headers or [("producer_timestamp", str(time.time() * 1000))]
        producer.produce(topic, value=value, key=keys[i] if keys else None, headers=stamp)
        producer.poll(0)
    assert producer.flush(30) == 0


def read_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 60.0, partitions: int = 4) -> list:
    """Every message of ``topic`` (from the start), waiting until ``expected`` arrived or the timeout."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap, "group.id": unique("reader"), "enable.auto.commit": False,
        "fetch.wait.max.ms": 20, "isolation.level": "read_committed",
    })  # fmt: skip
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and len(out) < expected:
            for message in consumer.consume(500, 0.2):
                if message.error() is None:
                    out.append(message)
        # A short grace period shows whether anything beyond ``expected`` arrives.
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            out += [m for m in consumer.consume(500, 0.2) if m.error() is None]
    finally:
        consumer.close()
    return out


def committed(bootstrap: str, group: str, topic: str) -> int:
    return admin.committed_total(bootstrap, group, topic)


def wait_until(condition: Callable[[], bool], timeout_s: float, interval_s: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval_s)
    return condition()


def service_env(settings_env: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_PLUGIN_")}
    return env | settings_env


def start_service_process(env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """``python -m broker_plugin run`` in a child process (its log in ``log_path``)."""
    handle = log_path.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "broker_plugin", "run"],
        env=env,
        cwd=ROOT,
        stdout=handle,
        stderr=subprocess.STDOUT,
    )
