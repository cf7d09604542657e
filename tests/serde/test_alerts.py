import pytest

from broker_plugin import exceptions as exc
from broker_plugin.serde.alerts import AlertDecoder
from tests.factories import rubin_message


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"", exc.TruncatedMessageError),
        (b"\x00\x00\x00", exc.TruncatedMessageError),
        (b"\x05" + bytes(20), exc.WrongMagicByteError),
        (b'{"json": true}', exc.WrongMagicByteError),
        (b"\x00" + (4242).to_bytes(4, "big") + b"\x02", exc.UnknownSchemaError),
        (b"Obj\x01garbage", exc.AlertDecodeError),
    ],
)
def test_bad_messages_raise_typed_errors(raw: bytes, error: type, decoder: AlertDecoder) -> None:
    with pytest.raises(error) as info:
        decoder.decode_message(raw)
    assert info.value.reason


def test_truncated_and_trailing_bodies(decoder: AlertDecoder) -> None:
    raw = rubin_message()
    with pytest.raises(exc.TruncatedMessageError):
        decoder.decode_message(raw[: len(raw) // 3])
    with pytest.raises(exc.MalformedAvroError, match="trailing"):
        decoder.decode_message(raw + b"\x00\x01")


def test_reason_codes_are_distinct() -> None:
    reasons = [
        c.reason for c in vars(exc).values() if isinstance(c, type) and issubclass(c, exc.BrokerPluginError)
    ]
    assert len(reasons) == len(set(reasons))
