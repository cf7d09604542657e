"""Resample a cutout of any orientation and pixel scale onto the model's fixed north-up frame.

The frame is a ``size x size`` grid of square pixels of ``pixel_scale_arcsec``, centred on the source,
north up (row index grows to the north) and east left (column index grows to the west), i.e. the frame's
own linear transform is ``diag(-s, s)``. Each frame pixel is the flux that falls in it: the cutout is
interpolated bilinearly (beyond the outer pixel centres, the edge pixel's value) at ``n x n`` points
per frame pixel (``n`` = how many cutout pixels fit across a frame pixel), the surface brightness is
averaged, and multiplied by the area ratio. Flux is therefore conserved whether the frame is coarser
(Rubin, 0.2"/px) or finer (ZTF, 1.01"/px) than the cutout.

A frame pixel is valid only if every one of its sample points lies inside the cutout and every cutout
pixel it draws on is finite: pixels outside a cutout or near a NaN are masked (0 in ``data``), never
invented.

Where the sample points fall depends only on the cutout's shape, pixel -> sky map and source pixel, not
on its pixels: a :class:`ResamplePlan` holds them, and resamples every image on that grid (an alert's
difference, science and template cutouts share one) at the cost of the interpolation alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

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


def _block_reduce(values: np.ndarray, n: int, op: np.ufunc) -> np.ndarray:
    """``op`` over each ``n x n`` block of a ``(size*n, size*n)`` array: ``(size, size)``.

    One strided slice per sub-position, reduced in place (``np.add``: the block sums; ``np.logical_and``:
    whether a whole block is true): for the few samples per side a frame pixel has, several times faster
    than a reduction over two axes of a 4-D view.
    """
    total = values[0::n, 0::n].copy()
    for i in range(n):
        for j in range(n):
            if i or j:
                op(total, values[i::n, j::n], out=total)
    return total


def _bilinear_terms(y: np.ndarray, x: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Flat pixel indices and weights ``(4, N)`` of bilinear interpolation at cutout points ``(y, x)``.

    A point beyond the outer pixel centres takes the edge pixel's value (the nearest pixel's, in both
    directions), so a sample just inside the cutout's border is still defined.
    """
    rows, cols = shape
    y = np.clip(y, 0.0, rows - 1.0)
    x = np.clip(x, 0.0, cols - 1.0)
    row = np.clip(np.floor(y), 0, max(rows - 2, 0)).astype(np.intp)
    col = np.clip(np.floor(x), 0, max(cols - 2, 0)).astype(np.intp)
    fy, fx = y - row, x - col
    base = row * cols + col
    down, right = (cols if rows > 1 else 0), (1 if cols > 1 else 0)
    index = np.stack([base, base + right, base + down, base + down + right])
    weight = np.stack([(1.0 - fy) * (1.0 - fx), (1.0 - fy) * fx, fy * (1.0 - fx), fy * fx])
    return index, weight


@dataclass(frozen=True, slots=True, eq=False)
class ResamplePlan:
    """The sample points of one cutout geometry on the frame: resamples any image on that grid.

    Build it with :meth:`build`; :meth:`apply` then costs one gather of four pixels per sample point.

    Attributes
    ----------
    shape
        ``(rows, columns)`` of the cutouts it resamples.
    cd_arcsec
        Their pixel -> (east, north) map [arcsec].
    source_pixel
        0-based ``(x, y)`` of the source in them.
    n
        Sample points per side of a frame pixel.
    index, weight
        ``(4, (size*n)**2)`` flat cutout pixel indices and bilinear weights of every sample point,
        frame-row major.
    inside
        ``((size*n)**2,)`` whether each sample point lies inside the cutout.
    covered
        ``(size, size)`` whether every sample point of the frame pixel lies inside the cutout: the mask
        of an image without bad pixels.
    flux_scale
        Frame pixel area over cutout pixel area, divided by the ``n * n`` samples that are summed.
    """

    shape: tuple[int, int]
    cd_arcsec: np.ndarray
    source_pixel: tuple[float, float]
    n: int
    index: np.ndarray
    weight: np.ndarray
    inside: np.ndarray
    covered: np.ndarray
    flux_scale: float

    @classmethod
    def build(
        cls,
        shape: tuple[int, int],
        cd_arcsec: np.ndarray,
        source_pixel: tuple[float, float],
        size: int,
        pixel_scale_arcsec: float,
    ) -> ResamplePlan:
        """The plan of cutouts of ``shape``, map ``cd_arcsec`` and source ``source_pixel``.

        The parameters are those of :func:`resample_to_frame`.
        """
        cd = np.asarray(cd_arcsec, dtype=np.float64)
        n = samples_per_side(cd, pixel_scale_arcsec)
        x, y = _sample_points(cd, source_pixel, size, pixel_scale_arcsec, n)
        rows, cols = int(shape[0]), int(shape[1])
        inside = (x >= -0.5) & (x <= cols - 0.5) & (y >= -0.5) & (y <= rows - 0.5)
        index, weight = _bilinear_terms(y.ravel(), x.ravel(), (rows, cols))
        return cls(
            shape=(rows, cols),
            cd_arcsec=cd,
            source_pixel=(float(source_pixel[0]), float(source_pixel[1])),
            n=n,
            index=index,
            weight=weight,
            inside=inside.ravel(),
            covered=_block_reduce(inside, n, np.logical_and),
            flux_scale=pixel_scale_arcsec**2 / abs(float(np.linalg.det(cd))) / (n * n),
        )

    def fits(self, shape: tuple[int, int], cd_arcsec: np.ndarray, source_pixel: tuple[float, float]) -> bool:
        """Whether a cutout of this shape, map and source pixel is on this plan's grid (exactly)."""
        return (
            tuple(shape) == self.shape
            and (float(source_pixel[0]), float(source_pixel[1])) == self.source_pixel
            and np.array_equal(cd_arcsec, self.cd_arcsec)
        )

    def _interpolate(self, image: np.ndarray) -> np.ndarray:
        """Bilinear values of a float64 image at every sample point."""
        return np.einsum("kn,kn->n", np.take(image.ravel(), self.index), self.weight)

    def apply(self, image: np.ndarray, finite: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Resample one image of the plan's grid: ``(data, mask)`` as :func:`resample_to_frame` returns.

        Parameters
        ----------
        image
            2-D cutout of :attr:`shape`, flux per cutout pixel; NaN or inf marks a bad pixel.
        finite
            ``np.isfinite(image)``, when the caller has it already.

        Raises
        ------
        ValueError
            The image is not of the plan's shape.
        """
        if image.shape != self.shape:
            raise ValueError(f"image of shape {image.shape} is not on this plan's {self.shape} grid")
        img = np.asarray(image, dtype=np.float64)
        finite = np.isfinite(img) if finite is None else finite
        all_finite = bool(finite.all())
        values = self._interpolate(img if all_finite else np.where(finite, img, 0.0))
        side = self.covered.shape[0] * self.n
        if all_finite:
            mask = self.covered.copy()  # the common case: no bad pixel to keep away from
        else:
            good = self.inside & (self._interpolate(finite.astype(np.float64)) >= _VALID_THRESHOLD)
            mask = _block_reduce(good.reshape(side, side), self.n, np.logical_and)
        # Mean surface brightness over the frame pixel, times frame/cutout pixel area ratio = frame flux.
        data = _block_reduce(values.reshape(side, side), self.n, np.add) * self.flux_scale
        return np.where(mask, data, 0.0).astype(np.float32), mask


def resample_to_frame(
    image: np.ndarray,
    cd_arcsec: np.ndarray,
    source_pixel: tuple[float, float],
    size: int,
    pixel_scale_arcsec: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Resample a cutout onto the north-up, east-left model frame.

    Several images on one grid are cheaper through one :class:`ResamplePlan`.

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
    plan = ResamplePlan.build(np.shape(image), cd_arcsec, source_pixel, size, pixel_scale_arcsec)
    return plan.apply(np.asarray(image))
