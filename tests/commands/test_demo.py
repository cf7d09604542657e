"""The demo end to end: embedded broker, bundled alerts, service, summary (here with the test model)."""

import io
import re

import pytest

from broker_plugin.commands.demo import DEMO_DATA, run_demo
from broker_plugin.config import Settings


@pytest.mark.integration
def test_demo_processes_every_bundled_alert(service_settings: Settings) -> None:
    out = io.StringIO()
    assert run_demo(service_settings, out) == 0
    text = out.getvalue()
    assert len(list(DEMO_DATA.glob("*.avro"))) > 10
    assert "alerts in:" in text and "TIMED OUT" not in text
    classified, total = map(int, re.search(r"objects classified: (\d+) of (\d+)", text).groups())
    assert classified == total > 0  # every bundled object has enough alerts
    assert "dead letters:            0" in text
    assert "metrics at http://127.0.0.1:" in text
    assert "accuracy, newest alert per object:" in text and "latency (produce -> publish): p50" in text


def test_demo_refuses_a_missing_model_before_starting_anything(settings: Settings, tmp_path) -> None:
    from broker_plugin.cli import UserError

    missing = tmp_path / "no-model"
    config = settings.model_copy(update={"model": settings.model.model_copy(update={"artifact": missing})})
    out = io.StringIO()
    with pytest.raises(UserError) as caught:
        run_demo(config, out)
    assert out.getvalue() == ""
    (line,) = caught.value.lines
    assert line.startswith(f"no model artifact at {missing} (BROKER_PLUGIN_MODEL__ARTIFACT): ")
