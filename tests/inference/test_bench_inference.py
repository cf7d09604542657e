"""The inference benchmarks run: the GPU one says so and exits 0 without CUDA, and its smoke run works."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load(name: str):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the sweep would run")
def test_gpu_benchmark_without_cuda_says_so_and_exits_0(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    assert load("bench_inference_gpu").main(["--output", str(out)]) == 0
    assert "no CUDA device" in capsys.readouterr().out
    assert not out.exists()


def test_gpu_benchmark_smoke_run_measures_every_model_and_path(tmp_path):
    out = tmp_path / "gpu.json"
    threads = torch.get_num_threads()
    try:
        assert load("bench_inference_gpu").main(["--smoke", "--output", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    report = json.loads(out.read_text())
    rows = report["results"]
    assert report["smoke"] and {(r["model"], r["path"]) for r in rows} == {
        (m, p) for m in ("shipped", "convention-paper") for p in ("incremental", "full")
    }
    for r in rows:
        assert r["old_objects_per_s"] > 0 and r["new_objects_per_s"] > 0 and r["speedup"] > 0
        assert r["max_abs_prob_diff"] <= 1e-5
