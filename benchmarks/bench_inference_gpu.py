"""The inference benchmark on a CUDA GPU: shipped ensemble and paper net, fp32 and bf16, batch 1..1024.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_inference_gpu.py [--batches 1,4,16,64,256,1024]
    PYTHONPATH=. .venv/bin/python benchmarks/bench_inference_gpu.py --smoke   # every code path, on the CPU

Models: ``shipped`` (``broker_plugin/models/convention-default``, every member, trained weights) and
``convention-paper`` (the authors' architecture, ``--paper-members`` randomly initialised members with
BatchNorm statistics set as after training: speed does not depend on the weights). For each model, dtype
(float32, bf16 autocast) and batch size, like ``bench_inference.py``: *incremental* (one new frame for
each object of a 60-frame history) and *full* (99-frame windows) objects/s of the per-member path, the
stacked path with its CUDA settings (one grouped convolution per layer, no slicing) and the stacked path
with its CPU settings; speed-ups are ratios of medians of interleaved turns, each synchronised. A batch
that runs out of GPU memory is recorded as such and the sweep goes on.

Without CUDA it says so and exits 0, unless ``--smoke`` (a tiny CPU run that checks the code paths).
Writes ``benchmarks/results/inference_gpu.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_inference import RESULTS, SHIPPED, Workload, interleaved, max_prob_diff

from broker_plugin.inference import create_net
from broker_plugin.inference.artifact import Artifact, load_artifact
from broker_plugin.inference.preprocess import FluxNormalisation

BATCHES = [1, 4, 16, 64, 256, 1024]
#: The stacked path's CPU settings (slices sized for CPU caches, per-member convolutions).
CPU_SETTINGS = {"conv_mode": "auto", "chunk_elements": 1 << 20, "embed_step": 32}


def paper_artifact(members: int, overrides: dict[str, Any]) -> Artifact:
    """A random ``convention-paper`` ensemble with trained-like BatchNorm statistics."""
    nets = []
    for seed in range(members):
        torch.manual_seed(seed)
        net = create_net("convention-paper", **overrides)
        for module in net.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
        nets.append(net.eval())
    meta = {"net": {"name": "convention-paper", "args": nets[0].net_args}}
    return Artifact(nets, meta, f"paper-x{members}", FluxNormalisation())


def synced(fn: Callable[[], Any], device: torch.device) -> Callable[[], Any]:
    def run() -> Any:
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return out

    return run


def with_settings(ensemble: Any, settings: dict[str, Any], fn: Callable[[], Any]) -> Callable[[], Any]:
    """Return ``fn`` run with the stacked ensemble's slicing and convolution ``settings``."""

    def run() -> Any:
        for key, value in settings.items():
            setattr(ensemble, key, value)
        return fn()

    return run


def sweep(
    name: str, art: Artifact, device: torch.device, batches: list[int], args: argparse.Namespace
) -> list:
    rows: list[dict[str, Any]] = []
    for dtype in args.dtypes.split(","):
        bf16 = dtype == "bf16"
        try:
            work = Workload(art, max(batches), device=str(device), bf16=bf16)
        except torch.cuda.OutOfMemoryError:
            rows.append({"model": name, "dtype": dtype, "error": "out of memory while building caches"})
            continue
        device_settings = {k: getattr(work.new.ensemble, k) for k in CPU_SETTINGS}
        for path in ("incremental", "full"):
            for batch in batches:
                row: dict[str, Any] = {
                    "model": name,
                    "members": len(art.members),
                    "dtype": dtype,
                    "path": path,
                    "batch": batch,
                }
                try:
                    old = getattr(work, path)(work.old, batch)
                    new = getattr(work, path)(work.new, batch)

                    fns = {
                        "old": synced(old, device),
                        "new": synced(with_settings(work.new.ensemble, device_settings, new), device),
                        "new_cpu_settings": synced(
                            with_settings(work.new.ensemble, CPU_SETTINGS, new), device
                        ),
                    }
                    sec = interleaved(fns, args.repeats, args.turn)
                    with_settings(work.new.ensemble, device_settings, lambda: None)()
                    row.update(
                        {
                            "old_objects_per_s": round(batch / sec["old"], 1),
                            "new_objects_per_s": round(batch / sec["new"], 1),
                            "new_cpu_settings_objects_per_s": round(batch / sec["new_cpu_settings"], 1),
                            "speedup": round(sec["old"] / sec["new"], 2),
                        }
                    )
                    if path == "incremental":
                        a = [s for s, _ in work.old.update_steps(work.caches[:batch], work.frames[:batch])]
                        b = [s for s, _ in work.new.update_steps(work.caches[:batch], work.frames[:batch])]
                    else:
                        a = [[p] for p in work.old.predict(work.windows[:batch])]
                        b = [[p] for p in work.new.predict(work.windows[:batch])]
                    row["max_abs_prob_diff"] = max_prob_diff(a, b)
                except torch.cuda.OutOfMemoryError:
                    row["error"] = "out of memory"
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="shipped,convention-paper")
    parser.add_argument("--artifact", type=Path, default=SHIPPED)
    parser.add_argument("--paper-members", type=int, default=5)
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)))
    parser.add_argument("--dtypes", default="float32,bf16", help="float32 and/or bf16 (autocast)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--turn", type=float, default=0.2, help="least seconds per timed turn")
    parser.add_argument("--smoke", action="store_true", help="a tiny CPU run of every code path (no CUDA)")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    paper_overrides: dict[str, Any] = {}
    if args.smoke:
        device = torch.device("cpu")
        # bf16 autocast is 15x slower on CPUs without bf16 units: the test of the stacked path covers it.
        args.batches, args.repeats, args.turn, args.paper_members, args.dtypes = "2", 1, 0.0, 2, "float32"
        paper_overrides = {"channels": (8, 16, 16, 8)}  # the paper code paths at a fraction of the cost
    elif not torch.cuda.is_available():
        print(
            "bench_inference_gpu: no CUDA device here, nothing measured; run it on a GPU machine "
            "(bench_inference.py measures the CPU; --smoke checks this script's code paths on the CPU)"
        )
        return 0
    else:
        device = torch.device("cuda")
        torch.backends.cudnn.benchmark = True
    batches = [int(b) for b in args.batches.split(",")]
    rows = []
    for name in args.models.split(","):
        if name == "shipped":
            art = load_artifact(args.artifact)
            if args.smoke:  # two members are enough to check the code paths
                art = Artifact(art.members[:2], art.metadata, art.model_id, art.normalisation)
        else:
            art = paper_artifact(args.paper_members, paper_overrides)
        rows += sweep(name, art, device, batches, args)
    report = {
        "benchmark": "inference_gpu",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "torch": torch.__version__,
        "smoke": args.smoke,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (smoke run)",
        "history_frames": 60,
        "window_frames": 99,
        "repeats": args.repeats,
        "results": rows,
    }
    out = args.output or RESULTS / "inference_gpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
