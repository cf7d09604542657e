from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from broker_plugin_train.__main__ import main
from broker_plugin_train.data.baseline_lc import run_baseline
from broker_plugin_train.data.features import FEATURE_NAMES, extract, frame_photometry
from broker_plugin_train.data.shards import ShardDataset

from .conftest import CONFIGS


def test_simulate_cli_with_previews(tmp_path: Path) -> None:
    out = tmp_path / "sim"
    config = tmp_path / "tiny.toml"
    config.write_text(
        (CONFIGS / "small.toml")
        .read_text()
        .replace("agn = 8", "agn = 2")
        .replace("variable = 8", "variable = 2")
    )
    assert main(["simulate", "--config", str(config), "--seed", "11", "--out", str(out), "--preview"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seed"] == 11 and manifest["class_counts"]["AGN"] == 2
    pngs = sorted(p.name for p in (out / "preview").glob("*.png"))
    assert pngs == ["preview_agn.png", "preview_snia.png", "preview_snother.png", "preview_variable.png"]


def test_frame_photometry_measures_a_gaussian_source() -> None:
    size, sigma, flux = 32, 1.3, 5000.0
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    img = flux * np.exp(-0.5 * (xx**2 + yy**2) / sigma**2) / (2 * np.pi * sigma**2)
    noise = np.random.default_rng(0).normal(0, 20.0, (200, size, size))
    frames = (img + noise).astype(np.float32)
    masks = np.ones_like(frames, bool)
    masks[:, :, 3] = False  # a bad column far from the source changes nothing
    measured, err = frame_photometry(frames, masks)
    assert np.mean(measured) == np.float64(np.mean(measured)) and abs(np.mean(measured) / flux - 1) < 0.01
    assert (
        np.std(measured) == np.float64(np.std(measured)) and abs(np.median(err) / np.std(measured) - 1) < 0.15
    )


def test_features_and_baseline_run_on_a_dataset(small_dataset: Path) -> None:
    data = ShardDataset(small_dataset)
    x = np.stack([extract(seq) for seq in data])
    assert x.shape == (len(data), len(FEATURE_NAMES))
    assert np.isfinite(x).mean() > 0.8
    result = run_baseline(small_dataset, max_iter=10)
    assert result["n_test"] + result["n_train"] == len(data)
    assert 0.0 <= result["accuracy"] <= 1.0 and len(result["confusion"]) == 4
