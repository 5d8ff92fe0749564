"""The chain spec's models: one validated description drives training (pydantic; no PyTorch here).

A task's ``head:`` and ``branch:`` blocks are validated by the options model of its head type and branch mode
(``finechain.heads``, ``finechain.branches``), so each component declares its own settings. The flat spellings of
head options that older specs used (``decoding: argmax`` next to ``type: tagging``) are moved into ``head:``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SerializeAsAny, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from finechain.branches import BRANCH_MODES, BranchOptions
from finechain.heads import HEADS, HeadOptions, head_type
from finechain.registrations import OPTIMIZERS, SCHEDULES
from finechain.registry import named
from finechain.spec.flows import FlowSpec
from finechain.spec.names import TASK_NAME

DEFAULT_BACKBONE = "all-MiniLM-L6-v2"
Precision = Literal["auto", "fp32", "bf16", "fp16"]
TaskFormat = Literal["auto", "csv", "tsv", "jsonl", "conll"]
Cache = Literal["memory", "disk", "off"]
Adversarial = Literal["none", "fgm", "pgd"]
# head options that specs wrote next to `type:` before `head:` existed; still accepted there
FLAT_HEAD_OPTIONS = (
    "dropout",
    "pooling",
    "layer_mix",
    "decoding",
    "label_separator",
    "strict_bio",
    "keep_docstart",
    "token_column",
    "tag_column",
)
STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)


# Share of the backbone's layers on the task side of the split. Chosen from docs/benchmarks.md: on a frozen
# (pretrained) trunk, each task needs its own copy of the top 2/3 of the layers to match the HF Trainer's
# full fine-tune (split sweep; with 1/2 SST-2 lost a point). When the trunk is fine-tuned on all tasks
# jointly, the roles swap: the trunk holds 2/3 and each task 1/3 (sharing suite: at or above the per-task
# fine-tunes, 1.5x the throughput of the frozen default).
DEFAULT_BRANCH_FRACTION = 2 / 3


def default_split(num_layers: int, sharing: str = "frozen") -> int:
    """The trunk depth used when a spec says ``split: auto``, for a sharing mode (``frozen`` or ``joint``).

    Example:
        >>> default_split(6), default_split(12), default_split(6, "joint"), default_split(12, "joint")
        (2, 4, 4, 8)
    """
    branch = max(1, round(num_layers * DEFAULT_BRANCH_FRACTION))
    return branch if sharing == "joint" else num_layers - branch


class TrainingConfig(BaseModel):
    """Optimisation settings; set once for the chain, override any field per task."""

    model_config = STRICT

    epochs: int = Field(5, ge=1, le=10_000, description="maximum passes over the training data (more for small data: see min_steps)")
    min_steps: int = Field(
        300,
        ge=0,
        description="small data: a new task's epoch repeats its training data until `epochs` epochs make at least this many "
        "optimizer steps (0 = one pass per epoch)",
    )
    batch_size: int = Field(32, ge=1)
    learning_rate: float | None = Field(
        None, gt=0, description="learning rate of the branch layers; default: the branch mode's (1e-4 full layers, 5e-4 LoRA)"
    )
    head_learning_rate: float = Field(1e-3, gt=0, description="learning rate of the head")
    weight_decay: float = Field(0.01, ge=0)
    optimizer: Annotated[str, AfterValidator(named(OPTIMIZERS))] = Field("adamw", description="optimizer, by name")
    schedule: Annotated[str, AfterValidator(named(SCHEDULES))] = Field(
        "linear", description="learning-rate schedule after warm-up: linear (decay to 0), cosine, constant"
    )
    warmup_fraction: float = Field(0.1, ge=0, lt=1, description="share of steps with linear warm-up")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping norm")
    gradient_accumulation: int = Field(1, ge=1)
    patience: int = Field(2, ge=0, description="epochs without validation gain before stopping; 0 = never stop early")
    evaluations_per_epoch: int = Field(
        2,
        ge=1,
        le=100,
        description="validation checks per epoch, evenly spaced; the best check's weights are kept (early stopping is decided "
        "at epoch ends)",
    )
    precision: Precision = "auto"
    cache: Cache = Field("memory", description="where frozen trunk outputs are kept between epochs")
    seed: int = 13
    eval_batch_size: int = Field(128, ge=1)
    cuda_graphs: bool = Field(
        True, description="on a CUDA GPU, record each padded batch shape's step as a CUDA graph and replay it (far less host time)"
    )
    head_epochs: int = Field(
        0,
        ge=0,
        le=10_000,
        description="staged training: the first this many epochs train the head alone on the frozen branch, then the branch "
        "joins at its (lower) learning rate; 0 = off",
    )
    layer_decay: float = Field(
        1.0,
        gt=0,
        le=1,
        description="layer-wise learning-rate decay: each branch layer below the top one gets this factor more (1 = off; "
        "0.8 = the layer under the top at 0.8x, the next at 0.64x, ...)",
    )
    adversarial: Adversarial = Field(
        "none",
        description="adversarial training on the trunk states a tail reads: none, fgm (one gradient-sign step per batch) or "
        "pgd (adversarial_steps projected steps); each batch's loss is the clean one plus the perturbed one",
    )
    adversarial_epsilon: float = Field(
        0.05, gt=0, le=1, description="size of the adversarial perturbation, as a share of each example's trunk-state norm"
    )
    adversarial_steps: int = Field(3, ge=1, le=20, description="pgd: ascent steps per batch")
    augment: int = Field(
        0,
        ge=0,
        le=20,
        description="offline data augmentation: add this many copies of every training example, each with a few words "
        "replaced by synonyms from the packaged lexicon, synonyms inserted, words swapped or deleted (tagging: entities "
        "replaced by others of the same type, words by words with the same tag, words shuffled within an entity); 0 = off",
    )
    augment_rate: float = Field(0.1, gt=0, le=0.5, description="share of a text's words each augmented copy changes")
    contrastive: float = Field(
        0.0,
        ge=0,
        le=10,
        description="few-shot contrastive tuning (SetFit-style) for classification and multilabel tasks: add this weight "
        "times a pair loss that pulls the pooled branch outputs of same-label texts together and pushes others apart; "
        "0 = off",
    )
    ema_decay: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="keep an exponential moving average of the trained weights (this decay per optimizer step, at most "
        "(1 + step) / (10 + step) early on); checks score the average and the best check's average is kept; e.g. 0.998 "
        "for runs of a few thousand steps; off by default",
    )


class TrainingOverrides(BaseModel):
    """Per-task changes to the chain's :class:`TrainingConfig`: any of its fields, validated the same way."""

    model_config = STRICT

    epochs: int | None = Field(None, ge=1, le=10_000)
    min_steps: int | None = Field(None, ge=0)
    batch_size: int | None = Field(None, ge=1)
    learning_rate: float | None = Field(None, gt=0)
    head_learning_rate: float | None = Field(None, gt=0)
    weight_decay: float | None = Field(None, ge=0)
    optimizer: Annotated[str, AfterValidator(named(OPTIMIZERS))] | None = None
    schedule: Annotated[str, AfterValidator(named(SCHEDULES))] | None = None
    warmup_fraction: float | None = Field(None, ge=0, lt=1)
    max_grad_norm: float | None = Field(None, gt=0)
    gradient_accumulation: int | None = Field(None, ge=1)
    patience: int | None = Field(None, ge=0)
    evaluations_per_epoch: int | None = Field(None, ge=1, le=100)
    precision: Precision | None = None
    cache: Cache | None = None
    seed: int | None = None
    eval_batch_size: int | None = Field(None, ge=1)
    cuda_graphs: bool | None = None
    head_epochs: int | None = Field(None, ge=0, le=10_000)
    layer_decay: float | None = Field(None, gt=0, le=1)
    adversarial: Adversarial | None = None
    adversarial_epsilon: float | None = Field(None, gt=0, le=1)
    adversarial_steps: int | None = Field(None, ge=1, le=20)
    augment: int | None = Field(None, ge=0, le=20)
    augment_rate: float | None = Field(None, gt=0, le=0.5)
    contrastive: float | None = Field(None, ge=0, le=10)
    ema_decay: float | None = Field(None, gt=0, lt=1)

    def apply(self, base: TrainingConfig) -> TrainingConfig:
        """``base`` with the fields set here replaced.

        Example:
            >>> TrainingOverrides(epochs=9).apply(TrainingConfig()).epochs
            9
        """
        return base.model_copy(update=self.model_dump(exclude_none=True))


class TaskSpec(BaseModel):
    """One task: its type, data files and columns, head and branch options, training overrides.

    Example:
        >>> spec = TaskSpec(name="ner", type="tagging", train="ner.conll", decoding="argmax")
        >>> spec.head.decoding, spec.branch.mode
        ('argmax', 'full')
    """

    model_config = STRICT

    name: str = Field(pattern=TASK_NAME, max_length=64, description="letters, digits, _ and -; names the task's folder and output key")
    type: Annotated[str, AfterValidator(named(HEADS))] = "classification"
    train: Path | None = Field(None, description="training file; required in a spec file (Chain.fit can take texts= and labels= instead)")
    dev: Path | None = None
    test: Path | None = None
    format: TaskFormat = "auto"
    text_column: str = "text"
    label_column: str = "label"
    head: SerializeAsAny[HeadOptions] = Field(
        default_factory=HeadOptions, validate_default=True, description="options of the task type's head"
    )
    branch: SerializeAsAny[BranchOptions] = Field(
        default_factory=BranchOptions, validate_default=True, description="how the branch layers are tuned"
    )
    metric: str | None = None
    dev_fraction: float = Field(0.1, gt=0, lt=0.5)
    min_validation: int | None = Field(
        None,
        ge=0,
        description="without a dev file, cut a validation split from train only if it holds at least this many examples "
        "(unset: 50); with fewer (few-shot data) train on every example for the whole schedule and keep the last weights",
    )
    max_train_examples: int | None = Field(None, ge=2, description="seeded subsample of the training file")
    training: TrainingOverrides = Field(default_factory=TrainingOverrides)

    @model_validator(mode="before")
    @classmethod
    def _zero_shot_branch(cls, data: Any) -> Any:
        """A zero-shot task's branch is LoRA unless set: the untrained adapters leave the backbone's layers as they
        are (the label embeddings need them) and store next to nothing, and a few examples later tune only them."""
        if isinstance(data, dict) and data.get("type") == "zero_shot" and data.get("branch") is None:
            return {**data, "branch": {"mode": "lora"}}
        return data

    @model_validator(mode="before")
    @classmethod
    def _flat_head_options(cls, data: Any) -> Any:
        """Move head options written next to ``type:`` (the spelling before ``head:`` existed) into ``head``."""
        if not isinstance(data, dict) or not any(key in data for key in FLAT_HEAD_OPTIONS):
            return data
        data = dict(data)
        head = data.get("head")
        head = dict(head) if isinstance(head, dict) else head.model_dump(exclude_unset=True) if isinstance(head, BaseModel) else {}
        for key in FLAT_HEAD_OPTIONS:
            if key in data:
                if key in head:
                    raise PydanticCustomError("flat_and_nested", f"'{key}' is set twice, here and under 'head:'; keep one")
                head[key] = data.pop(key)
        data["head"] = head
        return data

    @field_validator("head", mode="wrap")
    @classmethod
    def _head_options(cls, value: Any, handler: Any, info: ValidationInfo) -> HeadOptions:
        """Validated by the options model of this task's head type."""
        kind = info.data.get("type")
        if kind not in HEADS:  # the type's own error is reported
            return HeadOptions()
        options = HEADS.get(kind).Options
        return (
            value if isinstance(value, options) else options.model_validate(value.model_dump() if isinstance(value, BaseModel) else value)
        )

    @field_validator("branch", mode="wrap")
    @classmethod
    def _branch_options(cls, value: Any, handler: Any) -> BranchOptions:
        """Validated by the options model of the branch mode named in ``mode``."""
        if isinstance(value, BaseModel):
            value = value.model_dump()
        mode = value.get("mode", "full") if isinstance(value, dict) else None
        if mode not in BRANCH_MODES:
            raise PydanticCustomError("branch_mode", f"unknown branch mode {mode!r}; use one of {BRANCH_MODES.names()}")
        return BRANCH_MODES.get(mode).Options.model_validate(value)

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, metric: str | None, info: ValidationInfo) -> str | None:
        """A metric that this task's head type reports."""
        kind = info.data.get("type")
        if metric is not None and kind in HEADS and metric not in HEADS.get(kind).metrics:
            raise PydanticCustomError(
                "metric", f"metric '{metric}' is not reported for {kind} tasks; use one of {list(HEADS.get(kind).metrics)}"
            )
        return metric

    def resolve_paths(self, base: Path) -> TaskSpec:
        """Make data paths absolute, relative to the spec file's folder."""
        update = {k: base / v for k in ("train", "dev", "test") if (v := getattr(self, k)) is not None and not Path(v).is_absolute()}
        return self.model_copy(update=update)


class JointConfig(BaseModel):
    """Joint multi-task fine-tuning of the trunk (``sharing: joint``)."""

    model_config = STRICT

    epochs: int | None = Field(
        None, ge=1, le=10_000, description="passes over all tasks' data, one task sampled per step; default training.epochs"
    )
    temperature: float = Field(2.0, gt=0, description="task sampling: size ** (1/T); 1 = proportional, large = uniform")
    loss_weights: dict[str, float] = Field(default_factory=dict, description="per-task loss multipliers (default 1)")
    trunk_learning_rate: float = Field(5e-5, gt=0, description="learning rate of the trunk layers")
    refine_epochs: int | None = Field(
        None,
        ge=0,
        le=10_000,
        description="per-task epochs on the frozen tuned trunk afterwards; default: the task's epochs with early stopping; 0 = none",
    )


class TuneConfig(BaseModel):
    """``tune: auto`` (or with settings): ``finechain train`` first searches what the spec leaves at its defaults, as
    ``finechain tune`` does (on validation data only), then trains the best settings found."""

    model_config = STRICT

    trials: int = Field(12, ge=1, le=1000, description="at most this many trials")
    budget: str | None = Field(
        "15m", pattern=r"^\s*\d+(\.\d+)?\s*[smh]?\s*$", description="and at most this long: 90s, 15m, 1.5h (null: no time limit)"
    )


class ChainSpec(BaseModel):
    """A whole chain: backbone, split depth, shared training settings and tasks."""

    model_config = STRICT

    backbone: str = DEFAULT_BACKBONE
    split: int | Literal["auto"] = "auto"
    max_length: int = Field(128, ge=8, le=4096)
    copy_backbone: bool = False
    device: str = "auto"
    sharing: Literal["auto", "frozen", "joint"] = Field(
        "auto", description="frozen backbone trunk, a trunk tuned on all tasks jointly, or auto: joint for 2+ tasks"
    )
    joint: JointConfig = Field(default_factory=JointConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    tasks: list[TaskSpec] = Field(min_length=1)
    flows: list[FlowSpec] = Field(default_factory=list, description="flows of tasks: routing, span edges, fallbacks")
    tune: TuneConfig | None = Field(None, description="auto (or {trials, budget}): search the settings before training")

    @field_validator("tune", mode="before")
    @classmethod
    def _auto(cls, value: Any) -> Any:
        """``tune: auto`` is the default search."""
        return {} if value == "auto" else value

    def trunk_depth(self, num_layers: int) -> int:
        """``split`` with ``auto`` resolved for a backbone of ``num_layers`` layers: :func:`default_split` for the
        sharing mode, except for one task on a frozen trunk whose head says how many layers to freeze (tagging: none).

        Example:
            >>> tagging = ChainSpec(tasks=[TaskSpec(name="ner", type="tagging", train="ner.conll")])
            >>> ChainSpec(tasks=[TaskSpec(name="a", train="a.csv")]).trunk_depth(6), tagging.trunk_depth(6)
            (2, 0)
        """
        alone = self.task_alone
        if alone is not None:
            return min(head_type(alone.type).frozen_layers_alone or 0, num_layers)
        return self.split if self.split != "auto" else default_split(num_layers, self.sharing_mode)

    @property
    def task_alone(self) -> TaskSpec | None:
        """The one task of a spec with ``split: auto`` on a frozen trunk whose head trains it in its own way when alone
        (``frozen_layers_alone``: tagging tunes every layer), or None.

        Example:
            >>> ChainSpec(tasks=[TaskSpec(name="ner", type="tagging", train="ner.conll")]).task_alone.name
            'ner'
        """
        if self.split != "auto" or self.sharing_mode != "frozen" or len(self.tasks) != 1 or self.tasks[0].type not in HEADS:
            return None
        return self.tasks[0] if head_type(self.tasks[0].type).frozen_layers_alone is not None else None

    @property
    def sharing_mode(self) -> Literal["frozen", "joint"]:
        """``sharing`` with ``auto`` resolved: joint multi-task training when the spec has two or more tasks.

        Example:
            >>> ChainSpec(tasks=[TaskSpec(name="a", train="a.csv")]).sharing_mode
            'frozen'
        """
        if self.sharing == "auto":
            return "joint" if len(self.tasks) > 1 and not self.zero_shot_tasks else "frozen"
        return self.sharing

    @property
    def zero_shot_tasks(self) -> list[str]:
        """Tasks whose labels their options name (zero-shot): they read the backbone's own trunk.

        Example:
            >>> ChainSpec(tasks=[TaskSpec(name="t", type="zero_shot", head={"labels": ["a", "b"]})]).zero_shot_tasks
            ['t']
        """
        return [t.name for t in self.tasks if t.type in HEADS and HEADS.get(t.type).option_labels(t.head) is not None]

    @model_validator(mode="after")
    def _unique_names(self) -> ChainSpec:
        names = [t.name for t in self.tasks]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"task names must be unique; repeated: {duplicates}")
        for task in self.tasks:
            if task.type in HEADS and not HEADS.get(task.type).pairs and task.training.apply(self.training).contrastive:
                raise ValueError(
                    f"training.contrastive compares texts by their labels, which task '{task.name}' ({task.type}) cannot; set "
                    f"contrastive per task (under the other tasks' training:), or 'training: {{contrastive: 0}}' on '{task.name}'"
                )
        if self.sharing_mode == "joint":  # joint training selects its trunk on every task's validation data: always cut one
            for task in self.tasks:
                if task.min_validation is None:
                    task.min_validation = 0
        if self.sharing == "joint" and self.zero_shot_tasks:
            raise ValueError(
                f"zero-shot tasks {self.zero_shot_tasks} compare texts and labels through the backbone's own trunk, which "
                "sharing: joint fine-tunes; use sharing: frozen (or auto)"
            )
        unknown = sorted(set(self.joint.loss_weights) - set(names))
        if unknown:
            raise ValueError(f"joint.loss_weights names unknown tasks {unknown}")
        alone = self.task_alone
        if alone is not None and alone.branch.mode == "full":  # the rates it was measured at, where the spec sets none
            rates = head_type(alone.type).training_alone.items()
            unset = {k: v for k, v in rates if k not in self.training.model_fields_set and getattr(alone.training, k) is None}
            alone.training = alone.training.model_copy(update=unset)
        return self
