"""The interface every ensemble runner implements, and what its two implementations share."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from broker_plugin.inference.preprocess import CONTEXT_FEATURES


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


def shared_attributes(members: Sequence[nn.Module]) -> dict[str, object]:
    """Return the attributes of :class:`EnsembleForward` that every member must share, checked."""
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


def padding_chunk(
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
