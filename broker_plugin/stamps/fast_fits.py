"""A fast reader for the simple FITS images alert cutouts are, with astropy as the fallback.

Decoding must keep up with Rubin's bursts (~1000 alerts/s) on one core, and building astropy's
``HDUList`` and ``WCS`` objects costs ~5 ms per cutout, almost all of it card verification and the
round trip through wcslib. A cutout is a primary HDU of 80-character cards and big-endian pixels, and
its WCS is a linear map (Rubin) or a plain TAN projection, so both are read here directly. Anything
outside that simple case (scaled integers, extensions before the image, SIP distortion, other
projections) returns ``None`` and the caller falls back to astropy, which stays the reference: the tests
check that both paths agree.
"""

from __future__ import annotations

import math

import numpy as np

_BLOCK = 2880
_CARD = 80
_DTYPES = {-32: ">f4", -64: ">f8", 16: ">i2", 32: ">i4", 8: "u1"}
_MAX_HEADER_BLOCKS = 64


def _value(text: str) -> str | float | bool | None:
    """Parse a card's value field (quoted string, logical, or number)."""
    text = text.strip()
    if text.startswith("'"):
        end = text.find("'", 1)
        while end != -1 and end + 1 < len(text) and text[end + 1] == "'":  # doubled quote inside
            end = text.find("'", end + 2)
        return text[1:end].replace("''", "'").rstrip() if end != -1 else None
    text = text.split("/", 1)[0].strip()
    if text in ("T", "F"):
        return text == "T"
    try:
        return float(text.replace("D", "E"))
    except ValueError:
        return None


def parse_primary_image(raw: bytes) -> tuple[np.ndarray, dict[str, object]] | None:
    """Pixels and header cards of a simple primary-HDU image, or ``None`` if it is not that simple.

    Returns
    -------
    tuple or None
        ``(image float64 [row, column], {keyword: value})``.
    """
    if not raw.startswith(b"SIMPLE  ="):
        return None
    header: dict[str, object] = {}
    offset = 0
    end_found = False
    while not end_found and offset < min(len(raw), _BLOCK * _MAX_HEADER_BLOCKS):
        block = raw[offset : offset + _BLOCK]
        if len(block) < _BLOCK:
            return None
        offset += _BLOCK
        for start in range(0, _BLOCK, _CARD):
            card = block[start : start + _CARD].decode("ascii", errors="replace")
            keyword = card[:8].rstrip()
            if keyword == "END":
                end_found = True
                break
            if card[8:10] == "= ":
                header[keyword] = _value(card[10:])
    if not end_found or header.get("NAXIS") != 2 or header.get("BSCALE", 1.0) != 1.0:
        return None
    if header.get("BZERO", 0.0) != 0.0:
        return None
    dtype = _DTYPES.get(int(header.get("BITPIX", 0) or 0))
    rows, cols = header.get("NAXIS2"), header.get("NAXIS1")
    if dtype is None or not isinstance(rows, float) or not isinstance(cols, float):
        return None
    count = int(rows) * int(cols)
    itemsize = np.dtype(dtype).itemsize
    if count <= 0 or offset + count * itemsize > len(raw):
        return None
    image = np.frombuffer(raw, dtype=dtype, count=count, offset=offset).reshape(int(rows), int(cols))
    return image.astype(np.float64), header


def linear_transform(
    header: dict[str, object], ra: float | None, dec: float | None
) -> tuple[np.ndarray, tuple[float, float]] | None:
    """The cutout's pixel -> (east, north) [arcsec] matrix and 0-based source pixel, if simple.

    Handles Rubin's linear header (no CTYPE: the source is at CRPIX) and a plain ``RA---TAN``/
    ``DEC--TAN`` header without distortion (the source is the alert's position, projected). Returns
    ``None`` for anything else.
    """
    if "CRPIX1" not in header or "CRPIX2" not in header:
        return None
    ctype1, ctype2 = str(header.get("CTYPE1", "") or ""), str(header.get("CTYPE2", "") or "")
    celestial = (ctype1, ctype2) == ("RA---TAN", "DEC--TAN")
    if (ctype1 or ctype2) and not celestial:
        return None
    if any(key.startswith(("A_", "B_", "PV", "CROTA", "PS")) for key in header):
        return None
    if "CD1_1" in header:
        cd = [[header.get(f"CD{i}_{j}", 0.0) for j in (1, 2)] for i in (1, 2)]
    else:
        pc = [[header.get(f"PC{i}_{j}", float(i == j)) for j in (1, 2)] for i in (1, 2)]
        cdelt = (header.get("CDELT1", 1.0), header.get("CDELT2", 1.0))
        cd = [[pc[i][j] * cdelt[i] for j in (0, 1)] for i in (0, 1)]
    matrix = np.asarray(cd, dtype=np.float64) * 3600.0
    x0, y0 = float(header["CRPIX1"]) - 1.0, float(header["CRPIX2"]) - 1.0  # type: ignore[arg-type]
    if celestial and ra is not None and dec is not None:
        xi, eta = _gnomonic(ra, dec, float(header.get("CRVAL1", 0.0)), float(header.get("CRVAL2", 0.0)))
        dx, dy = np.linalg.solve(matrix, [xi * 3600.0, eta * 3600.0])
        x0, y0 = x0 + float(dx), y0 + float(dy)
    return matrix, (x0, y0)


def _gnomonic(ra: float, dec: float, ra0: float, dec0: float) -> tuple[float, float]:
    """Standard coordinates (xi east, eta north) [deg] of (ra, dec) about (ra0, dec0)."""
    a, d, a0, d0 = map(math.radians, (ra, dec, ra0, dec0))
    cos_c = math.sin(d0) * math.sin(d) + math.cos(d0) * math.cos(d) * math.cos(a - a0)
    xi = math.cos(d) * math.sin(a - a0) / cos_c
    eta = (math.cos(d0) * math.sin(d) - math.sin(d0) * math.cos(d) * math.cos(a - a0)) / cos_c
    return math.degrees(xi), math.degrees(eta)
