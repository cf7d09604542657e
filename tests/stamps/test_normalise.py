import gzip
import io

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from broker_plugin import exceptions as exc
from broker_plugin.records import Alert, StampFlag, Survey, ZtfCutoutContext
from broker_plugin.stamps import RubinCutoutGeometry, StampNormaliser
from broker_plugin.stamps.normalise import ztf_source_pixel
from tests.factories import ZTF_GOLDEN, gaussian_source, rubin_cutout_bytes


def rubin_alert(cutout: bytes | None, ra: float = 150.0, dec: float = 2.0) -> Alert:
    return Alert(Survey.RUBIN, 7, 101, 60_500.0, "g", ra, dec, 1000.0, 10.0, cutout, "11.1")


def ztf_alert(stamp: np.ndarray, isdiffpos: bool = True, magzpsci: float = 26.0, xpos=500.0, ypos=500.0):
    buffer = io.BytesIO()
    fits.PrimaryHDU(stamp.astype(">f4")).writeto(buffer)
    return Alert(
        Survey.ZTF,
        "ZTF24aaaaaaa",
        1,
        60_000.0,
        "r",
        10.0,
        20.0,
        None,
        None,
        gzip.compress(buffer.getvalue()),
        "4.02",
        ZtfCutoutContext(magzpsci, isdiffpos, xpos, ypos),
    )


def test_rubin_cutout_is_centred_and_flux_conserved(normaliser: StampNormaliser) -> None:
    frame = normaliser.normalise(rubin_alert(rubin_cutout_bytes(size=96, rotation_deg=123.0, flux=2000.0)))
    assert frame.data.shape == (32, 32) and frame.data.dtype == np.float32
    assert frame.mask.all() and frame.flags == StampFlag.NONE
    assert frame.data.sum() == pytest.approx(2000.0, rel=0.02)
    peak = np.unravel_index(np.argmax(frame.data), frame.data.shape)
    assert all(abs(p - 15.5) <= 0.5 for p in peak)
    assert frame.originalShape == (96, 96) and frame.band == "g" and frame.diaSourceId == 101


def test_standard_tan_header_is_accepted(normaliser: StampNormaliser) -> None:
    geometry = RubinCutoutGeometry(size=50, rotation_deg=40.0)
    image = gaussian_source(geometry, 1500.0, 0.8, east=1.0, north=0.0)
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crpix = [25.5, 25.5]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.cd = geometry.cd_arcsec / 3600.0
    buffer = io.BytesIO()
    fits.PrimaryHDU(image.astype(np.float32), header=wcs.to_header()).writeto(buffer)
    frame = normaliser.normalise(rubin_alert(buffer.getvalue()))
    peak = np.unravel_index(np.argmax(frame.data), frame.data.shape)
    # 1" east of the alert position = 2.5 frame pixels left of the centre column.
    assert abs(peak[1] - (15.5 - 2.5)) <= 1 and abs(peak[0] - 15.5) <= 0.5
    assert frame.data.sum() == pytest.approx(1500.0, rel=0.03)


def test_ztf_dn_to_njy_and_sign_flip(normaliser: StampNormaliser) -> None:
    yy, xx = np.mgrid[0:63, 0:63]
    stamp = 100.0 * np.exp(-((xx - 31) ** 2 + (yy - 31) ** 2) / 2.0) / (2 * np.pi)  # 100 DN, sigma 1 px
    pos = normaliser.normalise(ztf_alert(stamp, isdiffpos=True, magzpsci=26.0))
    neg = normaliser.normalise(ztf_alert(stamp, isdiffpos=False, magzpsci=26.0))
    expected = 100.0 * 10 ** (-0.4 * (26.0 - 31.4))
    assert pos.data.sum() == pytest.approx(expected, rel=0.02)
    assert neg.data.sum() == pytest.approx(-expected, rel=0.02)
    assert StampFlag.SIGN_FLIPPED in neg.flags and StampFlag.SIGN_FLIPPED not in pos.flags
    assert StampFlag.UPSAMPLED in pos.flags


def test_ztf_edge_stamp_places_source_from_ccd_position() -> None:
    ctx = ZtfCutoutContext(26.0, True, xpos=10.0, ypos=500.0)
    assert ztf_source_pixel((63, 40), ctx) == (9.0, 31.0)
    high = ZtfCutoutContext(26.0, True, xpos=3060.0, ypos=500.0)
    assert ztf_source_pixel((63, 45), high) == (31.0, 31.0)


def test_ztf_edge_stamp_on_low_edge_keeps_source_centred(normaliser: StampNormaliser) -> None:
    stamp = np.zeros((63, 40))
    stamp[31, 9] = 50.0  # candidate at CCD x = 10 (1-based): cutout column 9
    frame = normaliser.normalise(ztf_alert(stamp, xpos=10.0))
    peak = np.unravel_index(np.argmax(frame.data), frame.data.shape)
    assert all(abs(p - 15.5) <= 1.0 for p in peak)
    assert StampFlag.EDGE_TRUNCATED in frame.flags


@pytest.mark.parametrize("path", sorted(ZTF_GOLDEN.glob("*.avro")), ids=lambda p: p.stem)
def test_real_ztf_stamps_normalise(path, decoder, normaliser: StampNormaliser) -> None:
    (alert,) = decoder.decode_message(path.read_bytes())
    frame = normaliser.normalise(alert)
    assert frame.mask.mean() > 0.5
    assert np.isfinite(frame.data).all()
    # The detection is at the centre: |flux| within 2" of it dominates a random same-size patch.
    centre = np.abs(frame.data[13:19, 13:19]).sum()
    assert centre > np.abs(frame.data[0:6, 0:6]).sum()


@pytest.mark.parametrize(
    ("cutout", "error"),
    [
        (None, exc.MissingCutoutError),
        (b"", exc.MissingCutoutError),
        (b"not a fits file at all", exc.CorruptCutoutError),
        (b"SIMPLE  =                    T" + b"\x00" * 100, exc.CorruptCutoutError),
    ],
)
def test_bad_cutouts_raise_typed_errors(cutout, error, normaliser: StampNormaliser) -> None:
    with pytest.raises(error):
        normaliser.normalise(rubin_alert(cutout))


def test_nan_only_cutout_is_empty(normaliser: StampNormaliser) -> None:
    nan_image = np.full((40, 40), np.nan)
    with pytest.raises(exc.EmptyCutoutError):
        normaliser.normalise(rubin_alert(rubin_cutout_bytes(size=40, image=nan_image)))


def test_cutout_without_wcs_is_rejected(normaliser: StampNormaliser) -> None:
    buffer = io.BytesIO()
    fits.PrimaryHDU(np.ones((40, 40), np.float32)).writeto(buffer)
    with pytest.raises(exc.CutoutWcsError):
        normaliser.normalise(rubin_alert(buffer.getvalue()))


def test_cube_is_a_shape_error(normaliser: StampNormaliser) -> None:
    buffer = io.BytesIO()
    fits.PrimaryHDU(np.ones((3, 40, 40), np.float32)).writeto(buffer)
    with pytest.raises(exc.CutoutShapeError):
        normaliser.normalise(rubin_alert(buffer.getvalue()))


def test_ztf_garbage_is_corrupt(normaliser: StampNormaliser) -> None:
    alert = ztf_alert(np.ones((63, 63)))
    broken = Alert(**{**{f: getattr(alert, f) for f in alert.__slots__}, "cutoutDifference": b"\x1f\x8bjunk"})
    with pytest.raises(exc.CorruptCutoutError):
        normaliser.normalise(broken)
