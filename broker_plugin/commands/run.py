"""``python -m broker_plugin run``: the long-lived service, configured only by :class:`Settings`."""

from __future__ import annotations

import logging
import signal
import threading

from broker_plugin.cli import UserError, artifact_error
from broker_plugin.config import Settings, env_variable
from broker_plugin.exceptions import KafkaUnreachableError, StateUrlError
from broker_plugin.factory import Parts, build_parts, build_service
from broker_plugin.inference.errors import ArtifactError
from broker_plugin.service import Service
from broker_plugin.state.factory import redact_url

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
        problem).

    Raises
    ------
    UserError
        The model artifact cannot be loaded or the state URL is bad (exit status 2 in ``__main__``).
    """
    stop = _StopSignal()
    parts = open_parts(settings)
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


def open_parts(settings: Settings) -> Parts:
    """:func:`build_parts`, with the user's mistakes (model artifact, state URL) as :class:`UserError`.

    Raises
    ------
    UserError
        One line naming the setting's environment variable, its value and the reason.
    """
    try:
        return build_parts(settings)
    except ArtifactError as exc:
        raise artifact_error(settings.model.artifact, exc, env_variable("model", "artifact")) from exc
    except StateUrlError as exc:
        url = redact_url(settings.state.url)
        raise UserError(f"{env_variable('state', 'url')}={url}: {exc}") from exc
