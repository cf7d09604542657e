"""The stacked ensemble (all members in one pass) gives the per-member reference's numbers within 1e-5."""

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from broker_plugin.config import bundled_model_dir
from broker_plugin.inference.artifact import load_artifact
from broker_plugin.inference.ensemble import (
    MemberLoop,
    StackedConvEntion,
    backbone_groups,
    can_stack,
    ensemble_forward,
)
from broker_plugin.inference.errors import CacheError, InferenceInputError
from broker_plugin.inference.history import collate_history
from broker_plugin.inference.incremental import ObjectCache
from broker_plugin.inference.predictor import Predictor
from broker_plugin.inference.preprocess import FluxNormalisation, ModelInput, collate, collate_context
from tests.factories import share_backbone

from .conftest import TINY, make_context_input, make_input, make_members

SHIPPED = bundled_model_dir()
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


#: Every combination of the context nets' input switches (all off: no context branch at all).
CONTEXT_FLAGS = [
    {"planes": planes, "time_encoding": time, "photometry": photometry}
    for planes, time, photometry in itertools.product((1, 3), ("index", "continuous"), (False, True))
]
CONTEXT_IDS = [f"planes{f['planes']}-{f['time_encoding']}-phot{int(f['photometry'])}" for f in CONTEXT_FLAGS]


def objects(n_frames: int, band_offset: int, count: int = 3, context: bool = False) -> list[ModelInput]:
    """Objects with different bands and flux, the last with two chunks of zero flux.

    For the paper net (``u`` is band id 0) those chunks are all-``u``: they look like padding, which the
    stacked path looks up instead of computing. With ``context``, the objects carry planes, times and
    photometry, and those two chunks have no science and template planes either.
    """
    make = make_context_input if context else make_input
    inputs = [make(n_frames, band_offset, seed=s) for s in range(count)]
    x, band = inputs[-1].x.copy(), inputs[-1].band.copy()
    x[6:12] = 0.0
    if band_offset == 0:
        band[6:12] = 0
    aux, presence = inputs[-1].aux, inputs[-1].presence
    if aux is not None and presence is not None:
        aux, presence = aux.copy(), presence.copy()
        aux[6:12], presence[6:12] = 0.0, False
    inputs[-1] = dataclasses.replace(inputs[-1], x=x, band=band, aux=aux, presence=presence)
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


def run_prefixes(members, prefixes=EVERY, count=2, n_total=150, edges=EDGES):
    """Stacked vs reference, full recompute and frame-by-frame incremental, at ``prefixes``.

    Incremental: every frame of ``count`` objects, stacked and reference side by side (the cache going
    through bytes). Full recompute of every prefix: stacked; the reference's full recompute equals its
    incremental path (``test_incremental``), and is recomputed here at the window's ``edges``. Last,
    both rebuild every object's cache from its frames (the engine's ``rebuild``).

    Returns the largest probability difference between the two paths.
    """
    ref, fast = predictors(members)
    inputs = objects(n_total, members[0].band_offset, count, context=ref.uses_context)
    worst = 0.0
    edges = [inp[:n] for inp in inputs for n in edges if n in prefixes]
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
    for inp, cache in zip(inputs, caches_ref, strict=True):  # rebuilt from the frames: the same again
        rebuilt_ref, rebuilt_fast = ref.new_cache(inp), fast.new_cache(inp)
        np.testing.assert_allclose(rebuilt_fast.tokens, rebuilt_ref.tokens, atol=TOL)
        np.testing.assert_allclose(rebuilt_fast.tokens, cache.tokens, atol=TOL)
        np.testing.assert_array_equal(rebuilt_fast.pending_context, cache.pending_context)
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


@pytest.mark.parametrize(
    ("name", "overrides", "prefixes"),
    [
        ("convention-triplet-small", {}, EVERY),  # the shipped configuration: every input
        ("convention-triplet-small", {"masked": False}, EDGES),  # context nets padded to 99 frames too
        pytest.param("convention-triplet", TINY, EDGES, marks=pytest.mark.slow),
        ("convention-triplet-lean", {}, EVERY),  # the context added to the image channels
        ("convention-alert-small", {}, EVERY),  # the history branch in the head
        ("convention-alert-small", {"history_skip_statistics": True}, EDGES),  # + the raw statistics
        pytest.param("convention-alert", TINY, EDGES, marks=pytest.mark.slow),
    ],
    ids=[
        "triplet-small",
        "triplet-small-unmasked",
        "triplet",
        "triplet-lean",
        "alert-small",
        "alert-small-skip",
        "alert",
    ],
)
def test_context_ensembles_stacked_equal_reference(name, overrides, prefixes):
    worst = run_prefixes(make_members(name, count=3, **overrides), prefixes, count=1)
    print(f"{name} {overrides}: max |p_stacked - p_reference| = {worst:.2e}")
    assert worst <= TOL


def test_backbone_groups_tell_shared_backbones_apart():
    members = make_members("convention-alert-small", count=4)
    assert backbone_groups(members) == [0, 1, 2, 3]  # independent random nets
    share_backbone(members, [0, 1, 0, 1])
    assert backbone_groups(members) == [0, 1, 0, 1]
    # Heads and the history layers after the GRU differ, everything else is shared ...
    assert not torch.equal(members[0].head[1].weight, members[2].head[1].weight)
    assert not torch.equal(members[0].history_encoder.out[0].weight, members[2].history_encoder.out[0].weight)
    # ... and one changed number anywhere else (a BatchNorm statistic, the GRU) is another backbone.
    with torch.no_grad():
        members[2].encoder.net[1].running_mean[0] += 1e-3
    assert backbone_groups(members) == [0, 1, 2, 1]
    with torch.no_grad():
        members[3].history_encoder.rnn.weight_hh_l0[0, 0] += 1e-3
    assert backbone_groups(members) == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("name", "backbone_of", "prefixes"),
    [
        ("convention-alert-small", [0, 0, 0], EVERY),  # the default recipe: one backbone, 3 heads
        ("convention-alert-small", [0, 1, 0, 1], EDGES),  # two backbones (e.g. two stage-1 seeds)
        ("convention-paper", [0, 0], EDGES),  # the paper net: padded windows, the padding token
    ],
    ids=["alert-small-one", "alert-small-two", "paper-one"],
)
def test_shared_backbones_run_once_with_the_reference_numbers(name, backbone_of, prefixes):
    members = share_backbone(make_members(name, count=len(backbone_of), **TINY), backbone_of)
    stacked = StackedConvEntion(members)
    assert stacked.n_backbones == MemberLoop(members).n_backbones == max(backbone_of) + 1
    # Each backbone's blocks run once: the stacked weights hold one slice per backbone, not per member.
    assert stacked.blocks[0].ffn_a_w.shape[0] == stacked.n_backbones
    worst = run_prefixes(members, prefixes, count=1)
    print(f"{name} backbones {backbone_of}: max |p_stacked - p_reference| = {worst:.2e}")
    assert worst <= TOL
    # Every member's own copy (the cost without sharing): the same numbers.
    unshared = StackedConvEntion(members, share_backbones=False)
    assert unshared.n_backbones == len(members)
    frames = batch_inputs(members)
    with torch.inference_mode():
        np.testing.assert_allclose(unshared(*frames), stacked(*frames), atol=TOL)


def test_a_cache_with_a_token_row_per_member_is_rebuilt_not_extended(shipped):
    """A cache of an engine that ran every member's backbone (one token row each) does not fit."""
    _, fast = predictors(shipped)
    assert fast.engine.n_backbones == 1 < len(shipped)  # the shipped folds share their stage-1 backbone
    inp = make_context_input(40, 1, seed=3)
    cache = fast.new_cache(inp[:30])
    assert cache.tokens.shape[0] == 1 and fast.cache_fits(cache)
    per_member = dataclasses.replace(cache, tokens=np.repeat(cache.tokens, len(shipped), axis=0))
    per_member = ObjectCache.from_bytes(per_member.to_bytes(), model_id="m")
    assert not fast.cache_fits(per_member)
    with pytest.raises(CacheError, match="rebuild"):
        fast.update([per_member], [inp[30:31]])


#: A window of 6 chunks (18 frames): the same code paths as 33, rolled within 30 frames at a fifth of
#: the cost; chunk boundaries, the first roll (18 -> 19 frames) and the end.
SHORT = {"max_chunks": 6}
SHORT_EDGES = [1, 2, 3, 4, 10, 17, 18, 19, 20, 21, 22, 30]


@pytest.mark.parametrize("flags", CONTEXT_FLAGS, ids=CONTEXT_IDS)
def test_context_flag_combinations_stacked_equal_reference(flags):
    """Predictor.update (engine steps), predict and new_cache (rebuild), stacked vs member loop."""
    members = make_members("convention-triplet-small", count=2, **flags, **SHORT)
    worst = run_prefixes(members, SHORT_EDGES, count=2, n_total=30, edges=SHORT_EDGES)
    assert worst <= TOL


def batch_inputs(members, lengths=(1, 4, 50, 99)):
    """Collated frames (and planes, context) of objects of ``lengths``: padding inside one batch."""
    offset = members[0].band_offset
    if not members[0].uses_context:
        inputs = [make_input(n, offset, seed=n) for n in lengths]
        return tuple(torch.from_numpy(a) for a in collate(inputs, frames=max(lengths)))
    inputs = [make_context_input(n, offset, seed=n) for n in lengths]
    arrays = (*collate(inputs, frames=max(lengths)), *collate_context(inputs, frames=max(lengths)))
    if members[0].uses_history:
        arrays += (collate_history(inputs),)
    return tuple(torch.from_numpy(a) for a in arrays)


def chunked(tensors, chunk):
    """Cut ``(B, T, ...)`` frames (and planes, context) into ``(B * T / chunk, chunk, ...)`` chunks."""
    return tuple(t.reshape(-1, chunk, *t.shape[2:]) for t in tensors)


CONVENTION_NETS = [
    ("convention-paper", TINY),
    ("convention-fixed", TINY),
    *(("convention-triplet-small", flags) for flags in CONTEXT_FLAGS),
    ("convention-triplet-lean", {}),
    ("convention-alert-small", {}),
    ("convention-alert-small", {"history_skip_statistics": True}),
]
CONVENTION_IDS = [
    "paper",
    "fixed",
    *(f"triplet-small-{i}" for i in CONTEXT_IDS),
    "triplet-lean",
    "alert-small",
    "alert-small-skip",
]


@pytest.mark.parametrize("conv_mode", ["members", "grouped"])
@pytest.mark.parametrize(("name", "overrides"), CONVENTION_NETS, ids=CONVENTION_IDS)
def test_both_convolution_layouts_give_the_reference_numbers(name, overrides, conv_mode):
    """forward, embed_chunks (real, partly and wholly padded chunks) and classify with and without mask."""
    members = make_members(name, count=3, **overrides)
    stacked, ref = StackedConvEntion(members, conv_mode=conv_mode), MemberLoop(members)
    frames = batch_inputs(members)
    with torch.inference_mode():
        np.testing.assert_allclose(stacked(*frames).softmax(-1), ref(*frames).softmax(-1), atol=TOL)
        # The 4-frame object: one real chunk, one of 1 real frame and 2 padding frames, one all padding;
        # and the same of the 50-frame object with band ids 0 over real pixels, planes and context,
        # which the masked nets must ignore.
        history = frames[4][1:3] if members[0].uses_history else None
        chunks = chunked((f[1:3, :9] for f in frames[:4]), stacked.chunk_size)
        band = chunks[1].clone()
        band[4, 1:], band[5] = 0, 0
        chunks = (chunks[0], band, *chunks[2:])
        tokens = stacked.embed_chunks(*chunks)
        np.testing.assert_allclose(stacked.to_cache(tokens), ref.embed_chunks(*chunks), atol=TOL)
        # classify takes any token windows; the mask drops the last token of the first window.
        windows = stacked.to_cache(tokens).view(len(members), 2, 3, *stacked.token_shape)
        mask = torch.tensor([[True, True, False], [True, True, True]])
        for m in (None, mask):
            got = stacked.classify(stacked.to_work(windows), m, history)
            np.testing.assert_allclose(got, ref.classify(windows, m, history), atol=TOL)


def test_slicing_objects_for_the_caches_changes_nothing(shipped):
    stacked = StackedConvEntion(shipped, chunk_elements=1)  # one object per slice, one chunk per pass
    stacked.embed_step = 1
    whole = StackedConvEntion(shipped, chunk_elements=1 << 30)
    make = make_context_input if shipped[0].uses_context else make_input
    inputs = [make(n, 1, seed=n) for n in (3, 30, 60)]
    arrays = collate(inputs, frames=60)
    if shipped[0].uses_context:
        arrays += collate_context(inputs, frames=60)
    if shipped[0].uses_history:
        arrays += (collate_history(inputs),)
    tensors = [torch.from_numpy(a) for a in arrays]
    with torch.inference_mode():
        np.testing.assert_allclose(stacked(*tensors), whole(*tensors), atol=1e-5)


def test_caches_of_either_path_continue_on_the_other(shipped):
    ref, fast = predictors(shipped)
    inp = (make_context_input if shipped[0].uses_context else make_input)(120, 1, seed=7)
    cache = ref.new_cache(inp[:70])  # written by the old path, e.g. before an upgrade
    np.testing.assert_allclose(fast.new_cache(inp[:70]).tokens, cache.tokens, atol=TOL)
    ((pred, _),) = fast.update([cache], [inp[70:]])
    (full,) = ref.predict([inp])
    np.testing.assert_allclose(pred.probabilities, full.probabilities, atol=TOL)


def test_only_convention_nets_of_one_configuration_stack():
    small = make_members("convention-small", count=2)
    assert can_stack(small) and isinstance(ensemble_forward(small), StackedConvEntion)
    triplet = make_members("convention-triplet-small", count=2)
    assert can_stack(triplet) and isinstance(ensemble_forward(triplet), StackedConvEntion)
    assert not can_stack([triplet[0], make_members("convention-triplet-small", count=1, planes=1)[0]])
    assert isinstance(ensemble_forward(small, stacked=False), MemberLoop)
    assert not can_stack(make_members("cnn-gru", count=2))
    assert isinstance(ensemble_forward(make_members("cnn-gru", count=2)), MemberLoop)
    mixed = [make_members("convention-small", count=1)[0], make_members("convention-small", dropout=0.1)[0]]
    assert not can_stack(mixed)
    with pytest.raises(ValueError, match="one configuration"):
        StackedConvEntion(mixed)


@pytest.mark.parametrize("net", ["shipped", "convention-triplet-small"])
def test_bf16_autocast_runs_on_the_stacked_path(net, request):
    members = request.getfixturevalue("shipped") if net == "shipped" else make_members(net, count=3)
    ref, _ = predictors(members)
    fast = Predictor(members, model_id="m", normalisation=FluxNormalisation(), device="cpu", bf16=True)
    inp = (make_context_input if ref.uses_context else make_input)(9, 1)
    ((pred, _),) = fast.update([None], [inp])
    (full,) = ref.predict([inp])
    assert pred.probabilities.dtype == np.float32
    np.testing.assert_allclose(pred.probabilities, full.probabilities, atol=0.02)  # bf16: ~3 digits


def test_stacked_context_nets_refuse_frames_without_planes_and_context():
    members = make_members("convention-triplet-small", count=2)
    stacked = StackedConvEntion(members)
    x, band, aux, _ = batch_inputs(members, (6,))
    with torch.inference_mode(), pytest.raises(InferenceInputError, match="planes and context"):
        stacked(x, band)
    with torch.inference_mode(), pytest.raises(InferenceInputError, match="planes and context"):
        stacked.embed_chunks(*chunked((x, band, aux), 3))
