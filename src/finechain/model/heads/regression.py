"""Regression: one number per text, trained on standardised targets."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from finechain.data.batching import Encoded
from finechain.data.readers import RawLabel
from finechain.errors import DataError
from finechain.evaluate.metrics import regression_metrics
from finechain.model.heads.base import Head
from finechain.model.heads.registry import register_head


@register_head
class RegressionHead(Head):
    """A real-valued score per text (rating, similarity, toxicity level).

    Example:
        >>> head = RegressionHead(4, [], mean=3.0, std=2.0)
        >>> head.decode([torch.tensor([0.5])])
        [{'value': 4.0}]
    """

    type_name = "regression"
    default_metric = "rmse"
    needs_label_vocabulary = False

    def __init__(self, hidden_size: int, labels: list[str], dropout: float = 0.1, mean: float = 0.0, std: float = 1.0) -> None:
        super().__init__(hidden_size, [], dropout)
        self.out = nn.Linear(hidden_size, 1)
        self.mean = float(mean)
        self.std = float(std) if std > 0 else 1.0

    def config(self) -> dict[str, Any]:
        """Adds the target mean and standard deviation."""
        return {**super().config(), "mean": self.mean, "std": self.std}

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Standardised prediction ``[batch, 1]``."""
        return self.out(self.dropout(features))

    @classmethod
    def parse_label(cls, raw: RawLabel, *, file: str, line: int, options: dict[str, Any]) -> float:
        """A finite number."""
        try:
            value = float(raw)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise DataError(f"label {raw!r} is not a number", file=file, line=line, fix="regression labels must be numbers") from None
        if not math.isfinite(value):
            raise DataError(f"label {raw!r} is not finite", file=file, line=line)
        return value

    @classmethod
    def label_names(cls, parsed: list[Any]) -> list[str]:
        """Regression has no label names."""
        return []

    def check_known(self, parsed: Any, *, file: str, line: int) -> None:
        """Any number is allowed."""

    def fit_scale(self, values: list[float]) -> None:
        """Remember the training targets' mean and spread."""
        self.mean = float(np.mean(values))
        self.std = float(np.std(values)) or 1.0

    def targets(self, parsed: list[float], encoded: Encoded | None = None) -> torch.Tensor:
        """Standardised targets."""
        return (torch.tensor(parsed, dtype=torch.float32) - self.mean) / self.std

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean squared error on the standardised scale."""
        return F.mse_loss(logits.float().squeeze(-1), targets)

    def _values(self, logits: torch.Tensor) -> np.ndarray:
        return logits.float().squeeze(-1).numpy() * self.std + self.mean

    def decode(self, outputs: list[torch.Tensor], encoded: Encoded | None = None) -> list[dict[str, Any]]:
        """The predicted value on the original scale."""
        return [{"value": round(float(v), 6)} for v in self._values(torch.stack(outputs))] if outputs else []

    def score(self, outputs: list[torch.Tensor], targets: torch.Tensor) -> dict[str, Any]:
        """MAE, RMSE, R², Pearson, Spearman on the original scale."""
        return regression_metrics(targets.numpy() * self.std + self.mean, self._values(torch.stack(outputs)))
