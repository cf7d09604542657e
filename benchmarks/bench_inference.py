"""Inference speed of the shipped ensemble on this CPU: the per-member path vs the stacked path, side by side.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_inference.py [--batches 1,16,64,256] [--options]
    PYTHONPATH=. .venv/bin/python benchmarks/bench_inference.py --per-net   # the README's per-net table
    PYTHONPATH=. .venv/bin/python benchmarks/bench_inference.py --net convention-triplet-small --members 5

Default: the shipped artifact (``broker_plugin/models/convention-default``, every member, trained weights);
``--net`` an ensemble of ``--members`` randomly initialised nets instead (same cost as trained weights), fed
science/template planes, times and photometry too when the net uses them.

- *incremental*: ``Predictor.update_steps`` on micro-batches of 1, 16, 64 and 256 objects whose caches hold
  60 frames, each appending one frame (what the service does per alert);
- *full*: ``Predictor.predict`` on windows of 99 frames (``--window``; offline classification);

each for the old per-member path (``stacked=False``) and the stacked path, with 2 and 1 intra-op threads.
Variants are timed in turns (A B C A B C ...), every turn long enough to be measured (at least
``--turn`` seconds), and the median turn is kept: shared-CPU noise hits all alike. Speed-ups are ratios
of medians. ``--options`` adds the other CPU options tried on the stacked path (convolution layout,
slice size, a 2-worker split, bf16 autocast, and with ``--compile`` / ``--onnx`` torch.compile and ONNX
Runtime; ``pip install -e ".[bench]"`` installs it). Writes ``benchmarks/results/inference_ensemble_cpu.json``
and prints a markdown table.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from broker_plugin.config import bundled_model_dir
from broker_plugin.inference import create_net
from broker_plugin.inference.artifact import load_artifact
from broker_plugin.inference.ensemble import StackedConvEntion
from broker_plugin.inference.history import history_features
from broker_plugin.inference.predictor import Predictor
from broker_plugin.inference.preprocess import FluxNormalisation, ModelInput, photometry_features
from broker_plugin.records import PhotometryHistory

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
SHIPPED = bundled_model_dir()
NETS = ["convention-paper", "convention-fixed", "convention-small", "cnn-lstm", "cnn-gru"]
HISTORY, WINDOW = 60, 99


def make_inputs(
    count: int, frames: int, band_offset: int, seed: int = 0, context: bool = False
) -> list[ModelInput]:
    """Random objects; with ``context``, also planes (some absent), photometry and irregular times."""
    rng = np.random.default_rng(seed)
    inputs = []
    for _ in range(count):
        x = rng.normal(size=(frames, 32, 32)).astype(np.float32)
        band = rng.integers(0, 6, frames).astype(np.int64) + band_offset
        if not context:
            inputs.append(ModelInput(x, band))
            continue
        presence = rng.random((frames, 2)) > 0.15
        aux = rng.normal(size=(frames, 2, 32, 32)).astype(np.float32) * presence[..., None, None]
        phot = photometry_features(rng.normal(0, 3000, frames), rng.uniform(50, 800, frames))
        mjd = 58000.0 + np.cumsum(rng.choice([0.02, 1.0, 3.0, 200.0], frames, p=[0.3, 0.4, 0.25, 0.05]))
        # Forced photometry on twice as many epochs as alerts: the rows a history net reads per output.
        m = 2 * frames
        points = PhotometryHistory.from_points(
            np.sort(rng.uniform(mjd[0] - 30.0, mjd[-1], m)), rng.integers(0, 6, m), rng.normal(0, 2000, m),
            rng.uniform(50, 800, m), rng.random(m) < 0.4,
        )  # fmt: skip
        rows = np.stack([history_features(points, float(t)) for t in mjd])
        inputs.append(ModelInput(x, band, aux, phot, presence, mjd, float(mjd[0]), history=rows))
    return inputs


def random_ensemble(name: str, members: int) -> SimpleNamespace:
    """An artifact-like ensemble of ``members`` randomly initialised ``name`` nets (eval mode)."""
    nets = []
    for seed in range(members):
        torch.manual_seed(seed)
        net = create_net(name)
        for module in net.modules():  # BatchNorm statistics as after training (not the identity)
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
        nets.append(net.eval())
    return SimpleNamespace(
        members=nets, model_id=f"random-{name}", normalisation=FluxNormalisation(),
        metadata={"net": {"name": name}},
    )  # fmt: skip


def with_threads(threads: int, fn: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        torch.set_num_threads(threads)
        return fn()

    return run


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, turn: float) -> dict[str, float]:
    """Return the median seconds per call of every ``fns`` entry, timed in turns."""
    calls = {}
    for name, fn in fns.items():
        fn()  # warm-up (oneDNN primitive caches, allocator)
        start = time.perf_counter()
        fn()
        calls[name] = max(1, math.ceil(turn / max(time.perf_counter() - start, 1e-6)))
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(calls[name]):
                fn()
            times[name].append((time.perf_counter() - start) / calls[name])
    return {name: statistics.median(t) for name, t in times.items()}


def max_prob_diff(a: list, b: list) -> float:
    """Largest |difference| of the probabilities of two lists of predictions (or step lists)."""
    flat = [(p, q) for x, y in zip(a, b, strict=True) for p, q in zip(x, y, strict=True)]
    return max(float(np.abs(p.probabilities - q.probabilities).max()) for p, q in flat)


class Workload:
    """Inputs and predictors of one artifact: incremental micro-batches and full windows."""

    def __init__(
        self, art: Any, max_batch: int, device: str = "cpu", bf16: bool = False, window: int = WINDOW
    ) -> None:
        common = {
            "model_id": art.model_id,
            "normalisation": art.normalisation,
            "device": device,
            "max_batch_size": max_batch,
            "bf16": bf16,
        }
        self.old = Predictor(art.members, stacked=False, **common)
        # The stacked pass with every member's own copy of a backbone they share (the cost without sharing).
        self.unshared = Predictor(art.members, share_backbones=False, **common)
        self.new = Predictor(art.members, **common)
        self.common = common
        self.art = art
        offset, context = self.new.band_offset, self.new.uses_context
        history = make_inputs(max_batch, HISTORY + 1, offset, seed=1, context=context)
        self.caches = [self.new.new_cache(h[:HISTORY]) for h in history]
        # A token row per member: the caches of the predictor that does not share backbones.
        self.unshared_caches = [self.unshared.new_cache(h[:HISTORY]) for h in history]
        self.frames = [h[HISTORY:] for h in history]
        self.windows = make_inputs(max_batch, window, offset, seed=2, context=context)

    def incremental(self, predictor: Predictor, batch: int) -> Callable[[], Any]:
        # The caches are not replaced: every call appends the 61st frame again (same work each time).
        caches = self.unshared_caches if predictor is self.unshared else self.caches
        return lambda: predictor.update_steps(caches[:batch], self.frames[:batch])

    def full(self, predictor: Predictor, batch: int) -> Callable[[], Any]:
        return lambda: predictor.predict(self.windows[:batch])


def measure_paths(
    work: Workload, batches: list[int], full_batches: list[int], threads: list[int], repeats: int, turn: float
) -> list[dict[str, Any]]:
    rows = []
    for path, sizes in (("incremental", batches), ("full", full_batches)):
        for batch in sizes:
            fns = {}
            for t in threads:
                for name, pred in (("old", work.old), ("unshared", work.unshared), ("new", work.new)):
                    fn = getattr(work, path)(pred, batch)
                    fns[f"{name}/{t}"] = with_threads(t, fn)
            sec = interleaved(fns, repeats, turn)
            for t in threads:
                old, unshared, new = sec[f"old/{t}"], sec[f"unshared/{t}"], sec[f"new/{t}"]
                rows.append(
                    {
                        "path": path,
                        "batch": batch,
                        "threads": t,
                        "old_objects_per_s": round(batch / old, 1),
                        "unshared_objects_per_s": round(batch / unshared, 1),
                        "new_objects_per_s": round(batch / new, 1),
                        "speedup": round(old / new, 2),
                        "sharing_speedup": round(unshared / new, 2),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    return rows


def equality(work: Workload) -> dict[str, float]:
    """Max |probability difference| stacked vs per-member on the benchmark inputs (both paths)."""
    n = min(64, len(work.caches))
    inc = max_prob_diff(
        [s for s, _ in work.old.update_steps(work.caches[:n], work.frames[:n])],
        [s for s, _ in work.new.update_steps(work.caches[:n], work.frames[:n])],
    )
    full = max_prob_diff(
        [[p] for p in work.old.predict(work.windows[:n])], [[p] for p in work.new.predict(work.windows[:n])]
    )
    return {"incremental_max_abs_prob_diff": inc, "full_max_abs_prob_diff": full}


def split_workers(work: Workload, batch: int) -> Callable[[], Any]:
    """Two Python threads with one intra-op thread each, half of the objects each."""
    pool = ThreadPoolExecutor(2, initializer=lambda: torch.set_num_threads(1))
    half = batch // 2
    parts = [(0, half), (half, batch)]

    def run() -> None:
        futures = [pool.submit(work.new.update_steps, work.caches[a:b], work.frames[a:b]) for a, b in parts]
        for f in futures:
            f.result()

    return run


def measure_options(
    work: Workload, batch: int, repeats: int, turn: float, compile_: bool, onnx: bool
) -> list[dict[str, Any]]:
    """Other CPU options on the stacked path, relative to its defaults (2 threads)."""
    ens = work.new.ensemble
    assert isinstance(ens, StackedConvEntion)
    defaults = {"conv_mode": ens.conv_mode, "chunk_elements": ens.chunk_elements}

    def configured(threads: int = 2, **cfg: Any) -> Callable[[], Any]:
        fn = work.incremental(work.new, batch)

        def run() -> Any:
            torch.set_num_threads(threads)
            for key, value in {**defaults, **cfg}.items():
                setattr(ens, key, value)
            return fn()

        return run

    fns = {
        "default (2 threads)": configured(),
        "1 thread": configured(1),
        "2 workers x 1 thread": split_workers(work, batch),
        "conv_mode=members": configured(conv_mode="members"),
        "conv_mode=grouped": configured(conv_mode="grouped"),
        "slices of 256k elements": configured(chunk_elements=1 << 18),
        "slices of 4M elements": configured(chunk_elements=1 << 22),
        "no slicing": configured(chunk_elements=1 << 40),
    }
    bf16 = Predictor(work.art.members, **{**work.common, "bf16": True})
    fns["bf16 autocast"] = with_threads(2, work.incremental(bf16, batch))
    extra: dict[str, dict[str, Any]] = {}
    ref = [s for s, _ in work.new.update_steps(work.caches[:batch], work.frames[:batch])]
    got = [s for s, _ in bf16.update_steps(work.caches[:batch], work.frames[:batch])]
    extra["bf16 autocast"] = {
        "max_abs_prob_diff": max_prob_diff(ref, got),
        "cpu_bf16": "avx512_bf16" in _cpu_flags() or "amx_bf16" in _cpu_flags(),
    }
    if compile_:
        compiled = Predictor(work.art.members, **work.common)
        cens = compiled.ensemble
        start = time.perf_counter()
        cens._classify = torch.compile(cens._classify, dynamic=True)
        cens.front_end = torch.compile(cens.front_end, dynamic=True)
        got = [s for s, _ in compiled.update_steps(work.caches[:batch], work.frames[:batch])]
        extra["torch.compile"] = {
            "compile_s": round(time.perf_counter() - start, 1),
            "max_abs_prob_diff": max_prob_diff(ref, got),
        }
        fns["torch.compile"] = with_threads(2, work.incremental(compiled, batch))
    sec = interleaved(fns, repeats, turn)
    base = sec["default (2 threads)"]
    rows = []
    for name, s in sec.items():
        rows.append(
            {
                "option": name,
                "batch": batch,
                "objects_per_s": round(batch / s, 1),
                "relative_to_default": round(base / s, 2),
                **extra.get(name, {}),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    for key, value in defaults.items():
        setattr(ens, key, value)
    if onnx:
        rows += measure_onnx(ens, repeats, turn)
    return rows


def measure_onnx(ens: StackedConvEntion, repeats: int, turn: float) -> list[dict[str, Any]]:
    """ONNX Runtime (1 thread) vs torch (1 thread) on the stacked blocks + head and the front end."""
    try:
        import onnxruntime as ort
    except ImportError:
        return [{"option": "onnxruntime", "error": "not installed"}]
    torch.set_num_threads(1)
    b, length = 15, 21  # one slice of the incremental benchmark
    tokens = torch.randn(ens.n_backbones, b, length, *(ens.token_shape[p] for p in ens.work_perm))
    chunks = torch.randn(32, ens.chunk_size, ens.stamp, ens.stamp)
    bands = torch.randint(1, 7, (32, ens.chunk_size))
    front_args: tuple[torch.Tensor, ...] = (chunks, bands)
    if ens.front_end.planes > 1:  # the science and template planes beside the difference
        front_args += (torch.randn(32, ens.chunk_size, 2, ens.stamp, ens.stamp),)
    blocks_args: tuple[torch.Tensor, ...] = (tokens,)
    if ens.history is not None:  # the members' encoded histories, as the head reads them
        width = ens.head_w1_history.shape[1]
        blocks_args += (torch.randn(ens.n_members, b, width),)

    class Blocks(torch.nn.Module):
        def forward(self, t: torch.Tensor, history: torch.Tensor | None = None) -> torch.Tensor:
            return ens._classify(t, None, history)

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    rows = []
    for name, module, args in (
        ("blocks+head", Blocks(), blocks_args),
        ("front end", ens.front_end, front_args),
    ):
        program = torch.onnx.export(module, args, dynamo=True, verbose=False)
        buffer = io.BytesIO(program.model_proto.SerializeToString())
        session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
        feed = {i.name: a.numpy() for i, a in zip(session.get_inputs(), args, strict=True)}
        with torch.inference_mode():
            ref = module(*args).numpy()
        diff = float(np.abs(session.run(None, feed)[0] - ref).max())

        def run_torch(module: torch.nn.Module = module, args: tuple = args) -> None:
            with torch.inference_mode():
                module(*args)

        sec = interleaved(
            {"torch": run_torch, "ort": lambda s=session, f=feed: s.run(None, f)}, repeats, turn
        )
        rows.append(
            {
                "option": f"onnxruntime {name}",
                "threads": 1,
                "torch_ms": round(sec["torch"] * 1e3, 2),
                "onnxruntime_ms": round(sec["ort"] * 1e3, 2),
                "relative_to_torch": round(sec["torch"] / sec["ort"], 2),
                "max_abs_diff": diff,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"{report['members']}-member `{report['net']}` ({report['artifact']}), float32, "
        f"full windows of {report['window_frames']} frames, "
        f"load average {report['load_average_1min']:.1f} while measured; objects/s, median of "
        f"{report['repeats']} interleaved turns.",
        "",
        f"The {report['members']} members have {report.get('backbones', report['members'])} distinct "
        "backbone(s). Objects/s: member by member; stacked, every member running its own copy of its "
        "backbone; stacked, every backbone run once (the default).",
        "",
        "| path | objects per call | threads | member by member | stacked, copy per member | "
        "stacked, shared | speed-up vs member by member | from sharing |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["paths"]:
        lines.append(
            f"| {r['path']} | {r['batch']} | {r['threads']} | {r['old_objects_per_s']} | "
            f"{r.get('unshared_objects_per_s', '-')} | {r['new_objects_per_s']} | {r['speedup']}x | "
            f"{r.get('sharing_speedup', '-')}x |"
        )
    if report.get("options"):
        lines += [
            "",
            "| option (stacked, incremental) | objects/s | vs default | max abs probability difference |",
            "|---|---:|---:|---:|",
        ]
        for r in report["options"]:
            diff = r.get("max_abs_prob_diff", r.get("max_abs_diff"))
            shown = "-" if diff is None else f"{diff:.1e}"
            if "objects_per_s" in r:
                lines.append(
                    f"| {r['option']} | {r['objects_per_s']} | {r['relative_to_default']}x | {shown} |"
                )
            elif "relative_to_torch" in r:
                lines.append(
                    f"| {r['option']} (1 thread) | {r['onnxruntime_ms']} ms vs torch "
                    f"{r['torch_ms']} ms | {r['relative_to_torch']}x | {shown} (outputs) |"
                )
    return "\n".join(lines)


def per_net(args: argparse.Namespace) -> None:
    """The README's table: one randomly initialised member per net, full vs incremental (batch 8)."""
    rows = []
    for name in args.nets.split(","):
        torch.manual_seed(0)
        net = create_net(name).eval()
        pred = Predictor(
            [net],
            model_id="bench",
            normalisation=FluxNormalisation(),
            device="cpu",
            max_batch_size=args.per_net_batch,
        )
        full_inputs = make_inputs(args.per_net_batch, WINDOW, net.band_offset)
        history = make_inputs(args.per_net_batch, HISTORY + 1, net.band_offset, seed=1)
        caches = [pred.new_cache(h[:HISTORY]) for h in history]
        sec = interleaved(
            {
                "full": lambda p=pred, f=full_inputs: p.predict(f),
                "incremental": lambda p=pred, c=caches, h=history: p.update(c, [x[HISTORY:] for x in h]),
            },
            args.repeats,
            args.turn,
        )
        seq_s, alerts_s = args.per_net_batch / sec["full"], args.per_net_batch / sec["incremental"]
        rows.append(
            {
                "net": name,
                "parameters": sum(p.numel() for p in net.parameters()),
                "batch": args.per_net_batch,
                "dtype": "float32",
                "full_sequences_per_s": round(seq_s, 2),
                "incremental_alerts_per_s": round(alerts_s, 2),
                "incremental_over_full": round(alerts_s / seq_s, 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    report = {
        "benchmark": "inference_cpu",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "load_average_1min": os.getloadavg()[0],
        "window_frames": WINDOW,
        "incremental_history_frames": HISTORY,
        "results": rows,
    }
    out = args.output or RESULTS / "inference_cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", type=Path, default=SHIPPED)
    parser.add_argument("--net", default=None, help="random-weight ensemble of this net, not the artifact")
    parser.add_argument("--members", type=int, default=5, help="with --net: ensemble members")
    parser.add_argument("--window", type=int, default=WINDOW, help="frames per full-recompute window")
    parser.add_argument("--batches", default="1,16,64,256", help="objects per incremental call")
    parser.add_argument("--full-batches", default="1,16,64", help="objects per full-recompute call")
    parser.add_argument("--threads", default="2,1", help="intra-op thread counts to compare")
    parser.add_argument("--repeats", type=int, default=7, help="turns per variant (the median is kept)")
    parser.add_argument("--turn", type=float, default=0.3, help="least seconds per turn")
    parser.add_argument("--options", action="store_true", help="also measure the other CPU options")
    parser.add_argument("--options-batch", type=int, default=64)
    parser.add_argument("--compile", action="store_true", help="with --options: torch.compile (minutes)")
    parser.add_argument("--onnx", action="store_true", help="with --options: ONNX Runtime, if installed")
    parser.add_argument("--per-net", action="store_true", help="the README's per-net table instead")
    parser.add_argument("--nets", default=",".join(NETS))
    parser.add_argument("--per-net-batch", type=int, default=8)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    if args.per_net:
        per_net(args)
        return
    threads0 = torch.get_num_threads()
    load_before = os.getloadavg()[0]
    art = random_ensemble(args.net, args.members) if args.net else load_artifact(args.artifact)
    batches = [int(b) for b in args.batches.split(",")]
    full_batches = [int(b) for b in args.full_batches.split(",")]
    work = Workload(art, max(batches + full_batches + [args.options_batch]), window=args.window)
    paths = measure_paths(
        work, batches, full_batches, [int(t) for t in args.threads.split(",")], args.repeats, args.turn
    )
    options = []
    if args.options:
        options = measure_options(work, args.options_batch, args.repeats, args.turn, args.compile, args.onnx)
    torch.set_num_threads(threads0)
    flags = _cpu_flags()
    report = {
        "benchmark": "inference_ensemble_cpu",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16": bool(flags & {"avx512_bf16", "amx_bf16"}),
        "load_average_1min": round((load_before + os.getloadavg()[0]) / 2, 2),
        "artifact": "random weights"
        if args.net
        else str(args.artifact.relative_to(ROOT) if args.artifact.is_relative_to(ROOT) else args.artifact),
        "model_id": art.model_id,
        "net": art.metadata["net"]["name"],
        "members": len(art.members),
        "backbones": work.new.engine.n_backbones,
        "history_frames": HISTORY,
        "window_frames": args.window,
        "repeats": args.repeats,
        "turn_s": args.turn,
        "max_batch_size": work.new.max_batch_size,
        "stacked_defaults": {
            k: getattr(work.new.ensemble, k, None) for k in ("conv_mode", "chunk_elements", "embed_step")
        },
        "equality": equality(work),
        "paths": paths,
        "options": options,
    }
    table = markdown(report)
    report["markdown"] = table
    name = f"inference_ensemble_cpu_{args.net}.json" if args.net else "inference_ensemble_cpu.json"
    out = args.output or RESULTS / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(table)


if __name__ == "__main__":
    main()
