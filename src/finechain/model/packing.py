"""Packed inference on a CPU: the texts of a padded batch laid end to end in a few rows, so that the layers compute no
padding, with an attention mask that keeps each text to its own tokens."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

# Row sizes a packing may aim at (unless one text is longer): narrow rows waste less of a layer's attention on other
# texts' tokens, wide ones less padding at the rows' ends; the cheapest is chosen per batch.
ROW_TOKENS = (64, 128, 256)


@dataclass
class Packing:
    """Where each real token of a padded ``[texts, width]`` batch sits in ``rows`` packed rows of ``row_width`` tokens.

    ``source`` holds each real token's flat position in the padded batch, ``target`` its flat position in the packed
    rows; ``mask`` (``[rows, 1, row_width, row_width]``, True = may attend) lets a token attend only to the tokens of
    its own text, so every layer gives each token the output it would give in the padded batch. The embeddings are
    computed on the padded batch (positions and token types as the model has them) and packed afterwards.

    Example:
        >>> packing = Packing.plan([3, 1, 2], 3)
        >>> packing.rows, packing.row_width
        (1, 6)
        >>> x = torch.arange(9.0).view(3, 3, 1)
        >>> packing.pack(x).flatten().tolist()
        [0.0, 1.0, 2.0, 3.0, 6.0, 7.0]
        >>> packing.unpack(packing.pack(x)).flatten().tolist()
        [0.0, 1.0, 2.0, 3.0, 0.0, 0.0, 6.0, 7.0, 0.0]
    """

    texts: int
    width: int
    rows: int
    row_width: int
    source: torch.Tensor
    target: torch.Tensor
    mask: torch.Tensor

    @classmethod
    def plan(cls, lengths: Sequence[int], width: int, row_tokens: int = 256) -> Packing:
        """Lay texts of ``lengths`` tokens (padded to ``width``) into as few rows of about ``row_tokens`` as they fill,
        longest first into the emptiest row, so that the rows end up about equally long."""
        return cls.from_rows(lengths, width, _rows(lengths, _row_count(lengths, width, row_tokens))[0])

    @classmethod
    def from_rows(cls, lengths: Sequence[int], width: int, members: list[list[int]]) -> Packing:
        """The packing that puts the texts ``members[r]`` (indices into ``lengths``) in row ``r``, in text order."""
        row_width = max(sum(lengths[t] for t in texts) for texts in members)
        source: list[int] = []
        target: list[int] = []
        segment = torch.full((len(members), row_width), -1, dtype=torch.long)  # -1: padding at a row's end
        for row, texts in enumerate(members):
            at = 0
            for text in sorted(texts):
                n = lengths[text]
                source.extend(range(text * width, text * width + n))
                target.extend(range(row * row_width + at, row * row_width + at + n))
                segment[row, at : at + n] = text
                at += n
        mask = (segment[:, :, None] == segment[:, None, :]).unsqueeze(1)
        return cls(len(lengths), width, len(members), row_width, torch.tensor(source), torch.tensor(target), mask)

    def pack(self, states: torch.Tensor) -> torch.Tensor:
        """``[texts, width, hidden]`` -> ``[rows, row_width, hidden]`` (zeros after each row's last text)."""
        hidden = states.shape[-1]
        packed = states.new_zeros(self.rows * self.row_width, hidden)
        packed[self.target] = states.reshape(-1, hidden)[self.source]
        return packed.view(self.rows, self.row_width, hidden)

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """``[rows, row_width, hidden]`` -> ``[texts, width, hidden]`` (zeros at padding)."""
        hidden = packed.shape[-1]
        states = packed.new_zeros(self.texts * self.width, hidden)
        states[self.source] = packed.reshape(-1, hidden)[self.target]
        return states.view(self.texts, self.width, hidden)


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


def plan_packing(attention_mask: torch.Tensor, hidden_size: int) -> Packing | None:
    """The cheapest :class:`Packing` of the texts of a padded CPU batch (by :func:`layer_cost`, rows of each size in
    :data:`ROW_TOKENS` tried), or ``None`` where the padded batch costs less (little padding) or is on a GPU (where
    padded batches keep the fused attention kernels, which take no such mask).

    Example:
        >>> plan_packing(torch.tensor([[1] * 60, [1] * 4 + [0] * 56]), 384).rows
        1
        >>> plan_packing(torch.ones(2, 6, dtype=torch.long), 384) is None
        True
    """
    if attention_mask.is_cuda or attention_mask.shape[0] < 2:
        return None
    lengths = attention_mask.sum(1).tolist()
    width = attention_mask.shape[1]
    best, cost = None, layer_cost(len(lengths), width, hidden_size)
    for rows in dict.fromkeys(_row_count(lengths, width, row_tokens) for row_tokens in ROW_TOKENS):  # each count once
        members, loads = _rows(lengths, rows)
        packed = layer_cost(rows, max(loads), hidden_size)
        if packed < cost:
            best, cost = members, packed
    return None if best is None else Packing.from_rows(lengths, width, best)


def _row_count(lengths: Sequence[int], width: int, row_tokens: int) -> int:
    """How many rows of about ``row_tokens`` (or of the longest text, if longer) the texts fill."""
    return max(1, -(-sum(lengths) // max(row_tokens, width)))


def _rows(lengths: Sequence[int], rows: int) -> tuple[list[list[int]], list[int]]:
    """Texts dealt into ``rows`` rows, longest first into the emptiest: each row's texts and token count."""
    loads = [0] * rows
    members: list[list[int]] = [[] for _ in range(rows)]
    for text in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        row = min(range(rows), key=loads.__getitem__)
        members[row].append(text)
        loads[row] += lengths[text]
    return members, loads
