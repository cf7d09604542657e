"""Offline model building: ``broker-plugin-train <stage> --config FILE`` (``python -m broker_plugin_train``).

Stages are subcommands; each reads the sections of the TOML config it needs. Implemented: ``simulate``
(the labelled image-time-series dataset, optionally ``--preview`` PNGs) and ``alerts`` (the simulated
objects as Rubin alert files plus a truth table). ``pretrain``, ``finetune``, ``ensemble``, ``evaluate``,
``export``, ``all`` and ``compare`` (:mod:`broker_plugin_train.stages`), ``ablation``
(:mod:`broker_plugin_train.ablation`);
``--dotted.key=value`` arguments override the config.

``--seed N`` means the seed of what the stage makes: ``simulation.seed`` for ``simulate`` and
``alerts``, ``training.seed`` (folds, initialisation, sampling, augmentation) for every model-building
stage, where it is shorthand for ``--training.seed=N`` and wins over it.

A missing config file, a malformed override or an invalid value is one ``error:`` line naming the
dotted key, exit status 2 (``--debug`` adds the traceback). Progress bars with rate and ETA go to stderr
when it is a terminal.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from broker_plugin.cli import (
    UserError,
    add_debug_option,
    definition_list,
    help_paragraphs,
    program_name,
    report_user_error,
)
from broker_plugin.progress import logs_above_bars
from broker_plugin_train.config import TrainConfig, bundled_configs, load_config

Stage = Callable[[TrainConfig, argparse.Namespace], int]
#: The config key ``--seed`` sets for the model-building stages.
TRAINING_SEED = "training.seed"


def _simulation_config(config: TrainConfig, args: argparse.Namespace) -> TrainConfig:
    sim = config.simulation
    if args.seed is not None:
        sim = sim.model_copy(update={"seed": args.seed})
    return config.model_copy(update={"simulation": sim})


def run_simulate(config: TrainConfig, args: argparse.Namespace) -> int:
    """Simulate the dataset (and previews)."""
    from broker_plugin_train.data.simulate import simulate

    config = _simulation_config(config, args)
    out = Path(args.out or config.data_dir)
    started = time.perf_counter()
    manifest = simulate(config.simulation, out, workers=args.workers)
    elapsed = time.perf_counter() - started
    n_obj, n_frames = manifest["n_objects"], manifest["n_frames"]
    print(f"simulated {n_obj} objects, {n_frames} frames into {out} in {elapsed:.1f} s")
    print(f"class counts: {manifest['class_counts']}  sha256: {manifest['sha256'][:16]}")
    if args.preview:
        from broker_plugin_train.data.preview import write_previews

        for path in write_previews(out, out / "preview"):
            print(f"preview: {path}")
    return 0


def run_alerts(config: TrainConfig, args: argparse.Namespace) -> int:
    """Write the simulated objects as Rubin alert files with a truth table."""
    from broker_plugin_train.data.alerts import write_alerts

    config = _simulation_config(config, args)
    out = Path(args.out or Path(config.data_dir) / "alerts")
    summary = write_alerts(
        config.simulation, out, max_objects=args.objects, per_class=args.per_class, min_alerts=args.min_alerts
    )
    print(f"wrote {summary['n_alerts']} alerts of {summary['n_objects']} objects into {out}")
    return 0


def overrides_help() -> str:
    """How to change config values on the command line, and the bundled configs (help epilog)."""
    names = ", ".join(sorted(bundled_configs()))
    usage = (
        "Config overrides: any value of the config can be set after the stage's options as"
        " --dotted.key=value, the key as in the TOML file (sections joined by dots) and the value in TOML"
        " syntax (a bare word is a string). They are applied on top of the file, in order, and validated"
        " like it: an unknown key or a bad value is one error line naming the key. For example:"
    )
    example = [("--training.pretrain.epochs=3 --simulation.seed=7", ""),
               ('--training.finetune.prefix_frames="[6, 24]" --training.net.name=cnn-gru', "")]  # fmt: skip
    config = (
        f"--config takes a TOML file or the name of a bundled config: {names} (e.g. --config default;"
        " the files are in broker_plugin_train/configs/)."
    )
    return "\n".join([help_paragraphs(usage), definition_list(example), "", help_paragraphs(config)])


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser (one subcommand per stage)."""
    raw = argparse.RawDescriptionHelpFormatter
    epilog = overrides_help()
    parser = argparse.ArgumentParser(
        prog=program_name("broker_plugin_train", "broker-plugin-train"),
        description=help_paragraphs(__doc__),
        epilog=epilog,
        formatter_class=raw,
    )
    add_debug_option(parser, top=True)
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    configs = ", ".join(sorted(bundled_configs()))

    def stage(name: str, func: Stage, help_: str, *, seed_key: str | None = None) -> argparse.ArgumentParser:
        """Add stage ``name``; ``seed_key``: the config key ``--seed`` overrides (None: the stage's own)."""
        description = help_paragraphs(f"{help_[0].upper()}{help_[1:]}.")
        p = sub.add_parser(name, help=help_, description=description, epilog=epilog, formatter_class=raw)
        p.add_argument(
            "--config",
            required=True,
            metavar="FILE_OR_NAME",
            help=f"TOML config file, or the name of a bundled config ({configs}).",
        )
        if seed_key is None:
            seed_help = "Override the config's simulation seed (simulation.seed)."
        else:
            seed_help = (
                f"Override the config's {seed_key} (folds, initialisation, sampling, augmentation): "
                f"shorthand for --{seed_key}=N, and wins over it."
            )
        p.add_argument("--seed", type=int, default=None, help=seed_help)
        p.add_argument("--out", default=None, help="Output folder (default: from the config).")
        add_debug_option(p, top=False)
        p.set_defaults(func=func, seed_key=seed_key)
        return p

    sim = stage("simulate", run_simulate, "simulate the labelled image-time-series dataset")
    sim.add_argument("--workers", type=int, default=None, help="Worker processes (default: config).")
    sim.add_argument("--preview", action="store_true", help="Also write one PNG per class.")
    alerts = stage("alerts", run_alerts, "write simulated objects as Rubin alert files + truth table")
    alerts.add_argument("--objects", type=int, default=None, help="At most this many objects.")
    alerts.add_argument("--per-class", type=int, default=None, help="At most this many objects per class.")
    alerts.add_argument("--min-alerts", type=int, default=0, help="Skip objects with fewer alerts.")
    from broker_plugin_train.ablation import register as register_ablation
    from broker_plugin_train.stages import register

    register(functools.partial(stage, seed_key=TRAINING_SEED))
    register_ablation(functools.partial(stage, seed_key=TRAINING_SEED))
    return parser


def seed_overrides(args: argparse.Namespace, overrides: Sequence[str]) -> list[str]:
    """``overrides`` with ``--seed`` turned into the stage's config override (appended: it wins).

    ``simulate`` and ``alerts`` read ``args.seed`` themselves (:func:`_simulation_config`); the
    model-building stages get ``--training.seed=N``, so every stage and every report sees one seed.
    """
    key = getattr(args, "seed_key", None)
    if key is None or args.seed is None:
        return list(overrides)
    return [*overrides, f"--{key}={args.seed}"]


def parse(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, TrainConfig]:
    """Parse a command line: the stage's arguments and its validated config (overrides applied).

    Raises
    ------
    ConfigError
        The config file is missing or invalid, or an override is malformed or sets an invalid value.
    SystemExit
        Arguments argparse refuses (its usage and message on stderr, status 2), or ``--help``.
    """
    args = _arguments(argv)
    return args, load_config(args.config, seed_overrides(args, args.overrides))


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    args, overrides = build_parser().parse_known_args(argv)
    args.overrides = list(overrides)  # as given (``ablation`` hands them on to its runs)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run the stage; a user error is one line and exit status 2 (see the module docstring)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = _arguments(argv)
    try:
        config = load_config(args.config, seed_overrides(args, args.overrides))
        with logs_above_bars():
            return int(args.func(config, args))
    except UserError as exc:
        return report_user_error(exc, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
