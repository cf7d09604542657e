import hashlib

import pytest
from confluent_kafka import KafkaException, Producer

from broker_plugin.config import KafkaSettings
from broker_plugin.kafka.config import producer_config
from broker_plugin.kafka.deadletter import (
    MAX_COPIED_HEADER_BYTES,
    MAX_ERROR_BYTES,
    MAX_HEADER_VALUE_BYTES,
    MAX_KEY_BYTES,
    build_dead_letter,
    header_bytes,
)

LIMIT = 100_000


def letter(value: bytes, key: bytes | None = None, headers=(), error: str = "bad", max_bytes: int = LIMIT):
    return build_dead_letter(
        value, key, list(headers), reason="malformed_avro", error=error, source="alerts/0/42",
        plugin_version="1.2.3", max_bytes=max_bytes,
    )  # fmt: skip


def wire_size(dl) -> int:
    return len(dl.value) + len(dl.key or b"") + header_bytes(dl.headers)


def test_a_small_dead_letter_is_the_message_with_reason_headers() -> None:
    headers = [("producer_timestamp", b"1700000000000"), ("empty", None)]
    dl = letter(b"payload", b"key", headers)
    assert (dl.value, dl.key, dl.truncated) == (b"payload", b"key", False)
    assert dl.headers[:2] == headers  # every input header kept, first and in order
    named = dict(dl.headers)
    assert named["dead_letter_reason"] == b"malformed_avro"
    assert named["dead_letter_error"] == b"bad"
    assert named["dead_letter_source"] == b"alerts/0/42"
    assert named["dead_letter_plugin_version"] == b"1.2.3"
    assert "dead_letter_truncated" not in named and "dead_letter_sha256" not in named


def test_a_large_value_is_cut_to_fit_with_its_size_and_hash() -> None:
    value = bytes(range(256)) * 2_000  # 512 kB
    dl = letter(value, b"k", [("producer_timestamp", b"1")])
    assert dl.truncated
    named = dict(dl.headers)
    assert named["dead_letter_truncated"] == str(len(value)).encode()
    assert named["dead_letter_sha256"] == hashlib.sha256(value).hexdigest().encode()
    assert named["dead_letter_reason"] == b"malformed_avro" and named["producer_timestamp"] == b"1"
    assert value.startswith(dl.value) and LIMIT - 1024 < wire_size(dl) <= LIMIT - 512


def test_a_value_that_just_fits_is_kept_whole() -> None:
    probe = letter(b"", b"k")
    room = LIMIT - 512 - len(b"k") - header_bytes(probe.headers)
    assert not letter(b"x" * room, b"k").truncated
    assert letter(b"x" * (room + 1), b"k").truncated


def test_headers_key_and_error_are_capped() -> None:
    many = [(f"h{i}", b"v" * 100) for i in range(1_000)]  # 100 kB of headers
    huge = [("big", b"x" * 50_000), ("n" * 300, b"long name")]
    dl = letter(b"v", b"K" * 5_000, huge + many, error="é" * 5_000)
    named = dict(dl.headers)
    assert dl.truncated
    assert named["big"] == b"x" * MAX_HEADER_VALUE_BYTES and "n" * 300 not in named
    copied = [h for h in dl.headers if not h[0].startswith("dead_letter_")]
    assert header_bytes(copied) <= MAX_COPIED_HEADER_BYTES
    assert int(named["dead_letter_headers_truncated"]) == 1002 - (len(copied) - 1)
    assert dl.key == b"K" * MAX_KEY_BYTES and named["dead_letter_key_truncated"] == b"5000"
    assert len(named["dead_letter_error"]) <= MAX_ERROR_BYTES
    named["dead_letter_error"].decode()  # cut at a character boundary
    assert dl.value == b"v"  # the value had room: only what was too large was cut


def test_max_bytes_zero_keeps_only_headers() -> None:
    dl = letter(b"x" * 1_000, max_bytes=0)
    assert dl.value == b"" and dict(dl.headers)["dead_letter_truncated"] == b"1000"


@pytest.mark.parametrize("size", [70_000, 300_000, 2_000_000])
def test_librdkafka_accepts_every_dead_letter_at_its_limit(size: int) -> None:
    """The real client's size check (no broker needed: it refuses at produce time)."""
    settings = KafkaSettings(bootstrap_servers="127.0.0.1:1", max_produce_bytes=65_536)
    producer = Producer(producer_config(settings, "size-check") | {"log_level": 0})
    too_big = b"\x00" * size
    with pytest.raises(KafkaException, match="MSG_SIZE_TOO_LARGE"):
        producer.produce("t", too_big)
    dl = letter(too_big, b"key", [("h", b"v" * 5_000)] * 5, error="e" * 10_000, max_bytes=65_536)
    producer.produce("t", dl.value, key=dl.key, headers=dl.headers)  # accepted
    producer.purge()
