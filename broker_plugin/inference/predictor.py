"""The ensemble predictor: micro-batches of objects in, mean class probabilities and spread out.

Two paths give the same numbers (tested):

- :meth:`Predictor.predict`: full recompute of each object's window (any number of objects, any
  lengths; grouped by length into micro-batches so padding stays small);
- :meth:`Predictor.update`: incremental, one :class:`~broker_plugin.inference.incremental.ObjectCache`
  per object in, updated caches out (the service stores them keyed by ``model_id``).

The net ensemble's answer is the mean of the members' probabilities; ``spread`` is their standard
deviation (population, 0 for a single member). An artifact with history trees
(:mod:`~broker_plugin.inference.trees`) answers with the product of that mean and the trees'
probabilities for the same output's history rows; ``spread`` stays the members'. Runs on CUDA when
available, else CPU, under ``torch.inference_mode``; ``bf16=True`` adds bfloat16 autocast (sensible on
GPUs only).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from broker_plugin.inference.artifact import CLASS_NAMES, load_artifact
from broker_plugin.inference.errors import InferenceInputError
from broker_plugin.inference.history import collate_history, frame_history_rows
from broker_plugin.inference.incremental import FrameExtras, IncrementalEngine, ObjectCache, RebuildJob
from broker_plugin.inference.preprocess import (
    FluxNormalisation,
    ModelInput,
    collate,
    collate_context,
    frames_to_inputs,
    select_window,
    window_start,
)
from broker_plugin.inference.trees import BoostedTrees, blend
from broker_plugin.records import Frame


@dataclass(frozen=True)
class Prediction:
    """The ensemble's answer for one object.

    Attributes
    ----------
    probabilities
        ``(classes,)`` the answer: the members' mean class probabilities, blended with the history
        trees' when the artifact has them.
    spread
        ``(classes,)`` standard deviation of the members' probabilities.
    n_frames
        Frames in the window the prediction used.
    """

    probabilities: np.ndarray
    spread: np.ndarray
    n_frames: int


def default_device() -> torch.device:
    """Return CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Predictor:
    """Classify objects with an ensemble of nets of one architecture.

    Parameters
    ----------
    members
        The ensemble (moved to ``device`` and put in eval mode).
    model_id
        Version of the weights; keys the incremental caches.
    normalisation
        Flux normalisation the members were trained with.
    class_names
        Output classes, in logit order.
    device
        Where to run; CUDA when available by default.
    bf16
        Run under bfloat16 autocast.
    max_batch_size
        Objects per forward pass.
    stacked
        Run all members in one pass (stacked weights) when the architecture allows it; False runs them
        one after the other, the reference path (same outputs within 1e-5, tested; for benchmarks).
    share_backbones
        Run (and cache) once the backbone that members share (the default recipe's folds share one);
        False runs every member's own copy, the same outputs at the members' cost (for benchmarks).
    trees
        History trees blended with the members (history nets only); None: the members alone.
    net_weight
        The members' exponent in the blend with ``trees`` (the trees get ``1 - net_weight``).
    """

    def __init__(
        self,
        members: Sequence[nn.Module],
        *,
        model_id: str,
        normalisation: FluxNormalisation,
        class_names: Sequence[str] = CLASS_NAMES,
        device: torch.device | str | None = None,
        bf16: bool = False,
        max_batch_size: int = 64,
        stacked: bool = True,
        share_backbones: bool = True,
        trees: BoostedTrees | None = None,
        net_weight: float = 1.0,
    ) -> None:
        self.device = torch.device(device) if device is not None else default_device()
        self.members = [m.to(self.device).eval() for m in members]
        self.model_id, self.normalisation = model_id, normalisation
        self.class_names = list(class_names)
        self.bf16, self.max_batch_size = bf16, max_batch_size
        self.engine = IncrementalEngine(
            self.members, model_id=model_id, device=self.device, stacked=stacked,
            share_backbones=share_backbones,
        )  # fmt: skip
        self.ensemble = self.engine.ensemble
        first = self.members[0]
        self.chunk_size, self.max_chunks = first.chunk_size, first.max_chunks
        self.band_offset, self.pad_window = first.band_offset, first.pad_window
        self.stamp: int = first.config.stamp
        self.uses_context: bool = self.engine.uses_context
        self.uses_history: bool = self.engine.uses_history
        if trees is not None and not self.uses_history:
            raise InferenceInputError("history trees need a net that reads the photometric history")
        if trees is not None and trees.n_classes != len(self.class_names):
            raise InferenceInputError(f"trees of {trees.n_classes} classes, not {len(self.class_names)}")
        self.trees, self.net_weight = trees, net_weight

    @classmethod
    def from_artifact(
        cls,
        directory: str | Path,
        *,
        expected_pixel_scale_arcsec: float | None = None,
        device: torch.device | str | None = None,
        bf16: bool = False,
        max_batch_size: int = 64,
        stacked: bool = True,
    ) -> Predictor:
        """Load a verified artifact (see :func:`~broker_plugin.inference.artifact.load_artifact`)."""
        art = load_artifact(directory, expected_pixel_scale_arcsec=expected_pixel_scale_arcsec)
        return cls(
            art.members, model_id=art.model_id, normalisation=art.normalisation,
            class_names=art.class_names, device=device, bf16=bf16, max_batch_size=max_batch_size,
            stacked=stacked, trees=art.trees, net_weight=art.net_weight,
        )  # fmt: skip

    def preprocess(
        self,
        frames: Sequence[Frame],
        before: Sequence[Frame] = (),
        *,
        trigger: Frame | None = None,
        rows: bool = True,
    ) -> ModelInput:
        """Turn an object's frames (time order) into model input for this ensemble.

        ``before`` are the object's earlier frames, when ``frames`` are not its first (they set the
        time origin of the context of ``uses_context`` nets). ``trigger``: the frame whose alert asks for
        the output after the last of ``frames`` (a late frame need not be the last in time); a history
        net reads that alert's history there. ``rows=False`` skips the history rows: input only for a
        cache (:meth:`new_caches`), which never holds them.
        """
        return self.preprocess_many([frames], [before], triggers=[trigger], rows=rows)[0]

    def preprocess_many(
        self,
        sequences: Sequence[Sequence[Frame]],
        befores: Sequence[Sequence[Frame]] | None = None,
        *,
        triggers: Sequence[Frame | None] | None = None,
        rows: bool = True,
    ) -> list[ModelInput]:
        """:meth:`preprocess` of several objects (one entry of ``befores`` and ``triggers`` each).

        The same inputs as one call per object, with the array work done once for all their frames
        (:func:`~broker_plugin.inference.preprocess.frames_to_inputs`).
        """
        histories: list[np.ndarray | None] | None = None
        if self.uses_history and rows:
            triggers = triggers if triggers is not None else [None] * len(sequences)
            outputs_at = [
                [*frames[:-1], trigger if trigger is not None else frames[-1]] if frames else []
                for frames, trigger in zip(sequences, triggers, strict=True)
            ]
            every = frame_history_rows([f for frames in outputs_at for f in frames])
            bounds = np.cumsum([0, *(len(frames) for frames in outputs_at)])
            histories = [every[a:b] if b > a else None for a, b in itertools.pairwise(bounds.tolist())]
        return frames_to_inputs(
            sequences, self.normalisation, band_offset=self.band_offset, stamp=self.stamp,
            with_context=self.uses_context, befores=befores, histories=histories,
        )  # fmt: skip

    def history_rows(self, frames: Sequence[Frame]) -> np.ndarray | None:
        """The history rows of the output at each of ``frames`` (None for nets without history)."""
        return frame_history_rows(frames) if self.uses_history and frames else None

    def _autocast(self) -> contextlib.AbstractContextManager[None]:
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def _batches(self, order: Sequence[int]) -> Iterator[list[int]]:
        for start in range(0, len(order), self.max_batch_size):
            yield list(order[start : start + self.max_batch_size])

    def _answers(self, member_probs: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
        """``(B, classes)``: the members' mean, blended with the trees on history ``rows`` if any."""
        mean = member_probs.mean(axis=0)
        if self.trees is None or rows is None:
            return mean
        return blend(mean, self.trees.history_probs(rows), self.net_weight)

    @torch.inference_mode()
    def predict(self, inputs: Sequence[ModelInput]) -> list[Prediction]:
        """Full recompute: classify each object's window (the most recent ``max_chunks`` chunks)."""
        windows = [select_window(inp, self.chunk_size, self.max_chunks) for inp in inputs]
        if any(len(w) == 0 for w in windows):
            raise InferenceInputError("cannot classify an object without frames")
        results: list[Prediction | None] = [None] * len(windows)
        # Similar lengths share a micro-batch, so little compute goes to padding.
        order = sorted(range(len(windows)), key=lambda i: len(windows[i]))
        for batch in self._batches(order):
            longest = max(len(windows[i]) for i in batch)
            chunks = self.max_chunks if self.pad_window else -(-longest // self.chunk_size)
            frames = self.chunk_size * chunks
            picked = [windows[i] for i in batch]
            x, band = collate(picked, frames=frames, stamp=self.stamp)
            tensors = [torch.from_numpy(x).to(self.device), torch.from_numpy(band).to(self.device)]
            if self.uses_context:
                tensors += [
                    torch.from_numpy(a).to(self.device)
                    for a in collate_context(picked, frames=frames, stamp=self.stamp)
                ]
            rows = None
            if self.uses_history:
                if not self.uses_context:
                    tensors += [None, None]
                rows = collate_history(picked)
                tensors.append(torch.from_numpy(rows).to(self.device))
            with self._autocast():
                probs = self.ensemble(*tensors).float().softmax(dim=-1).cpu().numpy()
            answers = self._answers(probs, rows)
            for j, i in enumerate(batch):
                results[i] = Prediction(answers[j], probs[:, j].std(axis=0), len(windows[i]))
        return [r for r in results if r is not None]

    def predict_frames(
        self, sequences: Sequence[Sequence[Frame]], triggers: Sequence[Frame] | None = None
    ) -> list[Prediction]:
        """Preprocess and classify objects given as frame lists (time order).

        ``triggers``: per sequence, the frame whose alert asks for the output (a late or redelivered one
        need not be the last in time). A history net reads that alert's history; by default the last
        frame's.
        """
        return self.predict(self.preprocess_many(sequences, triggers=triggers))

    def cache_fits(self, cache: ObjectCache) -> bool:
        """Whether a stored ``cache`` can be extended by this predictor (else rebuild it)."""
        return self.engine.fits(cache)

    def new_cache(self, history: ModelInput | None = None) -> ObjectCache:
        """Return an empty cache, or one rebuilt from an object's earlier frames ``history``."""
        if history is None or len(history) == 0:
            return self.engine.empty_cache()
        return self.new_caches([RebuildJob(history)])[0]

    def new_caches(self, jobs: Sequence[RebuildJob]) -> list[ObjectCache]:
        """Rebuild several objects' caches at once (see :meth:`IncrementalEngine.rebuild_many`)."""
        if not jobs:
            return []
        with self._autocast():
            return self.engine.rebuild_many(jobs)

    def rebuild_start(self, cache: ObjectCache, n_frames: int, shared: int) -> int:
        """Where a rebuild of ``n_frames`` frames whose first ``shared`` are ``cache``'s may start.

        The first frame of the first chunk that :meth:`new_caches` must embed again: the chunk holding
        frame ``shared`` when ``cache`` holds the tokens of the window's chunks before it, else the
        window's first chunk (every token embedded again).
        """
        return self.engine.rebuild_start(cache, n_frames, shared)

    def update(
        self, caches: Sequence[ObjectCache | None], new: Sequence[ModelInput]
    ) -> list[tuple[Prediction | None, ObjectCache]]:
        """Incremental path: append each object's new frames to its cache and classify it.

        Parameters
        ----------
        caches
            One per object (distinct objects); None starts an object with no history.
        new
            The object's new frames (usually one; none, e.g. a dropped missing frame, gives a None
            prediction and the cache unchanged).

        Returns
        -------
        list
            ``(prediction after the last new frame, updated cache)`` per object.
        """
        return [(steps[-1] if steps else None, cache) for steps, cache in self.update_steps(caches, new)]

    def update_steps(
        self, caches: Sequence[ObjectCache | None], new: Sequence[ModelInput]
    ) -> list[tuple[list[Prediction], ObjectCache]]:
        """Like :meth:`update`, with the prediction after *each* new frame (causal outputs).

        The k-th prediction of an object uses its cached frames and its first k+1 new frames only, so
        the alerts of one object inside one micro-batch each get the answer their own frame allows.

        Returns
        -------
        list
            ``(one prediction per new frame, in order; updated cache)`` per object.
        """
        current = [c if c is not None else self.engine.empty_cache() for c in caches]
        steps: list[list[Prediction]] = [[] for _ in current]
        rounds = max((len(n) for n in new), default=0)
        for k in range(rounds):  # the k-th new frame of every object that has one, batched
            active = [i for i, n in enumerate(new) if len(n) > k]
            for batch in self._batches(active):
                x = np.stack([new[i].x[k] for i in batch])
                band = np.stack([new[i].band[k] for i in batch])
                extras = FrameExtras.pick([new[i] for i in batch], k) if self.uses_context else None
                rows = None
                if self.uses_history:
                    rows = collate_history([new[i][k : k + 1] for i in batch])
                with self._autocast():
                    probs, updated = self.engine.step([current[i] for i in batch], x, band, extras, rows)
                answers = self._answers(probs, rows)
                for j, i in enumerate(batch):
                    current[i] = updated[j]
                    n = updated[j].n_frames
                    window = n - window_start(n, self.chunk_size, self.max_chunks)
                    steps[i].append(Prediction(answers[j], probs[:, j].std(axis=0), window))
        return list(zip(steps, current, strict=True))
