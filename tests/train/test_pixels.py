"""The pixels: depth -> S/N, the Gaussian-mixture renderer against GalSim, artefacts and masks."""

from __future__ import annotations

import numpy as np
import pytest

from broker_plugin.stamps import RubinCutoutGeometry
from broker_plugin.stamps.resample import frame_sky_offsets
from broker_plugin_train.config import RenderConfig
from broker_plugin_train.data import scene
from broker_plugin_train.data.bandpasses import mag_to_njy
from broker_plugin_train.data.render import (
    Conditions,
    native_geometries,
    psf_photometry,
    render,
    render_frames,
)

from .conftest import point_source_object

M5, FWHM = 22.4, 1.4


def _quiet(config: RenderConfig) -> RenderConfig:
    return config.model_copy(
        update={"astrometric_jitter_arcsec": 0.0, "bad_column_rate": 0.0, "mask_blob_rate": 0.0}
    )


@pytest.mark.parametrize("delta_mag", [0.0, 0.75])
def test_point_source_snr_matches_depth_on_native_images(delta_mag: float) -> None:
    """A source at m5 - delta has S/N = 5 * 10^(0.4 delta) (background-limited), within 10 %.

    The source's own Poisson noise lowers the S/N by ~1.5 % at m5 and ~3 % at m5 - 0.75 (real physics);
    2000 realisations measure the S/N to ~1.6 %.
    """
    n = 2000
    obj = point_source_object(float(mag_to_njy(M5 - delta_mag)), n, FWHM, M5)
    config = _quiet(RenderConfig())
    rng = np.random.default_rng(1)
    geom = RubinCutoutGeometry(41, config.native_pixel_scale_arcsec)
    east, north = (np.broadcast_to(o.ravel(), (n, o.size)) for o in geom.sky_offsets())
    cond = Conditions.draw(rng, n, config)
    out = render(obj, np.arange(n), east, north, geom.pixel_scale_arcsec, cond, config, rng)
    flux, err = psf_photometry(out.difference, out.variance, out.psf)
    expected = 5.0 * 10 ** (0.4 * delta_mag)
    measured = flux.mean() / flux.std()
    assert measured == pytest.approx(expected, rel=0.10)
    assert np.median(flux / err) == pytest.approx(expected, rel=0.10)  # the reported error agrees too
    assert flux.mean() == pytest.approx(obj.flux_total[0], rel=0.03)


def test_point_source_snr_survives_resampling_to_frames() -> None:
    """The same S/N measured on the 32x32 frames made by the serving resampler (matched filter)."""
    n = 1500
    obj = point_source_object(float(mag_to_njy(M5 - 0.75)), n, FWHM, M5)
    config = _quiet(RenderConfig())
    out = render_frames(obj, config, np.random.default_rng(2))
    east, north = frame_sky_offsets(config.frame_size, config.frame_pixel_scale_arcsec)
    w, v = scene.psf_components(np.array([FWHM]), config.psf_wing_weight)
    zero = np.zeros((1, 1))
    comps = scene.convolve_profile(
        np.ones((1, 1)), (zero, zero), (zero,) * 3, v, w, 2 * config.frame_pixel_scale_arcsec**2 / 12
    )
    p = scene.evaluate(comps, east.reshape(1, -1), north.reshape(1, -1), config.frame_pixel_scale_arcsec**2)[
        0
    ]
    frames = out["frames"].reshape(n, -1).astype(np.float64)
    flux = frames @ p / (p @ p)
    expected = 5.0 * 10 ** (0.4 * 0.75)
    assert flux.mean() / flux.std() == pytest.approx(expected, rel=0.10)
    assert flux.mean() == pytest.approx(obj.flux_total[0], rel=0.05)


@pytest.mark.parametrize("n", [1.0, 4.0])
def test_gaussian_mixture_host_matches_galsim(n: float) -> None:
    """Sersic host x double-Gaussian PSF, pixel-integrated: our mixture vs GalSim's exact rendering."""
    galsim = pytest.importorskip("galsim")
    r_e, q, pa, fwhm, pix, size = 1.2, 0.6, 30.0, 1.3, 0.2, 64
    wing = 0.1
    w, v = scene.psf_components(np.array([fwhm]), wing)
    psf = galsim.Add([galsim.Gaussian(sigma=float(np.sqrt(v[0, k])), flux=float(w[k])) for k in range(2)])
    gal = galsim.Sersic(n=n, half_light_radius=r_e, flux=1.0, trunc=8 * r_e if n > 2 else 0.0)
    # GalSim's shear keeps the area; our r_e is the major-axis radius: rescale to match. Its angle beta is
    # counted from +x towards +y; with x = east and y = north, PA (north through east) is beta = 90 - PA.
    gal = gal.shear(q=q, beta=(90.0 - pa) * galsim.degrees).dilate(np.sqrt(q))
    ref = galsim.Convolve(gal, psf).drawImage(nx=size, ny=size, scale=pix, method="auto").array
    amps, var = scene.sersic_mixture(n)
    pa_r = np.radians(pa)
    ue, un = np.sin(pa_r), np.cos(pa_r)
    major, minor = var * r_e**2, var * (r_e * q) ** 2
    cov = (major * ue * ue + minor * un * un, (major - minor) * ue * un, major * un * un + minor * ue * ue)
    comps = scene.convolve_profile(
        amps[None, :], (np.zeros((1, 1)), np.zeros((1, 1))), tuple(c[None, :] for c in cov), v, w, pix**2 / 12
    )
    # GalSim's even-sized image puts the profile centre at the corner between the four middle pixels.
    offsets = (np.arange(size) - (size - 1) / 2) * pix
    north, east = np.meshgrid(offsets, offsets, indexing="ij")
    ours = scene.evaluate(comps, east.reshape(1, -1), north.reshape(1, -1), pix**2)[0].reshape(size, size)
    assert np.abs(ours - ref).max() < 0.03 * ref.max()
    assert ours.sum() == pytest.approx(ref.sum(), rel=0.03)


def test_artefacts_are_masked_never_invented() -> None:
    n = 300
    obj = point_source_object(1e4, n, FWHM, M5)
    config = RenderConfig().model_copy(update={"bad_column_rate": 0.5, "mask_blob_rate": 0.5})
    obj.epochs.missing[:10] = True
    out = render_frames(obj, config, np.random.default_rng(3))
    assert not out["masks"][:10].any() and np.all(out["frames"][:10] == 0)
    assert np.isnan(out["psf_flux"][:10]).all()
    partial = ~out["masks"][10:].all(axis=(1, 2))
    assert 0.4 < partial.mean() < 0.95  # about 1 - 0.5 * 0.5 of the frames carry a bad column or blob
    assert np.all(out["frames"][~out["masks"]] == 0)


def test_native_grids_cover_the_frame() -> None:
    config = RenderConfig().model_copy(update={"native_rotation_sigma_deg": 20.0})
    for g in native_geometries(50, config, np.random.default_rng(0)):
        east, north = g.sky_offsets()
        half = 0.5 * config.frame_size * config.frame_pixel_scale_arcsec
        assert east.max() > half and east.min() < -half and north.max() > half and north.min() < -half
