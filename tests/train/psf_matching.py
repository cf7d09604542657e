"""PSF matching for the consistency tests: the kernel that turns the template's PSF into the science's."""

from __future__ import annotations

import numpy as np
from scipy import signal

from broker_plugin_train.data import scene


def matching_kernel(
    fwhm_science: float, fwhm_template: float, wing: float, pixel: float, side: int = 41
) -> np.ndarray:
    """Kernel K with template PSF * K = science PSF (both pixel-integrated), by division in Fourier space.

    Exact for the simulator's double-Gaussian PSFs as long as the science PSF is the wider one (else the
    division deconvolves and blows up).

    Parameters
    ----------
    fwhm_science, fwhm_template
        PSF FWHMs [arcsec].
    wing
        Flux fraction of the PSF wing.
    pixel
        Pixel side [arcsec].
    side
        Side of the kernel image [pixels] (odd: the kernel is centred on the middle pixel).

    Returns
    -------
    numpy.ndarray
        ``(side, side)`` kernel of unit sum.
    """
    k = np.fft.fftfreq(side, d=pixel)
    k2 = k[None, :] ** 2 + k[:, None] ** 2

    def transform(fwhm: float) -> np.ndarray:
        w, v = scene.psf_components(np.array([fwhm]), wing)
        return sum(w[i] * np.exp(-2 * np.pi**2 * (v[0, i] + pixel**2 / 12) * k2) for i in range(2))

    return np.fft.fftshift(np.real(np.fft.ifft2(transform(fwhm_science) / transform(fwhm_template))))


def match(template: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """The template convolved with the kernel, on its own grid (edges as if the template were 0 outside)."""
    return signal.fftconvolve(template, kernel, mode="same")
