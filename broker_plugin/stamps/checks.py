"""Sanity checks between a cutout's header and pixels and the frame made from them.

Each check turns a value that would crash, exhaust or poison later code into a typed :class:`StampError`:

- WCS and scaling cards (``CRPIXn``, ``CRVALn``, ``CDi_j``, ``PCi_j``, ``CDELTn``, ``CROTAn``, ``PVi_m``,
  SIP coefficients, ``LONPOLE``, ``LATPOLE``, ``EQUINOX``, ``BSCALE``, ``BZERO``) must be finite numbers,
  ``CTYPEn``, ``CUNITn`` and ``RADESYS`` quoted strings, and SIP orders and ``WCSAXES`` integers 0..9
  (:class:`CutoutHeaderError`);
- the pixel -> sky matrix must be finite with both pixel scales (its singular values) within
  ``limits.min_cutout_pixel_scale_arcsec`` .. ``limits.max_cutout_pixel_scale_arcsec``, which also rules out
  singular and near-singular matrices (:class:`CutoutWcsError`);
- the source position must be finite and close enough to the cutout for the frame to overlap it
  (:class:`CutoutWcsError`);
- calibrated pixels must stay within :data:`~broker_plugin.records.MAX_PIXEL_FLUX_NJY`
  (:class:`CutoutValueError`).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable

import numpy as np

from broker_plugin.config import LimitsSettings
from broker_plugin.exceptions import CutoutHeaderError, CutoutValueError, CutoutWcsError
from broker_plugin.records import MAX_PIXEL_FLUX_NJY

#: Cards whose value must be a finite real number wherever they appear.
_REAL_CARDS = re.compile(
    r"(?:CRPIX|CRVAL|CDELT|CROTA)\d{1,2}|(?:CD|PC)\d{1,2}_\d{1,2}|PV\d{1,2}_\d{1,2}"
    r"|(?:A|B|AP|BP)_\d{1,2}_\d{1,2}|LONPOLE|LATPOLE|EQUINOX|BSCALE|BZERO"
)
#: Cards whose value must be a quoted string.
_STRING_CARDS = re.compile(r"CTYPE\d{1,2}|CUNIT\d{1,2}|RADESYS")
#: Cards that size arrays inside astropy.wcs: a SIP order of 10**6 would allocate and loop over 10**12
#: coefficients. SIP orders in use are <= 9 (the convention's own examples stop at 5).
_COUNT_CARDS = {"A_ORDER": 9, "B_ORDER": 9, "AP_ORDER": 9, "BP_ORDER": 9, "WCSAXES": 9}
#: The smallest non-zero scale factor 10**(-0.4 (magzpsci - 31.4)) may have, and its reciprocal the largest:
#: a zero point beyond these (magzpsci outside about -720..780) is not a calibration.
_FACTOR_RANGE = (1e-300, 1e300)


def check_wcs_cards(cards: Iterable[tuple[str, object]]) -> None:
    """Refuse WCS and scaling cards of the wrong kind (:class:`CutoutHeaderError`): see the module docstring.

    Parameters
    ----------
    cards
        ``(keyword, value)`` pairs: our own parsed cards or an astropy ``Header.items()``.
    """
    for keyword, value in cards:
        kind = _card_kind(keyword)
        if kind == "count":
            if type(value) is not int or not 0 <= value <= _COUNT_CARDS[keyword]:
                raise CutoutHeaderError(
                    f"{keyword} = {_shown(value)} is not an integer 0..{_COUNT_CARDS[keyword]}"
                )
        elif kind == "real":
            if not is_finite_real(value):
                raise CutoutHeaderError(f"{keyword} = {_shown(value)} is not a finite number")
        elif kind == "string" and not isinstance(value, str):
            # An unquoted CTYPE would read as "no projection" here and as something else in astropy.
            raise CutoutHeaderError(f"{keyword} = {_shown(value)} is not a quoted string")


@functools.lru_cache(maxsize=1024)  # the same few dozen keywords in every cutout
def _card_kind(keyword: str) -> str | None:
    """Which check a card gets: ``count``, ``real``, ``string`` or none."""
    if keyword in _COUNT_CARDS:
        return "count"
    if _REAL_CARDS.fullmatch(keyword):
        return "real"
    return "string" if _STRING_CARDS.fullmatch(keyword) else None


def _shown(value: object) -> str:
    """A card value for an error message: short, and saying so when the text was no FITS value."""
    return "an unparsable value" if value is None else f"{value!r:.20}"


def is_finite_real(value: object) -> bool:
    """Whether ``value`` is a finite int or float, Python or numpy (no bool, str or astropy Undefined)."""
    numeric = isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
    return numeric and math.isfinite(value)  # type: ignore[arg-type]


def real_card(cards: dict[str, object], keyword: str, default: float) -> float:
    """A card's value as a finite float (``default`` when absent), or :class:`CutoutHeaderError`."""
    value = cards.get(keyword, default)
    if not is_finite_real(value):
        raise CutoutHeaderError(f"{keyword} = {_shown(value)} is not a finite number")
    return float(value)  # type: ignore[arg-type]


def check_pixel_matrix(cd_arcsec: np.ndarray, limits: LimitsSettings) -> np.ndarray:
    """``cd_arcsec`` as a float64 2x2 array if it is a plausible pixel -> sky map.

    Parameters
    ----------
    cd_arcsec
        Pixel offsets -> (east, north) [arcsec].
    limits
        The plausible pixel-scale range [arcsec/px].

    Raises
    ------
    CutoutWcsError
        Not finite, or a pixel scale outside the range (a singular matrix has one of 0).

    Notes
    -----
    The singular values of the matrix are the pixel's extent along its two principal directions. Bounding
    both bounds the matrix, its inverse and the resampler's work, and refuses singular matrices.
    """
    cd = np.asarray(cd_arcsec, dtype=np.float64)
    low, high = limits.min_cutout_pixel_scale_arcsec, limits.max_cutout_pixel_scale_arcsec
    if cd.shape != (2, 2) or not np.isfinite(cd).all():
        raise CutoutWcsError(f"cutout WCS matrix is not a finite 2x2 matrix: {cd.tolist()!r:.120}")
    # Entries beyond the range are refused first, so that the squares below cannot overflow.
    if float(np.abs(cd).max()) > high:
        raise CutoutWcsError(f"cutout pixel scale above {high} arcsec/px: matrix {cd.tolist()!r:.120}")
    largest, smallest = pixel_scales(cd)
    if not (smallest >= low and largest <= high):  # the two may round to either order when equal
        raise CutoutWcsError(
            f"cutout pixel scales {largest:.4g}, {smallest:.4g} arcsec/px outside {low}..{high} "
            "(a singular matrix has 0)"
        )
    return cd


def pixel_scales(cd: np.ndarray) -> tuple[float, float]:
    """Singular values ``(largest, smallest)`` of a finite 2x2 matrix whose entries are at most ~1e150.

    Closed form, 20x faster than ``np.linalg.svd`` on a 2x2: the largest from the Frobenius norm and the
    spread, the smallest as ``|det| / largest`` (the difference form would cancel for a near-singular one).
    """
    (a, b), (c, d) = cd.tolist()
    total = a * a + b * b + c * c + d * d
    spread = math.hypot(a * a + b * b - c * c - d * d, 2.0 * (a * c + b * d))
    largest = math.sqrt((total + spread) / 2.0)
    return largest, (abs(a * d - b * c) / largest if largest > 0.0 else 0.0)


def check_source(
    source: tuple[float, float], shape: tuple[int, int], cd_arcsec: np.ndarray, size: int, scale: float
) -> tuple[float, float]:
    """The source pixel, if finite and near enough the cutout for the frame to overlap it.

    Parameters
    ----------
    source
        0-based ``(x, y)`` position of the source in the cutout.
    shape
        ``(rows, columns)`` of the cutout.
    cd_arcsec
        The checked pixel -> sky matrix [arcsec].
    size, scale
        Frame side [pixels] and pixel scale [arcsec].

    Raises
    ------
    CutoutWcsError
        The position is not finite, or the frame around it cannot touch the cutout.
    """
    x, y = float(source[0]), float(source[1])
    if not (math.isfinite(x) and math.isfinite(y)):
        raise CutoutWcsError(f"source position ({x}, {y}) in the cutout is not finite")
    # No frame sample is farther from the source than the frame's half diagonal, which spans at most
    # this many cutout pixels (divided by the smallest pixel scale).
    reach = size * scale / math.sqrt(2.0) / pixel_scales(np.asarray(cd_arcsec, dtype=np.float64))[1]
    rows, cols = shape
    if not (-0.5 - reach <= x <= cols - 0.5 + reach and -0.5 - reach <= y <= rows - 0.5 + reach):
        raise CutoutWcsError(f"source at pixel ({x:.4g}, {y:.4g}) is too far from the {rows} x {cols} cutout")
    return x, y


def peak_abs(image: np.ndarray, finite: np.ndarray) -> float:
    """Largest ``|pixel|`` among the finite pixels (0 when there are none)."""
    values = image if bool(finite.all()) else image[finite]
    return float(np.abs(values).max(initial=0.0))


def check_njy(image: np.ndarray, finite: np.ndarray) -> None:
    """Refuse finite pixels beyond :data:`MAX_PIXEL_FLUX_NJY` (:class:`CutoutValueError`)."""
    peak = peak_abs(image, finite)
    if peak > MAX_PIXEL_FLUX_NJY:
        raise CutoutValueError(f"cutout pixel of {peak:.3g} nJy exceeds {MAX_PIXEL_FLUX_NJY:g} nJy")


def flux_factor(magzpsci: object, zero_point: float) -> float:
    """DN -> nJy factor ``10**(-0.4 (magzpsci - zero_point))``, or :class:`CutoutValueError`.

    Parameters
    ----------
    magzpsci
        The image's photometric zero point [mag].
    zero_point
        AB magnitude of 1 nJy.
    """
    if not is_finite_real(magzpsci):
        raise CutoutValueError(f"ZTF magzpsci {magzpsci!r:.20} is not a finite number")
    exponent = -0.4 * (float(magzpsci) - zero_point)  # type: ignore[arg-type]
    if not math.log10(_FACTOR_RANGE[0]) <= exponent <= math.log10(_FACTOR_RANGE[1]):
        raise CutoutValueError(f"ZTF magzpsci {magzpsci} gives a DN -> nJy factor of 10**{exponent:.4g}")
    return 10.0**exponent


def check_dn(image: np.ndarray, finite: np.ndarray, factor: float) -> None:
    """Refuse DN whose calibrated flux ``DN x factor`` would exceed :data:`MAX_PIXEL_FLUX_NJY`.

    The product of the largest ``|DN|`` and the factor is a float multiplication: at worst it rounds to
    ``inf``, which fails the comparison; no array is scaled before it passes.
    """
    peak = peak_abs(image, finite)
    flux = peak * factor
    if not flux <= MAX_PIXEL_FLUX_NJY:  # also catches inf
        raise CutoutValueError(
            f"cutout pixel of {peak:.3g} DN x {factor:.3g} nJy/DN exceeds {MAX_PIXEL_FLUX_NJY:g} nJy"
        )
