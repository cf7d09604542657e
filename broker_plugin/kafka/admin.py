"""Small administrative helpers: create topics, read a topic from the start, committed offsets."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from broker_plugin.kafka.config import admin_config


def create_topics(bootstrap: str, topics: list[str], partitions: int = 4) -> None:
    """Create topics (existing ones are left as they are)."""
    admin = AdminClient(admin_config(bootstrap))
    futures = admin.create_topics(
        [NewTopic(t, num_partitions=partitions, replication_factor=1) for t in topics]
    )
    for future in futures.values():
        try:
            future.result(timeout=30)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise


def _partitions(consumer: Consumer, topic: str) -> list[int]:
    metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
    return sorted(metadata.partitions) if metadata is not None else []


def read_topic(bootstrap: str, topic: str, idle_s: float = 1.0) -> list[Message]:
    """Every committed message of ``topic``, from the start, until ``idle_s`` passes without one."""
    consumer = Consumer(admin_config(bootstrap) | {
        "group.id": f"reader-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False, "fetch.wait.max.ms": 20, "isolation.level": "read_committed",
    })  # fmt: skip
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in _partitions(consumer, topic)])
        out: list[Message] = []
        last = time.monotonic()
        while time.monotonic() - last < idle_s:
            batch = [m for m in consumer.consume(1000, 0.1) if m.error() is None]
            if batch:
                out += batch
                last = time.monotonic()
        return out
    finally:
        consumer.close()


def committed_total(bootstrap: str, group: str, topic: str) -> int:
    """Sum over partitions of the group's committed offsets on ``topic`` (messages done)."""
    consumer = Consumer(admin_config(bootstrap) | {"group.id": group, "enable.auto.commit": False})
    try:
        parts = [TopicPartition(topic, p) for p in _partitions(consumer, topic)]
        return sum(max(0, tp.offset) for tp in consumer.committed(parts, timeout=10))
    finally:
        consumer.close()
