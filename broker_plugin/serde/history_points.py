"""A record's captured history bytes as photometry points, in Rubin's and ZTF's conventions.

:mod:`.history` captures the wanted fields' bytes of every earlier epoch; here they are decoded column
by column (floats in one ``numpy.frombuffer``) and converted to a
:class:`~broker_plugin.records.PhotometryHistory`: Rubin's detections merged with the forced photometry
of the same visit, ZTF's magnitudes, limits and forced fluxes in nJy. :func:`history_of` is what the
record readers call; a history whose values cannot be converted is marked
:attr:`~.history.HistoryMissing.MALFORMED` instead.
"""

from __future__ import annotations

import math
import re
import struct
from typing import Any

import numpy as np

from broker_plugin.records import BANDS, PhotometryHistory
from broker_plugin.serde.history import HISTORY_KEY, TEXT_ROLES, HistoryColumn, HistoryMissing, RawHistory
from broker_plugin.serde.skipping import NoMatchError, read_varint
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

#: Rubin visits closer than this in time (same band) are the same epoch [d].
SAME_VISIT_DAYS = 1e-5


# --- captured bytes -> numbers and texts ------------------------------------------------------------


def _zigzag(raw: bytes, pos: int = 0) -> int:
    return read_varint(raw, pos)[0]


def _value(raw: bytes, column: HistoryColumn) -> Any:
    """One captured value as Python (None for null or text that is not UTF-8)."""
    kind, pos = column.branches[0], 0
    if column.union:
        kind, pos = column.branches[raw[0] >> 1], 1
    if kind == "null":
        return None
    if kind == "double":
        return struct.unpack_from("<d", raw, pos)[0]
    if kind == "float":
        return struct.unpack_from("<f", raw, pos)[0]
    if kind in ("int", "long"):
        return _zigzag(raw, pos)
    if kind == "boolean":
        return raw[pos] != 0
    size, pos = read_varint(raw, pos)
    try:
        return raw[pos : pos + size].decode("utf-8")
    except UnicodeDecodeError:
        return None


_NAN = {"<f4": struct.pack("<f", math.nan), "<f8": struct.pack("<d", math.nan)}


def _numbers(values: list[bytes], column: HistoryColumn) -> np.ndarray:
    """A number column as float64, NaN where null or not a number."""
    if not values:
        return np.zeros(0)
    float_branches = [b for b in column.branches if b in ("float", "double")]
    others = [b for b in column.branches if b not in ("float", "double", "null")]
    if len(float_branches) == 1 and not others and column.branches.count("null") <= 1:
        # The common case (a double, or a float or null): one frombuffer, no per-value call.
        dtype = "<f4" if float_branches[0] == "float" else "<f8"
        width = 4 if dtype == "<f4" else 8
        if not column.union:
            return np.frombuffer(b"".join(values), dtype).astype(np.float64)
        nan = _NAN[dtype]
        joined = b"".join(v[1:] if len(v) == width + 1 else nan for v in values)
        return np.frombuffer(joined, dtype).astype(np.float64)
    cache: dict[bytes, float] = {}
    out = np.empty(len(values))
    for i, raw in enumerate(values):
        number = cache.get(raw)
        if number is None:
            value = _value(raw, column)
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            number = float(value) if ok and abs(value) < 1e300 else math.nan
            if len(cache) < 256:
                cache[raw] = number
        out[i] = number
    return out


def _texts(values: list[bytes], column: HistoryColumn) -> list[str | None]:
    """A text column (low cardinality: each distinct value decoded once)."""
    cache: dict[bytes, str | None] = {}
    out = []
    for raw in values:
        if raw not in cache:
            value = _value(raw, column)
            cache[raw] = value if isinstance(value, str) else None
        out.append(cache[raw])
    return out


def _columns(raw: RawHistory, name: str) -> dict[str, Any]:
    """Decoded columns of one source: role -> float64 array or list of texts (absent roles left out)."""
    rows = raw.rows.get(name, [])
    out: dict[str, Any] = {}
    for position, column in enumerate(raw.columns.get(name, ())):
        values = [row[position] for row in rows]
        out[column.role] = (_texts if column.role in TEXT_ROLES else _numbers)(values, column)
    out["n"] = len(rows)
    return out


# --- columns -> PhotometryHistory -------------------------------------------------------------------

_BAND_INDEX = {band: i for i, band in enumerate(BANDS)}


def _rubin_band_index(value: str | None) -> int:
    """Index of a Rubin band name as :func:`~.fields.rubin_band` reads it (``"g_01"`` is g), else -1."""
    if value is None:
        return -1
    text = value.strip().lower()
    if text in _BAND_INDEX:
        return _BAND_INDEX[text]
    head = re.fullmatch(r"([ugrizy])[^a-z]*", text)
    return _BAND_INDEX[head.group(1)] if head else -1


def rubin_history(raw: RawHistory) -> PhotometryHistory:
    """Rubin history: detections and forced photometry, one point per visit.

    A forced point and a detection of the same visit (same band, times within :data:`SAME_VISIT_DAYS`)
    become one point: the forced photometry's values, marked detected. Only a forced point with a finite
    flux and a positive finite error stands in for a detection (else the detection is kept).
    """
    parts = []
    for name, detected in (("prvDiaSources", True), ("prvDiaForcedSources", False)):
        cols = _columns(raw, name)
        n = cols["n"]
        band = np.array([_rubin_band_index(b) for b in cols.get("band", [])], np.int64).reshape(n)
        flags = np.full(n, detected)
        parts.append([cols.get("time", np.zeros(0)), band, cols.get("flux", np.zeros(0)),
                      cols.get("err", np.zeros(0)), flags])  # fmt: skip
    (d_time, d_band, d_flux, d_err, _), (f_time, f_band, f_flux, f_err, f_det) = parts
    if len(d_time) and len(f_time):
        usable = np.isfinite(f_time) & np.isfinite(f_flux) & np.isfinite(f_err) & (f_err > 0)
        # One sorted key per point, band major: within a band, keys differ by the times (to ~1e-10 d).
        f_key = np.where(usable, f_band * 1e6 + f_time, np.nan)
        d_key = d_band * 1e6 + d_time
        f_det = _near(f_key, d_key) & usable
        keep_detection = ~_near(d_key, f_key[usable])
        d_time, d_band, d_flux, d_err = d_time[keep_detection], d_band[keep_detection], \
            d_flux[keep_detection], d_err[keep_detection]  # fmt: skip
    return PhotometryHistory.from_points(
        np.concatenate([d_time, f_time]),
        np.concatenate([d_band, f_band]),
        np.concatenate([d_flux, f_flux]),
        np.concatenate([d_err, f_err]),
        np.concatenate([np.ones(len(d_time), bool), f_det]),
    )


def _near(keys: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Whether each key has one of ``others`` within :data:`SAME_VISIT_DAYS` (NaN never matches)."""
    others = np.sort(others[np.isfinite(others)])
    if not len(others):
        return np.zeros(len(keys), bool)
    with np.errstate(invalid="ignore"):
        at = np.searchsorted(others, keys - SAME_VISIT_DAYS)
        found = others[np.minimum(at, len(others) - 1)]
        return (at < len(others)) & (found <= keys + SAME_VISIT_DAYS) & np.isfinite(keys)


#: ZTF's forced photometry writes this where it has no value.
_ZTF_NO_VALUE = -99999.0
_ZTF_BAND_INDEX = {fid: BANDS.index(band) for fid, band in ZTF_BANDS.items()}


def _within(values: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
    """``values`` where within ``bounds``, NaN elsewhere."""
    with np.errstate(invalid="ignore"):
        return np.where((values >= bounds[0]) & (values <= bounds[1]), values, np.nan)


def _no_sentinel(values: np.ndarray) -> np.ndarray:
    """``values`` with ZTF's no-value sentinel as NaN."""
    return np.where(values == _ZTF_NO_VALUE, np.nan, values)


def _ztf_times(cols: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Exposure mid-points [MJD TAI] as :func:`~.ztf.ztf_record_to_alert` computes them, and band ids."""
    n = cols["n"]
    exptime = cols.get("exptime", np.full(n, np.nan))
    with np.errstate(invalid="ignore"):
        bad = (exptime < 0) | (exptime > 3600)
        # ``exptime or default``: null and 0 take the default, as for the alert's candidate.
        exptime = np.where(np.isnan(exptime) | (exptime == 0), DEFAULT_EXPTIME_S, exptime)
        mjd = cols["jd"] - JD_TO_MJD + exptime / 2.0 / 86400.0 + TAI_MINUS_UTC_DAYS
    mjd[bad] = np.nan
    band = np.full(n, -1, np.int64)
    for fid, index in _ZTF_BAND_INDEX.items():
        band[cols["fid"] == fid] = index
    return mjd, band


_TRUE = frozenset({"t", "1", "true"})
_FALSE = frozenset({"f", "0", "false"})


def ztf_history(raw: RawHistory) -> PhotometryHistory:
    """ZTF history: ``prv_candidates`` detections and limits, and ``fp_hists`` forced photometry.

    A candidate with ``magpsf`` is a detection: flux +-10**(-0.4 (magpsf - 31.4)) nJy (sign from
    ``isdiffpos``), error |flux| sigmapsf ln(10)/2.5. One without ``magpsf`` but with ``diffmaglim`` is a
    non-detection: flux 0 and the 5-sigma limit's flux / 5 as error. A forced point's flux is
    ``forcediffimflux`` 10**(-0.4 (magzpsci - 31.4)), its error likewise; -99999 means none.
    """
    out = []
    if "prv_candidates" in raw.columns:
        cols = _columns(raw, "prv_candidates")
        mjd, band = _ztf_times(cols)
        magpsf = _within(cols["magpsf"], MAG_RANGE)
        sigmapsf = _within(cols["sigmapsf"], MAG_ERROR_RANGE)
        limit = _within(cols["diffmaglim"], MAG_RANGE)
        sign = np.array(
            [1.0 if t in _TRUE else -1.0 if t in _FALSE else np.nan
             for t in ((v or "").strip().lower() for v in cols["isdiffpos"])]
        ).reshape(cols["n"])  # fmt: skip
        # A magnitude makes a detection even when out of range (then the point is dropped, not a limit).
        detected = ~np.isnan(cols["magpsf"])
        with np.errstate(invalid="ignore", over="ignore"):
            flux = 10.0 ** (-0.4 * (magpsf - NJY_ZEROPOINT)) * sign
            err = np.abs(flux) * sigmapsf * 0.4 * 2.302585092994046
            limit_err = 10.0 ** (-0.4 * (limit - NJY_ZEROPOINT)) / 5.0
        out.append((mjd, band, np.where(detected, flux, 0.0), np.where(detected, err, limit_err), detected))
    if "fp_hists" in raw.columns:
        cols = _columns(raw, "fp_hists")
        mjd, band = _ztf_times(cols)
        scale = 10.0 ** (-0.4 * (_within(cols["magzpsci"], ZEROPOINT_RANGE) - NJY_ZEROPOINT))
        flux = _no_sentinel(cols["forcediffimflux"]) * scale
        err = _no_sentinel(cols["forcediffimfluxunc"]) * scale
        out.append((mjd, band, flux, err, np.zeros(cols["n"], bool)))
    if not out:
        return PhotometryHistory.empty()
    return PhotometryHistory.from_points(*(np.concatenate(parts) for parts in zip(*out, strict=True)))


def history_of(record: dict[str, Any]) -> PhotometryHistory | None:
    """The :class:`PhotometryHistory` of a decoded record, or None when it has none (see its reason).

    A history whose values cannot be converted at all is replaced in ``record`` by
    :attr:`HistoryMissing.MALFORMED`, so that :func:`missing_reason` tells it.
    """
    raw = record.get(HISTORY_KEY)
    if not isinstance(raw, RawHistory):
        return None
    try:
        if any(name in raw.columns for name in ("prv_candidates", "fp_hists")):
            return ztf_history(raw)
        return rubin_history(raw)
    except (ValueError, TypeError, IndexError, KeyError, OverflowError, struct.error, NoMatchError):
        record[HISTORY_KEY] = HistoryMissing.MALFORMED
        return None


def missing_reason(record: dict[str, Any]) -> HistoryMissing | None:
    """Why a record read with history on has none, or None if it has one (or history was off)."""
    value = record.get(HISTORY_KEY)
    return value if isinstance(value, HistoryMissing) else None
