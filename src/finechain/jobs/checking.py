"""Check a spec the way training does, without training: the spec, every data file, the backbone, the split, the
device. No PyTorch is imported before the data has passed (a bad file is reported in a moment)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finechain.data.check import DataCheck, check_data
from finechain.data.prepare import TaskData, load_task_data
from finechain.errors import FinechainError
from finechain.flows.routing import fill_seen
from finechain.heads import head_type
from finechain.heads.tagging import entity_types
from finechain.io import check_folder_path
from finechain.model.backbone import check_max_length, inspect_backbone, inspect_tokenizer, resolve_backbone
from finechain.model.manifest import MANIFEST, read_manifest
from finechain.spec import ChainSpec, TaskSpec, TrainingConfig, load_chain_spec, spec_line
from finechain.spec.flows import FlowSpec, StageSpec, TaskFacts, stage_problem


def load_all(specs: list[TaskSpec], training: TrainingConfig) -> dict[str, TaskData]:
    """Read and check every task's data before any training starts."""
    return {s.name: load_task_data(s, head_type(s.type), s.training.apply(training).seed) for s in specs}


@dataclass
class Checked:
    """A spec with every check that training runs before its first step done: the spec, each task's data (read,
    checked, split), the backbone's folder and tokenizer (config and weights header checked; the tokenizer read from
    its ``tokenizer.json``, no PyTorch), the trunk depth."""

    spec: ChainSpec
    data: dict[str, TaskData]
    backbone: Path
    tokenizer: Any
    split: int


def check_spec(spec_path: Path) -> Checked:
    """Everything ``train`` checks before training, without training: the spec, every data file, the backbone (found,
    config and weights readable, tokenizer, ``max_length`` within its positions), ``split`` within its layers, the
    device. A problem is a one-line error at the spec line that caused it.

    Example:
        >>> checked = check_spec(Path("chain.yaml"))  # doctest: +SKIP
        >>> checked.split  # doctest: +SKIP
        4
    """
    spec = load_chain_spec(spec_path)
    data = load_all(spec.tasks, spec.training)
    check_flows(spec, spec_path, data)
    spec = spec.model_copy(update={"flows": [seen_allowed(flow, spec, spec_path) for flow in spec.flows]})
    for index, task in enumerate(spec.tasks):  # texts for labels the data may not have: at the spec line that names them
        try:
            head_type(task.type).label_examples(task.head, data[task.name].labels)
        except FinechainError as error:
            raise error.at(spec_path, spec_line(spec_path, "tasks", index, "head", "label_texts")) from None
    try:
        path, _ = resolve_backbone(spec.backbone, spec_path.parent)
        config = inspect_backbone(path)
        tokenizer = inspect_tokenizer(path)
        check_max_length(spec.max_length, config, tokenizer)
        layers = int(config.num_hidden_layers)
        split = spec.trunk_depth(layers)
        if not 0 <= split <= layers:
            raise FinechainError(f"split {split} is outside 0..{layers} for this backbone", fix=f"choose 0..{layers}", field="split")
        if spec.device not in ("auto", "cpu"):  # whether CUDA is there takes PyTorch to tell
            from finechain.model.device import pick_device

            pick_device(spec.device)
    except FinechainError as error:  # a bad backbone, split or device: point at the spec line that set it
        if error.file is None and error.field is not None:
            raise error.at(spec_path, spec_line(spec_path, error.field)) from None
        raise
    return Checked(spec, data, path, tokenizer, split)


def check_out_folder(out_dir: Path, resume: bool) -> None:
    """Where ``train`` writes: a file there, or a chain already there when not resuming, is a one-line error.

    Example:
        >>> check_out_folder(Path("my-chain"), resume=False)  # doctest: +SKIP
        FinechainError: my-chain: this folder already holds a chain (fix: pass --resume to continue it, or choose another --out)
    """
    check_folder_path(out_dir)
    if (out_dir / MANIFEST).exists() and not resume:
        raise FinechainError("this folder already holds a chain", file=out_dir, fix="pass --resume to continue it, or choose another --out")


def check_new_tasks(chain_dir: Path, specs: list[TaskSpec], task_file: Path, replace: bool) -> None:
    """Tasks to add to the chain in ``chain_dir``: one it already has is a one-line error unless ``replace`` (read from
    its manifest: no model is loaded).

    Example:
        >>> check_new_tasks(Path("my-chain"), [TaskSpec(name="intent")], Path("intent.yaml"), replace=False)  # doctest: +SKIP
        FinechainError: intent.yaml: task 'intent' already exists in this chain (fix: rename it, or pass --replace)
    """
    existing = read_manifest(chain_dir).tasks
    for spec in specs:
        if spec.name in existing and not replace:
            raise FinechainError(f"task '{spec.name}' already exists in this chain", file=task_file, fix="rename it, or pass --replace")


def check_chain(spec_path: Path) -> tuple[list[DataCheck], list[FlowSpec]]:
    """Validate a chain spec, every data file and the backbone exactly as ``train`` does (:func:`check_spec`), then
    look at the data (no training). Returns each task's report and the flows as training will keep them (``allow:
    seen`` filled in).

    Example:
        >>> [report.warnings for report in check_chain(Path("chain.yaml"))[0]]  # doctest: +SKIP
        [[], ["only 40 validation examples: ..."]]
    """
    checked = check_spec(spec_path)
    spec = checked.spec
    reports = [
        check_data(checked.data[task.name], head_type(task.type), checked.tokenizer, spec.max_length, task.name) for task in spec.tasks
    ]
    return reports, spec.flows


def manifest_tasks(folder: Path) -> tuple[str, dict[str, Any]]:
    """The task entries of a chain folder's or an exported folder's manifest, read as JSON (no model is loaded), and
    which manifest it was; a folder without one is a one-line error.

    Example:
        >>> manifest_tasks(Path("my-chain"))[0]  # doctest: +SKIP
        'finechain.json'
    """
    import json

    for name in ("finechain.json", "finechain-export.json"):
        path = folder / name
        if path.is_file():
            try:
                tasks = json.loads(path.read_text(encoding="utf-8"))["tasks"]
            except (ValueError, KeyError, TypeError):
                raise FinechainError("its manifest cannot be read", file=path, fix="restore the chain folder") from None
            if not isinstance(tasks, dict):
                raise FinechainError("its manifest cannot be read", file=path, fix="restore the chain folder")
            return name, tasks
    raise FinechainError("not a chain folder (no finechain.json)", file=folder, fix="train that chain first, or fix the stage's 'chain:'")


def _other_chain_facts(folder: Path) -> dict[str, TaskFacts]:
    """The tasks of another chain a flow stage names, from its manifest."""
    name, tasks = manifest_tasks(folder)
    try:
        if name == "finechain.json":
            described = {task: (e["head"]["type"], e["head"]["labels"]) for task, e in tasks.items()}
        else:
            described = {task: (e["type"], e["head"]["labels"]) for task, e in tasks.items()}
    except (KeyError, TypeError):
        raise FinechainError("its manifest cannot be read", file=folder / name, fix="restore the chain folder") from None
    return {task: _facts(kind, labels) for task, (kind, labels) in described.items()}


def _facts(kind: str, labels: list[str]) -> TaskFacts:
    head = head_type(kind)
    types = entity_types(labels) if head.token_level else []
    return TaskFacts(head.token_level, head.routes_on_labels, list(labels), types)


def seen_allowed(flow: FlowSpec, spec: ChainSpec, spec_path: Path) -> FlowSpec:
    """``flow`` with each stage's ``allow: seen`` filled in from the training files (:func:`fill_seen`); both tasks
    must be this spec's, the stage's with a training file.

    Example:
        >>> seen_allowed(spec.flows[0], spec, Path("chain.yaml")).stages[1].allow["PlayMusic"]  # doctest: +SKIP
        ['album', 'artist', 'genre', 'music_item', 'playlist', 'service', 'sort', 'track', 'year']
    """
    tasks = {task.name: task for task in spec.tasks}
    for j, stage in enumerate(flow.stages):
        if stage.allow != "seen":
            continue
        upstream = flow.stage(stage.after or "")
        problem = None
        if stage.chain is not None or upstream.chain is not None:
            problem = f"stage '{stage.key}' has 'allow: seen' but it or '{upstream.key}' runs a task of another chain"
        elif tasks[stage.task].train is None:
            problem = f"'allow: seen' reads the training file of task '{stage.task}', which has none"
        if problem is not None:
            line = spec_line(spec_path, "flows", spec.flows.index(flow), "stages", j, "allow")
            raise FinechainError(problem, file=spec_path, line=line, fix="list the labels under 'allow'")
    return fill_seen(flow, tasks)


def check_flows(spec: ChainSpec, spec_path: Path, data: dict[str, TaskData]) -> None:
    """Each flow's stages against the labels of the data read and the manifests of other chains they name; the first
    problem is a one-line error at its spec line."""
    own = {task.name: _facts(task.type, data[task.name].labels) for task in spec.tasks}
    others: dict[str, dict[str, TaskFacts]] = {}
    for i, flow in enumerate(spec.flows):
        for j, stage in enumerate(flow.stages):
            if stage.chain is not None and stage.chain not in others:
                try:
                    others[stage.chain] = _other_chain_facts(Path(stage.chain))
                except FinechainError as error:
                    raise error.at(spec_path, spec_line(spec_path, "flows", i, "stages", j, "chain")) from None

            def facts(s: StageSpec) -> TaskFacts | None:
                return (own if s.chain is None else others.get(s.chain, {})).get(s.task)

            problem = stage_problem(flow, stage, facts)
            if problem is not None:
                message, where, fix = problem
                line = spec_line(spec_path, "flows", i, "stages", j, *where) or spec_line(spec_path, "flows", i, "stages", j)
                raise FinechainError(message, file=spec_path, line=line, fix=fix)
