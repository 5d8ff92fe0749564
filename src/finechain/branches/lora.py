"""LoRA branches (through ``peft``): the upper layers stay as in the backbone, a low-rank delta is trained and stored."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from finechain.branches.base import BranchMode, BranchOptions, register_branch_mode

if TYPE_CHECKING:
    import torch
    from torch import nn


class LoraOptions(BranchOptions):
    """Where the adapters go and how big they are."""

    mode: Literal["lora"] = "lora"
    rank: int = Field(8, ge=1, description="LoRA rank")
    alpha: int = Field(16, ge=1, description="LoRA scaling numerator (the update is scaled by alpha / rank)")
    dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout")
    targets: list[str] = Field(default_factory=lambda: ["query", "key", "value", "dense"], min_length=1)


@register_branch_mode
class LoraBranch(BranchMode):
    """Low-rank adapters on the named linear layers of each branch layer.

    Only the adapter matrices (and the head) are trained and saved, so a task stores a few hundred
    kilobytes instead of full layer copies. :meth:`merge` folds them into plain layers for deployment.

    Example:
        >>> mode = LoraBranch(LoraOptions(rank=4, targets=["query", "value"]))
        >>> mode.config()["rank"]
        4
    """

    name = "lora"
    Options = LoraOptions
    default_learning_rate = 5e-4  # adapters start at zero and are few: they want a larger step than full layers
    options: LoraOptions

    def prepare(self, layers: nn.ModuleList) -> None:
        """Inject adapters with peft; freeze the copied backbone weights."""
        from peft import LoraConfig, inject_adapter_in_model

        if len(layers) == 0:
            return
        o = self.options
        config = LoraConfig(r=o.rank, lora_alpha=o.alpha, lora_dropout=o.dropout, target_modules=o.targets)
        inject_adapter_in_model(config, layers)
        for name, param in layers.named_parameters():
            param.requires_grad_("lora_" in name)

    def stored_state(self, layers: nn.ModuleList) -> dict[str, torch.Tensor]:
        """Only the adapter matrices."""
        return {k: v for k, v in layers.state_dict().items() if "lora_" in k}

    def merge(self, layers: nn.ModuleList) -> bool:
        """peft's merge: each adapted linear layer gets ``W + (alpha / rank) B A`` and is replaced by its base layer."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        adapted = [(name, module) for name, module in layers.named_modules() if isinstance(module, BaseTunerLayer)]
        for name, module in adapted:
            module.merge(safe_merge=True)
            parent, _, attribute = name.rpartition(".")
            setattr(layers.get_submodule(parent), attribute, module.get_base_layer())
        return bool(adapted)
