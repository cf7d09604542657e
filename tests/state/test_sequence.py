"""Frame serialisation: exact round trips, compact, and strict about what it reads."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from broker_plugin.records import Frame, StampFlag
from broker_plugin.state.sequence import (
    FrameFormatError,
    decode_frame,
    decode_frames,
    encode_frame,
    encode_frames,
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
