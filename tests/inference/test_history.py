"""The photometric history rows: causal, bounded, scale free, and each frame reads its own alert's history."""

import numpy as np
import pytest

from broker_plugin.inference.errors import InferenceInputError
from broker_plugin.inference.history import (
    BAND_COLUMNS,
    DETECTED_COLUMN,
    HISTORY_FEATURES,
    HISTORY_HORIZON_DAYS,
    PEAK_COLUMN,
    PHOTOMETRY_COLUMNS,
    TIME_COLUMNS,
    VALID_COLUMN,
    collate_history,
    frame_history_rows,
    history_features,
    with_detection,
)
from broker_plugin.inference.preprocess import ModelInput
from broker_plugin.records import BANDS, Frame, PhotometryHistory, StampFlag


def _history(mjd, flux=None, detected=None, band=1):
    mjd = np.asarray(mjd, np.float64)
    n = len(mjd)
    flux = np.full(n, 500.0) if flux is None else np.asarray(flux, np.float64)
    detected = np.zeros(n, bool) if detected is None else np.asarray(detected, bool)
    return PhotometryHistory.from_points(mjd, np.full(n, band), flux, np.full(n, 100.0), detected)


def test_only_epochs_up_to_now_and_within_the_horizon_are_read():
    history = _history([60000.0 - HISTORY_HORIZON_DAYS - 1, 60000.0 - 10, 60000.0, 60000.5, 60010.0])
    rows = history_features(history, 60000.0)
    assert rows.shape[1] == HISTORY_FEATURES
    assert rows[:, VALID_COLUMN].sum() == 2  # 10 days before, and now; not before the horizon, not after
    # Epochs after now never change the rows: an output cannot see later observations.
    later = _history([60000.0 - 10, 60000.0, 60300.0], flux=[500.0, 500.0, 1e6])
    np.testing.assert_array_equal(history_features(later, 60000.0), rows)


def test_the_most_recent_epochs_are_kept_in_time_order():
    mjd = 60000.0 + np.arange(10.0)
    shuffled = np.random.default_rng(1).permutation(10)
    history = _history(mjd[shuffled], flux=(100.0 * np.arange(10))[shuffled])
    rows = history_features(history, 60009.0, max_points=4)
    assert rows[:, VALID_COLUMN].tolist() == [1, 1, 1, 1]
    # log1p(now - t) / 7 falls towards now: the oldest kept epoch (6 days before) comes first.
    np.testing.assert_allclose(rows[:, TIME_COLUMNS.start], np.log1p([3.0, 2.0, 1.0, 0.0]) / 7.0, rtol=1e-6)
    np.testing.assert_allclose(rows[:, PHOTOMETRY_COLUMNS.start], np.arcsinh([0.6, 0.7, 0.8, 0.9]), rtol=1e-6)


def test_rows_carry_band_detection_and_a_scale_free_shape():
    history = PhotometryHistory.from_points(
        [60000.0, 60001.0, 60002.0],
        [0, 3, 5],
        [200.0, 1000.0, -50.0],
        [50.0, 50.0, 50.0],
        [False, True, False],
    )
    rows = history_features(history, 60002.0)
    assert rows[:3, BAND_COLUMNS].argmax(axis=1).tolist() == [0, 3, 5]
    assert rows[:3, DETECTED_COLUMN].tolist() == [0, 1, 0]
    np.testing.assert_allclose(rows[:3, PEAK_COLUMN], [0.2, 1.0, -0.05], rtol=1e-6)
    # The same light curve 100 times fainter (another distance, another zero point) has the same shape.
    faint = PhotometryHistory.from_points(
        history.midpointMjdTai,
        history.band,
        history.psfFlux / 100,
        history.psfFluxErr / 100,
        history.detected,
    )
    np.testing.assert_allclose(
        history_features(faint, 60002.0)[:, PEAK_COLUMN], rows[:, PEAK_COLUMN], rtol=1e-6
    )
    assert not np.allclose(
        history_features(faint, 60002.0)[:3, PHOTOMETRY_COLUMNS], rows[:3, PHOTOMETRY_COLUMNS]
    )


def test_no_history_gives_empty_rows():
    assert not history_features(None, 60000.0).any()
    assert not history_features(PhotometryHistory.empty(), 60000.0).any()
    assert not history_features(_history([60000.0]), float("nan")).any()


def test_malformed_points_are_dropped_not_fatal():
    history = PhotometryHistory.from_points(
        [60000.0, np.nan, 60001.0, 60002.0, 60003.0, 60004.0, 10.0],
        [1, 1, 9, 1, 1, 1, 1],
        [1.0, 1.0, 1.0, np.inf, 1.0, 1.0, 1.0],
        [1.0, 1.0, 1.0, 1.0, 0.0, 2e12, 1.0],
        [True] * 7,
    )
    assert history.midpointMjdTai.tolist() == [60000.0]
    with pytest.raises(ValueError, match="length"):
        PhotometryHistory.from_points([1.0], [1, 2], [1.0], [1.0], [True])


def test_the_alerts_own_detection_joins_its_history():
    history = _history([59990.0])
    both = with_detection(history, 60000.0, "r", 800.0, 40.0)
    assert both.midpointMjdTai.tolist() == [59990.0, 60000.0]
    assert both.band.tolist() == [1, BANDS.index("r")] and both.detected.tolist() == [False, True]
    assert len(with_detection(history, 60000.0, "r", None, 40.0)) == 1  # no photometry: nothing to add
    assert len(with_detection(None, 60000.0, "g", 1.0, 1.0)) == 1


def _frame(mjd, history):
    return Frame(
        np.zeros((32, 32), np.float32), np.ones((32, 32), bool), StampFlag(0), "g", mjd, 1,
        psfFlux=1000.0, psfFluxErr=50.0, history=history,
    )  # fmt: skip


def test_each_frame_reads_only_its_own_alerts_history():
    early = _frame(60000.0, _history([59995.0]))
    late = _frame(60010.0, _history([59995.0, 60005.0]))
    rows = frame_history_rows([early, late])
    assert rows[0, :, VALID_COLUMN].sum() == 2  # 59995 and its own detection
    assert rows[1, :, VALID_COLUMN].sum() == 3
    np.testing.assert_array_equal(frame_history_rows([early])[0], rows[0])  # batch-mates change nothing


def test_collating_needs_the_rows():
    rows = np.zeros((2, 128, HISTORY_FEATURES), np.float32)
    rows[1, 0, VALID_COLUMN] = 1
    inp = ModelInput(np.zeros((2, 32, 32), np.float32), np.ones(2, np.int64), history=rows)
    np.testing.assert_array_equal(collate_history([inp, inp[:1]]), rows[[1, 0]])
    with pytest.raises(InferenceInputError, match="history"):
        collate_history([ModelInput(np.zeros((1, 32, 32), np.float32), np.ones(1, np.int64))])


def test_the_encoder_reads_the_valid_rows_in_order_and_nothing_after_them():
    import torch

    from broker_plugin.inference.layers import HistoryEncoder

    torch.manual_seed(0)
    encoder = HistoryEncoder(HISTORY_FEATURES, hidden=16, out=8).eval()
    rows = torch.zeros(2, 12, HISTORY_FEATURES)
    rows[:, :5] = torch.randn(2, 5, HISTORY_FEATURES)
    rows[:, :5, VALID_COLUMN] = 1.0
    with torch.no_grad():
        out = encoder(rows)
        junk = rows.clone()
        junk[:, 5:, 1:] = torch.randn(2, 7, HISTORY_FEATURES - 1)  # not valid: never read
        np.testing.assert_allclose(encoder(junk), out, atol=1e-6)
        np.testing.assert_allclose(encoder(rows[1:]), out[1:], atol=1e-6)  # batch-mates change nothing
        swapped = rows.clone()
        swapped[:, [0, 1]] = rows[:, [1, 0]]
        assert not torch.allclose(encoder(swapped), out, atol=1e-4)  # the order is read, not a set


def test_the_encoder_can_pass_the_statistics_on_as_they_are():
    import torch

    from broker_plugin.inference.history_statistics import HISTORY_STATISTICS, history_statistics
    from broker_plugin.inference.layers import HistoryEncoder

    torch.manual_seed(0)
    rows = torch.zeros(2, 12, HISTORY_FEATURES)
    rows[:, :5] = torch.randn(2, 5, HISTORY_FEATURES)
    rows[:, :5, VALID_COLUMN] = 1.0
    encoder = HistoryEncoder(HISTORY_FEATURES, hidden=16, out=8, statistics=True, skip_statistics=True).eval()
    assert encoder.out_features == 8 + HISTORY_STATISTICS
    with torch.no_grad():
        out = encoder(rows)
    assert out.shape == (2, encoder.out_features)
    np.testing.assert_allclose(out[:, 8:], history_statistics(rows), atol=1e-6)
    with pytest.raises(ValueError, match="statistics"):
        HistoryEncoder(HISTORY_FEATURES, hidden=16, out=8, skip_statistics=True)
