"""The members of a ConvEntion ensemble with stacked, pre-folded weights, run in one pass.

What the stacked form does differently, and why (each an exact rewrite up to float rounding):

- members that share a backbone (:func:`.backbone_groups`: equal in every tensor but their heads and a
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
- the history encoders (a GRU over each output's history rows, then each member's layers after it) run
  each backbone's GRU once per object (:mod:`.history`);
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

from broker_plugin.inference.ensemble.backbones import backbone_layout, first_of_each
from broker_plugin.inference.ensemble.base import EnsembleForward, padding_chunk, shared_attributes
from broker_plugin.inference.ensemble.blocks import StackedBlock
from broker_plugin.inference.ensemble.front_end import StackedContext, StackedFrontEnd
from broker_plugin.inference.ensemble.history import StackedHistory
from broker_plugin.inference.errors import InferenceInputError
from broker_plugin.inference.nets import ConvEntion

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
        Run the members that share a backbone (:func:`.backbone_groups`) once; False runs every member's
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
        for key, value in shared_attributes(members).items():
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
            self.front_end = StackedFrontEnd(
                [m.encoder for m in shared], chunk=self.chunk_size, masked=self.masked
            )
            self.context: StackedContext | None = None
            self.context_added: bool = members[0].context_added
            if members[0].context_encoder is not None:
                self.context = StackedContext([m.context_encoder for m in shared])
            self.blocks = nn.ModuleList(
                StackedBlock([m.blocks[d] for m in shared], self.token_shape)
                for d in range(len(members[0].blocks))
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
            self.history: StackedHistory | None = None
            if members[0].history_encoder is not None:
                self.history = StackedHistory([m.history_encoder for m in members], backbone_of)
            self.register_buffer("head_b1", torch.stack([ln.bias for ln in lin1])[:, None], persistent=False)
            self.register_buffer("head_w2", torch.stack([ln.weight.t() for ln in lin2]).contiguous(),
                                 persistent=False)  # fmt: skip
            self.register_buffer("head_b2", torch.stack([ln.bias for ln in lin2])[:, None], persistent=False)
            pad = torch.zeros(0)
            if self.pad_window:
                pad = self.embed_chunks(*padding_chunk(self, self.pos.device))[:, 0]
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


def can_stack(members: Sequence[nn.Module]) -> bool:
    """Return True when ``members`` are ConvEntion nets of one configuration (a stacked form exists)."""
    return bool(members) and all(type(m) is ConvEntion and m.config == members[0].config for m in members)
