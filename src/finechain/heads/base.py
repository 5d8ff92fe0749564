"""The head contract: what a task type does besides its network layer.

A head type owns its options (validated in the spec's ``head:`` block), its labels (parsed, checked and counted),
its training targets, and how raw outputs become predictions and metrics. All of it works on NumPy arrays, so a
chain exported without PyTorch decodes and scores with the same code. The layer itself (dropout, a linear map, the
loss named by :attr:`Head.loss_name`) is built by ``finechain.model`` from :attr:`Head.output_size` and the options.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from typing import Any, ClassVar, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from finechain.errors import DataError
from finechain.evaluate.metrics import LOWER_IS_BETTER
from finechain.heads.predictions import Prediction

Pooling = Literal["mean", "cls", "max"]
RawLabel = str | float | list[str] | None  # a label as a file holds it, before parsing


def require_label(raw: RawLabel, *, file: str, line: int, fix: str = "fill in the label or remove the row") -> None:
    """A one-line :class:`DataError` for a row whose label is missing (JSON ``null``), before a head parses it.

    Example:
        >>> require_label(None, file="train.jsonl", line=3)
        Traceback (most recent call last):
        ...
        finechain.errors.DataError: train.jsonl:3: the label is null (fix: fill in the label or remove the row)
    """
    if raw is None:
        raise DataError("the label is null", file=file, line=line, fix=fix)


class HeadOptions(BaseModel):
    """Options every head has; a head type extends them with its own."""

    model_config = ConfigDict(extra="forbid")

    dropout: float = Field(0.1, ge=0, lt=1, description="dropout before the head's linear layer")
    layer_mix: bool = Field(
        False, description="the head reads a learned weighted mix of the embeddings and every layer's output, not only the last"
    )


class PooledHeadOptions(HeadOptions):
    """Options of heads that read one vector per text."""

    pooling: Pooling = Field("mean", description="how token states become one vector: mean, cls or max")


class WordPositions(Protocol):
    """Where each word of each text starts among its tokens (``None``: the word has no token), each text's token count,
    and each word's character span in a raw text (``None`` for word-list input)."""

    word_starts: list[list[int | None]]
    word_spans: list[list[tuple[int, int]]] | None

    @property
    def lengths(self) -> list[int]: ...


class Head(ABC):
    """Base of every head type (register subclasses with :func:`finechain.heads.register_head`).

    A head is built from its labels and options, ``initialize``-d on the training labels, and saved as
    :meth:`config` (labels, options and anything fitted, such as thresholds), which :meth:`from_config` reads back.
    """

    type_name: ClassVar[str]
    Options: ClassVar[type[HeadOptions]] = PooledHeadOptions
    default_metric: ClassVar[str]
    metrics: ClassVar[tuple[str, ...]]  # the scalar metrics :meth:`score` reports (any may be the spec's `metric`)
    loss: ClassVar[str]  # the loss function's name in finechain.model.losses
    token_level: ClassVar[bool] = False  # one output per token (labels words), not one per text
    routes_on_labels: ClassVar[bool] = False  # a flow may route on its answers' labels and scores
    pairs: ClassVar[bool] = False  # two texts' labels say how alike they are: contrastive training applies
    # `split: auto` for a spec of this one task on a frozen trunk: the frozen lower layers (None: the chain's usual
    # N - round(2N/3)). Per-word heads lose F1 to frozen lower layers on small or out-of-genre data, sentence heads do
    # not (`python -m benchmarks tagging-defaults` vs `split-sweep`)
    frozen_layers_alone: ClassVar[int | None] = None
    # with frozen_layers_alone: the training rates of such a task, where its spec sets none (full branch layers only)
    training_alone: ClassVar[dict[str, float]] = {}
    starts_from_examples: ClassVar[bool] = False  # the layer's rows start as each label's mean training embedding

    def __init__(self, labels: Sequence[str] = (), options: HeadOptions | Mapping[str, Any] | None = None) -> None:
        self.labels = list(labels)
        self.options = options if isinstance(options, self.Options) else self.Options.model_validate(dict(options or {}))

    # saving ---------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """What :meth:`initialize` and :meth:`calibrate` fitted beyond the labels (JSON-able); default: nothing."""
        return {}

    def config(self) -> dict[str, Any]:
        """Labels, options and fitted state: what :meth:`from_config` rebuilds this head from."""
        return {"labels": list(self.labels), "options": self.options.model_dump(mode="json"), "state": self.state()}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Head:
        """Inverse of :meth:`config`."""
        head = cls(config.get("labels", []), config.get("options"))
        head.load_state(dict(config.get("state") or {}))
        return head

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state` returned; default: nothing to restore."""
        return None

    # the network side ------------------------------------------------------------------------
    @property
    def output_size(self) -> int:
        """Outputs of the head's linear layer: one per label."""
        return len(self.labels)

    @property
    def ends_from_examples(self) -> bool:
        """After training, the layer's rows are set to each label's mean training embedding under the trained branch
        (a prototype head's ``recentre``); default: the rows stay as trained."""
        return False

    @property
    def feature_scale(self) -> float | None:
        """If set, the layer L2-normalises the features it reads and multiplies them by this (scaled-cosine logits);
        default: plain features."""
        return None

    def prompts(self) -> list[list[str]]:
        """Texts per output whose mean embedding starts that output's row of the linear layer (a zero-shot head's
        label descriptions); default: none, the layer starts at random."""
        return []

    @property
    def pooling(self) -> Pooling | None:
        """How the layer pools token states into one vector per text (``None``: it reads every token)."""
        return None if self.token_level else self.options.pooling  # type: ignore[attr-defined]

    # labels -------------------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def parse_label(cls, raw: RawLabel, *, file: str, line: int, options: HeadOptions) -> Any:
        """Check and normalise one raw label; raise :class:`DataError` naming file and line."""

    @classmethod
    def option_labels(cls, options: HeadOptions) -> list[str] | None:
        """The label set when the options name it (a zero-shot head: it then needs no training data); default: None,
        the labels come from the training data."""
        return None

    @classmethod
    def label_examples(cls, options: HeadOptions, labels: Sequence[str]) -> list[tuple[str, str]]:
        """Texts that stand for labels, each to be trained on as one more example of its label: ``(text, label)``
        pairs from the options (a prototype head's ``label_texts``); default: none."""
        return []

    @classmethod
    def label_names(cls, parsed: Sequence[Any]) -> list[str]:
        """Every label name the parsed labels use (empty for regression)."""
        names: set[str] = set()
        for value in parsed:
            names.update(value if isinstance(value, list) else [value])
        return sorted(names)

    @classmethod
    def stratify_keys(cls, parsed: Sequence[Any]) -> list[Any] | None:
        """Keys to stratify the validation split and subsamples by, or ``None`` for a plain random cut."""
        return None

    @classmethod
    def check_training_labels(cls, parsed: Sequence[Any], lines: Sequence[int], file: str) -> None:
        """Raise a :class:`DataError` if these training labels cannot train this head: by default every label needs two
        examples (one to learn from, one that a validation split may take)."""
        counts: Counter[str] = Counter()
        for value in parsed:
            counts.update(value if isinstance(value, list) else [value])
        for label, count in sorted(counts.items()):
            if count < 2:
                line = next(ln for v, ln in zip(parsed, lines, strict=True) if label in (v if isinstance(v, list) else [v]))
                raise DataError(
                    f"label '{label}' has only {count} example",
                    file=file,
                    line=line,
                    fix="add at least one more example of it, or remove it",
                )

    def initialize(self, parsed: Sequence[Any], labels: Sequence[str] | None = None) -> None:
        """Set up from the training labels before training: the label set (``labels`` when given, e.g. every label of
        the data before a validation split was cut from it; else those ``parsed`` uses), a regression head's scale."""
        self.labels = list(labels) if labels is not None else self.label_names(parsed)

    def selection_metric(self, parsed: Sequence[Any]) -> str:
        """The validation metric that picks the best check when the spec names none, given the training labels;
        default: :attr:`default_metric`."""
        return self.default_metric

    def comparable_score(self, metric: str, value: float) -> float:
        """``value`` of ``metric`` on a scale that every task shares: higher is better and no unit is left, so that
        joint training and ``tune`` can average it with other tasks' scores to choose their best check or trial.
        Default: the value, negated for a metric that goes down (``rmse``, ``mae``); a head whose metric has units
        (a regression's error) scales it.

        Example:
            >>> ClassificationHead(["neg", "pos"]).comparable_score("accuracy", 0.9)  # doctest: +SKIP
            0.9
        """
        return -value if metric in LOWER_IS_BETTER else value

    @property
    def loss_name(self) -> str:
        """The name of the training loss in ``finechain.model.losses`` (default :attr:`loss`; an option may change it)."""
        return self.loss

    @property
    def learns_transitions(self) -> bool:
        """Whether the head's layer also learns tag-to-tag move scores (a CRF), which decoding then reads through
        :meth:`take_layer_state`; default: no."""
        return False

    def take_layer_state(self, tensors: Mapping[str, np.ndarray]) -> None:
        """Keep what decoding needs of the head layer's trained tensors (a CRF's move scores, as
        ``HeadLayer.transition_scores`` names them: ``start``, ``moves``, ``end``); default: nothing."""
        return None

    def loss_options(self) -> dict[str, Any]:
        """Keyword arguments of the head's loss beyond outputs and targets (a per-label ``weight`` list, a focal
        ``gamma``); default: none."""
        return {}

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

    # outputs ------------------------------------------------------------------------------------
    @abstractmethod
    def targets(self, parsed: Sequence[Any], words: WordPositions | None = None) -> np.ndarray:
        """Training targets for parsed labels (token-level heads align them with ``words``)."""

    def training_targets(self, parsed: Sequence[Any], words: WordPositions | None = None) -> np.ndarray:
        """The targets trained on: :meth:`targets` (what scores are computed against) unless the head trains on more
        (a tagger on every sub-word of a word).

        Example:
            >>> ClassificationHead(["neg", "pos"]).training_targets(["pos", "neg"]).tolist()  # doctest: +SKIP
            [1, 0]
        """
        return self.targets(parsed, words)

    @abstractmethod
    def decode(self, outputs: Sequence[np.ndarray], texts: Sequence[Any], words: WordPositions | None = None) -> list[Prediction]:
        """One prediction per text from each text's raw output (``[labels]``, or ``[tokens, labels]`` for token-level heads)."""

    @abstractmethod
    def score(self, outputs: Sequence[np.ndarray], targets: np.ndarray) -> dict[str, Any]:
        """Metrics of a whole split's outputs against its :meth:`targets`: the scalars named in :attr:`metrics`, plus
        tables (per class, confusion matrix) and ``n``."""

    def span_types(self) -> list[str]:
        """The types of the spans this head finds (a flow's ``types`` filter); none by default."""
        return []

    @classmethod
    def allow_names(cls, parsed: Any) -> list[str]:
        """What one parsed label answers with, in the names a flow stage's ``allow`` lists: its label names (a tagger
        overrides: the span types its tags mark).

        Example:
            >>> from finechain.heads.multilabel import MultiLabelHead
            >>> MultiLabelHead.allow_names(["urgent", "billing"])
            ['billing', 'urgent']
        """
        return cls.label_names([parsed])

    def allows(self, label: str, allowed: Collection[str]) -> bool:
        """Whether output ``label`` may be answered where a flow stage's ``allow`` names ``allowed``: the label is one
        of them (a tagger overrides: ``O`` always, a tag when its span type is)."""
        return label in allowed

    def restrict(self, output: np.ndarray, allowed: Collection[str]) -> np.ndarray:
        """One text's raw ``output`` (``[labels]`` or ``[tokens, labels]``) with every label :meth:`allows` refuses ruled
        out (its score -inf), so that decoding chooses among the rest: a flow stage's ``allow``.

        Example:
            >>> from finechain.heads.classification import ClassificationHead
            >>> ClassificationHead(["a", "b", "c"]).restrict(np.array([3.0, 2.0, 1.0]), {"b", "c"}).tolist()
            [-inf, 2.0, 1.0]
        """
        keep = np.array([self.allows(label, allowed) for label in self.labels], dtype=bool)
        return np.where(keep, output, -np.inf).astype(output.dtype, copy=False)

    def empty_agrees(self, gold: Any) -> bool:
        """Whether giving no answer is right for ``gold`` (a flow that routed this task away); no by default."""
        return False

    def calibrate(self, outputs: Sequence[np.ndarray], targets: np.ndarray, metric: str | None = None) -> None:
        """Fit post-hoc settings (thresholds) on validation outputs, for ``metric`` (the one the task is selected on;
        none given: :attr:`default_metric`); default: nothing to fit."""
        return None


def stacked(outputs: Sequence[np.ndarray], width: int) -> np.ndarray:
    """Per-text output vectors as one float32 ``[texts, width]`` array (``[0, width]`` for no texts).

    Example:
        >>> stacked([np.zeros(2), np.ones(2)], 2).shape, stacked([], 3).shape
        ((2, 2), (0, 3))
    """
    return np.stack(outputs).astype(np.float32, copy=False) if len(outputs) else np.zeros((0, width), dtype=np.float32)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Softmax along ``axis`` (shifted by the maximum: no overflow).

    Example:
        >>> softmax(np.array([0.0, np.log(3.0)])).round(3).tolist()
        [0.25, 0.75]
    """
    if x.size == 0:
        return x.copy()
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Logarithm of :func:`softmax`, computed without taking a logarithm of a small number.

    Example:
        >>> np.exp(log_softmax(np.array([0.0, np.log(3.0)]))).round(3).tolist()
        [0.25, 0.75]
    """
    if x.size == 0:
        return x.copy()
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def sigmoid(x: np.ndarray) -> np.ndarray:
    """The logistic function, without overflow for large negative inputs.

    Example:
        >>> sigmoid(np.array([0.0, -1000.0, 1000.0])).tolist()
        [0.5, 0.0, 1.0]
    """
    return np.exp(-np.logaddexp(0.0, -x))
