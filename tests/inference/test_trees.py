"""History trees: the numpy walk equals scikit-learn, the blend, the stored arrays' checks."""

import numpy as np
import pytest
import torch

from broker_plugin.inference.errors import InferenceInputError
from broker_plugin.inference.history import HISTORY_FEATURES
from broker_plugin.inference.history_statistics import HISTORY_STATISTICS, history_statistics
from broker_plugin.inference.trees import BoostedTrees, blend, statistics_features

from ..factories import make_trees


@pytest.fixture(scope="module")
def fitted():
    return make_trees(models=3, iterations=12)


def _features(n: int, seed: int = 1) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, HISTORY_STATISTICS))
    x[::3, 3] = np.nan  # missing values take the side each split learnt
    x[1::7, 0] = 0.0
    return x


def test_probabilities_equal_scikit_learns_mean_over_models(fitted):
    trees, estimators = fitted
    x = _features(257)
    expected = np.mean([e.predict_proba(x) for e in estimators], axis=0)
    np.testing.assert_allclose(trees.predict_proba(x), expected, rtol=0, atol=1e-12)
    # Thresholds sit exactly on values too: a value equal to a threshold goes left, as in scikit-learn.
    split = ~trees.leaf[0]
    on_threshold = np.tile(_features(1), (5, 1))
    on_threshold[:, trees.feature[0, 0]] = trees.threshold[0, 0]
    assert split.any()
    expected = np.mean([e.predict_proba(on_threshold) for e in estimators], axis=0)
    np.testing.assert_allclose(trees.predict_proba(on_threshold), expected, rtol=0, atol=1e-12)


def test_one_row_and_many_rows_agree(fitted):
    trees, _ = fitted
    x = _features(40, seed=3)
    together = trees.predict_proba(x)
    alone = np.concatenate([trees.predict_proba(x[i : i + 1]) for i in range(len(x))])
    np.testing.assert_allclose(together, alone, rtol=0, atol=1e-12)
    assert trees.raw_scores(x).shape == (3, 40, 4)


def test_arrays_round_trip_and_bad_arrays_are_refused(fitted):
    trees, _ = fitted
    again = BoostedTrees.from_arrays({k: v.copy() for k, v in trees.arrays().items()})
    x = _features(20)
    np.testing.assert_array_equal(again.predict_proba(x), trees.predict_proba(x))
    arrays = trees.arrays()
    with pytest.raises(ValueError, match="missing"):
        BoostedTrees.from_arrays({k: v for k, v in arrays.items() if k != "baseline"})
    beyond = {**arrays, "left": np.where(arrays["leaf"], 0, arrays["feature"].shape[1] + 5)}
    with pytest.raises(ValueError, match="beyond"):
        BoostedTrees.from_arrays(beyond)
    loop = {**arrays, "right": np.where(arrays["leaf"], 0, 0)}
    with pytest.raises(ValueError, match="root"):
        BoostedTrees.from_arrays(loop)
    backwards = {k: v.copy() for k, v in arrays.items()}
    t, k = np.argwhere(~arrays["leaf"][:, 2:])[0]
    backwards["left"][t, k + 2] = 1  # a child numbered before its parent: not a tree this code can walk
    with pytest.raises(ValueError, match="before its parent"):
        BoostedTrees.from_arrays(backwards)
    wrong_class = {**arrays, "tree_class": arrays["tree_class"] + 10}
    with pytest.raises(ValueError, match="class"):
        BoostedTrees.from_arrays(wrong_class)
    with pytest.raises(InferenceInputError):
        trees.predict_proba(np.zeros((2, 3)))


def test_history_probabilities_read_the_statistics_the_net_reads(fitted):
    trees, _ = fitted
    rows = np.random.default_rng(0).normal(size=(6, 16, HISTORY_FEATURES)).astype(np.float32)
    rows[..., 0] = rows[..., 0] > 0  # the valid column
    stats = history_statistics(torch.from_numpy(rows)).numpy()
    np.testing.assert_array_equal(statistics_features(rows), stats.astype(np.float64))
    np.testing.assert_array_equal(trees.history_probs(rows), trees.predict_proba(stats.astype(np.float64)))


def test_blend_is_the_normalised_product_of_the_experts():
    net = np.array([[0.7, 0.1, 0.1, 0.1], [0.25, 0.25, 0.25, 0.25]])
    trees = np.array([[0.1, 0.7, 0.1, 0.1], [0.0, 0.5, 0.25, 0.25]])
    out = blend(net, trees, 0.5)
    product = np.sqrt(net * np.clip(trees, 1e-9, None))
    np.testing.assert_allclose(out, product / product.sum(-1, keepdims=True), rtol=1e-6)
    np.testing.assert_allclose(out.sum(-1), 1.0, rtol=1e-9)
    assert out[1, 0] < 1e-4  # a class one expert rules out stays out, unlike an average
    np.testing.assert_allclose(blend(net, trees, 1.0), net, rtol=1e-9)
    np.testing.assert_allclose(blend(net[:, None], trees[:, None], 0.5)[:, 0], out)  # any leading axes
    with pytest.raises(ValueError, match="net_weight"):
        blend(net, trees, 1.5)
