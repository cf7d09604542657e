"""Labelled objects for training, from a simulator dataset or from real alerts, preprocessed by serving code.

Every model input goes through :func:`broker_plugin.inference.preprocess.arrays_to_input` with the
artifact's :class:`~broker_plugin.inference.preprocess.FluxNormalisation`, exactly as the service does,
so training and serving cannot drift apart.

What the service sees of an object is its *alerts*: one frame per detection (``|psfFlux / psfFluxErr|
>= 5``, the threshold of Rubin's and ZTF's alert production), never the epochs where nothing was
detected. A simulated object's shard holds every epoch, so ``min_snr`` keeps only the epochs that would
have raised an alert (the alert view), and ``min_frames`` drops the objects with fewer alerts than the
service needs before its first classification: they are never classified in service, so they are
neither trained on nor scored.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from broker_plugin.inference.history import history_features
from broker_plugin.inference.preprocess import (
    FluxNormalisation,
    FrameContext,
    ModelInput,
    arrays_to_input,
    fit_flux_normalisation,
)
from broker_plugin.records import BANDS, PhotometryHistory
from broker_plugin_train.augment import history_view
from broker_plugin_train.data.shards import ShardDataset

#: Days before an object's first alert its history reaches back (Rubin's precovery forced photometry).
PRECOVERY_DAYS = 30.0
#: Signal-to-noise that makes an epoch a detection when the source serves every epoch (no ``min_snr``).
DETECTION_SNR = 5.0


@dataclass(frozen=True)
class RawObject:
    """One object's frames before normalisation.

    Attributes
    ----------
    flux
        ``(n, S, S)`` difference flux per pixel [nJy], time order.
    masks
        ``(n, S, S)`` True where measured.
    bands
        Band name of each frame.
    context
        The frames' times, photometry and science/template planes, or None (real alerts decoded
        without them, or a difference-only dataset with no times).
    history
        The photometry of every epoch of the object (detected or not, all of its history and future:
        each output reads only the epochs up to its own time), or None.
    """

    flux: np.ndarray
    masks: np.ndarray
    bands: tuple[str, ...]
    context: FrameContext | None = None
    history: PhotometryHistory | None = None

    def subset(self, keep: np.ndarray) -> RawObject:
        """The frames where ``keep`` is True (time order kept)."""
        context = None
        if self.context is not None:
            c = self.context
            planes = (c.science, c.science_masks, c.template, c.template_masks)
            context = FrameContext(
                c.mjd[keep], c.psf_flux[keep], c.psf_flux_err[keep],
                *(None if a is None else np.asarray(a)[keep] for a in planes),
            )  # fmt: skip
        bands = tuple(b for b, k in zip(self.bands, keep, strict=True) if k)
        return RawObject(self.flux[keep], self.masks[keep], bands, context, self.history)


def cutout_view(raw: RawObject, side: int) -> RawObject:
    """``raw`` as cutouts ``side`` frame pixels wide around the source would show it.

    Every plane's measured pixels are cut to the centred ``side`` x ``side`` square (the source sits on
    the frame's centre), as a survey with smaller cutouts measures less of the frame: Rubin's 30-pixel
    cutouts at 0.2"/px cover 15 of the 32 frame pixels at 0.4"/px. The preprocessing then normalises
    each frame over what is left, as the service does for such alerts. A side of at least the frame's
    cuts nothing.
    """
    if side < 1:
        raise ValueError(f"a cutout side of {side} frame pixels measures nothing")
    size = raw.flux.shape[-1]
    side = min(side, size)
    lo = (size - side) // 2
    box = np.zeros((size, size), bool)
    box[lo : lo + side, lo : lo + side] = True
    context = raw.context
    if context is not None:
        context = dataclasses.replace(
            context,
            science_masks=None if context.science_masks is None else context.science_masks & box,
            template_masks=None if context.template_masks is None else context.template_masks & box,
        )
    return RawObject(raw.flux, raw.masks & box, raw.bands, context, raw.history)


def detections(psf_flux: np.ndarray, psf_flux_err: np.ndarray, min_snr: float) -> np.ndarray:
    """True for the epochs that raise an alert: finite photometry with ``|flux / err| >= min_snr``."""
    flux, err = np.asarray(psf_flux, np.float64), np.asarray(psf_flux_err, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.isfinite(flux) & np.isfinite(err) & (err > 0) & (np.abs(flux / err) >= min_snr)


class ObjectSource:
    """Random access to labelled objects: ``raw(i)``, ``labels``, ``pools`` and a content hash.

    Parameters
    ----------
    objects
        Callable-free list of raw objects or a :class:`ShardDataset` (read lazily).
    labels
        Class id per object.
    pools
        ``"pretrain"`` (unconfirmed) or ``"transfer"`` (confirmed) per object.
    data_hash
        Identifies the data (goes into the artifact).
    bands
        Keep only frames in these bands; None keeps all.
    ids
        Object identifiers (for reports).
    min_snr
        Keep only the epochs with ``|psfFlux / psfFluxErr| >= min_snr`` (the alert view); None keeps all.
    rows
        The objects of ``objects`` this source serves, in order; None serves all.
    cutout_side
        Serve every frame as :func:`cutout_view` of this many frame pixels; None serves them as stored.
    """

    def __init__(
        self,
        objects: ShardDataset | Sequence[RawObject],
        labels: np.ndarray,
        pools: np.ndarray,
        data_hash: str,
        *,
        bands: Sequence[str] | None = None,
        ids: Sequence[int | str] | None = None,
        min_snr: float | None = None,
        rows: np.ndarray | None = None,
        cutout_side: int | None = None,
    ) -> None:
        self._objects = objects
        self.cutout_side = cutout_side
        self._rows = np.arange(len(labels)) if rows is None else np.asarray(rows, np.int64)
        self.labels = np.asarray(labels, np.int64)[self._rows]
        self.pools = np.asarray(pools)[self._rows]
        self.data_hash = data_hash
        self.bands = tuple(bands) if bands else None
        self.min_snr = min_snr
        all_ids = list(ids) if ids is not None else list(range(len(labels)))
        self.ids = [all_ids[r] for r in self._rows]

    @classmethod
    def from_shards(
        cls,
        root: str | Path,
        bands: Sequence[str] | None = None,
        *,
        min_snr: float | None = None,
        min_frames: int = 1,
        cutout_side: int | None = None,
    ) -> ObjectSource:
        """Open a simulator dataset folder: its alert view with ``min_snr``, objects with ``min_frames``.

        The data hash names the view, so an artifact records which one it was trained on
        (``cutout_side``, an evaluation view, is not in it).
        """
        data = ShardDataset(root)
        pools = np.array([m["pool"] for m in data.metadata])
        ids = [m["diaObjectId"] for m in data.metadata]
        data_hash = str(data.manifest["sha256"])
        if min_snr is not None:
            data_hash = hash_text(f"{data_hash} min_snr={min_snr} min_frames={min_frames}")
        view = {"bands": bands, "ids": ids, "min_snr": min_snr, "cutout_side": cutout_side}
        source = cls(data, data.labels, pools, data_hash, **view)
        # Count from the keep masks alone: cutting every object's planes just to count them is wasted.
        counts = np.array([source._keep(source._unfiltered(i)).sum() for i in range(len(source))])
        if min_frames <= 1 and counts.all():
            return source
        rows = np.flatnonzero(counts >= max(1, min_frames))
        return cls(data, data.labels, pools, data_hash, rows=rows, **view)

    def __len__(self) -> int:
        return len(self.labels)

    def raw(self, i: int) -> RawObject:
        """Return object ``i``'s frames (band-filtered, the alert view when ``min_snr`` is set).

        Its ``history`` holds every non-blank epoch in the source's bands from :data:`PRECOVERY_DAYS`
        before the first served frame on, detected or not, as the alerts carry it.
        """
        raw = self._unfiltered(i)
        keep = self._keep(raw)
        served = raw if keep.all() else raw.subset(keep)
        if self.cutout_side is not None:  # the served frames only: the history is photometry
            served = cutout_view(served, self.cutout_side)
        if raw.context is None or not len(served.bands):
            return served
        c = raw.context
        band_index = np.array([BANDS.index(b) for b in raw.bands], np.int64)
        in_bands = np.ones(len(band_index), bool)
        if self.bands is not None:
            in_bands = np.array([b in self.bands for b in raw.bands], dtype=bool)
        assert served.context is not None  # noqa: S101 - a subset keeps the context
        start = float(served.context.mjd[0]) - PRECOVERY_DAYS
        window = in_bands & (np.asarray(c.mjd) >= start)
        detected = detections(c.psf_flux, c.psf_flux_err, self.min_snr or DETECTION_SNR)
        history = PhotometryHistory.from_points(
            np.asarray(c.mjd)[window], band_index[window], np.asarray(c.psf_flux)[window],
            np.asarray(c.psf_flux_err)[window], detected[window],
        )  # fmt: skip
        return RawObject(served.flux, served.masks, served.bands, served.context, history)

    def _unfiltered(self, i: int) -> RawObject:
        """Object ``i``'s frames, all of them (views into the shards, nothing copied)."""
        obj = self._objects[int(self._rows[int(i)])]
        if isinstance(obj, RawObject):
            return obj
        names = tuple(BANDS[int(b)] for b in obj.band)
        context = FrameContext(
            np.asarray(obj.mjd), np.asarray(obj.psf_flux), np.asarray(obj.psf_flux_err),
            None if obj.science is None else np.asarray(obj.science),
            None if obj.science is None else np.asarray(obj.masks),
            None if obj.template is None else np.asarray(obj.template),
            None if obj.template_masks is None else np.asarray(obj.template_masks),
        )  # fmt: skip
        return RawObject(np.asarray(obj.frames), np.asarray(obj.masks), names, context)

    def _keep(self, raw: RawObject) -> np.ndarray:
        """The frames of ``raw`` this source serves: its bands, and alerts only when ``min_snr`` is set."""
        keep = np.ones(len(raw.bands), bool)
        if self.bands is not None:
            keep &= np.array([b in self.bands for b in raw.bands], dtype=bool)
        if self.min_snr is not None and raw.context is not None:
            keep &= detections(raw.context.psf_flux, raw.context.psf_flux_err, self.min_snr)
        return keep

    def model_input(
        self,
        i: int,
        norm: FluxNormalisation,
        band_offset: int,
        *,
        with_context: bool = False,
        with_history: bool = False,
        rng: np.random.Generator | None = None,
    ) -> ModelInput:
        """Return object ``i`` preprocessed as the service would (empty frames dropped).

        ``with_context`` adds the planes, times and photometry (nets with ``uses_context``);
        ``with_history`` the photometric history rows of the output at each frame (``uses_history``),
        randomised by :func:`~broker_plugin_train.augment.history_view` when ``rng`` is given (training
        draws; evaluation gives none).
        """
        raw = self.raw(i)
        if (with_context or with_history) and raw.context is None:
            raise ValueError(f"object {self.ids[int(i)]} has no times, photometry or planes")
        rows = None
        if with_history:
            assert raw.context is not None and raw.history is not None  # noqa: S101 - checked above
            points = raw.history if rng is None else history_view(raw.history, raw.context.mjd, rng)
            rows = np.stack([history_features(points, float(t)) for t in raw.context.mjd])
        return arrays_to_input(
            raw.flux, raw.bands, norm, band_offset=band_offset, masks=raw.masks, stamp=raw.flux.shape[-1],
            context=raw.context if with_context else None, history=rows,
        )  # fmt: skip

    def row(self, i: int) -> int:
        """The dataset row of object ``i`` (objects below ``min_frames`` are not served)."""
        return int(self._rows[int(i)])

    def input_for(
        self, i: int, norm: FluxNormalisation, net: nn.Module, rng: np.random.Generator | None = None
    ) -> ModelInput:
        """Object ``i`` preprocessed for ``net``: its ``band_offset``, context and history if it uses them.

        ``rng`` randomises the history (training draws only).
        """
        return self.model_input(
            i, norm, net.band_offset, with_context=getattr(net, "uses_context", False),
            with_history=getattr(net, "uses_history", False), rng=rng,
        )  # fmt: skip

    def iter_stamps(self, indices: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray, str]]:
        """Yield ``(data, mask, band)`` per frame of the objects ``indices`` (normalisation fitting)."""
        for i in indices:
            raw = self.raw(int(i))
            yield from zip(raw.flux, raw.masks, raw.bands, strict=True)


def fit_normalisation(
    source: ObjectSource, indices: np.ndarray, n_objects: int, method: str, seed: int
) -> FluxNormalisation:
    """Fit the flux normalisation on up to ``n_objects`` training objects (never on test objects)."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(indices, size=min(n_objects, len(indices)), replace=False)
    return fit_flux_normalisation(source.iter_stamps(np.sort(pick)), method=method)  # type: ignore[arg-type]


def hash_text(text: str) -> str:
    """Return the hex SHA-256 of ``text``."""
    return hashlib.sha256(text.encode()).hexdigest()
