"""A fast reader for the simple FITS images alert cutouts are, with astropy as the fallback.

Decoding must keep up with Rubin's bursts (~1000 alerts/s) on one core, and building astropy's
``HDUList`` and ``WCS`` objects costs ~5 ms per cutout, almost all of it card verification and the
round trip through wcslib. A cutout is a primary HDU of 80-character cards and big-endian pixels, and
its WCS is a linear map (Rubin) or a plain TAN projection, so both are read here directly. Anything
outside that simple case (scaled integers, SIP distortion, other projections) returns ``None`` and the
caller falls back to astropy, which stays the reference: the tests check that both paths agree.

The file's structure is checked by :func:`~broker_plugin.stamps.fits_header.locate_image` before either
reader runs, and every WCS number here is checked before it is used: hostile values raise a
:class:`~broker_plugin.exceptions.StampError`, never fall through to arithmetic errors.
"""

from __future__ import annotations

import math

import numpy as np

from broker_plugin.config import LimitsSettings
from broker_plugin.exceptions import CutoutHeaderError, CutoutWcsError, StampError
from broker_plugin.stamps.checks import check_pixel_matrix, real_card
from broker_plugin.stamps.fits_header import locate_image, read_pixels

#: cos(angular distance) between the alert and CRVAL below which the gnomonic projection is refused
#: (about 84 deg: far beyond any cutout, and before the projection diverges at 90 deg).
_MIN_COS_DISTANCE = 0.1


def parse_primary_image(
    raw: bytes, limits: LimitsSettings | None = None
) -> tuple[np.ndarray, dict[str, object]] | None:
    """Pixels and header cards of a simple, valid FITS image, or ``None`` if it is not that.

    Parameters
    ----------
    raw
        Uncompressed FITS bytes.
    limits
        Size limits of the file (default ``LimitsSettings()``).

    Returns
    -------
    tuple or None
        ``(image float64 [row, column], {keyword: value})``; ``None`` when the file fails the structural
        checks or stores scaled pixels.
    """
    try:
        hdu = locate_image(raw, limits or LimitsSettings())
    except StampError:
        return None
    image = read_pixels(raw, hdu)
    return None if image is None else (image, hdu.cards)


def linear_transform(
    header: dict[str, object], ra: float | None, dec: float | None, limits: LimitsSettings | None = None
) -> tuple[np.ndarray, tuple[float, float]] | None:
    """The cutout's pixel -> (east, north) [arcsec] matrix and 0-based source pixel, if simple.

    Handles Rubin's linear header (no CTYPE: the source is at CRPIX) and a plain ``RA---TAN``/
    ``DEC--TAN`` header without distortion (the source is the alert's position, projected). Returns
    ``None`` for anything else.

    Parameters
    ----------
    header
        ``{keyword: value}`` cards.
    ra, dec
        The alert's position [deg].
    limits
        Plausible pixel-scale range (default ``LimitsSettings()``).

    Raises
    ------
    CutoutHeaderError
        A WCS card that is not a finite number.
    CutoutWcsError
        An implausible or singular matrix, CRVAL2 beyond a pole, or a source the projection cannot place.
    """
    if "CRPIX1" not in header or "CRPIX2" not in header:
        return None
    ctype1, ctype2 = header.get("CTYPE1", ""), header.get("CTYPE2", "")
    if not (isinstance(ctype1, str) and isinstance(ctype2, str)):
        raise CutoutHeaderError(f"CTYPE1, CTYPE2 = {ctype1!r:.20}, {ctype2!r:.20}: not quoted strings")
    celestial = (ctype1, ctype2) == ("RA---TAN", "DEC--TAN")
    if (ctype1 or ctype2) and not celestial:
        return None
    if any(key.startswith(("A_", "B_", "PV", "CROTA", "PS")) for key in header):
        return None
    # Every number used below is read through real_card, which refuses non-finite and non-numeric values.
    if "CD1_1" in header:
        cd = [[real_card(header, f"CD{i}_{j}", 0.0) for j in (1, 2)] for i in (1, 2)]
    else:
        pc = [[real_card(header, f"PC{i}_{j}", float(i == j)) for j in (1, 2)] for i in (1, 2)]
        cdelt = (real_card(header, "CDELT1", 1.0), real_card(header, "CDELT2", 1.0))
        cd = [[pc[i][j] * cdelt[i] for j in (0, 1)] for i in (0, 1)]
    # Finite cards can still multiply to inf (PC 1e200 x CDELT 1e200): Python floats do so silently, and
    # the check refuses the product.
    matrix = check_pixel_matrix(
        np.array([[v * 3600.0 for v in row] for row in cd]), limits or LimitsSettings()
    )
    x0, y0 = real_card(header, "CRPIX1", 0.0) - 1.0, real_card(header, "CRPIX2", 0.0) - 1.0
    if celestial and ra is not None and dec is not None:
        crval = (real_card(header, "CRVAL1", 0.0), real_card(header, "CRVAL2", 0.0))
        xi, eta = _gnomonic(ra, dec, *crval)
        dx, dy = np.linalg.solve(matrix, [xi * 3600.0, eta * 3600.0])
        x0, y0 = x0 + float(dx), y0 + float(dy)
    return matrix, (x0, y0)


def _gnomonic(ra: float, dec: float, ra0: float, dec0: float) -> tuple[float, float]:
    """Standard coordinates (xi east, eta north) [deg] of (ra, dec) about (ra0, dec0).

    Raises
    ------
    CutoutWcsError
        ``dec0`` beyond a pole, a non-finite position, or one too far from (ra0, dec0) to project.
    """
    if not -90.0 <= dec0 <= 90.0:
        raise CutoutWcsError(f"CRVAL2 = {dec0} is not a declination")
    if not (math.isfinite(ra) and math.isfinite(dec)):  # math.sin(inf) raises ValueError
        raise CutoutWcsError(f"alert position ({ra}, {dec}) is not finite")
    a, d, a0, d0 = map(math.radians, (ra, dec, ra0, dec0))
    cos_c = math.sin(d0) * math.sin(d) + math.cos(d0) * math.cos(d) * math.cos(a - a0)
    if not cos_c >= _MIN_COS_DISTANCE:  # also NaN from a non-finite alert position
        raise CutoutWcsError(f"alert position ({ra}, {dec}) is too far from CRVAL ({ra0}, {dec0}) to project")
    xi = math.cos(d) * math.sin(a - a0) / cos_c
    eta = (math.cos(d0) * math.sin(d) - math.sin(d0) * math.cos(d) * math.cos(a - a0)) / cos_c
    return math.degrees(xi), math.degrees(eta)
