"""A task tail: its own branch layers, an optional layer mix and its head's layer."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from finechain.branches import BranchMode, branch_mode
from finechain.heads import Head
from finechain.model.dropout import use_fast_dropout
from finechain.model.head_layer import HeadLayer
from finechain.model.layers import LayerStack
from finechain.model.losses import LOSSES
from finechain.model.mixing import LayerMix
from finechain.model.packing import Packing


class TaskModel(nn.Module):
    """Branch layers (copies of the backbone's upper layers), then the head's layer.

    ``head`` is the task's :class:`~finechain.heads.Head` (labels, options, decoding); ``head_layer`` its network
    layer; with the head option ``layer_mix`` the layer reads a learned mix of ``states`` layer outputs (every trunk
    state and every branch layer) instead of the last one.

    Example:
        >>> task = TaskModel(ClassificationHead(["neg", "pos"]), copy_layers(upper_layers), encoder.config)  # doctest: +SKIP
        >>> logits = task(trunk_states, attention_mask)  # doctest: +SKIP
    """

    def __init__(self, head: Head, layers: list[nn.Module], config: Any, mode: BranchMode | None = None, states: int = 0) -> None:
        super().__init__()
        self.branch = LayerStack(layers, config)
        self.mode = mode or branch_mode(None)
        self.mode.prepare(self.branch.layers)
        self.head = head
        self.head_layer = HeadLayer(
            config.hidden_size, head.output_size, head.options.dropout, head.pooling, head.feature_scale, head.learns_transitions
        )
        self.layer_mix = LayerMix(states) if head.options.layer_mix else None
        options = head.loss_options()
        weight = options.pop("weight", None)
        self._loss_options = options
        # per-label loss weights move with the module (not saved: they follow from the head's label counts)
        self.register_buffer("class_weight", None if weight is None else torch.tensor(weight, dtype=torch.float32), persistent=False)
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
        """The hidden states the head layer reads: the last branch layer's, or the layer mix.

        ``states`` is the trunk's last output, or the list of all trunk states (needed with layer mixing).
        """
        states = [states] if isinstance(states, torch.Tensor) else states
        if self.layer_mix is None:
            return self.branch(states[-1], attention_mask)[-1]
        return self.layer_mix([*states[:-1], *self.branch(states[-1], attention_mask, all_layers=True)])

    def forward(
        self, states: torch.Tensor | list[torch.Tensor], attention_mask: torch.Tensor, packing: Packing | None = None
    ) -> torch.Tensor:
        """Head outputs for the trunk's output (or all its states, see :meth:`features`). With ``packing`` the states
        are in its packed rows: the branch runs on them, and the head reads them unpacked."""
        if packing is None:
            return self.head_layer(self.features(states, attention_mask), attention_mask)
        return self.head_layer(packing.unpack(self.features(states, packing.mask)), attention_mask)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The head's training loss (named by :attr:`Head.loss_name`) of a batch."""
        options = {**self._loss_options, **self.head_layer.transition_scores()}
        if self.class_weight is not None:
            options["weight"] = self.class_weight
        return LOSSES.get(self.head.loss_name)(logits, targets, **options)

    def train(self, mode: bool = True) -> TaskModel:
        """Switch training mode; on the way to evaluation the head takes what decoding needs of its layer's trained
        tensors (a CRF's move scores), so that validation checks, predictions and saved configs use the current ones."""
        super().train(mode)
        if not mode:
            self._share_layer_state()
        return self

    def _share_layer_state(self) -> None:
        scores = self.head_layer.transition_scores()  # empty unless the layer learns a CRF's move scores
        if scores:
            self.head.take_layer_state({k: v.detach().float().cpu().numpy() for k, v in scores.items()})

    def head_state(self) -> dict[str, torch.Tensor]:
        """The head layer's tensors, plus the layer mix's (prefixed ``layer_mix.``) when there is one."""
        state = dict(self.head_layer.state_dict())
        if self.layer_mix is not None:
            state.update({f"layer_mix.{k}": v for k, v in self.layer_mix.state_dict().items()})
        return state

    def load_head_state(self, state: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`head_state`."""
        self.head_layer.load_state_dict({k: v for k, v in state.items() if not k.startswith("layer_mix.")})
        self._share_layer_state()
        if self.layer_mix is not None:
            self.layer_mix.load_state_dict({k.removeprefix("layer_mix."): v for k, v in state.items() if k.startswith("layer_mix.")})

    def branch_state(self) -> dict[str, torch.Tensor]:
        """The branch tensors this task stores (all layers for full tuning, only the adapters for LoRA)."""
        return self.mode.stored_state(self.branch.layers)

    def merge_adapters(self) -> bool:
        """Fold the branch's adapters into plain layers (peft's merge), for export and faster inference; the task then
        stores full layers. Returns whether there were adapters."""
        if not self.mode.merge(self.branch.layers):
            return False
        self.mode = branch_mode(None)  # plain layers now: stored and loaded whole
        return True

    def parameter_counts(self) -> dict[str, int]:
        """All, trainable and stored (saved with the task) parameter counts."""
        stored = sum(t.numel() for t in self.branch_state().values()) + sum(t.numel() for t in self.head_state().values())
        return {
            "parameters": sum(p.numel() for p in self.parameters()),
            "trainable_parameters": sum(p.numel() for p in self.parameters() if p.requires_grad),
            "stored_parameters": stored,
        }
