"""A saved chain on disk: the typed, versioned manifest and the one place that reads and writes chain folders.

Layout (names declared once, here)::

    finechain.json                      the manifest (:class:`Manifest`)
    trunk.safetensors                   the trunk's layers, when they were tuned (joint sharing)
    tasks/<name>/branch.safetensors     the task's branch tensors (all layers, or only LoRA adapters)
    tasks/<name>/head.safetensors       its head layer (and layer mix)
    backbone/                           the backbone itself, when copied in (``copy_backbone``)

Manifests of earlier formats are upgraded when read; one from a newer finechain is refused with a clear error.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from finechain.branches import BRANCH_MODES, branch_mode
from finechain.errors import ArtifactError, short_reason
from finechain.heads import HEADS, head_type
from finechain.io import read_text_file, write_json
from finechain.model.backbone import BackboneRef, load_tokenizer, locate_backbone
from finechain.model.chain_model import ChainModel
from finechain.model.encoder import keep_layers, load_encoder
from finechain.model.task import TaskModel
from finechain.model.weights import load_tensors, save_tensors
from finechain.spec import FLAT_HEAD_OPTIONS, TASK_NAME
from finechain.version import __version__

MANIFEST = "finechain.json"
TRUNK_FILE = "trunk.safetensors"
TASKS_DIR = "tasks"
BRANCH_FILE = "branch.safetensors"
HEAD_FILE = "head.safetensors"
BACKBONE_DIR = "backbone"
FORMAT_VERSION = 2  # 1: finechain 0.1 (flat head config); 2: typed head entry (labels, options, state)


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BackboneEntry(_Entry):
    """Where the backbone came from and the sha256 of its weights (checked on load)."""

    name: str
    kind: Literal["package", "path", "hub", "copied"]
    location: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")

    def ref(self) -> BackboneRef:
        """As the backbone resolver's :class:`BackboneRef`."""
        return BackboneRef(self.name, self.kind, self.location, self.sha256)


class HeadEntry(_Entry):
    """A task's head: type, labels, options and fitted state (thresholds, target scale)."""

    type: str
    labels: list[str]
    options: dict[str, Any] = Field(default_factory=dict)
    state: dict[str, Any] = Field(default_factory=dict)

    @field_validator("type")
    @classmethod
    def _known(cls, value: str) -> str:
        if value not in HEADS:
            raise ValueError(f"unknown task type '{value}' (this finechain knows {HEADS.names()})")
        return value


class TaskRecord(_Entry):
    """How a task was trained and how it scored: the manifest's account of it beyond its structure."""

    metric: str | None = None
    best_epoch: float | None = None
    training: dict[str, Any] | None = None  # the resolved TrainingConfig
    data: dict[str, Any] | None = None  # provenance: files, validation cut, subsample
    spec: dict[str, Any] | None = None  # the TaskSpec it was trained from (eval reads files with its columns)
    metrics: dict[str, dict[str, float]] | None = None
    train_seconds: float | None = None


class TaskEntry(TaskRecord):
    """One task in the manifest: its structure (head, branch) and its :class:`TaskRecord`."""

    head: HeadEntry
    branch: dict[str, Any] = Field(default_factory=lambda: {"mode": "full"})
    branch_layers: int = Field(ge=0)
    layer_mix: list[float] | None = None  # the learned weight of each mixed layer (when the head mixes layers)
    parameters: int = 0
    trainable_parameters: int = 0
    stored_parameters: int = 0

    def record(self) -> TaskRecord:
        """The training record alone."""
        return TaskRecord.model_validate(self.model_dump(include=set(TaskRecord.model_fields)))


class TrunkEntry(_Entry):
    """How the trunk's layers were tuned (joint multi-task training): the joint settings, best epoch, time."""

    model_config = ConfigDict(extra="allow")

    sharing: Literal["joint"] = "joint"
    best_epoch: float | None = None
    seconds: float | None = None


class Manifest(_Entry):
    """``finechain.json``: everything needed to rebuild a chain around its weight files."""

    format: Literal[2] = FORMAT_VERSION
    finechain_version: str
    backbone: BackboneEntry
    split: int = Field(ge=0)
    num_layers: int = Field(ge=1)
    hidden_size: int = Field(ge=1)
    max_length: int = Field(ge=1)
    trunk: TrunkEntry | None = None
    layers: list[int] | None = None  # the backbone layers kept, in order (a student chain); None: all of them
    compression: dict[str, Any] | None = None  # how a student chain was made from its teacher (layers, distillation)
    tasks: dict[str, TaskEntry] = Field(default_factory=dict)
    flows: list[dict[str, Any]] = Field(default_factory=list)  # the chain's flows (finechain.spec.flows.FlowSpec)

    @field_validator("tasks")
    @classmethod
    def _task_names(cls, tasks: dict[str, TaskEntry]) -> dict[str, TaskEntry]:
        """Task names become folder names: the same rule as in a spec (no path separators, no dots)."""
        bad = [name for name in tasks if not re.match(TASK_NAME, name) or len(name) > 64]
        if bad:
            raise ValueError(f"task name {bad[0]!r} is not a valid task name (letters, digits, _ and -)")
        return tasks


def _upgrade_v1(data: dict[str, Any]) -> dict[str, Any]:
    """A finechain 0.1 manifest as format 2: the head's flat config becomes labels + options + state."""
    tasks = {}
    for name, entry in dict(data.get("tasks") or {}).items():
        entry = dict(entry)
        old = dict(entry.pop("head", {}))
        kind = entry.pop("type", "classification")
        pooling = entry.pop("pooling", "mean")
        entry.pop("files", None)
        allowed = set(HEADS.get(kind).Options.model_fields) if kind in HEADS else set()
        options = {"dropout": old.get("dropout", 0.1), "layer_mix": bool(entry.get("layer_mix")), "pooling": pooling}
        options |= {"decoding": old["decoding"]} if "decoding" in old else {}
        state = {k: old[k] for k in ("thresholds", "mean", "std") if k in old}
        entry["head"] = {
            "type": kind,
            "labels": old.get("labels", []),
            "options": {k: v for k, v in options.items() if k in allowed},
            "state": state,
        }
        if isinstance(entry.get("spec"), dict):  # 0.1 wrote every head and LoRA field, whatever the type and mode: keep their own
            spec = {k: v for k, v in entry["spec"].items() if k not in FLAT_HEAD_OPTIONS or k in allowed}
            branch = spec.get("branch") if isinstance(spec.get("branch"), dict) else {}
            mode = branch.get("mode", "full")
            if mode in BRANCH_MODES:
                spec["branch"] = {k: v for k, v in branch.items() if k in BRANCH_MODES.get(mode).Options.model_fields}
            entry["spec"] = spec
        tasks[name] = entry
    return {**data, "format": 2, "tasks": tasks}


def read_manifest(directory: str | Path) -> Manifest:
    """The manifest of a chain folder, upgraded to the current format and validated; every problem is one line.

    Example:
        >>> read_manifest("demo-chain").tasks["intent"].head.type  # doctest: +SKIP
        'classification'
    """
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"no {MANIFEST} here: not a finechain folder", file=directory, fix="give the --out folder of `finechain train`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        line = getattr(error, "lineno", None)
        raise ArtifactError(
            f"not valid JSON ({type(error).__name__})", file=path, line=line, fix="restore the file, or retrain the chain"
        ) from None
    if not isinstance(data, dict):
        raise ArtifactError("the manifest is not a JSON object", file=path, fix="restore the file, or retrain the chain")
    version = data.get("format")
    if version == 1:
        data = _upgrade_v1(data)
    elif isinstance(version, int) and version > FORMAT_VERSION:
        raise ArtifactError(
            f"manifest format {version} is newer than this finechain reads ({FORMAT_VERSION})",
            file=path,
            fix="upgrade finechain (pip install -U finechain)",
        )
    try:
        return Manifest.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "manifest"
        raise ArtifactError(f"{field}: {first['msg']}", file=path, fix="restore the file, or retrain the chain") from None


def task_entry(task: TaskModel, record: TaskRecord | None = None) -> TaskEntry:
    """The manifest entry of a task tail (and its training record)."""
    return TaskEntry(
        **(record or TaskRecord()).model_dump(),
        head=HeadEntry(type=task.head.type_name, **task.head.config()),
        branch=task.mode.config(),
        branch_layers=len(task.branch.layers),
        layer_mix=task.layer_mix.layer_weights() if task.layer_mix is not None else None,
        **task.parameter_counts(),
    )


def load_task(model: ChainModel, directory: Path, entry: TaskEntry) -> TaskModel:
    """Rebuild a task's tail from its entry and its two weight files in ``directory``."""
    try:
        head = head_type(entry.head.type).from_config(entry.head.model_dump())
        mode = branch_mode(entry.branch)
    except (ValidationError, ValueError) as error:
        raise ArtifactError(
            f"task '{directory.name}': {short_reason(error)}", file=directory.parent.parent / MANIFEST, fix="retrain the task"
        ) from None
    expected = model.num_layers - model.split
    if entry.branch_layers != expected:
        raise ArtifactError(
            f"task '{directory.name}' has {entry.branch_layers} branch layers, but split {model.split} leaves {expected}",
            file=directory.parent.parent / MANIFEST,
            fix="retrain the task",
        )
    task = TaskModel(head, model.fresh_branch(), model.encoder_config, mode, model.num_layers + 1)
    try:
        if len(task.branch.layers):
            task.mode.load_state(task.branch.layers, load_tensors(directory / BRANCH_FILE))
        task.load_head_state(load_tensors(directory / HEAD_FILE))
    except (ValueError, RuntimeError) as error:  # tensors of other names or shapes than this task's structure
        raise ArtifactError(
            f"weights do not fit task '{directory.name}' ({short_reason(error)})", file=directory, fix="retrain the task"
        ) from None
    return task.eval()


def load_chain(directory: str | Path, backbone_path: str | Path | None = None) -> tuple[ChainModel, Manifest]:
    """The model saved in ``directory`` (on CPU) and its manifest. The backbone is found from the manifest (or
    ``backbone_path``) and its sha256 checked.

    Example:
        >>> model, manifest = load_chain("demo-chain")  # doctest: +SKIP
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    ref = manifest.backbone.ref()
    path = locate_backbone(ref, directory, backbone_path)
    encoder = load_encoder(path)
    if manifest.layers is not None:
        if max(manifest.layers, default=0) >= len(encoder.encoder.layer) or len(manifest.layers) != manifest.num_layers:
            raise ArtifactError(
                f"layers {manifest.layers} do not fit this backbone's {len(encoder.encoder.layer)} layers",
                file=directory / MANIFEST,
                fix="restore the file, or compress the teacher again",
            )
        keep_layers(encoder, manifest.layers)
    model = ChainModel(encoder, load_tokenizer(path), ref, path, manifest.split, manifest.max_length, manifest.layers)
    model.compression = manifest.compression
    if manifest.trunk is not None:
        state = load_tensors(directory / TRUNK_FILE)
        try:
            model.trunk.stack.layers.load_state_dict(state)
        except RuntimeError as error:
            raise ArtifactError(
                f"the tuned trunk does not fit this backbone ({short_reason(error, 120)})",
                file=directory / TRUNK_FILE,
                fix="retrain the chain",
            ) from None
        model.trunk_tuned = True
    for name, entry in manifest.tasks.items():
        model.attach(name, load_task(model, directory / TASKS_DIR / name, entry))
    return model, manifest


def save_chain(
    model: ChainModel,
    directory: str | Path,
    *,
    records: dict[str, TaskRecord] | None = None,
    trunk: TrunkEntry | None = None,
    copy_backbone: bool = False,
    tasks: list[str] | None = None,
    flows: list[dict[str, Any]] | None = None,
) -> Manifest:
    """Write ``model`` into ``directory``: each task's weights (only ``tasks`` when given), the tuned trunk when there
        is one, then the manifest (last, so a folder with a manifest is complete). The backbone is referenced by source and
        sha256, and copied in with ``copy_backbone`` (a backbone copied into another chain folder is always copied along, so
    the new folder stands alone). Returns the manifest written.

        Example:
            >>> save_chain(model, "my-chain", records=records)  # doctest: +SKIP
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if model.trunk_tuned and (tasks is None or not (directory / TRUNK_FILE).exists()):
        save_tensors(directory / TRUNK_FILE, model.trunk.stack.layers.state_dict())
    for name in tasks if tasks is not None else list(model.tasks):
        task = model.tasks[name]
        save_tensors(directory / TASKS_DIR / name / BRANCH_FILE, task.branch_state())
        save_tensors(directory / TASKS_DIR / name / HEAD_FILE, task.head_state())
    target = directory / BACKBONE_DIR
    copied_elsewhere = model.backbone.kind == "copied" and model.backbone_path.resolve() != target.resolve()
    if (copy_backbone and model.backbone.kind != "copied") or copied_elsewhere:  # a copied backbone travels with the chain
        staging = directory / f".{BACKBONE_DIR}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            shutil.copytree(model.backbone_path, staging, ignore=shutil.ignore_patterns("*.bin", "*.h5", "*.onnx", "*.msgpack", ".git*"))
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
        finally:  # also on Ctrl-C: no half-copied folder left
            shutil.rmtree(staging, ignore_errors=True)
        model.backbone = BackboneRef(model.backbone.name, "copied", BACKBONE_DIR, model.backbone.sha256)
        model.backbone_path = target
    records = records or {}
    manifest = Manifest(
        finechain_version=__version__,
        backbone=BackboneEntry(**model.backbone.to_json()),
        split=model.split,
        num_layers=model.num_layers,
        hidden_size=model.encoder_config.hidden_size,
        max_length=model.max_length,
        trunk=trunk if model.trunk_tuned else None,
        layers=model.layer_ids if model.layer_ids != list(range(model.num_layers)) else None,
        compression=model.compression,
        tasks={name: task_entry(task, records.get(name)) for name, task in model.tasks.items()},
        flows=flows or [],
    )
    write_json(directory / MANIFEST, manifest.model_dump(mode="json"))
    return manifest


VERSIONS_DIR = "versions"


def task_versions(directory: str | Path, name: str) -> list[int]:
    """The kept earlier versions of task ``name`` in a chain folder, oldest first (see :func:`keep_task_version`).

    Example:
        >>> task_versions("my-chain", "intent")  # doctest: +SKIP
        [1, 2]
    """
    folder = Path(directory) / VERSIONS_DIR / name
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and (p / "entry.json").is_file()) if folder.is_dir() else []


def keep_task_version(directory: str | Path, name: str) -> int:
    """Copy task ``name`` as it is saved now (its weight files and manifest entry) to ``versions/<name>/<n>/``, the
    next number; returns it. The copy is written in a temporary folder and renamed, so a version is whole or absent.

    Example:
        >>> keep_task_version("my-chain", "intent")  # doctest: +SKIP
        1
    """
    directory = Path(directory)
    entry = read_manifest(directory).tasks.get(name)
    if entry is None:
        raise ArtifactError(f"task '{name}' is not in this chain", file=directory / MANIFEST, fix="check the task name")
    number = max(task_versions(directory, name), default=0) + 1
    target = directory / VERSIONS_DIR / name / str(number)
    staging = target.with_name(f".{number}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        shutil.copytree(directory / TASKS_DIR / name, staging)
        write_json(staging / "entry.json", entry.model_dump(mode="json"))
        staging.rename(target)
    finally:  # also on Ctrl-C: no half-copied version left
        shutil.rmtree(staging, ignore_errors=True)
    return number


def load_task_version(model: ChainModel, directory: str | Path, name: str, version: int) -> tuple[TaskModel, TaskRecord]:
    """A kept version of task ``name``: its tail (for ``model``) and its training record.

    Example:
        >>> task, record = load_task_version(model, "my-chain", "intent", 1)  # doctest: +SKIP
    """
    folder = Path(directory) / VERSIONS_DIR / name / str(version)
    if not (folder / "entry.json").is_file():
        kept = task_versions(directory, name)
        raise ArtifactError(
            f"task '{name}' has no kept version {version}", file=folder, fix=f"choose one of {kept}" if kept else "nothing to restore"
        )
    try:
        entry = TaskEntry.model_validate(json.loads(read_text_file(folder / "entry.json")))
    except (ValidationError, ValueError) as error:
        raise ArtifactError(f"version {version} of task '{name}': {short_reason(error)}", file=folder / "entry.json") from None
    return load_task(model, folder, entry), entry.record()
