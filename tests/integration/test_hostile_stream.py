"""One hostile message of every class between good ones on one partition: the service goes on.

Each bad message is dead-lettered with its reason and its original bytes, every good alert gets its
output, the committed offset passes every message, and the service is still running at the end.
"""

from __future__ import annotations

import pytest

from broker_plugin.config import Settings
from broker_plugin.serde.classifications import decode_classification
from tests.factories import object_alerts
from tests.hostile import HOSTILE
from tests.integration.conftest import RunningService
from tests.integration.support import committed, produce, read_all, wait_until, with_fresh_topics

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_every_hostile_class_is_dead_lettered_and_the_stream_goes_on(kafka_settings: Settings) -> None:
    settings = with_fresh_topics(kafka_settings, partitions=1)
    kafka = settings.kafka
    bootstrap = kafka.bootstrap_servers
    names = {"input": kafka.input_topics[0], "output": kafka.output_topic, "dead": kafka.dead_letter_topic}
    cases = list(HOSTILE.items())
    goods = [object_alerts(60 + k, 8, first_source=6000 + 100 * k) for k in range(3)]
    good_stream = [raw for group in zip(*goods, strict=True) for raw in group]
    bad = [builder(90_000 + i) for i, (_, (builder, _)) in enumerate(cases)]
    values = []
    for i, raw in enumerate(good_stream):
        values.append(raw)
        if i < len(bad):
            values.append(bad[i])
    values += bad[len(good_stream) :]
    running = RunningService(settings).start()
    try:
        produce(bootstrap, names["input"], values)
        dead = read_all(bootstrap, names["dead"], len(bad), partitions=1)
        outputs = read_all(bootstrap, names["output"], 18, partitions=1)
        assert wait_until(lambda: committed(bootstrap, kafka.group_id, names["input"]) == len(values), 30)
        assert running.error is None and running._thread.is_alive()
    finally:
        running.stop()
    by_value = {m.value(): m for m in dead}
    assert len(dead) == len(bad)
    for (name, (_, reasons)), raw in zip(cases, bad, strict=True):
        message = by_value.get(raw)
        assert message is not None, f"{name}: no dead letter with the original bytes"
        reason = dict(message.headers())["dead_letter_reason"].decode()
        assert reason in reasons, f"{name}: dead-lettered as {reason}, expected one of {reasons}"
    records = [decode_classification(m.value()) for m in outputs]
    assert sorted(r.diaSourceId for r in records) == sorted(
        6000 + 100 * k + e for k in range(3) for e in range(2, 8)
    )
