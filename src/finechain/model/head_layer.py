"""A head's network layer: pool (for heads that read one vector per text), dropout, one linear map."""

from __future__ import annotations

import torch
from torch import nn

from finechain.heads import Pooling
from finechain.model.pooling import pool


class HeadLayer(nn.Module):
    """``Linear(dropout(pooled or token states))``; its weights are saved as ``out.weight`` / ``out.bias``. With
    ``scale`` the features are L2-normalised and multiplied by it first (logits are scaled cosines to the rows of the
    linear layer, which :meth:`set_prototypes` can start from). With ``transitions`` (a CRF) it also holds a learned
    score per output-to-output move and for the first and last output (``transitions``, ``start_transitions``,
    ``end_transitions``), which the CRF loss and decoding read; the forward pass does not use them.

    Example:
        >>> layer = HeadLayer(4, 3, pooling="mean").eval()
        >>> layer(torch.zeros(2, 5, 4), torch.ones(2, 5)).shape
        torch.Size([2, 3])
    """

    def __init__(
        self,
        hidden_size: int,
        outputs: int,
        dropout: float = 0.1,
        pooling: Pooling | None = "mean",
        scale: float | None = None,
        transitions: bool = False,
    ) -> None:
        super().__init__()
        self.pooling = pooling
        self.scale = scale
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, outputs)
        if transitions:
            self.transitions = nn.Parameter(torch.zeros(outputs, outputs))
            self.start_transitions = nn.Parameter(torch.zeros(outputs))
            self.end_transitions = nn.Parameter(torch.zeros(outputs))

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits ``[batch, outputs]``, or ``[batch, tokens, outputs]`` for a head that reads every token."""
        features = self.features(hidden, attention_mask)
        if self.scale is not None:
            features = nn.functional.normalize(features, dim=-1) * self.scale
        return self.out(self.dropout(features))

    def features(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """What the linear layer reads, before normalising: pooled (or token) states."""
        return hidden if self.pooling is None else pool(hidden, attention_mask, self.pooling)

    def transition_scores(self) -> dict[str, torch.Tensor]:
        """A CRF's move scores as the CRF loss takes them (``start``, ``moves``, ``end``); empty without them.

        Example:
            >>> sorted(HeadLayer(4, 3, pooling=None, transitions=True).transition_scores())
            ['end', 'moves', 'start']
        """
        if not hasattr(self, "transitions"):
            return {}
        return {"start": self.start_transitions, "moves": self.transitions, "end": self.end_transitions}

    @torch.no_grad()
    def set_prototypes(self, vectors: torch.Tensor) -> None:
        """Start the linear layer from one unit vector per output (its weight rows) and a zero bias.

        Example:
            >>> layer = HeadLayer(2, 2, scale=10.0).eval()
            >>> layer.set_prototypes(torch.eye(2))
            >>> layer(torch.tensor([[[3.0, 4.0]]]), torch.ones(1, 1)).tolist()
            [[6.0, 8.0]]
        """
        self.out.weight.copy_(nn.functional.normalize(vectors.float(), dim=-1))
        self.out.bias.zero_()
