"""Turn an alert's ``cutoutDifference`` into a model :class:`~broker_plugin.records.Frame`.

Rubin: the cutout's header holds a local linear WCS (or, from other producers, a standard celestial
TAN header); its CD matrix, times 3600, is the pixel -> (east, north) [arcsec] map the resampler needs,
and the source sits at ``CRPIX`` (linear) or at the alert's (ra, dec) (celestial).

ZTF: cutouts carry no WCS. ZTF difference images are delivered north up and east left at 1.01"/px
(the camera is aligned with the equator to within about a degree, which is below what a 32-pixel frame
resolves); the source is at the cutout centre, or, for a cutout truncated at a CCD edge, at the place
``xpos``/``ypos`` imply. Pixel values are DN: flux [nJy] = DN * 10**(-0.4 (magzpsci - 31.4)), sign
flipped when ``isdiffpos`` is false.
"""

from __future__ import annotations

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from broker_plugin.config import StampSettings
from broker_plugin.exceptions import CutoutWcsError, EmptyCutoutError, MissingCutoutError
from broker_plugin.records import Alert, Frame, StampFlag, Survey, ZtfCutoutContext
from broker_plugin.stamps.fast_fits import linear_transform, parse_primary_image
from broker_plugin.stamps.fits_io import check_shape, gunzip, read_image
from broker_plugin.stamps.resample import resample_to_frame

#: AB zero point of nJy: m_AB = 31.4 - 2.5 log10(f / nJy).
NJY_AB_ZEROPOINT = 31.4
#: A ZTF cutout is 63 x 63 px when not truncated at a CCD edge.
ZTF_CUTOUT_SIDE = 63


def wcs_from_header(header: fits.Header, ra: float | None, dec: float | None) -> tuple[np.ndarray, tuple]:
    """Linear pixel -> sky map and source position from a cutout header.

    Parameters
    ----------
    header
        The cutout's FITS header.
    ra, dec
        The alert's position [deg], used to place the source when the header is a celestial WCS.

    Returns
    -------
    tuple
        ``(cd_arcsec, (x, y))``: 2x2 map pixel offsets -> (east, north) [arcsec], and the 0-based
        source pixel.

    Raises
    ------
    CutoutWcsError
        No usable transform (missing CRPIX/CD, singular matrix, unreadable header).
    """
    if "CRPIX1" not in header or "CRPIX2" not in header:
        raise CutoutWcsError("cutout header has no CRPIX: no coordinate transform")
    try:
        wcs = WCS(header, naxis=2, fix=False)
        cd_deg = np.asarray(wcs.wcs.get_pc() * wcs.wcs.get_cdelt()[:, None], dtype=np.float64)
    except Exception as exc:  # astropy.wcs raises several types on malformed headers
        raise CutoutWcsError(f"unreadable cutout WCS: {type(exc).__name__}: {exc}") from exc
    if wcs.has_celestial and wcs.wcs.lng == 1:
        cd_deg = cd_deg[::-1]  # DEC--TAN first: put the (east, north) rows in order
    cd_arcsec = _usable_matrix(cd_deg * 3600.0)
    source = (float(wcs.wcs.crpix[0]) - 1.0, float(wcs.wcs.crpix[1]) - 1.0)
    if wcs.has_celestial and ra is not None and dec is not None:
        try:
            x, y = wcs.celestial.world_to_pixel_values(ra, dec)
            source = (float(x), float(y))
        except Exception as exc:
            raise CutoutWcsError(f"alert position not in cutout WCS: {exc}") from exc
    return cd_arcsec, source


def _usable_matrix(cd_arcsec: np.ndarray) -> np.ndarray:
    """``cd_arcsec`` itself, or :class:`CutoutWcsError` if it is singular or not finite."""
    if not np.all(np.isfinite(cd_arcsec)) or abs(np.linalg.det(cd_arcsec)) < 1e-12:
        raise CutoutWcsError("cutout WCS matrix is singular or not finite")
    return cd_arcsec


def _parse_fast(raw: bytes) -> tuple[np.ndarray, dict[str, object]] | None:
    """The fast reader's ``(pixels, cards)`` (shape checked), or ``None`` when astropy must read it."""
    parsed = parse_primary_image(raw)
    if parsed is not None:
        check_shape(parsed[0])
    return parsed


def ztf_source_pixel(shape: tuple[int, int], ctx: ZtfCutoutContext) -> tuple[float, float]:
    """0-based (x, y) of the candidate in a ZTF cutout, truncated at a CCD edge or not.

    ZTF cuts 63 x 63 px centred on the candidate; at a quadrant edge it keeps only the part on the CCD.
    If the candidate is within half a cutout of the low edge, the cutout starts at CCD pixel 1 and the
    candidate sits at ``pos - 1``; otherwise the truncation is on the high side and it stays at 31.
    """
    half = ZTF_CUTOUT_SIDE // 2
    rows, cols = shape
    pos = []
    for side, ccd_pos in ((cols, ctx.xpos), (rows, ctx.ypos)):
        if side >= ZTF_CUTOUT_SIDE or ccd_pos is None:
            pos.append((side - 1) / 2.0)
        elif ccd_pos - 1.0 < half:
            pos.append(float(round(ccd_pos)) - 1.0)
        else:
            pos.append(float(half))
    return pos[0], pos[1]


class StampNormaliser:
    """Cutout -> frame, at the one fixed scale shared by training and serving.

    Parameters
    ----------
    settings
        Frame size, pixel scale and quality threshold (a trained model records them).
    """

    def __init__(self, settings: StampSettings) -> None:
        self._settings = settings

    def normalise(self, alert: Alert) -> Frame:
        """Normalise the alert's ``cutoutDifference``.

        Raises
        ------
        StampError
            A subclass saying why the cutout cannot be used (missing, corrupt, bad WCS or shape, empty).
        """
        if not alert.cutoutDifference:
            raise MissingCutoutError("alert has no cutoutDifference")
        flags = StampFlag.NONE
        if alert.survey is Survey.ZTF:
            image = self._read_pixels(gunzip(alert.cutoutDifference))
            ctx = alert.ztf or ZtfCutoutContext(magzpsci=NJY_AB_ZEROPOINT, isdiffpos=True)
            scale = self._settings.ztf_pixel_scale_arcsec
            cd_arcsec = np.array([[-scale, 0.0], [0.0, scale]])
            source = ztf_source_pixel(image.shape, ctx)
            image = image * 10.0 ** (-0.4 * (ctx.magzpsci - NJY_AB_ZEROPOINT))
            if not ctx.isdiffpos:
                image = -image
                flags |= StampFlag.SIGN_FLIPPED
            if min(image.shape) < ZTF_CUTOUT_SIDE:
                flags |= StampFlag.EDGE_TRUNCATED
        else:
            image, cd_arcsec, source = self._read_rubin(alert)
        return self._resample(alert, image, cd_arcsec, source, flags)

    @staticmethod
    def _read_pixels(raw: bytes) -> np.ndarray:
        """Pixels of a cutout: the fast reader when it understands the file, else astropy."""
        parsed = _parse_fast(raw)
        return read_image(raw)[0] if parsed is None else parsed[0]

    @staticmethod
    def _read_rubin(alert: Alert) -> tuple[np.ndarray, np.ndarray, tuple]:
        """Pixels, linear sky transform and source pixel of a Rubin cutout (fast path, else astropy)."""
        raw = alert.cutoutDifference or b""
        parsed = _parse_fast(raw)
        transform = linear_transform(parsed[1], alert.ra, alert.dec) if parsed is not None else None
        if parsed is None or transform is None:
            image, header = read_image(raw)
            cd_arcsec, source = wcs_from_header(header, alert.ra, alert.dec)
            return image, cd_arcsec, source
        cd_arcsec, source = transform
        return parsed[0], _usable_matrix(cd_arcsec), source

    def _resample(
        self, alert: Alert, image: np.ndarray, cd_arcsec: np.ndarray, source: tuple, flags: StampFlag
    ) -> Frame:
        size, scale = self._settings.size, self._settings.pixel_scale_arcsec
        finite = np.isfinite(image)
        if not finite.any():
            raise EmptyCutoutError("cutout has no finite pixel")
        if not finite.all():
            flags |= StampFlag.NONFINITE_PIXELS
        data, mask = resample_to_frame(image, cd_arcsec, source, size, scale)
        valid = float(mask.mean())
        if valid < self._settings.min_valid_fraction:
            raise EmptyCutoutError(
                f"only {valid:.1%} of the frame is covered by finite cutout pixels "
                f"(minimum {self._settings.min_valid_fraction:.0%})"
            )
        if valid < 1.0:
            flags |= StampFlag.PARTIAL_COVERAGE
        if np.sqrt(abs(np.linalg.det(cd_arcsec))) > scale * 1.001:
            flags |= StampFlag.UPSAMPLED
        return Frame(
            data=data,
            mask=mask,
            flags=flags,
            band=alert.band,
            midpointMjdTai=alert.midpointMjdTai,
            diaSourceId=alert.diaSourceId,
            originalShape=(int(image.shape[0]), int(image.shape[1])),
        )
