"""Replay alerts into a real broker; the service classifies them; read the output topic back."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from broker_plugin.commands.replay import replay
from broker_plugin.config import Settings
from broker_plugin.serde.classifications import decode_classification
from tests.factories import object_alerts, rubin_cutout_bytes, rubin_message
from tests.integration.support import committed, produce, read_all, wait_until

MIN_FRAMES = 3


def write_stream(folder: Path) -> tuple[int, set[int]]:
    """Objects with 5, 4 and 2 alerts (the last never reaches 3 frames); return (#alerts, expected ids)."""
    expected, n = set(), 0
    for obj, count in ((1, 5), (2, 4), (3, 2)):
        for k, raw in enumerate(object_alerts(obj, count, first_source=obj * 1000)):
            (folder / f"{obj}-{k}.avro").write_bytes(raw)
            n += 1
            if k + 1 >= MIN_FRAMES:
                expected.add(obj * 1000 + k)
    return n, expected


def test_every_classifiable_alert_gets_one_output(
    running_service, kafka_settings: Settings, tmp_path: Path
) -> None:
    n, expected = write_stream(tmp_path)
    topic = kafka_settings.kafka.input_topics[0]
    assert replay(tmp_path, topic, kafka_settings.kafka, key_by_object=True) == n
    outputs = read_all(
        kafka_settings.kafka.bootstrap_servers, kafka_settings.kafka.output_topic, len(expected)
    )
    records = [decode_classification(m.value()) for m in outputs]
    assert sorted(r.diaSourceId for r in records) == sorted(expected)
    for message, record in zip(outputs, records, strict=True):
        assert message.key() == str(record.diaObjectId).encode()
        assert abs(sum(p.probability for p in record.classes) - 1) < 1e-4
        assert record.alertTimestamp is not None and record.publishTimestamp >= record.alertTimestamp
    group, topic = kafka_settings.kafka.group_id, kafka_settings.kafka.input_topics[0]
    assert wait_until(lambda: committed(kafka_settings.kafka.bootstrap_servers, group, topic) == n, 20)
    text = running_service.metrics.exposition().decode()
    assert f"broker_plugin_alerts_consumed_total {float(n)}" in text
    assert f"broker_plugin_frames_stored_total {float(n)}" in text


def test_poison_messages_are_dead_lettered_and_the_stream_goes_on(
    running_service, kafka_settings: Settings
) -> None:
    kafka = kafka_settings.kafka
    good = object_alerts(7, 3, first_source=7000)
    nan_cutout = rubin_cutout_bytes(size=40, image=np.full((40, 40), np.nan))
    poison = {
        "malformed_avro": b"\x00\x00\x00\x04\x4d" + bytes(range(256)) * 3,
        "wrong_magic_byte": np.random.default_rng(0).integers(1, 256, 3000, dtype=np.uint8).tobytes(),
        "unknown_schema": b"\x00\x00\x00\x27\x0f" + b"\x02" * 100,
        "corrupt_cutout": rubin_message(
            diaSourceId=8001, diaObjectId=8, cutout=b"SIMPLE  =   T" + b"\x00" * 3000
        ),
        "empty_cutout": rubin_message(diaSourceId=8002, diaObjectId=8, cutout=nan_cutout),
        "message_too_large": b"\x00\x00\x00\x04\x4d" + b"\x00" * 2_000_000,
    }
    produce(kafka.bootstrap_servers, kafka.input_topics[0], [good[0], *poison.values(), good[1], good[2]])
    dead = read_all(kafka.bootstrap_servers, kafka.dead_letter_topic, len(poison))
    reasons = {dict(m.headers())["dead_letter_reason"].decode(): m for m in dead}
    assert set(reasons) == set(poison)
    for reason, message in reasons.items():
        headers = dict(message.headers())
        assert headers["dead_letter_error"]
        if reason == "message_too_large":  # over kafka.max_produce_bytes: cut, with its size and hash
            assert poison[reason].startswith(message.value()) and len(message.value()) < 1_000_000
            assert headers["dead_letter_truncated"] == str(len(poison[reason])).encode()
            continue
        assert message.value() == poison[reason]  # the original bytes, for replay after a fix
    outputs = read_all(kafka.bootstrap_servers, kafka.output_topic, 1)
    # Unkeyed messages spread over partitions, so the good alerts may be processed in any order: the one
    # processed third, whichever it is, completes the object's 3 frames and gets the one output.
    records = [decode_classification(m.value()) for m in outputs]
    assert [(r.diaObjectId, r.nFrames) for r in records] == [(7, 3)]
    assert records[0].diaSourceId in {7000, 7001, 7002}
    text = running_service.metrics.exposition().decode()
    assert 'broker_plugin_alerts_rejected_total{reason="empty_cutout"} 1.0' in text
