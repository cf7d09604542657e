"""ZTF alerts: Avro record -> :class:`~broker_plugin.records.Alert`.

ZTF sends every Kafka message as a complete Avro container file (schema embedded), one alert per file.
Ids are kept as ZTF has them: ``objectId`` (a string) and ``candid``. Times: ``candidate.jd`` is the
exposure *start* in UTC; the mid-point is half the exposure later, and TAI is UTC + 37 s for every date
since 2017 (no leap second since), which covers all of ZTF.
"""

from __future__ import annotations

from typing import Any

from broker_plugin.config import LimitsSettings
from broker_plugin.exceptions import (
    InvalidBandError,
    InvalidFieldError,
    InvalidPhotometryError,
    InvalidPositionError,
    InvalidTimeError,
    MissingFieldError,
    UnsupportedAlertError,
)
from broker_plugin.records import Alert, Survey, ZtfCutoutContext
from broker_plugin.serde import fields
from broker_plugin.serde.history_points import history_of
from broker_plugin.serde.ztf_conventions import (
    DEFAULT_EXPTIME_S,
    JD_TO_MJD,
    MAG_ERROR_RANGE,
    MAG_RANGE,
    NJY_ZEROPOINT,
    TAI_MINUS_UTC_DAYS,
    ZEROPOINT_RANGE,
    ZTF_BANDS,
)

_DEFAULT_LIMITS = LimitsSettings()


def is_ztf_record(record: dict[str, Any]) -> bool:
    """Whether a decoded record looks like a ZTF alert."""
    return "candidate" in record and "objectId" in record


def ztf_record_to_alert(record: dict[str, Any], limits: LimitsSettings | None = None) -> Alert:
    """Map one ZTF alert record to a validated :class:`Alert`.

    Rules: ``objectId`` 1-32 printable characters without blanks; ``candid`` an integer within int64;
    ``jd`` finite, ``exptime`` null or in [0, 3600] s, and the exposure mid-point they give within
    :data:`~broker_plugin.records.MJD_RANGE`; ``fid`` 1, 2 or 3; ``ra`` in [0, 360), ``dec`` in
    [-90, 90]; ``magpsf`` null or in [-5, 40] mag and ``sigmapsf`` null or in [0, 10] mag (so the flux
    10**(-0.4 (magpsf - 31.4)) nJy and its error are finite); ``magzpsci`` in [15, 40] mag; ``xpos`` and
    ``ypos`` finite or null; ``isdiffpos`` t/f/1/0/true/false; ``cutoutDifference`` null or a record whose
    ``stampData`` is bytes (at most ``limits.max_cutout_bytes``) or null; ``schemavsn`` a short string.
    ``cutoutScience`` and ``cutoutTemplate``: their ``stampData`` (gzipped FITS) kept when bytes within
    the same limit, else None: an unusable one costs the frame its plane, never the alert.

    Raises
    ------
    UnsupportedAlertError
        The record has no ``candidate`` record.
    MissingFieldError
        A field the pipeline needs is null.
    InvalidFieldError
        A subclass naming the field of the wrong type, not finite or out of range.
    ResourceLimitError
        The cutout is larger than the limit.
    """
    limits = limits or _DEFAULT_LIMITS
    candidate = record.get("candidate")
    if not isinstance(candidate, dict):
        raise UnsupportedAlertError("record has no candidate: not a ZTF alert")
    required = {k: candidate.get(k) for k in ("candid", "jd", "fid", "ra", "dec", "magzpsci", "isdiffpos")}
    required["objectId"] = record.get("objectId")
    missing = [k for k, v in required.items() if v is None]
    if missing:
        raise MissingFieldError(
            f"ZTF candidate {fields.show(required['candid'])} has null {', '.join(missing)}"
        )
    fid = required["fid"]
    if not isinstance(fid, int) or isinstance(fid, bool) or fid not in ZTF_BANDS:
        raise InvalidBandError(f"ZTF fid {fields.show(fid)} is not 1, 2 or 3")
    jd = fields.number(required["jd"], "jd", InvalidTimeError)
    exptime = fields.optional_number(candidate.get("exptime"), "exptime", InvalidTimeError, 0.0, 3600.0)
    mjd_tai = jd - JD_TO_MJD + (exptime or DEFAULT_EXPTIME_S) / 2.0 / 86400.0 + TAI_MINUS_UTC_DAYS
    ra, dec = fields.ra_dec(required["ra"], required["dec"])
    isdiffpos = fields.flag(required["isdiffpos"], "isdiffpos")
    magpsf = fields.optional_number(candidate.get("magpsf"), "magpsf", InvalidPhotometryError, *MAG_RANGE)
    sigmapsf = fields.optional_number(
        candidate.get("sigmapsf"), "sigmapsf", InvalidPhotometryError, *MAG_ERROR_RANGE
    )
    flux = err = None
    if magpsf is not None:
        # magpsf is the PSF-fit magnitude of |difference|; sign from isdiffpos. Its range keeps the flux
        # (and its error) finite: 10**(-0.4 (-5 - 31.4)) is 3.6e14 nJy.
        flux = 10.0 ** (-0.4 * (magpsf - NJY_ZEROPOINT)) * (1 if isdiffpos else -1)
        if sigmapsf is not None:
            err = abs(flux) * sigmapsf * 0.4 * 2.302585092994046
    return Alert(
        survey=Survey.ZTF,
        diaObjectId=fields.object_name(required["objectId"]),
        diaSourceId=fields.identifier(required["candid"], "candid"),
        midpointMjdTai=fields.mjd(mjd_tai, "jd (as mid-exposure MJD TAI)"),
        band=ZTF_BANDS[fid],
        ra=ra,
        dec=dec,
        psfFlux=flux,
        psfFluxErr=err,
        cutoutDifference=_stamp(record.get("cutoutDifference"), limits.max_cutout_bytes),
        schemaVersion=fields.short_text(record.get("schemavsn"), "schemavsn"),
        ztf=ZtfCutoutContext(
            magzpsci=fields.number(
                required["magzpsci"], "magzpsci", InvalidPhotometryError, *ZEROPOINT_RANGE
            ),
            isdiffpos=isdiffpos,
            xpos=fields.optional_number(candidate.get("xpos"), "xpos", InvalidPositionError),
            ypos=fields.optional_number(candidate.get("ypos"), "ypos", InvalidPositionError),
        ),
        cutoutScience=_plane_stamp(record.get("cutoutScience"), "cutoutScience", limits.max_cutout_bytes),
        cutoutTemplate=_plane_stamp(record.get("cutoutTemplate"), "cutoutTemplate", limits.max_cutout_bytes),
        history=history_of(record),
    )


def _stamp(cutout: Any, max_bytes: int) -> bytes | None:
    """The ``stampData`` of a ZTF cutout record (null cutout or stamp: None)."""
    if cutout is None:
        return None
    if not isinstance(cutout, dict):
        raise InvalidFieldError(f"cutoutDifference is a {type(cutout).__name__}, not a cutout record")
    return fields.optional_bytes(cutout.get("stampData"), "cutoutDifference.stampData", max_bytes)


def _plane_stamp(cutout: Any, name: str, max_bytes: int) -> bytes | None:
    """The ``stampData`` of a science or template cutout record; None when absent or not of that form.

    A cutout of another form (a hostile writer schema; plain bytes are taken as the stamp) costs the frame
    this plane, not the alert.
    """
    if not isinstance(cutout, dict):
        return fields.lenient_bytes(cutout, name, max_bytes)
    return fields.lenient_bytes(cutout.get("stampData"), f"{name}.stampData", max_bytes)
