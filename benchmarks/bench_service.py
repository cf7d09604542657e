"""End-to-end service benchmark through the embedded Kafka-compatible broker: what users run.

Usage: ``python benchmarks/bench_service.py [--models broker_plugin/models/convention-default] [--nets
convention-small convention-paper] [--prepare-processes 1] [--torch-threads 0] [--share-backbones yes]
[--repeats 1] [--alerts 1800] [--rate 300] [--seconds 10] [--partitions 45] [--latency-order staggered]
[--waits short] [--out benchmarks/results/service_cpu.json]``

Rows: every ``--models`` artifact as shipped (all ensemble members, trained weights; the shipped default
by default), then every ``--nets`` net with random weights and one member (the architecture's cost).
Each row runs once per *variant*: every combination of ``--prepare-processes`` (the service setting: 0
decodes in the consumer thread and normalises in the pipeline worker), ``--torch-threads`` (torch's
intra-op threads of the inference thread; 0 the service's default: the cores preparation leaves) and
``--share-backbones`` (``no``: every ensemble member runs its own copy of a backbone it shares with
others, the cost without sharing; same outputs). With several variants the runs are interleaved,
repeated ``--repeats`` times in rotated order (the machine is shared: drift hits every variant alike),
and the summary gives per variant the medians and the median ratio to the first variant of the same
repeat.
Alerts are unkeyed, as Rubin's are, into an input topic of ``--partitions`` partitions (Rubin's: 45).
For each run:

- *throughput*: the service is running and has its partitions; ``--alerts`` Rubin alerts (cutouts 30..80
  px at random rotations, objects of 6 epochs, interleaved) are produced as fast as possible, and the
  time until every offset is committed gives alerts/s end to end (decode, normalise, store, infer,
  publish, commit);
- *stages*: where the service's time went during the throughput run [s, summed over micro-batches]:
  decode and normalise (in the preparation processes, or in the consumer and worker threads), wait (the
  worker waiting for preparation results), store, inference (with the token caches' reads and writes)
  and publish (produce, flush and bookkeeping: the rest of each micro-batch);
- *cpu*: CPU seconds (user + system) of this process during the throughput run: the service's threads,
  not the preparation processes (their work is the decode and normalise stages), the producer nor the
  broker; *cpu by process*: the same for every process of the chain (service, preparation, broker,
  producer) and their total, the work the cores had to do for the run;
- *latency*: alerts are produced at a fixed ``--rate`` for ``--seconds``, objects staggered (new ones
  starting all along, beside objects at every later epoch: :func:`alert_order`; ``--latency-order
  interleaved``: every object's first alert, then every second one, ..., so that every object reaches
  its first output at the same moment, a worst case); latency is publication time minus the alert's
  ``producer_timestamp``, p50/p99 over every classification.

Everything runs on this machine: broker, producer and service share its cores. The producer is a
process of its own (:class:`ProducerProcess`), as a survey's alert producer is never inside the
service's interpreter; it builds its alerts before the clock starts. The service runs with the demo's
short fetch and batch waits (``--waits short``, 10 and 20 ms); ``--waits defaults`` runs it with the
service's defaults (100 and 50 ms), as a user who changes nothing does; given both, it is one more
dimension of the variants.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import multiprocessing
import os
import platform
import re
import resource
import subprocess
import tempfile
import threading
import time
from dataclasses import astuple, dataclass
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from pathlib import Path

import numpy as np
import torch
from confluent_kafka import Producer

from broker_plugin import __version__
from broker_plugin.config import Settings, bundled_model_dir
from broker_plugin.factory import Parts, build_parts, build_service
from broker_plugin.inference import create_net
from broker_plugin.inference.artifact import save_artifact
from broker_plugin.inference.incremental import IncrementalEngine
from broker_plugin.inference.preprocess import FluxNormalisation
from broker_plugin.kafka.admin import committed_total, create_topics, read_topic
from broker_plugin.kafka.embedded import EmbeddedBroker
from broker_plugin.metrics import ServiceMetrics
from broker_plugin.pipeline import BatchResult
from broker_plugin.serde.classifications import decode_classification
from broker_plugin.serde.rubin import encode_rubin_message, rubin_alert_record
from broker_plugin.serde.schemas import latest_rubin_version
from broker_plugin.stamps import RubinCutoutGeometry, write_rubin_cutout

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 6
#: Days of forced photometry before an object's first alert (the simulated survey's precovery window).
PRECOVERY_DAYS = 30.0


def history(obj: int, epoch: int) -> dict[str, list[dict]]:
    """What a Rubin alert of ``obj`` at ``epoch`` carries: forced photometry of every visit from
    :data:`PRECOVERY_DAYS` before the first epoch (2-day cadence), and the earlier detections."""
    visits = np.arange(60_000.0 - PRECOVERY_DAYS, 60_000.0 + 2 * epoch, 2.0)
    forced = [
        {"diaForcedSourceId": obj * 1000 + i, "diaObjectId": obj, "midpointMjdTai": float(t),
         "band": "ugriz"[i % 5], "ra": 10.0, "dec": -5.0, "psfFlux": 100.0 if t >= 60_000.0 else 3.0,
         "psfFluxErr": 5.0}
        for i, t in enumerate(visits)
    ]  # fmt: skip
    sources = [
        {"diaSourceId": obj * 100 + e, "diaObjectId": obj, "midpointMjdTai": 60_000.0 + 2 * e,
         "band": "ugriz"[e % 5], "ra": 10.0, "dec": -5.0, "psfFlux": 100.0, "psfFluxErr": 5.0}
        for e in range(epoch)
    ]  # fmt: skip
    return {"prvDiaForcedSources": forced, "prvDiaSources": sources}


def alert_order(n: int, staggered: bool) -> list[tuple[int, int]]:
    """``(object index, epoch)`` of ``n`` alerts of objects with ``EPOCHS`` epochs each, in stream order.

    Not ``staggered``: interleaved by epoch (every object's first alert, then every second one, ...).
    ``staggered``: objects start one after another through the stream, an object's epochs a quarter of
    the objects apart, so that at any moment the stream mixes new objects with objects at every later
    epoch, as a survey's stream does (a steady mix of first outputs and cached steps, not every object
    switching stage at once).
    """
    objects = max(1, n // EPOCHS)
    if not staggered:
        return [(k % objects, k // objects) for k in range(n)]
    period = objects / 4
    spacing = (n - (EPOCHS - 1) * period) / objects
    slots = sorted((j * spacing + e * period, j, e) for j in range(objects) for e in range(EPOCHS))
    return [(j, e) for _, j, e in slots[:n]]


def make_alerts(n: int, seed: int, first_object: int, staggered: bool = False) -> list[tuple[bytes, bytes]]:
    """``n`` (key, framed alert) of objects with ``EPOCHS`` epochs each, in :func:`alert_order`.

    Each alert carries difference, science and template cutouts on one pixel grid (as Rubin cuts them)
    and the object's photometric history, as a Rubin alert does.
    """
    rng = np.random.default_rng(seed)
    version = latest_rubin_version()
    triplets = []
    for _ in range(64):  # distinct cutout bytes, reused: rendering is not what is measured
        size = int(rng.integers(30, 81))
        geometry = RubinCutoutGeometry(size=size, rotation_deg=float(rng.uniform(0, 360)))
        east, north = geometry.sky_offsets()
        source = np.exp(-(east**2 + north**2) / 0.2)
        variance = np.full((size, size), 25.0)
        planes = (500 * source, 2000 + 800 * source, 2000 + 300 * source)  # difference, science, template
        noisy = [p + rng.normal(0, 5, (size, size)) for p in planes]
        triplets.append([write_rubin_cutout(p, variance, geometry, 10.0, -5.0) for p in noisy])
    out = []
    for k, (index, epoch) in enumerate(alert_order(n, staggered)):
        obj = first_object + index
        difference, science, template = triplets[k % len(triplets)]
        record = rubin_alert_record(
            version, diaSourceId=obj * 100 + epoch, diaObjectId=obj, midpointMjdTai=60_000.0 + 2 * epoch,
            band="ugriz"[epoch % 5], ra=10.0, dec=-5.0, psfFlux=100.0, psfFluxErr=5.0,
            cutoutDifference=difference, cutoutScience=science, cutoutTemplate=template,
            **history(obj, epoch),
        )  # fmt: skip
        out.append((str(obj).encode(), encode_rubin_message(record, version)))
    return out


class StageClock:
    """Wall time per stage of a running service: its preparation metrics, and wrappers around its pipeline."""

    def __init__(self, parts: Parts) -> None:
        # The pipeline's own normalising (all of it with prepare_processes 0) is in the service's metric.
        self.seconds = dict.fromkeys(("pipeline_normalise", "store", "inference", "publish"), 0.0)
        self.batches = 0
        self.metrics: ServiceMetrics | None = None
        process = parts.pipeline.process

        def timed_process(batch: list) -> BatchResult:
            result = process(batch)
            self.batches += 1
            self.seconds["pipeline_normalise"] += result.normalise_seconds
            self.seconds["store"] += result.store_seconds
            self.seconds["inference"] += result.inference_seconds
            return result

        parts.pipeline.process = timed_process  # type: ignore[method-assign]

    def wrap_handle(self, service: object, metrics: ServiceMetrics) -> None:
        """Publish = a micro-batch's wall time in the worker minus the pipeline's stages."""
        self.metrics = metrics
        handle = service._handle  # type: ignore[attr-defined]
        pipeline = ("pipeline_normalise", "store", "inference")

        def timed_handle(batch: object) -> None:
            before = sum(self.seconds[k] for k in pipeline)
            start = time.perf_counter()
            handle(batch)
            spent = sum(self.seconds[k] for k in pipeline) - before
            self.seconds["publish"] += time.perf_counter() - start - spent

        service._handle = timed_handle  # type: ignore[attr-defined]

    def report(self) -> dict:
        assert self.metrics is not None
        registry = self.metrics.registry

        def sample(name: str, labels: dict | None = None) -> float:
            return registry.get_sample_value(f"broker_plugin_{name}", labels or {}) or 0.0

        out = {
            "micro_batches": self.batches,
            "decode": sample("preparation_seconds_total", {"stage": "decode"}),
            "normalise": sample("preparation_seconds_total", {"stage": "normalise"}),
            "wait": sample("preparation_wait_seconds_total"),
            **{k: self.seconds[k] for k in ("store", "inference", "publish")},
        }
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}


def random_artifact(directory: Path, net: str) -> Path:
    torch.manual_seed(0)
    save_artifact(directory, [create_net(net).eval()], normalisation=FluxNormalisation(),
                  pixel_scale_arcsec=0.4, training_data_hash="benchmark-random-weights")  # fmt: skip
    return directory


@dataclass(frozen=True)
class Variant:
    """How the service runs: its preparation processes, the torch threads of its inference, and whether
    ensemble members that share a stage-1 backbone run it once (False: each member its own copy, the
    cost without sharing; the same outputs), whether an artifact's history trees are blended in (False:
    the members alone, the cost of the net), and its fetch and batch waits (:func:`settings_for`)."""

    prepare_processes: int
    torch_threads: int
    share_backbones: bool = True
    trees: bool = True
    waits: str = "short"


#: ``--waits short``: the demo's fetch wait (Kafka settings) and batch wait (service settings), for
#: low latency [ms].
SHORT_FETCH_WAIT = {"fetch_wait_max_ms": 10}
SHORT_BATCH_WAIT = {"batch_max_wait_ms": 20}


def settings_for(bootstrap: str, model: Path, state: Path, topic: str, variant: Variant) -> Settings:
    """The service's settings for one run; ``variant.waits``: ``short`` (:data:`SHORT_FETCH_WAIT`,
    :data:`SHORT_BATCH_WAIT`) or ``defaults`` (the service's own)."""
    base = Settings(_env_file=None)
    short = variant.waits == "short"
    fetch = SHORT_FETCH_WAIT if short else {}
    batch = SHORT_BATCH_WAIT if short else {}
    return base.model_copy(update={
        "kafka": base.kafka.model_copy(update={
            "bootstrap_servers": bootstrap, "input_topics": [topic], "output_topic": f"{topic}-out",
            "dead_letter_topic": f"{topic}-dead", "group_id": f"{topic}-group", "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 1000, **fetch}),
        "model": base.model.model_copy(update={"artifact": model, "device": "cpu", "min_frames": 3,
                                               "torch_threads": variant.torch_threads}),
        "state": base.state.model_copy(update={"url": f"sqlite:///{state}"}),
        "metrics": base.metrics.model_copy(update={"enabled": False}),
        "service": base.service.model_copy(update={**batch, "prepare_processes": variant.prepare_processes}),
    })  # fmt: skip


class Running:
    def __init__(self, settings: Settings, share_backbones: bool = True, trees: bool = True) -> None:
        self.parts = build_parts(settings)
        if not trees:
            self.parts.predictor.trees = None
        if not share_backbones:  # the predictor's engine, rebuilt with a backbone per member
            p = self.parts.predictor
            p.engine = IncrementalEngine(
                p.members, model_id=p.model_id, device=p.device, share_backbones=False
            )
            p.ensemble = p.engine.ensemble
        self.clock = StageClock(self.parts)
        self.service, _, metrics = build_service(settings, self.parts)
        self.clock.wrap_handle(self.service, metrics)
        self.thread = threading.Thread(target=self.service.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.service.assignment and time.monotonic() < deadline:
            time.sleep(0.1)

    def stop(self) -> None:
        self.service.stop()
        self.thread.join(timeout=60)
        self.parts.close()


def produce(
    bootstrap: str, topic: str, alerts: list[tuple[bytes, bytes]], rate: float = 0.0, keyed: bool = False
) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 2, "log.connection.close": False})
    start = time.monotonic()
    for i, (key, value) in enumerate(alerts):
        if rate:
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        stamp = str(time.time() * 1000).encode()
        producer.produce(
            topic, value=value, key=key if keyed else None, headers=[("producer_timestamp", stamp)]
        )
        producer.poll(0)
    producer.flush(60)


def _produce_in_process(
    bootstrap: str,
    topic: str,
    stream: tuple[int, int, int, bool],
    rate: float,
    ready: Event,
    go: Event,
    cpu: Synchronized,
) -> None:
    """A producer process's work: build the stream ``(n, seed, first_object, staggered)``, say so, wait
    for the go, produce it, and report the CPU seconds producing took."""
    alerts = make_alerts(*stream)
    ready.set()
    go.wait()
    before = _cpu_seconds()
    produce(bootstrap, topic, alerts, rate)
    cpu.value = _cpu_seconds() - before


class ProducerProcess:
    """The alert stream's producer in a process of its own, as a survey's producer is outside the service.

    The alerts are built in that process before :meth:`go`, so building them is not timed, and producing
    them (librdkafka's copies under the GIL) does not share the service's interpreter.
    """

    def __init__(self, bootstrap: str, topic: str, stream: tuple[int, int, int, bool], rate: float = 0.0):
        context = multiprocessing.get_context("spawn")
        self._ready, self._go = context.Event(), context.Event()
        self._cpu = context.Value("d", 0.0)
        self._process = context.Process(
            target=_produce_in_process,
            args=(bootstrap, topic, stream, rate, self._ready, self._go, self._cpu),
        )
        self._process.start()

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        if not self._ready.wait(timeout_s):
            self._process.kill()
            raise RuntimeError("the producer process did not build its alerts")

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def cpu_seconds(self) -> float:
        """CPU seconds the producing took (after :meth:`join`)."""
        return float(self._cpu.value)

    def go(self) -> None:
        self._go.set()

    def join(self, timeout_s: float = 900.0) -> None:
        self._process.join(timeout_s)
        if self._process.exitcode != 0:
            raise RuntimeError(f"the producer process failed (exit code {self._process.exitcode})")


def measure(
    label: str, model: Path, variant: Variant, bootstrap: str, tmp: Path, args: argparse.Namespace, run: int
) -> dict:
    n, rate, seconds, partitions = args.alerts, args.rate, args.seconds, args.partitions
    topic = f"bench-{run}-" + re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-")
    create_topics(bootstrap, [topic], partitions)
    create_topics(bootstrap, [f"{topic}-out", f"{topic}-dead"])
    settings = settings_for(bootstrap, model, tmp / f"{topic}.db", topic, variant)
    producer = ProducerProcess(bootstrap, topic, (n, 1, 1_000, False))
    running = Running(settings, variant.share_backbones, variant.trees)
    producer.wait_ready()
    processes = ProcessClock(producer)
    processes.start()
    start, cpu = time.monotonic(), _cpu_seconds()
    producer.go()
    producer.join()
    while committed_total(bootstrap, settings.kafka.group_id, topic) < n and time.monotonic() - start < 900:
        time.sleep(0.2)
    elapsed, cpu = time.monotonic() - start, _cpu_seconds() - cpu
    processes.stop()
    running.stop()
    stages = running.clock.report()
    settle(running)

    topic2 = f"{topic}-rate"
    create_topics(bootstrap, [topic2], partitions)
    create_topics(bootstrap, [f"{topic2}-out", f"{topic2}-dead"])
    settings2 = settings_for(bootstrap, model, tmp / f"{topic}-rate.db", topic2, variant)
    staggered = args.latency_order == "staggered"
    n_paced = int(rate * seconds)
    producer = ProducerProcess(bootstrap, topic2, (n_paced, 2, 500_000, staggered), rate=rate)
    running = Running(settings2, variant.share_backbones, variant.trees)
    producer.wait_ready()
    producer.go()
    producer.join()
    deadline = time.monotonic() + 300
    while (
        committed_total(bootstrap, settings2.kafka.group_id, topic2) < n_paced and time.monotonic() < deadline
    ):
        time.sleep(0.2)
    running.stop()
    members, predictor = running.parts.model.ensemble_size, running.parts.predictor
    settle(running)
    outputs = [decode_classification(m.value()) for m in read_topic(bootstrap, f"{topic2}-out")]
    latency = (
        np.array([o.publishTimestamp - o.alertTimestamp for o in outputs if o.alertTimestamp], float) / 1e3
    )
    return {
        "model": label, "ensemble_size": members, "repeat": run // args.runs_per_repeat,
        "prepare_processes": variant.prepare_processes, "torch_threads": variant.torch_threads,
        "waits": variant.waits,
        "share_backbones": variant.share_backbones,
        "trees_variant": variant.trees, "trees": predictor.trees is not None,
        "parameters": sum(p.numel() for p in predictor.members[0].parameters()),
        "input_partitions": partitions, "keyed": False,
        "load_average_1min_before": round(os.getloadavg()[0], 2),
        "throughput": {"alerts": n, "seconds": round(elapsed, 2), "alerts_per_second": round(n / elapsed, 1),
                       "cpu_s": round(cpu, 2), "cpu_s_by_process": processes.seconds},
        "stages_s": stages,
        "latency_at_rate": {
            "rate_alerts_per_second": rate, "alerts": n_paced, "classifications": len(outputs),
            "p50_s": round(float(np.percentile(latency, 50)), 3) if latency.size else None,
            "p99_s": round(float(np.percentile(latency, 99)), 3) if latency.size else None,
        },
    }  # fmt: skip


#: Seconds of quiet after a run, before the next one starts.
SETTLE_S = 2.0


def settle(running: Running) -> None:
    """Let a stopped service go before the next run: its objects collected now, then a short pause.

    A stopped service left to the cyclic collector slowed the paced run after a throughput run in a
    trial (p99 latency 2.1-2.3 s against 0.4 s with it collected).
    """
    running.parts = running.service = running.clock = None  # type: ignore[assignment]
    gc.collect()
    time.sleep(SETTLE_S)


def _descendants(root: int) -> list[tuple[int, str, float]]:
    """``(pid, command name, CPU seconds used so far)`` of every live descendant of process ``root``, read
    from ``/proc`` (user + system time)."""
    children: dict[int, list[int]] = {}
    stats: dict[int, tuple[str, float]] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            head, tail = (entry / "stat").read_text().rsplit(")", 1)
        except OSError:
            continue
        fields = tail.split()  # from the state on: fields[1] the parent, [11] utime, [12] stime
        pid = int(entry.name)
        stats[pid] = (head.split("(", 1)[1], (int(fields[11]) + int(fields[12])) / tick)
        children.setdefault(int(fields[1]), []).append(pid)
    out, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        out.append((pid, *stats[pid]))
        todo += children.get(pid, [])
    return out


class ProcessClock:
    """CPU seconds of every process of the chain between :meth:`start` and :meth:`stop`: this process
    (the service), the broker (the ``tansu`` process), the producer (its own count) and the service's
    preparation processes (every other descendant: the fork server and its workers). Read from
    ``/proc``, so that it measures any version of the code alike."""

    def __init__(self, producer: ProducerProcess) -> None:
        self._producer = producer
        self._start: dict[str, float] = {}
        self.seconds: dict[str, float] = {}

    def _read(self) -> dict[str, float]:
        out = {"service": _cpu_seconds(), "preparation": 0.0, "broker": 0.0}
        for pid, name, cpu in _descendants(os.getpid()):
            if pid != self._producer.pid:
                out["broker" if name == "tansu" else "preparation"] += cpu
        return out

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> dict[str, float]:
        end = self._read()
        self.seconds = {k: round(end[k] - self._start[k], 2) for k in end}
        self.seconds["producer"] = round(self._producer.cpu_seconds, 2)
        self.seconds["total"] = round(sum(self.seconds.values()), 2)
        return self.seconds


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _metrics_of(run: dict) -> dict[str, float | None]:
    lat, throughput = run["latency_at_rate"], run["throughput"]
    return {"alerts_per_second": throughput["alerts_per_second"], "cpu_s": throughput.get("cpu_s"),
            "p50_s": lat["p50_s"], "p99_s": lat["p99_s"]}  # fmt: skip


def _variant_of(run: dict) -> tuple:
    return (run["prepare_processes"], run["torch_threads"], run.get("share_backbones", True),
            run.get("trees_variant", True), run.get("waits", "short"))  # fmt: skip


def summarise(results: list[dict], variants: list[Variant]) -> list[dict]:
    """Per model and variant: medians over repeats, and the median ratio to the first variant's run of the
    same repeat (paired: both ran minutes apart on the same shared machine)."""
    out = []
    base = variants[0]
    for model in dict.fromkeys(r["model"] for r in results):
        runs = [r for r in results if r["model"] == model]
        for variant in variants:
            mine = [r for r in runs if _variant_of(r) == astuple(variant)]
            row: dict = {"model": model, "prepare_processes": variant.prepare_processes,
                         "torch_threads": variant.torch_threads, "share_backbones": variant.share_backbones,
                         "trees": variant.trees, "waits": variant.waits,
                         "runs": len(mine)}  # fmt: skip
            for key in ("alerts_per_second", "cpu_s", "p50_s", "p99_s"):
                values = [_metrics_of(r)[key] for r in mine if _metrics_of(r)[key] is not None]
                row[key] = round(float(np.median(values)), 3) if values else None
                ratios = []
                for r in mine:
                    paired = [
                        b for b in runs if b["repeat"] == r["repeat"] and _variant_of(b) == astuple(base)
                    ]
                    if paired and _metrics_of(r)[key] and _metrics_of(paired[0])[key]:
                        ratios.append(_metrics_of(r)[key] / _metrics_of(paired[0])[key])
                row[f"{key}_ratio"] = round(float(np.median(ratios)), 3) if ratios else None
            stage_keys = mine[0]["stages_s"].keys() if mine else []
            row["stages_s"] = {k: round(float(np.median([r["stages_s"][k] for r in mine])), 3)
                               for k in stage_keys}  # fmt: skip
            out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", type=Path, default=[bundled_model_dir()])
    parser.add_argument("--nets", nargs="*", default=["convention-small", "convention-paper"])
    parser.add_argument("--prepare-processes", nargs="+", type=int, default=[1])
    parser.add_argument("--torch-threads", nargs="+", type=int, default=[0])
    parser.add_argument("--share-backbones", nargs="+", choices=["yes", "no"], default=["yes"])
    parser.add_argument("--trees", nargs="+", choices=["yes", "no"], default=["yes"])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--alerts", type=int, default=1800)
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--partitions", type=int, default=45)
    parser.add_argument(
        "--latency-order",
        choices=["staggered", "interleaved"],
        default="staggered",
        help="the paced stream's order (alert_order): interleaved puts every object's first output at once",
    )
    parser.add_argument(
        "--waits",
        nargs="+",
        choices=["short", "defaults"],
        default=["short"],
        help="short: the demo's fetch and batch waits (10, 20 ms); defaults: the service's (100, 50 ms)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "service_cpu.json")
    args = parser.parse_args()
    variants = [
        Variant(p, t, s == "yes", h == "yes", w)
        for w, h, s, p, t in itertools.product(
            args.waits, args.trees, args.share_backbones, args.prepare_processes, args.torch_threads
        )
    ]
    results = []
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        shipped = bundled_model_dir().resolve()
        rows = [(f"{m.name} ({'shipped' if m.resolve() == shipped else 'artifact'})", m) for m in args.models]
        rows += [
            (f"{net} (1 member, random weights)", random_artifact(Path(tmp) / net, net)) for net in args.nets
        ]
        args.runs_per_repeat = len(rows) * len(variants)
        run = 0
        for repeat in range(args.repeats):
            for label, model in rows:
                shift = repeat % len(variants)  # rotated: no variant always runs first or last
                for variant in variants[shift:] + variants[:shift]:
                    results.append(
                        measure(label, model, variant, broker.bootstrap_servers, Path(tmp), args, run)
                    )
                    run += 1
                    print(json.dumps(results[-1]), flush=True)
    report = {"benchmark": "service end to end (embedded broker)", "plugin_version": __version__,
              "code": code_version(),
              "arguments": {"alerts": args.alerts, "rate": args.rate, "seconds": args.seconds,
                            "latency_order": args.latency_order,
                            "partitions": args.partitions, "repeats": args.repeats,
                            "variants": [astuple(v) for v in variants]},
              "machine": {"cpu": platform.machine(), "python": platform.python_version(),
                          "torch": torch.__version__, "cores": os.cpu_count(),
                          "load_average_1min_after": round(os.getloadavg()[0], 2)},
              "summary": summarise(results, variants) if len(variants) > 1 else None,
              "results": results}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


def code_version() -> str:
    """The git commit of the code measured (``+dirty`` with uncommitted changes), for side-by-side runs."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")  # fmt: skip


if __name__ == "__main__":
    main()
