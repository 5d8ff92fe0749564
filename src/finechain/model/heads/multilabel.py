"""Multi-label classification: one sigmoid per label, with per-label thresholds."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score
from torch import nn

from finechain.data.batching import Encoded
from finechain.data.readers import RawLabel
from finechain.errors import DataError
from finechain.evaluate.metrics import multilabel_metrics
from finechain.model.heads.base import Head
from finechain.model.heads.registry import register_head

THRESHOLD_GRID = np.round(np.arange(0.05, 0.96, 0.05), 2)


@register_head
class MultiLabelHead(Head):
    """Zero or more labels per text; thresholds are tuned per label on validation data.

    Example:
        >>> head = MultiLabelHead(4, ["billing", "urgent"])
        >>> sorted(head.decode([torch.tensor([3.0, -3.0])])[0]["labels"])
        ['billing']
    """

    type_name = "multilabel"
    default_metric = "micro_f1"

    def __init__(self, hidden_size: int, labels: list[str], dropout: float = 0.1, thresholds: list[float] | None = None) -> None:
        super().__init__(hidden_size, labels, dropout)
        self.out = nn.Linear(hidden_size, len(labels))
        self.thresholds = list(thresholds) if thresholds is not None else [0.5] * len(labels)

    def config(self) -> dict[str, Any]:
        """Adds the tuned thresholds."""
        return {**super().config(), "thresholds": self.thresholds}

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits ``[batch, labels]``."""
        return self.out(self.dropout(features))

    @classmethod
    def parse_label(cls, raw: RawLabel, *, file: str, line: int, options: dict[str, Any]) -> list[str]:
        """A JSON list, or a string split on ``label_separator`` (default ``|``)."""
        if isinstance(raw, str):
            separator = options.get("label_separator") or "|"
            return sorted({part.strip() for part in raw.split(separator) if part.strip()})
        if isinstance(raw, list) and all(isinstance(item, str | int) for item in raw):
            return sorted({str(item).strip() for item in raw if str(item).strip()})
        raise DataError(f"label {raw!r} is not a list of names", file=file, line=line, fix='write ["a", "b"] or "a|b"')

    def targets(self, parsed: list[list[str]], encoded: Encoded | None = None) -> torch.Tensor:
        """0/1 indicator matrix."""
        index = {name: i for i, name in enumerate(self.labels)}
        out = torch.zeros(len(parsed), len(self.labels))
        for row, names in enumerate(parsed):
            for name in names:
                out[row, index[name]] = 1.0
        return out

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy per label."""
        return F.binary_cross_entropy_with_logits(logits.float(), targets)

    def _predict(self, logits: torch.Tensor) -> np.ndarray:
        return (logits.float().sigmoid().numpy() >= np.asarray(self.thresholds)).astype(int)

    def decode(self, outputs: list[torch.Tensor], encoded: Encoded | None = None) -> list[dict[str, Any]]:
        """Labels above their threshold, and every label's probability."""
        if not outputs:
            return []
        logits = torch.stack(outputs)
        probs = logits.float().sigmoid().tolist()
        chosen = self._predict(logits)
        return [
            {
                "labels": [name for name, on in zip(self.labels, row, strict=True) if on],
                "scores": {name: round(p, 6) for name, p in zip(self.labels, prob, strict=True)},
            }
            for row, prob in zip(chosen, probs, strict=True)
        ]

    def score(self, outputs: list[torch.Tensor], targets: torch.Tensor) -> dict[str, Any]:
        """Micro/macro F1, subset accuracy, per-label report."""
        return multilabel_metrics(targets.numpy().astype(int), self._predict(torch.stack(outputs)), self.labels)

    def calibrate(self, outputs: list[torch.Tensor], targets: torch.Tensor) -> None:
        """Pick each label's threshold that maximises its F1 on validation data."""
        probs = torch.stack(outputs).float().sigmoid().numpy()
        truth = targets.numpy().astype(int)
        best = []
        for j in range(len(self.labels)):
            scores = [f1_score(truth[:, j], probs[:, j] >= t, zero_division=0) for t in THRESHOLD_GRID]
            best.append(float(THRESHOLD_GRID[int(np.argmax(scores))]) if max(scores) > 0 else 0.5)
        self.thresholds = best
