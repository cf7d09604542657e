"""When each object is observed, in which band, under which seeing and depth.

Stripe-82-like (default): fall seasons of ``season_days``; the survey observes on nights separated by
``night_gap_days`` minus weather losses, and every observed night takes all five bands within minutes
(SDSS drift scans pass the filters in the order r, i, u, z, g, 72 s apart). Nights, seeing and
transparency are shared by all objects of a season (as in a real survey), each object additionally
misses a few nights (``object_loss``) and a few frames are blank (``missing_frame``, kept as masked
frames: the paper's "missing observations").

Rubin-like (option): nightly opportunities over longer seasons; an object is visited on a fraction of
nights, in one band per visit, with Rubin's band mix. Under domain randomisation an object of either
survey may be visited that way on its own nights (``domain.one_band_night_probability``).

The depth follows the seeing: for background-limited PSF photometry the flux error scales with the
PSF's width, so ``m5 = m5_median - 2.5 log10(fwhm / fwhm_median)`` plus transparency scatter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from broker_plugin_train.config import DomainConfig, SurveyConfig
from broker_plugin_train.data.domain import Look, visit_depth_offsets

#: SDSS drift-scan filter order and the time between filters [days].
_SDSS_ORDER = ("r", "i", "u", "z", "g")
_SDSS_STEP_DAYS = 72.0 / 86400.0
#: Seeing scales with wavelength as lambda^-0.2 (Kolmogorov turbulence); effective wavelengths [A].
_WAVE = {"u": 3560.0, "g": 4680.0, "r": 6180.0, "i": 7500.0, "z": 8870.0, "y": 9710.0}
#: Rubin's share of visits per band (baseline survey strategy, roughly).
_RUBIN_MIX = {"u": 0.07, "g": 0.10, "r": 0.22, "i": 0.22, "z": 0.20, "y": 0.19}
#: Template coadds are built from this many epochs of an earlier season.
TEMPLATE_EPOCHS = 6
#: Fewest nights a randomised object keeps (its season gap and weather may leave fewer).
MIN_NIGHTS = 3


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
        """Draw one object's epochs in ``season`` (the survey's fixed look).

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
        if cfg.cadence == "rubin":
            nights = [n for n in nights if rng.random() < cfg.rubin_visit_fraction]
        mjd, band, night_idx = self._visits(rng, nights, cfg.bands, ra_deg)
        seeing_r = np.array([nights[i].seeing_r for i in night_idx])
        transparency = np.array([nights[i].transparency for i in night_idx])
        fwhm, m5, sky = self._conditions(band, seeing_r, transparency)
        return self._epochs(rng, season, mjd, band, fwhm, m5, sky)

    def observe_look(
        self, look: Look, domain: DomainConfig, rng: np.random.Generator, season: int, ra_deg: float
    ) -> Epochs:
        """Draw one object's epochs in ``season`` as its :class:`~broker_plugin_train.data.domain.Look` says.

        Its nights are the survey's shared ones thinned by ``object_loss`` (and ``rubin_visit_fraction``)
        when ``look.night_gap_mean_days`` is None, else nights of its own with gaps of ``1 + Poisson(mean
        - 1)`` days and ``weather_loss``; a season gap removes a block of them (at least
        :data:`MIN_NIGHTS` stay). Seeing is the object's median times a lognormal night-to-night scatter
        (or the shared night's seeing rescaled to that median), clipped to ``domain.seeing_range_arcsec``;
        depth follows the seeing as in the fixed look, plus the object's per-band offset and a per-visit
        scatter. Only ``look.bands`` are observed.

        Parameters
        ----------
        look
            The object's look.
        domain
            The randomisation settings (seeing scatter and clip, per-visit depth scatter).
        rng
            The object's look generator (not its physics generator: the light curve does not change).
        season
            Which season (0-based).
        ra_deg
            Right ascension (drift-scan time of night).

        Returns
        -------
        Epochs
            The object's frames, sorted by time.
        """
        cfg = self.config
        start = self.season_start(season)
        if look.night_gap_mean_days is None:
            shared = self.seasons[season]
            keep = rng.random(len(shared)) >= cfg.object_loss
            if cfg.cadence == "rubin":
                keep &= rng.random(len(shared)) < cfg.rubin_visit_fraction
            days = np.array([n.mjd - start for n in shared])
            rescale = look.seeing_median_arcsec / cfg.seeing_median_arcsec
            seeing = np.array([n.seeing_r for n in shared]) * rescale
            transparency = np.array([n.transparency for n in shared])
        else:
            mean = look.night_gap_mean_days
            steps = 1 + rng.poisson(mean - 1.0, int(cfg.season_days) + 1)
            days = float(rng.integers(0, math.ceil(mean))) + np.concatenate([[0], np.cumsum(steps[:-1])])
            days = days[days <= cfg.season_days] + 0.25  # night mid-point, as the survey's nights
            keep = rng.random(len(days)) >= cfg.weather_loss
            seeing = look.seeing_median_arcsec * np.exp(rng.normal(0.0, domain.seeing_night_sigma, len(days)))
            transparency = rng.normal(0.0, 0.1, len(days))
        if look.season_gap is not None:
            gap_start, length = look.season_gap
            keep &= ~((days >= gap_start) & (days < gap_start + length))
        if keep.sum() < MIN_NIGHTS:
            # Too few nights left (a long gap on a sparse cadence): a few of the season's nights after all,
            # as a survey following up a transient would.
            keep[:] = False
            keep[rng.permutation(len(days))[:MIN_NIGHTS]] = True
        nights = [
            _Night(start + float(d), float(s), float(t))
            for d, s, t in zip(days[keep], seeing[keep], transparency[keep], strict=True)
        ]
        if look.one_band_nights:
            pairs = domain.one_band_pair_fraction
            mjd, band, night_idx = self._one_band_visits(rng, nights, look.bands, pairs)
        else:
            mjd, band, night_idx = self._visits(rng, nights, look.bands, ra_deg)
        seeing_r = np.clip(np.array([nights[i].seeing_r for i in night_idx]), *domain.seeing_range_arcsec)
        transparency_v = np.array([nights[i].transparency for i in night_idx])
        fwhm, m5, sky = self._conditions(band, seeing_r, transparency_v)
        m5 = (
            m5
            + np.array([look.depth_offset_mag[b] for b in band])
            + visit_depth_offsets(domain, len(m5), rng)
        )
        return self._epochs(rng, season, mjd, band, fwhm, m5, sky)

    def _visits(
        self, rng: np.random.Generator, nights: list[_Night], bands: tuple[str, ...], ra_deg: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Times, bands and night index of the visits on ``nights``, observing ``bands``."""
        cfg = self.config
        if cfg.cadence == "stripe82":
            scan = ((ra_deg + 60.0) % 360.0) / 360.0 * 0.3  # a few hours of drift scan across Stripe 82
            order = [b for b in _SDSS_ORDER if b in bands]
            mjd = np.array([n.mjd + scan + i * _SDSS_STEP_DAYS for n in nights for i in range(len(order))])
            band = np.array([b for _ in nights for b in order])
            return mjd, band, np.repeat(np.arange(len(nights)), len(order))
        return self._one_band_visits(rng, nights, bands, cfg.rubin_pair_fraction)

    @staticmethod
    def _one_band_visits(
        rng: np.random.Generator, nights: list[_Night], bands: tuple[str, ...], pair_fraction: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rubin-like visits: one band a night (Rubin's mix), a second on ``pair_fraction`` of the nights."""
        names = [b for b in _RUBIN_MIX if b in bands]
        mix = np.array([_RUBIN_MIX[b] for b in names])
        band = rng.choice(names, size=len(nights), p=mix / mix.sum())
        mjd = np.array([n.mjd + rng.uniform(-0.15, 0.15) for n in nights])
        night_idx = np.arange(len(nights))
        if pair_fraction > 0 and len(names) > 1:
            # Rubin pairs a visit with a second one in a neighbouring filter 15-45 min later.
            paired = np.nonzero(rng.random(len(nights)) < pair_fraction)[0]
            pos = np.array([names.index(b) for b in band[paired]], dtype=np.int64)
            step = np.where(rng.random(len(paired)) < 0.5, -1, 1)
            step = np.where(pos + step < 0, 1, np.where(pos + step >= len(names), -1, step))
            second = np.array(names)[pos + step]
            later = mjd[paired] + rng.uniform(15.0, 45.0, len(paired)) / 1440.0
            band = np.concatenate([band, second])
            mjd = np.concatenate([mjd, later])
            night_idx = np.concatenate([night_idx, paired])
        return mjd, band, night_idx

    def _epochs(
        self,
        rng: np.random.Generator,
        season: int,
        mjd: np.ndarray,
        band: np.ndarray,
        fwhm: np.ndarray,
        m5: np.ndarray,
        sky: np.ndarray,
    ) -> Epochs:
        """Time-sorted :class:`Epochs` with blank frames and the template's epochs (every survey band)."""
        cfg = self.config
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
