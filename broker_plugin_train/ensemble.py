"""Combine members: per fold, the average of its seeds' probabilities ("5 blocks of 3 models").

Each fold's ensemble is scored on that fold's test part only, which none of its members trained or
selected on; the report gives mean +- std over folds for single members and for fold ensembles, plus
the pooled out-of-fold result. The exported artifact averages *all* members; its honest estimate is
the fold-ensemble figure (or ``evaluate --model`` on an independently simulated dataset).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from broker_plugin.progress import progress
from broker_plugin_train.config import CLASSES
from broker_plugin_train.evaluate import mean_std, scores
from broker_plugin_train.finetune import predictions_path
from broker_plugin_train.plan import Plan


def ensemble_path(plan: Plan) -> Path:
    """Where the pooled out-of-fold ensemble predictions go."""
    return plan.run_dir / "ensemble" / "predictions.npz"


def run_ensemble(plan: Plan) -> dict[str, Any]:
    """Average each fold's members; store predictions and the fold statistics."""
    indices, labels, folds, probs = [], [], [], []
    single, per_fold = [], []
    for f in progress(range(plan.config.training.data.folds), desc="ensemble", unit="fold"):
        member_probs = []
        for m in (m for m in plan.members if m.fold == f):
            with np.load(predictions_path(plan, m)) as stored:
                idx, p, y = stored["indices"], stored["probs"], stored["labels"]
            member_probs.append(p)
            single.append({"fold": f, "seed": m.seed, **_headline(scores(y, p[:, -1], CLASSES))})
        mean = np.mean(member_probs, axis=0)
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
    (out.parent / "folds.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _headline(s: dict[str, Any]) -> dict[str, Any]:
    return {k: s[k] for k in ("n", "accuracy", "macro_f1", "balanced_accuracy", "cohen_kappa")}
