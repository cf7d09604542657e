"""Every member's chunk encoders at once: the 3D-CNN front end and the context encoder."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from broker_plugin.inference.ensemble.folding import bn_fold, time_taps
from broker_plugin.inference.errors import InferenceInputError
from broker_plugin.inference.layers import FRONT_END_LAYOUT, conv_out


class StackedFrontEnd(nn.Module):
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
        scale, shift = bn_fold(norms[0])
        w = torch.stack([c.weight.double() for c in convs[0]]) * scale[..., None, None, None, None]
        bias = torch.stack([c.bias.double() for c in convs[0]]) * scale + shift
        c1, kt = w.shape[1], w.shape[3]
        self.stride1, self.pad1, self.kt1 = s1, p1, kt
        self.side1 = conv_out(stamp, k1, s1, p1)
        self.steps1 = conv_out(chunk, kt, s1, p1)
        self.taps1 = time_taps(chunk, kt, s1, p1)
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
            scale, shift = bn_fold(norms[i])
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


class StackedContext(nn.Module):
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
