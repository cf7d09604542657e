"""The long-lived service: the only place that wires Kafka to the pipeline.

Two threads and ``service.prepare_processes`` preparation processes (:mod:`broker_plugin.prepare`). The
*consumer* thread polls, submits each poll's message values to the preparation processes, which decode
them and normalise every alert's cutout into its frame on another core, and hands the poll to a queue
bounded in alerts (:mod:`broker_plugin.workqueue`); when ``queue_max_batches`` full micro-batches wait,
it pauses every assigned partition (backpressure: librdkafka keeps the group membership alive while
paused) and resumes once half have drained. The *worker* thread takes every waiting poll at once, up to
``batch_max_size`` alerts (batches grow when it falls behind), in poll order, waits for each poll's
preparation, runs the pipeline on the prepared alerts (store, classify), produces classifications and
dead letters, waits until Kafka has every one of them, and only then releases the batch's offsets,
which the consumer thread commits: at-least-once. With ``transactional_id`` set, outputs and offsets are
committed in one transaction instead: exactly-once. With ``prepare_processes`` 0 the consumer thread
decodes and the pipeline normalises, all in this process.

One rule at the boundary: every consumed message either becomes alerts handed to the pipeline or a
dead letter with a precise reason, and no single message can stop the service.

- Preparation (preparation process, or the consumer thread and the pipeline): a typed error
  (:class:`~broker_plugin.exceptions.BrokerPluginError`, e.g. ``AlertDecodeError``, ``StampError``)
  dead-letters the message, or the alert, with its ``reason``; any other exception is a bug met by that
  message: its traceback is logged here, it is counted in ``internal_errors_total{stage="decode"}`` (or
  ``"normalise"``) and the message is dead-lettered with reason ``internal_error``. The poll goes on. A
  preparation process that dies (a C library crashing on a hostile message) is replaced; the message it
  dies on twice, alone in a process, is dead-lettered with reason ``internal_error`` ("preparation process
  died", ``stage="prepare"``) and the rest of its poll goes on.
- Processing (worker thread, :func:`~broker_plugin.isolation.process_isolated`): when the pipeline
  raises for a batch, the exception is classified by
  :func:`~broker_plugin.isolation.is_infrastructure_failure`. An infrastructure failure stops the
  service with nothing of the batch committed, so a restart redelivers it and nothing is lost:
  the state store unreachable or failing (``sqlite3.OperationalError`` and ``DatabaseError`` proper -
  locked, I/O, disk full, corrupt file; every ``psycopg.Error`` except ``DataError`` and
  ``IntegrityError`` - connection, server, permissions, missing tables, transaction conflicts; a closed
  store) and Kafka (``KafkaException``, :class:`~broker_plugin.kafka.producer.DeliveryError`), also when
  wrapped (``__cause__``/``__context__``). Anything else was caused by the data of one message (typed
  errors such as ``InferenceInputError``, SQL ``DataError``/``IntegrityError`` from a value the store
  cannot hold, or a bug): the batch is retried message by message, the culprit is dead-lettered (its typed
  ``reason``, or ``internal_error``, counted in ``internal_errors_total{stage="pipeline"}``) and the other
  alerts are processed. A culprit that failed after the store step may leave its (valid) frame stored:
  the store is idempotent, so replaying the dead letter is harmless.
- Publishing: a classification that cannot be encoded dead-letters its message (``internal_error``,
  ``stage="encode"``). Dead letters are cut to fit ``kafka.max_produce_bytes``
  (:mod:`broker_plugin.kafka.deadletter`), so they are never refused for their size.

What does stop the service: the infrastructure failures above, outputs that Kafka does not accept
(nothing is committed, so a restart redelivers), preparation processes that cannot start, no broker
answering within ``kafka.startup_timeout_s`` of starting
(:class:`~broker_plugin.exceptions.KafkaUnreachableError`), and SIGTERM/SIGINT, on which it finishes the
queued batches, publishes, commits, stops the preparation processes and closes.

Brokers that stop answering later do not stop it: the consumer thread tracks the connection
(:meth:`AlertConsumer.check_connection <broker_plugin.kafka.consumer.AlertConsumer.check_connection>`),
readiness fails at once and liveness after ``kafka.unreachable_timeout_s``, so the orchestrator
restarts a pod whose network stays broken; librdkafka reconnects by itself when they come back.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, KafkaException, Message

from broker_plugin import __version__
from broker_plugin.config import Settings
from broker_plugin.exceptions import MessageTooLargeError
from broker_plugin.isolation import process_isolated, rejection_of
from broker_plugin.kafka.consumer import AlertConsumer, Offsets
from broker_plugin.kafka.deadletter import build_dead_letter
from broker_plugin.kafka.producer import OutputProducer
from broker_plugin.metrics import Health, ServiceMetrics
from broker_plugin.pipeline import BatchResult, Inbound, Pipeline
from broker_plugin.prepare import Pending, PreparationPool, Prepared, Rejection
from broker_plugin.serde.alerts import AlertDecoder
from broker_plugin.serde.classifications import classification_key, encode_classification
from broker_plugin.state.base import StateStore
from broker_plugin.workqueue import CoalescingQueue

log = logging.getLogger(__name__)

_MJD_UNIX_EPOCH = 40587.0
_TAI_MINUS_UTC_S = 37.0
#: How often the tracked-objects gauge is refreshed [s].
_COUNT_INTERVAL_S = 10.0
#: Producer timestamps outside this range [ms since the epoch] are ignored (they would not fit the output).
_TIMESTAMP_RANGE_MS = (1, 2**63 - 1)


@dataclass
class _Batch:
    """Messages polled together, decoded (or being prepared in the pool), waiting for the worker."""

    messages: list[Message]
    inbound: list[Inbound] = field(default_factory=list)
    failed: list[tuple[Message, str, str]] = field(default_factory=list)
    #: Consumer group metadata when polled (transactions only). Read in the consumer thread: the client
    #: blocks this call while another thread is inside ``consume``.
    group_metadata: object = None
    #: The messages under preparation in the pool (in ``messages`` order, oversized ones left out); the
    #: worker turns the result into ``inbound`` and ``failed``.
    pending: Pending | None = None
    prepared_messages: list[Message] = field(default_factory=list)

    @classmethod
    def merge(cls, batches: list[_Batch]) -> _Batch:
        """One batch of several polls, in poll order (the group metadata of the latest)."""
        if len(batches) == 1:
            return batches[0]
        merged = cls([m for b in batches for m in b.messages])
        merged.inbound = [item for b in batches for item in b.inbound]
        merged.failed = [item for b in batches for item in b.failed]
        merged.group_metadata = batches[-1].group_metadata
        return merged

    def offsets(self) -> Offsets:
        """Next offset to commit per partition."""
        out: Offsets = {}
        for m in self.messages:
            key = (m.topic(), m.partition())
            out[key] = max(out.get(key, 0), m.offset() + 1)
        return out


def alert_timestamp_ms(message: Message) -> int | None:
    """When the alert was produced: Rubin's ``producer_timestamp`` header [ms], else the message time."""
    low, high = _TIMESTAMP_RANGE_MS
    for name, value in message.headers() or []:
        if name == "producer_timestamp" and value:
            try:
                stamp = int(float(value))
            except (ValueError, OverflowError):  # not a number, NaN or infinite: use the message time
                break
            if low <= stamp <= high:
                return stamp
            break
    kind, stamp = message.timestamp()
    return stamp if kind != 0 and low <= stamp <= high else None


def mjd_tai_to_unix(mjd_tai: float) -> float:
    """MJD (TAI) -> seconds since the Unix epoch (UTC)."""
    return (mjd_tai - _MJD_UNIX_EPOCH) * 86400.0 - _TAI_MINUS_UTC_S


class Service:
    """Consume alerts, classify, publish; see the module docstring.

    Parameters
    ----------
    settings
        All settings (Kafka, batching, state expiry).
    pipeline
        Records-level processing.
    decoder
        Message bytes -> alerts.
    store
        The state store (for expiry and the tracked-objects gauge).
    metrics, health
        Where to report.
    client_id
        Kafka client id of this instance.
    preparation
        Decoding and normalisation in separate processes (started by :meth:`run`, closed when it
        returns); ``None``: decoding in the consumer thread, normalisation in the pipeline.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        pipeline: Pipeline,
        decoder: AlertDecoder,
        store: StateStore,
        metrics: ServiceMetrics,
        health: Health,
        client_id: str = "broker-plugin",
        preparation: PreparationPool | None = None,
    ) -> None:
        self._settings, self._kafka, self._service = settings, settings.kafka, settings.service
        self._pipeline, self._decoder, self._store = pipeline, decoder, store
        self._metrics, self._health = metrics, health
        self._preparation = preparation
        store.watch_invalid_frames(lambda _key, _source_id, _why: metrics.state_invalid_frames.inc())
        self._stop = threading.Event()
        capacity = settings.service.queue_max_batches * settings.service.batch_max_size
        self._queue: CoalescingQueue[_Batch] = CoalescingQueue(capacity)
        self._ready: list[Offsets] = []  # appended by the worker, drained by the consumer thread
        self._ready_lock = threading.Lock()
        self._worker_error: BaseException | None = None
        self._producer = OutputProducer(self._kafka, client_id)
        self._consumer = AlertConsumer(self._kafka, client_id, on_revoke=self._on_revoke)
        self._next_expiry = self._next_count = time.monotonic()
        self._kafka_up: bool | None = None  # last connection state seen by the consumer thread

    # ---- consumer thread -------------------------------------------------------------------------------

    @property
    def assignment(self) -> set[tuple[str, int]]:
        """Input partitions this instance currently owns."""
        return self._consumer.assignment

    def stop(self) -> None:
        """Ask the service to finish what it holds and exit (safe from signal handlers and other threads)."""
        self._stop.set()

    def run(self) -> None:
        """Run until :meth:`stop` (or a fatal error); then flush, commit and close.

        Raises
        ------
        KafkaUnreachableError
            No Kafka broker answered within ``kafka.startup_timeout_s`` of starting.
        BaseException
            A fatal error of the worker (e.g. outputs could not be delivered), after shutting down.
        """
        worker = threading.Thread(target=self._work, name="pipeline-worker", daemon=True)
        worker.start()
        wait_s = self._service.batch_max_wait_ms / 1000.0
        try:
            if not self._consumer.wait_for_broker(self._kafka.startup_timeout_s, self._stop.is_set):
                return  # stopped while waiting
            if self._preparation is not None:
                self._preparation.start()
            self._consumer.subscribe()
            # Ready (readiness) once the group has given this instance its assignment, while the brokers
            # answer. An empty assignment counts: a replica beyond the partition count is a warm standby,
            # and a rollout must not wait for it to get a partition.
            self._health.set_serving(True)
            received = False
            while not self._stop.is_set() and self._worker_error is None:
                self._health.beat()
                self._watch_connection(received)
                self._commit_ready()
                if self._queue.full:
                    self._pause()
                    self._consumer.poll_batch(1, 0.05)  # paused: returns nothing, keeps the membership alive
                    received = False
                    continue
                self._resume_if_drained()
                messages = self._consumer.poll_batch(self._service.batch_max_size, wait_s)
                received = bool(messages)
                if messages:
                    self._metrics.alerts_consumed.inc(len(messages))
                    self._queue.put(self._decode(messages), len(messages))
                self._observe_lag()
        finally:
            self._shutdown(worker)
        if self._worker_error is not None:
            raise self._worker_error

    def _decode(self, messages: list[Message]) -> _Batch:
        """The poll as a batch: decoded here, or submitted to the preparation pool (oversized ones kept)."""
        batch = _Batch(messages)
        if self._producer.transactional:
            batch.group_metadata = self._consumer.group_metadata()
        limit = self._service.max_message_bytes
        values: list[bytes] = []
        for message in messages:
            value = message.value() or b""
            if len(value) > limit:
                batch.failed.append((message, MessageTooLargeError.reason, f"{len(value)} bytes > {limit}"))
            elif self._preparation is not None:
                batch.prepared_messages.append(message)
                values.append(value)
            else:
                self._decode_one(batch, message, value)
        if values:
            assert self._preparation is not None  # noqa: S101 - values are collected only for the pool
            batch.pending = self._preparation.submit(values)
        return batch

    def _decode_one(self, batch: _Batch, message: Message, value: bytes) -> None:
        start = time.perf_counter()
        try:
            alerts = self._decoder.decode_message(value)
            stamp = alert_timestamp_ms(message)
            inbound = [Inbound(alert, stamp, message) for alert in alerts]
        except Exception as exc:  # any exception of one message: that message is dead-lettered
            reason, error = rejection_of(exc)
            if reason == "internal_error":
                log.exception("unexpected error decoding %s; it is dead-lettered", _source(message))
                self._metrics.internal_errors.labels(stage="decode").inc()
            batch.failed.append((message, reason, error))
            return
        finally:
            self._metrics.preparation_seconds.labels(stage="decode").inc(time.perf_counter() - start)
        batch.inbound.extend(inbound)

    def _watch_connection(self, received: bool) -> None:
        """Probe the brokers when due; report the connection and the assignment to health and metrics."""
        up = self._consumer.check_connection(self._kafka.probe_interval_s, received)
        if up != self._kafka_up:
            if up and self._kafka_up is not None:
                log.info("Kafka brokers at %s answer again", self._kafka.bootstrap_servers)
            elif not up:
                log.warning(
                    "Kafka brokers at %s do not answer (%s): not ready; /healthz fails after %g s",
                    self._kafka.bootstrap_servers, self._consumer.connection.last_error or "no answer",
                    self._kafka.unreachable_timeout_s,
                )  # fmt: skip
            self._kafka_up = up
        self._health.set_connected(up)
        self._health.set_assigned(self._consumer.joined)
        self._metrics.kafka_connected.set(1 if up else 0)

    def _pause(self) -> None:
        if not self._consumer.paused:
            self._consumer.pause()
            self._metrics.consumer_pauses.inc()
            self._metrics.partitions_paused.set(len(self._consumer.assignment))
            log.info("inference queue full: %d partitions paused", len(self._consumer.assignment))

    def _resume_if_drained(self) -> None:
        if self._consumer.paused and self._queue.size <= self._queue.capacity // 2:
            self._consumer.resume()
            self._metrics.partitions_paused.set(0)
            log.info("inference queue drained: partitions resumed")

    def _commit_ready(self) -> None:
        with self._ready_lock:
            ready, self._ready = self._ready, []
        merged: Offsets = {}
        for offsets in ready:
            for key, offset in offsets.items():
                merged[key] = max(merged.get(key, 0), offset)
        if merged and not self._producer.transactional:
            try:
                self._consumer.commit(merged)
            except KafkaException as exc:
                # E.g. a partition moved to another member meanwhile: its new owner re-reads from the
                # last committed offset (at-least-once), so this is safe to log and go on.
                log.warning("offset commit failed, the messages will be redelivered: %s", exc)

    def _observe_lag(self) -> None:
        for (topic, partition), lag in self._consumer.lag().items():
            self._metrics.consumer_lag.labels(topic=topic, partition=str(partition)).set(lag)

    def _on_revoke(self, partitions: list[tuple[str, int]]) -> None:
        """Before partitions go: let the worker finish what was polled from them, then commit it."""
        if self._worker_error is None:
            self._queue.join()
        else:
            self._drop_queued()  # the worker is gone: nothing queued will be committed (redelivered)
        self._commit_ready()
        for topic, partition in partitions:
            with contextlib.suppress(KeyError):  # a partition whose lag was never observed
                self._metrics.consumer_lag.remove(topic, str(partition))

    def _drop_queued(self) -> None:
        self._queue.clear()

    def _shutdown(self, worker: threading.Thread) -> None:
        if worker.is_alive():
            self._queue.close()  # the worker finishes every queued batch first
            worker.join(timeout=self._service.shutdown_timeout_s)
        if worker.is_alive() or self._worker_error is not None:
            self._drop_queued()
        self._commit_ready()
        self._health.set_serving(False)
        self._health.set_assigned(False)
        if self._preparation is not None:
            # After a clean stop the worker took every result: nothing is left to wait for.
            self._preparation.close(wait=not worker.is_alive())
        self._consumer.close()
        self._producer.close()
        log.info("service stopped")

    # ---- worker thread ---------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            polls = self._queue.take(self._service.batch_max_size)
            if polls is None:
                return
            try:
                self._handle(_Batch.merge([self._prepared(poll) for poll in polls]))
            except BaseException as exc:  # fatal: stop the consumer loop; nothing of this batch is committed
                log.exception("fatal error in the pipeline worker")
                self._worker_error = exc
                self._stop.set()
                return
            finally:
                self._queue.done(len(polls))

    def _prepared(self, batch: _Batch) -> _Batch:
        """The poll with its preparation's outcomes (waiting for them) as alerts and rejections."""
        if batch.pending is None:
            return batch
        assert self._preparation is not None  # noqa: S101 - only the pool sets pending
        start = time.perf_counter()
        prepared: Prepared = self._preparation.result(batch.pending)
        self._metrics.preparation_wait.inc(time.perf_counter() - start)
        self._metrics.preparation_seconds.labels(stage="decode").inc(prepared.decode_seconds)
        self._metrics.preparation_seconds.labels(stage="normalise").inc(prepared.normalise_seconds)
        for message, outcome in zip(batch.prepared_messages, prepared.outcomes, strict=True):
            if isinstance(outcome, Rejection):
                batch.failed.append((message, *self._rejected_in_preparation(message, outcome)))
                continue
            stamp = alert_timestamp_ms(message)
            for item in outcome:
                if item.rejection is not None:
                    batch.failed.append((message, *self._rejected_in_preparation(message, item.rejection)))
                else:
                    batch.inbound.append(Inbound(item.alert, stamp, message, item.frame))
        batch.pending = None
        return batch

    def _rejected_in_preparation(self, message: Message, rejection: Rejection) -> tuple[str, str]:
        """Reason and error of a dead letter; a bug's traceback is logged here and counted by stage."""
        if rejection.reason == "internal_error":
            if rejection.traceback is not None:
                log.error(
                    "unexpected error (%s) preparing %s; it is dead-lettered\n%s",
                    rejection.stage, _source(message), rejection.traceback.rstrip(),
                )  # fmt: skip
            else:
                log.error("%s on %s; it is dead-lettered", rejection.error, _source(message))
            self._metrics.internal_errors.labels(stage=rejection.stage).inc()
        return rejection.reason, rejection.error

    def _handle(self, batch: _Batch) -> None:
        transactional = self._producer.transactional
        if transactional:
            self._producer.begin()
        try:
            result = self._process(batch.inbound)
            for message, reason, error in batch.failed:
                self._dead_letter(message, reason, error)
            for ref, reason, error in result.rejected:
                self._dead_letter(ref, reason, error)
            for ref, classification in result.classifications:
                try:
                    value = encode_classification(classification, self._kafka.output_schema_id)
                    key = classification_key(classification)
                except Exception as exc:  # a value of one alert the output schema cannot hold
                    log.exception("unexpected error encoding the classification of %s", _source(ref))
                    self._metrics.internal_errors.labels(stage="encode").inc()
                    self._dead_letter(ref, *rejection_of(exc))
                    continue
                self._producer.produce(self._kafka.output_topic, value, key=key)
            if transactional:
                self._producer.commit_transaction(batch.offsets(), batch.group_metadata)
            else:
                self._producer.flush()
        except BaseException:
            if transactional:
                self._producer.abort()
            raise
        with self._ready_lock:
            self._ready.append(batch.offsets())
        self._record(result)
        self._maybe_expire()

    def _process(self, inbound: Sequence[Inbound]) -> BatchResult:
        """The pipeline over a batch, isolating culprits (see :func:`process_isolated`)."""
        return process_isolated(self._pipeline, inbound, self._count_pipeline_bug)

    def _count_pipeline_bug(self, exc: Exception) -> None:
        del exc
        self._metrics.internal_errors.labels(stage="pipeline").inc()

    def _dead_letter(self, message: object, reason: str, error: str) -> None:
        assert isinstance(message, Message)  # noqa: S101 - refs are the consumed messages
        value, key, headers = message.value() or b"", message.key(), message.headers() or []
        letter = build_dead_letter(
            value, key, headers, reason=reason, error=error, source=_source(message),
            plugin_version=__version__, max_bytes=self._kafka.max_produce_bytes,
        )  # fmt: skip
        try:
            self._producer.produce(self._kafka.dead_letter_topic, letter.value, letter.key, letter.headers)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.MSG_SIZE_TOO_LARGE:
                raise
            # Our size estimate was short (it never should be): send the headers alone, which always fit.
            log.warning(
                "dead letter of %s still too large (%s); sent without its value", _source(message), exc
            )
            letter = build_dead_letter(
                value, key, headers, reason=reason, error=error, source=_source(message),
                plugin_version=__version__, max_bytes=0,
            )  # fmt: skip
            self._producer.produce(self._kafka.dead_letter_topic, letter.value, letter.key, letter.headers)
        if letter.truncated:
            self._metrics.dead_letters_truncated.inc()
        self._metrics.alerts_rejected.labels(reason=reason).inc()

    def _record(self, result: BatchResult) -> None:
        metrics = self._metrics
        now = time.time()
        for _ref, reason in result.ignored:
            metrics.alerts_ignored.labels(reason=reason).inc()
        metrics.preparation_seconds.labels(stage="normalise").inc(result.normalise_seconds)
        metrics.frames_stored.inc(result.frames_new)
        metrics.frames_duplicate.inc(result.frames_duplicate)
        if result.internal_errors:  # normalise bugs the pipeline rejected alert by alert itself
            metrics.internal_errors.labels(stage="normalise").inc(result.internal_errors)
        if result.objects_classified:
            metrics.inference_batch_size.observe(result.objects_classified)
            metrics.inference_duration.observe(result.inference_seconds)
        for _ref, c in result.classifications:
            metrics.classifications_published.labels(predicted_class=c.predictedClass).inc()
            if c.alertTimestamp is not None:
                metrics.alert_latency.observe(max(0.0, now - c.alertTimestamp / 1000.0))
            metrics.observation_latency.observe(max(0.0, now - mjd_tai_to_unix(c.midpointMjdTai)))

    def _maybe_expire(self) -> None:
        now = time.monotonic()
        if now >= self._next_expiry:
            self._next_expiry = now + self._settings.state.expire_interval_s
            removed = self._store.expire(self._settings.state.object_idle_expiry_s)
            if removed:
                log.info("expired %d idle objects", removed)
        if now >= self._next_count:  # a COUNT over the store: every few seconds, not every batch
            self._next_count = now + _COUNT_INTERVAL_S
            self._metrics.objects_tracked.set(self._store.object_count())


def _source(message: object) -> str:
    """``topic/partition/offset`` of a consumed message."""
    if isinstance(message, Message):
        return f"{message.topic()}/{message.partition()}/{message.offset()}"
    return repr(message)
