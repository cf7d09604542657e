"""Resample a cutout of any orientation and pixel scale onto the model's fixed north-up frame.

The frame is a ``size x size`` grid of square pixels of ``pixel_scale_arcsec``, centred on the source,
north up (row index grows to the north) and east left (column index grows to the west), i.e. the frame's
own linear transform is ``diag(-s, s)``. Each frame pixel is the flux that falls in it: the cutout is
interpolated bilinearly at ``n x n`` points per frame pixel (``n`` = how many cutout pixels fit across a
frame pixel), the surface brightness is averaged, and multiplied by the area ratio. Flux is therefore
conserved whether the frame is coarser (Rubin, 0.2"/px) or finer (ZTF, 1.01"/px) than the cutout.

A frame pixel is valid only if every one of its sample points lies inside the cutout and every cutout
pixel it draws on is finite: pixels outside a cutout or near a NaN are masked (0 in ``data``), never
invented.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

#: Interpolation weights below this count as touching a bad or missing pixel.
_VALID_THRESHOLD = 0.999


def frame_sky_offsets(size: int, pixel_scale_arcsec: float) -> tuple[np.ndarray, np.ndarray]:
    """Sky offsets of the frame's pixel centres from the source.

    Parameters
    ----------
    size
        Side of the frame [pixels].
    pixel_scale_arcsec
        Frame pixel scale [arcsec].

    Returns
    -------
    tuple of numpy.ndarray
        ``(east, north)`` offsets [arcsec], each ``(size, size)`` indexed ``[row, column]``.
    """
    centre = (size - 1) / 2.0
    idx = np.arange(size, dtype=np.float64) - centre
    east = np.broadcast_to(-idx[None, :] * pixel_scale_arcsec, (size, size))
    north = np.broadcast_to(idx[:, None] * pixel_scale_arcsec, (size, size))
    return east, north


def samples_per_side(cd_arcsec: np.ndarray, pixel_scale_arcsec: float) -> int:
    """How many sample points per side of a frame pixel: cutout pixels that fit across one.

    The resampler evaluates ``(size x n)**2`` points, so callers bound ``n`` before resampling a cutout
    whose pixels come from an untrusted header.

    Parameters
    ----------
    cd_arcsec
        2x2 pixel -> (east, north) map of the cutout [arcsec].
    pixel_scale_arcsec
        Frame pixel scale [arcsec].
    """
    cutout_area = abs(np.linalg.det(np.asarray(cd_arcsec, dtype=np.float64)))
    return max(1, math.ceil(pixel_scale_arcsec / math.sqrt(cutout_area) - 1e-9))


def _sample_points(
    cd_arcsec: np.ndarray, source_pixel: tuple[float, float], size: int, pixel_scale_arcsec: float, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Cutout pixel coordinates (x, y) of the ``n x n`` sample points of every frame pixel."""
    centre = (size - 1) / 2.0
    sub = ((np.arange(n) + 0.5) / n - 0.5) * pixel_scale_arcsec
    # Fine grid of sample offsets: frame pixel index * s + sub-pixel offset, shape (size*n,).
    fine = ((np.arange(size) - centre)[:, None] * pixel_scale_arcsec + sub[None, :]).ravel()
    east = -fine[None, :]  # columns grow to the west
    north = fine[:, None]  # rows grow to the north
    inv = np.linalg.inv(cd_arcsec)
    x = source_pixel[0] + inv[0, 0] * east + inv[0, 1] * north
    y = source_pixel[1] + inv[1, 0] * east + inv[1, 1] * north
    return x, y


def resample_to_frame(
    image: np.ndarray,
    cd_arcsec: np.ndarray,
    source_pixel: tuple[float, float],
    size: int,
    pixel_scale_arcsec: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Resample a cutout onto the north-up, east-left model frame.

    Parameters
    ----------
    image
        2-D cutout ``[row (y), column (x)]`` in flux per cutout pixel (e.g. nJy); NaN or inf marks a
        bad pixel.
    cd_arcsec
        2x2 linear transform from pixel offsets ``(dx, dy)`` to sky offsets ``(east, north)`` [arcsec]
        (the FITS CD matrix times 3600, rows = (xi, eta)).
    source_pixel
        0-based ``(x, y)`` position of the source in the cutout; it lands on the frame centre.
    size
        Side of the frame [pixels].
    pixel_scale_arcsec
        Frame pixel scale [arcsec].

    Returns
    -------
    tuple of numpy.ndarray
        ``data``: float32 ``(size, size)`` flux per frame pixel (0 where masked), and ``mask``: bool
        ``(size, size)``, ``True`` where measured.
    """
    cd = np.asarray(cd_arcsec, dtype=np.float64)
    cutout_area = abs(np.linalg.det(cd))
    n = samples_per_side(cd, pixel_scale_arcsec)
    x, y = _sample_points(cd, source_pixel, size, pixel_scale_arcsec, n)

    img = np.asarray(image, dtype=np.float64)
    finite = np.isfinite(img)
    all_finite = bool(finite.all())
    clean = img if all_finite else np.where(finite, img, 0.0)
    coords = np.stack([y.ravel(), x.ravel()])
    # mode="nearest" keeps the outer half of the edge pixels usable; the explicit bounds test below is
    # what decides whether a sample lies inside the cutout.
    values = ndimage.map_coordinates(clean, coords, order=1, mode="nearest", prefilter=False)
    rows, cols = img.shape
    inside = (x.ravel() >= -0.5) & (x.ravel() <= cols - 0.5) & (y.ravel() >= -0.5) & (y.ravel() <= rows - 0.5)
    if all_finite:
        good = inside  # the common case: no bad pixel to keep away from
    else:
        weight = ndimage.map_coordinates(finite.astype(np.float64), coords, order=1, mode="nearest")
        good = inside & (weight >= _VALID_THRESHOLD)

    values = values.reshape(size, n, size, n)
    good = good.reshape(size, n, size, n)
    mask = good.all(axis=(1, 3))
    # Mean surface brightness over the frame pixel, times frame/cutout pixel area ratio = frame flux.
    data = values.mean(axis=(1, 3)) * (pixel_scale_arcsec**2 / cutout_area)
    data = np.where(mask, data, 0.0).astype(np.float32)
    return data, mask
