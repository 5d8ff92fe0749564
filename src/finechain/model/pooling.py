"""Pool token states into one vector per text."""

from __future__ import annotations

import torch

from finechain.heads import Pooling


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: Pooling) -> torch.Tensor:
    """Pool ``[batch, tokens, hidden]`` states over the non-padding tokens.

    Example:
        >>> h = torch.tensor([[[1.0], [3.0], [9.0]]]); m = torch.tensor([[1, 1, 0]])
        >>> pool(h, m, "mean").tolist(), pool(h, m, "cls").tolist(), pool(h, m, "max").tolist()
        ([[2.0]], [[1.0]], [[3.0]])
    """
    if how == "cls":
        return hidden[:, 0]
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    if how == "mean":
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    if how == "max":
        return hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).amax(1)
    raise ValueError(f"unknown pooling '{how}'; use mean, cls or max")
