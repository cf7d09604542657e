"""Prometheus metrics and the health endpoints. ``prometheus_client`` is used only here.

Names follow ``<noun>_<verb>_<unit>`` under the namespace ``broker_plugin``; counters end in ``_total``.
Every label value that can occur (rejection reasons, classes) is created at start so dashboards and
alert rules see zero-valued series before the first event. Metrics live in a registry owned by a
:class:`ServiceMetrics` instance (not module globals), so several services can run in one process (the
tests and the demo do).

``/metrics`` serves the registry. ``/healthz`` (liveness) answers 200 while the consume loop has run
recently and the Kafka brokers have not been unreachable for longer than ``kafka.unreachable_timeout_s``
(a pod whose network is broken gets restarted); ``/readyz`` (readiness) answers 200 while the model is
loaded, the consumer group has given this instance its assignment and the brokers answer, and 503 as soon
as they stop answering. ``broker_plugin_kafka_connected`` shows the same connection state (1/0).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from broker_plugin import exceptions
from broker_plugin.serde.history import HistoryMissing

NAMESPACE = "broker_plugin"
#: Reasons an alert is not turned into a frame (typed errors plus the pipeline's own).
REJECTION_REASONS: tuple[str, ...] = tuple(
    sorted(
        {
            cls.reason
            for cls in vars(exceptions).values()
            if isinstance(cls, type)
            and issubclass(cls, exceptions.BrokerPluginError)
            # An unreachable Kafka stops nothing but the start-up or a replay: no message is rejected for it.
            and cls is not exceptions.KafkaUnreachableError
        }
        | {"internal_error"}
    )
)
#: Where an unexpected exception of one message can happen: decoding it, normalising its cutout (both in a
#: preparation process, or in the consumer and worker threads), its preparation process dying on it, the
#: rest of the pipeline (store, classify) and encoding its classification (worker thread).
INTERNAL_ERROR_STAGES: tuple[str, ...] = ("decode", "normalise", "prepare", "pipeline", "encode")
#: Why a frame lacks its science or template plane: the reason the cutout would get as a difference (every
#: stamp error but ``invalid_frame``, which the normaliser rules out for planes), or a bug.
PLANE_MISSING_REASONS: tuple[str, ...] = tuple(
    sorted(
        {
            cls.reason
            for cls in vars(exceptions).values()
            if isinstance(cls, type)
            and issubclass(cls, exceptions.StampError)
            and cls not in (exceptions.StampError, exceptions.InvalidFrameError)
        }
        | {"internal_error"}
    )
)
#: ``(plane, reason)`` series of the missing-plane counter: both planes by every reason, and photometry
#: (``psfFlux``/``psfFluxErr`` beyond the frame's bound, dropped).
PLANE_MISSING_SERIES: tuple[tuple[str, str], ...] = (
    *((plane, reason) for plane in ("science", "template") for reason in PLANE_MISSING_REASONS),
    ("photometry", exceptions.InvalidPhotometryError.reason),
    # Alerts decoded without their photometric history (the decoder tells why): used all the same.
    *(("history", reason.value) for reason in HistoryMissing),
)
#: Stages of preparation whose time is counted.
PREPARATION_STAGES: tuple[str, ...] = ("decode", "normalise")
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
# From shutter to publication: a minute in the live stream, up to years when archives are replayed.
_OBSERVATION_BUCKETS = (10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0, 86400.0, 7 * 86400.0, 365 * 86400.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServiceMetrics:
    """Every metric of one service instance, in its own registry.

    Parameters
    ----------
    class_names
        The model's classes (label values of the published-classification counter).
    registry
        Registry to register into; a new one by default.
    """

    def __init__(self, class_names: Iterable[str] = (), registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r, ns = self.registry, NAMESPACE
        self.alerts_consumed = Counter(
            "alerts_consumed_total", "Alert messages consumed.", namespace=ns, registry=r
        )
        self.alerts_rejected = Counter(
            "alerts_rejected_total",
            "Alerts sent to the dead-letter topic, by reason.",
            ["reason"],
            namespace=ns,
            registry=r,
        )
        self.alerts_ignored = Counter(
            "alerts_ignored_total",
            "Valid alerts not used, by reason (e.g. a band the model lacks).",
            ["reason"],
            namespace=ns,
            registry=r,
        )
        self.frames_stored = Counter(
            "frames_stored_total", "New frames written to the state store.", namespace=ns, registry=r
        )
        self.frames_duplicate = Counter(
            "frames_duplicate_total", "Frames already stored (redelivered alerts).", namespace=ns, registry=r
        )
        self.classifications_published = Counter(
            "classifications_published_total",
            "Classifications delivered, by predicted class.",
            ["predicted_class"],
            namespace=ns,
            registry=r,
        )
        self.inference_batch_size = Histogram(
            "inference_batch_objects",
            "Objects per inference micro-batch.",
            namespace=ns,
            registry=r,
            buckets=_BATCH_BUCKETS,
        )
        self.inference_duration = Histogram(
            "inference_duration_seconds",
            "Wall time of one inference micro-batch.",
            namespace=ns,
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )
        self.alert_latency = Histogram(
            "alert_latency_seconds",
            "From the alert's producer timestamp to our classification's delivery.",
            namespace=ns,
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )
        self.observation_latency = Histogram(
            "observation_latency_seconds",
            "From the exposure mid-point to our classification's delivery.",
            namespace=ns,
            registry=r,
            buckets=_OBSERVATION_BUCKETS,
        )
        self.objects_tracked = Gauge(
            "objects_tracked", "Objects in the state store.", namespace=ns, registry=r
        )
        self.kafka_connected = Gauge(
            "kafka_connected",
            "1 while the Kafka brokers answer the consumer (messages or metadata probes), 0 from when they"
            " are reported down or a probe gets no answer.",
            namespace=ns,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "consumer_lag_messages",
            "Messages behind the partition end.",
            ["topic", "partition"],
            namespace=ns,
            registry=r,
        )
        self.partitions_paused = Gauge(
            "partitions_paused",
            "Input partitions paused by backpressure.",
            namespace=ns,
            registry=r,
        )
        self.consumer_pauses = Counter(
            "consumer_pauses_total",
            "Times input partitions were paused by backpressure.",
            namespace=ns,
            registry=r,
        )
        self.internal_errors = Counter(
            "internal_errors_total",
            "Unexpected exceptions (bugs) caused by one message, whose message was dead-lettered, by stage.",
            ["stage"],
            namespace=ns,
            registry=r,
        )
        self.dead_letters_truncated = Counter(
            "dead_letters_truncated_total",
            "Dead letters cut to fit the largest producible message (value, key or headers).",
            namespace=ns,
            registry=r,
        )
        self.state_invalid_frames = Counter(
            "state_invalid_frames_total",
            "Stored frames that failed the frame checks when read back, skipped and removed.",
            namespace=ns,
            registry=r,
        )
        self.preparation_seconds = Counter(
            "preparation_seconds_total",
            "Time spent decoding messages and normalising cutouts, in the preparation processes or (with"
            " service.prepare_processes 0) in the service's threads, by stage.",
            ["stage"],
            namespace=ns,
            registry=r,
        )
        self.preparation_wait = Counter(
            "preparation_wait_seconds_total",
            "Time the pipeline worker waited for preparation results (preparation is the bottleneck when"
            " this grows at about 1 s/s).",
            namespace=ns,
            registry=r,
        )
        self.preparation_process_deaths = Counter(
            "preparation_process_deaths_total",
            "Preparation processes that died (e.g. a C library crashing on a hostile message) and were"
            " replaced.",
            namespace=ns,
            registry=r,
        )
        self.cutout_planes_missing = Counter(
            "cutout_planes_missing_total",
            "Frames made without their science or template plane (or photometry), by plane and reason; the"
            " alert is used all the same.",
            ["plane", "reason"],
            namespace=ns,
            registry=r,
        )
        for plane, reason in PLANE_MISSING_SERIES:
            self.cutout_planes_missing.labels(plane=plane, reason=reason)
        for stage in INTERNAL_ERROR_STAGES:
            self.internal_errors.labels(stage=stage)
        for stage in PREPARATION_STAGES:
            self.preparation_seconds.labels(stage=stage)
        for reason in REJECTION_REASONS:
            self.alerts_rejected.labels(reason=reason)
        self.alerts_ignored.labels(reason="band_not_in_model")
        for name in class_names:
            self.classifications_published.labels(predicted_class=name)

    def count_missing_plane(self, plane: str, reason: str, count: int = 1) -> None:
        """Count frames that lack ``plane`` for ``reason``.

        The signature of both :meth:`StampNormaliser.watch_missing_planes
        <broker_plugin.stamps.StampNormaliser.watch_missing_planes>` listeners (count 1) and the preparation
        pool's ``on_planes_missing`` callback.
        """
        self.cutout_planes_missing.labels(plane=plane, reason=reason).inc(count)

    def exposition(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)


class Health:
    """Liveness and readiness, fed by the service loop (thread-safe).

    Parameters
    ----------
    stale_after_s
        Liveness fails when the consume loop has not beaten for this long [s].
    unreachable_after_s
        Liveness fails when the Kafka brokers have been unreachable for this long [s] (readiness fails at
        once).
    """

    def __init__(self, stale_after_s: float = 60.0, unreachable_after_s: float = 120.0) -> None:
        self._stale_after_s = stale_after_s
        self._unreachable_after_s = unreachable_after_s
        self._last_beat = time.monotonic()
        self._serving = False
        self._assigned = False
        self._connected = False
        # Unreachable since when; None while connected or never checked (start-up has its own timeout).
        self._unreachable_since: float | None = None
        self._lock = threading.Lock()

    def beat(self) -> None:
        """The consume loop is alive."""
        with self._lock:
            self._last_beat = time.monotonic()

    def set_serving(self, serving: bool) -> None:
        """The model is loaded and the consume loop runs (or not)."""
        with self._lock:
            self._serving = serving

    def set_assigned(self, assigned: bool) -> None:
        """The consumer group has given this instance its assignment (or taken it away)."""
        with self._lock:
            self._assigned = assigned

    def set_connected(self, connected: bool) -> None:
        """The Kafka brokers answer (or not)."""
        with self._lock:
            if connected:
                self._unreachable_since = None
            elif self._unreachable_since is None:
                self._unreachable_since = time.monotonic()
            self._connected = connected

    def _fresh(self, now: float) -> bool:
        return now - self._last_beat < self._stale_after_s

    @property
    def alive(self) -> bool:
        """Whether the loop has beaten recently and the brokers have not been unreachable for too long."""
        now = time.monotonic()
        with self._lock:
            since = self._unreachable_since
            return self._fresh(now) and (since is None or now - since < self._unreachable_after_s)

    @property
    def ready(self) -> bool:
        """Whether the service can do useful work: serving, assigned, connected, the loop alive."""
        with self._lock:
            return self._serving and self._assigned and self._connected and self._fresh(time.monotonic())


class MetricsServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` over HTTP, in a daemon thread.

    Parameters
    ----------
    metrics, health
        What to serve.
    host, port
        Where to listen (port 0: any free port; see :attr:`port`).
    """

    def __init__(self, metrics: ServiceMetrics, health: Health, host: str, port: int) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/metrics"):
                    body, status, kind = metrics.exposition(), 200, CONTENT_TYPE_LATEST
                elif self.path.startswith("/healthz"):
                    ok = health.alive
                    body, status, kind = (b"ok\n" if ok else b"stalled\n"), (200 if ok else 503), "text/plain"
                elif self.path.startswith("/readyz"):
                    ok = health.ready
                    body, status, kind = (
                        (b"ready\n" if ok else b"not ready\n"),
                        (200 if ok else 503),
                        "text/plain",
                    )
                else:
                    body, status, kind = b"not found\n", 404, "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:  # scrapes every few seconds: keep logs quiet
                del args

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)

    @property
    def port(self) -> int:
        """The port actually bound."""
        return int(self._server.server_address[1])

    def start(self) -> MetricsServer:
        """Start serving in the background."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
