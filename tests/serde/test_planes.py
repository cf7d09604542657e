"""The science and template cutouts: decoded as sent from real alerts, and never a reason to reject one.

The real ZTF alerts of ``tests/data/ztf`` and the bundled demo archive (simulated Rubin alerts with all
three cutouts) are read twice: by the decoder, and whole by fastavro (the reference, no projection, no
skipping); the cutouts must be the same bytes.
"""

from __future__ import annotations

import io
from pathlib import Path

import fastavro
import pytest

from broker_plugin.config import LimitsSettings
from broker_plugin.records import Alert
from broker_plugin.serde.alerts import AlertDecoder, iter_payload
from broker_plugin.serde.files import iter_alert_payloads
from broker_plugin.serde.rubin import encode_rubin_message
from broker_plugin.serde.schemas import RubinSchemaStore
from tests.factories import ZTF_GOLDEN, rubin_cutout_bytes, rubin_record
from tests.serde.hostile import check_alert, rubin_schema, write_container, ztf_schema_and_record

DEMO = Path(__file__).resolve().parents[2] / "broker_plugin" / "demo_data"


def _stamp(cutout: object) -> bytes | None:
    """A cutout as a record holds it: Rubin bytes, or ZTF's record around ``stampData``."""
    return cutout["stampData"] if isinstance(cutout, dict) else cutout  # type: ignore[return-value]


@pytest.mark.parametrize("folder", [ZTF_GOLDEN, DEMO], ids=["ztf", "demo"])
def test_real_alerts_carry_the_science_and_template_cutouts_as_sent(
    folder: Path, decoder: AlertDecoder
) -> None:
    count = 0
    for _, raw in iter_alert_payloads(folder):
        records = list(fastavro.reader(io.BytesIO(raw)))
        alerts = list(iter_payload(raw, decoder))
        assert len(alerts) == len(records)
        for alert, record in zip(alerts, records, strict=True):
            assert isinstance(alert, Alert)
            assert alert.cutoutScience == _stamp(record["cutoutScience"]) is not None
            assert alert.cutoutTemplate == _stamp(record["cutoutTemplate"]) is not None
            assert alert.cutoutDifference == _stamp(record["cutoutDifference"])
            # Three different images, not one read thrice.
            assert len({alert.cutoutScience, alert.cutoutTemplate, alert.cutoutDifference}) == 3
            count += 1
    assert count == {ZTF_GOLDEN: 6, DEMO: 96}[folder]


def test_the_cutouts_stay_out_of_the_alert_repr(decoder: AlertDecoder) -> None:
    _, raw = next(iter(iter_alert_payloads(DEMO)))
    alert = next(iter(iter_payload(raw, decoder)))
    assert "cutout" not in repr(alert)


@pytest.mark.parametrize("version", ["3.0", "6.0", "7.0", "9.0", "11.1"])
def test_rubin_null_science_and_template_are_none(version: str, decoder: AlertDecoder) -> None:
    record = rubin_record(version, cutout=rubin_cutout_bytes())
    assert record.get("cutoutScience") is None and record["cutoutTemplate"] is None
    (alert,) = decoder.decode_message(encode_rubin_message(record, version))
    assert alert.cutoutScience is None and alert.cutoutTemplate is None
    # Schemas before 7.0 have no cutoutScience field at all.
    has_science = "cutoutScience" in record
    if has_science:
        record["cutoutScience"] = b"science"
    record["cutoutTemplate"] = b"template"
    (alert,) = decoder.decode_message(encode_rubin_message(record, version))
    assert (alert.cutoutScience, alert.cutoutTemplate) == (b"science" if has_science else None, b"template")


def test_rubin_science_and_template_of_another_type_cost_the_plane_not_the_alert(
    decoder: AlertDecoder,
) -> None:
    # A hostile writer schema: the cutouts are strings and a long.
    schema = rubin_schema()
    fields = {f["name"]: f for f in schema["fields"]}
    fields["cutoutScience"]["type"] = ["null", "string"]
    fields["cutoutTemplate"]["type"] = "long"
    record = rubin_record("11.1", cutout=rubin_cutout_bytes())
    record["cutoutScience"], record["cutoutTemplate"] = "not bytes", 12345
    (alert,) = decoder.decode_message(write_container(schema, [record]))
    check_alert(alert)
    assert alert.cutoutScience is None and alert.cutoutTemplate is None
    assert alert.cutoutDifference == record["cutoutDifference"]


def test_oversized_science_and_template_are_dropped_but_the_alert_is_kept() -> None:
    limits = LimitsSettings(max_cutout_bytes=20_000)
    decoder = AlertDecoder(RubinSchemaStore(), limits)
    record = rubin_record("11.1", cutout=rubin_cutout_bytes(size=40))  # 28,800 bytes: over the limit
    record["cutoutDifference"] = bytes(10_000)
    record["cutoutScience"], record["cutoutTemplate"] = bytes(20_001), bytes(20_000)
    (alert,) = decoder.decode_message(encode_rubin_message(record, "11.1"))
    assert alert.cutoutScience is None  # one byte over: never held by an alert
    assert alert.cutoutTemplate == bytes(20_000)  # at the limit: kept


@pytest.mark.parametrize(
    ("science", "template", "expected"),
    [
        (None, None, (None, None)),  # both cutout records null
        ({"fileName": "s", "stampData": b"sci"}, None, (b"sci", None)),
        (None, {"fileName": "t", "stampData": b""}, (None, b"")),  # empty: the normaliser's missing_cutout
    ],
)
def test_ztf_missing_science_or_template_records_are_none(
    science: object, template: object, expected: tuple, decoder: AlertDecoder
) -> None:
    schema, record = ztf_schema_and_record()
    difference = record["cutoutDifference"]["stampData"]
    record["cutoutScience"], record["cutoutTemplate"] = science, template
    (alert,) = decoder.decode_message(write_container(schema, [record]))
    assert (alert.cutoutScience, alert.cutoutTemplate) == expected
    assert alert.cutoutDifference == difference


def test_ztf_science_stamp_of_another_type_costs_the_plane_not_the_alert(decoder: AlertDecoder) -> None:
    schema, record = ztf_schema_and_record()
    template = next(f for f in schema["fields"] if f["name"] == "cutoutTemplate")
    template["type"] = ["null", "string"]  # the record replaced by a string
    record["cutoutTemplate"] = "not a cutout"
    (alert,) = decoder.decode_message(write_container(schema, [record]))
    check_alert(alert)
    assert alert.cutoutTemplate is None and alert.cutoutScience == record["cutoutScience"]["stampData"]
