"""A task tail: its own branch layers, pooling and head. Saves and loads itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from finechain.io import load_tensors, save_tensors
from finechain.model.branches import BranchMode, branch_mode
from finechain.model.heads import Head, head_type
from finechain.model.layers import LayerStack
from finechain.model.pooling import Pooling, pool


class TaskModel(nn.Module):
    """Branch layers (copies of the backbone's upper layers) followed by pooling and a head.

    Example:
        >>> task = TaskModel(ClassificationHead(384, ["neg", "pos"]), branch_layers(encoder, 4), encoder.config)  # doctest: +SKIP
        >>> logits = task(trunk_hidden, attention_mask)  # doctest: +SKIP
    """

    def __init__(
        self, head: Head, layers: list[nn.Module], config: object, pooling: Pooling = "mean", mode: BranchMode | None = None
    ) -> None:
        super().__init__()
        self.branch = LayerStack(layers, config)
        self.mode = mode or branch_mode(None)
        self.mode.prepare(self.branch.layers)
        self.head = head
        self.pooling: Pooling = pooling

    @property
    def type_name(self) -> str:
        """The head's task type."""
        return self.head.type_name

    def features(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """What the head reads: pooled vectors, or token states for token-level heads."""
        hidden = self.branch(hidden, attention_mask)[-1]
        return hidden if self.head.level == "token" else pool(hidden, attention_mask, self.pooling)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Head outputs for trunk states ``hidden``."""
        return self.head(self.features(hidden, attention_mask))

    def describe(self) -> dict[str, Any]:
        """JSON description stored in the manifest."""
        return {
            "type": self.type_name,
            "pooling": self.pooling,
            "branch_layers": len(self.branch.layers),
            "branch": self.mode.config(),
            "head": self.head.config(),
            "parameters": sum(p.numel() for p in self.parameters()),
            "trainable_parameters": sum(p.numel() for p in self.parameters() if p.requires_grad),
            "stored_parameters": sum(t.numel() for t in self.mode.stored_state(self.branch.layers).values())
            + sum(t.numel() for t in self.head.state_dict().values()),
        }

    def save(self, directory: Path) -> dict[str, str]:
        """Write ``branch.safetensors`` and ``head.safetensors``; return their names."""
        files = {"branch": "branch.safetensors", "head": "head.safetensors"}
        save_tensors(directory / files["branch"], self.mode.stored_state(self.branch.layers))
        save_tensors(directory / files["head"], self.head.state_dict())
        return files

    @classmethod
    def load(cls, directory: Path, description: dict[str, Any], layers: list[nn.Module], config: object) -> TaskModel:
        """Rebuild from :meth:`describe` output; ``layers`` are fresh copies to load weights into."""
        head = head_type(description["type"])(**description["head"])
        task = cls(head, layers, config, description.get("pooling", "mean"), branch_mode(description.get("branch")))
        if layers:
            task.mode.load_state(task.branch.layers, load_tensors(directory / "branch.safetensors"))
        head.load_state_dict(load_tensors(directory / "head.safetensors"))
        return task.eval()
