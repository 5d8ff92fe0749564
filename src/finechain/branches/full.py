"""Full tuning: every weight of the branch layers is trained and stored."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from finechain.branches.base import BranchMode, BranchOptions, register_branch_mode

if TYPE_CHECKING:
    import torch
    from torch import nn


class FullOptions(BranchOptions):
    """Full tuning has no options besides its name."""

    mode: Literal["full"] = "full"


@register_branch_mode
class FullBranch(BranchMode):
    """Train and store the whole copy of the upper layers.

    Example:
        >>> from torch import nn
        >>> layers = nn.ModuleList([nn.Linear(2, 2)])
        >>> FullBranch().prepare(layers); sorted(FullBranch().stored_state(layers))
        ['0.bias', '0.weight']
    """

    name = "full"
    Options = FullOptions

    def prepare(self, layers: nn.ModuleList) -> None:
        """Everything trainable."""
        layers.requires_grad_(True)

    def stored_state(self, layers: nn.ModuleList) -> dict[str, torch.Tensor]:
        """All branch weights."""
        return dict(layers.state_dict())
