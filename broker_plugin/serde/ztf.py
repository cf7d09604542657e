"""ZTF alerts: Avro record -> :class:`~broker_plugin.records.Alert`.

ZTF sends every Kafka message as a complete Avro container file (schema embedded), one alert per file.
Ids are kept as ZTF has them: ``objectId`` (a string) and ``candid``. Times: ``candidate.jd`` is the
exposure *start* in UTC; the mid-point is half the exposure later, and TAI is UTC + 37 s for every date
since 2017 (no leap second since), which covers all of ZTF.
"""

from __future__ import annotations

from typing import Any

from broker_plugin.exceptions import MissingFieldError, UnsupportedAlertError
from broker_plugin.records import Alert, Survey, ZtfCutoutContext

#: ZTF filter id -> band.
ZTF_BANDS = {1: "g", 2: "r", 3: "i"}
_JD_TO_MJD = 2400000.5
_TAI_MINUS_UTC_DAYS = 37.0 / 86400.0
_DEFAULT_EXPTIME_S = 30.0
_NJY_ZEROPOINT = 31.4


def is_ztf_record(record: dict[str, Any]) -> bool:
    """Whether a decoded record looks like a ZTF alert."""
    return "candidate" in record and "objectId" in record


def ztf_record_to_alert(record: dict[str, Any]) -> Alert:
    """Map one ZTF alert record to an :class:`Alert`.

    Raises
    ------
    UnsupportedAlertError
        The record has no ``candidate``.
    MissingFieldError
        A field the pipeline needs is null or out of range (unknown ``fid``).
    """
    candidate = record.get("candidate")
    if not isinstance(candidate, dict):
        raise UnsupportedAlertError("record has no candidate: not a ZTF alert")
    required = {k: candidate.get(k) for k in ("candid", "jd", "fid", "ra", "dec", "magzpsci")}
    required["objectId"] = record.get("objectId")
    missing = [k for k, v in required.items() if v is None]
    if missing:
        raise MissingFieldError(f"ZTF candidate {required['candid']} has null {', '.join(missing)}")
    band = ZTF_BANDS.get(int(required["fid"]))
    if band is None:
        raise MissingFieldError(f"ZTF fid {required['fid']} is not 1, 2 or 3")
    exptime = candidate.get("exptime") or _DEFAULT_EXPTIME_S
    mjd_tai = float(required["jd"]) - _JD_TO_MJD + exptime / 2.0 / 86400.0 + _TAI_MINUS_UTC_DAYS
    isdiffpos = str(candidate.get("isdiffpos", "t")).lower() in ("t", "1", "true")
    flux = err = None
    if candidate.get("magpsf") is not None:
        # magpsf is the PSF-fit magnitude of |difference|; sign from isdiffpos.
        flux = 10.0 ** (-0.4 * (float(candidate["magpsf"]) - _NJY_ZEROPOINT)) * (1 if isdiffpos else -1)
        if candidate.get("sigmapsf") is not None:
            err = abs(flux) * float(candidate["sigmapsf"]) * 0.4 * 2.302585092994046
    cutout = record.get("cutoutDifference") or {}
    return Alert(
        survey=Survey.ZTF,
        diaObjectId=str(required["objectId"]),
        diaSourceId=int(required["candid"]),
        midpointMjdTai=mjd_tai,
        band=band,
        ra=float(required["ra"]),
        dec=float(required["dec"]),
        psfFlux=flux,
        psfFluxErr=err,
        cutoutDifference=cutout.get("stampData") if isinstance(cutout, dict) else None,
        schemaVersion=str(record.get("schemavsn", "")),
        ztf=ZtfCutoutContext(
            magzpsci=float(required["magzpsci"]),
            isdiffpos=isdiffpos,
            xpos=candidate.get("xpos"),
            ypos=candidate.get("ypos"),
        ),
    )
