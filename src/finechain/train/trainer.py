"""Train one task tail on a chain's frozen trunk."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import get_linear_schedule_with_warmup

from finechain.data.batching import Encoded, inference_batches, length_batches
from finechain.data.prepare import TaskData, load_task_data
from finechain.errors import SpecError
from finechain.model.heads import head_type
from finechain.model.precision import autocast_context
from finechain.model.task import TaskModel
from finechain.spec import TaskSpec, TrainingConfig
from finechain.train.checkpoint import UNHASHED_SPEC, UNHASHED_TRAINING, Checkpointer, TrainState, fingerprint, run_folder
from finechain.train.features import TrunkFeatures
from finechain.train.progress import MetricsLog, TrainProgress
from finechain.train.step import BatchStep

if TYPE_CHECKING:
    from finechain.model.chain import Chain


@dataclass
class FitResult:
    """What a training run produced."""

    task: str
    metric: str
    best_epoch: float | None
    validation: dict[str, Any]
    test: dict[str, Any] | None
    train_seconds: float
    samples_per_second: float
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per validation check

    @property
    def epochs_run(self) -> int:
        """Epochs trained in this call (a resumed run counts only the epochs it ran)."""
        return sum(1 for record in self.history if float(record["epoch"]).is_integer())  # one check ends each epoch


def param_groups(module: torch.nn.Module, learning_rate: Callable[[str], float], weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: a learning rate per parameter name, no weight decay on biases and LayerNorm.

    Example:
        >>> groups = param_groups(torch.nn.Linear(2, 2), lambda name: 0.1, 0.01)
        >>> [(g["lr"], g["weight_decay"], len(g["params"])) for g in groups]
        [(0.1, 0.01, 1), (0.1, 0.0, 1)]
    """
    groups: dict[tuple[float, bool], list[torch.nn.Parameter]] = {}
    for name, param in module.named_parameters():
        if param.requires_grad:
            no_decay = param.ndim < 2 or "LayerNorm" in name or "layer_norm" in name
            groups.setdefault((learning_rate(name), no_decay), []).append(param)
    return [
        {"params": params, "lr": lr, "weight_decay": 0.0 if no_decay else weight_decay}
        for (lr, no_decay), params in sorted(groups.items(), key=lambda kv: (-kv[0][0], kv[0][1]))
    ]


def adamw(module: torch.nn.Module, learning_rate: Callable[[str], float], weight_decay: float, device: torch.device) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`, with PyTorch's fused kernel on CPU and CUDA (one kernel per step
    instead of a Python loop over every tensor; the Hugging Face Trainer's default too).

    Example:
        >>> adamw(torch.nn.Linear(2, 2), lambda name: 0.1, 0.01, torch.device("cpu")).defaults["fused"]
        True
    """
    fused = device.type in {"cpu", "cuda"}
    return torch.optim.AdamW(param_groups(module, learning_rate, weight_decay), fused=fused or None)


def resolve_training(cfg: TrainingConfig, task: TaskModel) -> TrainingConfig:
    """``cfg`` with an unset ``learning_rate`` filled in from the task's branch mode (1e-4 for full layers, 5e-4 for
    LoRA adapters), so that the manifest and checkpoints record the rate actually used.

    Example:
        >>> resolve_training(TrainingConfig(), task).learning_rate  # a LoRA task  # doctest: +SKIP
        0.0005
    """
    return cfg if cfg.learning_rate is not None else cfg.model_copy(update={"learning_rate": task.mode.default_learning_rate})


def passes_per_epoch(steps_per_pass: int, epochs: int, min_steps: int) -> int:
    """Passes over the training data that make one epoch: 1, or more for small data, so that ``epochs`` epochs take at
    least ``min_steps`` optimizer steps (a few hundred examples are otherwise too few steps to learn from).

    Example:
        >>> passes_per_epoch(18, epochs=5, min_steps=300)  # 554 examples at batch 32
        4
        >>> passes_per_epoch(2_105, epochs=5, min_steps=300), passes_per_epoch(18, epochs=5, min_steps=0)
        (1, 1)
    """
    return max(1, math.ceil(min_steps / (max(1, steps_per_pass) * epochs)))


def check_points(batches: int, per_epoch: int, accumulation: int = 1) -> list[int]:
    """After how many of an epoch's ``batches`` the validation split is scored: ``per_epoch`` evenly spaced points
    on optimizer-step boundaries (every ``accumulation`` batches), the last one at the end of the epoch.

    Example:
        >>> check_points(85, 2), check_points(85, 3, accumulation=4), check_points(1, 2)
        ([43, 85], [32, 60, 85], [1])
    """
    points = {min(batches, -(-math.ceil(batches * k / per_epoch) // accumulation) * accumulation) for k in range(1, per_epoch + 1)}
    return sorted(points)


def epoch_progress(done: int, check: int, checks: int) -> float:
    """Epochs of training at a validation check: ``done`` whole epochs plus the ``check``-th of ``checks`` in this one.

    Example:
        >>> epoch_progress(1, 1, 2), epoch_progress(1, 2, 2), epoch_progress(0, 1, 3)
        (1.5, 2, 0.333)
    """
    value = round(done + check / checks, 3)
    return int(value) if value.is_integer() else value


def tail_learning_rate(cfg: TrainingConfig) -> Callable[[str], float]:
    """Head (and layer-mix) parameters get ``head_learning_rate``, everything else ``learning_rate`` (resolved, see
    :func:`resolve_training`)."""
    head_like = {"head", "layer_mix"}
    if cfg.learning_rate is None:
        raise ValueError("resolve_training() first: learning_rate is unset")
    branch_rate = cfg.learning_rate
    return lambda name: cfg.head_learning_rate if head_like & set(name.split(".")) else branch_rate


@torch.inference_mode()
def task_outputs(task: TaskModel, features: TrunkFeatures, batch_size: int, precision: str) -> list[torch.Tensor]:
    """Head outputs for every cached example, in the original order (token-level: ``[tokens, labels]`` each)."""
    task.eval()
    out: list[torch.Tensor] = [torch.empty(0)] * len(features.lengths)
    with autocast_context(features.device, precision):
        for batch in inference_batches(features.lengths, batch_size, features.device):
            hidden, mask = features.batch(batch)
            logits = task(hidden, mask).float().cpu()
            for row, index in enumerate(batch):
                out[index] = logits[row, : features.lengths[index]] if task.head.level == "token" else logits[row]
    return out


def _features(
    chain: Chain, texts: list[Any], cfg: TrainingConfig, cache_file: Path, token_level: bool, all_states: bool
) -> tuple[TrunkFeatures, Encoded | None]:
    ids, encoded = chain.encode(texts, with_words=token_level)
    pad = chain.tokenizer.pad_token_id or 0
    return TrunkFeatures(chain.trunk, ids, pad, cfg.cache, cfg.eval_batch_size, cache_file, all_states, cfg.precision), encoded


def fit_task(
    chain: Chain,
    spec: TaskSpec,
    training: TrainingConfig | None = None,
    *,
    run_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    data: TaskData | None = None,
    init: TaskModel | None = None,
    on_evaluation: Callable[[float, TaskModel], None] | None = None,
) -> FitResult:
    """Validate the data, train a new tail for ``spec`` and attach its best validation check's weights to ``chain``.

    Checkpoints and metrics go to ``run_dir`` (resumable with ``resume``); without it, to a temporary folder
    that is removed afterwards. ``init`` continues from an existing tail (e.g. after joint multi-task training)
    instead of a fresh one.
    The validation split is scored ``evaluations_per_epoch`` times an epoch; the best check's weights are kept.
    ``on_evaluation(epochs, task)`` is called after each check (``epochs`` done so far, e.g. 1.5; to watch another
    evaluation set, say); the time it takes is left out of ``train_seconds`` and of the history's seconds.

    Example:
        >>> result = fit_task(chain, TaskSpec(name="sentiment", train="train.csv"))  # doctest: +SKIP
        >>> result.validation["accuracy"]  # doctest: +SKIP
        0.89
    """
    with run_folder(run_dir, f"finechain-{spec.name}-") as run_path:
        return _fit_task(chain, spec, training, run_path, resume, progress, data, init, on_evaluation)


def _fit_task(
    chain: Chain,
    spec: TaskSpec,
    training: TrainingConfig | None,
    run_path: Path,
    resume: bool,
    progress: bool,
    data: TaskData | None,
    init: TaskModel | None,
    on_evaluation: Callable[[float, TaskModel], None] | None,
) -> FitResult:
    cfg = spec.training.apply(training or TrainingConfig())
    head_cls = head_type(spec.type)
    data = data or load_task_data(spec, head_cls, cfg.seed)
    metric = spec.metric or head_cls.default_metric
    torch.manual_seed(cfg.seed)
    task = init or chain.new_task(head_cls, data.labels, spec.pooling, spec.dropout, spec.branch.model_dump(), spec.layer_mix)
    if init is None and hasattr(task.head, "fit_scale"):
        task.head.fit_scale(data.train.labels)
    cfg = resolve_training(cfg, task)
    device = chain.device

    started = time.perf_counter()
    token_level = head_cls.level == "token"
    all_states = task.needs_trunk_states
    train_feats, train_enc = _features(chain, data.train.texts, cfg, run_path / "cache" / "train.npy", token_level, all_states)
    val_feats, val_enc = _features(chain, data.validation.texts, cfg, run_path / "cache" / "validation.npy", token_level, all_states)
    y_train = task.head.targets(data.train.labels, train_enc).to(device)
    y_val = task.head.targets(data.validation.labels, val_enc)
    blank = [torch.zeros(*((n,) if token_level else ()), max(1, len(data.labels))) for n in val_feats.lengths]
    if metric not in task.head.score(blank, y_val):
        raise SpecError(f"metric '{metric}' is not reported for {spec.type} tasks", fix=f"drop 'metric' to use '{head_cls.default_metric}'")

    batches_per_pass = math.ceil(len(train_feats.lengths) / cfg.batch_size)
    steps_per_pass = math.ceil(batches_per_pass / cfg.gradient_accumulation)
    passes = passes_per_epoch(steps_per_pass, cfg.epochs, cfg.min_steps) if init is None else 1  # a trained tail: no repeats
    batches_per_epoch = batches_per_pass * passes
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.gradient_accumulation)
    total_steps = steps_per_epoch * cfg.epochs
    optimizer = adamw(task, tail_learning_rate(cfg), cfg.weight_decay, device)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_fraction * total_steps), total_steps)
    generator = torch.Generator().manual_seed(cfg.seed)
    checkpointer = Checkpointer(
        run_path,
        fingerprint(
            spec.model_dump(mode="json", exclude=UNHASHED_SPEC),
            cfg.model_dump(exclude=UNHASHED_TRAINING),
            chain.backbone_ref.sha256,
            chain.split,
            data.digest(),
            *([{"passes": passes}] if passes > 1 else []),
        ),
    )

    def validation_outputs() -> list[torch.Tensor]:
        return task_outputs(task, val_feats, cfg.eval_batch_size, cfg.precision)

    state, best = TrainState(), {k: v.detach().clone() for k, v in task.state_dict().items()}
    best_outputs: list[torch.Tensor] | None = None  # the best weights' validation outputs, kept to score them at the end
    if resume and checkpointer.exists():
        state, best = checkpointer.load(task, optimizer, scheduler, generator)
    elif init is not None:  # continuing a trained tail: it is the epoch-0 candidate, so training can only improve on it
        best_outputs = validation_outputs()
        state.best = float(task.head.score(best_outputs, y_val)[metric])
        state.best_epoch = 0
    step = BatchStep(task, train_feats, y_train, cfg.precision, cfg.batch_size, cfg.gradient_accumulation, cfg.cuda_graphs)
    log = MetricsLog(run_path / "metrics.jsonl", fresh=not resume)
    history: list[dict[str, Any]] = []
    seen, observed = 0, 0.0

    points = check_points(batches_per_epoch, cfg.evaluations_per_epoch, cfg.gradient_accumulation)
    epoch_start, observed_before = time.perf_counter(), 0.0

    def epoch_seconds() -> float:
        """Training seconds of the current epoch so far, ``on_evaluation`` left out."""
        return time.perf_counter() - epoch_start - (observed - observed_before)

    def check(progress: float, loss: float) -> None:
        """Score the validation split now; keep the weights if they are the best so far; log and report it."""
        nonlocal best, best_outputs, observed
        outputs = validation_outputs()
        task.train()
        value = float(task.head.score(outputs, y_val)[metric])
        if state.improves(metric, value, progress):
            best, best_outputs = {k: v.detach().clone() for k, v in task.state_dict().items()}, outputs
        record = {
            "epoch": progress,
            "passes": passes,
            "step": state.step,
            "train_loss": loss,
            f"validation_{metric}": value,
            "best": state.best,
            "seconds": round(state.seconds + epoch_seconds(), 3),
            "elapsed_seconds": round(time.perf_counter() - started - observed, 3),
        }
        log.write(record)
        history.append(record)
        bar.show_metric(f"val {metric} {value:.4f}")
        if on_evaluation is not None:
            pause = time.perf_counter()
            on_evaluation(progress, task)
            task.train()  # the callback may have switched the tail to eval mode (Chain.attach does): training goes on
            observed += time.perf_counter() - pause

    with TrainProgress(spec.name, total=batches_per_epoch * cfg.epochs, enabled=progress, completed=batches_per_epoch * state.epoch) as bar:
        epoch = state.epoch
        while epoch < cfg.epochs and not (cfg.patience and state.bad_checks >= cfg.patience * len(points)):
            epoch_start, observed_before = time.perf_counter(), observed
            task.train()
            running = torch.zeros((), device=device)
            batches = [
                b for _ in range(passes) for b in length_batches(train_feats.lengths, cfg.batch_size, shuffle=True, generator=generator)
            ]
            for i, batch in enumerate(batches):
                running += step(batch)
                if (i + 1) % cfg.gradient_accumulation == 0 or i + 1 == len(batches):
                    torch.nn.utils.clip_grad_norm_(task.parameters(), cfg.max_grad_norm)
                    optimizer.step()
                    scheduler.step()
                    step.zero_grad(optimizer)
                    state.step += 1
                seen += len(batch)
                bar.advance(loss=float(running) * cfg.gradient_accumulation / (i + 1) if i % 20 == 0 else None)
                if i + 1 in points:
                    loss = float(running) * cfg.gradient_accumulation / (i + 1)
                    check(epoch_progress(epoch, points.index(i + 1) + 1, len(points)), loss)
            epoch += 1
            state.epoch = epoch
            state.seconds += epoch_seconds()
            checkpointer.save(task, best, optimizer, scheduler, generator, state)

    task.load_state_dict(best)
    info = {"metric": metric, "best_epoch": state.best_epoch, "training": cfg.model_dump()}
    if best_outputs is None:  # resumed: the best epoch's outputs were not kept; else they are what the restored weights give
        best_outputs = validation_outputs()
    validation, test_scores = attach_scored(chain, spec, task, data, info, best_outputs)
    train_seconds = time.perf_counter() - started - observed
    chain.task_info[spec.name]["train_seconds"] = round(train_seconds, 3)
    return FitResult(spec.name, metric, state.best_epoch, validation, test_scores, train_seconds, seen / max(state.seconds, 1e-9), history)


def attach_scored(
    chain: Chain, spec: TaskSpec, task: TaskModel, data: TaskData, info: dict[str, Any], val_outputs: list[torch.Tensor] | None = None
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Calibrate a trained tail on validation data, attach it, and score validation and test splits.

    Example:
        >>> validation, test = attach_scored(chain, spec, task, data, {"metric": "accuracy"})  # doctest: +SKIP
    """
    chain.attach(spec.name, task, {**info, "data": data.provenance, "spec": spec.model_dump(mode="json")})
    if val_outputs is None:
        val_outputs, encoded = chain.run_tasks(data.validation.texts, [spec.name])
        val_outputs = val_outputs[spec.name]
    else:
        encoded = chain.encode(data.validation.texts, with_words=True)[1] if task.head.level == "token" else None
    y_val = task.head.targets(data.validation.labels, encoded)
    task.head.calibrate(val_outputs, y_val)
    validation = task.head.score(val_outputs, y_val)
    test = chain.score(spec.name, data.test.texts, data.test.labels) if data.test is not None else None
    chain.task_info[spec.name]["metrics"] = {"validation": _headline(validation), **({"test": _headline(test)} if test else {})}
    return validation, test


def _headline(scores: dict[str, Any]) -> dict[str, float]:
    """Scalar metrics only (per-class tables live in the reports)."""
    return {k: round(v, 6) for k, v in scores.items() if isinstance(v, float)} | {"n": scores.get("n", 0)}
