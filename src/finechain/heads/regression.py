"""Regression: one number per text, trained on standardised targets."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from finechain.errors import DataError
from finechain.evaluate.metrics import regression_metrics
from finechain.heads.base import Head, RawLabel, WordPositions, require_label, stacked
from finechain.heads.predictions import ValuePrediction
from finechain.heads.registry import register_head


@register_head
class RegressionHead(Head):
    """A real-valued score per text (rating, similarity, toxicity level); trained on targets scaled to mean 0 and
    standard deviation 1, predicted on the original scale.

    Example:
        >>> head = RegressionHead()
        >>> head.initialize([1.0, 5.0])
        >>> head.decode([np.array([0.5])], ["nice"])[0].value
        4.0
    """

    type_name = "regression"
    default_metric = "rmse"
    metrics = ("mae", "rmse", "r2", "pearson", "spearman")
    loss = "mean_squared_error"

    def __init__(self, labels: Sequence[str] = (), options: Any = None) -> None:
        super().__init__([], options)
        self.mean, self.std = 0.0, 1.0

    def state(self) -> dict[str, Any]:
        """The training targets' mean and standard deviation."""
        return {"mean": self.mean, "std": self.std}

    def load_state(self, state: dict[str, Any]) -> None:
        """Mean and standard deviation as saved."""
        self.mean = float(state.get("mean", 0.0))
        self.std = float(state.get("std", 1.0)) or 1.0

    @property
    def output_size(self) -> int:
        """One value."""
        return 1

    @classmethod
    def parse_label(cls, raw: RawLabel, *, file: str, line: int, options: Any) -> float:
        """A finite number."""
        require_label(raw, file=file, line=line)
        try:
            value = float(raw)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise DataError(f"label {raw!r} is not a number", file=file, line=line, fix="regression labels must be numbers") from None
        if not math.isfinite(value):
            raise DataError(f"label {raw!r} is not finite", file=file, line=line, fix="write a finite number")
        return value

    @classmethod
    def label_names(cls, parsed: Sequence[Any]) -> list[str]:
        """Regression has no label names."""
        return []

    @classmethod
    def check_training_labels(cls, parsed: Sequence[Any], lines: Sequence[int], file: str) -> None:
        """At least two examples."""
        if len(parsed) < 2:
            raise DataError(f"{len(parsed)} training examples", file=file, fix="add at least 2 rows")

    def initialize(self, parsed: Sequence[Any], labels: Sequence[str] | None = None) -> None:
        """Remember the training targets' mean and spread (regression has no label names)."""
        self.labels = []
        self.mean = float(np.mean(parsed))
        self.std = float(np.std(parsed)) or 1.0

    def comparable_score(self, metric: str, value: float) -> float:
        """An error (``rmse``, ``mae``) in units of the training targets' standard deviation, as ``1 - error / std``:
        about 0 for always answering the mean, 1 when exact, the same whether the labels are stars or dollars (so a
        regression task does not outweigh the others in a joint or tuned mean); R², Pearson and Spearman as they are.

        Example:
            >>> head = RegressionHead()
            >>> head.initialize([100.0, 300.0])
            >>> head.comparable_score("rmse", 25.0), head.comparable_score("r2", 0.5)
            (0.75, 0.5)
        """
        return 1.0 - value / self.std if metric in ("rmse", "mae") else value

    def check_known(self, parsed: Any, *, file: str, line: int) -> None:
        """Any number is allowed."""

    def targets(self, parsed: Sequence[Any], words: WordPositions | None = None) -> np.ndarray:
        """Standardised targets."""
        return ((np.asarray(parsed, dtype=np.float64) - self.mean) / self.std).astype(np.float32)

    def values(self, outputs: Sequence[np.ndarray]) -> np.ndarray:
        """Predictions on the original scale, in float64."""
        return stacked(outputs, 1).astype(np.float64).reshape(-1) * self.std + self.mean

    def decode(self, outputs: Sequence[np.ndarray], texts: Sequence[Any], words: WordPositions | None = None) -> list[ValuePrediction]:
        """The predicted value on the original scale."""
        return [ValuePrediction(v) for v in self.values(outputs).round(6).tolist()]

    def score(self, outputs: Sequence[np.ndarray], targets: np.ndarray) -> dict[str, Any]:
        """MAE, RMSE, R², Pearson, Spearman on the original scale."""
        return regression_metrics(targets.astype(np.float64) * self.std + self.mean, self.values(outputs))
