"""The plugin's settings: one pydantic-settings object, built once in ``__main__`` and passed down.

Every field is read from the environment (prefix ``BROKER_PLUGIN_``, nested fields joined by ``__``, e.g.
``BROKER_PLUGIN_STAMPS__PIXEL_SCALE_ARCSEC``) or from a ``.env`` file. Nothing else in the package reads
the environment.
"""

from __future__ import annotations

import importlib.resources
import logging
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

#: Prefix of every environment variable the settings read.
ENV_PREFIX = "BROKER_PLUGIN_"
#: Joins a section and its field in a variable's name (``BROKER_PLUGIN_MODEL__MIN_FRAMES``).
ENV_NESTED_DELIMITER = "__"


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
    negative_cache_s: float = Field(
        60.0,
        gt=0,
        description=(
            "An id the registry did not know (404) or answered with an unusable schema is rejected without"
            " asking again for this long [s]."
        ),
    )
    backoff_s: float = Field(
        30.0,
        gt=0,
        description=(
            "After a registry failure (timeout, refused connection, HTTP 5xx, a garbage answer) every lookup"
            " fails fast with reason schema_registry_unavailable for this long [s]."
        ),
    )
    lookup_budget_s: float = Field(
        3.0,
        gt=0,
        le=30.0,
        description=(
            "Most time the consumer may wait on the registry per lookup_window_s, all requests together;"
            " a request never outlives what is left of it (the real per-request limit is the smaller of"
            " this and timeout_s), so the consumer never stalls near the Kafka session timeout [s]."
        ),
    )
    lookup_window_s: float = Field(
        60.0, gt=0, description="The sliding window lookup_budget_s is counted over [s]."
    )
    max_response_bytes: int = Field(
        4_000_000, ge=10_000, description="Largest registry answer read (Rubin's schema is ~100 kB) [bytes]."
    )


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


class KafkaSettings(BaseModel):
    """Where alerts come from and where classifications go."""

    bootstrap_servers: str = Field("localhost:9092", description="Kafka bootstrap servers (host:port,...).")
    input_topics: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["alerts"],
        description="Alert topics, comma-separated; an entry starting with ^ is a regular expression.",
    )
    output_topic: str = Field("broker-plugin-classifications", description="Topic classifications go to.")
    dead_letter_topic: str = Field(
        "broker-plugin-dead-letter",
        description="Topic for messages that cannot be processed, with reason headers.",
    )
    group_id: str = Field(
        "broker-plugin", description="Consumer group; instances sharing it split partitions."
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol (Rubin's brokers: SASL_SSL)."
    )
    sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = Field(
        "SCRAM-SHA-512", description="SASL mechanism when the protocol uses SASL."
    )
    sasl_username: str | None = Field(None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(None, description="SASL password.")
    ssl_ca_location: str | None = Field(None, description="CA bundle file for TLS (system default if unset).")
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest", description="Where a new consumer group starts reading."
    )
    session_timeout_ms: int = Field(45_000, ge=6_000, description="Consumer group session timeout [ms].")
    heartbeat_interval_ms: int = Field(3_000, ge=100, description="Consumer heartbeat interval [ms].")
    fetch_wait_max_ms: int = Field(100, ge=1, description="Longest a fetch waits for data [ms].")
    transactional_id: str | None = Field(
        None,
        description=(
            "Set to enable exactly-once outputs (transactions); must be unique per instance. Unset: "
            "at-least-once (offsets committed after outputs are delivered)."
        ),
    )
    output_schema_id: int | None = Field(
        None, description="Registry id of our output schema: when set, outputs carry Confluent framing."
    )
    compression_type: Literal["none", "gzip", "snappy", "lz4", "zstd"] = Field(
        "zstd", description="Compression of produced messages."
    )
    max_produce_bytes: int = Field(
        1_000_000,
        ge=65_536,
        description=(
            "Largest message the plugin produces (librdkafka message.max.bytes); larger dead letters are "
            "truncated to fit. Keep it at or below the output and dead-letter topics' max.message.bytes "
            "(broker default 1048588) [bytes]."
        ),
    )
    startup_timeout_s: float = Field(
        30.0,
        gt=0,
        description=(
            "run exits with status 1 and one error line naming the bootstrap servers when no Kafka broker"
            " answers within this long of starting [s]."
        ),
    )
    unreachable_timeout_s: float = Field(
        120.0,
        gt=0,
        description=(
            "/healthz (liveness) fails once the Kafka brokers have not answered for this long, so the"
            " orchestrator restarts a pod whose network is broken; /readyz fails as soon as they stop"
            " answering [s]."
        ),
    )
    probe_interval_s: float = Field(
        10.0,
        ge=0.5,
        description=(
            "While no message arrives, or the brokers are unreachable, how often the consumer thread asks"
            " them for metadata to know they answer (each probe waits at most 5 s, or this long if"
            " shorter) [s]."
        ),
    )

    @field_validator("input_topics", mode="before")
    @classmethod
    def _split_topics(cls, value: object) -> object:
        if isinstance(value, str):
            return [topic.strip() for topic in value.split(",") if topic.strip()]
        return value


class StateSettings(BaseModel):
    """Where per-object frames live."""

    url: str = Field(
        "sqlite:///broker_plugin_state.db",
        description="State store: sqlite:///path (embedded, one instance) or postgresql://... (shared).",
    )
    max_frames_per_object: int = Field(200, ge=3, description="Newest frames kept per object [count].")
    object_idle_expiry_s: float = Field(
        180 * 86400.0, gt=0, description="Forget objects without a new frame for this long [s]."
    )
    expire_interval_s: float = Field(600.0, gt=0, description="How often expired objects are removed [s].")


def bundled_model_dir() -> Path:
    """The default model artifact, shipped as package data (found wherever the package is installed)."""
    return Path(str(importlib.resources.files("broker_plugin").joinpath("models", "convention-default")))


class ModelSettings(BaseModel):
    """The trained model the service loads."""

    artifact: Path = Field(
        None,  # type: ignore[assignment]  # replaced by the bundled model's path in validation
        validate_default=True,
        description=(
            "Model artifact directory. Unset: the default model shipped inside the package"
            " (broker_plugin/models/convention-default), wherever the package is installed."
        ),
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when available, else CPU.")
    bf16: bool = Field(
        False,
        description="bfloat16 autocast (CUDA, or a CPU with bf16 instructions): faster where the hardware "
        "has them, probabilities off by up to ~6e-3.",
    )
    min_frames: int = Field(3, ge=1, description="Frames an object needs before it is classified [count].")
    torch_threads: int = Field(
        0,
        ge=0,
        le=256,
        description=(
            "torch's intra-op threads for inference on CPU. 0: the cores this process may use minus"
            " service.prepare_processes (at least 1), so inference and preparation never wait for each"
            " other's cores; on 2 cores with 1 preparation process, 1 and 2 threads gave the same"
            " throughput within the noise (benchmarks/results/service_threads.json) [count]."
        ),
    )

    @field_validator("artifact", mode="before")
    @classmethod
    def _bundled_when_unset(cls, value: object) -> object:
        return bundled_model_dir() if value is None or value == "" else value


class ServiceSettings(BaseModel):
    """How the consume -> classify -> publish loop batches and paces work."""

    batch_max_size: int = Field(256, ge=1, description="Most alerts processed in one micro-batch [count].")
    batch_max_wait_ms: int = Field(50, ge=1, description="Longest wait to fill a micro-batch [ms].")
    queue_max_batches: int = Field(
        4,
        ge=1,
        description="Full micro-batches (batch_max_size alerts each) waiting for inference before input"
        " partitions are paused [count].",
    )
    shutdown_timeout_s: float = Field(30.0, gt=0, description="Grace period on SIGTERM/SIGINT [s].")
    max_message_bytes: int = Field(
        1_500_000,
        ge=1000,
        description="Larger messages are dead-lettered (Rubin and ZTF alerts are 50-500 kB) [bytes].",
    )
    prepare_processes: int = Field(
        1,
        ge=0,
        le=64,
        description=(
            "Processes that decode messages and normalise cutouts beside the inference thread; one that"
            " crashes on a hostile message is replaced and the message dead-lettered. 0: decode in the"
            " consumer thread and normalise in the pipeline, in this process (debugging) [count]."
        ),
    )


class MetricsSettings(BaseModel):
    """The Prometheus endpoint (also /healthz and /readyz)."""

    enabled: bool = Field(True, description="Serve /metrics, /healthz and /readyz.")
    host: str = Field("0.0.0.0", description="Address the metrics endpoint binds to.")  # noqa: S104 - a service endpoint
    port: int = Field(9108, ge=0, le=65535, description="Port of the metrics endpoint (0: any free port).")


class LimitsSettings(BaseModel):
    """Bounds on every size that input decides: a hostile or broken message is rejected, never obeyed.

    Real alerts are far below every default (one record per message, 30-102 px cutouts of a few tens of
    kB); the defaults keep the whole process under 1 GB of memory whatever a single message declares.
    """

    max_alerts_per_message: int = Field(
        1_000, ge=1, description="Most alert records one Kafka message may hold (ZTF and Rubin send 1)."
    )
    max_block_records: int = Field(
        100_000, ge=1, description="Most records one Avro container block may declare [count]."
    )
    max_block_bytes: int = Field(
        16_000_000,
        ge=1_000,
        description="Largest Avro container block, compressed or inflated by its codec [bytes].",
    )
    max_cutout_bytes: int = Field(
        4_000_000, ge=10_000, description="Largest cutout once gunzipped, and largest FITS file read [bytes]."
    )
    max_cutout_pixels: int = Field(
        1_048_576, ge=64, description="Most pixels a cutout image may declare (NAXIS1 x NAXIS2) [count]."
    )
    max_archive_member_bytes: int = Field(
        256_000_000, ge=10_000, description="Largest file read from a .tar/.tar.gz archive [bytes]."
    )
    max_message_inflated_bytes: int = Field(
        64_000_000,
        ge=10_000,
        description=(
            "Most bytes the container blocks of one Kafka message may inflate to, all blocks together (a ZTF"
            " alert is ~100 kB); a file read alert by alert has only the per-block bound [bytes]."
        ),
    )
    min_cutout_pixel_scale_arcsec: float = Field(
        0.02,
        gt=0,
        description=(
            "Smallest pixel scale a cutout's WCS may give, along either axis [arcsec/px]: finer than any "
            "survey camera (HST 0.04, Rubin 0.2), and it bounds the resampler's work (0.4/0.02 = 20 samples "
            "per frame pixel side). A singular matrix has 0."
        ),
    )
    max_cutout_pixel_scale_arcsec: float = Field(
        60.0,
        gt=0,
        description="Largest pixel scale a cutout's WCS may give, along either axis [arcsec/px] (TESS: 21).",
    )

    @model_validator(mode="after")
    def _scale_range_is_not_empty(self) -> LimitsSettings:
        if self.min_cutout_pixel_scale_arcsec >= self.max_cutout_pixel_scale_arcsec:
            raise ValueError("min_cutout_pixel_scale_arcsec must be below max_cutout_pixel_scale_arcsec")
        return self


class Settings(BaseSettings):
    """All settings of the plugin."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
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
    kafka: KafkaSettings = Field(default_factory=KafkaSettings, description="Kafka input and output.")
    state: StateSettings = Field(default_factory=StateSettings, description="Per-object state store.")
    model: ModelSettings = Field(default_factory=ModelSettings, description="The model the service runs.")
    service: ServiceSettings = Field(default_factory=ServiceSettings, description="Batching and pacing.")
    metrics: MetricsSettings = Field(default_factory=MetricsSettings, description="Prometheus endpoint.")
    limits: LimitsSettings = Field(
        default_factory=LimitsSettings, description="Resource bounds against hostile input."
    )

    @field_validator("log_level", mode="after")
    @classmethod
    def _known_log_level(cls, value: str) -> str:
        # Checked here, so a typo is a settings error naming the variable, not a crash in logging.
        names = sorted(logging.getLevelNamesMapping())
        if value.upper() not in names:
            raise ValueError(f"unknown log level (one of {', '.join(names)})")
        return value.upper()


def settings_rows(model: type[BaseModel] = Settings, prefix: str = ENV_PREFIX) -> list[tuple[str, str, str]]:
    """``(environment variable, default, description)`` for every leaf setting, for docs and env files."""
    rows: list[tuple[str, str, str]] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows += settings_rows(annotation, f"{prefix}{name.upper()}{ENV_NESTED_DELIMITER}")
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


def is_secret(annotation: object) -> bool:
    """Whether a field of this annotation holds a secret (``SecretStr``, optional or not)."""
    return annotation is SecretStr or SecretStr in typing.get_args(annotation)


def _field_path(loc: tuple[int | str, ...]) -> tuple[list[str], bool]:
    """The setting names along ``loc`` (a validation error's location) and whether the last is secret."""
    names: list[str] = []
    model: type[BaseModel] | None = Settings
    secret = False
    for part in loc:
        field = model.model_fields.get(part) if model is not None and isinstance(part, str) else None
        if field is None:
            break
        names.append(part)
        annotation = field.annotation
        secret = is_secret(annotation)
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return names, secret


def env_variable(*names: str) -> str:
    """The environment variable of the setting at ``names``.

    ``env_variable("model", "min_frames")`` is ``BROKER_PLUGIN_MODEL__MIN_FRAMES``.
    """
    return ENV_PREFIX + ENV_NESTED_DELIMITER.join(name.upper() for name in names)


def _shown(value: Any, secret: bool) -> str:
    return "'**********'" if secret else repr(value)


def settings_error_lines(exc: ValidationError | SettingsError) -> list[str]:
    """One line per invalid setting: its environment variable, the value given and what is wrong.

    The same lines serve values from a ``.env`` file, whose keys are the variables' names. A secret's
    value is never shown.

    Parameters
    ----------
    exc
        What ``Settings()`` raised.

    Returns
    -------
    list of str
        E.g. ``BROKER_PLUGIN_MODEL__MIN_FRAMES='abc': Input should be a valid integer, ...``.
    """
    if isinstance(exc, SettingsError):  # a value pydantic-settings could not even parse (JSON of a section)
        return [f"invalid settings (environment or .env): {exc}"]
    lines = []
    for error in exc.errors():
        names, secret = _field_path(error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        value = error.get("input")
        if not names:
            lines.append(f"invalid settings (environment or .env): {message}")
        elif isinstance(value, dict):  # a whole section is refused: name the variables that were set in it
            given = ", ".join(
                f"{env_variable(*names, str(k))}={_shown(v, _field_path((*names, str(k)))[1])}"
                for k, v in value.items()
            )
            lines.append(f"{given or env_variable(*names) + '__*'}: {message}")
        else:
            lines.append(f"{env_variable(*names)}={_shown(value, secret)}: {message}")
    return lines
