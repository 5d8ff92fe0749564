"""Full tuning: every weight of the branch layers is trained and stored."""

from __future__ import annotations

import torch
from torch import nn

from finechain.model.branches.base import BranchMode, register_branch_mode


@register_branch_mode
class FullBranch(BranchMode):
    """Train and store the whole copy of the upper layers.

    Example:
        >>> layers = nn.ModuleList([nn.Linear(2, 2)])
        >>> FullBranch().prepare(layers); sorted(FullBranch().stored_state(layers))
        ['0.bias', '0.weight']
    """

    name = "full"

    def prepare(self, layers: nn.ModuleList) -> None:
        """Everything trainable."""
        layers.requires_grad_(True)

    def stored_state(self, layers: nn.ModuleList) -> dict[str, torch.Tensor]:
        """All branch weights."""
        return dict(layers.state_dict())
