"""Properties: whatever the header values or bytes, normalise raises a StampError or returns a valid frame.

The inputs start from real cutouts (Rubin's writer, Rubin with a TAN or SIN header, and the six golden
real ZTF alerts) and are then edited card by card with hostile values, or mutated byte by byte (bit
flips, truncation, insertion, deletion, overwrite). Any other exception fails the test, and every frame
that comes back must pass ``check_frame``.
"""

from __future__ import annotations

import gzip
import math
import os
import string

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker_plugin.config import LimitsSettings, StampSettings
from broker_plugin.exceptions import CutoutValueError, CutoutWcsError, StampError
from broker_plugin.records import MAX_PIXEL_FLUX_NJY, Alert, Frame, check_frame
from broker_plugin.stamps import StampNormaliser
from broker_plugin.stamps.fits_io import gunzip
from tests.stamps.hostile import (
    fits_bytes,
    image_cards,
    linear_wcs,
    real_ztf_cutouts,
    rubin_alert,
    rubin_cutout,
    set_card,
    ztf_alert,
    ztf_fits,
)

#: 150 examples per property keep the suite at seconds; STAMPS_FUZZ_EXAMPLES=5000 runs a longer fuzz.
EXAMPLES = int(os.environ.get("STAMPS_FUZZ_EXAMPLES", "150"))
PROPERTY = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NORMALISER = StampNormaliser(StampSettings(), LimitsSettings())

STRUCTURAL = [
    "SIMPLE",
    "BITPIX",
    "NAXIS",
    "NAXIS1",
    "NAXIS2",
    "NAXIS3",
    "PCOUNT",
    "GCOUNT",
    "BSCALE",
    "BZERO",
]
WCS = [
    "CRPIX1", "CRPIX2", "CRVAL1", "CRVAL2", "CD1_1", "CD1_2", "CD2_1", "CD2_2", "PC1_1", "PC1_2", "PC2_1",
    "PC2_2", "CDELT1", "CDELT2", "CROTA2", "CTYPE1", "CTYPE2", "CUNIT1", "A_ORDER", "A_1_1", "PV2_1",
    "WCSAXES", "LONPOLE", "LATPOLE", "EQUINOX", "RADESYS",
]  # fmt: skip
SPECIAL_VALUES = [
    "NaN", "-NaN", "nan", "inf", "-inf", "Infinity", "1E999", "-1E999", "1D300", "1E-320", "0", "-0.0", "1",
    "2", "3", "-1", "-40", "4", "4096", "4097", "16384", "100000", "9" * 60, "-32", "-64", "8", "64", "12",
    "T", "F", "'abc'", "''", "'", "(1, 2)", "", "1_000", "0x10", "'RA---TAN'", "'DEC--TAN'", "'RA---SIN'",
    "'DEC--SIN'", "'RA---TAN-SIP'", "'IMAGE'", "1E30", "-1E30", "5.5555555555556E-05", "1E-12",
]  # fmt: skip
CARD_VALUES = st.one_of(
    st.sampled_from(SPECIAL_VALUES),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-(10**40), max_value=10**40).map(str),
    st.text(alphabet=string.ascii_letters + string.digits + " '.-+/()=", max_size=30),
)
#: Matrix entries [deg/px, or 1 for CDELT-scaled PC]: real scales, zero, tiny, huge, and their signs, so
#: that singular, near-singular, anisotropic and overflowing matrices all come up.
MATRIX_VALUES = st.sampled_from(
    ["0", "-0.0", "1", "-1", "5.5555555555556E-05", "-5.5555555555556E-05", "2.8E-04", "1E-12", "1E-300",
     "1E30", "1E300", "3E-2", "NaN"]
) | st.floats(-1e-2, 1e-2).map(repr)  # fmt: skip


def edits_of(keywords: list[str], values: st.SearchStrategy[str]) -> st.SearchStrategy[list[tuple[str, str]]]:
    """1..4 ``(keyword, value text)`` card edits."""
    return st.lists(st.tuples(st.sampled_from(keywords), values), min_size=1, max_size=4)


def base_cutouts() -> dict[str, bytes]:
    """Uncompressed FITS of real cutouts on every reading path."""
    rubin = rubin_cutout()
    tan = set_card(set_card(rubin, "CTYPE1", "'RA---TAN'"), "CTYPE2", "'DEC--TAN'")
    sin = set_card(set_card(rubin, "CTYPE1", "'RA---SIN'"), "CTYPE2", "'DEC--SIN'")
    cd = fits_bytes(image_cards(**linear_wcs()), np.ones((40, 40), ">f4").tobytes())
    bases = {"rubin-pc": rubin, "rubin-cd": cd, "tan-fast": tan, "sin-astropy": sin}
    for number, (gz, _) in enumerate(real_ztf_cutouts()):
        bases[f"ztf-{number}"] = gzip.decompress(gz)
    return bases


BASES = base_cutouts()
RUBIN_BASES = sorted(name for name in BASES if not name.startswith("ztf-"))


def alert_for(name: str, raw: bytes, *, gz: bytes | None = None) -> Alert:
    """The alert a base cutout travels in (ZTF cutouts gzipped, with the real alert's calibration)."""
    if not name.startswith("ztf-"):
        return rubin_alert(raw)
    ctx = real_ztf_cutouts()[int(name[4:])][1]
    gz = gzip.compress(raw, mtime=0) if gz is None else gz
    return ztf_alert(gz, ctx.magzpsci, ctx.isdiffpos, ctx.xpos, ctx.ypos)


def outcome(alert: Alert) -> Frame | StampError:
    """The frame (checked) or the StampError; any other exception propagates and fails the test."""
    try:
        frame = NORMALISER.normalise(alert)
    except StampError as exc:
        assert type(exc) is not StampError and exc.reason != "stamp_error"  # always a precise subclass
        return exc
    assert check_frame(frame, 32) is frame
    assert np.isfinite(frame.data).all() and float(np.abs(frame.data).max()) <= MAX_PIXEL_FLUX_NJY
    return frame


def test_every_base_cutout_normalises() -> None:
    for name, raw in BASES.items():
        assert isinstance(outcome(alert_for(name, raw)), Frame), name


def edited(raw: bytes, edits: list[tuple[str, str]]) -> bytes:
    for keyword, value in edits:
        raw = set_card(raw, keyword, value)
    return raw


@PROPERTY
@given(name=st.sampled_from(sorted(BASES)), edits=edits_of(STRUCTURAL, CARD_VALUES))
def test_hostile_structural_values(name: str, edits: list[tuple[str, str]]) -> None:
    outcome(alert_for(name, edited(BASES[name], edits)))


@PROPERTY
@given(name=st.sampled_from(RUBIN_BASES), edits=edits_of(WCS, CARD_VALUES))
def test_hostile_wcs_values(name: str, edits: list[tuple[str, str]]) -> None:
    outcome(alert_for(name, edited(BASES[name], edits)))


@PROPERTY
@given(
    name=st.sampled_from(RUBIN_BASES),
    kind=st.sampled_from(["CD", "PC"]),
    entries=st.lists(MATRIX_VALUES, min_size=4, max_size=4),
    cdelt=st.lists(MATRIX_VALUES, min_size=2, max_size=2),
)
def test_hostile_wcs_matrices(name: str, kind: str, entries: list[str], cdelt: list[str]) -> None:
    keys = [f"{kind}{i}_{j}" for i in (1, 2) for j in (1, 2)]
    edits = [*zip(keys, entries, strict=True), ("CDELT1", cdelt[0]), ("CDELT2", cdelt[1])]
    outcome(alert_for(name, edited(BASES[name], edits)))


@st.composite
def mutations(draw: st.DrawFn, raw: bytes) -> bytes:
    """``raw`` after 1..4 random byte edits, most of them in the header, where structure lives."""
    data = bytearray(raw)
    for _ in range(draw(st.integers(1, 4))):
        end = len(data)
        position = draw(st.one_of(st.integers(0, min(end, 2 * 2880)), st.integers(0, end)))
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "overwrite"]))
        if kind == "flip" and position < end:
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[position:]
        elif kind == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=200))
        elif kind == "delete":
            del data[position : position + draw(st.integers(1, 200))]
        elif kind == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=80))
            data[position : position + len(chunk)] = chunk
    return bytes(data)


@PROPERTY
@given(data=st.data(), name=st.sampled_from(sorted(BASES)))
def test_byte_mutations_of_real_fits(data: st.DataObject, name: str) -> None:
    outcome(alert_for(name, data.draw(mutations(BASES[name]))))


@PROPERTY
@given(data=st.data(), number=st.integers(0, len(real_ztf_cutouts()) - 1))
def test_byte_mutations_of_real_gzip(data: st.DataObject, number: int) -> None:
    gz = real_ztf_cutouts()[number][0]
    outcome(alert_for(f"ztf-{number}", b"", gz=data.draw(mutations(gz))))


@PROPERTY
@given(raw=st.binary(max_size=4000))
def test_gunzip_of_any_bytes_is_bounded_or_typed(raw: bytes) -> None:
    try:
        out = gunzip(raw, 10_000)
    except StampError:
        return
    assert len(out) <= 10_000


FLOATS = st.floats(allow_nan=True, allow_infinity=True)
#: Quadrant positions [px, 1-based] (a source far off the CCD is a WCS error of its own), or not finite.
CCD_POSITIONS = st.none() | st.floats(1.0, 3080.0) | st.sampled_from([math.nan, math.inf, -math.inf])


@PROPERTY
@given(
    values=st.lists(st.one_of(FLOATS, st.floats(-1e13, 1e13)), min_size=1, max_size=6),
    where=st.lists(st.tuples(st.integers(0, 39), st.integers(0, 39)), min_size=6, max_size=6),
)
def test_pixel_values_are_rejected_exactly_beyond_the_bound(values: list[float], where) -> None:
    # 0.4"/px, 40 px: the cutout covers the whole frame, so only the values decide the outcome.
    image = np.ones((40, 40))
    for value, (row, col) in zip(values, where, strict=False):
        image[row, col] = value
    raw = fits_bytes(image_cards(bitpix=-64, **linear_wcs(0.4 / 3600)), image.astype(">f8").tobytes())
    result = outcome(rubin_alert(raw))
    finite = image[np.isfinite(image)]
    assert isinstance(result, CutoutValueError) == bool(np.abs(finite).max() > MAX_PIXEL_FLUX_NJY)


@PROPERTY
@given(
    magzpsci=st.one_of(FLOATS, st.floats(-800.0, 800.0)),
    peak=st.one_of(FLOATS, st.floats(-3e38, 3e38)),
    isdiffpos=st.booleans(),
    xpos=CCD_POSITIONS,
    ypos=CCD_POSITIONS,
)
def test_ztf_calibration_values(magzpsci: float, peak: float, isdiffpos: bool, xpos, ypos) -> None:
    stamp = np.ones((63, 50), np.float32)  # truncated at a CCD edge: xpos places the source
    with np.errstate(over="ignore"):
        stamp[31, 20] = np.float32(peak)
    result = outcome(ztf_alert(gzip.compress(ztf_fits(stamp)), magzpsci, isdiffpos, xpos, ypos))
    positions_finite = all(math.isfinite(p) for p in (xpos, ypos) if p is not None)
    assert isinstance(result, CutoutWcsError) == (not positions_finite)
    if not positions_finite:
        return
    # Zero points whose factor 10**(-0.4 (zp - 31.4)) is no normal float, and DN x factor beyond the
    # bound, are value errors, found before any pixel is scaled (not invalid frames after).
    exponent = -0.4 * (magzpsci - 31.4)
    finite_peak = float(np.abs(stamp[np.isfinite(stamp)]).max())
    beyond = not abs(exponent) <= 300 or finite_peak * 10.0**exponent > MAX_PIXEL_FLUX_NJY
    assert isinstance(result, CutoutValueError) == beyond


@PROPERTY
@given(ra=FLOATS, dec=FLOATS, header=st.sampled_from(RUBIN_BASES))
def test_any_alert_position(ra: float, dec: float, header: str) -> None:
    outcome(rubin_alert(BASES[header], ra=ra, dec=dec))


@pytest.mark.parametrize("name", sorted(BASES))
def test_fast_and_astropy_paths_give_the_same_frame(name: str) -> None:
    # BSCALE = 1.0 written out forces astropy's reader; the frame must not change.
    raw = BASES[name]
    forced = set_card(raw, "BSCALE", "1.000000001")
    plain, scaled = outcome(alert_for(name, raw)), outcome(alert_for(name, forced))
    assert isinstance(plain, Frame) and isinstance(scaled, Frame)
    assert np.allclose(plain.data, scaled.data, rtol=1e-6, atol=1e-6) and np.array_equal(
        plain.mask, scaled.mask
    )
