import io

import fastavro
import pytest

from broker_plugin import exceptions as exc
from broker_plugin.records import Survey
from broker_plugin.serde.alerts import AlertDecoder
from broker_plugin.serde.files import write_alert_container
from broker_plugin.serde.rubin import encode_rubin_message, rubin_alert_record
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


def _full_round_trip(record: dict, version: str) -> dict:
    """Write ``record`` as an Avro container of ``version`` and read it back whole (history included)."""
    buffer = io.BytesIO()
    fastavro.writer(buffer, load_bundled_schema(version).parsed, [record])
    buffer.seek(0)
    (back,) = fastavro.reader(buffer)
    return back


@pytest.mark.parametrize("version", VERSIONS)
def test_history_lists_are_written_under_each_versions_names(version: str) -> None:
    """The history items are complete records of the version: old names mapped, absent fields left out."""
    detection = {
        "diaSourceId": 7,
        "diaObjectId": 42,
        "midpointMjdTai": 60_100.25,
        "band": "g",
        "ra": 150.0,
        "dec": 2.0,
        "psfFlux": 1500.5,
        "psfFluxErr": 100.25,
    }
    forced = [
        {**{k: v for k, v in detection.items() if k != "diaSourceId"}, "diaForcedSourceId": 70},
        {
            "diaForcedSourceId": 71,
            "diaObjectId": 42,
            "midpointMjdTai": 60_110.5,
            "band": "r",
            "ra": 150.0,
            "dec": 2.0,
            "psfFlux": -20.0,
            "psfFluxErr": 90.5,
        },
    ]
    record = rubin_alert_record(
        version,
        diaSourceId=8,
        diaObjectId=42,
        midpointMjdTai=60_120.0,
        band="i",
        ra=150.0,
        dec=2.0,
        psfFlux=1000.0,
        psfFluxErr=50.0,
        cutoutDifference=None,
        prvDiaSources=[detection],
        prvDiaForcedSources=forced,
    )
    assert fastavro.validate(record, load_bundled_schema(version).parsed)
    back = _full_round_trip(record, version)
    old = version in ("3.0", "4.0")
    mjd, band, flux, err = (
        ("midPointTai", "filterName", "psFlux", "psFluxErr")
        if old
        else ("midpointMjdTai", "band", "psfFlux", "psfFluxErr")
    )
    (source,) = back["prvDiaSources"]
    assert source["diaSourceId"] == 7 and source["diaObjectId"] == 42
    assert (source[mjd], source[band], source[flux], source[err]) == (60_100.25, "g", 1500.5, 100.25)
    assert source["ra"] == 150.0 and source["decl" if old else "dec"] == 2.0
    assert [f["diaForcedSourceId"] for f in back["prvDiaForcedSources"]] == [70, 71]
    got = [(f[mjd], f[band], f[flux], f[err], f["diaObjectId"]) for f in back["prvDiaForcedSources"]]
    assert got == [(60_100.25, "g", 1500.5, 100.25, 42), (60_110.5, "r", -20.0, 90.5, 42)]
    # Forced sources have a position only from 7.1 on; before, ra/dec are left out, not an error.
    assert ("ra" in back["prvDiaForcedSources"][0]) == (schema_id_of(version) >= 701)
    # The alert's own detection is not in its history.
    assert back["diaSource"]["diaSourceId"] == 8


@pytest.mark.parametrize("version", [VERSIONS[0], VERSIONS[-1]])
def test_history_lists_are_null_unless_given(version: str) -> None:
    record = rubin_alert_record(
        version,
        diaSourceId=8,
        diaObjectId=42,
        midpointMjdTai=60_120.0,
        band="i",
        ra=150.0,
        dec=2.0,
        psfFlux=1000.0,
        psfFluxErr=50.0,
        cutoutDifference=None,
        prvDiaForcedSources=[],
    )
    back = _full_round_trip(record, version)
    assert back["prvDiaSources"] is None and back["prvDiaForcedSources"] == []
