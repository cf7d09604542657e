"""``trees``: gradient-boosted trees on the photometric history, per fold, blended with the net.

The features are the service's own: :func:`~broker_plugin.inference.trees.statistics_features` of the
history rows of an output (every epoch the alert carries up to it), at each stage-2 prefix view and on
the whole history, exactly the outputs the net's out-of-fold predictions are made for. Fold ``f``'s
model trains on the unconfirmed pool and fold ``f``'s training part (every view of every object: early
outputs read short histories) and scores fold ``f``'s test part, which it never saw. The artifact carries
one model refitted by the same recipe on the pool and every confirmed object (``trees.ship = "refit"``,
default: the fold models' scores estimate it, and the service walks a fifth of the trees) or every
fold's model, averaged (``"folds"``). Unlike the net's head, the trees can use the whole pool: nothing
upstream was fitted to those objects, so their features are no cleaner than a new object's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from broker_plugin.inference.history import history_features
from broker_plugin.inference.preprocess import measured_frames
from broker_plugin.inference.trees import ARRAY_NAMES, BoostedTrees, statistics_features
from broker_plugin.progress import progress
from broker_plugin_train.config import CLASSES
from broker_plugin_train.evaluate import scores
from broker_plugin_train.plan import Plan
from broker_plugin_train.prefix import output_frame, prefix_windows


def trees_dir(plan: Plan) -> Path:
    """Where the fold models, their features and their out-of-fold predictions go."""
    return plan.run_dir / "trees"


def output_frames(n_frames: int, prefixes: tuple[int, ...], chunk_size: int, max_chunks: int) -> list[int]:
    """Index of the frame whose output each prefix view (then the whole history) is, as the net's views."""
    windows = prefix_windows(n_frames, prefixes, chunk_size, max_chunks)
    return [output_frame(window, n_frames, chunk_size) for window in windows]


def object_features(plan: Plan, indices: np.ndarray, label: str) -> np.ndarray:
    """Features ``(n, views, HISTORY_STATISTICS)`` of objects ``indices`` at every prefix view."""
    net = plan.new_net(0)
    prefixes = tuple(plan.config.training.finetune.prefix_frames)
    out = []
    for i in progress(indices, desc=label, unit=" objects", leave=False):
        raw = plan.source.raw(int(i))
        assert raw.context is not None and raw.history is not None  # noqa: S101 - history datasets only
        mjd = raw.context.mjd[measured_frames(raw.masks)]  # the frames the net's input keeps
        at = output_frames(len(mjd), prefixes, net.chunk_size, net.max_chunks)
        out.append(np.stack([history_features(raw.history, float(mjd[k])) for k in at]))
    return np.stack([statistics_features(rows) for rows in out])


def from_sklearn(models: list[Any]) -> BoostedTrees:
    """Flatten fitted ``HistGradientBoostingClassifier`` models (numeric features) into arrays."""
    trees: list[Any] = []
    tree_class, tree_model = [], []
    for m, model in enumerate(models):
        if list(model.classes_) != list(range(len(CLASSES))):
            raise ValueError(f"model {m} was fitted on classes {model.classes_}, not 0..{len(CLASSES) - 1}")
        for iteration in model._predictors:
            for k, predictor in enumerate(iteration):
                if predictor.nodes["is_categorical"].any():
                    raise ValueError("categorical splits are not supported")
                trees.append(predictor.nodes)
                tree_class.append(k)
                tree_model.append(m)
    width = max(len(t) for t in trees)
    padded = {
        "feature": np.zeros((len(trees), width), np.int64),
        "threshold": np.zeros((len(trees), width)),
        "left": np.zeros((len(trees), width), np.int64),
        "right": np.zeros((len(trees), width), np.int64),
        "missing_left": np.zeros((len(trees), width), bool),
        "leaf": np.ones((len(trees), width), bool),
        "value": np.zeros((len(trees), width)),
    }
    for t, nodes in enumerate(trees):
        n = len(nodes)
        leaf = nodes["is_leaf"].astype(bool)
        padded["leaf"][t, :n] = leaf
        padded["feature"][t, :n] = np.where(leaf, 0, nodes["feature_idx"])
        padded["threshold"][t, :n] = nodes["num_threshold"]
        padded["left"][t, :n] = nodes["left"]
        padded["right"][t, :n] = nodes["right"]
        padded["missing_left"][t, :n] = nodes["missing_go_to_left"].astype(bool)
        padded["value"][t, :n] = nodes["value"]
    baseline = np.stack([np.asarray(model._baseline_prediction, np.float64).reshape(-1) for model in models])
    return BoostedTrees(
        **padded, tree_class=np.array(tree_class), tree_model=np.array(tree_model), baseline=baseline
    )


def _fit(plan: Plan, x: np.ndarray, y: np.ndarray, seed: int) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier

    c = plan.config.training.trees
    model = HistGradientBoostingClassifier(
        max_iter=c.max_iter, learning_rate=c.learning_rate, max_leaf_nodes=c.max_leaf_nodes,
        early_stopping=c.early_stopping, class_weight="balanced", random_state=seed,
    )  # fmt: skip
    return model.fit(x, y)


def run_trees(plan: Plan) -> dict[str, Any]:
    """Fit (or load) every fold's model; write its arrays and the out-of-fold probabilities."""
    out = trees_dir(plan)
    out.mkdir(parents=True, exist_ok=True)
    features = out / "features.npz"
    transfer = np.sort(np.concatenate([s.test for s in plan.transfer_folds]))
    if features.exists():
        with np.load(features) as stored:
            x_pool, x_transfer = stored["pool"], stored["transfer"]
    else:
        x_pool = object_features(plan, plan.pretrain_idx, "trees: pool features")
        x_transfer = object_features(plan, transfer, "trees: confirmed features")
        np.savez(features, pool=x_pool, transfer=x_transfer)
    pos = {int(i): k for k, i in enumerate(transfer)}
    labels = plan.source.labels
    views = x_pool.shape[1]
    summary = []
    for split in progress(plan.transfer_folds, desc="trees", unit="fold"):
        path = out / f"fold-{split.fold}.npz"
        if not path.exists():
            train = [pos[int(i)] for i in split.train]
            x = np.concatenate([x_pool, x_transfer[train]]).reshape(-1, x_pool.shape[-1])
            y = np.repeat(np.concatenate([labels[plan.pretrain_idx], labels[split.train]]), views)
            model = _fit(plan, x, y, plan.config.training.seed * 1000 + split.fold)
            arrays = from_sklearn([model]).arrays()
            test = x_transfer[[pos[int(i)] for i in split.test]]
            probs = np.stack([model.predict_proba(test[:, v]) for v in range(views)], axis=1)
            np.savez(path, **arrays, indices=split.test, probs=probs, iterations=model.n_iter_)
        with np.load(path) as stored:
            s = scores(labels[split.test], stored["probs"][:, -1], CLASSES)
            summary.append({"fold": split.fold, "iterations": int(stored["iterations"]),
                            **{k: s[k] for k in ("accuracy", "macro_f1")}})  # fmt: skip
    (out / "folds.json").write_text(json.dumps(summary, indent=1) + "\n")
    refit = out / "refit.npz"
    if plan.config.training.trees.ship == "refit" and not refit.exists():
        # The shipped model: the same recipe on every object the folds' models saw between them.
        x = np.concatenate([x_pool, x_transfer]).reshape(-1, x_pool.shape[-1])
        y = np.repeat(np.concatenate([labels[plan.pretrain_idx], labels[transfer]]), views)
        model = _fit(plan, x, y, plan.config.training.seed * 1000 + 999)
        np.savez(refit, **from_sklearn([model]).arrays(), iterations=model.n_iter_)
    return {"per_fold": summary}


def fold_probs(plan: Plan, fold: int, indices: np.ndarray) -> np.ndarray:
    """Fold ``fold``'s out-of-fold tree probabilities ``(n, views, K)`` for its test objects ``indices``."""
    path = trees_dir(plan) / f"fold-{fold}.npz"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the trees stage (training.trees.enabled) first")
    with np.load(path) as stored:
        if not np.array_equal(stored["indices"], indices):
            raise ValueError(f"fold {fold}'s trees scored other objects than its net members: rerun trees")
        return stored["probs"]


def load_trees(plan: Plan) -> BoostedTrees:
    """The trees the artifact ships (``training.trees.ship``).

    The refitted model, or every fold's model in one :class:`BoostedTrees` (the service averages them).
    """
    if plan.config.training.trees.ship == "refit":
        with np.load(trees_dir(plan) / "refit.npz") as stored:
            return BoostedTrees.from_arrays({n: stored[n] for n in ARRAY_NAMES})
    parts = []
    for split in plan.transfer_folds:
        with np.load(trees_dir(plan) / f"fold-{split.fold}.npz") as stored:
            parts.append({n: stored[n] for n in ARRAY_NAMES})
    width = max(p["feature"].shape[1] for p in parts)

    def pad(a: np.ndarray, fill: Any) -> np.ndarray:
        return np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=fill)

    merged = {
        n: np.concatenate([pad(p[n], n == "leaf") for p in parts])
        for n in ("feature", "threshold", "left", "right", "missing_left", "leaf", "value")
    }
    merged["tree_class"] = np.concatenate([p["tree_class"] for p in parts])
    merged["tree_model"] = np.concatenate([np.full(len(p["tree_model"]), m) for m, p in enumerate(parts)])
    merged["baseline"] = np.concatenate([p["baseline"] for p in parts])
    return BoostedTrees.from_arrays(merged)
