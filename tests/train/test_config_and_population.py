from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from pydantic import ValidationError

from broker_plugin_train.config import CLASSES, TrainConfig
from broker_plugin_train.data.cadence import Survey
from broker_plugin_train.data.population import catalogue, make_object

from .conftest import small_config


def test_default_counts_match_the_paper(default_config: TrainConfig) -> None:
    entries = catalogue(default_config.simulation)
    assert len(entries) == 8249
    by = Counter((e.label, e.confirmed, e.pool) for e in entries)
    assert by[("SNIa", False, "pretrain")] == 1448
    assert by[("SNIa", True, "transfer")] == 540
    assert by[("SNOther", False, "pretrain")] == 2041
    assert by[("SNOther", True, "transfer")] == 89
    # AGN and variables: halves in each pool (convention-spec 4.1: 452/453 and 1612/1613).
    assert by[("AGN", True, "pretrain")] == 453 and by[("AGN", True, "transfer")] == 453
    assert by[("Variable", True, "pretrain")] == 1612 and by[("Variable", True, "transfer")] == 1613
    assert {e.label for e in entries} == set(CLASSES)
    # Shuffled: classes are mixed through the shards.
    assert len({e.label for e in entries[:50]}) == 4


def test_unknown_config_keys_are_rejected() -> None:
    with pytest.raises(ValidationError):
        TrainConfig.model_validate({"simulation": {"sead": 1}})
    with pytest.raises(ValidationError):
        TrainConfig.model_validate({"simulation": {"survey": {"bands": ["u", "w"]}}})


def test_unconfirmed_sne_are_fainter_and_a_few_percent_mislabelled() -> None:
    sim = small_config(
        agn=0,
        variable=0,
        snia_unconfirmed=150,
        snia_confirmed=150,
        snother_unconfirmed=150,
        snother_confirmed=0,
    )
    sim = sim.model_copy(update={"population": sim.population.model_copy(update={"label_noise": 0.2})})
    survey = Survey(sim.survey, sim.seed)
    objs = [make_object(sim, survey, e) for e in catalogue(sim)]
    z_conf = np.mean([o.redshift for o in objs if o.entry.confirmed and o.true_class == "SNIa"])
    z_unconf = np.mean([o.redshift for o in objs if not o.entry.confirmed and o.true_class == "SNIa"])
    assert z_unconf > z_conf + 0.05
    flipped = [o.true_class != o.entry.label for o in objs if not o.entry.confirmed]
    assert 0.11 < np.mean(flipped) < 0.29  # 20 % +- 3 sigma of a binomial with n = 200
    assert not any(o.true_class != o.entry.label for o in objs if o.entry.confirmed)


@pytest.mark.parametrize("name", ["default", "small", "paper"])
def test_shipped_configs_train_every_position_of_their_serving_window(name: str) -> None:
    from broker_plugin.inference import create_net
    from broker_plugin_train.config import load_config
    from broker_plugin_train.plan import check_training_window

    from .conftest import CONFIGS

    t = load_config(CONFIGS / f"{name}.toml").training
    check_training_window(create_net(t.net.name, **t.net.args), t.pretrain.max_train_frames)
