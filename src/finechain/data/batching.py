"""Length-bucketed, dynamically padded training batches as tensors (tokenising and inference batch plans:
:mod:`finechain.data.tokens`, NumPy only)."""

from __future__ import annotations

import torch

from finechain.data.tokens import pad_rows


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


def index_tensor(indices: list[int], device: torch.device) -> torch.Tensor:
    """``indices`` as a long tensor on ``device``; on CUDA copied from pinned memory without waiting for the GPU
    (a copy from ordinary host memory waits for every queued kernel first).

    Example:
        >>> index_tensor([3, 1], torch.device("cpu")).tolist()
        [3, 1]
    """
    index = torch.as_tensor(indices, dtype=torch.long)
    return index.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else index


def pad_ids(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token id lists to the longest one; return ``(input_ids, attention_mask)`` as tensors (see :func:`pad_rows`).

    Example:
        >>> ids, mask = pad_ids([[1, 2, 3], [4]], 0)
        >>> ids.tolist(), mask.tolist()
        ([[1, 2, 3], [4, 0, 0]], [[1, 1, 1], [1, 0, 0]])
    """
    ids, mask = pad_rows(sequences, pad_id)
    return torch.from_numpy(ids), torch.from_numpy(mask)
