"""Shared fixtures."""

from __future__ import annotations

import pytest

from broker_plugin.config import Settings, StampSettings
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
