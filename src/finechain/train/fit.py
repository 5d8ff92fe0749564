"""Train one task's tail on a chain's frozen trunk: trunk states are computed once, then the training loop runs on
them (``finechain.train.loop``)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from finechain.data.augment import augment
from finechain.data.batching import length_batches
from finechain.data.pieces import fitting_pieces
from finechain.data.prepare import Split, TaskData, load_task_data
from finechain.data.tokens import inference_batches
from finechain.errors import SpecError
from finechain.heads import Head, head_type
from finechain.model.chain_model import ChainModel
from finechain.model.precision import autocast_context, resolve_precision
from finechain.model.task import TaskModel
from finechain.spec import TaskSpec, TrainingConfig
from finechain.train.checkpoint import UNHASHED_SPEC, UNHASHED_TRAINING, Checkpointer, fingerprint, run_folder
from finechain.train.features import FeatureCache, TrunkFeatures
from finechain.train.loop import Check, EarlyStopping, Evaluation, HeadFirst, Hook, TrainingLoop
from finechain.train.objectives import Objective, training_objective
from finechain.train.optim import build_optimizer, build_schedule
from finechain.train.progress import MetricsLog, Report, TrainProgress
from finechain.train.step import BatchStep


@dataclass
class FitResult:
    """What training a task produced: its tail (best validation check's weights, calibrated), scores and timing."""

    task: str
    metric: str
    best_epoch: float | None
    validation: dict[str, Any]
    test: dict[str, Any] | None
    train_seconds: float
    samples_per_second: float
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per validation check
    tail: TaskModel | None = None
    training: TrainingConfig | None = None  # the settings used, learning rate resolved
    provenance: dict[str, Any] = field(default_factory=dict)  # what training added to the data (augmentation, label texts)

    @property
    def epochs_run(self) -> int:
        """Epochs trained in this call (a resumed run counts only the epochs it ran)."""
        return sum(1 for record in self.history if float(record["epoch"]).is_integer())  # one check ends each epoch


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


def tail_learning_rate(cfg: TrainingConfig, branch_layers: int = 0) -> Callable[[str], float]:
    """Head (and layer-mix) parameters get ``head_learning_rate``, everything else ``learning_rate`` (resolved, see
    :func:`resolve_training`); with ``layer_decay`` below 1, branch layer ``i`` of ``branch_layers`` gets
    ``learning_rate * layer_decay ** (branch_layers - 1 - i)`` (the top layer the full rate).

    Example:
        >>> rate = tail_learning_rate(TrainingConfig(learning_rate=1e-4))
        >>> rate("head_layer.out.weight"), rate("branch.layers.0.attention.self.query.weight")
        (0.001, 0.0001)
        >>> rate = tail_learning_rate(TrainingConfig(learning_rate=1e-4, layer_decay=0.5), branch_layers=3)
        >>> [rate(f"branch.layers.{i}.output.dense.weight") for i in range(3)]
        [2.5e-05, 5e-05, 0.0001]
    """
    head_like = {"head_layer", "layer_mix"}
    if cfg.learning_rate is None:
        raise ValueError("resolve_training() first: learning_rate is unset")
    branch_rate, decay = cfg.learning_rate, cfg.layer_decay

    def rate(name: str) -> float:
        parts = name.split(".")
        if head_like & set(parts):
            return cfg.head_learning_rate
        if decay != 1.0 and "branch" in parts:
            at = parts.index("branch")
            if parts[at + 1 : at + 2] == ["layers"]:
                return branch_rate * decay ** (branch_layers - 1 - int(parts[at + 2]))
        return branch_rate

    return rate


@torch.inference_mode()
def task_outputs(task: TaskModel, features: TrunkFeatures, batch_size: int, precision: str) -> list[np.ndarray]:
    """Head outputs for every cached example, in the original order, as float32 arrays (token-level: ``[tokens, labels]``)."""
    task.eval()
    out: list[np.ndarray] = [np.empty(0, dtype=np.float32)] * len(features.lengths)
    token_level = task.head.token_level
    with autocast_context(features.device, precision):
        for batch in inference_batches(features.lengths, batch_size, features.device):
            hidden, mask = features.batch(batch)
            logits = task(hidden, mask).float().cpu().numpy()
            for row, index in enumerate(batch):
                out[index] = logits[row, : features.lengths[index]] if token_level else logits[row]
    return out


@torch.inference_mode()
def class_means(task: TaskModel, features: TrunkFeatures, targets: torch.Tensor, batch_size: int, precision: str) -> torch.Tensor:
    """One unit vector per label: the mean of the L2-normalised pooled features ``task`` gives its training examples
    (a label without examples keeps the head's current row).

    Example:
        >>> task.head_layer.set_prototypes(class_means(task, features, targets, 128, "auto"))  # doctest: +SKIP
    """
    task.eval()
    means = task.head_layer.out.weight.detach().float().clone()
    sums = torch.zeros_like(means)
    counts = torch.zeros(len(means), device=means.device)
    with autocast_context(features.device, precision):
        for batch in inference_batches(features.lengths, batch_size, features.device):
            hidden, mask = features.batch(batch)
            pooled = torch.nn.functional.normalize(task.head_layer.features(task.features(hidden, mask), mask).float(), dim=-1)
            labels = targets[torch.as_tensor(batch, device=targets.device)].to(means.device)
            sums.index_add_(0, labels, pooled.to(means.device))
            counts.index_add_(0, labels, torch.ones(len(batch), device=means.device))
    seen = counts > 0
    means[seen] = sums[seen] / counts[seen, None]
    return means


def augmented_data(data: TaskData, cfg: TrainingConfig, head_cls: type[Head]) -> TaskData:
    """``data`` with ``cfg.augment`` copies of each training example added (:func:`finechain.data.augment.augment`,
    seeded by ``cfg.seed``): EDA copies of texts, or, for a head with one label per word, tagged copies whose tags
    follow their words; validation and test untouched.

    Example:
        >>> len(augmented_data(data, TrainingConfig(augment=2), ClassificationHead).train)  # doctest: +SKIP
        2904
    """
    if not cfg.augment or not len(data.train):
        return data
    texts, labels, sources = augment(
        data.train.texts, data.train.labels, cfg.augment, cfg.augment_rate, cfg.seed, per_word=head_cls.token_level
    )
    lines = [data.train.lines[i] for i in sources]  # an added copy names the row of the file it was made from
    train = Split(texts, labels, lines, data.train.file, data.train.warnings)
    return replace(data, train=train, provenance={**data.provenance, "augmented": {"copies": cfg.augment, "rate": cfg.augment_rate}})


def with_label_texts(data: TaskData, spec: TaskSpec, head_cls: type[Head]) -> TaskData:
    """``data`` with the texts that the head's options give for its labels (a prototype head's ``label_texts``) added
    to the training split, one example each (line 0: no row of a file); validation and test untouched.

    Example:
        >>> spec = TaskSpec(name="t", type="prototype", head={"label_texts": "names"})
        >>> len(with_label_texts(data, spec, head_type("prototype")).train)  # doctest: +SKIP
        34
    """
    added = head_cls.label_examples(spec.head, data.labels)
    if not added or not len(data.train):
        return data
    texts, labels = [text for text, _ in added], [label for _, label in added]
    lines = [*data.train.lines, *[0] * len(added)]
    train = Split([*data.train.texts, *texts], [*data.train.labels, *labels], lines, data.train.file, data.train.warnings)
    return replace(data, train=train, provenance={**data.provenance, "label_texts": len(added)})


def with_fitting_pieces(data: TaskData, head_cls: type[Head], model: ChainModel) -> TaskData:
    """``data`` with each training and validation text of a token-level task that is longer than the model's
    ``max_length`` cut into pieces of whole words that fit (:func:`~finechain.data.pieces.fitting_pieces`), so that no
    word goes untrained or unscored when an epoch is chosen (prediction reads every word, through windows, and so is
    the test file scored).

    Example:
        >>> with_fitting_pieces(data, head_type("tagging"), chain.model).provenance["cut_into_pieces"]  # doctest: +SKIP
        {'train': 3, 'validation': 0}
    """
    if not head_cls.token_level or not len(data.train):
        return data
    train, cut = fitting_pieces(data.train, model.tokenizer, model.max_length)
    validation, cut_validation = fitting_pieces(data.validation, model.tokenizer, model.max_length)
    if not cut and not cut_validation:
        return data
    pieces = {**data.provenance, "cut_into_pieces": {"train": cut, "validation": cut_validation}}
    return replace(data, train=train, validation=validation, provenance=pieces)


def training_data(data: TaskData, spec: TaskSpec, cfg: TrainingConfig, head_cls: type[Head], model: ChainModel) -> TaskData:
    """What a task trains on: ``data`` with what training adds to it, augmented copies (:func:`augmented_data`), the
    texts given for its labels (:func:`with_label_texts`, not augmented) and long tagged texts cut into pieces that
    fit (:func:`with_fitting_pieces`).

    Example:
        >>> len(training_data(data, spec, TrainingConfig(augment=1), ClassificationHead, chain.model).train)  # doctest: +SKIP
        1936
    """
    return with_fitting_pieces(with_label_texts(augmented_data(data, cfg, head_cls), spec, head_cls), head_cls, model)


def gradient_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """A loss scaler for fp16 training (small gradients would underflow in fp16 without it); None otherwise.

    Example:
        >>> gradient_scaler(torch.device("cpu"), "bf16") is None
        True
    """
    if resolve_precision(device, precision) != "fp16":
        return None
    return torch.amp.GradScaler(device.type)


def fit_task(
    model: ChainModel,
    spec: TaskSpec,
    training: TrainingConfig | None = None,
    *,
    data: TaskData | None = None,
    run_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    init: TaskModel | None = None,
    hooks: Sequence[Hook] = (),
    objective: Objective | None = None,
    features: FeatureCache | None = None,
    repeat: bool | None = None,
) -> FitResult:
    """Train a new tail for ``spec`` on ``model``'s frozen trunk; return it (not attached) with the best validation
    check's weights, calibrated on validation data.

    Checkpoints and metrics go to ``run_dir`` (resumable with ``resume``); without it, to a temporary folder that is
    removed afterwards. ``init`` continues from an existing tail (e.g. after joint multi-task training) instead of a
    fresh one. ``hooks`` observe the run (see :class:`~finechain.train.loop.Hook`); their time is left out of
    ``train_seconds``. ``objective`` replaces the head's loss; ``features`` shares trunk states across runs.

    Example:
        >>> result = fit_task(model, TaskSpec(name="sentiment", train="train.csv"))  # doctest: +SKIP
        >>> result.validation["accuracy"]  # doctest: +SKIP
        0.89
    """
    with run_folder(run_dir, f"finechain-{spec.name}-") as run_path:
        return _fit_task(
            model, spec, training or TrainingConfig(), run_path, resume, progress, data, init, hooks, objective, features, repeat
        )


def _fit_task(
    model: ChainModel,
    spec: TaskSpec,
    training: TrainingConfig,
    run_path: Path,
    resume: bool,
    progress: bool,
    data: TaskData | None,
    init: TaskModel | None,
    hooks: Sequence[Hook],
    objective: Objective | None,
    features: FeatureCache | None,
    repeat: bool | None,
) -> FitResult:
    cfg = spec.training.apply(training)
    head_cls = head_type(spec.type)
    if cfg.contrastive and not head_cls.pairs:
        raise SpecError(
            f"training.contrastive compares texts by their labels, which a {head_cls.type_name} task cannot",
            field="contrastive",
            fix="remove contrastive",
        )
    data = training_data(data or load_task_data(spec, head_cls, cfg.seed), spec, cfg, head_cls, model)
    torch.manual_seed(cfg.seed)
    if init is None:
        head = head_cls(options=spec.head)
        head.initialize(data.train.labels, data.labels)  # every label of the data, also one the validation cut took
        task = model.new_task(head, spec.branch)
    else:
        task = init
    metric = spec.metric or task.head.selection_metric(data.train.labels)
    cfg = resolve_training(cfg, task)
    device = model.device

    started = time.perf_counter()
    cache = features if features is not None else FeatureCache()  # (an empty cache is falsy)
    val_ids, val_words = model.encode(data.validation.texts, with_words=head_cls.token_level)
    states = dict(
        pad_id=model.pad_id, cache=cfg.cache, batch_size=cfg.eval_batch_size, all_states=task.needs_trunk_states, precision=cfg.precision
    )
    y_val = task.head.targets(data.validation.labels, val_words)
    # no validation data (few-shot data, or a zero-shot task without a dev file): nothing to score or select on
    val_feats = cache.get(model.trunk, val_ids, cache_file=run_path / "cache" / "validation.npy", **states) if len(val_ids) else None
    if not len(data.train):  # a task whose options give its labels and weights (zero-shot): nothing to train, only to score
        outputs = task_outputs(task, val_feats, cfg.eval_batch_size, cfg.precision) if val_feats is not None else None
        validation = task.head.score(outputs, y_val) if outputs is not None else {}
        return FitResult(spec.name, metric, None, validation, None, time.perf_counter() - started, 0.0, [], task.eval(), cfg)
    train_ids, train_words = model.encode(data.train.texts, with_words=head_cls.token_level)
    train_feats = cache.get(model.trunk, train_ids, cache_file=run_path / "cache" / "train.npy", **states)
    y_train = torch.from_numpy(task.head.training_targets(data.train.labels, train_words)).to(device)
    if init is None and task.head.starts_from_examples:  # a prototype head: rows start at the labels' mean embeddings
        task.head_layer.set_prototypes(class_means(task, train_feats, y_train, cfg.eval_batch_size, cfg.precision))

    batches_per_pass = math.ceil(len(train_feats.lengths) / cfg.batch_size)
    steps_per_pass = math.ceil(batches_per_pass / cfg.gradient_accumulation)
    repeat = init is None if repeat is None else repeat  # a trained tail (refined after joint training): no repeats
    passes = passes_per_epoch(steps_per_pass, cfg.epochs, cfg.min_steps) if repeat else 1
    batches_per_epoch = batches_per_pass * passes
    total_steps = math.ceil(batches_per_epoch / cfg.gradient_accumulation) * cfg.epochs
    optimizer = build_optimizer(cfg, task, tail_learning_rate(cfg, len(task.branch.layers)), device)
    scheduler = build_schedule(cfg, optimizer, total_steps)
    scaler = gradient_scaler(device, cfg.precision)
    settings = fingerprint(
        spec.model_dump(mode="json", exclude=UNHASHED_SPEC),
        cfg.model_dump(exclude=UNHASHED_TRAINING),
        model.backbone.sha256,
        model.split,
        data.digest(),
        *([{"passes": passes}] if passes > 1 else []),
    )

    selects = val_feats is not None

    def evaluate() -> Evaluation:
        if not selects:  # each check beats the one before: the last weights are kept, nothing stops early
            return Evaluation(float(loop.state.step))
        outputs = task_outputs(task, val_feats, cfg.eval_batch_size, cfg.precision)
        scores = task.head.score(outputs, y_val)
        return Evaluation(float(scores[metric]), scores, outputs)

    def epoch_batches(generator: torch.Generator) -> list[list[int]]:
        return [b for _ in range(passes) for b in length_batches(train_feats.lengths, cfg.batch_size, shuffle=True, generator=generator)]

    def record(check: Check) -> dict[str, Any]:
        return {
            "epoch": check.epoch,
            "passes": passes,
            "step": check.step,
            "train_loss": check.loss,
            **({f"validation_{metric}": check.evaluation.value, "best": check.best} if selects else {}),
            "seconds": check.seconds,
            "elapsed_seconds": round(time.perf_counter() - started - loop.observed, 3),  # since fit began: trunk states included
        }

    graphs = cfg.cuda_graphs and not cfg.head_epochs  # a graph holds the gradients of the parameters training when recorded
    objective = training_objective(cfg, objective)
    step = BatchStep(task, train_feats, y_train, cfg.precision, cfg.batch_size, cfg.gradient_accumulation, graphs, objective, scaler)
    staged = [HeadFirst(cfg.head_epochs, task.branch.parameters())] if cfg.head_epochs else []
    with TrainProgress(spec.name, total=batches_per_epoch * cfg.epochs, enabled=progress) as bar:
        report = Report(
            bar,
            MetricsLog(run_path / "metrics.jsonl", fresh=not resume),
            record,
            lambda c: f"val {metric} {c.evaluation.value:.4f}" if selects else f"step {c.step} (no validation)",
        )
        loop = TrainingLoop(
            task,
            step,
            epoch_batches,
            evaluate,
            metric=metric if selects else "steps",
            epochs=cfg.epochs,
            batches_per_epoch=batches_per_epoch,
            optimizer=optimizer,
            scheduler=scheduler,
            generator=torch.Generator().manual_seed(cfg.seed),
            scaler=scaler,
            accumulation=cfg.gradient_accumulation,
            max_grad_norm=cfg.max_grad_norm,
            evaluations_per_epoch=cfg.evaluations_per_epoch,
            checkpointer=Checkpointer(run_path, settings),
            hooks=[*staged, report, EarlyStopping(cfg.patience), *hooks],
            ema_decay=cfg.ema_decay,
        )
        resumed = resume and loop.resume()  # (the report hook then moves the bar there and trims the log)
        if not resumed and init is not None and selects:
            # continuing a trained tail: it is the epoch-0 candidate, so training can only improve on it (not a zero-shot
            # start: on the few validation examples of a few-shot set it ties too often, and the benchmark's AG News run
            # kept 73.4% zero-shot where training reached 81.9%)
            loop.start_from(evaluate())
        for _ in loop.run():
            pass
        for hook in staged:
            hook.release()

    task.load_state_dict(loop.best_weights)
    recentred = task.head.ends_from_examples  # a prototype head: rows move to the labels' mean embeddings under the trained branch
    if recentred:
        task.head_layer.set_prototypes(class_means(task, train_feats, y_train, cfg.eval_batch_size, cfg.precision))
    # the best check's outputs are what the restored weights give (resumed: the best check may predate this call)
    best = loop.best_evaluation if loop.best_evaluation is not None and not recentred else evaluate()
    validation: dict[str, Any] = {}
    if selects:
        task.head.calibrate(best.outputs, y_val, metric)
        validation = task.head.score(best.outputs, y_val)
    train_seconds = time.perf_counter() - started - loop.observed + loop.resumed_seconds  # a resumed run counts its earlier epochs
    rate = loop.seen / max(loop.state.seconds, 1e-9)
    added = {key: data.provenance[key] for key in ("augmented", "label_texts") if key in data.provenance}  # training's own data
    best_epoch = loop.state.best_epoch
    return FitResult(spec.name, metric, best_epoch, validation, None, train_seconds, rate, report.history, task.eval(), cfg, added)
