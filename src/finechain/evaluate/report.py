"""Evaluation reports per task: JSON, Markdown and (for classification) a confusion-matrix PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from finechain.io import atomic_write, write_json, write_text


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def markdown_report(task: str, split: str, scores: dict[str, Any]) -> str:
    """Render scores as a Markdown page: headline metrics, then the per-class table.

    Example:
        >>> print(markdown_report("t", "dev", {"accuracy": 0.5, "n": 2}).splitlines()[0])
        # t: dev
    """
    lines = [f"# {task}: {split}", "", "| metric | value |", "| --- | --- |"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in scores.items() if isinstance(v, int | float)]
    per_class = scores.get("per_class") or scores.get("per_type")
    if per_class:
        lines += ["", "| label | precision | recall | f1 | support |", "| --- | --- | --- | --- | --- |"]
        lines += [
            f"| {label} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | {m['support']} |" for label, m in per_class.items()
        ]
    return "\n".join(lines) + "\n"


def confusion_png(path: Path, matrix: list[list[int]], labels: list[str], title: str) -> Path:
    """Save a confusion-matrix heat map (rows: true label, columns: predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = min(24.0, max(4.0, 0.35 * len(labels) + 2))
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=max(4, 10 - len(labels) // 10))
    ax.set_yticks(range(len(labels)), labels, fontsize=max(4, 10 - len(labels) // 10))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if len(labels) <= 15:
        for i, row in enumerate(matrix):
            for j, count in enumerate(row):
                ax.text(j, i, str(count), ha="center", va="center", fontsize=8, color="black")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return path


def write_report(directory: str | Path, task: str, split: str, scores: dict[str, Any], labels: list[str]) -> list[Path]:
    """Write ``<split>.json``, ``<split>.md`` and, with a confusion matrix, ``<split>_confusion.png``.

    Example:
        >>> import tempfile
        >>> [p.suffix for p in write_report(tempfile.mkdtemp(), "t", "dev", {"accuracy": 1.0}, [])]
        ['.json', '.md']
    """
    directory = Path(directory)
    paths = [
        write_json(directory / f"{split}.json", {"task": task, "split": split, **scores}),
        write_text(directory / f"{split}.md", markdown_report(task, split, scores)),
    ]
    if "confusion_matrix" in scores and labels:
        paths.append(confusion_png(directory / f"{split}_confusion.png", scores["confusion_matrix"], labels, f"{task}: {split}"))
    return paths
