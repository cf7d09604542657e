"""Checkpoints are plain data read back with ``torch.load(weights_only=True)``: loading one runs no code."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from broker_plugin_train.loop import load_checkpoint, plain_data, save_checkpoint


def test_a_training_state_round_trips_with_its_optimiser(tmp_path: Path) -> None:
    net = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, amsgrad=True)
    net(torch.randn(5, 4)).sum().backward()
    opt.step()
    history = [{"epoch": 1, "loss": np.float32(0.5), "val_macro_f1": np.float64(0.25), "n": np.int64(3)}]
    state = {"epoch": 1, "history": history, "best": 0.25, "best_state": None, "counts": np.arange(3),
             "net": net.state_dict(), "opt": opt.state_dict(), "betas": (0.9, 0.999)}  # fmt: skip
    save_checkpoint(tmp_path / "c.pt", state)
    back = load_checkpoint(tmp_path / "c.pt")
    assert back["history"] == [{"epoch": 1, "loss": 0.5, "val_macro_f1": 0.25, "n": 3}]
    assert type(back["history"][0]["loss"]) is float and back["betas"] == (0.9, 0.999)
    assert torch.equal(back["counts"], torch.arange(3))
    again = torch.optim.AdamW(torch.nn.Linear(4, 3).parameters(), lr=1e-3, amsgrad=True)
    again.load_state_dict(back["opt"])  # resumable: the optimiser's moments came back
    moments = again.state_dict()["state"][0]
    assert torch.equal(moments["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert not (tmp_path / "c.tmp").exists()


def test_objects_that_need_unpickling_are_refused_at_save_time(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="Path"):
        plain_data({"config": {"run_dir": Path("runs")}})
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path / "c.pt", {"rng": np.random.default_rng(0)})
    assert not (tmp_path / "c.pt").exists()


class _Payload:
    """What a malicious (or merely old) checkpoint can carry: unpickling it would run code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_loading_never_runs_code_and_names_the_file(tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    torch.save({"state": {}, "info": _Payload(marker)}, tmp_path / "old.pt")
    with pytest.raises(RuntimeError, match=r"old\.pt .*delete it"):
        load_checkpoint(tmp_path / "old.pt")
    assert not marker.exists()
    torch.save({"loss": np.float64(0.5)}, tmp_path / "numpy.pt")  # how older versions wrote numbers
    with pytest.raises(RuntimeError, match="weights-only"):
        load_checkpoint(tmp_path / "numpy.pt")
