"""The alert consumer: batches of messages, pause/resume for backpressure, explicit commits, lag."""

from __future__ import annotations

import logging
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from broker_plugin.config import KafkaSettings
from broker_plugin.kafka.config import consumer_config

log = logging.getLogger(__name__)

#: (topic, partition) -> next offset to read (what Kafka stores as the committed offset).
Offsets = dict[tuple[str, int], int]


class AlertConsumer:
    """Consume alert topics in one consumer group with cooperative-sticky assignment.

    Parameters
    ----------
    settings
        Kafka settings (topics, group, security, timeouts).
    client_id
        Client id (shows in broker logs and group descriptions).
    on_assign, on_revoke
        Called with the list of ``(topic, partition)`` gained or about to be lost. ``on_revoke`` runs
        before the partitions go (and on loss), so the service can flush and commit first.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        client_id: str,
        on_assign: Callable[[list[tuple[str, int]]], None] | None = None,
        on_revoke: Callable[[list[tuple[str, int]]], None] | None = None,
    ) -> None:
        self._consumer = Consumer(consumer_config(settings, client_id))
        self._topics = list(settings.input_topics)
        self._on_assign, self._on_revoke = on_assign, on_revoke
        self._assigned: set[tuple[str, int]] = set()
        self._paused = False

    @property
    def assignment(self) -> set[tuple[str, int]]:
        """Partitions currently assigned to this member."""
        return set(self._assigned)

    @property
    def paused(self) -> bool:
        """Whether consumption is paused (backpressure)."""
        return self._paused

    def subscribe(self) -> None:
        """Join the group on the configured topics (entries starting with ^ are patterns)."""
        self._consumer.subscribe(
            self._topics, on_assign=self._assigned_cb, on_revoke=self._revoked_cb, on_lost=self._revoked_cb
        )

    def _assigned_cb(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        gained = [(p.topic, p.partition) for p in partitions]
        self._assigned.update(gained)
        if self._paused and partitions:
            consumer.pause(partitions)  # new partitions join the paused state
        log.info("partitions assigned: %s", gained)
        if self._on_assign:
            self._on_assign(gained)

    def _revoked_cb(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        del consumer
        lost = [(p.topic, p.partition) for p in partitions]
        log.info("partitions revoked: %s", lost)
        if self._on_revoke:
            self._on_revoke(lost)
        self._assigned.difference_update(lost)

    def poll_batch(self, max_messages: int, timeout_s: float) -> list[Message]:
        """Up to ``max_messages`` alert messages (waiting at most ``timeout_s``); errors are logged.

        Raises
        ------
        KafkaException
            A fatal consumer error (the service must stop).
        """
        messages = self._consumer.consume(num_messages=max_messages, timeout=timeout_s)
        good = []
        for message in messages:
            error = message.error()
            if error is None:
                good.append(message)
            elif error.code() == KafkaError._PARTITION_EOF:
                continue
            elif error.fatal():
                raise KafkaException(error)
            else:
                log.warning("consumer error (will retry): %s", error)
        return good

    def pause(self) -> None:
        """Stop fetching from every assigned partition (keeps the group membership alive)."""
        if not self._paused:
            self._consumer.pause([TopicPartition(t, p) for t, p in self._assigned])
            self._paused = True

    def resume(self) -> None:
        """Fetch again from every assigned partition."""
        if self._paused:
            self._consumer.resume([TopicPartition(t, p) for t, p in self._assigned])
            self._paused = False

    def commit(self, offsets: Offsets) -> None:
        """Commit the given next-offsets synchronously."""
        if offsets:
            self._consumer.commit(
                offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=False
            )

    def group_metadata(self) -> object:
        """Consumer group metadata, for transactional offset commits."""
        return self._consumer.consumer_group_metadata()

    def lag(self) -> dict[tuple[str, int], int]:
        """Messages behind the end of each assigned partition, from cached watermarks (no broker call)."""
        lags = {}
        positions = self._consumer.position([TopicPartition(t, p) for t, p in self._assigned])
        for tp in positions:
            try:
                _low, high = self._consumer.get_watermark_offsets(tp, cached=True)
            except KafkaException:
                continue
            if high >= 0 and tp.offset >= 0:
                lags[(tp.topic, tp.partition)] = max(0, high - tp.offset)
        return lags

    def close(self) -> None:
        """Leave the group (triggers a revoke, hence a final flush and commit)."""
        self._consumer.close()
