"""Checks of the alert fields the pipeline uses: a value is returned valid, or a typed error is raised.

A decoded Avro record holds whatever its writer schema says, and a container's writer schema is the
sender's: a ``string`` where ``double`` is expected, NaN, ``-inf``, 1e308, a blank band. Every field the
pipeline reads goes through one of these functions, so an :class:`~broker_plugin.records.Alert` only
ever holds values of the right type, finite and in range, and everything else becomes an
:class:`~broker_plugin.exceptions.InvalidFieldError` subclass naming the field (never ``ValueError``,
``TypeError`` or ``OverflowError``).

``None`` is not invalid but missing: a required field that is null raises
:class:`~broker_plugin.exceptions.MissingFieldError` (Rubin's solar-system sources have no
``diaObjectId``), an optional one is returned as ``None``.
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

from broker_plugin.exceptions import (
    InvalidBandError,
    InvalidFieldError,
    InvalidIdentifierError,
    InvalidPhotometryError,
    InvalidPositionError,
    InvalidTimeError,
    MissingFieldError,
    ResourceLimitError,
)
from broker_plugin.records import BANDS, MJD_RANGE

log = logging.getLogger(__name__)

INT64_RANGE = (-(2**63), 2**63 - 1)
#: ZTF object names are 12 characters (``ZTF21acqeepb``); anything printable up to this length is kept.
_OBJECT_NAME = re.compile(r"[!-~]{1,32}")
_BAND_NAME = re.compile(rf"([{''.join(BANDS)}])(?:[^a-z].*)?", re.DOTALL)
_TRUE = frozenset({"t", "1", "true"})
_FALSE = frozenset({"f", "0", "false"})


def show(value: Any) -> str:
    """A short repr for error messages (a hostile string can be a megabyte)."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def _is_number(value: Any) -> bool:
    # bool is an int subclass; an Avro boolean where a number is expected is a wrong type, not 0/1.
    return isinstance(value, int | float) and not isinstance(value, bool)


def identifier(value: Any, name: str) -> int:
    """An integer id (``diaSourceId``, ``diaObjectId``, ``candid``) within int64.

    Raises
    ------
    MissingFieldError
        ``value`` is None.
    InvalidIdentifierError
        Not an integer (a float, string, bool) or outside int64.
    """
    if value is None:
        raise MissingFieldError(f"{name} is null")
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidIdentifierError(f"{name} is a {type(value).__name__}, not an integer")
    if not INT64_RANGE[0] <= value <= INT64_RANGE[1]:
        raise InvalidIdentifierError(f"{name} {value} is outside int64")
    return value


def object_name(value: Any, name: str = "objectId") -> str:
    """A ZTF object name: a short string of printable ASCII without blanks.

    Raises
    ------
    MissingFieldError
        ``value`` is None.
    InvalidIdentifierError
        Not a string, empty, longer than 32 characters or holding blanks or control characters.
    """
    if value is None:
        raise MissingFieldError(f"{name} is null")
    if not isinstance(value, str):
        raise InvalidIdentifierError(f"{name} is a {type(value).__name__}, not a string")
    if not _OBJECT_NAME.fullmatch(value):
        raise InvalidIdentifierError(f"{name} {show(value)} is not 1-32 printable characters without blanks")
    return value


def _to_float(
    value: Any, name: str, error: type[InvalidFieldError], low: float, high: float, high_open: bool
) -> float:
    if not _is_number(value):
        raise error(f"{name} is a {type(value).__name__}, not a number")
    try:
        result = float(value)
    except OverflowError as exc:  # an int beyond float range (Avro longs cannot be, Python ints can)
        raise error(f"{name} {show(value)} is too large") from exc
    if not math.isfinite(result):
        raise error(f"{name} is {result}")
    if result < low or (result >= high if high_open else result > high):
        raise error(f"{name} {result!r} is outside [{low:g}, {high:g}{')' if high_open else ']'}")
    return result


def number(
    value: Any,
    name: str,
    error: type[InvalidFieldError],
    low: float = -math.inf,
    high: float = math.inf,
    *,
    high_open: bool = False,
) -> float:
    """A finite float in ``[low, high]`` (``[low, high)`` if ``high_open``).

    Integers are accepted (an Avro ``int`` or ``long`` writer field) and returned as float; a float is
    returned unchanged.

    Raises
    ------
    MissingFieldError
        ``value`` is None.
    InvalidFieldError
        ``error``: not a number, not finite, or out of range.
    """
    if value is None:
        raise MissingFieldError(f"{name} is null")
    return _to_float(value, name, error, low, high, high_open)


def optional_number(
    value: Any,
    name: str,
    error: type[InvalidFieldError],
    low: float = -math.inf,
    high: float = math.inf,
) -> float | None:
    """Like :func:`number`, but None stays None.

    Raises
    ------
    InvalidFieldError
        ``error``: not a number, not finite, or out of range.
    """
    return None if value is None else _to_float(value, name, error, low, high, False)


def mjd(value: Any, name: str) -> float:
    """An exposure mid-point [MJD] within :data:`~broker_plugin.records.MJD_RANGE`.

    Raises
    ------
    MissingFieldError
        ``value`` is None.
    InvalidTimeError
        Not a number, not finite or outside the range.
    """
    return number(value, name, InvalidTimeError, *MJD_RANGE)


def ra_dec(ra: Any, dec: Any) -> tuple[float, float]:
    """Right ascension in [0, 360) and declination in [-90, 90] [deg].

    Raises
    ------
    MissingFieldError
        Either is None.
    InvalidPositionError
        Not a number, not finite or out of range.
    """
    ra_deg = number(ra, "ra", InvalidPositionError, 0.0, 360.0, high_open=True)
    return ra_deg, number(dec, "dec", InvalidPositionError, -90.0, 90.0)


def rubin_band(value: Any, name: str = "band") -> str:
    """A Rubin band: stripped, lower case, one of :data:`~broker_plugin.records.BANDS`.

    Early simulated streams wrote filter names like ``"g_01"``: the band is the first letter when that
    letter is a band and no other letter follows it (``"gr"`` or ``"infrared"`` is no band).

    Raises
    ------
    MissingFieldError
        ``value`` is None.
    InvalidBandError
        Not a string, blank, or not a known band.
    """
    if value is None:
        raise MissingFieldError(f"{name} is null")
    if not isinstance(value, str):
        raise InvalidBandError(f"{name} is a {type(value).__name__}, not a string")
    band = value.strip().lower()
    if not band:
        raise InvalidBandError(f"{name} {show(value)} is blank")
    match = _BAND_NAME.fullmatch(band)
    if match:
        return match.group(1)
    raise InvalidBandError(f"{name} {show(value)} is not one of {', '.join(BANDS)}")


def flag(value: Any, name: str) -> bool:
    """A ZTF truth flag such as ``isdiffpos``: ``t``/``1``/``true`` or ``f``/``0``/``false``, any case.

    Raises
    ------
    MissingFieldError
        ``value`` is None.
    InvalidPhotometryError
        Anything else (the flag decides the sign of the flux).
    """
    if value is None:
        raise MissingFieldError(f"{name} is null")
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise InvalidPhotometryError(f"{name} {show(value)} is not t/f")


def optional_bytes(value: Any, name: str, max_bytes: int) -> bytes | None:
    """A cutout: bytes of at most ``max_bytes``, or None.

    Raises
    ------
    InvalidFieldError
        Not bytes.
    ResourceLimitError
        Longer than ``max_bytes``.
    """
    if value is None:
        return None
    if not isinstance(value, bytes):
        raise InvalidFieldError(f"{name} is a {type(value).__name__}, not bytes")
    if len(value) > max_bytes:
        raise ResourceLimitError(f"{name} of {len(value)} bytes exceeds the limit of {max_bytes}")
    return value


def lenient_bytes(value: Any, name: str, max_bytes: int) -> bytes | None:
    """A science or template cutout: bytes of at most ``max_bytes`` as sent, else None (logged at debug).

    Never an error: such a cutout only adds a plane to the frame, so one that is absent, of another Avro
    type (a hostile writer schema) or longer than ``max_bytes`` costs the frame that plane, not the alert
    (the normaliser counts it as ``missing_cutout``). An oversized one is dropped here rather than by the
    normaliser so that no alert holds more than ``max_bytes`` per cutout while it waits in a batch.
    """
    if value is None:
        return None
    if not isinstance(value, bytes):
        log.debug("%s is a %s, not bytes: the plane is dropped", name, type(value).__name__)
        return None
    if len(value) > max_bytes:
        log.debug("%s of %d bytes exceeds the limit of %d: the plane is dropped", name, len(value), max_bytes)
        return None
    return value


def short_text(value: Any, name: str, max_chars: int = 64) -> str:
    """A short label such as ZTF ``schemavsn``; None is the empty string.

    Raises
    ------
    InvalidFieldError
        Not a string, or longer than ``max_chars``.
    """
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidFieldError(f"{name} is a {type(value).__name__}, not a string")
    if len(value) > max_chars:
        raise InvalidFieldError(f"{name} is {len(value)} characters long (at most {max_chars})")
    return value
