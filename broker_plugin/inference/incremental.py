"""Exact incremental inference: per object, cache chunk tokens; per new frame, one chunk + the blocks.

The front end sees each chunk of ``chunk_size`` frames on its own (and BatchNorm uses running
statistics in eval mode), so a chunk's token never changes once its frames are known. Per object the
cache keeps the tokens of the most recent complete chunks (at most ``max_chunks``, per ensemble
member) and the raw frames of the incomplete chunk. A new frame costs one front-end chunk plus the
attention blocks and head over the window, and the window is exactly
:func:`~broker_plugin.inference.preprocess.window_start`'s: the outputs equal a full recompute (tested).

The cache is only a cache: :meth:`IncrementalEngine.rebuild` recreates it from the object's frames,
and its bytes name the model version so a cache from another model is refused.

For nets with ``uses_context`` the cache also keeps the object's first and latest frame times (a new
frame's context is its time since the first and since the latest) and the pending frames' planes and
context vectors; a chunk's token depends on that chunk's frames and their context alone, so exactness
holds as for the difference-only nets.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from broker_plugin.inference.ensemble import EnsembleForward, ensemble_forward
from broker_plugin.inference.errors import CacheError, InferenceInputError
from broker_plugin.inference.preprocess import CONTEXT_FEATURES, ModelInput, context_features

_MAGIC = b"BPIC"
_FORMAT = 2
#: Formats :meth:`ObjectCache.from_bytes` reads (1: before planes and context).
_READABLE = (1, 2)
_DTYPES = ("<f4", "<f4", "<i8", "<f4", "<f4")


@dataclass(frozen=True)
class ObjectCache:
    """Incremental state of one object for one model version.

    Attributes
    ----------
    model_id
        The model version the tokens belong to (the artifact's ``model_id``).
    n_frames
        Frames of the object consumed so far.
    tokens
        ``(backbones, k, *token_shape)`` float32 tokens of the ``k <= max_chunks`` most recent complete
        chunks, oldest first (one row per distinct backbone of the ensemble: members fine-tuned from
        one frozen backbone share their tokens).
    pending_x, pending_band
        ``(p, H, W)`` float32 normalised frames and ``(p,)`` int64 band ids of the incomplete chunk.
    pending_aux, pending_context
        ``(p, 2, H, W)`` planes and ``(p, K)`` context vectors of those frames (``p = 0`` rows of
        zero width for nets without context).
    first_mjd, last_mjd
        Times of the object's first and latest consumed frames [MJD]; NaN before the first.
    """

    model_id: str
    n_frames: int
    tokens: np.ndarray
    pending_x: np.ndarray
    pending_band: np.ndarray
    pending_aux: np.ndarray = field(default_factory=lambda: np.zeros((0, 2, 0, 0), np.float32))
    pending_context: np.ndarray = field(default_factory=lambda: np.zeros((0, CONTEXT_FEATURES), np.float32))
    first_mjd: float = math.nan
    last_mjd: float = math.nan

    def to_bytes(self) -> bytes:
        """Serialise to bytes (JSON header + little-endian arrays + CRC-32); no pickle."""
        arrays = tuple(
            a.astype(d)
            for a, d in zip(
                (self.tokens, self.pending_x, self.pending_band, self.pending_aux, self.pending_context),
                _DTYPES,
                strict=True,
            )
        )
        header = json.dumps({
            "format": _FORMAT, "model_id": self.model_id, "n_frames": self.n_frames,
            "shapes": [list(a.shape) for a in arrays],
            "first_mjd": _json_time(self.first_mjd), "last_mjd": _json_time(self.last_mjd),
        }).encode()  # fmt: skip
        payload = b"".join(a.tobytes() for a in arrays)
        return _MAGIC + struct.pack("<II", len(header), zlib.crc32(payload)) + header + payload

    @classmethod
    def from_bytes(cls, data: bytes, *, model_id: str | None = None) -> ObjectCache:
        """Parse :meth:`to_bytes` output.

        Raises
        ------
        CacheError
            If the bytes are corrupt, of an unknown format, or (with ``model_id``) of another model.
        """
        try:
            if data[:4] != _MAGIC:
                raise ValueError("bad magic")
            header_len, crc = struct.unpack_from("<II", data, 4)
            header = json.loads(data[12 : 12 + header_len])
            payload = data[12 + header_len :]
            if zlib.crc32(payload) != crc or header["format"] not in _READABLE:
                raise ValueError("checksum or format mismatch")
            arrays, offset = [], 0
            for shape, dtype in zip(header["shapes"], _DTYPES[: len(header["shapes"])], strict=True):
                count = int(np.prod(shape))
                arrays.append(np.frombuffer(payload, dtype, count, offset).reshape(shape).astype(dtype[1:]))
                offset += count * 4 if dtype == "<f4" else count * 8
            if offset != len(payload):
                raise ValueError("trailing bytes")
        except (ValueError, KeyError, TypeError, struct.error) as exc:
            raise CacheError(f"corrupt incremental cache: {exc}") from None
        if model_id is not None and header["model_id"] != model_id:
            raise CacheError(f"cache of model {header['model_id']!r}, not {model_id!r}; rebuild it")
        times = (_read_time(header.get("first_mjd")), _read_time(header.get("last_mjd")))
        return cls(header["model_id"], header["n_frames"], *arrays, *times)


def _json_time(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _read_time(value: object) -> float:
    if value is None:
        return math.nan
    if not isinstance(value, float | int) or not math.isfinite(value):
        raise CacheError(f"corrupt incremental cache: frame time {value!r}")
    return float(value)


class IncrementalEngine:
    """Run ensemble ``members`` (same architecture, eval mode) incrementally over object caches.

    Parameters
    ----------
    members
        Nets following the :mod:`~broker_plugin.inference.nets` interface, already on ``device``.
    model_id
        Version stamped into every cache.
    device
        Where the nets run; caches stay on the host.
    stacked
        Run all members in one pass (:class:`~broker_plugin.inference.ensemble.StackedConvEntion`) when
        they allow it; False runs them one after the other (the reference path, same numbers).
    share_backbones
        Compute (and cache) the tokens of members that share a backbone once; False: once per member.
    """

    def __init__(
        self,
        members: Sequence[nn.Module],
        *,
        model_id: str,
        device: torch.device,
        stacked: bool = True,
        share_backbones: bool = True,
    ) -> None:
        self.ensemble: EnsembleForward = ensemble_forward(
            members, stacked=stacked, share_backbones=share_backbones
        )
        self.members, self.model_id, self.device = list(members), model_id, device
        ens = self.ensemble
        self.chunk, self.max_chunks, self.token_shape = ens.chunk_size, ens.max_chunks, ens.token_shape
        self.n_backbones: int = ens.n_backbones
        self.stamp: int = ens.stamp
        self.uses_context: bool = ens.uses_context
        self.uses_history: bool = ens.uses_history
        with torch.inference_mode():
            # The paper net always sees max_chunks tokens; an all-padding chunk's token is a constant.
            self._pad_token = ens.pad_tokens()

    def empty_cache(self) -> ObjectCache:
        """Return the cache of an object with no frame yet."""
        side = self.stamp if self.uses_context else 0
        return ObjectCache(
            self.model_id, 0, np.zeros((self.n_backbones, 0, *self.token_shape), np.float32),
            np.zeros((0, self.stamp, self.stamp), np.float32), np.zeros(0, np.int64),
            np.zeros((0, 2, side, side), np.float32), np.zeros((0, CONTEXT_FEATURES), np.float32),
        )  # fmt: skip

    def fits(self, cache: ObjectCache) -> bool:
        """Whether ``cache`` belongs to this model and holds tokens of this engine's backbones.

        A cache written for the same model by an engine that did not share backbones (one token row per
        member) is stale here: rebuild it.
        """
        return cache.model_id == self.model_id and cache.tokens.shape[:1] == (self.n_backbones,)

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    def rebuild(self, inp: ModelInput) -> ObjectCache:
        """Recompute the cache of an object from all its preprocessed frames (time order)."""
        return self.rebuild_many([RebuildJob(inp)])[0]

    @torch.inference_mode()
    def rebuild_many(self, jobs: Sequence[RebuildJob]) -> list[ObjectCache]:
        """Recompute the caches of several objects, their chunks embedded in one batch.

        A job whose ``reuse`` cache holds tokens of complete chunks before its ``start`` takes them from
        there instead of embedding them again (see :class:`RebuildJob`); the caches equal those of
        :meth:`rebuild` over every frame (tested).

        Raises
        ------
        CacheError
            If a job's ``reuse`` belongs to another model, or lacks a token its window needs.
        """
        plans = [self._plan(job) for job in jobs]
        slices = [job.inp[lo:hi] for job, (lo, hi, _) in zip(jobs, plans, strict=True)]
        embedded = self._embed_frames(slices)
        out, offset = [], 0
        for job, (lo, hi, reused) in zip(jobs, plans, strict=True):
            k = (hi - lo) // self.chunk
            tokens = np.concatenate((reused, embedded[:, offset : offset + k]), axis=1)
            offset += k
            out.append(self._cache_from(job, hi, tokens))
        return out

    def rebuild_start(self, cache: ObjectCache, n_frames: int, shared: int) -> int:
        """The ``start`` of a :class:`RebuildJob` over ``n_frames`` frames, ``shared`` of them ``cache``'s.

        The chunk holding frame ``shared`` when ``cache`` holds the window's tokens before it, else the
        window's first chunk (nothing reused).
        """
        c = self.chunk
        n_complete = n_frames // c
        first = n_complete - min(n_complete, self.max_chunks)
        reuse_to = min(shared // c, n_complete)
        if reuse_to <= first or not self.fits(cache):
            return c * first
        held_to = cache.n_frames // c
        if first < held_to - cache.tokens.shape[1] or reuse_to > held_to:
            return c * first
        return c * reuse_to

    def _plan(self, job: RebuildJob) -> tuple[int, int, np.ndarray]:
        """``(lo, hi, reused)``: the job's input frames ``[lo, hi)`` to embed, and the reused tokens."""
        c, start, n = self.chunk, job.start, job.start + len(job.inp)
        if start % c or (start and not len(job.inp)):
            raise InferenceInputError(f"a rebuild from frame {start} needs frames from a chunk boundary on")
        n_complete = n // c
        first = n_complete - min(n_complete, self.max_chunks)  # the oldest chunk the cache keeps
        reuse_to = min(start // c, n_complete)  # chunks [first, reuse_to) come from job.reuse
        empty = np.zeros((self.n_backbones, 0, *self.token_shape), np.float32)
        if reuse_to <= first:
            return (first * c - start, n_complete * c - start, empty)
        if job.reuse is None or not self.fits(job.reuse):
            raise CacheError("a rebuild that reuses tokens needs a cache of this engine")
        held_to = job.reuse.n_frames // c
        held_from = held_to - job.reuse.tokens.shape[1]
        if first < held_from or reuse_to > held_to:
            raise CacheError(
                f"the cache holds chunks {held_from}..{held_to - 1}, not {first}..{reuse_to - 1}"
            )
        reused = job.reuse.tokens[:, first - held_from : reuse_to - held_from]
        return (reuse_to * c - start, n_complete * c - start, reused)

    def _embed_frames(self, parts: Sequence[ModelInput]) -> np.ndarray:
        """Tokens ``(G, chunks, *token_shape)`` of the complete chunks of every part, in order."""
        total = sum(len(p) for p in parts) // self.chunk
        if not total:
            return np.zeros((self.n_backbones, 0, *self.token_shape), np.float32)
        x = np.concatenate([p.x for p in parts])
        band = np.concatenate([p.band for p in parts])
        cx = self._tensor(x).view(total, self.chunk, self.stamp, self.stamp)
        cb = self._tensor(band).view(total, self.chunk)
        extras = ()
        if self.uses_context:
            aux = np.concatenate([p.aux for p in parts])  # type: ignore[misc]
            context = np.concatenate([p.context() for p in parts])
            extras = (
                self._tensor(aux).view(total, self.chunk, 2, self.stamp, self.stamp),
                self._tensor(context).view(total, self.chunk, -1),
            )
        return self.ensemble.to_cache(self.ensemble.embed_chunks(cx, cb, *extras)).float().cpu().numpy()

    def _cache_from(self, job: RebuildJob, hi: int, tokens: np.ndarray) -> ObjectCache:
        """The cache of the job's object: ``tokens``, and its frames from ``hi`` on as the pending chunk."""
        inp, empty = job.inp, self.empty_cache()
        if not len(inp):  # start is 0 then: an object without frames
            return empty
        pending_aux, pending_context = empty.pending_aux, empty.pending_context
        if self.uses_context:
            pending_aux, pending_context = inp.aux[hi:].copy(), inp[hi:].context()  # type: ignore[index]
        times = (math.nan, math.nan)
        if inp.mjd is not None and len(inp):
            times = (inp.first_mjd, float(inp.mjd[-1]))
        return ObjectCache(
            self.model_id, job.start + len(inp), np.ascontiguousarray(tokens), inp.x[hi:].copy(),
            inp.band[hi:].copy(), pending_aux, pending_context, *times,
        )  # fmt: skip

    @torch.inference_mode()
    def step(
        self,
        caches: Sequence[ObjectCache],
        x: np.ndarray,
        band: np.ndarray,
        frames: FrameExtras | None = None,
        history: np.ndarray | None = None,
    ) -> tuple[np.ndarray, list[ObjectCache]]:
        """Append one frame per object and classify every object's new window.

        Parameters
        ----------
        caches
            One cache per object (distinct objects).
        x, band
            ``(N, H, W)`` normalised new frames and ``(N,)`` their band ids.
        frames
            The new frames' planes, times and photometry (required by ``uses_context`` nets).
        history
            ``(N, P, F)`` the photometric history rows of each new frame's output (required by
            ``uses_history`` nets); it enters the head only, so the caches never hold it.

        Returns
        -------
        tuple
            Member probabilities ``(members, N, classes)`` float32 and the updated caches.
        """
        n = len(caches)
        if x.shape != (n, self.stamp, self.stamp) or band.shape != (n,):
            raise InferenceInputError(f"expected {n} frames of {self.stamp}x{self.stamp}, got {x.shape}")
        if not all(self.fits(c) for c in caches):
            raise CacheError(f"a cache does not belong to this engine of model {self.model_id!r}; rebuild it")
        if self.uses_context and (frames is None or len(frames.mjd) != n):
            raise InferenceInputError("this model needs each new frame's planes, time and photometry")
        if self.uses_history and (history is None or len(history) != n):
            raise InferenceInputError("this model needs each new frame's photometric history")
        chunk_x = np.zeros((n, self.chunk, self.stamp, self.stamp), np.float32)
        chunk_b = np.zeros((n, self.chunk), np.int64)
        chunk_aux = chunk_ctx = None
        if self.uses_context:
            assert frames is not None  # noqa: S101 - checked above
            chunk_aux = np.zeros((n, self.chunk, 2, self.stamp, self.stamp), np.float32)
            chunk_ctx = np.zeros((n, self.chunk, CONTEXT_FEATURES), np.float32)
        lengths = np.zeros(n, np.int64)
        for i, c in enumerate(caches):
            p = len(c.pending_band)
            chunk_x[i, :p], chunk_b[i, :p] = c.pending_x, c.pending_band
            chunk_x[i, p], chunk_b[i, p] = x[i], band[i]
            if chunk_aux is not None and chunk_ctx is not None and frames is not None:
                chunk_aux[i, :p], chunk_ctx[i, :p] = c.pending_aux, c.pending_context
                chunk_aux[i, p] = frames.aux[i]
                chunk_ctx[i, p] = frames.context_after(c, i)
            old = c.tokens.shape[1] if p + 1 == self.chunk else min(c.tokens.shape[1], self.max_chunks - 1)
            lengths[i] = min(old + 1, self.max_chunks)
        ens = self.ensemble
        width = self.max_chunks if self._pad_token is not None else int(lengths.max())
        # Cached tokens of every backbone go to the device in one transfer.
        windows = np.zeros((self.n_backbones, n, width, *self.token_shape), np.float32)
        for i, c in enumerate(caches):
            if lengths[i] > 1:
                windows[:, i, : lengths[i] - 1] = c.tokens[:, -(lengths[i] - 1) :]
        w = ens.to_work(torch.from_numpy(windows).to(self.device))
        cx, cb = torch.from_numpy(chunk_x).to(self.device), torch.from_numpy(chunk_b).to(self.device)
        extras = ()
        if chunk_aux is not None and chunk_ctx is not None:
            extras = (self._tensor(chunk_aux), self._tensor(chunk_ctx))
        pos = torch.arange(width, device=self.device)
        length_t = torch.from_numpy(lengths).to(self.device)
        valid = pos[None, :] < length_t[:, None]
        rows = torch.arange(n, device=self.device)
        tok = ens.embed_chunks(cx, cb, *extras)
        w[:, rows, length_t - 1] = tok.to(w.dtype)
        if self._pad_token is not None:
            # torch.where, not a boolean-mask assignment: the latter was a quarter of a step's time.
            shape = (1, n, width) + (1,) * len(self.token_shape)
            w = torch.where(valid.view(shape), w, self._pad_token[:, None, None].to(w.dtype))
        mask = None if self._pad_token is not None else valid
        rows = self._tensor(history) if self.uses_history and history is not None else None
        probs = ens.classify(w, mask, rows).float().softmax(dim=-1).cpu().numpy()
        new_tokens = ens.to_cache(tok).float().cpu().numpy()
        return probs, self._advance(caches, chunk_x, chunk_b, new_tokens, chunk_aux, chunk_ctx, frames)

    def _advance(
        self,
        caches: Sequence[ObjectCache],
        chunk_x: np.ndarray,
        chunk_b: np.ndarray,
        new: np.ndarray,
        chunk_aux: np.ndarray | None,
        chunk_ctx: np.ndarray | None,
        frames: FrameExtras | None,
    ) -> list[ObjectCache]:
        out = []
        for i, c in enumerate(caches):
            p = len(c.pending_band) + 1
            tokens = c.tokens
            if p == self.chunk:  # the chunk is complete: its token joins the cache, its frames leave it
                tokens = np.concatenate((c.tokens, new[:, i : i + 1]), axis=1)[:, -self.max_chunks :]
                p = 0
            pending_aux, pending_ctx = c.pending_aux, c.pending_context
            if chunk_aux is not None and chunk_ctx is not None:
                pending_aux, pending_ctx = chunk_aux[i, :p].copy(), chunk_ctx[i, :p].copy()
            first, last = c.first_mjd, c.last_mjd
            if frames is not None:
                last = float(frames.mjd[i])
                first = first if math.isfinite(first) else last
            out.append(ObjectCache(
                self.model_id, c.n_frames + 1, tokens, chunk_x[i, :p].copy(), chunk_b[i, :p].copy(),
                pending_aux, pending_ctx, first, last,
            ))  # fmt: skip
        return out


@dataclass(frozen=True)
class RebuildJob:
    """One object's cache to recompute (:meth:`IncrementalEngine.rebuild_many`).

    Attributes
    ----------
    inp
        The object's preprocessed frames from frame ``start`` on (time order; for ``uses_context`` nets
        preprocessed after the frames before ``start``, which set its context's time origin).
    start
        Index of ``inp``'s first frame in the object's sequence: a multiple of the chunk size (``inp`` is
        not empty unless ``start`` is 0).
    reuse
        A cache of a sequence whose first ``start`` frames are this object's (e.g. before a late frame
        was inserted after them): tokens of complete chunks before ``start`` come from it.
    """

    inp: ModelInput
    start: int = 0
    reuse: ObjectCache | None = None


@dataclass(frozen=True)
class FrameExtras:
    """One new frame per object beyond its difference image: what a ``uses_context`` net needs.

    Attributes
    ----------
    aux
        ``(N, 2, H, W)`` normalised science and template planes.
    mjd
        ``(N,)`` frame times [MJD].
    photometry
        ``(N, 4)`` photometry features.
    presence
        ``(N, 2)`` plane presence flags.
    """

    aux: np.ndarray
    mjd: np.ndarray
    photometry: np.ndarray
    presence: np.ndarray

    @classmethod
    def pick(cls, inputs: Sequence[ModelInput], k: int) -> FrameExtras:
        """The ``k``-th frame of each input (which must carry its context)."""
        if not all(i.has_context for i in inputs):
            raise InferenceInputError("new frames were preprocessed without planes, times and photometry")
        return cls(
            np.stack([i.aux[k] for i in inputs]),  # type: ignore[index]
            np.array([i.mjd[k] for i in inputs], np.float64),  # type: ignore[index]
            np.stack([i.photometry[k] for i in inputs]),  # type: ignore[index]
            np.stack([i.presence[k] for i in inputs]),  # type: ignore[index]
        )

    def context_after(self, cache: ObjectCache, i: int) -> np.ndarray:
        """The context vector of frame ``i`` following the frames ``cache`` has consumed."""
        mjd = self.mjd[i : i + 1]
        first = cache.first_mjd if math.isfinite(cache.first_mjd) else float(mjd[0])
        return context_features(
            mjd, first, cache.last_mjd, self.photometry[i : i + 1], self.presence[i : i + 1]
        )[0]
