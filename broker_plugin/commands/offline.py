"""What the offline commands (``inspect``, ``classify``) share: alerts from files, error lines, valid JSON.

Both print one JSON object per line. Every problem - an unreadable file, a corrupt archive, an archive
member over ``limits.max_archive_member_bytes``, an alert that does not decode or normalise, an unexpected
exception (reason ``internal_error``, logged with its traceback on stderr) - is one line
``{"source": ..., "status": "error", "reason": ..., "error": ...}`` naming the file (``archive:member``
inside an archive), and the walk goes on. Output is strict JSON: non-finite floats become ``null``.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from broker_plugin.config import LimitsSettings
from broker_plugin.exceptions import BrokerPluginError
from broker_plugin.records import Alert
from broker_plugin.serde.alerts import AlertDecoder, iter_payload
from broker_plugin.serde.files import iter_alert_payloads

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Problem:
    """Why one file or alert gave no result.

    Attributes
    ----------
    source
        The file (``archive:member`` for an archive member).
    reason
        A stable code (a typed error's ``reason``, or ``internal_error``).
    error
        The details.
    """

    source: str
    reason: str
    error: str

    @classmethod
    def of(cls, source: str, exc: BaseException) -> Problem:
        """The problem an exception names: its typed reason, else ``internal_error`` (logged as a bug)."""
        if isinstance(exc, BrokerPluginError):
            return cls(source, exc.reason, str(exc))
        log.error("unexpected error on %s", source, exc_info=exc)
        return cls(source, "internal_error", f"{type(exc).__name__}: {exc}")

    def row(self) -> dict[str, Any]:
        """The JSON line's fields."""
        return {"source": self.source, "status": "error", "reason": self.reason, "error": self.error}


def plain(value: Any) -> Any:
    """``value`` with only JSON types inside.

    Non-finite floats become ``None``, numpy scalars and arrays Python numbers and lists, tuples lists,
    enums their value, anything else its ``str``.
    """
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float | np.floating):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, Enum):
        return plain(value.value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [plain(v) for v in value]
    return str(value)


def json_line(record: Mapping[str, Any]) -> str:
    """One line of strict JSON (``allow_nan=False``: ``NaN`` and ``Infinity`` are not JSON), newline ended."""
    return json.dumps(plain(record), allow_nan=False) + "\n"


def iter_alerts(
    path: Path, decoder: AlertDecoder, limits: LimitsSettings
) -> Iterator[tuple[str, Alert | Problem]]:
    """``(source, alert or problem)`` for every alert under ``path``, in file order; never raises per file.

    A decoder that raises an unexpected exception stops the rest of that file only (one ``internal_error``
    problem names it).
    """
    for name, payload in iter_alert_payloads(path, max_member_bytes=limits.max_archive_member_bytes):
        if not isinstance(payload, bytes):
            yield name, Problem.of(name, payload)
            continue
        items = iter_payload(payload, decoder)
        while True:
            try:
                item = next(items)
            except StopIteration:
                break
            except Exception as exc:  # a bug of the decoder met by this file: report it, go on with the next
                yield name, Problem.of(name, exc)
                break
            yield name, (Problem.of(name, item) if isinstance(item, BaseException) else item)
