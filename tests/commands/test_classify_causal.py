"""``classify`` gives the same, causal outputs whatever the micro-batch size."""

import io
import json
from pathlib import Path

import numpy as np

from broker_plugin.commands.classify import classify_path
from broker_plugin.config import Settings
from tests.factories import object_alerts


def classify_rows(folder: Path, settings: Settings, batch_size: int) -> list[dict]:
    service = settings.service.model_copy(update={"batch_max_size": batch_size})
    out = io.StringIO()
    assert classify_path(folder, settings.model_copy(update={"service": service}), out) == 0
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    return sorted(rows, key=lambda r: r["diaSourceId"])


def test_classify_outputs_are_identical_for_batch_sizes_1_7_256(
    service_settings: Settings, tmp_path: Path
) -> None:
    for obj in range(3):
        for k, raw in enumerate(object_alerts(50 + obj, 8, first_source=5000 + 100 * obj, mjd0=60_000 + obj)):
            (tmp_path / f"{obj}-{k}.avro").write_bytes(raw)
    runs = {size: classify_rows(tmp_path, service_settings, size) for size in (1, 7, 256)}
    reference = runs[1]
    assert [(r["diaSourceId"], r["nFrames"]) for r in reference if r["diaSourceId"] < 5100] == [
        (5000 + k, k + 1) for k in range(2, 8)
    ]
    for size in (7, 256):
        rows = runs[size]
        assert [(r["diaSourceId"], r["nFrames"]) for r in rows] == [
            (r["diaSourceId"], r["nFrames"]) for r in reference
        ]
        for got, want in zip(rows, reference, strict=True):
            a = np.array([p["probability"] for p in got["classes"]])
            b = np.array([p["probability"] for p in want["classes"]])
            assert np.abs(a - b).max() <= 1e-5
