"""The per-batch work on records: alerts in, frames stored, classifications out. No Kafka, no bytes.

For every alert of a micro-batch: ignore bands the model lacks, normalise its cutout unless it comes with
its frame (the service's preparation processes normalise beforehand; typed errors -> rejected with their
reason; an unexpected exception rejects that alert alone with reason ``internal_error``, logged with its
traceback), store the frame (idempotent by ``diaSourceId``), and classify with incremental inference,
batched across objects.

Outputs are causal: a batch gives every alert the output that processing the stream one alert at a time
would give, whatever the batch size. An alert's *known frames* are the object's frames stored before
the batch plus its batch-mates that arrived before it (in arrival order) and its own frame; its output
classifies exactly those frames (in time order, the model's most recent window of them), and its
``nFrames`` counts the frames of that window. An alert gets an output once its object has at least
``min_frames`` known frames; so a late (out-of-order) frame that brings its object to ``min_frames`` is
classified at once, with every frame known when it arrived. A redelivered frame (already stored before
the batch: a crash between storing and publishing) is judged by its rank in time order among the stored
frames and classified with the frames up to it in time order, so an early frame stays early; a
redelivered late frame gets no second output (the store keeps no arrival order), and the object's next
alert is classified anyway. A frame repeated inside one batch gets its first occurrence's output.

Incremental path: when the batch's new frames of an object arrive in time order after its stored ones,
the object's cached tokens (see :mod:`broker_plugin.tracking`) are extended one new frame at a time,
which gives the output of every new frame on the way. The cache is used only when it provably describes
every earlier frame (its frame count matches the store's and it ends with the newest stored frame);
otherwise it is rebuilt from the stored frames first. New frames that arrive out of time order (unkeyed
alerts drained from many partitions after a pause) make each such alert's known frames a different
sequence: each frame is inserted among the object's known frames in arrival order; the tokens of the
chunks before it are kept, the chunks after it are embedded again (batched across objects) and the last
known frame is stepped with the alert's own history. Either way the outputs are those of a full
recompute of the known frames (within 1e-5, tested); redelivered frames are classified by full recompute.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from broker_plugin import __version__
from broker_plugin.exceptions import BrokerPluginError
from broker_plugin.inference.incremental import ObjectCache, RebuildJob
from broker_plugin.inference.predictor import Prediction, Predictor
from broker_plugin.inference.preprocess import ModelInput
from broker_plugin.records import Alert, Classification, ClassProbability, Frame
from broker_plugin.stamps import StampNormaliser
from broker_plugin.state.base import AddResult, StateStore, object_key
from broker_plugin.tracking import ObjectTrack, extend_recent, window_meta

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
    frame
        The alert's frame when it was normalised beforehand (by the normaliser with the model's stamp
        settings); the pipeline then uses it as is and the alert needs no cutout.
    """

    alert: Alert
    alert_timestamp_ms: int | None = None
    ref: object = None
    frame: Frame | None = None


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
    #: Wall time of the stages [s]: cutouts -> frames, the state-store write, the model (with its cache
    #: reads and writes).
    normalise_seconds: float = 0.0
    store_seconds: float = 0.0
    inference_seconds: float = 0.0
    #: Alerts rejected with reason ``internal_error`` (an unexpected exception: a bug to report).
    internal_errors: int = 0


#: What one output says about the frames it used: (prediction, first midpoint, bands used).
_Answer = tuple[Prediction, float, tuple[str, ...]]


@dataclass
class _ObjectWork:
    """One object's alerts of a micro-batch, in arrival order, and what the batch decided for them."""

    key: str
    items: list[tuple[Inbound, Frame]]
    added: AddResult | None = None
    #: Frames the object had before this batch (the store's count; recounted when its frames are read,
    #: since a read drops stored frames that fail the frame invariants).
    base: int = 0
    #: Index into ``items`` -> the answer its output carries (only alerts that get an output).
    answers: dict[int, _Answer] = field(default_factory=dict)
    track: ObjectTrack | None = None

    def new_indices(self) -> list[int]:
        """Indices of the first occurrence of every frame stored by this batch, in arrival order."""
        assert self.added is not None  # noqa: S101 - set by process() before any use
        new_ids, seen, out = set(self.added.new), set(), []
        for i, (_, frame) in enumerate(self.items):
            if frame.diaSourceId in new_ids and frame.diaSourceId not in seen:
                seen.add(frame.diaSourceId)
                out.append(i)
        return out


@dataclass
class _Insertion:
    """An object whose new frames arrived out of time order, inserted one alert at a time.

    ``known``: its frames before the batch, in time order; ``cache``: the incremental cache of the
    known frames (None: to be rebuilt); ``stored``: its frames in the store after the batch. Set while
    inserting: ``inputs`` the preprocessed rows of every frame (known and new, time order), ``order``
    the rows of the frames known so far, ``ranks`` each new frame's row, ``rows`` the new frames'
    history rows (history nets).
    """

    item: _ObjectWork
    new: list[int]
    known: list[Frame]
    stored: list[Frame]
    cache: ObjectCache | None
    inputs: ModelInput | None = None
    order: list[int] = field(default_factory=list)
    ranks: list[int] = field(default_factory=list)
    rows: np.ndarray | None = None


def _time_key(frame: Frame) -> tuple[float, int]:
    return frame.midpointMjdTai, frame.diaSourceId


def _without(stored: Sequence[Frame], new_frames: Sequence[Frame]) -> list[Frame]:
    """The stored frames that are not among ``new_frames``: those the object had before the batch."""
    new_ids = {f.diaSourceId for f in new_frames}
    return [f for f in stored if f.diaSourceId not in new_ids]


def _ids(frames: Sequence[Frame]) -> list[int]:
    return [f.diaSourceId for f in frames]


def _meta(frames: Sequence[Frame]) -> tuple[tuple[float, str], ...]:
    return tuple((f.midpointMjdTai, f.band) for f in frames)


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
        start = time.perf_counter()
        for inbound in batch:
            frame = self._frame(inbound, result)
            if frame is not None:
                key = object_key(str(inbound.alert.survey), inbound.alert.diaObjectId)
                work.setdefault(key, _ObjectWork(key, [])).items.append((inbound, frame))
        stored = time.perf_counter()
        result.normalise_seconds = stored - start
        # One durable transaction for the whole micro-batch (one fsync, not one per alert).
        added = self._store.add_batch([(w.key, [frame for _, frame in w.items]) for w in work.values()])
        result.store_seconds = time.perf_counter() - stored
        for item, result_of_item in zip(work.values(), added, strict=True):
            item.added = result_of_item
            result.frames_new += len(result_of_item.new)
            result.frames_duplicate += len(item.items) - len(result_of_item.new)
        candidates = [
            w for w in work.values() if w.added is not None and w.added.n_frames >= self._min_frames
        ]
        if candidates:
            start = time.perf_counter()
            classified = self._classify(candidates)
            result.inference_seconds = time.perf_counter() - start
            result.objects_classified = classified
        now = self._clock_ms()
        for item in candidates:
            result.classifications += self._outputs(item, now)
        return result

    def _frame(self, inbound: Inbound, result: BatchResult) -> Frame | None:
        """The alert's frame, or ``None`` with the alert recorded as ignored or rejected."""
        alert = inbound.alert
        if alert.band not in self._model.bands:
            result.ignored.append((inbound.ref, "band_not_in_model"))
            return None
        if inbound.frame is not None:
            return inbound.frame
        try:
            return self._normaliser.normalise(alert)
        except BrokerPluginError as exc:
            result.rejected.append((inbound.ref, exc.reason, str(exc)))
        except Exception as exc:  # a bug on one alert's input must not stop the batch: reject that alert
            log.exception("internal error normalising diaSourceId %s", alert.diaSourceId)
            result.rejected.append((inbound.ref, "internal_error", f"{type(exc).__name__}: {exc}"))
            result.internal_errors += 1
        return None

    # ---- classification --------------------------------------------------------------------------------

    def _classify(self, objects: list[_ObjectWork]) -> int:
        """Answer every alert that gets an output; update and store the caches. Return objects classified."""
        version = self._model.version
        stepped: list[tuple[_ObjectWork, list[int], tuple[tuple[float, str], ...]]] = []
        step_caches: list[ObjectCache | None] = []
        step_frames: list[list[Frame]] = []
        cold: list[tuple[int, list[Frame]]] = []  # stepped objects without a usable cache: their frames
        recomputes: list[tuple[_ObjectWork, int, list[Frame]]] = []
        inserted: list[_Insertion] = []
        rebuilt: list[tuple[_ObjectWork, list[Frame]]] = []
        classified = 0
        for item in objects:
            added = item.added
            assert added is not None  # noqa: S101 - set by process()
            new = item.new_indices()
            item.base = added.n_frames - len(new)  # frames stored before this batch (after pruning)
            stored: list[Frame] | None = None
            redelivered_outputs = 0
            redelivered = self._redelivered(item, new)
            if redelivered:
                stored = self._read(item, new)
                ranks = {f.diaSourceId: r for r, f in enumerate(stored, start=1)}
                for i in redelivered:
                    rank = ranks.get(item.items[i][1].diaSourceId, 0)  # 0: pruned long ago, no output
                    if rank >= self._min_frames:
                        recomputes.append((item, i, stored[:rank]))
                        redelivered_outputs += 1
            if not redelivered_outputs and not any(self._gets_output(item, k) for k in range(len(new))):
                continue
            classified += 1
            if not new:
                continue  # only redeliveries: the cache still describes the stored frames
            new_frames = [item.items[i][1] for i in new]
            if self._in_order(new_frames, added):
                blob = self._store.get_cache(item.key, version)
                track = ObjectTrack.from_bytes(blob, version) if blob is not None else None
                if track is None or not self._cache_is_current(track, added, len(new)):
                    # Rebuilt below from the stored frames, with every other such object's in one batch.
                    stored = stored if stored is not None else self._read(item, new)
                    before = _without(stored, new_frames)
                    cold.append((len(stepped), before))
                    stepped.append((item, new, _meta(before[-self._recent_keep :])))
                    step_caches.append(None)
                else:
                    stepped.append((item, new, track.recent))
                    step_caches.append(track.cache)
                step_frames.append(new_frames)
            else:
                # New frames out of time order: each alert's frame is inserted among the known ones.
                stored = stored if stored is not None else self._read(item, new)
                before = _without(stored, new_frames)
                if all(f.mask.any() for f in (*before, *new_frames)):
                    inserted.append(
                        _Insertion(item, new, before, stored, self._cache_of(item, before, stored))
                    )
                    continue
                # A frame without a measured pixel is no model input: full recomputes of each alert's frames.
                for k, i in enumerate(new):
                    if self._gets_output(item, k):
                        recomputes.append((item, i, sorted(before + new_frames[: k + 1], key=_time_key)))
                rebuilt.append((item, stored))
        for (k, _), cache in zip(cold, self._rebuilt([before for _, before in cold]), strict=True):
            step_caches[k] = cache
        self._answer_stepped(stepped, step_caches, self._predictor.preprocess_many(step_frames))
        self._answer_recomputed(recomputes)
        self._answer_inserted(inserted)
        for item, cache in zip(rebuilt, self._rebuilt([stored for _, stored in rebuilt]), strict=True):
            item[0].track = ObjectTrack(cache, _meta(item[1][-self._recent_keep :]))
        self._store.put_caches([(w.key, version, w.track.to_bytes()) for w in objects if w.track is not None])
        return classified

    def _gets_output(self, item: _ObjectWork, k: int) -> bool:
        """Whether the object's k-th new frame of the batch brings it to ``min_frames`` known frames."""
        return item.base + k + 1 >= self._min_frames

    def _read(self, item: _ObjectWork, new: list[int]) -> list[Frame]:
        """The object's stored frames (time order), and its count of frames from before this batch."""
        stored = self._store.frames(item.key)
        item.base = len(stored) - len(new)
        return stored

    def _redelivered(self, item: _ObjectWork, new: list[int]) -> list[int]:
        """Indices of alerts whose frame was stored before this batch (not repeats inside the batch)."""
        first = {item.items[i][1].diaSourceId for i in new}
        return [i for i, (_, f) in enumerate(item.items) if f.diaSourceId not in first]

    @staticmethod
    def _in_order(new_frames: list[Frame], added: AddResult) -> bool:
        """New frames arrived in time order, every one after the stored ones."""
        keys = [_time_key(f) for f in new_frames]
        return not added.inserted_before_last and all(a < b for a, b in itertools.pairwise(keys))

    def _cache_is_current(self, track: ObjectTrack, added: AddResult, n_new: int) -> bool:
        """Whether the stored cache describes every frame stored before the batch.

        Its frame count must match the store's, and its last frame must be the newest stored one: at
        the pruning limit the count alone cannot tell a current cache from one a crash left a batch
        behind (frames committed, their cache not).
        """
        if not self._predictor.cache_fits(track.cache):
            return False
        last = added.last_before
        if last is None or not track.recent or track.recent[-1][0] != last[0]:
            return False
        expected = track.cache.n_frames + n_new
        pruned = added.n_frames == self._max_frames and expected > added.n_frames
        return expected == added.n_frames or pruned

    def _cache_of(self, item: _ObjectWork, before: list[Frame], stored: list[Frame]) -> ObjectCache | None:
        """The stored cache when it describes exactly the frames ``before`` the batch, else None."""
        blob = self._store.get_cache(item.key, self._model.version)
        track = ObjectTrack.from_bytes(blob, self._model.version) if blob is not None else None
        if track is None or not self._predictor.cache_fits(track.cache):
            return None
        # A store at its pruning limit may have dropped frames the cache counted: rebuild then.
        exact = track.cache.n_frames == len(before) and len(stored) < self._max_frames
        return track.cache if exact else None

    def _answer_stepped(
        self,
        stepped: list[tuple[_ObjectWork, list[int], tuple[tuple[float, str], ...]]],
        caches: list,
        inputs: list,
    ) -> None:
        """Extend the caches one new frame at a time: the output of every new frame on the way."""
        if not stepped:
            return
        for (item, new, recent), (steps, cache) in zip(
            stepped, self._predictor.update_steps(caches, inputs), strict=True
        ):
            for k, (i, prediction) in enumerate(zip(new, steps, strict=True)):
                frame = item.items[i][1]
                recent = extend_recent(recent, [(frame.midpointMjdTai, frame.band)], self._recent_keep)
                if self._gets_output(item, k):
                    item.answers[i] = (prediction, *window_meta(recent, prediction.n_frames))
            item.track = ObjectTrack(cache, recent)

    def _answer_recomputed(self, recomputes: list[tuple[_ObjectWork, int, list[Frame]]]) -> None:
        """Full recompute of each listed alert's known frames (out-of-order arrivals, redeliveries)."""
        if not recomputes:
            return
        # Each output reads the history its own alert carried, whatever frame is last in time.
        triggers = [item.items[i][1] for item, i, _ in recomputes]
        predictions = self._predictor.predict_frames([frames for _, _, frames in recomputes], triggers)
        for (item, i, frames), prediction in zip(recomputes, predictions, strict=True):
            item.answers[i] = (prediction, *window_meta(_meta(frames), prediction.n_frames))

    def _answer_inserted(self, inserted: list[_Insertion]) -> None:
        """Insert each out-of-order alert's frame among its object's known frames, one alert at a time.

        Each object's frames (those before the batch and its new ones) are preprocessed once, in time
        order; the known frames of each alert are a selection of those rows. Round ``k`` takes the k-th
        new frame of every such object: the known frames keep their tokens up to the chunk where the frame
        lands, the chunks after it are embedded again (batched across objects), and the last known frame
        is stepped with the alert's own history, which gives the output that a full recompute of the
        known frames gives.
        """
        if not inserted:
            return
        predictor = self._predictor
        sequences = [
            sorted((*x.known, *(x.item.items[i][1] for i in x.new)), key=_time_key) for x in inserted
        ]
        for x, frames, inputs in zip(
            inserted, sequences, predictor.preprocess_many(sequences, rows=False), strict=True
        ):
            new_frames = [x.item.items[i][1] for i in x.new]
            x.inputs = inputs
            rank = {f.diaSourceId: r for r, f in enumerate(frames)}
            x.order = [rank[f.diaSourceId] for f in x.known]
            x.ranks = [rank[f.diaSourceId] for f in new_frames]
            x.rows = predictor.history_rows(new_frames)
        cold = [x for x in inserted if x.cache is None]
        caches = predictor.new_caches([RebuildJob(x.inputs.take(x.order)) for x in cold])
        for x, cache in zip(cold, caches, strict=True):
            x.cache = cache
        for k in range(max(len(x.new) for x in inserted)):
            active = [x for x in inserted if len(x.new) > k]
            jobs, bases, inputs = [], [], []
            for x in active:
                assert x.cache is not None and x.inputs is not None  # noqa: S101 - set above
                j = bisect.bisect_left(x.order, x.ranks[k])
                x.order.insert(j, x.ranks[k])
                known = x.inputs.take(x.order)
                if j == len(x.order) - 1:  # after every known frame: a plain step
                    bases.append(x.cache)
                else:
                    start = predictor.rebuild_start(x.cache, len(known) - 1, j)
                    jobs.append(RebuildJob(known[start:-1], start, x.cache))
                    bases.append(None)
                step = known[-1:]
                inputs.append(
                    step if x.rows is None else dataclasses.replace(step, history=x.rows[k : k + 1])
                )
            rebuilt = iter(predictor.new_caches(jobs))
            caches = [b if b is not None else next(rebuilt) for b in bases]
            for x, (steps, cache) in zip(active, predictor.update_steps(caches, inputs), strict=True):
                x.cache = cache
                if self._gets_output(x.item, k):
                    frames = sorted((*x.known, *(x.item.items[i][1] for i in x.new[: k + 1])), key=_time_key)
                    recent = _meta(frames[-self._recent_keep :])
                    x.item.answers[x.new[k]] = (steps[0], *window_meta(recent, steps[0].n_frames))
        for x in inserted:
            x.known = sorted((*x.known, *(x.item.items[i][1] for i in x.new)), key=_time_key)
        # The store may have pruned frames the known sequence holds: the cache then describes the store.
        pruned = [x for x in inserted if _ids(x.known) != _ids(x.stored)]
        for x, cache in zip(pruned, self._rebuilt([x.stored for x in pruned]), strict=True):
            x.cache, x.known = cache, x.stored
        for x in inserted:
            assert x.cache is not None  # noqa: S101 - set above
            x.item.track = ObjectTrack(x.cache, _meta(x.known[-self._recent_keep :]))

    def _rebuilt(self, sequences: list[list[Frame]]) -> list[ObjectCache]:
        """Caches of objects' whole frame sequences (time order), embedded in one batch.

        A sequence without a frame the model reads gets an empty cache.
        """
        predictor = self._predictor
        inputs = predictor.preprocess_many(sequences, rows=False)
        built = iter(predictor.new_caches([RebuildJob(i) for i in inputs if len(i)]))
        return [next(built) if len(i) else predictor.new_cache() for i in inputs]

    # ---- outputs ---------------------------------------------------------------------------------------

    def _outputs(self, item: _ObjectWork, now_ms: int) -> list[tuple[object, Classification]]:
        names = self._predictor.class_names
        first_index: dict[int, int] = {}
        out = []
        for i, (inbound, frame) in enumerate(item.items):
            # A frame repeated inside the batch gets the answer of its first occurrence.
            answer = item.answers.get(first_index.setdefault(frame.diaSourceId, i))
            if answer is None:
                continue
            prediction, first_mjd, bands = answer
            probs, spread = np.asarray(prediction.probabilities), np.asarray(prediction.spread)
            classes = tuple(
                ClassProbability(name, float(p), float(s))
                for name, p, s in zip(names, probs, spread, strict=True)
            )
            alert = inbound.alert
            out.append((inbound.ref, Classification(
                diaObjectId=alert.diaObjectId, diaSourceId=alert.diaSourceId, survey=alert.survey,
                midpointMjdTai=alert.midpointMjdTai, predictedClass=names[int(np.argmax(probs))],
                classes=classes, nFrames=prediction.n_frames, bandsUsed=bands, firstMidpointMjdTai=first_mjd,
                modelName=self._model.name, modelVersion=self._model.version,
                modelChecksum=self._model.checksum, ensembleSize=self._model.ensemble_size,
                alertTimestamp=inbound.alert_timestamp_ms, publishTimestamp=now_ms, pluginVersion=__version__,
            )))  # fmt: skip
        return out
