"""The inference engine: text to typed predictions in three explicit stages.

1. :meth:`Engine.prepare` (CPU, per request): check the texts, tokenise them (with word offsets when a token-level
   task is asked), cut texts too long for one pass into overlapping windows for those tasks, and list the token rows
   to run, each with the tasks it needs.
2. :meth:`Engine.forward` (the model): token rows of any number of requests, length-bucketed into batches; per
   batch the trunk runs once and each requested task's tail runs on the rows that asked for it. Returns NumPy arrays.
3. :meth:`Engine.decode` (CPU, NumPy only): each request's rows back into per-text outputs (windows stitched), then
   each head's typed predictions.

``predict`` is the three in a row. A server runs ``prepare`` and ``decode`` per request off its event loop and
merges the rows of many requests into one ``forward``. Each stage's time is added to :attr:`Engine.times`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch

from finechain.data.batching import Encoded, Windows, index_tensor, inference_batches, overflow_windows, pad_ids
from finechain.data.inputs import as_texts
from finechain.heads import Prediction
from finechain.model.chain_model import ChainModel
from finechain.model.precision import autocast_context


@dataclass(frozen=True)
class Row:
    """One token sequence to run, and the tasks whose outputs it needs."""

    ids: list[int]
    tasks: tuple[str, ...]


@dataclass
class Prepared:
    """A request after :meth:`Engine.prepare`: its texts and tasks, the rows to run (one per text, then the windows of
    long texts for token-level tasks), and the texts' word positions (when a token-level task was asked)."""

    texts: list[Any]
    tasks: tuple[str, ...]
    rows: list[Row]
    words: Encoded | None = None
    windows: Windows | None = None
    long: list[int] = field(default_factory=list)  # texts read through windows, in the windows' owner order


@dataclass
class StageTimes:
    """Seconds spent in each stage since the last :meth:`reset`, and how much went through.

    Example:
        >>> times = StageTimes(); times.add("decode", 0.5); times.add("decode", 0.25); times.decode
        0.75
    """

    prepare: float = 0.0
    forward: float = 0.0
    decode: float = 0.0
    texts: int = 0
    rows: int = 0
    batches: int = 0

    def add(self, stage: str, seconds: float) -> None:
        """Count ``seconds`` for ``stage``."""
        setattr(self, stage, getattr(self, stage) + seconds)

    def reset(self) -> None:
        """Back to zero."""
        for item in fields(self):
            setattr(self, item.name, type(getattr(self, item.name))())

    def as_dict(self) -> dict[str, float]:
        """Every counter by name."""
        return {item.name: getattr(self, item.name) for item in fields(self)}


class Engine:
    """Runs a :class:`ChainModel` on texts: ``prepare`` -> ``forward`` -> ``decode``.

    ``precision`` is ``auto`` (bf16 autocast on GPUs and on CPUs with native bf16, else fp32), ``fp32``, ``bf16`` or
    ``fp16``; ``batch_size`` texts per trunk pass (on a GPU a batch of short texts may hold more, see
    :func:`~finechain.data.batching.inference_batches`).

    Example:
        >>> engine = Engine(model)  # doctest: +SKIP
        >>> engine.predict(["where is my card?"])[0]["intent"].label  # doctest: +SKIP
        'card_arrival'
    """

    def __init__(self, model: ChainModel, precision: str = "auto", batch_size: int = 64) -> None:
        self.model = model
        self.precision = precision
        self.batch_size = batch_size
        self.times = StageTimes()
        self.observer: Callable[[str, float], None] | None = None  # told each task's compute seconds per batch (host time on GPUs)

    # stage 1 ----------------------------------------------------------------------------------
    def prepare(self, texts: Any, tasks: Sequence[str] | None = None) -> Prepared:
        """Check and tokenise ``texts`` (strings, or word lists for tagging) for ``tasks`` (default: all).

        A text longer than ``max_length`` tokens is read whole by token-level tasks, through overlapping windows
        (their own rows); sequence-level tasks read its first ``max_length`` tokens.
        """
        started = time.perf_counter()
        texts = as_texts(texts)
        names = tuple(self.model.task_names(tasks))
        token_tasks = tuple(n for n in names if self.model.tasks[n].head.token_level)
        ids, words = self.model.encode(texts, with_words=bool(token_tasks))
        rows = [Row(x, names) for x in ids]
        prepared = Prepared(texts, names, rows, words if token_tasks else None)
        if token_tasks and words is not None:
            limit = self.model.max_length
            prepared.long = [i for i, starts in enumerate(words.word_starts) if len(ids[i]) >= limit and None in starts]
        if prepared.long:  # words past max_length: token-level tasks read overlapping windows instead of the cut text
            spans = None if words.word_spans is None else [words.word_spans[i] for i in prepared.long]
            long_texts = [texts[i] for i in prepared.long]
            prepared.windows = overflow_windows(self.model.tokenizer, long_texts, limit, limit // 4, spans)
            sequence_tasks = tuple(n for n in names if n not in token_tasks)
            for i in prepared.long:
                rows[i] = Row(ids[i], sequence_tasks)
            rows.extend(Row(x, token_tasks) for x in prepared.windows.ids)
        self.times.add("prepare", time.perf_counter() - started)
        self.times.texts += len(texts)
        return prepared

    # stage 2 ----------------------------------------------------------------------------------
    def _device_batches(self, ids: Sequence[list[int]], live: list[int]) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
        """Length-bucketed batches of the sequences at ``live``: (their indices, padded ids, mask) on the model's device."""
        device = self.model.device
        cuda = device.type == "cuda"  # pinned memory: the copy does not wait for the GPU's queued work
        for batch in inference_batches([len(ids[i]) for i in live], self.batch_size, device):
            indices = [live[b] for b in batch]
            padded = pad_ids([ids[i] for i in indices], self.model.pad_id)
            input_ids, mask = (t.pin_memory().to(device, non_blocking=True) for t in padded) if cuda else padded
            yield indices, input_ids, mask

    @torch.inference_mode()
    def forward(self, rows: Sequence[Row]) -> list[dict[str, np.ndarray]]:
        """Each row's outputs per task it asked for (``[labels]``, or ``[tokens, labels]`` for token-level tasks), as
        float32 NumPy arrays. Rows may come from any number of requests; each batch runs the trunk once."""
        started = time.perf_counter()
        model = self.model.eval()
        outputs: list[dict[str, np.ndarray]] = [{} for _ in rows]
        pending = []  # results stay on the device until every batch is queued: a GPU is never waited for in between
        ids = [row.ids for row in rows]
        for indices, input_ids, mask in self._device_batches(ids, [i for i, row in enumerate(rows) if row.tasks]):
            wanted = list(dict.fromkeys(name for i in indices for name in rows[i].tasks))
            with autocast_context(model.device, self.precision):
                states = model.trunk_states(input_ids, mask, any(model.tasks[n].needs_trunk_states for n in wanted))
                results = {}
                for name in wanted:
                    task, timed = model.tasks[name], time.perf_counter()
                    given = states if task.needs_trunk_states else states[-1]
                    chosen = [k for k, i in enumerate(indices) if name in rows[i].tasks]
                    if len(chosen) < len(indices):  # only some rows of this batch asked for the task
                        index = index_tensor(chosen, model.device)
                        given = [s[index] for s in given] if isinstance(given, list) else given[index]
                        result = task(given, mask[index])
                    else:
                        result = task(given, mask)
                    results[name] = (chosen, result.float())
                    if self.observer is not None:
                        self.observer(name, time.perf_counter() - timed)
            pending.append((indices, results))
            self.times.batches += 1
        for indices, results in pending:
            for name, (chosen, result) in results.items():
                array = result.cpu().numpy()
                token_level = model.tasks[name].head.token_level
                for k, position in enumerate(chosen):
                    i = indices[position]
                    outputs[i][name] = array[k, : len(rows[i].ids)] if token_level else array[k]
        self.times.add("forward", time.perf_counter() - started)
        self.times.rows += len(rows)
        return outputs

    # stage 3 ----------------------------------------------------------------------------------
    def collect(self, prepared: Prepared, outputs: Sequence[dict[str, np.ndarray]]) -> tuple[dict[str, list[np.ndarray]], Encoded | None]:
        """Per task, each text's output in input order, from ``forward``'s outputs for ``prepared.rows``; a long text's
        token-level output is stitched from its windows (one row per word that has tokens, each from the window that
        sees it with the most context), and the word positions returned point into those rows."""
        n = len(prepared.texts)
        per_task = {name: [outputs[i].get(name) for i in range(n)] for name in prepared.tasks}
        words = prepared.words
        if prepared.long and words is not None and prepared.windows is not None:
            words = Encoded(words.ids, list(words.word_starts), words.word_spans)
            window_outputs = outputs[n:]
            token_tasks = [name for name in prepared.tasks if self.model.tasks[name].head.token_level]
            for j, text in enumerate(prepared.long):
                best = prepared.windows.best_positions(j, len(words.word_starts[text]))
                found = [b for b in best if b is not None]
                for name in token_tasks:
                    width = self.model.tasks[name].head.output_size
                    rows = [window_outputs[w][name][p] for w, p in found]
                    per_task[name][text] = np.stack(rows) if rows else np.zeros((0, width), dtype=np.float32)
                rank = iter(range(len(found)))
                words.word_starts[text] = [None if b is None else next(rank) for b in best]
        return per_task, words  # type: ignore[return-value]

    def decode(self, prepared: Prepared, outputs: Sequence[dict[str, np.ndarray]]) -> list[dict[str, Prediction]]:
        """Typed predictions per text and task (NumPy only: no PyTorch here)."""
        started = time.perf_counter()
        per_task, words = self.collect(prepared, outputs)
        decoded = {name: self.model.tasks[name].head.decode(per_task[name], prepared.texts, words) for name in prepared.tasks}
        results = [{name: decoded[name][i] for name in prepared.tasks} for i in range(len(prepared.texts))]
        self.times.add("decode", time.perf_counter() - started)
        return results

    # all three ---------------------------------------------------------------------------------
    def predict(self, texts: Any, tasks: Sequence[str] | None = None) -> list[dict[str, Prediction]]:
        """Predictions of ``tasks`` (default: all) for every text: ``prepare``, ``forward``, ``decode``."""
        prepared = self.prepare(texts, tasks)
        return self.decode(prepared, self.forward(prepared.rows))

    def outputs(self, texts: Any, tasks: Sequence[str] | None = None) -> tuple[dict[str, list[np.ndarray]], Encoded | None]:
        """Raw head outputs per task in input order, and the word positions they align with (to score a task)."""
        prepared = self.prepare(texts, tasks)
        return self.collect(prepared, self.forward(prepared.rows))

    @torch.inference_mode()
    def embed(self, texts: Any, normalize: bool = True) -> np.ndarray:
        """The untouched backbone's sentence embeddings (mean pooled; L2-normalised unless ``normalize`` is off):
        ``[texts, hidden]`` float32."""
        model = self.model.eval()
        ids, _ = model.encode(as_texts(texts))
        out = np.zeros((len(ids), model.encoder_config.hidden_size), dtype=np.float32)
        for indices, input_ids, mask in self._device_batches(ids, list(range(len(ids)))):
            with autocast_context(model.device, self.precision):
                vectors = model.sentence_embeddings(input_ids, mask).float()
            out[indices] = (torch.nn.functional.normalize(vectors, dim=-1) if normalize else vectors).cpu().numpy()
        return out
