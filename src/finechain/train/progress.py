"""The JSONL metrics log, and the hook that feeds it and the progress bar (:mod:`finechain.progress`) from the
training loop."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from finechain.io import write_text
from finechain.progress import TrainProgress
from finechain.train.loop import Check, Hook, TrainingLoop


class MetricsLog:
    """Append one JSON object per validation check to ``metrics.jsonl`` (kept across ``--resume``)."""

    def __init__(self, path: Path | None, fresh: bool) -> None:
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            if fresh and path.exists():
                path.unlink()

    def drop_after(self, step: int) -> None:
        """Drop the records of checks after optimizer step ``step`` (a resumed run's checkpoint): the run does them again.

        Example:
            >>> import tempfile
            >>> log = MetricsLog(Path(tempfile.mkdtemp()) / "metrics.jsonl", fresh=True)
            >>> log.write({"step": 10}); log.write({"step": 20}); log.drop_after(10)
            >>> log.path.read_text()
            '{"step": 10}\\n'
        """
        if self.path is None or not self.path.is_file():
            return
        lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [line for line in lines if json.loads(line).get("step", 0) <= step]
        if len(kept) < len(lines):
            write_text(self.path, "".join(kept))

    def write(self, record: dict[str, Any]) -> None:
        """Append and flush one record."""
        if self.path is None:
            return
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()


class Report(Hook):
    """The hook that shows and records a run: the progress bar moves with every batch; each validation check becomes a
    record (``record(check)``) appended to ``history`` and to the metrics log, and its ``headline`` is shown on the bar.

    Example:
        >>> report = Report(bar, log, record=lambda check: {"epoch": check.epoch})  # doctest: +SKIP
    """

    def __init__(
        self,
        bar: TrainProgress,
        log: MetricsLog,
        record: Callable[[Check], dict[str, Any]],
        headline: Callable[[Check], str],
    ) -> None:
        self.bar, self.log, self.record, self.headline = bar, log, record, headline
        self.history: list[dict[str, Any]] = []

    def on_start(self, loop: TrainingLoop) -> None:
        """A resumed run: move the bar to where it goes on from (with the epoch's loss so far), and drop the log's
        records of checks after its checkpoint (the run does them again)."""
        if loop.batches_done:
            self.bar.advance(loop.batches_done, loss=loop.epoch_mean_loss)
            self.log.drop_after(loop.state.step)

    def on_batch(self, loop: TrainingLoop, loss: float | None) -> None:
        """Advance the bar (showing the running loss when sampled)."""
        self.bar.advance(loss=loss)

    def on_check(self, loop: TrainingLoop, check: Check) -> None:
        """Log the check and show its metric."""
        record = self.record(check)
        self.log.write(record)
        self.history.append(record)
        self.bar.show_metric(self.headline(check))
