import time
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
    health.set_serving(True)
    health.set_connected(True)
    assert get(f"{url}/readyz")[0] == 503, "ready before the group gave an assignment"
    health.set_assigned(True)
    assert get(f"{url}/readyz")[0] == 200
    health.set_connected(False)
    assert get(f"{url}/readyz") == (503, "not ready\n")
    assert get(f"{url}/healthz")[0] == 200, "liveness waits for unreachable_after_s"
    assert get(f"{url}/nope")[0] == 404


def test_unreachable_brokers_fail_readiness_at_once_and_liveness_after_the_timeout() -> None:
    health = Health(unreachable_after_s=0.3)
    health.set_serving(True)
    health.set_assigned(True)
    health.set_connected(True)
    assert health.alive and health.ready
    health.set_connected(False)
    assert health.alive and not health.ready
    time.sleep(0.2)
    health.set_connected(False)  # still down: counted from the first report
    time.sleep(0.15)
    assert not health.alive
    health.set_connected(True)
    assert health.alive and health.ready


def test_kafka_connected_gauge_is_created_at_zero() -> None:
    assert b"broker_plugin_kafka_connected 0.0" in ServiceMetrics().exposition()


def test_stalled_loop_fails_liveness() -> None:
    health = Health(stale_after_s=0.0)
    assert not health.alive and not health.ready


def test_two_instances_do_not_clash() -> None:
    a, b = ServiceMetrics(), ServiceMetrics()
    a.frames_stored.inc()
    assert b"broker_plugin_frames_stored_total 0.0" in b.exposition()
