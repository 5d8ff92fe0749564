"""Hyper-parameter search over a chain spec with Optuna: every trial trains the spec's tasks on a frozen trunk with
sampled settings and is scored on validation data (never on test data); the best settings are written out as a spec.

What a trial may change: the trunk depth (``split``), and per task the branch learning rate, epochs, batch size, the
branch mode (full layers, or LoRA with a rank), the pooling of pooled heads and a classifier's class weights. A
setting the spec writes out stays as written (the user chose it); what it leaves at its default is searched.

Trials with the same trunk depth share its cached states (:class:`~finechain.train.features.FeatureCache`), so only
the tails are trained again. A trial reports every validation check to Optuna through a training-loop hook; one that
falls behind the median of earlier trials at the same check is stopped at its epoch's end (pruned). A trial whose
training diverges is recorded as failed and the search goes on.
"""

from __future__ import annotations

import gc
import math
import os
import re
import time
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from finechain.chain import Chain
from finechain.data.prepare import load_task_data
from finechain.errors import FinechainError
from finechain.evaluate.metrics import LOWER_IS_BETTER
from finechain.heads import head_type
from finechain.io import write_json, write_text
from finechain.jobs.checking import check_spec
from finechain.model.device import pick_device
from finechain.spec import ChainSpec, TaskSpec
from finechain.train.features import FeatureCache
from finechain.train.loop import Check, Hook, TrainingDiverged, TrainingLoop

CHECK_STEPS = 1_000  # a trial's report step: task index * CHECK_STEPS + check number, aligned across trials


def parse_budget(text: str) -> float:
    """Seconds in a budget written as ``90s``, ``15m``, ``1.5h`` or plain seconds.

    Example:
        >>> parse_budget("15m"), parse_budget("90"), parse_budget("1.5h")
        (900.0, 90.0, 5400.0)
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if match is None or float(match.group(1)) <= 0:
        raise FinechainError(f"--budget {text!r} is not a duration", fix="write it as 90s, 15m or 2h")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


@dataclass
class TrialRecord:
    """One trial: its number, state (``complete``, ``pruned``, ``failed``), settings, validation scores and time."""

    number: int
    state: str
    params: dict[str, Any]
    value: float | None = None  # the objective: the mean over tasks of each task's Head.comparable_score (higher is better)
    scores: dict[str, float] = field(default_factory=dict)  # each task's validation metric
    seconds: float = 0.0
    note: str = ""


@dataclass
class TuneResult:
    """The search: every trial, the best one, and where the best spec and the trials table were written."""

    trials: list[TrialRecord]
    best: TrialRecord
    spec_path: Path
    trials_path: Path
    metrics: dict[str, str]  # each task's selection metric


class _Pruning(Hook):
    """Reports each validation check to the Optuna trial; stops the run when the trial should be pruned."""

    def __init__(self, trial: Any, task_index: int) -> None:
        self.trial, self.base, self.checks, self.pruned = trial, task_index * CHECK_STEPS, 0, False

    def on_check(self, loop: TrainingLoop, check: Check) -> None:
        """Report the check (signed by the loop's metric: higher is better); stop at the epoch's end if Optuna prunes
        the trial."""
        self.checks += 1
        if not math.isnan(check.evaluation.value):
            self.trial.report(_oriented(loop.metric) * check.evaluation.value, self.base + self.checks)
        if not self.pruned and self.trial.should_prune():
            self.pruned = True
            loop.stop("pruned: behind the median of earlier trials")


def _explicit(spec_data: dict[str, Any], task_index: int) -> dict[str, Any]:
    """What the spec file writes out for a task and for the chain's ``training``: kept as written."""
    return {"chain_training": spec_data.get("training") or {}, "task": spec_data["tasks"][task_index]}


def _suggest(
    trial: Any, spec: ChainSpec, spec_data: dict[str, Any], layers: int, untrained: Collection[str] = ()
) -> tuple[int | None, list[TaskSpec]]:
    """The trunk depth (``None``: the spec's) and the spec of each task but the ``untrained`` ones (zero-shot tasks
    without examples: nothing to search) with this trial's settings. The depths tried reach down to the spec's own
    default (0 for one tagging task)."""
    split = None
    if spec.split == "auto":
        split = trial.suggest_int("split", min(1, spec.trunk_depth(layers)), layers - 1)
    tasks = []
    for index, task in enumerate(spec.tasks):
        if task.name in untrained:
            continue
        fixed = _explicit(spec_data, index)
        written = {**fixed["chain_training"], **(fixed["task"].get("training") or {})}
        prefix = f"{task.name}." if len(spec.tasks) > 1 else ""
        update: dict[str, Any] = {}
        training: dict[str, Any] = {}
        branch = dict(fixed["task"].get("branch") or {})
        if "mode" not in branch:
            branch["mode"] = trial.suggest_categorical(f"{prefix}branch", ["full", "lora"])
            if branch["mode"] == "lora" and "rank" not in branch:
                branch["rank"] = trial.suggest_categorical(f"{prefix}lora_rank", [4, 8, 16, 32])
            update["branch"] = branch
        if "learning_rate" not in written:  # around the branch mode's own default (1e-4 full, 5e-4 LoRA)
            low, high = (2e-5, 5e-4) if branch["mode"] == "full" else (1e-4, 3e-3)
            training["learning_rate"] = trial.suggest_float(f"{prefix}learning_rate", low, high, log=True)
        if "epochs" not in written:
            training["epochs"] = trial.suggest_int(f"{prefix}epochs", 2, 8)
        if "batch_size" not in written:
            training["batch_size"] = trial.suggest_categorical(f"{prefix}batch_size", [16, 32, 64])
        head = dict(fixed["task"].get("head") or {})
        options = head_type(task.type).Options.model_fields
        if "pooling" in options and "pooling" not in head and "pooling" not in fixed["task"]:
            head["pooling"] = trial.suggest_categorical(f"{prefix}pooling", ["mean", "cls", "max"])
        if "class_weights" in options and "class_weights" not in head:
            head["class_weights"] = trial.suggest_categorical(f"{prefix}class_weights", ["none", "sqrt", "balanced"])
        if head != (fixed["task"].get("head") or {}):
            update["head"] = {**task.head.model_dump(exclude_unset=True), **head}
        update["training"] = task.training.model_copy(update=training)
        tasks.append(TaskSpec.model_validate({**task.model_dump(exclude_unset=True), **update}))
    return split, tasks


def _oriented(metric: str) -> float:
    return -1.0 if metric in LOWER_IS_BETTER else 1.0


def tune_spec(
    spec_path: Path,
    *,
    trials: int | None = None,
    budget_seconds: float | None = None,
    out: Path | None = None,
    seed: int | None = None,
    progress: bool = False,
    on_trial: Any = None,
) -> TuneResult:
    """Search the settings of ``spec_path``'s tasks for ``trials`` trials and/or ``budget_seconds`` (a trial that has
    started finishes); write the best settings as a spec (``out``, default ``<spec>.tuned.yaml`` beside it) and every
    trial as JSON beside it (``.trials.json``, rewritten as each trial ends, so an interrupted search keeps what it
    found). ``on_trial`` is called with each :class:`TrialRecord` as it ends.

    Example:
        >>> result = tune_spec(Path("chain.yaml"), trials=20, budget_seconds=900)  # doctest: +SKIP
        >>> result.best.params  # doctest: +SKIP
        {'split': 2, 'branch': 'full', 'learning_rate': 0.00011, 'epochs': 6, 'batch_size': 32, 'pooling': 'mean'}
    """
    import optuna

    if trials is None and budget_seconds is None:
        trials = 20
    checked = check_spec(spec_path)
    spec = checked.spec
    if spec.sharing_mode == "joint":
        raise FinechainError(
            "tune searches tasks trained on a frozen trunk; this spec trains its trunk jointly (sharing: joint, or auto "
            "with several tasks)",
            file=spec_path,
            field="sharing",
            fix="set sharing: frozen to tune, or tune each task in a spec of its own",
        )
    untrained = {name for name, data in checked.data.items() if not len(data.train)}
    if untrained == set(checked.data):
        raise FinechainError(
            "nothing to tune: no task of this spec has training examples (zero-shot tasks are answered from their labels)",
            file=spec_path,
            fix="add a train file to a task, then tune",
        )
    trials_data = dict(checked.data)
    for task in spec.tasks:  # trials are compared on validation data: cut one from small data too, unless the spec says not to
        if task.name not in untrained and not len(trials_data[task.name].validation) and task.min_validation is None:
            cut = task.model_copy(update={"min_validation": 0})
            trials_data[task.name] = load_task_data(cut, head_type(task.type), task.training.apply(spec.training).seed)
    unscored = sorted(name for name, data in trials_data.items() if name not in untrained and not len(data.validation))
    if unscored:
        raise FinechainError(
            f"tune compares trials on validation data, and task(s) {unscored} have none: too few examples to cut a validation "
            "split (few-shot data)",
            file=spec_path,
            fix="give each a dev file, or remove min_validation from the task (tune then cuts one)",
        )
    out = out or spec_path.with_name(f"{spec_path.stem}.tuned.yaml")
    if out.resolve() == spec_path.resolve():
        raise FinechainError("--out is the spec being tuned", file=out, fix="write the tuned spec to another file")
    trials_path = out.with_suffix(".trials.json")
    spec_data = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
    datas = {name: replace(data, test=None) for name, data in trials_data.items()}  # validation only, never test
    chains: dict[int, Chain] = {}
    features = FeatureCache()
    records: list[TrialRecord] = []
    metrics: dict[str, str] = {}
    start_seed = seed if seed is not None else spec.training.seed

    def chain_for(split: int) -> Chain:
        if split not in chains:
            chain = Chain.from_backbone(spec.backbone, split, spec.max_length, spec_path.parent, "frozen")
            chains[split] = chain.to(pick_device(spec.device))
        return chains[split]

    layers = chain_for(checked.split).num_layers

    def objective(trial: optuna.Trial) -> float:
        started = time.perf_counter()
        split, tasks = _suggest(trial, spec, spec_data, layers, untrained)
        chain = chain_for(split if split is not None else checked.split)
        record = TrialRecord(trial.number, "running", dict(trial.params))
        records.append(record)
        values = []
        try:
            for index, task in enumerate(tasks):
                hook = _Pruning(trial, index)
                result = chain.fit(task, spec.training, data=datas[task.name], hooks=[hook], features=features, progress=progress)
                metrics[task.name] = result.metric
                record.scores[task.name] = float(result.validation[result.metric])
                values.append(chain.tasks[task.name].head.comparable_score(result.metric, record.scores[task.name]))
                if hook.pruned:
                    record.state = "pruned"
                    raise optuna.TrialPruned()
            record.state, record.value = "complete", sum(values) / len(values)
            return record.value
        except TrainingDiverged as error:
            record.state, record.note = "failed", str(error)
            raise
        finally:
            for task in tasks:  # free the trial's tails; the trunk states stay cached for the next trial
                if task.name in chain.tasks:
                    del chain.tasks[task.name]
                chain.records.pop(task.name, None)
            gc.collect()
            record.seconds = round(time.perf_counter() - started, 3)
            write_json(trials_path, {"metrics": metrics, "trials": [vars(r) for r in records]})  # an interrupted search keeps them
            if on_trial is not None:
                on_trial(record)

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=start_seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
    )
    study.optimize(objective, n_trials=trials, timeout=budget_seconds, catch=(TrainingDiverged,))
    finished = [r for r in records if r.state == "complete"]
    if not finished:
        raise FinechainError(
            "no trial finished", file=spec_path, fix="give more --trials or a longer --budget (pruned or failed trials do not count)"
        )
    best = best_trial(finished)
    features.clear()
    chains.clear()
    gc.collect()
    spec_out = write_text(out, _tuned_yaml(spec, spec_data, best, spec_path.parent, out.parent))
    return TuneResult(records, best, spec_out, trials_path, metrics)


def best_trial(finished: list[TrialRecord]) -> TrialRecord:
    """The finished trial with the best objective; of trials tied on it (common on a small validation split, where
    the metric moves in steps of one example), the quickest, the cheaper settings to train.

    Example:
        >>> best_trial([TrialRecord(0, "complete", {}, 0.725, seconds=94), TrialRecord(2, "complete", {}, 0.725, seconds=82)]).number
        2
    """
    return max(finished, key=lambda r: (r.value if r.value is not None else -math.inf, -r.seconds))


def _tuned_yaml(spec: ChainSpec, spec_data: dict[str, Any], best: TrialRecord, spec_dir: Path, out_dir: Path) -> str:
    """The spec file's content with the best trial's settings written in, data paths made relative to ``out_dir``."""
    data = {key: value for key, value in spec_data.items() if key != "tune"}  # the tuned spec trains as it is
    params = best.params
    if "split" in params:
        data["split"] = params["split"]
    tasks = []
    for task_data, task in zip(data["tasks"], spec.tasks, strict=True):
        task_data = dict(task_data)
        prefix = f"{task.name}." if len(spec.tasks) > 1 else ""
        chosen = {key.removeprefix(prefix): value for key, value in params.items() if key.startswith(prefix) and key != "split"}
        if "branch" in chosen:
            task_data["branch"] = {**(task_data.get("branch") or {}), "mode": chosen["branch"]}
            if "lora_rank" in chosen:
                task_data["branch"]["rank"] = chosen["lora_rank"]
        head = {key: chosen[key] for key in ("pooling", "class_weights") if key in chosen}
        if head:
            task_data["head"] = {**(task_data.get("head") or {}), **head}
        training = {key: chosen[key] for key in ("learning_rate", "epochs", "batch_size") if key in chosen}
        # rates the trials trained with that the file does not write (a tagging task alone's, which ChainSpec gave it
        # where the file set none), kept once split is written
        given = {k: v for k, v in task.training.model_dump(exclude_none=True).items() if k in head_type(task.type).training_alone}
        training = {**given, **training}
        if training:
            task_data["training"] = {**(task_data.get("training") or {}), **training}
        for key in ("train", "dev", "test"):
            if task_data.get(key) is not None and not Path(task_data[key]).is_absolute():
                task_data[key] = os.path.relpath(spec_dir / task_data[key], out_dir)
        tasks.append(task_data)
    data["tasks"] = tasks
    scores = ", ".join(f"{name} {value:.4f}" for name, value in best.scores.items())
    header = f"# tuned by `finechain tune`: trial {best.number}, validation {scores}\n"
    return header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
