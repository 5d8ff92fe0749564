"""Offline data augmentation (EDA, Wei and Zou 2019): extra copies of each training text with a few words replaced by
synonyms from a packaged lexicon, synonyms inserted, words swapped or deleted. No model, no download; seeded.

Used for text-level tasks (``training.augment: N`` adds N copies of every training example, with its label); the
validation and test data are never augmented.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources

OPERATIONS = ("synonym", "insert", "swap", "delete")


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


def augment(texts: Sequence[str], labels: Sequence[object], copies: int, rate: float, seed: int) -> tuple[list[str], list[object]]:
    """``texts`` and ``labels`` followed by ``copies`` :func:`eda` copies of each text with its label (copies equal to
    their text are left out), the same for the same ``seed``.

    Example:
        >>> texts, labels = augment(["the film was great", "ok"], ["pos", "neg"], copies=1, rate=0.25, seed=3)
        >>> len(texts) >= 2, labels[:2]
        (True, ['pos', 'neg'])
    """
    rng = random.Random(seed)
    out_texts, out_labels = list(texts), list(labels)
    for _ in range(copies):
        for text, label in zip(texts, labels, strict=True):
            new = eda(text, rng, rate)
            if new != text:
                out_texts.append(new)
                out_labels.append(label)
    return out_texts, out_labels
