import io
import json
import os
import subprocess
import sys
from pathlib import Path

from broker_plugin.commands.classify import classify_path
from broker_plugin.commands.demo import DEMO_DATA
from broker_plugin.config import Settings
from tests.factories import object_alerts, rubin_message

ROOT = Path(__file__).resolve().parents[2]


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


def test_classify_progress_counts_alerts_with_a_rate_when_asked(service_settings: Settings) -> None:
    out, err = io.StringIO(), io.StringIO()  # err is no terminal: the bar shows only because it is forced
    assert classify_path(DEMO_DATA, service_settings, out, err=err, show_progress=True) == 0
    rows = [json.loads(line) for line in out.getvalue().splitlines()]  # stdout: JSON lines only
    assert len(rows) > 0 and all("predictedClass" in r for r in rows)
    final = err.getvalue().split("\r")[-1]
    assert final.startswith("classifying: 100%") and "96/96" in final and " alerts/s]" in final
    assert "reading alerts: 96 alerts" in err.getvalue()


def test_classify_shows_no_bar_when_stderr_is_not_a_terminal(model_artifact: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_PLUGIN_")}
    env |= {"BROKER_PLUGIN_MODEL__ARTIFACT": str(model_artifact), "BROKER_PLUGIN_MODEL__DEVICE": "cpu"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-m", "broker_plugin", "classify", str(DEMO_DATA)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "alerts/s" not in result.stderr and "%|" not in result.stderr and "\r" not in result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) > 0 and all("predictedClass" in r for r in rows)
