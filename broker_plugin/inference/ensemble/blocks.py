"""Every member's convolutional-attention block at once, on channels-last tokens."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from broker_plugin.inference.ensemble.folding import bn_fold, channels_last


class StackedBlock(nn.Module):
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
        s1, t1 = bn_fold([f[2] for f in ffn])
        s2, t2 = bn_fold([f[5] for f in ffn])
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
                self.register_buffer(name, channels_last(t.float()), persistent=False)
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
