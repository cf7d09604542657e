"""The learning-rate schedule of the shared training loop."""

import dataclasses

import numpy as np
import pytest

from broker_plugin_train.loop import LoopSettings, probe_macro_f1, scheduled_lr

BASE = LoopSettings(
    epochs=4, samples_per_epoch=64, batch_size=8, lr=2e-3, weight_decay=0.0, amsgrad=False, focal_gamma=2.0,
    class_weight_power=1.0, balanced_sampler=True, max_train_frames=24, min_prefix_frames=3,
    prefix_probability=0.5, augment=False, val_max=None, seed=0,
)  # fmt: skip


def test_constant_is_the_authors_rate_at_every_step():
    assert {scheduled_lr(BASE, step, 32) for step in range(32)} == {2e-3}


def test_cosine_warms_up_then_decays_to_zero():
    s = dataclasses.replace(BASE, lr_schedule="cosine", warmup_fraction=0.25)
    lrs = np.array([scheduled_lr(s, step, 100) for step in range(100)])
    assert lrs[0] == pytest.approx(2e-3 / 25)
    assert np.all(np.diff(lrs[:25]) > 0) and lrs[24] == pytest.approx(2e-3)
    assert np.all(np.diff(lrs[25:]) < 0)
    assert lrs[62] == pytest.approx(1e-3, rel=0.05)  # half-way through the decay
    assert lrs[-1] < 2e-3 * 1e-3


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="lr_schedule"):
        scheduled_lr(dataclasses.replace(BASE, lr_schedule="step"), 0, 10)


def test_probe_scores_separable_features_high_and_noise_low():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 50)
    centres = rng.normal(0, 3, (4, 16))
    x = centres[y] + rng.normal(0, 1, (200, 16))
    assert probe_macro_f1(x[::2], y[::2], x[1::2], y[1::2], 4) > 0.95
    noise = rng.normal(0, 1, (200, 16))
    assert probe_macro_f1(noise[::2], y[::2], noise[1::2], y[1::2], 4) < 0.5
