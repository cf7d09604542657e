"""Pixels: the difference, science and template images of a simulated object, and the model frames.

Every epoch is rendered as three images on one pixel grid (the science visit's):

- the **science** image: the epoch's scene (the source at its flux ``f(t)``, the host galaxy) convolved
  with the epoch's PSF, plus Gaussian noise with the variance of sky + read noise (set by the epoch's
  5-sigma depth) and the Poisson noise of the scene;
- the **template**: the reference co-add of ``template_visits`` visits: the static scene (host, and the
  source at the reference flux ``f_ref`` of a star or AGN) convolved with the co-add's PSF (a FWHM of
  ``template_seeing_ratio`` times the median seeing of the object's visits in that band), registered to
  the science grid with a misregistration of a few hundredths of an arcsec, and noise of variance
  ``1 / template_visits`` of a typical visit's (sky + read + Poisson, band medians over the object's
  visits);
- the **difference** image = science - PSF-matched template: the source's difference flux
  ``f(t) - f_ref`` as a PSF, the PSF-mismatch residual of everything static (the matching kernel gives a
  PSF a few per cent too wide or narrow, applied to the misregistered template: rings and dipoles that
  grow with the host's brightness), and the science image's noise realisation (the matched template's
  noise adds ``sum(K^2) / template_visits`` of that variance and is neglected).

So science - template (matched to the science PSF) - difference is the mismatch residual near bright
static light plus the matched template's noise, far below the difference's own noise (tested). Artefacts
(a bad column, a masked blob, or a lost observation) are NaN pixels of the visit: the science and
difference images share them, the co-add has none (the whole epoch is NaN when the visit is lost).

Training frames are made exactly as serving makes them: each epoch is rendered on a native survey grid
and every image is sent through :class:`broker_plugin.stamps.ResamplePlan`, the resampler serving
uses on every alert cutout, so there is no training/serving skew in resampling, masking or flux
scaling. The fixed look's grid is SDSS-like (0.4"/px, its orientation jittered per visit, covering the
whole frame); a domain-randomised object (:mod:`broker_plugin_train.data.domain`) has a native pixel scale of
its own and, per visit, any orientation and a cutout side that may leave the frame's outer pixels unmeasured
(masked, as serving masks what a small alert cutout does not cover). Alert cutouts are rendered on
:class:`broker_plugin.stamps.RubinCutoutGeometry` grids (0.2"/px, rotated per visit) by the same code.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from broker_plugin.stamps import ResamplePlan, RubinCutoutGeometry
from broker_plugin_train.config import RenderConfig
from broker_plugin_train.data import scene
from broker_plugin_train.data.bandpasses import mag_to_njy
from broker_plugin_train.data.domain import Look
from broker_plugin_train.data.population import SimObject


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


def _static_profiles(obj: SimObject, sel: np.ndarray, min_psf_var: float) -> list[tuple[str, tuple]]:
    """Static light of the scene per selected epoch: ``(name, (flux (E,J), centre, covariance))``.

    ``name`` is ``"host"`` for the galaxy or ``"reference"`` for the source's template flux ``f_ref``
    (a star's or AGN's mean flux), which the science image does not hold at that flux.
    """
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
        out.append(("host", (hflux[:, None] * amps[None, :], cen, tuple(c[None, :] for c in cov))))
    ref = obj.flux_ref[sel]
    if np.any(ref != 0):
        point = (ref[:, None], (np.zeros((1, 1)), np.zeros((1, 1))), (np.zeros((1, 1)),) * 3)
        out.append(("reference", point))
    return out


@dataclass(frozen=True, slots=True)
class Rendered:
    """The images of the rendered epochs, each ``(E, P)`` on the given pixel grids [nJy / pixel].

    Attributes
    ----------
    difference
        Difference image (science - PSF-matched template, with the subtraction residuals).
    variance
        Variance of the difference and of the science image [nJy^2]: they share the science noise.
    model
        Noise-free difference image.
    psf
        Unit-flux PSF of the epoch at the source (pixel-integrated).
    science
        Science image: the source at ``f(t)`` and the host, the epoch's PSF and noise.
    template
        Reference co-add registered to the science grid: host and the source at ``f_ref``, the
        co-add's PSF and noise; ``None`` when not rendered.
    template_variance
        Its variance [nJy^2]; ``None`` when not rendered.
    template_fwhm
        ``(E,)`` FWHM of the co-add's PSF [arcsec]; ``None`` when not rendered.
    """

    difference: np.ndarray
    variance: np.ndarray
    model: np.ndarray
    psf: np.ndarray
    science: np.ndarray
    template: np.ndarray | None = None
    template_variance: np.ndarray | None = None
    template_fwhm: np.ndarray | None = None


def visit_noise(
    obj: SimObject, idx: np.ndarray, pixel_scale: float, config: RenderConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Sky + read noise per pixel and Poisson gain of the visits ``idx``.

    Returns
    -------
    tuple of numpy.ndarray
        ``sigma_pix`` [nJy per pixel of side ``pixel_scale``] and ``gain`` [nJy per photo-electron],
        each ``(len(idx),)``.
    """
    ep = obj.epochs
    # sigma_flux(PSF fit) = F5 / 5 = sigma_pix sqrt(A_eff) / pixel, with the pixelated PSF's A_eff.
    a_eff = scene.effective_area(ep.fwhm[idx], config.psf_wing_weight, pixel_scale**2 / 12.0)
    sigma_pix = mag_to_njy(ep.m5[idx]) / 5.0 / np.sqrt(a_eff) * pixel_scale
    sky = mag_to_njy(ep.sky_mag[idx]) * pixel_scale**2
    return sigma_pix, sigma_pix**2 / sky  # the sky's Poisson variance equals sigma_pix^2


def template_conditions(
    obj: SimObject, sel: np.ndarray, pixel_scale: float, config: RenderConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The co-add's PSF FWHM, sky + read variance per pixel and Poisson gain at the selected epochs.

    One co-add per band: its seeing is ``template_seeing_ratio`` times the median FWHM of the object's
    visits in that band, and its noise that of the band's median visit divided by ``template_visits``
    (the mean of N visits has 1/N of the variance, the Poisson part included).

    Returns
    -------
    tuple of numpy.ndarray
        ``fwhm`` [arcsec], ``sky_var`` [nJy^2 per pixel] and ``gain`` [nJy], each ``(E,)``.
    """
    ep = obj.epochs
    sigma, gain = visit_noise(obj, np.arange(len(ep)), pixel_scale, config)
    bands = ep.band[sel]
    fwhm, sky_var, t_gain = (np.empty(len(sel)) for _ in range(3))
    n = config.template_visits
    for b in np.unique(bands):
        own, at = ep.band == b, bands == b
        fwhm[at] = config.template_seeing_ratio * np.median(ep.fwhm[own])
        sky_var[at] = np.median(sigma[own] ** 2) / n
        t_gain[at] = np.median(gain[own]) / n
    return fwhm, sky_var, t_gain


def render(
    obj: SimObject,
    sel: np.ndarray,
    east: np.ndarray,
    north: np.ndarray,
    pixel_scale: float,
    cond: Conditions,
    config: RenderConfig,
    rng: np.random.Generator,
    template_rng: np.random.Generator | None = None,
) -> Rendered:
    """Noisy difference, science and (optionally) template images of the selected epochs.

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
        Noise of the science visit (shared by the science and difference images): one standard normal
        per pixel, the same draws whether or not the template is rendered.
    template_rng
        Noise of the template; ``None`` renders no template.

    Returns
    -------
    Rendered
        The images, their variances, the noise-free difference and the PSF.
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
    shift = (cond.shift_e[sel][:, None], cond.shift_n[sel][:, None])
    # The static scene as registered to the science grid: the template's misregistration shifts it.
    registered = []
    for name, (flux, (ce, cn), cov) in _static_profiles(obj, sel, float(psf_var.min())):
        centre = (ce + je, cn + jn)
        sci = scene.evaluate(
            scene.convolve_profile(flux, centre, cov, psf_var, psf_w, pix_var), east, north, area
        )
        shifted = (centre[0] + shift[0], centre[1] + shift[1])
        registered.append((flux, shifted, cov))
        # The subtraction's template: convolved by a matching kernel that misses the science PSF's width.
        matched = scene.convolve_profile(flux, shifted, cov, psf_var * scale, psf_w, pix_var)
        model += sci - scene.evaluate(matched, east, north, area)
        if name == "host":
            science += sci  # the source's own flux f(t) is already in; f_ref is the template's
    sigma_pix, gain = visit_noise(obj, sel, pixel_scale, config)
    variance = sigma_pix[:, None] ** 2 + gain[:, None] * np.clip(science, 0, None)
    noise = rng.standard_normal(model.shape) * np.sqrt(variance)
    out = Rendered(model + noise, variance, model, unit, science + noise)
    if template_rng is None:
        return out
    # The co-add: the same registered static scene under the co-add's PSF, with the co-add's noise.
    t_fwhm, t_sky_var, t_gain = template_conditions(obj, sel, pixel_scale, config)
    t_psf_var = scene.psf_components(t_fwhm, w)[1]
    template = np.zeros_like(model)
    for flux, centre, cov in registered:
        coadd = scene.convolve_profile(flux, centre, cov, t_psf_var, psf_w, pix_var)
        template += scene.evaluate(coadd, east, north, area)
    t_variance = t_sky_var[:, None] + t_gain[:, None] * np.clip(template, 0, None)
    template += template_rng.standard_normal(template.shape) * np.sqrt(t_variance)
    return dataclasses.replace(out, template=template, template_variance=t_variance, template_fwhm=t_fwhm)


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


@dataclass(frozen=True, slots=True)
class VisitCutout:
    """A randomised visit's native cutout and the pixels of it that can reach the model frame.

    Attributes
    ----------
    geometry
        The cutout's grid (the object's native scale, the visit's orientation and side, the source at
        its centre up to a random sub-pixel offset).
    pixels
        Flat indices (row-major) of the cutout pixels within one native pixel diagonal of the frame's
        footprint: the only ones the resampler's bilinear interpolation can touch. The others are never
        rendered (left 0): the frames are those of the whole cutout.
    east, north
        Sky offsets of those pixels from the source [arcsec].
    """

    geometry: RubinCutoutGeometry
    pixels: np.ndarray
    east: np.ndarray
    north: np.ndarray


def look_cutouts(look: Look, config: RenderConfig, rng: np.random.Generator) -> list[VisitCutout]:
    """Native cutouts of a randomised object's visits.

    Each visit has the object's native pixel scale (``look.pixel_scale_arcsec``), its own orientation
    (``look.rotation_deg``) and cutout side (``look.cutout_size``), and a random sub-pixel source
    position. A side beyond what covers the frame at that orientation is cut to it (the pixels beyond
    never reach the frame); a smaller one leaves the frame's outer pixels unmeasured (masked), as
    serving's resampler does with a small alert cutout.
    """
    scale = look.pixel_scale_arcsec
    half = 0.5 * config.frame_size * config.frame_pixel_scale_arcsec
    theta = np.radians(look.rotation_deg)
    reach = half * (np.abs(np.cos(theta)) + np.abs(np.sin(theta)))
    cover = 2 * np.ceil(reach / scale + 1.5).astype(np.int64) + 1
    sides = np.minimum(look.cutout_size, cover)
    sub = rng.uniform(-0.5, 0.5, (len(sides), 2))
    # Frame samples lie within ``half`` of the source in east and north; bilinear interpolation reads
    # pixels up to one native pixel diagonal further out.
    limit = half + scale * math.sqrt(2.0) + 1e-6
    out = []
    for r, s, side in zip(look.rotation_deg, sub, sides, strict=True):
        centre = (int(side) - 1) / 2.0
        geom = RubinCutoutGeometry(int(side), scale, float(r), (centre + s[0], centre + s[1]))
        east, north = geom.sky_offsets()
        pixels = np.flatnonzero((np.abs(east) <= limit) & (np.abs(north) <= limit))
        out.append(VisitCutout(geom, pixels, east.ravel()[pixels], north.ravel()[pixels]))
    return out


def _chunks(counts: np.ndarray, waste: float = 0.2) -> list[np.ndarray]:
    """Visits grouped so that padding every visit of a group to its largest pixel count wastes < ``waste``."""
    if len(counts) == 0:
        return []
    order = np.argsort(-counts, kind="stable")
    groups, current = [], [order[0]]
    for i in order[1:]:
        if counts[i] >= (1.0 - waste) * counts[current[0]]:
            current.append(i)
        else:
            groups.append(np.sort(np.array(current)))
            current = [i]
    groups.append(np.sort(np.array(current)))
    return groups


def _render_look(
    obj: SimObject, config: RenderConfig, rng: np.random.Generator, template_rng: np.random.Generator | None
) -> tuple[list[VisitCutout], dict[str, list[np.ndarray]], np.ndarray, np.ndarray]:
    """Render a randomised object's visits on their needed cutout pixels, a few vectorised passes.

    Returns
    -------
    tuple
        The cutouts, the images per name (``frames`` = difference, ``science``, ``template``) as one
        ``(side, side)`` array per visit (0 where not rendered), and the PSF photometry
        (``psf_flux``, ``psf_flux_err``) on the rendered pixels.
    """
    assert obj.look is not None  # noqa: S101 - only called for randomised objects
    n = len(obj.epochs)
    cond = Conditions.draw(rng, n, config)
    cutouts = look_cutouts(obj.look, config, rng)
    scale = obj.look.pixel_scale_arcsec
    names = ("frames", "science", "template") if template_rng is not None else ("frames",)
    images = {name: [np.zeros(c.geometry.size**2) for c in cutouts] for name in names}
    flux, err = np.empty(n), np.empty(n)
    for sel in _chunks(np.array([len(c.pixels) for c in cutouts])):
        width = max(len(cutouts[i].pixels) for i in sel)
        # Every visit padded to the group's widest by repeating its pixels (the copies are excluded below).
        index = np.stack([np.resize(cutouts[i].pixels, width) for i in sel])
        pad = np.arange(width)[None, :] >= np.array([len(cutouts[i].pixels) for i in sel])[:, None]
        east = np.stack([np.resize(cutouts[i].east, width) for i in sel])
        north = np.stack([np.resize(cutouts[i].north, width) for i in sel])
        out = render(obj, sel, east, north, scale, cond, config, rng, template_rng)
        flux[sel], err[sel] = psf_photometry(np.where(pad, np.nan, out.difference), out.variance, out.psf)
        planes = {"frames": out.difference, "science": out.science, "template": out.template}
        for j, i in enumerate(sel):
            keep = ~pad[j]
            for name in names:
                images[name][i][index[j][keep]] = planes[name][j][keep]
    shaped = {
        name: [im.reshape(c.geometry.size, -1) for im, c in zip(v, cutouts, strict=True)]
        for name, v in images.items()
    }
    return cutouts, shaped, flux, err


def render_frames(obj: SimObject, config: RenderConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """All model frames of one object.

    The difference, science and template images of every epoch go through the serving resampler on the
    same native grid. The science frame shares the difference frame's mask (same artefacts); the
    template (a co-add) has its own, full except at lost visits (no alert, so no cutout of any kind)
    and where the native cutout does not reach. The template's noise comes from a generator spawned
    from ``rng``, so the difference frames are the same bytes whether or not ``config.science_template``
    asks for the other two.

    An object with a randomised look (``obj.look``) is rendered at its native pixel scale, each visit
    rotated and cut to its own cutout side (:func:`look_cutouts`), and only on the cutout pixels that
    can reach the frame; otherwise on the fixed look's grids (:func:`native_geometries`).

    Returns
    -------
    dict
        ``frames`` (difference) float32 ``(N, S, S)`` [nJy per frame pixel], ``masks`` bool ``(N, S, S)``,
        the native-image PSF photometry ``psf_flux``, ``psf_flux_err`` [nJy] per frame, and, when
        ``config.science_template``, ``science``, ``template`` (float32 like ``frames``) and
        ``template_masks`` (bool).
    """
    n = len(obj.epochs)
    template_rng = rng.spawn(1)[0]
    both = config.science_template
    if obj.look is None:
        cond = Conditions.draw(rng, n, config)
        geoms = native_geometries(n, config, rng)
        offsets = [g.sky_offsets() for g in geoms]
        east = np.stack([o[0].ravel() for o in offsets])
        north = np.stack([o[1].ravel() for o in offsets])
        out = render(
            obj,
            np.arange(n),
            east,
            north,
            config.native_pixel_scale_arcsec,
            cond,
            config,
            rng,
            template_rng if both else None,
        )
        flux, err = psf_photometry(out.difference, out.variance, out.psf)
        shape = (n, geoms[0].size, geoms[0].size)
        images = {"frames": out.difference.reshape(shape)}
        if both:
            images |= {"science": out.science.reshape(shape), "template": out.template.reshape(shape)}
    else:
        cutouts, images, flux, err = _render_look(obj, config, rng, template_rng if both else None)
        geoms = [c.geometry for c in cutouts]
    side = config.frame_size
    planes = {name: np.zeros((n, side, side), np.float32) for name in images}
    masks = {name: np.zeros((n, side, side), bool) for name in images}
    missing = obj.epochs.missing
    for i, geom in enumerate(geoms):
        if missing[i]:
            continue  # a lost visit: every plane all NaN, i.e. frames of 0 with nothing measured
        add_artefacts(images["frames"][i], False, config, rng)
        if both:
            share_artefacts(images["frames"][i], images["science"][i])
        # The visit's cutouts share one grid, hence one resampling plan.
        plan = ResamplePlan.build(
            images["frames"][i].shape, geom.cd_arcsec, geom.source_xy, side, config.frame_pixel_scale_arcsec
        )
        for name, image in images.items():
            planes[name][i], masks[name][i] = plan.apply(image[i])
    flux[missing], err[missing] = np.nan, np.nan
    result = {"frames": planes["frames"], "masks": masks["frames"], "psf_flux": flux, "psf_flux_err": err}
    if both:
        result |= {"science": planes["science"], "template": planes["template"]}
        result["template_masks"] = masks["template"]
    return result


def share_artefacts(difference: np.ndarray, science: np.ndarray) -> None:
    """Give the science image the difference image's NaN pixels (in place): the visit's artefacts."""
    science[np.isnan(difference)] = np.nan


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
