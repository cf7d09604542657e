"""Check a FITS cutout's structure, card by card, before a single pixel is allocated.

A cutout arrives from the network, so every number in its header is hostile until checked: ``NAXISn``
decide how much memory reading it takes, ``BITPIX`` how its bytes are read, and a header can promise more
data than the bytes hold. :func:`locate_image` walks the HDUs with plain string handling (never through
astropy, which allocates whatever a header declares), finds the image, and checks:

- the bytes start with a ``SIMPLE`` card and are at most ``max_cutout_bytes`` long;
- every header ends (an ``END`` card) within :data:`MAX_HEADER_BLOCKS` blocks, and the image is among the
  first :data:`MAX_HDUS` HDUs (Rubin's is the primary one);
- ``SIMPLE``/``XTENSION``, ``BITPIX``, ``NAXIS``, ``NAXISn``, ``PCOUNT`` and ``GCOUNT`` appear at most once
  each, and the numeric ones are integer literals;
- ``BITPIX`` is one of 8, 16, 32, 64, -32, -64; ``NAXIS`` is 0..999 and every ``NAXISn`` >= 0;
- the image has ``NAXIS = 2``, or ``NAXIS = 3`` with ``NAXIS3 = 1`` (a degenerate third axis, read as the 2-D
  image it is);
- ``NAXIS1 x NAXIS2 <= max_cutout_pixels`` and each side is within :data:`MIN_SIDE` .. :data:`MAX_SIDE`;
- an image extension has ``PCOUNT = 0`` and ``GCOUNT = 1``;
- the bytes hold all the data the headers before and of the image declare.

Both readers, :func:`read_pixels` here and astropy in :mod:`.fits_io`, run only on a file that passed.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, replace

import numpy as np

from broker_plugin.config import LimitsSettings
from broker_plugin.exceptions import (
    CorruptCutoutError,
    CutoutHeaderError,
    CutoutShapeError,
    CutoutTooLargeError,
)

BLOCK = 2880
CARD = 80
#: A cutout header has well under 100 cards (Rubin's about 25, ZTF's 6); 32 blocks (1152 cards) leave room
#: for a copied full-frame header and bound the work a hostile header causes (tens of ms).
MAX_HEADER_BLOCKS = 32
#: Rubin's image is the primary HDU, others put it in the first extension; a couple more are tolerated.
#: astropy parses every header before the image, so this bounds what a chain of long headers costs it.
MAX_HDUS = 4
#: A cutout side below this cannot hold a PSF; larger than this is not a cutout.
MIN_SIDE, MAX_SIDE = 4, 4096
#: The FITS standard's BITPIX values and the big-endian dtypes they store.
BITPIX_DTYPES: dict[int, str] = {8: "u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}
#: Keywords that decide where HDUs start and how large their data are: no duplicates allowed, since a
#: reader that takes the first and one that takes the last would disagree about the layout.
_STRUCTURAL = re.compile(r"SIMPLE|XTENSION|BITPIX|NAXIS\d*|PCOUNT|GCOUNT")
#: A FITS integer or real literal (group "int" or "real"). Python's int() and float() also take "nan",
#: "inf" and "1_0"; FITS has none of them.
_NUMBER = re.compile(r"(?P<int>[+-]?\d+)|(?P<real>[+-]?(?:\d+\.?\d*|\.\d+)(?:[EeDd][+-]?\d+)?)")


@dataclass(frozen=True, slots=True)
class ImageHdu:
    """Where a validated image lies in the FITS bytes, and its header.

    Attributes
    ----------
    index
        HDU number (0: the primary HDU).
    cards
        The image HDU's ``{keyword: value}``: ``str``, ``bool``, ``int``, ``float`` or ``None`` (a value
        that is none of these, e.g. ``NaN`` or a complex number).
    axes
        ``(NAXIS1, ..., NAXISn)`` as declared (a degenerate third axis included).
    bitpix
        ``BITPIX`` (one of :data:`BITPIX_DTYPES`).
    data_offset
        Byte offset of the first pixel.
    """

    index: int
    cards: dict[str, object]
    axes: tuple[int, ...]
    bitpix: int
    data_offset: int

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, columns)`` of the 2-D image."""
        return self.axes[1], self.axes[0]

    @property
    def dtype(self) -> np.dtype:
        """Big-endian dtype of the stored pixels."""
        return np.dtype(BITPIX_DTYPES[self.bitpix])

    @property
    def scaled(self) -> bool:
        """Whether pixels are stored scaled (``BSCALE``/``BZERO`` other than 1/0)."""
        return self.cards.get("BSCALE", 1.0) != 1.0 or self.cards.get("BZERO", 0.0) != 0.0


# Most value fields repeat from cutout to cutout (structure, units, an alert's three cutouts share their
# WCS): parsing each once saves a third of a cutout's header time. Results are immutable.
@functools.lru_cache(maxsize=4096)
def card_value(text: str) -> str | bool | int | float | None:
    """Parse a card's value field: quoted string, logical, integer or real; ``None`` for anything else.

    Parameters
    ----------
    text
        Columns 11..80 of the card (after ``"= "``), comment included.
    """
    text = text.strip()
    if text.startswith("'"):
        end = text.find("'", 1)
        while end != -1 and end + 1 < len(text) and text[end + 1] == "'":  # doubled quote inside
            end = text.find("'", end + 2)
        return text[1:end].replace("''", "'").rstrip() if end != -1 else None
    slash = text.find("/")
    if slash != -1:
        text = text[:slash].rstrip()
    if text in ("T", "F"):
        return text == "T"
    number = _NUMBER.fullmatch(text)
    if number is None:
        return None
    if number.lastgroup == "int":
        return int(text)
    return float(text.replace("D", "E").replace("d", "e"))  # may be inf: "1E999" overflows


def _read_header(raw: bytes, offset: int) -> tuple[dict[str, str], int]:
    """Cards of the header at ``offset``: ``({keyword: raw value field}, data offset)``.

    Values are parsed later, and only those needed (:func:`card_value`): a hostile file may hold thousands
    of cards in headers that are skipped.
    """
    fields: dict[str, str] = {}
    for number in range(MAX_HEADER_BLOCKS):
        start = offset + number * BLOCK
        if start + BLOCK > len(raw):
            raise CorruptCutoutError(f"FITS header at byte {offset} is truncated: no END card before the end")
        # 'replace' maps each bad byte to one character, so cards stay 80 characters apart.
        block = raw[start : start + BLOCK].decode("ascii", errors="replace")
        for first in range(0, BLOCK, CARD):
            keyword = block[first : first + 8].rstrip()
            if keyword == "END":
                return fields, start + BLOCK
            if block[first + 8 : first + 10] != "= ":
                continue  # COMMENT, HISTORY, blank and other commentary cards carry no value
            if keyword in fields and _STRUCTURAL.fullmatch(keyword):
                raise CutoutHeaderError(f"FITS header repeats the structural keyword {keyword}")
            fields[keyword] = block[first + 10 : first + CARD]
    raise CutoutHeaderError(f"FITS header at byte {offset} has no END card in {MAX_HEADER_BLOCKS} blocks")


def _integer(fields: dict[str, str], keyword: str, default: int | None = None) -> int:
    """The integer value of a structural card, or :class:`CutoutHeaderError`."""
    if keyword not in fields and default is not None:
        return default
    value = card_value(fields[keyword]) if keyword in fields else None
    if type(value) is not int:  # bool is an int subclass, and T is not a number
        shown = fields[keyword].split("/", 1)[0].strip()[:20] if keyword in fields else "missing"
        raise CutoutHeaderError(f"FITS keyword {keyword} is {shown!r}, not an integer")
    return value


def _layout(fields: dict[str, str]) -> tuple[int, tuple[int, ...], int, int]:
    """``(BITPIX, (NAXIS1, ...), PCOUNT, GCOUNT)`` of one HDU, each checked (:class:`CutoutHeaderError`)."""
    bitpix = _integer(fields, "BITPIX")
    if bitpix not in BITPIX_DTYPES:
        raise CutoutHeaderError(f"BITPIX = {bitpix} is not one of {sorted(BITPIX_DTYPES)}")
    naxis = _integer(fields, "NAXIS")
    if not 0 <= naxis <= 999:
        raise CutoutHeaderError(f"NAXIS = {naxis} is outside 0..999")
    axes = tuple(_integer(fields, f"NAXIS{i}") for i in range(1, naxis + 1))
    if any(n < 0 for n in axes):
        raise CutoutHeaderError(f"negative image axis in NAXISn = {axes}")
    pcount, gcount = _integer(fields, "PCOUNT", 0), _integer(fields, "GCOUNT", 1)
    if pcount < 0 or gcount < 0:
        raise CutoutHeaderError(f"PCOUNT = {pcount}, GCOUNT = {gcount}: counts cannot be negative")
    return bitpix, axes, pcount, gcount


def locate_image(raw: bytes, limits: LimitsSettings) -> ImageHdu:
    """Find and check the cutout's image HDU from the header cards alone.

    Parameters
    ----------
    raw
        Uncompressed FITS bytes.
    limits
        ``max_cutout_bytes`` and ``max_cutout_pixels`` bound what the file may hold.

    Returns
    -------
    ImageHdu
        The first image HDU with ``NAXIS > 0`` (the primary, or an ``IMAGE`` extension).

    Raises
    ------
    CutoutTooLargeError
        More bytes than ``max_cutout_bytes``, or an image of more pixels than ``max_cutout_pixels``.
    CorruptCutoutError
        Not FITS, a truncated header or data, or no image HDU.
    CutoutHeaderError
        A malformed structural card (see the module docstring).
    CutoutShapeError
        An image that is not 2-D, or whose sides are out of range.
    """
    if len(raw) > limits.max_cutout_bytes:
        raise CutoutTooLargeError(
            f"cutout of {len(raw)} bytes exceeds max_cutout_bytes={limits.max_cutout_bytes}"
        )
    if not raw.startswith(b"SIMPLE  ="):
        raise CorruptCutoutError("cutout is not a FITS file (no SIMPLE card)")
    offset = 0
    for index in range(MAX_HDUS):
        if index > 0 and not raw.startswith(b"XTENSION=", offset):
            break  # end of file, or trailing bytes that are no extension: no image in this file
        fields, data_offset = _read_header(raw, offset)
        bitpix, axes, pcount, gcount = _layout(fields)
        itemsize = abs(bitpix) // 8
        if axes and (index == 0 or card_value(fields.get("XTENSION", "")) == "IMAGE"):
            hdu = _checked_image(raw, limits, ImageHdu(index, {}, axes, bitpix, data_offset), pcount, gcount)
            return replace(hdu, cards={keyword: card_value(field) for keyword, field in fields.items()})
        data_bytes = itemsize * gcount * (pcount + math.prod(axes)) if axes else 0
        if data_offset + data_bytes > len(raw):
            raise CorruptCutoutError(f"HDU {index} declares {data_bytes} data bytes; the file ends before")
        offset = data_offset + -(-data_bytes // BLOCK) * BLOCK  # data are padded to whole blocks
    raise CorruptCutoutError(f"FITS cutout holds no image HDU (searched {MAX_HDUS} HDUs)")


def _checked_image(raw: bytes, limits: LimitsSettings, hdu: ImageHdu, pcount: int, gcount: int) -> ImageHdu:
    """``hdu`` if its shape, size and data fit the limits and the bytes (see :func:`locate_image`)."""
    axes = hdu.axes
    if len(axes) != 2 and not (len(axes) == 3 and axes[2] == 1):
        raise CutoutShapeError(f"cutout image has NAXIS = {len(axes)} (axes {axes[:8]}), expected 2")
    if hdu.index > 0 and (pcount, gcount) != (0, 1):
        raise CutoutHeaderError(f"image extension has PCOUNT = {pcount}, GCOUNT = {gcount}; expected 0, 1")
    count = axes[0] * axes[1]
    if count > limits.max_cutout_pixels:
        raise CutoutTooLargeError(
            f"cutout declares {axes[0]} x {axes[1]} pixels, more than "
            f"max_cutout_pixels={limits.max_cutout_pixels}"
        )
    if min(axes[:2]) < MIN_SIDE or max(axes[:2]) > MAX_SIDE:
        raise CutoutShapeError(f"cutout shape {hdu.shape} outside {MIN_SIDE}..{MAX_SIDE} px")
    data_bytes = count * hdu.dtype.itemsize
    if hdu.data_offset + data_bytes > len(raw):
        raise CorruptCutoutError(
            f"cutout header declares {data_bytes} data bytes; "
            f"only {max(0, len(raw) - hdu.data_offset)} follow it"
        )
    return hdu


def read_pixels(raw: bytes, hdu: ImageHdu) -> np.ndarray | None:
    """The image as float64 ``[row, column]``, or ``None`` when its pixels are scaled (astropy reads those).

    Parameters
    ----------
    raw
        The FITS bytes :func:`locate_image` checked.
    hdu
        What it returned: the data are known to fit in ``raw`` and within the pixel limit.
    """
    if hdu.scaled:
        return None
    rows, cols = hdu.shape
    image = np.frombuffer(raw, dtype=hdu.dtype, count=rows * cols, offset=hdu.data_offset)
    with np.errstate(invalid="ignore"):  # signalling NaNs among hostile bytes: NaN either way, masked later
        return image.reshape(rows, cols).astype(np.float64)
