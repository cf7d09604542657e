"""The light-curve-feature baseline (the only module that uses ``scikit-learn``).

Gradient-boosted trees on :mod:`broker_plugin_train.data.features`, trained on a stratified random 70 % of the
objects and scored on the held-out 30 %: a check that the simulated labels are learnable but not
trivial, and the light-curve reference point of the model comparison.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score
from sklearn.model_selection import train_test_split

from broker_plugin_train.config import CLASSES
from broker_plugin_train.data.features import FEATURE_NAMES, extract
from broker_plugin_train.data.shards import ShardDataset


def feature_table(data: ShardDataset) -> tuple[np.ndarray, np.ndarray]:
    """Features ``(n, F)`` and labels ``(n,)`` of every object."""
    return np.stack([extract(seq) for seq in data]), data.labels


def run_baseline(
    dataset: str | Path, seed: int = 0, test_size: float = 0.3, max_iter: int = 300
) -> dict[str, Any]:
    """Train and score the baseline on a simulated dataset.

    Parameters
    ----------
    dataset
        Simulated dataset folder.
    seed
        Seed of the split and of the trees.
    test_size
        Held-out fraction (stratified by label).
    max_iter
        Boosting iterations.

    Returns
    -------
    dict
        ``accuracy``, ``macro_f1``, the row-normalisable ``confusion`` matrix [true, predicted], the
        number of broker_plugin_train/test objects and the same scores on the held-out confirmed objects.
    """
    data = ShardDataset(dataset)
    x, y = feature_table(data)
    idx = np.arange(len(y))
    train, test = train_test_split(idx, test_size=test_size, stratify=y, random_state=seed)
    model = HistGradientBoostingClassifier(
        max_iter=max_iter, learning_rate=0.08, class_weight="balanced", random_state=seed
    )
    model.fit(x[train], y[train])
    pred = model.predict(x[test])
    confirmed = np.array([data.metadata[i]["confirmed"] for i in test])
    return {
        "features": len(FEATURE_NAMES),
        "n_train": len(train),
        "n_test": len(test),
        "accuracy": float(accuracy_score(y[test], pred)),
        "macro_f1": float(f1_score(y[test], pred, average="macro")),
        "accuracy_confirmed": float(accuracy_score(y[test][confirmed], pred[confirmed])),
        "macro_f1_confirmed": float(f1_score(y[test][confirmed], pred[confirmed], average="macro")),
        "classes": list(CLASSES),
        "confusion": confusion_matrix(y[test], pred, labels=range(len(CLASSES))).tolist(),
    }
