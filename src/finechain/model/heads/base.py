"""The head contract: a small module plus the label logic of one task type."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from finechain.data.batching import Encoded
from finechain.data.readers import RawLabel
from finechain.errors import DataError

Level = Literal["sequence", "token"]


class Head(nn.Module, ABC):
    """Base of every task head.

    A head type knows how to parse raw labels, turn them into targets, compute its loss, decode
    outputs into predictions and score them. Subclasses register with
    :func:`finechain.model.heads.register_head`; their ``config()`` is stored in the manifest and
    passed back to ``__init__`` on load, so a head saves and loads itself.
    """

    type_name: ClassVar[str]
    level: ClassVar[Level] = "sequence"
    default_metric: ClassVar[str]
    needs_label_vocabulary: ClassVar[bool] = True

    def __init__(self, hidden_size: int, labels: list[str], dropout: float = 0.1) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.labels = list(labels)
        self.dropout = nn.Dropout(dropout)
        self.dropout_p = dropout

    def config(self) -> dict[str, Any]:
        """JSON-able arguments that rebuild this head with ``type(self)(**config)``."""
        return {"hidden_size": self.hidden_size, "labels": self.labels, "dropout": self.dropout_p}

    @classmethod
    @abstractmethod
    def parse_label(cls, raw: RawLabel, *, file: str, line: int, options: dict[str, Any]) -> Any:
        """Check and normalise one raw label; raise :class:`DataError` naming file and line."""

    @classmethod
    def label_names(cls, parsed: list[Any]) -> list[str]:
        """Every label name used by the parsed labels (empty for regression)."""
        names: set[str] = set()
        for value in parsed:
            names.update(value if isinstance(value, list) else [value])
        return sorted(names)

    def check_known(self, parsed: Any, *, file: str, line: int) -> None:
        """Raise a :class:`DataError` if an evaluation label was never seen in training."""
        for name in parsed if isinstance(parsed, list) else [parsed]:
            if name not in self.labels:
                raise DataError(
                    f"label '{name}' does not occur in the training data",
                    file=file,
                    line=line,
                    fix="fix the label, or add training examples for it",
                )

    @abstractmethod
    def targets(self, parsed: list[Any], encoded: Encoded | None = None) -> torch.Tensor:
        """Training targets for parsed labels (token-level heads align them with ``encoded``)."""

    @abstractmethod
    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean loss of a batch."""

    @abstractmethod
    def decode(self, outputs: list[torch.Tensor], encoded: Encoded | None = None) -> list[dict[str, Any]]:
        """One JSON-able prediction per text; ``outputs`` holds each text's head output."""

    @abstractmethod
    def score(self, outputs: list[torch.Tensor], targets: torch.Tensor) -> dict[str, Any]:
        """Evaluation metrics for a whole split's ``outputs`` against ``targets``."""

    def calibrate(self, outputs: list[torch.Tensor], targets: torch.Tensor) -> None:
        """Fit post-hoc settings (thresholds) on validation outputs; default: nothing."""
