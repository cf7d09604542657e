"""Science and template cutouts: consistent with the difference, the template a lower-noise co-add."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import signal

from broker_plugin.stamps import RubinCutoutGeometry
from broker_plugin_train.config import RenderConfig
from broker_plugin_train.data import scene
from broker_plugin_train.data.cadence import Survey
from broker_plugin_train.data.population import catalogue, make_object
from broker_plugin_train.data.render import Conditions, psf_photometry, render, render_frames

from .conftest import point_source_object, small_config

M5, FWHM, SIDE, SCALE = 22.4, 1.6, 61, 0.2
#: Pixels this far from the cutout edge are out of reach of the matching kernel's edge effects.
BORDER = 12


def matching_kernel(fwhm_science: float, fwhm_template: float, wing: float, pixel: float) -> np.ndarray:
    """Kernel K with template PSF * K = science PSF (both pixel-integrated), by division in Fourier space.

    Exact for the double-Gaussian PSFs as long as the science PSF is the wider one.
    """
    k = np.fft.fftfreq(41, d=pixel)
    k2 = k[None, :] ** 2 + k[:, None] ** 2

    def transform(fwhm: float) -> np.ndarray:
        w, v = scene.psf_components(np.array([fwhm]), wing)
        return sum(w[i] * np.exp(-2 * np.pi**2 * (v[0, i] + pixel**2 / 12) * k2) for i in range(2))

    return np.fft.fftshift(np.real(np.fft.ifft2(transform(fwhm_science) / transform(fwhm_template))))


def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    east, north = RubinCutoutGeometry(SIDE, SCALE, 37.0).sky_offsets()
    return np.broadcast_to(east.ravel(), (n, east.size)), np.broadcast_to(north.ravel(), (n, east.size))


def _residual(config: RenderConfig, seed: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """``(science - K * template - difference, sigma_difference, sigma_template, K * template)`` per object.

    Objects of the small config (hosts, AGN, stars, SNe), each at its worst-seeing epoch, where the
    science PSF is wider than the co-add's and the template can be matched to it.
    """
    sim = small_config()
    survey = Survey(sim.survey, sim.seed)
    out = []
    for entry in catalogue(sim)[:12]:
        obj = make_object(sim, survey, entry)
        rng = np.random.default_rng([seed, entry.index])
        cond = Conditions.draw(rng, len(obj.epochs), config)
        i = int(np.argmax(obj.epochs.fwhm))
        east, north = _grid(1)
        r = render(obj, np.array([i]), east, north, SCALE, cond, config, rng, rng.spawn(1)[0])
        assert r.template_fwhm[0] < obj.epochs.fwhm[i]
        shape = (SIDE, SIDE)
        kernel = matching_kernel(
            float(obj.epochs.fwhm[i]), float(r.template_fwhm[0]), config.psf_wing_weight, SCALE
        )
        matched = signal.fftconvolve(r.template.reshape(shape), kernel, mode="same")
        resid = r.science.reshape(shape) - matched - r.difference.reshape(shape)
        inner = (slice(BORDER, -BORDER),) * 2
        sigma_t = np.sqrt(r.template_variance.reshape(shape) * (kernel**2).sum())
        out.append((resid[inner], np.sqrt(r.variance.reshape(shape))[inner], sigma_t[inner], matched[inner]))
    return out


def test_science_minus_matched_template_is_the_difference_without_subtraction_errors() -> None:
    """With a perfect matching kernel, science - template * K - difference is the matched template's noise.

    The misregistration stays on: the template cutout carries it, like the template the subtraction used.
    """
    config = RenderConfig().model_copy(update={"mismatch_sigma": 0.0})
    ratios, means, fractions = [], [], []
    for resid, sigma_d, sigma_t, _ in _residual(config, 1):
        # Everywhere (on the host, on the star/AGN too): within the matched template's noise ...
        ratios.append(np.std(resid / sigma_t))
        means.append(np.mean(resid / sigma_t))
        # ... which is a small fraction of the difference's own noise.
        fractions.append(np.std(resid / sigma_d))
    assert np.median(ratios) == pytest.approx(1.0, abs=0.1) and max(ratios) < 1.3
    # The kernel correlates the noise over ~85 pixels: a mean over 37 x 37 scatters by ~0.25 per object.
    assert abs(np.mean(means)) < 0.25
    assert max(fractions) < 0.05


def test_away_from_subtraction_residuals_science_minus_template_matches_the_difference() -> None:
    """Default subtraction errors (3 % PSF mismatch): within noise wherever the static light is faint."""
    config = RenderConfig()
    worst_near, worst_far = 0.0, 0.0
    for resid, sigma_d, _, matched in _residual(config, 2):
        far = matched < sigma_d  # static light below the noise: its 3 % residual is below 0.03 sigma
        assert far.mean() > 0.5
        assert np.std((resid / sigma_d)[far]) < 0.05
        worst_far = max(worst_far, float(np.abs(resid / sigma_d)[far].max()))
        worst_near = max(worst_near, float(np.abs(resid / sigma_d).max()))
    assert worst_far < 0.25
    assert worst_near > worst_far  # the residual model is there: rings on bright hosts and stars


@pytest.mark.parametrize("visits", [5, 20])
def test_template_noise_is_that_of_a_coadd(visits: int) -> None:
    """Template noise per pixel = a visit's / sqrt(N), as its variance plane says; science = the visit's."""
    n = 40
    obj = point_source_object(3e3, n, FWHM, M5)
    obj = dataclasses.replace(obj, flux_ref=np.full(n, 2e3))
    config = RenderConfig().model_copy(update={"template_visits": visits})
    cond = Conditions.draw(np.random.default_rng(0), n, config)
    east, north = _grid(n)
    sel = np.arange(n)
    one = render(
        obj, sel, east, north, SCALE, cond, config, np.random.default_rng(1), np.random.default_rng(2)
    )
    two = render(
        obj, sel, east, north, SCALE, cond, config, np.random.default_rng(3), np.random.default_rng(4)
    )
    noise_t = (one.template - two.template) / np.sqrt(2)
    noise_s = (one.science - two.science) / np.sqrt(2)
    # Measured scatter agrees with the variance planes (pixels near the source included).
    assert np.std(noise_t / np.sqrt(one.template_variance)) == pytest.approx(1.0, abs=0.03)
    assert np.std(noise_s / np.sqrt(one.variance)) == pytest.approx(1.0, abs=0.03)
    # Away from the source the noise is the sky's: 1/sqrt(N) of a visit's.
    sky = (east**2 + north**2) > 4.0**2
    ratio = np.std(noise_t[sky]) / np.std(noise_s[sky])
    assert ratio == pytest.approx(1 / np.sqrt(visits), rel=0.05)
    # The science and difference images share the visit's noise realisation.
    np.testing.assert_allclose(one.science - one.difference, two.science - two.difference, atol=1e-6)


def test_each_image_holds_its_own_flux() -> None:
    """PSF photometry: science = f(t), template = f_ref (co-add PSF), difference = f(t) - f_ref."""
    n = 300
    f_now, f_ref = 6e3, 4e3
    obj = point_source_object(f_now, n, FWHM, M5)
    obj = dataclasses.replace(obj, flux_ref=np.full(n, f_ref))
    config = RenderConfig().model_copy(update={"astrometric_jitter_arcsec": 0.0, "mismatch_sigma": 0.0})
    rng = np.random.default_rng(5)
    east, north = _grid(n)
    r = render(
        obj, np.arange(n), east, north, SCALE, Conditions.draw(rng, n, config), config, rng, rng.spawn(1)[0]
    )
    assert r.template_fwhm == pytest.approx(config.template_seeing_ratio * FWHM)
    w, v = scene.psf_components(r.template_fwhm, config.psf_wing_weight)
    zero = np.zeros((1, 1))
    tpsf = scene.evaluate(
        scene.convolve_profile(np.ones((n, 1)), (zero, zero), (zero,) * 3, v, w, SCALE**2 / 12),
        east,
        north,
        SCALE**2,
    )
    for image, variance, psf, truth in (
        (r.science, r.variance, r.psf, f_now),
        (r.template, r.template_variance, tpsf, f_ref),
        (r.difference, r.variance, r.psf, f_now - f_ref),
    ):
        flux, err = psf_photometry(image, variance, psf)
        pull = (flux - truth) / err
        assert abs(pull.mean()) < 4 / np.sqrt(n) * pull.std() + 0.02 * truth / err.mean()
        assert pull.std() == pytest.approx(1.0, abs=0.15)


def test_science_poisson_noise_counts_the_source_once() -> None:
    """The science variance is sky + read + gain x (the source at f(t)): a star's f_ref is not added again."""
    obj = point_source_object(5e5, 1, FWHM, M5)
    bright_ref = dataclasses.replace(obj, flux_ref=np.full(1, 5e5))
    config = RenderConfig().model_copy(update={"astrometric_jitter_arcsec": 0.0})
    east, north = _grid(1)
    cond = Conditions.draw(np.random.default_rng(0), 1, config)
    plain = render(obj, np.arange(1), east, north, SCALE, cond, config, np.random.default_rng(1))
    star = render(bright_ref, np.arange(1), east, north, SCALE, cond, config, np.random.default_rng(1))
    np.testing.assert_allclose(star.variance, plain.variance, rtol=1e-6)
    assert star.template is None  # no template generator: none rendered
    sky = plain.variance.min()
    assert plain.variance.max() > 5 * sky  # the star's own Poisson noise dominates at its peak


def test_frames_science_shares_the_difference_mask_and_template_has_its_own() -> None:
    n = 200
    obj = point_source_object(2e4, n, FWHM, M5)
    obj = dataclasses.replace(obj, flux_ref=np.full(n, 1e4))
    obj.epochs.missing[:5] = True
    config = RenderConfig().model_copy(update={"bad_column_rate": 0.5, "mask_blob_rate": 0.5})
    out = render_frames(obj, config, np.random.default_rng(6))
    masks, tmasks = out["masks"], out["template_masks"]
    assert np.all(out["science"][~masks] == 0) and np.all(out["template"][~tmasks] == 0)
    assert not tmasks[:5].any() and tmasks[5:].all()  # co-add: no visit artefacts; none at lost visits
    assert (~masks[5:]).any()
    # science - difference = the (imperfectly) matched template: same flux as the template frame.
    good = masks[5:].all(axis=(1, 2))
    sci_minus_diff = (out["science"][5:] - out["frames"][5:]).sum(axis=(1, 2))[good]
    assert np.median(sci_minus_diff) == pytest.approx(1e4, rel=0.005)  # noise-free: the same visit noise
    template = out["template"][5:].sum(axis=(1, 2))
    assert abs(template.mean() - 1e4) < 4 * template.std() / np.sqrt(len(template))
    # Without science and template the difference frames are the same bytes.
    alone = render_frames(
        obj, config.model_copy(update={"science_template": False}), np.random.default_rng(6)
    )
    assert set(alone) == {"frames", "masks", "psf_flux", "psf_flux_err"}
    np.testing.assert_array_equal(alone["frames"], out["frames"])
