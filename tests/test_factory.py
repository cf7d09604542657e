"""Settings that the factory applies to the process while building the parts."""

from __future__ import annotations

import torch

from broker_plugin.config import Settings
from broker_plugin.factory import build_parts


def test_torch_threads_are_set_from_the_settings(service_settings: Settings) -> None:
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    model = service_settings.model.model_copy(update={"torch_threads": wanted})
    try:
        parts = build_parts(service_settings.model_copy(update={"model": model}))
        parts.close()
        assert torch.get_num_threads() == wanted
        build_parts(service_settings).close()  # 0: left as it is
        assert torch.get_num_threads() == wanted
    finally:
        torch.set_num_threads(before)


def test_the_service_answers_with_the_artifacts_history_trees(service_settings: Settings, tmp_path) -> None:
    from tests.factories import make_artifact

    directory = make_artifact(tmp_path / "m", "convention-alert-small", 2, shared_backbone=True, trees=True)
    model = service_settings.model.model_copy(update={"artifact": directory})
    parts = build_parts(service_settings.model_copy(update={"model": model}))
    try:
        assert parts.predictor.trees is not None and parts.predictor.net_weight == 0.5
    finally:
        parts.close()
