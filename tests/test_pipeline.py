"""The records-level pipeline: gating by frames, incremental == rebuild, idempotency, rejects."""

import dataclasses

import numpy as np
import pytest

from broker_plugin.config import Settings
from broker_plugin.factory import build_parts
from broker_plugin.pipeline import Inbound
from tests.factories import object_alerts, rubin_message


@pytest.fixture
def parts(service_settings: Settings):
    built = build_parts(service_settings)
    yield built
    built.close()


def inbound(parts, messages: list[bytes]) -> list[Inbound]:
    return [
        Inbound(a, 1_700_000_000_000, i)
        for i, m in enumerate(messages)
        for a in parts.decoder.decode_message(m)
    ]


def test_outputs_start_at_min_frames_and_follow_every_alert(parts) -> None:
    alerts = inbound(parts, object_alerts(11, 6, first_source=100))
    outputs = []
    for item in alerts:  # one alert per batch: the streaming case
        outputs += parts.pipeline.process([item]).classifications
    assert [c.diaSourceId for _, c in outputs] == [102, 103, 104, 105]
    first = outputs[0][1]
    assert first.nFrames == 3 and first.bandsUsed == ("g", "r", "i") and first.ensembleSize == 2
    assert sum(p.probability for p in first.classes) == pytest.approx(1.0, abs=1e-5)
    assert first.predictedClass == max(first.classes, key=lambda p: p.probability).name
    assert first.alertTimestamp == 1_700_000_000_000 and first.modelVersion == parts.model.version


def test_incremental_equals_rebuilding_from_frames(parts, service_settings: Settings, tmp_path) -> None:
    alerts = inbound(parts, object_alerts(12, 10, first_source=200))
    streamed = [parts.pipeline.process([a]).classifications for a in alerts][-1][0][1]
    # A fresh store that gets all frames at once has no cache: it rebuilds from the frames.
    other = service_settings.model_copy(update={"state": service_settings.state.model_copy(
        update={"url": f"sqlite:///{tmp_path / 'other.db'}"})})  # fmt: skip
    fresh = build_parts(other)
    try:
        batch = fresh.pipeline.process(alerts).classifications
    finally:
        fresh.close()
    rebuilt = batch[-1][1]
    assert [c.diaSourceId for _, c in batch] == list(range(202, 210))
    got = np.array([p.probability for p in streamed.classes])
    want = np.array([p.probability for p in rebuilt.classes])
    assert np.abs(got - want).max() <= 1e-5
    assert streamed.firstMidpointMjdTai == rebuilt.firstMidpointMjdTai and streamed.nFrames == rebuilt.nFrames


def test_redelivered_alerts_are_stored_once_and_classified_again(parts) -> None:
    alerts = inbound(parts, object_alerts(13, 4, first_source=300))
    first = parts.pipeline.process(alerts)
    again = parts.pipeline.process(alerts)
    assert first.frames_new == 4 and again.frames_new == 0 and again.frames_duplicate == 4
    assert [c.diaSourceId for _, c in again.classifications] == [302, 303]
    assert parts.store.frame_count("rubin:13") == 4
    a = [p.probability for p in first.classifications[-1][1].classes]
    b = [p.probability for p in again.classifications[-1][1].classes]
    assert np.allclose(a, b, atol=1e-5)


def test_out_of_order_frame_rebuilds_the_sequence(parts) -> None:
    alerts = inbound(parts, object_alerts(14, 5, first_source=400))
    for item in alerts[:2] + alerts[3:]:
        parts.pipeline.process([item])
    late = parts.pipeline.process([alerts[2]]).classifications
    assert len(late) == 1 and late[0][1].nFrames == 5


def test_a_late_frame_that_completes_min_frames_is_classified(parts) -> None:
    """Frames 1 and 3 arrive, then frame 2: the object now has 3 frames, so frame 2's alert gets an output."""
    alerts = inbound(parts, object_alerts(15, 3, first_source=500))
    assert parts.pipeline.process([alerts[0]]).classifications == []
    assert parts.pipeline.process([alerts[2]]).classifications == []
    late = parts.pipeline.process([alerts[1]]).classifications
    assert [(c.diaSourceId, c.nFrames) for _, c in late] == [(501, 3)]
    again = parts.pipeline.process([alerts[1]]).classifications  # redelivered: ranked by time, as stored
    assert again == []


def test_rejections_and_ignored_bands_are_reported(parts) -> None:
    good = object_alerts(15, 3, first_source=500)
    no_cutout = rubin_message(diaSourceId=600, diaObjectId=16, cutout=None)
    broken = rubin_message(diaSourceId=601, diaObjectId=16, cutout=b"SIMPLE  = garbage")
    result = parts.pipeline.process(inbound(parts, [*good, no_cutout, broken]))
    reasons = sorted(reason for _, reason, _ in result.rejected)
    assert reasons == ["corrupt_cutout", "missing_cutout"]
    assert len(result.classifications) == 1


def test_bands_the_model_lacks_are_ignored(parts) -> None:
    parts.pipeline._model = dataclasses.replace(parts.pipeline._model, bands=("g", "r"))  # a g,r-only model
    result = parts.pipeline.process(inbound(parts, object_alerts(17, 4, first_source=700, bands="gri")))
    assert len(result.ignored) == 1 and result.ignored[0][1] == "band_not_in_model"
    assert result.frames_new == 3
