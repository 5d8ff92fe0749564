"""Prototype classification for few-shot tasks (Snell et al. 2017, with cosine similarity): each label's row of the
linear layer starts as the mean embedding of its training examples (pooled by the task's branch, L2-normalised), and
a text's score for a label is their cosine similarity divided by ``temperature``. With a handful of examples per label
this starts where a nearest-class-mean classifier is, instead of at random weights; training then refines both the
prototypes and the branch (with ``training: {contrastive: 1}``, SetFit-style, too). With ``recentre`` (the default)
each row is set once more after training, to its label's mean embedding under the trained branch: the branch moved
while the rows followed at the head's rate, and the class means of the final embeddings classify better (held-out
training texts, 8 per class, three samples: AG News +0.8 points, SST-2 +0.1; docs/benchmarks.md). With
``label_texts`` the labels' names (or texts given for them) join the training data as one more example each: with 8
examples per class a name like "Sports" is a ninth, and a prior the examples alone do not give.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

from pydantic import Field, field_validator

from finechain.errors import SpecError
from finechain.heads.base import HeadOptions
from finechain.heads.classification import ScaledCosineHead, ScaledCosineOptions
from finechain.heads.registry import register_head


class PrototypeOptions(ScaledCosineOptions):
    """A prototype head's options: the scaled-cosine classifier's, and whether its rows end at the class means."""

    recentre: bool = Field(
        True,
        description="after training, set each label's row to the mean embedding of its training examples under the trained "
        "branch (bias zero); false keeps the rows as trained",
    )
    label_texts: Literal["names"] | dict[str, str | list[str]] | None = Field(
        None,
        description="texts that stand for the labels, each trained on as one more example of its label (so also part of its "
        "starting row): 'names' (each label's name, with _ and - read as spaces: for names that are words), or a mapping "
        "from a label to a text or a list of texts (e.g. {'0': 'negative', '1': 'positive'}); none by default",
    )

    @field_validator("label_texts", mode="before")
    @classmethod
    def _labels_as_text(cls, value: object) -> object:  # YAML reads {0: negative} with a number for the label
        return {str(label): texts for label, texts in value.items()} if isinstance(value, dict) else value

    @field_validator("label_texts")
    @classmethod
    def _texts_written(cls, value: str | dict[str, str | list[str]] | None) -> str | dict[str, str | list[str]] | None:
        if isinstance(value, dict):
            for label, texts in value.items():
                if not texts or any(not str(text).strip() for text in _as_list(texts)):
                    raise ValueError(f"label '{label}' has an empty text under label_texts; write one, or leave the label out")
        return value


@register_head
class PrototypeHead(ScaledCosineHead):
    """A classifier whose rows start as its labels' mean example embeddings (few-shot) and, with ``recentre``, end as
    the mean embeddings under the trained branch.

    Example:
        >>> head = PrototypeHead(["neg", "pos"], options={"temperature": 0.1})
        >>> head.feature_scale, head.starts_from_examples, head.ends_from_examples
        (10.0, True, True)
        >>> PrototypeHead(["neg", "pos"], options={"recentre": False}).ends_from_examples
        False
    """

    type_name = "prototype"
    Options = PrototypeOptions
    starts_from_examples = True

    @classmethod
    def label_examples(cls, options: HeadOptions, labels: Sequence[str]) -> list[tuple[str, str]]:
        """The ``label_texts`` option as ``(text, label)`` training examples, in label order.

        Example:
            >>> PrototypeHead.label_examples(PrototypeOptions(label_texts="names"), ["card_arrival", "Sci/Tech"])
            [('card arrival', 'card_arrival'), ('Sci/Tech', 'Sci/Tech')]
            >>> PrototypeHead.label_examples(PrototypeOptions(label_texts={"1": ["good", "great"]}), ["0", "1"])
            [('good', '1'), ('great', '1')]
        """
        wanted = options.label_texts  # type: ignore[attr-defined]
        if wanted is None:
            return []
        if wanted == "names":
            pairs = [(re.sub(r"[_-]+", " ", label).strip(), label) for label in labels]
            wordless = [label for text, label in pairs if not re.search(r"[^\W\d_]", text)]
            if wordless:
                raise SpecError(
                    f"label_texts: names, but the label '{wordless[0]}' has no letters to read",
                    field="head.label_texts",
                    fix=f"map each label to a text instead, e.g. label_texts: {{'{wordless[0]}': 'what it means'}}",
                )
            return pairs
        unknown = [label for label in wanted if label not in labels]
        if unknown:
            raise SpecError(
                f"label_texts names '{unknown[0]}', which is not a label of this task ({', '.join(labels)})",
                field="head.label_texts",
                fix="write the labels as the training data spells them",
            )
        return [(text, label) for label in labels if label in wanted for text in _as_list(wanted[label])]

    @property
    def ends_from_examples(self) -> bool:
        """The rows are set to the labels' mean embeddings once training has finished (the ``recentre`` option)."""
        return bool(self.options.recentre)  # type: ignore[attr-defined]


def _as_list(texts: str | list[str]) -> list[str]:
    return texts if isinstance(texts, list) else [texts]
