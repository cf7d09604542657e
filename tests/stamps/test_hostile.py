"""Hostile cutouts: each case that once crashed, exhausted or poisoned the normaliser, and each rule.

Every case asserts the exact StampError subclass (its ``reason`` goes to the dead-letter topic), and
accepted cutouts assert the frame; see test_properties.py for the randomised sweep.
"""

from __future__ import annotations

import gzip
import io
import time

import numpy as np
import pytest
from astropy.io import fits

from broker_plugin import exceptions as exc
from broker_plugin.config import LimitsSettings, StampSettings
from broker_plugin.records import MAX_PIXEL_FLUX_NJY, Frame, StampFlag, check_frame
from broker_plugin.stamps import StampNormaliser
from broker_plugin.stamps.checks import check_pixel_matrix, pixel_scales
from broker_plugin.stamps.fast_fits import parse_primary_image
from broker_plugin.stamps.fits_header import card_value, locate_image
from broker_plugin.stamps.fits_io import gunzip, read_image
from broker_plugin.stamps.resample import ResamplePlan
from tests.factories import rubin_cutout_bytes
from tests.stamps.hostile import (
    card,
    fits_bytes,
    gzip_fits,
    image_cards,
    linear_wcs,
    rubin_alert,
    rubin_cutout,
    set_card,
    ztf_alert,
    ztf_fits,
)

TAN = {"CTYPE1": "'RA---TAN'", "CTYPE2": "'DEC--TAN'"}
SIN = {"CTYPE1": "'RA---SIN'", "CTYPE2": "'DEC--SIN'"}  # not the fast path: astropy.wcs reads it


def edited(raw: bytes, **cards: str) -> bytes:
    for keyword, value in cards.items():
        raw = set_card(raw, keyword, value)
    return raw


def ones_image(rows: int = 40, cols: int = 40, bitpix: int = -32, value: float = 1.0, **wcs: str) -> bytes:
    dtype = {8: "u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}[bitpix]
    data = np.full((rows, cols), value).astype(dtype).tobytes()
    return fits_bytes(image_cards(rows, cols, bitpix, **(wcs or linear_wcs())), data)


def assert_valid(frame: Frame) -> None:
    assert check_frame(frame, 32) is frame
    assert np.isfinite(frame.data).all() and np.abs(frame.data).max() <= MAX_PIXEL_FLUX_NJY


# --- the cases the hostile corpus found -------------------------------------------------------------


@pytest.mark.parametrize(
    ("cards", "error"),
    [
        ({"NAXIS": "-40"}, exc.CutoutHeaderError),
        ({"NAXIS": "NaN"}, exc.CutoutHeaderError),
        ({"BITPIX": "NaN"}, exc.CutoutHeaderError),
        ({"CRPIX1": "'abc'"}, exc.CutoutHeaderError),
        ({"CRVAL2": "'north'"}, exc.CutoutHeaderError),
        ({**TAN, "CRPIX2": "'abc'"}, exc.CutoutHeaderError),
        ({**SIN, "CRVAL1": "'abc'"}, exc.CutoutHeaderError),
    ],
    ids=["naxis-40", "naxis-nan", "bitpix-nan", "crpix-str", "crval-str", "tan-crpix-str", "sin-crval-str"],
)
def test_header_values_that_crashed_are_typed_errors(cards, error, normaliser: StampNormaliser) -> None:
    with pytest.raises(error):
        normaliser.normalise(rubin_alert(edited(rubin_cutout(), **cards)))


@pytest.mark.parametrize("header", [TAN, SIN, {}], ids=["tan-fast", "sin-astropy", "linear"])
def test_singular_pc_matrix_is_a_wcs_error(header, normaliser: StampNormaliser) -> None:
    # Rank 1 at Rubin's scale: both rows equal. The TAN fast path used to hand it to np.linalg.solve.
    s = "5.5555555555556E-05"
    raw = edited(rubin_cutout(), **header, PC1_1=s, PC1_2=s, PC2_1=s, PC2_2=s, CDELT1="1.0", CDELT2="1.0")
    with pytest.raises(exc.CutoutWcsError, match="outside"):
        normaliser.normalise(rubin_alert(raw))


def test_pixels_of_1e38_njy_are_rejected_not_stored(normaliser: StampNormaliser) -> None:
    image = np.zeros((40, 40))
    image[20, 20] = 1e38
    with pytest.raises(exc.CutoutValueError):
        normaliser.normalise(rubin_alert(rubin_cutout_bytes(size=40, image=image)))


def test_flux_at_the_bound_is_accepted_and_beyond_it_rejected(normaliser: StampNormaliser) -> None:
    image = np.zeros((40, 40))
    image[20, 20] = 0.5 * MAX_PIXEL_FLUX_NJY  # at 0.2"/px, one 0.4" frame pixel takes it whole
    assert_valid(normaliser.normalise(rubin_alert(_f64(image))))
    image[20, 20] = 2.0 * MAX_PIXEL_FLUX_NJY
    with pytest.raises(exc.CutoutValueError):
        normaliser.normalise(rubin_alert(_f64(image)))


def _f64(image: np.ndarray) -> bytes:
    rows, cols = image.shape
    return fits_bytes(image_cards(rows, cols, -64, **linear_wcs()), image.astype(">f8").tobytes())


def test_cdelt_1e30_is_rejected(normaliser: StampNormaliser) -> None:
    with pytest.raises(exc.CutoutWcsError, match="pixel scale"):
        normaliser.normalise(rubin_alert(edited(rubin_cutout(), CDELT1="1E30")))
    with pytest.raises(exc.CutoutWcsError, match="pixel scale"):
        normaliser.normalise(rubin_alert(edited(rubin_cutout(), **SIN, CDELT1="1E30")))


@pytest.mark.parametrize("magzpsci", [-500.0, -1e4, float("nan"), float("inf"), 1e6])
def test_ztf_zero_point_that_overflows_is_a_value_error(magzpsci: float, normaliser: StampNormaliser) -> None:
    stamp = np.ones((63, 63))
    with pytest.raises(exc.CutoutValueError):
        normaliser.normalise(ztf_alert(gzip_fits(ztf_fits(stamp)), magzpsci=magzpsci))


def test_ztf_product_beyond_the_bound_is_a_value_error(normaliser: StampNormaliser) -> None:
    stamp = np.zeros((63, 63))
    stamp[31, 31] = 3e38  # float32's largest range; x 10**(-0.4 (26 - 31.4)) = 144.5 would be > 1e12
    with pytest.raises(exc.CutoutValueError, match="DN"):
        normaliser.normalise(ztf_alert(gzip_fits(ztf_fits(stamp)), magzpsci=26.0))
    stamp[31, 31] = 1e9  # 1.4e11 nJy: bright, allowed
    assert_valid(normaliser.normalise(ztf_alert(gzip_fits(ztf_fits(stamp)), magzpsci=26.0)))


# --- structure: checked from the cards before any pixel is allocated -------------------------------


@pytest.mark.parametrize(
    ("cards", "error"),
    [
        ({"NAXIS": "1"}, exc.CutoutShapeError),
        ({"NAXIS": "4", "NAXIS3": "1", "NAXIS4": "1"}, exc.CutoutShapeError),
        ({"NAXIS": "1000"}, exc.CutoutHeaderError),
        ({"NAXIS": "2.0"}, exc.CutoutHeaderError),
        ({"NAXIS": "T"}, exc.CutoutHeaderError),
        ({"NAXIS": "'2'"}, exc.CutoutHeaderError),
        ({"NAXIS": "3"}, exc.CutoutHeaderError),  # NAXIS3 missing
        ({"NAXIS": "3", "NAXIS3": "2"}, exc.CutoutShapeError),  # a cube
        ({"NAXIS1": "-40"}, exc.CutoutHeaderError),
        ({"NAXIS1": "0"}, exc.CutoutShapeError),
        ({"NAXIS1": "3"}, exc.CutoutShapeError),
        ({"NAXIS1": "40.5"}, exc.CutoutHeaderError),
        ({"NAXIS1": "1E4"}, exc.CutoutHeaderError),
        ({"NAXIS1": "4097", "NAXIS2": "4"}, exc.CutoutShapeError),
        ({"NAXIS1": "16384", "NAXIS2": "16384"}, exc.CutoutTooLargeError),
        ({"NAXIS1": "100000", "NAXIS2": "100000"}, exc.CutoutTooLargeError),
        ({"NAXIS1": "99999999999999999999999999", "NAXIS2": "9"}, exc.CutoutTooLargeError),
        ({"NAXIS2": "1000"}, exc.CorruptCutoutError),  # declares more data than the file holds
        ({"BITPIX": "12"}, exc.CutoutHeaderError),
        ({"BITPIX": "-16"}, exc.CutoutHeaderError),
        ({"BITPIX": "'-32'"}, exc.CutoutHeaderError),
        ({"PCOUNT": "-1"}, exc.CutoutHeaderError),
    ],
)
def test_structural_rules(cards, error, normaliser: StampNormaliser) -> None:
    raw = edited(rubin_cutout(), **cards)
    with pytest.raises(error):
        normaliser.normalise(rubin_alert(raw))
    # The fast reader steps aside, and astropy's reader applies the same checks first.
    assert parse_primary_image(raw) is None
    with pytest.raises(error):
        read_image(raw)


def test_structural_keyword_may_not_repeat(normaliser: StampNormaliser) -> None:
    raw = rubin_cutout()
    doubled = raw.replace(b"NAXIS2  =", b"NAXIS1  =", 1)  # two NAXIS1 cards (40 and 40), no NAXIS2
    with pytest.raises(exc.CutoutHeaderError, match="repeats"):
        normaliser.normalise(rubin_alert(doubled))


def test_header_without_end_is_bounded() -> None:
    cards = b"".join(b"COMMENT".ljust(80) for _ in range(36 * 70))
    raw = b"SIMPLE  =                    T".ljust(80) + cards
    with pytest.raises(exc.CutoutHeaderError, match="END"):
        locate_image(raw, LimitsSettings())
    with pytest.raises(exc.CorruptCutoutError, match="truncated"):
        locate_image(raw[: 2880 * 3], LimitsSettings())


def test_degenerate_third_axis_reads_as_the_2d_image(normaliser: StampNormaliser) -> None:
    raw = rubin_cutout()
    flat = normaliser.normalise(rubin_alert(raw))
    cube = edited(raw, NAXIS="3", NAXIS3="1")
    frame = normaliser.normalise(rubin_alert(cube))
    assert np.array_equal(frame.data, flat.data) and np.array_equal(frame.mask, flat.mask)
    image, _ = read_image(cube)
    assert image.shape == (40, 40)


@pytest.mark.parametrize("bitpix", [8, 16, 32, 64, -32, -64])
def test_every_bitpix_is_read_like_astropy(bitpix: int, normaliser: StampNormaliser) -> None:
    raw = ones_image(bitpix=bitpix, value=7.0)
    image, _ = parse_primary_image(raw)
    reference, _ = read_image(raw)  # astropy
    assert np.array_equal(image, reference) and (image == 7.0).all()
    assert_valid(normaliser.normalise(rubin_alert(raw)))


def test_scaled_integers_are_read_by_astropy_and_checked(normaliser: StampNormaliser) -> None:
    # int32 scaled: astropy gives float64 (int16 would give float32, where 1e300 is inf and masked).
    raw = edited(ones_image(bitpix=32, value=3.0), BSCALE="2.0", BZERO="1.0")
    assert parse_primary_image(raw) is None
    frame = normaliser.normalise(rubin_alert(raw))
    assert frame.data[frame.mask] == pytest.approx(4 * 7.0)  # 2 x 3 + 1 per 0.2" pixel, 4 per frame pixel
    with pytest.raises(exc.CutoutValueError):
        normaliser.normalise(rubin_alert(edited(raw, BSCALE="1E300")))
    with pytest.raises(exc.CutoutHeaderError):
        normaliser.normalise(rubin_alert(edited(raw, BZERO="NaN")))


def test_image_extension_after_an_empty_primary_is_read(normaliser: StampNormaliser) -> None:
    hdul = fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.ones((40, 40), np.float32))])
    for key, value in linear_wcs().items():
        hdul[1].header[key] = float(value)
    buffer = io.BytesIO()
    hdul.writeto(buffer)
    assert_valid(normaliser.normalise(rubin_alert(buffer.getvalue())))


def test_tile_compressed_table_is_never_inflated(normaliser: StampNormaliser) -> None:
    # A compressed image declares its size in ZNAXISn; astropy would inflate it as an image.
    hdul = fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(np.zeros((512, 512), np.float32))])
    buffer = io.BytesIO()
    hdul.writeto(buffer)
    declared = card("ZNAXIS1", "512")[:30]
    assert buffer.getvalue().count(declared) == 1
    raw = buffer.getvalue().replace(declared, card("ZNAXIS1", "99999999")[:30])
    with pytest.raises(exc.CorruptCutoutError, match="no image HDU"):
        normaliser.normalise(rubin_alert(raw))


def test_fits_larger_than_max_cutout_bytes_is_rejected_before_parsing() -> None:
    small = StampNormaliser(StampSettings(), LimitsSettings(max_cutout_bytes=10_000))
    raw = rubin_cutout()
    assert len(raw) > 10_000
    with pytest.raises(exc.CutoutTooLargeError, match="bytes"):
        small.normalise(rubin_alert(raw))
    few_pixels = StampNormaliser(StampSettings(), LimitsSettings(max_cutout_pixels=1_000))
    with pytest.raises(exc.CutoutTooLargeError, match="pixels"):
        few_pixels.normalise(rubin_alert(raw))


@pytest.mark.parametrize(
    ("text", "value"),
    [("  42 / comment", 42), ("-0.5E-3", -0.5e-3), ("1D2", 100.0), ("'it''s' / c", "it's"), ("T", True)]
    + [(bad, None) for bad in ("NaN", "inf", "-Infinity", "1_000", "(1, 2)", "", "'open")],
)
def test_card_values_follow_fits_not_python(text: str, value: object) -> None:
    assert card_value(text) == value


# --- gunzip ----------------------------------------------------------------------------------------


def test_gunzip_stops_at_the_limit() -> None:
    data = bytes(100_000)
    assert gunzip(gzip.compress(data), 100_000) == data
    with pytest.raises(exc.CutoutTooLargeError):
        gunzip(gzip.compress(data + b"x"), 100_000)


def test_gunzip_reads_members_and_padding_like_gzip_and_rejects_the_rest() -> None:
    two = gzip.compress(b"abc") + gzip.compress(b"def") + bytes(8)
    assert gunzip(two, 100) == gzip.decompress(two) == b"abcdef"
    with pytest.raises(exc.CutoutTooLargeError):
        gunzip(gzip.compress(bytes(60)) + gzip.compress(bytes(60)), 100)  # the total counts
    full = gzip.compress(b"abcdef" * 100)
    for broken in (full[:-3], full[:20], full + b"junk", full[:12] + b"\xff" * 10 + full[22:], b"", b"\x1f"):
        with pytest.raises(exc.CorruptCutoutError):
            gunzip(broken, 10_000)


def test_gunzip_refuses_many_members_in_linear_time() -> None:
    empty = gzip.compress(b"", mtime=0)  # 20 bytes each: a 1.5 MB message could hold 75,000
    assert gunzip(empty * 8, 100) == b""
    start = time.perf_counter()
    with pytest.raises(exc.CorruptCutoutError, match="members"):
        gunzip(empty * 75_000, 100)
    assert time.perf_counter() - start < 0.5


def test_ztf_cutout_is_bounded_by_max_cutout_bytes() -> None:
    small = StampNormaliser(StampSettings(), LimitsSettings(max_cutout_bytes=10_000))
    gz = gzip_fits(ztf_fits(np.ones((63, 63))))  # 20160 bytes inflated
    assert len(gz) < 10_000
    with pytest.raises(exc.CutoutTooLargeError, match="inflates"):
        small.normalise(ztf_alert(gz))


# --- WCS sanity -----------------------------------------------------------------------------------


@pytest.mark.parametrize("header", [{}, SIN], ids=["fast", "astropy"])
@pytest.mark.parametrize(
    ("cards", "error"),
    [
        ({"CDELT1": "0.0"}, exc.CutoutWcsError),  # singular
        ({"CDELT1": "1E300", "CDELT2": "1E300"}, exc.CutoutWcsError),  # PC x CDELT overflows
        ({"CDELT1": "1E999"}, exc.CutoutHeaderError),  # the literal itself is inf
        ({"CRPIX1": "NaN"}, exc.CutoutHeaderError),
        ({"CRPIX1": "T"}, exc.CutoutHeaderError),
        ({"CRPIX1": "1E300"}, exc.CutoutWcsError),  # the frame would not touch the cutout
        ({"CRPIX2": "-500"}, exc.CutoutWcsError),
        ({"PC1_2": "(1, 2)"}, exc.CutoutHeaderError),  # complex
        ({"CTYPE2": "DEC--TAN"}, exc.CutoutHeaderError),  # unquoted
        ({"A_ORDER": "1000000"}, exc.CutoutHeaderError),  # astropy would allocate (order + 1)**2
        ({"WCSAXES": "99999"}, exc.CutoutHeaderError),
        ({"BSCALE": "'x'"}, exc.CutoutHeaderError),
    ],
)
def test_wcs_rules(header, cards, error, normaliser: StampNormaliser) -> None:
    with pytest.raises(error):
        normaliser.normalise(rubin_alert(edited(rubin_cutout(), **{**header, **cards})))


@pytest.mark.parametrize("scale", [0.019, 61.0])
def test_pixel_scale_outside_the_plausible_range_is_rejected(
    scale: float, normaliser: StampNormaliser
) -> None:
    raw = ones_image(**linear_wcs(scale / 3600))
    with pytest.raises(exc.CutoutWcsError, match="pixel scale"):
        normaliser.normalise(rubin_alert(raw))


@pytest.mark.parametrize(("scale", "side"), [(0.05, 256), (59.0, 8)])
def test_pixel_scale_inside_the_range_is_accepted(
    scale: float, side: int, normaliser: StampNormaliser
) -> None:
    raw = ones_image(side, side, **linear_wcs(scale / 3600, crpix=(side + 1) / 2))
    frame = normaliser.normalise(rubin_alert(raw))
    assert_valid(frame)
    assert frame.mask.all()
    assert (StampFlag.UPSAMPLED in frame.flags) == (scale > 0.4)


def test_pixel_scale_range_is_configurable() -> None:
    strict = StampNormaliser(StampSettings(), LimitsSettings(min_cutout_pixel_scale_arcsec=0.3))
    with pytest.raises(exc.CutoutWcsError):
        strict.normalise(rubin_alert(rubin_cutout()))  # 0.2"/px


def test_resampling_work_is_bounded_by_max_cutout_pixels() -> None:
    # Allowed a 0.01"/px cutout, a 0.4" frame pixel needs 40 x 40 samples: 1280**2 points in all.
    fine = LimitsSettings(min_cutout_pixel_scale_arcsec=0.001)
    raw = ones_image(64, 64, **linear_wcs(0.01 / 3600, crpix=32.5))
    with pytest.raises(exc.CutoutTooLargeError, match="resampling"):
        StampNormaliser(StampSettings(), fine).normalise(rubin_alert(raw))
    roomy = fine.model_copy(update={"max_cutout_pixels": 2_000_000})
    with pytest.raises(exc.EmptyCutoutError):  # 0.64" of cutout in a 12.8" frame: resampled, then refused
        StampNormaliser(StampSettings(), roomy).normalise(rubin_alert(raw))


def test_anisotropic_matrix_is_judged_by_its_smaller_scale(normaliser: StampNormaliser) -> None:
    # det = 0.2 x 0.2 as for Rubin, but one axis is 20"/px and the other 0.002"/px.
    cards = {**linear_wcs(), "CD1_1": repr(-20.0 / 3600), "CD2_2": repr(0.002 / 3600)}
    with pytest.raises(exc.CutoutWcsError, match=r"0\.002"):
        normaliser.normalise(rubin_alert(ones_image(**cards)))


@pytest.mark.parametrize(
    ("ra", "dec", "cards"),
    [
        (330.0, 2.0, TAN),  # alert 180 deg from CRVAL: behind the projection
        (float("nan"), 2.0, TAN),
        (float("inf"), 2.0, TAN),
        (150.0, 2.0, {**TAN, "CRVAL2": "100.0"}),
        (330.0, 2.0, SIN),  # astropy returns NaN
        (150.0, 2.0, {**SIN, "CRVAL2": "100.0"}),  # wcslib refuses
    ],
)
def test_source_the_wcs_cannot_place_is_a_wcs_error(ra, dec, cards, normaliser: StampNormaliser) -> None:
    with pytest.raises(exc.CutoutWcsError):
        normaliser.normalise(rubin_alert(edited(rubin_cutout(), **cards), ra=ra, dec=dec))


@pytest.mark.parametrize("xpos", [float("nan"), float("-inf"), float("inf")])
def test_ztf_position_not_finite_is_a_wcs_error(xpos: float, normaliser: StampNormaliser) -> None:
    edge = gzip_fits(ztf_fits(np.ones((63, 40))))
    with pytest.raises(exc.CutoutWcsError):
        normaliser.normalise(ztf_alert(edge, xpos=xpos))


# --- the frame is checked by construction ---------------------------------------------------------


def test_every_frame_passes_check_frame(monkeypatch, normaliser: StampNormaliser) -> None:
    with pytest.raises(exc.InvalidFrameError, match="band"):
        normaliser.normalise(rubin_alert(rubin_cutout(), band="q"))

    def poisoned(*args, **kwargs):
        data, mask = resample(*args, **kwargs)
        data[0, 0] = np.inf
        return data, mask

    resample = ResamplePlan.apply
    monkeypatch.setattr(ResamplePlan, "apply", poisoned)
    with pytest.raises(exc.InvalidFrameError, match="non-finite"):
        normaliser.normalise(rubin_alert(rubin_cutout()))


def test_non_finite_pixels_are_masked_not_rejected(normaliser: StampNormaliser) -> None:
    image = np.ones((40, 40))
    image[5, 5], image[30, 30] = np.inf, np.nan
    frame = normaliser.normalise(rubin_alert(_f64(image)))
    assert_valid(frame)
    assert StampFlag.NONFINITE_PIXELS in frame.flags and not frame.mask.all()


@pytest.mark.parametrize("scale", [0.02, 0.2, 1.01, 60.0])
@pytest.mark.parametrize("rotation", [0.0, 30.0, 90.0, 211.0])
def test_pixel_matrix_check_accepts_the_range_bounds_inclusive(scale: float, rotation: float) -> None:
    theta = np.radians(rotation)
    cd = scale * np.array([[-np.cos(theta), np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    cd = np.round(cd, 15) if rotation % 90 == 0 else cd  # exact zeros where the rotation has them
    largest, smallest = pixel_scales(cd)
    assert (largest, smallest) == pytest.approx(tuple(np.linalg.svd(cd, compute_uv=False)), rel=1e-12)
    if scale in (0.02, 60.0) and rotation % 90:
        return  # a rotated matrix's scales may round a hair outside an inclusive bound
    assert check_pixel_matrix(cd, LimitsSettings()) is not None
