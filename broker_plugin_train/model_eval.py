"""``evaluate --model DIR --data DATASET``: score a saved artifact on any simulator dataset folder.

The artifact is loaded and verified by the service's own loader, inputs go through the service's
preprocessing with the artifact's normalisation, and the ensemble's mean probability is scored after
each prefix and on whole histories (blended with the artifact's history trees, as the service does,
with the members alone reported beside). Members that share a frozen backbone share one pass of the
front end and the blocks; each member's head and history layers read it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from broker_plugin.inference.artifact import load_artifact
from broker_plugin.inference.ensemble import MEMBER_OWN_PREFIXES
from broker_plugin.inference.trees import blend
from broker_plugin.progress import progress
from broker_plugin_train.config import TrainConfig
from broker_plugin_train.evaluate import scores, write_report
from broker_plugin_train.objects import ObjectSource
from broker_plugin_train.plan import training_device
from broker_plugin_train.prefix import head_probs, prefix_features, prefix_history_rows


def _backbone_digest(net: torch.nn.Module) -> str:
    """Digest of what members sharing a front end and blocks have in common.

    Their heads and history layers after the GRU differ
    (:data:`~broker_plugin.inference.ensemble.MEMBER_OWN_PREFIXES`).
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(net.state_dict().items()):
        if not name.startswith(("head.", *MEMBER_OWN_PREFIXES)):
            digest.update(name.encode() + tensor.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


def evaluate_artifact(
    model: str | Path,
    data: str | Path,
    config: TrainConfig,
    *,
    pool: str | None = None,
    limit: int | None = None,
    out: Path | None = None,
    cutout_side: int | None = None,
) -> dict[str, Any]:
    """Score the artifact ``model`` on dataset ``data``; with ``out`` also write the report files.

    ``cutout_side``: present every frame as a cutout of that many frame pixels around the source
    (:func:`~broker_plugin_train.objects.cutout_view`), a robustness view; None: as simulated.
    """
    torch.set_num_threads(config.training.threads)
    art = load_artifact(model, device=training_device(config.training.device))
    d = config.training.data
    source = ObjectSource.from_shards(
        data, bands=d.bands, min_snr=d.min_snr, min_frames=d.min_frames, cutout_side=cutout_side
    )
    idx = np.arange(len(source)) if pool is None else np.flatnonzero(source.pools == pool)
    idx = idx[:limit] if limit else idx
    first = art.members[0]
    inputs = [source.input_for(i, art.normalisation, first) for i in idx]
    prefixes = config.training.evaluate.curve_frames
    groups: dict[str, list[int]] = {}
    for k, net in enumerate(art.members):
        groups.setdefault(_backbone_digest(net), []).append(k)
    member_probs: list[np.ndarray] = [np.empty(0)] * len(art.members)
    for members in progress(groups.values(), desc="evaluate", unit=" backbone"):
        # One front-end and blocks pass per shared backbone; each member's head and history layers on it.
        nets = [art.members[k] for k in members]
        features = prefix_features(nets, inputs, prefixes, label=f"members {members[0]}-{members[-1]}")
        for k, feats in zip(members, features, strict=True):
            member_probs[k] = head_probs(art.members[k].head, feats)
    probs = np.mean(member_probs, axis=0)
    y = source.labels[idx]
    blended: dict[str, Any] = {}
    if art.trees is not None:
        rows = prefix_history_rows(first, inputs, prefixes)
        n, views = rows.shape[:2]
        tree_probs = art.trees.history_probs(rows.reshape(n * views, *rows.shape[2:])).reshape(n, views, -1)
        blended = {
            "net_only": scores(y, probs[:, -1], art.class_names),
            "trees_only": scores(y, tree_probs[:, -1], art.class_names),
        }
        probs = blend(probs, tree_probs, art.net_weight)
    extra = {
        "model_id": art.model_id,
        "data": str(data),
        "data_hash": source.data_hash,
        "pool": pool,
        "cutout_side": cutout_side,
        "members": len(art.members),
        "single_members": [
            {k: scores(y, p[:, -1], art.class_names)[k] for k in ("accuracy", "macro_f1")}
            for p in member_probs
        ],
        **{k: {m: v[m] for m in ("accuracy", "macro_f1")} for k, v in blended.items()},
    }
    if out is not None:
        return write_report(
            out,
            y,
            probs,
            prefixes,
            art.class_names,
            config.training.evaluate.reliability_bins,
            extra=extra,
            name=art.metadata["net"]["name"],
        )
    from broker_plugin_train.evaluate import curve, reliability

    return {
        "classes": art.class_names,
        "whole_history": scores(y, probs[:, -1], art.class_names),
        "early_classification": curve(y, probs, prefixes, art.class_names),
        "reliability": reliability(y, probs[:, -1], config.training.evaluate.reliability_bins),
        **extra,
    }
