"""Train a chain from a spec into a folder, or add tasks to a saved one; reports for each task."""

from __future__ import annotations

import os
from collections.abc import Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from finechain.chain import Chain, open_engine
from finechain.data.check import data_warnings
from finechain.data.prepare import TaskData
from finechain.errors import NOTHING_TO_RESUME, FinechainError, saying_on_interrupt
from finechain.evaluate.report import write_report
from finechain.flows.flow import stage_engines
from finechain.flows.routing import Answers, routed_task_data
from finechain.heads import head_type
from finechain.io import folder_lock
from finechain.jobs.checking import Checked, check_new_tasks, check_out_folder, check_spec, load_all
from finechain.model.device import pick_device
from finechain.model.manifest import MANIFEST, read_manifest
from finechain.progress import tagged
from finechain.spec import TaskSpec, TrainingConfig, TuneConfig, load_task_specs
from finechain.spec.flows import route_trained
from finechain.train.checkpoint import Checkpointer
from finechain.train.fit import FitResult

Row = tuple[str, str, dict[str, Any]]


def _train_and_save(
    chain: Chain, spec: TaskSpec, data: TaskData, training: TrainingConfig, out_dir: Path, resume: bool, progress: bool, console: Console
) -> list[Row]:
    console.print(
        Text.assemble(
            (spec.name, "bold"),
            f": {spec.type}, {len(data.train)} train / {len(data.validation)} validation examples, {len(data.labels) or 'no'} labels",
        )
    )
    result = chain.fit(spec, training, run_dir=out_dir / "runs" / spec.name, resume=resume, progress=progress, data=data)
    chain.save_pretrained(out_dir, tasks=[spec.name])
    return reports(chain, spec.name, result, out_dir)


def say_data_warnings(console: Console, task: str, data: TaskData, task_type: str) -> None:
    """Print the likely mistakes in one task's data (:func:`~finechain.data.check.data_warnings`: a label spelled two
    ways, the same text with two labels, ...) and a missing validation set, each a line.

    Example:
        >>> say_data_warnings(Console(stderr=True), "intent", data, "classification")  # doctest: +SKIP
        warning intent: 1 training text occurs with different labels (e.g. 'good film': ['neg', 'pos']); fix the labels, ...
    """
    for warning in data_warnings(data, head_type(task_type), mistakes_only=True):
        console.print(tagged("warning", "yellow", f"{task}: {warning}"), soft_wrap=True)


def reports(chain: Chain, name: str, result: FitResult, out_dir: Path) -> list[Row]:
    labels = chain.tasks[name].head.labels
    rows: list[Row] = []
    if result.validation:  # none without dev data for a zero-shot task, or few-shot data too small to cut from
        write_report(out_dir / "reports" / name, name, "validation", result.validation, labels)
        rows.append((name, "validation", _scalars(result.validation)))
    if result.test is not None:
        write_report(out_dir / "reports" / name, name, "test", result.test, labels)
        rows.append((name, "test", _scalars(result.test)))
    return rows


def _scalars(scores: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in scores.items() if isinstance(v, float)}


def train_chain(
    spec_path: Path,
    out_dir: Path,
    *,
    resume: bool = False,
    copy_backbone: bool = False,
    progress: bool = True,
    console: Console | None = None,
    checked: Checked | None = None,
) -> list[Row]:
    """Train every task of a chain spec into ``out_dir`` (locked while it runs); with ``resume``, finished tasks are
    kept and an interrupted one continues from its last checkpoint. Nothing is trained before :func:`check_spec` passes
    (``checked``: its result for this spec, when the caller ran it already).

    Example:
        >>> rows = train_chain(Path("chain.yaml"), Path("my-chain"))  # doctest: +SKIP
    """
    console = console or Console(stderr=True)
    checked = checked or check_spec(spec_path)
    spec, data = checked.spec, checked.data
    if spec.tune is not None:  # `tune: auto`: search first, then train the best settings found
        return _tune_then_train(spec_path, spec.tune, out_dir, resume, copy_backbone, progress, console)
    with folder_lock(out_dir, "training into", keep=resumable), saying_what_is_left(out_dir, [t.name for t in spec.tasks]):
        check_out_folder(out_dir, resume)
        if resume and (out_dir / MANIFEST).exists():
            chain = Chain.from_pretrained(out_dir, device=spec.device)
        else:
            chain = Chain.from_backbone(spec.backbone, checked.split, spec.max_length, spec_path.parent, spec.sharing_mode)
            chain = chain.to(pick_device(spec.device))
        console.print(  # Text: a backbone path is printed as written, whatever the console's markup setting
            Text(
                f"backbone {chain.model.backbone.name}: trunk = embeddings + {chain.split} of {chain.num_layers} layers, "
                f"each task tunes {chain.num_layers - chain.split} branch layers"
            )
        )
        for task in spec.tasks:  # the likely mistakes `finechain check` finds in the data, before the minutes of training
            if task.name not in chain.tasks:
                say_data_warnings(console, task.name, data[task.name], task.type)
        rows: list[Row] = []
        routed = route_trained(spec.flows)  # trained last, on the rows their routes send them
        pending = [task for task in spec.tasks if task.name not in chain.tasks]
        later = sorted(
            (task for task in pending if task.name in routed),
            key=lambda task: len(routed[task.name][0].ancestors(routed[task.name][1].key)),
        )
        for task in spec.tasks:
            if task.name in chain.tasks:
                console.print(f"{task.name}: already trained, kept")
        pending = [task for task in pending if task.name not in routed]
        if spec.sharing_mode == "joint" and pending:
            if chain.tasks:
                raise FinechainError(
                    "joint training must train all tasks together", file=out_dir, fix="start again in an empty --out folder"
                )
            console.print(Text(f"joint multi-task training of the trunk on {[t.name for t in pending]}"))
            joint_data: dict[str, Any] = {t.name: data[t.name] for t in pending}
            results = chain.fit_joint(
                pending, spec.training, spec.joint, data=joint_data, run_dir=out_dir / "runs", resume=resume, progress=progress
            )
            chain.save_pretrained(out_dir)
            for task in pending:
                rows += reports(chain, task.name, results[task.name], out_dir)
            pending = []
        for task in pending:
            rows += _train_and_save(chain, task, data[task.name], spec.training, out_dir, resume, progress, console)
        answers: Answers = {}  # the upstream stages' answers per file, shared by sibling routes
        engines = {None: chain.engine, **stage_engines([routed[t.name][0] for t in later], None, open_engine)}  # opened once
        for task in later:  # a routed stage under another routed stage comes after it
            flow, stage = routed[task.name]
            upstream = next((t for t in spec.tasks if t.name == flow.stage(stage.after or "").task), None)
            routed_data = routed_task_data(task, flow, stage, engines, upstream=upstream, seed=spec.training.seed, cache=answers)
            kept, total = routed_data.provenance["route"]["rows"]["train"]
            reach = f"{kept} of {total} training rows reach stage '{stage.key}' of flow '{flow.name}'"
            console.print(Text(f"{task.name}: {reach} ({stage.train_on} routes)"))
            rows += _train_and_save(chain, task, routed_data, spec.training, out_dir, resume, progress, console)
        chain.folder = out_dir
        for flow in spec.flows:  # other chains' folders are kept relative to this one: move them together
            stages = [s.model_copy(update={"chain": os.path.relpath(s.chain, out_dir)}) if s.chain else s for s in flow.stages]
            chain.add_flow(flow.model_copy(update={"stages": stages}))
        chain.save_pretrained(out_dir, copy_backbone=copy_backbone, tasks=[])
    return rows


def resumable(out_dir: Path) -> bool:
    """Whether a training folder holds anything ``--resume`` continues from: a saved chain (finished tasks) or a
    checkpoint of an unfinished one. A new folder without either (a run stopped before its first validation check) is
    removed when the run stops.

    Example:
        >>> import tempfile
        >>> resumable(Path(tempfile.mkdtemp()))
        False
    """
    return (out_dir / MANIFEST).is_file() or bool(Checkpointer.runs_under(out_dir / "runs"))


def left_in(folder: Path, tasks: Iterable[str]) -> str:
    """What a training run stopped early leaves in ``folder`` for ``--resume``, in words: which of ``tasks`` are trained
    and saved, which of their runs are checkpointed at a validation check (and a joint run's, before any chain is saved;
    not the runs of a saved chain's other tasks), or nothing.

    Example:
        >>> import tempfile
        >>> left_in(Path(tempfile.mkdtemp()), ["sentiment"])
        'stopped before its first validation check, so nothing is checkpointed; run the same command again'
    """
    tasks, chain = list(tasks), (folder / MANIFEST).is_file()
    try:
        saved = [t for t in tasks if t in read_manifest(folder).tasks] if chain else []
    except Exception:  # a damaged manifest: said when the folder is next read, not here, on the way out of an interrupt
        saved = []
    runs = {run.name for run in Checkpointer.runs_under(folder / "runs")}
    running = sorted(r for r in runs if r not in saved and (r in tasks or not chain))  # a joint run ends before the chain is saved
    parts = [f"{', '.join(saved)} {'is' if len(saved) == 1 else 'are'} trained and saved"] if saved else []
    parts += [f"{r if r in tasks else f'the {r} run'} is checkpointed at its last validation check" for r in running]
    if not parts:
        return NOTHING_TO_RESUME
    return "; ".join([*parts, "rerun with --resume to continue"])


def saying_what_is_left(folder: Path, tasks: list[str]) -> AbstractContextManager[None]:
    """Give an interrupt (Ctrl-C, SIGTERM) that leaves this block a ``left`` attribute: :func:`left_in` ``folder``, what
    the command line prints with it.

    Example:
        >>> import tempfile
        >>> try:
        ...     with saying_what_is_left(Path(tempfile.mkdtemp()), ["sentiment"]):
        ...         raise KeyboardInterrupt
        ... except KeyboardInterrupt as stop:
        ...     print(stop.left)
        stopped before its first validation check, so nothing is checkpointed; run the same command again
    """
    return saying_on_interrupt("training", lambda: left_in(folder, tasks))


def _tune_then_train(
    spec_path: Path, tune: TuneConfig, out_dir: Path, resume: bool, copy_backbone: bool, progress: bool, console: Console
) -> list[Row]:
    """``finechain tune`` with the spec's ``tune`` settings, the best spec written next to ``out_dir``
    (``<out>.tuned.yaml``, kept: it says what was chosen), then that spec trained into ``out_dir``. A resumed run
    reuses a tuned spec already written."""
    from finechain.jobs.tuning import parse_budget, tune_spec

    tuned = out_dir.with_name(f"{out_dir.name}.tuned.yaml")
    if not (resume and tuned.is_file()):
        check_out_folder(out_dir, resume=False)  # no tuned spec to resume from: a chain there is one this run did not make
        budget = parse_budget(tune.budget) if tune.budget else None
        console.print(Text(f"tune: up to {tune.trials} trials{f' within {tune.budget}' if tune.budget else ''}, then the best is trained"))
        result = tune_spec(spec_path, trials=tune.trials, budget_seconds=budget, out=tuned, progress=progress)
        console.print(Text(f"tune: trial {result.best.number} of {len(result.trials)} chosen, {result.best.params}; written to {tuned}"))
    return train_chain(tuned, out_dir, resume=resume, copy_backbone=copy_backbone, progress=progress, console=console)


def add_tasks(
    chain_dir: Path, task_file: Path, *, replace: bool = False, resume: bool = False, progress: bool = True, console: Console | None = None
) -> list[Row]:
    """Train the task(s) in ``task_file`` onto a saved chain, leaving its other tasks untouched.

    Example:
        >>> add_tasks(Path("my-chain"), Path("topic.yaml"))  # doctest: +SKIP
    """
    console = console or Console(stderr=True)
    specs = load_task_specs(task_file)
    with folder_lock(chain_dir, "writing to"), saying_what_is_left(chain_dir, [spec.name for spec in specs]):
        check_new_tasks(chain_dir, specs, task_file, replace)
        chain = Chain.from_pretrained(chain_dir, device="auto")
        training = TrainingConfig()
        data = load_all(specs, training)
        for spec in specs:
            say_data_warnings(console, spec.name, data[spec.name], spec.type)
        rows: list[Row] = []
        for spec in specs:
            rows += _train_and_save(chain, spec, data[spec.name], training, chain_dir, resume, progress, console)
    return rows
