"""Preparation (decode + normalise) in this process and in a pool of processes that may die."""

from __future__ import annotations

import dataclasses
import io
import multiprocessing
from pathlib import Path

import fastavro
import numpy as np
import pytest

from broker_plugin.config import Settings
from broker_plugin.factory import build_parts
from broker_plugin.pipeline import Inbound
from broker_plugin.prepare import (
    PreparationPool,
    PrepareConfig,
    Prepared,
    PreparedAlert,
    Preparer,
    Rejection,
    make_decoder,
)
from broker_plugin.serde.rubin import encode_rubin_message
from broker_plugin.stamps import StampNormaliser
from tests.factories import object_alerts, rubin_message
from tests.hostile import HOSTILE, HOSTILE_PLANES
from tests.preparers import SEGFAULT, crashing, refusing
from tests.state.conftest import assert_same_frame


@pytest.fixture
def config(settings: Settings) -> PrepareConfig:
    return PrepareConfig(settings.schema_registry, settings.limits, settings.stamps, ("g", "r", "i"))


def summary(prepared: Prepared) -> list:
    """Per message: its rejection reason, or per alert (diaSourceId, frame?, rejection reason)."""
    out: list = []
    for outcome in prepared.outcomes:
        if isinstance(outcome, Rejection):
            out.append(outcome.reason)
        else:
            out.append([(a.alert.diaSourceId, a.frame is not None, a.rejection and a.rejection.reason)
                        for a in outcome])  # fmt: skip
    return out


def test_a_preparer_decodes_normalises_and_rejects_per_message_and_alert(
    config: PrepareConfig, settings: Settings
) -> None:
    good = object_alerts(1, 4, first_source=100, bands="grzi")  # z: a band the model lacks
    values = [
        good[0],
        b"\x07 not an alert",
        good[1],
        rubin_message(diaSourceId=200, diaObjectId=2, cutout=b"SIMPLE  = garbage", band="g"),
        good[2],
        good[3],
    ]
    prepared = Preparer(config).prepare(values)
    assert summary(prepared) == [
        [(100, True, None)],
        "wrong_magic_byte",
        [(101, True, None)],
        [(200, False, "corrupt_cutout")],
        [(102, False, None)],  # band z: not normalised, the pipeline ignores it
        [(103, True, None)],
    ]
    first = prepared.outcomes[0][0]
    assert isinstance(first, PreparedAlert) and first.alert.cutoutDifference is None  # the bytes stay behind
    # The same frame the pipeline's own normaliser makes.
    alert = make_decoder(settings.schema_registry, settings.limits).decode_message(good[0])[0]
    reference = StampNormaliser(settings.stamps, settings.limits).normalise(alert)
    light = dataclasses.replace(alert, cutoutDifference=None, cutoutScience=None, cutoutTemplate=None)
    # Alert equality meets PhotometryHistory's array fields: compare the history's arrays apart.
    assert first.frame is not None and dataclasses.replace(first.alert, history=None) == dataclasses.replace(
        light, history=None
    )
    assert first.alert.history is not None and light.history is not None
    assert np.array_equal(first.alert.history.midpointMjdTai, light.history.midpointMjdTai)
    assert np.array_equal(first.frame.data, reference.data)
    assert np.array_equal(first.frame.mask, reference.mask)
    assert first.frame.flags == reference.flags and first.frame.originalShape == reference.originalShape
    assert prepared.decode_seconds > 0 and prepared.normalise_seconds > 0


def test_every_hostile_class_is_rejected_with_its_reason(config: PrepareConfig) -> None:
    cases = list(HOSTILE.items())
    prepared = Preparer(config).prepare([builder(90_000 + i) for i, (_, (builder, _)) in enumerate(cases)])
    for (name, (_, reasons)), outcome in zip(cases, prepared.outcomes, strict=True):
        if isinstance(outcome, Rejection):
            reason = outcome.reason
        else:
            assert len(outcome) == 1 and outcome[0].rejection is not None, name
            reason = outcome[0].rejection.reason
        assert reason in reasons, (name, reason)


def test_a_bug_in_the_normaliser_is_an_internal_error_with_its_traceback(config: PrepareConfig) -> None:
    preparer = Preparer(config)

    def broken(alert):
        raise ZeroDivisionError("a normaliser bug")

    preparer._normaliser.normalise = broken  # type: ignore[method-assign]
    [[item]] = preparer.prepare(object_alerts(3, 1, first_source=300)).outcomes
    assert item.rejection is not None and item.rejection.reason == "internal_error"
    assert (
        item.rejection.stage == "normalise" and item.rejection.error == "ZeroDivisionError: a normaliser bug"
    )
    assert "Traceback" in item.rejection.traceback and "in broken" in item.rejection.traceback


def test_prepared_frames_give_the_pipeline_the_same_outputs(service_settings: Settings, tmp_path) -> None:
    """The pipeline's outputs with frames made beforehand equal those with frames it makes itself."""
    stream = [raw for group in zip(*(object_alerts(40 + k, 6, first_source=4000 + 100 * k) for k in range(3)),
                                   strict=True) for raw in group]  # fmt: skip
    runs = []
    for prepared_beforehand in (False, True):
        state = service_settings.state.model_copy(
            update={"url": f"sqlite:///{tmp_path / f'{prepared_beforehand}.db'}"}
        )
        parts = build_parts(service_settings.model_copy(update={"state": state}))
        try:
            if prepared_beforehand:
                outcomes = Preparer(parts.prepare).prepare(stream).outcomes
                items = [Inbound(a.alert, 1, i, a.frame) for i, o in enumerate(outcomes) for a in o]
            else:
                items = [
                    Inbound(a, 1, i) for i, m in enumerate(stream) for a in parts.decoder.decode_message(m)
                ]
            outputs = []
            for start in range(0, len(items), 5):
                outputs += parts.pipeline.process(items[start : start + 5]).classifications
        finally:
            parts.close()
        runs.append([(ref, c.diaSourceId, c.nFrames, c.bandsUsed, [p.probability for p in c.classes])
                     for ref, c in outputs])  # fmt: skip
    assert len(runs[0]) == 12
    assert runs[0] == runs[1]


@pytest.mark.parametrize("processes", [1, 2])
def test_a_process_death_rejects_only_the_message_that_causes_it(
    config: PrepareConfig, processes: int
) -> None:
    deaths: list[int] = []
    pool = PreparationPool(
        config, processes, make_preparer=crashing, on_process_death=lambda: deaths.append(1)
    )
    pool.start()
    good = object_alerts(5, 8, first_source=500, bands="gri")
    try:
        polls = [good[0:2], [good[2], SEGFAULT + b"poison", good[3]], good[4:6], [b"\x07 bad"], good[6:]]
        pending = [pool.submit(values) for values in polls]
        results = [summary(pool.result(p)) for p in pending]
        after = summary(pool.result(pool.submit(good[:1])))  # the restarted pool works
    finally:
        pool.close()
    assert results == [
        [[(500, True, None)], [(501, True, None)]],
        [[(502, True, None)], "internal_error", [(503, True, None)]],
        [[(504, True, None)], [(505, True, None)]],
        ["wrong_magic_byte"],
        [[(506, True, None)], [(507, True, None)]],
    ]
    assert after == [[(500, True, None)]]
    # At least the pool's process and the process the poison was retried in alone.
    assert len(deaths) >= 2


def test_the_dead_letter_of_a_process_death_says_so(config: PrepareConfig) -> None:
    pool = PreparationPool(config, 1, make_preparer=crashing)
    pool.start()
    try:
        [rejection] = pool.result(pool.submit([SEGFAULT])).outcomes
    finally:
        pool.close()
    assert rejection == Rejection("internal_error", "preparation process died", "prepare")


def test_close_stops_every_preparation_process(config: PrepareConfig) -> None:
    before = set(multiprocessing.active_children())
    pool = PreparationPool(config, 2)
    pool.start()
    started = set(multiprocessing.active_children()) - before
    assert started and all(p.is_alive() for p in started)
    pool.result(pool.submit(object_alerts(6, 1, first_source=600)))
    pool.close()
    assert not any(p.is_alive() for p in started)
    with pytest.raises(RuntimeError, match="not started"):
        pool.submit([b""])


def test_a_preparer_that_cannot_be_built_fails_the_start(config: PrepareConfig) -> None:
    pool = PreparationPool(config, 1, make_preparer=refusing)
    with pytest.raises(RuntimeError, match="could not start"):
        pool.start()
    pool.close()


DEMO = Path(__file__).resolve().parents[1] / "broker_plugin" / "demo_data"


def demo_messages() -> list[bytes]:
    """Demo archive files (simulated Rubin alerts with all three cutouts), each one message value."""
    return [path.read_bytes() for path in sorted(DEMO.glob("*.avro"))[:6]]


def demo_with_corrupt_science() -> bytes:
    """A demo alert as a Rubin Kafka message, its cutoutScience replaced by bytes that are not FITS."""
    record = next(fastavro.reader(io.BytesIO(demo_messages()[0])))
    record["cutoutScience"] = b"not a FITS file"
    return encode_rubin_message(record, "11.1")


def test_frames_keep_their_planes_and_photometry_across_the_process_boundary(
    config: PrepareConfig, settings: Settings
) -> None:
    """Demo alerts through a real preparation process: the frames the pipeline gets are the normaliser's."""
    values = demo_messages()
    missing: list[tuple[str, str, int]] = []
    pool = PreparationPool(config, 1, on_planes_missing=lambda *counted: missing.append(counted))
    pool.start()
    try:
        prepared = pool.result(pool.submit([*values, demo_with_corrupt_science()]))
    finally:
        pool.close()
    decoder = make_decoder(settings.schema_registry, settings.limits)
    normaliser = StampNormaliser(settings.stamps, settings.limits)
    compared = 0
    for value, outcome in zip([*values, demo_with_corrupt_science()], prepared.outcomes, strict=True):
        assert not isinstance(outcome, Rejection)
        for item, alert in zip(outcome, decoder.decode_message(value), strict=True):
            # Only the frame crosses back with the alert's fields: no cutout bytes.
            assert (
                item.alert.cutoutDifference is item.alert.cutoutScience is item.alert.cutoutTemplate is None
            )
            if alert.band not in config.bands:
                assert item.frame is None
                continue
            assert item.frame is not None and item.rejection is None
            assert_same_frame(item.frame, normaliser.normalise(alert))
            assert (item.frame.template is not None) and (item.frame.psfFlux == alert.psfFlux is not None)
            assert (item.frame.science is None) == (alert.cutoutScience == b"not a FITS file")
            compared += 1
    assert compared >= 10
    # The one corrupt science cutout: counted, its alert used.
    assert prepared.planes_missing == {("science", "corrupt_cutout"): 1}
    assert missing == [("science", "corrupt_cutout", 1)]


def test_missing_planes_are_counted_per_poll(config: PrepareConfig) -> None:
    preparer = Preparer(config)
    # The factories' Rubin alerts have no science or template cutouts.
    first = preparer.prepare(object_alerts(9, 3, first_source=900, bands="gri"))
    assert first.planes_missing == {("science", "missing_cutout"): 3, ("template", "missing_cutout"): 3}
    second = preparer.prepare([demo_with_corrupt_science()])
    assert second.planes_missing == {("science", "corrupt_cutout"): 1}
    first.add(second)
    assert first.planes_missing[("science", "corrupt_cutout")] == 1 and len(first.outcomes) == 4


@pytest.mark.parametrize("name", list(HOSTILE_PLANES))
def test_a_hostile_science_or_template_costs_the_plane_not_the_alert(
    name: str, config: PrepareConfig
) -> None:
    builder, plane, reason = HOSTILE_PLANES[name]
    prepared = Preparer(config).prepare([builder(95_000)])
    [[item]] = prepared.outcomes  # one message, one alert: not a rejection
    assert isinstance(item, PreparedAlert) and item.rejection is None and item.frame is not None
    assert getattr(item.frame, plane) is None
    other = "template" if plane == "science" else "science"
    assert getattr(item.frame, other) is not None
    assert prepared.planes_missing == {(plane, reason): 1}
