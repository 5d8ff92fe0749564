"""Head types: the part of a task that is not a network layer (options, labels, targets, decoding, metrics).

Importing this package registers the built-in types. Nothing here imports PyTorch.
"""

from finechain.heads import classification, multilabel, prototype, regression, tagging, zero_shot  # noqa: F401  (registers the built-ins)
from finechain.heads.base import Head, HeadOptions, PooledHeadOptions, Pooling, RawLabel, WordPositions
from finechain.heads.predictions import ClassPrediction, EntitiesPrediction, Entity, LabelsPrediction, Prediction, ValuePrediction
from finechain.heads.registry import HEADS, head_type, register_head

__all__ = [
    "HEADS",
    "ClassPrediction",
    "EntitiesPrediction",
    "Entity",
    "Head",
    "HeadOptions",
    "LabelsPrediction",
    "PooledHeadOptions",
    "Pooling",
    "Prediction",
    "RawLabel",
    "ValuePrediction",
    "WordPositions",
    "head_type",
    "register_head",
]
