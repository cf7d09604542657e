"""Recurrent baselines on the same input pipeline: CNN+LSTM and CNN+GRU (spec 6.3 templates).

One token per frame (``chunk_size = 1``): a per-frame CNN (weights shared over time) gives 256
features, a one-hot band vector is appended (id 0 = padding, ``band_offset = 1``), and a recurrent
net reads the window's valid frames only (packed sequences), so padding and missing frames are
skipped. The head classifies the last valid hidden state. Layer sizes are the spec's placeholders;
the original papers' exact layers are not published there.

For the input ablation the baselines take the same inputs as ``convention-triplet``, switched by the
same three flags (:class:`CnnRnnConfig`): the CNN reads the science and template planes beside the
difference (``planes = 3``), and the selected columns of each frame's context vector
(:data:`~broker_plugin.inference.preprocess.CONTEXT_FEATURES` values: continuous time, photometry,
plane presence) are appended to the frame's token, so the recurrent net sees them with the frame. All
flags off is the original baseline, parameter for parameter.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from broker_plugin.inference.errors import InferenceInputError
from broker_plugin.inference.nets import ConvEntionConfig, register_net
from broker_plugin.records import BANDS


@dataclass(frozen=True)
class CnnRnnConfig:
    """Hyper-parameters of a CNN+RNN baseline.

    Attributes
    ----------
    cell
        ``"lstm"`` or ``"gru"``.
    stamp
        Frame side [pixels]; a multiple of 4.
    max_chunks
        Frames per window (one token per frame).
    features, hidden, layers
        CNN feature width, recurrent hidden size and depth.
    dropout
        Dropout after the CNN's FC layer and before the classifier.
    num_classes
        Output classes.
    planes
        Image planes the CNN reads per frame: 1 (the difference) or 3 (difference, science, template).
    time_encoding
        ``"index"``: the recurrent net knows the frames' order only (the original baseline);
        ``"continuous"``: the time columns of the frame's context vector (days since the object's first
        frame and since the previous frame) join its token.
    photometry
        The photometry columns (the alert's PSF flux, error, signal-to-noise) join the frame's token.
    """

    cell: str = "gru"
    stamp: int = 32
    max_chunks: int = 99
    features: int = 256
    hidden: int = 128
    layers: int = 2
    dropout: float = 0.5
    num_classes: int = 4
    planes: int = 1
    time_encoding: str = "index"
    photometry: bool = False

    def context_columns(self) -> tuple[int, ...]:
        """The columns of the context vector the token carries: ConvEntion's for the same flags.

        The plane presence flags come with ``planes == 3`` (a zero plane is then told apart from an
        absent one). Delegating to :meth:`ConvEntionConfig.context_columns` keeps one definition, so
        an ablation variant gives both nets exactly the same inputs.
        """
        if self.planes not in (1, 3):
            raise ValueError(f"planes must be 1 or 3, not {self.planes}")
        flags = ConvEntionConfig(
            planes=self.planes, time_encoding=self.time_encoding, photometry=self.photometry
        )
        return flags.context_columns()


class CnnRnn(nn.Module):
    """Per-frame CNN followed by an LSTM or GRU over the frames of the window.

    Parameters
    ----------
    config
        The hyper-parameters.
    name
        Registry name recorded in artifacts.
    """

    chunk_size = 1
    band_offset = 1
    pad_window = False

    def __init__(self, config: CnnRnnConfig, name: str) -> None:
        super().__init__()
        if config.cell not in ("lstm", "gru"):
            raise ValueError(f"cell must be 'lstm' or 'gru', not {config.cell!r}")
        self.config, self.net_name = config, name
        self.n_band_ids = len(BANDS) + 1
        columns = config.context_columns()
        self.uses_context: bool = bool(columns) or config.planes == 3
        # A buffer, so the column indices follow the net to its device; not persistent: the config
        # rebuilds it, and flags-off state dicts stay what they were.
        self.register_buffer("columns", torch.tensor(columns, dtype=torch.long), persistent=False)
        side = config.stamp // 4
        # The modules are created in the original order with the original shapes (only the first
        # convolution's input channels depend on ``planes``), so flags off draws the same initial
        # weights from the same seed.
        self.cnn = nn.Sequential(
            nn.Conv2d(config.planes, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * side * side, config.features), nn.ReLU(), nn.Dropout(config.dropout),
        )  # fmt: skip
        self.token_shape: tuple[int, ...] = (config.features + self.n_band_ids + len(columns),)
        rnn = nn.LSTM if config.cell == "lstm" else nn.GRU
        self.rnn = rnn(self.token_shape[0], config.hidden, num_layers=config.layers, batch_first=True)
        self.head = self._make_head(config.num_classes)

    def _make_head(self, num_classes: int) -> nn.Sequential:
        return nn.Sequential(nn.Dropout(self.config.dropout), nn.Linear(self.config.hidden, num_classes))

    @property
    def net_args(self) -> dict[str, Any]:
        """Return the configuration as JSON-ready keyword arguments of ``create_net``."""
        return asdict(self.config)

    max_chunks = property(lambda self: self.config.max_chunks)
    num_classes = property(lambda self: self.config.num_classes)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier by a fresh one with ``num_classes`` outputs."""
        self.config = replace(self.config, num_classes=num_classes)
        self.head = self._make_head(num_classes).to(next(self.parameters()).device)

    def _require_context(self, aux: Tensor | None, context: Tensor | None) -> None:
        if self.uses_context and (aux is None or context is None):
            raise InferenceInputError(f"{self.net_name} needs the frames' planes and context")

    def embed_chunks(
        self, x: torch.Tensor, band: torch.Tensor, aux: Tensor | None = None, context: Tensor | None = None
    ) -> torch.Tensor:
        """Encode frames ``x`` ``(N, 1, H, W)`` with band ids ``(N, 1)`` to tokens ``(N, *token_shape)``.

        With ``uses_context``, ``aux`` ``(N, 1, 2, H, W)`` (science, template) and ``context``
        ``(N, 1, K)`` too; the token is CNN features, band one-hot, then the selected context columns.

        Raises
        ------
        InferenceInputError
            If the net uses context and ``aux`` or ``context`` is missing.
        """
        self._require_context(aux, context)
        image = x
        if self.config.planes == 3:
            assert aux is not None  # noqa: S101 - checked above
            image = torch.cat((x, aux[:, 0].to(x.dtype)), dim=1)
        feats = self.cnn(image)
        onehot = F.one_hot(band[:, 0], self.n_band_ids).to(feats.dtype)
        if not len(self.columns):
            return torch.cat((feats, onehot), dim=1)
        assert context is not None  # noqa: S101 - checked above
        picked = context[:, 0].index_select(-1, self.columns).to(feats.dtype)
        return torch.cat((feats, onehot, picked), dim=1)

    def forward_blocks(self, tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Run the RNN over the valid tokens of ``tokens`` ``(B, L, F)``; return ``(B, hidden)``."""
        b, length = tokens.shape[:2]
        if mask is None:
            mask = torch.ones(b, length, dtype=torch.bool, device=tokens.device)
        # Valid tokens first (stable), so a masked frame inside the window is skipped, not read as zeros.
        order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
        tokens = tokens.gather(1, order[..., None].expand_as(tokens))
        lengths = mask.sum(dim=1).clamp_min(1).cpu()
        packed = pack_padded_sequence(tokens, lengths, batch_first=True, enforce_sorted=False)
        _, state = self.rnn(packed)
        hidden = state[0] if isinstance(state, tuple) else state
        return hidden[-1]

    def forward_head(
        self, features: torch.Tensor, mask: torch.Tensor | None = None, pre_logits: bool = False
    ) -> torch.Tensor:
        """Classify the last hidden state ``features`` ``(B, hidden)``."""
        return features if pre_logits else self.head(features)

    def forward_features(
        self, x: torch.Tensor, band: torch.Tensor, aux: Tensor | None = None, context: Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encode the valid frames of ``x`` ``(B, T, H, W)`` and run the RNN; return (features, mask).

        ``aux`` ``(B, T, 2, H, W)`` and ``context`` ``(B, T, K)`` are the frames' planes and context
        (``uses_context`` nets; ignored otherwise). Padding frames (band 0) are never embedded.
        """
        b, t = band.shape
        if t > self.max_chunks:
            raise InferenceInputError(f"{t} frames exceed the window of {self.max_chunks}")
        self._require_context(aux, context)
        mask = band != 0
        extras: tuple[Tensor, ...] = ()
        if self.uses_context:
            assert aux is not None and context is not None  # noqa: S101 - checked above
            extras = (aux[mask][:, None], context[mask][:, None])
        tokens = x.new_zeros(b, t, *self.token_shape)
        tokens[mask] = self.embed_chunks(x[mask][:, None], band[mask][:, None], *extras).to(tokens.dtype)
        return self.forward_blocks(tokens, mask), mask

    def forward(
        self, x: torch.Tensor, band: torch.Tensor, aux: Tensor | None = None, context: Tensor | None = None
    ) -> torch.Tensor:
        """Return logits ``(B, num_classes)`` for frames ``x`` ``(B, T, H, W)`` and band ids ``(B, T)``."""
        return self.forward_head(*self.forward_features(x, band, aux, context))


@register_net("cnn-lstm")
def cnn_lstm(**overrides: Any) -> CnnRnn:
    """Return the CNN+LSTM baseline (Carrasco-Davis et al. 2019 style).

    ``planes``, ``time_encoding`` and ``photometry`` give it ``convention-triplet``'s inputs.
    """
    return CnnRnn(CnnRnnConfig(**{"cell": "lstm", **overrides}), name="cnn-lstm")


@register_net("cnn-gru")
def cnn_gru(**overrides: Any) -> CnnRnn:
    """Return the CNN+GRU baseline (Gomez et al. 2020 style).

    ``planes``, ``time_encoding`` and ``photometry`` give it ``convention-triplet``'s inputs.
    """
    return CnnRnn(CnnRnnConfig(**{"cell": "gru", **overrides}), name="cnn-gru")
