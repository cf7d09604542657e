"""The alert consumer: batches, pause/resume for backpressure, commits, lag, and whether brokers answer.

The connection state (:mod:`.connection`) comes from the consumer's error callback and from metadata
probes made by the polling thread between polls (:meth:`AlertConsumer.check_connection`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from broker_plugin.config import KafkaSettings
from broker_plugin.exceptions import KafkaUnreachableError
from broker_plugin.kafka.config import consumer_config
from broker_plugin.kafka.connection import ConnectionMonitor, unreachable_message

log = logging.getLogger(__name__)

#: Longest one connection probe waits for the brokers [s].
PROBE_TIMEOUT_S = 5.0

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
        self.connection = ConnectionMonitor()
        self._consumer = Consumer(consumer_config(settings, client_id, self.connection.on_error))
        self._bootstrap = settings.bootstrap_servers
        self._topics = list(settings.input_topics)
        # A probe asks for one input topic's metadata (small on a shared cluster); patterns name none.
        self._probe_topic = next((t for t in self._topics if not t.startswith("^")), None)
        self._on_assign, self._on_revoke = on_assign, on_revoke
        self._assigned: set[tuple[str, int]] = set()
        self._joined = False
        self._paused = False
        self._next_probe = 0.0

    @property
    def assignment(self) -> set[tuple[str, int]]:
        """Partitions currently assigned to this member."""
        return set(self._assigned)

    @property
    def joined(self) -> bool:
        """Whether the group has given this member its assignment and not taken it away since.

        The assignment may be empty: a warm standby when the group has more members than partitions.
        """
        return self._joined

    @property
    def paused(self) -> bool:
        """Whether consumption is paused (backpressure)."""
        return self._paused

    def subscribe(self) -> None:
        """Join the group on the configured topics (entries starting with ^ are patterns)."""
        self._consumer.subscribe(
            self._topics, on_assign=self._assigned_cb, on_revoke=self._revoked_cb, on_lost=self._lost_cb
        )

    def _assigned_cb(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        gained = [(p.topic, p.partition) for p in partitions]
        self._joined = True
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

    def _lost_cb(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The membership is gone (e.g. the session timed out while the brokers were unreachable): no
        # assignment until the group takes this member back.
        self._joined = False
        self._revoked_cb(consumer, partitions)

    def probe(self, timeout_s: float) -> bool:
        """Ask the brokers for metadata; whether they answered within ``timeout_s`` [s].

        The outcome is recorded in :attr:`connection`.
        """
        return self.connection.probe(self._consumer, timeout_s, self._probe_topic)

    def wait_for_broker(self, timeout_s: float, stopping: Callable[[], bool]) -> bool:
        """Probe until the brokers answer; call before :meth:`subscribe`.

        Parameters
        ----------
        timeout_s
            How long to try [s].
        stopping
            Whether to give up (a stop was requested); checked between probes of at most 1 s.

        Returns
        -------
        bool
            ``True`` once they answered, ``False`` if ``stopping`` said so first.

        Raises
        ------
        KafkaUnreachableError
            No broker answered within ``timeout_s``; the message names the bootstrap servers and the
            setting.
        """
        deadline = time.monotonic() + timeout_s
        while not stopping():
            left = deadline - time.monotonic()
            if left <= 0:
                raise KafkaUnreachableError(
                    unreachable_message(
                        self._bootstrap, timeout_s, self.connection.last_error,
                        "BROKER_PLUGIN_KAFKA__BOOTSTRAP_SERVERS, the network and the security settings"
                        " (BROKER_PLUGIN_KAFKA__STARTUP_TIMEOUT_S sets how long to wait)",
                    )
                )  # fmt: skip
            # Not subscribed yet, so polling to serve the error callbacks hands out no message.
            if self.connection.probe(self._consumer, min(1.0, left), self._probe_topic, serve=True):
                return True
        return False

    def check_connection(self, interval_s: float, received: bool) -> bool:
        """Whether the brokers answer, probing when due (from the polling thread, between polls).

        A probe is due every ``interval_s`` while no message arrives or the brokers are unreachable, and at
        once after a connection error while they were reachable.

        Parameters
        ----------
        interval_s
            Probe interval [s].
        received
            Whether the last poll returned messages (the brokers answered it).
        """
        now = time.monotonic()
        if received and self.connection.connected:
            self._next_probe = now + interval_s
        elif now >= self._next_probe or self.connection.suspect:
            self._next_probe = now + interval_s
            self.probe(min(PROBE_TIMEOUT_S, interval_s))
        return self.connection.connected

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
        self._joined = False
        self._consumer.close()
