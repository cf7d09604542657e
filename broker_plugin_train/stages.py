"""The model-building stages of ``python -m broker_plugin_train``: pretrain ... export, all.

Each stage reads its inputs from the run folder (``training.run_dir``) and writes its outputs there, so
any stage can be rerun alone and an interrupted run resumes where it stopped (finished members are
skipped, a half-trained one continues from its last epoch checkpoint).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from broker_plugin.cli import UserError
from broker_plugin_train.config import CLASSES, TrainConfig

log = logging.getLogger("train")


def _plan(config: TrainConfig, args: argparse.Namespace):
    from broker_plugin_train.plan import make_plan

    torch.set_num_threads(config.training.threads)
    return make_plan(config, getattr(args, "data", None))


def run_pretrain_stage(config: TrainConfig, args: argparse.Namespace) -> int:
    """Stage 1 for every backbone."""
    from broker_plugin_train.pretrain import run_pretrain

    for path in run_pretrain(_plan(config, args)):
        print(f"backbone: {path}")
    return 0


def run_finetune_stage(config: TrainConfig, args: argparse.Namespace) -> int:
    """Stage 2 for every member."""
    from broker_plugin_train.finetune import run_finetune

    for path in run_finetune(_plan(config, args)):
        print(f"member: {path}")
    return 0


def run_trees_stage(config: TrainConfig, args: argparse.Namespace) -> int:
    """History trees per fold (``training.trees``); nothing to do when they are off."""
    from broker_plugin_train.trees import run_trees

    if not config.training.trees.enabled:
        print("training.trees.enabled is false: no trees")
        return 0
    print(json.dumps(run_trees(_plan(config, args)), indent=1))
    return 0


def run_ensemble_stage(config: TrainConfig, args: argparse.Namespace) -> int:
    """Fold ensembles and fold statistics."""
    from broker_plugin_train.ensemble import run_ensemble

    summary = run_ensemble(_plan(config, args))
    print(json.dumps({k: {m: v[m] for m in ("accuracy", "macro_f1")} for k, v in summary.items()}, indent=1))
    return 0


def protocol(config: TrainConfig, plan: Any) -> dict[str, Any]:
    """The facts a reader needs to judge the numbers."""
    t = config.training
    return {
        "config": config.name,
        "net": t.net.name,
        "net_args": t.net.args,
        "bands": list(t.data.bands or "ugriz"),
        "folds": t.data.folds,
        "seeds": t.data.seeds,
        "seed": t.seed,
        "data_hash": plan.source.data_hash,
        "n_pretrain_pool": len(plan.pretrain_idx),
        "n_transfer_pool": int(sum(len(s.test) for s in plan.transfer_folds)),
        "pretrain_epochs": t.pretrain.epochs,
        "pretrain_samples_per_epoch": t.pretrain.samples_per_epoch,
        "pretrain_lr_schedule": t.pretrain.lr_schedule,
        "pretrain_max_train_frames": t.pretrain.max_train_frames,
        "finetune_epochs": t.finetune.epochs,
        "trees": t.trees.model_dump() if t.trees.enabled else None,
        "unfreeze_epochs": t.finetune.unfreeze_epochs,
        "test": "each confirmed object once, in its fold's test part (never trained on or selected on)",
    }


def run_evaluate_stage(config: TrainConfig, args: argparse.Namespace) -> int:
    """Report on the run's held-out folds, or (``--model``) an artifact on any dataset folder."""
    from broker_plugin_train.evaluate import write_report

    cutout_side = getattr(args, "cutout_side", None)
    if cutout_side is not None and not getattr(args, "model", None):
        raise UserError("--cutout-side scores an artifact: give it with --model")
    if cutout_side is not None and cutout_side < 1:
        raise UserError(f"--cutout-side {cutout_side}: a cutout measures at least one frame pixel")
    if getattr(args, "model", None):
        from broker_plugin_train.model_eval import evaluate_artifact

        result = evaluate_artifact(
            args.model,
            args.data or config.data_dir,
            config,
            pool=args.pool,
            limit=args.limit,
            out=Path(args.out) if args.out else None,
            cutout_side=cutout_side,
        )
        print(json.dumps(result, indent=1))
        return 0
    from broker_plugin_train.ensemble import ensemble_path

    plan = _plan(config, args)
    with np.load(ensemble_path(plan)) as stored:
        y, probs = stored["labels"], stored["probs"]
    folds = json.loads((ensemble_path(plan).parent / "folds.json").read_text())
    t = config.training
    out = Path(args.out) if args.out else plan.run_dir / "evaluation"
    result = write_report(
        out,
        y,
        probs,
        t.finetune.prefix_frames,
        CLASSES,
        t.evaluate.reliability_bins,
        extra={**folds, "protocol": protocol(config, plan)},
        name=t.net.name,
    )
    fe = result["fold_ensembles"]
    print(
        json.dumps(
            {
                "pooled": {k: result["whole_history"][k] for k in ("accuracy", "macro_f1")},
                "fold_ensembles": {k: fe[k] for k in ("accuracy", "macro_f1")},
            },
            indent=1,
        )
    )
    print(f"report: {out}")
    return 0


def run_export_stage(config: TrainConfig, args: argparse.Namespace) -> int:
    """Write the artifact."""
    from broker_plugin_train.export import run_export

    target, model_id = run_export(_plan(config, args), args.out)
    print(f"artifact {model_id} written to {target}")
    return 0


def run_all(config: TrainConfig, args: argparse.Namespace) -> int:
    """Every stage in order, timed."""
    started = time.perf_counter()
    for name, func in (
        ("pretrain", run_pretrain_stage),
        ("finetune", run_finetune_stage),
        ("trees", run_trees_stage),
        ("ensemble", run_ensemble_stage),
        ("evaluate", run_evaluate_stage),
        ("export", run_export_stage),
    ):
        t0 = time.perf_counter()
        log.info("stage %s", name)
        func(config, args)
        log.info("stage %s done in %.0f s", name, time.perf_counter() - t0)
    elapsed = time.perf_counter() - started
    print(f"all stages done in {elapsed:.0f} s", flush=True)
    Path(config.training.run_dir).mkdir(parents=True, exist_ok=True)
    (Path(config.training.run_dir) / "wall_time.json").write_text(
        json.dumps({"seconds": elapsed, "argv": sys.argv}, indent=1) + "\n"
    )
    return 0


def register(stage: Any) -> None:
    """Add the model-building subcommands through ``__main__``'s ``stage(name, func, help)`` helper."""
    for name, func, help_ in (
        ("pretrain", run_pretrain_stage, "stage 1: train on the unconfirmed pool"),
        ("finetune", run_finetune_stage, "stage 2: new head on the frozen backbone, per fold and seed"),
        ("trees", run_trees_stage, "history trees per fold (training.trees), blended with the members"),
        ("ensemble", run_ensemble_stage, "average each fold's members, blend the trees; fold statistics"),
        ("export", run_export_stage, "write the artifact the service loads"),
        ("all", run_all, "pretrain, finetune, trees, ensemble, evaluate, export"),
    ):
        p = stage(name, func, help_)
        p.add_argument("--data", default=None, help="Dataset folder (default: the config's).")
    ev = stage("evaluate", run_evaluate_stage, "held-out fold report, or --model on any dataset folder")
    ev.add_argument("--model", default=None, help="Artifact folder to evaluate instead of the run.")
    ev.add_argument("--data", default=None, help="Dataset folder (default: the config's).")
    ev.add_argument("--pool", default=None, choices=["pretrain", "transfer"], help="Only this pool.")
    ev.add_argument("--limit", type=int, default=None, help="At most this many objects (first ones).")
    ev.add_argument(
        "--cutout-side",
        type=int,
        default=None,
        metavar="PIXELS",
        help="With --model: measure every frame only in the centred PIXELS x PIXELS square, as smaller "
        "cutouts would (Rubin's cover 15 of the 32 frame pixels).",
    )
    cmp = stage("compare", run_compare_stage, "light-curve baseline on the same folds; comparison table")
    cmp.add_argument("--data", default=None, help="Dataset folder (default: the config's).")
    cmp.add_argument("--runs", nargs="*", default=[], help="Other run folders (e.g. runs/cnn-gru).")


def run_compare_stage(config: TrainConfig, args: argparse.Namespace) -> int:
    """Light-curve baseline on this config's folds, then the comparison table with other runs."""
    from broker_plugin.inference import create_net
    from broker_plugin_train.compare import load_report, run_lc_baseline, same_object_scores, table_row
    from broker_plugin_train.evaluate import plot_curves

    plan = _plan(config, args)
    lc = run_lc_baseline(plan)
    bands = "".join(config.training.data.bands or ("u", "g", "r", "i", "z"))
    main_run = plan.run_dir
    with np.load(main_run / "ensemble" / "predictions.npz") as stored:
        main_objects = set(stored["indices"].tolist())
    rows, curves = [], {}
    for run in [main_run, *[Path(r) for r in args.runs]]:
        report = load_report(run / "evaluation" / "metrics.json")
        proto = report["protocol"]
        name = f"{proto['net']} ({run.name})"
        curves[name] = report["early_classification"]
        params = sum(p.numel() for p in create_net(proto["net"], **proto["net_args"]).parameters())
        rows.append(table_row(name, report, params, bands, "image time series"))
        with np.load(run / "ensemble" / "predictions.npz") as stored:
            subset = stored["indices"]
        if set(subset.tolist()) == main_objects:
            continue  # scored on the same objects: the rows above already compare like with like
        for other, npz in (
            (f"{config.training.net.name} ({main_run.name})", main_run / "ensemble" / "predictions.npz"),
            ("light-curve features + GBT", main_run / "lc-features" / "predictions.npz"),
        ):
            same = same_object_scores(npz, subset)
            rows.append(table_row(f"{other}, scored on {run.name}'s objects", same, None, bands, "-"))
    rows.append(table_row("light-curve features + GBT", lc, None, bands, "light curve"))
    curves["light-curve features + GBT"] = lc["early_classification"]
    table = "\n".join(
        [
            "| model | bands | data | accuracy % | macro-F1 % | parameters |",
            "|---|---|---|---|---|---|",
            *rows,
        ]
    )
    out = Path(args.out) if args.out else main_run / "comparison"
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table + "\n")
    plot_curves(curves, out / "early_classification.png")
    print(table)
    print(f"comparison: {out}")
    return 0
