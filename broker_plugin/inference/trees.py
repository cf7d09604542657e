"""Gradient-boosted trees on the photometric history, and their blend with the net ensemble.

The history an alert carries (every epoch's forced photometry) holds most of what separates the classes;
trees on its :func:`~broker_plugin.inference.history_statistics.history_statistics` read it from far
more training objects than the net's head can use (the unconfirmed pool as well as the confirmed
objects), and their errors differ from the net's. The service's answer is the two experts' product:
``p ~ p_net ** w * p_trees ** (1 - w)`` (``w``: the artifact's ``net_weight``), renormalised.

The trees are stored as flat arrays (no pickled estimator, no scikit-learn at serving time) and walked
in numpy: every tree at once, one level per step, for a whole micro-batch. The rule at a node is
scikit-learn's ``HistGradientBoostingClassifier``'s (tested equal to its ``predict_proba``): a missing
(NaN) value goes to the side the node learnt, otherwise ``x <= threshold`` goes left. A multiclass model
adds one tree per class and iteration to its baseline; its softmax is its probability; several models
(one per fold, when an artifact ships them all) are averaged.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from broker_plugin.inference.errors import InferenceInputError
from broker_plugin.inference.history_statistics import HISTORY_STATISTICS, history_statistics

#: Names of the stored arrays, in :meth:`BoostedTrees.arrays` order.
ARRAY_NAMES = (
    "feature",
    "threshold",
    "left",
    "right",
    "missing_left",
    "leaf",
    "value",
    "tree_class",
    "tree_model",
    "baseline",
)


@dataclass(frozen=True)
class BoostedTrees:
    """One or more multiclass gradient-boosted tree models as padded node arrays.

    Attributes
    ----------
    feature, threshold, left, right, missing_left, leaf, value
        ``(T, N)`` per tree ``t`` and node ``n`` (node 0 is the root; rows are padded with leaves):
        the feature a split reads, its threshold, the children, where a NaN goes, whether the node is a
        leaf, and a leaf's raw value.
    tree_class, tree_model
        ``(T,)`` the class whose raw score a tree adds to, and the model it belongs to.
    baseline
        ``(M, K)`` each model's initial raw scores.
    """

    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    missing_left: np.ndarray
    leaf: np.ndarray
    value: np.ndarray
    tree_class: np.ndarray
    tree_model: np.ndarray
    baseline: np.ndarray

    def __post_init__(self) -> None:
        shape = self.feature.shape
        nodes = (self.threshold, self.left, self.right, self.missing_left, self.leaf, self.value)
        if len(shape) != 2 or any(a.shape != shape for a in nodes):
            raise ValueError("tree node arrays must share one (trees, nodes) shape")
        if self.tree_class.shape != (shape[0],) or self.tree_model.shape != (shape[0],):
            raise ValueError("tree_class and tree_model need one entry per tree")
        if self.baseline.ndim != 2 or not len(self.baseline):
            raise ValueError("baseline must be (models, classes)")
        splits = ~self.leaf
        if (self.left[splits] >= shape[1]).any() or (self.right[splits] >= shape[1]).any():
            raise ValueError("a child index points beyond its tree")
        if (self.left[splits] <= 0).any() or (self.right[splits] <= 0).any():
            raise ValueError("a child index points back to the root")
        models, classes = self.baseline.shape
        if ((self.tree_class < 0) | (self.tree_class >= classes)).any():
            raise ValueError("a tree adds to a class the models do not have")
        if ((self.tree_model < 0) | (self.tree_model >= models)).any():
            raise ValueError("a tree belongs to a model that does not exist")
        if (self.feature[splits] < 0).any():
            raise ValueError("a split reads a negative feature index")
        self._flat  # noqa: B018 - builds the walk's layout now: a malformed tree fails on loading

    @property
    def n_models(self) -> int:
        """Models averaged (one per fold)."""
        return int(self.baseline.shape[0])

    @property
    def n_classes(self) -> int:
        """Classes of every model."""
        return int(self.baseline.shape[1])

    @functools.cached_property
    def n_features(self) -> int:
        """Smallest feature vector the splits can read (a scan of every node: computed once)."""
        splits = ~self.leaf
        return int(self.feature[splits].max()) + 1 if splits.any() else 0

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays by name (:data:`ARRAY_NAMES`), for storage.

        Indices go in the narrowest integer type that holds them; thresholds and values stay float64,
        so decisions and scores are unchanged.
        """
        out = {}
        for name in ARRAY_NAMES:
            a = getattr(self, name)
            if a.dtype == np.int64:
                a = a.astype(np.int16 if np.abs(a).max(initial=0) < 2**15 else np.int32)
            out[name] = a
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> BoostedTrees:
        """Rebuild from :meth:`arrays` (dtypes normalised; shapes and indices checked: ValueError)."""
        missing = [n for n in ARRAY_NAMES if n not in arrays]
        if missing:
            raise ValueError(f"tree arrays missing: {missing}")
        ints = ("feature", "left", "right", "tree_class", "tree_model")
        bools = ("missing_left", "leaf")
        return cls(**{
            n: np.asarray(arrays[n], dtype=np.int64 if n in ints else bool if n in bools else np.float64)
            for n in ARRAY_NAMES
        })  # fmt: skip

    @functools.cached_property
    def _flat(self) -> dict[str, np.ndarray | int]:
        """The nodes of every tree in one 1-D layout, leaves pointing at themselves (see raw_scores)."""
        t, n = self.feature.shape
        ids = np.arange(t * n).reshape(t, n)
        offset = (np.arange(t) * n)[:, None]
        left = np.where(self.leaf, ids, self.left + offset)
        right = np.where(self.leaf, ids, self.right + offset)
        # Depth of the deepest leaf: children are numbered after their parent (scikit-learn's order,
        # checked here), so one pass in node order finds every node's depth.
        depth = np.zeros((t, n), np.int64)
        rows = np.arange(t)
        for k in range(n):
            split = ~self.leaf[:, k]
            if ((self.left[split, k] <= k) | (self.right[split, k] <= k)).any():
                raise ValueError("a child is numbered before its parent")
            depth[rows[split], self.left[split, k]] = depth[split, k] + 1
            depth[rows[split], self.right[split, k]] = depth[split, k] + 1
        models, classes = self.baseline.shape
        # Each tree's leaf value goes to its model's raw score of its class: one matrix product.
        scatter = np.zeros((t, models * classes))
        scatter[rows, self.tree_model * classes + self.tree_class] = 1.0
        return {
            "feature": np.where(self.leaf, 0, self.feature).ravel(),
            "threshold": self.threshold.ravel(),
            "missing_left": self.missing_left.ravel(),
            "left": left.ravel(),
            "right": right.ravel(),
            "value": self.value.ravel(),
            "leaf": self.leaf.ravel(),
            "roots": offset.ravel(),
            "depth": int(depth.max()),
            "scatter": scatter,
        }

    def raw_scores(self, x: np.ndarray) -> np.ndarray:
        """Each model's raw class scores ``(M, B, K)`` for features ``x`` ``(B, F)``.

        Every (row, tree) pair walks down one level per step until it reaches its leaf; the pairs that
        did leave the walk (most paths end within a few levels). All lookups are 1-D ``take``s, far
        cheaper in numpy than 2-D fancy indexing.
        """
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] < self.n_features:
            raise InferenceInputError(f"trees need (batch, >= {self.n_features}) features, got {x.shape}")
        f = self._flat
        b, width = x.shape
        node = np.tile(f["roots"], b)
        base = np.repeat(np.arange(b) * width, len(f["roots"]))
        flat_x = x.ravel()
        nan = bool(np.isnan(flat_x).any())
        # Pairs still above their leaf; most paths end within a few levels, so the work shrinks.
        active = np.arange(len(node))
        walking, offsets = node, base
        for _ in range(f["depth"]):
            value = flat_x.take(offsets + f["feature"].take(walking))
            go_left = value <= f["threshold"].take(walking)
            if nan:
                go_left |= np.isnan(value) & f["missing_left"].take(walking)
            walking = np.where(go_left, f["left"].take(walking), f["right"].take(walking))
            going = ~f["leaf"].take(walking)
            if not going.all():
                node[active] = walking
                active, walking, offsets = active[going], walking[going], offsets[going]
                if not len(active):
                    break
        node[active] = walking
        leaf_value = f["value"].take(node).reshape(b, -1)
        raw = (leaf_value @ f["scatter"]).reshape(b, *self.baseline.shape) + self.baseline
        return raw.transpose(1, 0, 2)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities ``(B, K)``: the mean over models of each model's softmax."""
        raw = self.raw_scores(x)
        raw -= raw.max(axis=-1, keepdims=True)
        p = np.exp(raw)
        return (p / p.sum(axis=-1, keepdims=True)).mean(axis=0)

    def history_probs(self, rows: np.ndarray) -> np.ndarray:
        """Class probabilities ``(B, K)`` from history rows ``(B, P, F)`` (their statistics)."""
        if self.n_features > HISTORY_STATISTICS:
            raise InferenceInputError(f"trees read {self.n_features} features, not {HISTORY_STATISTICS}")
        return self.predict_proba(statistics_features(rows))


def statistics_features(rows: np.ndarray) -> np.ndarray:
    """The trees' features ``(B, HISTORY_STATISTICS)`` float64 of history rows ``(B, P, F)``.

    Computed in float32 by :func:`history_statistics`, as inside the net, then widened: training and
    serving compare the same numbers against the thresholds.
    """
    with torch.inference_mode():
        stats = history_statistics(torch.as_tensor(np.asarray(rows, dtype=np.float32)))
    return stats.numpy().astype(np.float64)


def blend(net: np.ndarray, trees: np.ndarray, net_weight: float) -> np.ndarray:
    """The product of the two experts' probabilities, ``net ** w * trees ** (1 - w)``, renormalised.

    A class either expert rules out (probability ~0) stays ruled out, unlike an average; ``w = 1`` is
    the net alone. Probabilities are floored at 1e-9 so that one exact zero cannot zero a row.
    """
    if not 0.0 <= net_weight <= 1.0:
        raise ValueError(f"net_weight must lie in [0, 1], got {net_weight}")
    log = net_weight * np.log(np.clip(net, 1e-9, None))
    log += (1.0 - net_weight) * np.log(np.clip(trees, 1e-9, None))
    log -= log.max(axis=-1, keepdims=True)
    p = np.exp(log)
    return (p / p.sum(axis=-1, keepdims=True)).astype(net.dtype, copy=False)
