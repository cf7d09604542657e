"""A real Kafka-protocol broker for the session: a configured cluster, a Docker Kafka, or Tansu."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Iterator

import pytest

from broker_plugin.config import Settings
from broker_plugin.factory import build_parts, build_service
from broker_plugin.kafka.embedded import EmbeddedBroker
from tests.integration.support import FAST_GROUP, create_topics, unique


def _docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return (
            subprocess.run(["docker", "info"], capture_output=True, timeout=10, check=False).returncode == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Order of choice (DESIGN.md section 6): KAFKA_BOOTSTRAP_SERVERS, testcontainers Kafka, Tansu."""
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        yield configured
        return
    if _docker_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    with EmbeddedBroker() as broker:
        yield broker.bootstrap_servers


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
    """A :class:`~broker_plugin.service.Service` running in a thread of the test process."""

    def __init__(self, settings: Settings) -> None:
        self.parts = build_parts(settings)
        self.service, self.server, self.metrics = build_service(settings, self.parts)
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
