"""The plugin's settings: one pydantic-settings object, built once in ``__main__`` and passed down.

Every field is read from the environment (prefix ``BROKER_PLUGIN_``, nested fields joined by ``__``, e.g.
``BROKER_PLUGIN_STAMPS__PIXEL_SCALE_ARCSEC``) or from a ``.env`` file. Nothing else in the package reads
the environment.
"""

from __future__ import annotations

from pydantic import AnyHttpUrl, BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class SchemaRegistrySettings(BaseModel):
    """Where to find Avro writer schemas that ``lsst-alert-packet`` does not ship."""

    url: AnyHttpUrl | None = Field(
        None,
        description=(
            "Confluent Schema Registry base URL, asked only for schema ids that no bundled Rubin schema "
            "matches. Unset: unknown ids are rejected with reason unknown_schema."
        ),
    )
    username: str | None = Field(None, description="Basic-auth user for the schema registry, if any.")
    password: SecretStr | None = Field(None, description="Basic-auth password for the schema registry.")
    timeout_s: float = Field(5.0, gt=0, description="Timeout of one schema-registry request [s].")


class StampSettings(BaseModel):
    """How cutouts become model frames. A trained model records the values it was trained with."""

    size: int = Field(32, ge=8, le=256, description="Side of the normalised frame [pixels].")
    pixel_scale_arcsec: float = Field(
        0.4,
        gt=0,
        description=(
            "Angular size of one normalised pixel [arcsec]. 0.4 is close to SDSS (0.396, the paper's "
            "data): 32 px cover 12.8 arcsec, so Rubin's smallest (6 arcsec) cutouts fill the centre."
        ),
    )
    min_valid_fraction: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Frames with fewer finite, in-cutout pixels than this fraction are rejected.",
    )
    ztf_pixel_scale_arcsec: float = Field(
        1.01, gt=0, description="ZTF cutouts carry no WCS: their pixel scale [arcsec]."
    )


class Settings(BaseSettings):
    """All settings of the plugin."""

    model_config = SettingsConfigDict(
        env_prefix="BROKER_PLUGIN_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
    )

    log_level: str = Field("INFO", description="Python logging level of the plugin.")
    schema_registry: SchemaRegistrySettings = Field(
        default_factory=SchemaRegistrySettings, description="Schema-registry lookups for unknown ids."
    )
    stamps: StampSettings = Field(
        default_factory=StampSettings, description="Cutout normalisation into model frames."
    )


def settings_rows(
    model: type[BaseModel] = Settings, prefix: str = "BROKER_PLUGIN_"
) -> list[tuple[str, str, str]]:
    """``(environment variable, default, description)`` for every leaf setting, for docs and env files."""
    rows: list[tuple[str, str, str]] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows += settings_rows(annotation, f"{prefix}{name.upper()}__")
            continue
        default = field.get_default(call_default_factory=True)
        shown = "(unset)" if default is None else str(default)
        rows.append((f"{prefix}{name.upper()}", shown, field.description or ""))
    return rows


def settings_markdown() -> str:
    """The README's configuration table."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    lines += [f"| `{var}` | `{default}` | {text} |" for var, default, text in settings_rows()]
    return "\n".join(lines)
