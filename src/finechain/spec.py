"""The YAML chain spec: one validated file drives training (pydantic models + line-aware errors)."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from finechain.data.readers import read_text_file
from finechain.errors import SpecError
from finechain.model.backbone import DEFAULT_BACKBONE
from finechain.model.pooling import Pooling

Precision = Literal["auto", "fp32", "bf16", "fp16"]
TaskFormat = Literal["auto", "csv", "tsv", "jsonl", "conll"]
Cache = Literal["memory", "disk", "off"]


class TrainingConfig(BaseModel):
    """Optimisation settings; set once for the chain, override any field per task."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(5, ge=1, description="maximum passes over the training data (more for small data: see min_steps)")
    min_steps: int = Field(
        300,
        ge=0,
        description="small data: a new task's epoch repeats its training data until `epochs` epochs make at least this many "
        "optimizer steps (0 = one pass per epoch)",
    )
    batch_size: int = Field(32, ge=1)
    learning_rate: float | None = Field(
        None, gt=0, description="AdamW learning rate of the branch layers; default: the branch mode's (1e-4 full layers, 5e-4 LoRA)"
    )
    head_learning_rate: float = Field(1e-3, gt=0, description="learning rate of the head")
    weight_decay: float = Field(0.01, ge=0)
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


class TrainingOverrides(BaseModel):
    """Per-task changes to the chain's :class:`TrainingConfig`."""

    model_config = ConfigDict(extra="forbid")

    epochs: int | None = Field(None, ge=1)
    min_steps: int | None = Field(None, ge=0)
    batch_size: int | None = Field(None, ge=1)
    learning_rate: float | None = Field(None, gt=0)
    head_learning_rate: float | None = Field(None, gt=0)
    weight_decay: float | None = Field(None, ge=0)
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

    def apply(self, base: TrainingConfig) -> TrainingConfig:
        """``base`` with the fields set here replaced."""
        return base.model_copy(update=self.model_dump(exclude_none=True))


class BranchConfig(BaseModel):
    """How the task's branch layers are tuned: fully, or with LoRA adapters (peft)."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["full", "lora"] = "full"
    rank: int = Field(8, ge=1, description="LoRA rank")
    alpha: int = Field(16, ge=1, description="LoRA scaling numerator")
    dropout: float = Field(0.05, ge=0, lt=1, description="LoRA dropout")
    targets: list[str] = Field(default_factory=lambda: ["query", "key", "value", "dense"], min_length=1)

    def model_dump(self, **kwargs: Any) -> dict[str, Any]:
        """Only the mode for full tuning; every option for LoRA."""
        data = super().model_dump(**kwargs)
        return {"mode": "full"} if self.mode == "full" else data


class TaskSpec(BaseModel):
    """One task: its type, data files and columns, head options and training overrides."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=64)
    type: str = "classification"
    train: Path | None = Field(None, description="training file; required in a spec file (Chain.fit can take texts= and labels= instead)")
    dev: Path | None = None
    test: Path | None = None
    format: TaskFormat = "auto"
    text_column: str = "text"
    label_column: str = "label"
    label_separator: str | None = None
    token_column: int | None = Field(None, description="tagging: CoNLL column of the token; default 0, or 1 (FORM) in .conllu files")
    tag_column: int = Field(-1, description="tagging: CoNLL column of the tag (-1 = last)")
    strict_bio: bool = Field(False, description="tagging: an I-X that does not continue X is an error instead of being repaired")
    keep_docstart: bool = Field(False, description="tagging: keep -DOCSTART- lines as tokens")
    decoding: Literal["constrained", "argmax"] = Field("constrained", description="tagging: valid-BIO Viterbi or per-word argmax")
    pooling: Pooling = "mean"
    layer_mix: bool = Field(False, description="the head reads a learned weighted mix of the embeddings and every layer")
    branch: BranchConfig = Field(default_factory=BranchConfig)
    metric: str | None = None
    dropout: float = Field(0.1, ge=0, lt=1)
    dev_fraction: float = Field(0.1, gt=0, lt=0.5)
    max_train_examples: int | None = Field(None, ge=2, description="seeded subsample of the training file")
    training: TrainingOverrides = Field(default_factory=TrainingOverrides)

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        from finechain.model.heads import HEAD_TYPES

        if value not in HEAD_TYPES:
            raise ValueError(f"unknown task type '{value}'; use one of {sorted(HEAD_TYPES)}")
        return value

    def resolve_paths(self, base: Path) -> TaskSpec:
        """Make data paths absolute, relative to the spec file's folder."""
        update = {k: base / v for k in ("train", "dev", "test") if (v := getattr(self, k)) is not None and not Path(v).is_absolute()}
        return self.model_copy(update=update)


class JointConfig(BaseModel):
    """Joint multi-task fine-tuning of the trunk (``sharing: joint``)."""

    model_config = ConfigDict(extra="forbid")

    epochs: int | None = Field(None, ge=1, description="passes over all tasks' data, one task sampled per step; default training.epochs")
    temperature: float = Field(2.0, gt=0, description="task sampling: size ** (1/T); 1 = proportional, large = uniform")
    loss_weights: dict[str, float] = Field(default_factory=dict, description="per-task loss multipliers (default 1)")
    trunk_learning_rate: float = Field(5e-5, gt=0, description="AdamW learning rate of the trunk layers")
    refine_epochs: int | None = Field(
        None,
        ge=0,
        description="per-task epochs on the frozen tuned trunk afterwards; default: the task's epochs with early stopping; 0 = none",
    )


class ChainSpec(BaseModel):
    """A whole chain: backbone, split depth, shared training settings and tasks."""

    model_config = ConfigDict(extra="forbid")

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

    @property
    def sharing_mode(self) -> Literal["frozen", "joint"]:
        """``sharing`` with ``auto`` resolved: joint multi-task training when the spec has two or more tasks.

        Example:
            >>> ChainSpec(tasks=[TaskSpec(name="a", train="a.csv")]).sharing_mode
            'frozen'
        """
        if self.sharing == "auto":
            return "joint" if len(self.tasks) > 1 else "frozen"
        return self.sharing

    @model_validator(mode="after")
    def _unique_names(self) -> ChainSpec:
        names = [t.name for t in self.tasks]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"task names must be unique; repeated: {duplicates}")
        unknown = sorted(set(self.joint.loss_weights) - set(names))
        if unknown:
            raise ValueError(f"joint.loss_weights names unknown tasks {unknown}")
        return self


def _line_index(node: yaml.Node, path: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], int]:
    lines = {path: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            lines[(*path, key.value)] = key.start_mark.line + 1
            lines.update({k: v for k, v in _line_index(value, (*path, key.value)).items() if k != (*path, key.value)})
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines.update(_line_index(item, (*path, i)))
    return lines


def _load_yaml(path: Path) -> tuple[Any, dict[tuple[Any, ...], int]]:
    text = read_text_file(path)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        raise SpecError(f"invalid YAML: {getattr(err, 'problem', err)}", file=path, line=mark.line + 1 if mark else None) from None
    if not isinstance(data, dict) or node is None:
        raise SpecError("the spec must be a YAML mapping", file=path, line=1, fix="see docs/spec.md for an example")
    return data, _line_index(node)


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The spec model that holds the field at ``loc`` (list indices skipped), e.g. TaskSpec for ``tasks.0.x``."""
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        inner = _nested_model(field.annotation) if field is not None else None
        if inner is None:
            return None
        model = inner
    return model


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next((m for arg in get_args(annotation) if (m := _nested_model(arg)) is not None), None)


def unknown_field_hint(model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    """How to fix an unknown spec field: the close name it may be a typo of, or the block it belongs in.

    Example:
        >>> unknown_field_hint(ChainSpec, ("tasks", 0, "learning_rat"))
        "did you mean 'training.learning_rate'? (training settings go under 'training:')"
        >>> unknown_field_hint(ChainSpec, ("epochs",))
        "move it under 'training:'"
        >>> unknown_field_hint(ChainSpec, ("tasks", 0, "text_colum"))
        "did you mean 'text_column'?"
    """
    *parents, name = loc
    holder = _model_at(model, tuple(parents))
    if holder is None:
        return "remove or rename it"
    training = next((f for f in ("training",) if f in holder.model_fields), None)
    nested = _nested_model(holder.model_fields[training].annotation) if training else None
    if nested is not None and name in nested.model_fields:
        return f"move it under '{training}:'"
    close = difflib.get_close_matches(str(name), list(holder.model_fields), n=1, cutoff=0.75)
    if close:
        return f"did you mean '{close[0]}'?"
    close = difflib.get_close_matches(str(name), list(nested.model_fields), n=1, cutoff=0.75) if nested is not None else []
    if close:
        return f"did you mean '{training}.{close[0]}'? (training settings go under '{training}:')"
    return "remove or rename it"


def _raise_first(
    err: ValidationError, path: Path, lines: dict[tuple[Any, ...], int], prefix: tuple[Any, ...] = (), model: type[BaseModel] = BaseModel
) -> None:
    first = err.errors()[0]
    loc = tuple(part for part in first["loc"] if part not in {"function-after"})
    line = None
    for cut in range(len(loc), -1, -1):
        if (*prefix, *loc[:cut]) in lines:
            line = lines[(*prefix, *loc[:cut])]
            break
    field = ".".join(str(p) for p in loc) or "spec"
    message = "unknown field" if first["type"] == "extra_forbidden" else first["msg"].removeprefix("Value error, ")
    hint = unknown_field_hint(model, loc) if first["type"] == "extra_forbidden" else "see docs/spec.md"
    raise SpecError(f"{field}: {message}", file=path, line=line, fix=hint) from None


def _require_train(task: TaskSpec, path: Path, lines: dict[tuple[Any, ...], int], at: tuple[Any, ...]) -> None:
    if task.train is None:
        raise SpecError(f"task '{task.name}' has no 'train' file", file=path, line=lines.get(at), fix="add 'train: path/to/train.csv'")


def load_chain_spec(path: str | Path) -> ChainSpec:
    """Read and validate a chain spec; data paths are made relative to the spec file.

    Example:
        >>> spec = load_chain_spec("examples/demo.yaml")  # doctest: +SKIP
        >>> spec.tasks[0].name  # doctest: +SKIP
        'intent'
    """
    path = Path(path)
    data, lines = _load_yaml(path)
    try:
        spec = ChainSpec.model_validate(data)
    except ValidationError as err:
        _raise_first(err, path, lines, model=ChainSpec)
    for i, task in enumerate(spec.tasks):
        _require_train(task, path, lines, ("tasks", i))
    return spec.model_copy(update={"tasks": [t.resolve_paths(path.parent) for t in spec.tasks]})


def spec_line(path: str | Path, *keys: Any) -> int | None:
    """The line of ``keys`` (e.g. ``"split"``, or ``"tasks", 0, "train"``) in a spec file, if it is set there.

    Example:
        >>> spec_line("chain.yaml", "split")  # doctest: +SKIP
        3
    """
    return _load_yaml(Path(path))[1].get(keys) if keys else None


def load_task_specs(path: str | Path) -> list[TaskSpec]:
    """Read a task file for ``add-task``: one task mapping, or ``tasks: [...]``.

    Example:
        >>> load_task_specs("topic.yaml")[0].type  # doctest: +SKIP
        'classification'
    """
    path = Path(path)
    data, lines = _load_yaml(path)
    items, prefix = (data["tasks"], ("tasks",)) if "tasks" in data else ([data], ())
    if not isinstance(items, list) or not items:
        raise SpecError("tasks must be a non-empty list", file=path, line=lines.get(("tasks",)))
    specs = []
    for i, item in enumerate(items):
        try:
            spec = TaskSpec.model_validate(item)
        except ValidationError as err:
            _raise_first(err, path, lines, (*prefix, i) if prefix else (), TaskSpec)
        _require_train(spec, path, lines, (*prefix, i) if prefix else ())
        specs.append(spec.resolve_paths(path.parent))
    return specs
