"""Light-curve features measured from the frames: the inputs of the light-curve baseline.

Each frame is reduced to one flux by a Gaussian-weighted fit at the frame centre (sigma 1.3 frame pixels,
close to the median PSF) using only measured pixels, with its error from the robust (MAD) scatter of the
frame's outer pixels. From those fluxes per band come the amplitude / significance / colour / duration /
periodicity features a classical light-curve classifier uses (e.g. Lochner et al. 2016; Richards et al.
2011): nothing here looks at the pixels beyond the photometry.
"""

from __future__ import annotations

import warnings

import numpy as np
from astropy.timeseries import LombScargle

from broker_plugin.records import BANDS
from broker_plugin_train.data.shards import Sequence

#: Bands with per-band features (the Stripe-82-like survey's).
FEATURE_BANDS: tuple[str, ...] = ("u", "g", "r", "i", "z")
_PER_BAND = ("max_snr", "min_snr", "mean_snr", "std_snr", "frac_pos3", "frac_neg3", "skew")
_GLOBAL = (
    "duration",
    "rise",
    "fall",
    "t_peak_rel",
    "frac_neg_all",
    "g_r_peak",
    "r_i_peak",
    "u_g_peak",
    "ls_power",
    "ls_log_period",
    "eta_r",
    "n_frames",
)
FEATURE_NAMES: tuple[str, ...] = tuple(f"{b}_{n}" for b in FEATURE_BANDS for n in _PER_BAND) + _GLOBAL
_SIGMA_PX = 1.3
_OUTER_PX = 9.0


def frame_photometry(frames: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian-weighted flux and its error for each frame.

    Parameters
    ----------
    frames, masks
        ``(N, S, S)`` frames [nJy per pixel] and validity masks.

    Returns
    -------
    tuple of numpy.ndarray
        ``flux`` and ``error`` [nJy, in units of a 1.3-px Gaussian's total flux]; NaN for blank frames.
    """
    n, size, _ = frames.shape
    c = (size - 1) / 2.0
    yy, xx = np.mgrid[:size, :size]
    r2 = (yy - c) ** 2 + (xx - c) ** 2
    w = np.exp(-0.5 * r2 / _SIGMA_PX**2) / (2 * np.pi * _SIGMA_PX**2)
    m = masks.astype(np.float64)
    sw2 = (m * w * w).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        # Blank frames have no outer pixels: their all-NaN medians are expected and masked below.
        warnings.simplefilter("ignore", RuntimeWarning)
        flux = (m * w * frames).sum(axis=(1, 2)) / sw2
        outer = np.where(masks & (r2 > _OUTER_PX**2)[None], frames, np.nan).reshape(n, -1)
        med = np.nanmedian(outer, axis=1)
        sigma = 1.4826 * np.nanmedian(np.abs(outer - med[:, None]), axis=1)
        err = sigma / np.sqrt(sw2)
    bad = (sw2 < 0.3 * (w * w).sum()) | ~np.isfinite(err) | (err <= 0)
    return np.where(bad, np.nan, flux), np.where(bad, np.nan, err)


def _colour(
    flux: np.ndarray, band: np.ndarray, night: np.ndarray, peak_night: float, a: str, b: str
) -> float:
    sel_a = (band == BANDS.index(a)) & (night == peak_night)
    sel_b = (band == BANDS.index(b)) & (night == peak_night)
    if not sel_a.any() or not sel_b.any():
        return np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a blank frame on the peak night: NaN colour
        fa, fb = np.nanmean(flux[sel_a]), np.nanmean(flux[sel_b])
    if not (fa > 0 and fb > 0):
        return np.nan
    return float(-2.5 * np.log10(fa / fb))


def extract(seq: Sequence) -> np.ndarray:
    """The feature vector (:data:`FEATURE_NAMES`) of one object; NaN where undefined."""
    flux, err = frame_photometry(np.asarray(seq.frames), np.asarray(seq.masks))
    band, mjd = np.asarray(seq.band), np.asarray(seq.mjd)
    ok = np.isfinite(flux)
    snr = np.where(ok, flux / np.where(ok, err, 1.0), np.nan)
    out: list[float] = []
    for b in FEATURE_BANDS:
        sel = ok & (band == BANDS.index(b))
        s = snr[sel]
        if len(s) < 2:
            out += [np.nan] * len(_PER_BAND)
            continue
        f = flux[sel]
        sd = f.std()
        skew = float(((f - f.mean()) ** 3).mean() / sd**3) if sd > 0 else 0.0
        out += [s.max(), s.min(), s.mean(), s.std(), (s > 3).mean(), (s < -3).mean(), skew]
    sig = ok & (snr > 3)
    span = max(float(mjd[ok].max() - mjd[ok].min()), 1.0) if ok.any() else 1.0
    if sig.any():
        t_sig = mjd[sig]
        t_peak = float(mjd[np.nanargmax(np.where(ok, snr, -np.inf))])
        duration, rise, fall = (
            float(t_sig.max() - t_sig.min()),
            t_peak - float(t_sig.min()),
            float(t_sig.max()) - t_peak,
        )
        t_peak_rel = (t_peak - float(mjd[ok].min())) / span
    else:
        duration = rise = fall = 0.0
        t_peak_rel, t_peak = np.nan, np.nan
    night = np.floor(mjd)
    peak_night = np.floor(t_peak) if np.isfinite(t_peak) else -1.0
    colours = [_colour(flux, band, night, peak_night, a, b) for a, b in (("g", "r"), ("r", "i"), ("u", "g"))]
    # Periodicity: one Lomb-Scargle periodogram of all bands, each scaled to unit scatter.
    scaled = np.full(len(flux), np.nan)
    for b in np.unique(band[ok]):
        sel = ok & (band == b)
        sd = np.std(flux[sel])
        if sd > 0:
            scaled[sel] = (flux[sel] - np.median(flux[sel])) / sd
    good = np.isfinite(scaled)
    if good.sum() > 10:
        freq = np.linspace(1 / 300.0, 4.0, 3000)
        power = LombScargle(mjd[good], scaled[good]).power(freq)
        ls_power, ls_period = float(power.max()), float(np.log10(1 / freq[np.argmax(power)]))
    else:
        ls_power, ls_period = np.nan, np.nan
    r = flux[ok & (band == BANDS.index("r"))]
    eta = float(np.mean(np.diff(r) ** 2) / np.var(r)) if len(r) > 2 and np.var(r) > 0 else np.nan
    frac_neg = float(np.mean(snr[ok] < -3)) if ok.any() else np.nan
    out += [duration, rise, fall, t_peak_rel, frac_neg, *colours, ls_power, ls_period, eta, float(ok.sum())]
    return np.array(out, dtype=np.float64)
