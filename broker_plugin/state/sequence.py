"""Compact, exact bytes for frames: what the state stores keep per row.

Format 2 (written since frames carry science and template planes). One frame is a fixed little-endian
header, the band's UTF-8 bytes, then each plane as little-endian float32 pixels followed by its mask
packed to bits (``np.packbits``): the difference always, then the science plane if the frame has one, then
the template, either inline or as the 16-byte BLAKE2b digest of its template blob (see below). The header
says which parts follow (:data:`SCIENCE`, :data:`TEMPLATE`, :data:`TEMPLATE_REF`) and holds ``psfFlux``
and ``psfFluxErr`` (:data:`PSF_FLUX`, :data:`PSF_FLUX_ERR` say which are present). A 32x32 plane takes
4,096 + 128 bytes; the header 54.

Why the template can live apart: an object's template is one reference image of the same sky, so a
store keeps each distinct template blob once per object (its ``templates`` table, keyed by digest) and
the frames that share it hold only its digest. Sharing is exact (same bytes, same digest), never "close
enough": a frame reads back bit-identical to the frame the normaliser made, which is what the model was
given when it was classified, and a template that differs in one bit is another row. A per-object table
rather than a reference to another frame's row, because the oldest frames are pruned first and would
take the template with them.

What sharing saves depends on the stream. The alerts at hand never repeat a template bit for bit: every
visit's template cutout is cut and resampled afresh (the visit's rotation, cutout centre and size), so
no two frames of an object in the demo archive (96 alerts) or the golden ZTF alerts share one, and the
split then costs a 16-byte digest and a row per frame (about 7% of an SQLite file's bytes per frame).
Identical templates (a producer whose template cutouts repeat for an object) are stored once.
:func:`encode_frame` writes the template inline instead; this module reads both, so a store can switch.

A template blob is ``b"BPT"``, a version byte, then the plane (pixels, packed mask); its shape is the
frame's. Decoding gives back a bit-identical frame (NaN payloads and signed zeros included). No pickle:
reading state must never run code.

Format 1 (the difference only, no photometry) is still read: such a frame has no science or template
plane and no ``psfFlux``.

A list of frames is a count followed by length-prefixed frames, templates inline.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from broker_plugin.records import Frame, StampFlag

_MAGIC = b"BPF"
_TEMPLATE_MAGIC = b"BPT"
_VERSION = 2
_TEMPLATE_VERSION = 1
# magic, version, flags, diaSourceId, midpointMjdTai, originalShape (rows, cols), data (rows, cols),
# band length. Signed 64-bit id: Rubin's diaSourceId and ZTF's candid are both int64.
_HEADER_V1 = struct.Struct("<3sBIqdiiHHB")
# Format 2 adds: which parts follow (bits below), psfFlux, psfFluxErr (0.0 when absent).
_HEADER = struct.Struct("<3sBIqdiiHHBBdd")
_TEMPLATE_HEADER = struct.Struct("<3sB")
_COUNT = struct.Struct("<I")
#: Parts bits of a format-2 frame.
SCIENCE = 1
TEMPLATE = 2
TEMPLATE_REF = 4
PSF_FLUX = 8
PSF_FLUX_ERR = 16
_KNOWN_PARTS = SCIENCE | TEMPLATE | TEMPLATE_REF | PSF_FLUX | PSF_FLUX_ERR
#: Bytes of a template digest.
DIGEST_SIZE = 16


class FrameFormatError(ValueError):
    """Bytes that are not a frame (or a list of frames) of a known format."""


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    """A frame as a store keeps it: its row's bytes and, apart, its template.

    Attributes
    ----------
    blob
        The frame; its template, if any, by digest only.
    template_digest
        :func:`template_digest` of ``template_blob``; ``None`` when the frame has no template.
    template_blob
        The template plane's bytes, stored once per object and digest.
    """

    blob: bytes
    template_digest: bytes | None
    template_blob: bytes | None


def template_digest(template_blob: bytes | bytearray | memoryview) -> bytes:
    """The digest by which frames refer to a template blob (BLAKE2b, :data:`DIGEST_SIZE` bytes)."""
    return hashlib.blake2b(template_blob, digest_size=DIGEST_SIZE).digest()


def _plane_bytes(name: str, data: np.ndarray, mask: np.ndarray | None, shape: tuple[int, ...]) -> bytes:
    """Pixels then packed mask of one plane, or :class:`ValueError` if it could not round-trip."""
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.dtype != np.float32:
        raise ValueError(f"frame {name} must be 2-D float32, got {getattr(data, 'dtype', type(data))}")
    if data.shape != shape:
        raise ValueError(f"frame {name} must have the data's shape {shape}, got {data.shape}")
    if not isinstance(mask, np.ndarray) or mask.shape != shape or mask.dtype != np.bool_:
        raise ValueError(
            f"frame {name} mask must be bool of shape {shape}, got {getattr(mask, 'dtype', None)}"
        )
    pixels = np.ascontiguousarray(data, dtype="<f4").tobytes()
    return pixels + np.packbits(np.ascontiguousarray(mask), axis=None).tobytes()


def _encode(frame: Frame, template_inline: bool) -> EncodedFrame:
    data, mask = frame.data, frame.mask
    if data.ndim != 2 or data.dtype != np.float32:
        raise ValueError(f"frame data must be 2-D float32, got {data.ndim}-D {data.dtype}")
    if mask.shape != data.shape or mask.dtype != np.bool_:
        raise ValueError(f"frame mask must be bool of shape {data.shape}, got {mask.dtype} {mask.shape}")
    parts = 0
    body = [_plane_bytes("data", data, mask, data.shape)]
    if (frame.science is None) != (frame.scienceMask is None):
        raise ValueError("frame science and scienceMask must both be present or both absent")
    if frame.science is not None:
        parts |= SCIENCE
        body.append(_plane_bytes("science", frame.science, frame.scienceMask, data.shape))
    if (frame.template is None) != (frame.templateMask is None):
        raise ValueError("frame template and templateMask must both be present or both absent")
    digest = template = None
    if frame.template is not None:
        plane = _plane_bytes("template", frame.template, frame.templateMask, data.shape)
        if template_inline:
            parts |= TEMPLATE
            body.append(plane)
        else:
            parts |= TEMPLATE_REF
            template = _TEMPLATE_HEADER.pack(_TEMPLATE_MAGIC, _TEMPLATE_VERSION) + plane
            digest = template_digest(template)
            body.append(digest)
    flux, err = frame.psfFlux, frame.psfFluxErr
    parts |= (PSF_FLUX if flux is not None else 0) | (PSF_FLUX_ERR if err is not None else 0)
    band = frame.band.encode()
    rows, cols = data.shape
    header = _HEADER.pack(
        _MAGIC, _VERSION, int(frame.flags), frame.diaSourceId, frame.midpointMjdTai,
        frame.originalShape[0], frame.originalShape[1], rows, cols, len(band), parts,
        0.0 if flux is None else flux, 0.0 if err is None else err,
    )  # fmt: skip
    return EncodedFrame(b"".join((header, band, *body)), digest, template)


def encode_frame(frame: Frame) -> bytes:
    """Serialise one frame, self-contained (its template inline).

    Raises
    ------
    ValueError
        If ``data`` is not 2-D float32, ``mask`` is not a bool array of the same shape, or a science or
        template plane is not float32 with a bool mask of that shape (anything else could not round-trip
        exactly).
    """
    return _encode(frame, template_inline=True).blob


def encode_frame_parts(frame: Frame) -> EncodedFrame:
    """Serialise one frame with its template apart (by digest), as the stores keep it.

    Raises
    ------
    ValueError
        As :func:`encode_frame`.
    """
    return _encode(frame, template_inline=False)


def _read_plane(buf: memoryview, pos: int, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray, int]:
    """One plane (pixels, mask) at ``pos`` (bounds checked by the caller) and the offset past it."""
    n_pixels = rows * cols
    n_bits = (n_pixels + 7) // 8
    # Copies: the frame must own writable arrays, not views into a buffer the caller may reuse.
    data = np.frombuffer(buf, dtype="<f4", count=n_pixels, offset=pos).astype(np.float32).reshape(rows, cols)
    pos += 4 * n_pixels
    bits = np.frombuffer(buf, dtype=np.uint8, count=n_bits, offset=pos)
    mask = np.unpackbits(bits, count=n_pixels).astype(np.bool_).reshape(rows, cols)
    return data, mask, pos + n_bits


def _plane_size(rows: int, cols: int) -> int:
    return 4 * rows * cols + (rows * cols + 7) // 8


def _decode_template(template: bytes | bytearray | memoryview, digest: bytes, rows: int, cols: int) -> tuple[
    np.ndarray, np.ndarray
]:  # fmt: skip
    """The template plane of a blob stored apart, checked against the frame's digest and shape."""
    buf = memoryview(template).cast("B")
    if template_digest(buf) != digest:
        raise FrameFormatError("the stored template does not match the frame's template digest")
    try:
        magic, version = _TEMPLATE_HEADER.unpack_from(buf, 0)
    except struct.error as exc:
        raise FrameFormatError(f"truncated template: {exc}") from exc
    if magic != _TEMPLATE_MAGIC or version != _TEMPLATE_VERSION:
        raise FrameFormatError(f"not a template of format {_TEMPLATE_VERSION} ({magic!r}, {version})")
    if len(buf) != _TEMPLATE_HEADER.size + _plane_size(rows, cols):
        raise FrameFormatError(f"template of {len(buf)} bytes is not a {rows} x {cols} plane")
    data, mask, _ = _read_plane(buf, _TEMPLATE_HEADER.size, rows, cols)
    return data, mask


def _decode_at(
    buf: memoryview, offset: int, template: bytes | bytearray | memoryview | None = None
) -> tuple[Frame, int]:
    """Decode the frame starting at ``offset``; return it and the offset just past it."""
    try:
        magic, version = struct.unpack_from("<3sB", buf, offset)
        header = _HEADER if version == _VERSION else _HEADER_V1
        fields = header.unpack_from(buf, offset)
    except struct.error as exc:
        raise FrameFormatError(f"truncated frame header: {exc}") from exc
    if magic != _MAGIC or version not in (1, _VERSION):
        raise FrameFormatError(f"not a frame of format 1 or {_VERSION} (magic {magic!r}, version {version})")
    _, _, flags, source_id, mjd, orig_r, orig_c, rows, cols, n_band = fields[:10]
    parts, flux, err = fields[10:] if version == _VERSION else (0, 0.0, 0.0)
    if parts & ~_KNOWN_PARTS or (parts & TEMPLATE and parts & TEMPLATE_REF):
        raise FrameFormatError(f"frame parts {parts:#x} are not a known combination")
    plane = _plane_size(rows, cols)
    n_planes = 1 + bool(parts & SCIENCE) + bool(parts & TEMPLATE)
    pos = offset + header.size
    end = pos + n_band + n_planes * plane + (DIGEST_SIZE if parts & TEMPLATE_REF else 0)
    if end > len(buf):
        raise FrameFormatError(f"truncated frame: needs {end - offset} bytes, has {len(buf) - offset}")
    band = bytes(buf[pos : pos + n_band]).decode()
    data, mask, pos = _read_plane(buf, pos + n_band, rows, cols)
    science = science_mask = template_data = template_mask = None
    if parts & SCIENCE:
        science, science_mask, pos = _read_plane(buf, pos, rows, cols)
    if parts & TEMPLATE:
        template_data, template_mask, pos = _read_plane(buf, pos, rows, cols)
    elif parts & TEMPLATE_REF:
        digest = bytes(buf[pos : pos + DIGEST_SIZE])
        if template is None:
            raise FrameFormatError("the frame's template is not stored")
        template_data, template_mask = _decode_template(template, digest, rows, cols)
    frame = Frame(
        data=data, mask=mask, flags=StampFlag(flags), band=band, midpointMjdTai=mjd,
        diaSourceId=source_id, originalShape=(orig_r, orig_c), science=science, scienceMask=science_mask,
        template=template_data, templateMask=template_mask,
        psfFlux=flux if parts & PSF_FLUX else None, psfFluxErr=err if parts & PSF_FLUX_ERR else None,
    )  # fmt: skip
    return frame, end


def decode_frame(
    blob: bytes | bytearray | memoryview, template: bytes | bytearray | memoryview | None = None
) -> Frame:
    """Parse :func:`encode_frame` (or :func:`encode_frame_parts`) output, of format 1 or 2.

    Parameters
    ----------
    blob
        The frame's bytes.
    template
        The template blob a frame of :func:`encode_frame_parts` refers to (ignored by other frames).

    Raises
    ------
    FrameFormatError
        If the bytes are truncated, carry trailing bytes, or are of an unknown format, or the frame refers
        to a template that is not given or does not match its digest.
    """
    buf = memoryview(blob).cast("B")
    frame, end = _decode_at(buf, 0, template)
    if end != len(buf):
        raise FrameFormatError(f"{len(buf) - end} trailing bytes after the frame")
    return frame


def encode_frames(frames: Sequence[Frame]) -> bytes:
    """Serialise a list of frames (order kept), each self-contained."""
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
