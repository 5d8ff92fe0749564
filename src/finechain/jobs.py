"""Jobs behind the command line, each a whole piece of work from files to files: train a chain from a spec, check a
spec and its data, add tasks to a saved chain, evaluate a task on a labelled file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from finechain.chain import Chain
from finechain.data.check import DataCheck, check_data
from finechain.data.prepare import TaskData, check_known_labels, load_task_data, read_split
from finechain.errors import FinechainError
from finechain.evaluate.report import write_report
from finechain.heads import head_type
from finechain.model.artifact import MANIFEST
from finechain.model.backbone import check_max_length, load_tokenizer, resolve_backbone
from finechain.model.chain_model import pick_device
from finechain.spec import TaskSpec, TrainingConfig, load_chain_spec, load_task_specs, spec_line
from finechain.train.fit import FitResult

DATA_SUFFIXES = {".csv", ".tsv", ".jsonl", ".ndjson", ".json", ".txt", ".conll", ".iob", ".bio"}

Row = tuple[str, str, dict[str, Any]]


def _load_all(specs: list[TaskSpec], training: TrainingConfig) -> dict[str, TaskData]:
    """Read and check every task's data before any training starts."""
    return {s.name: load_task_data(s, head_type(s.type), s.training.apply(training).seed) for s in specs}


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
    return _reports(chain, spec.name, result, out_dir)


def _reports(chain: Chain, name: str, result: FitResult, out_dir: Path) -> list[Row]:
    labels = chain.tasks[name].head.labels
    write_report(out_dir / "reports" / name, name, "validation", result.validation, labels)
    rows: list[Row] = [(name, "validation", _scalars(result.validation))]
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
) -> list[Row]:
    """Train every task of a chain spec into ``out_dir``; with ``resume``, finished tasks are kept.

    Example:
        >>> rows = train_chain(Path("chain.yaml"), Path("my-chain"))  # doctest: +SKIP
    """
    console = console or Console(stderr=True)
    spec = load_chain_spec(spec_path)
    if (out_dir / MANIFEST).exists() and not resume:
        raise FinechainError("this folder already holds a chain", file=out_dir, fix="pass --resume to continue it, or choose another --out")
    data = _load_all(spec.tasks, spec.training)
    try:
        if resume and (out_dir / MANIFEST).exists():
            chain = Chain.from_pretrained(out_dir, device=spec.device)
        else:
            chain = Chain.from_backbone(spec.backbone, spec.split, spec.max_length, spec_path.parent, spec.sharing_mode)
            chain = chain.to(pick_device(spec.device))
    except FinechainError as error:  # a bad backbone, split or device: point at the spec line that set it
        if error.file is None and error.field is not None:
            raise error.at(spec_path, spec_line(spec_path, error.field)) from None
        raise
    console.print(  # Text: a backbone path is printed as written, whatever the console's markup setting
        Text(
            f"backbone {chain.model.backbone.name}: trunk = embeddings + {chain.split} of {chain.num_layers} layers, "
            f"each task tunes {chain.num_layers - chain.split} branch layers"
        )
    )
    rows: list[Row] = []
    pending = [task for task in spec.tasks if task.name not in chain.tasks]
    for task in spec.tasks:
        if task not in pending:
            console.print(f"{task.name}: already trained, kept")
    if spec.sharing_mode == "joint" and pending:
        if chain.tasks:
            raise FinechainError("joint training must train all tasks together", file=out_dir, fix="start again in an empty --out folder")
        console.print(Text(f"joint multi-task training of the trunk on {[t.name for t in pending]}"))
        joint_data: dict[str, Any] = {t.name: data[t.name] for t in pending}
        results = chain.fit_joint(
            pending, spec.training, spec.joint, data=joint_data, run_dir=out_dir / "runs", resume=resume, progress=progress
        )
        chain.save_pretrained(out_dir)
        for task in pending:
            rows += _reports(chain, task.name, results[task.name], out_dir)
        pending = []
    for task in pending:
        rows += _train_and_save(chain, task, data[task.name], spec.training, out_dir, resume, progress, console)
    chain.save_pretrained(out_dir, copy_backbone=copy_backbone, tasks=[])
    return rows


def check_chain(spec_path: Path) -> list[DataCheck]:
    """Validate a chain spec and every data file exactly as ``train`` does, then look at the data (no training).

    Example:
        >>> [report.warnings for report in check_chain(Path("chain.yaml"))]  # doctest: +SKIP
        [[], ["only 40 validation examples: ..."]]
    """
    from transformers import AutoConfig

    spec = load_chain_spec(spec_path)
    data = _load_all(spec.tasks, spec.training)
    try:
        path, _ = resolve_backbone(spec.backbone, spec_path.parent)
        tokenizer = load_tokenizer(path)
        check_max_length(spec.max_length, AutoConfig.from_pretrained(str(path), trust_remote_code=False), tokenizer)
    except FinechainError as error:
        raise error.at(spec_path, spec_line(spec_path, error.field or "backbone")) from None
    return [check_data(data[task.name], head_type(task.type), tokenizer, spec.max_length, task.name) for task in spec.tasks]


def add_tasks(
    chain_dir: Path, task_file: Path, *, replace: bool = False, resume: bool = False, progress: bool = True, console: Console | None = None
) -> list[Row]:
    """Train the task(s) in ``task_file`` onto a saved chain, leaving its other tasks untouched.

    Example:
        >>> add_tasks(Path("my-chain"), Path("topic.yaml"))  # doctest: +SKIP
    """
    console = console or Console(stderr=True)
    specs = load_task_specs(task_file)
    chain = Chain.from_pretrained(chain_dir, device="auto")
    for spec in specs:
        if spec.name in chain.tasks and not replace:
            raise FinechainError(f"task '{spec.name}' already exists in this chain", file=task_file, fix="rename it, or pass --replace")
    training = TrainingConfig()
    data = _load_all(specs, training)
    rows: list[Row] = []
    for spec in specs:
        rows += _train_and_save(chain, spec, data[spec.name], training, chain_dir, resume, progress, console)
    return rows


def evaluate_file(chain_dir: Path, task: str, data_path: Path, report_dir: Path | None = None) -> tuple[dict[str, Any], list[Path]]:
    """Score a saved task on a labelled file (read with the task's own columns) and write reports.

    Example:
        >>> scores, paths = evaluate_file(Path("my-chain"), "intent", Path("test.csv"))  # doctest: +SKIP
    """
    chain = Chain.from_pretrained(chain_dir, device="auto")
    if task not in chain.tasks:
        raise FinechainError(f"unknown task '{task}'", file=chain_dir, fix=f"this chain has {sorted(chain.tasks)}")
    stored = chain.records[task].spec or {"name": task, "type": chain.tasks[task].type_name}
    spec = TaskSpec.model_validate(stored)
    head = chain.tasks[task].head
    split = read_split(data_path, spec, type(head))
    check_known_labels(split, head)
    scores = chain.score(task, split.texts, split.labels)
    name = data_path.stem if data_path.suffix.lower() in DATA_SUFFIXES else data_path.name  # eng.testa, eng.testb stay apart
    paths = write_report(report_dir or chain_dir / "reports" / task, task, name, scores, head.labels)
    return scores, paths
