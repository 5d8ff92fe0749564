"""Joint multi-task fine-tuning of the shared trunk (MT-DNN style), then optional per-task refinement."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import get_linear_schedule_with_warmup

from finechain.data.batching import length_batches, pad_ids
from finechain.data.prepare import TaskData
from finechain.evaluate.metrics import LOWER_IS_BETTER
from finechain.model.heads import head_type
from finechain.model.precision import autocast_context
from finechain.model.task import TaskModel
from finechain.spec import JointConfig, TaskSpec, TrainingConfig
from finechain.train.checkpoint import UNHASHED_SPEC, UNHASHED_TRAINING, Checkpointer, TrainState, fingerprint, run_folder
from finechain.train.features import TrunkFeatures
from finechain.train.progress import MetricsLog, TrainProgress
from finechain.train.trainer import (
    FitResult,
    adamw,
    attach_scored,
    check_points,
    epoch_progress,
    fit_task,
    passes_per_epoch,
    resolve_training,
    tail_learning_rate,
    task_outputs,
)

if TYPE_CHECKING:
    from finechain.model.chain import Chain


@dataclass
class _Job:
    spec: TaskSpec
    data: TaskData
    task: TaskModel
    metric: str
    ids: list[list[int]]
    targets: torch.Tensor
    val_ids: list[list[int]]
    val_targets: torch.Tensor
    weight: float


def sampling_probabilities(sizes: list[int], temperature: float) -> torch.Tensor:
    """Task sampling: ``size ** (1 / temperature)``, normalised. 1 = proportional, large = uniform.

    Example:
        >>> [round(p, 3) for p in sampling_probabilities([100, 400], 1.0).tolist() + sampling_probabilities([100, 400], 1e9).tolist()]
        [0.2, 0.8, 0.5, 0.5]
    """
    raw = torch.tensor(sizes, dtype=torch.float64) ** (1.0 / temperature)
    return (raw / raw.sum()).float()


def _jobs(chain: Chain, specs: list[TaskSpec], datas: dict[str, TaskData], training: TrainingConfig, joint: JointConfig) -> list[_Job]:
    jobs = []
    for spec in specs:
        head_cls = head_type(spec.type)
        data = datas[spec.name]
        task = chain.new_task(head_cls, data.labels, spec.pooling, spec.dropout, spec.branch.model_dump(), spec.layer_mix)
        if hasattr(task.head, "fit_scale"):
            task.head.fit_scale(data.train.labels)
        token_level = head_cls.level == "token"
        ids, enc = chain.encode(data.train.texts, with_words=token_level)
        val_ids, val_enc = chain.encode(data.validation.texts, with_words=token_level)
        jobs.append(
            _Job(
                spec,
                data,
                task,
                spec.metric or head_cls.default_metric,
                ids,
                task.head.targets(data.train.labels, enc).to(chain.device),
                val_ids,
                task.head.targets(data.validation.labels, val_enc),
                joint.loss_weights.get(spec.name, 1.0),
            )
        )
    return jobs


def _validate(chain: Chain, job: _Job, training: TrainingConfig) -> dict[str, Any]:
    pad = chain.tokenizer.pad_token_id or 0
    features = TrunkFeatures(
        chain.trunk, job.val_ids, pad, cache="off", all_states=job.task.needs_trunk_states, precision=training.precision
    )
    return job.task.head.score(task_outputs(job.task, features, training.eval_batch_size, training.precision), job.val_targets)


def fit_joint(
    chain: Chain,
    specs: list[TaskSpec],
    datas: dict[str, TaskData],
    training: TrainingConfig,
    joint: JointConfig,
    *,
    run_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, FitResult]:
    """Train the trunk's layers and every task tail together, sampling one task per batch; then freeze the
    trunk and refine each tail on cached trunk outputs (its own epochs with early stopping, or ``joint.refine_epochs``).

    Validation is scored ``training.evaluations_per_epoch`` times an epoch; the weights of the check with the best
    mean score (sign-adjusted per metric) are kept. Checkpoints are
    written to ``run_dir`` after every epoch and ``resume`` continues exactly; without ``run_dir`` they go
    to a temporary folder that is removed afterwards.

    Example:
        >>> results = fit_joint(chain, specs, datas, TrainingConfig(), JointConfig())  # doctest: +SKIP
    """
    with run_folder(run_dir, "finechain-joint-") as run_path:
        return _fit_joint(chain, specs, datas, training, joint, run_path, resume, progress)


def _fit_joint(
    chain: Chain,
    specs: list[TaskSpec],
    datas: dict[str, TaskData],
    training: TrainingConfig,
    joint: JointConfig,
    run_path: Path,
    resume: bool,
    progress: bool,
) -> dict[str, FitResult]:
    torch.manual_seed(training.seed)
    device = chain.device
    jobs = _jobs(chain, specs, datas, training, joint)
    modules = nn.ModuleDict({"trunk": chain.trunk.stack, "tasks": nn.ModuleDict({job.spec.name: job.task for job in jobs})})
    chain.trunk.stack.requires_grad_(True)

    per_task = {job.spec.name: resolve_training(job.spec.training.apply(training), job.task) for job in jobs}  # overrides apply to tails

    def learning_rate(name: str) -> float:
        if name.startswith("trunk."):
            return joint.trunk_learning_rate
        return tail_learning_rate(per_task[name.split(".")[1]])(name)

    probs = sampling_probabilities([len(job.ids) for job in jobs], joint.temperature)
    accumulation = training.gradient_accumulation
    batches_per_pass = sum(math.ceil(len(job.ids) / training.batch_size) for job in jobs)
    epochs = joint.epochs or training.epochs
    passes = passes_per_epoch(math.ceil(batches_per_pass / accumulation), epochs, training.min_steps)  # small data: more steps
    batches_per_epoch = batches_per_pass * passes
    total = math.ceil(batches_per_epoch / accumulation) * epochs  # optimizer steps
    optimizer = adamw(modules, learning_rate, training.weight_decay, device)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(training.warmup_fraction * total), total)
    generator = torch.Generator().manual_seed(training.seed)
    settings = fingerprint(
        [s.model_dump(mode="json", exclude=UNHASHED_SPEC) for s in specs],
        training.model_dump(exclude=UNHASHED_TRAINING),
        joint.model_dump(),
        chain.backbone_ref.sha256,
        chain.split,
        [datas[s.name].digest() for s in specs],
        *([{"passes": passes}] if passes > 1 else []),
    )
    checkpointer = Checkpointer(run_path / "joint", settings)
    state, best = TrainState(), {k: v.detach().clone() for k, v in modules.state_dict().items()}
    if resume and checkpointer.exists():
        state, best = checkpointer.load(modules, optimizer, scheduler, generator)
    log = MetricsLog(run_path / "joint" / "metrics.jsonl", fresh=not resume)
    pad = chain.tokenizer.pad_token_id or 0
    started = time.perf_counter()

    points = check_points(batches_per_epoch, training.evaluations_per_epoch, accumulation)

    def check(progress: float) -> None:
        """Score every task's validation split; keep the trunk and tails if their mean is the best so far."""
        nonlocal best
        chain.trunk.eval()
        scores = {job.spec.name: float(_validate(chain, job, training)[job.metric]) for job in jobs}
        modules.train()
        mean = sum(-v if job.metric in LOWER_IS_BETTER else v for job, v in zip(jobs, scores.values(), strict=True)) / len(jobs)
        if state.improves("mean", mean, progress):
            best = {k: v.detach().clone() for k, v in modules.state_dict().items()}
        log.write({"epoch": progress, "passes": passes, "step": state.step, "validation": scores, "mean": mean, "best": state.best})
        bar.show_metric(f"val mean {mean:.4f}")

    with TrainProgress("joint", total=batches_per_epoch * epochs, enabled=progress, completed=batches_per_epoch * state.epoch) as bar:
        while state.epoch < epochs:
            modules.train()
            queues = [[] for _ in jobs]
            choices = torch.multinomial(probs, batches_per_epoch, replacement=True, generator=generator).tolist()
            for n, k in enumerate(choices, start=1):
                job = jobs[k]
                if not queues[k]:
                    queues[k] = length_batches([len(x) for x in job.ids], training.batch_size, shuffle=True, generator=generator)
                batch = queues[k].pop()
                input_ids, mask = (t.to(device) for t in pad_ids([job.ids[i] for i in batch], pad))
                with autocast_context(device, training.precision):
                    logits = job.task(chain.trunk.all_states(input_ids, mask), mask)
                loss = job.task.head.loss(logits, job.targets[batch]) * job.weight
                (loss / accumulation).backward()  # accumulated batches may come from different tasks
                if n % accumulation == 0 or n == len(choices):
                    torch.nn.utils.clip_grad_norm_(modules.parameters(), training.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    state.step += 1
                bar.advance(loss=float(loss.detach()) if n % 20 == 0 else None)
                if n in points:
                    check(epoch_progress(state.epoch, points.index(n) + 1, len(points)))
            state.epoch += 1
            checkpointer.save(modules, best, optimizer, scheduler, generator, state)

    modules.load_state_dict(best)
    chain.trunk.requires_grad_(False)
    chain.trunk.eval()
    chain.trunk_tuning = {
        "sharing": "joint",
        **joint.model_dump(),
        "best_epoch": state.best_epoch,
        "seconds": round(time.perf_counter() - started, 3),
    }
    results = {}
    for job in jobs:
        if joint.refine_epochs is None:  # the task's own epochs, early stopping and overrides; the best epoch is kept
            results[job.spec.name] = fit_task(
                chain, job.spec, training, run_dir=run_path / job.spec.name, resume=resume, progress=progress, data=job.data, init=job.task
            )
        elif joint.refine_epochs:
            # a fixed short pass: refine_epochs wins over the task's own epochs/patience; its other overrides still apply
            refine = training.model_copy(update={"epochs": joint.refine_epochs, "patience": 0})
            overrides = job.spec.training.model_copy(update={"epochs": None, "patience": None})
            spec = job.spec.model_copy(update={"training": overrides})
            results[job.spec.name] = fit_task(
                chain, spec, refine, run_dir=run_path / job.spec.name, resume=resume, progress=progress, data=job.data, init=job.task
            )
        else:
            info = {"metric": job.metric, "best_epoch": state.best_epoch, "training": training.model_dump()}
            validation, test = attach_scored(chain, job.spec, job.task, job.data, info)
            results[job.spec.name] = FitResult(job.spec.name, job.metric, state.best_epoch, validation, test, 0.0, 0.0)
    return results
