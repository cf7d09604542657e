"""Make difference-image cutouts exactly as Rubin writes them into alerts.

Rubin's ``ap_association`` (``PackageAlertsTask.createCcdDataCutout``) writes each cutout as an astropy
``CCDData`` FITS file: the image calibrated to nJy, a ``VarianceUncertainty`` extension, the PSF image,
and a *local linear* WCS: ``CRPIX`` at the source, ``CRVAL`` = the source's (ra, dec) and a CD matrix
(the Jacobian of pixel -> local gnomonic offsets, in degrees) but **no CTYPE**, so ``CCDData.read().wcs``
is ``None`` and readers must build the transform from the header. The cutout is square, its side follows
the source's footprint (30..102 px), and its orientation is the detector's on the sky at that visit, so
it rotates from visit to visit. We also write a ``ROTPA`` keyword (rotation angle [deg]).

The simulator and the tests use this module to produce alerts that the decoder must read like real ones.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from astropy import units as u
from astropy.nddata import CCDData, VarianceUncertainty
from astropy.wcs import WCS


@dataclass(frozen=True, slots=True)
class RubinCutoutGeometry:
    """Pixel grid of one Rubin cutout on the sky.

    Attributes
    ----------
    size
        Side of the square cutout [pixels] (Rubin: 30..102).
    pixel_scale_arcsec
        Pixel scale [arcsec] (Rubin: 0.2).
    rotation_deg
        Position angle of the cutout's +y axis, from north through east [deg]. At 0 the cutout is north
        up, east left; any other angle rotates it (Rubin's rotates at every visit).
    source_pixel
        0-based ``(x, y)`` position of the source; ``None`` means the cutout centre.
    """

    size: int
    pixel_scale_arcsec: float = 0.2
    rotation_deg: float = 0.0
    source_pixel: tuple[float, float] | None = None

    @property
    def source_xy(self) -> tuple[float, float]:
        """0-based ``(x, y)`` of the source."""
        if self.source_pixel is not None:
            return self.source_pixel
        centre = (self.size - 1) / 2.0
        return (centre, centre)

    @property
    def cd_arcsec(self) -> np.ndarray:
        """2x2 map from pixel offsets ``(dx, dy)`` to ``(east, north)`` [arcsec]."""
        theta = math.radians(self.rotation_deg)
        c, s = math.cos(theta), math.sin(theta)
        # Columns are the sky directions of the +x and +y pixel axes; +y points at position angle theta
        # and +x 90 deg clockwise of it (west at theta = 0), which keeps the image un-mirrored.
        return self.pixel_scale_arcsec * np.array([[-c, s], [s, c]])

    def sky_offsets(self) -> tuple[np.ndarray, np.ndarray]:
        """Sky offsets of every pixel centre from the source.

        Returns
        -------
        tuple of numpy.ndarray
            ``(east, north)`` [arcsec], each ``(size, size)`` indexed ``[row (y), column (x)]``.
        """
        x0, y0 = self.source_xy
        idx = np.arange(self.size, dtype=np.float64)
        dx = idx[None, :] - x0
        dy = idx[:, None] - y0
        cd = self.cd_arcsec
        return cd[0, 0] * dx + cd[0, 1] * dy, cd[1, 0] * dx + cd[1, 1] * dy


def write_rubin_cutout(
    image_njy: np.ndarray,
    variance_njy2: np.ndarray,
    geometry: RubinCutoutGeometry,
    ra: float,
    dec: float,
    psf: np.ndarray | None = None,
) -> bytes:
    """Serialise a cutout the way Rubin's alert production does.

    Parameters
    ----------
    image_njy
        ``(size, size)`` difference image [nJy per pixel].
    variance_njy2
        ``(size, size)`` variance [nJy^2].
    geometry
        The cutout's pixel grid on the sky.
    ra, dec
        Sky position of the source [deg] (``CRVAL``).
    psf
        Optional PSF kernel image (written as the ``PSFIMAGE`` extension).

    Returns
    -------
    bytes
        Uncompressed FITS bytes (``cutoutDifference``).
    """
    wcs = WCS(naxis=2)
    x0, y0 = geometry.source_xy
    wcs.wcs.crpix = [x0 + 1.0, y0 + 1.0]  # FITS pixels are 1-based
    wcs.wcs.crval = [ra, dec]
    wcs.wcs.cd = geometry.cd_arcsec / 3600.0
    ccd = CCDData(
        data=np.asarray(image_njy, dtype=np.float32),
        uncertainty=VarianceUncertainty(np.asarray(variance_njy2, dtype=np.float32)),
        wcs=wcs,
        psf=None if psf is None else np.asarray(psf, dtype=np.float32),
        meta={"cutMinX": 0, "cutMinY": 0, "ROTPA": float(geometry.rotation_deg)},
        unit=u.nJy,
    )
    with io.BytesIO() as buffer:
        ccd.write(buffer, format="fits")
        return buffer.getvalue()
