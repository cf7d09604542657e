import numpy as np
import pytest
import torch

from broker_plugin.inference import create_net
from broker_plugin.inference.history import history_features
from broker_plugin.inference.preprocess import ModelInput, normalise_static_image, photometry_features
from broker_plugin.records import PhotometryHistory

#: The paper architecture with a narrow front end: identical code paths (joint LayerNorm, padding to 99
#: frames, u = padding) at a fraction of the CPU cost.
TINY = {"channels": (8, 16, 16, 8)}


def make_input(n: int, band_offset: int, seed: int = 0) -> ModelInput:
    rng = np.random.default_rng(seed)
    return ModelInput(
        rng.normal(size=(n, 32, 32)).astype(np.float32), rng.integers(0, 6, n).astype(np.int64) + band_offset
    )


def make_context_input(n: int, band_offset: int = 1, seed: int = 0) -> ModelInput:
    """An object with planes, irregular times and photometry, some planes and fluxes absent."""
    rng = np.random.default_rng(seed)
    base = make_input(n, band_offset, seed)
    presence = rng.random((n, 2)) > 0.15
    aux = np.zeros((n, 2, 32, 32), np.float32)
    for i, k in zip(*np.nonzero(presence), strict=True):
        aux[i, k] = normalise_static_image(rng.gamma(2.0, 50.0, (32, 32)), np.ones((32, 32), bool))
    flux = rng.normal(0, 3000, n)
    flux[rng.random(n) < 0.1] = np.nan
    phot = photometry_features(flux, rng.uniform(50, 800, n))
    # Irregular cadence: same-night pairs, a few nights, and season gaps.
    gaps = rng.choice([0.02, 1.0, 3.0, 200.0], size=n, p=[0.3, 0.4, 0.25, 0.05]) * rng.uniform(0.5, 1.5, n)
    mjd = 58000.0 + np.cumsum(gaps)
    # Forced photometry on more epochs than the frames (the undetected ones too), some after the last frame:
    # each frame's rows read only the epochs up to its own time.
    m = 3 * n
    history = PhotometryHistory.from_points(
        np.sort(rng.uniform(mjd[0] - 30.0, mjd[-1] + 10.0, m)), rng.integers(0, 6, m),
        rng.normal(0, 2000, m), rng.uniform(50, 800, m), rng.random(m) < 0.3,
    )  # fmt: skip
    rows = np.stack([history_features(history, float(t)) for t in mjd])
    return ModelInput(base.x, base.band, aux, phot, presence, mjd, float(mjd[0]), history=rows)


def make_members(name: str, count: int = 2, **overrides) -> list[torch.nn.Module]:
    members = []
    for seed in range(count):
        torch.manual_seed(seed)
        net = create_net(name, **overrides)
        for module in net.modules():  # non-trivial BatchNorm statistics, as after training
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
        members.append(net.eval())
    return members


@pytest.fixture
def tiny_paper():
    return make_members("convention-paper", **TINY)
