"""Folds over unique objects, decided before any oversampling (the fix of convention-spec 4.2).

The authors duplicated rare classes first and ran ``KFold`` on the duplicated lists, so copies of one
object could be trained on and tested on. Here every object id appears exactly once in the split: the
confirmed (transfer) pool is cut into ``k`` class-stratified folds; for fold ``f`` the test part is fold
``f``, the validation part (model selection) is fold ``f + 1``, and training uses the rest. Balancing
happens afterwards, by sampling, inside the training part only (:mod:`broker_plugin_train.sampling`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FoldSplit:
    """Object indices of one fold: disjoint ``train``, ``val`` and ``test``."""

    fold: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def stratified_folds(labels: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Assign each object a fold in ``0..n_folds-1``, balanced per class.

    Parameters
    ----------
    labels
        Class id of each unique object.
    n_folds
        Number of folds.
    seed
        Shuffling seed.

    Returns
    -------
    numpy.ndarray
        Fold id of each object.
    """
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), dtype=np.int64)
    offset = 0
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        # Continue the round robin across classes so fold sizes differ by at most one overall.
        fold[members] = (np.arange(len(members)) + offset) % n_folds
        offset += len(members)
    return fold


def fold_splits(indices: np.ndarray, labels: np.ndarray, n_folds: int, seed: int) -> list[FoldSplit]:
    """Cut objects ``indices`` (with ``labels``) into test / validation / training parts per fold."""
    fold = stratified_folds(labels, n_folds, seed)
    out = []
    for f in range(n_folds):
        v = (f + 1) % n_folds
        out.append(FoldSplit(f, indices[(fold != f) & (fold != v)], indices[fold == v], indices[fold == f]))
    return out


def holdout(
    indices: np.ndarray, labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``indices`` into (train, validation) with about ``fraction`` of each class in validation."""
    rng = np.random.default_rng(seed)
    val = np.zeros(len(indices), dtype=bool)
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        val[members[: max(1, round(fraction * len(members)))]] = True
    return indices[~val], indices[val]
