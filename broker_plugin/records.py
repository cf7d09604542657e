"""The records that flow through the pipeline, in the alert's own names.

Plain data, no I/O: ``serde`` builds :class:`Alert` from bytes, ``stamps`` builds :class:`Frame` from an
alert's cutout. Field names follow the Rubin alert schema (``diaObjectId``, ``midpointMjdTai``, ``band``,
``psfFlux``) so that a reader can grep one name from the Avro schema to the model input.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

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
        The raw difference-image cutout bytes (Rubin: FITS; ZTF: gzipped FITS), ``None`` if absent.
    schemaVersion
        The writer schema's version, e.g. ``"11.1"`` or ``"4.02"``.
    ztf
        ZTF calibration context of the cutout; ``None`` for Rubin.
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
    """

    data: np.ndarray
    mask: np.ndarray
    flags: StampFlag
    band: str
    midpointMjdTai: float
    diaSourceId: int
    originalShape: tuple[int, int] = field(default=(0, 0))


@dataclass(frozen=True, slots=True)
class ClassProbability:
    """One class's ensemble-mean probability and its spread across members."""

    name: str
    probability: float
    spread: float


@dataclass(frozen=True, slots=True)
class Classification:
    """What the plugin publishes for an object after one of its alerts (schema ``broker_plugin`` 1.0).

    See ``schemas/broker_plugin/1/0/broker_plugin.v1_0.classification.avsc`` for every field's unit.
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
