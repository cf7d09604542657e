import numpy as np
import pytest
from astropy.nddata import CCDData

from broker_plugin.stamps import RubinCutoutGeometry, write_rubin_cutout
from broker_plugin.stamps.fits_io import read_image


def test_cutout_is_written_as_rubin_does() -> None:
    geometry = RubinCutoutGeometry(size=45, rotation_deg=30.0)
    image = np.arange(45 * 45, dtype=np.float32).reshape(45, 45)
    raw = write_rubin_cutout(image, np.full((45, 45), 4.0), geometry, 150.0, -30.0, psf=np.ones((5, 5)))
    data, header = read_image(raw)
    assert np.array_equal(data, image)
    assert header["BUNIT"].strip() == "nJy"
    assert "CTYPE1" not in header  # Rubin's local linear WCS has no projection
    assert header["ROTPA"] == 30.0
    assert (header["CRVAL1"], header["CRVAL2"]) == (150.0, -30.0)
    assert (header["CRPIX1"], header["CRPIX2"]) == (23.0, 23.0)
    ccd = CCDData.read(__import__("io").BytesIO(raw), format="fits")
    assert ccd.wcs is None  # what the design warns about: readers must build the WCS from the header
    assert np.allclose(ccd.uncertainty.array, 4.0)


@pytest.mark.parametrize("rotation", [0.0, 90.0, 200.0])
def test_geometry_is_a_rotation_with_east_left_parity(rotation: float) -> None:
    geometry = RubinCutoutGeometry(size=31, pixel_scale_arcsec=0.2, rotation_deg=rotation)
    cd = geometry.cd_arcsec
    assert np.linalg.det(cd) == pytest.approx(-0.04)  # un-mirrored sky: negative determinant
    east, north = geometry.sky_offsets()
    assert east[15, 15] == pytest.approx(0.0) and north[15, 15] == pytest.approx(0.0)
    # +y points to position angle `rotation` (north through east).
    theta = np.radians(rotation)
    assert east[16, 15] == pytest.approx(0.2 * np.sin(theta))
    assert north[16, 15] == pytest.approx(0.2 * np.cos(theta))
