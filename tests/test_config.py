import pytest
from pydantic import ValidationError

from broker_plugin.config import Settings, env_variable, settings_error_lines


def test_nested_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROKER_PLUGIN_STAMPS__PIXEL_SCALE_ARCSEC", "0.25")
    monkeypatch.setenv("BROKER_PLUGIN_SCHEMA_REGISTRY__URL", "http://registry:8081")
    monkeypatch.setenv("BROKER_PLUGIN_SCHEMA_REGISTRY__PASSWORD", "hunter2")
    settings = Settings(_env_file=None)
    assert settings.stamps.pixel_scale_arcsec == 0.25
    assert str(settings.schema_registry.url) == "http://registry:8081/"
    assert "hunter2" not in repr(settings)


def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROKER_PLUGIN_STAMPS__SIZE", "3")
    with pytest.raises(ValidationError):
        Settings(_env_file=None)


def test_every_field_is_described() -> None:
    def walk(model: type) -> None:
        for name, field in model.model_fields.items():
            assert field.description, name
            annotation = field.annotation
            if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
                walk(annotation)

    walk(Settings)


def test_invalid_settings_are_named_by_their_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROKER_PLUGIN_MODEL__MIN_FRAMES", "abc")
    monkeypatch.setenv("BROKER_PLUGIN_LIMITS__MIN_CUTOUT_PIXEL_SCALE_ARCSEC", "100")
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None)
    assert settings_error_lines(caught.value) == [
        "BROKER_PLUGIN_MODEL__MIN_FRAMES='abc': Input should be a valid integer, unable to parse string as an"
        " integer",
        "BROKER_PLUGIN_LIMITS__MIN_CUTOUT_PIXEL_SCALE_ARCSEC='100':"
        " min_cutout_pixel_scale_arcsec must be below max_cutout_pixel_scale_arcsec",
    ]
    assert env_variable("kafka", "bootstrap_servers") == "BROKER_PLUGIN_KAFKA__BOOTSTRAP_SERVERS"
