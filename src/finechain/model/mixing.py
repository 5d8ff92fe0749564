"""Layer mixing: a head reads a learned weighted mix of several layers' outputs instead of only the last."""

from __future__ import annotations

import torch
from torch import nn


class LayerMix(nn.Module):
    """``gamma * sum_i softmax(w)_i * states_i`` over ``count`` equally shaped layer outputs (ELMo's scalar mix).

    Starts as a plain average. With a frozen trunk this lets a head pick the layers that carry what it
    needs (lower layers hold more lexical and positional information, which token tagging uses).

    Example:
        >>> mix = LayerMix(2)
        >>> mix([torch.zeros(1, 3), torch.ones(1, 3)]).tolist()
        [[0.5, 0.5, 0.5]]
    """

    def __init__(self, count: int) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(count))
        self.gamma = nn.Parameter(torch.ones(()))

    def forward(self, states: list[torch.Tensor]) -> torch.Tensor:
        """Mix ``states`` (all ``[..., hidden]`` of one shape)."""
        if len(states) != self.weights.numel():
            raise ValueError(f"LayerMix was built for {self.weights.numel()} layers, got {len(states)}")
        weights = torch.softmax(self.weights, dim=0).to(states[0].dtype)
        return self.gamma.to(states[0].dtype) * torch.einsum("l,l...->...", weights, torch.stack(states))

    def layer_weights(self) -> list[float]:
        """The current softmax weight of each mixed layer (lowest first), for reports."""
        return [round(float(w), 4) for w in torch.softmax(self.weights.detach(), dim=0)]
