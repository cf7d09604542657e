"""Who is in the survey: labels, pools, confirmation, and each object's physical parameters.

The catalogue is fixed by the config (exact counts per class and label source) and shuffled by the
seed. Pools follow the paper (convention-spec 4.1): unconfirmed SNe -> ``pretrain``, confirmed SNe ->
``transfer``; AGN and variables are split in halves (first half ``pretrain``). ``confirmed`` means the
label is spectroscopic (SNe) or catalogue-clean (AGN, variables); unconfirmed SN labels are photometric:
those SNe are drawn to higher redshift (fainter), and ``label_noise`` of them are truly of the other SN
type (``true_class`` differs from ``label``).

Every object's randomness comes from ``SeedSequence([seed, index])``, so an object is the same whatever
shard or worker makes it. Under domain randomisation (``simulation.domain``) its look (cadence,
conditions, presentation; :mod:`broker_plugin_train.data.domain`) comes from a generator of its own and its
hosts are drawn from wider distributions by the same draws, so the physical parameters do not change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from astropy.cosmology import Planck18

from broker_plugin_train.config import SimulationConfig
from broker_plugin_train.data import agn, domain, sn_cc, sn_ia, variables
from broker_plugin_train.data.bandpasses import mag_to_njy
from broker_plugin_train.data.cadence import Epochs, Survey
from broker_plugin_train.data.domain import Look

#: Host galaxy colours relative to r [mag] (a typical Sbc at low redshift).
_HOST_COLOUR = {"u": 1.8, "g": 0.65, "r": 0.0, "i": -0.35, "z": -0.6, "y": -0.7}


@dataclass(frozen=True, slots=True)
class CatalogueEntry:
    """An object's place in the catalogue."""

    index: int
    label: str
    confirmed: bool
    pool: str


@dataclass(slots=True)
class Host:
    """A Sersic host galaxy; its centre is at ``offset`` (east, north) [arcsec] from the source."""

    flux_njy: dict[str, float]
    sersic_n: float
    r_e_arcsec: float
    axis_ratio: float
    pa_deg: float
    offset: tuple[float, float]


@dataclass(slots=True)
class SimObject:
    """One simulated object: labels, physical parameters, epochs and noise-free fluxes.

    Attributes
    ----------
    flux_total
        Source flux at each epoch [nJy] (what the science image contains, host excluded).
    flux_ref
        Source flux in the template at each epoch's band [nJy]; the difference image shows
        ``flux_total - flux_ref``.
    look
        Its randomised observing conditions and presentation (``None``: the survey's fixed look).
    """

    entry: CatalogueEntry
    true_class: str
    subtype: str
    ra: float
    dec: float
    redshift: float
    period: float
    epochs: Epochs
    flux_total: np.ndarray
    flux_ref: np.ndarray
    host: Host | None
    params: dict[str, Any] = field(default_factory=dict)
    look: Look | None = None

    @property
    def flux_diff(self) -> np.ndarray:
        """Noise-free difference flux [nJy]: the true light curve."""
        return self.flux_total - self.flux_ref


def catalogue(config: SimulationConfig) -> list[CatalogueEntry]:
    """All objects of the config, shuffled by the seed."""
    c = config.population.counts
    rows: list[tuple[str, bool, str]] = []
    for label, n in (("AGN", c.agn), ("Variable", c.variable)):
        rows += [(label, True, "pretrain")] * (n // 2) + [(label, True, "transfer")] * (n - n // 2)
    rows += [("SNIa", False, "pretrain")] * c.snia_unconfirmed + [
        ("SNIa", True, "transfer")
    ] * c.snia_confirmed
    rows += [("SNOther", False, "pretrain")] * c.snother_unconfirmed
    rows += [("SNOther", True, "transfer")] * c.snother_confirmed
    order = np.random.default_rng(np.random.SeedSequence([config.seed, 0xCA7])).permutation(len(rows))
    return [CatalogueEntry(i, *rows[j]) for i, j in enumerate(order)]


def _redshift(rng: np.random.Generator, zmax: float) -> float:
    # Volume-weighted (dN/dz ~ z^2) with a soft efficiency fall-off towards the survey limit.
    while True:
        z = 0.02 + (zmax - 0.02) * rng.random() ** (1 / 3)
        if rng.random() < 1.0 - 0.7 * ((z - 0.02) / (zmax - 0.02)) ** 2:
            return float(z)


@dataclass(frozen=True, slots=True)
class HostDistribution:
    """How SN hosts are drawn: the fixed look's values by default, wider under domain randomisation."""

    fraction: float
    mag_sigma: float = 1.0
    size_sigma: float = 0.4
    offset_scale: float = 1.0
    colour: dict[str, float] = field(default_factory=dict)


def _sn_host(
    rng: np.random.Generator, z: float, bands: tuple[str, ...], dist: HostDistribution
) -> Host | None:
    # The same draws whatever the distribution's widths: only their scale changes, so a randomised
    # object's later draws do not shift.
    if rng.random() >= dist.fraction:
        return None
    m_r = rng.normal(-20.3, dist.mag_sigma) + Planck18.distmod(z).value
    n = 1.0 if rng.random() < 0.65 else 4.0
    r_e = float(np.exp(rng.normal(np.log(3.0), dist.size_sigma)) * Planck18.arcsec_per_kpc_proper(z).value)
    q, pa = float(rng.uniform(0.3, 1.0)), float(rng.uniform(0.0, 180.0))
    # SN position follows the light: radius from an exponential disc of scale r_e / 1.678.
    radius = rng.gamma(2.0, r_e / 1.678) * dist.offset_scale
    theta = rng.uniform(0.0, 2 * np.pi)
    x, y = radius * np.cos(theta), radius * np.sin(theta) * q
    pa_r = np.radians(pa)
    east = x * np.sin(pa_r) + y * np.cos(pa_r)
    north = x * np.cos(pa_r) - y * np.sin(pa_r)
    flux = {b: float(mag_to_njy(m_r + _HOST_COLOUR[b] + dist.colour.get(b, 0.0))) for b in bands}
    return Host(flux, n, max(r_e, 0.1), q, pa, (-float(east), -float(north)))


def make_object(config: SimulationConfig, survey: Survey, entry: CatalogueEntry) -> SimObject:
    """Draw everything about one catalogue entry (no pixels)."""
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, entry.index]))
    pop, filters, bands = config.population, config.survey.filter_family, config.survey.bands
    ra = float((rng.uniform(-50.0, 59.0)) % 360.0)
    dec = float(rng.uniform(-1.25, 1.25))
    season = int(rng.integers(config.survey.n_seasons))
    look, hosts = None, HostDistribution(pop.host_fraction)
    agn_contrast, agn_size = (0.0, 2.5), (0.8, 2.0)
    if config.domain.enabled:
        # The look has a generator of its own: the physics draws below are the same whatever it is.
        dom, lrng = config.domain, domain.look_rng(config.seed, entry.index)
        look = domain.draw_look(dom, config.survey, lrng)
        epochs = survey.observe_look(look, dom, lrng, season, ra)
        look = domain.draw_presentation(look, dom, len(epochs), lrng)
        hosts = HostDistribution(
            1.0 - dom.hostless_fraction,
            dom.host_mag_sigma,
            dom.host_size_sigma,
            look.host_offset_scale,
            look.host_colour_mag,
        )
        agn_contrast, agn_size = dom.agn_host_contrast_mag, dom.agn_host_size_arcsec
    else:
        epochs = survey.observe(rng, season, ra)
    start = survey.season_start(season)
    true_class, host, params = entry.label, None, {}
    if entry.label in ("SNIa", "SNOther") and not entry.confirmed and rng.random() < pop.label_noise:
        true_class = "SNOther" if entry.label == "SNIa" else "SNIa"
    times = np.concatenate([epochs.mjd, epochs.template_mjd])
    tbands = np.concatenate([epochs.band, epochs.template_band])
    mw_ebv = float(rng.uniform(0.02, pop.mw_ebv_max))
    period, redshift = float("nan"), float("nan")
    if true_class == "SNIa":
        zmax = pop.zmax_confirmed if entry.confirmed else pop.zmax_unconfirmed
        redshift = _redshift(rng, zmax)
        t0 = start + float(rng.uniform(-15.0, config.survey.season_days + 5.0))
        p = sn_ia.draw_params(rng, redshift, t0, mw_ebv)
        flux = sn_ia.flux_njy(p, times, tbands, filters)
        subtype, params = (
            "Ia",
            {
                "x0": p.x0,
                "x1": p.x1,
                "c": p.c,
                "t0": p.t0,
                "mw_ebv": mw_ebv,
                "peak_abs_mag_b": p.peak_abs_mag_b,
            },
        )
        host = _sn_host(rng, redshift, bands, hosts)
    elif true_class == "SNOther":
        zmax = 0.5 * (pop.zmax_confirmed if entry.confirmed else pop.zmax_unconfirmed)
        redshift = _redshift(rng, zmax)
        subtype = str(rng.choice(sn_cc.SUBTYPES, p=sn_cc.SUBTYPE_RATES / sn_cc.SUBTYPE_RATES.sum()))
        t_exp = start + float(rng.uniform(-40.0, config.survey.season_days))
        p = sn_cc.draw_params(rng, subtype, redshift, t_exp, mw_ebv)
        flux = sn_cc.flux_njy(p, times, tbands, filters)
        params = {"t_explosion": t_exp, "m_ni": p.m_ni, "host_av": p.host_av, "mw_ebv": mw_ebv}
        host = _sn_host(rng, redshift, bands, hosts)
    elif true_class == "AGN":
        p = agn.draw_params(rng, float(times.min()) - 1.0, float(times.max()) + 1.0, bands)
        flux = agn.flux_njy(p, times, tbands)
        redshift, subtype = p.z, "DRW"
        params = {"tau_rest_days": p.tau_rest_days, "sf_inf_r": p.sf_inf_r, "mean_mag_r": p.mean_mag_r}
        if p.z < 0.8:
            m_host = p.mean_mag_r + float(rng.uniform(*agn_contrast))
            r_e = float(rng.uniform(*agn_size))
            host = Host(
                {b: float(mag_to_njy(m_host + _HOST_COLOUR[b] + hosts.colour.get(b, 0.0))) for b in bands},
                4.0,
                r_e,
                float(rng.uniform(0.5, 1.0)),
                float(rng.uniform(0.0, 180.0)),
                (0.0, 0.0),
            )
    else:
        subtype = str(
            rng.choice(variables.SUBTYPES, p=variables.SUBTYPE_RATES / variables.SUBTYPE_RATES.sum())
        )
        p = variables.draw_params(rng, subtype, start)
        flux = variables.flux_njy(p, times, tbands)
        period = p.period
        params = {"amplitude_g": p.amplitude_g, "mean_mag_r": p.mean_mag_r, "epoch": p.epoch}
    n = len(epochs)
    ref = {b: float(np.mean(flux[n:][epochs.template_band == b])) for b in bands}
    flux_ref = np.array([ref[b] for b in epochs.band])
    return SimObject(
        entry, true_class, subtype, ra, dec, redshift, period, epochs, flux[:n], flux_ref, host, params, look
    )
