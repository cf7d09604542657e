"""Dead letters: the consumed message as it came, with headers saying why, always small enough to produce.

A dead letter carries the original value, key and headers, plus ``dead_letter_reason`` (a stable code),
``dead_letter_error`` (what exactly went wrong), ``dead_letter_source`` (``topic/partition/offset``) and
``dead_letter_plugin_version``. Kafka refuses a message larger than the producer's ``message.max.bytes``
(:attr:`~broker_plugin.config.KafkaSettings.max_produce_bytes`) or the topic's ``max.message.bytes``, and
a refused dead letter would stop the service, so :func:`build_dead_letter` cuts it to fit:

- each copied input header to :data:`MAX_HEADER_VALUE_BYTES` and all of them together to
  :data:`MAX_COPIED_HEADER_BYTES` (later ones dropped); ``dead_letter_headers_truncated`` says how many
  input headers were cut or dropped;
- ``dead_letter_error`` to :data:`MAX_ERROR_BYTES`;
- the key to :data:`MAX_KEY_BYTES` (``dead_letter_key_truncated`` = its original size);
- the value to the room left, its first bytes kept: ``dead_letter_truncated`` = the original size and
  ``dead_letter_sha256`` = the hex SHA-256 of the original value, so the whole message can be found in
  the input topic or an archive.

Every size is counted as librdkafka counts it (key + value + serialised headers + a record overhead).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

#: Largest copied input header value [bytes].
MAX_HEADER_VALUE_BYTES = 1024
#: Largest input header name copied (a longer one is dropped) [bytes].
MAX_HEADER_NAME_BYTES = 256
#: Largest total of the copied input headers, names and values [bytes].
MAX_COPIED_HEADER_BYTES = 16 * 1024
#: Largest ``dead_letter_error`` [bytes].
MAX_ERROR_BYTES = 2000
#: Largest key kept [bytes].
MAX_KEY_BYTES = 1024
#: Room left for the record's own framing (librdkafka's v2 worst case is below 100 bytes; the broker adds a
#: 61-byte batch header) [bytes].
RECORD_OVERHEAD_BYTES = 512
#: Smallest ``max_bytes`` that always fits the capped headers and key with room to spare [bytes].
MIN_DEAD_LETTER_BYTES = 32 * 1024

Header = tuple[str, bytes | None]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead letter, ready to produce.

    Attributes
    ----------
    value, key, headers
        What to produce.
    truncated
        Whether anything of the original (value, key or headers) was cut.
    """

    value: bytes
    key: bytes | None
    headers: list[Header]
    truncated: bool


def clip_utf8(text: str, limit: int) -> bytes:
    """``text`` as UTF-8, cut to at most ``limit`` bytes at a character boundary."""
    raw = text.encode("utf-8", errors="replace")
    if len(raw) <= limit:
        return raw
    return raw[:limit].decode("utf-8", errors="ignore").encode()


def _varint_size(n: int) -> int:
    # Kafka record headers use zig-zag varints; a few bytes either way does not matter against the margin.
    return max(1, ((2 * n).bit_length() + 6) // 7)


def header_bytes(headers: Sequence[Header]) -> int:
    """Serialised size of record headers, as Kafka's v2 record format counts them."""
    total = _varint_size(len(headers))
    for name, value in headers:
        n = len(name.encode("utf-8", errors="replace"))
        v = 0 if value is None else len(value)
        total += _varint_size(n) + n + _varint_size(v) + v
    return total


def _copy_headers(headers: Sequence[Header]) -> tuple[list[Header], int]:
    """The input headers capped as the module docstring says, and how many were cut or dropped."""
    kept: list[Header] = []
    budget = MAX_COPIED_HEADER_BYTES
    cut = 0
    for name, value in headers:
        name_size = len(name.encode("utf-8", errors="replace"))
        if name_size > MAX_HEADER_NAME_BYTES:
            cut += 1
            continue
        if value is not None and len(value) > MAX_HEADER_VALUE_BYTES:
            value = bytes(value[:MAX_HEADER_VALUE_BYTES])
            cut += 1
        size = header_bytes([(name, value)])
        if size > budget:
            cut += 1
            continue
        budget -= size
        kept.append((name, value))
    return kept, cut


def build_dead_letter(
    value: bytes,
    key: bytes | None,
    headers: Sequence[Header],
    *,
    reason: str,
    error: str,
    source: str,
    plugin_version: str,
    max_bytes: int,
) -> DeadLetter:
    """The dead letter of one consumed message, no larger than ``max_bytes`` (see the module docstring).

    Parameters
    ----------
    value, key, headers
        The consumed message's.
    reason, error
        Why it is dead-lettered: a stable code and the details.
    source
        ``topic/partition/offset`` of the consumed message.
    plugin_version
        This plugin's version.
    max_bytes
        The largest message the producer may send; below :data:`MIN_DEAD_LETTER_BYTES` only the value is
        guaranteed to be cut (to nothing).
    """
    copied, headers_cut = _copy_headers(headers)
    out: list[Header] = [
        *copied,
        ("dead_letter_reason", clip_utf8(reason, 256)),
        ("dead_letter_error", clip_utf8(error, MAX_ERROR_BYTES)),
        ("dead_letter_source", clip_utf8(source, 512)),
        ("dead_letter_plugin_version", clip_utf8(plugin_version, 64)),
    ]
    if headers_cut:
        out.append(("dead_letter_headers_truncated", str(headers_cut).encode()))
    if key is not None and len(key) > MAX_KEY_BYTES:
        out.append(("dead_letter_key_truncated", str(len(key)).encode()))
        key = bytes(key[:MAX_KEY_BYTES])
    truncated = bool(headers_cut) or any(name == "dead_letter_key_truncated" for name, _ in out)
    room = max_bytes - RECORD_OVERHEAD_BYTES - (len(key) if key else 0)
    if len(value) > room - header_bytes(out):
        # The headers that say so take room too: added first, then the value is cut to what is left.
        out.append(("dead_letter_truncated", str(len(value)).encode()))
        out.append(("dead_letter_sha256", hashlib.sha256(value).hexdigest().encode()))
        value = value[: max(0, room - header_bytes(out))]
        truncated = True
    return DeadLetter(value=bytes(value), key=key, headers=out, truncated=truncated)
