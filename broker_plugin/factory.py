"""Build the plugin's parts from :class:`~broker_plugin.config.Settings`: one place, used by every command."""

from __future__ import annotations

import hashlib
import os
import socket
from dataclasses import dataclass

import torch

from broker_plugin.config import Settings, StampSettings
from broker_plugin.inference.artifact import CHECKSUM_FILE, Artifact, load_artifact
from broker_plugin.inference.predictor import Predictor
from broker_plugin.metrics import Health, MetricsServer, ServiceMetrics
from broker_plugin.pipeline import ModelInfo, Pipeline
from broker_plugin.prepare import PreparationPool, PrepareConfig, Preparer, PreparerFactory, make_decoder
from broker_plugin.serde.alerts import AlertDecoder
from broker_plugin.service import Service
from broker_plugin.stamps import StampNormaliser
from broker_plugin.state.base import StateStore
from broker_plugin.state.factory import open_state_store


def build_decoder(settings: Settings, *, history: bool = True) -> AlertDecoder:
    """The alert decoder (bundled schemas, plus the registry if configured) under ``settings.limits``.

    ``history``: decode each alert's photometric history (see :func:`uses_history`).
    """
    return make_decoder(settings.schema_registry, settings.limits, history=history)


def uses_history(predictor: Predictor) -> bool:
    """Whether the model reads the alerts' photometric history (the decoders skip it when not).

    A predictor that does not say is given the history (reading it costs time, never an alert).
    """
    return bool(getattr(predictor, "uses_history", True))


def model_stamp_settings(settings: Settings, artifact: Artifact) -> StampSettings:
    """Stamp settings with the frame size and scale the model was trained on (the artifact decides)."""
    stamp = artifact.metadata["stamp"]
    return settings.stamps.model_copy(
        update={"size": int(stamp["size"]), "pixel_scale_arcsec": float(stamp["pixel_scale_arcsec"])}
    )


def model_info(settings: Settings, artifact: Artifact) -> ModelInfo:
    """What outputs say about the model."""
    sums = (settings.model.artifact / CHECKSUM_FILE).read_bytes()
    return ModelInfo(
        name=settings.model.artifact.resolve().name,
        version=artifact.model_id,
        checksum=hashlib.sha256(sums).hexdigest(),
        bands=tuple(artifact.metadata["bands"]),
        ensemble_size=len(artifact.members),
    )


@dataclass
class Parts:
    """Everything a running pipeline holds (closed by the caller via :meth:`close`)."""

    pipeline: Pipeline
    decoder: AlertDecoder
    store: StateStore
    predictor: Predictor
    model: ModelInfo
    #: What a preparation process needs to decode and normalise as ``pipeline`` would.
    prepare: PrepareConfig
    #: The pipeline's own normaliser (its missing-plane counts reach the metrics).
    normaliser: StampNormaliser

    def close(self) -> None:
        """Release the state store."""
        self.store.close()


def inference_threads(settings: Settings) -> int:
    """The intra-op threads of torch: ``model.torch_threads``, or the cores preparation processes leave."""
    if settings.model.torch_threads:
        return settings.model.torch_threads
    return max(1, len(os.sched_getaffinity(0)) - settings.service.prepare_processes)


def build_parts(settings: Settings) -> Parts:
    """Load the model, open the state store and assemble the pipeline.

    Sets torch's intra-op threads of this process to :func:`inference_threads`.
    """
    torch.set_num_threads(inference_threads(settings))
    artifact = load_artifact(settings.model.artifact)
    device = None if settings.model.device == "auto" else settings.model.device
    predictor = Predictor(
        artifact.members,
        model_id=artifact.model_id,
        normalisation=artifact.normalisation,
        class_names=artifact.class_names,
        device=device,
        bf16=settings.model.bf16,
        max_batch_size=settings.service.batch_max_size,
        trees=artifact.trees,
        net_weight=artifact.net_weight,
    )
    info = model_info(settings, artifact)
    stamps = model_stamp_settings(settings, artifact)
    history = uses_history(predictor)
    prepare = PrepareConfig(settings.schema_registry, settings.limits, stamps, info.bands, history)
    store = open_state_store(settings.state.url, settings.state.max_frames_per_object)
    normaliser = StampNormaliser(stamps, settings.limits)
    pipeline = Pipeline(
        normaliser=normaliser,
        store=store,
        predictor=predictor,
        model=info,
        min_frames=settings.model.min_frames,
        max_frames_per_object=settings.state.max_frames_per_object,
    )
    decoder = build_decoder(settings, history=history)
    return Parts(pipeline, decoder, store, predictor, info, prepare, normaliser)


def build_service(
    settings: Settings, parts: Parts, *, make_preparer: PreparerFactory = Preparer
) -> tuple[Service, MetricsServer | None, ServiceMetrics]:
    """The Kafka service around ``parts``, and its metrics endpoint (started) if enabled.

    With ``service.prepare_processes`` above 0 the service gets a preparation pool of that many processes,
    each with a preparer built by ``make_preparer`` (a module-level callable) from ``parts.prepare``.
    """
    metrics = ServiceMetrics(class_names=parts.predictor.class_names)
    health = Health(unreachable_after_s=settings.kafka.unreachable_timeout_s)
    server = None
    if settings.metrics.enabled:
        server = MetricsServer(metrics, health, settings.metrics.host, settings.metrics.port).start()
    client_id = f"broker-plugin-{socket.gethostname()}-{os.getpid()}"
    preparation = None
    if settings.service.prepare_processes > 0:
        preparation = PreparationPool(
            parts.prepare,
            settings.service.prepare_processes,
            make_preparer=make_preparer,
            on_process_death=metrics.preparation_process_deaths.inc,
            on_planes_missing=metrics.count_missing_plane,
        )
    # Frames the pipeline normalises itself (no preparation processes) are counted as they are made.
    parts.normaliser.watch_missing_planes(metrics.count_missing_plane)
    parts.decoder.watch_missing_history(lambda reason: metrics.count_missing_plane("history", reason))
    service = Service(
        settings, pipeline=parts.pipeline, decoder=parts.decoder, store=parts.store,
        metrics=metrics, health=health, client_id=client_id, preparation=preparation,
    )  # fmt: skip
    return service, server, metrics
