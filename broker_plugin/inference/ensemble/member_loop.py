"""The reference runner: each member's own modules, one member after the other."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from broker_plugin.inference.ensemble.backbones import backbone_layout, first_of_each
from broker_plugin.inference.ensemble.base import EnsembleForward, padding_chunk, shared_attributes


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
        for key, value in shared_attributes(members).items():
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
            self._pad = self.embed_chunks(*padding_chunk(self, device))[:, 0]
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
