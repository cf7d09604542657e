"""End to end on the small simulated dataset: every stage, the artifact the service loads, the report."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from broker_plugin.inference.artifact import load_artifact
from broker_plugin.inference.predictor import Predictor
from broker_plugin_train.__main__ import main
from broker_plugin_train.config import load_config
from broker_plugin_train.objects import ObjectSource

CONFIG = str(Path(__file__).resolve().parents[2] / "broker_plugin_train" / "configs" / "small.toml")
TINY = [
    "--training.net.args={channels=[4,8,8,8], head_hidden=16, depth=1, max_chunks=8}",
    "--training.data.folds=3",
    "--training.pretrain.epochs=2",
    "--training.pretrain.samples_per_epoch=8",
    "--training.pretrain.batch_size=4",
    "--training.pretrain.max_train_frames=24",
    "--training.finetune.epochs=2",
    "--training.finetune.prefix_frames=[6, 24]",
    "--training.evaluate.curve_frames=[6, 24]",
    "--training.norm_objects=4",
]


def _args(tmp: Path, data: Path, *extra: str) -> list[str]:
    return [
        "--config",
        CONFIG,
        "--data",
        str(data),
        f"--training.run_dir={tmp / 'run'}",
        f"--training.model_dir={tmp / 'model'}",
        *TINY,
        *extra,
    ]


def _evaluate(data: Path) -> list[str]:
    """``evaluate`` on ``data`` with one early prefix (add ``--model``)."""
    return ["evaluate", "--config", CONFIG, "--data", str(data), "--training.evaluate.curve_frames=[6]"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, small_dataset: Path) -> Path:
    tmp = tmp_path_factory.mktemp("trained")
    torch.set_num_threads(1)
    assert main(["all", *_args(tmp, small_dataset)]) == 0
    return tmp


def test_all_writes_a_loadable_artifact_with_its_report(trained: Path, small_dataset: Path):
    art = load_artifact(trained / "model", expected_pixel_scale_arcsec=0.4)
    assert len(art.members) == 3  # 3 folds x 1 seed
    meta = art.metadata
    assert meta["training_data_hash"] == json.loads((small_dataset / "manifest.json").read_text())["sha256"]
    assert {m["fold"] for m in meta["members"]} == {0, 1, 2}
    assert "fold_ensembles" in meta["metrics"]
    for name in ("evaluation.json", "confusion.png", "early_classification.png", "reliability.png"):
        assert (trained / "model" / name).stat().st_size > 0
    report = json.loads((trained / "model" / "evaluation.json").read_text())
    for key in ("accuracy", "macro_f1", "balanced_accuracy", "cohen_kappa", "per_class", "confusion"):
        assert key in report["whole_history"]
    assert [r["frames"] for r in report["early_classification"]] == [6, 24, "all"]
    assert set(report["fold_ensembles"]["macro_f1"]) == {"mean", "std"}
    # every confirmed object is scored exactly once, in its own test fold
    source = ObjectSource.from_shards(small_dataset)
    assert report["whole_history"]["n"] == int(np.sum(source.pools == "transfer"))


def test_the_service_predictor_runs_the_artifact(trained: Path, small_dataset: Path):
    predictor = Predictor.from_artifact(trained / "model", device="cpu")
    source = ObjectSource.from_shards(small_dataset)
    preds = predictor.predict(
        [source.model_input(i, predictor.normalisation, predictor.band_offset) for i in range(3)]
    )
    for p in preds:
        assert p.probabilities.shape == (4,)
        assert abs(p.probabilities.sum() - 1) < 1e-5


def test_evaluate_model_prints_metrics_json(
    trained: Path, small_dataset: Path, capsys: pytest.CaptureFixture[str]
):
    assert main([*_evaluate(small_dataset), "--model", str(trained / "model")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["whole_history"]["n"] == len(ObjectSource.from_shards(small_dataset))
    assert result["members"] == 3
    assert len(result["early_classification"]) == 2


def test_evaluate_model_scores_a_smaller_cutout_view(
    trained: Path, small_dataset: Path, capsys: pytest.CaptureFixture[str]
):
    base = _evaluate(small_dataset)
    model = ["--model", str(trained / "model")]
    assert main([*base, *model]) == 0
    whole = json.loads(capsys.readouterr().out)
    assert main([*base, *model, "--cutout-side", "12"]) == 0
    small = json.loads(capsys.readouterr().out)
    assert whole["cutout_side"] is None and small["cutout_side"] == 12
    assert small["whole_history"]["n"] == whole["whole_history"]["n"]  # the same objects, another look
    assert small["reliability"] != whole["reliability"]  # other inputs, other probabilities
    # Without an artifact, or measuring nothing: one line and exit status 2.
    assert main([*base, "--cutout-side", "12"]) == 2
    assert "--model" in capsys.readouterr().err
    assert main([*base, *model, "--cutout-side", "0"]) == 2
    assert "at least one frame pixel" in capsys.readouterr().err


def test_rerun_resumes_and_is_deterministic(trained: Path, small_dataset: Path, tmp_path: Path):
    # A finished run is not retrained: the stored members are reused unchanged.
    before = (trained / "run" / "members" / "member-f0-s0.pt").stat().st_mtime_ns
    assert main(["finetune", *_args(trained, small_dataset)]) == 0
    assert (trained / "run" / "members" / "member-f0-s0.pt").stat().st_mtime_ns == before
    # Same config and seed in a fresh folder: identical stage-1 weights.
    assert main(["pretrain", *_args(tmp_path, small_dataset)]) == 0
    a = torch.load(trained / "run" / "pretrain" / "backbone-s0.pt", weights_only=True)["state"]
    b = torch.load(tmp_path / "run" / "pretrain" / "backbone-s0.pt", weights_only=True)["state"]
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_interrupted_pretraining_resumes_from_its_checkpoint(small_dataset: Path, tmp_path: Path):
    from broker_plugin_train.plan import make_plan
    from broker_plugin_train.pretrain import run_pretrain

    cfg = load_config(
        CONFIG,
        [
            f"--training.run_dir={tmp_path / 'a'}",
            *TINY,
            "--training.data.seeds=1",
            "--training.pretrain.share_across_folds=true",
        ],
    )
    one = cfg.model_copy(
        update={
            "training": cfg.training.model_copy(
                update={"pretrain": cfg.training.pretrain.model_copy(update={"epochs": 1})}
            )
        }
    )
    run_pretrain(make_plan(one, small_dataset))  # "killed" after epoch 1: a checkpoint, then resume
    (tmp_path / "a" / "pretrain" / "backbone-s0.pt").unlink()
    run_pretrain(make_plan(cfg, small_dataset))
    ref = load_config(
        CONFIG,
        [
            f"--training.run_dir={tmp_path / 'b'}",
            *TINY,
            "--training.data.seeds=1",
            "--training.pretrain.share_across_folds=true",
        ],
    )
    run_pretrain(make_plan(ref, small_dataset))
    a = torch.load(tmp_path / "a" / "pretrain" / "backbone-s0.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "pretrain" / "backbone-s0.pt", weights_only=True)
    assert [h["epoch"] for h in a["info"]["history"]] == [1, 2]
    for k in a["state"]:
        torch.testing.assert_close(a["state"][k], b["state"][k])


def test_stage_one_can_pick_its_epoch_by_a_linear_probe(small_dataset: Path, tmp_path: Path):
    from broker_plugin_train.plan import make_plan
    from broker_plugin_train.pretrain import run_pretrain

    probe = ["--training.pretrain.selection=probe", "--training.pretrain.probe_objects=12"]
    cfg = load_config(CONFIG, [f"--training.run_dir={tmp_path}", *TINY, *probe])
    (path,) = run_pretrain(make_plan(cfg, small_dataset))
    history = torch.load(path, weights_only=True)["info"]["history"]
    assert len(history) == 2 and all(0 <= h["val_probe_macro_f1"] <= 1 for h in history)


def test_unfreezing_is_kept_only_when_it_helps_on_validation(small_dataset: Path, tmp_path: Path):
    args = [*_args(tmp_path, small_dataset), "--training.finetune.unfreeze_epochs=1"]
    assert main(["pretrain", *args]) == 0 and main(["finetune", *args]) == 0
    members = sorted((tmp_path / "run" / "members").glob("member-*.pt"))
    assert len(members) == 3
    for path in members:
        info = torch.load(path, weights_only=True)["info"]
        gain = info["unfreeze"]["best_val_macro_f1"] > info["head"]["best_val_macro_f1"]
        assert info["kept"] == ("unfrozen" if gain else "frozen")


def test_a_frame_cap_shorter_than_the_serving_window_is_refused(small_dataset: Path, tmp_path: Path):
    from broker_plugin_train.plan import make_plan

    cfg = load_config(
        CONFIG, [f"--training.run_dir={tmp_path}", *TINY, "--training.pretrain.max_train_frames=21"]
    )
    with pytest.raises(ValueError, match="serving window of 24 frames"):
        make_plan(cfg, small_dataset)


def test_overrides_are_validated():
    with pytest.raises(ValueError, match="dotted"):
        load_config(CONFIG, ["training.seed=3"])
    with pytest.raises(ValueError):
        load_config(CONFIG, ["--training.no_such_key=3"])
    assert load_config(CONFIG, ["--training.seed=3"]).training.seed == 3


@pytest.mark.slow  # about a minute: light-curve features at 5 prefixes and 3 x 300 boosting rounds
def test_compare_runs_the_light_curve_baseline_on_the_same_folds(
    trained: Path, small_dataset: Path, capsys: pytest.CaptureFixture[str]
):
    assert main(["compare", *_args(trained, small_dataset)]) == 0
    table = capsys.readouterr().out
    assert "| light-curve features + GBT | ugriz | light curve |" in table
    report = json.loads((trained / "run" / "lc-features" / "evaluation" / "metrics.json").read_text())
    source = ObjectSource.from_shards(small_dataset)
    assert report["whole_history"]["n"] == int(np.sum(source.pools == "transfer"))
    assert len(report["fold_ensembles"]["per_fold"]) == 3


def test_compare_adds_subset_rows_only_for_runs_on_other_objects(
    trained: Path, small_dataset: Path, capsys: pytest.CaptureFixture[str]
):
    # A run over the same objects (here: the main run itself) is compared row by row, no subset rows.
    assert main(["compare", *_args(trained, small_dataset), "--runs", str(trained / "run")]) == 0
    table = capsys.readouterr().out
    assert table.count("| convention-small (run) | ugriz | image time series |") == 2
    assert "scored on" not in table


def test_stage_two_can_train_the_history_encoders_last_layers_with_the_head(
    small_dataset: Path, tmp_path: Path
):
    args = [*_args(tmp_path, small_dataset), "--training.net.name=convention-alert-small"]
    assert main(["pretrain", *args, "--training.finetune.history_lr=1e-3"]) == 0
    assert main(["finetune", *args, "--training.finetune.history_lr=1e-3"]) == 0
    run = tmp_path / "run"
    (backbone,) = (run / "pretrain").glob("backbone-*.pt")
    before = torch.load(backbone, weights_only=True)["state"]
    for path in sorted((run / "members").glob("member-*.pt")):
        after = torch.load(path, weights_only=True)["state"]
        changed = {k for k in after if not k.startswith("head.") and not torch.equal(after[k], before[k])}
        trained = ("history_encoder.out.", "history_encoder.statistics.")  # the GRU and the backbone: frozen
        assert changed and all(k.startswith(trained) for k in changed)


def test_training_the_history_encoder_needs_a_history_branch(small_dataset: Path, tmp_path: Path):
    args = [*_args(tmp_path, small_dataset), "--training.finetune.history_lr=1e-3"]
    assert main(["pretrain", *args]) == 0
    with pytest.raises(ValueError, match="history branch"):
        main(["finetune", *args])


def test_stage_two_can_train_the_head_on_the_backbones_validation_objects_too(
    small_dataset: Path, tmp_path: Path
):
    from broker_plugin_train.plan import make_plan

    args = [*_args(tmp_path, small_dataset), "--training.finetune.pool_validation=true"]
    assert main(["pretrain", *args]) == 0
    assert main(["finetune", *args]) == 0
    plan = make_plan(load_config(CONFIG, args[4:]), small_dataset)
    member = plan.members[0]
    _, unseen = plan.pretrain_split(member)
    assert len(unseen) and not np.isin(unseen, plan.transfer_folds[0].test).any()  # pool objects only
    features = tmp_path / "run" / "features" / f"backbone-{plan.backbone_key(member)}-pool-validation.npz"
    assert np.isin(unseen, np.load(features)["indices"]).all()  # frozen features beside the confirmed
    for m in plan.members:
        info = torch.load(tmp_path / "run" / "members" / f"member-{m.key}.pt", weights_only=True)["info"]
        split = plan.transfer_folds[m.fold]
        assert info["head"]["train_objects"] == len(split.train) + len(plan.pretrain_split(m)[1])
        # Tests stay the confirmed test folds.
        stored = np.load(tmp_path / "run" / "members" / f"pred-{m.key}.npz")
        assert set(plan.source.pools[stored["indices"]]) == {"transfer"}


def test_seeds_can_share_one_stage_one_backbone(small_dataset: Path, tmp_path: Path):
    args = [
        *_args(tmp_path, small_dataset),
        "--training.data.seeds=2",
        "--training.pretrain.share_across_folds=true",
        "--training.pretrain.share_across_seeds=true",
    ]
    assert main(["pretrain", *args]) == 0
    run = tmp_path / "run"
    assert [p.name for p in (run / "pretrain").glob("backbone-*.pt")] == ["backbone-s0.pt"]
    assert main(["finetune", *args]) == 0
    assert len(list((run / "members").glob("member-*.pt"))) == 3 * 2  # 3 folds x 2 seeds
    a = torch.load(run / "members" / "member-f0-s0.pt", weights_only=True)["state"]
    b = torch.load(run / "members" / "member-f0-s1.pt", weights_only=True)["state"]
    differ = {k for k in a if not torch.equal(a[k], b[k])}
    assert differ and all(k.startswith("head.") for k in differ)  # the seeds' heads, one backbone


def test_history_trees_train_per_fold_blend_out_of_fold_and_ship(small_dataset: Path, tmp_path: Path):
    from broker_plugin.inference.trees import BoostedTrees, blend, statistics_features
    from broker_plugin_train.plan import make_plan
    from broker_plugin_train.prefix import prefix_history_rows
    from broker_plugin_train.trees import ARRAY_NAMES

    args = [
        *_args(tmp_path, small_dataset),
        "--training.net.name=convention-alert-small",
        "--training.trees.enabled=true",
        "--training.trees.max_iter=5",
    ]
    assert main(["all", *args]) == 0
    plan = make_plan(load_config(CONFIG, args[4:]), small_dataset)
    run = tmp_path / "run"
    net = plan.new_net(0)
    features = np.load(run / "trees" / "features.npz")
    transfer = np.sort(np.concatenate([s.test for s in plan.transfer_folds]))
    # No skew: the trees' training features are the statistics of the rows the net reads at each view.
    inputs = [plan.source.input_for(int(i), plan.normalisation(), net) for i in transfer[:4]]
    rows = prefix_history_rows(net, inputs, (6, 24))
    expected = np.stack([statistics_features(r) for r in rows])
    np.testing.assert_array_equal(features["transfer"][:4], expected)
    summary = json.loads((run / "ensemble" / "folds.json").read_text())
    assert {"net_only", "trees_only", "fold_ensembles"} <= summary.keys()
    blended = np.load(run / "ensemble" / "predictions.npz")
    start = 0
    for split in plan.transfer_folds:
        stored = np.load(run / "trees" / f"fold-{split.fold}.npz")
        np.testing.assert_array_equal(stored["indices"], split.test)
        assert stored["probs"].shape == (len(split.test), 3, 4)  # prefixes 6 and 24, whole history
        # The stored arrays are the fold's model: they reproduce its out-of-fold probabilities.
        fold_trees = BoostedTrees.from_arrays({n: stored[n] for n in ARRAY_NAMES})
        pos = np.searchsorted(transfer, split.test)
        np.testing.assert_allclose(
            fold_trees.predict_proba(features["transfer"][pos, -1]), stored["probs"][:, -1], atol=1e-9
        )
        # The fold's answer is the blend of its members' mean with its trees.
        members = [
            np.load(run / "members" / f"pred-{m.key}.npz")["probs"]
            for m in plan.members
            if m.fold == split.fold
        ]
        np.testing.assert_allclose(
            blended["probs"][start : start + len(split.test)],
            blend(np.mean(members, axis=0), stored["probs"], 0.5),
            atol=1e-6,
        )
        start += len(split.test)
    art = load_artifact(tmp_path / "model")
    # The shipped trees: one model refitted on every object (default), or every fold's (ship = "folds").
    assert art.trees is not None and art.trees.n_models == 1 and art.net_weight == 0.5
    refit = np.load(run / "trees" / "refit.npz")
    np.testing.assert_array_equal(art.trees.value, refit["value"])
    assert main(["export", *args, "--training.trees.ship=folds"]) == 0
    assert load_artifact(tmp_path / "model").trees.n_models == len(plan.transfer_folds)
    Predictor.from_artifact(tmp_path / "model", device="cpu")  # the service loads it
