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

A PyTorch chain can also keep each batch's trunk states (``forward(rows, kept=Kept())``) and later run more tasks'
tails on some of those rows (:meth:`Engine.forward_kept`) without a second trunk pass: what a flow does when an
answer decides which task reads the text next.

The engine itself needs NumPy only: ``forward`` hands padded batches to a runner, :class:`~finechain.inference.
torch_runner.TorchRunner` for a PyTorch chain, :class:`~finechain.inference.exported.OnnxRunner` for an exported one.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import numpy as np

from finechain.data.inputs import as_texts, size_blocks
from finechain.data.tagged import tagged_row
from finechain.data.tokens import Encoded, Windows, inference_batches, overflow_windows, pad_rows
from finechain.data.words import split_words
from finechain.errors import DataError, InMemory
from finechain.heads import Head, Prediction

# Characters of text that predict / outputs prepare and run at once. A text past max_length is read by token-level
# tasks through windows, and what those hold while they run is ~100x the text (a 5,000-word text, 33,000 characters:
# ~4 MB tokenised, more in the passes): 300 such texts in one call peaked at 3.2 GB. A block at a time keeps memory
# to the block's (short texts: thousands of them a block, so batches are as full as before).
BLOCK_CHARS = 1 << 18
Allowed = Mapping[str, Sequence[Collection[str] | None]]  # task -> per text, the labels it may answer (None: any)


def _restricted(head: Head, outputs: Sequence[np.ndarray], allowed: Sequence[Collection[str] | None]) -> list[np.ndarray]:
    """Each text's output with the labels outside its ``allowed`` ruled out (:meth:`Head.restrict`); None: as it is."""
    return [output if keep is None else head.restrict(output, keep) for output, keep in zip(outputs, allowed, strict=True)]


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
class Kept:
    """Trunk states kept by ``forward(rows, kept=...)``: per batch, the indices of the rows it holds and the runner's
    handle on their states (for :meth:`Engine.forward_kept`)."""

    batches: list[tuple[list[int], Any]] = field(default_factory=list)


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


class Runner(Protocol):
    """What runs the model for :meth:`Engine.forward`: padded int64 batches in, each requested task's outputs for the
    rows that asked (``None``: every row) out; :meth:`fetch` turns one into a float32 NumPy array."""

    @property
    def device_type(self) -> str: ...

    pass_tokens: float  # on a CPU, what one more pass costs in tokens computed (how mixed lengths are cut into batches)
    packs: bool  # on a CPU, whether it computes no padding (then batches need not be cut by length)

    @property
    def keeps_states(self) -> bool: ...  # whether ``run(..., kept=...)`` and ``run_kept`` work

    def run(
        self,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
        wanted: Mapping[str, list[int] | None],
        precision: str = "auto",
        observer: Callable[[str, float], None] | None = None,
        kept: list[Any] | None = None,
    ) -> Mapping[str, Any]: ...

    def fetch(self, result: Any) -> np.ndarray: ...

    def embed(self, input_ids: np.ndarray, attention_mask: np.ndarray, normalize: bool, precision: str = "auto") -> np.ndarray: ...


class Engine:
    """Runs a chain on texts: ``prepare`` -> ``forward`` -> ``decode``. ``model`` is a PyTorch
    :class:`~finechain.model.chain_model.ChainModel` or an exported chain
    (:class:`~finechain.inference.exported.ExportedChain`, ONNX Runtime).

    ``precision`` is ``auto`` (bf16 autocast on GPUs and on CPUs with native bf16, else fp32), ``fp32``, ``bf16`` or
    ``fp16`` (a PyTorch chain; an exported one computes in what it was exported with, and refuses any but ``auto``);
    ``batch_size`` texts per trunk pass (on a GPU a batch of short texts may hold more, see
    :func:`~finechain.data.tokens.inference_batches`).

    Example:
        >>> engine = Engine(model)  # doctest: +SKIP
        >>> engine.predict(["where is my card?"])[0]["intent"].label  # doctest: +SKIP
        'card_arrival'
    """

    def __init__(self, model: Any, precision: str = "auto", batch_size: int = 64) -> None:
        self.model = model
        self.precision = precision
        self.batch_size = batch_size
        self.times = StageTimes()
        self.observer: Callable[[str, float], None] | None = None  # told each task's compute seconds per batch (host time on GPUs)
        make = getattr(model, "runner", None)
        if make is not None:  # an exported chain brings its own
            self.runner: Runner = make(precision)  # its graphs fix what it computes in: another precision is refused
        else:  # a PyTorch chain: imported by name, so that this module (and an exported chain) needs no PyTorch
            self.runner = importlib.import_module("finechain.inference.torch_runner").TorchRunner(model)

    @property
    def keeps_states(self) -> bool:
        """Whether the runner can keep trunk states for :meth:`forward_kept` (a PyTorch chain can, and a chain exported
        with a graph per task; one ONNX graph per chain cannot)."""
        return self.runner.keeps_states

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
    def _batches(self, ids: Sequence[list[int]], live: list[int]) -> Iterator[tuple[list[int], np.ndarray, np.ndarray]]:
        """Length-bucketed batches of the sequences at ``live``: (their indices, padded ids, mask)."""
        lengths = [len(ids[i]) for i in live]
        runner = self.runner
        for batch in inference_batches(lengths, self.batch_size, runner.device_type, runner.pass_tokens, runner.packs):
            indices = [live[b] for b in batch]
            yield (indices, *pad_rows([ids[i] for i in indices], self.model.pad_id))

    def forward(self, rows: Sequence[Row], kept: Kept | None = None) -> list[dict[str, np.ndarray]]:
        """Each row's outputs per task it asked for (``[labels]``, or ``[tokens, labels]`` for token-level tasks), as
        float32 NumPy arrays. Rows may come from any number of requests; each batch runs the trunk once.

        With ``kept`` (when :attr:`keeps_states`), every row runs the trunk, even one that asks for no task yet, and
        each batch's states are added to ``kept`` for :meth:`forward_kept`."""
        if kept is not None and not self.keeps_states:
            raise ValueError("this chain's runner cannot keep trunk states (see Engine.keeps_states)")
        started = time.perf_counter()
        outputs: list[dict[str, np.ndarray]] = [{} for _ in rows]
        pending = []  # results stay on the device until every batch is queued: a GPU is never waited for in between
        ids = [row.ids for row in rows]
        live = [i for i, row in enumerate(rows) if row.tasks or kept is not None]
        for indices, input_ids, mask in self._batches(ids, live):
            wanted = _wanted(indices, lambda i: rows[i].tasks)
            if kept is None:
                results = self.runner.run(input_ids, mask, wanted, self.precision, self.observer)
            else:
                handle: list[Any] = []
                results = self.runner.run(input_ids, mask, wanted, self.precision, self.observer, handle)
                kept.batches.append((indices, handle[0]))
            pending.append((indices, wanted, results))
            self.times.batches += 1
        self._store(rows, outputs, pending)
        self.times.add("forward", time.perf_counter() - started)
        self.times.rows += len(rows)
        return outputs

    def forward_kept(self, rows: Sequence[Row], kept: Kept, asks: Mapping[int, Sequence[str]]) -> dict[int, dict[str, np.ndarray]]:
        """Outputs of more tasks for rows whose trunk states ``forward(rows, kept=kept)`` kept: ``asks`` maps a row's
        index to the tasks it now needs; only those tails run (no trunk pass).

        Example:
            >>> kept = Kept(); first = engine.forward(rows, kept=kept)  # doctest: +SKIP
            >>> engine.forward_kept(rows, kept, {0: ["slots"]})[0]["slots"].shape  # doctest: +SKIP
            (9, 79)
        """
        started = time.perf_counter()
        outputs: list[dict[str, np.ndarray]] = [{} for _ in rows]
        pending = []
        run_kept = self.runner.run_kept  # type: ignore[attr-defined]  # (checked by keeps_states)
        for indices, handle in kept.batches:
            wanted = _wanted(indices, lambda i: asks.get(i, ()))
            if wanted:
                pending.append((indices, wanted, run_kept(handle, wanted, self.precision, self.observer)))
        self._store(rows, outputs, pending)
        self.times.add("forward", time.perf_counter() - started)
        return {i: outputs[i] for i in asks if outputs[i]}

    def _store(self, rows: Sequence[Row], outputs: list[dict[str, np.ndarray]], pending: list[tuple[list[int], dict, Any]]) -> None:
        """Each batch's results, fetched to the host, into ``outputs`` by row (token-level ones cut to the row)."""
        for indices, wanted, results in pending:
            for name, result in results.items():
                array = self.runner.fetch(result)
                token_level = self.model.tasks[name].head.token_level
                chosen = wanted[name]
                for k, position in enumerate(range(len(indices)) if chosen is None else chosen):
                    i = indices[position]
                    outputs[i][name] = array[k, : len(rows[i].ids)] if token_level else array[k]

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

    def decode(
        self, prepared: Prepared, outputs: Sequence[dict[str, np.ndarray]], allowed: Allowed | None = None
    ) -> list[dict[str, Prediction]]:
        """Typed predictions per text and task (NumPy only: no PyTorch here). ``allowed`` maps a task to each text's
        labels it may answer (a tagger's: span types; None: any), a flow stage's ``allow``: the others are ruled out
        before decoding (:meth:`~finechain.heads.Head.restrict`)."""
        started = time.perf_counter()
        per_task, words = self.collect(prepared, outputs)
        for name, choices in (allowed or {}).items():
            per_task[name] = _restricted(self.model.tasks[name].head, per_task[name], choices)
        decoded = {name: self.model.tasks[name].head.decode(per_task[name], prepared.texts, words) for name in prepared.tasks}
        results = [{name: decoded[name][i] for name in prepared.tasks} for i in range(len(prepared.texts))]
        self.times.add("decode", time.perf_counter() - started)
        return results

    # all three ---------------------------------------------------------------------------------
    def predict(self, texts: Any, tasks: Sequence[str] | None = None, allowed: Allowed | None = None) -> list[dict[str, Prediction]]:
        """Predictions of ``tasks`` (default: all) for every text: ``prepare``, ``forward``, ``decode`` (``allowed``: as
        :meth:`decode` takes it), a block of at most :data:`BLOCK_CHARS` characters at a time (what a long text costs
        to prepare and run is many times its size: memory follows the block, not the input)."""
        texts = as_texts(texts)
        results: list[dict[str, Prediction]] = []
        for block in size_blocks(texts, BLOCK_CHARS):
            prepared = self.prepare(texts[block], tasks)
            chosen = None if allowed is None else {name: list(choices[block]) for name, choices in allowed.items()}
            results += self.decode(prepared, self.forward(prepared.rows), chosen)
        return results

    def outputs(self, texts: Any, tasks: Sequence[str] | None = None) -> tuple[dict[str, list[np.ndarray]], Encoded | None]:
        """Raw head outputs per task in input order, and the word positions they align with (to score a task); run a
        block at a time, as :meth:`predict` runs."""
        texts = as_texts(texts)
        per_task: dict[str, list[np.ndarray]] = {}
        words: list[Encoded | None] = []
        for block in size_blocks(texts, BLOCK_CHARS):
            prepared = self.prepare(texts[block], tasks)
            outputs, encoded = self.collect(prepared, self.forward(prepared.rows))
            for name, values in outputs.items():
                per_task.setdefault(name, []).extend(values)
            words.append(encoded)
        if not per_task:  # no texts: the tasks' empty lists, as one empty block gives
            return self.collect(self.prepare([], tasks), [])
        return per_task, None if any(w is None for w in words) else Encoded.joined(words)  # type: ignore[arg-type]

    def score(
        self, task: str, texts: Any, labels: Sequence[Any], allowed: Sequence[Collection[str] | None] | None = None
    ) -> dict[str, Any]:
        """Metrics of ``task`` on labelled texts, labels read and checked like training data (a label never seen in
        training is a :class:`DataError` naming the item, ``labels[3]``). Tagging takes word lists with one tag per
        word, or raw strings with ``[start, end, type]`` entity spans (or one tag per word as :func:`split_words` cuts
        them). ``allowed``: per text, the labels it may answer (a flow stage's ``allow``; None: any).

        Example:
            >>> engine.score("sentiment", ["great"], ["positive"])["accuracy"]  # doctest: +SKIP
            1.0
        """
        name = self.model.task_names([task])[0]
        head = self.model.tasks[name].head
        texts = as_texts(texts)
        if len(texts) != len(labels):
            raise DataError(f"{len(texts)} texts but {len(labels)} labels", fix="pass one label per text")
        where = InMemory("labels")
        parsed = []
        for i, (text, label) in enumerate(zip(texts, labels, strict=True)):
            if head.token_level:  # a raw string's tags are for its words as predict cuts them
                words = [text[a:b] for a, b in split_words(text)] if isinstance(text, str) and _tags(label) else text
                value: Any = tagged_row(words, label, where, i, strict=False).tags
            else:
                value = type(head).parse_label(label, file=where, line=i, options=head.options)
            head.check_known(value, file=where, line=i)
            parsed.append(value)
        outputs, words = self.outputs(texts, [name])
        found = outputs[name] if allowed is None else _restricted(head, outputs[name], allowed)
        return head.score(found, head.targets(parsed, words))

    def embed(self, texts: Any, normalize: bool = True) -> np.ndarray:
        """The untouched backbone's sentence embeddings (mean pooled; L2-normalised unless ``normalize`` is off):
        ``[texts, hidden]`` float32."""
        ids, _ = self.model.encode(as_texts(texts))
        out: np.ndarray | None = None
        for indices, input_ids, mask in self._batches(ids, list(range(len(ids)))):
            vectors = self.runner.embed(input_ids, mask, normalize, self.precision)
            if out is None:
                out = np.zeros((len(ids), vectors.shape[1]), dtype=np.float32)
            out[indices] = vectors
        return out if out is not None else np.zeros((0, self.model.embedding_size), dtype=np.float32)


def _wanted(indices: list[int], tasks_of: Callable[[int], Sequence[str]]) -> dict[str, list[int] | None]:
    """Per task asked by any row of a batch, the batch positions that asked (``None``: every row)."""
    wanted: dict[str, list[int] | None] = {}
    for name in dict.fromkeys(name for i in indices for name in tasks_of(i)):
        chosen = [k for k, i in enumerate(indices) if name in tasks_of(i)]
        wanted[name] = None if len(chosen) == len(indices) else chosen
    return wanted


def _tags(label: Any) -> bool:
    """A list of tag strings (not entity spans)."""
    return isinstance(label, list) and bool(label) and all(isinstance(tag, str) for tag in label)
