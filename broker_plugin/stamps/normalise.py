"""Turn an alert's cutouts into a model :class:`~broker_plugin.records.Frame`.

The frame's ``data`` is the ``cutoutDifference``; its ``science`` and ``template`` planes are the
``cutoutScience`` and ``cutoutTemplate`` sent through the same resampler (:class:`.ResamplePlan`) onto
the same frame grid, each from its own header (Rubin) or the same fixed geometry (ZTF), so one frame
pixel is one patch of sky in all three. Cutouts on the difference's grid (same shape, pixel -> sky map
and source pixel, as surveys cut them) reuse its plan. The alert's ``psfFlux`` and ``psfFluxErr`` are copied.

Rubin: the cutout's header holds a local linear WCS (or, from other producers, a standard celestial
TAN header); its CD matrix, times 3600, is the pixel -> (east, north) [arcsec] map the resampler needs,
and the source sits at ``CRPIX`` (linear) or at the alert's (ra, dec) (celestial).

ZTF: cutouts carry no WCS. ZTF difference images are delivered north up and east left at 1.01"/px
(the camera is aligned with the equator to within about a degree, which is below what a 32-pixel frame
resolves); the source is at the cutout centre, or, for a cutout truncated at a CCD edge, at the place
``xpos``/``ypos`` imply. Pixel values are DN: flux [nJy] = DN * 10**(-0.4 (magzpsci - 31.4)), sign
flipped when ``isdiffpos`` is false. The science cutout is calibrated with the same ``magzpsci`` (it is
the image that zero point belongs to) and never sign-flipped; the template has no zero point in the
alert and keeps its DN.

Units of the science and template planes therefore differ by survey (nJy for Rubin and ZTF science, DN
for the ZTF template), and they need not agree: the model sees them only through
:func:`broker_plugin.inference.preprocess.normalise_static_image`, which subtracts each image's median
and divides by its own robust spread, so a zero point, a gain or a sky level cancels. Only the
difference keeps calibrated flux (the model's flux normalisation needs it).

The difference decides whether the alert can be used: a missing or bad difference raises a
:class:`~broker_plugin.exceptions.StampError` as before. A missing, null, corrupt, oversized, mis-shaped
or empty science or template cutout only costs its plane (``None``, which the model masks): the reason (the
:class:`StampError` reason the same cutout would give as a difference; ``missing_cutout`` for one the
decoder dropped, over ``max_cutout_bytes`` or not bytes) goes to the listeners of
:meth:`StampNormaliser.watch_missing_planes` (the service counts it in
``broker_plugin_cutout_planes_missing_total{plane,reason}``) and to the debug log. A ``psfFlux`` or
``psfFluxErr`` beyond the frame's flux bound (brighter than any real source) is dropped the same way
(plane ``photometry``, reason ``invalid_photometry``).

Every cutout is hostile input. In order: its size is bounded (gunzip stops at ``max_cutout_bytes``), its
structure is checked from the header cards before any pixel is allocated (:mod:`.fits_header`), WCS cards,
the pixel -> sky matrix and the source position are checked (:mod:`.checks`), and calibrated pixels
beyond :data:`~broker_plugin.records.MAX_PIXEL_FLUX_NJY` are refused. The science and template cutouts go
through every one of these checks (and their size through ``max_cutout_bytes``) before any of their
pixels is allocated. The frame itself passes
:func:`~broker_plugin.records.check_frame` before it is returned, so whatever the bytes,
:meth:`StampNormaliser.normalise` either returns a frame that keeps every frame invariant or raises a
:class:`~broker_plugin.exceptions.StampError`.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections.abc import Callable

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyWarning
from astropy.wcs import WCS

from broker_plugin.config import LimitsSettings, StampSettings
from broker_plugin.exceptions import (
    CutoutHeaderError,
    CutoutTooLargeError,
    CutoutValueError,
    CutoutWcsError,
    EmptyCutoutError,
    InvalidPhotometryError,
    MissingCutoutError,
    StampError,
)
from broker_plugin.records import (
    MAX_PIXEL_FLUX_NJY,
    Alert,
    Frame,
    StampFlag,
    Survey,
    ZtfCutoutContext,
    check_frame,
)
from broker_plugin.stamps.checks import (
    check_dn,
    check_njy,
    check_pixel_matrix,
    check_source,
    check_wcs_cards,
    flux_factor,
    is_finite_real,
)
from broker_plugin.stamps.fast_fits import linear_transform
from broker_plugin.stamps.fits_header import ImageHdu, locate_image, read_pixels
from broker_plugin.stamps.fits_io import gunzip, read_image
from broker_plugin.stamps.resample import ResamplePlan, samples_per_side

log = logging.getLogger(__name__)

#: AB zero point of nJy: m_AB = 31.4 - 2.5 log10(f / nJy).
NJY_AB_ZEROPOINT = 31.4
#: A ZTF cutout is 63 x 63 px when not truncated at a CCD edge.
ZTF_CUTOUT_SIDE = 63
#: The cards astropy.wcs is given: the primary WCS of an image (no alternates, no lookup tables), each
#: numeric one among those check_wcs_cards validates.
_WCS_CARD = re.compile(
    r"NAXIS\d?|WCSAXES|(?:CTYPE|CUNIT|CRPIX|CRVAL|CDELT|CROTA)\d|(?:CD|PC|PV|PS)\d_\d{1,2}"
    r"|(?:A|B|AP|BP)_(?:ORDER|\d{1,2}_\d{1,2})|LONPOLE|LATPOLE|RADESYS|EQUINOX"
)


def wcs_from_header(
    header: fits.Header, ra: float | None, dec: float | None, limits: LimitsSettings | None = None
) -> tuple[np.ndarray, tuple[float, float]]:
    """Linear pixel -> sky map and source position from a cutout header (astropy.wcs).

    Parameters
    ----------
    header
        The cutout's FITS header.
    ra, dec
        The alert's position [deg], used to place the source when the header is a celestial WCS.
    limits
        Plausible pixel-scale range (default ``LimitsSettings()``).

    Returns
    -------
    tuple
        ``(cd_arcsec, (x, y))``: 2x2 map pixel offsets -> (east, north) [arcsec], and the 0-based
        source pixel (finite).

    Raises
    ------
    CutoutHeaderError
        A WCS card that is not a finite number, or an absurd SIP order.
    CutoutWcsError
        No usable transform (missing CRPIX, unreadable header, implausible or singular matrix, a source
        the WCS cannot place).
    """
    if "CRPIX1" not in header or "CRPIX2" not in header:
        raise CutoutWcsError("cutout header has no CRPIX: no coordinate transform")
    try:
        # Only the primary WCS's own cards: astropy parses and verifies each card it reads (~0.1 ms), and
        # a hostile header may carry a thousand others.
        cards = [(key, header[key]) for key in header if _WCS_CARD.fullmatch(key)]
    except Exception as exc:  # VerifyError and friends on a card astropy cannot parse
        raise CutoutHeaderError(f"unparsable cutout header card: {type(exc).__name__}: {exc}") from exc
    check_wcs_cards(cards)
    try:
        with warnings.catch_warnings(), np.errstate(over="ignore", invalid="ignore"):
            # Non-standard cards are refused below, not warned about; PC x CDELT may overflow to inf,
            # which check_pixel_matrix refuses.
            warnings.simplefilter("ignore", AstropyWarning)
            wcs = WCS(fits.Header(cards), naxis=2, fix=False)
            cd_deg = np.asarray(wcs.wcs.get_pc() * wcs.wcs.get_cdelt()[:, None], dtype=np.float64)
    except Exception as exc:  # astropy.wcs raises several types on malformed headers
        raise CutoutWcsError(f"unreadable cutout WCS: {type(exc).__name__}: {exc}") from exc
    if wcs.has_celestial and wcs.wcs.lng == 1:
        cd_deg = cd_deg[::-1]  # DEC--TAN first: put the (east, north) rows in order
    with np.errstate(over="ignore", invalid="ignore"):
        cd_arcsec = check_pixel_matrix(cd_deg * 3600.0, limits or LimitsSettings())
    source = (float(wcs.wcs.crpix[0]) - 1.0, float(wcs.wcs.crpix[1]) - 1.0)
    if wcs.has_celestial and ra is not None and dec is not None:
        try:
            with warnings.catch_warnings(), np.errstate(all="ignore"):  # NaN out is refused below
                warnings.simplefilter("ignore", AstropyWarning)
                x, y = wcs.celestial.world_to_pixel_values(ra, dec)
            source = (float(x), float(y))
        except Exception as exc:
            raise CutoutWcsError(f"alert position not in cutout WCS: {exc}") from exc
    if not (math.isfinite(source[0]) and math.isfinite(source[1])):
        raise CutoutWcsError(f"cutout WCS places the source at a non-finite pixel {source}")
    return cd_arcsec, source


def ztf_source_pixel(shape: tuple[int, int], ctx: ZtfCutoutContext) -> tuple[float, float]:
    """0-based (x, y) of the candidate in a ZTF cutout, truncated at a CCD edge or not.

    ZTF cuts 63 x 63 px centred on the candidate; at a quadrant edge it keeps only the part on the CCD.
    If the candidate is within half a cutout of the low edge, the cutout starts at CCD pixel 1 and the
    candidate sits at ``pos - 1``; otherwise the truncation is on the high side and it stays at 31.

    Raises
    ------
    CutoutWcsError
        ``xpos`` or ``ypos`` is not a finite number.
    """
    half = ZTF_CUTOUT_SIDE // 2
    rows, cols = shape
    pos = []
    for side, ccd_pos in ((cols, ctx.xpos), (rows, ctx.ypos)):
        if ccd_pos is not None and not is_finite_real(ccd_pos):
            raise CutoutWcsError(f"ZTF candidate position {ctx.xpos!r}, {ctx.ypos!r} is not finite")
        if side >= ZTF_CUTOUT_SIDE or ccd_pos is None:
            pos.append((side - 1) / 2.0)
        elif ccd_pos - 1.0 < half:
            pos.append(float(round(ccd_pos)) - 1.0)
        else:
            pos.append(float(half))
    return pos[0], pos[1]


#: Label of a dropped ``psfFlux``/``psfFluxErr`` among the missing-plane reasons.
PHOTOMETRY = "photometry"
#: Reason of a plane lost to an unexpected exception (a bug, logged with its traceback).
PLANE_INTERNAL_ERROR = "internal_error"

#: Called with ``(plane, reason)`` for every science or template plane (or photometry) a frame lacks.
MissingPlaneListener = Callable[[str, str], None]


class StampNormaliser:
    """Cutouts -> frame, at the one fixed scale shared by training and serving.

    Parameters
    ----------
    settings
        Frame size, pixel scale and quality threshold (a trained model records them).
    limits
        Bounds on what a cutout may declare or inflate to, and the plausible pixel-scale range (default
        ``LimitsSettings()``; the service passes ``Settings.limits``).
    """

    def __init__(self, settings: StampSettings, limits: LimitsSettings | None = None) -> None:
        self._settings = settings
        self._limits = limits or LimitsSettings()
        self._listeners: list[MissingPlaneListener] = []

    def watch_missing_planes(self, listener: MissingPlaneListener) -> None:
        """Call ``listener(plane, reason)`` for every plane a normalised frame lacks.

        ``plane`` is ``science``, ``template`` or ``photometry``; ``reason`` a
        :class:`~broker_plugin.exceptions.StampError` reason (``missing_cutout`` for an absent cutout),
        ``invalid_photometry`` or ``internal_error``. Listeners run in the normalising thread, once the
        frame is made (an alert refused after all does not count).
        """
        self._listeners.append(listener)

    def normalise(self, alert: Alert) -> Frame:
        """Normalise the alert's cutouts into one frame.

        Returns
        -------
        Frame
            A frame that passes :func:`~broker_plugin.records.check_frame` for the configured size, with
            the science and template planes where the alert's cutouts allow (``None`` where not: see the
            module docstring) and the alert's ``psfFlux``/``psfFluxErr``.

        Raises
        ------
        StampError
            A subclass saying why the *difference* cutout cannot be used: ``missing_cutout``,
            ``corrupt_cutout`` (not gzip/FITS, truncated), ``cutout_too_large`` (bytes, inflated bytes,
            declared pixels or resampling points over the limits), ``bad_cutout_header`` (malformed
            structural or WCS card), ``bad_cutout_shape`` (not 2-D, sides out of range),
            ``bad_cutout_wcs`` (no, implausible or singular transform; source not placeable),
            ``bad_cutout_values`` (flux beyond the frame's bound, unusable zero point), ``empty_cutout``
            (too little of the frame covered) or ``invalid_frame`` (the frame breaks an invariant, e.g.
            the alert's band or time).
        """
        if not alert.cutoutDifference:
            raise MissingCutoutError("alert has no cutoutDifference")
        flags = StampFlag.NONE
        image, finite, cd_arcsec, source = self._read(alert, "difference", alert.cutoutDifference)
        if alert.survey is Survey.ZTF:
            ctx = self._ztf_context(alert)
            if not ctx.isdiffpos:
                image = -image
                flags |= StampFlag.SIGN_FLIPPED
            if min(image.shape) < ZTF_CUTOUT_SIDE:
                flags |= StampFlag.EDGE_TRUNCATED
        data, mask, flags, plan = self._resample(image, finite, cd_arcsec, source, flags)
        missing: list[tuple[str, str]] = []
        science = self._plane(alert, "science", alert.cutoutScience, missing, plan)
        template = self._plane(alert, "template", alert.cutoutTemplate, missing, plan)
        psf_flux, psf_flux_err = self._photometry(alert, missing)
        frame = Frame(
            data=data,
            mask=mask,
            flags=flags,
            band=alert.band,
            midpointMjdTai=alert.midpointMjdTai,
            diaSourceId=alert.diaSourceId,
            originalShape=(int(image.shape[0]), int(image.shape[1])),
            science=None if science is None else science[0],
            scienceMask=None if science is None else science[1],
            template=None if template is None else template[0],
            templateMask=None if template is None else template[1],
            psfFlux=psf_flux,
            psfFluxErr=psf_flux_err,
            history=alert.history,
        )
        check_frame(frame, self._settings.size)
        # Told only now: the planes of an alert refused after all (invalid_frame) are not counted.
        for plane, reason in missing:
            for listener in self._listeners:
                listener(plane, reason)
        return frame

    @staticmethod
    def _ztf_context(alert: Alert) -> ZtfCutoutContext:
        return alert.ztf or ZtfCutoutContext(magzpsci=NJY_AB_ZEROPOINT, isdiffpos=True)

    def _read(
        self, alert: Alert, plane: str, raw: bytes
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float]]:
        """Pixels (calibrated where the alert allows), their finite mask, pixel -> sky map and source pixel.

        ``plane`` is ``difference``, ``science`` or ``template``: it decides the ZTF calibration (the
        difference and the science image are in the science image's DN, the template in its own). The
        difference's sign is left to the caller.
        """
        if alert.survey is not Survey.ZTF:
            image, cd_arcsec, source = self._read_rubin(raw, alert)
            finite = np.isfinite(image)
            check_njy(image, finite)
            return image, finite, cd_arcsec, source
        image = self._read_pixels(gunzip(raw, self._limits.max_cutout_bytes))
        ctx = self._ztf_context(alert)
        scale = self._settings.ztf_pixel_scale_arcsec
        cd_arcsec = np.array([[-scale, 0.0], [0.0, scale]])
        source = ztf_source_pixel(image.shape, ctx)
        finite = np.isfinite(image)  # scaling by a positive factor and the sign flip keep it
        if plane == "template":
            check_njy(image, finite)  # DN, held to the same bound as a flux: no zero point to scale by
            return image, finite, cd_arcsec, source
        factor = flux_factor(ctx.magzpsci, NJY_AB_ZEROPOINT)
        # Checked before scaling, so the product below cannot overflow to inf.
        check_dn(image, finite, factor)
        return image * factor, finite, cd_arcsec, source

    def _plane(
        self,
        alert: Alert,
        plane: str,
        raw: bytes | None,
        missing: list[tuple[str, str]],
        difference: ResamplePlan,
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """A science or template plane ``(data, mask)`` on the frame grid, or ``None`` if unusable.

        The cutout goes through every check the difference does, its size first (an alert not made by
        the decoder may hold any), and is resampled with the ``difference``'s plan when it is on the same
        grid. Why a plane is missing is logged and appended to ``missing``.
        """
        try:
            if not raw:
                raise MissingCutoutError(f"alert has no cutout{plane.title()}")
            if len(raw) > self._limits.max_cutout_bytes:
                raise CutoutTooLargeError(
                    f"cutout{plane.title()} of {len(raw)} bytes exceeds "
                    f"max_cutout_bytes={self._limits.max_cutout_bytes}"
                )
            image, finite, cd_arcsec, source = self._read(alert, plane, raw)
            data, mask, _, _ = self._resample(image, finite, cd_arcsec, source, StampFlag.NONE, difference)
            # The frame's bound, checked here so that check_frame can never refuse the alert for a plane:
            # a frame pixel sums several cutout pixels, so pixels within the bound can add up beyond it.
            if float(np.abs(data).max(initial=0.0)) > MAX_PIXEL_FLUX_NJY:
                raise CutoutValueError(f"a {plane} frame pixel exceeds {MAX_PIXEL_FLUX_NJY:g}")
        except StampError as exc:
            missing.append(self._missing(alert, plane, exc.reason, str(exc)))
            return None
        except Exception:  # a bug met by this cutout: the plane is lost, the alert (and the service) not
            log.exception("unexpected error normalising cutout%s of %d", plane.title(), alert.diaSourceId)
            missing.append(self._missing(alert, plane, PLANE_INTERNAL_ERROR, "unexpected error"))
            return None
        return data, mask

    def _photometry(self, alert: Alert, missing: list[tuple[str, str]]) -> tuple[float | None, float | None]:
        """``psfFlux`` and ``psfFluxErr`` as the frame may hold them (both dropped if either is beyond)."""
        flux, err = alert.psfFlux, alert.psfFluxErr
        # The decoder checks both are finite (and err >= 0); the frame also bounds them, and only a
        # hostile alert (ZTF magpsf < 1.4, or a Rubin flux of 1e13 nJy) exceeds that bound.
        if any(value is not None and abs(value) > MAX_PIXEL_FLUX_NJY for value in (flux, err)):
            why = f"psfFlux {flux}, psfFluxErr {err} beyond {MAX_PIXEL_FLUX_NJY:g} nJy"
            missing.append(self._missing(alert, PHOTOMETRY, InvalidPhotometryError.reason, why))
            return None, None
        return flux, err

    @staticmethod
    def _missing(alert: Alert, plane: str, reason: str, why: str) -> tuple[str, str]:
        log.debug("alert %d: no %s plane (%s): %s", alert.diaSourceId, plane, reason, why)
        return plane, reason

    def _locate(self, raw: bytes) -> ImageHdu:
        """The cutout's image HDU, its structure and its WCS and scaling cards checked."""
        hdu = locate_image(raw, self._limits)
        check_wcs_cards(hdu.cards.items())
        return hdu

    def _read_pixels(self, raw: bytes) -> np.ndarray:
        """Pixels of a checked cutout: the fast reader when it understands the file, else astropy."""
        image = read_pixels(raw, self._locate(raw))
        return read_image(raw, self._limits)[0] if image is None else image

    def _read_rubin(self, raw: bytes, alert: Alert) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
        """Pixels, linear sky transform and source pixel of a Rubin cutout from its own header.

        The fast path, else astropy.
        """
        hdu = self._locate(raw)
        if "CRPIX1" not in hdu.cards or "CRPIX2" not in hdu.cards:  # refused here, not after astropy's work
            raise CutoutWcsError("cutout header has no CRPIX: no coordinate transform")
        image = read_pixels(raw, hdu)
        transform = (
            linear_transform(hdu.cards, alert.ra, alert.dec, self._limits) if image is not None else None
        )
        if image is None or transform is None:
            image, header = read_image(raw, self._limits)
            cd_arcsec, source = wcs_from_header(header, alert.ra, alert.dec, self._limits)
            return image, cd_arcsec, source
        return image, *transform

    def _plan(
        self, shape: tuple[int, int], cd_arcsec: np.ndarray, source: tuple[float, float]
    ) -> ResamplePlan:
        """The resampling plan of a checked cutout geometry.

        Raises
        ------
        CutoutWcsError, CutoutTooLargeError
            The source is too far from the cutout, or resampling would take too many points.
        """
        size, scale = self._settings.size, self._settings.pixel_scale_arcsec
        source = check_source(source, shape, cd_arcsec, size, scale)
        points = (size * samples_per_side(cd_arcsec, scale)) ** 2
        if points > self._limits.max_cutout_pixels:
            # Only a cutout far finer than the frame gets here: never sample more points than the largest
            # cutout may hold pixels.
            raise CutoutTooLargeError(
                f"resampling this cutout takes {points} points, more than max_cutout_pixels="
                f"{self._limits.max_cutout_pixels}"
            )
        return ResamplePlan.build(shape, cd_arcsec, source, size, scale)

    def _resample(
        self,
        image: np.ndarray,
        finite: np.ndarray,
        cd_arcsec: np.ndarray,
        source: tuple[float, float],
        flags: StampFlag,
        reuse: ResamplePlan | None = None,
    ) -> tuple[np.ndarray, np.ndarray, StampFlag, ResamplePlan]:
        """A checked cutout on the frame grid: ``(data, mask, flags, plan)``.

        ``reuse`` is taken as the plan when the cutout is on its grid; else the geometry's own is built.

        Raises
        ------
        EmptyCutoutError
            Too little of the frame is covered by finite cutout pixels.
        CutoutWcsError, CutoutTooLargeError
            The source is too far from the cutout, or resampling would take too many points.
        """
        if not finite.any():
            raise EmptyCutoutError("cutout has no finite pixel")
        if not finite.all():
            flags |= StampFlag.NONFINITE_PIXELS
        on_grid = reuse is not None and reuse.fits(image.shape, cd_arcsec, source)
        plan = reuse if on_grid and reuse is not None else self._plan(image.shape, cd_arcsec, source)
        data, mask = plan.apply(image, finite)
        valid = float(mask.mean())
        if valid < self._settings.min_valid_fraction:
            raise EmptyCutoutError(
                f"only {valid:.1%} of the frame is covered by finite cutout pixels "
                f"(minimum {self._settings.min_valid_fraction:.0%})"
            )
        if valid < 1.0:
            flags |= StampFlag.PARTIAL_COVERAGE
        if np.sqrt(abs(np.linalg.det(plan.cd_arcsec))) > self._settings.pixel_scale_arcsec * 1.001:
            flags |= StampFlag.UPSAMPLED
        return data, mask, flags, plan
