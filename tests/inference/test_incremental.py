import dataclasses

import numpy as np
import pytest
import torch

from broker_plugin.inference.errors import CacheError, InferenceInputError
from broker_plugin.inference.incremental import IncrementalEngine, ObjectCache, RebuildJob
from broker_plugin.inference.predictor import Predictor
from broker_plugin.inference.preprocess import FluxNormalisation

from .conftest import TINY, make_context_input, make_input, make_members


def assert_incremental_equals_full(members, prefixes, n_total=150):
    """Feed frames one by one (cache through bytes each time) and compare with full recomputes."""
    predictor = Predictor(members, model_id="m1", normalisation=FluxNormalisation(), device="cpu")
    make = make_context_input if predictor.uses_context else make_input
    inp = make(n_total, members[0].band_offset)
    full = predictor.predict([inp[:n] for n in prefixes])
    cache, worst = None, 0.0
    for n in range(1, n_total + 1):
        ((pred, cache),) = predictor.update([cache], [inp[n - 1 : n]])
        cache = ObjectCache.from_bytes(cache.to_bytes(), model_id="m1")
        if n in prefixes:
            ref = full[prefixes.index(n)]
            worst = max(worst, float(np.abs(pred.probabilities - ref.probabilities).max()))
            assert pred.n_frames == ref.n_frames
            np.testing.assert_allclose(pred.spread, ref.spread, atol=1e-5)
    assert worst <= 1e-5, worst
    return cache, inp, predictor


EVERY = list(range(1, 151))
#: Chunk boundaries, the first roll of the window (99 -> 100 frames) and the end.
EDGES = [1, 2, 3, 4, 50, 98, 99, 100, 101, 102, 103, 150]
#: Every ablation input on, for the recurrent baselines (convention-triplet's inputs).
RNN_CONTEXT = {"planes": 3, "time_encoding": "continuous", "photometry": True}
#: A narrower recurrent baseline: the same code paths at a fraction of the CPU time.
NARROW = {"features": 32, "hidden": 16}


@pytest.mark.parametrize(
    ("name", "overrides", "prefixes", "count"),
    [
        pytest.param("convention-paper", TINY, EVERY, 1, marks=pytest.mark.slow),
        ("convention-paper", TINY, EDGES, 2),
        ("convention-fixed", TINY, EDGES, 1),
        ("convention-small", {}, EDGES, 1),
        pytest.param("convention-triplet-small", {}, EVERY, 1, marks=pytest.mark.slow),
        ("convention-triplet-small", {}, EDGES, 2),
        ("convention-triplet", TINY, EDGES, 1),
        ("convention-triplet-small", {"planes": 1, "photometry": False}, EDGES, 1),
        ("convention-triplet-small", {"time_encoding": "index"}, EDGES, 1),
        pytest.param("convention-triplet-lean", {}, EVERY, 1, marks=pytest.mark.slow),
        ("convention-triplet-lean", {}, EDGES, 2),
        pytest.param("convention-alert-small", {}, EVERY, 1, marks=pytest.mark.slow),
        ("convention-alert-small", {}, EDGES, 2),
        ("convention-alert-small", {"history_skip_statistics": True}, EDGES, 1),
        ("convention-alert", TINY, EDGES, 1),
        ("cnn-gru", {}, EDGES, 1),
        ("cnn-lstm", {}, [1, 99, 100, 150], 1),
        # The recurrent baselines given the ablation's inputs (one token per frame: chunk_size 1).
        pytest.param("cnn-gru", RNN_CONTEXT, EVERY, 1, marks=pytest.mark.slow),
        ("cnn-gru", RNN_CONTEXT, EDGES, 2),
        ("cnn-gru", {**NARROW, "time_encoding": "continuous"}, EDGES, 1),
        ("cnn-gru", {**NARROW, "photometry": True}, [1, 2, 99, 100, 150], 1),
        ("cnn-gru", {**NARROW, "planes": 3}, [1, 2, 99, 100, 150], 1),
        ("cnn-lstm", {**NARROW, **RNN_CONTEXT}, [1, 2, 99, 100, 150], 1),
    ],
)
def test_incremental_equals_full_recompute_at_every_prefix(name, overrides, prefixes, count):
    members = make_members(name, count=count, **overrides)
    cache, inp, predictor = assert_incremental_equals_full(members, prefixes)
    rebuilt = predictor.new_cache(inp)  # the cache is only a cache: frames rebuild it
    assert rebuilt.n_frames == cache.n_frames == 150
    np.testing.assert_allclose(rebuilt.tokens, cache.tokens, atol=1e-5)
    np.testing.assert_array_equal(rebuilt.pending_band, cache.pending_band)


@pytest.mark.slow
def test_incremental_equals_full_for_the_real_paper_model():
    assert_incremental_equals_full(make_members("convention-paper", count=1), EVERY)


def test_cache_keeps_only_the_window(tiny_paper):
    predictor = Predictor(tiny_paper, model_id="m1", normalisation=FluxNormalisation(), device="cpu")
    inp = make_input(104, 0)
    cache = predictor.new_cache(inp)
    assert cache.tokens.shape == (2, 33, 8, 9, 9)
    assert cache.pending_band.tolist() == inp.band[-2:].tolist()


def test_cache_bytes_refuse_corruption_and_other_models(tiny_paper):
    engine = IncrementalEngine(tiny_paper, model_id="m1", device=torch.device("cpu"))
    cache = engine.rebuild(make_input(7, 0))
    data = cache.to_bytes()
    back = ObjectCache.from_bytes(data, model_id="m1")
    assert back.n_frames == 7 and np.array_equal(back.tokens, cache.tokens)
    assert np.array_equal(back.pending_x, cache.pending_x)
    with pytest.raises(CacheError, match="rebuild"):
        ObjectCache.from_bytes(data, model_id="m2")
    corrupt = bytearray(data)
    corrupt[-5] ^= 0xFF
    with pytest.raises(CacheError, match="corrupt"):
        ObjectCache.from_bytes(bytes(corrupt))
    with pytest.raises(CacheError):
        ObjectCache.from_bytes(data[:-4])
    other = IncrementalEngine(tiny_paper, model_id="m2", device=torch.device("cpu"))
    with pytest.raises(CacheError):
        other.step([cache], np.zeros((1, 32, 32), np.float32), np.zeros(1, np.int64))


def test_engine_refuses_training_mode(tiny_paper):
    tiny_paper[0].train()
    with pytest.raises(ValueError, match="eval"):
        IncrementalEngine(tiny_paper, model_id="m", device=torch.device("cpu"))


def _changed_after(inp, j: int):
    """``inp`` with every frame from ``j`` on different (as after a late frame landed at ``j``)."""
    x = inp.x.copy()
    x[j:] = x[j:] * -2.0 + 0.5
    return dataclasses.replace(inp, x=x, band=np.concatenate((inp.band[:j], inp.band[j:][::-1])))


@pytest.mark.parametrize(
    ("name", "n_frames", "shared"),
    [
        ("convention-triplet-small", 10, 0),  # the first frame changed: nothing to reuse
        ("convention-triplet-small", 10, 4),
        ("convention-triplet-small", 11, 9),  # only the pending frames changed
        ("convention-alert-small", 40, 20),
        ("convention-alert-small", 150, 140),  # the window rolled: reuse inside the cache's chunks
        ("convention-alert-small", 150, 30),  # before the window: the window's chunks embedded again
        ("convention-small", 104, 100),
    ],
)
def test_a_rebuild_reuses_the_tokens_before_the_changed_frames(name, n_frames, shared):
    engine = IncrementalEngine(make_members(name, count=2), model_id="m1", device=torch.device("cpu"))
    make = make_context_input if engine.uses_context else make_input
    old = make(n_frames, 1)
    new = _changed_after(old, shared)
    reuse = engine.rebuild(old)
    start = engine.rebuild_start(reuse, n_frames, shared)
    window = 3 * max(0, n_frames // 3 - 33)
    assert start == (3 * (shared // 3) if shared >= window else window)
    reference = engine.rebuild(new)
    # One batch with an unrelated object: the jobs' chunks are embedded together.
    other = make(8, 1, seed=5)
    got, alone = engine.rebuild_many([RebuildJob(new[start:], start, reuse), RebuildJob(other)])
    assert got.n_frames == reference.n_frames and got.tokens.shape == reference.tokens.shape
    np.testing.assert_allclose(got.tokens, reference.tokens, atol=1e-5)
    np.testing.assert_array_equal(got.pending_x, reference.pending_x)
    np.testing.assert_allclose(got.pending_context, reference.pending_context, atol=1e-6)
    assert (got.first_mjd, got.last_mjd) == (
        reference.first_mjd,
        reference.last_mjd,
    ) or not engine.uses_context
    np.testing.assert_allclose(alone.tokens, engine.rebuild(other).tokens, atol=1e-5)


def test_a_rebuild_refuses_a_cache_without_the_tokens_it_needs(tiny_paper):
    engine = IncrementalEngine(tiny_paper, model_id="m1", device=torch.device("cpu"))
    short = engine.rebuild(make_input(6, 0))
    with pytest.raises(CacheError, match="holds chunks"):
        engine.rebuild_many([RebuildJob(make_input(12, 0)[9:], 9, short)])
    with pytest.raises(InferenceInputError, match="chunk boundary"):
        engine.rebuild_many([RebuildJob(make_input(12, 0)[4:], 4, short)])
