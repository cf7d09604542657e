"""Causal outputs through the real service: batch sizes 1, 7 and 256 publish the same classifications."""

from __future__ import annotations

import numpy as np
import pytest

from broker_plugin.config import Settings
from broker_plugin.serde.classifications import decode_classification
from tests.factories import object_alerts
from tests.integration.conftest import RunningService
from tests.integration.support import produce, read_all, with_fresh_topics

pytestmark = pytest.mark.integration


def stream() -> list[bytes]:
    """Three objects interleaved on one partition; one object's 4th and 5th frames arrive swapped."""
    per_object = [object_alerts(40 + k, 6, first_source=4000 + 100 * k) for k in range(3)]
    per_object[1] = [*per_object[1][:3], per_object[1][4], per_object[1][3], per_object[1][5]]
    return [raw for group in zip(*per_object, strict=True) for raw in group]


def outputs_with_batch_size(settings: Settings, bootstrap: str, values: list[bytes], size: int) -> list:
    settings = with_fresh_topics(settings, partitions=1, batch_max_size=size)
    state = settings.state.model_copy(update={"url": settings.state.url.replace(".db", f"-{size}.db")})
    settings = settings.model_copy(update={"state": state})
    names = {"input": settings.kafka.input_topics[0], "output": settings.kafka.output_topic}
    # Produced before the service starts: its first polls hold the whole backlog (a catch-up).
    produce(bootstrap, names["input"], values)
    running = RunningService(settings).start()
    try:
        messages = read_all(bootstrap, names["output"], 12, partitions=1)
    finally:
        running.stop()
    records = sorted((decode_classification(m.value()) for m in messages), key=lambda r: r.diaSourceId)
    return [(r.diaSourceId, r.nFrames, np.array([p.probability for p in r.classes])) for r in records]


def test_service_outputs_do_not_depend_on_the_batch_size(kafka_settings: Settings) -> None:
    values = stream()
    bootstrap = kafka_settings.kafka.bootstrap_servers
    runs = {size: outputs_with_batch_size(kafka_settings, bootstrap, values, size) for size in (1, 7, 256)}
    reference = runs[1]
    assert [(s, n) for s, n, _ in reference] == [
        (4002, 3), (4003, 4), (4004, 5), (4005, 6),
        (4102, 3), (4103, 5), (4104, 4), (4105, 6),  # 4104 arrived before 4103
        (4202, 3), (4203, 4), (4204, 5), (4205, 6),
    ]  # fmt: skip
    for size in (7, 256):
        assert [(s, n) for s, n, _ in runs[size]] == [(s, n) for s, n, _ in reference], size
        worst = max(
            float(np.abs(a - b).max()) for (_, _, a), (_, _, b) in zip(runs[size], reference, strict=True)
        )
        assert worst <= 1e-5, (size, worst)
