import numpy as np
import pytest
import torch

from broker_plugin.inference import create_net
from broker_plugin.inference.preprocess import ModelInput

#: The paper architecture with a narrow front end: identical code paths (joint LayerNorm, padding to 99
#: frames, u = padding) at a fraction of the CPU cost.
TINY = {"channels": (8, 16, 16, 8)}


def make_input(n: int, band_offset: int, seed: int = 0) -> ModelInput:
    rng = np.random.default_rng(seed)
    return ModelInput(
        rng.normal(size=(n, 32, 32)).astype(np.float32), rng.integers(0, 6, n).astype(np.int64) + band_offset
    )


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
