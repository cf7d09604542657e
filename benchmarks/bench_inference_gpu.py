"""The inference benchmark on a CUDA GPU: batch sizes 1..1024, float32 and bf16 autocast.

    .venv/bin/python benchmarks/bench_inference_gpu.py [--seconds 2] [--nets convention-paper,...]

Same measurements as ``bench_inference.py`` (full sequences/s, incremental alerts/s, their ratio),
per batch size and dtype, synchronising the device around every timed call. A batch size that runs
out of GPU memory is recorded as such and the sweep goes on. Writes
``benchmarks/results/inference_gpu.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_inference import NETS, RESULTS, measure

BATCHES = [1, 4, 16, 64, 256, 1024]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement pair [s]")
    parser.add_argument("--nets", default=",".join(NETS))
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)))
    parser.add_argument("--output", type=Path, default=RESULTS / "inference_gpu.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA device: run bench_inference.py for the CPU")
    torch.backends.cudnn.benchmark = True
    rows = []
    for name in args.nets.split(","):
        for bf16 in (False, True):
            for batch in map(int, args.batches.split(",")):
                try:
                    row = measure(name, batch, args.seconds, device="cuda", bf16=bf16)
                except torch.cuda.OutOfMemoryError:
                    row = {"net": name, "batch": batch, "dtype": "bf16-autocast" if bf16 else "float32",
                           "error": "out of memory"}  # fmt: skip
                torch.cuda.empty_cache()
                rows.append(row)
                print(json.dumps(row), flush=True)
    report = {
        "benchmark": "inference_gpu", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "torch": torch.__version__, "device": torch.cuda.get_device_name(), "window_frames": 99,
        "incremental_history_frames": 60, "results": rows,
    }  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
