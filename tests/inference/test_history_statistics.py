"""Light-curve statistics of the history rows: equal to the same statistics measured on the epochs."""

import math

import numpy as np
import torch

from broker_plugin.inference.history import HISTORY_FEATURES, HISTORY_POINTS, history_features
from broker_plugin.inference.history_statistics import (
    GLOBAL,
    HISTORY_STATISTICS,
    PER_BAND,
    history_statistics,
)
from broker_plugin.records import BANDS, PhotometryHistory

NOW = 60100.0


def _light_curve() -> PhotometryHistory:
    """A g/r supernova-like curve: quiet, a rise to peak on day 40, a decline; detected above S/N 5."""
    rng = np.random.default_rng(3)
    mjd = np.sort(NOW - rng.uniform(0.0, 100.0, 60))
    band = rng.choice([1, 2], 60)
    shape = np.exp(-0.5 * ((mjd - (NOW - 60.0)) / 12.0) ** 2)
    flux = 4000.0 * shape * np.where(band == 1, 1.0, 0.7) + rng.normal(0.0, 100.0, 60)
    err = np.full(60, 100.0)
    return PhotometryHistory.from_points(mjd, band, flux, err, flux / err > 5)


def _stats(history: PhotometryHistory) -> np.ndarray:
    rows = torch.from_numpy(history_features(history, NOW))[None]
    return history_statistics(rows)[0].numpy()


def test_statistics_match_the_epochs_they_summarise():
    history = _light_curve()
    out = _stats(history)
    assert out.shape == (HISTORY_STATISTICS,)
    t, band, flux, err = history.midpointMjdTai, history.band, history.psfFlux, history.psfFluxErr
    peak = flux / np.abs(flux[history.detected]).max()
    snr_a = np.arcsinh(flux / err / 5.0)
    for b in (1, 2):
        s = out[b * PER_BAND : (b + 1) * PER_BAND]
        sel = band == b
        p = peak[sel]
        np.testing.assert_allclose(s[0], math.log1p(sel.sum()) / 5.0, rtol=1e-5)
        np.testing.assert_allclose(s[1:5], [snr_a[sel].max(), snr_a[sel].min(), snr_a[sel].mean(),
                                            snr_a[sel].std()], rtol=1e-4, atol=1e-5)  # fmt: skip
        np.testing.assert_allclose(s[5], (flux[sel] / err[sel] > 3).mean(), rtol=1e-5)
        np.testing.assert_allclose(s[7:10], [p.max(), p.mean(), p.std()], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(s[11], p.max() - p.min(), rtol=1e-4)
        eta = np.mean(np.diff(p) ** 2) / (p.var() + 1e-4)
        np.testing.assert_allclose(s[12], math.log1p(eta), rtol=1e-4)
    for b in (0, 3, 4, 5):  # bands without epochs read zeros
        assert not out[b * PER_BAND : (b + 1) * PER_BAND].any()
    g = out[len(BANDS) * PER_BAND :]
    assert len(g) == GLOBAL
    det_t = t[history.detected]
    t_peak = t[np.argmax(peak)]
    np.testing.assert_allclose(g[1], math.log1p(det_t.max() - det_t.min()) / 7.0, rtol=1e-4)
    np.testing.assert_allclose(g[2], math.log1p(t_peak - det_t.min()) / 7.0, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(g[4], math.log1p(NOW - t_peak) / 7.0, rtol=1e-4)


def test_a_smooth_curve_has_a_lower_von_neumann_ratio_than_noise():
    rng = np.random.default_rng(0)
    mjd = NOW - np.arange(50.0)[::-1] * 3
    smooth = 1000.0 + 800.0 * np.sin(mjd / 40.0)
    noisy = 1000.0 + 800.0 * rng.standard_normal(50)
    eta = [
        _stats(PhotometryHistory.from_points(mjd, np.full(50, 2), f, np.full(50, 50.0), np.ones(50, bool)))[
            2 * PER_BAND + 12
        ]
        for f in (smooth, noisy)
    ]
    assert eta[0] < 0.5 < eta[1]


def test_empty_and_padded_histories_give_finite_zeros_and_batches_do_not_mix():
    empty = torch.zeros(1, HISTORY_POINTS, HISTORY_FEATURES)
    assert not history_statistics(empty).any()
    rows = torch.from_numpy(np.stack([history_features(_light_curve(), NOW), empty[0].numpy()]))
    both = history_statistics(rows)
    assert torch.isfinite(both).all()
    torch.testing.assert_close(both[0], torch.from_numpy(_stats(_light_curve())))
    assert not both[1].any()
