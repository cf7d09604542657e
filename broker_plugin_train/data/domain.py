"""Domain randomisation: each object observed and presented as by a survey of its own.

The model is trained on this simulator and scored on streams of other surveys and simulators (other
seeing and depth, cadence, bands, pixel scales, cutout sizes, a rotation at every visit). With
``simulation.domain.enabled`` every object draws a :class:`Look` from the ranges of
:class:`broker_plugin_train.config.DomainConfig`:

- per object: the median seeing, a depth offset (all bands, plus a little per band), the mean gap between
  its nights and possibly a block of nights without visits, the bands it is observed in and whether a
  night visits all of them (SDSS-like) or one (Rubin-like, sometimes a pair), the native pixel scale of
  its images, and how its host is drawn (offset scale, colour);
- per visit (:func:`draw_presentation`, once the epochs are known): the native image's orientation and
  the native cutout's side.

Only observing conditions and presentation change: the light curves, redshifts and labels come from the
object's own generator (``SeedSequence([seed, index])``) exactly as before, while every draw of this
module comes from a generator of its own (:func:`look_rng`), so the look and the physics are independent
and each deterministic for a seed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from broker_plugin_train.config import DomainConfig, SurveyConfig

#: Third element of the look generator's seed sequence (1: pixel noise, 2: alerts).
LOOK_STREAM = 3


def look_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of one object's look (independent of its physics and pixel noise)."""
    return np.random.default_rng(np.random.SeedSequence([seed, index, LOOK_STREAM]))


def log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    """One draw, uniform in ``log`` between ``bounds`` (scales: every factor equally likely)."""
    lo, hi = bounds
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi)))) if hi > lo else float(lo)


@dataclass(frozen=True, slots=True)
class Look:
    """How one object is observed and presented.

    Attributes
    ----------
    seeing_median_arcsec
        Median r-band seeing FWHM of the object's nights [arcsec].
    depth_offset_mag
        Offset of the 5-sigma depth from the survey's, per band [mag] (object + band parts).
    bands
        The bands the object is observed in (a subset of the survey's, in the survey's order).
    night_gap_mean_days
        Mean gap between its own nights [days]; ``None``: the survey's shared nights
        (``domain.nights = "survey"``).
    season_gap
        ``(start, length)`` [days from the season's start] of a block without visits, or ``None``.
    pixel_scale_arcsec
        Native pixel scale of its images [arcsec].
    host_offset_scale
        Factor on an SN's offset from its host's centre.
    host_colour_mag
        Per-band offset of the host's colour [mag] (0 in r).
    rotation_deg
        ``(N,)`` orientation of each visit's native image [deg] (empty until :func:`draw_presentation`).
    cutout_size
        ``(N,)`` side of each visit's native cutout [pixels] (empty until :func:`draw_presentation`).
    one_band_nights
        Visited in one band a night (Rubin-like), not in every band of :attr:`bands` each night.
    """

    seeing_median_arcsec: float
    depth_offset_mag: dict[str, float]
    bands: tuple[str, ...]
    night_gap_mean_days: float | None
    season_gap: tuple[float, float] | None
    pixel_scale_arcsec: float
    host_offset_scale: float
    host_colour_mag: dict[str, float]
    rotation_deg: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    cutout_size: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    one_band_nights: bool = False

    def summary(self) -> dict[str, object]:
        """The per-object part, for the dataset's ``objects.json``."""
        # ``one_band_nights`` only where set: datasets without it keep their bytes (and their hash).
        visits = {"one_band_nights": True} if self.one_band_nights else {}
        return {
            "seeing_median_arcsec": self.seeing_median_arcsec,
            "depth_offset_mag": dict(self.depth_offset_mag),
            "bands": "".join(self.bands),
            "night_gap_mean_days": self.night_gap_mean_days,
            "season_gap": list(self.season_gap) if self.season_gap is not None else None,
            "pixel_scale_arcsec": self.pixel_scale_arcsec,
            "cutout_size_range": (
                [int(self.cutout_size.min()), int(self.cutout_size.max())] if len(self.cutout_size) else None
            ),
        } | visits


def _bands(domain: DomainConfig, survey_bands: tuple[str, ...], rng: np.random.Generator) -> tuple[str, ...]:
    """The object's bands: all, g and r only (ZTF-like), or all but 1..n-min_bands random ones."""
    subset, gr_only = rng.random() < domain.band_subset_probability, rng.random() < domain.gr_only_probability
    n = len(survey_bands)
    if not subset or n <= domain.min_bands:
        return survey_bands
    if gr_only and {"g", "r"} <= set(survey_bands) and domain.min_bands <= 2:
        return tuple(b for b in survey_bands if b in ("g", "r"))
    drop = int(rng.integers(1, n - domain.min_bands + 1))
    dropped = set(rng.choice(np.array(survey_bands), size=drop, replace=False).tolist())
    return tuple(b for b in survey_bands if b not in dropped)


def draw_look(domain: DomainConfig, survey: SurveyConfig, rng: np.random.Generator) -> Look:
    """Draw the per-object part of an object's look.

    Parameters
    ----------
    domain
        The randomisation ranges.
    survey
        The survey (its bands and season length).
    rng
        The object's look generator (:func:`look_rng`).

    Returns
    -------
    Look
        Without the per-visit presentation (see :func:`draw_presentation`).
    """
    seeing = log_uniform(rng, domain.seeing_median_arcsec)
    common = float(rng.uniform(*domain.depth_offset_mag))
    b = domain.depth_band_offset_mag
    depth = {band: common + float(rng.uniform(-b, b)) for band in survey.bands}
    gap = log_uniform(rng, domain.night_gap_mean_days) if domain.nights == "own" else None
    season_gap = None
    if rng.random() < domain.season_gap_probability:
        length = float(rng.uniform(*domain.season_gap_days))
        season_gap = (float(rng.uniform(0.0, max(survey.season_days - length, 0.0))), length)
    scale = log_uniform(rng, domain.native_pixel_scale_arcsec)
    offset_scale = log_uniform(rng, domain.host_offset_scale)
    colour = {band: float(rng.normal(0.0, domain.host_colour_sigma_mag)) for band in survey.bands}
    colour["r"] = 0.0  # the host's r magnitude is its brightness; the others move around it
    bands = _bands(domain, survey.bands, rng)  # how many draws it takes depends on the branch
    # Drawn last and only when asked for: every other draw, and datasets without it, stay as they were.
    p = domain.one_band_night_probability
    one_band = bool(p > 0 and rng.random() < p)
    return Look(seeing, depth, bands, gap, season_gap, scale, offset_scale, colour, one_band_nights=one_band)


def draw_presentation(look: Look, domain: DomainConfig, n: int, rng: np.random.Generator) -> Look:
    """Add the per-visit presentation: a native orientation and cutout side for each of ``n`` visits."""
    lo, hi = domain.cutout_size
    return dataclasses.replace(
        look,
        rotation_deg=rng.uniform(*domain.rotation_deg, n),
        cutout_size=rng.integers(lo, hi + 1, n),
    )


def visit_depth_offsets(domain: DomainConfig, n: int, rng: np.random.Generator) -> np.ndarray:
    """Per-visit depth scatter [mag]: normal, clipped at 2 sigma (no absurd single visit)."""
    s = domain.depth_visit_sigma_mag
    return np.clip(rng.normal(0.0, s, n), -2 * s, 2 * s) if s else np.zeros(n)
