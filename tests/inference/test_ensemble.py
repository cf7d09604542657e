"""The stacked ensemble (all members in one pass) gives the per-member reference's numbers within 1e-5."""

from pathlib import Path

import numpy as np
import pytest
import torch

from broker_plugin.inference.artifact import load_artifact
from broker_plugin.inference.ensemble import MemberLoop, StackedConvEntion, can_stack, ensemble_forward
from broker_plugin.inference.incremental import ObjectCache
from broker_plugin.inference.predictor import Predictor
from broker_plugin.inference.preprocess import FluxNormalisation, ModelInput, collate

from .conftest import TINY, make_input, make_members

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "convention-default"
TOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: the reference path's many small ops crawl when 2 threads share busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def shipped():
    return load_artifact(SHIPPED).members


def predictors(members, **kwargs):
    """The reference (member loop) and the stacked predictor of one ensemble."""
    common = {"model_id": "m", "normalisation": FluxNormalisation(), "device": "cpu", **kwargs}
    ref, fast = Predictor(members, stacked=False, **common), Predictor(members, **common)
    assert isinstance(ref.ensemble, MemberLoop) and isinstance(fast.ensemble, StackedConvEntion)
    return ref, fast


def objects(n_frames: int, band_offset: int, count: int = 3) -> list[ModelInput]:
    """Objects with different bands and flux, the last with two chunks of zero flux.

    For the paper net (``u`` is band id 0) those chunks are all-``u``: they look like padding, which the
    stacked path looks up instead of computing.
    """
    inputs = [make_input(n_frames, band_offset, seed=s) for s in range(count)]
    x, band = inputs[-1].x.copy(), inputs[-1].band.copy()
    x[6:12] = 0.0
    if band_offset == 0:
        band[6:12] = 0
    inputs[-1] = ModelInput(x, band)
    return inputs


def assert_close(got, ref, what):
    for g, r in zip(got, ref, strict=True):
        assert g.n_frames == r.n_frames, what
        np.testing.assert_allclose(g.probabilities, r.probabilities, atol=TOL, err_msg=what)
        np.testing.assert_allclose(g.spread, r.spread, atol=TOL, err_msg=what)


def max_diff(got, ref) -> float:
    return max(float(np.abs(g.probabilities - r.probabilities).max()) for g, r in zip(got, ref, strict=True))


EVERY = list(range(1, 151))
#: Chunk boundaries, the first roll of the window (99 -> 100 frames) and the end.
EDGES = [1, 2, 3, 4, 50, 98, 99, 100, 101, 102, 103, 150]


def run_prefixes(members, prefixes=EVERY, count=2, n_total=150):
    """Stacked vs reference, full recompute and frame-by-frame incremental, at ``prefixes``.

    Incremental: every frame of ``count`` objects, stacked and reference side by side (the cache going
    through bytes). Full recompute of every prefix: stacked; the reference's full recompute equals its
    incremental path (``test_incremental``), and is recomputed here at the window's edges.

    Returns the largest probability difference between the two paths.
    """
    ref, fast = predictors(members)
    inputs = objects(n_total, members[0].band_offset, count)
    worst = 0.0
    edges = [inp[:n] for inp in inputs for n in EDGES if n in prefixes]
    full_ref = ref.predict(edges)
    assert_close(fast.predict(edges), full_ref, "full recompute at the edges")
    worst = max_diff(fast.predict(edges), full_ref)
    full_fast = fast.predict([inp[:n] for inp in inputs for n in prefixes])
    caches_ref = caches_fast = [None] * len(inputs)
    for n in range(1, n_total + 1):
        new = [inp[n - 1 : n] for inp in inputs]
        step_ref, step_fast = ref.update(caches_ref, new), fast.update(caches_fast, new)
        caches_ref = [c for _, c in step_ref]
        caches_fast = [ObjectCache.from_bytes(c.to_bytes(), model_id="m") for _, c in step_fast]
        if n not in prefixes:
            continue
        preds_ref, preds_fast = [p for p, _ in step_ref], [p for p, _ in step_fast]
        assert_close(preds_fast, preds_ref, f"incremental, {n} frames")
        full = [full_fast[i * len(prefixes) + prefixes.index(n)] for i in range(len(inputs))]
        assert_close(full, preds_ref, f"full recompute, {n} frames")
        worst = max(worst, max_diff(preds_fast, preds_ref), max_diff(full, preds_ref))
    for a, b in zip(caches_fast, caches_ref, strict=True):  # same cache contents, same layout
        np.testing.assert_allclose(a.tokens, b.tokens, atol=TOL)
        assert a.n_frames == b.n_frames == n_total
    return worst


def test_shipped_artifact_stacked_equals_reference_at_every_prefix(shipped):
    worst = run_prefixes(shipped)
    print(f"shipped artifact: max |p_stacked - p_reference| = {worst:.2e}")
    assert worst <= TOL


@pytest.mark.parametrize(
    ("name", "overrides", "count", "prefixes"),
    [
        ("convention-paper", TINY, 3, EVERY),
        ("convention-fixed", TINY, 3, EVERY),
        pytest.param("convention-fixed", {}, 2, EDGES, marks=pytest.mark.slow),
        pytest.param("convention-paper", {}, 2, EDGES, marks=pytest.mark.slow),
    ],
)
def test_random_ensembles_stacked_equal_reference(name, overrides, count, prefixes):
    worst = run_prefixes(make_members(name, count=count, **overrides), prefixes, count=1)
    print(f"{name} x{count}: max |p_stacked - p_reference| = {worst:.2e}")
    assert worst <= TOL


@pytest.mark.parametrize("conv_mode", ["members", "grouped"])
@pytest.mark.parametrize("name", ["convention-paper", "convention-fixed"])
def test_both_convolution_layouts_give_the_reference_numbers(name, conv_mode):
    members = make_members(name, count=3, **TINY)
    stacked, ref = StackedConvEntion(members, conv_mode=conv_mode), MemberLoop(members)
    inputs = [make_input(n, members[0].band_offset, seed=n) for n in (1, 4, 50, 99)]  # padding in a batch
    x, band = (torch.from_numpy(a) for a in collate(inputs, frames=99))
    with torch.inference_mode():
        np.testing.assert_allclose(stacked(x, band).softmax(-1), ref(x, band).softmax(-1), atol=TOL)
        tokens = stacked.to_cache(stacked.embed_chunks(x[:, :3], band[:, :3]))
        np.testing.assert_allclose(tokens, ref.embed_chunks(x[:, :3], band[:, :3]), atol=TOL)


def test_slicing_objects_for_the_caches_changes_nothing(shipped):
    stacked = StackedConvEntion(shipped, chunk_elements=1)  # one object per slice, one chunk per pass
    stacked.embed_step = 1
    whole = StackedConvEntion(shipped, chunk_elements=1 << 30)
    inputs = [make_input(n, 1, seed=n) for n in (3, 30, 60)]
    x, band = (torch.from_numpy(a) for a in collate(inputs, frames=60))
    with torch.inference_mode():
        np.testing.assert_allclose(stacked(x, band), whole(x, band), atol=1e-5)


def test_caches_of_either_path_continue_on_the_other(shipped):
    ref, fast = predictors(shipped)
    inp = make_input(120, 1, seed=7)
    cache = ref.new_cache(inp[:70])  # written by the old path, e.g. before an upgrade
    np.testing.assert_allclose(fast.new_cache(inp[:70]).tokens, cache.tokens, atol=TOL)
    ((pred, _),) = fast.update([cache], [inp[70:]])
    (full,) = ref.predict([inp])
    np.testing.assert_allclose(pred.probabilities, full.probabilities, atol=TOL)


def test_only_convention_nets_of_one_configuration_stack():
    small = make_members("convention-small", count=2)
    assert can_stack(small) and isinstance(ensemble_forward(small), StackedConvEntion)
    assert isinstance(ensemble_forward(small, stacked=False), MemberLoop)
    assert not can_stack(make_members("cnn-gru", count=2))
    assert isinstance(ensemble_forward(make_members("cnn-gru", count=2)), MemberLoop)
    mixed = [make_members("convention-small", count=1)[0], make_members("convention-small", dropout=0.1)[0]]
    assert not can_stack(mixed)
    with pytest.raises(ValueError, match="one configuration"):
        StackedConvEntion(mixed)


def test_bf16_autocast_runs_on_the_stacked_path(shipped):
    ref, _ = predictors(shipped)
    fast = Predictor(shipped, model_id="m", normalisation=FluxNormalisation(), device="cpu", bf16=True)
    inp = make_input(9, 1)
    ((pred, _),) = fast.update([None], [inp])
    (full,) = ref.predict([inp])
    assert pred.probabilities.dtype == np.float32
    np.testing.assert_allclose(pred.probabilities, full.probabilities, atol=0.02)  # bf16: ~3 digits
