"""Periodic variable stars: RR Lyrae (ab, c), Cepheids, long-period variables and eclipsing binaries.

Pulsators use Fourier-series templates in magnitude, ``dm(phi) = sum_k a_k sin(2 pi k phi + phi_k)``,
with astrobase's default period and amplitude distributions (``astrobase.fakelcs.generation``: RRab
0.45-0.8 d, RRc 0.10-0.40 d, Cepheids 1-40 d, LPV 100-500 d) redrawn here from the object's own seeded
generator (astrobase draws from numpy's global random state, which would break per-object determinism).
The harmonic amplitude ratios follow the observed shapes (RRab sawtooth R21 ~ 0.5, RRc near-sinusoidal
R21 ~ 0.15; Simon & Lee 1981). Band amplitudes scale as Sesar et al. (2010) measured for Stripe 82 RR
Lyrae: A_u : A_g : A_r : A_i : A_z = 1.23 : 1 : 0.78 : 0.68 : 0.63 (LPVs grow stronger to the blue).

Eclipsing binaries: two eclipses (primary at phase 0, secondary at 0.5) with Gaussian-shaped dips of
phase width 0.03-0.08 and a weak ellipsoidal modulation; the secondary's depth changes with band
because the two stars have different temperatures.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from broker_plugin_train.data.bandpasses import mag_to_njy

SUBTYPES: tuple[str, ...] = ("RRab", "RRc", "Cepheid", "LPV", "EB")
#: Share of each subtype among the Stripe-82 variables (RR Lyrae dominate a high-latitude stripe).
SUBTYPE_RATES = np.array([0.35, 0.15, 0.08, 0.12, 0.30])
_AMP_RATIO = {"u": 1.23, "g": 1.0, "r": 0.78, "i": 0.68, "z": 0.63, "y": 0.6}
_LPV_RATIO = {"u": 1.6, "g": 1.3, "r": 1.0, "i": 0.7, "z": 0.5, "y": 0.45}
#: Stellar colours relative to r [mag] per subtype: u, g, i, z, y.
_COLOURS = {
    "RRab": (1.35, 0.25, -0.08, -0.1, -0.1),
    "RRc": (1.25, 0.15, -0.05, -0.07, -0.07),
    "Cepheid": (1.7, 0.5, -0.2, -0.3, -0.3),
    "LPV": (3.5, 1.4, -1.4, -2.1, -2.4),
    "EB": (1.5, 0.5, -0.15, -0.2, -0.2),
}


@dataclass(frozen=True, slots=True)
class VariableParams:
    """One variable star."""

    subtype: str
    period: float  # days
    epoch: float  # MJD of phase 0
    mean_mag_r: float
    amplitude_g: float  # peak-to-peak magnitude amplitude in g (eclipse depth for EBs)
    fourier_amp: np.ndarray = field(default_factory=lambda: np.zeros(0))
    fourier_phase: np.ndarray = field(default_factory=lambda: np.zeros(0))
    secondary_depth: float = 0.0
    eclipse_width: float = 0.05
    secondary_slope: float = 0.0


def draw_params(rng: np.random.Generator, subtype: str, t_ref: float) -> VariableParams:
    """Draw one variable of ``subtype``."""
    mag = float(rng.uniform(15.5, 21.5))
    epoch = t_ref + float(rng.uniform(0.0, 1.0))
    if subtype == "EB":
        period = float(np.exp(rng.uniform(np.log(0.3), np.log(10.0))))
        depth = float(rng.uniform(0.15, 0.9))
        return VariableParams(
            "EB",
            period,
            epoch * 1.0,
            mag,
            depth,
            secondary_depth=depth * float(rng.uniform(0.1, 0.9)),
            eclipse_width=float(rng.uniform(0.03, 0.08)),
            secondary_slope=float(rng.uniform(-0.6, 0.6)),
        )
    if subtype == "RRab":
        period, amp, ratio, order = rng.uniform(0.45, 0.8), rng.uniform(0.5, 1.2), 0.5, 6
    elif subtype == "RRc":
        period, amp, ratio, order = rng.uniform(0.25, 0.4), rng.uniform(0.3, 0.55), 0.15, 3
    elif subtype == "Cepheid":
        period, amp, ratio, order = (
            np.exp(rng.uniform(np.log(1.0), np.log(40.0))),
            rng.uniform(0.4, 1.0),
            0.4,
            4,
        )
    else:
        period, amp, ratio, order = rng.uniform(100.0, 500.0), rng.uniform(1.0, 2.5), 0.1, 2
    k = np.arange(1, order + 1)
    # Sawtooth-like phases (all harmonics in step: fast rise, slow decline), with some star-to-star scatter.
    famp = ratio ** (k - 1) * rng.uniform(0.85, 1.15, order)
    fphase = rng.normal(0.0, 0.25, order)
    return VariableParams(subtype, float(period), epoch, mag, float(amp), famp, fphase)


def _shape(params: VariableParams, phase: np.ndarray) -> np.ndarray:
    """Unit peak-to-peak magnitude shape of a pulsator (brighter is negative)."""
    k = np.arange(1, len(params.fourier_amp) + 1)
    dense = np.linspace(0.0, 1.0, 512, endpoint=False)

    def series(ph: np.ndarray) -> np.ndarray:
        return (params.fourier_amp * np.sin(2 * np.pi * k * ph[:, None] + params.fourier_phase)).sum(axis=1)

    ref = series(dense)
    return (series(phase) - ref.mean()) / (ref.max() - ref.min())


def flux_njy(params: VariableParams, mjd: np.ndarray, bands: np.ndarray) -> np.ndarray:
    """Total stellar flux [nJy] at each ``(mjd, band)``."""
    mjd = np.asarray(mjd, dtype=np.float64)
    phase = np.mod((mjd - params.epoch) / params.period, 1.0)
    colours = dict(zip(("u", "g", "i", "z", "y"), _COLOURS[params.subtype], strict=True))
    colours["r"] = 0.0
    base = np.array([params.mean_mag_r + colours[str(b)] for b in bands])
    if params.subtype == "EB":
        slope = np.array([_amp_wave(str(b)) for b in bands]) * params.secondary_slope
        d1 = params.amplitude_g
        d2 = np.clip(params.secondary_depth * (1 + slope), 0.0, 0.95)
        w = params.eclipse_width
        dist1 = np.minimum(phase, 1 - phase)
        dist2 = np.abs(phase - 0.5)
        frac = 1 - d1 * np.exp(-0.5 * (dist1 / w) ** 2) - d2 * np.exp(-0.5 * (dist2 / w) ** 2)
        frac *= 1 - 0.02 * np.cos(4 * np.pi * phase)
        return mag_to_njy(base) * np.clip(frac, 0.02, None)
    table = _LPV_RATIO if params.subtype == "LPV" else _AMP_RATIO
    ratio = np.array([table[str(b)] for b in bands])
    return mag_to_njy(base + params.amplitude_g * ratio * _shape(params, phase))


def _amp_wave(band: str) -> float:
    """Signed position of a band from r (-1 u ... +1 z): scales colour-dependent eclipse depths."""
    return {"u": -1.0, "g": -0.5, "r": 0.0, "i": 0.4, "z": 0.8, "y": 1.0}[band]
