"""Offline data augmentation: extra copies of each training example, made without a model or a download; seeded.

- Text-level tasks (EDA, Wei and Zou 2019): a few words replaced by synonyms from a packaged lexicon, synonyms
  inserted, words swapped or deleted; the copy keeps its label.
- Tagged texts, one label per word (Dai and Adel 2020, "An Analysis of Simple Data Augmentation for Named Entity
  Recognition"): an entity replaced by another entity of the same type from the training data, a word replaced by
  another word seen with the same tag, a word outside every entity replaced by a synonym, or the words within an
  entity (or within a stretch outside entities) shuffled; the tags follow the words.

``training.augment: N`` adds N copies of every training example; the validation and test data are never augmented.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from finechain.data.words import split_words
from finechain.heads.tagging import spans_from_tags

OPERATIONS = ("synonym", "insert", "swap", "delete")
TAGGED_OPERATIONS = ("mention", "token", "synonym", "shuffle")


@lru_cache(maxsize=1)
def synonyms() -> dict[str, tuple[str, ...]]:
    """The packaged lexicon: each word's synonyms (every other member of every group it is in), lower case.

    Example:
        >>> "movie" in synonyms()["film"], "bad" in synonyms().get("good", ())
        (True, False)
    """
    text = resources.files("finechain.data").joinpath("lexicon/synonyms.txt").read_text(encoding="utf-8")
    table: dict[str, set[str]] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        group = [word.strip().lower() for word in line.split(",") if word.strip()]
        for word in group:
            table.setdefault(word, set()).update(w for w in group if w != word)
    return {word: tuple(sorted(others)) for word, others in table.items()}


def _replaceable(words: Sequence[str]) -> list[int]:
    return [i for i, word in enumerate(words) if word.lower() in synonyms()]


def _synonym(word: str, rng: random.Random) -> str:
    choice = rng.choice(synonyms()[word.lower()])
    return choice.capitalize() if word[:1].isupper() else choice


def eda(text: str, rng: random.Random, rate: float = 0.1) -> str:
    """One augmented copy of ``text``: one operation, picked at random, applied to about ``rate`` of its words (at
    least one): synonym replacement, insertion of a synonym of one of its words at a random place, swapping two words,
    or deleting each word with probability ``rate`` (never all). A text the operation cannot change (no word with a
    synonym, a single word) comes back as it is.

    Example:
        >>> eda("the film was great", random.Random(3), rate=0.25)
        'the film was great picture'
    """
    words = text.split()
    if not words:
        return text
    n = max(1, round(rate * len(words)))
    operation = rng.choice(OPERATIONS)
    if operation == "synonym":
        for i in rng.sample(_replaceable(words), min(n, len(_replaceable(words)))):
            words[i] = _synonym(words[i], rng)
    elif operation == "insert":
        for _ in range(n):
            candidates = _replaceable(words)
            if not candidates:
                break
            words.insert(rng.randrange(len(words) + 1), _synonym(words[rng.choice(candidates)], rng).lower())
    elif operation == "swap" and len(words) > 1:
        for _ in range(n):
            i, j = rng.sample(range(len(words)), 2)
            words[i], words[j] = words[j], words[i]
    elif operation == "delete" and len(words) > 1:
        kept = [w for w in words if rng.random() >= rate]
        words = kept or [rng.choice(words)]
    return " ".join(words)


def augment(
    texts: Sequence[Any], labels: Sequence[Any], copies: int, rate: float, seed: int, *, per_word: bool = False
) -> tuple[list[Any], list[Any], list[int]]:
    """``texts`` and ``labels`` followed by ``copies`` augmented copies of each example, and for every returned
    example the index of the one it was made from; the same for the same ``seed``. A copy equal to its example is
    left out.

    Text-level labels (``per_word=False``) stay as they are and each copy is an :func:`eda` of its text. With
    ``per_word=True`` each label is one tag per word (of a word list, or of a raw text as
    :func:`~finechain.data.words.split_words` cuts it) and each copy is a :func:`tagged_eda`, drawing its replacements
    from these examples (:class:`TagPool`); a raw text's copy is raw text too (its words joined by spaces).

    Example:
        >>> texts, labels, sources = augment(["the film was great", "ok"], ["pos", "neg"], copies=1, rate=0.25, seed=3)
        >>> len(texts) >= 2, labels[:2], sources[:2]
        (True, ['pos', 'neg'], [0, 1])
    """
    rng = random.Random(seed)
    if per_word:
        words = [_words(text) for text in texts]
        pool = TagPool.of(words, labels)

        def copy(i: int) -> tuple[Any, Any] | None:
            new_words, new_tags = tagged_eda(words[i], labels[i], rng, rate, pool)
            if new_words == words[i]:
                return None
            if isinstance(texts[i], list):
                return new_words, new_tags
            text = " ".join(new_words)
            return (text, new_tags) if _words(text) == new_words else None  # a word that would not be cut as one
    else:

        def copy(i: int) -> tuple[Any, Any] | None:
            text = eda(texts[i], rng, rate)
            return (text, labels[i]) if text != texts[i] else None

    return _with_copies(texts, labels, copies, copy)


def _with_copies(
    texts: Sequence[Any], labels: Sequence[Any], copies: int, copy: Callable[[int], tuple[Any, Any] | None]
) -> tuple[list[Any], list[Any], list[int]]:
    out_texts, out_labels, sources = list(texts), list(labels), list(range(len(texts)))
    for _ in range(copies):
        for i in range(len(texts)):
            made = copy(i)
            if made is not None:
                out_texts.append(made[0])
                out_labels.append(made[1])
                sources.append(i)
    return out_texts, out_labels, sources


def _words(text: str | list[str]) -> list[str]:
    return list(text) if isinstance(text, list) else [text[a:b] for a, b in split_words(text)]


def _mentions(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """``(type, first, end)`` of each entity of IOB tags, ``end`` exclusive."""
    return [(kind, first, last + 1) for kind, first, last in spans_from_tags(list(tags))]


@dataclass(frozen=True)
class TagPool:
    """What the training data offers a tagged copy: the entities of each type (as word tuples) and the words seen
    with each tag."""

    mentions: dict[str, tuple[tuple[str, ...], ...]]
    words: dict[str, tuple[str, ...]]

    @classmethod
    def of(cls, texts: Sequence[Sequence[str]], tags: Sequence[Sequence[str]]) -> TagPool:
        """The pool of these word lists and their tags (each distinct entity once; words as often as seen).

        Example:
            >>> pool = TagPool.of([["to", "New", "York"], ["in", "Paris"]], [["O", "B-LOC", "I-LOC"], ["O", "B-LOC"]])
            >>> pool.mentions["LOC"], pool.words["O"]
            ((('New', 'York'), ('Paris',)), ('to', 'in'))
        """
        mentions: dict[str, dict[tuple[str, ...], None]] = {}
        words: dict[str, list[str]] = {}
        for text, row in zip(texts, tags, strict=True):
            for kind, first, end in _mentions(row):
                mentions.setdefault(kind, {})[tuple(text[first:end])] = None
            for word, tag in zip(text, row, strict=True):
                words.setdefault(tag, []).append(word)
        return cls({k: tuple(v) for k, v in mentions.items()}, {k: tuple(v) for k, v in words.items()})


def _some(rng: random.Random, candidates: Sequence[Any], rate: float) -> list[Any]:
    """About ``rate`` of ``candidates`` (at least one, when there are any), in their order."""
    chosen = set(rng.sample(range(len(candidates)), min(len(candidates), max(1, round(rate * len(candidates))))))
    return [c for i, c in enumerate(candidates) if i in chosen]


def tagged_eda(
    words: Sequence[str], tags: Sequence[str], rng: random.Random, rate: float, pool: TagPool, operation: str | None = None
) -> tuple[list[str], list[str]]:
    """One augmented copy of a tagged text: one operation (``operation``, or one picked at random), applied to about ``rate`` of what it
    acts on (at least one): ``mention`` replaces entities by other entities of the same type from ``pool``;
    ``token`` replaces words by words seen with the same tag; ``synonym`` replaces words outside every entity by a
    synonym from the packaged lexicon; ``shuffle`` shuffles the words of entities and of stretches outside entities
    (each stretch keeps its place and its tags). A text the operation cannot change comes back as it is.

    Example:
        >>> pool = TagPool.of([["to", "New", "York"], ["in", "Paris"]], [["O", "B-LOC", "I-LOC"], ["O", "B-LOC"]])
        >>> tagged_eda(["fly", "to", "Paris"], ["O", "O", "B-LOC"], random.Random(0), 0.1, pool, operation="mention")
        (['fly', 'to', 'New', 'York'], ['O', 'O', 'B-LOC', 'I-LOC'])
        >>> tagged_eda(["fly", "to", "Paris"], ["O", "O", "B-LOC"], random.Random(0), 0.1, pool)  # one picked at random
        (['to', 'fly', 'Paris'], ['O', 'O', 'B-LOC'])
    """
    words, tags = list(words), list(tags)
    operation = operation or rng.choice(TAGGED_OPERATIONS)
    if operation == "mention":
        for kind, first, end in reversed(_some(rng, _mentions(tags), rate)):  # from the right: earlier places hold
            options, current = pool.mentions.get(kind, ()), tuple(words[first:end])
            if all(option == current for option in options[:2]):
                continue  # no other entity of its type (the pool holds each entity once)
            new = current
            while new == current:
                new = rng.choice(options)
            words[first:end] = new
            tags[first:end] = [f"B-{kind}"] + [f"I-{kind}"] * (len(new) - 1)
    elif operation == "token":
        for i in _some(rng, range(len(words)), rate):
            words[i] = rng.choice(pool.words.get(tags[i], (words[i],)))
    elif operation == "synonym":
        for i in reversed(_some(rng, [i for i in _replaceable(words) if tags[i] == "O"], rate)):
            new = _synonym(words[i], rng).split()
            words[i : i + 1] = new
            tags[i : i + 1] = ["O"] * len(new)
    elif operation == "shuffle":
        stretches = [(first, end) for _, first, end in _mentions(tags)]
        stretches += _outside(tags)
        for first, end in _some(rng, [s for s in stretches if s[1] - s[0] > 1], rate):
            part = words[first:end]
            rng.shuffle(part)
            words[first:end] = part
    else:
        raise ValueError(f"unknown operation {operation!r}; use one of {', '.join(TAGGED_OPERATIONS)}")
    return words, tags


def _outside(tags: Sequence[str]) -> list[tuple[int, int]]:
    """``(first, end)`` of each run of ``O`` tags."""
    runs: list[tuple[int, int]] = []
    for i, tag in enumerate(tags):
        if tag != "O":
            continue
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs
