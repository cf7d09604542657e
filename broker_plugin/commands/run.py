"""``python -m broker_plugin run``: the long-lived service, configured only by :class:`Settings`."""

from __future__ import annotations

import logging

from broker_plugin.cli import UserError, artifact_error
from broker_plugin.commands.stop_signal import StopSignal
from broker_plugin.config import Settings, env_variable
from broker_plugin.exceptions import KafkaUnreachableError, StateUrlError
from broker_plugin.factory import Parts, build_parts, build_service
from broker_plugin.inference.errors import ArtifactError
from broker_plugin.state.factory import redact_url

log = logging.getLogger(__name__)


def run_service(settings: Settings, stop: StopSignal | None = None) -> int:
    """Run until SIGTERM/SIGINT (``stop``: the handler ``__main__`` installed early, or a new one).

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
    stop = stop if stop is not None else StopSignal()
    parts = open_parts(settings)
    service, server, _metrics = build_service(settings, parts)
    stop.attach(service)
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
