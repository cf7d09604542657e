"""The net registry and ConvEntion in its three named configurations.

Variants are configuration, not files (timm's registry): ``create_net("convention-fixed", dropout=0.3)``.
Every registered net exposes the same surface, which the incremental engine, the predictor and the
trainer rely on:

- ``chunk_size`` frames make one token; a window holds at most ``max_chunks`` tokens;
- ``pad_window``: the net needs exactly ``max_chunks`` tokens (padding included, the paper) instead of
  a ``mask`` over a shorter window;
- ``band_offset``: band id of ``BANDS[k]`` is ``k + band_offset`` (0 is padding);
- ``embed_chunks(x, band)`` -> tokens; ``forward_blocks(tokens, mask)`` -> features;
  ``forward_head(features, mask)`` -> logits; ``forward_features(x, band)`` -> (features, mask);
  ``reset_classifier(n)``; ``net_name`` and ``net_args`` rebuild the net through :func:`create_net`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from broker_plugin.inference.errors import InferenceInputError, UnknownNetError
from broker_plugin.inference.layers import ChunkEncoder, ConvEntionBlock, sinusoid_table

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_net(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a factory ``f(**overrides) -> nn.Module`` under ``name``."""

    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"net {name!r} registered twice")
        _REGISTRY[name] = factory
        return factory

    return wrap


def list_nets() -> list[str]:
    """Return the registered net names, sorted."""
    return sorted(_REGISTRY)


def create_net(name: str, **overrides: Any) -> nn.Module:
    """Build the registered net ``name`` with configuration ``overrides``.

    Raises
    ------
    UnknownNetError
        If ``name`` is not registered.
    """
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise UnknownNetError(f"unknown net {name!r}; registered: {list_nets()}") from None
    return factory(**overrides)


@dataclass(frozen=True)
class ConvEntionConfig:
    """Hyper-parameters of ConvEntion; the defaults are the authors' commit a6d0e5c (spec section 3).

    Attributes
    ----------
    stamp
        Frame side [pixels].
    chunk_size, max_chunks
        Frames per front-end chunk and tokens per window (3 x 33 = 99 frames).
    channels
        Output channels of the four Conv3d layers; the last is the token depth ``d``.
    depth, heads
        Attention blocks and heads per block.
    head_hidden, dropout
        Width and dropout of the MLP head.
    num_classes
        Output classes.
    band_vocab
        Rows of the band embedding (the authors' 10).
    band_offset
        0: the authors' ids (``u`` = 0 = padding, the flaw); 1: ids ``1..6``, 0 only for padding.
    masked
        Mask padding tokens out of the norms, attention keys, FFN and pooling, and accept windows shorter
        than ``max_chunks``; False is the authors' unmasked, always-99-frames model.
    """

    stamp: int = 32
    chunk_size: int = 3
    max_chunks: int = 33
    channels: tuple[int, ...] = (64, 128, 64, 8)
    depth: int = 2
    heads: int = 4
    head_hidden: int = 256
    dropout: float = 0.5
    num_classes: int = 4
    band_vocab: int = 10
    band_offset: int = 0
    masked: bool = False


class ConvEntion(nn.Module):
    """ConvEntion (Bairouk et al. 2023): chunk tokens -> conv-attention blocks -> max-pool -> MLP.

    Parameters
    ----------
    config
        The hyper-parameters.
    name
        Registry name recorded in artifacts.
    """

    def __init__(self, config: ConvEntionConfig, name: str) -> None:
        super().__init__()
        self.config = replace(config, channels=tuple(config.channels))
        self.net_name = name
        c = self.config
        self.encoder = ChunkEncoder(
            stamp=c.stamp, chunk=c.chunk_size, channels=c.channels, band_vocab=c.band_vocab
        )
        self.token_shape: tuple[int, ...] = self.encoder.token_shape
        self.register_buffer("pos", sinusoid_table(c.max_chunks, self.token_shape[0]), persistent=False)
        self.blocks = nn.ModuleList(
            ConvEntionBlock(self.token_shape, c.max_chunks, c.heads) for _ in range(c.depth)
        )
        self.head = self._make_head(c.num_classes)

    def _make_head(self, num_classes: int) -> nn.Sequential:
        c = self.config
        return nn.Sequential(
            nn.Dropout(c.dropout),
            nn.Linear(math.prod(self.token_shape), c.head_hidden),
            nn.ReLU(),
            nn.Dropout(c.dropout),
            nn.Linear(c.head_hidden, num_classes),
        )

    @property
    def net_args(self) -> dict[str, Any]:
        """Return the configuration as JSON-ready keyword arguments of :func:`create_net`."""
        args = asdict(self.config)
        args["channels"] = list(args["channels"])
        return args

    chunk_size = property(lambda self: self.config.chunk_size)
    max_chunks = property(lambda self: self.config.max_chunks)
    band_offset = property(lambda self: self.config.band_offset)
    num_classes = property(lambda self: self.config.num_classes)
    pad_window = property(lambda self: not self.config.masked)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the whole MLP head by a fresh one with ``num_classes`` outputs (the authors' transfer)."""
        self.config = replace(self.config, num_classes=num_classes)
        self.head = self._make_head(num_classes).to(self.pos.device)

    def embed_chunks(self, x: torch.Tensor, band: torch.Tensor) -> torch.Tensor:
        """Encode chunks ``x`` ``(N, chunk, H, W)``, band ids ``(N, chunk)``, to tokens ``(N, C, h, w)``."""
        if self.config.masked:
            # A padding frame (band 0) contributes nothing, whatever its pixels hold.
            x = x * (band != 0).to(x.dtype)[..., None, None]
        return self.encoder(x, band)

    def forward_blocks(self, tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Add the index encoding to ``tokens`` ``(B, L, C, h, w)`` and run the attention blocks."""
        length = tokens.shape[1]
        x = tokens + self.pos[:length].view(1, length, -1, 1, 1).to(tokens.dtype)
        for block in self.blocks:
            x = block(x, mask)
        return x

    def forward_head(
        self, features: torch.Tensor, mask: torch.Tensor | None, pre_logits: bool = False
    ) -> torch.Tensor:
        """Max-pool ``features`` over valid tokens and classify; ``pre_logits`` returns the pooled vector."""
        if mask is not None:
            fill = torch.finfo(features.dtype).min
            features = features.masked_fill(~mask.view(*mask.shape, 1, 1, 1), fill)
        pooled = features.amax(dim=1).flatten(1)
        return pooled if pre_logits else self.head(pooled)

    def forward_features(
        self, x: torch.Tensor, band: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Chunk frames ``x`` ``(B, T, H, W)`` / ``band`` ``(B, T)`` and run front end and blocks.

        ``T`` may be short: the paper net pads to ``chunk_size * max_chunks`` frames, the masked nets to
        a whole number of chunks (padding frames are zeros with band id 0).

        Returns
        -------
        tuple
            Features ``(B, L, C, h, w)`` and the token mask ``(B, L)`` (None for the paper net).
        """
        c = self.config
        b, t, h, w = x.shape
        if t > c.chunk_size * c.max_chunks:
            raise InferenceInputError(f"{t} frames exceed the window of {c.chunk_size * c.max_chunks}")
        target = c.chunk_size * (c.max_chunks if self.pad_window else max(1, -(-t // c.chunk_size)))
        x = F.pad(x, (0, 0, 0, 0, 0, target - t))
        band = F.pad(band, (0, target - t))
        length = target // c.chunk_size
        xc = x.reshape(b * length, c.chunk_size, h, w)
        bc = band.reshape(b * length, c.chunk_size)
        if not c.masked:
            tokens = self.embed_chunks(xc, bc)
            return self.forward_blocks(tokens.view(b, length, *self.token_shape), None), None
        valid = (bc != 0).any(dim=1)
        tokens = xc.new_zeros(b * length, *self.token_shape)
        tokens[valid] = self.embed_chunks(xc[valid], bc[valid]).to(tokens.dtype)
        mask = valid.view(b, length)
        return self.forward_blocks(tokens.view(b, length, *self.token_shape), mask), mask

    def forward(self, x: torch.Tensor, band: torch.Tensor) -> torch.Tensor:
        """Return logits ``(B, num_classes)`` for frames ``x`` ``(B, T, H, W)`` and band ids ``(B, T)``."""
        return self.forward_head(*self.forward_features(x, band))


def _convention(name: str, defaults: dict[str, Any], overrides: dict[str, Any]) -> ConvEntion:
    return ConvEntion(ConvEntionConfig(**{**defaults, **overrides}), name=name)


@register_net("convention-paper")
def convention_paper(**overrides: Any) -> ConvEntion:
    """Return the authors' a6d0e5c model (1,253,108 parameters), flaws included."""
    return _convention("convention-paper", {}, overrides)


@register_net("convention-fixed")
def convention_fixed(**overrides: Any) -> ConvEntion:
    """Return the paper model with its input flaws fixed (same 1,253,108 parameters).

    Band ids are ``BANDS`` index + 1 so padding (0) no longer collides with ``u``; padding frames are
    zeroed; padding tokens are masked out of the LayerNorm statistics, the attention keys, the FFN and
    the max-pool; windows shorter than 33 chunks are not padded at all.
    """
    return _convention("convention-fixed", {"masked": True, "band_offset": 1}, overrides)


@register_net("convention-small")
def convention_small(**overrides: Any) -> ConvEntion:
    """Return the fixed model with a ~45x cheaper front end and head, for training on a few CPU cores."""
    defaults = {"masked": True, "band_offset": 1, "channels": (8, 16, 16, 8), "head_hidden": 64}
    return _convention("convention-small", defaults, overrides)
