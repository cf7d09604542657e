"""Exact incremental inference: per object, cache chunk tokens; per new frame, one chunk + the blocks.

The front end sees each chunk of ``chunk_size`` frames on its own (and BatchNorm uses running
statistics in eval mode), so a chunk's token never changes once its frames are known. Per object the
cache keeps the tokens of the most recent complete chunks (at most ``max_chunks``, per ensemble
member) and the raw frames of the incomplete chunk. A new frame costs one front-end chunk plus the
attention blocks and head over the window, and the window is exactly
:func:`~broker_plugin.inference.preprocess.window_start`'s: the outputs equal a full recompute (tested).

The cache is only a cache: :meth:`IncrementalEngine.rebuild` recreates it from the object's frames,
and its bytes name the model version so a cache from another model is refused.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from broker_plugin.inference.ensemble import EnsembleForward, ensemble_forward
from broker_plugin.inference.errors import CacheError, InferenceInputError
from broker_plugin.inference.preprocess import ModelInput

_MAGIC = b"BPIC"
_FORMAT = 1


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
        ``(members, k, *token_shape)`` float32 tokens of the ``k <= max_chunks`` most recent complete
        chunks, oldest first.
    pending_x, pending_band
        ``(p, H, W)`` float32 normalised frames and ``(p,)`` int64 band ids of the incomplete chunk.
    """

    model_id: str
    n_frames: int
    tokens: np.ndarray
    pending_x: np.ndarray
    pending_band: np.ndarray

    def to_bytes(self) -> bytes:
        """Serialise to bytes (JSON header + little-endian arrays + CRC-32); no pickle."""
        arrays = (self.tokens.astype("<f4"), self.pending_x.astype("<f4"), self.pending_band.astype("<i8"))
        header = json.dumps({
            "format": _FORMAT, "model_id": self.model_id, "n_frames": self.n_frames,
            "shapes": [list(a.shape) for a in arrays],
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
            if zlib.crc32(payload) != crc or header["format"] != _FORMAT:
                raise ValueError("checksum or format mismatch")
            arrays, offset = [], 0
            for shape, dtype in zip(header["shapes"], ("<f4", "<f4", "<i8"), strict=True):
                count = int(np.prod(shape))
                arrays.append(np.frombuffer(payload, dtype, count, offset).reshape(shape).astype(dtype[1:]))
                offset += count * 4 if dtype == "<f4" else count * 8
            if offset != len(payload):
                raise ValueError("trailing bytes")
        except (ValueError, KeyError, TypeError, struct.error) as exc:
            raise CacheError(f"corrupt incremental cache: {exc}") from None
        if model_id is not None and header["model_id"] != model_id:
            raise CacheError(f"cache of model {header['model_id']!r}, not {model_id!r}; rebuild it")
        return cls(header["model_id"], header["n_frames"], *arrays)


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
    """

    def __init__(
        self, members: Sequence[nn.Module], *, model_id: str, device: torch.device, stacked: bool = True
    ) -> None:
        self.ensemble: EnsembleForward = ensemble_forward(members, stacked=stacked)
        self.members, self.model_id, self.device = list(members), model_id, device
        ens = self.ensemble
        self.chunk, self.max_chunks, self.token_shape = ens.chunk_size, ens.max_chunks, ens.token_shape
        self.stamp: int = ens.stamp
        with torch.inference_mode():
            # The paper net always sees max_chunks tokens; an all-padding chunk's token is a constant.
            self._pad_token = ens.pad_tokens()

    def empty_cache(self) -> ObjectCache:
        """Return the cache of an object with no frame yet."""
        return ObjectCache(
            self.model_id, 0, np.zeros((len(self.members), 0, *self.token_shape), np.float32),
            np.zeros((0, self.stamp, self.stamp), np.float32), np.zeros(0, np.int64),
        )  # fmt: skip

    @torch.inference_mode()
    def rebuild(self, inp: ModelInput) -> ObjectCache:
        """Recompute the cache of an object from all its preprocessed frames (time order)."""
        n_complete = len(inp) // self.chunk
        keep = min(n_complete, self.max_chunks)
        done = inp[(n_complete - keep) * self.chunk : n_complete * self.chunk]
        tokens = np.zeros((len(self.members), keep, *self.token_shape), np.float32)
        if keep:
            cx = torch.from_numpy(done.x).to(self.device).view(keep, self.chunk, self.stamp, self.stamp)
            cb = torch.from_numpy(done.band).to(self.device).view(keep, self.chunk)
            tokens[:] = self.ensemble.to_cache(self.ensemble.embed_chunks(cx, cb)).float().cpu().numpy()
        rest = inp[n_complete * self.chunk :]
        return ObjectCache(self.model_id, len(inp), tokens, rest.x.copy(), rest.band.copy())

    @torch.inference_mode()
    def step(
        self, caches: Sequence[ObjectCache], x: np.ndarray, band: np.ndarray
    ) -> tuple[np.ndarray, list[ObjectCache]]:
        """Append one frame per object and classify every object's new window.

        Parameters
        ----------
        caches
            One cache per object (distinct objects).
        x, band
            ``(N, H, W)`` normalised new frames and ``(N,)`` their band ids.

        Returns
        -------
        tuple
            Member probabilities ``(members, N, classes)`` float32 and the updated caches.
        """
        n = len(caches)
        if x.shape != (n, self.stamp, self.stamp) or band.shape != (n,):
            raise InferenceInputError(f"expected {n} frames of {self.stamp}x{self.stamp}, got {x.shape}")
        if any(c.model_id != self.model_id for c in caches):
            raise CacheError(f"a cache does not belong to model {self.model_id!r}; rebuild it")
        chunk_x = np.zeros((n, self.chunk, self.stamp, self.stamp), np.float32)
        chunk_b = np.zeros((n, self.chunk), np.int64)
        lengths = np.zeros(n, np.int64)
        for i, c in enumerate(caches):
            p = len(c.pending_band)
            chunk_x[i, :p], chunk_b[i, :p] = c.pending_x, c.pending_band
            chunk_x[i, p], chunk_b[i, p] = x[i], band[i]
            old = c.tokens.shape[1] if p + 1 == self.chunk else min(c.tokens.shape[1], self.max_chunks - 1)
            lengths[i] = min(old + 1, self.max_chunks)
        ens = self.ensemble
        width = self.max_chunks if self._pad_token is not None else int(lengths.max())
        # Cached tokens of every member go to the device in one transfer.
        windows = np.zeros((len(self.members), n, width, *self.token_shape), np.float32)
        for i, c in enumerate(caches):
            if lengths[i] > 1:
                windows[:, i, : lengths[i] - 1] = c.tokens[:, -(lengths[i] - 1) :]
        w = ens.to_work(torch.from_numpy(windows).to(self.device))
        cx, cb = torch.from_numpy(chunk_x).to(self.device), torch.from_numpy(chunk_b).to(self.device)
        pos = torch.arange(width, device=self.device)
        length_t = torch.from_numpy(lengths).to(self.device)
        valid = pos[None, :] < length_t[:, None]
        rows = torch.arange(n, device=self.device)
        tok = ens.embed_chunks(cx, cb)
        w[:, rows, length_t - 1] = tok.to(w.dtype)
        if self._pad_token is not None:
            # torch.where, not a boolean-mask assignment: the latter was a quarter of a step's time.
            shape = (1, n, width) + (1,) * len(self.token_shape)
            w = torch.where(valid.view(shape), w, self._pad_token[:, None, None].to(w.dtype))
        mask = None if self._pad_token is not None else valid
        probs = ens.classify(w, mask).float().softmax(dim=-1).cpu().numpy()
        new_tokens = ens.to_cache(tok).float().cpu().numpy()
        return probs, self._advance(caches, chunk_x, chunk_b, new_tokens)

    def _advance(
        self, caches: Sequence[ObjectCache], chunk_x: np.ndarray, chunk_b: np.ndarray, new: np.ndarray
    ) -> list[ObjectCache]:
        out = []
        for i, c in enumerate(caches):
            p = len(c.pending_band) + 1
            tokens = c.tokens
            if p == self.chunk:  # the chunk is complete: its token joins the cache, its frames leave it
                tokens = np.concatenate((c.tokens, new[:, i : i + 1]), axis=1)[:, -self.max_chunks :]
                p = 0
            pending_x, pending_b = chunk_x[i, :p].copy(), chunk_b[i, :p].copy()
            out.append(ObjectCache(self.model_id, c.n_frames + 1, tokens, pending_x, pending_b))
        return out
