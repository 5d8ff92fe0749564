"""Batching across requests: many clients' token rows in one forward pass.

Requests arrive already prepared (tokenised, each row with its own tasks). One loop takes them from a bounded queue:
whenever the model is free it takes everything waiting, up to ``max_batch_size`` rows and ``max_batch_tokens``
tokens, and if that is less than a full batch waits up to ``max_wait`` for more; then the rows run in one
``forward`` on the model's own thread while the loop goes on collecting. A full queue refuses at once (the caller
answers 429); a request whose deadline passes while it waits is dropped before it costs a forward pass.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from finechain.inference import Row

Forward = Callable[[Sequence[Row]], list[dict[str, np.ndarray]]]


class Overloaded(Exception):
    """The queue is full: the request was not taken."""


class DeadlineExceeded(Exception):
    """The request's deadline passed before its rows could run."""


@dataclass
class BatchStats:
    """What one forward pass held, for metrics and the request's timings."""

    rows: int
    tokens: int
    requests: int
    seconds: float


@dataclass
class _Waiting:
    rows: list[Row]
    forward: Forward  # the engine that prepared the rows runs them (a reloaded chain does not mix with the old one)
    deadline: float
    future: asyncio.Future[tuple[list[dict[str, np.ndarray]], float, BatchStats]]
    enqueued: float = field(default_factory=time.monotonic)

    @property
    def tokens(self) -> int:
        return len(self.rows) * max((len(r.ids) for r in self.rows), default=0)


class MicroBatcher:
    """Collects requests' rows into forward passes (see the module's description).

    Example:
        >>> batcher = MicroBatcher(max_batch_size=64, max_batch_tokens=16384, max_wait=0.005, queue_size=1024)  # doctest: +SKIP
        >>> outputs, waited, stats = await batcher.submit(prepared.rows, engine.forward, deadline)  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        max_batch_size: int,
        max_batch_tokens: int,
        max_wait: float,
        queue_size: int,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        self.max_batch_size, self.max_batch_tokens, self.max_wait = max_batch_size, max_batch_tokens, max_wait
        self.queue_size, self.on_batch = queue_size, on_batch
        self._waiting: deque[_Waiting] = deque()
        self._arrived = asyncio.Event()
        self._model = ThreadPoolExecutor(1, thread_name_prefix="finechain-model")
        self._task: asyncio.Task[None] | None = None
        self._running: asyncio.Task[None] | None = None

    @property
    def depth(self) -> int:
        """Requests waiting."""
        return len(self._waiting)

    def start(self) -> None:
        """Start the collecting loop (on the running event loop)."""
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="finechain-batcher")

    async def stop(self) -> None:
        """Let the waiting requests run, then stop."""
        while self._waiting or (self._running is not None and not self._running.done()):
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
        self._model.shutdown(wait=True)

    async def submit(self, rows: list[Row], forward: Forward, deadline: float) -> tuple[list[dict[str, np.ndarray]], float, BatchStats]:
        """Run ``rows`` in a shared forward pass; return their outputs, the seconds they waited, and the pass's stats.
        Raises :class:`Overloaded` when the queue is full, :class:`DeadlineExceeded` when the deadline (a
        ``time.monotonic()`` value) passes first."""
        if len(self._waiting) >= self.queue_size:
            raise Overloaded
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(rows, forward, deadline, future))
        self._arrived.set()
        return await future

    def _take(self, batch: list[_Waiting]) -> bool:
        """Move waiting requests into ``batch`` while they fit (and share its engine); True when the batch is full."""
        rows = sum(len(w.rows) for w in batch)
        tokens = sum(w.tokens for w in batch)
        while self._waiting:
            nxt = self._waiting[0]
            if batch and (
                nxt.forward != batch[0].forward or rows + len(nxt.rows) > self.max_batch_size or tokens + nxt.tokens > self.max_batch_tokens
            ):
                return True
            batch.append(self._waiting.popleft())
            rows, tokens = rows + len(nxt.rows), tokens + nxt.tokens
        return rows >= self.max_batch_size or tokens >= self.max_batch_tokens

    async def _loop(self) -> None:
        while True:
            if self._running is not None:
                await asyncio.wait({self._running})  # the model is busy: requests gather meanwhile
            while not self._waiting:
                self._arrived.clear()
                await self._arrived.wait()
            batch: list[_Waiting] = []
            full = self._take(batch)
            give_up = time.monotonic() + self.max_wait
            while not full and time.monotonic() < give_up:  # a short wait for company, when the model is idle
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), give_up - time.monotonic())
                except TimeoutError:
                    break
                full = self._take(batch)
            self._running = asyncio.get_running_loop().create_task(self._execute(batch))

    async def _execute(self, batch: list[_Waiting]) -> None:
        now = time.monotonic()
        live = []
        for waiting in batch:
            if waiting.future.done():  # the client went away
                continue
            if now > waiting.deadline:
                waiting.future.set_exception(DeadlineExceeded())
                continue
            live.append(waiting)
        if not live:
            return
        rows = [row for waiting in live for row in waiting.rows]
        started = time.monotonic()
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(self._model, live[0].forward, rows)
        except Exception as error:
            for waiting in live:
                if not waiting.future.done():
                    waiting.future.set_exception(error)
            return
        stats = BatchStats(len(rows), sum(w.tokens for w in live), len(live), time.monotonic() - started)
        if self.on_batch is not None:
            self.on_batch(stats)
        start = 0
        for waiting in live:
            part = outputs[start : start + len(waiting.rows)]
            start += len(waiting.rows)
            if not waiting.future.done():
                waiting.future.set_result((part, started - waiting.enqueued, stats))
