"""Read a cutout's image and header from FITS bytes (astropy.io.fits), with typed errors only."""

from __future__ import annotations

import gzip
import io
import warnings
import zlib

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyWarning

from broker_plugin.exceptions import CorruptCutoutError, CutoutShapeError

#: A cutout side below this cannot hold a PSF; larger than this is not a cutout.
MIN_SIDE, MAX_SIDE = 4, 4096


def gunzip(raw: bytes) -> bytes:
    """Decompress a gzipped cutout (ZTF), or fail with :class:`CorruptCutoutError`."""
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise CorruptCutoutError(f"cutout is not valid gzip: {exc}") from exc


def read_image(raw: bytes) -> tuple[np.ndarray, fits.Header]:
    """Return the first image HDU's pixels (float64, native byte order) and its header.

    Parameters
    ----------
    raw
        Uncompressed FITS bytes.

    Returns
    -------
    tuple
        ``(image, header)``; ``image`` is 2-D ``[row, column]``.

    Raises
    ------
    CorruptCutoutError
        The bytes are not FITS or hold no image.
    CutoutShapeError
        The image is not 2-D or its sides are out of range.
    """
    if not raw.startswith(b"SIMPLE  ="):
        raise CorruptCutoutError("cutout is not a FITS file (no SIMPLE card)")
    try:
        with warnings.catch_warnings():
            # ZTF's own stamps carry a non-standard SIMPLE card; astropy warns and reads them fine.
            warnings.simplefilter("ignore", AstropyWarning)
            with fits.open(io.BytesIO(raw), memmap=False, lazy_load_hdus=True) as hdul:
                for hdu in hdul:
                    if hdu.is_image and hdu.header.get("NAXIS", 0) > 0:
                        data = hdu.data
                        header = hdu.header
                        break
                else:
                    raise CorruptCutoutError("FITS cutout holds no image HDU")
                image = np.asarray(data, dtype=np.float64)
    except CorruptCutoutError:
        raise
    except Exception as exc:  # astropy raises many types on corrupt bytes; all mean "corrupt cutout"
        raise CorruptCutoutError(f"unreadable FITS cutout: {type(exc).__name__}: {exc}") from exc
    check_shape(image)
    return image, header


def check_shape(image: np.ndarray) -> None:
    """Refuse images that are not 2-D or whose sides are out of range (:class:`CutoutShapeError`)."""
    if image.ndim != 2:
        raise CutoutShapeError(f"cutout image is {image.ndim}-D, expected 2-D")
    if min(image.shape) < MIN_SIDE or max(image.shape) > MAX_SIDE:
        raise CutoutShapeError(f"cutout shape {image.shape} outside {MIN_SIDE}..{MAX_SIDE} px")
