"""Typed settings of the model-building stages (``[training]`` in a ``train`` config file).

The ``paper`` values reproduce the authors' recipe (convention-spec section 4) with its protocol flaws
fixed; ``default`` is sized for a shared 2-core CPU. Every knob is here so a run is fully described
by its config file plus ``--key=value`` overrides.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NetSection(_Strict):
    """Which registered net, with which overrides of its defaults."""

    name: str = Field("convention-small", description="Registered net (broker_plugin.inference.list_nets).")
    args: dict[str, Any] = Field(default_factory=dict, description="Overrides passed to create_net.")


class DataSection(_Strict):
    """Which data, and how it is cut into unique-object folds."""

    dataset: str | None = Field(None, description="Dataset folder; None: the config's data_dir.")
    bands: tuple[str, ...] | None = Field(None, description="Keep only frames in these bands (g-only runs).")
    folds: int = Field(5, ge=3, description="Folds over unique confirmed (transfer-pool) objects.")
    seeds: int = Field(3, ge=1, description="Independently initialised members per fold.")
    val_fraction: float = Field(0.1, gt=0, lt=0.5, description="Pretrain-pool objects kept for validation.")
    limit_per_class: int | None = Field(None, ge=1, description="Use at most this many objects per class.")
    min_snr: float | None = Field(
        None, ge=0, description="Alert view: keep only epochs with |psfFlux/psfFluxErr| >= this (the alert "
        "threshold), as the service sees an object; None keeps every simulated epoch.",
    )  # fmt: skip
    min_frames: int = Field(
        1, ge=1, description="Drop objects with fewer frames (after min_snr): below the service's "
        "model.min_frames an object is never classified, so it is neither trained on nor scored.",
    )  # fmt: skip


class PretrainSection(_Strict):
    """Stage 1: supervised training from scratch on the unconfirmed (pretrain) pool."""

    epochs: int = Field(50, ge=0, description="Epochs (0 skips stage 1: the backbone stays random).")
    samples_per_epoch: int | None = Field(None, ge=1, description="Sampler draws per epoch; None: pool size.")
    batch_size: int = Field(256, ge=1, description="Objects per optimiser step.")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(0.3, ge=0, description="AdamW weight decay.")
    amsgrad: bool = Field(True, description="AdamW amsgrad.")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="constant (the authors'), or linear warm-up then half-cosine decay to zero."
    )
    warmup_fraction: float = Field(0.05, ge=0, lt=1, description="Warm-up share of the steps (cosine).")
    focal_gamma: float = Field(2.0, ge=0, description="Focal-loss exponent (per sample).")
    class_weight_power: float = Field(
        1.0, ge=0, description="Focal-loss class weights = sklearn 'balanced' weights ** this (0: none)."
    )
    balanced_sampler: bool = Field(True, description="Class-balanced draws (training part only).")
    share_across_folds: bool = Field(
        False,
        description="One stage-1 backbone per seed for all folds (its pool has no confirmed-test object); "
        "False: one per (fold, seed) on the pool minus that fold's fifth, as the authors' zipped KFold.",
    )
    share_across_seeds: bool = Field(
        False,
        description="One stage-1 backbone for every seed too (per fold, or for all with share_across_folds): "
        "the seeds' members differ in their stage-2 heads only, and the service runs a shared backbone once.",
    )
    max_train_frames: int = Field(99, ge=1, description="Longest training window [frames] (cost cap).")
    min_prefix_frames: int = Field(3, ge=1, description="Shortest growing prefix [frames].")
    prefix_probability: float = Field(
        0.7, ge=0, le=1, description="Chance a training sample is a random prefix rather than the whole."
    )
    augment: bool = Field(True, description="Random flips / quarter turns, the same for every frame.")
    val_max: int | None = Field(None, ge=1, description="Validation objects scored per epoch; None: all.")
    selection: Literal["head", "probe"] = Field(
        "head",
        description="Best epoch by validation macro-F1 of the stage-1 head, or of a linear probe on its "
        "frozen features (what the stage-2 transfer uses).",
    )
    probe_objects: int = Field(600, ge=10, description="Training objects the probe is fitted on (probe).")


class FinetuneSection(_Strict):
    """Stage 2: new head on the confirmed (transfer) pool with the backbone frozen."""

    epochs: int = Field(30, ge=0, description="Head epochs.")
    batch_size: int = Field(256, ge=1, description="Samples per step.")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate of the head.")
    weight_decay: float = Field(0.3, ge=0, description="AdamW weight decay.")
    focal_gamma: float = Field(2.0, ge=0, description="Focal-loss exponent (per sample).")
    class_weight_power: float = Field(
        1.0, ge=0, description="Focal-loss class weights = sklearn 'balanced' weights ** this (0: none)."
    )
    balanced_sampler: bool = Field(True, description="Class-balanced draws (training part only).")
    prefix_frames: tuple[int, ...] = Field(
        (3, 6, 9, 12, 18, 24, 36, 48, 66, 99),
        description="Growing prefixes [frames] the frozen features are cached at (plus the whole window).",
    )
    history_lr: float | None = Field(
        None,
        gt=0,
        description="Also train the history encoder (nets with a history branch) at this learning rate; "
        "None: frozen with the backbone.",
    )
    pool_validation: bool = Field(
        False,
        description="Also train the head on the stage-1 validation objects of the member's backbone: "
        "unconfirmed-pool objects its weights never trained on (most of the pool's SN Other).",
    )
    unfreeze_epochs: int = Field(0, ge=0, description="Then train everything (BN in train mode) this long.")
    unfreeze_lr: float = Field(1e-5, gt=0, description="Learning rate of the unfrozen phase.")
    unfreeze_samples_per_epoch: int | None = Field(None, ge=1, description="Draws per unfrozen epoch.")


class EvaluateSection(_Strict):
    """Evaluation on the held-out folds."""

    curve_frames: tuple[int, ...] = Field(
        (3, 6, 9, 12, 18, 24, 36, 48, 66, 99), description="Frames seen for the early-classification curve."
    )
    reliability_bins: int = Field(10, ge=2, description="Bins of the reliability diagram.")


class TreesSection(_Strict):
    """Gradient-boosted trees on the photometric history's statistics, blended with the net."""

    enabled: bool = Field(
        False,
        description="Fit the trees per fold (the unconfirmed pool and the fold's training part, every "
        "prefix view) and ship them in the artifact; the answer is the product of the two experts.",
    )
    net_weight: float = Field(
        0.5, ge=0, le=1, description="Exponent of the net's probabilities in the blend (trees: 1 - this)."
    )
    max_iter: int = Field(300, ge=1, description="Boosting iterations per model (fewer with early stopping).")
    learning_rate: float = Field(0.08, gt=0, description="Shrinkage of each tree.")
    max_leaf_nodes: int = Field(31, ge=2, description="Leaves per tree.")
    early_stopping: bool = Field(
        True, description="Stop when 10 % of the training rows, held aside, stop improving for 10 rounds."
    )
    ship: Literal["refit", "folds"] = Field(
        "refit",
        description="What the artifact carries: one model refitted on the pool and every confirmed object "
        "(the fold models' out-of-fold scores estimate it; the service walks a fifth of the trees), or "
        "every fold's model, averaged.",
    )


class TrainingSection(_Strict):
    """Everything ``pretrain``..``export`` need."""

    run_dir: str = Field("runs/default", description="Checkpoints, logs and reports (git-ignored).")
    model_dir: str = Field(
        "broker_plugin/models/convention-default", description="Where ``export`` writes the artifact."
    )
    seed: int = Field(123, description="Master seed (splits, initialisation, sampling, augmentation).")
    threads: int = Field(2, ge=1, description="torch intra-op threads.")
    device: str = Field(
        "auto", description="torch device for stage 1, features and unfreezing; auto: CUDA if any."
    )
    net: NetSection = Field(default_factory=NetSection)
    data: DataSection = Field(default_factory=DataSection)
    pretrain: PretrainSection = Field(default_factory=PretrainSection)
    finetune: FinetuneSection = Field(default_factory=FinetuneSection)
    evaluate: EvaluateSection = Field(default_factory=EvaluateSection)
    trees: TreesSection = Field(default_factory=TreesSection)
    baselines: tuple[str, ...] = Field(
        ("lc-features",), description="Baselines the ``compare`` stage runs on the same folds."
    )
    normalisation: Literal["asinh", "zscore"] = Field("asinh", description="Flux normalisation method.")
    norm_objects: int = Field(300, ge=1, description="Training objects sampled to fit the normalisation.")
