"""Frames to model tensors: the one preprocessing that training and serving share.

Flux normalisation is per band, with constants recorded in the model artifact:

- ``asinh`` (default): ``x = asinh(flux / scale[band])``: linear within about ``scale`` of zero (the
  noise), logarithmic for bright sources, so one set of weights sees faint and bright transients alike;
- ``zscore``: ``x = (flux - offset[band]) / scale[band]`` (the authors' choice, with their constants).

``flux`` is difference flux per frame pixel [nJy]; ``scale`` and ``offset`` are in nJy. Masked pixels
are 0 after normalisation (never invented). A frame with no measured pixel is a missing observation
and is dropped: it would otherwise shift the chunking of every later frame.

The window: frames are grouped in chunks of ``chunk_size`` from the object's first frame; the model
sees the most recent ``max_chunks`` chunks, the last one possibly incomplete (padded with zero frames
of band id 0). :func:`window_start` defines it, and the incremental engine keeps to it exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from broker_plugin.inference.errors import InferenceInputError
from broker_plugin.records import BANDS, Frame

#: Default softening scale of ``asinh`` [nJy]: of the order of a Rubin single-visit pixel noise.
DEFAULT_ASINH_SCALE_NJY = 100.0


@dataclass(frozen=True)
class FluxNormalisation:
    """Per-band flux normalisation; ``scale`` and ``offset`` follow :data:`BANDS` order [nJy].

    Attributes
    ----------
    method
        ``"asinh"`` or ``"zscore"``.
    scale
        Softening scale (asinh) or standard deviation (zscore) per band [nJy].
    offset
        Subtracted before scaling (zscore only) per band [nJy].
    """

    method: Literal["asinh", "zscore"] = "asinh"
    scale: tuple[float, ...] = field(default=(DEFAULT_ASINH_SCALE_NJY,) * len(BANDS))
    offset: tuple[float, ...] = field(default=(0.0,) * len(BANDS))

    def __post_init__(self) -> None:
        if self.method not in ("asinh", "zscore"):
            raise ValueError(f"unknown normalisation method {self.method!r}")
        if len(self.scale) != len(BANDS) or len(self.offset) != len(BANDS):
            raise ValueError(f"scale and offset need one value per band {BANDS}")
        if not all(s > 0 for s in self.scale):
            raise ValueError("scales must be positive")

    def apply(self, flux: np.ndarray, band_index: np.ndarray) -> np.ndarray:
        """Normalise ``flux`` ``(n, H, W)`` [nJy] of frames in bands ``band_index`` ``(n,)`` (0-based)."""
        scale = np.asarray(self.scale, np.float32)[band_index][:, None, None]
        if self.method == "asinh":
            return np.arcsinh(flux / scale).astype(np.float32)
        offset = np.asarray(self.offset, np.float32)[band_index][:, None, None]
        return ((flux - offset) / scale).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready description (with units) for the artifact metadata."""
        return {"method": self.method, "bands": list(BANDS), "scale_nJy": list(self.scale),
                "offset_nJy": list(self.offset)}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FluxNormalisation:
        """Rebuild from :meth:`to_dict` output; refuse constants for another band list."""
        if list(data.get("bands", [])) != list(BANDS):
            raise ValueError(f"normalisation constants are for bands {data.get('bands')}, not {BANDS}")
        return cls(data["method"], tuple(data["scale_nJy"]), tuple(data["offset_nJy"]))


def fit_flux_normalisation(
    stamps: Iterable[tuple[np.ndarray, np.ndarray, str]], method: Literal["asinh", "zscore"] = "asinh"
) -> FluxNormalisation:
    """Estimate per-band constants from training stamps ``(data [nJy], mask, band)``.

    The scale is a robust spread (1.4826 x median absolute deviation of measured pixels), so a few
    bright transients do not set it; bands without data keep the default.
    """
    pixels: dict[str, list[np.ndarray]] = {b: [] for b in BANDS}
    for data, mask, band in stamps:
        pixels[band].append(np.asarray(data, np.float64)[np.asarray(mask, bool)])
    scale, offset = [DEFAULT_ASINH_SCALE_NJY] * len(BANDS), [0.0] * len(BANDS)
    for k, b in enumerate(BANDS):
        if pixels[b] and (values := np.concatenate(pixels[b])).size:
            median = float(np.median(values))
            mad = 1.4826 * float(np.median(np.abs(values - median)))
            scale[k] = max(mad, 1e-3)
            offset[k] = median if method == "zscore" else 0.0
    return FluxNormalisation(method, tuple(scale), tuple(offset))


@dataclass(frozen=True)
class ModelInput:
    """One object's preprocessed frames, in time order.

    Attributes
    ----------
    x
        ``(n, H, W)`` float32 normalised flux.
    band
        ``(n,)`` int64 band ids (``BANDS`` index + the net's ``band_offset``).
    """

    x: np.ndarray
    band: np.ndarray

    def __len__(self) -> int:
        return len(self.band)

    def __getitem__(self, index: slice) -> ModelInput:
        return ModelInput(self.x[index], self.band[index])


def band_ids(bands: Sequence[str], band_offset: int) -> np.ndarray:
    """Map band names to model band ids; raise :class:`InferenceInputError` for an unknown band."""
    try:
        return np.array([BANDS.index(b) + band_offset for b in bands], dtype=np.int64)
    except ValueError:
        raise InferenceInputError(f"unknown band in {list(bands)}; expected one of {BANDS}") from None


def arrays_to_input(
    flux: np.ndarray,
    bands: Sequence[str],
    norm: FluxNormalisation,
    *,
    band_offset: int,
    masks: np.ndarray | None = None,
    stamp: int = 32,
) -> ModelInput:
    """Preprocess ``flux`` ``(n, stamp, stamp)`` [nJy] in ``bands`` (time order) for a net.

    Parameters
    ----------
    flux
        Difference flux per pixel [nJy].
    bands
        Band name of each frame.
    norm
        The artifact's normalisation.
    band_offset
        The net's ``band_offset``.
    masks
        ``True`` where measured; frames with no measured pixel are dropped. None: all measured.
    stamp
        Expected frame side [pixels].
    """
    flux = np.asarray(flux, np.float32)
    if flux.ndim != 3 or flux.shape[1:] != (stamp, stamp) or len(bands) != len(flux):
        raise InferenceInputError(f"expected ({len(bands)}, {stamp}, {stamp}) frames, got {flux.shape}")
    masks = np.ones(flux.shape, bool) if masks is None else np.asarray(masks, bool)
    keep = masks.any(axis=(1, 2))
    ids = band_ids(bands, 0)[keep]
    x = norm.apply(np.where(masks, flux, 0.0)[keep], ids)
    x[~masks[keep]] = 0.0
    if not np.isfinite(x).all():
        raise InferenceInputError("non-finite flux in measured pixels")
    return ModelInput(x, ids + band_offset)


def frames_to_input(
    frames: Sequence[Frame], norm: FluxNormalisation, *, band_offset: int, stamp: int = 32
) -> ModelInput:
    """Preprocess :class:`~broker_plugin.records.Frame` objects (time order) for a net."""
    if not frames:
        return ModelInput(np.zeros((0, stamp, stamp), np.float32), np.zeros(0, np.int64))
    return arrays_to_input(
        np.stack([f.data for f in frames]), [f.band for f in frames], norm,
        band_offset=band_offset, masks=np.stack([f.mask for f in frames]), stamp=stamp,
    )  # fmt: skip


def window_start(n_frames: int, chunk_size: int, max_chunks: int) -> int:
    """Return the index of the first frame of the window over ``n_frames`` frames (chunk aligned)."""
    n_chunks = -(-n_frames // chunk_size)
    return chunk_size * max(0, n_chunks - max_chunks)


def select_window(inp: ModelInput, chunk_size: int, max_chunks: int) -> ModelInput:
    """Return the frames of the window: the most recent ``max_chunks`` chunks of ``inp``."""
    return inp[window_start(len(inp), chunk_size, max_chunks) :]


def collate(inputs: Sequence[ModelInput], *, frames: int, stamp: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Stack windows into ``x`` ``(B, frames, H, W)`` and ``band`` ``(B, frames)``, zero padded at the end."""
    x = np.zeros((len(inputs), frames, stamp, stamp), np.float32)
    band = np.zeros((len(inputs), frames), np.int64)
    for i, inp in enumerate(inputs):
        x[i, : len(inp)] = inp.x
        band[i, : len(inp)] = inp.band
    return x, band
