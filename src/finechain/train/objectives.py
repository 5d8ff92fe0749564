"""Training objectives: what a step minimises. The default is the head's own loss; other strategies (distillation
from a teacher's outputs, adversarial steps, contrastive few-shot tuning) are objectives too, on the same loop."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import ClassVar, Protocol

import torch

from finechain.model.losses import PAIR_TARGETS, SOFT_LOSSES, pair_loss
from finechain.model.task import TaskModel
from finechain.spec import TrainingConfig


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

    Hidden-state distillation (``hidden_weight`` > 0, with ``teacher_states``): plus ``hidden_weight`` times the mean
    squared gap between the trunk states the tail reads (the student trunk's output) and ``teacher_states(indices)``,
    the teacher trunk's output for the batch's examples padded alike, over the real tokens.

    Example:
        >>> objective = Distillation(torch.zeros(4, 2), labelled=4)
        >>> objective.temperature, objective.hard_weight, objective.hidden_weight
        (2.0, 0.5, 0.0)
    """

    graph_safe: ClassVar[bool] = False  # picks the labelled rows of each batch on the host

    def __init__(
        self,
        teacher: torch.Tensor,
        labelled: int,
        temperature: float = 2.0,
        hard_weight: float = 0.5,
        hidden_weight: float = 0.0,
        teacher_states: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if hidden_weight and teacher_states is None:
            raise ValueError("hidden_weight needs teacher_states: the teacher trunk's output for a batch's examples")
        self.teacher, self.labelled, self.temperature, self.hard_weight = teacher, labelled, temperature, hard_weight
        self.hidden_weight, self.teacher_states = hidden_weight, teacher_states

    def loss(self, task: TaskModel, inputs: StepInputs) -> torch.Tensor:
        """Soft loss against the teacher, plus the weighted gold loss of the batch's labelled rows."""
        logits = task(inputs.states, inputs.mask)
        teacher = self.teacher[inputs.indices.to(self.teacher.device)].to(logits.device)
        if teacher.dim() == 3:  # token-level: as wide as this batch
            teacher = teacher[:, : logits.shape[1]]
        loss = SOFT_LOSSES.get(task.head.loss_name)(logits, teacher, inputs.mask, self.temperature)
        if self.hard_weight:
            rows = inputs.indices < self.labelled
            if bool(rows.any()):
                loss = loss + self.hard_weight * task.loss(logits[rows], inputs.targets[rows])
        if self.hidden_weight and self.teacher_states is not None:
            student = inputs.states[-1] if isinstance(inputs.states, list) else inputs.states
            real = inputs.mask.bool()
            target = self.teacher_states(inputs.indices).to(student.device)
            loss = loss + self.hidden_weight * torch.nn.functional.mse_loss(student[real].float(), target[real].float())
        return loss


def _per_example_norm(x: torch.Tensor) -> torch.Tensor:
    """The L2 norm of each example's ``[tokens, hidden]`` block, shaped to broadcast over it."""
    return x.float().flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1))).to(x.dtype)


class Adversarial:
    """Adversarial training on the trunk states a tail reads (the cached input of a frozen-trunk task, its embeddings'
    counterpart): the ``base`` objective's loss plus its loss on states pushed the way that raises it most.

    ``steps=1`` is FGM (Miyato et al. 2017): one step along the normalised gradient. More steps are PGD (Madry et al.
    2018): ``steps`` ascent steps of ``2.5 * epsilon / steps``, each projected back into the ball. The radius is
    ``epsilon`` times each example's state norm, so one setting fits any backbone and depth. Padding positions get no
    push (they have no gradient: attention and pooling mask them).

    Example:
        >>> objective = Adversarial(HeadLoss(), epsilon=0.05, steps=3)
        >>> objective.steps, objective.graph_safe
        (3, False)
    """

    graph_safe: ClassVar[bool] = False  # a gradient inside the step: kept out of CUDA graphs

    def __init__(self, base: Objective, epsilon: float = 0.05, steps: int = 1) -> None:
        self.base, self.epsilon, self.steps = base, epsilon, steps

    def moved(self, inputs: StepInputs, delta: torch.Tensor) -> StepInputs:
        """``inputs`` with ``delta`` added to the trunk states the tail reads (the last, with layer mixing)."""
        states = inputs.states
        if isinstance(states, torch.Tensor):
            return replace(inputs, states=states.detach() + delta)
        return replace(inputs, states=[*states[:-1], states[-1].detach() + delta])

    def perturbation(self, task: TaskModel, inputs: StepInputs) -> torch.Tensor:
        """The adversarial push of the batch's trunk states (detached)."""
        last = (inputs.states if isinstance(inputs.states, torch.Tensor) else inputs.states[-1]).detach()
        radius = self.epsilon * _per_example_norm(last)
        step = radius if self.steps == 1 else 2.5 * radius / self.steps
        delta = torch.zeros_like(last)
        for _ in range(self.steps):
            delta.requires_grad_(True)
            (grad,) = torch.autograd.grad(self.base.loss(task, self.moved(inputs, delta)), delta)
            delta = delta.detach() + step * grad / _per_example_norm(grad)
            if self.steps > 1:  # project back into the ball
                delta = delta * (radius / _per_example_norm(delta)).clamp(max=1.0)
        return delta.detach()

    def loss(self, task: TaskModel, inputs: StepInputs) -> torch.Tensor:
        """Clean loss + loss at the adversarial states."""
        return self.base.loss(task, inputs) + self.base.loss(task, self.moved(inputs, self.perturbation(task, inputs)))


class Contrastive:
    """Few-shot contrastive tuning in the style of SetFit (Tunstall et al. 2022), on the same step as the head: the
    ``base`` objective (default: the head's loss) plus ``weight`` times :func:`~finechain.model.losses.pair_loss` of
    the batch's pooled branch outputs, so that texts with the same label end up close and others apart. Every pair
    of a batch counts (a batch of 32 gives 496 pairs from 32 branch passes; SetFit encodes both texts of each pair).

    Example:
        >>> objective = Contrastive(weight=1.0)
        >>> objective.weight, objective.graph_safe
        (1.0, True)
    """

    graph_safe: ClassVar[bool] = True  # fixed shapes, no host work

    def __init__(self, weight: float = 1.0, base: Objective | None = None) -> None:
        self.weight, self.base = weight, base

    def loss(self, task: TaskModel, inputs: StepInputs) -> torch.Tensor:
        """Base loss + ``weight`` x pair loss (with the head's loss as base, the branch runs once for both)."""
        hidden = task.features(inputs.states, inputs.mask)
        similar = PAIR_TARGETS.get(task.head.loss_name)(inputs.targets)
        pairs = pair_loss(task.head_layer.features(hidden, inputs.mask), similar)
        if self.base is None or isinstance(self.base, HeadLoss):
            weight = 1.0 if self.base is None else self.base.weight
            return weight * task.loss(task.head_layer(hidden, inputs.mask), inputs.targets) + self.weight * pairs
        return self.base.loss(task, inputs) + self.weight * pairs


def training_objective(cfg: TrainingConfig, base: Objective | None = None) -> Objective:
    """The objective ``cfg`` asks for around ``base`` (default: the head's loss): itself, with ``contrastive`` a
    :class:`Contrastive` around it, and with ``adversarial: fgm`` (one step) or ``pgd`` (``adversarial_steps``) an
    :class:`Adversarial` around that.

    Example:
        >>> type(training_objective(TrainingConfig(adversarial="pgd"))).__name__
        'Adversarial'
        >>> type(training_objective(TrainingConfig(contrastive=1.0))).__name__
        'Contrastive'
    """
    if cfg.contrastive:
        base = Contrastive(cfg.contrastive, base)
    base = base or HeadLoss()
    if cfg.adversarial == "none":
        return base
    return Adversarial(base, cfg.adversarial_epsilon, 1 if cfg.adversarial == "fgm" else cfg.adversarial_steps)
