"""The service behind every transport (REST, gRPC): a loaded chain, its engine and the batcher; requests in, typed
answers out. It also watches the chain's folder and swaps in a new version without dropping a request: requests
prepared by the old version finish on it, new ones go to the new one, and a version that fails to load leaves the
old one serving (the error is reported on ``/readyz`` and in the metrics).
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from finechain.chain import Chain, open_engine
from finechain.errors import FinechainError, short_reason
from finechain.flows import Flow, FlowResult
from finechain.flows.flow import stage_engines
from finechain.heads import Prediction
from finechain.inference import Engine
from finechain.inference.engine import Allowed
from finechain.inference.exported import EXPORT_MANIFEST, ExportedChain, is_exported
from finechain.model.manifest import MANIFEST
from finechain.serve.batcher import MicroBatcher
from finechain.serve.metrics import Metrics
from finechain.serve.settings import ServeSettings
from finechain.spec.flows import FlowSpec

log = logging.getLogger("finechain.serve")


class ClientError(Exception):
    """A request the client must change: its HTTP status, a short code, a one-line message, the field at fault."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None, fix: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field, self.fix = status, code, message, field, fix

    def body(self) -> dict[str, Any]:
        """The JSON error body every transport sends."""
        error = {"status": self.status, "code": self.code, "message": self.message}
        return {"error": error | {k: v for k, v in (("field", self.field), ("fix", self.fix)) if v is not None}}


@dataclass
class Loaded:
    """One loaded version of the chain: a chain folder (PyTorch) or an exported one (ONNX Runtime)."""

    engine: Engine
    version: str  # the manifest's modification time and size: changes when the folder gets a new version
    about: dict[str, Any]  # backbone, split, layers, max_length, backend
    records: dict[str, tuple[str | None, dict[str, dict[str, float]]]]  # task -> (selection metric, split -> scores)
    loaded_at: float = field(default_factory=time.time)
    flows: dict[str, FlowSpec] = field(default_factory=dict)  # the chain's flows
    others: dict[str, Engine] = field(default_factory=dict)  # engines of other chains its flows' stages name

    def describe(self) -> list[dict[str, Any]]:
        """Each task: name, type, labels, selection metric and its scores."""
        tasks = []
        for name, task in self.engine.model.tasks.items():
            metric, metrics = self.records.get(name, (None, {}))
            tasks.append(
                {"name": name, "type": task.head.type_name, "labels": list(task.head.labels), "metric": metric, "metrics": metrics}
            )
        return tasks


def _version(folder: Path) -> str:
    stat = (folder / (EXPORT_MANIFEST if is_exported(folder) else MANIFEST)).stat()
    return f"{stat.st_mtime_ns}-{stat.st_size}"


class ChainService:
    """Serves one chain folder with ``settings``; ``await start()`` loads and warms it up.

    Example:
        >>> service = ChainService(ServeSettings(chain=Path("demo-chain")), Metrics())  # doctest: +SKIP
        >>> await service.start()  # doctest: +SKIP
        >>> answers, timings = await service.predict(["where is my card?"])  # doctest: +SKIP
    """

    def __init__(self, settings: ServeSettings, metrics: Metrics) -> None:
        self.settings, self.metrics = settings, metrics
        self.current: Loaded | None = None
        self.last_reload_error: str | None = None
        self.batcher = MicroBatcher(
            max_batch_size=settings.max_batch_size,
            max_batch_tokens=settings.max_batch_tokens,
            max_wait=settings.max_wait_ms / 1000,
            queue_size=settings.queue_size,
            on_batch=self._observe_batch,
        )
        self._prepare = ThreadPoolExecutor(1, thread_name_prefix="finechain-prepare")  # the tokenizer: one thread at a time
        self._decode = ThreadPoolExecutor(2, thread_name_prefix="finechain-decode")
        self._loader = ThreadPoolExecutor(1, thread_name_prefix="finechain-load")
        self._flows = ThreadPoolExecutor(4, thread_name_prefix="finechain-flow")
        self._watch: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        """A chain is loaded and warmed up."""
        return self.current is not None

    # lifecycle ---------------------------------------------------------------------------------
    def _load(self) -> Loaded:
        """Load the folder's chain and run one text through it (first-call costs paid before the first request)."""
        folder = self.settings.chain
        version = _version(folder)
        if is_exported(folder):  # ONNX Runtime or OpenVINO
            exported = ExportedChain(folder, threads=self.settings.threads_per_process, runtime=self.settings.runtime)
            manifest = exported.manifest
            about = {"backbone": manifest.backbone, "split": manifest.split, "layers": manifest.layers, "max_length": manifest.max_length}
            about["backend"] = f"{exported.runtime} ({manifest.weights})"
            about["threads"] = self.settings.threads_per_process
            records = {name: (task.metric, task.metrics) for name, task in manifest.tasks.items()}
            engine = Engine(exported, precision=self.settings.precision, batch_size=self.settings.max_batch_size)
            flows = exported.flows
        else:
            chain = Chain.from_pretrained(folder, device=self.settings.device)
            model = chain.model
            about = {"backbone": model.backbone.name, "split": model.split, "layers": model.num_layers, "max_length": model.max_length}
            about["backend"] = "pytorch"
            about["threads"] = torch.get_num_threads()
            records = {name: (r.metric, r.metrics or {}) for name, r in chain.records.items()}
            engine = Engine(model, precision=self.settings.precision, batch_size=self.settings.max_batch_size)
            flows = chain.flows
        engine.observer = lambda task, seconds: self.metrics.task_seconds.labels(task=task).inc(seconds)
        engine.predict(["warm up"])
        loaded = Loaded(engine, version, about, records)
        loaded.flows = dict(flows)
        loaded.others = stage_engines(loaded.flows.values(), folder, open_engine)  # loaded now, not per request
        for flow in loaded.flows.values():  # and checked against their tasks
            Flow(flow, {None: engine, **loaded.others})
        return loaded

    def load(self) -> Loaded:
        """Load (and warm up) the chain now, in this thread: a chain that does not load fails here, with its one-line
        error, before any port is opened. :meth:`start` then uses it."""
        self._set_threads()
        self.current = self._load()
        return self.current

    def _set_threads(self) -> None:
        """PyTorch's CPU threads: as set, or the cores shared out among several workers (one worker: PyTorch's own
        default)."""
        if self.settings.threads or self.settings.workers > 1:
            torch.set_num_threads(self.settings.threads_per_process)

    async def start(self) -> None:
        """Load the chain (unless :meth:`load` did), start the batcher, and watch the folder for new versions."""
        if self.current is None:
            self._set_threads()
            self.current = await asyncio.get_running_loop().run_in_executor(self._loader, self._load)
        self.batcher.start()
        self.metrics.ready.set(1)
        if self.settings.reload_check_s > 0:
            self._watch = asyncio.get_running_loop().create_task(self._watch_folder(), name="finechain-reload")

    async def stop(self) -> None:
        """Finish the waiting requests, then stop."""
        if self._watch is not None:
            self._watch.cancel()
        await self.batcher.stop()
        self.metrics.ready.set(0)
        for pool in (self._prepare, self._decode, self._loader, self._flows):
            pool.shutdown(wait=False)

    async def reload(self) -> tuple[bool, str | None]:
        """Load the folder's current version and swap it in; on failure keep serving the old one. Returns whether it
        worked and, if not, why."""
        try:
            loaded = await asyncio.get_running_loop().run_in_executor(self._loader, self._load)
        except (FinechainError, OSError, ValueError, RuntimeError) as error:
            self.last_reload_error = short_reason(error)
            self.metrics.reloads.labels(outcome="failed").inc()
            log.warning(f'{{"event": "reload_failed", "error": {self.last_reload_error!r}}}')
            return False, self.last_reload_error
        self.current, self.last_reload_error = loaded, None
        self.metrics.reloads.labels(outcome="loaded").inc()
        log.info(f'{{"event": "reloaded", "version": "{loaded.version}", "tasks": {list(loaded.engine.model.tasks)!r}}}')
        return True, None

    async def _watch_folder(self) -> None:
        seen = self.current.version if self.current else None
        while True:
            await asyncio.sleep(self.settings.reload_check_s)
            try:
                version = _version(self.settings.chain)
            except OSError:
                continue  # the manifest is being replaced, or the folder is gone for a moment
            if version != seen:
                seen = version
                await self.reload()

    # requests ------------------------------------------------------------------------------------
    def _check(self, texts: Any, tasks: Any) -> None:
        """Limits and shapes a request must keep."""
        s = self.settings
        if not isinstance(texts, list) or not texts:
            raise ClientError(422, "no_texts", "texts must be a non-empty list", "texts", "send at least one text")
        if len(texts) > s.max_texts:
            raise ClientError(413, "too_many_texts", f"{len(texts)} texts; at most {s.max_texts} per request", "texts", "split the request")
        for i, text in enumerate(texts):
            size = len(text) if isinstance(text, str) else sum(len(w) + 1 for w in text) if isinstance(text, list) else 0
            if size > s.max_chars:
                raise ClientError(413, "text_too_long", f"text has {size} characters; at most {s.max_chars}", f"texts[{i}]", "shorten it")
        if tasks is not None and (not isinstance(tasks, list) or not tasks):
            raise ClientError(422, "no_tasks", "tasks must be a non-empty list, or left out for all tasks", "tasks")

    def _observe_batch(self, stats: Any) -> None:
        self.metrics.batch_rows.observe(stats.rows)
        self.metrics.batch_requests.observe(stats.requests)
        self.metrics.batch_tokens.observe(stats.tokens)
        self.metrics.forward_seconds.observe(stats.seconds)

    async def predict(
        self, texts: Any, tasks: list[str] | None = None, timeout_ms: float | None = None, allowed: Allowed | None = None
    ) -> tuple[list[dict[str, Prediction]], dict[str, float]]:
        """Answer ``tasks`` (default: all) for ``texts``: per text, each task's typed answer (``allowed``: as
        :meth:`Engine.decode <finechain.inference.Engine.decode>` takes it, for a flow's stage with ``allow``); and the
        request's timings (milliseconds) and its forward pass's size."""
        from finechain.serve.batcher import DeadlineExceeded, Overloaded

        started = time.monotonic()
        self._check(texts, tasks)
        loaded = self.current
        if loaded is None:
            raise ClientError(503, "not_ready", "the chain is still loading", fix="retry in a moment")
        budget = min(timeout_ms or self.settings.timeout_ms, self.settings.timeout_ms) / 1000
        deadline = started + budget
        loop = asyncio.get_running_loop()
        try:
            prepared = await loop.run_in_executor(self._prepare, loaded.engine.prepare, texts, tasks)
        except FinechainError as error:  # an unknown task (its field says so), or a text that is not a text (texts[i])
            where = error.field or (f"texts[{error.line}]" if error.line is not None else "texts")
            raise ClientError(422, "invalid_request", error.message, where, error.fix) from None
        prepared_at = time.monotonic()
        self.metrics.queue_depth.inc()
        try:
            outputs, waited, stats = await self.batcher.submit(prepared.rows, loaded.engine.forward, deadline)
        except Overloaded:
            raise ClientError(429, "overloaded", "the server is busy: its queue is full", fix="retry after a second") from None
        except DeadlineExceeded:  # the request's own deadline is the client's to set (408); the server's default: busy (503)
            status = 408 if timeout_ms is not None and timeout_ms < self.settings.timeout_ms else 503
            message = f"not answered within {budget * 1000:.0f} ms"
            raise ClientError(status, "deadline_exceeded", message, fix="retry later, or allow more time") from None
        finally:
            self.metrics.queue_depth.dec()
        self.metrics.queue_seconds.observe(waited)
        forwarded_at = time.monotonic()
        answers = await loop.run_in_executor(self._decode, loaded.engine.decode, prepared, outputs, allowed)
        for answer in answers:
            for name, prediction in answer.items():
                for label in prediction.counted():
                    self.metrics.predictions.labels(task=name, label=label).inc()
        self.metrics.texts.inc(len(answers))
        done = time.monotonic()
        timings = {
            "prepare_ms": (prepared_at - started) * 1000,
            "queue_ms": waited * 1000,
            "forward_ms": stats.seconds * 1000,
            "decode_ms": (done - forwarded_at) * 1000,
            "total_ms": (done - started) * 1000,
            "batch_rows": stats.rows,
            "batch_requests": stats.requests,
        }
        return answers, {k: round(v, 3) if isinstance(v, float) else v for k, v in timings.items()}

    async def run_flow(self, name: str, texts: Any, timeout_ms: float | None = None) -> tuple[list[FlowResult], float]:
        """Run the chain's flow ``name`` on ``texts``: this chain's passes go through the batcher like any request
        (shared with other clients' texts, with the same limits, backpressure and deadline), other chains' stages run
        on their own engines. Returns the results and the total milliseconds."""
        started = time.monotonic()
        self._check(texts, None)
        loaded = self.current
        if loaded is None:
            raise ClientError(503, "not_ready", "the chain is still loading", fix="retry in a moment")
        spec = loaded.flows.get(name)
        if spec is None:
            raise ClientError(
                404, "unknown_flow", f"unknown flow '{name}'", "name", f"this chain's flows: {sorted(loaded.flows) or 'none'}"
            )
        loop = asyncio.get_running_loop()

        def batched(part: list[Any], tasks: list[str] | None = None, allowed: Allowed | None = None) -> list[dict[str, Prediction]]:
            return asyncio.run_coroutine_threadsafe(self.predict(part, tasks, timeout_ms, allowed), loop).result()[0]

        flow = Flow(spec, {None: _Served(loaded.engine.model, batched), **loaded.others})
        results = await loop.run_in_executor(self._flows, flow.run, texts)
        return results, round((time.monotonic() - started) * 1000, 3)


@dataclass
class _Served:
    """An engine for a flow whose ``predict`` goes through the service (and its batcher): its passes are merged with
    other clients' rows, so it keeps no trunk states (each pass runs every text stage of the chain)."""

    model: Any
    predict: Any
    keeps_states: bool = False
