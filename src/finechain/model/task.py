"""A task tail: its own branch layers, pooling and head. Saves and loads itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from finechain.io import load_tensors, save_tensors
from finechain.model.branches import BranchMode, branch_mode
from finechain.model.dropout import use_fast_dropout
from finechain.model.heads import Head, head_type
from finechain.model.layers import LayerStack
from finechain.model.mixing import LayerMix
from finechain.model.pooling import Pooling, pool


class TaskModel(nn.Module):
    """Branch layers (copies of the backbone's upper layers) followed by pooling and a head.

    Example:
        >>> task = TaskModel(ClassificationHead(384, ["neg", "pos"]), branch_layers(encoder, 4), encoder.config)  # doctest: +SKIP
        >>> logits = task(trunk_hidden, attention_mask)  # doctest: +SKIP
    """

    def __init__(
        self,
        head: Head,
        layers: list[nn.Module],
        config: object,
        pooling: Pooling = "mean",
        mode: BranchMode | None = None,
        mix_layers: int = 0,
    ) -> None:
        super().__init__()
        self.branch = LayerStack(layers, config)
        self.mode = mode or branch_mode(None)
        self.mode.prepare(self.branch.layers)
        self.head = head
        self.pooling: Pooling = pooling
        # mix_layers > 0: the head reads a learned mix of that many states (all trunk states + every branch layer)
        self.layer_mix = LayerMix(mix_layers) if mix_layers else None
        use_fast_dropout(self)  # the branch's, the head's and any adapter's dropout: cheaper masks on CPU

    @property
    def needs_trunk_states(self) -> bool:
        """True when the task reads every trunk layer's output, not only the last."""
        return self.layer_mix is not None

    @property
    def type_name(self) -> str:
        """The head's task type."""
        return self.head.type_name

    def features(self, states: torch.Tensor | list[torch.Tensor], attention_mask: torch.Tensor) -> torch.Tensor:
        """What the head reads: pooled vectors, or token states for token-level heads.

        ``states`` is the trunk's last output, or the list of all trunk states (needed with layer mixing).
        """
        states = [states] if isinstance(states, torch.Tensor) else states
        if self.layer_mix is None:
            hidden = self.branch(states[-1], attention_mask)[-1]
        else:
            hidden = self.layer_mix([*states[:-1], *self.branch(states[-1], attention_mask, all_layers=True)])
        return hidden if self.head.level == "token" else pool(hidden, attention_mask, self.pooling)

    def forward(self, states: torch.Tensor | list[torch.Tensor], attention_mask: torch.Tensor) -> torch.Tensor:
        """Head outputs for the trunk's output (or all its states, see :meth:`features`)."""
        return self.head(self.features(states, attention_mask))

    def describe(self) -> dict[str, Any]:
        """JSON description stored in the manifest."""
        return {
            "type": self.type_name,
            "pooling": self.pooling,
            "branch_layers": len(self.branch.layers),
            "branch": self.mode.config(),
            "head": self.head.config(),
            "layer_mix": self.layer_mix.layer_weights() if self.layer_mix is not None else None,
            "parameters": sum(p.numel() for p in self.parameters()),
            "trainable_parameters": sum(p.numel() for p in self.parameters() if p.requires_grad),
            "stored_parameters": sum(t.numel() for t in self.mode.stored_state(self.branch.layers).values())
            + sum(t.numel() for t in self._head_state().values()),
        }

    def _head_state(self) -> dict[str, torch.Tensor]:
        """The head's tensors, plus the layer mix's (prefixed ``layer_mix.``) when there is one."""
        state = dict(self.head.state_dict())
        if self.layer_mix is not None:
            state.update({f"layer_mix.{k}": v for k, v in self.layer_mix.state_dict().items()})
        return state

    def save(self, directory: Path) -> dict[str, str]:
        """Write ``branch.safetensors`` and ``head.safetensors``; return their names."""
        files = {"branch": "branch.safetensors", "head": "head.safetensors"}
        save_tensors(directory / files["branch"], self.mode.stored_state(self.branch.layers))
        save_tensors(directory / files["head"], self._head_state())
        return files

    @classmethod
    def load(cls, directory: Path, description: dict[str, Any], layers: list[nn.Module], config: object) -> TaskModel:
        """Rebuild from :meth:`describe` output; ``layers`` are fresh copies to load weights into."""
        head = head_type(description["type"])(**description["head"])
        mix = len(description["layer_mix"]) if description.get("layer_mix") else 0
        task = cls(head, layers, config, description.get("pooling", "mean"), branch_mode(description.get("branch")), mix)
        if layers:
            task.mode.load_state(task.branch.layers, load_tensors(directory / "branch.safetensors"))
        tensors = load_tensors(directory / "head.safetensors")
        head.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("layer_mix.")})
        if task.layer_mix is not None:
            task.layer_mix.load_state_dict({k.removeprefix("layer_mix."): v for k, v in tensors.items() if k.startswith("layer_mix.")})
        return task.eval()
