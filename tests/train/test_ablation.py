"""The input ablation's runner and table, on fake run outputs (nothing is trained here)."""

from __future__ import annotations

import dataclasses
import json
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from broker_plugin.inference import create_net
from broker_plugin_train.__main__ import main
from broker_plugin_train.ablation import (
    VARIANTS,
    AblationRun,
    ablation_runs,
    check_command,
    execute,
    run_command,
    toml_value,
    write_table,
)
from broker_plugin_train.compare import _view
from broker_plugin_train.config import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "broker_plugin_train" / "configs"
ABLATION = str(CONFIGS / "ablation.toml")


def test_the_ablation_config_is_the_default_recipe_at_a_smaller_stage_one_budget():
    ablation, default = load_config(ABLATION), load_config(CONFIGS / "default.toml")
    assert ablation.data_dir == default.data_dir == "data/sim/default"
    assert ablation.simulation == default.simulation  # the same dataset
    a, d = ablation.training, default.training
    assert (a.data.folds, a.data.seeds, a.pretrain.share_across_folds) == (5, 1, True)
    # The ablation's table was measured with one member per fold (the default has 3 on one backbone).
    assert a.data.model_dump(exclude={"seeds"}) == d.data.model_dump(exclude={"seeds"})
    assert a.evaluate == d.evaluate
    assert (a.data.min_snr, a.data.min_frames) == (5.0, 3)  # the alert view, as the service sees objects
    budget = {"epochs", "samples_per_epoch", "share_across_seeds"}
    assert a.pretrain.model_dump(exclude=budget) == d.pretrain.model_dump(exclude=budget)
    draws = a.pretrain.epochs * a.pretrain.samples_per_epoch
    assert draws < d.pretrain.epochs * d.pretrain.samples_per_epoch
    # The ablation's table was measured with the history encoder frozen in stage 2 (history_lr unset)
    # and the heads trained on confirmed objects only.
    prefixes = {"prefix_frames", "history_lr", "pool_validation"}
    assert a.finetune.model_dump(exclude=prefixes) == d.finetune.model_dump(exclude=prefixes)
    assert a.finetune.history_lr is None and not a.finetune.pool_validation
    assert 6 in a.finetune.prefix_frames  # the table's early column
    assert (a.seed, a.threads, a.norm_objects, a.normalisation) == (
        d.seed,
        d.threads,
        d.norm_objects,
        "asinh",
    )


def test_runs_cover_both_nets_and_every_input_set_in_their_own_folders(tmp_path: Path):
    runs = ablation_runs(tmp_path)
    assert [r.name for r in runs[:2]] == ["convention-triplet-small-paper", "cnn-gru-paper"]
    assert len(runs) == 11 and len({r.run_dir for r in runs}) == 11
    assert {r.variant for r in runs} == {"paper", "time", "photometry", "planes", "all", "history"}
    assert runs[-1].name == "convention-triplet-small-history"  # the recurrent nets have no history branch
    assert all(r.run_dir.parent == tmp_path and r.model_dir.parent == r.run_dir for r in runs)
    assert [r.name for r in ablation_runs(tmp_path, ["cnn-gru"], ["all", "paper"])] == [
        "cnn-gru-paper",
        "cnn-gru-all",
    ]
    with pytest.raises(ValueError, match="unknown"):
        ablation_runs(tmp_path, ["cnn-lstm"])


def test_variant_flags_are_one_change_at_a_time_from_the_paper_inputs():
    paper = VARIANTS["paper"].flags
    assert dict(paper) == {"planes": 1, "time_encoding": "index", "photometry": False}
    for name, changed in (("time", "time_encoding"), ("photometry", "photometry"), ("planes", "planes")):
        diff = {k for k in paper if VARIANTS[name].flags[k] != paper[k]}
        assert diff == {changed}, name
    assert dict(VARIANTS["all"].flags) == {"planes": 3, "time_encoding": "continuous", "photometry": True}
    assert dict(VARIANTS["history"].flags) == {
        **VARIANTS["all"].flags,
        "history": True,
        "history_statistics": True,
    }


@pytest.mark.parametrize(
    "value",
    [{"planes": 3, "time_encoding": "continuous", "photometry": True}, {"channels": [4, 8], "x": 0.5}],
)
def test_toml_values_read_back(value):
    assert tomllib.loads(f"v = {toml_value(value)}")["v"] == value


def test_each_command_parses_to_its_run_with_the_ablation_overrides(tmp_path: Path):
    passthrough = ["--training.pretrain.epochs=1", "--training.net.args={max_chunks=20}"]
    for run in ablation_runs(tmp_path):
        argv = run_command(
            run, ABLATION, base_net_args={"max_chunks": 20}, passthrough=passthrough, seed=9, data="d",
            python="py",
        )  # fmt: skip
        assert argv[:6] == ["py", "-m", "broker_plugin_train", "all", "--config", ABLATION]
        config = check_command(argv)  # what the child will parse, and its net builds
        t = config.training
        assert (t.net.name, t.run_dir, t.model_dir) == (run.net, str(run.run_dir), str(run.model_dir))
        assert t.net.args == {"max_chunks": 20, **VARIANTS[run.variant].flags}
        assert (t.seed, t.pretrain.epochs, t.pretrain.samples_per_epoch) == (9, 1, 1000)
        assert (t.data.min_snr, t.finetune.prefix_frames) == (5.0, (3, 6, 12, 24, 48))
        assert argv[argv.index("--data") + 1] == "d"


def test_dry_run_checks_and_prints_every_command_and_trains_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    root = tmp_path / "abl"
    assert main(["ablation", "--config", ABLATION, f"--training.run_dir={root}", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count(" -m broker_plugin_train all --config ") == 11
    for run in ablation_runs(root):
        net, variant = run.net, run.variant
        assert f"# {net}-{variant} (to run)" in out
        assert f"--training.run_dir={root / f'{net}-{variant}'}" in out
    assert not root.exists()


def test_a_bad_override_stops_the_ablation_before_any_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    argv = ["ablation", "--config", ABLATION, f"--training.run_dir={tmp_path}", "--training.pretrain.epoch=1"]
    assert main(argv) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: --training.pretrain.epoch=1: unknown key")
    assert not any(tmp_path.iterdir())


def test_execute_runs_jobs_side_by_side_logs_them_and_reports_failures(tmp_path: Path):
    ok, bad = AblationRun("cnn-gru", "paper", tmp_path), AblationRun("cnn-gru", "all", tmp_path)
    commands = [
        (ok, [sys.executable, "-c", "print('trained')"]),
        (bad, [sys.executable, "-c", "import sys; print('broken'); sys.exit(3)"]),
    ]
    assert execute(commands, jobs=2, poll_s=0.05) == ["cnn-gru-all"]
    assert ok.log.read_text().strip() == "trained" and bad.log.read_text().strip() == "broken"


# ---- the table, from fake run outputs ---------------------------------------------------------------

FRAMES = [6, 24, "all"]
N_PER_FOLD, N_FOLDS = 12, 5


def _fake_predictions(path: Path, seed: int, indices: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """Out-of-fold predictions: right on whole histories, a seeded guess after 6 frames."""
    rng = np.random.default_rng(seed)
    n = N_PER_FOLD * N_FOLDS
    y = np.tile(np.arange(4), n // 4)
    folds = np.repeat(np.arange(N_FOLDS), N_PER_FOLD)
    early = rng.integers(0, 4, n)
    probs = np.zeros((n, len(FRAMES), 4), np.float32)
    probs[np.arange(n), 0, early] = 1
    probs[np.arange(n), 1, y] = probs[np.arange(n), 2, y] = 1
    indices = np.arange(n) if indices is None else indices
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, indices=indices, labels=y, folds=folds, probs=probs)
    return y, folds, early


def _fake_run(run_dir: Path, net: str, net_args: dict, f1: list[float], seed: int, **kw) -> np.ndarray:
    """A finished run's files; returns the per-fold macro-F1 after 6 frames it implies."""
    y, folds, early = _fake_predictions(run_dir / "ensemble" / "predictions.npz", seed, **kw)
    per_fold = [{"fold": f, "accuracy": 0.8, "macro_f1": v} for f, v in enumerate(f1)]
    report = {
        "early_classification": [{"frames": k, "accuracy": 0.5, "macro_f1": 0.4} for k in FRAMES],
        "fold_ensembles": {
            "per_fold": per_fold,
            "accuracy": {"mean": 0.8, "std": 0.0},
            "macro_f1": {"mean": float(np.mean(f1)), "std": float(np.std(f1))},
        },
        "protocol": {
            "config": "ablation", "net": net, "net_args": net_args, "folds": N_FOLDS, "seeds": 1, "seed": 123,
            "pretrain_epochs": 4, "pretrain_samples_per_epoch": 1000, "finetune_epochs": 30,
            "data_hash": "e21c9c3022086d90aa",
        },
    }  # fmt: skip
    (run_dir / "evaluation").mkdir(parents=True)
    (run_dir / "evaluation" / "metrics.json").write_text(json.dumps(report))
    (run_dir / "wall_time.json").write_text(json.dumps({"seconds": 290.0 if seed != 2 else 42.0}))
    return np.array([
        f1_score(y[folds == f], early[folds == f], labels=range(4), average="macro", zero_division=0)
        for f in range(N_FOLDS)
    ])  # fmt: skip


def _fake_trees(lc_run: Path) -> None:
    _fake_predictions(lc_run / "predictions.npz", 99)
    report = {
        "early_classification": [{"frames": k, "accuracy": 0.4, "macro_f1": 0.3} for k in [6, 12, "all"]],
        "fold_ensembles": {
            "accuracy": {"mean": 0.959, "std": 0.004},
            "macro_f1": {"mean": 0.883, "std": 0.007},
        },
    }
    (lc_run / "evaluation").mkdir(parents=True)
    (lc_run / "evaluation" / "metrics.json").write_text(json.dumps(report))


def _row(table: str, inputs: str, net: str) -> list[str]:
    (line,) = [r for r in table.splitlines() if r.startswith(f"| {inputs} | {net}")]
    return [c.strip() for c in line.strip("|").split("|")]


def test_table_rows_per_input_set_and_net_beside_the_trees(tmp_path: Path):
    runs = ablation_runs(tmp_path)
    by_name = {r.name: r for r in runs}
    paper = by_name["convention-triplet-small-paper"]
    time_ = by_name["convention-triplet-small-time"]
    gru_all = by_name["cnn-gru-all"]
    flags = {n: dict(VARIANTS[n].flags) for n in VARIANTS}
    _fake_run(paper.run_dir, paper.net, flags["paper"], [0.5] * 5, seed=1)
    early = _fake_run(time_.run_dir, time_.net, flags["time"], [0.6, 0.55, 0.5, 0.65, 0.7], seed=2)
    # CNN+GRU's reference (its paper inputs) has not run: no paired difference. Other objects: marked.
    _fake_run(gru_all.run_dir, gru_all.net, flags["all"], [0.4] * 5, seed=3, indices=np.arange(60) + 1000)
    _fake_trees(tmp_path / "lc-features")

    table = write_table(runs, tmp_path / "out", tmp_path / "lc-features")
    assert (tmp_path / "out" / "table.md").read_text().endswith(table + "\n")
    assert (tmp_path / "out" / "early_classification.png").stat().st_size > 0
    lines = table.splitlines()
    assert len(lines) == 2 + 11 + 1  # header, rule, one row per run, the trees
    assert "macro-F1 after 6 frames %" in lines[0]

    row = _row(table, "+ continuous time", "ConvEntion (convention-triplet-small)")
    params = sum(p.numel() for p in create_net("convention-triplet-small", **flags["time"]).parameters())
    assert row[2:4] == ["80.0 ± 0.0", "60.0 ± 7.1"]
    assert row[4] == f"{100 * early.mean():.1f} ± {100 * early.std():.1f}"  # per-fold, from the predictions
    assert row[5] == "+10.0 ± 7.1"  # fold by fold: +10, +5, 0, +15, +20
    assert row[6:] == [f"{params:,}", "42 s"]
    assert _row(table, "paper inputs (difference, frame order)", "ConvEntion")[7] == "5 min"
    assert _row(table, "paper inputs (difference, frame order)", "ConvEntion")[5] == "-"  # itself
    gru = _row(table, "all (time, photometry, science & template)", "CNN+GRU (cnn-gru) (other objects)")
    assert gru[3] == "40.0 ± 0.0" and gru[5] == "-"
    assert _row(table, "+ photometry", "CNN+GRU (cnn-gru)")[2:] == ["not run"] + [""] * 5
    trees = _row(table, "light curve (photometry measured on the frames)", "light-curve features + GBT")
    assert trees[2:4] == ["95.9 ± 0.4", "88.3 ± 0.7"] and trees[4] != "-"


def test_table_only_stage_tabulates_finished_runs_without_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    run = AblationRun("cnn-gru", "paper", tmp_path)
    _fake_run(run.run_dir, run.net, dict(VARIANTS["paper"].flags), [0.5] * 5, seed=1)
    argv = [
        "ablation",
        "--config",
        ABLATION,
        f"--training.run_dir={tmp_path}",
        "--table-only",
        "--no-baseline",
    ]
    assert main(argv) == 0
    assert (
        "| paper inputs (difference, frame order) | CNN+GRU (cnn-gru) | 80.0 ± 0.0 |"
        in capsys.readouterr().out
    )
    text = (tmp_path / "table.md").read_text()
    assert "4 epochs x 1000 draws" in text and "seed 123" in text


# ---- the recurrent baseline's context reaches it through the training path -------------------------


@pytest.mark.parametrize("variant", ["time", "photometry", "planes", "all"])
def test_prefix_features_of_a_context_baseline_equal_the_net_on_each_prefix_window(variant: str):
    from broker_plugin_train.augment import serving_window
    from broker_plugin_train.loop import batch_tensors
    from broker_plugin_train.prefix import head_probs, prefix_features
    from tests.inference.conftest import make_context_input

    torch.manual_seed(0)
    net = create_net("cnn-gru", features=16, hidden=8, max_chunks=12, **VARIANTS[variant].flags).eval()
    assert net.uses_context
    inputs = [make_context_input(n, seed=n) for n in (4, 11, 25)]
    prefixes = (3, 6, 12)
    probs = head_probs(net.head, prefix_features(net, inputs, prefixes, batch_size=2))
    with torch.inference_mode():
        for k, inp in enumerate(inputs):
            for v, p in enumerate([*prefixes, None]):
                seen = inp if p is None or p >= len(inp) else inp[:p]
                expected = net(*batch_tensors(net, [serving_window(seen, 1, net.max_chunks)])).softmax(-1)
                np.testing.assert_allclose(probs[k, v], expected.numpy()[0], atol=1e-5)


# ---- the trees see the nets' frames ------------------------------------------------------------------


def test_light_curve_view_keeps_the_planes_and_the_alert_view(small_dataset: Path):
    from broker_plugin_train.data.shards import ShardDataset
    from broker_plugin_train.objects import ObjectSource

    data = ShardDataset(small_dataset)
    seq = data[0]
    assert seq.science is not None and seq.template is not None
    view = _view(seq, 5, None)
    assert len(view.band) == 5
    for name in ("science", "template", "template_masks", "frames", "mjd"):
        np.testing.assert_array_equal(getattr(view, name), np.asarray(getattr(seq, name))[:5])
    no_planes = dataclasses.replace(seq, science=None, template=None, template_masks=None)
    assert _view(no_planes, 5, None).science is None
    # With the alert view and its object cut, source index i is the dataset row the nets train on.
    source = ObjectSource.from_shards(small_dataset, min_snr=5.0, min_frames=3)
    assert len(source) < len(data)  # some objects have fewer than 3 alerts
    for i in range(len(source)):
        seen = _view(data[int(source._rows[i])], None, None, source.min_snr)
        raw = source.raw(i)
        assert raw.context is not None
        np.testing.assert_array_equal(seen.mjd, raw.context.mjd)


def test_the_history_view_of_the_trees_is_what_a_history_net_reads(small_dataset: Path):
    from broker_plugin_train.data.shards import ShardDataset
    from broker_plugin_train.objects import ObjectSource

    data = ShardDataset(small_dataset)
    source = ObjectSource.from_shards(small_dataset, min_snr=5.0, min_frames=3)
    for i in range(min(len(source), 20)):
        seq, raw = data[int(source._rows[i])], source.raw(i)
        whole = _view(seq, None, None, source.min_snr, history=True)
        # Whole histories: the net's history points up to its last alert (none after it).
        last = raw.context.mjd[-1]
        np.testing.assert_array_equal(
            whole.mjd, np.sort(raw.history.midpointMjdTai[raw.history.midpointMjdTai <= last])
        )
        early = _view(seq, 3, None, source.min_snr, history=True)
        assert early.mjd.max() == raw.context.mjd[2] and early.mjd.min() == whole.mjd.min()
