"""Pixels: difference images of a simulated object, at any pixel grid, and the model frames.

An epoch's difference image is

- the source's difference flux ``f(t) - f_ref`` as a PSF at the (slightly mis-centred) source position;
- the PSF-mismatch residual of everything static (host galaxy, and the template flux of a star or AGN):
  the template is matched with a PSF a few per cent too wide or narrow and misregistered by a few
  hundredths of an arcsec, leaving rings and dipoles that grow with the host's brightness;
- Gaussian noise with the variance of sky + read noise (set by the epoch's 5-sigma depth) plus Poisson
  noise of the science image (host + source);
- artefacts: a bad column, a masked blob (saturated star, cosmic-ray mask), or a lost observation
  (everything masked): NaN pixels, which the resampler masks.

Training frames are made exactly as serving makes them: each epoch is rendered on a native survey grid
(SDSS-like 0.396"/px, its orientation jittered per visit) and sent through
:func:`broker_plugin.stamps.resample_to_frame`, the function serving uses on every alert cutout, so
there is no training/serving skew in resampling, masking or flux scaling. Alert cutouts are rendered on
:class:`broker_plugin.stamps.RubinCutoutGeometry` grids (0.2"/px, rotated per visit) by the same code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from broker_plugin.stamps import RubinCutoutGeometry, resample_to_frame
from train.config import RenderConfig
from train.data import scene
from train.data.bandpasses import mag_to_njy
from train.data.population import SimObject


@dataclass(frozen=True, slots=True)
class Conditions:
    """Per-epoch subtraction imperfections and centring error, drawn once per object and epoch."""

    jitter_e: np.ndarray
    jitter_n: np.ndarray
    mismatch: np.ndarray
    shift_e: np.ndarray
    shift_n: np.ndarray

    @staticmethod
    def draw(rng: np.random.Generator, n: int, config: RenderConfig) -> Conditions:
        """Draw the conditions of ``n`` epochs."""
        j, m = config.astrometric_jitter_arcsec, config.misregistration_arcsec
        return Conditions(
            rng.normal(0, j, n),
            rng.normal(0, j, n),
            rng.normal(0, config.mismatch_sigma, n),
            rng.normal(0, m, n),
            rng.normal(0, m, n),
        )


def _static_profiles(obj: SimObject, sel: np.ndarray, min_psf_var: float) -> list[tuple]:
    """Static light of the scene per selected epoch: ``(flux (E,J), centre, covariance)`` tuples."""
    bands = obj.epochs.band[sel]
    out = []
    if obj.host is not None:
        h = obj.host
        amps, var = scene.merge_unresolved(
            *scene.sersic_mixture(h.sersic_n), 0.2 * min_psf_var / h.r_e_arcsec**2
        )
        hflux = np.array([h.flux_njy[str(b)] for b in bands])
        pa = math.radians(h.pa_deg)
        # Major axis along position angle pa (north through east); minor axis scaled by q.
        ue, un = math.sin(pa), math.cos(pa)
        major, minor = var * h.r_e_arcsec**2, var * (h.r_e_arcsec * h.axis_ratio) ** 2
        cov = (
            major * ue * ue + minor * un * un,
            (major - minor) * ue * un,
            major * un * un + minor * ue * ue,
        )
        cen = (np.full((1, len(amps)), h.offset[0]), np.full((1, len(amps)), h.offset[1]))
        out.append((hflux[:, None] * amps[None, :], cen, tuple(c[None, :] for c in cov)))
    ref = obj.flux_ref[sel]
    if np.any(ref != 0):
        out.append((ref[:, None], (np.zeros((1, 1)), np.zeros((1, 1))), (np.zeros((1, 1)),) * 3))
    return out


def render(
    obj: SimObject,
    sel: np.ndarray,
    east: np.ndarray,
    north: np.ndarray,
    pixel_scale: float,
    cond: Conditions,
    config: RenderConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noisy difference images of the selected epochs on the given pixel grids.

    Parameters
    ----------
    obj
        The object.
    sel
        Indices of the epochs to render, shape ``(E,)``.
    east, north
        ``(E, P)`` sky offsets of the pixel centres from the source's measured position [arcsec].
    pixel_scale
        Pixel side [arcsec].
    cond
        Per-epoch conditions of the *whole* object (indexed by ``sel``).
    config
        Rendering settings.
    rng
        Noise generator.

    Returns
    -------
    tuple of numpy.ndarray
        ``image`` [nJy / pixel], ``variance`` [nJy^2], the noise-free ``model`` [nJy / pixel], and the
        unit-flux PSF at the source, each ``(E, P)``.
    """
    ep = obj.epochs
    fwhm, w = ep.fwhm[sel], config.psf_wing_weight
    pix_var = pixel_scale**2 / 12.0
    psf_w, psf_var = scene.psf_components(fwhm, w)
    je, jn = cond.jitter_e[sel][:, None], cond.jitter_n[sel][:, None]
    zero = np.zeros((1, 1))
    area = pixel_scale**2
    unit = scene.evaluate(
        scene.convolve_profile(np.ones((len(sel), 1)), (je, jn), (zero,) * 3, psf_var, psf_w, pix_var),
        east,
        north,
        area,
    )
    model = obj.flux_diff[sel][:, None] * unit
    science = np.clip(obj.flux_total[sel], 0, None)[:, None] * unit
    scale = (1.0 + cond.mismatch[sel])[:, None] ** 2
    for flux, (ce, cn), cov in _static_profiles(obj, sel, float(psf_var.min())):
        centre = (ce + je, cn + jn)
        sci = scene.evaluate(
            scene.convolve_profile(flux, centre, cov, psf_var, psf_w, pix_var), east, north, area
        )
        shifted = (centre[0] + cond.shift_e[sel][:, None], centre[1] + cond.shift_n[sel][:, None])
        tmpl = scene.convolve_profile(flux, shifted, cov, psf_var * scale, psf_w, pix_var)
        model += sci - scene.evaluate(tmpl, east, north, area)
        science += sci
    # Sky + read noise from the depth: sigma_flux(PSF fit) = F5 / 5 = sigma_pix sqrt(A_eff) / pixel.
    a_eff = scene.effective_area(fwhm, w, pix_var)
    sigma_pix = mag_to_njy(ep.m5[sel]) / 5.0 / np.sqrt(a_eff) * pixel_scale
    sky = mag_to_njy(ep.sky_mag[sel]) * area
    gain = sigma_pix**2 / sky  # nJy per photo-electron: the sky's Poisson variance equals sigma_pix^2
    variance = sigma_pix[:, None] ** 2 + gain[:, None] * np.clip(science, 0, None)
    image = model + rng.standard_normal(model.shape) * np.sqrt(variance)
    return image, variance, model, unit


def add_artefacts(image: np.ndarray, missing: bool, config: RenderConfig, rng: np.random.Generator) -> None:
    """Put NaN artefacts into one ``(H, W)`` image in place."""
    if missing:
        image[:] = np.nan
        return
    rows, cols = image.shape
    if rng.random() < config.bad_column_rate:
        image[:, rng.integers(cols)] = np.nan
    if rng.random() < config.mask_blob_rate:
        r = rng.uniform(1.0, 3.0)
        y0, x0 = rng.uniform(0, rows), rng.uniform(0, cols)
        yy, xx = np.mgrid[:rows, :cols]
        image[(yy - y0) ** 2 + (xx - x0) ** 2 <= r * r] = np.nan


def native_geometries(n: int, config: RenderConfig, rng: np.random.Generator) -> list[RubinCutoutGeometry]:
    """Native survey grids of ``n`` epochs, large enough to cover the model frame at any drawn rotation."""
    rot = (
        rng.normal(0.0, config.native_rotation_sigma_deg, n)
        if config.native_rotation_sigma_deg
        else np.zeros(n)
    )
    half = 0.5 * config.frame_size * config.frame_pixel_scale_arcsec
    theta = np.radians(np.abs(rot).max(initial=0.0))
    reach = half * (abs(math.cos(theta)) + abs(math.sin(theta)))
    size = 2 * math.ceil(reach / config.native_pixel_scale_arcsec + 1.5) + 1
    sub = rng.uniform(-0.5, 0.5, (n, 2))
    centre = (size - 1) / 2.0
    return [
        RubinCutoutGeometry(size, config.native_pixel_scale_arcsec, float(r), (centre + s[0], centre + s[1]))
        for r, s in zip(rot, sub, strict=True)
    ]


def render_frames(obj: SimObject, config: RenderConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """All model frames of one object.

    Returns
    -------
    dict
        ``frames`` float32 ``(N, S, S)`` [nJy per frame pixel], ``masks`` bool ``(N, S, S)``, and the
        native-image PSF photometry ``psf_flux``, ``psf_flux_err`` [nJy] per frame.
    """
    n = len(obj.epochs)
    cond = Conditions.draw(rng, n, config)
    geoms = native_geometries(n, config, rng)
    offsets = [g.sky_offsets() for g in geoms]
    east = np.stack([o[0].ravel() for o in offsets])
    north = np.stack([o[1].ravel() for o in offsets])
    sel = np.arange(n)
    image, variance, _, psf = render(
        obj, sel, east, north, config.native_pixel_scale_arcsec, cond, config, rng
    )
    flux, err = psf_photometry(image, variance, psf)
    size = geoms[0].size
    image = image.reshape(n, size, size)
    frames = np.zeros((n, config.frame_size, config.frame_size), np.float32)
    masks = np.zeros((n, config.frame_size, config.frame_size), bool)
    for i, geom in enumerate(geoms):
        add_artefacts(image[i], bool(obj.epochs.missing[i]), config, rng)
        frames[i], masks[i] = resample_to_frame(
            image[i], geom.cd_arcsec, geom.source_xy, config.frame_size, config.frame_pixel_scale_arcsec
        )
    missing = obj.epochs.missing
    flux[missing], err[missing] = np.nan, np.nan
    return {"frames": frames, "masks": masks, "psf_flux": flux, "psf_flux_err": err}


def psf_photometry(image: np.ndarray, variance: np.ndarray, psf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Forced PSF photometry at the source, as the DIA pipeline's ``psfFlux``.

    Parameters
    ----------
    image, variance
        ``(E, P)`` images [nJy / pixel] (NaN = bad) and their variance [nJy^2].
    psf
        ``(E, P)`` unit-flux PSF at the source position.

    Returns
    -------
    tuple of numpy.ndarray
        ``psfFlux`` and ``psfFluxErr`` [nJy] per epoch (inverse-variance weighted PSF fit).
    """
    good = np.isfinite(image)
    wgt = np.where(good, psf / variance, 0.0)
    denom = (wgt * psf).sum(axis=1)
    flux = (wgt * np.where(good, image, 0.0)).sum(axis=1) / denom
    return flux, 1.0 / np.sqrt(denom)
