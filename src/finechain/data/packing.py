"""Where the texts of a padded CPU batch go when packed: laid end to end in a few rows, so that the layers compute no
padding, each text attending only to its own tokens. Planned here with NumPy alone, for a PyTorch chain
(:mod:`finechain.model.packing`) and for an exported graph that takes packed rows (``finechain export``) alike."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

# Row sizes a packing may aim at (unless one text is longer): narrow rows waste less of a layer's attention on other
# texts' tokens, wide ones less padding at the rows' ends; the cheapest is chosen per batch.
ROW_TOKENS = (64, 128, 256)


class PackedLayout(NamedTuple):
    """Where each real token of a padded ``[texts, width]`` batch goes in ``[rows, row_width]`` packed rows.

    ``source``: each real token's flat position in the padded batch; ``target``: its flat position in the packed rows;
    ``segments``: ``[rows, row_width]``, the text each packed position holds (-1: padding at a row's end). A token may
    attend to the positions of its own segment only.
    """

    source: np.ndarray
    target: np.ndarray
    segments: np.ndarray


def layer_cost(rows: int, width: int, hidden_size: int) -> float:
    """What a layer costs on ``rows`` rows of ``width`` tokens, in tokens' worth of matrix products: each token's
    products plus its attention over its row, about ``width / (2 * hidden)`` more (fitted on a CPU to all-MiniLM-L6-v2's
    layers: 64 texts of 4-9 tokens packed into two 255-token rows took 13% longer than padded to 9, although 11% fewer
    tokens).

    Example:
        >>> layer_cost(2, 384, 384)
        1152.0
    """
    return rows * width * (1 + width / (2 * hidden_size))


def packed_rows(lengths: Sequence[int], width: int, hidden_size: int) -> list[list[int]] | None:
    """The texts of each row of the cheapest packing of texts of ``lengths`` tokens padded to ``width`` (by
    :func:`layer_cost`, rows of each size in :data:`ROW_TOKENS` tried), or ``None`` where the padded batch costs less
    (one text, or little padding).

    Example:
        >>> packed_rows([60, 4], 60, 384)
        [[0, 1]]
        >>> packed_rows([6, 6], 6, 384) is None
        True
    """
    if len(lengths) < 2:
        return None
    best, cost = None, layer_cost(len(lengths), width, hidden_size)
    for rows in dict.fromkeys(row_count(lengths, width, row_tokens) for row_tokens in ROW_TOKENS):  # each count once
        members, loads = deal_rows(lengths, rows)
        packed = layer_cost(rows, max(loads), hidden_size)
        if packed < cost:
            best, cost = members, packed
    return best


def row_count(lengths: Sequence[int], width: int, row_tokens: int) -> int:
    """How many rows of about ``row_tokens`` (or of the longest text, if longer) the texts fill.

    Example:
        >>> row_count([30, 30, 30], 30, 64)
        2
    """
    return max(1, -(-sum(lengths) // max(row_tokens, width)))


def deal_rows(lengths: Sequence[int], rows: int) -> tuple[list[list[int]], list[int]]:
    """Texts dealt into ``rows`` rows, longest first into the emptiest: each row's texts and token count.

    Example:
        >>> deal_rows([5, 3, 2], 2)
        ([[0], [1, 2]], [5, 5])
    """
    loads = [0] * rows
    members: list[list[int]] = [[] for _ in range(rows)]
    for text in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        row = min(range(rows), key=loads.__getitem__)
        members[row].append(text)
        loads[row] += lengths[text]
    return members, loads


def packed_layout(lengths: Sequence[int], width: int, members: Sequence[Sequence[int]]) -> PackedLayout:
    """The :class:`PackedLayout` that puts the texts ``members[r]`` (indices into ``lengths``) in row ``r``, in text
    order; a row is as wide as its fullest one.

    Example:
        >>> layout = packed_layout([3, 1, 2], 3, [[0, 1, 2]])
        >>> layout.source.tolist(), layout.target.tolist(), layout.segments.tolist()
        ([0, 1, 2, 3, 6, 7], [0, 1, 2, 3, 4, 5], [[0, 0, 0, 1, 2, 2]])
    """
    row_width = max(sum(lengths[t] for t in texts) for texts in members)
    source: list[int] = []
    target: list[int] = []
    segments = np.full((len(members), row_width), -1, dtype=np.int64)
    for row, texts in enumerate(members):
        at = 0
        for text in sorted(texts):
            n = lengths[text]
            source.extend(range(text * width, text * width + n))
            target.extend(range(row * row_width + at, row * row_width + at + n))
            segments[row, at : at + n] = text
            at += n
    return PackedLayout(np.asarray(source, dtype=np.int64), np.asarray(target, dtype=np.int64), segments)


def unpacked_layout(lengths: Sequence[int], width: int) -> PackedLayout:
    """The layout that leaves each text in its own row (what a graph that takes packed rows gets for a batch that
    packing would not make cheaper).

    Example:
        >>> unpacked_layout([2, 1], 2).segments.tolist()
        [[0, 0], [1, -1]]
    """
    return packed_layout(lengths, width, [[text] for text in range(len(lengths))])
