"""Preparation processes in the running service: same outputs as in-process preparation, clean stop."""

from __future__ import annotations

import multiprocessing

import numpy as np
import pytest

from broker_plugin.config import Settings
from broker_plugin.serde.classifications import decode_classification
from tests.factories import object_alerts, rubin_message
from tests.hostile import HOSTILE
from tests.integration.conftest import RunningService
from tests.integration.support import committed, create_topics, produce, read_all, unique, wait_until

pytestmark = pytest.mark.integration


def stream() -> list[bytes]:
    """Three objects interleaved (one with two frames swapped) and bad messages of every stage between."""
    per_object = [object_alerts(50 + k, 6, first_source=5000 + 100 * k) for k in range(3)]
    per_object[2] = [*per_object[2][:3], per_object[2][4], per_object[2][3], per_object[2][5]]
    values = [raw for group in zip(*per_object, strict=True) for raw in group]
    bad = [
        b"\x07 not an alert",  # decode
        HOSTILE["rubin_nan_time"][0](5900),  # field validation
        rubin_message(diaSourceId=5901, diaObjectId=59, cutout=b"SIMPLE  = garbage"),  # normalise
        HOSTILE["tan_singular_pc"][0](5902),  # the cutout's WCS
    ]
    for k, raw in enumerate(bad):
        values.insert(3 + 4 * k, raw)
    return values


def run(settings: Settings, values: list[bytes], processes: int) -> tuple[list, list, float]:
    """Outputs ``(diaSourceId, nFrames, bands, probabilities)``, dead letters ``(offset, reason, error)``."""
    bootstrap = settings.kafka.bootstrap_servers
    names = {"input": unique("alerts"), "output": unique("classifications"), "dead": unique("dead-letter")}
    create_topics(bootstrap, *names.values(), partitions=1)
    kafka = settings.kafka.model_copy(update={
        "input_topics": [names["input"]], "output_topic": names["output"],
        "dead_letter_topic": names["dead"], "group_id": unique("group"),
    })  # fmt: skip
    state = settings.state.model_copy(update={"url": settings.state.url.replace(".db", f"-{processes}.db")})
    service = settings.service.model_copy(update={"prepare_processes": processes, "batch_max_size": 7})
    # One torch thread in every mode: the default thread count follows the preparation processes, and a
    # different count splits float32 sums differently, which would hide what this test compares.
    model = settings.model.model_copy(update={"torch_threads": 1})
    running = RunningService(
        settings.model_copy(update={"kafka": kafka, "state": state, "service": service, "model": model})
    ).start()
    try:
        produce(bootstrap, names["input"], values)
        outputs = read_all(bootstrap, names["output"], 12, partitions=1)
        dead = read_all(bootstrap, names["dead"], 4, timeout_s=10, partitions=1)
        assert wait_until(lambda: committed(bootstrap, kafka.group_id, names["input"]) == len(values), 30)
    finally:
        running.stop()
    records = sorted((decode_classification(m.value()) for m in outputs), key=lambda r: r.diaSourceId)
    letters = sorted(
        (int(h["dead_letter_source"].rsplit(b"/", 1)[1]), h["dead_letter_reason"], h["dead_letter_error"])
        for h in (dict(m.headers()) for m in dead)
    )
    seconds = running.metrics.registry.get_sample_value(
        "broker_plugin_preparation_seconds_total", {"stage": "normalise"}
    )
    return (
        [(r.diaSourceId, r.nFrames, r.bandsUsed, [p.probability for p in r.classes]) for r in records],
        letters,
        seconds or 0.0,
    )


def test_outputs_and_dead_letters_do_not_depend_on_the_preparation_mode(kafka_settings: Settings) -> None:
    values = stream()
    runs = {processes: run(kafka_settings, values, processes) for processes in (0, 1, 2)}
    outputs, letters, _ = runs[0]
    assert [(s, n) for s, n, _, _ in outputs] == [
        (5002, 3), (5003, 4), (5004, 5), (5005, 6),
        (5102, 3), (5103, 4), (5104, 5), (5105, 6),
        (5202, 3), (5203, 5), (5204, 4), (5205, 6),  # 5204 arrived before 5203
    ]  # fmt: skip
    assert [reason for _, reason, _ in letters] == [
        b"wrong_magic_byte", b"invalid_time", b"corrupt_cutout", b"bad_cutout_wcs",
    ]  # fmt: skip
    for processes in (1, 2):
        other_outputs, other_letters, seconds = runs[processes]
        assert other_letters == letters, processes
        assert [o[:3] for o in other_outputs] == [o[:3] for o in outputs], processes
        # The same frames: the same float32 computation, so the same probabilities to the bit.
        assert np.array_equal([o[3] for o in other_outputs], [o[3] for o in outputs]), processes
        assert seconds > 0, "normalising time is counted from the preparation processes"


def test_stop_shuts_the_preparation_processes_down(kafka_settings: Settings) -> None:
    service = kafka_settings.service.model_copy(update={"prepare_processes": 2})
    settings = kafka_settings.model_copy(update={"service": service})
    before = set(multiprocessing.active_children())
    running = RunningService(settings).start()
    k = settings.kafka
    values = object_alerts(70, 4, first_source=7000)
    try:
        produce(k.bootstrap_servers, k.input_topics[0], values)
        assert len(read_all(k.bootstrap_servers, k.output_topic, 2)) == 2
        pool = set(multiprocessing.active_children()) - before
        assert len(pool) == 2 and all(p.is_alive() for p in pool)
    finally:
        running.stop()  # raises if the service failed or did not stop
    assert not any(p.is_alive() for p in pool)
    assert committed(k.bootstrap_servers, k.group_id, k.input_topics[0]) == len(values)
