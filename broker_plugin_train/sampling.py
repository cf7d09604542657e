"""Class balance: balanced class weights, class-balanced draws, and the per-sample focal loss.

The authors stacked three mechanisms (duplication, a weighted sampler and focal-loss class weights,
convention-spec 4.4). Duplication is gone (it caused the fold leakage); balanced *sampling* of the
training part and class-weighted focal loss remain, each configurable.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def balanced_class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Return sklearn's "balanced" weights ``n / (k * count)`` (0 for an absent class)."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    weights = np.zeros(n_classes)
    present = counts > 0
    weights[present] = len(labels) / (present.sum() * counts[present])
    return weights


def balanced_draws(labels: np.ndarray, n: int, rng: np.random.Generator, balanced: bool = True) -> np.ndarray:
    """Draw ``n`` positions into ``labels`` (with replacement), every class equally likely if ``balanced``.

    Parameters
    ----------
    labels
        Class of each training sample.
    n
        Number of draws.
    rng
        Source of randomness.
    balanced
        False: a plain shuffled pass (without replacement while it lasts).
    """
    if not balanced:
        reps = -(-n // len(labels))
        return np.concatenate([rng.permutation(len(labels)) for _ in range(reps)])[:n]
    counts = np.bincount(labels)
    p = 1.0 / counts[labels]
    return rng.choice(len(labels), size=n, replace=True, p=p / p.sum())


def focal_loss(
    logits: torch.Tensor, target: torch.Tensor, class_weight: torch.Tensor | None, gamma: float
) -> torch.Tensor:
    """Focal loss computed per sample: ``mean_i(w_{y_i} (1 - p_i)^gamma CE_i) / mean_i(w_{y_i})``.

    The authors modulated the *batch-mean* cross-entropy by one ``(1 - exp(-CE))^gamma`` factor, which
    down-weights whole batches, not easy samples (convention-spec 4.5); here ``p_i`` is each sample's
    probability of its true class. Normalising by the mean weight keeps the scale of the learning rate.
    """
    logp = F.log_softmax(logits.float(), dim=-1).gather(1, target[:, None]).squeeze(1)
    loss = -((1.0 - logp.exp()).clamp_min(0.0) ** gamma) * logp
    if class_weight is None:
        return loss.mean()
    w = class_weight[target]
    return (w * loss).sum() / w.sum().clamp_min(1e-12)
