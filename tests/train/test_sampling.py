import numpy as np
import torch
import torch.nn.functional as F

from broker_plugin_train.sampling import balanced_class_weights, balanced_draws, focal_loss


def test_balanced_weights_match_sklearn_formula():
    # The authors' counts (convention-spec 4.3) give their published weights.
    labels = np.repeat([0, 1, 2, 3], [904, 1448, 3225, 2041])
    w = balanced_class_weights(labels, 4)
    np.testing.assert_allclose(w, [2.10674779, 1.31526243, 0.59054264, 0.93312102], rtol=1e-6)


def test_balanced_draws_equalise_classes():
    labels = np.repeat([0, 1], [950, 50])
    draws = balanced_draws(labels, 20000, np.random.default_rng(0))
    share = np.bincount(labels[draws]) / len(draws)
    np.testing.assert_allclose(share, [0.5, 0.5], atol=0.02)
    plain = balanced_draws(labels, 1000, np.random.default_rng(0), balanced=False)
    assert sorted(plain) == list(range(1000))


def test_focal_loss_is_per_sample():
    logits = torch.tensor([[4.0, 0.0], [0.0, 0.0]])
    target = torch.tensor([0, 0])
    loss = focal_loss(logits, target, None, gamma=2.0)
    ce = F.cross_entropy(logits, target, reduction="none")
    p = torch.exp(-ce)
    torch.testing.assert_close(loss, ((1 - p) ** 2 * ce).mean())
    # gamma 0 and no weights: plain cross-entropy
    torch.testing.assert_close(focal_loss(logits, target, None, 0.0), ce.mean())
    # class weights: a weighted mean
    w = torch.tensor([1.0, 3.0])
    target2 = torch.tensor([0, 1])
    ce2 = F.cross_entropy(logits, target2, reduction="none")
    torch.testing.assert_close(focal_loss(logits, target2, w, 0.0), (ce2 * w).sum() / w.sum())
