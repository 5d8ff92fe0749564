"""The training losses that heads name (:attr:`finechain.heads.Head.loss`): one function per name, in float32."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from finechain.registry import Registry

IGNORE = -100  # target of tokens that are not a word's first sub-word

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LOSSES: Registry[Loss] = Registry("loss")


@LOSSES.register("cross_entropy")
def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy of ``[batch, labels]`` logits against label indices.

    Example:
        >>> round(float(cross_entropy(torch.zeros(1, 2), torch.tensor([0]))), 4)
        0.6931
    """
    return F.cross_entropy(logits.float(), targets)


@LOSSES.register("binary_cross_entropy")
def binary_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """One sigmoid cross-entropy per label, averaged."""
    return F.binary_cross_entropy_with_logits(logits.float(), targets)


@LOSSES.register("mean_squared_error")
def mean_squared_error(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Squared error of ``[batch, 1]`` predictions."""
    return F.mse_loss(logits.float().squeeze(-1), targets)


@LOSSES.register("token_cross_entropy")
def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the tokens whose target is set (each word's first sub-word); ``targets`` may be wider than
    the batch's ``[batch, tokens, labels]`` logits."""
    gold = targets[:, : logits.shape[1]]
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), gold.reshape(-1), ignore_index=IGNORE)
