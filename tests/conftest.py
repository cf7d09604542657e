"""Shared fixtures."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator

import pytest

from broker_plugin.config import Settings, StampSettings
from broker_plugin.factory import build_parts
from broker_plugin.serde.alerts import AlertDecoder
from broker_plugin.serde.schemas import RubinSchemaStore
from broker_plugin.stamps import StampNormaliser


@pytest.fixture(scope="session")
def schema_store() -> RubinSchemaStore:
    return RubinSchemaStore()


@pytest.fixture(scope="session")
def decoder(schema_store: RubinSchemaStore) -> AlertDecoder:
    return AlertDecoder(schema_store)


@pytest.fixture
def stamp_settings() -> StampSettings:
    return StampSettings()


@pytest.fixture
def normaliser(stamp_settings: StampSettings) -> StampNormaliser:
    return StampNormaliser(stamp_settings)


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings from a clean environment (no developer's .env or BROKER_PLUGIN_* leaks in)."""
    for key in list(__import__("os").environ):
        if key.startswith("BROKER_PLUGIN_"):
            monkeypatch.delenv(key)
    return Settings(_env_file=None)


@pytest.fixture(scope="session")
def model_artifact(tmp_path_factory: pytest.TempPathFactory):
    """A small two-member artifact with random weights, shared by the pipeline and service tests."""
    from tests.factories import make_artifact

    return make_artifact(tmp_path_factory.mktemp("model") / "convention-test")


@pytest.fixture
def service_settings(settings: Settings, model_artifact, tmp_path) -> Settings:
    """Settings for a pipeline on the test artifact with a fresh SQLite store."""
    model = {"artifact": model_artifact, "min_frames": 3, "device": "cpu"}
    return settings.model_copy(update={
        "model": settings.model.model_copy(update=model),
        "state": settings.state.model_copy(update={"url": f"sqlite:///{tmp_path / 'state.db'}"}),
    })  # fmt: skip


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
    from broker_plugin.kafka.embedded import EmbeddedBroker

    with EmbeddedBroker() as broker:
        yield broker.bootstrap_servers


@pytest.fixture
def parts(service_settings: Settings):
    """The service's parts (pipeline, decoder, store, predictor) on the test artifact and a fresh store."""
    built = build_parts(service_settings)
    yield built
    built.close()


@pytest.fixture
def restore_signals() -> Iterator[None]:
    """For tests that install the service's SIGTERM/SIGINT handlers: give pytest its own back after."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)
