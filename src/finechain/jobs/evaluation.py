"""Score a saved task on a labelled file and write its reports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from finechain.chain import Chain
from finechain.data.prepare import check_known_labels, read_split
from finechain.errors import FinechainError
from finechain.evaluate.report import write_report
from finechain.inference import Engine
from finechain.inference.exported import ExportedChain, is_exported
from finechain.spec import TaskSpec

DATA_SUFFIXES = {".csv", ".tsv", ".jsonl", ".ndjson", ".json", ".txt", ".conll", ".iob", ".bio"}


def evaluate_file(chain_dir: Path, task: str, data_path: Path, report_dir: Path | None = None) -> tuple[dict[str, Any], list[Path]]:
    """Score a saved task on a labelled file (read with the task's own columns) and write reports. ``chain_dir`` may be
    an exported folder (ONNX Runtime).

    Example:
        >>> scores, paths = evaluate_file(Path("my-chain"), "intent", Path("test.csv"))  # doctest: +SKIP
    """
    if is_exported(chain_dir):
        exported = ExportedChain(chain_dir)
        engine, stored = Engine(exported), exported.manifest.tasks[task].spec if task in exported.tasks else None
    else:
        chain = Chain.from_pretrained(chain_dir, device="auto")
        engine, stored = chain.engine, chain.records[task].spec if task in chain.tasks else None
    if task not in engine.model.tasks:
        raise FinechainError(f"unknown task '{task}'", file=chain_dir, fix=f"this chain has {sorted(engine.model.tasks)}")
    head = engine.model.tasks[task].head
    spec = TaskSpec.model_validate(stored or {"name": task, "type": head.type_name})
    split = read_split(data_path, spec, type(head))
    check_known_labels(split, head)
    scores = engine.score(task, split.texts, split.labels)
    name = data_path.stem if data_path.suffix.lower() in DATA_SUFFIXES else data_path.name  # eng.testa, eng.testb stay apart
    paths = write_report(report_dir or chain_dir / "reports" / task, task, name, scores, head.labels)
    return scores, paths
