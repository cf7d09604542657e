from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from broker_plugin.records import BANDS
from train.config import CLASSES
from train.data.shards import ShardDataset
from train.data.simulate import simulate

from .conftest import small_config


def test_manifest_counts_and_lazy_reading(small_dataset: Path) -> None:
    data = ShardDataset(small_dataset)
    manifest = json.loads((small_dataset / "manifest.json").read_text())
    assert len(data) == manifest["n_objects"] == 40
    assert manifest["class_counts"] == {"AGN": 8, "SNIa": 12, "Variable": 8, "SNOther": 12}
    assert manifest["split_counts"]["SNIa/confirmed/transfer"] == 4
    assert sum(len(data[i].mjd) for i in range(len(data))) == manifest["n_frames"]
    seq = data[3]
    assert isinstance(seq.frames.base, np.memmap) or isinstance(seq.frames, np.memmap)
    assert seq.frames.dtype == np.float32 and seq.frames.shape[1:] == (32, 32)
    assert seq.masks.dtype == bool and seq.masks.shape == seq.frames.shape
    assert np.all(np.diff(seq.mjd) >= 0)
    assert set(np.unique(seq.band)) <= set(range(len(BANDS)))
    assert np.all(seq.frames[~seq.masks] == 0)
    meta = seq.meta
    assert meta["label"] in CLASSES and meta["class_id"] == CLASSES.index(meta["label"])
    assert {"diaObjectId", "confirmed", "pool", "redshift", "period", "true_class"} <= set(meta)
    assert list(data.labels).count(CLASSES.index("SNIa")) == 12
    transfer = data.select(pool="transfer")
    assert all(data.metadata[i]["pool"] == "transfer" for i in transfer) and len(transfer) > 0


def test_same_seed_same_bytes_whatever_the_workers(tmp_path: Path) -> None:
    tiny = small_config(
        agn=3, variable=3, snia_unconfirmed=2, snia_confirmed=1, snother_unconfirmed=2, snother_confirmed=1
    ).model_copy(update={"shard_objects": 4})
    one = simulate(tiny, tmp_path / "one", workers=1)
    two = simulate(tiny, tmp_path / "two", workers=2)
    assert one["sha256"] == two["sha256"] and len(one["shards"]) == 3
    for shard in one["shards"]:
        for name in shard["sha256"]:
            assert (tmp_path / "one" / shard["name"] / name).read_bytes() == (
                tmp_path / "two" / shard["name"] / name
            ).read_bytes()
    other = simulate(tiny.model_copy(update={"seed": tiny.seed + 1}), tmp_path / "other", workers=1)
    assert other["sha256"] != one["sha256"]
