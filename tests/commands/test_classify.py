import io
import json
from pathlib import Path

from broker_plugin.commands.classify import classify_path
from broker_plugin.config import Settings
from tests.factories import object_alerts, rubin_message


def test_classify_files_offline(service_settings: Settings, tmp_path: Path) -> None:
    folder = tmp_path / "alerts"
    folder.mkdir()
    for k, raw in enumerate(object_alerts(21, 4, first_source=2100)):
        (folder / f"a-{k}.avro").write_bytes(raw)
    (folder / "z-broken.avro").write_bytes(rubin_message(diaSourceId=2200, diaObjectId=22, cutout=None))
    out = io.StringIO()
    assert classify_path(folder, service_settings, out) == 1  # one alert was unusable
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    classified = [r for r in rows if "predictedClass" in r]
    assert [r["diaSourceId"] for r in classified] == [2102, 2103]
    # One batch, yet each output uses only the frames up to its own alert (causal).
    assert classified[0]["survey"] == "rubin" and [r["nFrames"] for r in classified] == [3, 4]
    errors = [r for r in rows if r.get("status") == "error"]
    assert len(errors) == 1 and errors[0]["reason"] == "missing_cutout"
