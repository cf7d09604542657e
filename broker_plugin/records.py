"""The records that flow through the pipeline, in the alert's own names.

Plain data, no I/O: ``serde`` builds :class:`Alert` from bytes, ``stamps`` builds :class:`Frame` from an
alert's cutout. Field names follow the Rubin alert schema (``diaObjectId``, ``midpointMjdTai``, ``band``,
``psfFlux``) so that a reader can grep one name from the Avro schema to the model input.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

import numpy as np

from broker_plugin.exceptions import InvalidFrameError

#: The bands a frame may carry, in the order of the model's band ids (ugriz, plus Rubin's y).
BANDS: tuple[str, ...] = ("u", "g", "r", "i", "z", "y")


class Survey(enum.StrEnum):
    """Where an alert comes from; decides how its cutout is read."""

    RUBIN = "rubin"
    ZTF = "ztf"


@dataclass(frozen=True, slots=True)
class ZtfCutoutContext:
    """What a ZTF cutout needs from its alert to become calibrated flux.

    Attributes
    ----------
    magzpsci
        Photometric zero point of the science image [mag]; flux [nJy] = DN * 10**(-0.4 (magzpsci - 31.4)).
    isdiffpos
        ``True`` when the difference is science - template (``isdiffpos`` 't' or '1'); ``False`` means
        template - science, and the cutout's sign is flipped.
    xpos, ypos
        Position of the candidate on the readout quadrant [pixels, 1-based]: places the source in a
        cutout truncated at a CCD edge.
    """

    magzpsci: float
    isdiffpos: bool
    xpos: float | None = None
    ypos: float | None = None


@dataclass(frozen=True, slots=True)
class Alert:
    """One detection, whatever the survey.

    Attributes
    ----------
    survey
        Rubin or ZTF.
    diaObjectId
        Rubin ``diaObjectId``; for ZTF the ``objectId`` string (e.g. ``"ZTF21acqeepb"``), kept as is.
    diaSourceId
        Rubin ``diaSourceId``; for ZTF the ``candid``.
    midpointMjdTai
        Exposure mid-point [MJD, TAI]. ZTF's ``jd`` (UTC, exposure start) is converted.
    band
        One of :data:`BANDS` (ZTF ``fid`` 1, 2, 3 -> g, r, i).
    ra, dec
        Position of the detection [deg].
    psfFlux, psfFluxErr
        PSF flux on the difference image and its uncertainty [nJy]; ``None`` when the alert has none.
    cutoutDifference
        The raw difference-image cutout bytes (Rubin: FITS; ZTF: gzipped FITS), ``None`` if absent; the
        decoder bounds it by ``max_cutout_bytes`` (an alert without a usable difference is rejected).
    schemaVersion
        The writer schema's version, e.g. ``"11.1"`` or ``"4.02"``.
    ztf
        ZTF calibration context of the cutout; ``None`` for Rubin.
    cutoutScience, cutoutTemplate
        The raw science-image and template (reference) cutout bytes, in the same encoding as
        ``cutoutDifference``; ``None`` if absent, not bytes or over ``max_cutout_bytes``. Unlike the
        difference, a cutout the decoder or the normaliser cannot use costs the frame that plane, never
        the alert.
    history
        The photometry of the object's earlier epochs the alert carried, ``None`` when the decoder read
        none (a malformed history costs the alert its history, never the alert).
    """

    survey: Survey
    diaObjectId: int | str
    diaSourceId: int
    midpointMjdTai: float
    band: str
    ra: float
    dec: float
    psfFlux: float | None
    psfFluxErr: float | None
    cutoutDifference: bytes | None = field(repr=False)
    schemaVersion: str = ""
    ztf: ZtfCutoutContext | None = None
    cutoutScience: bytes | None = field(default=None, repr=False)
    cutoutTemplate: bytes | None = field(default=None, repr=False)
    history: PhotometryHistory | None = field(default=None, repr=False, compare=False)


class StampFlag(enum.IntFlag):
    """Quality flags of a normalised frame (bit mask, stored with the frame)."""

    NONE = 0
    #: Part of the frame lies outside the cutout (small cutout or CCD edge); those pixels are masked.
    PARTIAL_COVERAGE = 1
    #: Some cutout pixels were NaN or infinite; they are masked.
    NONFINITE_PIXELS = 2
    #: A ZTF cutout truncated at a CCD edge.
    EDGE_TRUNCATED = 4
    #: The sign was flipped (ZTF isdiffpos = 'f').
    SIGN_FLIPPED = 8
    #: The cutout's pixels are coarser than the frame's: the frame oversamples it (interpolated).
    UPSAMPLED = 16


@dataclass(frozen=True, slots=True)
class PhotometryHistory:
    """The photometry an alert carries about its object's earlier epochs, as arrays (any order).

    Rubin: the ``prvDiaSources`` (detections) and ``prvDiaForcedSources`` (forced PSF photometry at the
    object's position on every visit, detected or not, over the last 12 months). ZTF: ``prv_candidates``
    detections and non-detection limits (a limit is written as flux 0 with the limit's 1-sigma error), and
    the forced photometry ``fp_hists`` where the schema has it. The alert's own detection is not in it.

    Attributes
    ----------
    midpointMjdTai
        ``(n,)`` float64 exposure mid-points [MJD, TAI].
    band
        ``(n,)`` int8 index into :data:`BANDS`.
    psfFlux, psfFluxErr
        ``(n,)`` float64 PSF flux on the difference image and its 1-sigma error [nJy].
    detected
        ``(n,)`` bool: the epoch was a detection (``prvDiaSources`` / a ZTF candidate), not only forced.
    """

    midpointMjdTai: np.ndarray
    band: np.ndarray
    psfFlux: np.ndarray
    psfFluxErr: np.ndarray
    detected: np.ndarray

    def __len__(self) -> int:
        return len(self.midpointMjdTai)

    @classmethod
    def empty(cls) -> PhotometryHistory:
        """A history with no epoch."""
        return cls(np.zeros(0), np.zeros(0, np.int8), np.zeros(0), np.zeros(0), np.zeros(0, bool))

    @classmethod
    def from_points(
        cls,
        mjd: np.ndarray | list[float],
        band: np.ndarray | list[int],
        flux: np.ndarray | list[float],
        flux_err: np.ndarray | list[float],
        detected: np.ndarray | list[bool],
    ) -> PhotometryHistory:
        """Build a history keeping only the well-formed points.

        A point is kept when its time is finite and in :data:`MJD_RANGE`, its band index valid, its flux
        finite and within :data:`MAX_PIXEL_FLUX_NJY` and its error finite, positive and within it too;
        the others are dropped (a history is side information: a bad point never rejects an alert).
        """
        mjd_a = np.asarray(mjd, np.float64).ravel()
        band_a = np.asarray(band, np.int64).ravel()
        flux_a = np.asarray(flux, np.float64).ravel()
        err_a = np.asarray(flux_err, np.float64).ravel()
        det_a = np.asarray(detected, bool).ravel()
        n = len(mjd_a)
        if not len(band_a) == len(flux_a) == len(err_a) == len(det_a) == n:
            raise ValueError("history arrays differ in length")
        with np.errstate(invalid="ignore"):
            keep = (
                np.isfinite(mjd_a) & (mjd_a >= MJD_RANGE[0]) & (mjd_a <= MJD_RANGE[1])
                & (band_a >= 0) & (band_a < len(BANDS))
                & np.isfinite(flux_a) & (np.abs(flux_a) <= MAX_PIXEL_FLUX_NJY)
                & np.isfinite(err_a) & (err_a > 0) & (err_a <= MAX_PIXEL_FLUX_NJY)
            )  # fmt: skip
        return cls(mjd_a[keep], band_a[keep].astype(np.int8), flux_a[keep], err_a[keep], det_a[keep])


@dataclass(frozen=True, slots=True)
class Frame:
    """One normalised single-band stamp: the model's unit of input.

    Attributes
    ----------
    data
        ``(size, size)`` float32 difference flux per frame pixel [nJy], north up and east left (row 0 is
        the southern edge, column 0 the eastern edge, as FITS displays with origin at the lower left).
        Masked pixels are 0.
    mask
        ``(size, size)`` bool, ``True`` where ``data`` is measured; masked pixels are never invented.
    flags
        :class:`StampFlag` bits.
    band, midpointMjdTai, diaSourceId
        Copied from the alert.
    originalShape
        Shape of the cutout the frame was made from (rows, columns).
    science, scienceMask
        The science cutout on the same frame grid (same resampler), in the cutout's own flux units (nJy
        where the alert calibrates it; the model's normalisation of static-sky images is scale free),
        masked pixels 0; both ``None`` when the alert has no usable science cutout.
    template, templateMask
        The template (reference) cutout, likewise.
    psfFlux, psfFluxErr
        The alert's PSF flux on the difference image and its error [nJy]; ``None`` when absent.
    history
        The photometry of earlier epochs the alert carried (:class:`PhotometryHistory`), ``None`` when it
        carried none or the frame was read back from the state store (a history is only used for the
        output of the alert that brought it, never stored).
    """

    data: np.ndarray
    mask: np.ndarray
    flags: StampFlag
    band: str
    midpointMjdTai: float
    diaSourceId: int
    originalShape: tuple[int, int] = field(default=(0, 0))
    science: np.ndarray | None = field(default=None, repr=False)
    scienceMask: np.ndarray | None = field(default=None, repr=False)
    template: np.ndarray | None = field(default=None, repr=False)
    templateMask: np.ndarray | None = field(default=None, repr=False)
    psfFlux: float | None = None
    psfFluxErr: float | None = None
    history: PhotometryHistory | None = field(default=None, repr=False, compare=False)


#: Largest difference flux a frame pixel may hold [nJy] (AB magnitude about 1.4 in one pixel): brighter than
#: any saturated star, yet small enough that sums over a window never overflow float32.
MAX_PIXEL_FLUX_NJY = 1e12
#: Exposure mid-points a frame may carry [MJD]: 1968 to 2132, wider than every survey's era.
MJD_RANGE = (40_000.0, 100_000.0)


def check_frame(frame: Frame, size: int | None = None) -> Frame:
    """Return ``frame`` if it keeps every frame invariant, else raise :class:`InvalidFrameError`.

    The invariants: square 2-D float32 ``data`` (of side ``size`` if given), a bool ``mask`` of the same
    shape, every pixel finite and within :data:`MAX_PIXEL_FLUX_NJY`, masked pixels 0, a finite
    ``midpointMjdTai`` in :data:`MJD_RANGE`, a band of :data:`BANDS` and an integer ``diaSourceId``. The
    normaliser checks every frame it makes, and the state stores check every frame they read, so no
    frame that could poison the model is ever stored or used.
    """
    data, mask = frame.data, frame.mask
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.dtype != np.float32:
        raise InvalidFrameError("frame data is not a 2-D float32 array")
    if data.shape[0] != data.shape[1] or (size is not None and data.shape[0] != size):
        raise InvalidFrameError(f"frame shape {data.shape} is not {size or 'square'}")
    if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_ or mask.shape != data.shape:
        raise InvalidFrameError("frame mask is not a bool array of the data's shape")
    if not np.isfinite(data).all():
        raise InvalidFrameError("frame holds non-finite pixels")
    if float(np.abs(data).max(initial=0.0)) > MAX_PIXEL_FLUX_NJY:
        raise InvalidFrameError(f"frame pixel beyond {MAX_PIXEL_FLUX_NJY:g} nJy")
    if data[~mask].any():
        raise InvalidFrameError("masked frame pixels are not 0")
    mjd = frame.midpointMjdTai
    if not isinstance(mjd, float | int) or not math.isfinite(mjd) or not MJD_RANGE[0] <= mjd <= MJD_RANGE[1]:
        raise InvalidFrameError(f"frame midpointMjdTai {mjd!r} outside {MJD_RANGE}")
    if frame.band not in BANDS:
        raise InvalidFrameError(f"frame band {frame.band!r} not one of {BANDS}")
    if not isinstance(frame.diaSourceId, int | np.integer):
        raise InvalidFrameError(f"frame diaSourceId {frame.diaSourceId!r} is not an integer")
    for name in ("science", "template"):
        _check_plane(name, getattr(frame, name), getattr(frame, f"{name}Mask"), data.shape)
    for name in ("psfFlux", "psfFluxErr"):
        value = getattr(frame, name)
        if value is not None and (
            not isinstance(value, float | int) or not math.isfinite(value) or abs(value) > MAX_PIXEL_FLUX_NJY
        ):
            raise InvalidFrameError(f"frame {name} {value!r} is not a finite flux")
    if frame.psfFluxErr is not None and frame.psfFluxErr < 0:
        raise InvalidFrameError(f"frame psfFluxErr {frame.psfFluxErr!r} is negative")
    return frame


def _check_plane(
    name: str, plane: np.ndarray | None, mask: np.ndarray | None, shape: tuple[int, ...]
) -> None:
    """Check a science or template plane as the difference: both or neither of image and mask."""
    if plane is None and mask is None:
        return
    if not isinstance(plane, np.ndarray) or plane.dtype != np.float32 or plane.shape != shape:
        raise InvalidFrameError(f"frame {name} is not a float32 array of shape {shape}")
    if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_ or mask.shape != shape:
        raise InvalidFrameError(f"frame {name}Mask is not a bool array of shape {shape}")
    if not np.isfinite(plane).all() or float(np.abs(plane).max(initial=0.0)) > MAX_PIXEL_FLUX_NJY:
        raise InvalidFrameError(
            f"frame {name} holds non-finite pixels or pixels beyond {MAX_PIXEL_FLUX_NJY:g}"
        )
    if plane[~mask].any():
        raise InvalidFrameError(f"masked frame {name} pixels are not 0")


@dataclass(frozen=True, slots=True)
class ClassProbability:
    """One class's ensemble-mean probability and its spread across members."""

    name: str
    probability: float
    spread: float


@dataclass(frozen=True, slots=True)
class Classification:
    """What the plugin publishes for an object after one of its alerts (schema ``broker_plugin`` 1.0).

    See ``broker_plugin/schemas/1/0/broker_plugin.v1_0.classification.avsc`` for every field's unit.
    """

    diaObjectId: int | str
    diaSourceId: int
    survey: Survey
    midpointMjdTai: float
    predictedClass: str
    classes: tuple[ClassProbability, ...]
    nFrames: int
    bandsUsed: tuple[str, ...]
    firstMidpointMjdTai: float
    modelName: str
    modelVersion: str
    modelChecksum: str
    ensembleSize: int
    alertTimestamp: int | None
    publishTimestamp: int
    pluginVersion: str
