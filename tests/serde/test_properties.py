"""Properties of the decoder over hostile input built from real alerts (hypothesis).

(a) Field values: any value of any Avro type (a hostile writer schema) in any field the pipeline reads,
    for Rubin and ZTF records, gives an Alert whose every field is valid, or an InvalidFieldError
    subclass (MissingFieldError only when a required value is null).
(b) Byte mutations of real messages (bit flips, truncation, insertion, deletion, varint edits anywhere
    and in the block header): only AlertDecodeError subclasses come out, each within a second.
"""

from __future__ import annotations

import copy
import io
import time
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker_plugin import exceptions as exc
from broker_plugin.records import Alert
from broker_plugin.serde.alerts import AlertDecoder, _read_long, iter_payload
from broker_plugin.serde.schemas import RubinSchemaStore
from tests.factories import rubin_message, rubin_record
from tests.serde.hostile import (
    RUBIN_FIELDS,
    ZTF_FIELDS,
    ZTF_FILE,
    check_alert,
    rubin_schema,
    set_rubin_field_type,
    set_ztf_field_type,
    varint,
    write_container,
    ztf_schema_and_record,
)

DECODER = AlertDecoder(RubinSchemaStore())
DEMO = Path(__file__).resolve().parents[2] / "broker_plugin" / "demo_data"
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_EXTREME_FLOATS = [
    0.0,
    -0.0,
    -1e9,
    1e308,
    -1e308,
    5e-324,
    40_000.0,
    100_000.0,
    359.9999999,
    360.0,
    90.0,
    -90.5,
]
_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "double": st.floats() | st.sampled_from(_EXTREME_FLOATS),
    "float": st.floats(width=32) | st.sampled_from([3.4e38, -3.4e38, 1e-45]),
    "long": st.integers(-(2**63), 2**63 - 1) | st.sampled_from([0, -1, 2**63 - 1, -(2**63), 60_000]),
    "int": st.integers(-(2**31), 2**31 - 1) | st.sampled_from([0, 1, 2, 3, 4, -1]),
    "string": st.text(max_size=12)
    | st.sampled_from(
        ["", " ", "\t", "g", " R ", "gr", "u_01", "nan", "inf", "t", "f", "ZTF24aaqnriz", "Z T F"]
    ),
    "boolean": st.booleans(),
    "bytes": st.binary(max_size=8),
}


#: Per field, its writer type and values around its valid range (so that valid alerts come out too).
_NEAR_VALID: dict[str, tuple[Any, st.SearchStrategy[Any]]] = {
    "diaSourceId": ("long", st.integers(0, 2**63 - 1)),
    "diaObjectId": (["null", "long"], st.integers(0, 2**63 - 1)),
    "candid": ("long", st.integers(0, 2**63 - 1)),
    "midpointMjdTai": ("double", st.floats(39_000.0, 101_000.0)),
    "jd": ("double", st.floats(2_439_000.0, 2_501_000.0)),
    "exptime": (["null", "float"], st.floats(-1.0, 4000.0, width=32)),
    "band": (
        ["null", "string"],
        st.sampled_from(["u", "g", "r", "i", "z", "y", " g ", "Y", "r_01", "x", "gr"]),
    ),
    "fid": ("int", st.integers(0, 4)),
    "ra": ("double", st.floats(-1.0, 361.0)),
    "dec": ("double", st.floats(-91.0, 91.0)),
    "psfFlux": (["null", "float"], st.floats(width=32)),
    "psfFluxErr": (["null", "float"], st.floats(-1.0, 1e6, width=32)),
    "magpsf": (["null", "float"], st.floats(-6.0, 41.0, width=32)),
    "sigmapsf": (["null", "float"], st.floats(-0.5, 11.0, width=32)),
    "magzpsci": (["null", "float"], st.floats(14.0, 41.0, width=32)),
    "xpos": (["null", "float"], st.floats(width=32)),
    "ypos": (["null", "float"], st.floats(width=32)),
    "isdiffpos": (["null", "string"], st.sampled_from(["t", "f", "1", "0", "true", "False", " T ", "x", ""])),
    "objectId": (
        "string",
        st.sampled_from(["ZTF24aaqnriz", "ZTF18abc", "Z" * 32, "Z" * 33, " ZTF1", "ZTF 1"]),
    ),
    "schemavsn": ("string", st.text(max_size=70)),
}


@st.composite
def typed_values(draw: st.DrawFn, names: tuple[str, ...]) -> dict[str, tuple[Any, Any]]:
    """For some of ``names``: (writer Avro type, value of that type), near the valid range or hostile."""
    chosen = draw(st.lists(st.sampled_from(names), min_size=1, max_size=4, unique=True))
    out = {}
    for name in chosen:
        if draw(st.booleans()):
            avro_type, values = _NEAR_VALID[name]
            out[name] = (avro_type, draw(values))
            continue
        kind = draw(st.sampled_from(sorted(_VALUES)))
        if draw(st.booleans()):
            out[name] = (["null", kind], draw(st.none() | _VALUES[kind]))
        else:
            out[name] = (kind, draw(_VALUES[kind]))
    return out


def decode_checked(raw: bytes, values: dict[str, tuple[Any, Any]], optional: set[str]) -> None:
    """Property (a) for one container: a valid alert, or a field error explained by the values."""
    try:
        (alert,) = DECODER.decode_message(raw)
    except exc.MissingFieldError as error:
        assert any(v is None and name not in optional for name, (_, v) in values.items()), error
    except exc.InvalidFieldError as error:
        assert error.reason.startswith("invalid_"), error
    else:
        check_alert(alert)
        for name in ("midpointMjdTai", "ra", "dec", "diaSourceId", "diaObjectId"):
            written = values.get(name, ("float", None))
            if written[1] is not None and "float" not in str(written[0]):  # kept exactly as written
                assert getattr(alert, name) == written[1]


@FAST
@given(typed_values(RUBIN_FIELDS))
def test_rubin_field_values_give_valid_alerts_or_field_errors(values: dict[str, tuple[Any, Any]]) -> None:
    schema = rubin_schema()
    record = rubin_record("11.1", cutout=b"fits")
    for name, (avro_type, value) in values.items():
        set_rubin_field_type(schema, name, avro_type)
        record["diaSource"][name] = value
    decode_checked(write_container(schema, [record]), values, {"psfFlux", "psfFluxErr"})


ZTF_SCHEMA, ZTF_RECORD = ztf_schema_and_record()
ZTF_OPTIONAL = {"magpsf", "sigmapsf", "xpos", "ypos", "exptime"}


@FAST
@given(typed_values((*ZTF_FIELDS, "exptime", "objectId", "schemavsn")))
def test_ztf_field_values_give_valid_alerts_or_field_errors(values: dict[str, tuple[Any, Any]]) -> None:
    schema, record = copy.deepcopy(ZTF_SCHEMA), copy.deepcopy(ZTF_RECORD)
    for name, (avro_type, value) in values.items():
        if name in ("objectId", "schemavsn"):
            next(f for f in schema["fields"] if f["name"] == name)["type"] = avro_type
            record[name] = value
        else:
            set_ztf_field_type(schema, name, avro_type)
            record["candidate"][name] = value
    decode_checked(write_container(schema, [record]), values, ZTF_OPTIONAL | {"schemavsn"})


# --- (b) byte mutations ------------------------------------------------------------------------------

SEEDS = {
    "rubin-11.1": rubin_message("11.1"),
    "rubin-3.0": rubin_message("3.0"),
    "rubin-container-deflate": (DEMO / "alerts-53625.avro").read_bytes(),
    "ztf": ZTF_FILE.read_bytes(),
}
_VARINTS = st.sampled_from(
    [0, -1, 1, 2**31, -(2**31), 2**40, -(2**40), 2**62, -(2**63), 2**63 - 1]
) | st.integers(-(2**63), 2**63 - 1)


def only_typed_errors(raw: bytes) -> None:
    """Property (b): decode_message and iter_payload give alerts or AlertDecodeErrors, quickly."""
    start = time.perf_counter()
    try:
        for alert in DECODER.decode_message(raw):
            check_alert(alert)
    except exc.AlertDecodeError as error:
        assert error.reason and str(error)
    for item in iter_payload(raw, DECODER):
        assert isinstance(item, Alert | exc.AlertDecodeError), item
        if isinstance(item, Alert):
            check_alert(item)
    assert time.perf_counter() - start < 1.0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(SEEDS)), st.data())
def test_mutated_real_messages_give_only_typed_errors(seed: str, data: st.DataObject) -> None:
    raw = bytearray(SEEDS[seed])
    for _ in range(data.draw(st.integers(1, 6), label="mutations")):
        if not raw:
            break
        kind = data.draw(st.sampled_from(["flip", "cut", "insert", "delete", "varint"]))
        pos = data.draw(st.integers(0, len(raw) - 1))
        if kind == "flip":
            raw[pos] ^= data.draw(st.integers(1, 255))
        elif kind == "cut":
            del raw[pos:]
        elif kind == "insert":
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del raw[pos : pos + data.draw(st.integers(1, 64))]
        else:
            raw[pos : pos + data.draw(st.integers(1, 10))] = varint(data.draw(_VARINTS))
    only_typed_errors(bytes(raw))


def _block_header_offset(raw: bytes) -> int:
    """Where the first block's count varint starts: right after the header's sync marker."""
    sync = raw[-16:]  # a container ends with a block's sync marker, the header's
    return raw.index(sync) + 16


@FAST
@given(st.sampled_from(["rubin-container-deflate", "ztf"]), _VARINTS, _VARINTS, st.booleans())
def test_any_declared_block_count_and_size_give_typed_errors(
    seed: str, count: int, size: int, keep: bool
) -> None:
    raw = SEEDS[seed]
    start = _block_header_offset(raw)
    stream = io.BytesIO(raw[start:])
    true_count, true_size = _read_long(stream), _read_long(stream)
    rest = raw[start + stream.tell() :]
    forged = raw[:start] + varint(true_count if keep else count) + varint(size) + rest
    only_typed_errors(forged)
    assert true_size > 0


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=1, max_size=300))
def test_random_block_payloads_behind_a_real_header_give_typed_errors(payload: bytes) -> None:
    raw = SEEDS["ztf"]
    start = _block_header_offset(raw)
    only_typed_errors(raw[:start] + varint(1) + varint(len(payload)) + payload + raw[-16:])
