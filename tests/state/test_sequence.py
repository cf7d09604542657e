"""Frame serialisation: exact round trips, compact, and strict about what it reads."""

from __future__ import annotations

import dataclasses
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from broker_plugin.records import Frame, StampFlag
from broker_plugin.state.sequence import (
    DIGEST_SIZE,
    TEMPLATE,
    TEMPLATE_REF,
    FrameFormatError,
    decode_frame,
    decode_frames,
    encode_frame,
    encode_frame_parts,
    encode_frames,
    template_digest,
)
from tests.state.conftest import assert_same_frame, make_frame


def test_round_trip_is_bit_exact() -> None:
    frame = make_frame(123, 123.456789)
    # NaN with a payload, signed zero, infinities, subnormal: all survive as bits.
    frame.data[0, :5] = np.array([0x7FC00123, 0x80000000, 0x7F800000, 0xFF800000, 1], np.uint32).view(
        np.float32
    )
    back = decode_frame(encode_frame(frame))
    assert_same_frame(back, frame)
    assert back.data.view(np.uint32)[0, :5].tolist() == [0x7FC00123, 0x80000000, 0x7F800000, 0xFF800000, 1]
    assert isinstance(back.flags, StampFlag)
    assert back.data.flags.writeable and back.mask.flags.writeable


def test_compact() -> None:
    blob = encode_frame(make_frame(1, 1.0))
    assert len(blob) <= 32 * 32 * 4 + 32 * 32 // 8 + 64


def test_extremes_of_ids_flags_and_shapes() -> None:
    rng = np.random.default_rng(0)
    for source_id in (0, -1, 2**63 - 1, -(2**63)):
        for shape in ((32, 32), (1, 1), (3, 5), (0, 0)):
            frame = Frame(
                data=rng.normal(size=shape).astype(np.float32), mask=rng.random(shape) > 0.5,
                flags=StampFlag.PARTIAL_COVERAGE | StampFlag.UPSAMPLED, band="y", midpointMjdTai=-1e-300,
                diaSourceId=source_id, originalShape=(0, 2**31 - 1),
            )  # fmt: skip
            assert_same_frame(decode_frame(encode_frame(frame)), frame)


@settings(max_examples=50, deadline=None)
@given(
    data=hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, max_side=40)),
    seed=st.integers(0, 2**32 - 1),
    mjd=st.floats(allow_nan=False),
    band=st.text(max_size=10),
    flags=st.integers(0, 31),
)
def test_round_trip_any_frame(data: np.ndarray, seed: int, mjd: float, band: str, flags: int) -> None:
    mask = np.random.default_rng(seed).random(data.shape) > 0.5
    frame = Frame(data, mask, StampFlag(flags), band, mjd, seed, data.shape)
    back = decode_frame(encode_frame(frame))
    assert back.data.tobytes() == data.tobytes()
    assert np.array_equal(back.mask, mask)
    assert (back.band, back.midpointMjdTai, back.flags, back.originalShape) == (band, mjd, flags, data.shape)


def test_lists_of_frames() -> None:
    frames = [make_frame(i, float(i), band="ugrizy"[i % 6]) for i in range(5)]
    back = decode_frames(encode_frames(frames))
    assert len(back) == 5
    for a, b in zip(back, frames, strict=True):
        assert_same_frame(a, b)
    assert decode_frames(encode_frames([])) == []


def test_refuses_what_would_not_round_trip() -> None:
    frame = make_frame(1, 1.0)
    with pytest.raises(ValueError, match="float32"):
        encode_frame(Frame(frame.data.astype(np.float64), frame.mask, frame.flags, "r", 1.0, 1))
    with pytest.raises(ValueError, match="mask"):
        encode_frame(Frame(frame.data, frame.mask.astype(np.uint8), frame.flags, "r", 1.0, 1))
    with pytest.raises(ValueError, match="mask"):
        encode_frame(Frame(frame.data, frame.mask[:5], frame.flags, "r", 1.0, 1))


@pytest.mark.parametrize(
    ("blob", "match"),
    [
        (b"", "truncated"),
        (b"XYZ" + bytes(60), "format"),
        (encode_frame(make_frame(1, 1.0))[:-1], "truncated"),
        (encode_frame(make_frame(1, 1.0)) + b"\0", "trailing"),
    ],
)
def test_rejects_bad_bytes(blob: bytes, match: str) -> None:
    with pytest.raises(FrameFormatError, match=match):
        decode_frame(blob)


def test_rejects_bad_lists() -> None:
    good = encode_frames([make_frame(1, 1.0), make_frame(2, 2.0)])
    for blob in (b"", good[:-3], good + b"\0", b"\x05\0\0\0"):
        with pytest.raises(FrameFormatError):
            decode_frames(blob)


# --- format 2: science and template planes, photometry, the template apart -----------------------------


def with_planes(frame: Frame, seed: int, psf: tuple[float | None, float | None] = (12.5, 0.5)) -> Frame:
    """``frame`` with science and template planes (masked pixels 0) and photometry."""
    rng = np.random.default_rng(seed)
    planes = {}
    for name in ("science", "template"):
        mask = rng.random(frame.data.shape) > 0.2
        planes[name] = np.where(mask, rng.normal(1000, 50, frame.data.shape), 0).astype(np.float32)
        planes[f"{name}Mask"] = mask
    return dataclasses.replace(frame, **planes, psfFlux=psf[0], psfFluxErr=psf[1])


@pytest.mark.parametrize("psf", [(12.5, 0.5), (None, None), (-3.0, None), (None, 0.0)])
def test_planes_and_photometry_round_trip_inline_and_apart(psf: tuple[float | None, float | None]) -> None:
    frame = with_planes(make_frame(7, 7.0), 7, psf)
    frame.science[0, :2] = np.array([0x7FC00123, 0x80000000], np.uint32).view(np.float32)  # type: ignore[index]
    inline = encode_frame(frame)
    assert_same_frame(decode_frame(inline), frame)
    parts = encode_frame_parts(frame)
    assert parts.template_blob is not None and parts.template_digest == template_digest(parts.template_blob)
    assert len(parts.template_digest) == DIGEST_SIZE
    assert len(parts.blob) == len(inline) - 32 * 32 * 4 - 128 + DIGEST_SIZE
    assert_same_frame(decode_frame(parts.blob, parts.template_blob), frame)
    back = decode_frame(parts.blob, parts.template_blob)
    assert back.science.view(np.uint32)[0, :2].tolist() == [0x7FC00123, 0x80000000]  # type: ignore[union-attr]


def test_each_plane_may_be_absent() -> None:
    full = with_planes(make_frame(8, 8.0), 8)
    for absent in ({"science": None, "scienceMask": None}, {"template": None, "templateMask": None}):
        frame = dataclasses.replace(full, **absent)
        parts = encode_frame_parts(frame)
        assert (parts.template_blob is None) == ("template" in absent)
        assert_same_frame(decode_frame(parts.blob, parts.template_blob), frame)
        assert_same_frame(decode_frame(encode_frame(frame)), frame)


def test_same_template_same_digest_other_template_other_digest() -> None:
    a, b = with_planes(make_frame(1, 1.0), 1), with_planes(make_frame(2, 2.0), 2)
    shared = dataclasses.replace(b, template=a.template, templateMask=a.templateMask)
    assert encode_frame_parts(a).template_digest == encode_frame_parts(shared).template_digest
    assert encode_frame_parts(a).template_digest != encode_frame_parts(b).template_digest
    flipped = a.templateMask.copy()  # type: ignore[union-attr]
    flipped[0, 0] = not flipped[0, 0]
    other = dataclasses.replace(
        a, template=np.where(flipped, a.template, 0).astype(np.float32), templateMask=flipped
    )
    assert encode_frame_parts(a).template_digest != encode_frame_parts(other).template_digest


def test_a_frame_apart_from_its_template_needs_that_template() -> None:
    a, b = with_planes(make_frame(1, 1.0), 1), with_planes(make_frame(2, 2.0), 2)
    parts = encode_frame_parts(a)
    with pytest.raises(FrameFormatError, match="not stored"):
        decode_frame(parts.blob)
    with pytest.raises(FrameFormatError, match="does not match"):
        decode_frame(parts.blob, encode_frame_parts(b).template_blob)
    assert parts.template_blob is not None
    with pytest.raises(FrameFormatError, match="does not match"):
        decode_frame(parts.blob, parts.template_blob[:-1])
    small = with_planes(make_frame(3, 3.0, size=8), 3)
    with pytest.raises(FrameFormatError, match="does not match"):
        decode_frame(parts.blob, encode_frame_parts(small).template_blob)


def test_format_1_frames_still_read() -> None:
    frame = make_frame(4, 4.0)
    band = frame.band.encode()
    old = (
        struct.pack("<3sBIqdiiHHB", b"BPF", 1, int(frame.flags), 4, frame.midpointMjdTai, 51, 51, 32, 32, 1)
        + band + frame.data.astype("<f4").tobytes() + np.packbits(frame.mask, axis=None).tobytes()
    )  # fmt: skip
    back = decode_frame(old)
    assert_same_frame(back, frame)
    assert back.science is None and back.template is None and back.psfFlux is None


@pytest.mark.parametrize("parts", [TEMPLATE | TEMPLATE_REF, 32, 128])
def test_unknown_parts_are_refused(parts: int) -> None:
    blob = bytearray(encode_frame(make_frame(1, 1.0)))
    blob[struct.calcsize("<3sBIqdiiHHB")] = parts  # the parts byte follows format 1's header
    with pytest.raises(FrameFormatError, match="parts"):
        decode_frame(bytes(blob))


def test_planes_that_could_not_round_trip_are_refused() -> None:
    frame = with_planes(make_frame(1, 1.0), 1)
    with pytest.raises(ValueError, match="science"):
        encode_frame(dataclasses.replace(frame, science=frame.science.astype(np.float64)))  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="template"):
        encode_frame(dataclasses.replace(frame, templateMask=None))
    with pytest.raises(ValueError, match="template"):
        encode_frame(dataclasses.replace(frame, template=frame.template[:5]))  # type: ignore[index]


@pytest.mark.parametrize("cut", [1, 16, 4096, 4096 + 128 + 1])
def test_truncated_format_2_frames_are_refused(cut: int) -> None:
    blob = encode_frame(with_planes(make_frame(1, 1.0), 1))
    with pytest.raises(FrameFormatError, match="truncated"):
        decode_frame(blob[:-cut])
