"""Building blocks of ConvEntion (spec section 3), in the token layout ``(B, L, C, H, W)``.

The authors' code keeps tokens as ``(B, C, y, x, t)``; here time comes second so that every per-step
convolution is one ``Conv2d`` over ``B * L`` maps without a copy. Parameter shapes that fix the
paper's numbers (the joint LayerNorm over ``(C, y, x, t)``) keep the authors' shapes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from broker_plugin.inference.history_statistics import HISTORY_STATISTICS, history_statistics

#: (spatial kernel, stride, padding) of the four Conv3d layers of the paper's front end; temporal kernel 3.
FRONT_END_LAYOUT: tuple[tuple[int, int, int], ...] = ((11, 2, 2), (5, 1, 2), (3, 1, 0), (3, 1, 0))


def conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    """Return the output length of a convolution along one axis."""
    return (size + 2 * padding - kernel) // stride + 1


def sinusoid_table(length: int, dim: int) -> torch.Tensor:
    """Return the fixed index encoding ``PE[t, c]`` (sin for even ``c``, cos for odd ``c``).

    Parameters
    ----------
    length
        Number of token positions.
    dim
        Number of token channels.

    Returns
    -------
    torch.Tensor
        ``(length, dim)`` float32; constant over the token's spatial grid (spec 2.3).
    """
    t = torch.arange(length, dtype=torch.float64)[:, None]
    c = torch.arange(dim)
    angle = t / torch.pow(10000.0, (2 * (c // 2)).double() / dim)
    return torch.where(c % 2 == 0, torch.sin(angle), torch.cos(angle)).float()


class ChunkEncoder(nn.Module):
    """The 3D CNN front end: one ``chunk``-frame chunk (flux + band map) to one ``C x h x w`` token.

    Chunks never see each other, which is what makes incremental inference exact. Kernels are stored
    as ``(kt, ky, kx)``; the authors' ``(ky, kx, kt)`` weights convert with ``permute(0, 1, 3, 4, 2)``
    (same parameter count; time first is ~40% faster on CPU).

    Parameters
    ----------
    stamp
        Side of the square frame [pixels].
    chunk
        Frames per chunk; the temporal kernels reduce exactly 3 frames to one step.
    channels
        Output channels of the four Conv3d layers; the last one is the token depth.
    band_vocab
        Rows of the band embedding (row 0 is padding: a zero band map).
    planes
        Image planes per frame: 1 (difference) or 3 (difference, science, template).
    """

    def __init__(
        self, *, stamp: int, chunk: int, channels: tuple[int, ...], band_vocab: int, planes: int = 1
    ) -> None:
        super().__init__()
        if len(channels) != len(FRONT_END_LAYOUT):
            raise ValueError(f"the front end has {len(FRONT_END_LAYOUT)} layers, got channels={channels}")
        if planes not in (1, 3):
            raise ValueError(f"planes must be 1 or 3, not {planes}")
        self.stamp, self.planes = stamp, planes
        self.band_embed = nn.Embedding(band_vocab, stamp * stamp, padding_idx=0)
        layers: list[nn.Module] = []
        in_ch, side, steps = planes + 1, stamp, chunk
        for out_ch, (k, s, p) in zip(channels, FRONT_END_LAYOUT, strict=True):
            layers += [nn.Conv3d(in_ch, out_ch, (3, k, k), s, p), nn.BatchNorm3d(out_ch), nn.ReLU()]
            in_ch, side, steps = out_ch, conv_out(side, k, s, p), conv_out(steps, 3, s, p)
        if steps != 1:
            raise ValueError(f"chunks of {chunk} frames leave {steps} time steps, not 1")
        self.net = nn.Sequential(*layers)
        self.token_shape = (in_ch, side, side)

    def forward(self, x: torch.Tensor, band: torch.Tensor, aux: torch.Tensor | None = None) -> torch.Tensor:
        """Encode chunks ``x`` ``(N, chunk, H, W)`` with band ids ``(N, chunk)`` to ``(N, C, h, w)``.

        ``aux`` ``(N, chunk, 2, H, W)`` holds the science and template planes (``planes == 3`` only).
        """
        n, t, h, w = x.shape
        band_map = self.band_embed(band).view(n, t, h, w).to(x.dtype)
        if self.planes == 1:
            return self.net(torch.stack((x, band_map), dim=1)).squeeze(2)
        if aux is None:
            raise ValueError("a 3-plane front end needs the science and template planes")
        stacked = torch.cat((x[:, None], aux.transpose(1, 2).to(x.dtype), band_map[:, None]), dim=1)
        return self.net(stacked).squeeze(2)


class ContextEncoder(nn.Module):
    """One chunk's per-frame context (time, photometry, presence, band) to a vector of ``out`` channels.

    The vector is broadcast over the token's grid as extra channels: a chunk's token then carries when
    its frames were taken and how bright the alert photometry saw them, and still depends on that chunk
    alone (exact incremental inference).

    Parameters
    ----------
    columns
        Indices of the context columns used (the ablation switches groups of them off).
    chunk
        Frames per chunk.
    band_vocab
        Band ids (one-hot; 0 is padding).
    hidden, out
        Width of the hidden layer and of the output.
    """

    def __init__(
        self, columns: tuple[int, ...], *, chunk: int, band_vocab: int, hidden: int, out: int
    ) -> None:
        super().__init__()
        self.register_buffer("columns", torch.tensor(columns, dtype=torch.long), persistent=False)
        self.band_vocab = band_vocab
        self.net = nn.Sequential(
            nn.Linear(chunk * (len(columns) + band_vocab), hidden), nn.ReLU(), nn.Linear(hidden, out)
        )

    def forward(self, context: torch.Tensor, band: torch.Tensor) -> torch.Tensor:
        """Encode ``context`` ``(N, chunk, K)`` and band ids ``(N, chunk)`` to ``(N, out)``."""
        picked = context.index_select(-1, self.columns)
        onehot = F.one_hot(band, self.band_vocab).to(picked.dtype)
        return self.net(torch.cat((picked, onehot), dim=-1).flatten(1))


def trim_history_rows(rows: torch.Tensor) -> torch.Tensor:
    """Drop the row positions after a batch's longest history (at least one is kept).

    Valid rows come first, so those positions are padding for every object: the encoder and the
    statistics read the same result without them.
    """
    if not len(rows):
        return rows
    return rows[:, : max(1, int((rows[..., 0] > 0).sum(dim=1).max()))]


class HistoryEncoder(nn.Module):
    """An object's photometric history rows (:mod:`~broker_plugin.inference.history`) to a vector.

    The rows come in time order, valid rows first. Each goes through one linear layer, then a
    bidirectional GRU reads them in order (each row carries its own time before the output and since the
    previous epoch, so an irregular cadence is read as it is): what a light-curve classifier computes from
    successive epochs (rises, declines, the scatter from one epoch to the next, repeats) needs the order,
    which a pooled set of rows would lose. The two directions' final states and the mean of the GRU's
    outputs over the valid rows go through one more layer. With ``statistics``, so do the light-curve
    summary statistics of the rows (:func:`~broker_plugin.inference.history_statistics.history_statistics`,
    through one layer of ``hidden`` units).

    Parameters
    ----------
    features
        Columns of a row (column 0 is the valid flag).
    hidden, out
        Width of the GRU (per direction) and of the output.
    statistics
        Also read the rows' summary statistics.
    skip_statistics
        Also pass the summary statistics themselves on, after the encoded vector (``statistics`` must be
        set): a head trained on frozen stage-1 features then reads them as they are, not only through
        the projection stage 1 learnt on the unconfirmed pool.
    """

    def __init__(
        self, features: int, *, hidden: int, out: int, statistics: bool = False, skip_statistics: bool = False
    ) -> None:
        super().__init__()
        if skip_statistics and not statistics:
            raise ValueError("skip_statistics needs statistics")
        self.skip_statistics = skip_statistics
        #: Width of the encoded vector.
        self.out_features = out + (HISTORY_STATISTICS if skip_statistics else 0)
        self.point = nn.Sequential(nn.Linear(features, hidden), nn.ReLU())
        self.rnn = nn.GRU(hidden, hidden, batch_first=True, bidirectional=True)
        self.statistics = (
            nn.Sequential(nn.Linear(HISTORY_STATISTICS, hidden), nn.ReLU()) if statistics else None
        )
        self.out = nn.Sequential(nn.Linear((5 if statistics else 4) * hidden, out), nn.ReLU())

    def forward(self, rows: torch.Tensor, statistics: torch.Tensor | None = None) -> torch.Tensor:
        """Encode ``rows`` ``(B, P, features)`` to ``(B, out_features)``.

        An object with no valid row reads one zero row (a history is never empty in service: the alert's
        own detection is in it). ``statistics``: the rows' :func:`history_statistics`, when the caller
        has them already (an ensemble computes them once for all members).
        """
        rows = trim_history_rows(rows)
        stats = None
        if self.statistics is not None:
            stats = history_statistics(rows) if statistics is None else statistics
        return self.combine(self.sequence_summary(rows), stats)

    def sequence_summary(self, rows: torch.Tensor) -> torch.Tensor:
        """The GRU's part ``(B, 4 * hidden)``: both directions' final states and its mean output."""
        lengths = (rows[..., 0] > 0).sum(dim=1).clamp(min=1)
        h = self.point(rows)
        packed = nn.utils.rnn.pack_padded_sequence(h, lengths.cpu(), batch_first=True, enforce_sorted=False)
        outputs, final = self.rnn(packed)
        steps, _ = nn.utils.rnn.pad_packed_sequence(outputs, batch_first=True, total_length=rows.shape[1])
        mean = steps.sum(dim=1) / lengths[:, None].to(steps.dtype)  # padded steps are zero
        return torch.cat((final[0], final[1], mean), dim=-1)

    def combine(self, summary: torch.Tensor, statistics: torch.Tensor | None) -> torch.Tensor:
        """The encoded vector from the GRU's ``summary`` and the rows' ``statistics`` (with ``statistics``).

        Split from :meth:`forward` so that a stage 2 can train these layers on cached GRU summaries.
        """
        if self.statistics is None:
            return self.out(summary)
        assert statistics is not None  # noqa: S101 - forward computes them
        encoded = self.out(torch.cat((summary, self.statistics(statistics)), dim=-1))
        return torch.cat((encoded, statistics.to(encoded.dtype)), dim=-1) if self.skip_statistics else encoded


class JointNorm(nn.Module):
    """The paper's ``LayerNorm([C, y, x, L])``: one mean and variance per sample over all tokens.

    With ``mask`` the statistics come from the valid tokens only, so padding cannot shift them (the
    fixed variant); the per-position affine of the first ``L`` positions applies either way.

    Parameters
    ----------
    token_shape
        ``(C, h, w)`` of one token.
    max_len
        Number of token positions the affine covers.
    eps
        Added to the variance, as ``nn.LayerNorm``.
    """

    def __init__(self, token_shape: tuple[int, ...], max_len: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(*token_shape, max_len))
        self.bias = nn.Parameter(torch.zeros(*token_shape, max_len))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Normalise ``x`` ``(B, L, C, h, w)``; ``mask`` ``(B, L)`` marks valid tokens, or is None."""
        length = x.shape[1]
        weight = self.weight.movedim(-1, 0)[:length]
        bias = self.bias.movedim(-1, 0)[:length]
        if mask is None:
            return F.layer_norm(x, x.shape[1:], weight, bias, self.eps)
        m = mask.view(*mask.shape, 1, 1, 1).to(x.dtype)
        count = m.sum(dim=(1, 2, 3, 4), keepdim=True).clamp_min(1.0) * math.prod(x.shape[2:])
        mean = (x * m).sum(dim=(1, 2, 3, 4), keepdim=True) / count
        var = (((x - mean) * m) ** 2).sum(dim=(1, 2, 3, 4), keepdim=True) / count
        return (x - mean) * torch.rsqrt(var + self.eps) * weight + bias


class ConvAttention(nn.Module):
    """Convolutional multi-head attention (spec 3.4), computed exactly in O(L).

    The score of query ``i`` and key ``j`` is ``Conv(Q_i + K_j) = W*Q_i + (W*K_j + b)`` and the softmax
    runs over ``j`` per head and pixel, so the query term is a constant inside each softmax and cancels:
    every query receives the same ``sum_j softmax_j(W*K_j + b) * V_j``. Computing it that way is
    identical to the authors' ``L x L`` loop up to float rounding (tested against a literal
    re-statement), costs ``L`` score convolutions instead of ``L**2``, and never materialises an
    ``(L, L)`` tensor. The query third of ``qkv`` is kept (parameter count, weight compatibility) but
    cannot influence the output; it receives no gradient, in the authors' model as here.

    Parameters
    ----------
    dim
        Token channels; ``dim // heads`` value channels per head.
    heads
        Number of heads.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.dim, self.heads = dim, heads
        self.qkv = nn.Conv2d(dim, 3 * dim, 1)
        self.score = nn.Conv2d(dim, heads, 5, padding=2)
        self.proj = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Attend over ``x`` ``(B, L, C, h, w)``; return ``(B, 1, C, h, w)``, the same for every query."""
        b, length, c, h, w = x.shape
        kv = F.conv2d(x.reshape(b * length, c, h, w), self.qkv.weight[c:], self.qkv.bias[c:])
        scores = self.score(kv[:, :c]).view(b, length, self.heads, h, w)
        if mask is not None:
            scores = scores.masked_fill(~mask.view(b, length, 1, 1, 1), torch.finfo(scores.dtype).min)
        weights = scores.softmax(dim=1).unsqueeze(3)
        values = kv[:, c:].reshape(b, length, self.heads, c // self.heads, h, w)
        out = (weights * values).sum(dim=1).reshape(b, c, h, w)
        return self.proj(out).unsqueeze(1)


class ConvFeedForward(nn.Sequential):
    """Per-step conv feed-forward: Conv 3x3 -> ReLU -> BN -> Conv 3x3 -> ReLU -> BN (authors' order)."""

    def __init__(self, dim: int, mult: int = 2) -> None:
        hidden = dim * mult
        super().__init__(
            nn.Conv2d(dim, hidden, 3, padding=1),
            nn.ReLU(),
            nn.BatchNorm2d(hidden),
            nn.Conv2d(hidden, dim, 3, padding=1),
            nn.ReLU(),
            nn.BatchNorm2d(dim),
        )


class ConvEntionBlock(nn.Module):
    """Pre-norm residual block: ``x + Attn(LN1(x))`` then ``x + FFN(LN2(x))``.

    Parameters
    ----------
    token_shape
        ``(C, h, w)`` of one token.
    max_len
        Token positions (the joint LayerNorm's extent).
    heads
        Attention heads.
    """

    def __init__(self, token_shape: tuple[int, ...], max_len: int, heads: int) -> None:
        super().__init__()
        self.norm1 = JointNorm(token_shape, max_len)
        self.attn = ConvAttention(token_shape[0], heads)
        self.norm2 = JointNorm(token_shape, max_len)
        self.ffn = ConvFeedForward(token_shape[0])

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Apply the block to ``x`` ``(B, L, C, h, w)``; masked tokens neither give nor take."""
        x = x + self.attn(self.norm1(x, mask), mask)
        y = self.norm2(x, mask)
        if mask is None:
            return x + self.ffn(y.flatten(0, 1)).view_as(x)
        # Only valid tokens go through the FFN, so padding never enters BatchNorm's batch statistics.
        out = x.clone()
        out[mask] = x[mask] + self.ffn(y[mask])
        return out
