"""Stage 2: transfer to the confirmed (transfer) pool: new head on the frozen stage-1 backbone.

The backbone is frozen *including its BatchNorm statistics*: its features are computed once in eval
mode (the authors left the net in train mode, so frozen layers' running statistics kept drifting,
convention-spec 4.4), at every growing prefix of every confirmed object (:mod:`broker_plugin_train.prefix`).
A new randomly initialised head is trained on the training part of the fold with class-balanced draws over
(object, prefix) pairs and the per-sample focal loss; the best epoch by validation-fold macro-F1 is kept
(the validation fold is never the test fold). With ``history_lr`` the layers of the net's history encoder
after its GRU train with the head, from their stage-1 weights, on the same (object, prefix) pairs (the
GRU stays frozen: its summaries are computed once). Optionally the whole net is then unfrozen and
trained at a low learning rate. Each member's test-fold probabilities at every prefix are stored for
``ensemble``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from broker_plugin.inference.history_statistics import history_statistics
from broker_plugin.inference.layers import trim_history_rows
from broker_plugin.progress import progress
from broker_plugin_train.loop import LoopSettings, macro_f1, train_full
from broker_plugin_train.plan import Member, Plan
from broker_plugin_train.prefix import head_probs, prefix_features, prefix_history_rows
from broker_plugin_train.pretrain import backbone_path, load_net, save_net
from broker_plugin_train.sampling import balanced_class_weights, balanced_draws, focal_loss

log = logging.getLogger("train")


def member_path(plan: Plan, member: Member) -> Path:
    """Where a finished member's net is stored."""
    return plan.run_dir / "members" / f"member-{member.key}.pt"


def predictions_path(plan: Plan, member: Member) -> Path:
    """Where a member's test-fold probabilities are stored."""
    return plan.run_dir / "members" / f"pred-{member.key}.npz"


def transfer_features(
    plan: Plan, member: Member, net: torch.nn.Module, with_history: bool = False
) -> tuple[np.ndarray, np.ndarray, HistoryParts | None]:
    """Frozen features of every confirmed object (cached per backbone): ``(indices, (n, V, F), parts)``.

    ``with_history``: also the :class:`HistoryParts` of the same views (None otherwise), from the same
    preprocessed objects and kept in the same cache.
    """
    suffix = "-pool-validation" if plan.config.training.finetune.pool_validation else ""
    path = plan.run_dir / "features" / f"backbone-{plan.backbone_key(member)}{suffix}.npz"
    if path.exists():
        with np.load(path) as stored:
            if not with_history:
                return stored["indices"], stored["features"], None
            if "summary" in stored:
                parts = HistoryParts(stored["summary"], stored["statistics"])
                return stored["indices"], stored["features"], parts
    if with_history and not getattr(net, "uses_history", False):
        raise ValueError(f"finetune.history_lr needs a net with a history branch, not {net.net_name}")
    folds = plan.transfer_folds[0]
    idx = np.sort(np.concatenate([folds.train, folds.val, folds.test, plan.head_pool_objects(member)]))
    norm = plan.normalisation()
    inputs = [plan.source.input_for(i, norm, net) for i in idx]
    prefixes = plan.config.training.finetune.prefix_frames
    feats = prefix_features(net, inputs, prefixes, label=f"features {plan.backbone_key(member)}")
    parts = history_parts(net, prefix_history_rows(net, inputs, prefixes)) if with_history else None
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = {} if parts is None else {"summary": parts.summary, "statistics": parts.statistics}
    np.savez(path, indices=idx, features=feats, **extra)
    return idx, feats, parts


@dataclass(frozen=True)
class HistoryParts:
    """What a stage 2 that trains the history encoder's last layers reads, per (object, view).

    ``summary`` ``(n, V, S)``: the frozen GRU's summary of the view's history rows; ``statistics``
    ``(n, V, K)``: their light-curve statistics (parameter-free).
    """

    summary: np.ndarray
    statistics: np.ndarray

    def take(self, objects: np.ndarray | slice, views: np.ndarray | slice = slice(None)) -> HistoryParts:
        """The parts of ``objects`` at ``views``."""
        return HistoryParts(self.summary[objects, views], self.statistics[objects, views])


@torch.inference_mode()
def history_parts(net: torch.nn.Module, rows: np.ndarray, batch_size: int = 512) -> HistoryParts:
    """The frozen GRU summaries and the statistics of history rows ``(n, V, P, F)``."""
    encoder = net.history_encoder.eval()
    flat = torch.from_numpy(rows.reshape(-1, *rows.shape[2:]))
    summaries, stats = [], []
    for start in range(0, len(flat), batch_size):
        part = trim_history_rows(flat[start : start + batch_size])
        summaries.append(encoder.sequence_summary(part))
        stats.append(history_statistics(part))
    n, v = rows.shape[:2]
    return HistoryParts(
        torch.cat(summaries).numpy().reshape(n, v, -1), torch.cat(stats).numpy().reshape(n, v, -1)
    )


class _HeadOverHistory(torch.nn.Module):
    """A net's head over cached image features and its history encoder's last layers over cached parts.

    The cached features end with the stage-1 history vector; it is replaced by the encoder's output.
    """

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.encoder, self.head, self.width = net.history_encoder, net.head, net.history_width

    def features(self, feats: torch.Tensor, summary: torch.Tensor, statistics: torch.Tensor) -> torch.Tensor:
        image = feats[..., : feats.shape[-1] - self.width]
        return torch.cat((image, self.encoder.combine(summary, statistics)), dim=-1)

    def forward(self, feats: torch.Tensor, summary: torch.Tensor, statistics: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(feats, summary, statistics))


@torch.inference_mode()
def refresh_history(net: torch.nn.Module, feats: np.ndarray, parts: HistoryParts) -> np.ndarray:
    """``feats`` ``(n, V, F)`` with their history columns recomputed by ``net``'s encoder from ``parts``."""
    model = _HeadOverHistory(net).eval()
    out = model.features(
        torch.from_numpy(feats), torch.from_numpy(parts.summary), torch.from_numpy(parts.statistics)
    )
    return out.numpy()


def train_head(
    plan: Plan,
    member: Member,
    net: torch.nn.Module,
    idx: np.ndarray,
    feats: np.ndarray,
    parts: HistoryParts | None = None,
) -> dict:
    """Train a new head on the frozen features of the member's training part; keep the best.

    With ``parts`` (of every view of ``feats``; ``finetune.history_lr`` set) the layers of the net's
    history encoder after its GRU train too, from their stage-1 weights.
    """
    f = plan.config.training.finetune
    split = plan.transfer_folds[member.fold]
    pos = {int(i): k for k, i in enumerate(idx)}
    train_objects = np.concatenate((split.train, plan.head_pool_objects(member)))
    tr = np.array([pos[int(i)] for i in train_objects], dtype=np.int64)
    va = np.array([pos[int(i)] for i in split.val], dtype=np.int64)
    labels = plan.source.labels[idx]
    seed = plan.member_seed(member)
    torch.manual_seed(seed)
    net.reset_classifier(net.num_classes)
    head = net.head
    n_views = feats.shape[1]
    # Every (object, prefix) pair of the training part is a sample: growing-prefix training.
    obj = np.repeat(tr, n_views)
    view = np.tile(np.arange(n_views), len(tr))
    y = labels[obj]
    weight = torch.tensor(
        balanced_class_weights(labels[tr], net.num_classes) ** f.class_weight_power, dtype=torch.float32
    )
    groups = [{"params": list(head.parameters()), "lr": f.lr}]
    model: torch.nn.Module = head
    if parts is not None:
        model = _HeadOverHistory(net)
        encoder = net.history_encoder
        trained = [
            *encoder.out.parameters(),
            *(encoder.statistics.parameters() if encoder.statistics else []),
        ]
        groups.append({"params": trained, "lr": f.history_lr})
    opt = torch.optim.AdamW(groups, lr=f.lr, weight_decay=f.weight_decay, amsgrad=True)
    x_all = torch.from_numpy(feats)
    s_all = None if parts is None else torch.from_numpy(parts.summary)
    k_all = None if parts is None else torch.from_numpy(parts.statistics)
    best, best_state, history = -1.0, None, []
    for epoch in progress(range(f.epochs), desc=f"head {member.key}", unit="epoch", leave=False):
        rng = np.random.default_rng([seed, epoch])
        draws = balanced_draws(y, len(y), rng, f.balanced_sampler)
        model.train()
        losses = []
        for start in range(0, len(draws), f.batch_size):
            d = draws[start : start + f.batch_size]
            x = x_all[obj[d], view[d]]
            extra = () if s_all is None else (s_all[obj[d], view[d]], k_all[obj[d], view[d]])
            logits = model(x, *extra)
            loss = focal_loss(logits, torch.from_numpy(y[d]), weight, f.focal_gamma)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        val_feats = feats[va, -1:]
        if parts is not None:
            val_feats = refresh_history(net, val_feats, parts.take(va, slice(-1, None)))
        pred = head_probs(head, val_feats[:, 0]).argmax(-1)
        score = macro_f1(labels[va], pred, net.num_classes)
        history.append(
            {
                "epoch": epoch + 1,
                "loss": float(np.mean(losses)),
                "val_macro_f1": score,
                "val_accuracy": float(np.mean(pred == labels[va])),
            }
        )
        if score > best:
            best, best_state = score, {k: v.clone() for k, v in model.state_dict().items()}
    log.info(
        "finetune %s: head best val_macro_f1 %.4f after %d epochs (%s)",
        member.key,
        best,
        f.epochs,
        " ".join(f"{h['val_macro_f1']:.3f}" for h in history[-5:]),
    )
    if best_state is not None:
        model.load_state_dict(best_state)
    return {"history": history, "best_val_macro_f1": best, "train_objects": len(tr)}


def run_finetune(plan: Plan) -> list[Path]:
    """Build every member (stage 2) and store it with its test-fold predictions."""
    f = plan.config.training.finetune
    paths = []
    for member in progress(plan.members, desc="finetune", unit="member"):
        out = member_path(plan, member)
        paths.append(out)
        if out.exists() and predictions_path(plan, member).exists():
            continue
        started = time.perf_counter()
        net, pre_info = load_net(plan, backbone_path(plan, member))
        idx, feats, parts = transfer_features(plan, member, net.to(plan.device), f.history_lr is not None)
        net.cpu()  # the small head trains on cached features, on the CPU
        info = {"pretrain": pre_info, "head": train_head(plan, member, net, idx, feats, parts)}
        split = plan.transfer_folds[member.fold]
        pos = {int(i): k for k, i in enumerate(idx)}
        test = [pos[int(i)] for i in split.test]
        test_feats = feats[test]
        if parts is not None:
            test_feats = refresh_history(net, test_feats, parts.take(np.asarray(test)))
        if f.unfreeze_epochs:
            frozen_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            net.to(plan.device)
            p = plan.config.training.pretrain
            settings = LoopSettings(
                epochs=f.unfreeze_epochs,
                samples_per_epoch=f.unfreeze_samples_per_epoch,
                batch_size=p.batch_size,
                lr=f.unfreeze_lr,
                weight_decay=f.weight_decay,
                amsgrad=True,
                focal_gamma=f.focal_gamma,
                class_weight_power=f.class_weight_power,
                balanced_sampler=f.balanced_sampler,
                max_train_frames=p.max_train_frames,
                min_prefix_frames=p.min_prefix_frames,
                prefix_probability=p.prefix_probability,
                augment=p.augment,
                val_max=None,
                seed=plan.member_seed(member),
            )
            info["unfreeze"] = train_full(
                net,
                plan.source,
                split.train,
                split.val,
                plan.normalisation(),
                settings,
                plan.run_dir / "members" / f"checkpoint-{member.key}.pt",
                f"unfreeze {member.key}",
            )
            # Keep the unfrozen net only if it beats the frozen one on the same validation fold: on small
            # confirmed pools unfreezing can wreck the features (seen: macro-F1 0.58 -> 0.37).
            if info["unfreeze"]["best_val_macro_f1"] > info["head"]["best_val_macro_f1"]:
                norm = plan.normalisation()
                inputs = [plan.source.input_for(i, norm, net) for i in split.test]
                label = f"test features {member.key}"
                test_feats = prefix_features(net, inputs, f.prefix_frames, label=label)
                info["kept"] = "unfrozen"
            else:
                net.load_state_dict(frozen_state)
                info["kept"] = "frozen"
                log.info("unfreeze %s: no validation gain; the frozen-backbone member is kept", member.key)
            net.cpu()
        probs = head_probs(net.head, test_feats)
        info["seconds"] = time.perf_counter() - started
        save_net(net, out, info)
        np.savez(
            predictions_path(plan, member),
            indices=split.test,
            probs=probs,
            labels=plan.source.labels[split.test],
        )
        acc = float(np.mean(probs[:, -1].argmax(-1) == plan.source.labels[split.test]))
        log.info(
            "member %s: test-fold accuracy %.4f (whole histories), %.0f s", member.key, acc, info["seconds"]
        )
    return paths
