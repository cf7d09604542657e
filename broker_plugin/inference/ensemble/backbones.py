"""Which ensemble members share a stage-1 backbone, and so one computation of it."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

#: net's layers after its GRU); everything else of such members is the backbone, bit for bit.
MEMBER_OWN_PREFIXES = ("head.", "history_encoder.out.", "history_encoder.statistics.")


def backbone_groups(members: Sequence[nn.Module]) -> list[int]:
    """Number each member's backbone (0, 1, ... in order of first appearance).

    Members equal in every tensor outside :data:`MEMBER_OWN_PREFIXES` share one.
    The default recipe fine-tunes every fold's member from one stage-1 backbone with that backbone
    frozen, so the front end, blocks and history GRU of its members are one computation, not five.
    """
    keys: list[dict[str, torch.Tensor]] = []
    backbone_of = []
    for m in members:
        own = {k: v for k, v in m.state_dict().items() if not k.startswith(MEMBER_OWN_PREFIXES)}
        match = next(
            (g for g, ref in enumerate(keys)
             if ref.keys() == own.keys() and all(torch.equal(ref[k], own[k]) for k in own)),
            None,
        )  # fmt: skip
        if match is None:
            keys.append(own)
            match = len(keys) - 1
        backbone_of.append(match)
    return backbone_of


def backbone_layout(members: Sequence[nn.Module], share_backbones: bool) -> list[int]:
    """Each member's backbone: :func:`backbone_groups`, or one per member without ``share_backbones``."""
    return backbone_groups(members) if share_backbones else list(range(len(members)))


def first_of_each(backbone_of: Sequence[int]) -> list[int]:
    """The first member of each backbone ``0, 1, ...``: the one that runs the shared parts."""
    return [list(backbone_of).index(g) for g in range(max(backbone_of) + 1)]
