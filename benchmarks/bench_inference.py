"""Inference throughput on this CPU: full-sequence sequences/s vs incremental alerts/s, side by side.

    .venv/bin/python benchmarks/bench_inference.py [--seconds 3] [--batch 8] [--nets a,b]

For each net (one member, eval, float32): *full* classifies windows of 99 frames from scratch;
*incremental* appends one frame to each of ``batch`` objects whose caches already hold 60 frames
(one front-end chunk + the blocks per alert, results identical to full). The two are measured in
alternation, twice each, and the better run is kept, so shared-CPU noise hits both alike. Writes
``benchmarks/results/inference_cpu.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from broker_plugin.inference import create_net
from broker_plugin.inference.predictor import Predictor
from broker_plugin.inference.preprocess import FluxNormalisation, ModelInput

NETS = ["convention-paper", "convention-fixed", "convention-small", "cnn-lstm", "cnn-gru"]
RESULTS = Path(__file__).parent / "results"


def make_inputs(count: int, frames: int, band_offset: int, seed: int = 0) -> list[ModelInput]:
    rng = np.random.default_rng(seed)
    return [
        ModelInput(rng.normal(size=(frames, 32, 32)).astype(np.float32),
                   rng.integers(0, 6, frames).astype(np.int64) + band_offset)
        for _ in range(count)
    ]  # fmt: skip


def rate(fn, items: int, seconds: float, sync=lambda: None) -> float:
    """Return items/s of ``fn`` (after one warm-up call) over at least ``seconds``."""
    fn()
    sync()
    start, calls = time.perf_counter(), 0
    while (elapsed := time.perf_counter() - start) < seconds or calls < 2:
        fn()
        sync()
        calls += 1
    return items * calls / elapsed


def measure(name: str, batch: int, seconds: float, device: str = "cpu", bf16: bool = False) -> dict:
    """Measure full and incremental throughput of net ``name`` at ``batch`` objects per call."""
    torch.manual_seed(0)
    net = create_net(name).eval()
    predictor = Predictor([net], model_id="bench", normalisation=FluxNormalisation(), device=device,
                          bf16=bf16, max_batch_size=batch)  # fmt: skip
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    full_inputs = make_inputs(batch, 99, net.band_offset)
    history = make_inputs(batch, 61, net.band_offset, seed=1)
    caches = [predictor.new_cache(h[:60]) for h in history]
    new = [h[60:61] for h in history]

    def full() -> None:
        predictor.predict(full_inputs)

    def incremental() -> None:
        predictor.update(caches, new)  # caches are not replaced: every call appends the 61st frame

    runs = {"full": [], "incremental": []}
    for _ in range(2):
        runs["full"].append(rate(full, batch, seconds / 2, sync))
        runs["incremental"].append(rate(incremental, batch, seconds / 2, sync))
    seq_s, alerts_s = max(runs["full"]), max(runs["incremental"])
    return {
        "net": name, "parameters": sum(p.numel() for p in net.parameters()), "batch": batch,
        "dtype": "bf16-autocast" if bf16 else "float32", "full_sequences_per_s": round(seq_s, 2),
        "incremental_alerts_per_s": round(alerts_s, 2), "incremental_over_full": round(alerts_s / seq_s, 1),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement pair [s]")
    parser.add_argument("--batch", type=int, default=8, help="objects per forward pass")
    parser.add_argument("--nets", default=",".join(NETS))
    parser.add_argument("--output", type=Path, default=RESULTS / "inference_cpu.json")
    args = parser.parse_args()
    rows = []
    for name in args.nets.split(","):
        rows.append(measure(name, args.batch, args.seconds))
        print(json.dumps(rows[-1]))
    report = {
        "benchmark": "inference_cpu", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(), "load_average_1min": os.getloadavg()[0],
        "window_frames": 99, "incremental_history_frames": 60, "results": rows,
    }  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
