"""Prototype classification for few-shot tasks (Snell et al. 2017, with cosine similarity): each label's row of the
linear layer starts as the mean embedding of its training examples (pooled by the task's branch, L2-normalised), and
a text's score for a label is their cosine similarity divided by ``temperature``. With a handful of examples per label
this starts where a nearest-class-mean classifier is, instead of at random weights; training then refines both the
prototypes and the branch (with ``training: {contrastive: 1}``, SetFit-style, too).
"""

from __future__ import annotations

from finechain.heads.classification import ScaledCosineHead
from finechain.heads.registry import register_head


@register_head
class PrototypeHead(ScaledCosineHead):
    """A classifier whose rows start as its labels' mean example embeddings (few-shot).

    Example:
        >>> head = PrototypeHead(["neg", "pos"], options={"temperature": 0.1})
        >>> head.feature_scale, head.starts_from_examples
        (10.0, True)
    """

    type_name = "prototype"
    starts_from_examples = True
