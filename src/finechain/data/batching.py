"""Tokenise once, then serve length-bucketed, dynamically padded batches."""

from __future__ import annotations

from typing import Any

import torch


def tokenize(tokenizer: Any, texts: list[str], max_length: int, chunk: int = 2048) -> list[list[int]]:
    """Token ids (with special tokens, truncated) for every text, using the fast tokenizer in chunks.

    Example:
        >>> tokenize(tokenizer, ["hello world"], 16)  # doctest: +SKIP
        [[101, 7592, 2088, 102]]
    """
    ids: list[list[int]] = []
    for start in range(0, len(texts), chunk):
        encoded = tokenizer(texts[start : start + chunk], truncation=True, max_length=max_length, add_special_tokens=True)
        ids.extend(encoded["input_ids"])
    return ids


def length_batches(
    lengths: list[int],
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    bucket_factor: int = 50,
) -> list[list[int]]:
    """Group indices into batches of similar length to minimise padding.

    With ``shuffle``, indices are shuffled, sorted by length within windows of
    ``bucket_factor * batch_size``, cut into batches, and the batch order is shuffled again.

    Example:
        >>> length_batches([5, 1, 4, 2], 2, shuffle=False)
        [[1, 3], [2, 0]]
    """
    n = len(lengths)
    if not shuffle:
        order = sorted(range(n), key=lambda i: lengths[i])
        return [order[i : i + batch_size] for i in range(0, n, batch_size)]
    perm = torch.randperm(n, generator=generator).tolist()
    window = batch_size * bucket_factor
    batches: list[list[int]] = []
    for start in range(0, n, window):
        chunk = sorted(perm[start : start + window], key=lambda i: lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    order = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in order]


def pad_ids(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token id lists to the longest one; return ``(input_ids, attention_mask)``.

    Example:
        >>> ids, mask = pad_ids([[1, 2, 3], [4]], 0)
        >>> ids.tolist(), mask.tolist()
        ([[1, 2, 3], [4, 0, 0]], [[1, 1, 1], [1, 0, 0]])
    """
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask
