"""Shared fixtures: a small simulated dataset made once per session, and config helpers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from broker_plugin_train.config import SimulationConfig, TrainConfig, load_config
from broker_plugin_train.data.cadence import Epochs
from broker_plugin_train.data.population import CatalogueEntry, SimObject
from broker_plugin_train.data.simulate import simulate

CONFIGS = Path(__file__).resolve().parents[2] / "broker_plugin_train" / "configs"


def small_config(**population_counts: int) -> SimulationConfig:
    """The small config, optionally with other class counts."""
    sim = load_config(CONFIGS / "small.toml").simulation
    if population_counts:
        counts = sim.population.counts.model_copy(update=population_counts)
        sim = sim.model_copy(update={"population": sim.population.model_copy(update={"counts": counts})})
    return sim


def with_survey(sim: SimulationConfig, **survey: object) -> SimulationConfig:
    """A config with some survey settings replaced (validated)."""
    data = sim.model_dump()
    data["survey"].update(survey)
    return SimulationConfig.model_validate(data)


@pytest.fixture(scope="session")
def default_config() -> TrainConfig:
    return load_config(CONFIGS / "default.toml")


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "small"
    simulate(small_config(), out, workers=1)
    return out


def point_source_object(flux_njy: float, n: int, fwhm: float, m5: float, band: str = "r") -> SimObject:
    """A constant point source seen ``n`` times under identical conditions (no host, no template)."""
    epochs = Epochs(
        mjd=np.arange(n, dtype=np.float64),
        band=np.full(n, band),
        fwhm=np.full(n, fwhm),
        m5=np.full(n, m5),
        sky_mag=np.full(n, 20.9),
        missing=np.zeros(n, bool),
        template_mjd=np.zeros(0),
        template_band=np.zeros(0, dtype="<U1"),
    )
    entry = CatalogueEntry(0, "Variable", True, "pretrain")
    return SimObject(
        entry, "Variable", "test", 0.0, 0.0, np.nan, np.nan, epochs, np.full(n, flux_njy), np.zeros(n), None
    )
