"""Cut a validation split from training data: stratified, seeded, recorded."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any


def validation_size(examples: int, fraction: float) -> int:
    """How many of ``examples`` a validation cut of ``fraction`` takes (at least one).

    Example:
        >>> validation_size(16, 0.1), validation_size(616, 0.1)
        (2, 62)
    """
    return max(1, round(examples * fraction))


def validation_split(labels: list[Any], fraction: float, seed: int, stratify: bool) -> tuple[list[int], list[int]]:
    """Indices ``(train, validation)``; stratified by label when every class can be split.

    Example:
        >>> tr, va = validation_split(["a"] * 8 + ["b"] * 8, 0.25, seed=0, stratify=True)
        >>> len(tr), len(va), sorted(Counter(["a"] * 8 + ["b"] * 8)[i] for i in "ab")
        (12, 4, [8, 8])
    """
    from sklearn.model_selection import train_test_split  # here, not at import: predicting never needs it

    indices = list(range(len(labels)))
    n_val = validation_size(len(labels), fraction)
    counts = Counter(labels) if stratify else Counter()
    can_stratify = stratify and min(counts.values()) >= 2 and n_val >= len(counts) and len(labels) - n_val >= len(counts)
    train_idx, val_idx = train_test_split(
        indices, test_size=n_val, random_state=seed, shuffle=True, stratify=labels if can_stratify else None
    )
    return sorted(train_idx), sorted(val_idx)


def subsample(keys: list[Any], size: int, seed: int) -> list[int]:
    """Indices of a seeded subsample of ``size`` of the rows whose ``keys`` (labels; all equal for no stratification)
    are given. It is stratified, and every key that has two or more rows keeps at least two (one to learn from, one that
    a validation cut may take): a rare label is topped up from the rows left out, in exchange for rows of the commonest
    labels, so the size stays ``size``.

    Example:
        >>> keys = ["a"] * 96 + ["b"] * 2 + ["c"] * 2
        >>> kept = subsample(keys, 10, seed=0)
        >>> len(kept), sorted(Counter(keys[i] for i in kept).items())
        (10, [('a', 6), ('b', 2), ('c', 2)])
    """
    kept, left = validation_split(keys, 1 - size / len(keys), seed, stratify=len(set(keys)) > 1)
    totals, counts = Counter(keys), Counter(keys[i] for i in kept)
    short = sorted((k for k in totals if totals[k] >= 2 and counts[k] < 2), key=str)
    if not short:
        return kept
    rng = random.Random(seed)
    kept_set = set(kept)
    for key in short:
        for index in rng.sample([i for i in left if keys[i] == key], 2 - counts[key]):
            kept_set.add(index)
            counts[key] += 1
            common = max((k for k in counts if counts[k] > 2), key=lambda k: (counts[k], str(k)))  # give back a common row
            kept_set.discard(rng.choice(sorted(i for i in kept_set if keys[i] == common)))
            counts[common] -= 1
    return sorted(kept_set)
