"""``python -m broker_plugin_train simulate``: the labelled dataset, shard by shard, in parallel.

Each shard is made by one worker process from the config and seed alone (objects draw their own
``SeedSequence([seed, index])`` generators; pixel noise uses ``SeedSequence([seed, index, 1])`` and
the template's noise a generator spawned from it; a randomised look ``SeedSequence([seed, index, 3])``),
so the bytes do not depend on the number of workers or on scheduling.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from broker_plugin.progress import progress
from broker_plugin.records import BANDS
from broker_plugin_train.config import CLASSES, SimulationConfig
from broker_plugin_train.data import shards
from broker_plugin_train.data.cadence import Survey
from broker_plugin_train.data.population import CatalogueEntry, SimObject, catalogue, make_object
from broker_plugin_train.data.render import render_frames

log = logging.getLogger(__name__)


def object_metadata(obj: SimObject, config: SimulationConfig) -> dict[str, Any]:
    """The per-object record stored with the frames (with its ``look`` when randomised)."""
    e = obj.entry
    meta = {
        "index": e.index,
        "diaObjectId": config.alerts.first_object_id + e.index,
        "label": e.label,
        "class_id": CLASSES.index(e.label),
        "true_class": obj.true_class,
        "subtype": obj.subtype,
        "confirmed": e.confirmed,
        "pool": e.pool,
        "ra": obj.ra,
        "dec": obj.dec,
        "redshift": obj.redshift,
        "period": obj.period,
        "n_frames": len(obj.epochs),
        "host": obj.host is not None,
        "params": obj.params,
    }
    if obj.look is not None:
        meta["look"] = obj.look.summary()
    return meta


def pixel_rng(seed: int, index: int) -> np.random.Generator:
    """The noise generator of one object's pixels."""
    return np.random.default_rng(np.random.SeedSequence([seed, index, 1]))


def simulate_objects(config: SimulationConfig, entries: list[CatalogueEntry]) -> tuple[dict, list]:
    """Frames and metadata of some catalogue entries, concatenated in shard layout."""
    survey = Survey(config.survey, config.seed)
    images = ("frames", "masks") + (shards.IMAGE_ARRAYS if config.render.science_template else ())
    parts: dict[str, list[np.ndarray]] = {n: [] for n in shards.ARRAYS + images if n != "offsets"}
    objects, offsets = [], [0]
    for entry in entries:
        obj = make_object(config, survey, entry)
        out = render_frames(obj, config.render, pixel_rng(config.seed, entry.index))
        for name in images:
            parts[name].append(out[name])
        parts["band"].append(np.array([BANDS.index(b) for b in obj.epochs.band], dtype=np.int8))
        parts["mjd"].append(obj.epochs.mjd.astype(np.float64))
        parts["flux_true"].append(obj.flux_diff.astype(np.float32))
        parts["psf_flux"].append(out["psf_flux"].astype(np.float32))
        parts["psf_flux_err"].append(out["psf_flux_err"].astype(np.float32))
        objects.append(object_metadata(obj, config))
        offsets.append(offsets[-1] + len(obj.epochs))
    arrays = {n: np.concatenate(v) for n, v in parts.items()}
    arrays["offsets"] = np.array(offsets, dtype=np.int64)
    return arrays, objects


def _make_shard(job: tuple[SimulationConfig, list[CatalogueEntry], str]) -> tuple[str, int, int, dict]:
    config, entries, folder = job
    arrays, objects = simulate_objects(config, entries)
    hashes = shards.write_shard(Path(folder), arrays, objects)
    return Path(folder).name, len(entries), int(arrays["offsets"][-1]), hashes


def simulate(config: SimulationConfig, out_dir: str | Path, workers: int | None = None) -> dict[str, Any]:
    """Simulate the dataset of ``config`` into ``out_dir``.

    Parameters
    ----------
    config
        Simulation settings (its ``seed`` is the master seed).
    out_dir
        Dataset folder; existing shards there are overwritten.
    workers
        Worker processes (default: ``config.workers``).

    Returns
    -------
    dict
        The manifest (also written to ``out_dir/manifest.json``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    entries = catalogue(config)
    step = config.shard_objects
    jobs = [
        (config, entries[i : i + step], str(out / f"shard-{i // step:05d}"))
        for i in range(0, len(entries), step)
    ]
    started = time.perf_counter()
    n_workers = min(workers or config.workers, len(jobs))
    if n_workers > 1:
        with ProcessPoolExecutor(n_workers) as pool:
            shards_made = pool.map(_make_shard, jobs)  # in order, as each finishes
            results = list(progress(shards_made, total=len(jobs), desc="simulate", unit="shard"))
    else:
        results = [_make_shard(job) for job in progress(jobs, desc="simulate", unit="shard")]
    log.info("simulated %d objects in %.1f s", len(entries), time.perf_counter() - started)
    counts: dict[str, int] = {}
    for e in entries:
        key = f"{e.label}/{'confirmed' if e.confirmed else 'unconfirmed'}/{e.pool}"
        counts[key] = counts.get(key, 0) + 1
    shard_rows = [{"name": n, "n_objects": k, "n_frames": f, "sha256": h} for n, k, f, h in results]
    digest = shards.hashlib.sha256("".join(v for r in shard_rows for v in r["sha256"].values()).encode())
    manifest = {
        "format": shards.FORMAT,
        "format_version": shards.FORMAT_VERSION,
        "planes": list(shards.PLANES if config.render.science_template else shards.PLANES[:1]),
        "seed": config.seed,
        "config": config.model_dump(mode="json"),
        "classes": list(CLASSES),
        "bands": list(BANDS),
        "frame_size": config.render.frame_size,
        "pixel_scale_arcsec": config.render.frame_pixel_scale_arcsec,
        "n_objects": len(entries),
        "n_frames": sum(r["n_frames"] for r in shard_rows),
        "class_counts": {c: sum(e.label == c for e in entries) for c in CLASSES},
        "split_counts": dict(sorted(counts.items())),
        "shards": shard_rows,
        "sha256": digest.hexdigest(),
    }
    (out / "manifest.json").write_text(shards.dumps(manifest))
    return manifest
