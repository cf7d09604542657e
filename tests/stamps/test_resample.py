import math

import numpy as np
import pytest

from broker_plugin.stamps import RubinCutoutGeometry, resample_to_frame
from broker_plugin.stamps.resample import frame_sky_offsets
from tests.factories import gaussian_source

SIZE, SCALE = 32, 0.4


def centroid(data: np.ndarray, mask: np.ndarray) -> tuple[float, float, float]:
    east, north = frame_sky_offsets(SIZE, SCALE)
    w = np.where(mask, data, 0.0)
    total = w.sum()
    return total, (w * east).sum() / total, (w * north).sum() / total


@pytest.mark.parametrize("size", [30, 41, 64, 102])
@pytest.mark.parametrize("rotation", [0.0, 17.0, 90.0, 135.5, 251.0, 333.3])
def test_point_source_lands_on_same_pixel_and_keeps_its_flux(size: int, rotation: float) -> None:
    east, north = 0.6, -0.9  # arcsec from the alert position: inside even a 30 px (6") cutout
    geometry = RubinCutoutGeometry(size=size, rotation_deg=rotation)
    image = gaussian_source(geometry, 1000.0, 0.7, east, north)
    data, mask = resample_to_frame(image, geometry.cd_arcsec, geometry.source_xy, SIZE, SCALE)
    total, ce, cn = centroid(data, mask)
    # Sky offset -> frame pixel: column grows to the west, row to the north.
    col = (SIZE - 1) / 2 - ce / SCALE
    row = (SIZE - 1) / 2 + cn / SCALE
    assert abs(col - ((SIZE - 1) / 2 - east / SCALE)) < 0.5
    assert abs(row - ((SIZE - 1) / 2 + north / SCALE)) < 0.5
    assert total == pytest.approx(1000.0, rel=0.02)


def test_north_up_east_left_orientation() -> None:
    geometry = RubinCutoutGeometry(size=60, rotation_deg=73.0)
    image = gaussian_source(geometry, 1000.0, 0.5, east=2.0, north=0.0) + gaussian_source(
        geometry, 500.0, 0.5, east=0.0, north=2.0
    )
    data, _ = resample_to_frame(image, geometry.cd_arcsec, geometry.source_xy, SIZE, SCALE)
    c = (SIZE - 1) / 2
    east_pixel = np.unravel_index(np.argmax(data), data.shape)
    assert east_pixel[1] < c  # the eastern (brighter) source is left of centre
    assert abs(east_pixel[0] - c) <= 0.5
    top = data[int(c + 5 / 2) - 1 : int(c + 5 / 2) + 3, 14:18].sum()
    bottom = data[int(c - 5 / 2) - 2 : int(c - 5 / 2) + 2, 14:18].sum()
    assert top > 10 * max(bottom, 1e-9)  # the northern source is above centre (higher row index)


def test_small_cutout_masks_outside_pixels_instead_of_inventing_them() -> None:
    geometry = RubinCutoutGeometry(size=30, rotation_deg=30.0)  # 6" cutout in a 12.8" frame
    image = np.full((30, 30), 5.0)
    data, mask = resample_to_frame(image, geometry.cd_arcsec, geometry.source_xy, SIZE, SCALE)
    assert 0.1 < mask.mean() < 0.3
    assert np.all(data[~mask] == 0)
    # A flat 5 nJy/px (0.2") cutout is 20 nJy per 0.4" frame pixel wherever measured.
    assert np.allclose(data[mask], 20.0, rtol=1e-6)
    corner = mask[0, 0] or mask[0, -1] or mask[-1, 0] or mask[-1, -1]
    assert not corner


def test_nan_pixels_mask_only_their_neighbourhood() -> None:
    geometry = RubinCutoutGeometry(size=80)
    image = np.ones((80, 80))
    image[40, 40] = np.nan
    data, mask = resample_to_frame(image, geometry.cd_arcsec, geometry.source_xy, SIZE, SCALE)
    assert np.isfinite(data).all()
    assert 0 < (~mask).sum() <= 4
    assert mask.mean() > 0.99


def test_upsampling_coarse_pixels_conserves_flux() -> None:
    scale = 1.01  # ZTF-like
    cd = np.array([[-scale, 0.0], [0.0, scale]])
    yy, xx = np.mgrid[0:63, 0:63]
    sigma = 2.0 / 2.355 / scale * 1.0 * 1.0
    image = 800.0 * np.exp(-((xx - 31) ** 2 + (yy - 31) ** 2) / (2 * sigma**2)) / (2 * math.pi * sigma**2)
    data, mask = resample_to_frame(image, cd, (31.0, 31.0), SIZE, SCALE)
    assert mask.all()
    assert data.sum() == pytest.approx(800.0, rel=0.02)
