"""Dust extinction curves (the only module that uses ``extinction``): Fitzpatrick (1999), R_V = 3.1."""

from __future__ import annotations

import extinction
import numpy as np

R_V = 3.1


def attenuation(wave_angstrom: np.ndarray, a_v: float) -> np.ndarray:
    """Transmitted fraction ``10^(-0.4 A(lambda))`` for ``A_V = a_v`` at the given wavelengths."""
    if a_v <= 0:
        return np.ones_like(np.asarray(wave_angstrom, dtype=np.float64))
    wave = np.asarray(wave_angstrom, dtype=np.float64)
    # The F99 curve is defined over 910 A .. 6 micron; clip so red z-band tails of low-z SNe stay valid.
    a_lambda = extinction.fitzpatrick99(np.clip(wave, 1000.0, 59000.0), a_v, R_V)
    return np.power(10.0, -0.4 * a_lambda)
