"""Shards of simulated objects on disk, and their lazy (memory-mapped) reader for training.

Layout of a dataset folder::

    manifest.json              format, format_version, planes, config, seed, class/pool counts,
                               per-file SHA-256, dataset hash
    shard-00000/
        frames.npy             float32 (N, S, S)  difference flux per frame pixel [nJy], north up, east
                               left, exactly what serving's resampler produces (masked pixels are 0)
        masks.npy              bool    (N, S, S)  True where the difference (and science) pixel is measured
        science.npy            float32 (N, S, S)  science image flux per frame pixel [nJy], the same
                               resampler on the same grid; masked where ``masks`` is False  (*)
        template.npy           float32 (N, S, S)  template (reference co-add) flux per frame pixel [nJy] (*)
        template_masks.npy     bool    (N, S, S)  True where the template pixel is measured (*)
        band.npy               int8    (N,)       index into broker_plugin.records.BANDS
        mjd.npy                float64 (N,)       midpointMjdTai [MJD, TAI], the alert's observation time
        flux_true.npy          float32 (N,)       noise-free difference flux f(t) - f_ref [nJy]
        psf_flux.npy           float32 (N,)       psfFlux: forced PSF flux on the native difference image,
                               as the DIA pipeline puts into the alert [nJy] (NaN: blank)
        psf_flux_err.npy       float32 (N,)       psfFluxErr, its 1-sigma error [nJy]
        offsets.npy            int64   (n+1,)     object j owns frames offsets[j]:offsets[j+1]
        objects.json           list of n dicts: index, diaObjectId, label, class_id, true_class, subtype,
                               confirmed, pool, ra, dec, redshift, period, n_frames, params
    shard-00001/ ...

(*) only where ``manifest["planes"]`` lists ``"science"`` and ``"template"`` (``render.science_template``);
format version 1 (before science and template existed) is read as a dataset of difference frames.

N counts the frames of all n objects of the shard, in time order within each object. Every file is
written deterministically (``np.save``, sorted JSON keys, no timestamps), so the same config and seed
give byte-identical datasets; ``manifest["sha256"]`` hashes all file hashes in order.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "convention-sim-shards"
FORMAT_VERSION = 2
#: Format versions this reader understands (1: difference frames only).
READABLE_VERSIONS = (1, 2)
#: Arrays of every shard, ``offsets`` last.
ARRAYS: tuple[str, ...] = (
    "frames",
    "masks",
    "band",
    "mjd",
    "flux_true",
    "psf_flux",
    "psf_flux_err",
    "offsets",
)
#: Arrays of the science and template frames, present when the manifest's planes name them.
IMAGE_ARRAYS: tuple[str, ...] = ("science", "template", "template_masks")
#: The image planes a dataset may hold, each the serving resampler's output on the same frame grid.
PLANES: tuple[str, ...] = ("difference", "science", "template")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(value: Any) -> str:
    """Deterministic JSON (sorted keys, NaN as null)."""
    return json.dumps(_jsonable(value), sort_keys=True, indent=1)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_shard(folder: Path, arrays: dict[str, np.ndarray], objects: list[dict[str, Any]]) -> dict[str, str]:
    """Write one shard.

    Parameters
    ----------
    folder
        The shard folder (created).
    arrays
        The :data:`ARRAYS` and optionally the :data:`IMAGE_ARRAYS`, already with their on-disk dtypes.
    objects
        Per-object metadata, in frame order.

    Returns
    -------
    dict
        File name -> SHA-256.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for name in ARRAYS + tuple(n for n in IMAGE_ARRAYS if n in arrays):
        np.save(folder / f"{name}.npy", arrays[name], allow_pickle=False)
    (folder / "objects.json").write_text(dumps(objects))
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir())}


@dataclass(frozen=True, slots=True)
class Sequence:
    """One object's frames (views into the memory-mapped shard) and metadata.

    ``frames``/``masks`` are the difference frames; ``science`` (masked like them), ``template`` and
    ``template_masks`` are ``None`` in a dataset without those planes.
    """

    frames: np.ndarray
    masks: np.ndarray
    band: np.ndarray
    mjd: np.ndarray
    flux_true: np.ndarray
    psf_flux: np.ndarray
    psf_flux_err: np.ndarray
    meta: dict[str, Any]
    science: np.ndarray | None = None
    template: np.ndarray | None = None
    template_masks: np.ndarray | None = None


class ShardDataset:
    """Random access to a simulated dataset without loading it.

    Parameters
    ----------
    root
        The dataset folder (with ``manifest.json``).

    Examples
    --------
    >>> data = ShardDataset("data/sim/default")                       # doctest: +SKIP
    >>> seq = data[0]; seq.frames.shape, seq.meta["label"]            # doctest: +SKIP
    ((97, 32, 32), 'SNIa')
    >>> train = data.select(pool="pretrain")                          # doctest: +SKIP
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.manifest: dict[str, Any] = json.loads((self.root / "manifest.json").read_text())
        if self.manifest.get("format") != FORMAT:
            raise ValueError(f"{self.root} is not a {FORMAT} dataset")
        version = self.manifest.get("format_version")
        if version not in READABLE_VERSIONS:
            raise ValueError(
                f"{self.root} is a {FORMAT} dataset of format version {version!r}; this reader reads "
                f"versions {', '.join(map(str, READABLE_VERSIONS))}: re-simulate it with this code"
            )
        #: Image planes of the dataset (``"difference"`` always; ``"science"``, ``"template"`` if stored).
        self.planes: tuple[str, ...] = tuple(self.manifest.get("planes", ("difference",)))
        self._arrays = ARRAYS + (IMAGE_ARRAYS if "template" in self.planes else ())
        self.metadata: list[dict[str, Any]] = []
        self._where: list[tuple[int, int]] = []
        for s, shard in enumerate(self.manifest["shards"]):
            objects = json.loads((self.root / shard["name"] / "objects.json").read_text())
            self.metadata += objects
            self._where += [(s, j) for j in range(len(objects))]
        self._open: dict[int, dict[str, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.metadata)

    def _shard(self, s: int) -> dict[str, np.ndarray]:
        if s not in self._open:
            folder = self.root / self.manifest["shards"][s]["name"]
            self._open[s] = {n: np.load(folder / f"{n}.npy", mmap_mode="r") for n in self._arrays}
        return self._open[s]

    def __getitem__(self, i: int) -> Sequence:
        s, j = self._where[i]
        arr = self._shard(s)
        lo, hi = int(arr["offsets"][j]), int(arr["offsets"][j + 1])
        images = {n: arr[n][lo:hi] for n in IMAGE_ARRAYS if n in arr}
        return Sequence(*(arr[n][lo:hi] for n in ARRAYS[:-1]), meta=self.metadata[i], **images)

    def __iter__(self) -> Iterator[Sequence]:
        for i in range(len(self)):
            yield self[i]

    @property
    def labels(self) -> np.ndarray:
        """Class id (index into :data:`broker_plugin_train.config.CLASSES`) of every object."""
        return np.array([m["class_id"] for m in self.metadata], dtype=np.int64)

    def select(self, *, pool: str | None = None, confirmed: bool | None = None) -> np.ndarray:
        """Indices of the objects of a pool and/or confirmation status."""
        keep = [
            i
            for i, m in enumerate(self.metadata)
            if (pool is None or m["pool"] == pool) and (confirmed is None or m["confirmed"] == confirmed)
        ]
        return np.array(keep, dtype=np.int64)
