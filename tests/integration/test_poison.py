"""Poison pills: one bad message between good ones on one partition never stops the service.

Each test sends an object's five alerts with one poison message in the middle, all on a single
partition (so the poison sits between good offsets), against the real broker: the service stays up, the
poison is dead-lettered with its reason, every good alert gets its output and the committed offset
passes the poison.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable

import pytest

from broker_plugin.config import Settings
from broker_plugin.inference.errors import InferenceInputError
from broker_plugin.prepare import Preparer, PreparerFactory
from broker_plugin.serde.classifications import decode_classification
from tests.factories import object_alerts
from tests.integration.conftest import RunningService
from tests.integration.support import committed, produce, read_all, wait_until, with_fresh_topics
from tests.preparers import DECODER_BUG_SOURCE, SEGFAULT, buggy_decoder, crashing


@pytest.fixture
def one_partition(kafka_settings: Settings) -> Settings:
    return with_fresh_topics(kafka_settings, partitions=1)


def metric(running: RunningService, line_start: str) -> float:
    for line in running.metrics.exposition().decode().splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no sample {line_start}")


def good_alerts(first_source: int) -> list[bytes]:
    """Five alerts of one object (diaSourceId ``first_source`` + 0..4): outputs from the third on."""
    return object_alerts(first_source // 100, 5, first_source=first_source)


def run_stream(settings: Settings, running: RunningService, values: list[bytes]) -> tuple[list, set[int]]:
    """Send ``values`` to the one partition in order; return the dead letters and the output ids."""
    k = settings.kafka
    try:
        produce(k.bootstrap_servers, k.input_topics[0], values)
        outputs = read_all(k.bootstrap_servers, k.output_topic, 2, partitions=1)
        dead = read_all(k.bootstrap_servers, k.dead_letter_topic, 1, timeout_s=10, partitions=1)
        n = len(values)
        done = wait_until(lambda: committed(k.bootstrap_servers, k.group_id, k.input_topics[0]) == n, 30)
        assert done, "the committed offset did not pass the poison"
        assert running.error is None and running.service.assignment, "the service stopped"
    finally:
        running.stop()
    return dead, {decode_classification(m.value()).diaSourceId for m in outputs}


def start(
    settings: Settings,
    decode: Callable | None = None,
    around_process: Callable | None = None,
    make_preparer: PreparerFactory = Preparer,
) -> RunningService:
    running = RunningService(settings, around_process=around_process, make_preparer=make_preparer)
    if decode is not None:
        running.parts.decoder.decode_message = decode(running.parts.decoder.decode_message)
    return running.start()


def with_processes(settings: Settings, processes: int) -> Settings:
    service = settings.service.model_copy(update={"prepare_processes": processes})
    return settings.model_copy(update={"service": service})


@pytest.mark.parametrize("processes", [0, 1])
def test_a_decoder_bug_dead_letters_its_message_and_the_poll_goes_on(
    one_partition: Settings, processes: int
) -> None:
    # A valid alert that meets a decoder bug: in this process, or in the preparation process.
    poison = object_alerts(999, 1, first_source=DECODER_BUG_SOURCE)[0]

    def buggy(decode):
        def decoding(value):
            if value == poison:
                raise RuntimeError("decoder bug")
            return decode(value)

        return decoding

    settings = with_processes(one_partition, processes)
    running = start(settings, make_preparer=buggy_decoder) if processes else start(settings, decode=buggy)
    good = good_alerts(80_000)
    dead, outputs = run_stream(settings, running, [*good[:2], poison, *good[2:]])
    assert [dict(m.headers())["dead_letter_reason"] for m in dead] == [b"internal_error"]
    assert dict(dead[0].headers())["dead_letter_error"] == b"RuntimeError: decoder bug"
    assert dead[0].value() == poison and dict(dead[0].headers())["dead_letter_source"].endswith(b"/0/2")
    assert outputs == {80_002, 80_003, 80_004}
    assert metric(running, 'broker_plugin_internal_errors_total{stage="decode"}') == 1
    assert metric(running, 'broker_plugin_alerts_rejected_total{reason="internal_error"}') == 1


def test_a_preparation_process_that_dies_on_a_message_dead_letters_only_that_message(
    one_partition: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    settings = with_processes(one_partition, 1)
    running = start(settings, make_preparer=crashing)
    good = good_alerts(83_000)
    poison = SEGFAULT + b" a message on which a C library crashes"
    with caplog.at_level(logging.ERROR, logger="broker_plugin"):
        dead, outputs = run_stream(settings, running, [*good[:2], poison, *good[2:]])
    assert [dict(m.headers())["dead_letter_reason"] for m in dead] == [b"internal_error"]
    assert dict(dead[0].headers())["dead_letter_error"] == b"preparation process died"
    assert dead[0].value() == poison and dict(dead[0].headers())["dead_letter_source"].endswith(b"/0/2")
    assert outputs == {83_002, 83_003, 83_004}
    assert metric(running, 'broker_plugin_internal_errors_total{stage="prepare"}') == 1
    # The pool's process, then the process that tried the poison alone.
    assert metric(running, "broker_plugin_preparation_process_deaths_total") >= 2
    assert any("preparation process died on " in r.getMessage() and "/0/2" in r.getMessage()
               for r in caplog.records)  # fmt: skip


def test_an_inference_input_error_after_storing_dead_letters_only_its_alert(one_partition: Settings) -> None:
    culprit = 81_002  # the object's third alert

    def failing(process):
        def processing(batch):
            result = process(batch)  # frames stored, classified: the failure comes after
            if any(item.alert.diaSourceId == culprit for item in batch):
                raise InferenceInputError("frames of this alert cannot become model input")
            return result

        return processing

    running = start(one_partition, around_process=failing)
    good = good_alerts(81_000)
    dead, outputs = run_stream(one_partition, running, good)  # the culprit is at offset 2
    assert [dict(m.headers())["dead_letter_reason"] for m in dead] == [b"bad_inference_input"]
    assert dead[0].value() == good[2] and dict(dead[0].headers())["dead_letter_source"].endswith(b"/0/2")
    # Its frame was stored before the failure, so the later alerts rank 4th and 5th.
    assert outputs == {81_003, 81_004}
    assert metric(running, 'broker_plugin_alerts_rejected_total{reason="bad_inference_input"}') == 1
    assert metric(running, 'broker_plugin_internal_errors_total{stage="pipeline"}') == 0


def test_a_dead_letter_larger_than_the_producer_allows_is_truncated(one_partition: Settings) -> None:
    kafka = one_partition.kafka.model_copy(update={"max_produce_bytes": 65_536})
    service = one_partition.service.model_copy(update={"max_message_bytes": 200_000})
    settings = one_partition.model_copy(update={"kafka": kafka, "service": service})
    poison = b"\x00" + bytes(range(256)) * 1_200  # 307 kB: over both limits
    running = start(settings)
    good = good_alerts(82_000)
    dead, outputs = run_stream(settings, running, [*good[:2], poison, *good[2:]])
    assert len(dead) == 1
    headers = dict(dead[0].headers())
    assert headers["dead_letter_reason"] == b"message_too_large"
    assert headers["dead_letter_truncated"] == str(len(poison)).encode()
    assert headers["dead_letter_sha256"] == hashlib.sha256(poison).hexdigest().encode()
    assert 30_000 < len(dead[0].value()) < 65_536 and poison.startswith(dead[0].value())
    assert headers["producer_timestamp"]  # the input's headers are kept
    assert outputs == {82_002, 82_003, 82_004}
    assert metric(running, "broker_plugin_dead_letters_truncated_total") == 1
