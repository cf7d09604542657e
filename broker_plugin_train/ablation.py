"""The input ablation: what each input an alert carries adds, for ConvEntion and CNN+GRU at one budget.

``python -m broker_plugin_train ablation --config broker_plugin_train/configs/ablation.toml`` trains both
nets (``NETS``) on the input sets (``VARIANTS``): the paper's inputs (the difference image, the frames'
order), then each of continuous time, the alert photometry and the science and template planes added
alone, then all of them, through the ablation flags every net shares (``planes``, ``time_encoding``,
``photometry``: :class:`~broker_plugin.inference.nets.ConvEntionConfig`,
:class:`~broker_plugin.inference.baselines.CnnRnnConfig`); and, for ConvEntion only, all of them plus the
photometric history (``history``, the head's branch of ``convention-alert``). Each (net, input set) is one
``python -m broker_plugin_train all`` run of the same config - same data, folds, seed and budget - with
``--training.net.name`` / ``--training.net.args`` overrides, in its own
``<training.run_dir>/<net>-<variant>`` (model in its ``model`` subfolder, log beside it as
``<net>-<variant>.log``). Then the light-curve trees run on the same folds
(:func:`~broker_plugin_train.compare.run_lc_baseline`, in ``<training.run_dir>/lc-features``) and
:func:`~broker_plugin_train.compare.ablation_table` writes one table (``table.md``) and the
early-classification curves (``early_classification.png``).

Why a stage and not a shell script like ``run_comparison.sh``: the ten runs take hours, so every
child's config (the overrides included) is validated and every variant's net built before the first run
starts, where a script would find a typo in run seven; finished runs (``wall_time.json``) are skipped, so
an interrupted ablation resumes (each run itself resumes from its checkpoints); the commands are built by
one tested function (``--dry-run`` prints them); and the table needs Python anyway.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from broker_plugin.progress import progress
from broker_plugin_train.config import TrainConfig

log = logging.getLogger("train")


@dataclass(frozen=True)
class Variant:
    """One input set of the ablation.

    Attributes
    ----------
    label
        Its name in the table.
    flags
        The ablation flags it sets on every net.
    nets
        The nets that have this input (None: every net).
    """

    label: str
    flags: Mapping[str, Any]
    nets: tuple[str, ...] | None = None


_OFF = {"planes": 1, "time_encoding": "index", "photometry": False}
#: The input sets, in table order; each sets all three flags, so a config's net args cannot leak one in.
VARIANTS: dict[str, Variant] = {
    "paper": Variant("paper inputs (difference, frame order)", _OFF),
    "time": Variant("+ continuous time", {**_OFF, "time_encoding": "continuous"}),
    "photometry": Variant("+ photometry", {**_OFF, "photometry": True}),
    "planes": Variant("+ science & template", {**_OFF, "planes": 3}),
    "all": Variant("all (time, photometry, science & template)", {
        "planes": 3, "time_encoding": "continuous", "photometry": True,
    }),
    # The photometric history enters ConvEntion's head (convention-alert: GRU + light-curve statistics);
    # the recurrent baselines have no history branch.
    "history": Variant("all + photometric history (convention-alert)", {
        "planes": 3, "time_encoding": "continuous", "photometry": True, "history": True,
        "history_statistics": True,
    }, nets=("convention-triplet-small",)),
}  # fmt: skip
#: The nets compared, with their names in the table.
NETS: dict[str, str] = {
    "convention-triplet-small": "ConvEntion (convention-triplet-small)",
    "cnn-gru": "CNN+GRU (cnn-gru)",
}
#: The input set every other one is compared with, fold by fold.
REFERENCE = "paper"


@dataclass(frozen=True)
class AblationRun:
    """One (net, input set) run of the ablation under ``root``."""

    net: str
    variant: str
    root: Path

    @property
    def name(self) -> str:
        """``<net>-<variant>``: the run folder's and the log's name."""
        return f"{self.net}-{self.variant}"

    @property
    def run_dir(self) -> Path:
        """The run folder (``training.run_dir`` of the child)."""
        return self.root / self.name

    @property
    def model_dir(self) -> Path:
        """Where the child's ``export`` writes its artifact."""
        return self.run_dir / "model"

    @property
    def log(self) -> Path:
        """The child's stdout and stderr."""
        return self.root / f"{self.name}.log"

    @property
    def finished(self) -> bool:
        """Whether the child's ``all`` completed (it writes ``wall_time.json`` last)."""
        return (self.run_dir / "wall_time.json").exists()

    def net_args(self, base: Mapping[str, Any]) -> dict[str, Any]:
        """The config's net arguments ``base`` with this input set's flags (which win)."""
        return {**base, **VARIANTS[self.variant].flags}


def ablation_runs(
    root: Path, nets: Sequence[str] = tuple(NETS), variants: Sequence[str] = tuple(VARIANTS)
) -> list[AblationRun]:
    """The runs of ``nets`` x ``variants`` under ``root``, input set major (the table's order)."""
    unknown = [n for n in nets if n not in NETS] + [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown nets or input sets {unknown}; nets {list(NETS)}, sets {list(VARIANTS)}")
    return [
        AblationRun(n, v, Path(root))
        for v in VARIANTS
        if v in variants
        for n in NETS
        if n in nets and (VARIANTS[v].nets is None or n in VARIANTS[v].nets)
    ]


def toml_value(value: Any) -> str:
    """``value`` in TOML syntax, as ``--dotted.key=value`` overrides read it (inline tables for dicts)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string: JSON's escapes are TOML's
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"{type(value).__name__} has no TOML form")


def run_command(
    run: AblationRun,
    config_path: str | Path,
    *,
    base_net_args: Mapping[str, Any],
    passthrough: Sequence[str] = (),
    seed: int | None = None,
    data: str | None = None,
    python: str = sys.executable,
) -> list[str]:
    """The ``python -m broker_plugin_train all`` command line of one run.

    ``passthrough`` are the ablation's own ``--dotted.key=value`` overrides (a smoke run's smaller
    budget, say); the run's net, net arguments and folders come after them, so they win.
    """
    argv = [python, "-m", "broker_plugin_train", "all", "--config", str(config_path)]
    if seed is not None:
        argv += ["--seed", str(seed)]
    if data is not None:
        argv += ["--data", str(data)]
    return [
        *argv,
        *passthrough,
        f"--training.net.name={run.net}",
        f"--training.net.args={toml_value(run.net_args(base_net_args))}",
        f"--training.run_dir={run.run_dir}",
        f"--training.model_dir={run.model_dir}",
    ]


def check_command(argv: Sequence[str]) -> TrainConfig:
    """Parse a run's command line as the child will, and build its net: fail now, not hours later.

    Raises
    ------
    ConfigError
        For an override the config refuses (the same lines the child would print).
    """
    from broker_plugin.inference import create_net
    from broker_plugin_train.__main__ import parse

    _, config = parse(list(argv[3:]))  # after "python -m broker_plugin_train"
    create_net(config.training.net.name, **config.training.net.args)
    return config


def execute(commands: Sequence[tuple[AblationRun, list[str]]], jobs: int, poll_s: float = 5.0) -> list[str]:
    """Run the commands, ``jobs`` at a time, each logging to its run's log; return the failed runs' names."""
    pending, failed = list(commands), []
    running: list[tuple[AblationRun, subprocess.Popen[bytes], IO[bytes]]] = []
    bar = progress(total=len(commands), desc="ablation", unit="run")
    while pending or running:
        while pending and len(running) < jobs:
            run, argv = pending.pop(0)
            run.root.mkdir(parents=True, exist_ok=True)
            handle = run.log.open("ab")  # appended: a resumed run keeps the interrupted one's log
            log.info("ablation: start %s (log %s)", run.name, run.log)
            # Our own argv (this interpreter, -m train, validated overrides), no shell.
            proc = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT)  # noqa: S603
            running.append((run, proc, handle))
        time.sleep(poll_s)
        for item in list(running):
            run, proc, handle = item
            if proc.poll() is None:
                continue
            running.remove(item)
            handle.close()
            log.info("ablation: %s finished with exit status %d", run.name, proc.returncode)
            bar.update(1)
            if proc.returncode:
                failed.append(run.name)
    bar.close()
    return failed


def write_table(
    runs: Sequence[AblationRun], out: Path, lc_run: Path | None = None, early_frames: int = 6
) -> str:
    """Write ``table.md`` and ``early_classification.png`` of the ablation into ``out``; return the table."""
    from broker_plugin_train.compare import AblationCell, ablation_table, load_report
    from broker_plugin_train.evaluate import plot_curves

    cells = [
        AblationCell(
            VARIANTS[r.variant].label, NETS[r.net], r.run_dir, AblationRun(r.net, REFERENCE, r.root).run_dir
        )
        for r in runs
    ]
    table, curves = ablation_table(cells, lc_run, early_frames)
    done = [r for r in runs if (r.run_dir / "evaluation" / "metrics.json").exists()]
    header = ["Input ablation: fold mean ± std of the fold ensembles on held-out test folds."]
    if done:
        p = load_report(done[0].run_dir / "evaluation" / "metrics.json")["protocol"]
        header.append(
            f"Protocol (every run): config `{p['config']}`, {p['folds']} folds x {p['seeds']} seed(s), "
            f"stage 1 {p['pretrain_epochs']} epochs x {p['pretrain_samples_per_epoch']} draws, "
            f"stage 2 {p['finetune_epochs']} epochs, seed {p.get('seed', '?')}, data `{p['data_hash'][:16]}`."
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text("\n\n".join([*header, table]) + "\n")
    if curves:
        plot_curves(curves, out / "early_classification.png")
    return table


def run_ablation_stage(config: TrainConfig, args: argparse.Namespace) -> int:
    """Train the missing runs of the ablation, then its table (see the module docstring)."""
    root = Path(config.training.run_dir)
    runs = ablation_runs(root, args.nets, args.variants)
    base = dict(config.training.net.args)
    passthrough = list(getattr(args, "overrides", []))
    commands = [
        (r, run_command(r, args.config, base_net_args=base, passthrough=passthrough, seed=args.seed,
                        data=args.data))
        for r in runs
    ]  # fmt: skip
    for _, argv in commands:
        check_command(argv)
    if args.dry_run:
        for run, argv in commands:
            state = "finished" if run.finished else "to run"
            print(f"# {run.name} ({state})\n{shlex.join(argv)}")
        return 0
    failed: list[str] = []
    if not args.table_only:
        todo = [(r, a) for r, a in commands if not r.finished]
        for run in runs:
            if run.finished:
                log.info("ablation: %s already finished, skipped", run.name)
        failed = execute(todo, args.jobs)
    lc_run = None
    if not args.no_baseline:
        from broker_plugin_train.compare import run_lc_baseline
        from broker_plugin_train.plan import make_plan

        # The trees need the folds only: those of the ablation's config, shared by every run.
        plan = make_plan(config, args.data)
        run_lc_baseline(plan)
        if any(r.variant == "history" for r in runs):  # the trees on the same history, beside it
            run_lc_baseline(plan, history=True)
        lc_run = root / "lc-features"
    out = Path(args.out) if args.out else root
    table = write_table(runs, out, lc_run, args.early_frames)
    print(table)
    print(f"ablation table: {out / 'table.md'}")
    if failed:
        print(f"failed runs (see their logs): {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def register(stage: Callable[..., argparse.ArgumentParser]) -> None:
    """Add ``ablation`` through ``__main__``'s ``stage(name, func, help)`` helper."""
    p = stage("ablation", run_ablation_stage, "input ablation: both nets x five input sets, then one table")
    p.add_argument("--data", default=None, help="Dataset folder (default: the config's).")
    p.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS), help="Nets to train.")
    p.add_argument(
        "--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), help="Input sets to train."
    )
    p.add_argument("--jobs", type=int, default=1, help="Runs side by side (each uses training.threads).")
    p.add_argument(
        "--dry-run", action="store_true", help="Check and print the runs' commands; train nothing."
    )
    p.add_argument("--table-only", action="store_true", help="Train nothing; tabulate the finished runs.")
    p.add_argument("--no-baseline", action="store_true", help="Leave the light-curve trees out of the table.")
    p.add_argument("--early-frames", type=int, default=6, help="Frames seen for the early macro-F1 column.")
