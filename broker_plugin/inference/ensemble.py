"""All members of an ensemble in one forward pass.

The predictor and the incremental engine talk to an ensemble through one interface,
:class:`EnsembleForward`: ``embed_chunks`` (chunks -> every backbone's tokens), ``classify`` (every
backbone's token windows -> every member's logits) and ``forward`` (frames -> logits), each with a
leading backbone or member axis.
Two implementations give the same numbers (tested to 1e-5):

- :class:`MemberLoop` runs each member's own modules in turn: the reference, and the path of nets that
  have no stacked form (the CNN+RNN baselines);
- :class:`StackedConvEntion` stacks the weights of ConvEntion members (every configuration: the paper,
  fixed and small nets, and the context nets ``convention-triplet*`` with any ``planes``,
  ``time_encoding`` and ``photometry``) and runs them together.

What the stacked form does differently, and why (each an exact rewrite up to float rounding):

- members that share a backbone (:func:`backbone_groups`: equal in every tensor but their heads and a
  history net's layers after its GRU, as the default recipe's folds are, fine-tuned from one frozen
  stage-1 backbone) share its computation: its front end, context encoder, blocks and history GRU run
  once, its tokens are cached once, and each member's head reads its backbone's pooled features;
- eval-mode BatchNorm is folded into the convolution before it (front end) or after it (the first
  feed-forward BatchNorm: its scale into the next convolution's weights, its shift into a bias *map*,
  since that convolution zero-pads and a constant input does not give a constant output at the border);
- the first Conv3d reads ``planes`` image channels (the difference; or difference, science, template)
  and the band map. The band-map channel only ever sees one of ``band_vocab`` learned images, so its
  output is a table lookup; the image channels are the same input for every member, so they are one
  Conv2d per input frame (``planes`` input channels, channels-last) for every member and temporal tap
  at once, and only the (frame, temporal tap) pairs that do not fall on the temporal zero padding are
  computed (5 of 9 for 3-frame chunks); the masked nets zero the padding frames' planes as the members
  do, in the copy that builds the channels-last input;
- the history encoders (a GRU over each output's history rows) run member by member, once per object;
- the context encoder (a 2-layer MLP per chunk over the selected context columns and the band one-hots)
  runs for all members at once: the first layer is one matrix product with the members' weights side
  by side (the input is shared), the second one batched product; its output is written, broadcast over
  the token grid, into the last ``context_channels`` channels of the channels-last tokens (the members
  concatenate it after the image channels: the same token, in the working layout), or, for
  ``context_merge == "add"``, added to the image channels at every grid pixel;
- nets with ``time_encoding == "continuous"`` add no index encoding (their time is in the context);
  the copy of the tokens into the contiguous working buffer stays, without the addition;
- the key projection (1x1) and the score convolution (5x5) compose into one 5x5 convolution;
- tokens are kept channels-last, ``(..., h, w, C)``: oneDNN's convolutions on 9x9 maps with 8-16
  channels are 1.5-2.5x faster in that layout;
- the masked nets run the feed-forward on padding tokens too instead of gathering the valid ones: a
  padding token never reaches a valid output (its norm weight, attention weight and pool entry are
  exactly zero), so computing it is cheaper than the gather and scatter;
- the nets padded to ``max_chunks`` tokens (the paper net) replace all-padding chunks (zero frames,
  band id 0, and zero planes and context where used) by their precomputed token.

The blocks' convolutions run member by member on channels-last slices (measured faster than one grouped
convolution for all but the smallest batches, where ``conv_mode="auto"`` switches to the grouped one),
the front end's as one grouped convolution; the norms, pooling and head are one operation over all
members and objects. Objects go through the blocks in slices sized for the CPU caches. The blocks, norms
and head take any token channel count, so the context channels need nothing there.

For a 5-member ``convention-triplet-small`` (random weights, 1 torch thread, the 2 cores shared with a
training job): incremental steps of 64 objects 15 -> 41 objects/s (2.7x), full recompute of 64 objects x
30 frames 7.5 -> 26 objects/s (3.4x); most of the remaining time is the blocks' convolutions over 24
token channels (8 image + 16 context).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from broker_plugin.inference.errors import InferenceInputError
from broker_plugin.inference.history_statistics import history_statistics
from broker_plugin.inference.layers import FRONT_END_LAYOUT, conv_out, trim_history_rows
from broker_plugin.inference.nets import ConvEntion
from broker_plugin.inference.preprocess import CONTEXT_FEATURES

ConvMode = Literal["members", "grouped", "auto"]
#: With ``conv_mode="auto"``, blocks over at most this many token pixels per member use grouped
#: convolutions (fewer calls); above it, one channels-last convolution per member (faster kernels).
GROUPED_MAX_PIXELS = 4096
#: On the CPU, objects go through the blocks in slices of about this many float32 token elements (all
#: members): small enough to stay in the caches, large enough for the per-call cost to vanish; measured
#: best of 2^16..2^22 on the development machine (2^16: 0.6x, 2^18: 0.8x, no slicing: 0.7x at 64 objects).
CPU_SLICE_ELEMENTS = 1 << 20
#: On the CPU, chunks per front-end pass.
CPU_EMBED_STEP = 32


class EnsembleForward(nn.Module):
    """The interface of an ensemble run as one: a leading member axis ``M``, or backbone axis ``G``.

    Logits have a leading member axis; tokens a leading backbone axis (members that share a stage-1
    backbone share its tokens).

    Attributes
    ----------
    n_members
        ``M``.
    n_backbones
        ``G``: distinct backbones among the members (``M`` when none is shared).
    chunk_size, max_chunks, pad_window, stamp, band_offset, num_classes
        As on every member (see :mod:`~broker_plugin.inference.nets`).
    token_shape
        One member's token in the cache layout (the members' own layout).
    uses_context
        Whether the members take the frames' planes and context (see ``nets``).
    uses_history
        Whether the members' heads read the object's photometric history rows (see ``nets``).
    work_perm
        Permutation of the token axes from the cache layout to the layout ``classify`` takes and
        ``embed_chunks`` returns (identity for :class:`MemberLoop`).
    """

    n_members: int
    n_backbones: int
    chunk_size: int
    max_chunks: int
    pad_window: bool
    stamp: int
    band_offset: int
    num_classes: int
    token_shape: tuple[int, ...]
    work_perm: tuple[int, ...]
    uses_context: bool = False
    uses_history: bool = False

    def embed_chunks(
        self, x: torch.Tensor, band: torch.Tensor, aux: Tensor | None = None, context: Tensor | None = None
    ) -> torch.Tensor:
        """Encode chunks ``x`` ``(N, chunk, H, W)``, band ids ``(N, chunk)``, to tokens ``(G, N, *work)``.

        ``aux`` ``(N, chunk, 2, H, W)`` and ``context`` ``(N, chunk, K)``: for ``uses_context`` members.
        """
        raise NotImplementedError

    def pad_tokens(self) -> torch.Tensor | None:
        """Return the token ``(G, *work)`` of an all-padding chunk for the paper net, else None."""
        raise NotImplementedError

    def classify(
        self, tokens: torch.Tensor, mask: torch.Tensor | None, history: Tensor | None = None
    ) -> torch.Tensor:
        """Return logits ``(M, B, classes)`` for token windows ``(G, B, L, *work)``, ``mask`` ``(B, L)``.

        ``history`` ``(B, P, F)``: the objects' photometric history rows, for ``uses_history`` members.
        """
        raise NotImplementedError

    def forward(
        self,
        x: torch.Tensor,
        band: torch.Tensor,
        aux: Tensor | None = None,
        context: Tensor | None = None,
        history: Tensor | None = None,
    ) -> torch.Tensor:
        """Return logits ``(M, B, classes)`` for frames ``x`` ``(B, T, H, W)`` and band ids ``(B, T)``."""
        raise NotImplementedError

    def to_work(self, tokens: torch.Tensor) -> torch.Tensor:
        """Permute tokens ``(..., *token_shape)`` from the cache layout to the working layout (a view)."""
        lead = tokens.dim() - len(self.token_shape)
        return tokens.permute(*range(lead), *(lead + p for p in self.work_perm))

    def to_cache(self, tokens: torch.Tensor) -> torch.Tensor:
        """Permute tokens ``(..., *work)`` from the working layout back to the cache layout (a view)."""
        lead = tokens.dim() - len(self.token_shape)
        inverse = sorted(range(len(self.work_perm)), key=self.work_perm.__getitem__)
        return tokens.permute(*range(lead), *(lead + p for p in inverse))


def _shared_attributes(members: Sequence[nn.Module]) -> dict[str, object]:
    first = members[0]
    for m in members:
        if m.training:
            raise ValueError("ensemble inference needs eval mode (BatchNorm running statistics)")
        if (m.chunk_size, m.max_chunks, m.pad_window, m.token_shape) != (
            first.chunk_size, first.max_chunks, first.pad_window, first.token_shape,
        ):  # fmt: skip
            raise ValueError("ensemble members must share chunking and token shape")
    return {
        "n_members": len(members), "chunk_size": first.chunk_size, "max_chunks": first.max_chunks,
        "pad_window": first.pad_window, "stamp": first.config.stamp, "band_offset": first.band_offset,
        "num_classes": first.num_classes, "token_shape": tuple(first.token_shape),
        "uses_context": bool(getattr(first, "uses_context", False)),
        "uses_history": bool(getattr(first, "uses_history", False)),
    }  # fmt: skip


def _padding_chunk(
    ens: EnsembleForward, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, Tensor | None, Tensor | None]:
    """Return one all-padding chunk: zero frames, band id 0, and zero planes and context if used."""
    cs, stamp = ens.chunk_size, ens.stamp
    x = torch.zeros(1, cs, stamp, stamp, device=device)
    band = torch.zeros(1, cs, dtype=torch.long, device=device)
    if not ens.uses_context:
        return x, band, None, None
    aux = torch.zeros(1, cs, 2, stamp, stamp, device=device)
    return x, band, aux, torch.zeros(1, cs, CONTEXT_FEATURES, device=device)


class MemberLoop(EnsembleForward):
    """Each member's own modules, one member after the other (the reference path).

    Only the chunk tokens are computed once per backbone (by its first member), so that both paths
    cache the same tokens; the blocks and head run member by member.

    Parameters
    ----------
    members
        Nets of one architecture in eval mode.
    share_backbones
        Compute the tokens of members that share a backbone once (False: once per member).
    """

    def __init__(self, members: Sequence[nn.Module], *, share_backbones: bool = True) -> None:
        super().__init__()
        for key, value in _shared_attributes(members).items():
            setattr(self, key, value)
        self.members = nn.ModuleList(members)
        # Tokens per backbone, as the stacked form caches them: the caches of both paths are one format.
        self.backbone_of = backbone_layout(members, share_backbones)
        self._readers = [members[i] for i in first_of_each(self.backbone_of)]
        self.n_backbones = len(self._readers)
        self.work_perm = tuple(range(len(self.token_shape)))
        self._pad: torch.Tensor | None = None

    def embed_chunks(  # noqa: D102
        self, x: torch.Tensor, band: torch.Tensor, aux: Tensor | None = None, context: Tensor | None = None
    ) -> torch.Tensor:
        return torch.stack([m.embed_chunks(x, band, aux, context).float() for m in self._readers])

    def pad_tokens(self) -> torch.Tensor | None:  # noqa: D102
        if not self.pad_window:
            return None
        if self._pad is None:
            device = next(self.members[0].parameters()).device
            self._pad = self.embed_chunks(*_padding_chunk(self, device))[:, 0]
        return self._pad

    def classify(  # noqa: D102
        self, tokens: torch.Tensor, mask: torch.Tensor | None, history: Tensor | None = None
    ) -> torch.Tensor:
        head = {"history": history} if self.uses_history else {}
        return torch.stack(
            [
                m.forward_head(m.forward_blocks(tokens[g], mask), mask, **head).float()
                for m, g in zip(self.members, self.backbone_of, strict=True)
            ]
        )

    def forward(  # noqa: D102
        self,
        x: torch.Tensor,
        band: torch.Tensor,
        aux: Tensor | None = None,
        context: Tensor | None = None,
        history: Tensor | None = None,
    ) -> torch.Tensor:
        head = {"history": history} if self.uses_history else {}
        return torch.stack([m(x, band, aux, context, **head).float() for m in self.members])


def _bn_fold(bn: Sequence[nn.modules.batchnorm._BatchNorm]) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the eval-mode affine ``(scale, shift)`` ``(M, C)`` float64 of stacked BatchNorms."""
    scale = torch.stack([b.weight.double() / torch.sqrt(b.running_var.double() + b.eps) for b in bn])
    shift = torch.stack(
        [b.bias.double() - b.running_mean.double() * s for b, s in zip(bn, scale, strict=True)]
    )
    return scale, shift


def _channels_last(w: torch.Tensor) -> torch.Tensor:
    """Return ``w`` ``(M, O, I, *k)`` with every member's slice in the channels-last memory format."""
    n = w.dim()
    physical = w.permute(0, 1, *range(3, n), 2).contiguous()
    return physical.permute(0, 1, n - 1, *range(2, n - 1))


def _time_taps(steps: int, kernel: int, stride: int, pad: int) -> list[tuple[int, int, int]]:
    """Return ``(output step, input step, tap)`` of a temporal convolution, padding taps left out."""
    out = conv_out(steps, kernel, stride, pad)
    return [
        (o, o * stride - pad + k, k)
        for o in range(out)
        for k in range(kernel)
        if 0 <= o * stride - pad + k < steps
    ]


class _FrontEnd(nn.Module):
    """Every member's 3D-CNN front end at once: chunks ``(N, chunk, H, W)`` -> tokens ``(M, N, h, w, C)``.

    Parameters
    ----------
    encoders
        The members' :class:`~broker_plugin.inference.layers.ChunkEncoder`, in eval mode.
    chunk
        Frames per chunk.
    masked
        Zero the frames of band id 0 first (the masked variants).
    """

    def __init__(self, encoders: Sequence[nn.Module], *, chunk: int, masked: bool) -> None:
        super().__init__()
        m_count, stamp = len(encoders), encoders[0].stamp
        self.m_count, self.stamp, self.chunk, self.masked = m_count, stamp, chunk, masked
        # Image planes per frame (difference; or difference, science, template): the input channels
        # before the band map.
        self.planes: int = encoders[0].planes
        planes = self.planes
        n_layers = len(FRONT_END_LAYOUT)
        convs = [[e.net[3 * i] for e in encoders] for i in range(n_layers)]
        norms = [[e.net[3 * i + 1] for e in encoders] for i in range(n_layers)]
        # Layer 1: BatchNorm folded; the image planes and the band-map input channel apart.
        k1, s1, p1 = FRONT_END_LAYOUT[0]
        scale, shift = _bn_fold(norms[0])
        w = torch.stack([c.weight.double() for c in convs[0]]) * scale[..., None, None, None, None]
        bias = torch.stack([c.bias.double() for c in convs[0]]) * scale + shift
        c1, kt = w.shape[1], w.shape[3]
        self.stride1, self.pad1, self.kt1 = s1, p1, kt
        self.side1 = conv_out(stamp, k1, s1, p1)
        self.steps1 = conv_out(chunk, kt, s1, p1)
        self.taps1 = _time_taps(chunk, kt, s1, p1)
        # Frames that need the same temporal taps share one Conv2d whose input channels are the frame's
        # planes (the same input for every member) and whose output channels are (tap, member, channel):
        # one call gives every member's image term.
        taps_of: dict[int, list[int]] = {}
        for _, frame, tap in self.taps1:
            taps_of.setdefault(frame, []).append(tap)
        groups: dict[tuple[int, ...], list[int]] = {}
        for frame, taps in sorted(taps_of.items()):
            groups.setdefault(tuple(sorted(set(taps))), []).append(frame)
        self.flux_groups = [(taps, tuple(frames)) for taps, frames in groups.items()]
        for g, (taps, _) in enumerate(self.flux_groups):
            # (M, c1, planes, taps, k, k) -> (taps * M * c1, planes, k, k)
            wg = w[:, :, :planes, list(taps)].permute(3, 0, 1, 2, 4, 5).reshape(-1, planes, k1, k1)
            # Channels-last strides, spelt out: with one input channel oneDNN cannot tell the layout from
            # the input (and torch's channels-last strides for one channel are not (.., 1, .., ..)); a
            # channels-last output is what the next layers take without a copy, and with 3 planes a
            # channels-last input and weight measured 1.15x faster than contiguous ones.
            wg = wg.permute(0, 2, 3, 1).float().contiguous()
            strides = (planes * k1 * k1, 1, k1 * planes, planes)
            self.register_buffer(f"flux_w{g}", wg.as_strided(wg.permute(0, 3, 1, 2).shape, strides),
                                 persistent=False)  # fmt: skip
        # The band map is one of band_vocab learned images: its convolution is a table lookup.
        embed = torch.stack([e.band_embed.weight.double() for e in encoders])  # (M, vocab, H*W)
        vocab = embed.shape[1]
        w_band = w[:, :, planes].transpose(1, 2)  # (M, kt, c1, k, k): the band map is the last input
        table = torch.stack([
            F.conv2d(embed[m].view(vocab, 1, stamp, stamp), w_band[m].reshape(-1, 1, k1, k1),
                     stride=s1, padding=p1).view(vocab, kt, c1, self.side1, self.side1)
            for m in range(m_count)
        ])  # fmt: skip
        # (vocab * kt, side, side, M * c1): a lookup gives a channels-last map of every member.
        table = table.permute(1, 2, 4, 5, 0, 3).reshape(vocab * kt, self.side1, self.side1, m_count * c1)
        self.register_buffer("band_table", table.float().contiguous(), persistent=False)
        self.register_buffer("bias1", bias.float().reshape(-1), persistent=False)
        # Layers 2..: Conv3d with BatchNorm folded, one grouped convolution for all members.
        self.layers: list[tuple[int, int]] = []  # (stride, padding)
        for i in range(1, n_layers):
            _, s, p = FRONT_END_LAYOUT[i]
            scale, shift = _bn_fold(norms[i])
            w = torch.stack([c.weight.double() for c in convs[i]]) * scale[..., None, None, None, None]
            b = torch.stack([c.bias.double() for c in convs[i]]) * scale + shift
            grouped = w.float().flatten(0, 1).contiguous(memory_format=torch.channels_last_3d)
            self.register_buffer(f"w{i}", grouped, persistent=False)
            self.register_buffer(f"b{i}", b.float().flatten(), persistent=False)
            self.layers.append((s, p))

    def forward(self, x: torch.Tensor, band: torch.Tensor, aux: torch.Tensor | None = None) -> torch.Tensor:
        """Encode chunks ``x`` ``(N, chunk, H, W)`` with band ids ``(N, chunk)``.

        ``aux`` ``(N, chunk, 2, H, W)``: the science and template planes (3-plane members only).
        """
        n, side, m, stamp, planes = x.shape[0], self.side1, self.m_count, self.stamp, self.planes
        if planes == 1:
            images = x[..., None]
        else:
            if aux is None:
                raise InferenceInputError("a 3-plane front end needs the science and template planes")
            # (N, chunk, H, W, planes): the channels-last input of the per-frame Conv2d, built in one copy.
            images = torch.cat((x[..., None], aux.to(x.dtype).permute(0, 1, 3, 4, 2)), dim=-1)
        if self.masked:
            real = (band != 0).to(x.dtype)[..., None, None, None]
            images = images.mul_(real) if planes > 1 else images * real  # the 1-plane view is the input's
        terms: dict[tuple[int, int], torch.Tensor] = {}
        for g, (taps, frames) in enumerate(self.flux_groups):
            xf = images[:, list(frames)].reshape(n * len(frames), stamp, stamp, planes).permute(0, 3, 1, 2)
            out = F.conv2d(xf, getattr(self, f"flux_w{g}"), stride=self.stride1, padding=self.pad1)
            out = out.permute(0, 2, 3, 1).view(n, len(frames), side, side, len(taps), -1)
            for fi, frame in enumerate(frames):
                for ti, tap in enumerate(taps):
                    terms[frame, tap] = out[:, fi, :, :, ti]
        index = torch.stack([band[:, f] * self.kt1 + k for _, f, k in self.taps1], dim=1)
        looked = self.band_table.index_select(0, index.flatten()).view(n, len(self.taps1), side, side, -1)
        # (N, T, s, s, M * C): the channels-last layout of the grouped Conv3d input (N, M * C, T, s, s).
        h = looked.new_empty(n, self.steps1, side, side, looked.shape[-1])
        for o in range(self.steps1):
            sel = [(i, f, k) for i, (oo, f, k) in enumerate(self.taps1) if oo == o]
            acc = torch.add(looked[:, sel[0][0]], terms[sel[0][1:]], out=h[:, o])
            for i, f, k in sel[1:]:
                acc.add_(terms[f, k]).add_(looked[:, i])
        h.add_(self.bias1).relu_()
        for i, (s, p) in enumerate(self.layers, start=1):
            out = F.conv3d(h.permute(0, 4, 1, 2, 3), getattr(self, f"w{i}"), getattr(self, f"b{i}"),
                           stride=s, padding=p, groups=m)  # fmt: skip
            h = out.permute(0, 2, 3, 4, 1).relu_()
        # (N, 1, h, w, M * C) -> (M, N, h, w, C)
        return h.view(n, *h.shape[2:4], m, -1).permute(3, 0, 1, 2, 4).contiguous()


class _Context(nn.Module):
    """Every member's :class:`~broker_plugin.inference.layers.ContextEncoder` at once: ``(M, N, out)``.

    The first linear layer's input (the chunk's selected context columns and band one-hots) is the same
    for every member, so its stacked weights make one matrix product whose output columns are
    ``(member, hidden)``; the second layer is one batched product over the members.

    Parameters
    ----------
    encoders
        The members' context encoders (same columns, chunk and band vocabulary).
    """

    def __init__(self, encoders: Sequence[nn.Module]) -> None:
        super().__init__()
        self.band_vocab: int = encoders[0].band_vocab
        self.register_buffer("columns", encoders[0].columns.clone(), persistent=False)
        lin1, lin2 = [e.net[0] for e in encoders], [e.net[2] for e in encoders]
        # (inputs, M * hidden) and (M * hidden,): y = x @ W^T + b for all members side by side.
        w1 = torch.cat([ln.weight for ln in lin1]).t().contiguous()
        self.register_buffer("w1", w1.float(), persistent=False)
        self.register_buffer("b1", torch.cat([ln.bias for ln in lin1]).float(), persistent=False)
        self.register_buffer("w2", torch.stack([ln.weight.t() for ln in lin2]).float().contiguous(),
                             persistent=False)  # (M, hidden, out)  # fmt: skip
        self.register_buffer("b2", torch.stack([ln.bias for ln in lin2])[:, None].float(), persistent=False)

    def forward(self, context: torch.Tensor, band: torch.Tensor, real: torch.Tensor | None) -> torch.Tensor:
        """Encode ``context`` ``(N, chunk, K)``, band ids ``(N, chunk)`` to ``(M, N, out)``.

        ``real`` ``(N, chunk)``: where given, the context of the frames where it is 0 is zeroed first (the
        masked members' padding frames; their band one-hot stays, as in the members).
        """
        picked = context.index_select(-1, self.columns).to(self.w1.dtype)
        if real is not None:
            picked = picked * real[..., None].to(picked.dtype)
        onehot = F.one_hot(band, self.band_vocab).to(picked.dtype)
        features = torch.cat((picked, onehot), dim=-1).flatten(1)
        hidden = torch.addmm(self.b1, features, self.w1).relu_()
        m = self.w2.shape[0]
        return torch.baddbmm(self.b2, hidden.view(len(features), m, -1).transpose(0, 1), self.w2)


class _History(nn.Module):
    """The members' history encoders: each backbone's GRU once, then each member's layers after it.

    Parameters
    ----------
    encoders
        The members' :class:`~broker_plugin.inference.layers.HistoryEncoder`.
    backbone_of
        Each member's backbone (:func:`backbone_groups`): members of one backbone share the GRU.
    """

    def __init__(self, encoders: Sequence[nn.Module], backbone_of: Sequence[int]) -> None:
        super().__init__()
        self.encoders = nn.ModuleList(encoders)
        self.backbone_of = list(backbone_of)
        #: One member per backbone, whose GRU reads the rows for all members of that backbone.
        self.readers = first_of_each(self.backbone_of)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        """Encode rows ``(B, P, F)`` for every member: ``(M, B, out)``."""
        # Trimmed once here, and the parameter-free statistics computed once, for every member.
        rows = trim_history_rows(rows.float())
        stats = history_statistics(rows) if any(e.statistics is not None for e in self.encoders) else None
        summaries = [self.encoders[r].sequence_summary(rows) for r in self.readers]
        return torch.stack([
            e.combine(summaries[g], None if e.statistics is None else stats)
            for e, g in zip(self.encoders, self.backbone_of, strict=True)
        ])  # fmt: skip


class _Block(nn.Module):
    """Every member's :class:`~broker_plugin.inference.layers.ConvEntionBlock` on ``(M, B, L, h, w, C)``.

    Parameters
    ----------
    blocks
        The members' blocks at one depth, in eval mode.
    token_shape
        ``(C, h, w)``.
    """

    def __init__(self, blocks: Sequence[nn.Module], token_shape: tuple[int, ...]) -> None:
        super().__init__()
        c, h, w = token_shape
        m_count = len(blocks)
        attn = [b.attn for b in blocks]
        self.m_count, self.heads, self.eps = m_count, attn[0].heads, blocks[0].norm1.eps
        self.score_pad, self.proj_pad = attn[0].score.padding[0], attn[0].proj.padding[0]
        self.ffn_pad = blocks[0].ffn[0].padding[0]
        tensors: dict[str, torch.Tensor] = {}
        for name in ("norm1", "norm2"):  # (C, h, w, L) -> (M, L, h, w, C)
            tensors[f"{name}_w"] = torch.stack([getattr(b, name).weight.permute(3, 1, 2, 0) for b in blocks])
            tensors[f"{name}_b"] = torch.stack([getattr(b, name).bias.permute(3, 1, 2, 0) for b in blocks])
        # score(Wk n + bk) = (Ws o Wk)(n) + [Ws(bk inside the zero padding) + bs]: one 5x5 convolution.
        wk = torch.stack([a.qkv.weight.double()[c : 2 * c, :, 0, 0] for a in attn])
        bk = torch.stack([a.qkv.bias.double()[c : 2 * c] for a in attn])
        ws = torch.stack([a.score.weight.double() for a in attn])
        bs = torch.stack([a.score.bias.double() for a in attn])
        tensors["score_w"] = torch.einsum("mhcuv,mcd->mhduv", ws, wk)
        inside = torch.ones(1, 1, h, w, dtype=torch.float64)
        # (M, h, w, heads)
        tensors["score_map"] = torch.stack([
            F.conv2d(bk[m][None, :, None, None] * inside, ws[m], bs[m], padding=self.score_pad)[0]
            for m in range(m_count)
        ]).permute(0, 2, 3, 1)  # fmt: skip
        tensors["value_w"] = torch.stack([a.qkv.weight.double()[2 * c :] for a in attn])
        tensors["value_b"] = torch.stack([a.qkv.bias.double()[2 * c :] for a in attn])
        tensors["proj_w"] = torch.stack([a.proj.weight.double() for a in attn])
        tensors["proj_b"] = torch.stack([a.proj.bias.double() for a in attn])
        # Feed-forward conv a -> ReLU -> BN1 -> conv b -> ReLU -> BN2: BN1's scale goes into conv b's input
        # channels, its shift through conv b's zero padding into a bias map.
        ffn = [b.ffn for b in blocks]
        s1, t1 = _bn_fold([f[2] for f in ffn])
        s2, t2 = _bn_fold([f[5] for f in ffn])
        wb = torch.stack([f[3].weight.double() for f in ffn])
        bb = torch.stack([f[3].bias.double() for f in ffn])
        # (M, h, w, C)
        tensors["ffn_map"] = torch.stack([
            F.conv2d(t1[m][None, :, None, None] * inside, wb[m], bb[m], padding=self.ffn_pad)[0]
            for m in range(m_count)
        ]).permute(0, 2, 3, 1)  # fmt: skip
        tensors["ffn_a_w"] = torch.stack([f[0].weight.double() for f in ffn])
        tensors["ffn_a_b"] = torch.stack([f[0].bias.double() for f in ffn])
        tensors["ffn_b_w"] = wb * s1[:, None, :, None, None]
        tensors["ffn_scale"], tensors["ffn_shift"] = s2, t2
        for name, t in tensors.items():
            if name.endswith("_w") and t.dim() == 5:
                # Per-member channels-last slices, and one grouped weight (M * O, I, k, k).
                self.register_buffer(name, _channels_last(t.float()), persistent=False)
                grouped = t.float().flatten(0, 1).contiguous(memory_format=torch.channels_last)
                self.register_buffer(f"{name}g", grouped, persistent=False)
            else:
                self.register_buffer(name, t.float().contiguous(), persistent=False)

    def norm(self, x: torch.Tensor, idx: int, mask: torch.Tensor | None) -> torch.Tensor:
        """Joint LayerNorm ``idx`` (1 or 2) of ``x`` per member and object over its valid tokens."""
        weight, bias = getattr(self, f"norm{idx}_w"), getattr(self, f"norm{idx}_b")
        m, b, length = x.shape[:3]
        size = x[0, 0, 0].numel()
        per_token = x.view(m, b, length, size).sum(-1)
        if mask is None:
            count = torch.full((b,), float(length * size), dtype=x.dtype, device=x.device)
            mean = per_token.sum(-1) / count
        else:
            count = mask.sum(-1).clamp_min(1).to(x.dtype) * size
            mean = (per_token * mask).sum(-1) / count
        d = x - mean[..., None, None, None, None]
        # One pass and no temporary: a squared copy or a batched dot product is 2-5x slower here.
        sq = torch.linalg.vector_norm(d.view(m, b, length, size), dim=-1).square_()
        var = (sq if mask is None else sq * mask).sum(-1) / count
        d.mul_(torch.rsqrt(var + self.eps)[..., None, None, None, None])
        return torch.addcmul(bias[:, None, :length], d, weight[:, None, :length])

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, grouped: bool) -> torch.Tensor:
        """Apply the block to ``x`` ``(M, B, L, h, w, C)``; ``mask`` ``(B, L)`` marks valid tokens."""
        mid = self._attend_grouped(x, mask) if grouped else self._attend_members(x, mask)
        return self._feed_forward_grouped(mid, mask) if grouped else self._feed_forward_members(mid, mask)

    # One channels-last convolution per member: the fastest kernels for more than a few objects.

    @staticmethod
    def _maps(t: torch.Tensor) -> torch.Tensor:
        """View ``(..., h, w, C)`` as channels-last ``(N, C, h, w)``."""
        return t.reshape(-1, *t.shape[-3:]).permute(0, 3, 1, 2)

    def _attend_members(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        m, b, length, hh, ww, c = x.shape
        n1 = self.norm(x, 1, mask)
        out = torch.empty_like(x)
        for j in range(m):
            maps = self._maps(n1[j])
            scores = F.conv2d(maps, self.score_w[j], None, padding=self.score_pad).permute(0, 2, 3, 1)
            scores = scores.view(b, length, hh, ww, self.heads).add_(self.score_map[j])
            if mask is not None:
                scores.masked_fill_(~mask[:, :, None, None, None], torch.finfo(scores.dtype).min)
            weights = scores.softmax(dim=1).unsqueeze(-1)
            values = F.conv2d(maps, self.value_w[j], self.value_b[j]).permute(0, 2, 3, 1)
            attended = (weights * values.view(b, length, hh, ww, self.heads, -1)).sum(1)
            proj = F.conv2d(self._maps(attended.view(b, hh, ww, c)), self.proj_w[j], self.proj_b[j],
                            padding=self.proj_pad)  # fmt: skip
            torch.add(x[j], proj.permute(0, 2, 3, 1)[:, None], out=out[j])
        return out

    def _feed_forward_members(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        y = self.norm(x, 2, mask)
        out = torch.empty_like(x)
        for j in range(x.shape[0]):
            hidden = F.conv2d(
                self._maps(y[j]), self.ffn_a_w[j], self.ffn_a_b[j], padding=self.ffn_pad
            ).relu_()
            r = F.conv2d(hidden, self.ffn_b_w[j], None, padding=self.ffn_pad).permute(0, 2, 3, 1)
            r = r.add_(self.ffn_map[j]).relu_()
            torch.addcmul(x[j], r.view_as(x[j]), self.ffn_scale[j], out=out[j])
        return out.add_(self.ffn_shift[:, None, None, None, None])

    # One grouped convolution for all members: fewest calls, for a few objects.

    def _grouped_maps(self, t: torch.Tensor) -> torch.Tensor:
        """Copy ``(M, N, h, w, C)`` to channels-last ``(N, M * C, h, w)`` for a grouped convolution."""
        m, n, hh, ww, c = t.shape
        return t.permute(1, 2, 3, 0, 4).reshape(n, hh, ww, m * c).permute(0, 3, 1, 2)

    def _attend_grouped(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        m, b, length, hh, ww, c = x.shape
        maps = self._grouped_maps(self.norm(x, 1, mask).view(m, b * length, hh, ww, c))
        scores = F.conv2d(maps, self.score_wg, None, padding=self.score_pad, groups=m)
        scores = scores.permute(0, 2, 3, 1).view(b, length, hh, ww, m, self.heads)
        scores = scores.add_(self.score_map.permute(1, 2, 0, 3))
        if mask is not None:
            scores.masked_fill_(~mask[:, :, None, None, None, None], torch.finfo(scores.dtype).min)
        weights = scores.softmax(dim=1).unsqueeze(-1)
        values = F.conv2d(maps, self.value_wg, self.value_b.flatten(), groups=m).permute(0, 2, 3, 1)
        attended = (weights * values.view(b, length, hh, ww, m, self.heads, -1)).sum(1)  # (B, h, w, M, ...)
        proj = F.conv2d(attended.view(b, hh, ww, m * c).permute(0, 3, 1, 2), self.proj_wg,
                        self.proj_b.flatten(), padding=self.proj_pad, groups=m)  # fmt: skip
        return x + proj.permute(0, 2, 3, 1).view(b, hh, ww, m, c).permute(3, 0, 1, 2, 4)[:, :, None]

    def _feed_forward_grouped(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        m, b, length, hh, ww, c = x.shape
        maps = self._grouped_maps(self.norm(x, 2, mask).view(m, b * length, hh, ww, c))
        hidden = F.conv2d(maps, self.ffn_a_wg, self.ffn_a_b.flatten(), padding=self.ffn_pad, groups=m)
        r = F.conv2d(hidden.relu_(), self.ffn_b_wg, None, padding=self.ffn_pad, groups=m)
        r = (
            r.permute(0, 2, 3, 1)
            .view(b * length, hh, ww, m, c)
            .add_(self.ffn_map.permute(1, 2, 0, 3))
            .relu_()
        )
        r = r.view(b, length, hh, ww, m, c).permute(4, 0, 1, 2, 3, 5)
        return torch.addcmul(x, r, self.ffn_scale[:, None, None, None, None]).add_(
            self.ffn_shift[:, None, None, None, None]
        )


class StackedConvEntion(EnsembleForward):
    """The members of a ConvEntion ensemble with stacked, pre-folded weights, run in one pass.

    Parameters
    ----------
    members
        :class:`~broker_plugin.inference.nets.ConvEntion` nets with one configuration, in eval mode.
    conv_mode
        ``"members"``: the blocks' convolutions run one per member on channels-last maps; ``"grouped"``:
        one grouped convolution for all members; ``"auto"``: grouped for a few objects only
        (at most :data:`GROUPED_MAX_PIXELS` token pixels per member), where fewer calls win. Default:
        ``"auto"`` on the CPU, ``"grouped"`` elsewhere.
    chunk_elements
        Slice size of the blocks [float32 token elements, all members]; default
        :data:`CPU_SLICE_ELEMENTS` on the CPU, no slicing elsewhere.
    embed_step
        Chunks per front-end pass; default :data:`CPU_EMBED_STEP` on the CPU, all at once elsewhere.
    share_backbones
        Run the members that share a backbone (:func:`backbone_groups`) once; False runs every member's
        own copy (the same numbers at the members' cost: for benchmarks).
    """

    def __init__(
        self,
        members: Sequence[nn.Module],
        *,
        conv_mode: ConvMode | None = None,
        chunk_elements: int | None = None,
        embed_step: int | None = None,
        share_backbones: bool = True,
    ) -> None:
        super().__init__()
        if not can_stack(members):
            raise ValueError("StackedConvEntion needs ConvEntion members with one configuration")
        for key, value in _shared_attributes(members).items():
            setattr(self, key, value)
        backbone_of = backbone_layout(members, share_backbones)
        # One member per backbone runs the shared parts; every member keeps its own head.
        shared = [members[i] for i in first_of_each(backbone_of)]
        self.n_backbones = len(shared)
        self.register_buffer("member_backbone", torch.tensor(backbone_of), persistent=False)
        # On a GPU, fewer and larger kernels win: one grouped convolution per layer, no slicing (not yet
        # measured: benchmarks/bench_inference_gpu.py compares both settings).
        cpu = next(members[0].parameters()).device.type == "cpu"
        self.conv_mode: ConvMode = conv_mode or ("auto" if cpu else "grouped")
        self.chunk_elements = chunk_elements or (CPU_SLICE_ELEMENTS if cpu else 1 << 62)
        self.embed_step = embed_step or (CPU_EMBED_STEP if cpu else 1 << 62)
        self.masked: bool = members[0].config.masked
        self.work_perm = (1, 2, 0)  # (C, h, w) -> (h, w, C)
        # Continuous-time nets have no index encoding: their time enters through the context channels.
        self.index_encoding: bool = members[0].config.time_encoding == "index"
        c, h, w = self.token_shape
        with torch.no_grad():
            self.front_end = _FrontEnd([m.encoder for m in shared], chunk=self.chunk_size, masked=self.masked)
            self.context: _Context | None = None
            self.context_added: bool = members[0].context_added
            if members[0].context_encoder is not None:
                self.context = _Context([m.context_encoder for m in shared])
            self.blocks = nn.ModuleList(
                _Block([m.blocks[d] for m in shared], self.token_shape) for d in range(len(members[0].blocks))
            )
            # (max_chunks, 1, 1, C): broadcasts over the working layout (..., L, h, w, C).
            self.register_buffer(
                "pos", members[0].pos[:, None, None, :].float().contiguous(), persistent=False
            )
            lin1, lin2 = [m.head[1] for m in members], [m.head[4] for m in members]
            hidden, image = lin1[0].out_features, c * h * w
            # The pooled vector is flattened (h, w, C) here, (C, h, w) in the members.
            w1 = torch.stack([
                ln.weight[:, :image].reshape(hidden, c, h, w).permute(0, 2, 3, 1).flatten(1) for ln in lin1
            ])  # fmt: skip
            self.register_buffer("head_w1", w1.transpose(1, 2).contiguous(), persistent=False)
            # The history vector's columns of the first head layer (empty without history).
            w1h = torch.stack([ln.weight[:, image:] for ln in lin1])
            self.register_buffer("head_w1_history", w1h.transpose(1, 2).contiguous(), persistent=False)
            self.history: _History | None = None
            if members[0].history_encoder is not None:
                self.history = _History([m.history_encoder for m in members], backbone_of)
            self.register_buffer("head_b1", torch.stack([ln.bias for ln in lin1])[:, None], persistent=False)
            self.register_buffer("head_w2", torch.stack([ln.weight.t() for ln in lin2]).contiguous(),
                                 persistent=False)  # fmt: skip
            self.register_buffer("head_b2", torch.stack([ln.bias for ln in lin2])[:, None], persistent=False)
            pad = torch.zeros(0)
            if self.pad_window:
                pad = self.embed_chunks(*_padding_chunk(self, self.pos.device))[:, 0]
            self.register_buffer("pad", pad, persistent=False)

    def embed_chunks(  # noqa: D102
        self, x: torch.Tensor, band: torch.Tensor, aux: Tensor | None = None, context: Tensor | None = None
    ) -> torch.Tensor:
        if self.uses_context and (aux is None or context is None):
            raise InferenceInputError("this ensemble needs the frames' planes and context")
        x, step = x.float(), self.embed_step
        if x.shape[0] <= step:
            return self._embed(x, band, aux, context)
        return torch.cat([
            self._embed(x[i : i + step], band[i : i + step], None if aux is None else aux[i : i + step],
                        None if context is None else context[i : i + step])
            for i in range(0, len(x), step)
        ], 1)  # fmt: skip

    def _embed(
        self, x: torch.Tensor, band: torch.Tensor, aux: Tensor | None, context: Tensor | None
    ) -> torch.Tensor:
        image = self.front_end(x, band, aux)  # (M, N, h, w, image channels)
        if self.context is None:
            return image
        assert context is not None  # noqa: S101 - embed_chunks checked it
        vector = self.context(context, band, (band != 0) if self.masked else None)  # (M, N, out)
        if self.context_added:  # projected to the image channels, added at every grid pixel
            return image + vector[:, :, None, None].to(image.dtype)
        # Channels-last tokens: the context vector is the last channels of every grid pixel.
        m, n, hh, ww, ci = image.shape
        tokens = image.new_empty(m, n, hh, ww, ci + vector.shape[-1])
        tokens[..., :ci] = image
        tokens[..., ci:] = vector[:, :, None, None].to(tokens.dtype)
        return tokens

    def pad_tokens(self) -> torch.Tensor | None:  # noqa: D102
        return self.pad if self.pad_window else None

    def classify(  # noqa: D102
        self, tokens: torch.Tensor, mask: torch.Tensor | None, history: Tensor | None = None
    ) -> torch.Tensor:
        m, b, length = tokens.shape[:3]
        if mask is not None and bool(mask.all()):
            mask = None  # no padding: the masked ops would change nothing (and cost a pass each)
        history_vector = None
        if self.history is not None:
            if history is None:
                raise InferenceInputError("this ensemble needs the objects' photometric history")
            history_vector = self.history(history)  # (M, B, out): small, all objects at once
        step = max(1, self.chunk_elements // (m * length * math.prod(self.token_shape)))
        return torch.cat([
            self._classify(
                tokens[:, i : i + step], None if mask is None else mask[i : i + step],
                None if history_vector is None else history_vector[:, i : i + step],
            )
            for i in range(0, b, step)
        ], dim=1)  # fmt: skip

    def _classify(
        self, tokens: torch.Tensor, mask: torch.Tensor | None, history_vector: Tensor | None
    ) -> torch.Tensor:
        m, b, length, hh, ww, _ = tokens.shape
        # Any token strides in, contiguous out: the index encoding and the copy are one pass (a copy
        # alone without it; the blocks read contiguous tokens, and never write into their input).
        x = tokens.new_empty(tokens.shape, dtype=torch.float32)
        if self.index_encoding:
            torch.add(tokens, self.pos[:length], out=x)
        else:
            x.copy_(tokens)
        grouped = self.conv_mode == "grouped" or (
            self.conv_mode == "auto" and b * length * hh * ww <= GROUPED_MAX_PIXELS
        )
        for block in self.blocks:
            x = block(x, mask, grouped)
        if mask is not None:
            x = x.masked_fill_(~mask[None, :, :, None, None, None], torch.finfo(x.dtype).min)
        pooled = x.amax(dim=2).view(m, b, -1)
        if m != self.n_members:  # each member's head reads its backbone's features
            pooled = pooled.index_select(0, self.member_backbone)
        hidden = torch.baddbmm(self.head_b1, pooled, self.head_w1)
        if history_vector is not None:
            # Out of place: under bf16 autocast the history vector and ``hidden`` may differ in dtype.
            hidden = torch.baddbmm(hidden, history_vector, self.head_w1_history)
        hidden = hidden.relu_()
        return torch.baddbmm(self.head_b2, hidden, self.head_w2)

    def forward(  # noqa: D102
        self,
        x: torch.Tensor,
        band: torch.Tensor,
        aux: Tensor | None = None,
        context: Tensor | None = None,
        history: Tensor | None = None,
    ) -> torch.Tensor:
        cs, mc = self.chunk_size, self.max_chunks
        b, t, h, w = x.shape
        if t > cs * mc:
            raise InferenceInputError(f"{t} frames exceed the window of {cs * mc}")
        if self.uses_context and (aux is None or context is None):
            raise InferenceInputError("this ensemble needs the frames' planes and context")
        target = cs * (mc if self.pad_window else max(1, -(-t // cs)))
        x = F.pad(x, (0, 0, 0, 0, 0, target - t))
        band = F.pad(band, (0, target - t))
        length = target // cs
        xc, bc = x.reshape(b * length, cs, h, w), band.reshape(b * length, cs)
        ac = cc = None
        if self.uses_context:
            assert aux is not None and context is not None  # noqa: S101 - checked above
            ac = F.pad(aux, (0, 0, 0, 0, 0, 0, 0, target - t)).reshape(b * length, cs, *aux.shape[2:])
            cc = F.pad(context, (0, 0, 0, target - t)).reshape(b * length, cs, -1)
        work = tuple(self.token_shape[p] for p in self.work_perm)
        if self.pad_window:
            # An all-padding chunk (zero frames, planes and context, band id 0) always has the same
            # token: look it up.
            real = (bc != 0).any(dim=1) | (xc != 0).flatten(1).any(dim=1)
            for extra in (ac, cc):
                if extra is not None:
                    real |= (extra != 0).flatten(1).any(dim=1)
            mask = None
        else:
            real = (bc != 0).any(dim=1)  # padding tokens are masked out: their value does not matter
            mask = real.view(b, length)
        if bool(real.all()):
            tokens = self.embed_chunks(xc, bc, ac, cc)
        else:
            if self.pad_window:
                tokens = self.pad[:, None].expand(-1, b * length, *work).clone()
            else:
                tokens = xc.new_zeros(self.n_backbones, b * length, *work, dtype=torch.float32)
            if bool(real.any()):
                picked = (None if ac is None else ac[real], None if cc is None else cc[real])
                tokens[:, real] = self.embed_chunks(xc[real], bc[real], *picked).to(tokens.dtype)
        return self.classify(tokens.view(self.n_backbones, b, length, *work), mask, history)


#: Parameter prefixes a stage 2 on a shared stage-1 backbone trains per member (the head, and a history
#: net's layers after its GRU); everything else of such members is the backbone, bit for bit.
MEMBER_OWN_PREFIXES = ("head.", "history_encoder.out.", "history_encoder.statistics.")


def backbone_groups(members: Sequence[nn.Module]) -> list[int]:
    """Number each member's backbone (0, 1, ... in order of first appearance).

    Members equal in every tensor outside :data:`MEMBER_OWN_PREFIXES` share one.
    The default recipe fine-tunes every fold's member from one stage-1 backbone with that backbone
    frozen, so the front end, blocks and history GRU of its members are one computation, not five.
    """
    keys: list[dict[str, torch.Tensor]] = []
    backbone_of = []
    for m in members:
        own = {k: v for k, v in m.state_dict().items() if not k.startswith(MEMBER_OWN_PREFIXES)}
        match = next(
            (g for g, ref in enumerate(keys)
             if ref.keys() == own.keys() and all(torch.equal(ref[k], own[k]) for k in own)),
            None,
        )  # fmt: skip
        if match is None:
            keys.append(own)
            match = len(keys) - 1
        backbone_of.append(match)
    return backbone_of


def backbone_layout(members: Sequence[nn.Module], share_backbones: bool) -> list[int]:
    """Each member's backbone: :func:`backbone_groups`, or one per member without ``share_backbones``."""
    return backbone_groups(members) if share_backbones else list(range(len(members)))


def first_of_each(backbone_of: Sequence[int]) -> list[int]:
    """The first member of each backbone ``0, 1, ...``: the one that runs the shared parts."""
    return [list(backbone_of).index(g) for g in range(max(backbone_of) + 1)]


def can_stack(members: Sequence[nn.Module]) -> bool:
    """Return True when ``members`` are ConvEntion nets of one configuration (a stacked form exists)."""
    return bool(members) and all(type(m) is ConvEntion and m.config == members[0].config for m in members)


def ensemble_forward(
    members: Sequence[nn.Module], *, stacked: bool = True, share_backbones: bool = True
) -> EnsembleForward:
    """Return the fastest exact runner of ``members``: stacked when possible, else the member loop."""
    if stacked and can_stack(members):
        return StackedConvEntion(members, share_backbones=share_backbones)
    return MemberLoop(members, share_backbones=share_backbones)
