"""Distillation: a student chain (``finechain.model.student``) trained on its teacher's outputs, every task at once,
on the joint phase of the one training loop with a :class:`~finechain.train.objectives.Distillation` objective.

Each task learns from its training texts (the teacher's soft outputs, plus a share of the gold labels) and from any
unlabelled texts given (the teacher's outputs only). Validation uses the task's gold validation split, so the
student kept is the one that scores best, not the one closest to the teacher.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from finechain.data.batching import pad_ids
from finechain.data.prepare import TaskData
from finechain.errors import FinechainError
from finechain.heads import head_type
from finechain.model.chain_model import ChainModel
from finechain.model.losses import IGNORE
from finechain.model.precision import autocast_context
from finechain.spec import JointConfig, TaskSpec, TrainingConfig
from finechain.train.checkpoint import run_folder
from finechain.train.features import TrunkFeatures
from finechain.train.fit import FitResult, task_outputs
from finechain.train.joint import JointJob, score_tail, train_jobs
from finechain.train.loop import Hook
from finechain.train.objectives import Distillation


def teacher_outputs(teacher: ChainModel, task: str, ids: list[list[int]], training: TrainingConfig) -> torch.Tensor:
    """The teacher's outputs for token-id sequences: ``[texts, labels]``, or ``[texts, tokens, labels]`` (zero-padded)
    for a token-level task.

    Example:
        >>> teacher_outputs(teacher, "sentiment", ids, TrainingConfig()).shape  # doctest: +SKIP
        torch.Size([2000, 2])
    """
    tail = teacher.tasks[task]
    features = TrunkFeatures(
        teacher.trunk, ids, teacher.pad_id, cache="off", all_states=tail.needs_trunk_states, precision=training.precision
    )
    rows = task_outputs(tail, features, training.eval_batch_size, training.precision)
    if not tail.head.token_level:
        return torch.from_numpy(np.stack(rows))
    width = max(len(r) for r in rows)
    out = np.zeros((len(rows), width, rows[0].shape[-1]), dtype=np.float32)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return torch.from_numpy(out)


def teacher_trunk(teacher: ChainModel, ids: list[list[int]], precision: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function giving the teacher trunk's output for examples of ``ids`` (by index), padded as a training batch of
    them is: the targets of hidden-state distillation, computed when a batch asks (no gradient, nothing stored).

    Example:
        >>> teacher_trunk(teacher, ids, "auto")(torch.tensor([0, 1])).shape  # doctest: +SKIP
        torch.Size([2, 12, 384])
    """

    def states(indices: torch.Tensor) -> torch.Tensor:
        input_ids, mask = (t.to(teacher.device) for t in pad_ids([ids[i] for i in indices.tolist()], teacher.pad_id))
        with torch.no_grad(), autocast_context(teacher.device, precision):  # no_grad, not inference_mode: a loss target
            return teacher.trunk_states(input_ids, mask)[-1]

    return states


def _padded_targets(targets: np.ndarray, extra: int, width: int) -> torch.Tensor:
    """Gold targets with ``extra`` rows for unlabelled texts (never read: the objective skips them), token-level
    targets widened to ``width`` tokens."""
    fill = IGNORE if np.issubdtype(targets.dtype, np.integer) else 0.0
    if targets.ndim == 2 and np.issubdtype(targets.dtype, np.integer) and targets.shape[1] < width:
        targets = np.concatenate([targets, np.full((len(targets), width - targets.shape[1]), fill, dtype=targets.dtype)], axis=1)
    rows = np.full((extra, *targets.shape[1:]), fill, dtype=targets.dtype)
    return torch.from_numpy(np.concatenate([targets, rows]))


def distill(
    teacher: ChainModel,
    student: ChainModel,
    specs: Sequence[TaskSpec],
    datas: dict[str, TaskData],
    training: TrainingConfig,
    *,
    texts: Sequence[str] = (),
    epochs: int = 3,
    temperature: float = 2.0,
    hard_weight: float = 0.5,
    hidden_weight: float = 0.0,
    trunk_learning_rate: float = 5e-5,
    run_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    hooks: Sequence[Hook] = (),
) -> tuple[dict[str, Any], dict[str, FitResult]]:
    """Train ``student`` (its trunk and every task's tail) on ``teacher``'s outputs over each task's training texts
    and the unlabelled ``texts``; keep the check with the best mean validation score. With ``hidden_weight`` the
    student's trunk also learns the teacher trunk's output (hidden-state distillation, see :class:`Distillation`).
    Returns the trunk's entry (what was done, for the manifest) and each task's :class:`FitResult` (tails attached to
    ``student`` already).

    Example:
        >>> trunk, results = distill(teacher, student_of(teacher, 3, 1), specs, datas, TrainingConfig())  # doctest: +SKIP
        >>> results["sentiment"].validation["accuracy"]  # doctest: +SKIP
        0.90
    """
    for name, value, positive, fix in (  # inf and nan too: they would only show as a diverged run much later
        ("temperature", temperature, True, "use a value such as 2"),
        ("hard_weight", hard_weight, False, "use 0 (soft labels only) or a value such as 0.5"),
        ("hidden_weight", hidden_weight, False, "use 0 (off) or a value such as 1"),
    ):
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise FinechainError(f"{name} {value} is not a finite number {'above' if positive else 'of at least'} 0", field=name, fix=fix)
    torch.manual_seed(training.seed)
    teacher.eval()
    extra_ids, _ = student.encode(list(texts)) if texts else ([], None)
    jobs = []
    for spec in specs:
        data, task = datas[spec.name], student.tasks[spec.name]
        head_cls = head_type(spec.type)
        ids, words = student.encode(data.train.texts, with_words=head_cls.token_level)
        val_ids, val_words = student.encode(data.validation.texts, with_words=head_cls.token_level)
        all_ids = ids + extra_ids
        soft = teacher_outputs(teacher, spec.name, all_ids, training).to(student.device)
        gold = task.head.training_targets(data.train.labels, words)
        targets = _padded_targets(gold, len(extra_ids), soft.shape[1] if soft.dim() == 3 else 0).to(student.device)
        hidden = teacher_trunk(teacher, all_ids, training.precision) if hidden_weight else None
        objective = Distillation(soft, len(ids), temperature, hard_weight, hidden_weight, hidden)
        metric = spec.metric or task.head.selection_metric(data.train.labels)
        val_targets = task.head.targets(data.validation.labels, val_words)
        jobs.append(JointJob(spec, data, task.train(), metric, all_ids, targets, val_ids, val_targets, objective))
    joint = JointConfig(epochs=epochs, trunk_learning_rate=trunk_learning_rate, refine_epochs=0)
    identity = [
        {"teacher": [teacher.layer_ids, sorted(teacher.tasks)], "student": student.layer_ids}
        | ({"ffn_width": student.ffn_width} if student.ffn_width else {})
        | ({"attention_heads": student.attention_heads} if student.attention_heads else {})
        | ({"branches": (student.compression or {})["branches"]} if "branches" in (student.compression or {}) else {}),
        {"texts": hashlib.sha256("\n".join(texts).encode()).hexdigest(), "temperature": temperature, "hard_weight": hard_weight}
        | ({"hidden_weight": hidden_weight} if hidden_weight else {}),  # (a run from before the option still resumes)
    ]
    with run_folder(run_dir, "finechain-distill-") as run_path:
        trunk, best_epoch = train_jobs(
            student, jobs, training, joint, run_path, resume=resume, progress=progress, hooks=hooks, identity=identity, label="distill"
        )
    results = {job.spec.name: score_tail(student, job, training, best_epoch) for job in jobs}
    for name, result in results.items():
        student.attach(name, result.tail)
    done = {"temperature": temperature, "hard_weight": hard_weight, "hidden_weight": hidden_weight, "unlabelled_texts": len(texts)}
    trunk |= {"distillation": done}
    return trunk, results
