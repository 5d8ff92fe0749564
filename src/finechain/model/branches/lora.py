"""LoRA branches (through ``peft``): the upper layers stay as in the backbone, a low-rank delta is trained and stored."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from finechain.model.branches.base import BranchMode, register_branch_mode


@register_branch_mode
class LoraBranch(BranchMode):
    """Low-rank adapters on the named linear layers of each branch layer.

    Only the adapter matrices (and the head) are trained and saved, so a task stores a few hundred
    kilobytes instead of full layer copies.

    Example:
        >>> mode = LoraBranch(rank=4, targets=["query", "value"])
        >>> mode.config()["rank"]
        4
    """

    name = "lora"
    default_learning_rate = 5e-4  # adapters start at zero and are few: they want a larger step than full layers

    def __init__(self, rank: int = 8, alpha: int = 16, dropout: float = 0.05, targets: list[str] | None = None) -> None:
        self.rank = rank
        self.alpha = alpha
        self.dropout = dropout
        self.targets = list(targets or ["query", "key", "value", "dense"])

    def config(self) -> dict[str, Any]:
        """Mode plus rank, alpha, dropout and target module names."""
        return {"mode": self.name, "rank": self.rank, "alpha": self.alpha, "dropout": self.dropout, "targets": self.targets}

    def prepare(self, layers: nn.ModuleList) -> None:
        """Inject adapters with peft; freeze the copied backbone weights."""
        from peft import LoraConfig, inject_adapter_in_model

        if len(layers) == 0:
            return
        config = LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=self.targets)
        inject_adapter_in_model(config, layers)
        for name, param in layers.named_parameters():
            param.requires_grad_("lora_" in name)

    def stored_state(self, layers: nn.ModuleList) -> dict[str, torch.Tensor]:
        """Only the adapter matrices."""
        return {k: v for k, v in layers.state_dict().items() if "lora_" in k}
