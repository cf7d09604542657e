"""``python -m train <stage> --config FILE``: build the model offline.

Stages are subcommands; each reads the sections of the TOML config it needs. Implemented: ``simulate``
(the labelled image-time-series dataset, optionally ``--preview`` PNGs) and ``alerts`` (the simulated
objects as Rubin alert files plus a truth table). ``pretrain``, ``finetune``, ``ensemble``, ``evaluate``,
``export`` and ``all`` (:mod:`train.stages`); ``--dotted.key=value`` arguments override the config.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from train.config import TrainConfig, load_config

Stage = Callable[[TrainConfig, argparse.Namespace], int]


def _simulation_config(config: TrainConfig, args: argparse.Namespace) -> TrainConfig:
    sim = config.simulation
    if args.seed is not None:
        sim = sim.model_copy(update={"seed": args.seed})
    return config.model_copy(update={"simulation": sim})


def run_simulate(config: TrainConfig, args: argparse.Namespace) -> int:
    """Simulate the dataset (and previews)."""
    from train.data.simulate import simulate

    config = _simulation_config(config, args)
    out = Path(args.out or config.data_dir)
    started = time.perf_counter()
    manifest = simulate(config.simulation, out, workers=args.workers)
    elapsed = time.perf_counter() - started
    n_obj, n_frames = manifest["n_objects"], manifest["n_frames"]
    print(f"simulated {n_obj} objects, {n_frames} frames into {out} in {elapsed:.1f} s")
    print(f"class counts: {manifest['class_counts']}  sha256: {manifest['sha256'][:16]}")
    if args.preview:
        from train.data.preview import write_previews

        for path in write_previews(out, out / "preview"):
            print(f"preview: {path}")
    return 0


def run_alerts(config: TrainConfig, args: argparse.Namespace) -> int:
    """Write the simulated objects as Rubin alert files with a truth table."""
    from train.data.alerts import write_alerts

    config = _simulation_config(config, args)
    out = Path(args.out or Path(config.data_dir) / "alerts")
    summary = write_alerts(
        config.simulation, out, max_objects=args.objects, per_class=args.per_class, min_alerts=args.min_alerts
    )
    print(f"wrote {summary['n_alerts']} alerts of {summary['n_objects']} objects into {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser (one subcommand per stage)."""
    parser = argparse.ArgumentParser(prog="python -m train", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="stage", required=True)

    def stage(name: str, func: Stage, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        p.add_argument("--config", required=True, help="TOML config file (see train/configs/).")
        p.add_argument("--seed", type=int, default=None, help="Override the config's master seed.")
        p.add_argument("--out", default=None, help="Output folder (default: from the config).")
        p.set_defaults(func=func)
        return p

    sim = stage("simulate", run_simulate, "simulate the labelled image-time-series dataset")
    sim.add_argument("--workers", type=int, default=None, help="Worker processes (default: config).")
    sim.add_argument("--preview", action="store_true", help="Also write one PNG per class.")
    alerts = stage("alerts", run_alerts, "write simulated objects as Rubin alert files + truth table")
    alerts.add_argument("--objects", type=int, default=None, help="At most this many objects.")
    alerts.add_argument("--per-class", type=int, default=None, help="At most this many objects per class.")
    alerts.add_argument("--min-alerts", type=int, default=0, help="Skip objects with fewer alerts.")
    from train.stages import register

    register(stage)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    parser = build_parser()
    args, overrides = parser.parse_known_args(argv)
    try:
        config = load_config(args.config, overrides)
    except ValueError as exc:
        parser.error(str(exc))
    return int(args.func(config, args))


if __name__ == "__main__":
    sys.exit(main())
