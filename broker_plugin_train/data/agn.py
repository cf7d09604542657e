"""Active galactic nuclei: damped random walks in magnitude, at the nucleus of their host.

Optical quasar variability is well described by a damped random walk (Kelly et al. 2009; MacLeod et al.
2010, from Stripe 82 itself): an Ornstein-Uhlenbeck process with rest-frame damping time ``tau`` (median
~200 d) and asymptotic structure function ``SF_inf`` (median ~0.2 mag), larger at shorter wavelength
(``SF ~ lambda^-0.48``, MacLeod 2010). One driving process is shared by all bands (the continuum varies
coherently), with a small independent part per band. The walk is simulated exactly on a 1-day grid from
a year before the template epochs to the end of the season and interpolated at the epochs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from broker_plugin_train.data.bandpasses import mag_to_njy

#: Quasar colours relative to r at 0.5 < z < 2 (SDSS DR7 quasar catalogue, roughly) [mag].
_COLOUR = {"u": 0.35, "g": 0.15, "r": 0.0, "i": -0.1, "z": -0.15, "y": -0.2}
_WAVE = {"u": 3560.0, "g": 4680.0, "r": 6180.0, "i": 7500.0, "z": 8870.0, "y": 9710.0}
#: Fraction of each band's variance that is independent of the common driver.
_INDEPENDENT = 0.1


@dataclass(frozen=True, slots=True)
class AGNParams:
    """One AGN: redshift, mean r magnitude, DRW parameters and its realised walk."""

    z: float
    mean_mag_r: float
    tau_rest_days: float
    sf_inf_r: float
    grid_start: float
    driver: np.ndarray  # unit-variance OU walk on the 1-day grid
    band_noise: dict[str, np.ndarray]


def _ou(rng: np.random.Generator, n: int, tau: float) -> np.ndarray:
    """Unit-variance Ornstein-Uhlenbeck process on a 1-day grid (exact discretisation)."""
    a = np.exp(-1.0 / tau)
    kicks = rng.standard_normal(n) * np.sqrt(1 - a * a)
    out = np.empty(n)
    out[0] = rng.standard_normal()
    for i in range(1, n):
        out[i] = a * out[i - 1] + kicks[i]
    return out


def draw_params(rng: np.random.Generator, t_start: float, t_end: float, bands: tuple[str, ...]) -> AGNParams:
    """Draw an AGN whose walk covers ``[t_start, t_end]`` [MJD]."""
    z = float(rng.uniform(0.2, 2.5))
    tau = float(np.clip(np.exp(rng.normal(np.log(200.0), 0.5)), 30.0, 2000.0))
    sf = float(np.clip(np.exp(rng.normal(np.log(0.22), 0.35)), 0.05, 0.8))
    mean_mag = float(rng.uniform(18.5, 21.8))
    n = int(np.ceil(t_end - t_start)) + 2
    tau_obs = tau * (1 + z)
    driver = _ou(rng, n, tau_obs)
    noise = {b: _ou(rng, n, tau_obs) for b in bands}
    return AGNParams(z, mean_mag, tau, sf, float(t_start), driver, noise)


def flux_njy(params: AGNParams, mjd: np.ndarray, bands: np.ndarray) -> np.ndarray:
    """Total nuclear flux [nJy] at each ``(mjd, band)``."""
    mjd = np.asarray(mjd, dtype=np.float64)
    grid = params.grid_start + np.arange(len(params.driver))
    out = np.zeros(len(mjd))
    for band in np.unique(bands):
        sel = bands == band
        # SF_inf = sqrt(2) sigma of the magnitude process.
        sigma = params.sf_inf_r * (_WAVE[str(band)] / _WAVE["r"]) ** -0.48 / np.sqrt(2.0)
        walk = (
            np.sqrt(1 - _INDEPENDENT) * params.driver + np.sqrt(_INDEPENDENT) * params.band_noise[str(band)]
        )
        dmag = sigma * np.interp(mjd[sel], grid, walk)
        out[sel] = mag_to_njy(params.mean_mag_r + _COLOUR[str(band)] + dmag)
    return out
