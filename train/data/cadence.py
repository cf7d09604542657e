"""When each object is observed, in which band, under which seeing and depth.

Stripe-82-like (default): fall seasons of ``season_days``; the survey observes on nights separated by
``night_gap_days`` minus weather losses, and every observed night takes all five bands within minutes
(SDSS drift scans pass the filters in the order r, i, u, z, g, 72 s apart). Nights, seeing and
transparency are shared by all objects of a season (as in a real survey), each object additionally
misses a few nights (``object_loss``) and a few frames are blank (``missing_frame``, kept as masked
frames: the paper's "missing observations").

Rubin-like (option): nightly opportunities over longer seasons; an object is visited on a fraction of
nights, in one band per visit, with Rubin's band mix.

The depth follows the seeing: for background-limited PSF photometry the flux error scales with the
PSF's width, so ``m5 = m5_median - 2.5 log10(fwhm / fwhm_median)`` plus transparency scatter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from train.config import SurveyConfig

#: SDSS drift-scan filter order and the time between filters [days].
_SDSS_ORDER = ("r", "i", "u", "z", "g")
_SDSS_STEP_DAYS = 72.0 / 86400.0
#: Seeing scales with wavelength as lambda^-0.2 (Kolmogorov turbulence); effective wavelengths [A].
_WAVE = {"u": 3560.0, "g": 4680.0, "r": 6180.0, "i": 7500.0, "z": 8870.0, "y": 9710.0}
#: Rubin's share of visits per band (baseline survey strategy, roughly).
_RUBIN_MIX = {"u": 0.07, "g": 0.10, "r": 0.22, "i": 0.22, "z": 0.20, "y": 0.19}
#: Template coadds are built from this many epochs of an earlier season.
TEMPLATE_EPOCHS = 6


@dataclass(frozen=True, slots=True)
class Epochs:
    """One object's observations, time-ordered.

    Attributes
    ----------
    mjd
        ``midpointMjdTai`` of each frame [MJD].
    band
        Band letter of each frame.
    fwhm
        Seeing FWHM [arcsec].
    m5
        5-sigma point-source depth [AB mag].
    sky_mag
        Sky surface brightness [AB mag/arcsec^2].
    missing
        ``True`` for blank frames (observation lost: masked everywhere).
    template_mjd, template_band
        Epochs that make up the reference (template) image, per band.
    """

    mjd: np.ndarray
    band: np.ndarray
    fwhm: np.ndarray
    m5: np.ndarray
    sky_mag: np.ndarray
    missing: np.ndarray
    template_mjd: np.ndarray
    template_band: np.ndarray

    def __len__(self) -> int:
        return len(self.mjd)


@dataclass(frozen=True, slots=True)
class _Night:
    mjd: float
    seeing_r: float
    transparency: float


class Survey:
    """The survey's shared nights and the per-object cadence drawn from them.

    Parameters
    ----------
    config
        Survey settings.
    seed
        Master seed (the nights derive from it, so they are the same for every object).
    """

    def __init__(self, config: SurveyConfig, seed: int) -> None:
        self.config = config
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0xCADE]))
        self.seasons: list[list[_Night]] = [self._season_nights(rng, s) for s in range(config.n_seasons)]

    def season_start(self, season: int) -> float:
        """First MJD of a season."""
        return self.config.first_season_mjd + 365.25 * season

    def _season_nights(self, rng: np.random.Generator, season: int) -> list[_Night]:
        cfg = self.config
        start = self.season_start(season)
        if cfg.cadence == "stripe82":
            lo, hi = cfg.night_gap_days
            steps = rng.integers(lo, hi + 1, size=int(cfg.season_days) + 1)
            days = np.concatenate([[0], np.cumsum(steps)])
        else:
            days = np.arange(int(cfg.season_days) + 1)
        days = days[days <= cfg.season_days]
        kept = days[rng.random(len(days)) >= cfg.weather_loss]
        seeing = np.exp(rng.normal(np.log(cfg.seeing_median_arcsec), 0.15, len(kept)))
        seeing = np.clip(seeing, *cfg.seeing_range_arcsec)
        transparency = rng.normal(0.0, 0.1, len(kept))
        # Night mid-point around 06:00 UT at Apache Point (local midnight).
        return [
            _Night(start + float(d) + 0.25, float(s), float(t))
            for d, s, t in zip(kept, seeing, transparency, strict=True)
        ]

    def _conditions(self, band: np.ndarray, seeing_r: np.ndarray, transparency: np.ndarray) -> tuple:
        cfg = self.config
        wave = np.array([_WAVE[b] for b in band])
        fwhm = seeing_r * (wave / _WAVE["r"]) ** -0.2
        fwhm_median = cfg.seeing_median_arcsec * (wave / _WAVE["r"]) ** -0.2
        m5_median = np.array([cfg.m5_median[b] for b in band])
        m5 = m5_median - 2.5 * np.log10(fwhm / fwhm_median) - transparency
        sky = np.array([cfg.sky_mag_arcsec2[b] for b in band])
        return fwhm, m5, sky

    def observe(self, rng: np.random.Generator, season: int, ra_deg: float) -> Epochs:
        """Draw one object's epochs in ``season``.

        Parameters
        ----------
        rng
            The object's generator.
        season
            Which season (0-based).
        ra_deg
            Right ascension: a drift scan reaches it later in the night at larger RA.

        Returns
        -------
        Epochs
            The object's frames, sorted by time.
        """
        cfg = self.config
        nights = [n for n in self.seasons[season] if rng.random() >= cfg.object_loss]
        scan = ((ra_deg + 60.0) % 360.0) / 360.0 * 0.3  # a few hours of drift scan across Stripe 82
        if cfg.cadence == "stripe82":
            bands = [b for b in _SDSS_ORDER if b in cfg.bands]
            mjd = np.array([n.mjd + scan + i * _SDSS_STEP_DAYS for n in nights for i in range(len(bands))])
            band = np.array([b for _ in nights for b in bands])
            night_idx = np.repeat(np.arange(len(nights)), len(bands))
        else:
            visited = [n for n in nights if rng.random() < cfg.rubin_visit_fraction]
            names = [b for b in _RUBIN_MIX if b in cfg.bands]
            mix = np.array([_RUBIN_MIX[b] for b in names])
            band = rng.choice(names, size=len(visited), p=mix / mix.sum())
            mjd = np.array([n.mjd + rng.uniform(-0.15, 0.15) for n in visited])
            nights = visited
            night_idx = np.arange(len(visited))
        seeing_r = np.array([nights[i].seeing_r for i in night_idx])
        transparency = np.array([nights[i].transparency for i in night_idx])
        fwhm, m5, sky = self._conditions(band, seeing_r, transparency)
        missing = rng.random(len(mjd)) < cfg.missing_frame
        order = np.argsort(mjd, kind="stable")
        start = self.season_start(season)
        tmpl_days = np.sort(rng.uniform(-300.0, -300.0 + cfg.season_days, TEMPLATE_EPOCHS))
        template_mjd = np.repeat(start + tmpl_days, len(cfg.bands))
        template_band = np.tile(np.array(cfg.bands), TEMPLATE_EPOCHS)
        return Epochs(
            mjd=mjd[order],
            band=band[order].astype("<U1"),
            fwhm=fwhm[order],
            m5=m5[order],
            sky_mag=sky[order],
            missing=missing[order],
            template_mjd=template_mjd,
            template_band=template_band.astype("<U1"),
        )
