"""A saved chain's manifest: the folder layout, the typed, versioned ``finechain.json`` and its reader. Nothing here
imports PyTorch, so a command checks a chain folder's manifest (and the task names asked for) before it loads any model.

Layout (names declared once, here)::

    finechain.json                      the manifest (:class:`Manifest`)
    trunk.safetensors                   the trunk's layers, when they were tuned (joint sharing)
    trunk.<n>.safetensors               the same, written over a saved chain's tuned trunk (the trunk entry's ``file``)
    tasks/<name>/branch.safetensors     the task's branch tensors (all layers, or only LoRA adapters)
    tasks/<name>/head.safetensors       its head layer (and layer mix)
    tasks/<name>.<n>/                   the same, for a task replaced in a saved chain (its entry's ``folder``)
    backbone/                           the backbone itself, when copied in (``copy_backbone``)
    versions/<name>/<n>/                an earlier version of a task (its two files and entry.json), kept by an update

Manifests of earlier formats are upgraded when read; one from a newer finechain is refused with a clear error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from finechain.branches import BRANCH_MODES
from finechain.errors import ArtifactError, FinechainError
from finechain.heads import HEADS
from finechain.model.backbone import BackboneRef
from finechain.spec import FLAT_HEAD_OPTIONS, TASK_NAME

MANIFEST = "finechain.json"
TRUNK_FILE = "trunk.safetensors"
TRUNK_COPY = ("trunk", ".safetensors")  # stem and suffix of a trunk written over a saved one: trunk.<n>.safetensors
TASKS_DIR = "tasks"
BRANCH_FILE = "branch.safetensors"
HEAD_FILE = "head.safetensors"
BACKBONE_DIR = "backbone"
VERSIONS_DIR = "versions"  # versions/<name>/<n>/: earlier versions of a task kept by finechain update
# 1: finechain 0.1 (flat head config); 2: typed head entry (labels, options, state); 3: a task's files may be in a
# folder of their own (TaskEntry.folder), the trunk in a file of its own (TrunkEntry.file), written only where a task or
# the tuned trunk was replaced in a saved chain (else format 2)
FORMAT_VERSION = 3


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
    # a student's branch narrower than its trunk layers: its feed-forward neurons / attention heads per layer (None: the
    # trunk's, as the manifest's ffn_width and attention_heads say)
    ffn_width: int | None = Field(None, ge=1)
    attention_heads: int | None = Field(None, ge=1)
    layer_mix: list[float] | None = None  # the learned weight of each mixed layer (when the head mixes layers)
    parameters: int = 0
    trainable_parameters: int = 0
    stored_parameters: int = 0
    # its files' folder under tasks/ when that is not tasks/<name>/: <name>.<n>, a task replaced in a saved chain (the
    # new files are written whole in a new folder, then the manifest names it: a crash leaves the old task or the new)
    folder: str | None = None

    def record(self) -> TaskRecord:
        """The training record alone."""
        return TaskRecord.model_validate(self.model_dump(include=set(TaskRecord.model_fields)))


class TrunkEntry(_Entry):
    """How the trunk's layers were tuned (joint multi-task training): the joint settings, best epoch, time."""

    model_config = ConfigDict(extra="allow")

    sharing: Literal["joint"] = "joint"
    best_epoch: float | None = None
    seconds: float | None = None
    # its weights' file when that is not trunk.safetensors: trunk.<n>.safetensors, a trunk written over a saved chain's
    # (complete before the manifest names it, as a replaced task's folder)
    file: str | None = None

    @field_validator("file")
    @classmethod
    def _trunk_copy(cls, file: str | None) -> str | None:
        """Only a replaced trunk's own name (no paths out of the folder)."""
        if file is not None and not copy_names(*TRUNK_COPY).fullmatch(file):
            raise ValueError(f"the trunk's file {file!r} is not trunk.<number>.safetensors")
        return file


UNITS = (("ffn_width", "feed-forward neurons"), ("attention_heads", "attention heads"))  # a narrowed layer's parts, in words


def narrowing(ffn_width: int | None, attention_heads: int | None) -> str:
    """How a student's layers were narrowed, as words to follow its layers (empty when they were not).

    Example:
        >>> narrowing(1344, 10), narrowing(1344, None), narrowing(None, None)
        (', 1344 feed-forward neurons and 10 attention heads per layer', ', 1344 feed-forward neurons per layer', '')
    """
    parts = [f"{n} {unit}" for n, (_, unit) in zip((ffn_width, attention_heads), UNITS, strict=True) if n]
    return f", {' and '.join(parts)} per layer" if parts else ""


def branch_narrowing(branches: Mapping[str, Mapping[str, int | None]]) -> str:
    """The task branches a student narrowed further than its trunk, as words to follow its layers (empty if none).

    Example:
        >>> branch_narrowing({"intent": {"ffn_width": 768, "attention_heads": None}, "slots": {"attention_heads": 8}})
        '; branches narrower: intent 768 feed-forward neurons, slots 8 attention heads'
    """
    parts = [f"{name} " + " and ".join(f"{n} {unit}" for key, unit in UNITS if (n := shape.get(key))) for name, shape in branches.items()]
    return f"; branches narrower: {', '.join(parts)}" if parts else ""


class Manifest(_Entry):
    """``finechain.json``: everything needed to rebuild a chain around its weight files."""

    format: Literal[2, 3] = 2  # 3 only where a task's entry has a folder or the trunk's a file (see FORMAT_VERSION)
    finechain_version: str
    backbone: BackboneEntry
    split: int = Field(ge=0)
    num_layers: int = Field(ge=1)
    hidden_size: int = Field(ge=1)
    max_length: int = Field(ge=1)
    trunk: TrunkEntry | None = None
    layers: list[int] | None = None  # the backbone layers kept, in order (a student chain); None: all of them
    compression: dict[str, Any] | None = None  # how a student chain was made from its teacher (layers, distillation)
    ffn_width: int | None = Field(None, ge=1)  # a narrowed student's feed-forward neurons per layer; None: the backbone's
    attention_heads: int | None = Field(None, ge=1)  # a pruned student's attention heads per layer; None: the backbone's
    tasks: dict[str, TaskEntry] = Field(default_factory=dict)
    flows: list[dict[str, Any]] = Field(default_factory=list)  # the chain's flows (finechain.spec.flows.FlowSpec)

    @field_validator("tasks")
    @classmethod
    def _task_names(cls, tasks: dict[str, TaskEntry]) -> dict[str, TaskEntry]:
        """Task names become folder names: the same rule as in a spec (no path separators, no dots)."""
        bad = [name for name in tasks if not re.match(TASK_NAME, name) or len(name) > 64]
        if bad:
            raise ValueError(f"task name {bad[0]!r} is not a valid task name (letters, digits, _ and -)")
        strays = [(name, e.folder) for name, e in tasks.items() if e.folder is not None and not copy_names(name).fullmatch(e.folder)]
        if strays:
            name, folder = strays[0]
            raise ValueError(f"task {name!r} names the folder {folder!r}, which is not {name}.<number>")
        return tasks


def copy_names(stem: str, suffix: str = "") -> re.Pattern[str]:
    """The names of what is written over a saved chain's ``<stem><suffix>`` (a replaced task's folder, a replaced
    trunk's file): ``<stem>.<n><suffix>``, the number its group (task names have no dots, so no other task's match).

    Example:
        >>> copy_names("trunk", ".safetensors").fullmatch("trunk.2.safetensors").group(1)
        '2'
    """
    return re.compile(rf"{re.escape(stem)}\.(\d+){re.escape(suffix)}")


def free_copy_name(base: str | Path, stem: str, suffix: str = "") -> str:
    """The first of :func:`copy_names` not in use in ``base``: where a new copy of ``<stem><suffix>`` is written.

    Example:
        >>> free_copy_name("my-chain/tasks", "intent")  # doctest: +SKIP
        'intent.1'
    """
    number = 1
    while (Path(base) / f"{stem}.{number}{suffix}").exists():
        number += 1
    return f"{stem}.{number}{suffix}"


def trunk_file(directory: str | Path, entry: TrunkEntry) -> Path:
    """Where a chain folder's tuned trunk weights are: ``trunk.safetensors``, or the file its manifest ``entry`` names.

    Example:
        >>> trunk_file("my-chain", TrunkEntry()).as_posix()
        'my-chain/trunk.safetensors'
    """
    return Path(directory) / (entry.file or TRUNK_FILE)


def task_folder(directory: str | Path, name: str, entry: TaskEntry | None = None) -> Path:
    """Where task ``name``'s weight files are in the chain folder ``directory``: ``tasks/<name>/``, or the folder its
    manifest ``entry`` names (a task replaced in a saved chain).

    Example:
        >>> task_folder("my-chain", "intent").as_posix()
        'my-chain/tasks/intent'
    """
    return Path(directory) / TASKS_DIR / (entry.folder if entry is not None and entry.folder else name)


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


def require_task(directory: str | Path, name: str) -> Manifest:
    """The manifest of the chain folder ``directory``, which must have task ``name``: else a one-line error listing the
    tasks it has, before any model is loaded.

    Example:
        >>> require_task("demo-chain", "topic")  # doctest: +SKIP
        FinechainError: demo-chain: task 'topic' is not in this chain (fix: choose one of ['intent', 'sentiment', 'entities'])
    """
    manifest = read_manifest(directory)
    if name not in manifest.tasks:
        raise FinechainError(f"task '{name}' is not in this chain", file=Path(directory), fix=f"choose one of {list(manifest.tasks)}")
    return manifest


def task_versions(directory: str | Path, name: str) -> list[int]:
    """The kept earlier versions of task ``name`` in a chain folder, oldest first (written by
    :func:`finechain.model.artifact.keep_task_version`).

    Example:
        >>> task_versions("my-chain", "intent")  # doctest: +SKIP
        [1, 2]
    """
    folder = Path(directory) / VERSIONS_DIR / name
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and (p / "entry.json").is_file()) if folder.is_dir() else []
