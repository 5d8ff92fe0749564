"""Training objectives: what a step minimises. The default is the head's own loss; other strategies (distillation
from a teacher's outputs, adversarial steps, contrastive few-shot tuning) are objectives too, on the same loop."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch

from finechain.model.losses import SOFT_LOSSES
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


class Distillation:
    """Learn a teacher's outputs: the head's soft loss (:data:`~finechain.model.losses.SOFT_LOSSES`) against the
    teacher's outputs of each example, plus ``hard_weight`` times the head's own loss on the examples that have gold
    labels (the first ``labelled``; the rest are unlabelled texts the teacher labelled).

    ``teacher`` holds the teacher's outputs of every example: ``[examples, labels]``, or for token-level heads
    ``[examples, tokens, labels]`` padded to the longest.

    Example:
        >>> objective = Distillation(torch.zeros(4, 2), labelled=4)
        >>> objective.temperature, objective.hard_weight
        (2.0, 0.5)
    """

    graph_safe: ClassVar[bool] = False  # picks the labelled rows of each batch on the host

    def __init__(self, teacher: torch.Tensor, labelled: int, temperature: float = 2.0, hard_weight: float = 0.5) -> None:
        self.teacher, self.labelled, self.temperature, self.hard_weight = teacher, labelled, temperature, hard_weight

    def loss(self, task: TaskModel, inputs: StepInputs) -> torch.Tensor:
        """Soft loss against the teacher, plus the weighted gold loss of the batch's labelled rows."""
        logits = task(inputs.states, inputs.mask)
        teacher = self.teacher[inputs.indices.to(self.teacher.device)].to(logits.device)
        if teacher.dim() == 3:  # token-level: as wide as this batch
            teacher = teacher[:, : logits.shape[1]]
        loss = SOFT_LOSSES.get(task.head.loss)(logits, teacher, inputs.mask, self.temperature)
        if self.hard_weight:
            rows = inputs.indices < self.labelled
            if bool(rows.any()):
                loss = loss + self.hard_weight * task.loss(logits[rows], inputs.targets[rows])
        return loss
