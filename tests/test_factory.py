"""Settings that the factory applies to the process while building the parts."""

from __future__ import annotations

import os

import torch

from broker_plugin.config import Settings
from broker_plugin.factory import build_parts, inference_threads


def test_torch_threads_are_set_from_the_settings(service_settings: Settings) -> None:
    before = torch.get_num_threads()
    wanted = 1 if before != 1 else 2
    model = service_settings.model.model_copy(update={"torch_threads": wanted})
    try:
        parts = build_parts(service_settings.model_copy(update={"model": model}))
        parts.close()
        assert torch.get_num_threads() == wanted
    finally:
        torch.set_num_threads(before)


def test_by_default_inference_takes_the_cores_preparation_leaves(service_settings: Settings) -> None:
    cores = len(os.sched_getaffinity(0))

    def threads(prepare_processes: int) -> int:
        service = service_settings.service.model_copy(update={"prepare_processes": prepare_processes})
        return inference_threads(service_settings.model_copy(update={"service": service}))

    assert service_settings.model.torch_threads == 0
    assert threads(0) == cores
    assert threads(1) == max(1, cores - 1)
    assert threads(cores + 3) == 1
    before = torch.get_num_threads()
    try:
        build_parts(service_settings).close()
        assert torch.get_num_threads() == threads(service_settings.service.prepare_processes)
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
