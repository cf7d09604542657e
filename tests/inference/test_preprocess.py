import numpy as np
import pytest

from broker_plugin.inference.errors import InferenceInputError
from broker_plugin.inference.preprocess import (
    FluxNormalisation,
    arrays_to_input,
    fit_flux_normalisation,
    frames_to_input,
    select_window,
    window_start,
)
from broker_plugin.records import BANDS, Frame, StampFlag


def frame(value: float, band: str, masked: bool = False) -> Frame:
    mask = np.zeros((32, 32), bool) if masked else np.ones((32, 32), bool)
    return Frame(np.full((32, 32), value, np.float32), mask, StampFlag.NONE, band, 60000.0, 1)


def test_asinh_normalisation_per_band_and_band_ids():
    norm = FluxNormalisation("asinh", scale=(10.0, 20.0, 30.0, 40.0, 50.0, 60.0))
    inp = frames_to_input([frame(20.0, "g"), frame(30.0, "r")], norm, band_offset=1)
    assert inp.band.tolist() == [2, 3]
    np.testing.assert_allclose(inp.x[:, 0, 0], np.arcsinh([1.0, 1.0]), rtol=1e-6)


def test_zscore_keeps_masked_pixels_at_zero():
    norm = FluxNormalisation("zscore", scale=(2.0,) * 6, offset=(1.0,) * 6)
    mask = np.ones((1, 32, 32), bool)
    mask[0, :4] = False
    inp = arrays_to_input(np.full((1, 32, 32), 5.0), ["u"], norm, band_offset=0, masks=mask)
    assert inp.band.tolist() == [0]
    assert inp.x[0, 0, 0] == 0.0 and inp.x[0, 10, 0] == pytest.approx(2.0)


def test_missing_frames_are_dropped_and_unknown_bands_refused():
    norm = FluxNormalisation()
    inp = frames_to_input(
        [frame(1.0, "g"), frame(1.0, "r", masked=True), frame(1.0, "i")], norm, band_offset=1
    )
    assert inp.band.tolist() == [2, 4]
    with pytest.raises(InferenceInputError, match="unknown band"):
        frames_to_input([frame(1.0, "w")], norm, band_offset=1)
    with pytest.raises(InferenceInputError):
        arrays_to_input(np.zeros((2, 16, 16)), ["g", "r"], norm, band_offset=1)


@pytest.mark.parametrize(
    ("n", "start"), [(0, 0), (1, 0), (99, 0), (100, 3), (101, 3), (102, 3), (103, 6), (150, 51)]
)
def test_window_rolls_by_whole_chunks(n, start):
    assert window_start(n, 3, 33) == start
    assert n - start <= 99


def test_select_window_keeps_the_most_recent_frames():
    inp = arrays_to_input(
        np.arange(104, dtype=np.float32)[:, None, None] * np.ones((1, 32, 32)),
        ["g"] * 104,
        FluxNormalisation(),
        band_offset=1,
    )
    win = select_window(inp, 3, 33)
    assert len(win) == 98 and win.x[-1, 0, 0] == inp.x[-1, 0, 0]


def test_fit_normalisation_is_robust_and_round_trips():
    rng = np.random.default_rng(1)
    stamps = [(rng.normal(0, 50, (32, 32)), np.ones((32, 32), bool), "r") for _ in range(20)]
    stamps[0][0][:3] = 1e6  # a bright transient must not set the scale
    norm = fit_flux_normalisation(stamps)
    assert norm.scale[BANDS.index("r")] == pytest.approx(50, rel=0.05)
    assert norm.scale[BANDS.index("u")] == 100.0
    assert FluxNormalisation.from_dict(norm.to_dict()) == norm
    with pytest.raises(ValueError):
        FluxNormalisation.from_dict({**norm.to_dict(), "bands": ["g", "r"]})


def test_static_images_normalise_scale_and_sky_free_and_as_one_by_one():
    from broker_plugin.inference.preprocess import normalise_static_image, normalise_static_images

    rng = np.random.default_rng(1)
    images = rng.gamma(2.0, 50.0, (12, 32, 32)).astype(np.float32)
    masks = np.ones(images.shape, bool)
    masks[3, :5] = False  # partial coverage
    masks[7] = False  # absent plane
    out, present = normalise_static_images(images, masks)
    one_by_one = np.stack([normalise_static_image(images[i], masks[i]) for i in range(12)])
    np.testing.assert_array_equal(out, one_by_one)
    assert present.tolist() == [i != 7 for i in range(12)]
    assert not out[7].any() and not out[3][:5].any()
    # A zero point (scale) and a sky level (offset) leave the normalised image unchanged.
    calibrated, _ = normalise_static_images(images * 37.5 + 1000.0, masks)
    np.testing.assert_allclose(calibrated, out, atol=1e-4)
    flat, _ = normalise_static_images(np.full((1, 32, 32), 5.0, np.float32), np.ones((1, 32, 32), bool))
    assert np.isfinite(flat).all() and not flat.any()


def test_take_equals_preprocessing_the_taken_frames_alone():
    rng = np.random.default_rng(3)
    frames = []
    for k in range(9):
        science = rng.normal(100.0, 5.0, (32, 32)).astype(np.float32)
        mask = rng.random((32, 32)) > 0.1
        frames.append(Frame(
            rng.normal(0.0, 30.0, (32, 32)).astype(np.float32), np.ones((32, 32), bool), StampFlag.NONE,
            "ugriz"[k % 5], 60000.0 + 1.3 * k, k, science=np.where(mask, science, 0.0).astype(np.float32),
            scienceMask=mask, psfFlux=float(rng.normal(500, 50)), psfFluxErr=20.0,
        ))  # fmt: skip
    norm = FluxNormalisation("asinh", scale=(50.0,) * 6)
    full = frames_to_input(frames, norm, band_offset=1, with_context=True)
    for picked in ([0, 1, 2], [2, 4, 5, 8], [3], [1, 2, 3, 4, 5, 6, 7, 8]):
        alone = frames_to_input([frames[i] for i in picked], norm, band_offset=1, with_context=True)
        taken = full.take(picked)
        for name in ("x", "band", "aux", "photometry", "presence", "mjd"):
            np.testing.assert_array_equal(getattr(taken, name), getattr(alone, name), err_msg=name)
        np.testing.assert_array_equal(taken.context(), alone.context())
        np.testing.assert_array_equal(taken[1:].context(), alone[1:].context())
