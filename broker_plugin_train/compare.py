"""The light-curve-feature baseline under the same protocol, and the comparison tables.

The simulator's light-curve features (:mod:`broker_plugin_train.data.features`: photometry measured on the
frames, then amplitude / colour / timing / periodicity statistics) feed gradient-boosted trees
(:mod:`broker_plugin_train.data.baseline_lc`'s model), trained per fold on the pretrain pool plus the fold's
training part and scored on the same unique-object test folds as the nets, after the same numbers of frames,
on the same frames (the band filter and, when ``training.data.min_snr`` is set, the alert view). A second
run of the trees (``history=True``) reads what a history net reads instead: every epoch's forced photometry
from :data:`~broker_plugin_train.objects.PRECOVERY_DAYS` before the first alert up to the last alert seen.

:func:`ablation_table` is the input ablation's table (:mod:`broker_plugin_train.ablation`): one row per input
set and net from the runs' reports and out-of-fold predictions, beside the trees on the same folds.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from broker_plugin.progress import progress
from broker_plugin.records import BANDS
from broker_plugin_train.config import CLASSES
from broker_plugin_train.data.shards import Sequence as SimSequence
from broker_plugin_train.evaluate import mean_std, scores, write_report
from broker_plugin_train.objects import PRECOVERY_DAYS, detections
from broker_plugin_train.plan import Plan

#: Per-frame fields of a simulator sequence; the planes are None in a dataset without them.
_FRAME_FIELDS = ("frames", "masks", "band", "mjd", "flux_true", "psf_flux", "psf_flux_err")
_PLANE_FIELDS = ("science", "template", "template_masks")


def _view(
    seq: SimSequence,
    frames: int | None,
    bands: Sequence[str] | None,
    min_snr: float | None = None,
    history: bool = False,
) -> SimSequence:
    """The frames of ``seq`` a net of the run sees: its bands, its alert view, its first ``frames``.

    ``history``: instead, every non-blank epoch from ``PRECOVERY_DAYS`` before the first of those frames
    up to the last of them (what a history net's last output reads).
    """
    keep = np.ones(len(seq.band), bool)
    if bands:
        keep &= np.isin(seq.band, [BANDS.index(b) for b in bands])
    in_bands = keep.copy()
    if min_snr is not None:
        # The alert view (training.data.min_snr): the trees see the detections the nets see, no more.
        keep &= detections(np.asarray(seq.psf_flux), np.asarray(seq.psf_flux_err), min_snr)
    if frames is not None:
        # The first ``frames`` frames the model could see (the same count as the nets' prefixes).
        keep &= np.cumsum(keep) <= frames
    if history and keep.any():
        mjd = np.asarray(seq.mjd)
        seen = mjd[keep]
        keep = in_bands & np.isfinite(np.asarray(seq.psf_flux))
        keep &= (mjd >= seen[0] - PRECOVERY_DAYS) & (mjd <= seen[-1])
    cut = {f: np.asarray(getattr(seq, f))[keep] for f in _FRAME_FIELDS}
    cut |= {f: np.asarray(getattr(seq, f))[keep] for f in _PLANE_FIELDS if getattr(seq, f) is not None}
    return dataclasses.replace(seq, **cut)


def lc_features(
    plan: Plan, indices: np.ndarray, frames: int | None, label: str, history: bool = False
) -> np.ndarray:
    """Light-curve features of objects ``indices`` after ``frames`` frames (None: whole histories).

    ``history``: of the photometric history up to those frames instead (see :func:`_view`).
    """
    from broker_plugin_train.data.features import extract
    from broker_plugin_train.data.shards import ShardDataset

    source = plan.source
    data = source._objects
    assert isinstance(data, ShardDataset)  # noqa: S101 - simulator datasets only
    out = []
    for i in progress(indices, desc=label, unit=" objects", leave=False):
        # Source indices skip the objects with fewer than training.data.min_frames alerts.
        seq = data[source.row(int(i))]
        out.append(extract(_view(seq, frames, plan.config.training.data.bands, source.min_snr, history)))
    return np.stack(out)


def run_lc_baseline(
    plan: Plan, frames: Sequence[int] = (6, 12, 24, 48), history: bool = False
) -> dict[str, Any]:
    """Per-fold light-curve baseline on the plan's folds; report in ``<run_dir>/lc-features``.

    ``history``: the trees on the photometric history (:func:`_view`), in ``<run_dir>/lc-features-history``.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier

    name = "lc-features-history" if history else "lc-features"
    out = plan.run_dir / name
    if (out / "evaluation" / "metrics.json").exists():  # already scored: the fits take minutes
        return load_report(out / "evaluation" / "metrics.json")
    out.mkdir(parents=True, exist_ok=True)
    cache = out / "features.npz"
    transfer = np.sort(np.concatenate([s.test for s in plan.transfer_folds]))
    if cache.exists():
        with np.load(cache) as stored:
            x_pre, x_tr, x_views = stored["pre"], stored["transfer"], stored["views"]
    else:
        x_pre = lc_features(plan, plan.pretrain_idx, None, "lc pretrain pool", history)
        x_tr = lc_features(plan, transfer, None, "lc transfer pool", history)
        x_views = np.stack(
            [lc_features(plan, transfer, k, f"lc {k} frames", history) for k in frames], axis=1
        )
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
             "protocol": {"net": name, "bands": list(plan.config.training.data.bands or "ugriz"),
                          "folds": len(plan.transfer_folds), "data_hash": plan.source.data_hash,
                          "parameters": None}}  # fmt: skip
    y_all, p_all = np.concatenate(all_y), np.concatenate(all_p)
    np.savez(out / "predictions.npz", labels=y_all, probs=p_all,
             indices=np.concatenate([s.test for s in plan.transfer_folds]),
             folds=np.concatenate([np.full(len(s.test), s.fold) for s in plan.transfer_folds]))  # fmt: skip
    return write_report(out / "evaluation", y_all, p_all, frames, CLASSES, 10, extra=extra, name=name)


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
    return {"fold_ensembles": fold_scores(predictions, indices=indices)}


def fold_scores(predictions: str | Path, view: int = -1, indices: np.ndarray | None = None) -> dict[str, Any]:
    """Per-fold accuracy and macro-F1 of out-of-fold ``predictions`` (an npz), and their mean +- std.

    Parameters
    ----------
    predictions
        ``predictions.npz`` of a run's ``ensemble`` stage or of the light-curve baseline: ``indices``,
        ``labels``, ``folds`` and ``probs`` ``(n, views, classes)``.
    view
        Which view of ``probs``: -1 the whole history, ``k`` the ``k``-th early-classification prefix.
    indices
        Score only these objects; None scores all.
    """
    with np.load(predictions) as stored:
        idx, y, folds, probs = stored["indices"], stored["labels"], stored["folds"], stored["probs"]
    keep = np.ones(len(idx), bool) if indices is None else np.isin(idx, indices)
    per_fold = []
    for f in np.unique(folds):
        sel = keep & (folds == f)
        s = scores(y[sel], probs[sel, view], CLASSES)
        per_fold.append({"fold": int(f), **{k: s[k] for k in ("n", "accuracy", "macro_f1")}})
    return {"per_fold": per_fold, **mean_std(per_fold, ("accuracy", "macro_f1"))}


@dataclass(frozen=True)
class AblationCell:
    """One trained (input set, net) of the ablation.

    Attributes
    ----------
    inputs
        The input set's description (the table's first column).
    net
        The net's name in the table.
    run_dir
        Its run folder (``evaluation/metrics.json``, ``ensemble/predictions.npz``, ``wall_time.json``).
    reference
        The input set the paired difference is taken against (same net); None: no difference.
    """

    inputs: str
    net: str
    run_dir: Path
    reference: Path | None = None


def _pct(stats: dict[str, float]) -> str:
    return f"{100 * stats['mean']:.1f} ± {100 * stats['std']:.1f}"


def _early_view(report: dict[str, Any], frames: int) -> int | None:
    """The view of a run's predictions that holds its score after ``frames`` frames (None: not scored)."""
    rows = report.get("early_classification", [])
    return next((v for v, r in enumerate(rows) if r["frames"] == frames), None)


def _paired_difference(run: Path, reference: Path) -> str:
    """Mean +- std over folds of the fold-by-fold macro-F1 difference ``run - reference`` [points]."""
    a = load_report(run / "evaluation" / "metrics.json")["fold_ensembles"]["per_fold"]
    b = load_report(reference / "evaluation" / "metrics.json")["fold_ensembles"]["per_fold"]
    ref = {r["fold"]: r["macro_f1"] for r in b}
    diff = [100 * (r["macro_f1"] - ref[r["fold"]]) for r in a if r["fold"] in ref]
    if len(diff) != len(a) or not diff:
        return "-"  # not the same folds: no paired difference
    return f"{np.mean(diff):+.1f} ± {np.std(diff):.1f}"


def _wall_time(run: Path) -> str:
    """The run's ``all`` wall time: seconds below 100 s (smoke runs), else minutes."""
    path = run / "wall_time.json"
    if not path.exists():
        return "-"
    seconds = float(json.loads(path.read_text())["seconds"])
    return f"{seconds:.0f} s" if seconds < 100 else f"{math.ceil(seconds / 60)} min"


def ablation_table(
    cells: Sequence[AblationCell], lc_run: Path | None = None, early_frames: int = 6
) -> tuple[str, dict[str, list[dict[str, Any]]]]:
    """The ablation's markdown table and its early-classification curves.

    One row per cell: fold mean +- std (fold ensembles on held-out test folds) of accuracy and macro-F1,
    the macro-F1 after ``early_frames`` frames (from the out-of-fold predictions, per fold), the
    fold-by-fold macro-F1 difference to the cell's ``reference`` (the same folds, so the pairing removes
    the folds' difficulty from the spread), parameters and wall time; a cell whose run has no report yet
    reads "not run". Then the light-curve trees of ``lc_run`` (:func:`run_lc_baseline`'s folder) on the
    same folds; a run scored on other objects than the trees is marked.

    Returns
    -------
    tuple
        The table, and the pooled early-classification curve of every finished cell and the trees.
    """
    from broker_plugin.inference import create_net

    lc_objects: set[int] | None = None
    if lc_run is not None and (lc_run / "predictions.npz").exists():
        with np.load(lc_run / "predictions.npz") as stored:
            lc_objects = set(stored["indices"].tolist())
    head = (
        f"| inputs | net | accuracy % | macro-F1 % | macro-F1 after {early_frames} frames % "
        "| Δ macro-F1 vs paper inputs (paired by fold) | parameters | wall time |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    curves: dict[str, list[dict[str, Any]]] = {}
    for cell in cells:
        metrics = cell.run_dir / "evaluation" / "metrics.json"
        if not metrics.exists():
            lines.append(f"| {cell.inputs} | {cell.net} | not run | | | | | |")
            continue
        report = load_report(metrics)
        proto = report["protocol"]
        params = sum(p.numel() for p in create_net(proto["net"], **proto["net_args"]).parameters())
        npz = cell.run_dir / "ensemble" / "predictions.npz"
        view = _early_view(report, early_frames)
        early = _pct(fold_scores(npz, view)["macro_f1"]) if view is not None and npz.exists() else "-"
        ref = cell.reference
        done = ref is not None and ref != cell.run_dir and (ref / "evaluation" / "metrics.json").exists()
        delta = _paired_difference(cell.run_dir, ref) if done and ref is not None else "-"
        mark = ""
        if lc_objects is not None and npz.exists():
            with np.load(npz) as stored:
                mark = "" if set(stored["indices"].tolist()) == lc_objects else " (other objects)"
        fe = report["fold_ensembles"]
        lines.append(
            f"| {cell.inputs} | {cell.net}{mark} | {_pct(fe['accuracy'])} | {_pct(fe['macro_f1'])} | {early} "
            f"| {delta} | {params:,} | {_wall_time(cell.run_dir)} |"
        )
        curves[f"{cell.net}, {cell.inputs}"] = report["early_classification"]
    trees = []
    if lc_run is not None:
        trees = [
            (lc_run, "light curve (photometry measured on the frames)", "light-curve features + GBT"),
            # Beside it when run: the trees on what a history net reads (run_lc_baseline(history=True)).
            (lc_run.parent / "lc-features-history", "light curve (every epoch's forced photometry, up to the "
             "last alert)", "light-curve features + GBT, history"),
        ]  # fmt: skip
    for run, inputs, name in trees:
        if not (run / "evaluation" / "metrics.json").exists():
            continue
        lc = load_report(run / "evaluation" / "metrics.json")
        view = _early_view(lc, early_frames)
        early = _pct(fold_scores(run / "predictions.npz", view)["macro_f1"]) if view is not None else "-"
        fe = lc["fold_ensembles"]
        lines.append(
            f"| {inputs} | {name} | {_pct(fe['accuracy'])} | {_pct(fe['macro_f1'])} | {early} "
            "| - | - (trees) | - |"
        )
        curves[name] = lc["early_classification"]
    return "\n".join(lines), curves
