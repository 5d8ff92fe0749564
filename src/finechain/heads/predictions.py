"""Typed predictions: one small class per kind of answer. Each turns itself into JSON (``to_dict``) and into a
short cell for tables (``summary``); nothing else needs to know which keys a task type writes."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any


class Prediction(ABC):
    """What one task answered for one text."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the ``predict`` command's output)."""

    @abstractmethod
    def summary(self) -> str:
        """A few characters for a table cell."""

    def counted(self) -> list[str]:
        """The labels this answer counts towards in per-label statistics (a server's metrics); none by default."""
        return []

    def confidence(self) -> float | None:
        """How sure the answer is, for a flow's score conditions (the chosen label's probability); None if it has no
        such number."""
        return None

    def spans(self) -> list[Entity]:
        """The spans this answer found, for a flow's span edges; none by default."""
        return []

    def agrees(self, gold: Any) -> bool | None:
        """Whether this answer is exactly ``gold`` (a parsed label, label list or tag list), for a flow's exact match;
        None when exactness does not apply (a number)."""
        return None


@dataclass(frozen=True)
class ClassPrediction(Prediction):
    """One label per text, with its probability and every label's probability.

    Example:
        >>> p = ClassPrediction("pos", 0.9, {"neg": 0.1, "pos": 0.9})
        >>> p.summary(), p.to_dict()["scores"]["neg"]
        ('pos (0.90)', 0.1)
    """

    label: str
    score: float
    scores: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """``{"label", "score", "scores"}``."""
        return {"label": self.label, "score": self.score, "scores": dict(self.scores)}

    def summary(self) -> str:
        """``label (score)``."""
        return f"{self.label} ({self.score:.2f})"

    def counted(self) -> list[str]:
        """The label."""
        return [self.label]

    def confidence(self) -> float:
        """The label's probability."""
        return self.score

    def agrees(self, gold: Any) -> bool:
        """The label is ``gold``."""
        return self.label == gold


@dataclass(frozen=True)
class LabelsPrediction(Prediction):
    """Zero or more labels per text (those above their threshold) and every label's probability.

    Example:
        >>> LabelsPrediction(["billing"], {"billing": 0.8, "urgent": 0.2}).summary()
        'billing'
    """

    labels: list[str]
    scores: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """``{"labels", "scores"}``."""
        return {"labels": list(self.labels), "scores": dict(self.scores)}

    def summary(self) -> str:
        """The labels, comma-separated, or ``-``."""
        return ", ".join(self.labels) or "-"

    def counted(self) -> list[str]:
        """Each label given."""
        return list(self.labels)

    def confidence(self) -> float:
        """The highest probability among the labels given (among all labels when none passed its threshold)."""
        chosen = [self.scores[label] for label in self.labels] or list(self.scores.values())
        return max(chosen, default=0.0)

    def agrees(self, gold: Any) -> bool:
        """The same set of labels as ``gold``."""
        return set(self.labels) == set(gold)


@dataclass(frozen=True)
class ValuePrediction(Prediction):
    """A number per text.

    Example:
        >>> ValuePrediction(3.25).summary()
        '3.250'
    """

    value: float

    def to_dict(self) -> dict[str, Any]:
        """``{"value"}``."""
        return {"value": self.value}

    def summary(self) -> str:
        """The value with three decimals."""
        return f"{self.value:.3f}"


@dataclass(frozen=True)
class Entity:
    """A tagged span: its type, text and mean tag probability; character offsets into a raw text (``start``, ``end``),
    or word indices into a word list (``first_word``, ``last_word``)."""

    type: str
    score: float
    text: str | None
    start: int | None = None
    end: int | None = None
    first_word: int | None = None
    last_word: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Type, score, the offsets this entity has, text.

        Example:
            >>> Entity("PER", 0.9, "Ann", start=0, end=3).to_dict()
            {'type': 'PER', 'score': 0.9, 'start': 0, 'end': 3, 'text': 'Ann'}
        """
        if self.start is not None:
            where = {"start": self.start, "end": self.end}
        else:
            where = {"first_word": self.first_word, "last_word": self.last_word}
        return {"type": self.type, "score": self.score, **where, "text": self.text}


@dataclass(frozen=True)
class EntitiesPrediction(Prediction):
    """Per text: one tag per word and the entities they make.

    Example:
        >>> EntitiesPrediction([Entity("PER", 0.9, "Ann", start=0, end=3)], ["B-PER", "O"]).summary()
        'Ann/PER'
    """

    entities: list[Entity]
    tags: list[str]

    def to_dict(self) -> dict[str, Any]:
        """``{"entities": [...], "tags": [...]}``."""
        return {"entities": [e.to_dict() for e in self.entities], "tags": list(self.tags)}

    def summary(self) -> str:
        """``text/TYPE`` per entity, or ``-``."""
        return ", ".join(f"{e.text}/{e.type}" for e in self.entities) or "-"

    def counted(self) -> list[str]:
        """Each entity's type."""
        return [e.type for e in self.entities]

    def spans(self) -> list[Entity]:
        """The entities."""
        return list(self.entities)

    def agrees(self, gold: Any) -> bool:
        """Every word's tag is ``gold``'s."""
        return list(self.tags) == list(gold)
