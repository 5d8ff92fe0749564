"""A head's network layer: pool (for heads that read one vector per text), dropout, one linear map."""

from __future__ import annotations

import torch
from torch import nn

from finechain.heads import Pooling
from finechain.model.pooling import pool


class HeadLayer(nn.Module):
    """``Linear(dropout(pooled or token states))``; its weights are saved as ``out.weight`` / ``out.bias``.

    Example:
        >>> layer = HeadLayer(4, 3, pooling="mean").eval()
        >>> layer(torch.zeros(2, 5, 4), torch.ones(2, 5)).shape
        torch.Size([2, 3])
    """

    def __init__(self, hidden_size: int, outputs: int, dropout: float = 0.1, pooling: Pooling | None = "mean") -> None:
        super().__init__()
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, outputs)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits ``[batch, outputs]``, or ``[batch, tokens, outputs]`` for a head that reads every token."""
        features = hidden if self.pooling is None else pool(hidden, attention_mask, self.pooling)
        return self.out(self.dropout(features))
