import numpy as np

from broker_plugin_train.splits import fold_splits, holdout, stratified_folds


def test_folds_partition_unique_objects_and_keep_validation_apart():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 203)
    indices = np.arange(1000, 1203)
    splits = fold_splits(indices, labels, 5, seed=1)
    tests = np.concatenate([s.test for s in splits])
    assert sorted(tests) == list(indices)  # every object tested exactly once
    for s in splits:
        assert not set(s.train) & set(s.val)
        assert not set(s.train) & set(s.test)
        assert not set(s.val) & set(s.test)
        assert len(s.train) + len(s.val) + len(s.test) == len(indices)


def test_folds_are_stratified_and_deterministic():
    labels = np.repeat([0, 1, 2, 3], [100, 50, 20, 6])
    a, b = stratified_folds(labels, 5, 3), stratified_folds(labels, 5, 3)
    assert (a == b).all()
    for cls in range(4):
        counts = np.bincount(a[labels == cls], minlength=5)
        assert counts.max() - counts.min() <= 1
    assert not (stratified_folds(labels, 5, 4) == a).all()


def test_holdout_takes_a_fraction_of_every_class():
    labels = np.repeat([0, 1], [90, 10])
    train, val = holdout(np.arange(100), labels, 0.1, 0)
    assert len(val) == 10 and set(labels[val]) == {0, 1}
    assert not set(train) & set(val)
