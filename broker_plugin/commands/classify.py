"""``python -m broker_plugin classify PATH``: the whole pipeline over alert files, no Kafka.

Alerts are read from a file, folder or ``.tar(.gz)``, put in time order, and pushed through the same
pipeline the service runs (normalise, store, incremental inference) in micro-batches; every
classification is printed as one JSON line (our output record's fields), and every rejected alert as
one JSON line with its reason. The state lives in a temporary SQLite store unless ``--state`` names one.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path
from typing import TextIO

from broker_plugin.config import Settings
from broker_plugin.exceptions import BrokerPluginError
from broker_plugin.factory import Parts, build_parts
from broker_plugin.pipeline import Inbound
from broker_plugin.serde.alerts import iter_payload
from broker_plugin.serde.files import iter_alert_payloads


def classify_path(path: Path, settings: Settings, out: TextIO, state_url: str | None = None) -> int:
    """Classify every alert under ``path``; exit status 0 if every alert was usable."""
    with tempfile.TemporaryDirectory(prefix="broker-plugin-classify-") as tmp:
        url = state_url or f"sqlite:///{Path(tmp) / 'state.db'}"
        parts = build_parts(
            settings.model_copy(update={"state": settings.state.model_copy(update={"url": url})})
        )
        try:
            return _classify(path, parts, settings.service.batch_max_size, out)
        finally:
            parts.close()


def _classify(path: Path, parts: Parts, batch_size: int, out: TextIO) -> int:
    inbound: list[Inbound] = []
    problems = 0
    for name, raw in iter_alert_payloads(path):
        for item in iter_payload(raw, parts.decoder):
            if isinstance(item, BrokerPluginError):
                problems += 1
                out.write(
                    json.dumps({"source": name, "status": "error", "reason": item.reason, "error": str(item)})
                    + "\n"
                )
            else:
                inbound.append(Inbound(item, None, name))
    inbound.sort(key=lambda i: i.alert.midpointMjdTai)
    for start in range(0, len(inbound), batch_size):
        result = parts.pipeline.process(inbound[start : start + batch_size])
        for ref, reason, error in result.rejected:
            problems += 1
            out.write(json.dumps({"source": ref, "status": "error", "reason": reason, "error": error}) + "\n")
        for _ref, classification in result.classifications:
            record = dataclasses.asdict(classification)
            record["survey"] = str(classification.survey)
            out.write(json.dumps(record) + "\n")
    return 1 if problems else 0
