"""Every member's photometric-history encoder, each backbone's GRU run once."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from broker_plugin.inference.ensemble.backbones import first_of_each
from broker_plugin.inference.history_statistics import history_statistics
from broker_plugin.inference.layers import trim_history_rows


class StackedHistory(nn.Module):
    """The members' history encoders: each backbone's GRU once, then each member's layers after it.

    Parameters
    ----------
    encoders
        The members' :class:`~broker_plugin.inference.layers.HistoryEncoder`.
    backbone_of
        Each member's backbone (:func:`.backbone_groups`): members of one backbone share the GRU.
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
