"""``python -m broker_plugin classify PATH``: the whole pipeline over alert files, no Kafka.

Alerts are read from a file, folder or ``.tar(.gz)``, put in time order, and pushed through the same
pipeline the service runs (normalise, store, incremental inference) in micro-batches; every
classification is printed as one JSON line (our output record's fields), and every rejected alert,
unreadable file or corrupt archive as one JSON line with its reason (see
:mod:`broker_plugin.commands.offline`). An alert that makes the pipeline fail is isolated as in the
service (:func:`broker_plugin.service.process_isolated`): the others are still classified.

Alerts are decoded and normalised in this process (the service's preparation processes are not used:
the pipeline normalises each batch itself). The state lives in a temporary SQLite store unless
``--state`` names one. Exit status: 0 when every
alert was usable, 1 when some were not, 2 when the command could not run: ``--state`` names an unknown
scheme or something that is not a state database, the state store is unreachable or fails, or the model
artifact cannot be loaded (one line on stderr says which).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import tempfile
from pathlib import Path
from typing import TextIO

from broker_plugin.commands.offline import Problem, iter_alerts, json_line
from broker_plugin.config import Settings
from broker_plugin.exceptions import StateUrlError
from broker_plugin.factory import Parts, build_parts
from broker_plugin.inference.errors import ArtifactError
from broker_plugin.pipeline import Inbound
from broker_plugin.service import is_infrastructure_failure, process_isolated
from broker_plugin.state.factory import redact_url


def classify_path(
    path: Path, settings: Settings, out: TextIO, state_url: str | None = None, err: TextIO | None = None
) -> int:
    """Classify every alert under ``path``; return the exit status (see the module docstring)."""
    err = err if err is not None else sys.stderr
    with tempfile.TemporaryDirectory(prefix="broker-plugin-classify-") as tmp:
        url = state_url or f"sqlite:///{Path(tmp) / 'state.db'}"
        try:
            parts = build_parts(
                settings.model_copy(update={"state": settings.state.model_copy(update={"url": url})})
            )
        except StateUrlError as exc:
            err.write(f"error: --state {redact_url(url)}: {exc}\n")
            return 2
        except ArtifactError as exc:
            err.write(f"error: model artifact {settings.model.artifact}: {exc}\n")
            return 2
        except Exception as exc:
            if not is_infrastructure_failure(exc):
                raise
            err.write(f"error: state store {redact_url(url)} unavailable: {_one_line(exc)}\n")
            return 2
        try:
            return _classify(path, parts, settings, out)
        except Exception as exc:
            if not is_infrastructure_failure(exc):
                raise
            err.write(f"error: state store {redact_url(url)} failed: {_one_line(exc)}\n")
            return 2
        finally:
            parts.close()


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def _time(item: Inbound) -> float:
    mjd = item.alert.midpointMjdTai
    return mjd if isinstance(mjd, float | int) and math.isfinite(mjd) else math.inf


def _classify(path: Path, parts: Parts, settings: Settings, out: TextIO) -> int:
    inbound: list[Inbound] = []
    problems = 0
    for name, item in iter_alerts(path, parts.decoder, settings.limits):
        if isinstance(item, Problem):
            problems += 1
            out.write(json_line(item.row()))
        else:
            inbound.append(Inbound(item, None, name))
    inbound.sort(key=_time)
    batch_size = settings.service.batch_max_size
    for start in range(0, len(inbound), batch_size):
        result = process_isolated(parts.pipeline, inbound[start : start + batch_size])
        for ref, reason, error in result.rejected:
            problems += 1
            out.write(json_line(Problem(str(ref), reason, error).row()))
        for _ref, classification in result.classifications:
            record = dataclasses.asdict(classification)
            record["survey"] = str(classification.survey)
            out.write(json_line(record))
    return 1 if problems else 0
