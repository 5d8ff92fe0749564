"""Score a saved task on a labelled file and write its reports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from finechain.data.prepare import check_known_labels, read_split, trained_columns
from finechain.errors import FinechainError
from finechain.evaluate.report import write_report
from finechain.flows.flow import allowed_after, saved_flow
from finechain.inference import Engine
from finechain.inference.exported import ExportedChain, is_exported
from finechain.jobs.checking import manifest_tasks
from finechain.model.manifest import read_manifest
from finechain.spec import TaskSpec
from finechain.spec.flows import FlowSpec

DATA_SUFFIXES = {".csv", ".tsv", ".jsonl", ".ndjson", ".json", ".txt", ".conll", ".iob", ".bio"}


def _open(chain_dir: Path, runtime: str = "auto") -> tuple[Engine, dict[str, FlowSpec], dict[str, dict[str, Any] | None]]:
    """A chain folder (PyTorch) or an exported one (its ``runtime``): its engine, its flows, and each task's spec as
    trained (files are read with its columns)."""
    if is_exported(chain_dir):
        exported = ExportedChain(chain_dir, runtime=runtime)
        return Engine(exported), exported.flows, {name: task.spec for name, task in exported.manifest.tasks.items()}
    from finechain.chain import Chain  # PyTorch: imported once the folder's manifest has been read and found sound

    chain = Chain.from_pretrained(chain_dir, device="auto")
    return chain.engine, chain.flows, {name: record.spec for name, record in chain.records.items()}


def _known_task(task: str, tasks: list[str], chain_dir: Path) -> None:
    if task not in tasks:
        raise FinechainError(f"unknown task '{task}'", file=chain_dir, fix=f"this chain has {sorted(tasks)}")


def evaluate_file(
    chain_dir: Path, task: str, data_path: Path, report_dir: Path | None = None, runtime: str = "auto"
) -> tuple[dict[str, Any], list[Path]]:
    """Score a saved task on a labelled file (read with the task's own columns) and write reports. ``chain_dir`` may be
    an exported folder (run by ``runtime``: auto, onnxruntime or openvino).

    Example:
        >>> scores, paths = evaluate_file(Path("my-chain"), "intent", Path("test.csv"))  # doctest: +SKIP
    """
    if not is_exported(chain_dir):  # a damaged manifest or an unknown task fails here, before PyTorch loads
        _known_task(task, list(read_manifest(chain_dir).tasks), chain_dir)
    engine, _, specs = _open(chain_dir, runtime)
    _known_task(task, list(engine.model.tasks), chain_dir)
    head = engine.model.tasks[task].head
    spec = TaskSpec.model_validate(specs.get(task) or {"name": task, "type": head.type_name})
    with trained_columns(spec):
        split = read_split(data_path, spec, type(head))
    check_known_labels(split, head)
    scores = engine.score(task, split.texts, split.labels)
    name = data_path.stem if data_path.suffix.lower() in DATA_SUFFIXES else data_path.name  # eng.testa, eng.testb stay apart
    paths = write_report(report_dir or chain_dir / "reports" / task, task, name, scores, head.labels)
    return scores, paths


def evaluate_flow(chain_dir: Path, flow_name: str, data_path: Path, runtime: str = "auto") -> dict[str, Any]:
    """Score a chain's flow on a labelled file: each stage that reads the text is read with its task's own columns
    and scored on the texts that reached it (its head's metrics, ``n`` = how many reached it); the flow runs on the
    word lists a stage reads where one does (a tagger's ``words`` column), so that its tags line up with its words,
    else on the texts. ``exact_match`` is the
    share of texts where every such stage was right (a stage routed away counts as right only where its gold says
    there was nothing to find, e.g. no slots). Stages that read spans are not scored.

    Example:
        >>> evaluate_flow(Path("snips-chain"), "assistant", Path("test.jsonl"))["exact_match"]  # doctest: +SKIP
        0.88
    """
    engine, flows, specs = _open(chain_dir, runtime)
    from finechain.chain import open_engine

    flow = saved_flow(flow_name, flows, engine, chain_dir, open_engine)
    stages = [s for s in flow.spec.stages if s.input == "text"]
    golds: dict[str, list[Any]] = {}
    texts: list[Any] | None = None
    for stage in stages:
        engine = flow.engines[stage.chain]
        head = engine.model.tasks[stage.task].head
        stored = specs.get(stage.task) if stage.chain is None else _stored_spec(chain_dir / stage.chain, stage.task)
        spec = TaskSpec.model_validate(stored or {"name": stage.task, "type": head.type_name})
        try:
            with trained_columns(spec):
                split = read_split(data_path, spec, type(head))
        except FinechainError as error:  # one file serves every stage: say which stage could not read it
            fix = f"{error.fix}; a flow's file holds every stage's fields (JSONL, one object per text)" if error.fix else None
            raise type(error)(f"stage '{stage.key}': {error.message}", file=error.file, line=error.line, fix=fix) from None
        check_known_labels(split, head)
        golds[stage.key] = split.labels
        if texts is not None and len(split.texts) != len(texts):
            raise FinechainError(
                f"stage '{stage.key}' reads {len(split.texts)} rows, others {len(texts)}", file=data_path, fix="one row per text"
            )
        if texts is None or (split.texts and not isinstance(texts[0], list) and isinstance(split.texts[0], list)):
            texts = list(split.texts)  # word lists where a stage reads them (a tagger's words), so its tags line up
    texts = texts or []
    results = flow.run(texts)
    scores: dict[str, Any] = {"stages": {}, "n": len(texts)}
    right = [True] * len(texts)
    for stage in stages:
        engine = flow.engines[stage.chain]
        head = engine.model.tasks[stage.task].head
        reached = [i for i, r in enumerate(results) if stage.key in r.answers]
        gold = golds[stage.key]
        if reached:
            allowed = [allowed_after(stage, results[i].answers.get(stage.after or "")) for i in reached]  # as the stage answered
            scored = engine.score(stage.task, [texts[i] for i in reached], [gold[i] for i in reached], allowed)
            scores["stages"][stage.key] = {k: v for k, v in scored.items() if isinstance(v, float)} | {"n": float(len(reached))}
        for i, result in enumerate(results):
            answer = result.answers.get(stage.key)
            agrees = head.empty_agrees(gold[i]) if answer is None else answer.agrees(gold[i])  # type: ignore[union-attr]
            right[i] = right[i] and agrees is not False
    scores["exact_match"] = sum(right) / len(right) if right else 0.0
    return scores


def _stored_spec(folder: Path, task: str) -> dict[str, Any] | None:
    """The spec a task of another chain folder (or exported folder) was trained from, as its manifest keeps it."""
    entry = manifest_tasks(folder)[1].get(task)
    return entry.get("spec") if isinstance(entry, dict) else None
