import pytest
import torch
import torch.nn.functional as F

from broker_plugin.inference import create_net, list_nets
from broker_plugin.inference.errors import InferenceInputError, UnknownNetError
from broker_plugin.inference.layers import ConvAttention, sinusoid_table
from broker_plugin.records import BANDS

torch.manual_seed(0)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


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


@pytest.mark.parametrize("name", list_nets())
def test_forward_backward_shapes_without_nans(name):
    net = create_net(name).train()
    frames = 99 if name == "convention-paper" else 20
    x = torch.randn(2, frames, 32, 32)
    band = torch.randint(1, 6, (2, frames))
    band[1, frames // 2 :] = 0  # second sequence half padding
    logits = net(x, band)
    assert logits.shape == (2, 4)
    assert torch.isfinite(logits).all()
    logits.logsumexp(1).sum().backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", list_nets())
def test_reset_classifier_changes_only_the_output_width(name):
    net = create_net(name).eval()
    backbone = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("head.")}
    net.reset_classifier(7)
    assert net.num_classes == 7
    assert net(torch.randn(1, 6, 32, 32), torch.ones(1, 6, dtype=torch.long)).shape == (1, 7)
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
