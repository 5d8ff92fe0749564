"""Single-label classification: softmax over the label set."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from finechain.data.batching import Encoded
from finechain.data.readers import RawLabel
from finechain.errors import DataError
from finechain.evaluate.metrics import classification_metrics
from finechain.model.heads.base import Head
from finechain.model.heads.registry import register_head


@register_head
class ClassificationHead(Head):
    """One label per text (intent, sentiment, topic).

    Example:
        >>> head = ClassificationHead(4, ["neg", "pos"])
        >>> [p["label"] in {"neg", "pos"} for p in head.decode(list(head(torch.zeros(1, 4))))]
        [True]
    """

    type_name = "classification"
    default_metric = "accuracy"

    def __init__(self, hidden_size: int, labels: list[str], dropout: float = 0.1) -> None:
        super().__init__(hidden_size, labels, dropout)
        self.out = nn.Linear(hidden_size, len(labels))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits ``[batch, labels]``."""
        return self.out(self.dropout(features))

    @classmethod
    def parse_label(cls, raw: RawLabel, *, file: str, line: int, options: dict[str, Any]) -> str:
        """Labels are strings; JSON numbers become their text (``1`` -> ``"1"``)."""
        if isinstance(raw, bool) or raw is None or isinstance(raw, list | dict):
            raise DataError(f"label {raw!r} is not a single class name", file=file, line=line, fix="write one label per row")
        text = str(int(raw)) if isinstance(raw, float) and raw.is_integer() else str(raw).strip()
        if not text:
            raise DataError("empty label", file=file, line=line, fix="fill in the label or remove the row")
        return text

    def targets(self, parsed: list[str], encoded: Encoded | None = None) -> torch.Tensor:
        """Label indices."""
        index = {name: i for i, name in enumerate(self.labels)}
        return torch.tensor([index[name] for name in parsed], dtype=torch.long)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy."""
        return F.cross_entropy(logits.float(), targets)

    def decode(self, outputs: list[torch.Tensor], encoded: Encoded | None = None) -> list[dict[str, Any]]:
        """Top label with its probability."""
        if not outputs:
            return []
        probs = torch.stack(outputs).float().softmax(-1)
        score, best = probs.max(-1)
        return [{"label": self.labels[i], "score": round(s, 6)} for i, s in zip(best.tolist(), score.tolist(), strict=True)]

    def score(self, outputs: list[torch.Tensor], targets: torch.Tensor) -> dict[str, Any]:
        """Accuracy, F1s, per-class report and confusion matrix."""
        return classification_metrics(targets.tolist(), torch.stack(outputs).argmax(-1).tolist(), self.labels)
