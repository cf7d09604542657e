"""Combine members: per fold, the average of its seeds' probabilities ("5 blocks of 3 models").

Each fold's ensemble is scored on that fold's test part only, which none of its members trained or
selected on; with ``training.trees.enabled`` its answer is the blend of the members' mean with that
fold's history trees (:mod:`broker_plugin_train.trees`), as the service blends them, and the members
alone and the trees alone are scored beside it; the report gives mean +- std over folds for single
members and for fold ensembles, plus the pooled out-of-fold result. The exported artifact averages
*all* members; its honest estimate is the fold-ensemble figure (or ``evaluate --model`` on an
independently simulated dataset).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from broker_plugin.inference.trees import blend
from broker_plugin.progress import progress
from broker_plugin_train.config import CLASSES
from broker_plugin_train.evaluate import mean_std, scores
from broker_plugin_train.finetune import predictions_path
from broker_plugin_train.plan import Plan
from broker_plugin_train.trees import fold_probs


def ensemble_path(plan: Plan) -> Path:
    """Where the pooled out-of-fold ensemble predictions go."""
    return plan.run_dir / "ensemble" / "predictions.npz"


def run_ensemble(plan: Plan) -> dict[str, Any]:
    """Average each fold's members; store predictions and the fold statistics."""
    indices, labels, folds, probs = [], [], [], []
    single, per_fold, net_only, trees_only = [], [], [], []
    trees = plan.config.training.trees
    for f in progress(range(plan.config.training.data.folds), desc="ensemble", unit="fold"):
        member_probs = []
        for m in (m for m in plan.members if m.fold == f):
            with np.load(predictions_path(plan, m)) as stored:
                idx, p, y = stored["indices"], stored["probs"], stored["labels"]
            member_probs.append(p)
            single.append({"fold": f, "seed": m.seed, **_headline(scores(y, p[:, -1], CLASSES))})
        mean = np.mean(member_probs, axis=0)
        if trees.enabled:
            tree_probs = fold_probs(plan, f, idx)
            net_only.append({"fold": f, **_headline(scores(y, mean[:, -1], CLASSES))})
            trees_only.append({"fold": f, **_headline(scores(y, tree_probs[:, -1], CLASSES))})
            mean = blend(mean, tree_probs, trees.net_weight)
        per_fold.append({"fold": f, **_headline(scores(y, mean[:, -1], CLASSES))})
        indices.append(idx)
        labels.append(y)
        folds.append(np.full(len(idx), f))
        probs.append(mean)
    out = ensemble_path(plan)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        out,
        indices=np.concatenate(indices),
        labels=np.concatenate(labels),
        folds=np.concatenate(folds),
        probs=np.concatenate(probs),
    )
    summary = {
        "single_members": {"per_member": single, **mean_std(single)},
        "fold_ensembles": {"per_fold": per_fold, **mean_std(per_fold)},
    }
    if trees.enabled:
        summary["net_only"] = {"per_fold": net_only, **mean_std(net_only)}
        summary["trees_only"] = {"per_fold": trees_only, **mean_std(trees_only)}
    (out.parent / "folds.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _headline(s: dict[str, Any]) -> dict[str, Any]:
    return {k: s[k] for k in ("n", "accuracy", "macro_f1", "balanced_accuracy", "cohen_kappa")}
