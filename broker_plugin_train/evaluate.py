"""Scores, the early-classification curve, and the report figures (JSON + PNG).

Metrics: overall accuracy, macro-F1, per-class precision / recall / F1, balanced accuracy (mean
per-class *recall*; the authors' "average accuracy" was really mean precision, convention-spec 4.7),
Cohen's kappa, the confusion matrix [true, predicted]. The curve scores the same objects after the
first ``k`` frames only. Plots use matplotlib's non-interactive backend.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)


def scores(y: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """All metrics of predictions ``probs`` ``(n, classes)`` against labels ``y``."""
    labels = list(range(len(classes)))
    pred = probs.argmax(-1)
    p, r, f, support = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    return {
        "n": len(y),
        "accuracy": float(accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "cohen_kappa": float(cohen_kappa_score(y, pred, labels=labels)),
        "per_class": {
            c: {
                "precision": float(p[k]),
                "recall": float(r[k]),
                "f1": float(f[k]),
                "support": int(support[k]),
            }
            for k, c in enumerate(classes)
        },
        "confusion": confusion_matrix(y, pred, labels=labels).tolist(),
    }


def curve(
    y: np.ndarray, probs: np.ndarray, frames: Sequence[int], classes: Sequence[str]
) -> list[dict[str, Any]]:
    """Accuracy and macro-F1 after each number of ``frames`` (``probs`` ``(n, V, C)``, last = whole)."""
    rows = []
    for v, k in enumerate([*frames, "all"]):
        s = scores(y, probs[:, v], classes)
        rows.append({"frames": k, "accuracy": s["accuracy"], "macro_f1": s["macro_f1"]})
    return rows


def mean_std(
    values: Sequence[dict[str, Any]],
    keys: Sequence[str] = ("accuracy", "macro_f1", "balanced_accuracy", "cohen_kappa"),
) -> dict[str, dict[str, float]]:
    """Mean and (population) standard deviation of metric ``keys`` over folds."""
    return {
        k: {"mean": float(np.mean([v[k] for v in values])), "std": float(np.std([v[k] for v in values]))}
        for k in keys
    }


def reliability(y: np.ndarray, probs: np.ndarray, bins: int) -> dict[str, Any]:
    """Confidence vs accuracy per bin of top-class probability, and the expected calibration error."""
    conf, pred = probs.max(-1), probs.argmax(-1)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges) - 1, 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            acc, c = float(np.mean(pred[sel] == y[sel])), float(np.mean(conf[sel]))
            ece += sel.mean() * abs(acc - c)
            rows.append(
                {
                    "bin": [float(edges[b]), float(edges[b + 1])],
                    "confidence": c,
                    "accuracy": acc,
                    "count": int(sel.sum()),
                }
            )
    return {"bins": rows, "ece": float(ece)}


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(
    confusion: Sequence[Sequence[int]], classes: Sequence[str], path: Path, title: str
) -> None:
    """Counts and row-normalised confusion matrices side by side."""
    plt = _plt()
    cm = np.asarray(confusion, float)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    for ax, mat, fmt, name in (
        (axes[0], cm, "{:.0f}", "counts"),
        (axes[1], norm, "{:.2f}", "row-normalised"),
    ):
        ax.imshow(mat, cmap="Blues")
        ax.set_xticks(range(len(classes)), classes)
        ax.set_yticks(range(len(classes)), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"{title}: {name}")
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(
                    j,
                    i,
                    fmt.format(mat[i, j]),
                    ha="center",
                    va="center",
                    color="white" if mat[i, j] > mat.max() / 2 else "black",
                )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_curves(curves: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """Accuracy and macro-F1 versus frames seen, one line per model."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, rows in curves.items():
        pts = [r for r in rows if r["frames"] != "all"]
        for ax, key in zip(axes, ("accuracy", "macro_f1"), strict=True):
            ax.plot([r["frames"] for r in pts], [r[key] for r in pts], marker="o", label=name)
    for ax, key in zip(axes, ("overall accuracy", "macro-F1"), strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("frames seen")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("early classification (held-out test folds)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_reliability(rel: dict[str, Any], path: Path) -> None:
    """Reliability diagram of the top-class probability."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    rows = rel["bins"]
    ax.bar(
        [r["bin"][0] for r in rows],
        [r["accuracy"] for r in rows],
        width=[r["bin"][1] - r["bin"][0] for r in rows],
        align="edge",
        alpha=0.6,
        edgecolor="k",
        label="accuracy",
    )
    ax.plot([r["confidence"] for r in rows], [r["accuracy"] for r in rows], "o-", color="C1")
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability (ECE {rel['ece']:.3f})")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_report(
    out: Path,
    y: np.ndarray,
    probs: np.ndarray,
    frames: Sequence[int],
    classes: Sequence[str],
    bins: int,
    extra: dict[str, Any] | None = None,
    name: str = "model",
) -> dict[str, Any]:
    """Write ``metrics.json`` and the three figures for predictions ``probs`` ``(n, V, C)``."""
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "classes": list(classes),
        "whole_history": scores(y, probs[:, -1], classes),
        "early_classification": curve(y, probs, frames, classes),
        "reliability": reliability(y, probs[:, -1], bins),
        **(extra or {}),
    }
    plot_confusion(result["whole_history"]["confusion"], classes, out / "confusion.png", name)
    plot_curves({name: result["early_classification"]}, out / "early_classification.png")
    plot_reliability(result["reliability"], out / "reliability.png")
    (out / "metrics.json").write_text(json.dumps(result, indent=1) + "\n")
    return result
