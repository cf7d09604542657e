"""The per-batch work on records: alerts in, frames stored, classifications out. No Kafka, no bytes.

For every alert of a micro-batch: normalise its cutout (typed errors -> rejected, with the reason),
ignore bands the model lacks, store the frame (idempotent by ``diaSourceId``), and, for every object
that now has at least ``min_frames`` frames, classify it with incremental inference, batched across
objects. An alert gets an output when the object has at least ``min_frames`` frames once its frame is
stored: a new frame counts the frames stored before it plus those of its batch up to it in time order; a
redelivered frame counts its rank in time order among the stored frames, so an early frame stays early
when redelivered. A late frame (older than stored ones) that brings the object to ``min_frames`` is thus
classified at once. Its redelivery gets no second output: the store keeps no arrival order, and the
object's next alert is classified anyway. Alerts of one object in one batch share the classification
computed after all of them, which uses every frame known at that moment.

Incremental path: the object's cached tokens (see :mod:`broker_plugin.tracking`) are extended with the
new frames only. The cache is used only when it provably describes every earlier frame: no redelivered
frame, no frame older than the stored ones, and the cache's frame count matches the store's. Otherwise
the cache is rebuilt from the stored frames (a crash between storing and caching, an out-of-order
arrival, a model change, two instances writing one object): the output is the same either way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from broker_plugin import __version__
from broker_plugin.exceptions import BrokerPluginError
from broker_plugin.inference.predictor import Prediction, Predictor
from broker_plugin.records import Alert, Classification, ClassProbability, Frame
from broker_plugin.stamps import StampNormaliser
from broker_plugin.state.base import AddResult, StateStore, object_key
from broker_plugin.tracking import ObjectTrack, extend_recent

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Inbound:
    """An alert to process, with what the transport knows about it.

    Attributes
    ----------
    alert
        The decoded alert.
    alert_timestamp_ms
        When the alert was produced (Kafka ``producer_timestamp`` header or message time) [ms], if known.
    ref
        The caller's handle on the source message (returned with every outcome).
    """

    alert: Alert
    alert_timestamp_ms: int | None = None
    ref: object = None


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What outputs say about the model that produced them."""

    name: str
    version: str
    checksum: str
    bands: tuple[str, ...]
    ensemble_size: int


@dataclass
class BatchResult:
    """Outcomes of one micro-batch."""

    classifications: list[tuple[object, Classification]] = field(default_factory=list)
    rejected: list[tuple[object, str, str]] = field(default_factory=list)
    ignored: list[tuple[object, str]] = field(default_factory=list)
    frames_new: int = 0
    frames_duplicate: int = 0
    objects_classified: int = 0
    inference_seconds: float = 0.0


@dataclass
class _ObjectWork:
    key: str
    items: list[tuple[Inbound, Frame]]
    added: AddResult | None = None
    track: ObjectTrack | None = None
    prediction: Prediction | None = None
    #: diaSourceId -> frames the object had once that frame was stored (outputs start at min_frames).
    ranks: dict[int, int] = field(default_factory=dict)


class Pipeline:
    """Turn batches of alerts into classifications.

    Parameters
    ----------
    normaliser
        Cutout -> frame at the model's scale.
    store
        Per-object frames and caches.
    predictor
        The model ensemble.
    model
        Name, version, checksum and bands of the model, for the outputs.
    min_frames
        Frames an object needs before it is classified.
    max_frames_per_object
        The store's pruning limit (a cache of a pruned object is checked accordingly).
    clock_ms
        Wall clock [ms since the epoch] for ``publishTimestamp``.
    """

    def __init__(
        self,
        *,
        normaliser: StampNormaliser,
        store: StateStore,
        predictor: Predictor,
        model: ModelInfo,
        min_frames: int,
        max_frames_per_object: int,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self._normaliser, self._store, self._predictor = normaliser, store, predictor
        self._model, self._min_frames = model, min_frames
        self._max_frames = max_frames_per_object
        self._clock_ms = clock_ms
        self._recent_keep = predictor.chunk_size * predictor.max_chunks

    def process(self, batch: Sequence[Inbound]) -> BatchResult:
        """Normalise, store and classify one micro-batch (see the module docstring)."""
        result = BatchResult()
        work: dict[str, _ObjectWork] = {}
        for inbound in batch:
            alert = inbound.alert
            if alert.band not in self._model.bands:
                result.ignored.append((inbound.ref, "band_not_in_model"))
                continue
            try:
                frame = self._normaliser.normalise(alert)
            except BrokerPluginError as exc:
                result.rejected.append((inbound.ref, exc.reason, str(exc)))
                continue
            key = object_key(str(alert.survey), alert.diaObjectId)
            work.setdefault(key, _ObjectWork(key, [])).items.append((inbound, frame))
        for item in work.values():
            item.items.sort(key=lambda pair: (pair[1].midpointMjdTai, pair[1].diaSourceId))
        # One durable transaction for the whole micro-batch (one fsync, not one per alert).
        added = self._store.add_batch([(w.key, [frame for _, frame in w.items]) for w in work.values()])
        for item, result_of_item in zip(work.values(), added, strict=True):
            item.added = result_of_item
            result.frames_new += len(result_of_item.new)
            result.frames_duplicate += len(item.items) - len(result_of_item.new)
        classifiable = [
            w for w in work.values() if w.added is not None and w.added.n_frames >= self._min_frames
        ]
        if classifiable:
            start = time.perf_counter()
            self._classify(classifiable)
            result.inference_seconds = time.perf_counter() - start
            result.objects_classified = len(classifiable)
        now = self._clock_ms()
        for item in classifiable:
            result.classifications += self._outputs(item, now)
        return result

    def _classify(self, objects: list[_ObjectWork]) -> None:
        """Predict every object after its new frames; update and store the caches."""
        version = self._model.version
        caches, inputs = [], []
        for item in objects:
            added = item.added
            assert added is not None  # noqa: S101 - set by process() for every classifiable object
            blob = self._store.get_cache(item.key, version)
            track = ObjectTrack.from_bytes(blob, version) if blob is not None else None
            new_ids = set(added.new)
            new_frames = [frame for _, frame in item.items if frame.diaSourceId in new_ids]
            if track is not None and self._cache_is_current(track, added, len(new_frames), len(item.items)):
                # New frames all follow the stored ones: their ranks continue the stored count.
                first = added.n_frames - len(new_frames) + 1
                item.ranks = {f.diaSourceId: first + i for i, f in enumerate(new_frames)}
                caches.append(track.cache)
                inputs.append(self._predictor.preprocess(new_frames))
                new_meta = [(f.midpointMjdTai, f.band) for f in new_frames]
                recent = extend_recent(track.recent, new_meta, self._recent_keep)
                item.track = ObjectTrack(track.cache, recent)
            else:
                frames = self._store.frames(item.key)
                item.ranks = {f.diaSourceId: i + 1 for i, f in enumerate(frames)}
                # A late frame is ranked by arrival, not by time: the object it completes to min_frames
                # is classified now, even when that frame is older than the stored ones.
                first = added.n_frames - len(new_frames) + 1
                item.ranks.update({f.diaSourceId: first + i for i, f in enumerate(new_frames)})
                caches.append(self._predictor.new_cache(self._predictor.preprocess(frames[:-1])))
                inputs.append(self._predictor.preprocess(frames[-1:]))
                recent = tuple((f.midpointMjdTai, f.band) for f in frames[-self._recent_keep :])
                item.track = ObjectTrack(caches[-1], recent)
        blobs = []
        for item, (prediction, cache) in zip(objects, self._predictor.update(caches, inputs), strict=True):
            assert item.track is not None  # noqa: S101 - set above
            item.prediction = prediction
            item.track = ObjectTrack(cache, item.track.recent)
            blobs.append((item.key, version, item.track.to_bytes()))
        self._store.put_caches(blobs)

    def _cache_is_current(self, track: ObjectTrack, added: AddResult, n_new: int, n_items: int) -> bool:
        if added.inserted_before_last or n_new != n_items or n_new == 0:
            return False
        expected = track.cache.n_frames + n_new
        pruned = added.n_frames == self._max_frames and expected > added.n_frames
        return expected == added.n_frames or pruned

    def _outputs(self, item: _ObjectWork, now_ms: int) -> list[tuple[object, Classification]]:
        prediction, track = item.prediction, item.track
        if prediction is None or track is None:
            return []
        first_mjd, bands = track.window_meta(prediction.n_frames)
        probs, spread = np.asarray(prediction.probabilities), np.asarray(prediction.spread)
        names = self._predictor.class_names
        classes = tuple(
            ClassProbability(name, float(p), float(s))
            for name, p, s in zip(names, probs, spread, strict=True)
        )
        predicted = names[int(np.argmax(probs))]
        out = []
        for inbound, frame in item.items:
            # A frame pruned from the store is older than max_frames others: ranked well past min_frames.
            if item.ranks.get(frame.diaSourceId, self._max_frames) < self._min_frames:
                continue
            alert = inbound.alert
            out.append((inbound.ref, Classification(
                diaObjectId=alert.diaObjectId, diaSourceId=alert.diaSourceId, survey=alert.survey,
                midpointMjdTai=alert.midpointMjdTai, predictedClass=predicted, classes=classes,
                nFrames=prediction.n_frames, bandsUsed=bands, firstMidpointMjdTai=first_mjd,
                modelName=self._model.name, modelVersion=self._model.version,
                modelChecksum=self._model.checksum, ensembleSize=self._model.ensemble_size,
                alertTimestamp=inbound.alert_timestamp_ms, publishTimestamp=now_ms, pluginVersion=__version__,
            )))  # fmt: skip
        return out
