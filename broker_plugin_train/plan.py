"""The run's fixed decisions, shared by every stage: data, normalisation, folds and members.

Everything here is a pure function of the config (and the data), so each stage can be run on its own
and finds the same folds; the normalisation is fitted once (on pretraining objects, never on a test
fold) and stored in the run folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from broker_plugin.inference import create_net
from broker_plugin.inference.predictor import default_device
from broker_plugin.inference.preprocess import FluxNormalisation
from broker_plugin_train.config import CLASSES, TrainConfig
from broker_plugin_train.objects import ObjectSource, fit_normalisation
from broker_plugin_train.splits import FoldSplit, fold_splits, holdout


@dataclass(frozen=True)
class Member:
    """One ensemble member: fold ``fold`` (its test part), seed number ``seed``."""

    fold: int
    seed: int

    @property
    def key(self) -> str:
        """File-name key."""
        return f"f{self.fold}-s{self.seed}"


@dataclass(frozen=True)
class Plan:
    """Data, folds and members of one run."""

    config: TrainConfig
    source: ObjectSource
    transfer_folds: list[FoldSplit]
    pretrain_idx: np.ndarray
    run_dir: Path

    @property
    def members(self) -> list[Member]:
        """Every (fold, seed) member, fold-major."""
        t = self.config.training
        return [Member(f, s) for f in range(t.data.folds) for s in range(t.data.seeds)]

    def member_seed(self, member: Member) -> int:
        """Seed of a member's initialisation and sampling."""
        return self.config.training.seed * 1000 + member.fold * 10 + member.seed

    def backbone_seed(self, member: Member) -> int:
        """Seed number of the stage-1 run a member starts from (0 for all with ``share_across_seeds``)."""
        return 0 if self.config.training.pretrain.share_across_seeds else member.seed

    def backbone_key(self, member: Member) -> str:
        """Stage-1 run a member starts from (shared by folds and by seeds when configured)."""
        seed = self.backbone_seed(member)
        shared = self.config.training.pretrain.share_across_folds
        return f"s{seed}" if shared else Member(member.fold, seed).key

    def pretrain_split(self, member: Member) -> tuple[np.ndarray, np.ndarray]:
        """Stage-1 (train, validation) objects of ``member``'s backbone (pretrain pool only)."""
        t = self.config.training
        labels = self.source.labels[self.pretrain_idx]
        if t.pretrain.share_across_folds:
            seed = t.seed + self.backbone_seed(member)
            return holdout(self.pretrain_idx, labels, t.data.val_fraction, seed)
        split = fold_splits(self.pretrain_idx, labels, t.data.folds, t.seed + 1)[member.fold]
        return np.concatenate([split.train, split.test]), split.val

    def head_pool_objects(self, member: Member) -> np.ndarray:
        """Unconfirmed objects stage 2 adds to ``member``'s head training (``finetune.pool_validation``).

        Its backbone's stage-1 validation part: pool objects the frozen backbone never trained on.
        Empty when the option is off.
        """
        if not self.config.training.finetune.pool_validation:
            return np.zeros(0, dtype=np.int64)
        return self.pretrain_split(member)[1]

    @property
    def device(self) -> torch.device:
        """Where nets train and features are computed (the small stage-2 head always trains on the CPU)."""
        return training_device(self.config.training.device)

    def new_net(self, seed: int) -> nn.Module:
        """A freshly initialised net of the configured architecture."""
        torch.manual_seed(seed)
        t = self.config.training
        return create_net(t.net.name, num_classes=len(CLASSES), **t.net.args)

    def normalisation(self) -> FluxNormalisation:
        """The run's flux normalisation (fitted on pretraining objects, stored in the run folder)."""
        path = self.run_dir / "normalisation.json"
        if path.exists():
            return FluxNormalisation.from_dict(json.loads(path.read_text()))
        t = self.config.training
        norm = fit_normalisation(self.source, self.pretrain_idx, t.norm_objects, t.normalisation, t.seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(norm.to_dict(), indent=1))
        return norm


def training_device(wanted: str) -> torch.device:
    """The torch device of ``training.device``: ``auto`` is the service's choice (CUDA if any)."""
    return default_device() if wanted == "auto" else torch.device(wanted)


def _limit(indices: np.ndarray, labels: np.ndarray, per_class: int | None, seed: int) -> np.ndarray:
    if per_class is None:
        return indices
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(indices[labels[indices] == c])[:per_class] for c in np.unique(labels[indices])]
    return np.sort(np.concatenate(keep))


def make_plan(config: TrainConfig, dataset: str | Path | None = None) -> Plan:
    """Open the data and derive the folds of ``config``."""
    t = config.training
    root = dataset or t.data.dataset or config.data_dir
    source = ObjectSource.from_shards(
        root, bands=t.data.bands, min_snr=t.data.min_snr, min_frames=t.data.min_frames
    )
    everything = np.arange(len(source))
    pretrain = _limit(everything[source.pools == "pretrain"], source.labels, t.data.limit_per_class, t.seed)
    transfer = _limit(everything[source.pools == "transfer"], source.labels, t.data.limit_per_class, t.seed)
    folds = fold_splits(transfer, source.labels[transfer], t.data.folds, t.seed)
    plan = Plan(config, source, folds, pretrain, Path(t.run_dir))
    check_training_window(plan.new_net(t.seed), t.pretrain.max_train_frames)
    return plan


def check_training_window(net: nn.Module, max_train_frames: int) -> None:
    """Refuse a stage-1 frame cap shorter than the window the net serves with.

    Training views are cut to whole chunks within ``max_train_frames``; evaluation and the service feed
    the net's full window (``chunk_size * max_chunks`` frames). A shorter cap means the later window
    positions (their index encodings, the recurrent steps) are never trained, yet every long history
    is classified through them: a training/serving skew (session 1's default model had it).
    """
    window = net.chunk_size * net.max_chunks
    if max_train_frames // net.chunk_size < net.max_chunks:
        raise ValueError(
            f"training.pretrain.max_train_frames = {max_train_frames} is shorter than the net's serving "
            f"window of {window} frames ({net.max_chunks} tokens of {net.chunk_size}): raise it, or shrink "
            f"the window with training.net.args.max_chunks"
        )
