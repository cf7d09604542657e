"""``export``: the artifact the service loads, with the evaluation report beside it.

All members (every fold and seed), and the history trees of every fold when configured, go into one
artifact through
:func:`broker_plugin.inference.artifact.save_artifact` (safetensors + metadata + checksums); the report
files (``evaluation.json`` and the PNGs) are copied next to it and are not part of the checksummed
artifact, so they can be regenerated without changing the model id.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from broker_plugin.inference.artifact import save_artifact
from broker_plugin_train.config import CLASSES
from broker_plugin_train.finetune import member_path
from broker_plugin_train.plan import Plan
from broker_plugin_train.pretrain import load_net
from broker_plugin_train.trees import load_trees


def run_export(plan: Plan, out: str | Path | None = None) -> tuple[Path, str]:
    """Write the artifact to ``out`` (default: the config's ``model_dir``); return it and its model id."""
    t = plan.config.training
    target = Path(out or t.model_dir)
    members, info = [], []
    for m in plan.members:
        net, record = load_net(plan, member_path(plan, m))
        members.append(net.eval())
        head = record.get("head", {})
        info.append(
            {
                "fold": m.fold,
                "seed": m.seed,
                "seed_value": plan.member_seed(m),
                "best_val_macro_f1": head.get("best_val_macro_f1") if isinstance(head, dict) else None,
            }
        )
    report_dir = plan.run_dir / "evaluation"
    metrics: dict[str, Any] = {}
    if (report_dir / "metrics.json").exists():
        full = json.loads((report_dir / "metrics.json").read_text())
        metrics = {k: full[k] for k in ("fold_ensembles", "single_members", "protocol") if k in full}
        metrics["pooled_out_of_fold"] = {
            k: full["whole_history"][k] for k in ("accuracy", "macro_f1", "balanced_accuracy", "cohen_kappa")
        }
    trees = load_trees(plan) if t.trees.enabled else None
    trees_info = None
    if trees is not None:
        trees_info = {"net_weight": t.trees.net_weight, "learning_rate": t.trees.learning_rate,
                      "ship": t.trees.ship,
                      # One tree per class and iteration of each model.
                      "iterations": (np.bincount(trees.tree_model) // trees.n_classes).tolist()}  # fmt: skip
    model_id = save_artifact(
        target,
        members,
        normalisation=plan.normalisation(),
        pixel_scale_arcsec=plan.config.simulation.render.frame_pixel_scale_arcsec,
        training_data_hash=plan.source.data_hash,
        class_names=CLASSES,
        metrics=metrics,
        member_info=info,
        trees=trees,
        trees_info=trees_info,
    )
    for name in ("metrics.json", "confusion.png", "early_classification.png", "reliability.png"):
        if (report_dir / name).exists():
            shutil.copyfile(
                report_dir / name, target / ("evaluation.json" if name == "metrics.json" else name)
            )
    (target / "config.json").write_text(plan.config.model_dump_json(indent=1) + "\n")
    return target, model_id
