"""Score a saved task on a labelled file and write its reports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from finechain.chain import Chain
from finechain.data.prepare import check_known_labels, read_split
from finechain.errors import FinechainError
from finechain.evaluate.report import write_report
from finechain.spec import TaskSpec

DATA_SUFFIXES = {".csv", ".tsv", ".jsonl", ".ndjson", ".json", ".txt", ".conll", ".iob", ".bio"}


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
