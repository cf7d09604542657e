"""The service boundary's rule, on the real pipeline and store: fatal infrastructure vs isolated culprits."""

from __future__ import annotations

import sqlite3

import psycopg
import pytest
from confluent_kafka import TIMESTAMP_CREATE_TIME, KafkaError, KafkaException, Message

from broker_plugin.exceptions import InvalidFrameError
from broker_plugin.inference.errors import InferenceInputError
from broker_plugin.isolation import is_infrastructure_failure, process_isolated
from broker_plugin.kafka.producer import DeliveryError
from broker_plugin.pipeline import Inbound
from broker_plugin.service import alert_timestamp_ms
from broker_plugin.state.base import StateStoreClosedError
from tests.factories import inbound_of, object_alerts


def wrapped(inner: BaseException) -> RuntimeError:
    try:
        try:
            raise inner
        except BaseException as exc:
            raise RuntimeError("the pipeline wrapped it") from exc
    except RuntimeError as outer:
        return outer


@pytest.mark.parametrize(
    ("exc", "fatal"),
    [
        (sqlite3.OperationalError("database is locked"), True),
        (sqlite3.OperationalError("disk I/O error"), True),
        (sqlite3.DatabaseError("file is not a database"), True),
        (sqlite3.IntegrityError("NOT NULL constraint failed"), False),
        (sqlite3.ProgrammingError("Error binding parameter 1"), False),
        (psycopg.OperationalError("server closed the connection unexpectedly"), True),
        (psycopg.errors.UndefinedTable("relation does not exist"), True),
        (psycopg.errors.NumericValueOutOfRange("bigint out of range"), False),
        (KafkaException(KafkaError(KafkaError._TRANSPORT)), True),
        (DeliveryError("2 failed"), True),
        (StateStoreClosedError("the state store is closed"), True),
        (wrapped(sqlite3.OperationalError("database is locked")), True),
        (InferenceInputError("non-finite flux"), False),
        (InvalidFrameError("frame holds non-finite pixels"), False),
        (OverflowError("Python int too large to convert to SQLite INTEGER"), False),
        (MemoryError(), False),
        (wrapped(KeyError("band")), False),
    ],
)
def test_infrastructure_failures_are_told_from_culprits(exc: BaseException, fatal: bool) -> None:
    assert is_infrastructure_failure(exc) is fatal


def inbound(parts, messages: list[bytes]) -> list[Inbound]:
    return inbound_of(parts.decoder, messages, None)


def test_a_culprit_is_isolated_and_the_rest_of_the_batch_classified(parts) -> None:
    items = inbound(parts, object_alerts(31, 5, first_source=3100))
    real = parts.pipeline.process

    def process(batch):
        result = real(batch)  # frames stored: the failure comes after, as an inference error would
        if any(item.alert.diaSourceId == 3102 for item in batch):
            raise InferenceInputError("cannot become model input")
        if any(item.alert.diaSourceId == 3103 for item in batch):
            raise ZeroDivisionError("a bug")
        return result

    parts.pipeline.process = process
    bugs: list[Exception] = []
    result = process_isolated(parts.pipeline, items, bugs.append)
    assert sorted((ref, reason) for ref, reason, _ in result.rejected) == [
        (2, "bad_inference_input"), (3, "internal_error"),
    ]  # fmt: skip
    assert [type(b) for b in bugs] == [ZeroDivisionError]
    assert "ZeroDivisionError: a bug" in dict((r, e) for r, _, e in result.rejected)[3]
    assert [c.diaSourceId for _, c in result.classifications] == [3104]


def test_a_failing_store_is_fatal_not_dead_lettered(parts) -> None:
    items = inbound(parts, object_alerts(32, 3, first_source=3200))
    parts.store.close()  # the store is gone: every alert would be lost if it were dead-lettered
    with pytest.raises(StateStoreClosedError):
        process_isolated(parts.pipeline, items)


def test_absurd_producer_timestamps_are_ignored() -> None:
    def message(header: bytes) -> Message:
        return Message(
            topic="t", partition=0, offset=1, value=b"v", headers=[("producer_timestamp", header)],
            timestamp=(TIMESTAMP_CREATE_TIME, 1_700_000_000_123),
        )  # fmt: skip

    assert alert_timestamp_ms(message(b"1700000000000")) == 1_700_000_000_000
    # Each of these used to raise (OverflowError) or to give a value the output schema cannot hold.
    for bad in (b"inf", b"nan", b"-5", b"1e300", b"\xff"):
        assert alert_timestamp_ms(message(bad)) == 1_700_000_000_123, bad
