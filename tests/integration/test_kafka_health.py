"""An unreachable or misconfigured Kafka is visible: readiness, liveness, the gauge, exit statuses, logs.

The stopped-broker test runs its own Tansu broker (the session's is shared) and restarts it on the same
port; Tansu keeps everything in memory, so the topics are created again after the restart.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from broker_plugin.commands.replay import replay
from broker_plugin.commands.run import run_service
from broker_plugin.config import KafkaSettings, Settings
from broker_plugin.exceptions import KafkaUnreachableError
from broker_plugin.kafka.embedded import EmbeddedBroker
from tests.commands.test_replay import rubin_archive
from tests.integration.conftest import RunningService
from tests.integration.support import FAST_GROUP, ROOT, create_topics, service_env, unique, wait_until
from tests.kafka.test_clientlog import closed_port_address
from tests.test_metrics import get

pytestmark = pytest.mark.integration


def status(running: RunningService, path: str) -> int:
    assert running.server is not None
    return get(f"http://127.0.0.1:{running.server.port}{path}")[0]


def connected_gauge(running: RunningService) -> float:
    return running.metrics.kafka_connected._value.get()  # private in prometheus_client


def visibility_settings(service_settings: Settings, bootstrap: str, **kafka: object) -> Settings:
    names = {"input": unique("alerts"), "output": unique("classifications"), "dead": unique("dead-letter")}
    update = {
        "bootstrap_servers": bootstrap, "input_topics": [names["input"]], "output_topic": names["output"],
        "dead_letter_topic": names["dead"], "group_id": unique("group"), "probe_interval_s": 1.0,
        **FAST_GROUP, **kafka,
    }  # fmt: skip
    return service_settings.model_copy(update={
        "kafka": service_settings.kafka.model_copy(update=update),
        "metrics": service_settings.metrics.model_copy(update={"host": "127.0.0.1", "port": 0}),
        "service": service_settings.service.model_copy(
            update={"batch_max_wait_ms": 20, "prepare_processes": 0}
        ),
    })  # fmt: skip


def topics_of(settings: Settings) -> list[str]:
    kafka = settings.kafka
    return [*kafka.input_topics, kafka.output_topic, kafka.dead_letter_topic]


@pytest.mark.slow
def test_readiness_waits_for_the_assignment(kafka_bootstrap: str, service_settings: Settings) -> None:
    settings = visibility_settings(service_settings, kafka_bootstrap)
    create_topics(kafka_bootstrap, *topics_of(settings), partitions=2)
    running = RunningService(settings)
    assert status(running, "/readyz") == 503
    running.start()
    try:
        # The loop runs (the start-up probe answered) before the group has assigned anything: the
        # brokers' initial rebalance delay is seconds long.
        assert wait_until(lambda: connected_gauge(running) == 1.0, 30, interval_s=0.01)
        assert running.service.assignment == set() and status(running, "/readyz") == 503
        assert status(running, "/healthz") == 200
        assert wait_until(lambda: status(running, "/readyz") == 200, 30)
        assert running.service.assignment == {(settings.kafka.input_topics[0], p) for p in (0, 1)}
    finally:
        running.stop()


@pytest.mark.slow
def test_a_stopped_broker_fails_readiness_then_liveness_and_recovers(service_settings: Settings) -> None:
    with EmbeddedBroker() as broker:
        settings = visibility_settings(service_settings, broker.bootstrap_servers, unreachable_timeout_s=6.0)
        create_topics(broker.bootstrap_servers, *topics_of(settings))
        running = RunningService(settings).start()
        try:
            assert wait_until(lambda: status(running, "/readyz") == 200, 30)
            assert connected_gauge(running) == 1.0
            # The broker drops its connections while stop() still waits for its process to exit, so
            # the service's unreachable clock starts between these two instants: the lower bound on
            # liveness counts from the first, the upper bound on readiness from the second.
            stopping = time.monotonic()
            broker.stop()
            stopped = time.monotonic()
            assert wait_until(lambda: status(running, "/readyz") == 503, 5, interval_s=0.05)
            assert connected_gauge(running) == 0.0
            assert time.monotonic() - stopped < 5
            assert status(running, "/healthz") == 200, "liveness fails only after unreachable_timeout_s"
            assert wait_until(lambda: status(running, "/healthz") == 503, 10, interval_s=0.1)
            assert time.monotonic() - stopping >= 6.0
            assert running._thread.is_alive() and running.error is None, "the service keeps running"

            broker.restart()
            create_topics(broker.bootstrap_servers, *topics_of(settings))
            assert wait_until(lambda: status(running, "/healthz") == 200, 10)
            assert wait_until(lambda: status(running, "/readyz") == 200, 40)
            assert connected_gauge(running) == 1.0
        finally:
            running.stop()


def test_run_exits_1_with_one_line_when_no_broker_answers(
    service_settings: Settings, caplog: pytest.LogCaptureFixture, restore_signals: None
) -> None:
    address = closed_port_address()
    settings = visibility_settings(service_settings, address, startup_timeout_s=2.0)
    caplog.set_level(logging.INFO)
    start = time.monotonic()
    assert run_service(settings) == 1
    assert time.monotonic() - start < 30
    errors = [
        r for r in caplog.records if r.levelno >= logging.ERROR and r.name == "broker_plugin.commands.run"
    ]
    assert len(errors) == 1 and errors[0].exc_info is None
    line = errors[0].getMessage()
    assert f"no Kafka broker answered at {address} within 2 s" in line
    assert "BROKER_PLUGIN_KAFKA__STARTUP_TIMEOUT_S" in line and "\n" not in line


def settings_env(settings: Settings) -> dict[str, str]:
    return {
        "BROKER_PLUGIN_MODEL__ARTIFACT": str(settings.model.artifact),
        "BROKER_PLUGIN_MODEL__DEVICE": "cpu",
        "BROKER_PLUGIN_STATE__URL": settings.state.url,
        "BROKER_PLUGIN_METRICS__ENABLED": "false",
        "BROKER_PLUGIN_SERVICE__PREPARE_PROCESSES": "0",
    }


@pytest.mark.slow
def test_run_subprocess_exits_1_without_a_traceback(service_settings: Settings) -> None:
    address = closed_port_address()
    env = service_env(settings_env(service_settings) | {
        "BROKER_PLUGIN_KAFKA__BOOTSTRAP_SERVERS": address, "BROKER_PLUGIN_KAFKA__STARTUP_TIMEOUT_S": "3",
    })  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "broker_plugin", "run"], env=env, cwd=ROOT, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if " ERROR broker_plugin.commands.run: " in line]
    assert len(errors) == 1, result.stderr
    assert f"no Kafka broker answered at {address} within 3 s" in errors[0]
    assert "BROKER_PLUGIN_KAFKA__STARTUP_TIMEOUT_S" in errors[0]
    assert len([line for line in result.stderr.splitlines() if "Connection refused" in line]) <= 4


def test_replay_to_an_unreachable_server_names_it_within_seconds(tmp_path: Path) -> None:
    rubin_archive(tmp_path / "rubin.avro", 3)
    address = closed_port_address()
    start = time.monotonic()
    with pytest.raises(KafkaUnreachableError) as caught:
        replay(tmp_path, "alerts", KafkaSettings(bootstrap_servers=address), connect_timeout_s=2.0)
    assert time.monotonic() - start < 10
    assert f"no Kafka broker answered at {address} within 2 s" in str(caught.value)
    assert "--bootstrap-servers" in str(caught.value)


@pytest.mark.slow
def test_replay_command_exits_1_with_one_error_line(tmp_path: Path) -> None:
    rubin_archive(tmp_path / "rubin.avro", 3)
    address = closed_port_address()
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "broker_plugin", "replay", str(tmp_path), "--topic", "alerts",
         "--bootstrap-servers", address],
        env=service_env({}), cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert time.monotonic() - start < 15
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and f"no Kafka broker answered at {address} within 5 s" in errors[0], (
        result.stderr
    )
    assert "Connection refused" in errors[0]
