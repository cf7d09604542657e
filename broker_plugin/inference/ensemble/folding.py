"""Weight rewrites the stacked runner builds on: folded BatchNorm, channels-last slices, temporal taps."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from broker_plugin.inference.layers import conv_out


def bn_fold(bn: Sequence[nn.modules.batchnorm._BatchNorm]) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the eval-mode affine ``(scale, shift)`` ``(M, C)`` float64 of stacked BatchNorms."""
    scale = torch.stack([b.weight.double() / torch.sqrt(b.running_var.double() + b.eps) for b in bn])
    shift = torch.stack(
        [b.bias.double() - b.running_mean.double() * s for b, s in zip(bn, scale, strict=True)]
    )
    return scale, shift


def channels_last(w: torch.Tensor) -> torch.Tensor:
    """Return ``w`` ``(M, O, I, *k)`` with every member's slice in the channels-last memory format."""
    n = w.dim()
    physical = w.permute(0, 1, *range(3, n), 2).contiguous()
    return physical.permute(0, 1, n - 1, *range(2, n - 1))


def time_taps(steps: int, kernel: int, stride: int, pad: int) -> list[tuple[int, int, int]]:
    """Return ``(output step, input step, tap)`` of a temporal convolution, padding taps left out."""
    out = conv_out(steps, kernel, stride, pad)
    return [
        (o, o * stride - pad + k, k)
        for o in range(out)
        for k in range(kernel)
        if 0 <= o * stride - pad + k < steps
    ]
