"""Filter throughputs (the only module that uses ``speclite``) and AB photometry helpers.

SDSS 2010 ugriz (``"sdss2010"``) and LSST 2023 ugrizy (``"lsst2023"``): each survey cadence has its own
(:attr:`~broker_plugin_train.config.SurveyConfig.filter_family`), and either can be chosen. speclite pads
its curves with zeros far outside the band; the padding is trimmed (else sncosmo rejects SN models whose
wavelength range does not reach the padded ends) and long curves are resampled to at most 200 points.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import speclite.filters

#: AB magnitude of 1 nJy: m_AB = 31.4 - 2.5 log10(f / nJy).
NJY_ZEROPOINT = 31.4
#: Speed of light [Angstrom / s].
C_ANGSTROM_S = 2.99792458e18


def mag_to_njy(mag: np.ndarray | float) -> np.ndarray:
    """AB magnitude -> flux density [nJy]."""
    return np.power(10.0, -0.4 * (np.asarray(mag, dtype=np.float64) - NJY_ZEROPOINT))


def njy_to_mag(flux: np.ndarray | float) -> np.ndarray:
    """Flux density [nJy] -> AB magnitude (NaN for non-positive flux)."""
    flux = np.asarray(flux, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(flux > 0, NJY_ZEROPOINT - 2.5 * np.log10(flux), np.nan)


@cache
def bandpass(filters: str, band: str) -> tuple[np.ndarray, np.ndarray]:
    """Throughput of one band.

    Parameters
    ----------
    filters
        The filter family: ``"sdss2010"`` or ``"lsst2023"``.
    band
        One of ugriz (and y for LSST).

    Returns
    -------
    tuple of numpy.ndarray
        ``(wavelength [Angstrom], throughput)``, trimmed to where the throughput exceeds 0.1 % of its peak.
    """
    curve = speclite.filters.load_filter(f"{filters}-{band}")
    wave = np.asarray(curve.wavelength, dtype=np.float64)
    trans = np.asarray(curve.response, dtype=np.float64)
    keep = np.nonzero(trans > 1e-3 * trans.max())[0]
    lo, hi = max(keep[0] - 1, 0), min(keep[-1] + 2, len(wave))
    wave, trans = wave[lo:hi], trans[lo:hi]
    if len(wave) > 200:
        grid = np.linspace(wave[0], wave[-1], 200)
        wave, trans = grid, np.interp(grid, wave, trans)
    return wave, np.clip(trans, 0.0, None)


def effective_wavelength(filters: str, band: str) -> float:
    """Photon-weighted mean wavelength of a band [Angstrom]."""
    wave, trans = bandpass(filters, band)
    return float(np.trapezoid(wave * wave * trans, wave) / np.trapezoid(wave * trans, wave))


def ab_flux_njy(wave: np.ndarray, flam: np.ndarray, filters: str, band: str) -> np.ndarray:
    """Band-averaged AB flux density of spectra, as a photon-counting detector measures it.

    Parameters
    ----------
    wave
        Observer-frame wavelength grid [Angstrom], shape ``(W,)``.
    flam
        Spectral flux density ``f_lambda`` [erg/s/cm^2/Angstrom], shape ``(..., W)``.
    filters, band
        Which throughput (:func:`bandpass`).

    Returns
    -------
    numpy.ndarray
        ``<f_nu>`` [nJy], shape ``(...)``.
    """
    bw, bt = bandpass(filters, band)
    trans = np.interp(wave, bw, bt, left=0.0, right=0.0)
    # <f_nu> = int f_lambda T lambda dlambda / int (c / lambda) T dlambda  (photon counting)
    num = np.trapezoid(flam * trans * wave, wave, axis=-1)
    den = np.trapezoid(trans * C_ANGSTROM_S / wave, wave)
    return num / den * 1e32  # erg/s/cm^2/Hz -> nJy
