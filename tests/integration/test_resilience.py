"""Crash safety (kill -9), scale-out over PostgreSQL, backpressure, transactions."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from broker_plugin.config import Settings
from broker_plugin.serde.classifications import decode_classification
from broker_plugin.state.factory import open_state_store
from tests.factories import object_alerts
from tests.integration.support import produce, read_all, service_env, start_service_process, wait_until

POSTGRES_DSN = os.environ.get("BROKER_PLUGIN_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")


def stream(
    objects: int, per_object: int, first_object: int = 100
) -> tuple[list[bytes], list[bytes], set[int]]:
    """Alerts of ``objects`` objects interleaved in time, their keys, and the ids that must get an output.

    Keys keep one object's alerts in order, as live visits (>= 30 s apart) arrive; an output is due from
    the 3rd frame of an object on.
    """
    per = [
        object_alerts(first_object + o, per_object, first_source=(first_object + o) * 100)
        for o in range(objects)
    ]
    values = [per[o][k] for k in range(per_object) for o in range(objects)]
    keys = [str(first_object + o).encode() for k in range(per_object) for o in range(objects)]
    expected = {(first_object + o) * 100 + k for o in range(objects) for k in range(2, per_object)}
    return values, keys, expected


def env_for(settings: Settings, state_url: str, **extra: str) -> dict[str, str]:
    k = settings.kafka
    return service_env({
        "BROKER_PLUGIN_KAFKA__BOOTSTRAP_SERVERS": k.bootstrap_servers,
        "BROKER_PLUGIN_KAFKA__INPUT_TOPICS": k.input_topics[0],
        "BROKER_PLUGIN_KAFKA__OUTPUT_TOPIC": k.output_topic,
        "BROKER_PLUGIN_KAFKA__DEAD_LETTER_TOPIC": k.dead_letter_topic,
        "BROKER_PLUGIN_KAFKA__GROUP_ID": k.group_id,
        "BROKER_PLUGIN_KAFKA__SESSION_TIMEOUT_MS": "6000",
        "BROKER_PLUGIN_KAFKA__HEARTBEAT_INTERVAL_MS": "1000",
        "BROKER_PLUGIN_KAFKA__FETCH_WAIT_MAX_MS": "20",
        "BROKER_PLUGIN_MODEL__ARTIFACT": str(settings.model.artifact),
        "BROKER_PLUGIN_MODEL__DEVICE": "cpu",
        "BROKER_PLUGIN_STATE__URL": state_url,
        "BROKER_PLUGIN_METRICS__PORT": "0",
        "BROKER_PLUGIN_SERVICE__BATCH_MAX_SIZE": "8",
        "BROKER_PLUGIN_SERVICE__BATCH_MAX_WAIT_MS": "20",
        **extra,
    })  # fmt: skip


def output_ids(settings: Settings, at_least: int, timeout_s: float = 90) -> list[int]:
    k = settings.kafka
    return [
        decode_classification(m.value()).diaSourceId
        for m in read_all(k.bootstrap_servers, k.output_topic, at_least, timeout_s)
    ]


@pytest.mark.slow
def test_kill_9_loses_nothing_and_stores_every_frame_once(kafka_settings: Settings, tmp_path: Path) -> None:
    values, keys, expected = stream(objects=6, per_object=6)
    state_url = f"sqlite:///{tmp_path / 'state.db'}"
    env = env_for(kafka_settings, state_url)
    first = start_service_process(env, tmp_path / "service.log")
    k = kafka_settings.kafka
    try:
        produce(k.bootstrap_servers, k.input_topics[0], values[:20], keys=keys[:20])
        assert wait_until(lambda: len(read_all(k.bootstrap_servers, k.output_topic, 1, 2)) > 0, 60), (
            tmp_path / "service.log"
        ).read_text()[-3000:]
        produce(k.bootstrap_servers, k.input_topics[0], values[20:], keys=keys[20:])
        time.sleep(0.05)  # mid-stream: the first instance has not finished
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    second = start_service_process(env, tmp_path / "service.log")
    try:
        ids = output_ids(kafka_settings, len(expected))
        assert expected <= set(ids), f"missing {sorted(expected - set(ids))}"
        assert set(ids) <= expected
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=60) == 0
    store = open_state_store(state_url, 200)
    try:
        assert sum(store.frame_count(f"rubin:{100 + o}") for o in range(6)) == len(values)
        for o in range(6):
            ids_in_store = [f.diaSourceId for f in store.frames(f"rubin:{100 + o}")]
            assert len(ids_in_store) == len(set(ids_in_store)) == 6
    finally:
        store.close()


@pytest.fixture
def postgres_url():
    schema = f"test_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(POSTGRES_DSN, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL server at {POSTGRES_DSN}: {exc}")
    separator = "&" if "?" in POSTGRES_DSN else "?"
    yield f"{POSTGRES_DSN}{separator}options=-csearch_path%3D{schema}"
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.mark.slow
def test_two_instances_share_partitions_and_state(
    kafka_settings: Settings, postgres_url: str, tmp_path: Path
) -> None:
    values, keys, expected = stream(objects=8, per_object=5, first_object=300)
    env = env_for(kafka_settings, postgres_url)
    members = [start_service_process(env, tmp_path / f"service-{i}.log") for i in range(2)]
    k = kafka_settings.kafka
    try:
        time.sleep(8)  # both join the group before the stream starts, so the partitions are split
        produce(k.bootstrap_servers, k.input_topics[0], values, keys=keys)
        ids = output_ids(kafka_settings, len(expected))
        assert expected <= set(ids)
        assert set(ids) <= expected
    finally:
        for member in members:
            member.send_signal(signal.SIGTERM)
        codes = [member.wait(timeout=60) for member in members]
    assert codes == [0, 0]
    logs = [(tmp_path / f"service-{i}.log").read_text() for i in range(2)]
    assert all("partitions assigned: [(" in log for log in logs), "each instance owned partitions"
    store = open_state_store(postgres_url, 200)
    try:
        assert sum(store.frame_count(f"rubin:{300 + o}") for o in range(8)) == len(values)
    finally:
        store.close()


def test_backpressure_pauses_then_resumes(kafka_settings: Settings) -> None:
    from tests.integration.conftest import RunningService

    settings = kafka_settings.model_copy(update={"service": kafka_settings.service.model_copy(
        update={"queue_max_batches": 1, "batch_max_size": 2})})  # fmt: skip

    def slow(process):
        def slowed(batch):
            time.sleep(0.3)  # inference slower than the input
            return process(batch)

        return slowed

    running = RunningService(settings, around_process=slow).start()
    values, keys, expected = stream(objects=2, per_object=6, first_object=500)
    try:
        k = settings.kafka
        produce(k.bootstrap_servers, k.input_topics[0], values, keys=keys)
        assert set(output_ids(settings, len(expected))) == expected
    finally:
        running.stop()
    text = running.metrics.exposition().decode()
    pauses = [line for line in text.splitlines() if line.startswith("broker_plugin_consumer_pauses_total")]
    assert pauses and float(pauses[0].split()[-1]) >= 1


def test_a_busy_worker_takes_every_waiting_poll_at_once(kafka_settings: Settings) -> None:
    """Alerts arrive one per poll while inference is slow: batches grow instead of the partitions pausing."""
    from tests.integration.conftest import RunningService

    sizes: list[int] = []

    def slow(process):
        def slowed(batch):
            sizes.append(len(batch))
            time.sleep(0.3)
            return process(batch)

        return slowed

    running = RunningService(kafka_settings, around_process=slow).start()
    values, keys, expected = stream(objects=2, per_object=6, first_object=600)
    try:
        assert wait_until(lambda: bool(running.service.assignment), 30)
        k = kafka_settings.kafka
        for value, key in zip(values, keys, strict=True):
            produce(k.bootstrap_servers, k.input_topics[0], [value], keys=[key])
            time.sleep(0.05)
        assert set(output_ids(kafka_settings, len(expected))) == expected
    finally:
        running.stop()
    assert sum(sizes) == len(values) and max(sizes) >= 3, sizes
    text = running.metrics.exposition().decode()
    assert "broker_plugin_consumer_pauses_total 0.0" in text


def test_transactional_outputs(kafka_settings: Settings) -> None:
    from tests.integration.conftest import RunningService

    kafka = kafka_settings.kafka.model_copy(update={"transactional_id": f"tx-{uuid.uuid4().hex[:8]}"})
    running = RunningService(kafka_settings.model_copy(update={"kafka": kafka})).start()
    values, keys, expected = stream(objects=2, per_object=4, first_object=600)
    try:
        produce(kafka.bootstrap_servers, kafka.input_topics[0], values, keys=keys)
        ids = output_ids(kafka_settings, len(expected))
        assert sorted(ids) == sorted(expected)  # exactly one each
    finally:
        running.stop()


def test_an_unexpected_failure_dead_letters_only_its_alert(kafka_settings: Settings) -> None:
    from tests.integration.conftest import RunningService

    def buggy(process):
        def failing(batch):
            if any(item.alert.diaSourceId == 70_001 for item in batch):
                raise RuntimeError("boom")  # a bug triggered by one alert
            return process(batch)

        return failing

    running = RunningService(kafka_settings, around_process=buggy).start()
    values, keys, _ = stream(objects=1, per_object=5, first_object=700)
    try:
        k = kafka_settings.kafka
        produce(k.bootstrap_servers, k.input_topics[0], values, keys=keys)
        dead = read_all(k.bootstrap_servers, k.dead_letter_topic, 1)
        assert [dict(m.headers())["dead_letter_reason"] for m in dead] == [b"internal_error"]
        assert b"RuntimeError: boom" in dict(dead[0].headers())["dead_letter_error"]
        # The object lost one frame, so its 3rd frame in time order is now alert 70_003.
        assert set(output_ids(kafka_settings, 2)) == {70_003, 70_004}
    finally:
        running.stop()


def _descendants(pid: int) -> set[int]:
    """Processes below ``pid`` (from /proc), zombies left out."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, ppid = stat.read_text().rsplit(")", 1)[1].split()[:2]
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if state != "Z":
            children.setdefault(int(ppid), []).append(int(stat.parent.name))
    out, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_preparation_processes_end_with_the_service(
    kafka_settings: Settings, tmp_path: Path, how: signal.Signals
) -> None:
    values, keys, expected = stream(objects=2, per_object=4, first_object=800)
    env = env_for(
        kafka_settings, f"sqlite:///{tmp_path / 'state.db'}", BROKER_PLUGIN_SERVICE__PREPARE_PROCESSES="2"
    )
    service = start_service_process(env, tmp_path / "service.log")
    k = kafka_settings.kafka
    try:
        produce(k.bootstrap_servers, k.input_topics[0], values, keys=keys)
        assert set(output_ids(kafka_settings, len(expected))) == expected, (
            tmp_path / "service.log"
        ).read_text()
        helpers = _descendants(service.pid)  # the fork server and the preparation processes
        assert len(helpers) >= 3, helpers
    finally:
        service.send_signal(how)
        code = service.wait(timeout=60)
    assert code == (0 if how == signal.SIGTERM else -signal.SIGKILL)
    # Killed, the service cannot stop them: they notice it is gone and exit on their own.
    assert wait_until(lambda: not any(_alive(pid) for pid in helpers), 10), [p for p in helpers if _alive(p)]
