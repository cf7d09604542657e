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
  ``reset_classifier(n)``; ``net_name`` and ``net_args`` rebuild the net through :func:`create_net`;
- ``uses_context``: the net also takes each frame's science and template planes ``aux`` and context
  vector ``context`` (:mod:`~broker_plugin.inference.preprocess`); ``embed_chunks``,
  ``forward_features`` and ``forward`` accept them as optional trailing arguments, which nets without
  ``uses_context`` ignore;
- ``uses_history``: the head also reads the object's photometric history rows ``history`` ``(B, P, F)``
  (:mod:`~broker_plugin.inference.history`), an optional argument of ``forward_head`` and ``forward``.
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
from broker_plugin.inference.history import HISTORY_FEATURES
from broker_plugin.inference.layers import (
    ChunkEncoder,
    ContextEncoder,
    ConvEntionBlock,
    HistoryEncoder,
    sinusoid_table,
)
from broker_plugin.inference.preprocess import PHOTOMETRY_COLUMNS, PRESENCE_COLUMNS, TIME_COLUMNS

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
    planes
        Image planes per frame: 1 (the difference, the paper) or 3 (difference, science, template).
    time_encoding
        ``"index"``: the paper's sinusoid of the token's position in the window; ``"continuous"``: no
        index encoding, the chunk's frame times (days since the object's first frame and since the
        previous frame) enter its context vector instead.
    photometry
        Give the chunk's context vector the alerts' PSF flux, error and signal-to-noise.
    context_channels, context_hidden
        Token channels the context vector adds, and its encoder's hidden width (used only when
        ``planes``, ``time_encoding`` or ``photometry`` asks for context).
    context_merge
        How the context vector joins the image token: ``"concat"``, as ``context_channels`` extra
        channels (the attention blocks then run on image + context channels), or ``"add"``, projected to
        the image channels and added at every grid pixel (``context_channels`` unused; the blocks keep
        the image token's width, hence its speed).
    history
        Give the head the object's photometric history (every earlier epoch's forced photometry the
        alert carries, encoded by :class:`~broker_plugin.inference.layers.HistoryEncoder`) beside the
        pooled image features.
    history_hidden, history_channels
        The history encoder's per-epoch width and output width.
    history_statistics
        The history encoder also reads the history's light-curve summary statistics
        (:mod:`~broker_plugin.inference.history_statistics`).
    history_skip_statistics
        The head reads those statistics as they are too, beside the encoded history (needs
        ``history_statistics``): stage 2 trains only the head, and the stage-1 projection of the
        statistics keeps what separated the unconfirmed pool's classes, not necessarily all that
        separates the confirmed ones.
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
    planes: int = 1
    time_encoding: str = "index"
    photometry: bool = False
    context_channels: int = 16
    context_hidden: int = 64
    context_merge: str = "concat"
    history: bool = False
    history_hidden: int = 64
    history_channels: int = 64
    history_statistics: bool = False
    history_skip_statistics: bool = False

    def context_columns(self) -> tuple[int, ...]:
        """The columns of the context vector this configuration reads (empty: no context branch)."""
        if self.time_encoding not in ("index", "continuous"):
            raise ValueError(f"time_encoding must be 'index' or 'continuous', not {self.time_encoding!r}")
        if self.context_merge not in ("concat", "add"):
            raise ValueError(f"context_merge must be 'concat' or 'add', not {self.context_merge!r}")
        groups = []
        if self.time_encoding == "continuous":
            groups.append(TIME_COLUMNS)
        if self.photometry:
            groups.append(PHOTOMETRY_COLUMNS)
        if self.planes == 3:
            groups.append(PRESENCE_COLUMNS)
        return tuple(i for g in groups for i in range(g.start, g.stop))


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
            stamp=c.stamp, chunk=c.chunk_size, channels=c.channels, band_vocab=c.band_vocab, planes=c.planes
        )
        columns = c.context_columns()
        self.uses_context = bool(columns) or c.planes == 3
        self.context_encoder: ContextEncoder | None = None
        image_channels, side = self.encoder.token_shape[0], self.encoder.token_shape[1:]
        self.context_added = bool(columns) and c.context_merge == "add"
        if columns:
            self.context_encoder = ContextEncoder(
                columns, chunk=c.chunk_size, band_vocab=c.band_vocab, hidden=c.context_hidden,
                out=image_channels if self.context_added else c.context_channels,
            )  # fmt: skip
        extra = c.context_channels if columns and not self.context_added else 0
        self.token_shape: tuple[int, ...] = (image_channels + extra, *side)
        self.register_buffer("pos", sinusoid_table(c.max_chunks, self.token_shape[0]), persistent=False)
        self.blocks = nn.ModuleList(
            ConvEntionBlock(self.token_shape, c.max_chunks, c.heads) for _ in range(c.depth)
        )
        self.uses_history = c.history
        self.history_encoder: HistoryEncoder | None = None
        if c.history:
            self.history_encoder = HistoryEncoder(
                HISTORY_FEATURES,
                hidden=c.history_hidden,
                out=c.history_channels,
                statistics=c.history_statistics,
                skip_statistics=c.history_skip_statistics,
            )
        self.head = self._make_head(c.num_classes)

    @property
    def history_width(self) -> int:
        """Width of the encoded history the head reads beside the pooled image features (0: none)."""
        return 0 if self.history_encoder is None else self.history_encoder.out_features

    def _make_head(self, num_classes: int) -> nn.Sequential:
        c = self.config
        return nn.Sequential(
            nn.Dropout(c.dropout),
            nn.Linear(math.prod(self.token_shape) + self.history_width, c.head_hidden),
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

    def embed_chunks(
        self,
        x: torch.Tensor,
        band: torch.Tensor,
        aux: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Encode chunks ``x`` ``(N, chunk, H, W)``, band ids ``(N, chunk)``, to tokens ``(N, C, h, w)``.

        With ``uses_context``, ``aux`` ``(N, chunk, 2, H, W)`` and ``context`` ``(N, chunk, K)`` too.
        """
        if self.uses_context and (aux is None or context is None):
            raise InferenceInputError(f"{self.net_name} needs the frames' planes and context")
        if self.config.masked:
            # A padding frame (band 0) contributes nothing, whatever its pixels hold.
            real = (band != 0).to(x.dtype)
            x = x * real[..., None, None]
            if aux is not None:
                aux = aux * real[..., None, None, None].to(aux.dtype)
            if context is not None:
                context = context * real[..., None].to(context.dtype)
        tokens = self.encoder(x, band, aux)
        if self.context_encoder is None:
            return tokens
        assert context is not None  # noqa: S101 - checked above
        vector = self.context_encoder(context.to(tokens.dtype), band)
        if self.context_added:
            return tokens + vector[:, :, None, None]
        grid = vector[:, :, None, None].expand(-1, -1, *tokens.shape[2:])
        return torch.cat((tokens, grid), dim=1)

    def forward_blocks(self, tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Add the index encoding (if used) to ``tokens`` ``(B, L, C, h, w)``; run the attention blocks."""
        length = tokens.shape[1]
        x = tokens
        if self.config.time_encoding == "index":
            x = tokens + self.pos[:length].view(1, length, -1, 1, 1).to(tokens.dtype)
        for block in self.blocks:
            x = block(x, mask)
        return x

    def forward_head(
        self,
        features: torch.Tensor,
        mask: torch.Tensor | None,
        pre_logits: bool = False,
        history: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Max-pool ``features`` over valid tokens and classify; ``pre_logits`` returns the head's input.

        With ``uses_history``, ``history`` ``(B, P, F)`` is encoded and joins the pooled vector.
        """
        if mask is not None:
            fill = torch.finfo(features.dtype).min
            features = features.masked_fill(~mask.view(*mask.shape, 1, 1, 1), fill)
        pooled = features.amax(dim=1).flatten(1)
        if self.history_encoder is not None:
            if history is None:
                raise InferenceInputError(f"{self.net_name} needs the object's photometric history")
            pooled = torch.cat((pooled, self.history_encoder(history.to(pooled.dtype))), dim=1)
        return pooled if pre_logits else self.head(pooled)

    def forward_features(
        self,
        x: torch.Tensor,
        band: torch.Tensor,
        aux: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Chunk frames ``x`` ``(B, T, H, W)`` / ``band`` ``(B, T)`` and run front end and blocks.

        ``T`` may be short: the paper net pads to ``chunk_size * max_chunks`` frames, the masked nets to
        a whole number of chunks (padding frames are zeros with band id 0). ``aux`` ``(B, T, 2, H, W)``
        and ``context`` ``(B, T, K)`` are the frames' planes and context (``uses_context`` nets).

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
        ac = cc = None
        if self.uses_context:
            if aux is None or context is None:
                raise InferenceInputError(f"{self.net_name} needs the frames' planes and context")
            ac = F.pad(aux, (0, 0, 0, 0, 0, 0, 0, target - t)).reshape(b * length, c.chunk_size, 2, h, w)
            cc = F.pad(context, (0, 0, 0, target - t)).reshape(b * length, c.chunk_size, -1)
        if not c.masked:
            tokens = self.embed_chunks(xc, bc, ac, cc)
            return self.forward_blocks(tokens.view(b, length, *self.token_shape), None), None
        valid = (bc != 0).any(dim=1)
        tokens = xc.new_zeros(b * length, *self.token_shape)
        picked = (None if ac is None else ac[valid], None if cc is None else cc[valid])
        tokens[valid] = self.embed_chunks(xc[valid], bc[valid], *picked).to(tokens.dtype)
        mask = valid.view(b, length)
        return self.forward_blocks(tokens.view(b, length, *self.token_shape), mask), mask

    def forward(
        self,
        x: torch.Tensor,
        band: torch.Tensor,
        aux: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        history: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return logits ``(B, num_classes)`` for frames ``x`` ``(B, T, H, W)`` and band ids ``(B, T)``."""
        return self.forward_head(*self.forward_features(x, band, aux, context), history=history)


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


_CONTEXT = {"masked": True, "band_offset": 1, "planes": 3, "time_encoding": "continuous", "photometry": True}


@register_net("convention-triplet")
def convention_triplet(**overrides: Any) -> ConvEntion:
    """Return the fixed model seeing what an alert carries: three planes, continuous time, photometry.

    Per frame the front end reads the difference, science and template images (the host galaxy, a
    stellar counterpart, the nuclear position) beside the band map; per chunk a context vector of the
    frames' times since the object's first frame and since the previous frame, their PSF flux, error and
    signal-to-noise, the planes' presence flags and bands becomes ``context_channels`` extra token
    channels, and replaces the index encoding. ``planes``, ``time_encoding`` and ``photometry`` switch
    the inputs off one by one (the ablation); all off is ``convention-fixed``.
    """
    return _convention("convention-triplet", _CONTEXT, overrides)


@register_net("convention-triplet-small")
def convention_triplet_small(**overrides: Any) -> ConvEntion:
    """Return ``convention-triplet`` with ``convention-small``'s front end and head (for a few CPU cores)."""
    defaults = {**_CONTEXT, "channels": (8, 16, 16, 8), "head_hidden": 64}
    return _convention("convention-triplet-small", defaults, overrides)


@register_net("convention-triplet-lean")
def convention_triplet_lean(**overrides: Any) -> ConvEntion:
    """Return ``convention-triplet-small`` with the context added to the 8 image channels, not appended.

    The same inputs; the attention blocks and the head run on 8 token channels instead of 24, the cost
    of ``convention-small``'s.
    """
    defaults = {**_CONTEXT, "channels": (8, 16, 16, 8), "head_hidden": 64, "context_merge": "add"}
    return _convention("convention-triplet-lean", defaults, overrides)


#: The history inputs of the ``convention-alert`` nets: the rows through a GRU, plus their statistics.
_HISTORY = {"history": True, "history_statistics": True}


@register_net("convention-alert")
def convention_alert(**overrides: Any) -> ConvEntion:
    """Return ``convention-triplet`` whose head also reads the object's photometric history.

    Everything an alert carries: the triplet image sequence with times and photometry, and the forced
    photometry of every earlier epoch (detected or not), encoded per epoch and pooled
    (:class:`~broker_plugin.inference.layers.HistoryEncoder`) beside the image features.
    """
    return _convention("convention-alert", {**_CONTEXT, **_HISTORY}, overrides)


@register_net("convention-alert-small")
def convention_alert_small(**overrides: Any) -> ConvEntion:
    """Return ``convention-alert`` with ``convention-small``'s front end and head (for a few CPU cores)."""
    defaults = {**_CONTEXT, **_HISTORY, "channels": (8, 16, 16, 8), "head_hidden": 64}
    return _convention("convention-alert-small", defaults, overrides)
