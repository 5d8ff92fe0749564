"""Joint multi-task fine-tuning of the shared trunk (MT-DNN style), then per-task refinement of each tail; both on
the one training loop (``finechain.train.loop``)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from finechain.data.batching import index_tensor, length_batches, pad_ids
from finechain.data.prepare import TaskData
from finechain.errors import DataError
from finechain.heads import head_type
from finechain.model.chain_model import ChainModel
from finechain.model.precision import autocast_context
from finechain.model.task import TaskModel
from finechain.spec import JointConfig, TaskSpec, TrainingConfig
from finechain.train.checkpoint import UNHASHED_SPEC, UNHASHED_TRAINING, Checkpointer, fingerprint, run_folder
from finechain.train.features import TrunkFeatures
from finechain.train.fit import (
    FitResult,
    fit_task,
    gradient_scaler,
    passes_per_epoch,
    resolve_training,
    tail_learning_rate,
    task_outputs,
    training_data,
)
from finechain.train.loop import Check, EarlyStopping, Evaluation, Hook, TrainingLoop
from finechain.train.objectives import HeadLoss, Objective, StepInputs, training_objective
from finechain.train.optim import build_optimizer, build_schedule
from finechain.train.progress import MetricsLog, Report, TrainProgress


@dataclass
class JointJob:
    """One task of a joint run: its spec, data, tail, selection metric, token ids and targets, and its objective
    (the weighted head loss, or another one such as distillation)."""

    spec: TaskSpec
    data: TaskData
    task: TaskModel
    metric: str
    ids: list[list[int]]
    targets: torch.Tensor
    val_ids: list[list[int]]
    val_targets: np.ndarray
    objective: Objective


@dataclass
class JointResult:
    """A joint run: how the trunk was tuned (for the manifest) and each task's :class:`FitResult` (tails not attached)."""

    trunk: dict[str, Any]
    results: dict[str, FitResult] = field(default_factory=dict)


def sampling_probabilities(sizes: list[int], temperature: float) -> torch.Tensor:
    """Task sampling: ``size ** (1 / temperature)``, normalised. 1 = proportional, large = uniform.

    Example:
        >>> [round(p, 3) for p in sampling_probabilities([100, 400], 1.0).tolist() + sampling_probabilities([100, 400], 1e9).tolist()]
        [0.2, 0.8, 0.5, 0.5]
    """
    raw = torch.tensor(sizes, dtype=torch.float64) ** (1.0 / temperature)
    return (raw / raw.sum()).float()


class JointStep:
    """One batch of one task with the trunk in the graph: token ids -> trunk (trained) -> the task's tail -> its
    weighted loss -> backward. Runs eagerly: the trunk's input shapes change with every batch and task."""

    def __init__(
        self, model: ChainModel, jobs: list[JointJob], precision: str, accumulation: int, scaler: torch.amp.GradScaler | None
    ) -> None:
        self.model, self.jobs, self.precision, self.accumulation, self.scaler = model, jobs, precision, accumulation, scaler

    def __call__(self, batch: tuple[int, list[int]]) -> torch.Tensor:
        """Run ``(job index, example indices)``; return the detached loss (no autograd graph outlives the step)."""
        k, indices = batch
        job, device = self.jobs[k], self.model.device
        input_ids, mask = (t.to(device) for t in pad_ids([job.ids[i] for i in indices], self.model.pad_id))
        index = index_tensor(indices, device)
        with autocast_context(device, self.precision):
            states = self.model.trunk_states(input_ids, mask, job.task.needs_trunk_states)
            given = states if job.task.needs_trunk_states else states[-1]
            loss = job.objective.loss(job.task, StepInputs(given, mask, job.targets[index], index)) / self.accumulation
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()  # accumulated batches may be of different tasks
        return loss.detach()

    def zero_grad(self, optimizer: torch.optim.Optimizer) -> None:
        """Drop the gradients after an optimizer step."""
        optimizer.zero_grad(set_to_none=True)


def _jobs(
    model: ChainModel, specs: list[TaskSpec], datas: dict[str, TaskData], training: TrainingConfig, joint: JointConfig
) -> list[JointJob]:
    jobs = []
    for spec in specs:
        head_cls = head_type(spec.type)
        data = training_data(datas[spec.name], spec, spec.training.apply(training), head_cls, model)
        if not len(data.validation):
            raise DataError(
                f"joint training selects the trunk on every task's validation data, and task '{spec.name}' has none: too few "
                "examples to cut a validation split (few-shot data)",
                file=str(data.train.file),
                fix=f"give '{spec.name}' a dev file, set min_validation: 0 on it, or train with sharing: frozen",
            )
        head = head_cls(options=spec.head)
        head.initialize(data.train.labels, data.labels)
        task = model.new_task(head, spec.branch)
        ids, words = model.encode(data.train.texts, with_words=head_cls.token_level)
        val_ids, val_words = model.encode(data.validation.texts, with_words=head_cls.token_level)
        targets = torch.from_numpy(head.training_targets(data.train.labels, words)).to(model.device)
        metric = spec.metric or head.selection_metric(data.train.labels)
        objective = training_objective(spec.training.apply(training), HeadLoss(joint.loss_weights.get(spec.name, 1.0)))
        jobs.append(JointJob(spec, data, task, metric, ids, targets, val_ids, head.targets(data.validation.labels, val_words), objective))
    return jobs


def _validation_outputs(model: ChainModel, job: JointJob, training: TrainingConfig) -> list[np.ndarray]:
    """The tail's validation outputs through the trunk as it is now (not cached: the trunk is changing)."""
    features = TrunkFeatures(
        model.trunk, job.val_ids, model.pad_id, cache="off", all_states=job.task.needs_trunk_states, precision=training.precision
    )
    return task_outputs(job.task, features, training.eval_batch_size, training.precision)


def fit_joint(
    model: ChainModel,
    specs: list[TaskSpec],
    datas: dict[str, TaskData],
    training: TrainingConfig,
    joint: JointConfig,
    *,
    run_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    hooks: Sequence[Hook] = (),
) -> JointResult:
    """Train the trunk's layers and every task's tail together, sampling one task per batch; then freeze the trunk and
    refine each tail on cached trunk states (its own epochs with early stopping, or ``joint.refine_epochs``).

    Validation is scored ``training.evaluations_per_epoch`` times an epoch; the weights of the check with the best
    mean score (each task's on a shared scale: ``Head.comparable_score``) are kept, and ``training.patience`` epochs
    without a better mean stop the joint phase early. Checkpoints are written to ``run_dir`` at every check and
    ``resume`` continues exactly; without ``run_dir`` they go to a temporary folder that is removed afterwards.
    ``hooks`` observe the joint phase.

    Example:
        >>> result = fit_joint(model, specs, datas, TrainingConfig(), JointConfig())  # doctest: +SKIP
        >>> result.results["intent"].validation["accuracy"]  # doctest: +SKIP
        0.93
    """
    with run_folder(run_dir, "finechain-joint-") as run_path:
        return _fit_joint(model, specs, datas, training, joint, run_path, resume, progress, hooks)


def _fit_joint(
    model: ChainModel,
    specs: list[TaskSpec],
    datas: dict[str, TaskData],
    training: TrainingConfig,
    joint: JointConfig,
    run_path: Path,
    resume: bool,
    progress: bool,
    hooks: Sequence[Hook],
) -> JointResult:
    torch.manual_seed(training.seed)
    jobs = _jobs(model, specs, datas, training, joint)
    trunk, best_epoch = train_jobs(model, jobs, training, joint, run_path, resume=resume, progress=progress, hooks=hooks)
    result = JointResult(trunk)
    for job in jobs:
        name = job.spec.name
        if joint.refine_epochs is None:  # the task's own epochs, early stopping and overrides; the best check is kept
            result.results[name] = fit_task(
                model, job.spec, training, data=job.data, run_dir=run_path / name, resume=resume, progress=progress, init=job.task
            )
        elif joint.refine_epochs:
            # a fixed short pass: refine_epochs wins over the task's own epochs/patience; its other overrides still apply
            refine = training.model_copy(update={"epochs": joint.refine_epochs, "patience": 0})
            spec = job.spec.model_copy(update={"training": job.spec.training.model_copy(update={"epochs": None, "patience": None})})
            result.results[name] = fit_task(
                model, spec, refine, data=job.data, run_dir=run_path / name, resume=resume, progress=progress, init=job.task
            )
        else:  # no refinement: the joint phase's tail, calibrated and scored on validation data
            result.results[name] = score_tail(model, job, training, best_epoch)
    return result


def score_tail(model: ChainModel, job: JointJob, training: TrainingConfig, best_epoch: float | None) -> FitResult:
    """A job's tail as the joint phase left it: calibrated (thresholds) and scored on its validation data.

    Example:
        >>> score_tail(model, job, TrainingConfig(), 2.0).validation["accuracy"]  # doctest: +SKIP
        0.91
    """
    validation: dict[str, Any] = {}
    if job.val_ids:  # (trained without validation data: nothing to calibrate or score on)
        outputs = _validation_outputs(model, job, training)
        job.task.head.calibrate(outputs, job.val_targets, job.metric)
        validation = job.task.head.score(outputs, job.val_targets)
    cfg = resolve_training(job.spec.training.apply(training), job.task)
    return FitResult(job.spec.name, job.metric, best_epoch, validation, None, 0.0, 0.0, tail=job.task.eval(), training=cfg)


def train_jobs(
    model: ChainModel,
    jobs: list[JointJob],
    training: TrainingConfig,
    joint: JointConfig,
    run_path: Path,
    *,
    resume: bool = False,
    progress: bool = True,
    hooks: Sequence[Hook] = (),
    identity: Sequence[Any] = (),
    label: str = "joint",
) -> tuple[dict[str, Any], float | None]:
    """The joint phase: the trunk's layers and every job's tail trained together on the one loop, one sampled task
    per batch, each batch's loss from its job's objective; the best check's weights are kept and the trunk is frozen
    again. Returns the trunk's manifest entry (settings, best epoch, seconds) and the best epoch. ``identity`` adds to
    what a resumed run must match (a distillation's teacher, say); checkpoints go to ``run_path / label``.

    Example:
        >>> trunk, best_epoch = train_jobs(model, jobs, TrainingConfig(), JointConfig(), Path("runs"))  # doctest: +SKIP
    """
    device = model.device
    modules = nn.ModuleDict({"trunk": model.trunk.stack, "tasks": nn.ModuleDict({job.spec.name: job.task for job in jobs})})
    model.trunk.stack.requires_grad_(True)

    per_task = {job.spec.name: resolve_training(job.spec.training.apply(training), job.task) for job in jobs}  # overrides apply to tails
    tasks = {job.spec.name: job.task for job in jobs}

    def learning_rate(name: str) -> float:
        if name.startswith("trunk."):
            return joint.trunk_learning_rate
        task = name.split(".")[1]
        return tail_learning_rate(per_task[task], len(tasks[task].branch.layers))(name)

    probs = sampling_probabilities([len(job.ids) for job in jobs], joint.temperature)
    accumulation = training.gradient_accumulation
    batches_per_pass = sum(math.ceil(len(job.ids) / training.batch_size) for job in jobs)
    epochs = joint.epochs or training.epochs
    passes = passes_per_epoch(math.ceil(batches_per_pass / accumulation), epochs, training.min_steps)  # small data: more steps
    batches_per_epoch = batches_per_pass * passes
    total = math.ceil(batches_per_epoch / accumulation) * epochs  # optimizer steps
    optimizer = build_optimizer(training, modules, learning_rate, device)
    scheduler = build_schedule(training, optimizer, total)
    scaler = gradient_scaler(device, training.precision)
    settings = fingerprint(
        [job.spec.model_dump(mode="json", exclude=UNHASHED_SPEC) for job in jobs],
        training.model_dump(exclude=UNHASHED_TRAINING),
        joint.model_dump(),
        model.backbone.sha256,
        model.split,
        [job.data.digest() for job in jobs],
        *([{"passes": passes}] if passes > 1 else []),
        *identity,
    )

    def epoch_batches(generator: torch.Generator) -> list[tuple[int, list[int]]]:
        """A sampled task per batch; each task's batches are drawn from its own shuffled, length-bucketed queue."""
        queues: list[list[list[int]]] = [[] for _ in jobs]
        batches = []
        for k in torch.multinomial(probs, batches_per_epoch, replacement=True, generator=generator).tolist():
            if not queues[k]:
                queues[k] = length_batches([len(x) for x in jobs[k].ids], training.batch_size, shuffle=True, generator=generator)
            batches.append((k, queues[k].pop()))
        return batches

    scored = [job for job in jobs if job.val_ids]  # a task trained without validation data (few examples) has no score

    def evaluate() -> Evaluation:
        """Every task's validation score through the current trunk; the selection value is the mean of their
        :meth:`~finechain.heads.base.Head.comparable_score` (with no validation data at all, each check beats the one
        before: the last weights are kept)."""
        if not scored:
            return Evaluation(float(loop.state.step))
        model.trunk.eval()
        scores = {
            job.spec.name: float(job.task.head.score(_validation_outputs(model, job, training), job.val_targets)[job.metric])
            for job in scored
        }
        mean = sum(job.task.head.comparable_score(job.metric, v) for job, v in zip(scored, scores.values(), strict=True)) / len(scored)
        return Evaluation(mean, scores)

    def record(check: Check) -> dict[str, Any]:
        return {
            "epoch": check.epoch,
            "passes": passes,
            "step": check.step,
            "validation": check.evaluation.scores,
            "mean": check.evaluation.value,
            "best": check.best,
        }

    started = time.perf_counter()
    step = JointStep(model, jobs, training.precision, accumulation, scaler)
    with TrainProgress(label, total=batches_per_epoch * epochs, enabled=progress) as bar:
        report = Report(
            bar, MetricsLog(run_path / label / "metrics.jsonl", fresh=not resume), record, lambda c: f"val mean {c.evaluation.value:.4f}"
        )
        loop = TrainingLoop(
            modules,
            step,
            epoch_batches,
            evaluate,
            metric="mean",
            epochs=epochs,
            batches_per_epoch=batches_per_epoch,
            optimizer=optimizer,
            scheduler=scheduler,
            generator=torch.Generator().manual_seed(training.seed),
            scaler=scaler,
            accumulation=accumulation,
            max_grad_norm=training.max_grad_norm,
            evaluations_per_epoch=training.evaluations_per_epoch,
            batch_size=lambda batch: len(batch[1]),
            checkpointer=Checkpointer(run_path / label, settings),
            hooks=[report, EarlyStopping(training.patience), *hooks],
            ema_decay=training.ema_decay,
        )
        if resume:
            loop.resume()  # (the report hook then moves the bar there and trims the log)
        for _ in loop.run():
            pass

    modules.load_state_dict(loop.best_weights)
    # Every step returned a detached loss, so no autograd graph of the joint phase is left: a graph kept alive (as the
    # last batch's loss once was) holds its tails' gradient-accumulation nodes, bound to the stream they were made on,
    # and the refinement's CUDA-graph capture then failed for that task.
    model.trunk.requires_grad_(False)
    model.trunk.eval()
    model.trunk_tuned = True
    trunk = {
        "sharing": "joint",
        **joint.model_dump(),
        "best_epoch": loop.state.best_epoch,
        "seconds": round(time.perf_counter() - started + loop.resumed_seconds, 3),  # a resumed run counts its earlier epochs
    }
    return trunk, loop.state.best_epoch
