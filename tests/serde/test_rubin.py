import io

import fastavro
import pytest

from broker_plugin import exceptions as exc
from broker_plugin.records import Survey
from broker_plugin.serde.alerts import AlertDecoder
from broker_plugin.serde.files import write_alert_container
from broker_plugin.serde.rubin import encode_rubin_message
from broker_plugin.serde.schemas import bundled_rubin_versions, load_bundled_schema, schema_id_of
from tests.factories import rubin_cutout_bytes, rubin_message, rubin_record

VERSIONS = bundled_rubin_versions()


def test_every_version_from_3_0_to_11_1_is_bundled() -> None:
    assert VERSIONS[0] == "3.0" and "11.1" in VERSIONS
    assert {"3.0", "4.0", "5.0", "6.0", "7.0", "8.0", "9.0", "10.0", "11.0", "11.1"} <= set(VERSIONS)
    assert schema_id_of("11.1") == 1101 and schema_id_of("3.0") == 300


@pytest.mark.parametrize("version", VERSIONS)
def test_round_trip_every_schema_version(version: str, decoder: AlertDecoder) -> None:
    cutout = rubin_cutout_bytes(size=33)
    raw = rubin_message(
        version, diaSourceId=555, diaObjectId=42, cutout=cutout, band="i", midpointMjdTai=60_123.5
    )
    assert raw[0] == 0 and int.from_bytes(raw[1:5], "big") == schema_id_of(version)
    (alert,) = decoder.decode_message(raw)
    assert alert.survey is Survey.RUBIN
    assert (alert.diaSourceId, alert.diaObjectId, alert.band) == (555, 42, "i")
    assert alert.midpointMjdTai == 60_123.5 and alert.ra == 150.0 and alert.dec == 2.0
    assert alert.psfFlux == pytest.approx(1000.0) and alert.schemaVersion == version
    assert alert.cutoutDifference == cutout


@pytest.mark.parametrize("version", VERSIONS)
def test_record_validates_against_its_writer_schema(version: str) -> None:
    record = rubin_record(version, psfFlux=None, cutout=None)
    assert fastavro.validate(record, load_bundled_schema(version).parsed)


@pytest.mark.parametrize("version", VERSIONS)
def test_bundled_sample_alert_decodes_with_its_version(version: str, decoder: AlertDecoder) -> None:
    """lsst-alert-packet's own sample alerts (their cutouts are null) decode to the same ids."""
    import importlib.resources as resources

    major, minor = version.split(".")
    sample = resources.files("lsst.alert.packet").joinpath(
        "schema", major, minor, "sample_data", "fakeAlert.avro"
    )
    if not sample.is_file():
        pytest.skip(f"no sample alert shipped for {version}")
    (record, _), *_ = list(
        __import__("broker_plugin.serde.alerts", fromlist=["x"]).iter_container(
            io.BytesIO(sample.read_bytes())
        )
    )
    raw = encode_rubin_message(record, version)
    source = record["diaSource"]
    if source.get("diaObjectId") is None:
        with pytest.raises(exc.MissingFieldError):
            decoder.decode_message(raw)
        return
    (alert,) = decoder.decode_message(raw)
    assert alert.diaSourceId == source["diaSourceId"]
    assert alert.cutoutDifference is None


def test_solar_system_source_without_dia_object_is_a_typed_error(decoder: AlertDecoder) -> None:
    record = rubin_record(diaObjectId=None, psfFlux=None, cutout=None)
    with pytest.raises(exc.MissingFieldError, match="diaObjectId"):
        decoder.decode_message(encode_rubin_message(record, "11.1"))


def test_container_file_of_rubin_alerts(decoder: AlertDecoder) -> None:
    records = [
        rubin_record(diaSourceId=i, diaObjectId=9, midpointMjdTai=60_000.0 + i, band="z") for i in range(5)
    ]
    buffer = io.BytesIO()
    write_alert_container(buffer, records, "11.1")
    alerts = decoder.decode_message(buffer.getvalue())
    assert [a.diaSourceId for a in alerts] == list(range(5))
    assert {a.schemaVersion for a in alerts} == {"11.1"}
