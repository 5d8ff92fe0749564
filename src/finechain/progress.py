"""What a run prints as it goes (rich): a progress bar over training steps or texts to predict, and tagged lines
(``warning ...``, ``error: ...``). No PyTorch."""

from __future__ import annotations

import datetime
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text


def tagged(tag: str, style: str, message: str) -> Text:
    """A line with a coloured tag, then the message as written (no markup read in it: a path with ``[brackets]``
    prints as it is).

    Example:
        >>> tagged("warning", "yellow", "intent: 3 labels [rare]").plain
        'warning intent: 3 labels [rare]'
    """
    return Text.assemble((tag, style), " ", message)


class TrainProgress:
    """A rich progress bar showing loss, the validation metric and ETA over all training steps.

    When stderr is not a terminal (a log file, CI, ``nohup``), a live bar would print nothing until the end;
    instead a plain line is written at every tenth of the run and after each validation.

    Example:
        >>> import sys
        >>> with TrainProgress("intent", total=100, console=Console(file=sys.stdout, width=80)) as bar:
        ...     for _ in range(10):
        ...         bar.advance(loss=0.5)
        ...     bar.show_metric("val accuracy 0.9000")
        intent 10/100 steps (10%), loss 0.5000, 0:00:00
        intent 10/100 steps (10%), loss 0.5000, val accuracy 0.9000, 0:00:00
    """

    def __init__(
        self,
        task: str,
        total: int,
        enabled: bool = True,
        completed: int = 0,
        console: Console | None = None,
        unit: str = "steps",
        show_loss: bool = True,
    ) -> None:
        self.console = console or Console(stderr=True)
        self.unit, self.show_loss = unit, show_loss
        self.lines = enabled and not (self.console.is_terminal or self.console.is_jupyter)  # notebooks keep the live bar
        self.name, self.total, self.done, self.loss, self.metric = task, total, completed, "-", ""
        self.next_line = self._next_tenth(completed)
        self.started = time.monotonic()
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            *([TextColumn("loss {task.fields[loss]}")] if show_loss else []),
            TextColumn("{task.fields[metric]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not enabled or self.lines,
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
        self.done += steps
        self.loss = fields.get("loss", self.loss)
        if self.lines and self.done >= self.next_line:
            self.next_line = self._next_tenth(self.done)
            self._line()

    def show_metric(self, text: str) -> None:
        """Show the latest validation result."""
        self.progress.update(self.task_id, metric=text)
        self.metric = text
        if self.lines:
            self._line()

    def _next_tenth(self, done: int) -> int:
        """The first step count past ``done`` that completes another tenth of the run (never, for an empty run)."""
        if self.total <= 0:
            return 1
        tenth = done * 10 // self.total + 1
        while -(-tenth * self.total // 10) <= done:
            tenth += 1
        return -(-tenth * self.total // 10)

    def _line(self) -> None:
        elapsed = datetime.timedelta(seconds=int(time.monotonic() - self.started))
        metric = f", {self.metric}" if self.metric else ""
        share = 100 * self.done // max(self.total, 1)
        loss = f", loss {self.loss}" if self.show_loss else ""
        self.console.print(Text(f"{self.name} {self.done}/{self.total} {self.unit} ({share}%){loss}{metric}, {elapsed}"))
