"""Simulator cost per object and per stage, and the seed-size (8,249 objects) time it implies.

Usage: ``python benchmarks/bench_simulate.py [--n 200] [--out benchmarks/results/simulate.json]``

Times the first ``n`` objects of the default config in this one process, stage by stage: physics and
cadence (``make_object``), the Gaussian-mixture renderer + noise (``render``), and the serving resampler
(``ResamplePlan``: building each visit's plan and applying it), in CPU seconds (the machine is shared;
CPU time is what one core spends) and wall seconds. The seed-size estimate divides the total CPU time by
the 2 worker processes ``simulate`` runs by default.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from broker_plugin import __version__
from broker_plugin.stamps import ResamplePlan
from broker_plugin_train.config import load_config
from broker_plugin_train.data import render as render_mod
from broker_plugin_train.data.cadence import Survey
from broker_plugin_train.data.population import catalogue, make_object
from broker_plugin_train.data.simulate import pixel_rng

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "simulate.json")
    args = parser.parse_args()
    config = load_config(ROOT / "broker_plugin_train" / "configs" / "default.toml").simulation
    survey = Survey(config.survey, config.seed)
    entries = catalogue(config)[: args.n]
    make_object(config, survey, entries[0])  # load SALT3 and the filters once, outside the timing

    cpu = {"physics": 0.0, "render": 0.0, "resample": 0.0}
    originals = {name: ResamplePlan.__dict__[name] for name in ("build", "apply")}

    def timed(function):  # type: ignore[no-untyped-def]
        def wrapper(*a, **k):  # type: ignore[no-untyped-def]
            t = time.process_time()
            out = function(*a, **k)
            cpu["resample"] += time.process_time() - t
            return out

        return wrapper

    ResamplePlan.build = classmethod(timed(originals["build"].__func__))  # type: ignore[method-assign]
    ResamplePlan.apply = timed(originals["apply"])  # type: ignore[method-assign]
    frames = 0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for entry in entries:
        t = time.process_time()
        obj = make_object(config, survey, entry)
        cpu["physics"] += time.process_time() - t
        t = time.process_time()
        out = render_mod.render_frames(obj, config.render, pixel_rng(config.seed, entry.index))
        cpu["render"] += time.process_time() - t
        frames += len(out["frames"])
    for name, original in originals.items():
        setattr(ResamplePlan, name, original)
    wall, total = time.perf_counter() - wall0, time.process_time() - cpu0
    cpu["render"] -= cpu["resample"]
    n_seed = config.population.counts.total
    result = {
        "benchmark": "simulate",
        "plugin_version": __version__,
        "machine": {"cpu": platform.machine(), "python": platform.python_version()},
        "objects": len(entries),
        "frames": frames,
        "ms_cpu_per_object": {k: round(1e3 * v / len(entries), 2) for k, v in cpu.items()}
        | {"total": round(1e3 * total / len(entries), 2)},
        "ms_cpu_per_frame": round(1e3 * total / frames, 3),
        "wall_seconds": round(wall, 2),
        "seed_size_objects": n_seed,
        "seed_size_minutes_2_workers_estimate": round(total / len(entries) * n_seed / 2 / 60, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
