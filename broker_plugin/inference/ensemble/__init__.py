"""All members of an ensemble in one forward pass.

The predictor and the incremental engine talk to an ensemble through one interface,
:class:`EnsembleForward`: ``embed_chunks`` (chunks -> every backbone's tokens), ``classify`` (every
backbone's token windows -> every member's logits) and ``forward`` (frames -> logits), each with a
leading backbone or member axis.
Two implementations give the same numbers (tested to 1e-5):

- :class:`MemberLoop` runs each member's own modules in turn: the reference, and the path of nets that
  have no stacked form (the CNN+RNN baselines);
- :class:`StackedConvEntion` stacks the weights of ConvEntion members (every configuration: the paper,
  fixed and small nets, and the context nets ``convention-triplet*`` with any ``planes``,
  ``time_encoding`` and ``photometry``) and runs them together.

Modules: :mod:`.base` (the interface), :mod:`.member_loop`, :mod:`.stacked` (the stacked runner, built
from :mod:`.front_end`, :mod:`.blocks`, :mod:`.history` and the weight rewrites of :mod:`.folding`) and
:mod:`.backbones` (which members share a stage-1 backbone).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from broker_plugin.inference.ensemble.backbones import (
    MEMBER_OWN_PREFIXES,
    backbone_groups,
    backbone_layout,
    first_of_each,
)
from broker_plugin.inference.ensemble.base import EnsembleForward
from broker_plugin.inference.ensemble.member_loop import MemberLoop
from broker_plugin.inference.ensemble.stacked import StackedConvEntion, can_stack

__all__ = [
    "MEMBER_OWN_PREFIXES",
    "EnsembleForward",
    "MemberLoop",
    "StackedConvEntion",
    "backbone_groups",
    "backbone_layout",
    "can_stack",
    "ensemble_forward",
    "first_of_each",
]


def ensemble_forward(
    members: Sequence[nn.Module], *, stacked: bool = True, share_backbones: bool = True
) -> EnsembleForward:
    """Return the fastest exact runner of ``members``: stacked when possible, else the member loop."""
    if stacked and can_stack(members):
        return StackedConvEntion(members, share_backbones=share_backbones)
    return MemberLoop(members, share_backbones=share_backbones)
