"""The photometric history read from the alert bytes (:mod:`broker_plugin.serde.history`).

Every case is decoded more than :attr:`RecordReader.FAST_AFTER` times, so that both the plain walk (a
schema's first records) and the pattern path (later ones) give it, and they must agree.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import math
import time
from typing import Any

import fastavro
import numpy as np
import pytest

from broker_plugin.exceptions import AlertDecodeError
from broker_plugin.records import BANDS, Alert
from broker_plugin.serde.alerts import AlertDecoder
from broker_plugin.serde.history import MAX_HISTORY_POINTS, HistoryMissing
from broker_plugin.serde.rubin import _placeholder, encode_rubin_message
from broker_plugin.serde.schemas import RubinSchemaStore, bundled_rubin_versions, load_bundled_schema
from broker_plugin.serde.skipping import RecordReader, definitions_of
from tests.factories import ZTF_GOLDEN, rubin_record, shared_ztf_dir
from tests.serde.hostile import write_container, ztf_schema_and_record

READS = RecordReader.FAST_AFTER + 3
OLDEST, NEWEST = bundled_rubin_versions()[0], bundled_rubin_versions()[-1]


def decode_all(raw: bytes, history: bool = True) -> list[Alert]:
    """The alert of ``raw`` decoded :data:`READS` times by one decoder (the walk, then the patterns)."""
    decoder = AlertDecoder(RubinSchemaStore(), history=history)
    return [decoder.decode_message(raw)[0] for _ in range(READS)]


def one_history(raw: bytes) -> Any:
    """The history every read gives (asserting that they agree)."""
    alerts = decode_all(raw)
    first = alerts[0].history
    for alert in alerts[1:]:
        if first is None:
            assert alert.history is None
            continue
        assert alert.history is not None
        for name in ("midpointMjdTai", "band", "psfFlux", "psfFluxErr", "detected"):
            assert np.array_equal(getattr(alert.history, name), getattr(first, name)), name
    return first


# --- Rubin ------------------------------------------------------------------------------------------


def rubin_entry(version: str, array: str, mjd: float, band: str, flux: float, err: float) -> dict[str, Any]:
    """One history entry of ``array`` valid for ``version``, the four values under that version's names."""
    parsed = load_bundled_schema(version).parsed
    definitions = definitions_of(parsed)
    field = next(f for f in parsed["fields"] if f["name"] == array)
    array_type = next(b for b in field["type"] if isinstance(b, dict))
    item = array_type["items"]
    item = definitions[item] if isinstance(item, str) else item
    entry = _placeholder(item)
    for names, value in (
        (("midpointMjdTai", "midPointTai"), mjd),
        (("band", "filterName"), band),
        (("psfFlux", "psFlux"), flux),
        (("psfFluxErr", "psFluxErr"), err),
    ):
        entry[next(n for n in names if n in entry)] = value
    return entry


def rubin_message_with(version: str, sources: list[tuple], forced: list[tuple] | None) -> bytes:
    record = rubin_record(version)
    record["prvDiaSources"] = [rubin_entry(version, "prvDiaSources", *s) for s in sources]
    record["prvDiaForcedSources"] = (
        None if forced is None else [rubin_entry(version, "prvDiaForcedSources", *s) for s in forced]
    )
    return encode_rubin_message(record, version)


@pytest.mark.parametrize("version", [OLDEST, "6.0", NEWEST])
def test_rubin_history_merges_detections_and_forced_photometry(version: str) -> None:
    sources = [(60_000.0, "g", 100.0, 2.0), (60_001.0, "r", 50.0, 1.5)]
    forced = [
        (60_000.0 + 1e-6, "g", 90.0, 1.0),  # the same visit as the first detection
        (60_001.0, "g", 7.0, 1.0),  # the second detection's time, another band: another visit
        (60_002.0, "i", -3.0, 0.5),
    ]
    history = one_history(rubin_message_with(version, sources, forced))
    points = sorted(
        zip(
            history.midpointMjdTai.tolist(), history.band.tolist(), history.psfFlux.tolist(),
            history.psfFluxErr.tolist(), history.detected.tolist(), strict=True,
        )
    )  # fmt: skip
    g, r, i = (BANDS.index(b) for b in "gri")
    assert points == [
        (60_000.0 + 1e-6, g, 90.0, 1.0, True),  # the forced values, marked detected
        (60_001.0, g, 7.0, 1.0, False),
        (60_001.0, r, 50.0, 1.5, True),
        (60_002.0, i, -3.0, 0.5, False),
    ]
    assert history.midpointMjdTai.dtype == np.float64 and history.band.dtype == np.int8


def test_every_bundled_rubin_version_reads_its_history() -> None:
    for version in bundled_rubin_versions():
        raw = rubin_message_with(version, [(60_000.0, "z", 1.0, 1.0)], [(60_003.0, "y", 2.0, 1.0)])
        history = AlertDecoder(RubinSchemaStore()).decode_message(raw)[0].history
        assert history is not None and len(history) == 2, version
        assert sorted(history.band.tolist()) == [BANDS.index("z"), BANDS.index("y")], version


@pytest.mark.parametrize("forced", [None, []])
def test_empty_history_is_empty_not_none(forced: list | None) -> None:
    history = one_history(rubin_message_with(NEWEST, [], forced))
    assert history is not None and len(history) == 0


def test_history_off_gives_none_and_the_same_alert() -> None:
    raw = rubin_message_with(NEWEST, [(60_000.0, "g", 1.0, 1.0)], [])
    off = decode_all(raw, history=False)
    on = decode_all(raw)
    assert all(alert.history is None for alert in off)
    assert all(a == dataclasses.replace(b, history=None) for a, b in zip(off, on, strict=True))


def test_non_finite_points_are_dropped() -> None:
    forced = [(60_000.0, "g", math.nan, 1.0), (60_001.0, "g", math.inf, 1.0), (60_002.0, "g", 1.0, -1.0),
              (math.nan, "g", 1.0, 1.0), (60_003.0, "q", 1.0, 1.0), (60_004.0, "r", 4.0, 2.0)]  # fmt: skip
    history = one_history(rubin_message_with(NEWEST, [], forced))
    assert history.midpointMjdTai.tolist() == [60_004.0] and history.psfFlux.tolist() == [4.0]


def test_a_detection_is_kept_when_the_forced_point_of_its_visit_is_unusable() -> None:
    history = one_history(
        rubin_message_with(NEWEST, [(60_000.0, "g", 10.0, 1.0)], [(60_000.0, "g", math.nan, 1.0)])
    )
    assert history.psfFlux.tolist() == [10.0] and history.detected.tolist() == [True]


def test_at_most_max_history_points_are_kept() -> None:
    forced = [(60_000.0 + i * 1e-3, "r", float(i), 1.0) for i in range(MAX_HISTORY_POINTS + 500)]
    raw = rubin_message_with(NEWEST, [], forced)
    start = time.perf_counter()
    history = one_history(raw)
    assert time.perf_counter() - start < 10 * READS  # bounded: a few ms a read in practice
    assert len(history) == MAX_HISTORY_POINTS
    assert history.psfFlux[-1] == MAX_HISTORY_POINTS - 1  # the first entries, in order


def splice_history(version: str, history_bytes: bytes) -> bytes:
    """A Rubin message whose ``prvDiaSources`` value is ``history_bytes`` (the rest a valid record)."""
    record = rubin_record(version)
    record["prvDiaSources"] = None
    null = encode_rubin_message(record, version)
    record["prvDiaSources"] = []
    empty = encode_rubin_message(record, version)
    at = next(i for i, (a, b) in enumerate(zip(null, empty, strict=False)) if a != b)
    assert null[at] == 0 and empty[at : at + 2] == b"\x02\x00"
    return null[:at] + history_bytes + null[at + 1 :]


def test_bad_bytes_inside_the_history_cost_the_history_not_the_alert() -> None:
    # A block that states its byte size (count -1, 5 bytes): fastavro jumps over it, so the record
    # frames, but its bytes are no entry.
    raw = splice_history(NEWEST, b"\x02" + b"\x01" + b"\x0a" + b"\xff" * 5 + b"\x00")
    decoder = AlertDecoder(RubinSchemaStore())
    told: list[str] = []
    decoder.watch_missing_history(told.append)
    alerts = [decoder.decode_message(raw)[0] for _ in range(READS)]
    assert all(alert.history is None and alert.diaSourceId == 1 for alert in alerts)
    assert told == [HistoryMissing.MALFORMED.value] * READS


@pytest.mark.parametrize(
    "history_bytes",
    [
        b"\x02" + b"\xfe\xff\xff\xff\xff\x1f",  # an array declaring 2**40 entries, then nothing
        b"\x02\x02" + b"\x00" * 7,  # one entry, truncated inside it
    ],
)
def test_history_that_cannot_be_framed_rejects_the_message_quickly(history_bytes: bytes) -> None:
    raw = splice_history(NEWEST, history_bytes)
    decoder = AlertDecoder(RubinSchemaStore())
    start = time.perf_counter()
    for _ in range(READS):
        with pytest.raises(AlertDecodeError):
            decoder.decode_message(raw)
    assert time.perf_counter() - start < 5.0


# --- ZTF --------------------------------------------------------------------------------------------


def ztf_reference(record: dict[str, Any]) -> list[tuple[float, int, float, float, bool]]:
    """The points of a fully decoded ZTF record, by the rules, in pure Python (finite ones only)."""
    out = []
    for p in record.get("prv_candidates") or []:
        mjd = p["jd"] - 2400000.5 + 30.0 / 2.0 / 86400.0 + 37.0 / 86400.0
        band = BANDS.index({1: "g", 2: "r", 3: "i"}[p["fid"]])
        if p["magpsf"] is not None:
            flux = 10 ** (-0.4 * (p["magpsf"] - 31.4)) * (1 if p["isdiffpos"] in ("t", "1") else -1)
            out.append((mjd, band, flux, abs(flux) * p["sigmapsf"] * math.log(10) / 2.5, True))
        elif p["diffmaglim"] is not None:
            out.append((mjd, band, 0.0, 10 ** (-0.4 * (p["diffmaglim"] - 31.4)) / 5, False))
    return out


def assert_close(history: Any, expected: list[tuple]) -> None:
    assert len(history) == len(expected)
    got = zip(history.midpointMjdTai, history.band, history.psfFlux, history.psfFluxErr, history.detected,
              strict=True)  # fmt: skip
    for (mjd, band, flux, err, det), (e_mjd, e_band, e_flux, e_err, e_det) in zip(got, expected, strict=True):
        assert mjd == pytest.approx(e_mjd, rel=1e-12) and band == e_band and det == e_det
        assert flux == pytest.approx(e_flux, rel=1e-9, abs=0) and err == pytest.approx(e_err, rel=1e-9)


def test_real_ztf_alerts_match_fastavros_full_decode() -> None:
    files = sorted(ZTF_GOLDEN.glob("*.avro"))
    shared = shared_ztf_dir()
    files += sorted(shared.glob("*.avro"))[:20] if shared else []
    points = 0
    for path in files:
        raw = path.read_bytes()
        expected = ztf_reference(next(fastavro.reader(io.BytesIO(raw))))
        history = one_history(raw)
        assert_close(history, expected)
        points += len(expected)
    assert points > 300


def ztf_with_forced(entries: list[dict[str, Any]], prv: list[dict[str, Any]] | None = None) -> bytes:
    schema, record = ztf_schema_and_record()
    fp = next(f for f in schema["fields"] if f["name"] == "fp_hists")
    item = next(b for b in fp["type"] if isinstance(b, dict))["items"]
    base = _placeholder(item)
    record["fp_hists"] = [{**base, **entry} for entry in entries]
    record["prv_candidates"] = prv
    return write_container(schema, [record])


def test_ztf_forced_photometry_is_scaled_by_its_zero_point_and_sentinels_dropped() -> None:
    good = {"jd": 2460400.5, "fid": 2, "forcediffimflux": 120.0, "forcediffimfluxunc": 10.0,
            "magzpsci": 26.0, "exptime": 30.0}  # fmt: skip
    raw = ztf_with_forced([
        good,
        {**good, "forcediffimflux": -99999.0},
        {**good, "forcediffimfluxunc": -99999.0},
        {**good, "magzpsci": None},
        {**good, "forcediffimflux": None},
        {**good, "fid": 3, "exptime": 60.0, "forcediffimflux": -40.0},
    ])  # fmt: skip
    scale = 10 ** (-0.4 * (26.0 - 31.4))
    mjd = 2460400.5 - 2400000.5 + 15.0 / 86400.0 + 37.0 / 86400.0
    assert_close(one_history(raw), [
        (mjd, BANDS.index("r"), 120.0 * scale, 10.0 * scale, False),
        (mjd + 15.0 / 86400.0, BANDS.index("i"), -40.0 * scale, 10.0 * scale, False),
    ])  # fmt: skip


def test_a_history_of_the_wrong_types_costs_the_history_not_the_alert() -> None:
    schema, record = ztf_schema_and_record()
    schema = copy.deepcopy(schema)
    prv = next(f for f in schema["fields"] if f["name"] == "prv_candidates")
    item = next(b for b in prv["type"] if isinstance(b, dict))["items"]
    next(f for f in item["fields"] if f["name"] == "fid")["type"] = "string"  # a band that is text
    entry = _placeholder(json.loads(json.dumps(item)))
    record["prv_candidates"] = [{**entry, "jd": 2460400.5, "fid": "1", "magpsf": 18.0}]
    decoder = AlertDecoder(RubinSchemaStore())
    told: list[str] = []
    decoder.watch_missing_history(told.append)
    alerts = [decoder.decode_message(write_container(schema, [record]))[0] for _ in range(3)]
    assert all(alert.history is None for alert in alerts)
    assert told == [HistoryMissing.UNSUPPORTED.value] * 3
