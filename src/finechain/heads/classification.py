"""Single-label classification: softmax over the label set."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import Field

from finechain.errors import DataError
from finechain.evaluate.metrics import classification_metrics
from finechain.heads.base import Head, HeadOptions, PooledHeadOptions, RawLabel, WordPositions, require_label, softmax, stacked
from finechain.heads.predictions import ClassPrediction
from finechain.heads.registry import register_head

ClassWeights = Literal["none", "balanced", "sqrt"]


class ClassificationOptions(PooledHeadOptions):
    """Options of a single-label classifier: besides pooling and dropout, how its loss treats rare classes."""

    loss: Literal["cross_entropy", "focal"] = Field(
        "cross_entropy", description="training loss: cross_entropy, or focal (easy examples count less; see focal_gamma)"
    )
    focal_gamma: float = Field(2.0, ge=0, le=10, description="focal loss: each example's term is scaled by (1 - p_gold) ** gamma")
    class_weights: ClassWeights = Field(
        "none",
        description="weigh each example's loss by its class: none, balanced (n / (classes * count), rare classes count as much "
        "as common ones) or sqrt (the square root of balanced, a milder push)",
    )


def imbalanced(counts: Counter[str], labels: Sequence[str]) -> bool:
    """Whether the rarest of ``labels`` has under half a uniform share of the examples counted in ``counts``.

    Example:
        >>> imbalanced(Counter(a=30, b=30, c=31, d=9), "abcd"), imbalanced(Counter(neg=44, pos=56), ["neg", "pos"])
        (True, False)
    """
    total = sum(counts.values())
    return bool(labels) and total > 0 and min(counts.get(label, 0) for label in labels) * len(labels) < 0.5 * total


def class_weights(counts: Counter[str], labels: Sequence[str], kind: ClassWeights) -> list[float] | None:
    """One loss weight per label from its training count (``None`` for ``none``); a label without examples counts
    as one.

    Example:
        >>> class_weights(Counter(a=3, b=1), ["a", "b"], "balanced")
        [0.6667, 2.0]
        >>> class_weights(Counter(a=3, b=1), ["a", "b"], "sqrt")
        [0.8165, 1.4142]
    """
    if kind == "none":
        return None
    total = sum(counts.values())
    balanced = [total / (len(labels) * max(counts.get(label, 0), 1)) for label in labels]
    return [round(w if kind == "balanced" else w**0.5, 4) for w in balanced]


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
    pairs = True
    metrics = ("accuracy", "macro_f1", "micro_f1", "weighted_f1")
    loss = "cross_entropy"
    Options = ClassificationOptions

    def __init__(self, labels: Sequence[str] = (), options: HeadOptions | dict[str, Any] | None = None) -> None:
        super().__init__(labels, options)
        self.label_counts: dict[str, int] = {}

    def state(self) -> dict[str, Any]:
        """The training label counts (the class weights follow from them)."""
        return {"label_counts": dict(self.label_counts)} if self.label_counts else {}

    def load_state(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`state`."""
        self.label_counts = {str(k): int(v) for k, v in (state.get("label_counts") or {}).items()}

    def initialize(self, parsed: Sequence[Any], labels: Sequence[str] | None = None) -> None:
        """The label set, and how often each label occurs in training (for class weights)."""
        super().initialize(parsed, labels)
        counts = Counter(parsed)
        self.label_counts = {label: counts.get(label, 0) for label in self.labels}

    def selection_metric(self, parsed: Sequence[Any]) -> str:
        """Macro-F1 when the training classes are imbalanced (the rarest under half a uniform share), so that a check
        that gives up on a rare class is not picked for its accuracy; accuracy otherwise.

        Example:
            >>> ClassificationHead().selection_metric(["a"] * 9 + ["b"])
            'macro_f1'
        """
        counts = Counter(parsed)
        return "macro_f1" if imbalanced(counts, sorted(counts)) else self.default_metric

    def loss_options(self) -> dict[str, Any]:
        """The class weights and focal gamma the options ask for.

        Example:
            >>> head = ClassificationHead(options={"loss": "focal", "class_weights": "balanced"})
            >>> head.initialize(["a", "a", "a", "b"])
            >>> head.loss_options()
            {'gamma': 2.0, 'weight': [0.6667, 2.0]}
        """
        options: dict[str, Any] = {}
        if self.options.loss == "focal":  # type: ignore[attr-defined]
            options["gamma"] = self.options.focal_gamma  # type: ignore[attr-defined]
        weights = class_weights(Counter(self.label_counts), self.labels, self.options.class_weights)  # type: ignore[attr-defined]
        if weights is not None and self.label_counts:
            options["weight"] = weights
        return options

    @classmethod
    def parse_label(cls, raw: RawLabel, *, file: str, line: int, options: HeadOptions) -> str:
        """Labels are strings; JSON numbers become their text (``1`` -> ``"1"``)."""
        require_label(raw, file=file, line=line)
        if isinstance(raw, bool | list | dict):
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


class ScaledCosineOptions(ClassificationOptions):
    """A classifier's options, and the temperature of its scaled cosines."""

    temperature: float = Field(
        0.05, gt=0, le=1, description="each label's logit is the cosine similarity of text and label row divided by this"
    )


class ScaledCosineHead(ClassificationHead):
    """A classifier whose logits are cosines of the text's pooled embedding and each label's row, divided by the
    ``temperature`` option (the base of the zero-shot and prototype heads; not a task type of its own).

    Example:
        >>> ScaledCosineHead(["a", "b"], options={"temperature": 0.1}).feature_scale
        10.0
    """

    Options = ScaledCosineOptions

    @property
    def feature_scale(self) -> float | None:
        """Pooled features are L2-normalised and multiplied by ``1 / temperature``: logits are scaled cosines."""
        return round(1.0 / self.options.temperature, 6)  # type: ignore[attr-defined]
