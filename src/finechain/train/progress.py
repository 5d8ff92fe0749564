"""Progress bar (rich) and per-epoch JSONL metrics log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class TrainProgress:
    """A rich progress bar showing loss, the validation metric and ETA over all training steps.

    Example:
        >>> with TrainProgress("intent", total=100, enabled=False) as bar:
        ...     bar.advance(loss=0.5)
    """

    def __init__(self, task: str, total: int, enabled: bool = True, completed: int = 0) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[metric]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            disable=not enabled,
        )
        self.task_id = self.progress.add_task(task, total=total, completed=completed, loss="-", metric="")

    def __enter__(self) -> TrainProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def advance(self, steps: int = 1, loss: float | None = None) -> None:
        """Move forward and show the running loss."""
        fields = {"loss": f"{loss:.4f}"} if loss is not None else {}
        self.progress.update(self.task_id, advance=steps, **fields)

    def show_metric(self, text: str) -> None:
        """Show the latest validation result."""
        self.progress.update(self.task_id, metric=text)


class MetricsLog:
    """Append one JSON object per epoch to ``metrics.jsonl`` (kept across ``--resume``)."""

    def __init__(self, path: Path | None, fresh: bool) -> None:
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            if fresh and path.exists():
                path.unlink()

    def write(self, record: dict[str, Any]) -> None:
        """Append and flush one record."""
        if self.path is None:
            return
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
