"""Tagged training texts longer than ``max_length`` tokens, cut into pieces of whole words that fit: every word is
trained on, as prediction reads every word of a long text (through overlapping windows), instead of the words past
the cut being dropped."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from finechain.data.prepare import Split
from finechain.data.words import split_words


def word_token_counts(tokenizer: Any, words: list[list[str]], chunk: int = 2048) -> list[list[int]]:
    """Sub-word tokens of each word of each text (no special tokens); a word the tokenizer drops counts 0.

    Example:
        >>> word_token_counts(tokenizer, [["hello", "tokenisation"]])  # doctest: +SKIP
        [[1, 3]]
    """
    counts: list[list[int]] = []
    for start in range(0, len(words), chunk):
        part = words[start : start + chunk]
        batch = tokenizer(part, is_split_into_words=True, add_special_tokens=False, truncation=False)
        for row, text in enumerate(part):
            per_word = [0] * len(text)
            for word in batch.word_ids(row):
                if word is not None:
                    per_word[word] += 1
            counts.append(per_word)
    return counts


def cut_points(counts: Sequence[int], tags: Sequence[str], room: int) -> list[tuple[int, int]]:
    """``(first, end)`` word ranges of at most ``room`` tokens each, in order and covering every word; a piece ends
    before a word that does not continue an entity (``I-``) where one that fits can, so entities stay whole. A word
    longer than ``room`` alone is a piece of its own.

    Example:
        >>> cut_points([1, 1, 1, 1, 1], ["O", "B-PER", "I-PER", "O", "O"], room=2)
        [(0, 1), (1, 3), (3, 5)]
        >>> cut_points([1, 1, 1], ["O", "O", "O"], room=5)
        [(0, 3)]
    """
    pieces: list[tuple[int, int]] = []
    first, size = 0, 0
    for word, count in enumerate(counts):
        if word > first and size + count > room:
            end = word
            while end > first + 1 and tags[end].startswith("I-"):  # not inside an entity, where a cut before it fits
                end -= 1
            if tags[end].startswith("I-"):  # one entity fills the piece: cut it where it overflows
                end = word
            pieces.append((first, end))
            first, size = end, sum(counts[end:word])
        size += count
    pieces.append((first, len(counts)))
    return pieces


def fitting_pieces(split: Split, tokenizer: Any, max_length: int) -> tuple[Split, int]:
    """``split`` (tagged texts: word lists or raw strings, one tag per word) with each text longer than
    ``max_length`` tokens replaced by consecutive pieces that fit (:func:`cut_points`), each with its words' tags and
    its text's line; and how many texts were cut.

    Example:
        >>> split = Split([["a"] * 300], [["O"] * 300], [1], "train.conll")
        >>> pieces, cut = fitting_pieces(split, tokenizer, 128)  # doctest: +SKIP
        >>> cut, [len(words) for words in pieces.texts]  # doctest: +SKIP
        (1, [126, 126, 48])
    """
    if not len(split):
        return split, 0
    room = max_length - tokenizer.num_special_tokens_to_add(pair=False)
    spans = [None if isinstance(text, list) else split_words(text) for text in split.texts]
    words = [text if s is None else [text[a:b] for a, b in s] for text, s in zip(split.texts, spans, strict=True)]
    texts: list[Any] = []
    labels: list[Any] = []
    lines: list[int] = []
    cut = 0
    for i, counts in enumerate(word_token_counts(tokenizer, words)):
        pieces = cut_points(counts, split.labels[i], room) if sum(counts) > room else [(0, len(counts))]
        cut += len(pieces) > 1
        for first, end in pieces:
            if len(pieces) == 1:
                texts.append(split.texts[i])
            elif spans[i] is None:
                texts.append(words[i][first:end])
            else:
                texts.append(split.texts[i][spans[i][first][0] : spans[i][end - 1][1]])
            labels.append(split.labels[i][first:end])
            lines.append(split.lines[i])
    return Split(texts, labels, lines, split.file, split.warnings), cut


__all__ = ["cut_points", "fitting_pieces", "word_token_counts"]
