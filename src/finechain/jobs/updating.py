"""Continual updates: continue a trained task on new data (which may bring new labels) without forgetting the old.

The update trains the task's tail from its current weights on the new examples plus a rehearsal sample of the data it
was trained on before (read again from the files its record names, or given), selecting on a validation set that
mixes new and old. The old test set (or the old validation data when there is none) is scored before and after: an
update that loses more than ``max_forgetting`` points there is refused and nothing is written. An accepted update
keeps the previous version of the task under ``versions/<task>/<n>/`` so that ``restore_task`` can bring it back.
``remove_task`` takes a task out of a chain, with its files and kept versions.
"""

from __future__ import annotations

import datetime as dt
import os
import random
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from rich.console import Console
from rich.text import Text

from finechain.chain import Chain
from finechain.data.prepare import Split, TaskData, load_task_data, trained_columns
from finechain.errors import FinechainError, saying_on_interrupt
from finechain.evaluate.metrics import LOWER_IS_BETTER
from finechain.heads import head_type
from finechain.io import folder_lock
from finechain.model.artifact import TaskRecord, keep_task_version, load_task_version, remove_task_version, task_versions
from finechain.model.manifest import MANIFEST, read_manifest, require_task
from finechain.model.task import TaskModel
from finechain.spec import TaskSpec, TrainingConfig
from finechain.spec.loading import load_flow_file, nearest_line
from finechain.train.checkpoint import Checkpointer


@dataclass
class UpdateReport:
    """Scores before and after an update, whether it was kept, and the version number the old task was kept as."""

    task: str
    metric: str
    scores: dict[str, dict[str, float]] = field(default_factory=dict)  # "old test" / "new test" -> {"before", "after"}
    new_labels: list[str] = field(default_factory=list)
    rehearsed: int = 0
    accepted: bool = False
    kept_version: int | None = None
    note: str = ""
    best_epoch: float | None = None  # 0: the task as it was scored best on the validation data, so its weights are unchanged


def _sample(split: Split, size: int, seed: int) -> Split:
    """``size`` rows of ``split`` at random (all of them when it has fewer)."""
    if size >= len(split):
        return split
    return split.subset(sorted(random.Random(seed).sample(range(len(split)), size)))


def _joined(first: Split, second: Split) -> Split:
    return Split(first.texts + second.texts, first.labels + second.labels, first.lines + second.lines, first.file, first.warnings)


def grown_task(old: TaskModel, labels: list[str], new_task: TaskModel) -> TaskModel:
    """``new_task`` (built for ``labels``: the old ones first, then new ones) with ``old``'s weights: the branch, the
    layer mix, and the head's row of every label it already had (and a CRF's moves between them); new labels keep
    their fresh rows.

    Example:
        >>> task = grown_task(chain.tasks["intent"], ["a", "b", "c"], chain.model.new_task(head))  # doctest: +SKIP
    """
    new_task.branch.load_state_dict(old.branch.state_dict())
    if old.layer_mix is not None and new_task.layer_mix is not None:
        new_task.layer_mix.load_state_dict(old.layer_mix.state_dict())
    before, after = old.head_layer.out, new_task.head_layer.out
    with torch.no_grad():
        if not old.head.labels:  # no label set (regression): the same shape
            after.load_state_dict(before.state_dict())
        for row, label in enumerate(old.head.labels):
            at = labels.index(label)
            after.weight[at] = before.weight[row]
            after.bias[at] = before.bias[row]
        moves_before, moves_after = old.head_layer.transition_scores(), new_task.head_layer.transition_scores()
        if moves_before and moves_after:  # a CRF: the moves between old labels are kept; moves to or from new ones start at 0
            at = torch.tensor([labels.index(label) for label in old.head.labels])
            moves_after["start"][at] = moves_before["start"]
            moves_after["end"][at] = moves_before["end"]
            moves_after["moves"][at.unsqueeze(1), at.unsqueeze(0)] = moves_before["moves"]
    return new_task


def _scores(chain: Chain, name: str, split: Split | None) -> dict[str, float] | None:
    """The scalar scores of task ``name`` on ``split``, or None when there is no split or it names labels the task
    lacks."""
    if split is None or not len(split):
        return None
    try:
        return {k: v for k, v in chain.score(name, split.texts, split.labels).items() if isinstance(v, float)}
    except FinechainError:  # labels the task does not have yet (the new data before the update)
        return None


def _old_data(chain: Chain, name: str, record: TaskRecord, spec: TaskSpec, old_data: Path | None, seed: int) -> TaskData:
    """The data the task was trained on before: ``old_data`` when given, else its recorded files (the original
    training file and every earlier update's)."""
    head_cls = head_type(spec.type)
    if old_data is not None:
        with trained_columns(spec):
            return load_task_data(spec.model_copy(update={"train": old_data, "dev": None, "test": spec.test}), head_cls, seed)
    files = [spec.train, *[Path(u["file"]) for u in (record.data or {}).get("updates", [])]]
    if files[0] is None:
        raise FinechainError(
            f"task '{name}' was trained on data in memory, which the chain does not keep",
            fix="give the earlier training data with --old-data FILE",
        )
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise FinechainError(
            f"the earlier training data of task '{name}' is not there", file=missing[0], fix="give it with --old-data FILE"
        )
    data = load_task_data(spec, head_cls, seed)
    for extra in files[1:]:
        more = load_task_data(spec.model_copy(update={"train": extra, "dev": None, "test": None}), head_cls, seed)
        data = replace(data, train=_joined(data.train, more.train), validation=_joined(data.validation, more.validation))
    return data


def update_task(
    chain_dir: Path,
    name: str,
    data: Path,
    *,
    dev: Path | None = None,
    test: Path | None = None,
    old_data: Path | None = None,
    rehearsal: float = 1.0,
    max_forgetting: float = 1.0,
    force: bool = False,
    resume: bool = False,
    progress: bool = True,
    console: Console | None = None,
) -> UpdateReport:
    """Continue task ``name`` of the chain in ``chain_dir`` on the labelled file ``data`` (new labels allowed), with
    ``rehearsal`` old training examples per new one mixed in; keep the update if the old test score falls by at most
    ``max_forgetting`` points (or with ``force``), keeping the previous version. Returns the before/after scores.

    Its training is checkpointed at each validation check under ``runs/<name>-update/``; ``resume`` continues an interrupted
    update (same files and options) from there. The checkpoint is removed once the update is saved or refused.

    Example:
        >>> report = update_task(Path("my-chain"), "intent", Path("new-intents.csv"))  # doctest: +SKIP
        >>> report.scores["old test"]  # doctest: +SKIP
        {'before': 0.912, 'after': 0.905}
    """
    console = console or Console(stderr=True)
    saved: list[int] = []  # the version the old task was kept as, once the update is saved
    run_dir = chain_dir / "runs" / f"{name}-update"
    checkpoint = Checkpointer(run_dir, "")  # only asked whether there is one: fit_task checks what it was made with

    def left() -> str:
        if saved:
            return f"the update is saved; the previous version is kept as version {saved[0]}"
        if checkpoint.exists():
            return f"{chain_dir} is unchanged; the update is checkpointed at its last validation check: rerun with --resume to continue"
        return f"{chain_dir} is unchanged; run the same command again"

    with folder_lock(chain_dir, "writing to"), saying_on_interrupt("update", left):
        chain = _chain_with(chain_dir, name, device="auto")
        record = chain.records[name]
        if record.spec is None:
            raise FinechainError(
                f"task '{name}' has no record of how it was trained", file=chain_dir, fix="retrain it with finechain train"
            )
        spec = TaskSpec.model_validate(record.spec)
        training = TrainingConfig.model_validate(record.training or {})
        seed = training.seed
        head_cls = head_type(spec.type)
        with trained_columns(spec):
            new = load_task_data(spec.model_copy(update={"train": data, "dev": dev, "test": test}), head_cls, seed)
        old = _old_data(chain, name, record, spec, old_data, seed)
        old_task = chain.tasks[name]
        metric = record.metric or old_task.head.selection_metric(old.train.labels)
        old_test = old.test if old.test is not None else old.validation
        report = UpdateReport(name, metric)
        report.new_labels = [label for label in new.labels if label not in old_task.head.labels]
        parts = {"old test": old_test, "new test": new.test or new.validation}
        before = {key: _scores(chain, name, split) for key, split in parts.items()}

        labels = [*old_task.head.labels, *report.new_labels]
        rehearsed = _sample(old.train, round(rehearsal * len(new.train)), seed)
        report.rehearsed = len(rehearsed)
        validation = _joined(new.validation, _sample(old.validation, len(new.validation), seed))
        mixed = TaskData(_joined(new.train, rehearsed), validation, None, labels, {**(record.data or {})})
        head = head_cls(labels, options=spec.head)
        head.initialize(mixed.train.labels, labels)
        torch.manual_seed(seed)  # a new label's head row starts the same in every run of the same update (and on --resume)
        task = grown_task(old_task, labels, chain.model.new_task(head, old_task.mode.config()))
        if not resume and checkpoint.exists():
            console.print(Text(f"update: {run_dir} holds the checkpoint of an interrupted update; starting over (--resume continues it)"))
        elif resume and not checkpoint.exists():
            console.print(Text(f"update: no interrupted update to resume in {run_dir}; starting one"))
        result = chain.fit(spec, training, data=mixed, init=task, repeat=True, run_dir=run_dir, resume=resume, progress=progress)
        report.best_epoch = result.best_epoch
        after = {key: _scores(chain, name, split) for key, split in parts.items()}
        report.scores = {
            key: {"before": (before[key] or {}).get(metric), "after": (after[key] or {}).get(metric)}  # type: ignore[misc]
            for key in parts
        }
        old_before, old_after = report.scores["old test"]["before"], report.scores["old test"]["after"]
        sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
        lost = sign * ((old_before or 0.0) - (old_after or 0.0)) * 100 if old_before is not None else 0.0
        if lost > max_forgetting and not force:
            checkpoint.remove()  # refused: nothing to resume
            report.note = (
                f"refused: the old test {metric} fell {lost:.2f} points ({old_before:.4f} -> {old_after:.4f}), "
                f"more than --max-forgetting {max_forgetting}"
            )
            return report
        report.kept_version = keep_task_version(chain_dir, name)
        updates = [*(record.data or {}).get("updates", [])]
        updates.append(
            {
                "file": str(data.resolve()),  # read again by the next update, from wherever it runs
                "rows": len(new.train) + len(new.validation),
                "new_labels": report.new_labels,
                "rehearsed": report.rehearsed,
                "date": dt.date.today().isoformat(),
                "previous_version": report.kept_version,
            }
        )
        metrics = dict(chain.records[name].metrics or {})
        if old.test is not None and after["old test"] is not None:  # the old test set, scored above
            metrics["test"] = {k: round(v, 6) for k, v in after["old test"].items()}
        chain.records[name] = chain.records[name].model_copy(
            update={
                "spec": record.spec,
                "data": {**(record.data or {}), "updates": updates},
                "metrics": metrics,
                "train_seconds": result.train_seconds,
            }
        )
        chain.save_pretrained(chain_dir, tasks=[name])  # the task swapped whole (see save_chain)
        saved.append(report.kept_version)
        checkpoint.remove()
        report.accepted = True
        return report


def _chain_with(chain_dir: Path, name: str, device: str) -> Chain:
    """The saved chain in ``chain_dir``; a task ``name`` it does not have is an error listing those it has."""
    require_task(chain_dir, name)
    return Chain.from_pretrained(chain_dir, device=device)


def restore_task(chain_dir: Path, name: str, version: int | None = None) -> int:
    """Bring back a kept version of task ``name`` (default: the latest); the current one is kept as a version too, so
    a restore can be undone. Returns the version restored.

    Example:
        >>> restore_task(Path("my-chain"), "intent")  # doctest: +SKIP
        1
    """
    before: list[str | None] = []  # the folder the task is in now (one swapped in gets a folder of a new name)
    current: list[int] = []  # the number the current version is kept as, once it is

    def swapped() -> bool:
        return bool(before) and read_manifest(chain_dir).tasks[name].folder != before[0]

    def left() -> str:
        if swapped():  # stopped after the new manifest: the restore is done
            return f"{chain_dir}: version {version} of '{name}' is restored; the one before is kept as version {current[0]}"
        return f"{chain_dir} is unchanged; run the same command again"

    with folder_lock(chain_dir, "writing to"), saying_on_interrupt("restore", left):
        kept = task_versions(chain_dir, name)
        if not kept:
            raise FinechainError(f"task '{name}' has no kept version", file=chain_dir, fix="versions are kept by finechain update")
        version = version if version is not None else kept[-1]
        chain = _chain_with(chain_dir, name, device="cpu")
        task, record = load_task_version(chain.model, chain_dir, name, version)
        before.append(read_manifest(chain_dir).tasks[name].folder)
        try:
            current.append(keep_task_version(chain_dir, name))
            chain.attach(name, task, record)
            chain.save_pretrained(chain_dir, tasks=[name])
        except BaseException:
            if current and not swapped():  # the copy of the current version is not kept without the restore
                remove_task_version(chain_dir, name, current[0])
            raise
        return version


def add_flows(chain_dir: Path, flow_file: Path, replace: bool = False) -> list[str]:
    """Add the flows of ``flow_file`` (one flow, or ``flows: [...]``; :func:`~finechain.spec.load_flow_file`) to the
    saved chain in ``chain_dir``, its tasks untouched: a flow it has already is an error unless ``replace``; each is
    checked against the chain's tasks (labels, span types, other chains; ``allow: seen`` filled in from the files the
    tasks were trained from) before anything is written, and only the manifest is rewritten. Returns the names added.

    Example:
        >>> add_flows(Path("my-chain"), Path("assistant.yaml"))  # doctest: +SKIP
        ['assistant']
    """
    manifest = read_manifest(chain_dir)
    flows, lines = load_flow_file(flow_file, {name: task.head.type for name, task in manifest.tasks.items()})
    with folder_lock(chain_dir, "writing to"):
        chain = Chain.from_pretrained(chain_dir, device="cpu")
        for i, flow in enumerate(flows):
            if flow.name in chain.flows and not replace:
                line = lines.get(("flows", i, "name"))
                raise FinechainError(
                    f"flow '{flow.name}' already exists in this chain", file=flow_file, line=line, fix="rename it, or pass --replace"
                )
            stages = [s.model_copy(update={"chain": os.path.relpath(s.chain, chain_dir)}) if s.chain else s for s in flow.stages]
            try:
                chain.add_flow(flow.model_copy(update={"stages": stages}))
            except FinechainError as error:
                if error.file is not None:  # a data file's own error (allow: seen reads the training files)
                    raise
                where = tuple(int(part) if part.isdigit() else part for part in (error.field or "").split(".") if part)
                raise error.at(flow_file, nearest_line(lines, ("flows", i, *where))) from None
        chain.save_pretrained(chain_dir, tasks=[])
    return [flow.name for flow in flows]


def remove_flow(chain_dir: Path, name: str) -> None:
    """Take flow ``name`` out of the saved chain in ``chain_dir`` (its tasks stay); only the manifest is rewritten.

    Example:
        >>> remove_flow(Path("my-chain"), "assistant")  # doctest: +SKIP
    """
    with folder_lock(chain_dir, "writing to"):
        chain = Chain.from_pretrained(chain_dir, device="cpu")
        chain.remove_flow(name)
        chain.save_pretrained(chain_dir, tasks=[])


def remove_task(chain_dir: Path, name: str, with_flows: bool = False) -> list[str]:
    """Take task ``name`` out of a saved chain, with its files and kept versions; no other task is touched. A flow
    that runs the task is an error naming it, or with ``with_flows`` is removed too. Returns the flows removed. The new
    manifest is written before any file goes: an interrupt leaves the chain with the task or without it, whole.

    Example:
        >>> remove_task(Path("my-chain"), "topic")  # doctest: +SKIP
        []
    """

    def left() -> str:
        if (chain_dir / MANIFEST).is_file() and name not in read_manifest(chain_dir).tasks:
            return f"{chain_dir}: task '{name}' is removed"
        return f"{chain_dir} is unchanged; run the same command again"

    with folder_lock(chain_dir, "writing to"), saying_on_interrupt("remove-task", left):
        chain = _chain_with(chain_dir, name, device="cpu")
        flows = chain.flows_using(name) if with_flows else []
        for flow in flows:
            chain.remove_flow(flow)
        chain.remove_task(name)
        chain.save_pretrained(chain_dir, tasks=[])
        return flows
