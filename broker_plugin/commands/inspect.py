"""``python -m broker_plugin inspect PATH``: one JSON line per alert, with its stamp's fate.

For every alert in a file, folder or ``.tar(.gz)``: survey, ids, band, ``midpointMjdTai``, the cutout's
original shape and the normalised frame's shape, valid fraction and quality flags, and ``status`` "ok"
or "error" with the typed error's ``reason`` and message. Errors never stop the walk.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from broker_plugin.config import Settings
from broker_plugin.exceptions import BrokerPluginError
from broker_plugin.factory import build_decoder
from broker_plugin.records import Alert
from broker_plugin.serde.alerts import iter_payload
from broker_plugin.serde.files import iter_alert_payloads
from broker_plugin.stamps import StampNormaliser


def inspect_alert(alert: Alert, normaliser: StampNormaliser) -> dict[str, Any]:
    """Describe one alert and what normalising its cutout gives."""
    row: dict[str, Any] = {
        "survey": str(alert.survey),
        "diaObjectId": alert.diaObjectId,
        "diaSourceId": alert.diaSourceId,
        "band": alert.band,
        "midpointMjdTai": round(alert.midpointMjdTai, 6),
        "schemaVersion": alert.schemaVersion,
    }
    try:
        frame = normaliser.normalise(alert)
    except BrokerPluginError as exc:
        return row | {"status": "error", "reason": exc.reason, "error": str(exc)}
    return row | {
        "originalShape": list(frame.originalShape),
        "frameShape": list(frame.data.shape),
        "validFraction": round(float(frame.mask.mean()), 4),
        "flags": [flag.name for flag in type(frame.flags) if flag and flag in frame.flags],
        "status": "ok",
    }


def inspect_path(path: Path, settings: Settings) -> Iterator[dict[str, Any]]:
    """One description per alert under ``path`` (see module docstring)."""
    decoder = build_decoder(settings)
    normaliser = StampNormaliser(settings.stamps)
    for name, raw in iter_alert_payloads(path):
        for item in iter_payload(raw, decoder):
            if isinstance(item, BrokerPluginError):
                yield {"source": name, "status": "error", "reason": item.reason, "error": str(item)}
            else:
                yield {"source": name} | inspect_alert(item, normaliser)


def run_inspect(path: Path, settings: Settings, out: TextIO) -> int:
    """Print one JSON line per alert; exit status 0 if every alert was usable, else 1."""
    failures = 0
    for row in inspect_path(path, settings):
        failures += row["status"] != "ok"
        out.write(json.dumps(row) + "\n")
    return 1 if failures else 0
