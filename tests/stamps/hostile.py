"""Builders of hostile cutouts: FITS from raw cards, card edits of real cutouts, gzip bombs, alerts."""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from functools import cache

import numpy as np
from astropy.io import fits

from broker_plugin.records import Alert, Survey, ZtfCutoutContext
from tests.factories import ZTF_GOLDEN, rubin_cutout_bytes

BLOCK, CARD = 2880, 80


def card(keyword: str, value: str) -> bytes:
    """One 80-byte card ``KEYWORD = value`` with the value text exactly as given."""
    return f"{keyword:<8}= {value:>20}".ljust(CARD)[:CARD].encode("ascii")


def pad(data: bytes, fill: bytes = b"\0") -> bytes:
    """``data`` padded to whole 2880-byte blocks."""
    return data + fill * (-len(data) % BLOCK)


def fits_bytes(cards: list[tuple[str, str]], data: bytes = b"", *, pad_data: bool = True) -> bytes:
    """A primary HDU from ``(keyword, value text)`` cards (SIMPLE first is up to the caller) and data."""
    header = pad(b"".join(card(k, v) for k, v in cards) + b"END".ljust(CARD), b" ")
    return header + (pad(data) if pad_data else data)


def image_cards(rows: int = 40, cols: int = 40, bitpix: int = -32, **extra: str) -> list[tuple[str, str]]:
    """Structural cards of a 2-D primary image, then ``extra`` cards (WCS etc.)."""
    cards = [
        ("SIMPLE", "T"),
        ("BITPIX", str(bitpix)),
        ("NAXIS", "2"),
        ("NAXIS1", str(cols)),
        ("NAXIS2", str(rows)),
    ]
    return cards + list(extra.items())


def linear_wcs(scale_deg: float = 0.2 / 3600, crpix: float = 20.5) -> dict[str, str]:
    """Rubin-like linear WCS cards (no CTYPE): CD = diag(-s, s), source at CRPIX."""
    return {
        "CRPIX1": repr(crpix),
        "CRPIX2": repr(crpix),
        "CRVAL1": "150.0",
        "CRVAL2": "2.0",
        "CD1_1": repr(-scale_deg),
        "CD1_2": "0.0",
        "CD2_1": "0.0",
        "CD2_2": repr(scale_deg),
    }


def header_end(raw: bytes) -> int:
    """Byte offset of the primary header's END card."""
    for offset in range(0, len(raw), CARD):
        if raw[offset : offset + 8] == b"END     ":
            return offset
    raise ValueError("no END card")


def set_card(raw: bytes, keyword: str, value: str) -> bytes:
    """``raw`` with ``keyword``'s card in the primary header rewritten (or added before END) in place.

    The header keeps its length, so the data stay where they were: only the card's meaning changes.
    """
    end = header_end(raw)
    new = card(keyword, value)
    for offset in range(0, end, CARD):
        if raw[offset : offset + 8].rstrip() == keyword.encode():
            return raw[:offset] + new + raw[offset + CARD :]
    if (end + CARD) % BLOCK == 0:
        raise ValueError("no room before END in this block")
    return raw[:end] + new + b"END".ljust(CARD) + raw[end + 2 * CARD :]


def drop_card(raw: bytes, keyword: str) -> bytes:
    """``raw`` with ``keyword``'s card blanked (the header keeps its length)."""
    end = header_end(raw)
    for offset in range(0, end, CARD):
        if raw[offset : offset + 8].rstrip() == keyword.encode():
            return raw[:offset] + b" " * CARD + raw[offset + CARD :]
    return raw


def rubin_alert(cutout: bytes | None, ra: float = 150.0, dec: float = 2.0, band: str = "g") -> Alert:
    """A Rubin alert carrying ``cutout``."""
    return Alert(Survey.RUBIN, 7, 101, 60_500.0, band, ra, dec, 1000.0, 10.0, cutout, "11.1")


def ztf_alert(
    gz: bytes, magzpsci: float = 26.0, isdiffpos: bool = True, xpos: float | None = 500.0, ypos=500.0
) -> Alert:
    """A ZTF alert carrying the gzipped cutout ``gz``."""
    ctx = ZtfCutoutContext(magzpsci, isdiffpos, xpos, ypos)
    return Alert(Survey.ZTF, "ZTF24aaaaaaa", 1, 60_000.0, "r", 10.0, 20.0, None, None, gz, "4.02", ctx)


def ztf_fits(stamp: np.ndarray) -> bytes:
    """Uncompressed FITS of a ZTF-like DN stamp."""
    buffer = io.BytesIO()
    fits.PrimaryHDU(np.asarray(stamp, dtype=">f4")).writeto(buffer)
    return buffer.getvalue()


@cache
def rubin_cutout() -> bytes:
    """A Rubin cutout (PC/CDELT linear WCS, 40 x 40, with extensions) as its writer makes it."""
    return rubin_cutout_bytes(size=40, rotation_deg=30.0)


@cache
def real_ztf_cutouts() -> tuple[tuple[bytes, ZtfCutoutContext], ...]:
    """``(gzipped cutoutDifference, calibration context)`` of the 6 golden real ZTF alerts."""
    from broker_plugin.serde.alerts import AlertDecoder
    from broker_plugin.serde.schemas import RubinSchemaStore

    decoder = AlertDecoder(RubinSchemaStore())
    out = []
    for path in sorted(ZTF_GOLDEN.glob("*.avro")):
        (alert,) = decoder.decode_message(path.read_bytes())
        assert alert.cutoutDifference is not None and alert.ztf is not None
        out.append((alert.cutoutDifference, alert.ztf))
    return tuple(out)


def gzip_bomb(prefix: bytes, total: int, chunk: int = 1 << 22) -> bytes:
    """A valid single-member gzip of ``prefix`` followed by zeros, ``total`` bytes in all, built cheaply.

    Each zero chunk is compressed once after a full flush, which resets the compressor, so every later
    chunk compresses to the same bytes and is repeated instead of recompressed.
    """
    zeros = bytes(chunk)
    count, rest = divmod(total - len(prefix), chunk)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = [compressor.compress(prefix) + compressor.flush(zlib.Z_FULL_FLUSH)]
    repeated = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    body.append(repeated * count)
    body.append(compressor.compress(bytes(rest)) + compressor.flush(zlib.Z_FINISH))
    crc = zlib.crc32(prefix)
    for _ in range(count):
        crc = zlib.crc32(zeros, crc)
    crc = zlib.crc32(bytes(rest), crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    return header + b"".join(body) + struct.pack("<II", crc, total & 0xFFFFFFFF)


def gzip_fits(raw: bytes) -> bytes:
    """``raw`` gzipped as ZTF does."""
    return gzip.compress(raw)
