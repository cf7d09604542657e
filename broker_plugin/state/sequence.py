"""Compact, exact bytes for frames: what the state stores keep per row.

One frame is a fixed little-endian header, the band's UTF-8 bytes, the pixels as little-endian float32 and
the mask packed to bits (``np.packbits``): a 32x32 frame takes 4,096 + 128 bytes plus ~40 of header.
Decoding gives back a bit-identical frame (NaN payloads and signed zeros included). No pickle: reading
state must never run code.

A list of frames is a count followed by length-prefixed frames.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

from broker_plugin.records import Frame, StampFlag

_MAGIC = b"BPF"
_VERSION = 1
# magic, version, flags, diaSourceId, midpointMjdTai, originalShape (rows, cols), data (rows, cols),
# band length. Signed 64-bit id: Rubin's diaSourceId and ZTF's candid are both int64.
_HEADER = struct.Struct("<3sBIqdiiHHB")
_COUNT = struct.Struct("<I")


class FrameFormatError(ValueError):
    """Bytes that are not a frame (or a list of frames) of a known format."""


def encode_frame(frame: Frame) -> bytes:
    """Serialise one frame.

    Raises
    ------
    ValueError
        If ``data`` is not 2-D float32 or ``mask`` is not a bool array of the same shape (anything else
        could not round-trip exactly).
    """
    data, mask = frame.data, frame.mask
    if data.ndim != 2 or data.dtype != np.float32:
        raise ValueError(f"frame data must be 2-D float32, got {data.ndim}-D {data.dtype}")
    if mask.shape != data.shape or mask.dtype != np.bool_:
        raise ValueError(f"frame mask must be bool of shape {data.shape}, got {mask.dtype} {mask.shape}")
    band = frame.band.encode()
    rows, cols = data.shape
    header = _HEADER.pack(
        _MAGIC, _VERSION, int(frame.flags), frame.diaSourceId, frame.midpointMjdTai,
        frame.originalShape[0], frame.originalShape[1], rows, cols, len(band),
    )  # fmt: skip
    pixels = np.ascontiguousarray(data, dtype="<f4").tobytes()
    bits = np.packbits(np.ascontiguousarray(mask), axis=None).tobytes()
    return b"".join((header, band, pixels, bits))


def _decode_at(buf: memoryview, offset: int) -> tuple[Frame, int]:
    """Decode the frame starting at ``offset``; return it and the offset just past it."""
    try:
        magic, version, flags, source_id, mjd, orig_r, orig_c, rows, cols, n_band = _HEADER.unpack_from(
            buf, offset
        )
    except struct.error as exc:
        raise FrameFormatError(f"truncated frame header: {exc}") from exc
    if magic != _MAGIC or version != _VERSION:
        raise FrameFormatError(f"not a frame of format {_VERSION} (magic {magic!r}, version {version})")
    pos = offset + _HEADER.size
    n_pixels = rows * cols
    n_bits = (n_pixels + 7) // 8
    end = pos + n_band + 4 * n_pixels + n_bits
    if end > len(buf):
        raise FrameFormatError(f"truncated frame: needs {end - offset} bytes, has {len(buf) - offset}")
    band = bytes(buf[pos : pos + n_band]).decode()
    pos += n_band
    # Copies: the frame must own writable arrays, not views into a buffer the caller may reuse.
    data = np.frombuffer(buf, dtype="<f4", count=n_pixels, offset=pos).astype(np.float32).reshape(rows, cols)
    pos += 4 * n_pixels
    bits = np.frombuffer(buf, dtype=np.uint8, count=n_bits, offset=pos)
    mask = np.unpackbits(bits, count=n_pixels).astype(np.bool_).reshape(rows, cols)
    frame = Frame(
        data=data, mask=mask, flags=StampFlag(flags), band=band, midpointMjdTai=mjd,
        diaSourceId=source_id, originalShape=(orig_r, orig_c),
    )  # fmt: skip
    return frame, end


def decode_frame(blob: bytes | bytearray | memoryview) -> Frame:
    """Parse :func:`encode_frame` output.

    Raises
    ------
    FrameFormatError
        If the bytes are truncated, carry trailing bytes, or are of an unknown format.
    """
    buf = memoryview(blob).cast("B")
    frame, end = _decode_at(buf, 0)
    if end != len(buf):
        raise FrameFormatError(f"{len(buf) - end} trailing bytes after the frame")
    return frame


def encode_frames(frames: Sequence[Frame]) -> bytes:
    """Serialise a list of frames (order kept)."""
    parts = [_COUNT.pack(len(frames))]
    for frame in frames:
        blob = encode_frame(frame)
        parts.append(_COUNT.pack(len(blob)))
        parts.append(blob)
    return b"".join(parts)


def decode_frames(blob: bytes | bytearray | memoryview) -> list[Frame]:
    """Parse :func:`encode_frames` output.

    Raises
    ------
    FrameFormatError
        If the bytes are truncated, carry trailing bytes, or hold a frame of an unknown format.
    """
    buf = memoryview(blob).cast("B")
    try:
        (count,) = _COUNT.unpack_from(buf, 0)
    except struct.error as exc:
        raise FrameFormatError("truncated frame list") from exc
    pos = _COUNT.size
    frames = []
    for _ in range(count):
        try:
            (size,) = _COUNT.unpack_from(buf, pos)
        except struct.error as exc:
            raise FrameFormatError("truncated frame list") from exc
        pos += _COUNT.size
        if pos + size > len(buf):
            raise FrameFormatError("truncated frame list")
        frames.append(decode_frame(buf[pos : pos + size]))
        pos += size
    if pos != len(buf):
        raise FrameFormatError(f"{len(buf) - pos} trailing bytes after the frame list")
    return frames
