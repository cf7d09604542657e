from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from broker_plugin.records import BANDS
from broker_plugin_train.config import CLASSES
from broker_plugin_train.data.shards import ShardDataset
from broker_plugin_train.data.simulate import simulate

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


def test_science_and_template_frames(small_dataset: Path) -> None:
    data = ShardDataset(small_dataset)
    assert data.planes == ("difference", "science", "template")
    assert data.manifest["format_version"] == 2
    for i in (0, 7, 21):
        seq = data[i]
        for plane in (seq.science, seq.template):
            assert plane.dtype == np.float32 and plane.shape == seq.frames.shape
        assert seq.template_masks.dtype == bool and seq.template_masks.shape == seq.frames.shape
        # The science frame is masked like the difference frame; the co-add only at lost visits.
        assert np.all(seq.science[~seq.masks] == 0) and np.all(seq.template[~seq.template_masks] == 0)
        lost = ~seq.template_masks.any(axis=(1, 2))
        assert not seq.masks[lost].any()
        assert seq.template_masks[~lost].all()
        # Per-frame alert photometry and observation time are there for every frame.
        assert seq.psf_flux.dtype == np.float32 and len(seq.psf_flux_err) == len(seq.mjd) == len(seq.frames)


def test_difference_only_and_version_1_datasets_still_read(tmp_path: Path) -> None:
    tiny = small_config(
        agn=1, variable=1, snia_unconfirmed=1, snia_confirmed=0, snother_unconfirmed=0, snother_confirmed=0
    )
    simulate(tiny, tmp_path / "all", workers=1)
    lean = tiny.model_copy(update={"render": tiny.render.model_copy(update={"science_template": False})})
    manifest = simulate(lean, tmp_path / "lean", workers=1)
    assert manifest["planes"] == ["difference"]
    assert not list((tmp_path / "lean").glob("shard-*/science.npy"))
    full, diff_only = ShardDataset(tmp_path / "all"), ShardDataset(tmp_path / "lean")
    for i in range(len(full)):
        np.testing.assert_array_equal(diff_only[i].frames, full[i].frames)  # same difference bytes
        assert diff_only[i].science is None and diff_only[i].template is None
    # A dataset written before science and template existed (format version 1, no planes).
    manifest.pop("planes")
    manifest["format_version"] = 1
    (tmp_path / "lean" / "manifest.json").write_text(json.dumps(manifest))
    old = ShardDataset(tmp_path / "lean")
    assert old.planes == ("difference",) and old[0].science is None and len(old[0].frames) > 0
    # A format this reader does not know is refused with a clear error.
    manifest["format_version"] = 3
    (tmp_path / "lean" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="format version 3"):
        ShardDataset(tmp_path / "lean")
