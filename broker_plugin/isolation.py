"""Which failures stop the service, and a batch retried alert by alert so that only culprits are rejected.

The service's worker and the offline ``classify`` command run the pipeline through
:func:`process_isolated`. When the pipeline raises for a batch, :func:`is_infrastructure_failure`
decides: a failure of the state store or of Kafka (also when wrapped, through ``__cause__`` and
``__context__``) is raised on, so that nothing of the batch is committed and a restart redelivers it;
anything else was caused by the data of one message, so the batch is retried message by message and
each culprit becomes a rejection with its typed ``reason`` (:func:`rejection_of`), or
``internal_error`` for a bug, whose traceback is logged. The list of each kind is in
:mod:`broker_plugin.service`.
"""

from __future__ import annotations

import logging
import sqlite3
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields

from confluent_kafka import KafkaException

from broker_plugin.exceptions import BrokerPluginError, KafkaUnreachableError
from broker_plugin.kafka.producer import DeliveryError
from broker_plugin.pipeline import BatchResult, Inbound, Pipeline
from broker_plugin.state.base import StateStoreClosedError

log = logging.getLogger(__name__)

#: SQLite errors raised by the values of one message, not by the database: isolated, never fatal.
_SQLITE_DATA_ERRORS = (
    sqlite3.IntegrityError,
    sqlite3.DataError,
    sqlite3.ProgrammingError,
    sqlite3.InterfaceError,
)


def _is_infrastructure(exc: BaseException) -> bool:
    if isinstance(exc, KafkaException | DeliveryError | KafkaUnreachableError | StateStoreClosedError):
        return True
    if isinstance(exc, sqlite3.Error):
        return not isinstance(exc, _SQLITE_DATA_ERRORS)
    # psycopg is imported only by deployments that use PostgreSQL: if it is not loaded, none of its
    # errors can be raised.
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None and isinstance(exc, psycopg.Error):
        return not isinstance(exc, psycopg.DataError | psycopg.IntegrityError)
    return False


def is_infrastructure_failure(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it wraps) is a failure of the state store or of Kafka.

    Such a failure must stop the service before anything is committed (a restart redelivers); anything
    else was caused by one message and is isolated (see the module docstring for the list).
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if _is_infrastructure(current):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def rejection_of(exc: Exception) -> tuple[str, str]:
    """``(reason, error)`` of a dead letter for ``exc``: its typed reason, or ``internal_error`` for a bug."""
    if isinstance(exc, BrokerPluginError):
        return exc.reason, str(exc)
    return "internal_error", f"{type(exc).__name__}: {exc}"


def process_isolated(
    pipeline: Pipeline, inbound: Sequence[Inbound], on_bug: Callable[[Exception], None] | None = None
) -> BatchResult:
    """:meth:`Pipeline.process` over a batch; if it raises, alert by alert so that only culprits are rejected.

    Parameters
    ----------
    pipeline
        The pipeline.
    inbound
        The batch.
    on_bug
        Called with every exception that is not a typed error (a bug), after it was logged with its
        traceback.

    Raises
    ------
    Exception
        An infrastructure failure (:func:`is_infrastructure_failure`): nothing of the batch may be
        committed.
    """
    try:
        return pipeline.process(inbound)
    except Exception as exc:
        if is_infrastructure_failure(exc):
            raise
        if len(inbound) == 1:  # the culprit is known: no retry
            return BatchResult(rejected=[(inbound[0].ref, *_rejected(exc, on_bug))])
        log.warning(
            "batch of %d alerts failed (%s: %s); retrying one by one", len(inbound), type(exc).__name__, exc
        )
    result = BatchResult()
    for item in inbound:
        try:
            one = pipeline.process([item])
        except Exception as exc:
            if is_infrastructure_failure(exc):
                raise
            result.rejected.append((item.ref, *_rejected(exc, on_bug)))
            continue
        _add(result, one)
    return result


def _add(total: BatchResult, one: BatchResult) -> None:
    """Add ``one``'s outcomes to ``total``: lists concatenated, counts and seconds summed (every field)."""
    for item in fields(BatchResult):
        setattr(total, item.name, getattr(total, item.name) + getattr(one, item.name))


def _rejected(exc: Exception, on_bug: Callable[[Exception], None] | None) -> tuple[str, str]:
    reason, error = rejection_of(exc)
    if reason == "internal_error":
        log.error("unexpected error processing one alert; it is dead-lettered", exc_info=exc)
        if on_bug is not None:
            on_bug(exc)
    return reason, error
