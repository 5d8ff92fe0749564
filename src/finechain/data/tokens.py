"""Tokenise once, keeping where words start, and cut long texts into windows; plan inference batches. NumPy only (no
PyTorch): an exported chain prepares its inputs with this module too."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from finechain.data.words import first_tokens, split_words


@dataclass
class Encoded:
    """Token ids per text, and where each word starts (for token-level heads).

    ``word_starts[i][w]`` is the token position of word ``w``'s first sub-word, or ``None`` when the
    word was truncated away; ``word_spans[i][w]`` is its ``(start, end)`` character span in the raw
    text (``None`` for pre-split input).
    """

    ids: list[list[int]]
    word_starts: list[list[int | None]]
    word_spans: list[list[tuple[int, int]]] | None

    @property
    def lengths(self) -> list[int]:
        """Token count per text."""
        return [len(x) for x in self.ids]

    @classmethod
    def joined(cls, parts: Sequence[Encoded]) -> Encoded:
        """One ``Encoded`` of consecutive ones, in order.

        Example:
            >>> Encoded.joined([Encoded([[1]], [[None]], None), Encoded([[2]], [[1]], None)]).ids
            [[1], [2]]
        """
        spans = None if any(p.word_spans is None for p in parts) else [s for p in parts for s in p.word_spans or []]
        return cls([x for p in parts for x in p.ids], [w for p in parts for w in p.word_starts], spans)


def encode(tokenizer: Any, texts: list[str] | list[list[str]], max_length: int, chunk: int = 2048) -> Encoded:
    """Tokenise raw texts (or pre-split word lists) with the fast tokenizer, in chunks, keeping word positions.

    Example:
        >>> enc = encode(tokenizer, ["hello world"], 16)  # doctest: +SKIP
        >>> enc.ids, enc.word_starts, enc.word_spans  # doctest: +SKIP
        ([[101, 7592, 2088, 102]], [[1, 2]], [[(0, 5), (6, 11)]])
    """
    presplit = bool(texts) and isinstance(texts[0], list)
    ids: list[list[int]] = []
    starts: list[list[int | None]] = []
    spans: list[list[tuple[int, int]]] = []
    for begin in range(0, len(texts), chunk):
        part = texts[begin : begin + chunk]
        batch = tokenizer(part, truncation=True, max_length=max_length, is_split_into_words=presplit, return_offsets_mapping=not presplit)
        for row in range(len(part)):
            if presplit:
                first = _first_positions(batch.word_ids(row))
                n_words = len(part[row])
            else:  # raw text: words as tagged corpora cut them, not as the tokenizer's pre-tokenizer does
                word_spans = split_words(part[row])
                first = first_tokens(batch["offset_mapping"][row], word_spans)
                n_words = len(word_spans)
                spans.append(word_spans)
            ids.append(batch["input_ids"][row])
            starts.append([first.get(w) for w in range(n_words)])
    return Encoded(ids, starts, None if presplit else spans)


def encode_texts(tokenizer: Any, texts: list[Any], max_length: int, with_words: bool = False) -> tuple[list[list[int]], Encoded | None]:
    """Token ids for raw texts or word lists, and word positions when asked (always for word lists): what a chain's
    ``encode`` gives, PyTorch or exported.

    Example:
        >>> ids, words = encode_texts(tokenizer, ["hello world"], 16)  # doctest: +SKIP
        >>> ids, words  # doctest: +SKIP
        ([[101, 7592, 2088, 102]], None)
    """
    if with_words or (bool(texts) and isinstance(texts[0], list)):
        encoded = encode(tokenizer, texts, max_length)
        return encoded.ids, encoded
    return tokenize(tokenizer, texts, max_length), None


@dataclass
class Windows:
    """Overlapping token windows over texts too long for one pass: per window its token ids, the text it
    belongs to (an index into the texts given) and where each word's first sub-word sits in it."""

    ids: list[list[int]]
    owner: list[int]
    starts: list[dict[int, int]]

    def best_positions(self, text: int, n_words: int) -> list[tuple[int, int] | None]:
        """Per word of ``text``: the ``(window, position)`` that sees it furthest from a window edge (most context
        on both sides), or ``None`` for a word with no tokens."""
        best: list[tuple[int, int] | None] = [None] * n_words
        margin = [-1] * n_words
        for window in self.by_text.get(text, ()):
            last = len(self.ids[window]) - 2  # the last content token (before [SEP])
            for word, position in self.starts[window].items():
                room = min(position - 1, last - position)
                if word < n_words and room > margin[word]:
                    best[word], margin[word] = (window, position), room
        return best

    @cached_property
    def by_text(self) -> dict[int, list[int]]:
        """Each text's windows, in order (listed once, not once per text: a block may hold hundreds of long texts)."""
        windows: dict[int, list[int]] = {}
        for window, owner in enumerate(self.owner):
            windows.setdefault(owner, []).append(window)
        return windows


def overflow_windows(
    tokenizer: Any,
    texts: list[str] | list[list[str]],
    max_length: int,
    stride: int,
    word_spans: list[list[tuple[int, int]]] | None = None,
) -> Windows:
    """Cut each text into windows of at most ``max_length`` tokens overlapping by ``stride`` tokens (the fast
    tokenizer's overflow), so token-level tasks can label every word of a long text. Raw texts are cut into
    words by ``split_words`` unless their ``word_spans`` (as ``encode`` found them) are given.

    A word cut by a window's start is not counted as starting there: its first sub-word is in the previous
    window, which overlaps this one.

    Example:
        >>> w = overflow_windows(tokenizer, ["a long text ..."], max_length=128, stride=32)  # doctest: +SKIP
        >>> w.owner, w.best_positions(0, n_words=200)[:2]  # doctest: +SKIP
        ([0, 0], [(0, 1), (0, 2)])
    """
    presplit = bool(texts) and isinstance(texts[0], list)
    batch = tokenizer(
        texts,
        truncation=True,
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        is_split_into_words=presplit,
        return_offsets_mapping=not presplit,
    )
    owner = list(batch["overflow_to_sample_mapping"])
    if not presplit and word_spans is None:
        word_spans = [split_words(text) for text in texts]
    # each text's word starts listed once, not once per window (a long text has thousands of windows)
    span_starts = [] if presplit else [[start for start, _ in spans] for spans in word_spans]
    starts: list[dict[int, int]] = []
    for window in range(len(owner)):
        if presplit:
            first = _first_positions(batch.word_ids(window))
        else:
            text = owner[window]
            first = first_tokens(batch["offset_mapping"][window], word_spans[text], span_starts[text])
        continues = window > 0 and owner[window - 1] == owner[window]
        if continues and first:  # the word at the window's start began in the previous window
            first.pop(min(first, key=first.__getitem__))
        starts.append(first)
    return Windows(list(batch["input_ids"]), owner, starts)


def _first_positions(word_ids: list[int | None]) -> dict[int, int]:
    """``{word: position of its first token}`` from a pre-split encoding's word ids."""
    first: dict[int, int] = {}
    for position, word in enumerate(word_ids):
        if word is not None and word not in first:
            first[word] = position
    return first


def tokenize(tokenizer: Any, texts: list[str], max_length: int, chunk: int = 2048) -> list[list[int]]:
    """Token ids only (with special tokens, truncated), for sequence-level tasks.

    Example:
        >>> tokenize(tokenizer, ["hello world"], 16)  # doctest: +SKIP
        [[101, 7592, 2088, 102]]
    """
    ids: list[list[int]] = []
    for start in range(0, len(texts), chunk):
        ids.extend(tokenizer(texts[start : start + chunk], truncation=True, max_length=max_length)["input_ids"])
    return ids


GPU_TOKENS_PER_ROW = 256  # on a GPU an inference batch holds up to batch_size * this many tokens (short texts: more rows)
# On a CPU one more PyTorch pass costs about as much as this many more tokens computed (padding included): the
# four-task chain of the serving benchmark, one thread, ran a pass in ~25 ms + 0.7 ms per padded token (37 tokens)
# (`python -m benchmarks pass-cost`, docs/benchmarks.md). An exported chain's runner says its own (ONNX Runtime: ~5).
CPU_PASS_TOKENS = 40


def cheapest_runs(widths: Sequence[int], batch_size: int, pass_tokens: float = CPU_PASS_TOKENS) -> list[tuple[int, int]]:
    """Cut ascending ``widths`` into runs ``(start, end)`` of at most ``batch_size`` rows that cost the least to compute
    on a CPU, a run costing ``pass_tokens`` plus its rows times its widest row (exact, by dynamic programming).

    Example:
        >>> cheapest_runs([10] * 8 + [100] * 8, 64)  # not 8 short rows padded to 100
        [(0, 8), (8, 16)]
        >>> cheapest_runs([10, 11, 12, 13], 64)  # similar widths: one pass
        [(0, 4)]
    """
    n = len(widths)
    width = np.asarray(widths, dtype=np.float64)
    best = np.zeros(n + 1)  # best[k]: the cheapest cost of the first k rows
    start = np.zeros(n + 1, dtype=np.int64)
    for end in range(1, n + 1):
        first = np.arange(max(0, end - batch_size), end)
        cost = best[first] + pass_tokens + (end - first) * width[end - 1]
        pick = int(np.argmin(cost))  # of equal costs, the longest run
        best[end], start[end] = cost[pick], first[pick]
    runs: list[tuple[int, int]] = []
    end = n
    while end:
        runs.append((int(start[end]), end))
        end = int(start[end])
    return runs[::-1]


def inference_batches(
    lengths: list[int], batch_size: int, device: Any, pass_tokens: float = CPU_PASS_TOKENS, packed: bool = False
) -> list[list[int]]:
    """Batches for inference passes, shortest texts first (``device``: a ``torch.device`` or its type's name).

    On CPU, where time grows with every token computed, padding included, texts sorted by length are cut into the
    batches of at most ``batch_size`` that cost the least (:func:`cheapest_runs`, a pass costing ``pass_tokens``):
    rows of similar length stay together, so a mix of short and long texts (many clients' requests in a server) does
    not pay for the longest one on every row, while a batch is not split where one more pass would cost more than the
    padding it saves. A runner that computes no padding (``packed``: a PyTorch chain on a CPU packs its batches) gets
    the fewest passes: ``batch_size`` texts each. On a GPU, where a small batch is all host overhead, a batch grows
    past ``batch_size`` texts while its padded size stays within ``batch_size * GPU_TOKENS_PER_ROW`` tokens.

    Example:
        >>> inference_batches([5, 1, 4, 2], 2, "cpu")
        [[1, 3], [2, 0]]
        >>> inference_batches([5, 1, 4, 2], 1, "cuda")  # 256 tokens: all four fit
        [[1, 3, 2, 0]]
        >>> [len(b) for b in inference_batches([10] * 8 + [100] * 8, 64, "cpu")]  # not 8 short rows padded to 100
        [8, 8]
        >>> [len(b) for b in inference_batches([10] * 8 + [100] * 8, 64, "cpu", packed=True)]  # no padding computed
        [16]
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    if packed and getattr(device, "type", device) != "cuda":
        return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    if getattr(device, "type", device) != "cuda":
        return [order[a:b] for a, b in cheapest_runs([lengths[i] for i in order], batch_size, pass_tokens)]
    batches: list[list[int]] = []
    current: list[int] = []
    budget = batch_size * GPU_TOKENS_PER_ROW
    # shortest first: the newest row is the widest, so a batch's padded size is its rows times that row's length
    for i in order:
        if current and len(current) >= batch_size and (len(current) + 1) * lengths[i] > budget:
            batches.append(current)
            current = []
        current.append(i)
    return [*batches, current] if current else batches


def pad_rows(sequences: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad token id lists to the longest one as NumPy int64 arrays: ``(input_ids, attention_mask)``.

    Example:
        >>> ids, mask = pad_rows([[1, 2, 3], [4]], 0)
        >>> ids.tolist(), mask.tolist()
        ([[1, 2, 3], [4, 0, 0]], [[1, 1, 1], [1, 0, 0]])
    """
    width = max(len(s) for s in sequences)
    ids = np.full((len(sequences), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), width), dtype=np.int64)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return ids, mask
