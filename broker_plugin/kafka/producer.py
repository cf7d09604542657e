"""Producer of classifications and dead letters, with delivery tracking and optional transactions."""

from __future__ import annotations

import logging
import threading

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

from broker_plugin.config import KafkaSettings
from broker_plugin.exceptions import BrokerPluginError, KafkaUnreachableError
from broker_plugin.kafka.config import producer_config
from broker_plugin.kafka.connection import ConnectionMonitor, unreachable_message

log = logging.getLogger(__name__)


class DeliveryError(BrokerPluginError):
    """Some produced messages were not delivered: their inputs must not be committed."""

    reason = "delivery_failed"


class OutputProducer:
    """Produce messages and learn, at :meth:`flush`, whether every one was delivered.

    Parameters
    ----------
    settings
        Kafka settings; ``transactional_id`` switches on transactions.
    client_id
        Client id.
    """

    def __init__(self, settings: KafkaSettings, client_id: str) -> None:
        # Its errors name the brokers and what librdkafka last reported (e.g. "Connection refused").
        self._connection = ConnectionMonitor()
        self._producer = Producer(producer_config(settings, client_id, self._connection.on_error))
        self._bootstrap = settings.bootstrap_servers
        self.transactional = settings.transactional_id is not None
        self._failures: list[KafkaError] = []
        self._lock = threading.Lock()
        if self.transactional:
            self._producer.init_transactions(30)

    def check_reachable(self, timeout_s: float, check: str) -> None:
        """Ask the brokers for metadata, waiting at most ``timeout_s``.

        Parameters
        ----------
        timeout_s
            How long to wait [s].
        check
            What the user should check, ending the error message (e.g. the option naming the servers).

        Raises
        ------
        KafkaUnreachableError
            No broker answered; the message names the bootstrap servers and librdkafka's last error.
        """
        if not self._connection.probe(self._producer, timeout_s, serve=True):
            raise KafkaUnreachableError(
                unreachable_message(self._bootstrap, timeout_s, self._connection.last_error, check)
            )

    def _delivered(self, error: KafkaError | None, message: object) -> None:
        del message
        if error is not None:
            with self._lock:
                self._failures.append(error)

    def produce(
        self, topic: str, value: bytes, key: bytes | None = None, headers: list | None = None
    ) -> None:
        """Queue one message (blocking briefly while the local queue is full)."""
        while True:
            try:
                self._producer.produce(
                    topic, value=value, key=key, headers=headers, on_delivery=self._delivered
                )
                break
            except BufferError:
                self._producer.poll(0.1)  # queue full: serve delivery reports, then retry
        self._producer.poll(0)

    def flush(self, timeout_s: float = 60.0) -> None:
        """Wait until everything queued is delivered.

        Raises
        ------
        DeliveryError
            A message failed or the timeout passed with messages outstanding.
        """
        remaining = self._producer.flush(timeout_s)
        with self._lock:
            failures, self._failures = self._failures, []
        if remaining or failures:
            if failures:
                first = f"{failures[0].name()}: {failures[0].str()}"
            else:  # nothing failed outright: the client's own errors say why nothing was delivered
                first = self._connection.last_error or "none reported by the Kafka client"
            raise DeliveryError(
                f"{remaining} messages undelivered after {timeout_s:g} s and {len(failures)} failed,"
                f" producing to {self._bootstrap}; first error: {first}"
            )

    def begin(self) -> None:
        """Start a transaction (transactional mode only)."""
        self._producer.begin_transaction()

    def commit_transaction(self, offsets: dict[tuple[str, int], int], group_metadata: object) -> None:
        """Add the consumer offsets to the transaction and commit it: outputs and offsets, atomically."""
        parts = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        if parts:
            self._producer.send_offsets_to_transaction(parts, group_metadata, 30)
        self._producer.commit_transaction(60)

    def abort(self) -> None:
        """Abort the open transaction (its outputs are never seen by read_committed consumers)."""
        try:
            self._producer.abort_transaction(30)
        except KafkaException as exc:
            log.warning("abort_transaction failed: %s", exc)

    def close(self, timeout_s: float = 30.0) -> None:
        """Deliver what is queued, then release the producer."""
        self._producer.flush(timeout_s)
