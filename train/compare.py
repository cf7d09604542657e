"""The light-curve-feature baseline under the same protocol, and the comparison table.

The simulator's light-curve features (:mod:`train.data.features`: photometry measured on the frames,
then amplitude / colour / timing / periodicity statistics) feed gradient-boosted trees
(:mod:`train.data.baseline_lc`'s model), trained per fold on the pretrain pool plus the fold's training
part and scored on the same unique-object test folds as the nets, after the same numbers of frames.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from broker_plugin.records import BANDS
from train.config import CLASSES
from train.data.shards import Sequence as SimSequence
from train.evaluate import mean_std, scores, write_report
from train.loop import Progress
from train.plan import Plan


def _view(seq: SimSequence, frames: int | None, bands: Sequence[str] | None) -> SimSequence:
    fields = ("frames", "masks", "band", "mjd", "flux_true", "psf_flux", "psf_flux_err")
    keep = np.ones(len(seq.band), bool)
    if bands:
        keep &= np.isin(seq.band, [BANDS.index(b) for b in bands])
    if frames is not None:
        # The first ``frames`` frames the model could see (the same count as the nets' prefixes).
        keep &= np.cumsum(keep) <= frames
    return dataclasses.replace(seq, **{f: np.asarray(getattr(seq, f))[keep] for f in fields})


def lc_features(plan: Plan, indices: np.ndarray, frames: int | None, label: str) -> np.ndarray:
    """Light-curve features of objects ``indices`` after ``frames`` frames (None: whole histories)."""
    from train.data.features import extract
    from train.data.shards import ShardDataset

    data = plan.source._objects
    assert isinstance(data, ShardDataset)  # noqa: S101 - simulator datasets only
    progress = Progress(len(indices), label)
    out = []
    for i in indices:
        out.append(extract(_view(data[int(i)], frames, plan.config.training.data.bands)))
        progress.update(1)
    return np.stack(out)


def run_lc_baseline(plan: Plan, frames: Sequence[int] = (6, 12, 24, 48)) -> dict[str, Any]:
    """Per-fold light-curve baseline on the plan's folds; report in ``<run_dir>/lc-features``."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    out = plan.run_dir / "lc-features"
    if (out / "evaluation" / "metrics.json").exists():  # already scored: the fits take minutes
        return load_report(out / "evaluation" / "metrics.json")
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "features.npz"
    transfer = np.sort(np.concatenate([s.test for s in plan.transfer_folds]))
    if cache.exists():
        with np.load(cache) as stored:
            x_pre, x_tr, x_views = stored["pre"], stored["transfer"], stored["views"]
    else:
        x_pre = lc_features(plan, plan.pretrain_idx, None, "lc pretrain pool")
        x_tr = lc_features(plan, transfer, None, "lc transfer pool")
        x_views = np.stack([lc_features(plan, transfer, k, f"lc {k} frames") for k in frames], axis=1)
        np.savez(cache, pre=x_pre, transfer=x_tr, views=x_views)
    # Features of absent bands are NaN for every object (g-only runs): drop them, the trees cannot bin them.
    keep = ~np.all(np.isnan(np.concatenate([x_pre, x_tr])), axis=0)
    x_pre, x_tr, x_views = x_pre[:, keep], x_tr[:, keep], x_views[..., keep]
    pos = {int(i): k for k, i in enumerate(transfer)}
    y_pre, labels = plan.source.labels[plan.pretrain_idx], plan.source.labels
    all_y, all_p, per_fold = [], [], []
    for split in plan.transfer_folds:
        tr = [pos[int(i)] for i in split.train]
        te = [pos[int(i)] for i in split.test]
        model = HistGradientBoostingClassifier(
            max_iter=300, learning_rate=0.08, class_weight="balanced", random_state=plan.config.training.seed
        )
        model.fit(np.concatenate([x_pre, x_tr[tr]]), np.concatenate([y_pre, labels[split.train]]))
        views = [model.predict_proba(x_views[te, v]) for v in range(len(frames))]
        probs = np.stack([*views, model.predict_proba(x_tr[te])], axis=1)
        y = labels[split.test]
        s = scores(y, probs[:, -1], CLASSES)
        per_fold.append({"fold": split.fold, **{k: s[k] for k in ("n", "accuracy", "macro_f1",
                         "balanced_accuracy", "cohen_kappa")}})  # fmt: skip
        all_y.append(y)
        all_p.append(probs)
    extra = {"fold_ensembles": {"per_fold": per_fold, **mean_std(per_fold)},
             "protocol": {"net": "lc-features", "bands": list(plan.config.training.data.bands or "ugriz"),
                          "folds": len(plan.transfer_folds), "data_hash": plan.source.data_hash,
                          "parameters": None}}  # fmt: skip
    y_all, p_all = np.concatenate(all_y), np.concatenate(all_p)
    np.savez(out / "predictions.npz", labels=y_all, probs=p_all,
             indices=np.concatenate([s.test for s in plan.transfer_folds]),
             folds=np.concatenate([np.full(len(s.test), s.fold) for s in plan.transfer_folds]))  # fmt: skip
    return write_report(
        out / "evaluation", y_all, p_all, frames, CLASSES, 10, extra=extra, name="lc-features"
    )


def table_row(name: str, report: dict[str, Any], parameters: int | None, bands: str, data: str) -> str:
    """One markdown row: model, bands, data type, accuracy and macro-F1 (fold mean +- std), parameters."""
    fe = report["fold_ensembles"]
    acc, f1 = fe["accuracy"], fe["macro_f1"]
    params = f"{parameters:,}" if parameters else "-"
    return (f"| {name} | {bands} | {data} | {100 * acc['mean']:.1f} ± {100 * acc['std']:.1f} | "
            f"{100 * f1['mean']:.1f} ± {100 * f1['std']:.1f} | {params} |")  # fmt: skip


def load_report(path: str | Path) -> dict[str, Any]:
    """Read an evaluation ``metrics.json``."""
    return json.loads(Path(path).read_text())


def same_object_scores(predictions: str | Path, indices: np.ndarray) -> dict[str, Any]:
    """Fold scores of out-of-fold ``predictions`` (an npz) restricted to objects ``indices``.

    Every confirmed object has exactly one out-of-fold prediction (from the fold that tested it), so a
    run on the full pool can be compared with a reduced-protocol run on exactly the reduced run's objects.
    """
    with np.load(predictions) as stored:
        idx, y, folds, probs = stored["indices"], stored["labels"], stored["folds"], stored["probs"]
    keep = np.isin(idx, indices)
    per_fold = []
    for f in np.unique(folds):
        sel = keep & (folds == f)
        s = scores(y[sel], probs[sel, -1], CLASSES)
        per_fold.append({"fold": int(f), **{k: s[k] for k in ("n", "accuracy", "macro_f1")}})
    return {"fold_ensembles": {"per_fold": per_fold, **mean_std(per_fold, ("accuracy", "macro_f1"))}}
