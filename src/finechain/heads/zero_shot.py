"""Zero-shot classification: a task defined by its label names (or descriptions), answered before any training
example by how close each text's embedding is to each label's.

The head is a classifier whose linear layer starts from the labels' embeddings: each label's prompts (its
description put into each template) are encoded by the same trunk and branch as the texts, pooled, L2-normalised and
averaged; a text's score for a label is the cosine similarity of the two divided by ``temperature``. Nothing else
changes, so the task runs in the chain's one trunk pass next to trained tasks, is saved and exported like any other,
and can later be trained on labelled examples (it then starts from the label embeddings instead of random weights).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import Field, field_validator

from finechain.errors import DataError
from finechain.heads.base import HeadOptions, RawLabel
from finechain.heads.classification import ClassificationHead, ScaledCosineHead, ScaledCosineOptions
from finechain.heads.registry import register_head


class ZeroShotOptions(ScaledCosineOptions):
    """A zero-shot task's labels (names, or names with descriptions), prompt templates and temperature, besides the
    classifier options that apply once it is trained on examples."""

    labels: list[str] | dict[str, str | list[str]] = Field(
        description="the labels: a list of names, or a mapping from each name to a description (or a list of descriptions) "
        "that is embedded in its place"
    )
    templates: list[str] = Field(
        ["{}"],
        min_length=1,
        description="prompts each label's description is put into, '{}' marking where (e.g. 'This review is {}.'); "
        "a label's embedding is the mean over its prompts",
    )

    @field_validator("labels")
    @classmethod
    def _two_labels(cls, value: list[str] | dict[str, Any]) -> list[str] | dict[str, Any]:
        names = list(value)
        if len(names) < 2:
            raise ValueError("a zero-shot task needs at least 2 labels; list them under head.labels")
        if len(set(names)) < len(names):
            raise ValueError(f"labels are repeated: {sorted({n for n in names if names.count(n) > 1})}; give each once")
        if any(not str(name).strip() for name in names):
            raise ValueError("a label name is empty; write a name for each label")
        if isinstance(value, dict):
            for name, description in value.items():
                texts = description if isinstance(description, list) else [description]
                if not texts or any(not str(text).strip() for text in texts):
                    raise ValueError(f"label '{name}' has an empty description; write one, or list the label names only")
        return value

    @field_validator("templates")
    @classmethod
    def _one_slot(cls, value: list[str]) -> list[str]:
        for template in value:
            if template.count("{}") != 1:
                raise ValueError(f"template {template!r} must contain '{{}}' exactly once (where the label goes)")
        return value


def label_prompts(options: ZeroShotOptions) -> list[list[str]]:
    """Each label's prompts: every description of it (its name when none is given, ``_`` read as a space) in every
    template.

    Example:
        >>> options = ZeroShotOptions(labels={"pos": "great", "neg": ["awful", "bad"]}, templates=["It was {}."])
        >>> label_prompts(options)
        [['It was great.'], ['It was awful.', 'It was bad.']]
        >>> label_prompts(ZeroShotOptions(labels=["card_arrival", "refund"]))
        [['card arrival'], ['refund']]
    """
    labels = options.labels
    described = labels if isinstance(labels, dict) else {name: name.replace("_", " ") for name in labels}
    prompts = []
    for description in described.values():
        texts = description if isinstance(description, list) else [description]
        prompts.append([template.replace("{}", text.strip()) for text in texts for template in options.templates])
    return prompts


@register_head
class ZeroShotHead(ScaledCosineHead):
    """A classifier that works before any training: its labels and their embeddings come from its options.

    Example:
        >>> head = ZeroShotHead(options={"labels": {"pos": "good", "neg": "bad"}, "templates": ["It is {}."]})
        >>> head.labels, head.prompts(), head.feature_scale
        (['pos', 'neg'], [['It is good.'], ['It is bad.']], 20.0)
    """

    type_name = "zero_shot"
    Options = ZeroShotOptions

    def __init__(self, labels: Sequence[str] = (), options: HeadOptions | Mapping[str, Any] | None = None) -> None:
        super().__init__(labels, options)  # type: ignore[arg-type]
        self.labels = list(labels) or self.option_labels(self.options) or []

    @classmethod
    def option_labels(cls, options: HeadOptions) -> list[str] | None:
        """The labels the options name, in their order."""
        return [str(name) for name in options.labels]  # type: ignore[attr-defined]

    def prompts(self) -> list[list[str]]:
        """Each label's prompts, whose mean embedding starts its row of the linear layer."""
        return label_prompts(self.options)  # type: ignore[arg-type]

    @classmethod
    def parse_label(cls, raw: RawLabel, *, file: str, line: int, options: HeadOptions) -> str:
        """A class name that is one of the options' labels."""
        label = super().parse_label(raw, file=file, line=line, options=options)
        known = cls.option_labels(options) or []
        if label not in known:
            raise DataError(
                f"label '{label}' is not one of this zero-shot task's labels {known}",
                file=file,
                line=line,
                fix="fix the label, or add it under the task's head.labels",
            )
        return label

    @classmethod
    def check_training_labels(cls, parsed: Sequence[Any], lines: Sequence[int], file: str) -> None:
        """Labelled examples only refine the label embeddings, so a few of some labels will do (each at least twice, so
        that a validation split can keep one), but a training file must hold some."""
        if not parsed:
            raise DataError("no rows in the training data", file=file, fix="add labelled rows, or remove 'train' to answer zero-shot")
        super(ClassificationHead, cls).check_training_labels(parsed, lines, file)

    def initialize(self, parsed: Sequence[Any], labels: Sequence[str] | None = None) -> None:
        """The options' labels (whatever the data holds), and each one's training count."""
        super().initialize(parsed, self.option_labels(self.options))

    def selection_metric(self, parsed: Sequence[Any]) -> str:
        """Macro-F1 when the labelled examples are imbalanced or leave a label out; else accuracy."""
        if parsed and set(self.labels) - set(parsed):
            return "macro_f1"
        return super().selection_metric(parsed)
