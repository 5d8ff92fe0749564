"""Single-label classification: softmax over the label set."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from finechain.errors import DataError
from finechain.evaluate.metrics import classification_metrics
from finechain.heads.base import Head, HeadOptions, RawLabel, WordPositions, softmax, stacked
from finechain.heads.predictions import ClassPrediction
from finechain.heads.registry import register_head


@register_head
class ClassificationHead(Head):
    """One label per text (intent, sentiment, topic).

    Example:
        >>> head = ClassificationHead(["neg", "pos"])
        >>> head.decode([np.array([0.0, 2.0])], ["great"])[0].label
        'pos'
    """

    type_name = "classification"
    default_metric = "accuracy"
    routes_on_labels = True
    metrics = ("accuracy", "macro_f1", "micro_f1", "weighted_f1")
    loss = "cross_entropy"

    @classmethod
    def parse_label(cls, raw: RawLabel, *, file: str, line: int, options: HeadOptions) -> str:
        """Labels are strings; JSON numbers become their text (``1`` -> ``"1"``)."""
        if isinstance(raw, bool) or raw is None or isinstance(raw, list | dict):
            raise DataError(f"label {raw!r} is not a single class name", file=file, line=line, fix="write one label per row")
        text = str(int(raw)) if isinstance(raw, float) and raw.is_integer() else str(raw).strip()
        if not text:
            raise DataError("empty label", file=file, line=line, fix="fill in the label or remove the row")
        return text

    @classmethod
    def stratify_keys(cls, parsed: Sequence[Any]) -> list[Any] | None:
        """Stratified by label."""
        return list(parsed)

    @classmethod
    def check_training_labels(cls, parsed: Sequence[Any], lines: Sequence[int], file: str) -> None:
        """At least two classes, each with two examples."""
        classes = sorted(Counter(parsed))
        if len(classes) < 2:
            found = f"only one class ({classes[0]!r})" if classes else "no class at all (no rows)"
            raise DataError(f"{found} in the training data", file=file, fix="a classifier needs examples of at least 2 classes")
        super().check_training_labels(parsed, lines, file)

    def targets(self, parsed: Sequence[Any], words: WordPositions | None = None) -> np.ndarray:
        """Label indices."""
        index = {name: i for i, name in enumerate(self.labels)}
        return np.array([index[name] for name in parsed], dtype=np.int64)

    def probabilities(self, outputs: Sequence[np.ndarray]) -> np.ndarray:
        """Softmax of each text's logits, in float64: ``[texts, labels]``."""
        return softmax(stacked(outputs, len(self.labels)).astype(np.float64), axis=-1)

    def decode(self, outputs: Sequence[np.ndarray], texts: Sequence[Any], words: WordPositions | None = None) -> list[ClassPrediction]:
        """The top label with its probability, and every label's probability."""
        probs = self.probabilities(outputs).round(6)
        best = probs.argmax(-1).tolist()
        return [
            ClassPrediction(self.labels[i], row[i], dict(zip(self.labels, row, strict=True)))
            for i, row in zip(best, probs.tolist(), strict=True)
        ]

    def score(self, outputs: Sequence[np.ndarray], targets: np.ndarray) -> dict[str, Any]:
        """Accuracy, F1s, per-class report and confusion matrix."""
        return classification_metrics(targets.tolist(), stacked(outputs, len(self.labels)).argmax(-1).tolist(), self.labels)
