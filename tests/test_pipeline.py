"""The records-level pipeline: gating by frames, incremental == rebuild, idempotency, rejects."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from broker_plugin.config import Settings
from broker_plugin.factory import build_parts
from broker_plugin.pipeline import Inbound
from broker_plugin.tracking import ObjectTrack
from tests.factories import inbound_of, make_artifact, object_alerts, rubin_message


def inbound(parts, messages: list[bytes]) -> list[Inbound]:
    return inbound_of(parts.decoder, messages, 1_700_000_000_000)


@pytest.fixture(scope="module")
def triplet_artifact(tmp_path_factory: pytest.TempPathFactory):
    """Random weights of the net that reads planes, times and photometry (its cache holds more)."""
    return make_artifact(tmp_path_factory.mktemp("triplet") / "triplet", net="convention-triplet-small")


@pytest.fixture(scope="module")
def alert_artifact(tmp_path_factory: pytest.TempPathFactory):
    """Random weights of the net that also reads each alert's photometric history."""
    return make_artifact(tmp_path_factory.mktemp("alert") / "alert", net="convention-alert-small")


@pytest.fixture(params=["convention-small", "convention-triplet-small", "convention-alert-small"])
def net_settings(request, service_settings: Settings, triplet_artifact, alert_artifact) -> Settings:
    """The service settings on a difference-only net, a context net and a context + history net."""
    if request.param == "convention-small":
        return service_settings
    artifact = triplet_artifact if request.param == "convention-triplet-small" else alert_artifact
    model = service_settings.model.model_copy(update={"artifact": artifact})
    return service_settings.model_copy(update={"model": model})


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


def test_incremental_equals_rebuilding_from_frames(net_settings: Settings, tmp_path) -> None:
    service_settings = net_settings
    parts = build_parts(service_settings)
    try:
        alerts = inbound(parts, object_alerts(12, 10, first_source=200))
        streamed = [parts.pipeline.process([a]).classifications for a in alerts][-1][0][1]
    finally:
        parts.close()
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


def test_a_stored_cache_with_a_token_row_per_member_is_rebuilt(service_settings: Settings, tmp_path) -> None:
    """Members sharing a backbone cache its tokens once; a cache holding one row per member (written by
    code that ran each member's backbone) is rebuilt from the frames, and the output is unchanged."""
    artifact = make_artifact(
        tmp_path / "shared", net="convention-alert-small", members=3, shared_backbone=True
    )
    outputs = []
    for name, corrupt in (("clean", False), ("per-member", True)):
        model = service_settings.model.model_copy(update={"artifact": artifact})
        state = service_settings.state.model_copy(update={"url": f"sqlite:///{tmp_path / name}.db"})
        parts = build_parts(service_settings.model_copy(update={"model": model, "state": state}))
        try:
            assert parts.predictor.engine.n_backbones == 1
            alerts = inbound(parts, object_alerts(15, 8, first_source=500))
            for a in alerts[:7]:
                parts.pipeline.process([a])
            if corrupt:
                version = parts.model.version
                track = ObjectTrack.from_bytes(parts.store.get_cache("rubin:15", version), version)
                tokens = np.repeat(track.cache.tokens, 3, axis=0)
                stale = dataclasses.replace(track, cache=dataclasses.replace(track.cache, tokens=tokens))
                parts.store.put_caches([("rubin:15", version, stale.to_bytes())])
            ((_, last),) = parts.pipeline.process([alerts[7]]).classifications
            outputs.append(np.array([p.probability for p in last.classes]))
            assert last.nFrames == 8
        finally:
            parts.close()
    assert np.abs(outputs[0] - outputs[1]).max() <= 1e-5


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


def _stream(parts) -> list[Inbound]:
    """Four objects interleaved; one object's frames out of time order; one alert repeated."""
    per_object = [inbound(parts, object_alerts(20 + k, 9, first_source=1000 + 100 * k)) for k in range(4)]
    per_object[1] = [*per_object[1][:3], per_object[1][5], per_object[1][3], per_object[1][4],
                     *per_object[1][6:]]  # fmt: skip
    stream = [a for group in zip(*per_object, strict=True) for a in group]
    return [*stream[:10], stream[4], *stream[10:]]


def _classified_in_batches(settings: Settings, database: Path, items_of, batch_size: int) -> list:
    """``(ref, Classification)`` of ``items_of(parts)``, a fresh pipeline taking ``batch_size`` at a time."""
    other = settings.model_copy(
        update={"state": settings.state.model_copy(update={"url": f"sqlite:///{database}"})}
    )
    parts = build_parts(other)
    try:
        items = items_of(parts)
        outputs = []
        for start in range(0, len(items), batch_size):
            outputs += parts.pipeline.process(items[start : start + batch_size]).classifications
    finally:
        parts.close()
    return outputs


def _outputs_by_batch_size(parts, service_settings: Settings, tmp_path, batch_size: int) -> list[tuple]:
    database = tmp_path / f"causal-{batch_size}.db"
    outputs = _classified_in_batches(service_settings, database, _stream, batch_size)
    # Outputs of one batch come grouped by object (each object's in arrival order): compare by alert.
    return sorted(
        (c.diaSourceId, c.nFrames, c.bandsUsed, c.firstMidpointMjdTai, [p.probability for p in c.classes])
        for _, c in outputs
    )


def test_outputs_are_causal_whatever_the_batch_size(net_settings: Settings, tmp_path) -> None:
    """Each alert's output uses exactly the frames known when it arrived: batch sizes 1, 7, 256 agree."""
    runs = {size: _outputs_by_batch_size(None, net_settings, tmp_path, size) for size in (1, 7, 256)}
    reference = runs[1]
    # 4 objects x 7 alerts from the 3rd frame on, plus the repeated alert (its object's 2nd frame: none).
    assert len(reference) == 28
    firsts = {}
    for source, n_frames, *_ in reference:
        firsts.setdefault(source // 100, (source, n_frames))
    assert sorted(firsts.values()) == [(1002, 3), (1102, 3), (1202, 3), (1302, 3)]
    for size in (7, 256):
        got = runs[size]
        assert [row[:4] for row in got] == [row[:4] for row in reference], size
        worst = max(float(np.abs(np.subtract(a[4], b[4])).max()) for a, b in zip(got, reference, strict=True))
        assert worst <= 1e-5, (size, worst)
    # The out-of-order object: frame 1105 arrived 4th, so its output used 4 frames, 1103 then used 5.
    late = {source: n for source, n, *_ in reference if 1100 <= source < 1200}
    assert late[1105] == 4 and late[1103] == 5 and late[1104] == 6


def test_alerts_of_one_object_in_one_batch_get_their_own_outputs(parts) -> None:
    alerts = inbound(parts, object_alerts(30, 6, first_source=3000))
    outputs = parts.pipeline.process(alerts).classifications
    assert [(c.diaSourceId, c.nFrames) for _, c in outputs] == [(3002, 3), (3003, 4), (3004, 5), (3005, 6)]
    probabilities = {tuple(p.probability for p in c.classes) for _, c in outputs}
    assert len(probabilities) == 4  # not one shared answer


def _scrambled(parts) -> list[Inbound]:
    """Three objects of 14 frames arriving far out of time order (as unkeyed alerts drained from many
    partitions do): late frames land in the first, a middle and the pending chunk of known frames."""
    orders = [
        [5, 6, 7, 8, 0, 9, 10, 1, 11, 12, 2, 3, 13, 4],
        [13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
        [0, 1, 2, 3, 4, 5, 6, 10, 11, 12, 7, 13, 8, 9],
    ]
    per_object = [inbound(parts, object_alerts(40 + k, 14, first_source=4000 + 100 * k)) for k in range(3)]
    arrival = [[alerts[i] for i in order] for alerts, order in zip(per_object, orders, strict=True)]
    return [a for group in zip(*arrival, strict=True) for a in group]


def test_late_frames_get_the_outputs_of_a_full_recompute(net_settings: Settings, tmp_path) -> None:
    """Every output of a scrambled stream, at batch sizes 1, 5 and 64, equals a full recompute of the
    frames its alert knew (in time order, with its own history)."""
    reference_parts = build_parts(net_settings)
    try:
        stream = _scrambled(reference_parts)
        normalise = reference_parts.normaliser.normalise
        known: dict[int, list] = {}
        expected = {}
        for item in stream:
            frames = known.setdefault(item.alert.diaObjectId, [])
            frame = normalise(item.alert)
            frames.append(frame)
            if len(frames) >= 3:
                ordered = sorted(frames, key=lambda f: (f.midpointMjdTai, f.diaSourceId))
                (pred,) = reference_parts.predictor.predict_frames([ordered], [frame])
                expected[item.alert.diaSourceId] = (pred.n_frames, pred.probabilities)
    finally:
        reference_parts.close()
    assert len(expected) == 36
    for size in (1, 5, 64):
        got = _classified_in_batches(net_settings, tmp_path / f"scrambled-{size}.db", _scrambled, size)
        assert sorted(c.diaSourceId for _, c in got) == sorted(expected), size
        for _, c in got:
            n_frames, probabilities = expected[c.diaSourceId]
            assert c.nFrames == n_frames, (size, c.diaSourceId)
            worst = float(np.abs(np.subtract([p.probability for p in c.classes], probabilities)).max())
            assert worst <= 1e-5, (size, c.diaSourceId, worst)


def test_a_cache_a_crash_left_behind_at_the_pruning_limit_is_rebuilt(
    service_settings: Settings, tmp_path
) -> None:
    """Frames committed, their cache not (a crash between the two writes), the batch redelivered: at
    the pruning limit the store's frame count stays the same, so only the cache's last frame shows that
    it misses a frame. The next output must come from the stored frames, not from a sequence without
    the lost batch's frame."""
    state = service_settings.state.model_copy(
        update={"url": f"sqlite:///{tmp_path / 'p.db'}", "max_frames_per_object": 5}
    )
    parts = build_parts(service_settings.model_copy(update={"state": state}))
    try:
        alerts = inbound(parts, object_alerts(16, 9, first_source=700))
        for a in alerts[:7]:
            parts.pipeline.process([a])
        put_caches = parts.store.put_caches
        parts.store.put_caches = lambda items: None  # the crash: alert 7's frame stored, its cache not
        parts.pipeline.process([alerts[7]])
        parts.store.put_caches = put_caches
        parts.pipeline.process([alerts[7]])  # redelivered after the restart: a duplicate frame
        ((_, last),) = parts.pipeline.process([alerts[8]]).classifications
        stored = parts.store.frames("rubin:16")
        assert [f.diaSourceId for f in stored] == [704, 705, 706, 707, 708]
        trigger = parts.normaliser.normalise(alerts[8].alert)
        (want,) = parts.predictor.predict_frames([stored], [trigger])
    finally:
        parts.close()
    assert last.nFrames == want.n_frames == 5
    got = np.array([p.probability for p in last.classes])
    assert np.abs(got - np.asarray(want.probabilities)).max() <= 1e-5
