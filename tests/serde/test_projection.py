import io

import fastavro
import pytest

from broker_plugin import exceptions as exc
from broker_plugin.serde.alerts import AlertDecoder, iter_container
from broker_plugin.serde.files import write_alert_container
from broker_plugin.serde.projection import HISTORY_FIELDS, project
from broker_plugin.serde.schemas import load_bundled_schema
from tests.factories import ZTF_GOLDEN, rubin_record


def records(n: int, history: int = 3) -> list[dict]:
    out = []
    for i in range(n):
        rec = rubin_record(
            diaSourceId=i, diaObjectId=1, midpointMjdTai=60_000.0 + i, cutout=b"c%d" % i, psfFlux=5.0
        )
        rec["prvDiaSources"] = [dict(rec["diaSource"], diaSourceId=1000 + k) for k in range(history)]
        out.append(rec)
    return out


def test_projection_drops_only_history() -> None:
    parsed = load_bundled_schema("11.1").parsed
    reader = project(parsed)
    assert reader is not None
    kept = {f["name"] for f in reader["fields"]}
    assert kept == {f["name"] for f in parsed["fields"]} - HISTORY_FIELDS


@pytest.mark.parametrize("codec", ["null", "deflate"])
def test_container_records_match_fastavro_except_history(codec: str) -> None:
    buffer = io.BytesIO()
    fastavro.writer(buffer, load_bundled_schema("11.1").parsed, records(250), codec=codec, sync_interval=2000)
    ours = [rec for rec, _ in iter_container(io.BytesIO(buffer.getvalue()))]
    reference = list(fastavro.reader(io.BytesIO(buffer.getvalue())))
    assert len(ours) == len(reference) == 250
    for mine, ref in zip(ours, reference, strict=True):
        assert "prvDiaSources" not in mine
        assert mine == {k: v for k, v in ref.items() if k not in HISTORY_FIELDS}


def test_real_ztf_container_keeps_candidate_and_cutouts() -> None:
    raw = (ZTF_GOLDEN / "2713305823315015047.avro").read_bytes()
    ((mine, _version),) = list(iter_container(io.BytesIO(raw)))
    ref = next(fastavro.reader(io.BytesIO(raw)))
    assert mine["candidate"] == ref["candidate"] and mine["cutoutDifference"] == ref["cutoutDifference"]
    assert "prv_candidates" not in mine and ref["prv_candidates"]


def test_corrupt_sync_marker_is_typed(decoder: AlertDecoder) -> None:
    buffer = io.BytesIO()
    write_alert_container(buffer, records(3), "11.1", codec="null")
    raw = bytearray(buffer.getvalue())
    raw[-1] ^= 0xFF
    with pytest.raises(exc.MalformedAvroError, match="sync"):
        decoder.decode_message(bytes(raw))


def test_corrupt_deflate_block_is_typed(decoder: AlertDecoder) -> None:
    buffer = io.BytesIO()
    write_alert_container(buffer, records(3), "11.1", codec="deflate")
    raw = bytearray(buffer.getvalue())
    raw[len(raw) // 2] ^= 0x55
    with pytest.raises(exc.AlertDecodeError):
        decoder.decode_message(bytes(raw))
