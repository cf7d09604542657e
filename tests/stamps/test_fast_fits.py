"""The fast FITS/WCS path must agree with astropy's, and step aside when a file is not simple."""

import io

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from broker_plugin.stamps.fast_fits import linear_transform, parse_primary_image
from broker_plugin.stamps.fits_io import read_image
from broker_plugin.stamps.normalise import wcs_from_header
from tests.factories import rubin_cutout_bytes


@pytest.mark.parametrize("rotation", [0.0, 47.0, 181.0])
def test_rubin_cutout_fast_path_equals_astropy(rotation: float) -> None:
    raw = rubin_cutout_bytes(size=37, rotation_deg=rotation)
    image, cards = parse_primary_image(raw)
    ref_image, header = read_image(raw)
    assert np.array_equal(image, ref_image)
    cd, source = linear_transform(cards, 150.0, 2.0)
    ref_cd, ref_source = wcs_from_header(header, 150.0, 2.0)
    assert np.allclose(cd, ref_cd, rtol=1e-12, atol=1e-12)
    assert np.allclose(source, ref_source)


def tan_header(crval=(150.0, 2.0), crpix=(20.0, 22.0)) -> fits.Header:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crpix = list(crpix)
    wcs.wcs.crval = list(crval)
    wcs.wcs.cd = np.array([[-0.2, 0.05], [0.05, 0.2]]) / 3600
    return wcs.to_header()


def test_tan_header_source_position_equals_astropy() -> None:
    header = tan_header()
    buffer = io.BytesIO()
    fits.PrimaryHDU(np.zeros((40, 40), np.float32), header=header).writeto(buffer)
    _, cards = parse_primary_image(buffer.getvalue())
    ra, dec = 150.0 + 1.3 / 3600, 2.0 - 0.7 / 3600
    _, source = linear_transform(cards, ra, dec)
    _, ref_source = wcs_from_header(fits.Header(header), ra, dec)
    assert np.allclose(source, ref_source, atol=1e-6)


def test_scaled_integers_fall_back_to_astropy() -> None:
    hdu = fits.PrimaryHDU(np.arange(100, dtype=np.int16).reshape(10, 10))
    hdu.header["BSCALE"] = 2.0
    buffer = io.BytesIO()
    hdu.writeto(buffer)
    assert parse_primary_image(buffer.getvalue()) is None


def test_distorted_or_other_projections_fall_back() -> None:
    header = tan_header()
    header["CTYPE1"], header["CTYPE2"] = "RA---SIN", "DEC--SIN"
    assert linear_transform(dict(header), 150.0, 2.0) is None
    sip = tan_header()
    sip["A_ORDER"] = 2
    assert linear_transform(dict(sip), 150.0, 2.0) is None


def test_truncated_data_is_not_parsed() -> None:
    raw = rubin_cutout_bytes(size=40)
    assert parse_primary_image(raw[: 2880 + 100]) is None
