import urllib.error
import urllib.request

import pytest

from broker_plugin.metrics import REJECTION_REASONS, Health, MetricsServer, ServiceMetrics


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def served():
    metrics = ServiceMetrics(class_names=["AGN", "SNIa"])
    health = Health(stale_after_s=60)
    server = MetricsServer(metrics, health, "127.0.0.1", 0).start()
    yield metrics, health, f"http://127.0.0.1:{server.port}"
    server.stop()


def test_metric_names_and_precreated_labels(served) -> None:
    metrics, _, url = served
    metrics.alerts_consumed.inc(3)
    metrics.alerts_rejected.labels(reason="wrong_magic_byte").inc()
    status, text = get(f"{url}/metrics")
    assert status == 200
    assert "broker_plugin_alerts_consumed_total 3.0" in text
    assert 'broker_plugin_alerts_rejected_total{reason="wrong_magic_byte"} 1.0' in text
    assert 'broker_plugin_alerts_rejected_total{reason="missing_cutout"} 0.0' in text
    assert 'broker_plugin_classifications_published_total{predicted_class="SNIa"} 0.0' in text
    for name in (
        "inference_duration_seconds_bucket",
        "alert_latency_seconds_bucket",
        "objects_tracked",
        "observation_latency_seconds_bucket",
        "inference_batch_objects_bucket",
    ):
        assert f"broker_plugin_{name}" in text
    assert "decode_error" in REJECTION_REASONS and "internal_error" in REJECTION_REASONS
    for stage in ("decode", "pipeline", "encode"):
        assert f'broker_plugin_internal_errors_total{{stage="{stage}"}} 0.0' in text
    assert "broker_plugin_dead_letters_truncated_total 0.0" in text
    assert "broker_plugin_state_invalid_frames_total 0.0" in text


def test_health_endpoints_follow_the_loop(served) -> None:
    _, health, url = served
    assert get(f"{url}/healthz")[0] == 200
    assert get(f"{url}/readyz")[0] == 503
    health.set_ready(True)
    assert get(f"{url}/readyz")[0] == 200
    assert get(f"{url}/nope")[0] == 404


def test_stalled_loop_fails_liveness() -> None:
    health = Health(stale_after_s=0.0)
    assert not health.alive and not health.ready


def test_two_instances_do_not_clash() -> None:
    a, b = ServiceMetrics(), ServiceMetrics()
    a.frames_stored.inc()
    assert b"broker_plugin_frames_stored_total 0.0" in b.exposition()
