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

Beyond the difference frames, nets that ask for them (``uses_context``) get per frame:

- the science and template images (``aux``), each normalised on its own by
  :func:`normalise_static_image`: the median (the sky level, which ZTF leaves in its science cutouts)
  is subtracted and the result divided by a robust noise estimate before ``asinh``, so the
  normalisation needs no zero point (ZTF's template has none in the alert) and is the same for every
  survey's units and depth; an absent cutout is a zero plane with its presence flag 0;
- a context vector (:func:`context_features`, :data:`CONTEXT_FEATURES` values): continuous time (days
  since the object's first frame and since the previous frame), the alert's PSF photometry and the
  presence flags. Time is relative to the object's own first frame, never absolute, and is computed
  once per frame from the frames before it, so a window or a cached chunk never changes its context.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
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


#: Softening of :func:`normalise_static_image` in units of the image's robust noise: the sky noise stays
#: linear (within about +-1/3), a host galaxy or star hundreds of sigma bright is compressed logarithmically.
STATIC_SOFTENING_SIGMA = 3.0
#: Softening scale of the photometry features [nJy] (AB 23.9): Rubin's single-visit 5-sigma depth is about
#: 600 nJy, ZTF's about 20,000 nJy, so both surveys' detections fall on the logarithmic part.
PHOTOMETRY_SCALE_NJY = 1000.0
#: Periods of the sinusoids of the time since the first frame [days]: a supernova's rise (days), its
#: decline (weeks to months), a season, several seasons.
TIME_PERIODS_DAYS: tuple[float, ...] = (4.0, 16.0, 64.0, 256.0, 1024.0)
#: Columns of the context vector, in order.
TIME_COLUMNS = slice(0, 2 + 2 * len(TIME_PERIODS_DAYS))
PHOTOMETRY_COLUMNS = slice(TIME_COLUMNS.stop, TIME_COLUMNS.stop + 4)
PRESENCE_COLUMNS = slice(PHOTOMETRY_COLUMNS.stop, PHOTOMETRY_COLUMNS.stop + 2)
CONTEXT_FEATURES = PRESENCE_COLUMNS.stop


def normalise_static_image(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Normalise a science or template image ``(H, W)`` (any flux unit) for the net.

    ``asinh((image - median) / (STATIC_SOFTENING_SIGMA * sigma))`` over the measured pixels, with the
    median and ``sigma = 1.4826 MAD`` of the measured pixels: scale free (a zero point or a gain cancels),
    sky level free (ZTF science cutouts keep the sky), robust to the source and host that fill part of
    the image. ``sigma`` never falls below 1e-6 of the largest deviation, so a flat or almost flat image
    stays finite. Masked pixels are 0, and an image with no measured pixel is all 0.
    """
    return normalise_static_images(np.asarray(image)[None], np.asarray(mask, bool)[None])[0][0]


def _row_medians(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Medians ``(n, 1)`` of the first ``counts`` finite values of each row (NaNs sort last)."""
    ordered = np.sort(values, axis=1)
    rows = np.arange(len(values))
    low, high = ordered[rows, (counts - 1) // 2], ordered[rows, counts // 2]
    return ((low + high) / 2.0)[:, None]


def normalise_static_images(images: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`normalise_static_image` of every image ``(n, H, W)``, and whether each had a measured pixel.

    All images at once, without a Python loop per frame: unmeasured pixels become NaN, which sort
    last, so each row's median is taken over its measured values only.
    """
    n = len(images)
    flat_masks = masks.reshape(n, -1)
    present = flat_masks.any(axis=1)
    out = np.zeros(images.shape, np.float32)
    if not present.any():
        return out, present
    values = np.where(flat_masks, np.asarray(images, np.float64).reshape(n, -1), np.nan)[present]
    counts = flat_masks[present].sum(axis=1)
    median = _row_medians(values, counts)
    deviation = np.abs(values - median)
    peak = np.nanmax(deviation, axis=1, keepdims=True)
    sigma = np.maximum(np.maximum(1.4826 * _row_medians(deviation, counts), 1e-6 * peak), 1e-30)
    normalised = np.arcsinh((values - median) / (STATIC_SOFTENING_SIGMA * sigma))
    out[present] = np.nan_to_num(normalised, nan=0.0).reshape(-1, *images.shape[1:])
    return out, present


def photometry_features(psf_flux: np.ndarray, psf_flux_err: np.ndarray) -> np.ndarray:
    """Encode PSF fluxes and errors ``(n,)`` [nJy, NaN when absent] as ``(n, 4)`` float32.

    Columns: ``asinh(flux / s)``, ``asinh(err / s)`` (``s`` = :data:`PHOTOMETRY_SCALE_NJY`), the
    signal-to-noise ``asinh(flux / err / 5)`` (a depth-free view) and 1 where both are present. Absent
    photometry is all 0.
    """
    flux = np.asarray(psf_flux, np.float64)
    err = np.asarray(psf_flux_err, np.float64)
    present = np.isfinite(flux) & np.isfinite(err) & (err > 0)
    f, e = np.where(present, flux, 0.0), np.where(present, err, 1.0)
    out = np.stack(
        [np.arcsinh(f / PHOTOMETRY_SCALE_NJY), np.arcsinh(e / PHOTOMETRY_SCALE_NJY) * present,
         np.arcsinh(f / e / 5.0), present.astype(np.float64)], axis=1,
    )  # fmt: skip
    return out.astype(np.float32)


def time_features(mjd: np.ndarray, first_mjd: float, prev_mjd: float) -> np.ndarray:
    """Encode frame times ``(n,)`` [MJD, time order] as ``(n, 2 + 2 * len(TIME_PERIODS_DAYS))`` float32.

    ``t`` is the time since the object's first frame ``first_mjd`` and ``dt`` since each frame's
    previous one (``prev_mjd`` before the first of ``mjd``; 0 for the object's first frame). Columns:
    ``log1p(t) / 7``, ``log1p(dt) / 7`` (7 ~ log of 1,000 days), then ``sin, cos(2 pi t / P)`` per
    period. Irregular cadences are seen as they are: nothing here counts frames.
    """
    mjd = np.asarray(mjd, np.float64)
    if mjd.size == 0:
        return np.zeros((0, TIME_COLUMNS.stop), np.float32)
    t = np.clip(mjd - first_mjd, 0.0, None)
    previous = np.concatenate(([prev_mjd if math.isfinite(prev_mjd) else mjd[0]], mjd[:-1]))
    dt = np.clip(mjd - previous, 0.0, None)
    columns = [np.log1p(t) / 7.0, np.log1p(dt) / 7.0]
    for period in TIME_PERIODS_DAYS:
        angle = 2.0 * np.pi * t / period
        columns += [np.sin(angle), np.cos(angle)]
    return np.stack(columns, axis=1).astype(np.float32)


def context_features(
    mjd: np.ndarray, first_mjd: float, prev_mjd: float, photometry: np.ndarray, presence: np.ndarray
) -> np.ndarray:
    """The context vectors ``(n, CONTEXT_FEATURES)`` of frames at ``mjd`` (see :func:`time_features`).

    ``photometry`` is :func:`photometry_features`' output, ``presence`` ``(n, 2)`` the science and
    template presence flags.
    """
    return np.concatenate(
        (time_features(mjd, first_mjd, prev_mjd), photometry, np.asarray(presence, np.float32)), axis=1
    )


@dataclass(frozen=True)
class ModelInput:
    """One object's preprocessed frames, in time order.

    Attributes
    ----------
    x
        ``(n, H, W)`` float32 normalised difference flux.
    band
        ``(n,)`` int64 band ids (``BANDS`` index + the net's ``band_offset``).
    aux
        ``(n, 2, H, W)`` float32 normalised science and template images (zero where absent), or None
        when the input was built without them.
    photometry
        ``(n, 4)`` :func:`photometry_features`, or None.
    presence
        ``(n, 2)`` bool: science and template present.
    mjd
        ``(n,)`` float64 ``midpointMjdTai``, or None.
    first_mjd, prev_mjd
        The object's first frame time and the time of the frame before ``x[0]`` (NaN: none); a slice
        keeps them right, so a window's context is the whole history's.
    history
        ``(n, P, F)`` float32 photometric history rows (:mod:`~broker_plugin.inference.history`) of the
        output at each frame, or None (nets without ``uses_history``).
    """

    x: np.ndarray
    band: np.ndarray
    aux: np.ndarray | None = None
    photometry: np.ndarray | None = None
    presence: np.ndarray | None = None
    mjd: np.ndarray | None = None
    first_mjd: float = math.nan
    prev_mjd: float = math.nan
    history: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.band)

    def __getitem__(self, index: slice) -> ModelInput:
        start, _, step = index.indices(len(self))
        if step != 1:
            raise ValueError("a ModelInput slices by contiguous ranges only")
        prev = self.prev_mjd
        if self.mjd is not None and start > 0:
            prev = float(self.mjd[start - 1])
        return ModelInput(
            self.x[index], self.band[index], _cut(self.aux, index), _cut(self.photometry, index),
            _cut(self.presence, index), _cut(self.mjd, index), self.first_mjd, prev,
            _cut(self.history, index),
        )  # fmt: skip

    def take(self, indices: Sequence[int]) -> ModelInput:
        """The frames at increasing ``indices`` as an object's whole sequence (the first of them starts it).

        Every row is preprocessed on its own, so this equals preprocessing those frames alone.
        """
        idx = np.asarray(indices, np.intp)
        mjd = _take(self.mjd, idx)
        first = float(mjd[0]) if mjd is not None and len(idx) else math.nan
        return ModelInput(
            self.x[idx], self.band[idx], _take(self.aux, idx), _take(self.photometry, idx),
            _take(self.presence, idx), mjd, first, math.nan, _take(self.history, idx),
        )  # fmt: skip

    @property
    def has_context(self) -> bool:
        """Whether this input carries science, template, time and photometry."""
        return self.aux is not None and self.mjd is not None

    def context(self) -> np.ndarray:
        """The :func:`context_features` of every frame ``(n, CONTEXT_FEATURES)``."""
        if not self.has_context:
            raise InferenceInputError("this input was preprocessed without times, photometry and planes")
        assert self.mjd is not None and self.photometry is not None and self.presence is not None  # noqa: S101
        return context_features(self.mjd, self.first_mjd, self.prev_mjd, self.photometry, self.presence)


def _cut(array: np.ndarray | None, index: slice) -> np.ndarray | None:
    return None if array is None else array[index]


def _take(array: np.ndarray | None, index: np.ndarray) -> np.ndarray | None:
    return None if array is None else array[index]


def band_ids(bands: Sequence[str], band_offset: int) -> np.ndarray:
    """Map band names to model band ids; raise :class:`InferenceInputError` for an unknown band."""
    try:
        return np.array([BANDS.index(b) + band_offset for b in bands], dtype=np.int64)
    except ValueError:
        raise InferenceInputError(f"unknown band in {list(bands)}; expected one of {BANDS}") from None


def measured_frames(masks: np.ndarray) -> np.ndarray:
    """``(n,)`` the frames of ``masks`` ``(n, H, W)`` with a measured pixel: the ones a net reads."""
    return np.asarray(masks, bool).any(axis=(1, 2))


def arrays_to_input(
    flux: np.ndarray,
    bands: Sequence[str],
    norm: FluxNormalisation,
    *,
    band_offset: int,
    masks: np.ndarray | None = None,
    stamp: int = 32,
    context: FrameContext | None = None,
    history: np.ndarray | None = None,
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
    context
        Science and template images, times and photometry of the same frames; None builds an input
        without them (enough for nets that do not use them).
    history
        ``(n, P, F)`` photometric history rows of the output at each frame (``uses_history`` nets).
    """
    flux = np.asarray(flux, np.float32)
    if flux.ndim != 3 or flux.shape[1:] != (stamp, stamp) or len(bands) != len(flux):
        raise InferenceInputError(f"expected ({len(bands)}, {stamp}, {stamp}) frames, got {flux.shape}")
    masks = np.ones(flux.shape, bool) if masks is None else np.asarray(masks, bool)
    keep = measured_frames(masks)
    ids = band_ids(bands, 0)[keep]
    x = norm.apply(np.where(masks, flux, 0.0)[keep], ids)
    x[~masks[keep]] = 0.0
    if not np.isfinite(x).all():
        raise InferenceInputError("non-finite flux in measured pixels")
    rows = None
    if history is not None:
        if len(history) != len(flux):
            raise InferenceInputError(f"{len(history)} history row sets for {len(flux)} frames")
        rows = np.asarray(history, np.float32)[keep]
    if context is None:
        return ModelInput(x, ids + band_offset, history=rows)
    return replace(context.to_input(x, ids + band_offset, keep), history=rows)


@dataclass(frozen=True)
class FrameContext:
    """What a frame has beyond its difference image, as arrays over an object's frames (time order).

    Attributes
    ----------
    mjd
        ``(n,)`` ``midpointMjdTai`` [MJD].
    psf_flux, psf_flux_err
        ``(n,)`` alert PSF flux and error [nJy], NaN when absent.
    science, science_masks, template, template_masks
        ``(n, H, W)`` images and their measured-pixel masks, or None when no frame has one (a frame
        without one has an all-False mask).
    first_mjd, prev_mjd
        The object's first frame time and the time before the first of these frames (NaN: these frames
        start the object).
    """

    mjd: np.ndarray
    psf_flux: np.ndarray
    psf_flux_err: np.ndarray
    science: np.ndarray | None = None
    science_masks: np.ndarray | None = None
    template: np.ndarray | None = None
    template_masks: np.ndarray | None = None
    first_mjd: float = math.nan
    prev_mjd: float = math.nan

    def to_input(self, x: np.ndarray, band: np.ndarray, keep: np.ndarray) -> ModelInput:
        """Complete the kept frames' difference input ``x``, ``band`` with this context."""
        n, size = len(x), x.shape[-1]
        aux = np.zeros((n, 2, size, size), np.float32)
        presence = np.zeros((n, 2), bool)
        for k, (images, masks) in enumerate(
            ((self.science, self.science_masks), (self.template, self.template_masks))
        ):
            if images is None or masks is None:
                continue
            images, masks = np.asarray(images)[keep], np.asarray(masks, bool)[keep]
            aux[:, k], presence[:, k] = normalise_static_images(images, masks)
        mjd = np.asarray(self.mjd, np.float64)[keep]
        if not np.isfinite(mjd).all():
            raise InferenceInputError("non-finite frame time")
        first = self.first_mjd if math.isfinite(self.first_mjd) else (float(mjd[0]) if n else math.nan)
        phot = photometry_features(np.asarray(self.psf_flux)[keep], np.asarray(self.psf_flux_err)[keep])
        return ModelInput(x, band, aux, phot, presence, mjd, first, self.prev_mjd)


def frame_context(frames: Sequence[Frame], before: Sequence[Frame] = ()) -> FrameContext:
    """The :class:`FrameContext` of ``frames`` (time order), which follow the object's ``before`` frames."""
    size = frames[0].data.shape

    def planes(name: str) -> tuple[np.ndarray | None, np.ndarray | None]:
        if all(getattr(f, name) is None for f in frames):
            return None, None
        images = np.stack([getattr(f, name) if getattr(f, name) is not None else np.zeros(size, np.float32)
                           for f in frames])  # fmt: skip
        masks = np.stack([getattr(f, f"{name}Mask") if getattr(f, name) is not None else np.zeros(size, bool)
                          for f in frames])  # fmt: skip
        return images, masks

    science, science_masks = planes("science")
    template, template_masks = planes("template")
    return FrameContext(
        np.array([f.midpointMjdTai for f in frames], np.float64),
        np.array([np.nan if f.psfFlux is None else f.psfFlux for f in frames], np.float64),
        np.array([np.nan if f.psfFluxErr is None else f.psfFluxErr for f in frames], np.float64),
        science, science_masks, template, template_masks, *time_origin(before),
    )  # fmt: skip


def time_origin(before: Sequence[Frame]) -> tuple[float, float]:
    """``(first_mjd, prev_mjd)`` of frames that follow the object's ``before`` frames (NaN: none).

    Only frames with a measured pixel count: the others are no model input.
    """
    measured = [f.midpointMjdTai for f in before if f.mask.any()]
    return (measured[0], measured[-1]) if measured else (math.nan, math.nan)


def frames_to_input(
    frames: Sequence[Frame],
    norm: FluxNormalisation,
    *,
    band_offset: int,
    stamp: int = 32,
    with_context: bool = False,
    before: Sequence[Frame] = (),
    history: np.ndarray | None = None,
) -> ModelInput:
    """Preprocess :class:`~broker_plugin.records.Frame` objects (time order) for a net.

    ``with_context`` adds science, template, times and photometry (nets with ``uses_context``);
    ``before`` are the object's frames preceding ``frames`` (their times set the context's origin);
    ``history`` the photometric history rows of the output at each frame (``uses_history`` nets).
    """
    if not frames:
        return ModelInput(np.zeros((0, stamp, stamp), np.float32), np.zeros(0, np.int64))
    return arrays_to_input(
        np.stack([f.data for f in frames]), [f.band for f in frames], norm,
        band_offset=band_offset, masks=np.stack([f.mask for f in frames]), stamp=stamp,
        context=frame_context(frames, before) if with_context else None, history=history,
    )  # fmt: skip


def frames_to_inputs(
    groups: Sequence[Sequence[Frame]],
    norm: FluxNormalisation,
    *,
    band_offset: int,
    stamp: int = 32,
    with_context: bool = False,
    befores: Sequence[Sequence[Frame]] | None = None,
    histories: Sequence[np.ndarray | None] | None = None,
) -> list[ModelInput]:
    """:func:`frames_to_input` of several objects: the same inputs, with the array work done once.

    Every frame is preprocessed on its own (its normalisation, planes and photometry read no other
    frame), so all groups' frames go through one :func:`frames_to_input` and are cut back into groups;
    only the time origin (``first_mjd``, ``prev_mjd``) is each group's, from its ``befores``. Should
    the whole refuse (a frame no net can read), each group is preprocessed alone, so the error names
    the group it belongs to, as one call per group would.

    Parameters
    ----------
    groups
        Each object's frames (time order).
    befores
        Each object's frames before its group (default: none).
    histories
        Each group's history rows (all or none), as ``frames_to_input``'s ``history``.
    """
    befores = befores if befores is not None else [()] * len(groups)
    histories = histories if histories is not None else [None] * len(groups)
    if len(befores) != len(groups) or len(histories) != len(groups):
        raise ValueError("one 'befores' and one 'histories' entry per group")
    kwargs: dict[str, Any] = {"band_offset": band_offset, "stamp": stamp, "with_context": with_context}

    def one_by_one() -> list[ModelInput]:
        return [
            frames_to_input(g, norm, before=b, history=h, **kwargs)
            for g, b, h in zip(groups, befores, histories, strict=True)
        ]

    filled = [(g, h) for g, h in zip(groups, histories, strict=True) if g]
    with_rows = [h is not None for _, h in filled]
    if len(filled) < 2 or (any(with_rows) and not all(with_rows)):
        return one_by_one()
    flat = [f for g, _ in filled for f in g]
    rows = np.concatenate([h for _, h in filled if h is not None]) if all(with_rows) else None
    try:
        whole = frames_to_input(flat, norm, history=rows, **kwargs)
    except InferenceInputError:
        return one_by_one()
    kept = np.cumsum([0, *(bool(f.mask.any()) for f in flat)])
    out, start = [], 0
    for group, before in zip(groups, befores, strict=True):
        if not group:
            out.append(frames_to_input(group, norm, **kwargs))
            continue
        end = start + len(group)
        part = whole[int(kept[start]) : int(kept[end])]
        start = end
        if part.mjd is None:  # no context: no time origin either (NaN, as the whole's)
            out.append(part)
            continue
        first, prev = time_origin(before)
        if not math.isfinite(first) and len(part):  # these frames start the object, as in to_input
            first = float(part.mjd[0])
        out.append(replace(part, first_mjd=first, prev_mjd=prev))
    return out


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


def collate_context(
    inputs: Sequence[ModelInput], *, frames: int, stamp: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Stack the science/template planes ``(B, frames, 2, H, W)`` and contexts ``(B, frames, K)``.

    Zero padded at the end, like :func:`collate`; every input must carry its context.
    """
    aux = np.zeros((len(inputs), frames, 2, stamp, stamp), np.float32)
    context = np.zeros((len(inputs), frames, CONTEXT_FEATURES), np.float32)
    for i, inp in enumerate(inputs):
        context[i, : len(inp)] = inp.context()
        aux[i, : len(inp)] = inp.aux
    return aux, context
