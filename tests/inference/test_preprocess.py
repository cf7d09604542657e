import numpy as np
import pytest

from broker_plugin.inference.errors import InferenceInputError
from broker_plugin.inference.preprocess import (
    FluxNormalisation,
    arrays_to_input,
    fit_flux_normalisation,
    frames_to_input,
    frames_to_inputs,
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


def _random_frames(rng: np.random.Generator, n: int, first_id: int, *, science: bool = True) -> list[Frame]:
    out = []
    for k in range(n):
        planes: dict = {}
        if science and k % 3 != 1:  # some frames without science or template
            mask = rng.random((32, 32)) > 0.1
            image = np.where(mask, rng.normal(100.0, 5.0, (32, 32)), 0.0).astype(np.float32)
            planes = {"science": image, "scienceMask": mask, "template": image * 0.9, "templateMask": mask}
        measured = k % 4 != 2 or n < 3  # an unmeasured frame now and then: no model input
        out.append(Frame(
            rng.normal(0.0, 30.0, (32, 32)).astype(np.float32), np.full((32, 32), measured), StampFlag.NONE,
            "ugriz"[k % 5], 60000.0 + 1.7 * k + first_id, first_id + k, psfFlux=float(rng.normal(500, 50)),
            psfFluxErr=20.0, **planes,
        ))  # fmt: skip
    return out


def _assert_same_input(got, want) -> None:  # type: ignore[no-untyped-def]
    for name in ("x", "band", "aux", "photometry", "presence", "mjd", "history"):
        a, b = getattr(got, name), getattr(want, name)
        assert (a is None) == (b is None), name
        if a is not None:
            np.testing.assert_array_equal(a, b, err_msg=name)
    np.testing.assert_equal((got.first_mjd, got.prev_mjd), (want.first_mjd, want.prev_mjd))
    if want.has_context:
        np.testing.assert_array_equal(got.context(), want.context())


@pytest.mark.parametrize("with_context", [True, False])
def test_several_objects_at_once_equal_each_preprocessed_alone(with_context: bool) -> None:
    rng = np.random.default_rng(11)
    groups = [_random_frames(rng, n, 1000 * (g + 1), science=g != 2) for g, n in enumerate([5, 1, 7, 0, 3])]
    befores = [_random_frames(rng, n, 100 * (g + 1)) for g, n in enumerate([2, 0, 4, 1, 0])]
    histories = [rng.normal(size=(len(g), 6, 3)).astype(np.float32) if g else None for g in groups]
    norm = FluxNormalisation("asinh", scale=(50.0,) * 6)
    kwargs = {"band_offset": 1, "with_context": with_context}
    got = frames_to_inputs(groups, norm, befores=befores, histories=histories, **kwargs)
    assert len(got) == len(groups)
    for group, before, rows, inp in zip(groups, befores, histories, got, strict=True):
        _assert_same_input(inp, frames_to_input(group, norm, before=before, history=rows, **kwargs))


def test_several_objects_refused_as_each_would_be_alone() -> None:
    rng = np.random.default_rng(5)
    good, bad = _random_frames(rng, 3, 10), _random_frames(rng, 2, 20)
    bad[1] = Frame(bad[1].data, bad[1].mask, StampFlag.NONE, "q", 60100.0, 99)  # a band no net knows
    norm = FluxNormalisation()
    with pytest.raises(InferenceInputError, match="unknown band") as alone:
        frames_to_input(bad, norm, band_offset=1)
    with pytest.raises(InferenceInputError) as together:
        frames_to_inputs([good, bad], norm, band_offset=1)
    assert str(together.value) == str(alone.value)
    with pytest.raises(ValueError, match="one 'befores'"):
        frames_to_inputs([good, bad], norm, band_offset=1, befores=[good])
