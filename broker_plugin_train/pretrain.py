"""Stage 1: train the whole net from scratch on the unconfirmed (pretrain) pool.

Class-balanced draws of the training part, per-sample focal loss with class weights, growing-prefix
views, flips; the best epoch by validation macro-F1 on a validation split of the same pool (never a
confirmed test object). One backbone per (fold, seed), or per seed when ``share_across_folds``.
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from broker_plugin.progress import progress
from broker_plugin_train.loop import LoopSettings, load_checkpoint, save_checkpoint, train_full
from broker_plugin_train.plan import Member, Plan

log = logging.getLogger("train")


def backbone_path(plan: Plan, member: Member) -> Path:
    """Where the stage-1 net of ``member`` is stored."""
    return plan.run_dir / "pretrain" / f"backbone-{plan.backbone_key(member)}.pt"


def run_pretrain(plan: Plan) -> list[Path]:
    """Train (or find, if already done) every stage-1 backbone; return their files."""
    t = plan.config.training
    p = t.pretrain
    norm = plan.normalisation()
    done: dict[str, Path] = {}
    for member in progress(plan.members, desc="pretrain", unit="member"):
        key = plan.backbone_key(member)
        out = backbone_path(plan, member)
        if key in done or out.exists():
            done[key] = out
            continue
        seed = plan.member_seed(member)
        net = plan.new_net(seed).to(plan.device)
        train_idx, val_idx = plan.pretrain_split(member)
        log.info("pretrain %s: %d training / %d validation objects", key, len(train_idx), len(val_idx))
        settings = LoopSettings(
            epochs=p.epochs,
            samples_per_epoch=p.samples_per_epoch,
            batch_size=p.batch_size,
            lr=p.lr,
            weight_decay=p.weight_decay,
            amsgrad=p.amsgrad,
            focal_gamma=p.focal_gamma,
            class_weight_power=p.class_weight_power,
            balanced_sampler=p.balanced_sampler,
            max_train_frames=p.max_train_frames,
            min_prefix_frames=p.min_prefix_frames,
            prefix_probability=p.prefix_probability,
            augment=p.augment,
            val_max=p.val_max,
            seed=seed,
            lr_schedule=p.lr_schedule,
            warmup_fraction=p.warmup_fraction,
            selection=p.selection,
            probe_objects=p.probe_objects,
        )
        info = train_full(
            net,
            plan.source,
            train_idx,
            val_idx,
            norm,
            settings,
            plan.run_dir / "pretrain" / f"checkpoint-{key}.pt",
            f"pretrain {key}",
        )
        save_net(net, out, info)
        done[key] = out
    return sorted(set(done.values()))


def save_net(net: nn.Module, path: Path, info: dict[str, object]) -> None:
    """Store a net's state and its training record (atomic; plain data, read with ``weights_only``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    save_checkpoint(path, {"state": state, "info": info})


def load_net(plan: Plan, path: Path, seed: int = 0) -> tuple[nn.Module, dict[str, object]]:
    """Rebuild a stored net (``torch.load(weights_only=True)``: loading runs no code)."""
    stored = load_checkpoint(path)
    net = plan.new_net(seed)
    net.load_state_dict(stored["state"])
    return net, stored["info"]
