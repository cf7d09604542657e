"""``python -m broker_plugin demo`` (= ``make run``): the whole service on this machine, nothing outside.

Starts an embedded Kafka-compatible broker (Tansu), replays the bundled simulated Rubin alerts
(``broker_plugin/demo_data``) into it as Rubin sends them, runs the service with the default model and a
SQLite store in a temporary folder, waits until every alert is processed and committed, and prints a
summary: alerts in, classifications out, accuracy against the truth table, throughput, latency
percentiles, dead letters, and where the metrics were served.
"""

from __future__ import annotations

import csv
import importlib.resources
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from broker_plugin.commands.replay import replay
from broker_plugin.commands.run import open_parts
from broker_plugin.config import Settings
from broker_plugin.factory import Parts, build_service
from broker_plugin.kafka.admin import committed_total, create_topics, read_topic
from broker_plugin.kafka.embedded import EmbeddedBroker
from broker_plugin.serde.classifications import decode_classification

DEMO_DATA = Path(str(importlib.resources.files("broker_plugin").joinpath("demo_data")))
_TIMEOUT_S = 300.0


def _truth(folder: Path) -> dict[str, str]:
    with (folder / "truth.csv").open() as handle:
        return {row["diaObjectId"]: row["class"] for row in csv.DictReader(handle)}


def demo_settings(settings: Settings, bootstrap: str, state_dir: Path) -> Settings:
    """The demo's settings: the embedded broker, fresh topics, a temporary SQLite store, fast polling."""
    kafka = settings.kafka.model_copy(update={
        "bootstrap_servers": bootstrap, "input_topics": ["demo-alerts"], "group_id": "demo",
        "output_topic": "demo-classifications", "dead_letter_topic": "demo-dead-letter",
        "transactional_id": None, "session_timeout_ms": 6000, "heartbeat_interval_ms": 1000,
        "fetch_wait_max_ms": 20,
    })  # fmt: skip
    state = settings.state.model_copy(update={"url": f"sqlite:///{state_dir / 'state.db'}"})
    metrics = settings.metrics.model_copy(update={"host": "127.0.0.1", "port": 0})
    service = settings.service.model_copy(update={"batch_max_wait_ms": 20})
    return settings.model_copy(
        update={"kafka": kafka, "state": state, "metrics": metrics, "service": service}
    )


def run_demo(settings: Settings, out: TextIO, data: Path = DEMO_DATA) -> int:
    """Run the demo; exit status 0 when every alert was processed.

    Raises
    ------
    UserError
        The model artifact cannot be loaded (checked before the broker starts).
    """
    truth = _truth(data)
    with tempfile.TemporaryDirectory(prefix="broker-plugin-demo-") as tmp:
        # The parts need no broker: a bad model fails here, before anything starts.
        parts = open_parts(demo_settings(settings, settings.kafka.bootstrap_servers, Path(tmp)))
        try:
            with EmbeddedBroker() as broker:
                result = _run(demo_settings(settings, broker.bootstrap_servers, Path(tmp)), parts, out, data)
        finally:
            parts.close()
    sent, outputs, dead, elapsed, done, exposition = result
    _summary(out, sent, outputs, dead, truth, elapsed, done, exposition)
    return 0 if done else 1


def _run(
    config: Settings, parts: Parts, out: TextIO, data: Path
) -> tuple[int, list[Any], list[Any], float, bool, str]:
    """Replay the alerts into the running broker and wait until the service has committed them all."""
    kafka = config.kafka
    topics = [kafka.input_topics[0], kafka.output_topic, kafka.dead_letter_topic]
    create_topics(kafka.bootstrap_servers, topics)
    out.write(f"embedded Kafka-compatible broker (Tansu) at {kafka.bootstrap_servers}\n")
    service, server, metrics = build_service(config, parts)
    out.write(f"model {parts.model.name} ({parts.model.version}, {parts.model.ensemble_size} members)\n")
    if server is not None:
        out.write(f"metrics at http://127.0.0.1:{server.port}/metrics (also /healthz, /readyz)\n")
    thread = threading.Thread(target=service.run, daemon=True)
    thread.start()
    start = time.monotonic()
    sent = replay(data, kafka.input_topics[0], kafka)
    objects = len(_truth(data))
    out.write(f"replayed {sent} simulated Rubin alerts of {objects} objects from {data}\n")
    done = False
    while time.monotonic() - start < _TIMEOUT_S and not done:
        time.sleep(0.25)
        done = committed_total(kafka.bootstrap_servers, kafka.group_id, kafka.input_topics[0]) >= sent
    elapsed = time.monotonic() - start
    outputs = [
        decode_classification(m.value()) for m in read_topic(kafka.bootstrap_servers, kafka.output_topic)
    ]
    dead = read_topic(kafka.bootstrap_servers, kafka.dead_letter_topic)
    service.stop()
    thread.join(timeout=60)
    if server is not None:
        server.stop()
    return sent, outputs, dead, elapsed, done, metrics.exposition().decode()


def _summary(out: TextIO, sent: int, outputs: list, dead: list, truth: dict[str, str], elapsed: float,
             done: bool, exposition: str) -> None:  # fmt: skip
    # Each object's newest alert's classification: outputs are causal, so it is the one that saw every
    # frame and the longest history. Publication order is not used, since an older alert delivered late
    # through another partition is published after it and sees less.
    newest: dict[str, Any] = {}
    for record in outputs:
        best = newest.get(key := str(record.diaObjectId))
        if best is None or (record.midpointMjdTai, record.nFrames) > (best.midpointMjdTai, best.nFrames):
            newest[key] = record
    judged = [(truth[k], r.predictedClass) for k, r in newest.items() if k in truth]
    correct = sum(t == p for t, p in judged)
    per_alert = [truth.get(str(r.diaObjectId)) == r.predictedClass for r in outputs]
    latency = np.array([r.publishTimestamp - r.alertTimestamp for r in outputs if r.alertTimestamp], float)
    reasons = Counter(dict(m.headers()).get("dead_letter_reason", b"?").decode() for m in dead)
    out.write("\n=== broker_plugin demo summary ===\n")
    out.write(f"alerts in:               {sent}{'' if done else '  (TIMED OUT before all were processed)'}\n")
    classified = f"(objects classified: {len(newest)} of {len(truth)})"
    out.write(f"classifications out:     {len(outputs)} {classified}\n")
    out.write(f"dead letters:            {len(dead)}{f' {dict(reasons)}' if reasons else ''}\n")
    if judged:
        out.write(
            f"accuracy, newest alert per object: {correct}/{len(judged)} = {correct / len(judged):.0%}\n"
        )
        out.write(f"accuracy, every output:  {np.mean(per_alert):.0%} (early alerts see few frames)\n")
    rate = sent / elapsed
    out.write(f"processed in:            {elapsed:.1f} s from the replay's start ({rate:.0f} alerts/s)\n")
    if latency.size:
        p50, p90, p99 = np.percentile(latency, [50, 90, 99])
        out.write(f"latency (produce -> publish): p50 {p50:.0f} ms, p90 {p90:.0f} ms, p99 {p99:.0f} ms "
                  "(the replay sends everything at once: this includes the queueing)\n")  # fmt: skip
    for line in exposition.splitlines():
        if line.startswith(("broker_plugin_alerts_consumed_total", "broker_plugin_frames_stored_total")):
            out.write(f"metric {line}\n")
