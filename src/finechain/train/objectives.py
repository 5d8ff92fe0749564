"""Training objectives: what a step minimises. The default is the head's own loss; other strategies (distillation
from a teacher's outputs, adversarial steps, contrastive few-shot tuning) are objectives too, on the same loop."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch

from finechain.model.task import TaskModel


@dataclass
class StepInputs:
    """What a step hands an objective: the trunk states of a batch (the last, or all with layer mixing), its
    attention mask, the batch's targets, and the batch's example indices (to look up per-example extras)."""

    states: torch.Tensor | list[torch.Tensor]
    mask: torch.Tensor
    targets: torch.Tensor
    indices: torch.Tensor


class Objective(Protocol):
    """A training objective: the loss of one batch for a task's tail."""

    graph_safe: ClassVar[bool]  # fixed shapes, no host work: the step may record it in a CUDA graph

    def loss(self, task: TaskModel, inputs: StepInputs) -> torch.Tensor: ...


class HeadLoss:
    """The head's own loss on the tail's outputs (cross-entropy, BCE, MSE, token cross-entropy), times ``weight``.

    Example:
        >>> HeadLoss(weight=2.0).weight
        2.0
    """

    graph_safe: ClassVar[bool] = True

    def __init__(self, weight: float = 1.0) -> None:
        self.weight = weight

    def loss(self, task: TaskModel, inputs: StepInputs) -> torch.Tensor:
        """``weight * head loss`` of the batch."""
        loss = task.loss(task(inputs.states, inputs.mask), inputs.targets)
        return loss * self.weight if self.weight != 1.0 else loss
