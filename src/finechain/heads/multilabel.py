"""Multi-label classification: one sigmoid per label, with thresholds chosen on validation data."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import Field

from finechain.errors import DataError
from finechain.evaluate.metrics import multilabel_metrics
from finechain.heads.base import Head, PooledHeadOptions, RawLabel, WordPositions, require_label, sigmoid, stacked
from finechain.heads.predictions import LabelsPrediction
from finechain.heads.registry import register_head

THRESHOLD_GRID = np.round(np.arange(0.05, 0.96, 0.05), 2)


class MultiLabelOptions(PooledHeadOptions):
    """Multi-label options: how labels written as one string are separated."""

    label_separator: str | None = Field(None, min_length=1, description="separator of labels written as one string (default |)")


@register_head
class MultiLabelHead(Head):
    """Zero or more labels per text.

    Example:
        >>> head = MultiLabelHead(["billing", "urgent"])
        >>> head.decode([np.array([3.0, -3.0])], ["refund me now"])[0].labels
        ['billing']
    """

    type_name = "multilabel"
    Options = MultiLabelOptions
    default_metric = "micro_f1"
    routes_on_labels = True
    metrics = ("micro_f1", "macro_f1", "samples_f1", "subset_accuracy")
    loss = "binary_cross_entropy"
    pairs = True

    def __init__(self, labels: Sequence[str] = (), options: Any = None) -> None:
        super().__init__(labels, options)
        self.thresholds = [0.5] * len(self.labels)

    def state(self) -> dict[str, Any]:
        """The per-label thresholds."""
        return {"thresholds": list(self.thresholds)}

    def load_state(self, state: dict[str, Any]) -> None:
        """Thresholds as saved (0.5 each when none were)."""
        self.thresholds = list(state.get("thresholds") or [0.5] * len(self.labels))

    def initialize(self, parsed: Sequence[Any], labels: Sequence[str] | None = None) -> None:
        """Labels from the training data, thresholds at 0.5 until :meth:`calibrate`."""
        super().initialize(parsed, labels)
        self.thresholds = [0.5] * len(self.labels)

    @classmethod
    def parse_label(cls, raw: RawLabel, *, file: str, line: int, options: Any) -> list[str]:
        """A JSON list, or a string split on ``label_separator`` (default ``|``)."""
        require_label(raw, file=file, line=line, fix="write [] for a text with none of the labels, or fill them in")
        if isinstance(raw, str):
            separator = getattr(options, "label_separator", None) or "|"
            return sorted({part.strip() for part in raw.split(separator) if part.strip()})
        if isinstance(raw, list) and all(isinstance(item, str | int) for item in raw):
            return sorted({str(item).strip() for item in raw if str(item).strip()})
        raise DataError(f"label {raw!r} is not a list of names", file=file, line=line, fix='write ["a", "b"] or "a|b"')

    def targets(self, parsed: Sequence[Any], words: WordPositions | None = None) -> np.ndarray:
        """0/1 indicator matrix ``[texts, labels]``."""
        index = {name: i for i, name in enumerate(self.labels)}
        out = np.zeros((len(parsed), len(self.labels)), dtype=np.float32)
        for row, names in enumerate(parsed):
            out[row, [index[name] for name in names]] = 1.0
        return out

    def probabilities(self, outputs: Sequence[np.ndarray]) -> np.ndarray:
        """Each label's sigmoid, in float64: ``[texts, labels]``."""
        return sigmoid(stacked(outputs, len(self.labels)).astype(np.float64))

    def _chosen(self, probs: np.ndarray) -> np.ndarray:
        return (probs >= np.asarray(self.thresholds)).astype(int)

    def decode(self, outputs: Sequence[np.ndarray], texts: Sequence[Any], words: WordPositions | None = None) -> list[LabelsPrediction]:
        """Labels above their threshold, and every label's probability."""
        probs = self.probabilities(outputs)
        chosen = self._chosen(probs).tolist()
        return [
            LabelsPrediction([name for name, on in zip(self.labels, row, strict=True) if on], dict(zip(self.labels, prob, strict=True)))
            for row, prob in zip(chosen, probs.round(6).tolist(), strict=True)
        ]

    def score(self, outputs: Sequence[np.ndarray], targets: np.ndarray) -> dict[str, Any]:
        """Micro/macro F1, subset accuracy, per-label report."""
        return multilabel_metrics(targets.astype(int), self._chosen(self.probabilities(outputs)), self.labels)

    def calibrate(self, outputs: Sequence[np.ndarray], targets: np.ndarray, metric: str | None = None) -> None:
        """Choose the thresholds on validation outputs for ``metric`` (default micro-F1). Macro-F1 is the mean of the
        labels' own F1s, so for it each label gets the threshold that maximises its own F1; for the others (micro-F1,
        samples-F1, subset accuracy) one threshold is shared by every label, the one that maximises the metric. A
        threshold of its own per label is chosen on the few validation examples most labels have and fits their
        noise: on SNIPS slot types (39 labels) it cost 2.7 to 3.6 micro-F1 points against one shared threshold
        while it gained macro-F1, and on CoNLL-2003's 4 common entity types neither (``python -m benchmarks thresholds``).

        Example:
            >>> head = MultiLabelHead(["a", "b"])
            >>> logits = [np.array([1.0, -1.0]), np.array([-0.5, 2.0]), np.array([-2.0, -1.5])]
            >>> truth = np.array([[1, 0], [1, 1], [0, 0]])
            >>> head.calibrate(logits, truth); head.thresholds
            [0.3, 0.3]
            >>> head.calibrate(logits, truth, "macro_f1"); head.thresholds
            [0.15, 0.3]
        """
        from sklearn.metrics import f1_score

        probs, truth = self.probabilities(outputs), targets.astype(int)
        if metric == "macro_f1":
            best = []
            for j in range(len(self.labels)):
                scores = [f1_score(truth[:, j], probs[:, j] >= t, zero_division=0) for t in THRESHOLD_GRID]
                best.append(float(THRESHOLD_GRID[int(np.argmax(scores))]) if max(scores) > 0 else 0.5)
            self.thresholds = best
            return
        name = metric or self.default_metric
        scores = [multilabel_metrics(truth, (probs >= t).astype(int), self.labels)[name] for t in THRESHOLD_GRID]
        self.thresholds = [float(THRESHOLD_GRID[int(np.argmax(scores))]) if max(scores) > 0 else 0.5] * len(self.labels)
