"""``python -m broker_plugin run``: the long-lived service, configured only by :class:`Settings`."""

from __future__ import annotations

import logging
import signal
import threading

from broker_plugin.config import Settings
from broker_plugin.exceptions import KafkaUnreachableError, StateUrlError
from broker_plugin.factory import build_parts, build_service
from broker_plugin.service import Service

log = logging.getLogger(__name__)


class _StopSignal:
    """SIGTERM/SIGINT handling installed before anything slow (model loading), so no signal is lost."""

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.service: Service | None = None
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        del frame
        log.info("signal %d: finishing the current batches, then stopping", signum)
        self.requested.set()
        if self.service is not None:
            self.service.stop()


def run_service(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT.

    Returns
    -------
    int
        Exit status: 0 after a clean stop; 1 after a fatal error, or when no Kafka broker answered within
        ``kafka.startup_timeout_s`` (one error line naming the servers, no traceback: an environment
        problem); 2 for a bad state URL.
    """
    stop = _StopSignal()
    try:
        parts = build_parts(settings)
    except StateUrlError as exc:
        log.error("cannot open the state store: %s", exc)  # a configuration error: no traceback
        return 2
    service, server, _metrics = build_service(settings, parts)
    stop.service = service
    if stop.requested.is_set():
        service.stop()
    if server is not None:
        log.info("metrics on http://%s:%d/metrics", settings.metrics.host, server.port)
    log.info(
        "consuming %s from %s as group %s; model %s (%s)",
        ",".join(settings.kafka.input_topics), settings.kafka.bootstrap_servers, settings.kafka.group_id,
        parts.model.name, parts.model.version,
    )  # fmt: skip
    try:
        service.run()
    except KafkaUnreachableError as exc:
        log.error("%s", exc)
        return 1
    except Exception:
        log.exception("service stopped on a fatal error")
        return 1
    finally:
        if server is not None:
            server.stop()
        parts.close()
    return 0
