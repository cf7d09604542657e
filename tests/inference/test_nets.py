import pytest
import torch
import torch.nn.functional as F

from broker_plugin.inference import create_net, list_nets
from broker_plugin.inference.errors import InferenceInputError, UnknownNetError
from broker_plugin.inference.history import HISTORY_FEATURES, HISTORY_POINTS
from broker_plugin.inference.layers import ConvAttention, sinusoid_table
from broker_plugin.inference.preprocess import (
    CONTEXT_FEATURES,
    PHOTOMETRY_COLUMNS,
    PRESENCE_COLUMNS,
    TIME_COLUMNS,
)
from broker_plugin.records import BANDS

torch.manual_seed(0)

#: Every ablation input on (``convention-triplet``'s inputs), for the recurrent baselines.
ALL_INPUTS = {"planes": 3, "time_encoding": "continuous", "photometry": True}
#: Each registered net as it is, plus the recurrent baselines given the context inputs.
NETS = [pytest.param(n, {}, id=n) for n in list_nets()] + [
    pytest.param(n, ALL_INPUTS, id=f"{n}-context") for n in ("cnn-gru", "cnn-lstm")
]


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def context_args(net: torch.nn.Module, b: int, t: int) -> tuple[torch.Tensor | None, ...]:
    """Random planes ``(b, t, 2, 32, 32)``, contexts ``(b, t, K)`` and history rows, if the net uses them."""
    args: tuple[torch.Tensor | None, ...] = ()
    if net.uses_context:
        args = (torch.randn(b, t, 2, 32, 32), torch.randn(b, t, CONTEXT_FEATURES))
    if getattr(net, "uses_history", False):
        rows = torch.randn(b, HISTORY_POINTS, HISTORY_FEATURES)
        rows[..., 0] = 1.0
        args = (*(args or (None, None)), rows)
    return args


def test_registry_lists_every_variant():
    expected = {"convention-paper", "convention-fixed", "convention-small", "cnn-lstm", "cnn-gru"}
    assert set(list_nets()) >= expected
    with pytest.raises(UnknownNetError, match="convention-papr"):
        create_net("convention-papr")


def test_paper_parameter_count_matches_the_authors_commit():
    net = create_net("convention-paper")
    total = n_params(net)
    print(f"convention-paper parameters: {total:,}")
    assert total == 1_253_108
    assert n_params(net.encoder.band_embed) == 10_240
    assert n_params(net.encoder.net) == 896_664
    assert [n_params(b) for b in net.blocks] == [89_516, 89_516]
    assert n_params(net.head) == 167_172
    assert net.token_shape == (8, 9, 9)


def test_fixed_variant_keeps_the_paper_parameters_and_fixes_band_ids():
    fixed, paper = create_net("convention-fixed"), create_net("convention-paper")
    assert n_params(fixed) == n_params(paper)
    assert (fixed.band_offset, fixed.pad_window, paper.band_offset, paper.pad_window) == (1, False, 0, True)


def test_overrides_and_net_args_rebuild_the_same_architecture():
    net = create_net("convention-small", dropout=0.1, num_classes=3)
    again = create_net(net.net_name, **net.net_args)
    assert again.net_args == net.net_args
    assert [p.shape for p in again.parameters()] == [p.shape for p in net.parameters()]


@pytest.mark.parametrize(("name", "overrides"), NETS)
def test_forward_backward_shapes_without_nans(name, overrides):
    net = create_net(name, **overrides).train()
    frames = 99 if name == "convention-paper" else 20
    x = torch.randn(2, frames, 32, 32)
    band = torch.randint(1, 6, (2, frames))
    band[1, frames // 2 :] = 0  # second sequence half padding
    logits = net(x, band, *context_args(net, 2, frames))
    assert logits.shape == (2, 4)
    assert torch.isfinite(logits).all()
    logits.logsumexp(1).sum().backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize(("name", "overrides"), NETS)
def test_reset_classifier_changes_only_the_output_width(name, overrides):
    net = create_net(name, **overrides).eval()
    backbone = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("head.")}
    net.reset_classifier(7)
    assert net.num_classes == 7
    out = net(torch.randn(1, 6, 32, 32), torch.ones(1, 6, dtype=torch.long), *context_args(net, 1, 6))
    assert out.shape == (1, 7)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in backbone.items())


def literal_attention(attn: ConvAttention, x: torch.Tensor) -> torch.Tensor:
    """The authors' L x L loop: score_ij = Conv(Q_i + K_j), softmax over j, per head and pixel."""
    b, length, c, h, w = x.shape
    qkv = attn.qkv(x.flatten(0, 1)).view(b, length, 3 * c, h, w)
    q, k, v = qkv[:, :, :c], qkv[:, :, c : 2 * c], qkv[:, :, 2 * c :]
    scores = torch.stack(
        [torch.stack([attn.score(q[:, i] + k[:, j]) for j in range(length)], 1) for i in range(length)], 1
    )  # (b, i, j, heads, h, w)
    weights = scores.softmax(dim=2)
    values = v.reshape(b, length, attn.heads, c // attn.heads, h, w)
    out = torch.einsum("bijnyx,bjncyx->bincyx", weights, values).reshape(b * length, c, h, w)
    return attn.proj(out).view(b, length, c, h, w)


def test_fast_attention_equals_the_literal_quadratic_attention():
    # float64 shows the identity is exact, not approximate; float32 differs by rounding only
    attn = ConvAttention(8, 4).double()
    for p in attn.parameters():  # larger weights than the init, so the softmax is far from uniform
        torch.nn.init.normal_(p, std=0.5)
    x = torch.randn(2, 33, 8, 9, 9, dtype=torch.float64)
    fast = attn(x, None).expand(-1, 33, -1, -1, -1)
    torch.testing.assert_close(fast, literal_attention(attn, x), atol=1e-12, rtol=1e-12)
    attn, x = attn.float(), x.float()
    fast = attn(x, None).expand(-1, 33, -1, -1, -1)
    torch.testing.assert_close(fast, literal_attention(attn, x), atol=2e-4, rtol=1e-4)


def test_positional_encoding_is_the_fixed_sinusoid():
    pe = sinusoid_table(33, 8)
    assert pe[5, 2] == pytest.approx(torch.sin(torch.tensor(5 / 10000 ** (2 / 8))).item(), abs=1e-6)
    assert pe[5, 3] == pytest.approx(torch.cos(torch.tensor(5 / 10000 ** (2 / 8))).item(), abs=1e-6)


def padded(x, band, extra, garbage=True):
    noise = torch.randn(x.shape[0], extra, *x.shape[2:]) * (100.0 if garbage else 0.0)
    return torch.cat((x, noise), 1), F.pad(band, (0, extra))


@pytest.mark.parametrize("name", ["convention-fixed", "convention-small", "cnn-lstm", "cnn-gru"])
@pytest.mark.parametrize("frames", [7, 9])
def test_padding_and_missing_frames_cannot_change_the_masked_output(name, frames):
    net = create_net(name).eval()
    x, band = torch.randn(1, frames, 32, 32), torch.randint(1, 7, (1, frames))
    with torch.inference_mode():
        ref = net(x, band)
        for extra in (1, 2, 3, 10):  # padding (band 0) frames with arbitrary pixels, incl. new chunks
            torch.testing.assert_close(net(*padded(x, band, extra)), ref, atol=1e-5, rtol=1e-5)
        # batched with a longer sequence: its own padding must not leak either
        other_x, other_band = torch.randn(1, 40, 32, 32), torch.randint(1, 7, (1, 40))
        batch_x = torch.cat((padded(x, band, 40 - frames)[0], other_x))
        batch_band = torch.cat((padded(x, band, 40 - frames)[1], other_band))
        torch.testing.assert_close(net(batch_x, batch_band)[:1], ref, atol=1e-5, rtol=1e-5)


def test_paper_net_cannot_tell_u_band_from_padding():
    """The flaw the fixed variant removes: u (id 0) gets the padding band map."""
    paper = create_net("convention-paper", channels=(4, 8, 8, 8))
    fixed = create_net("convention-fixed", channels=(4, 8, 8, 8))
    u_paper, u_fixed = BANDS.index("u") + paper.band_offset, BANDS.index("u") + fixed.band_offset
    assert u_paper == 0 and paper.encoder.band_embed.weight[u_paper].abs().sum() == 0
    assert u_fixed == 1 and fixed.encoder.band_embed.weight[u_fixed].abs().sum() > 0


def test_too_many_frames_are_refused():
    with pytest.raises(InferenceInputError):
        create_net("convention-small")(torch.zeros(1, 100, 32, 32), torch.ones(1, 100, dtype=torch.long))


def padded_context(aux, context, extra):
    """Append ``extra`` padding frames of garbage planes and context (the band says padding)."""
    b, _, _, h, w = aux.shape
    garbage_aux = torch.randn(b, extra, 2, h, w) * 100.0
    garbage_ctx = torch.randn(b, extra, context.shape[-1]) * 100.0
    return torch.cat((aux, garbage_aux), 1), torch.cat((context, garbage_ctx), 1)


@pytest.mark.parametrize("name", ["cnn-gru", "cnn-lstm"])
def test_padding_cannot_change_the_output_of_a_baseline_with_context(name):
    net = create_net(name, **ALL_INPUTS).eval()
    x, band = torch.randn(1, 7, 32, 32), torch.randint(1, 7, (1, 7))
    aux, ctx = context_args(net, 1, 7)
    with torch.inference_mode():
        ref = net(x, band, aux, ctx)
        for extra in (1, 5):
            out = net(*padded(x, band, extra), *padded_context(aux, ctx, extra))
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


# Logits of today's baselines (commit 115271e, before the ablation flags) for seed 0, features=32,
# hidden=16, on the input of ``_reference_input``: flags off must reproduce them bit for bit.
LEGACY_LOGITS = {
    "cnn-gru": [0.095466, 0.242744, -0.174094, 0.189845, 0.087476, 0.255898, -0.13514, 0.172418],
    "cnn-lstm": [-0.039033, -0.110648, 0.108792, -0.191159, -0.036831, -0.096635, 0.103196, -0.180074],
}
#: Parameter counts of today's baselines (broker_plugin_train/README_training.md's comparison table).
LEGACY_PARAMS = {"cnn-gru": 1_364_324, "cnn-lstm": 1_447_652}


def _reference_input() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 5, 32, 32, generator=g), torch.tensor([[1, 2, 3, 0, 0], [4, 5, 6, 1, 2]])


@pytest.mark.parametrize("name", ["cnn-gru", "cnn-lstm"])
def test_baseline_with_every_ablation_flag_off_is_todays_net(name):
    off = {"planes": 1, "time_encoding": "index", "photometry": False}
    net = create_net(name, **off)
    assert n_params(net) == n_params(create_net(name)) == LEGACY_PARAMS[name]
    assert not net.uses_context and net.token_shape == (256 + len(BANDS) + 1,)
    assert net.config.context_columns() == ()
    torch.manual_seed(0)
    small = create_net(name, features=32, hidden=16, **off).eval()
    with torch.inference_mode():
        logits = small(*_reference_input())
    torch.testing.assert_close(logits.flatten(), torch.tensor(LEGACY_LOGITS[name]), atol=2e-6, rtol=0)
    # Context, when given, is ignored by a net that does not use it.
    with torch.inference_mode():
        ignored = small(
            *_reference_input(), torch.randn(2, 5, 2, 32, 32), torch.randn(2, 5, CONTEXT_FEATURES)
        )
    torch.testing.assert_close(ignored, logits, atol=0, rtol=0)


def _width(*groups: slice) -> int:
    return sum(g.stop - g.start for g in groups)


@pytest.mark.parametrize(
    ("overrides", "planes", "extra"),
    [
        ({"time_encoding": "continuous"}, 1, _width(TIME_COLUMNS)),
        ({"photometry": True}, 1, _width(PHOTOMETRY_COLUMNS)),
        ({"planes": 3}, 3, _width(PRESENCE_COLUMNS)),
        (ALL_INPUTS, 3, _width(TIME_COLUMNS, PHOTOMETRY_COLUMNS, PRESENCE_COLUMNS)),
    ],
)
def test_baseline_flags_set_the_cnn_planes_and_the_token_columns(overrides, planes, extra):
    net = create_net("cnn-gru", features=32, hidden=16, **overrides)
    assert net.uses_context
    assert net.cnn[0].in_channels == planes
    assert net.token_shape == (32 + len(BANDS) + 1 + extra,)
    # The same columns as ConvEntion with the same flags: the ablation gives both nets the same inputs.
    flags = {"planes": 1, "time_encoding": "index", "photometry": False} | overrides
    assert (
        net.config.context_columns()
        == create_net("convention-triplet-small", **flags).config.context_columns()
    )
    again = create_net(net.net_name, **net.net_args)
    assert again.net_args == net.net_args and again.token_shape == net.token_shape


@pytest.mark.parametrize("overrides", [{"time_encoding": "continuous"}, {"photometry": True}, {"planes": 3}])
def test_baseline_with_context_refuses_input_without_it(overrides):
    net = create_net("cnn-gru", features=32, hidden=16, **overrides).eval()
    x, band = torch.randn(1, 4, 32, 32), torch.ones(1, 4, dtype=torch.long)
    aux, ctx = torch.zeros(1, 4, 2, 32, 32), torch.zeros(1, 4, CONTEXT_FEATURES)
    for extras in ((), (aux, None), (None, ctx)):
        with pytest.raises(InferenceInputError, match="planes and context"):
            net(x, band, *extras)
        with pytest.raises(InferenceInputError, match="planes and context"):
            net.forward_features(x, band, *extras)
        with pytest.raises(InferenceInputError, match="planes and context"):
            net.embed_chunks(
                x[0, :, None], band[0, :, None], *(e if e is None else e[0, :, None] for e in extras)
            )
    assert net(x, band, aux, ctx).shape == (1, 4)


@pytest.mark.parametrize(
    ("overrides", "group"),
    [
        ({"time_encoding": "continuous"}, TIME_COLUMNS),
        ({"photometry": True}, PHOTOMETRY_COLUMNS),
        ({"planes": 3}, PRESENCE_COLUMNS),
    ],
)
def test_baseline_reads_the_selected_context_columns_only(overrides, group):
    torch.manual_seed(0)
    net = create_net("cnn-gru", features=32, hidden=16, **overrides).eval()
    x, band = torch.randn(1, 6, 32, 32), torch.randint(1, 7, (1, 6))
    aux, ctx = torch.randn(1, 6, 2, 32, 32), torch.randn(1, 6, CONTEXT_FEATURES)
    others = torch.ones(CONTEXT_FEATURES, dtype=torch.bool)
    others[group] = False
    with torch.inference_mode():
        ref = net(x, band, aux, ctx)
        torch.testing.assert_close(net(x, band, aux, ctx + 5.0 * others), ref, atol=0, rtol=0)
        assert not torch.allclose(net(x, band, aux, ctx + 5.0 * ~others), ref)
        # The science and template planes enter only a three-plane CNN.
        moved = net(x, band, aux + 1.0, ctx)
        if net.config.planes == 3:
            assert not torch.allclose(moved, ref)
        else:
            torch.testing.assert_close(moved, ref, atol=0, rtol=0)


def test_baseline_refuses_unknown_planes_and_time_encoding():
    with pytest.raises(ValueError, match="planes"):
        create_net("cnn-gru", planes=2)
    with pytest.raises(ValueError, match="time_encoding"):
        create_net("cnn-lstm", time_encoding="days")


def test_lean_triplet_adds_the_context_to_the_image_channels():
    """Same inputs as convention-triplet-small; the blocks and head keep the 8 image channels."""
    lean, wide = create_net("convention-triplet-lean"), create_net("convention-triplet-small")
    assert lean.config.context_columns() == wide.config.context_columns()
    assert lean.token_shape == (8, 9, 9) and wide.token_shape == (24, 9, 9)
    assert lean.context_encoder.net[-1].out_features == 8
    assert n_params(lean) < n_params(wide)
    torch.manual_seed(0)
    x, band = torch.randn(2, 7, 32, 32), torch.randint(1, 6, (2, 7))
    aux, ctx = context_args(lean.eval(), 2, 7)
    with torch.inference_mode():
        base = lean(x, band, aux, ctx)
        moved = lean(x, band, aux, ctx + 1.0)  # the context reaches the output through the addition
    assert base.shape == (2, 4) and not torch.allclose(base, moved)
    with pytest.raises(ValueError, match="context_merge"):
        create_net("convention-triplet-small", context_merge="sum")
