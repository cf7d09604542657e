"""``python -m broker_plugin inspect PATH``: one JSON line per alert, with its stamp's fate.

For every alert in a file, folder or ``.tar(.gz)``: survey, ids, band, ``midpointMjdTai``, the cutout's
original shape and the normalised frame's shape, valid fraction and quality flags, and ``status`` "ok"
or "error" with the typed error's ``reason`` and message. A file that cannot be read, a corrupt archive
or an unexpected exception is one error line naming the file (see :mod:`broker_plugin.commands.offline`);
nothing stops the walk, and every line is strict JSON.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from broker_plugin.commands.offline import Problem, iter_alerts, json_line
from broker_plugin.config import Settings
from broker_plugin.factory import build_decoder
from broker_plugin.records import Alert
from broker_plugin.stamps import StampNormaliser


def inspect_alert(alert: Alert, normaliser: StampNormaliser) -> dict[str, Any]:
    """Describe one alert and what normalising its cutout gives (an exception becomes an error row)."""
    row: dict[str, Any] = {
        "survey": str(alert.survey),
        "diaObjectId": alert.diaObjectId,
        "diaSourceId": alert.diaSourceId,
        "band": alert.band,
        "midpointMjdTai": alert.midpointMjdTai,
        "schemaVersion": alert.schemaVersion,
    }
    try:
        row["midpointMjdTai"] = round(alert.midpointMjdTai, 6)
        frame = normaliser.normalise(alert)
        return row | {
            "originalShape": list(frame.originalShape),
            "frameShape": list(frame.data.shape),
            "validFraction": round(float(frame.mask.mean()), 4),
            "flags": [flag.name for flag in type(frame.flags) if flag and flag in frame.flags],
            "status": "ok",
        }
    except Exception as exc:  # typed errors keep their reason; anything else is an internal_error
        problem = Problem.of(f"diaSourceId {alert.diaSourceId!r}", exc)
        return row | {"status": "error", "reason": problem.reason, "error": problem.error}


def inspect_path(path: Path, settings: Settings) -> Iterator[dict[str, Any]]:
    """One description per alert under ``path`` (see module docstring)."""
    decoder = build_decoder(settings)
    normaliser = StampNormaliser(settings.stamps, settings.limits)
    for name, item in iter_alerts(path, decoder, settings.limits):
        if isinstance(item, Problem):
            yield item.row()
        else:
            yield {"source": name} | inspect_alert(item, normaliser)


def run_inspect(path: Path, settings: Settings, out: TextIO) -> int:
    """Print one JSON line per alert; exit status 0 if every alert was usable, else 1."""
    failures = 0
    for row in inspect_path(path, settings):
        failures += row["status"] != "ok"
        out.write(json_line(row))
    return 1 if failures else 0
