"""The training loop shared by both stages: batches, epochs, validation, checkpoints, logs.

Each epoch reseeds its own generators from ``(seed, epoch)``, so a run resumed from its last checkpoint
draws exactly the batches an uninterrupted run would have (deterministic with a seed on CPU). A
checkpoint (tensors, the optimiser state and plain numbers, strings, lists and dicts: read back with
``torch.load(weights_only=True)``, which never runs code, see :func:`load_checkpoint`) is written after every
epoch; the best state by validation macro-F1 (of the net's own head, or of a linear probe on its pooled
features, :func:`probe_macro_f1`) is kept beside it (accuracy would favour the majority class on these
imbalanced pools; the authors selected by accuracy on the test fold itself).
"""

from __future__ import annotations

import logging
import math
import pickle
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from broker_plugin.inference.history import collate_history
from broker_plugin.inference.preprocess import FluxNormalisation, ModelInput, collate, collate_context
from broker_plugin.progress import progress
from broker_plugin_train.augment import random_view, serving_window
from broker_plugin_train.objects import ObjectSource
from broker_plugin_train.sampling import balanced_class_weights, balanced_draws, focal_loss

log = logging.getLogger("train")


@dataclass(frozen=True)
class LoopSettings:
    """What one full-network training run needs (filled from the stage's config section)."""

    epochs: int
    samples_per_epoch: int | None
    batch_size: int
    lr: float
    weight_decay: float
    amsgrad: bool
    focal_gamma: float
    class_weight_power: float
    balanced_sampler: bool
    max_train_frames: int
    min_prefix_frames: int
    prefix_probability: float
    augment: bool
    val_max: int | None
    seed: int
    lr_schedule: str = "constant"
    warmup_fraction: float = 0.0
    selection: str = "head"
    probe_objects: int = 600


def scheduled_lr(settings: LoopSettings, step: int, total_steps: int) -> float:
    """Learning rate of optimiser step ``step`` (0-based) of ``total_steps``.

    ``constant`` is the authors' (their ReduceLROnPlateau is never stepped); ``cosine`` warms up
    linearly over the first ``warmup_fraction`` of the steps, then decays to zero along a half cosine,
    so the last epochs of a short CPU run settle instead of jumping between minima. A function of the
    step alone, so a resumed run follows the same schedule without storing scheduler state.
    """
    if settings.lr_schedule == "constant":
        return settings.lr
    if settings.lr_schedule != "cosine":
        raise ValueError(f"unknown lr_schedule {settings.lr_schedule!r}")
    warmup = int(settings.warmup_fraction * total_steps)
    if step < warmup:
        return settings.lr * (step + 1) / warmup
    done = (step - warmup) / max(1, total_steps - warmup)
    return settings.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, done)))


def net_device(net: nn.Module) -> torch.device:
    """Return the device ``net``'s parameters live on."""
    return next(net.parameters()).device


def batch_tensors(net: nn.Module, inputs: Sequence[ModelInput]) -> tuple[torch.Tensor, ...]:
    """Collate windows for ``net`` on its device: padded to its fixed window, or to whole chunks.

    Returns ``(x, band)``, plus ``(aux, context)`` for nets with ``uses_context``, plus the history rows
    of each window's last frame for nets with ``uses_history``: the arguments of ``net(...)``
    (:func:`head_input` splits them for ``forward_features`` and ``forward_head``).
    """
    cs = net.chunk_size
    longest = max(len(i) for i in inputs)
    chunks = net.max_chunks if net.pad_window else max(1, -(-longest // cs))
    stamp = inputs[0].x.shape[-1]
    arrays = collate(inputs, frames=chunks * cs, stamp=stamp)
    if getattr(net, "uses_context", False):
        arrays += collate_context(inputs, frames=chunks * cs, stamp=stamp)
    if getattr(net, "uses_history", False):
        if not getattr(net, "uses_context", False):
            raise ValueError("a history net without context has no place in forward's arguments")
        arrays += (collate_history(inputs),)
    device = net_device(net)
    return tuple(torch.from_numpy(a).to(device) for a in arrays)


def head_input(net: nn.Module, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The head's input (``pre_logits``) for :func:`batch_tensors`' output."""
    head = {"history": tensors[4]} if getattr(net, "uses_history", False) else {}
    return net.forward_head(*net.forward_features(*tensors[:4]), pre_logits=True, **head)


@torch.inference_mode()
def pooled_features(net: nn.Module, inputs: Sequence[ModelInput], batch_size: int = 32) -> np.ndarray:
    """The head's input (``pre_logits``) for the serving window of each input (eval mode)."""
    net.eval()
    windows = [serving_window(i, net.chunk_size, net.max_chunks) for i in inputs]
    out = []
    for start in range(0, len(windows), batch_size):
        tensors = batch_tensors(net, windows[start : start + batch_size])
        out.append(head_input(net, tensors).float().cpu().numpy())
    return np.concatenate(out)


def probe_macro_f1(
    train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray, n_classes: int
) -> float:
    """Validation macro-F1 of a class-balanced linear probe fitted on frozen training features.

    Stage 1 exists to give stage 2 features that a new head can separate, so this (not the stage-1
    head, which the transfer throws away) is what should pick its epoch. The stage-1 head was seen to
    collapse onto one class in eval mode while a probe on the same epoch's features scored 0.49 macro-F1.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(train_y)) < 2:
        return 0.0
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=500, class_weight="balanced"))
    probe.fit(train_x, train_y)
    return macro_f1(val_y, probe.predict(val_x), n_classes)


def macro_f1(y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """Return the mean per-class F1 (classes absent from both ``y`` and ``pred`` are skipped)."""
    scores = []
    for c in range(n_classes):
        tp = np.sum((y == c) & (pred == c))
        denom = np.sum(y == c) + np.sum(pred == c)
        if denom:
            scores.append(2 * tp / denom)
    return float(np.mean(scores)) if scores else 0.0


def plain_data(value: Any) -> Any:
    """``value`` as what ``torch.load(weights_only=True)`` reads back.

    That is tensors, Python scalars, strings, ``None``, and lists, tuples and dicts of them; numpy scalars
    become Python numbers and numpy arrays tensors.

    Raises
    ------
    TypeError
        For anything else (it could not be read back without unpickling arbitrary objects).
    """
    if isinstance(value, np.generic):  # first: np.float64 is a float, yet pickles as a numpy scalar
        return value.item()
    if value is None or isinstance(value, torch.Tensor) or type(value) in (bool, int, float, str):
        return value
    for kind in (bool, int, float, str):  # a subclass (an enum, say) would pickle as its own class
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, dict):
        return {k: plain_data(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(plain_data(v) for v in value)
    if isinstance(value, list):
        return [plain_data(v) for v in value]
    raise TypeError(f"{type(value).__name__} cannot be stored in a checkpoint (weights_only)")


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (see :func:`plain_data`) atomically: a kill mid-write leaves the previous file."""
    tmp = path.with_suffix(".tmp")
    torch.save(plain_data(state), tmp)
    tmp.replace(path)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a file of :func:`save_checkpoint` with ``weights_only=True`` (no code runs while loading).

    Raises
    ------
    RuntimeError
        The file holds other objects (e.g. written by an older version with pickled numpy values):
        delete it to redo that step.
    """
    try:
        return torch.load(path, weights_only=True, map_location=map_location)
    except pickle.UnpicklingError as exc:
        raise RuntimeError(
            f"{path} holds objects a weights-only load refuses (written by an older version?); "
            f"delete it to redo that step: {exc}"
        ) from exc


def train_full(
    net: nn.Module,
    source: ObjectSource,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    norm: FluxNormalisation,
    settings: LoopSettings,
    checkpoint: Path,
    label: str,
    param_filter: Callable[[str], bool] | None = None,
) -> dict[str, Any]:
    """Train ``net`` (all parameters, or those ``param_filter`` keeps) and load its best state.

    Parameters
    ----------
    net
        Modified in place; on return it holds the best validation state.
    source, train_idx, val_idx
        Objects and the disjoint training / validation parts.
    norm
        Flux normalisation (fitted on training objects only).
    settings
        Loop hyper-parameters.
    checkpoint
        Resumable checkpoint file (``<checkpoint>`` and the final ``.done`` marker beside it).
    label
        Name in the logs.
    param_filter
        Parameter names to train; None trains all.

    Returns
    -------
    dict
        History (per-epoch loss and validation scores) and the best epoch.
    """
    s = settings
    device = net_device(net)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    params = [p for n, p in net.named_parameters() if param_filter is None or param_filter(n)]
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay, amsgrad=s.amsgrad)
    n_classes = net.num_classes
    y_train = source.labels[train_idx]
    weights = balanced_class_weights(y_train, n_classes) ** s.class_weight_power
    class_weight = torch.tensor(weights, dtype=torch.float32, device=device)
    state: dict[str, Any] = {"epoch": 0, "history": [], "best": -1.0, "best_epoch": -1, "best_state": None}
    if checkpoint.exists():
        state = load_checkpoint(checkpoint, map_location=device)
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        log.info("%s: resumed after epoch %d", label, state["epoch"])
    val_pick = val_idx if s.val_max is None else val_idx[: s.val_max]
    val_inputs = [source.input_for(i, norm, net) for i in val_pick]
    y_val = source.labels[val_pick]
    if s.selection not in ("head", "probe"):
        raise ValueError(f"unknown selection {s.selection!r}")
    # A fixed sample of training objects for the probe (none when the head selects).
    probe_pick = train_idx[:0]
    if s.selection == "probe":
        probe_pick = np.random.default_rng([s.seed, 7]).permutation(train_idx)[: s.probe_objects]
    probe_inputs = [source.input_for(i, norm, net) for i in probe_pick]
    per_epoch = s.samples_per_epoch or len(train_idx)
    steps_per_epoch = -(-per_epoch // s.batch_size)
    for epoch in range(state["epoch"], s.epochs):
        started = time.perf_counter()
        rng = np.random.default_rng([s.seed, epoch])
        torch.manual_seed(s.seed * 1009 + epoch)
        draws = train_idx[balanced_draws(y_train, per_epoch, rng, s.balanced_sampler)]
        net.train()
        losses = []
        desc = f"{label} epoch {epoch + 1}/{s.epochs}"
        bar = progress(total=len(draws), desc=desc, unit=" draws", leave=False)
        for step, start in enumerate(range(0, len(draws), s.batch_size)):
            for group in opt.param_groups:
                group["lr"] = scheduled_lr(s, epoch * steps_per_epoch + step, s.epochs * steps_per_epoch)
            batch = draws[start : start + s.batch_size]
            views = [
                random_view(
                    source.input_for(i, norm, net, rng),
                    rng,
                    chunk_size=net.chunk_size,
                    max_chunks=net.max_chunks,
                    max_frames=s.max_train_frames,
                    min_prefix=s.min_prefix_frames,
                    prefix_probability=s.prefix_probability,
                    augment=s.augment,
                )
                for i in batch
            ]
            loss = focal_loss(
                net(*batch_tensors(net, views)), torch.from_numpy(source.labels[batch]).to(device),
                class_weight, s.focal_gamma,
            )  # fmt: skip
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            bar.set_postfix_str(f"loss {np.mean(losses[-20:]):.4f}", refresh=False)
            bar.update(len(batch))
        bar.close()
        val_feats = pooled_features(net, val_inputs)  # eval mode
        with torch.inference_mode():
            pred = net.head(torch.from_numpy(val_feats).to(device)).argmax(1).cpu().numpy()
        acc, f1 = float(np.mean(pred == y_val)), macro_f1(y_val, pred, n_classes)
        record = {
            "epoch": epoch + 1,
            "loss": float(np.mean(losses)),
            "val_accuracy": acc,
            "val_macro_f1": f1,
        }
        score = f1
        if s.selection == "probe":
            score = record["val_probe_macro_f1"] = probe_macro_f1(
                pooled_features(net, probe_inputs), source.labels[probe_pick],
                val_feats, y_val, n_classes,
            )  # fmt: skip
        record["seconds"] = time.perf_counter() - started
        state["history"].append(record)
        if score > state["best"]:
            state["best"], state["best_epoch"] = score, epoch + 1
            state["best_state"] = {k: v.detach().clone() for k, v in net.state_dict().items()}
        probe = f" val_probe_macro_f1 {score:.4f}" if s.selection == "probe" else ""
        log.info(
            "%s epoch %d/%d loss %.4f val_acc %.4f val_macro_f1 %.4f%s (%.0f s)%s",
            label,
            epoch + 1,
            s.epochs,
            record["loss"],
            acc,
            f1,
            probe,
            record["seconds"],
            " best" if state["best_epoch"] == epoch + 1 else "",
        )
        state.update(epoch=epoch + 1, net=net.state_dict(), opt=opt.state_dict())
        save_checkpoint(checkpoint, state)
    if state["best_state"] is not None:
        net.load_state_dict(state["best_state"])
    return {
        "history": state["history"],
        "best_epoch": state["best_epoch"],
        "best_val_macro_f1": state["best"],
    }
