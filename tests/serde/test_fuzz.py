"""Nothing but typed errors may escape the decoder, whatever the bytes."""

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker_plugin.exceptions import AlertDecodeError
from broker_plugin.serde.alerts import AlertDecoder, iter_payload
from broker_plugin.serde.schemas import RubinSchemaStore
from tests.factories import ZTF_GOLDEN, rubin_message

DECODER = AlertDecoder(RubinSchemaStore())
SEEDS = [
    rubin_message("11.1"),
    rubin_message("7.0"),
    rubin_message("3.0"),
    (ZTF_GOLDEN / "2713305823315015047.avro").read_bytes(),
]


def decode_or_typed_error(raw: bytes) -> None:
    try:
        DECODER.decode_message(raw)
    except AlertDecodeError as exc:
        assert exc.reason and str(exc)
    for item in iter_payload(raw, DECODER):
        assert not isinstance(item, Exception) or isinstance(item, AlertDecodeError)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_random_bytes(raw: bytes) -> None:
    decode_or_typed_error(raw)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=600))
def test_random_bodies_behind_a_valid_header(body: bytes) -> None:
    for schema_id in (1101, 700, 300):
        decode_or_typed_error(b"\x00" + schema_id.to_bytes(4, "big") + body)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(SEEDS), st.data())
def test_mutated_real_messages(seed: bytes, data: st.DataObject) -> None:
    raw = bytearray(seed)
    for _ in range(data.draw(st.integers(1, 8))):
        kind = data.draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        pos = data.draw(st.integers(0, len(raw) - 1))
        if kind == "flip":
            raw[pos] ^= data.draw(st.integers(1, 255))
        elif kind == "cut":
            del raw[pos:]
            if not raw:
                break
        elif kind == "insert":
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
        else:
            del raw[pos : pos + data.draw(st.integers(1, 64))]
            if not raw:
                break
    decode_or_typed_error(bytes(raw))


@pytest.mark.parametrize("cut", [1, 3, 5, 6, 40, -1])
def test_every_truncation_is_typed(cut: int) -> None:
    for seed in SEEDS:
        with pytest.raises(AlertDecodeError):
            DECODER.decode_message(seed[:cut])


def test_many_random_single_byte_flips() -> None:
    rng = random.Random(1)
    seed = SEEDS[0]
    for _ in range(500):
        raw = bytearray(seed)
        raw[rng.randrange(len(raw))] ^= rng.randrange(1, 256)
        decode_or_typed_error(bytes(raw))
