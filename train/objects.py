"""Labelled objects for training, from a simulator dataset or from real alerts, preprocessed by serving code.

Every model input goes through :func:`broker_plugin.inference.preprocess.arrays_to_input` with the
artifact's :class:`~broker_plugin.inference.preprocess.FluxNormalisation`, exactly as the service does,
so training and serving cannot drift apart.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from broker_plugin.inference.preprocess import (
    FluxNormalisation,
    ModelInput,
    arrays_to_input,
    fit_flux_normalisation,
)
from broker_plugin.records import BANDS
from train.data.shards import ShardDataset


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
    """

    flux: np.ndarray
    masks: np.ndarray
    bands: tuple[str, ...]


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
    ) -> None:
        self._objects = objects
        self.labels = np.asarray(labels, np.int64)
        self.pools = np.asarray(pools)
        self.data_hash = data_hash
        self.bands = tuple(bands) if bands else None
        self.ids = list(ids) if ids is not None else list(range(len(self.labels)))

    @classmethod
    def from_shards(cls, root: str | Path, bands: Sequence[str] | None = None) -> ObjectSource:
        """Open a simulator dataset folder."""
        data = ShardDataset(root)
        pools = np.array([m["pool"] for m in data.metadata])
        ids = [m["diaObjectId"] for m in data.metadata]
        return cls(data, data.labels, pools, str(data.manifest["sha256"]), bands=bands, ids=ids)

    def __len__(self) -> int:
        return len(self.labels)

    def raw(self, i: int) -> RawObject:
        """Return object ``i``'s frames (band-filtered)."""
        obj = self._objects[int(i)]
        if isinstance(obj, RawObject):
            raw = obj
        else:
            names = tuple(BANDS[int(b)] for b in obj.band)
            raw = RawObject(np.asarray(obj.frames), np.asarray(obj.masks), names)
        if self.bands is None:
            return raw
        keep = np.array([b in self.bands for b in raw.bands], dtype=bool)
        return RawObject(
            raw.flux[keep], raw.masks[keep], tuple(b for b, k in zip(raw.bands, keep, strict=True) if k)
        )

    def model_input(self, i: int, norm: FluxNormalisation, band_offset: int) -> ModelInput:
        """Return object ``i`` preprocessed as the service would (empty frames dropped)."""
        raw = self.raw(i)
        return arrays_to_input(
            raw.flux, raw.bands, norm, band_offset=band_offset, masks=raw.masks, stamp=raw.flux.shape[-1]
        )

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
