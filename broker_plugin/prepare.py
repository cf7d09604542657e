"""Preparation: Kafka message values -> alerts without their cutouts + model frames, off the inference thread.

:class:`Preparer` decodes every message of a poll and normalises each alert's difference cutout into the
model's frame; every message, or alert, that cannot be used becomes a :class:`Rejection` with its typed
reason, and an unexpected exception on one of them becomes reason ``internal_error`` with the traceback
as text (the service logs it and counts it). Nothing else escapes.

:class:`PreparationPool` runs preparers in separate processes, so that decoding and normalising (pure
CPU: fastavro, FITS parsing, the resampler) run beside inference on another core instead of taking the
GIL from it, and so that a C library crashing on a hostile message kills a preparation process, not the
service. What crosses the process boundary is kept small: message values go in; alerts without their
cutout bytes and 32x32 frames come out (about 6 kB an alert with the difference alone, 15 kB with the
science and template planes), with the count of planes the frames lack (:attr:`Prepared.planes_missing`),
which the pool hands to its ``on_planes_missing`` callback in the service.

Failure handling (:meth:`PreparationPool.result`): when a preparation process dies, every poll it held
fails with ``BrokenProcessPool``. The pool is restarted for the polls that follow, and the first poll
that met the death is prepared again message by message, each message alone in a process of its own: a
message on which that process dies too is rejected with reason ``internal_error`` ("preparation process
died") and the rest of the poll goes on. Polls that were only waiting behind it are prepared again whole
in the restarted pool (then message by message if that fails too).

The processes are started with ``forkserver`` (the service holds threads, librdkafka and torch, which
plain ``fork`` would copy mid-state); the fork server preloads this module, so a restart is a quick fork.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing import connection

from broker_plugin.config import LimitsSettings, SchemaRegistrySettings, StampSettings
from broker_plugin.exceptions import BrokerPluginError
from broker_plugin.records import Alert, Frame
from broker_plugin.serde.alerts import AlertDecoder
from broker_plugin.serde.schemas import RubinSchemaStore, SchemaRegistryClient
from broker_plugin.stamps import StampNormaliser

log = logging.getLogger(__name__)

#: Reason and error of a message on which a preparation process died twice.
PROCESS_DIED = ("internal_error", "preparation process died")


def make_decoder(
    registry: SchemaRegistrySettings, limits: LimitsSettings, *, history: bool = True
) -> AlertDecoder:
    """The alert decoder (bundled schemas, plus the registry if configured) under ``limits``.

    ``history``: read each alert's photometric history (only a model that uses it needs it).
    """
    client = SchemaRegistryClient(registry) if registry.url else None
    return AlertDecoder(RubinSchemaStore(client), limits, history=history)


@dataclass(frozen=True, slots=True)
class PrepareConfig:
    """Everything a preparation process needs to build its decoder and normaliser (pickled to it).

    Attributes
    ----------
    schema_registry
        Registry settings of the decoder.
    limits
        Resource bounds of the decoder and the normaliser.
    stamps
        The model's stamp settings (its frame size and pixel scale).
    bands
        The model's bands: alerts in other bands are not normalised (the pipeline ignores them).
    history
        Decode each alert's photometric history (the model uses it); False skips it at no cost.
    """

    schema_registry: SchemaRegistrySettings
    limits: LimitsSettings
    stamps: StampSettings
    bands: tuple[str, ...]
    history: bool = True


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a message or an alert cannot be used.

    Attributes
    ----------
    reason, error
        Dead-letter reason and message.
    stage
        Where: ``decode``, ``normalise`` or ``prepare`` (the preparation process died).
    traceback
        The traceback of an unexpected exception (reason ``internal_error``), as text.
    """

    reason: str
    error: str
    stage: str
    traceback: str | None = None


@dataclass(frozen=True, slots=True)
class PreparedAlert:
    """One decoded alert ready for the pipeline.

    Attributes
    ----------
    alert
        The alert without its cutout bytes.
    frame
        Its frame; ``None`` when the model lacks its band or it was rejected.
    rejection
        Why its cutout cannot become a frame, if it cannot.
    """

    alert: Alert
    frame: Frame | None = None
    rejection: Rejection | None = None


#: What one message became: its alerts, or why it cannot be read.
MessageOutcome = list[PreparedAlert] | Rejection


@dataclass(slots=True)
class Prepared:
    """The outcomes of the messages of one poll, in their order, and the time spent [s].

    ``planes_missing`` counts the science and template planes (and photometry) the poll's frames lack,
    by ``(plane, reason)`` (see :meth:`~broker_plugin.stamps.StampNormaliser.watch_missing_planes`): the
    preparation process cannot reach the service's metrics, so the counts travel with the outcomes.
    """

    outcomes: list[MessageOutcome] = field(default_factory=list)
    decode_seconds: float = 0.0
    normalise_seconds: float = 0.0
    planes_missing: dict[tuple[str, str], int] = field(default_factory=dict)

    def add(self, other: Prepared) -> None:
        """Append another poll part's outcomes, times and counts to this one."""
        self.outcomes += other.outcomes
        self.decode_seconds += other.decode_seconds
        self.normalise_seconds += other.normalise_seconds
        for key, count in other.planes_missing.items():
            self.planes_missing[key] = self.planes_missing.get(key, 0) + count


def _bug(exc: Exception, stage: str) -> Rejection:
    text = "".join(traceback.format_exception(exc))
    return Rejection("internal_error", f"{type(exc).__name__}: {exc}", stage, text)


class Preparer:
    """Message values -> :class:`Prepared`; never raises for one message's content.

    Parameters
    ----------
    config
        Decoder and normaliser settings.
    """

    def __init__(self, config: PrepareConfig) -> None:
        self._decoder = make_decoder(config.schema_registry, config.limits, history=config.history)
        self._decoder.watch_missing_history(lambda reason: self._count_missing("history", reason))
        self._normaliser = StampNormaliser(config.stamps, config.limits)
        self._normaliser.watch_missing_planes(self._count_missing)
        self._bands = frozenset(config.bands)
        self._out: Prepared | None = None

    def _count_missing(self, plane: str, reason: str) -> None:
        if self._out is not None:
            key = (plane, reason)
            self._out.planes_missing[key] = self._out.planes_missing.get(key, 0) + 1

    def prepare(self, values: Sequence[bytes]) -> Prepared:
        """Decode and normalise every message of one poll."""
        out = self._out = Prepared()
        for value in values:
            start = time.perf_counter()
            try:
                alerts = self._decoder.decode_message(value)
            except BrokerPluginError as exc:
                out.outcomes.append(Rejection(exc.reason, str(exc), "decode"))
                continue
            except Exception as exc:  # a bug met by this message: the others go on
                out.outcomes.append(_bug(exc, "decode"))
                continue
            finally:
                out.decode_seconds += time.perf_counter() - start
            start = time.perf_counter()
            out.outcomes.append([self._alert(alert) for alert in alerts])
            out.normalise_seconds += time.perf_counter() - start
        return out

    def _alert(self, alert: Alert) -> PreparedAlert:
        # The cutouts stay here: the pipeline needs only the frame.
        light = dataclasses.replace(alert, cutoutDifference=None, cutoutScience=None, cutoutTemplate=None)
        if alert.band not in self._bands:
            return PreparedAlert(light)
        try:
            return PreparedAlert(light, self._normaliser.normalise(alert))
        except BrokerPluginError as exc:
            return PreparedAlert(light, rejection=Rejection(exc.reason, str(exc), "normalise"))
        except Exception as exc:
            return PreparedAlert(light, rejection=_bug(exc, "normalise"))


#: Builds a process's preparer from the config (a module-level callable: it is pickled to the process).
PreparerFactory = Callable[[PrepareConfig], Preparer]

# ---- inside a preparation process ---------------------------------------------------------------------

_preparer: Preparer | None = None


def _start_process(
    config: PrepareConfig, make: PreparerFactory, service_alive: connection.Connection
) -> None:
    """Initialiser of a preparation process: build its preparer; exit when the service is gone."""
    global _preparer  # one preparer per process, built once
    # Ctrl-C reaches the whole process group: the service decides when preparation stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _preparer = make(config)

    def watch() -> None:
        # Nothing is ever sent on this pipe: it ends when the service's end closes, i.e. when the service
        # is gone, even killed. The pool's own pipes give no such sign (this process holds both of their
        # ends), and neither does the parent (the fork server lives as long as this process does).
        connection.wait([service_alive])
        os._exit(0)

    threading.Thread(target=watch, name="service-watch", daemon=True).start()


def _prepare_in_process(values: list[bytes]) -> Prepared:
    assert _preparer is not None  # noqa: S101 - set by the initialiser
    return _preparer.prepare(values)


def _ping() -> None:
    """A call that returns once the process that runs it has built its preparer."""


# ---- in the service -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pending:
    """A poll submitted for preparation.

    Attributes
    ----------
    values
        The message values.
    future
        Its result; ``None`` when the pool was broken at submission.
    generation
        The pool's generation at submission (incremented at each restart).
    """

    values: list[bytes]
    future: Future[Prepared] | None
    generation: int


class PreparationPool:
    """:class:`Preparer` in ``processes`` separate processes, restarted when one dies.

    :meth:`submit` may be called from any thread; :meth:`result` from one thread only, in submission
    order (the service's worker).

    Parameters
    ----------
    config
        Decoder and normaliser settings of every process.
    processes
        How many preparation processes.
    make_preparer
        Builds each process's preparer from ``config`` (the injection point of tests); a module-level
        callable.
    on_process_death
        Called each time a preparation process died and was replaced.
    on_planes_missing
        Called by :meth:`result` with ``(plane, reason, count)`` for the planes the poll's frames lack
        (:attr:`Prepared.planes_missing`).
    """

    def __init__(
        self,
        config: PrepareConfig,
        processes: int,
        *,
        make_preparer: PreparerFactory = Preparer,
        on_process_death: Callable[[], None] | None = None,
        on_planes_missing: Callable[[str, str, int], None] | None = None,
    ) -> None:
        if processes < 1:
            raise ValueError(f"processes must be at least 1, got {processes}")
        self._config, self._processes, self._make = config, processes, make_preparer
        self._on_death = on_process_death
        self._on_planes_missing = on_planes_missing
        self._context = multiprocessing.get_context("forkserver")
        self._alive: tuple[connection.Connection, connection.Connection] | None = None
        self._lock = threading.Lock()
        self._executor: ProcessPoolExecutor | None = None
        self._generation = 0

    def start(self) -> None:
        """Start the processes and wait until each has built its preparer.

        Raises
        ------
        RuntimeError
            A process could not start or build its preparer.
        """
        # Imported once by the fork server (if this call starts it), so that every process, restarts
        # included, forks ready to work; the main module as by default (a script run by path would
        # otherwise be imported again in each process).
        self._context.set_forkserver_preload(["__main__", "broker_plugin.prepare"])
        # Held open here, read in every preparation process: see _start_process.
        self._alive = self._context.Pipe(duplex=False)
        with self._lock:
            self._executor = self._new_executor(self._processes)
            pings = [self._executor.submit(_ping) for _ in range(self._processes)]
        try:
            for ping in pings:
                ping.result()
        except BrokenProcessPool as exc:
            raise RuntimeError("the preparation processes could not start (see the log above)") from exc
        log.info("decoding and normalising in %d preparation process(es)", self._processes)

    def _new_executor(self, processes: int) -> ProcessPoolExecutor:
        assert self._alive is not None  # noqa: S101 - set by start()
        return ProcessPoolExecutor(
            processes,
            mp_context=self._context,
            initializer=_start_process,
            initargs=(self._config, self._make, self._alive[0]),
        )

    def submit(self, values: list[bytes]) -> Pending:
        """Submit one poll's message values; never blocks on preparation."""
        with self._lock:
            if self._executor is None:
                raise RuntimeError("the preparation pool is not started")
            try:
                future = self._executor.submit(_prepare_in_process, values)
            except BrokenProcessPool:  # a process died: result() restarts the pool and prepares it then
                future = None
            return Pending(values, future, self._generation)

    def result(self, pending: Pending) -> Prepared:
        """The outcomes of a submitted poll, waiting for them; see the module docstring for failures."""
        prepared = self._result(pending)
        if self._on_planes_missing is not None:
            for (plane, reason), count in prepared.planes_missing.items():
                self._on_planes_missing(plane, reason, count)
        return prepared

    def _result(self, pending: Pending) -> Prepared:
        suspect = False
        if pending.future is not None:
            try:
                return pending.future.result()
            except BrokenProcessPool:
                suspect = True  # it was running or waiting when a process died
            except Exception:
                # Not the content of one message (each is caught in the process): e.g. an outcome that
                # could not be pickled. Message by message, so that only the culprit is rejected.
                log.exception("preparation of a poll of %d messages failed", len(pending.values))
                return self._isolated(pending.values)
        first = pending.generation == self._generation  # nobody restarted the pool since it was submitted
        if first:
            self._restart(pending.generation)
        if suspect and first:
            return self._isolated(pending.values)
        # Only waiting behind the poll that met the death (or submitted while the pool was broken).
        retry = self.submit(pending.values)
        try:
            if retry.future is None:
                raise BrokenProcessPool("the preparation pool broke again")
            return retry.future.result()
        except BrokenProcessPool:
            self._restart(retry.generation)
            return self._isolated(pending.values)

    def _isolated(self, values: list[bytes]) -> Prepared:
        """Each message alone in a process of its own: a message on which that process dies is the culprit.

        The service's other polls go on in the (restarted) pool meanwhile; none of them shares a process
        with the message under test, so the blame is exact.
        """
        out = Prepared()
        executor: ProcessPoolExecutor | None = None
        try:
            for value in values:
                executor = executor or self._new_executor(1)
                try:
                    one = executor.submit(_prepare_in_process, [value]).result()
                except BrokenProcessPool:
                    log.error("a preparation process died on one message; it is dead-lettered")
                    self._count_death()
                    executor.shutdown(wait=False)
                    executor = None
                    out.outcomes.append(Rejection(*PROCESS_DIED, "prepare"))
                    continue
                except Exception as exc:  # its outcome could not come back: that message alone
                    log.exception("preparation of one message failed")
                    out.outcomes.append(_bug(exc, "prepare"))
                    continue
                out.add(one)
        finally:
            if executor is not None:
                executor.shutdown(wait=True)
        return out

    def _restart(self, generation: int) -> None:
        with self._lock:
            if generation != self._generation:
                return
            old, self._executor = self._executor, self._new_executor(self._processes)
            self._generation += 1
        log.warning("a preparation process died; the preparation pool is restarted")
        if old is not None:
            old.shutdown(wait=False, cancel_futures=True)
        self._count_death()

    def _count_death(self) -> None:
        if self._on_death is not None:
            self._on_death()

    def close(self, wait: bool = True) -> None:
        """Stop the processes.

        Parameters
        ----------
        wait
            Let them finish what they hold (nothing after a clean stop). ``False``: terminate them now
            (the worker gave up waiting; a process stuck on a message must not keep the service alive).
        """
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is None:
            return
        if not wait:
            # The executor has no public way to stop a running call before Python 3.14
            # (``terminate_workers``); its process table is the only handle on the processes.
            processes = getattr(executor, "_processes", None) or {}
            for process in list(processes.values()):
                process.terminate()
        executor.shutdown(wait=wait, cancel_futures=True)
        if self._alive is not None:
            for end in self._alive:
                end.close()
