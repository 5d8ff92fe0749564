"""Cut a validation split from training data: stratified, seeded, recorded."""

from __future__ import annotations

from collections import Counter
from typing import Any

from sklearn.model_selection import train_test_split


def validation_split(labels: list[Any], fraction: float, seed: int, stratify: bool) -> tuple[list[int], list[int]]:
    """Indices ``(train, validation)``; stratified by label when every class can be split.

    Example:
        >>> tr, va = validation_split(["a"] * 8 + ["b"] * 8, 0.25, seed=0, stratify=True)
        >>> len(tr), len(va), sorted(Counter(["a"] * 8 + ["b"] * 8)[i] for i in "ab")
        (12, 4, [8, 8])
    """
    indices = list(range(len(labels)))
    n_val = max(1, round(len(labels) * fraction))
    counts = Counter(labels) if stratify else Counter()
    can_stratify = stratify and min(counts.values()) >= 2 and n_val >= len(counts) and len(labels) - n_val >= len(counts)
    train_idx, val_idx = train_test_split(
        indices, test_size=n_val, random_state=seed, shuffle=True, stratify=labels if can_stratify else None
    )
    return sorted(train_idx), sorted(val_idx)
