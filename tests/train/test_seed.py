"""``--seed`` sets the seed of what a stage makes: the training seed for every model-building stage."""

from pathlib import Path

import pytest

from broker_plugin_train.__main__ import _simulation_config, main, parse

CONFIGS = Path(__file__).resolve().parents[2] / "broker_plugin_train" / "configs"
DEFAULT = str(CONFIGS / "default.toml")
MODEL_STAGES = ["pretrain", "finetune", "ensemble", "evaluate", "export", "all", "compare", "ablation"]


@pytest.mark.parametrize("stage", MODEL_STAGES)
def test_seed_sets_the_training_seed_of_every_model_building_stage(stage: str):
    _, config = parse([stage, "--config", DEFAULT, "--seed", "7"])
    assert config.training.seed == 7
    assert config.simulation.seed == 20230523  # the data are not re-seeded
    _, unseeded = parse([stage, "--config", DEFAULT])
    assert unseeded.training.seed == 123


def test_seed_wins_over_the_dotted_override_in_either_order():
    for argv in (["--seed", "7", "--training.seed=5"], ["--training.seed=5", "--seed", "7"]):
        assert parse(["pretrain", "--config", DEFAULT, *argv])[1].training.seed == 7
    assert parse(["pretrain", "--config", DEFAULT, "--training.seed=5"])[1].training.seed == 5


def test_simulate_keeps_its_own_seed():
    args, config = parse(["simulate", "--config", DEFAULT, "--seed", "7"])
    assert config.training.seed == 123
    assert _simulation_config(config, args).simulation.seed == 7


@pytest.mark.parametrize(("stage", "says"), [("pretrain", "training.seed"), ("simulate", "simulation.seed")])
def test_help_says_which_seed(stage: str, says: str, capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit):
        main([stage, "--help"])
    assert says in " ".join(capsys.readouterr().out.split())  # argparse wraps lines
