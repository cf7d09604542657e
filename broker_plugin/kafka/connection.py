"""Whether the Kafka brokers answer: librdkafka's error callback plus probes by the client's owner.

librdkafka reconnects forever on its own and never says the brokers are back, so the state is kept
here: ``_ALL_BROKERS_DOWN`` marks the brokers unreachable at once, a connection error (transport, name
resolution, TLS, authentication) makes the next check probe at once, and only a probe that the brokers
answer (a metadata request, see :meth:`AlertConsumer.check_connection
<broker_plugin.kafka.consumer.AlertConsumer.check_connection>`) marks them reachable.
"""

from __future__ import annotations

import logging
import threading

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer

from broker_plugin.kafka.clientlog import RateLimitedLog

#: Errors of one connection: with several brokers, the others may still answer, so a probe decides.
CONNECTION_ERRORS = frozenset(
    {KafkaError._TRANSPORT, KafkaError._RESOLVE, KafkaError._SSL, KafkaError._AUTHENTICATION}
)
# librdkafka already logs these as FAIL lines; the error callback would repeat them.
_LOGGED_BY_LIBRDKAFKA = frozenset({KafkaError._TRANSPORT, KafkaError._RESOLVE})


def unreachable_message(bootstrap_servers: str, waited_s: float, last_error: str | None, check: str) -> str:
    """One line saying that no broker answered, the last error librdkafka gave, and what to check."""
    error = f"; last error: {last_error}" if last_error else ""
    return f"no Kafka broker answered at {bootstrap_servers} within {waited_s:g} s{error}. Check {check}"


class ConnectionMonitor:
    """Connection state of one client, fed by its ``error_cb`` and by its owner's probes (thread-safe).

    Parameters
    ----------
    log
        Where client errors are logged (rate-limited).
    """

    def __init__(self, log: RateLimitedLog | None = None) -> None:
        self._log = log or RateLimitedLog()
        self._lock = threading.Lock()
        self._connected = False
        self._suspect = False
        self._last_error: str | None = None

    @property
    def connected(self) -> bool:
        """Whether the brokers answered the last probe and have not been reported down since."""
        with self._lock:
            return self._connected

    @property
    def suspect(self) -> bool:
        """Whether a connection error since the last probe asks for a probe now (only while connected)."""
        with self._lock:
            return self._suspect and self._connected

    @property
    def last_error(self) -> str | None:
        """The last client error or failed probe, as ``NAME: text``."""
        with self._lock:
            return self._last_error

    def on_error(self, error: KafkaError) -> None:
        """Record a client error: the client's ``error_cb`` (librdkafka calls it while polled)."""
        code = error.code()
        with self._lock:
            self._last_error = f"{error.name()}: {error.str()}"
            if code == KafkaError._ALL_BROKERS_DOWN:
                self._connected = False
            elif code in CONNECTION_ERRORS:
                self._suspect = True
        if code not in _LOGGED_BY_LIBRDKAFKA:
            self._log.log(logging.WARNING, "Kafka client error %s: %s", error.name(), error.str())

    def probe(
        self, client: Consumer | Producer, timeout_s: float, topic: str | None = None, *, serve: bool = False
    ) -> bool:
        """Ask the brokers for metadata through ``client``; whether they answered within ``timeout_s`` [s].

        The outcome is recorded here. ``serve``: after a failure, serve the client's error callbacks at
        once, so :attr:`last_error` says why (e.g. "Connection refused") where the probe only says it
        timed out; only for a client that cannot hand out a message when polled (a producer, or a
        consumer not subscribed yet).
        """
        try:
            client.list_topics(topic, timeout=timeout_s)
        except KafkaException as exc:
            if serve:
                client.poll(0)
            self.failed(str(exc.args[0]))
            return False
        self.answered()
        return True

    def answered(self) -> None:
        """A probe got an answer: the brokers are reachable."""
        with self._lock:
            self._connected, self._suspect = True, False

    def failed(self, error: str) -> None:
        """A probe got no answer: the brokers are unreachable."""
        with self._lock:
            self._connected, self._suspect = False, False
            # The error callback, when it has run, says why (e.g. "Connection refused"); the probe's own
            # error only says that it timed out.
            if self._last_error is None:
                self._last_error = error
