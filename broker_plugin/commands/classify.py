"""``python -m broker_plugin classify PATH``: the whole pipeline over alert files, no Kafka.

Alerts are read from a file, folder or ``.tar(.gz)``, put in time order, and pushed through the same
pipeline the service runs (normalise, store, incremental inference) in micro-batches; every
classification is printed as one JSON line (our output record's fields), and every rejected alert,
unreadable file or corrupt archive as one JSON line with its reason (see
:mod:`broker_plugin.commands.offline`). An alert that makes the pipeline fail is isolated as in the
service (:func:`broker_plugin.isolation.process_isolated`): the others are still classified.

Alerts are decoded and normalised in this process (the service's preparation processes are not used:
the pipeline normalises each batch itself). The state lives in a temporary SQLite store unless
``--state`` names one. A progress bar (alerts read, then alerts processed, with rate and ETA) goes to
stderr when it is a terminal. Exit status: 0 when every alert was usable, 1 when some were not; when the
command cannot run (``--state`` names an unknown scheme or something that is not a state database, the
state store is unreachable or fails, or the model artifact cannot be loaded) a
:class:`~broker_plugin.cli.UserError` says which, and ``__main__`` prints it as one line with exit
status 2.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from pathlib import Path
from typing import TextIO

from broker_plugin.cli import UserError, artifact_error, one_line
from broker_plugin.commands.offline import Problem, iter_alerts, json_line
from broker_plugin.config import Settings, env_variable
from broker_plugin.exceptions import StateUrlError
from broker_plugin.factory import Parts, build_parts
from broker_plugin.inference.errors import ArtifactError
from broker_plugin.isolation import is_infrastructure_failure, process_isolated
from broker_plugin.pipeline import Inbound
from broker_plugin.progress import progress
from broker_plugin.state.factory import redact_url


def classify_path(
    path: Path,
    settings: Settings,
    out: TextIO,
    state_url: str | None = None,
    err: TextIO | None = None,
    show_progress: bool | None = None,
) -> int:
    """Classify every alert under ``path``; return the exit status (see the module docstring).

    Parameters
    ----------
    path
        Alert file, folder or tar archive.
    settings
        The plugin's settings (model, limits, batch size).
    out
        Where the JSON lines go.
    state_url
        The state store (default: a temporary SQLite store).
    err
        Where the progress bar goes (default: stderr).
    show_progress
        True or False forces the progress bar on or off; None shows it when ``err`` is a terminal.

    Raises
    ------
    UserError
        The command cannot run: bad ``--state``, unreachable or failing store, model artifact.
    """
    with tempfile.TemporaryDirectory(prefix="broker-plugin-classify-") as tmp:
        url = state_url or f"sqlite:///{Path(tmp) / 'state.db'}"
        try:
            # No preparation processes here: normalising and inference take turns, on every core.
            parts = build_parts(settings.model_copy(update={
                "state": settings.state.model_copy(update={"url": url}),
                "service": settings.service.model_copy(update={"prepare_processes": 0}),
            }))  # fmt: skip
        except StateUrlError as exc:
            raise UserError(f"--state {redact_url(url)}: {exc}") from exc
        except ArtifactError as exc:
            raise artifact_error(settings.model.artifact, exc, env_variable("model", "artifact")) from exc
        except Exception as exc:
            if not is_infrastructure_failure(exc):
                raise
            raise UserError(f"state store {redact_url(url)} unavailable: {_one_line(exc)}") from exc
        try:
            return _classify(path, parts, settings, out, err, show_progress)
        except Exception as exc:
            if not is_infrastructure_failure(exc):
                raise
            raise UserError(f"state store {redact_url(url)} failed: {_one_line(exc)}") from exc
        finally:
            parts.close()


def _one_line(exc: BaseException) -> str:
    return one_line(f"{type(exc).__name__}: {exc}")


def _time(item: Inbound) -> float:
    mjd = item.alert.midpointMjdTai
    return mjd if isinstance(mjd, float | int) and math.isfinite(mjd) else math.inf


def _classify(
    path: Path,
    parts: Parts,
    settings: Settings,
    out: TextIO,
    err: TextIO | None = None,
    show: bool | None = None,
) -> int:
    inbound: list[Inbound] = []
    problems = 0
    # Alerts are read first (they are sorted by time before any is classified), so the first bar counts
    # the alerts read and the second one the alerts classified, with rate and ETA.
    reading = progress(desc="reading alerts", unit=" alerts", enabled=show, file=err)
    with reading:
        for name, item in iter_alerts(path, parts.decoder, settings.limits):
            reading.update(1)
            if isinstance(item, Problem):
                problems += 1
                out.write(json_line(item.row()))
            else:
                inbound.append(Inbound(item, None, name))
    inbound.sort(key=_time)
    batch_size = settings.service.batch_max_size
    with progress(total=len(inbound), desc="classifying", unit=" alerts", enabled=show, file=err) as bar:
        for start in range(0, len(inbound), batch_size):
            batch = inbound[start : start + batch_size]
            result = process_isolated(parts.pipeline, batch)
            for ref, reason, error in result.rejected:
                problems += 1
                out.write(json_line(Problem(str(ref), reason, error).row()))
            for _ref, classification in result.classifications:
                record = dataclasses.asdict(classification)
                record["survey"] = str(classification.survey)
                out.write(json_line(record))
            bar.update(len(batch))
    return 1 if problems else 0
