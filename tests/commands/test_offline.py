"""``inspect`` and ``classify`` on hostile input: one strict-JSON line per problem, and the walk goes on."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from broker_plugin.cli import UserError
from broker_plugin.commands.classify import classify_path
from broker_plugin.commands.inspect import run_inspect
from broker_plugin.commands.offline import json_line
from broker_plugin.config import Settings
from broker_plugin.records import StampFlag
from broker_plugin.serde.alerts import AlertDecoder
from broker_plugin.stamps import StampNormaliser
from broker_plugin.state.sqlite import SqliteStateStore
from tests.factories import object_alerts, rubin_message
from tests.state.conftest import make_frame


def strict(line: str) -> dict:
    """Parse like a strict JSON reader: NaN and Infinity are not JSON."""

    def refuse(constant: str) -> None:
        raise AssertionError(f"not JSON: {constant}")

    return json.loads(line, parse_constant=refuse)


def rows_of(text: str) -> list[dict]:
    return [strict(line) for line in text.splitlines()]


def test_json_lines_map_non_finite_numbers_to_null() -> None:
    record = {
        "nan": math.nan, "inf": math.inf, "values": [1.5, -math.inf, np.float32("nan"), np.float64(2.0)],
        "int": np.int64(7), "flag": np.bool_(True), "tuple": (1, math.nan), "flags": StampFlag.UPSAMPLED,
        "nested": {"array": np.array([0.5, np.nan])},
    }  # fmt: skip
    assert strict(json_line(record)) == {
        "nan": None, "inf": None, "values": [1.5, None, None, 2.0], "int": 7, "flag": True,
        "tuple": [1, None], "flags": 16, "nested": {"array": [0.5, None]},
    }  # fmt: skip
    assert json_line({"a": 1}).endswith("\n") and "NaN" not in json_line(record)


def test_inspect_reports_every_bad_file_and_alert_and_goes_on(
    tmp_path: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    poison = rubin_message(diaSourceId=666)
    (tmp_path / "1_good.avro").write_bytes(rubin_message(diaSourceId=1))
    (tmp_path / "2_corrupt.tar.gz").write_bytes(b"\x1f\x8b\x08\x00 broken archive")
    (tmp_path / "3_poison.avro").write_bytes(poison)
    (tmp_path / "4_normalise_bug.avro").write_bytes(rubin_message(diaSourceId=777))
    (tmp_path / "5_nan_time.avro").write_bytes(rubin_message(diaSourceId=5, midpointMjdTai=math.nan))
    with tarfile.open(tmp_path / "6_night.tar", "w") as tar:
        for name, raw in (("big.avro", b"\x00" * 100_000), ("ok.avro", rubin_message(diaSourceId=6))):
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    decode, normalise = AlertDecoder.decode_message, StampNormaliser.normalise

    def decode_with_a_bug(self, raw):
        if raw == poison:
            raise KeyError("a decoder bug")
        return decode(self, raw)

    def normalise_with_a_bug(self, alert):
        if alert.diaSourceId == 777:
            raise ZeroDivisionError("a normaliser bug")
        return normalise(self, alert)

    monkeypatch.setattr(AlertDecoder, "decode_message", decode_with_a_bug)
    monkeypatch.setattr(StampNormaliser, "normalise", normalise_with_a_bug)
    limits = settings.limits.model_copy(update={"max_archive_member_bytes": 50_000})
    out = io.StringIO()
    status = run_inspect(tmp_path, settings.model_copy(update={"limits": limits}), out)
    rows = rows_of(out.getvalue())  # every line strict JSON, NaN time included
    assert status == 1
    by_source = {Path(r["source"]).name: r for r in rows}
    assert by_source["1_good.avro"]["status"] == "ok" and by_source["6_night.tar:ok.avro"]["status"] == "ok"
    assert by_source["2_corrupt.tar.gz"]["reason"] == "corrupt_archive"
    assert "2_corrupt.tar.gz" in by_source["2_corrupt.tar.gz"]["error"]
    assert by_source["3_poison.avro"] | {"error": ""} == {
        "source": str(tmp_path / "3_poison.avro"), "status": "error", "reason": "internal_error", "error": "",
    }  # fmt: skip
    assert "KeyError" in by_source["3_poison.avro"]["error"]
    bug = by_source["4_normalise_bug.avro"]
    assert (bug["reason"], bug["diaSourceId"]) == ("internal_error", 777) and "ZeroDivisionError" in bug[
        "error"
    ]
    nan_time = by_source["5_nan_time.avro"]
    assert nan_time["status"] == "error" or nan_time["midpointMjdTai"] is None
    assert by_source["6_night.tar:big.avro"]["reason"] == "archive_member_too_large"
    assert len(rows) == 7


def test_classify_reports_bad_files_and_classifies_the_rest(
    service_settings: Settings, tmp_path: Path
) -> None:
    folder = tmp_path / "alerts"
    folder.mkdir()
    alerts = object_alerts(41, 4, first_source=4100)
    for k, raw in enumerate(alerts[:2]):
        (folder / f"a-{k}.avro").write_bytes(raw)
    (folder / "b-broken.tar.gz").write_bytes(b"\x1f\x8b junk")
    with tarfile.open(folder / "c-night.tar.gz", "w:gz") as tar:
        for k, raw in enumerate(alerts[2:], start=2):
            info = tarfile.TarInfo(f"a-{k}.avro")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    out = io.StringIO()
    assert classify_path(folder, service_settings, out, err=io.StringIO()) == 1
    rows = rows_of(out.getvalue())
    errors = [r for r in rows if r.get("status") == "error"]
    assert [(Path(r["source"]).name, r["reason"]) for r in errors] == [("b-broken.tar.gz", "corrupt_archive")]
    assert [r["diaSourceId"] for r in rows if "predictedClass" in r] == [4102, 4103]


@pytest.mark.parametrize(
    ("state", "says"),
    [
        ("redis://cache:6379/0", "unknown state store scheme 'redis'"),
        ("notes", "cannot be used as a state database"),
        ("other", "database of something else"),
    ],
)
def test_classify_with_a_bad_state_is_one_user_error_line(
    service_settings: Settings, tmp_path: Path, state: str, says: str
) -> None:
    (tmp_path / "notes").write_text("these are my notes, not a database\n" * 50)
    import sqlite3

    with sqlite3.connect(tmp_path / "other") as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER)")
    (tmp_path / "a.avro").write_bytes(rubin_message())
    url = state if "://" in state else str(tmp_path / state)
    out = io.StringIO()
    with pytest.raises(UserError) as caught:
        classify_path(tmp_path / "a.avro", service_settings, out, state_url=url)
    assert out.getvalue() == ""
    (line,) = caught.value.lines  # __main__ prints it as "error: <line>", exit status 2
    assert line.startswith("--state ") and says in line
    if state == "notes":
        assert (tmp_path / "notes").read_text().startswith("these are my notes")  # untouched


def test_classify_cli_bad_state_is_not_a_traceback(model_artifact: Path, tmp_path: Path) -> None:
    (tmp_path / "a.avro").write_bytes(rubin_message())
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_PLUGIN_")}
    env |= {"BROKER_PLUGIN_MODEL__ARTIFACT": str(model_artifact), "BROKER_PLUGIN_MODEL__DEVICE": "cpu"}
    result = subprocess.run(
        [sys.executable, "-m", "broker_plugin", "classify", str(tmp_path / "a.avro"), "--state", "mongodb://x"],
        capture_output=True, text=True, check=False, env=env,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stdout == "" and "Traceback" not in result.stderr
    assert "error: --state mongodb://x: unknown state store scheme 'mongodb'" in result.stderr


def test_classify_on_a_store_holding_an_invalid_frame(service_settings: Settings, tmp_path: Path) -> None:
    """A frame an older version stored without today's checks no longer stops its object (or the run)."""
    state = tmp_path / "state.db"
    poisoned = make_frame(4099, -5.0)  # MJD 59 995, before the alerts
    poisoned.mask[5, 5] = True
    poisoned.data[5, 5] = np.inf
    with SqliteStateStore(state) as store:
        store.add_frames("rubin:41", [poisoned])
    folder = tmp_path / "alerts"
    folder.mkdir()
    for k, raw in enumerate(object_alerts(41, 4, first_source=4100)):
        (folder / f"a-{k}.avro").write_bytes(raw)
    out = io.StringIO()
    assert (
        classify_path(folder, service_settings, out, state_url=f"sqlite:///{state}", err=io.StringIO()) == 0
    )
    by_id = {r["diaSourceId"]: r for r in rows_of(out.getvalue()) if "predictedClass" in r}
    # The invalid frame is never used: the last alert is classified with the 4 valid frames, not 5.
    assert by_id[4103]["nFrames"] == 4 and max(r["nFrames"] for r in by_id.values()) == 4
    with SqliteStateStore(state) as store:
        assert [f.diaSourceId for f in store.frames("rubin:41")] == [4100, 4101, 4102, 4103]
