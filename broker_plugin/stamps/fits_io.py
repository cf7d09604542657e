"""Read a cutout's image and header from FITS bytes (astropy.io.fits), with typed errors only.

Neither function allocates more than the limits allow: :func:`gunzip` stops inflating one byte past
``max_cutout_bytes``, and :func:`read_image` lets astropy see only a file whose structure
:func:`~broker_plugin.stamps.fits_header.locate_image` has checked, then asks astropy for that one HDU and
compares its idea of the shape with the checked one before touching the data.
"""

from __future__ import annotations

import io
import warnings
import zlib

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyWarning

from broker_plugin.config import LimitsSettings
from broker_plugin.exceptions import CorruptCutoutError, CutoutShapeError, CutoutTooLargeError
from broker_plugin.stamps.fits_header import MAX_SIDE, MIN_SIDE, locate_image

__all__ = ["MAX_SIDE", "MIN_SIDE", "check_shape", "gunzip", "read_image"]

#: zlib ``wbits`` for a gzip wrapper (header, CRC32 and length checked), the format ZTF cutouts use.
_GZIP_WBITS = 16 + zlib.MAX_WBITS
#: ZTF writes one gzip member per cutout. Each further member copies the rest of the input (zlib's
#: unused_data), so 75,000 empty 20-byte members in a 1.5 MB message would cost seconds of CPU.
MAX_GZIP_MEMBERS = 8


def gunzip(raw: bytes, max_bytes: int) -> bytes:
    """Decompress a gzipped cutout (ZTF), never producing more than ``max_bytes``.

    Parameters
    ----------
    raw
        gzip bytes: one member, or up to :data:`MAX_GZIP_MEMBERS` concatenated (as :func:`gzip.decompress`
        reads them), optionally followed by zero padding.
    max_bytes
        Largest decompressed size accepted (``LimitsSettings.max_cutout_bytes``).

    Raises
    ------
    CutoutTooLargeError
        The data inflate to more than ``max_bytes``; inflating stops at ``max_bytes + 1``.
    CorruptCutoutError
        Not gzip, a bad CRC or length, truncated, or too many members.
    """
    out = bytearray()
    rest = raw
    try:
        for _ in range(MAX_GZIP_MEMBERS):
            inflater = zlib.decompressobj(_GZIP_WBITS)
            # max_length caps this call's output; with room left it consumes all the input it can, so a
            # member that has not ended by then is truncated.
            out += inflater.decompress(rest, max_bytes + 1 - len(out))
            if len(out) > max_bytes:
                raise CutoutTooLargeError(f"cutout inflates to more than max_cutout_bytes={max_bytes}")
            if not inflater.eof:
                raise CorruptCutoutError("cutout gzip stream is truncated")
            rest = inflater.unused_data.lstrip(b"\x00")
            if not rest:
                return bytes(out)
    except zlib.error as exc:
        raise CorruptCutoutError(f"cutout is not valid gzip: {exc}") from exc
    raise CorruptCutoutError(f"cutout holds more than {MAX_GZIP_MEMBERS} gzip members")


def read_image(raw: bytes, limits: LimitsSettings | None = None) -> tuple[np.ndarray, fits.Header]:
    """Return the image HDU's pixels (float64, native byte order) and its header, read by astropy.

    Parameters
    ----------
    raw
        Uncompressed FITS bytes.
    limits
        Size limits of the file (default ``LimitsSettings()``).

    Returns
    -------
    tuple
        ``(image, header)``; ``image`` is 2-D ``[row, column]``.

    Raises
    ------
    StampError
        :func:`~broker_plugin.stamps.fits_header.locate_image`'s errors, or
        :class:`CorruptCutoutError` when astropy cannot read the checked HDU or reads another shape.
    """
    hdu_info = locate_image(raw, limits or LimitsSettings())
    expected = tuple(reversed(hdu_info.axes))
    try:
        with warnings.catch_warnings():
            # ZTF's own stamps carry a non-standard SIMPLE card; astropy warns and reads them fine.
            warnings.simplefilter("ignore", AstropyWarning)
            # disable_image_compression: a tile-compressed BINTABLE would inflate to whatever its
            # ZNAXISn declare; as a plain table it is never the image.
            with fits.open(
                io.BytesIO(raw), memmap=False, lazy_load_hdus=True, disable_image_compression=True
            ) as hdul:
                hdu = hdul[hdu_info.index]
                if not isinstance(hdu, fits.PrimaryHDU | fits.ImageHDU) or hdu.shape != expected:
                    raise CorruptCutoutError(
                        f"astropy reads HDU {hdu_info.index} as {type(hdu).__name__} of shape "
                        f"{hdu.shape}, the header checks found an image of shape {expected}"
                    )
                header = hdu.header
                # BSCALE/BZERO may overflow float32 pixels to inf: those are masked later, not warned about.
                with np.errstate(over="ignore", invalid="ignore"):
                    image = np.asarray(hdu.data, dtype=np.float64).reshape(hdu_info.shape)
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
