"""Fixtures for tests against a real Kafka-protocol broker (the broker itself: ``tests/conftest.py``)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from broker_plugin.config import Settings
from broker_plugin.factory import build_parts, build_service
from broker_plugin.prepare import Preparer, PreparerFactory
from tests.integration.support import FAST_GROUP, create_topics, unique


@pytest.fixture
def topics(kafka_bootstrap: str) -> dict[str, str]:
    names = {"input": unique("alerts"), "output": unique("classifications"), "dead": unique("dead-letter")}
    create_topics(kafka_bootstrap, *names.values())
    return names


@pytest.fixture
def kafka_settings(service_settings: Settings, kafka_bootstrap: str, topics: dict[str, str]) -> Settings:
    kafka = service_settings.kafka.model_copy(update={
        "bootstrap_servers": kafka_bootstrap, "input_topics": [topics["input"]],
        "output_topic": topics["output"], "dead_letter_topic": topics["dead"], "group_id": unique("group"),
        **FAST_GROUP,
    })  # fmt: skip
    metrics = service_settings.metrics.model_copy(update={"host": "127.0.0.1", "port": 0})
    service = service_settings.service.model_copy(update={"batch_max_wait_ms": 20})
    return service_settings.model_copy(update={"kafka": kafka, "metrics": metrics, "service": service})


class RunningService:
    """A :class:`~broker_plugin.service.Service` running in a thread of the test process.

    ``around_process`` wraps the pipeline's ``process`` (to slow it down or make it fail on purpose);
    ``make_preparer`` builds the preparer of each preparation process (see :mod:`tests.preparers`).
    """

    def __init__(
        self, settings: Settings, around_process=None, make_preparer: PreparerFactory = Preparer
    ) -> None:
        self.parts = build_parts(settings)
        if around_process is not None:
            self.parts.pipeline.process = around_process(self.parts.pipeline.process)
        self.service, self.server, self.metrics = build_service(
            settings, self.parts, make_preparer=make_preparer
        )
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.service.run()
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    def start(self) -> RunningService:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.service.stop()
        self._thread.join(timeout=60)
        if self.server is not None:
            self.server.stop()
        self.parts.close()
        assert not self._thread.is_alive(), "service did not stop"
        if self.error is not None:
            raise self.error


@pytest.fixture
def running_service(kafka_settings: Settings) -> Iterator[RunningService]:
    running = RunningService(kafka_settings).start()
    yield running
    running.stop()
