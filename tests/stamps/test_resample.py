import math

import numpy as np
import pytest
from scipy import ndimage

from broker_plugin.stamps import RubinCutoutGeometry, resample_to_frame
from broker_plugin.stamps.resample import ResamplePlan, frame_sky_offsets, samples_per_side
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


def reference_resample(
    image: np.ndarray, cd: np.ndarray, source: tuple[float, float], size: int, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """The resampler's definition, spelled out with scipy's interpolation: the plan must agree with it."""
    n = samples_per_side(cd, scale)
    sub = ((np.arange(n) + 0.5) / n - 0.5) * scale
    fine = ((np.arange(size) - (size - 1) / 2)[:, None] * scale + sub[None, :]).ravel()
    east, north = np.meshgrid(-fine, fine)
    inv = np.linalg.inv(cd)
    x = source[0] + inv[0, 0] * east + inv[0, 1] * north
    y = source[1] + inv[1, 0] * east + inv[1, 1] * north
    finite = np.isfinite(image)
    coords = np.stack([y.ravel(), x.ravel()])
    values = ndimage.map_coordinates(np.where(finite, image, 0.0), coords, order=1, mode="nearest")
    weight = ndimage.map_coordinates(finite.astype(float), coords, order=1, mode="nearest")
    rows, cols = image.shape
    inside = (x >= -0.5) & (x <= cols - 0.5) & (y >= -0.5) & (y <= rows - 0.5)
    good = (inside.ravel() & (weight >= 0.999)).reshape(size, n, size, n).all(axis=(1, 3))
    data = values.reshape(size, n, size, n).mean(axis=(1, 3)) * scale**2 / abs(np.linalg.det(cd))
    return np.where(good, data, 0.0).astype(np.float32), good


def test_the_plan_agrees_with_the_definition_on_any_geometry() -> None:
    rng = np.random.default_rng(7)
    for k in range(200):
        shape = (int(rng.integers(4, 90)), int(rng.integers(4, 90)))
        theta, pixel = rng.uniform(0, 2 * np.pi), rng.choice([0.1, 0.2, 0.4, 1.01, 2.5])
        cd = pixel * np.array([[-np.cos(theta), np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        source = (rng.uniform(-3, shape[1] + 2), rng.uniform(-3, shape[0] + 2))
        image = rng.normal(0, 100, shape)
        if k % 3 == 0:  # bad pixels: masked with their neighbourhood
            image[rng.integers(0, shape[0], 4), rng.integers(0, shape[1], 4)] = np.nan
        data, mask = resample_to_frame(image, cd, source, SIZE, SCALE)
        want, want_mask = reference_resample(image, cd, source, SIZE, SCALE)
        assert np.array_equal(mask, want_mask), k
        np.testing.assert_allclose(data, want, rtol=1e-6, atol=1e-9 * np.abs(want).max(initial=1.0))


def test_one_plan_resamples_every_image_on_its_grid_as_alone() -> None:
    geometry = RubinCutoutGeometry(size=50, rotation_deg=21.0)
    plan = ResamplePlan.build((50, 50), geometry.cd_arcsec, geometry.source_xy, SIZE, SCALE)
    rng = np.random.default_rng(3)
    for _ in range(3):
        image = rng.normal(0, 10, (50, 50))
        image[rng.integers(0, 50), rng.integers(0, 50)] = np.inf
        alone = resample_to_frame(image, geometry.cd_arcsec, geometry.source_xy, SIZE, SCALE)
        got = plan.apply(image)
        assert got[0].tobytes() == alone[0].tobytes() and np.array_equal(got[1], alone[1])
    assert plan.fits((50, 50), geometry.cd_arcsec.copy(), geometry.source_xy)
    assert not plan.fits((50, 51), geometry.cd_arcsec, geometry.source_xy)
    assert not plan.fits((50, 50), geometry.cd_arcsec * 1.0000001, geometry.source_xy)
    assert not plan.fits((50, 50), geometry.cd_arcsec, (geometry.source_xy[0] + 0.01, geometry.source_xy[1]))
    with pytest.raises(ValueError, match="grid"):
        plan.apply(np.zeros((50, 51)))


def test_a_plan_is_not_changed_by_the_frames_made_with_it() -> None:
    plan = ResamplePlan.build((40, 40), np.diag([-0.2, 0.2]), (19.5, 19.5), SIZE, SCALE)
    covered = plan.covered.copy()
    _, mask = plan.apply(np.ones((40, 40)))
    mask[:] = False  # a caller owns the mask it is given
    assert np.array_equal(plan.covered, covered)
