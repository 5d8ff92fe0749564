"""Packed inference on a CPU: the texts of a padded batch laid end to end in a few rows, so that the layers compute no
padding, with an attention mask that keeps each text to its own tokens (planned by :mod:`finechain.data.packing`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from finechain.data.packing import deal_rows, packed_layout, packed_rows, row_count


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
        return cls.from_rows(lengths, width, deal_rows(lengths, row_count(lengths, width, row_tokens))[0])

    @classmethod
    def from_rows(cls, lengths: Sequence[int], width: int, members: list[list[int]]) -> Packing:
        """The packing that puts the texts ``members[r]`` (indices into ``lengths``) in row ``r``, in text order."""
        layout = packed_layout(lengths, width, members)
        segments = torch.from_numpy(layout.segments)
        source, target = torch.from_numpy(layout.source), torch.from_numpy(layout.target)
        return cls(len(lengths), width, segments.shape[0], segments.shape[1], source, target, segment_mask(segments))

    @classmethod
    def given(cls, input_ids: torch.Tensor, source: torch.Tensor, target: torch.Tensor, segments: torch.Tensor) -> Packing:
        """The packing of the padded batch ``input_ids`` that a :class:`~finechain.data.packing.PackedLayout` describes
        (as tensors): how a graph exported to take packed rows reads them from its inputs.

        Example:
            >>> ids, segments = torch.ones(2, 3, dtype=torch.long), torch.tensor([[0, 0, 0, 1, 1]])
            >>> Packing.given(ids, torch.tensor([0, 1, 2, 3, 4]), torch.arange(5), segments).row_width
            5
        """
        texts, width = input_ids.shape
        rows, row_width = segments.shape
        return cls(texts, width, rows, row_width, source, target, segment_mask(segments))

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


def segment_mask(segments: torch.Tensor) -> torch.Tensor:
    """The ``[rows, 1, row_width, row_width]`` attention mask (True = may attend) of packed rows whose positions hold
    the texts ``segments`` (``[rows, row_width]``, -1 at padding): each token sees its own text's tokens only.

    Example:
        >>> segment_mask(torch.tensor([[0, 0, 1]]))[0, 0].int().tolist()
        [[1, 1, 0], [1, 1, 0], [0, 0, 1]]
    """
    return (segments[:, :, None] == segments[:, None, :]).unsqueeze(1)


def plan_packing(attention_mask: torch.Tensor, hidden_size: int) -> Packing | None:
    """The cheapest :class:`Packing` of the texts of a padded CPU batch (:func:`~finechain.data.packing.packed_rows`),
    or ``None`` where the padded batch costs less (little padding) or is on a GPU (where padded batches keep the fused
    attention kernels, which take no such mask).

    Example:
        >>> plan_packing(torch.tensor([[1] * 60, [1] * 4 + [0] * 56]), 384).rows
        1
        >>> plan_packing(torch.ones(2, 6, dtype=torch.long), 384) is None
        True
    """
    if attention_mask.is_cuda:
        return None
    lengths = attention_mask.sum(1).tolist()
    members = packed_rows(lengths, attention_mask.shape[1], hidden_size)
    return None if members is None else Packing.from_rows(lengths, attention_mask.shape[1], members)
