"""A saved chain on disk: the one place that reads and writes chain folders; their layout and manifest are declared in
:mod:`finechain.model.manifest`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from finechain.branches import branch_mode
from finechain.errors import ArtifactError, short_reason
from finechain.heads import head_type
from finechain.io import read_text_file, write_json
from finechain.model.backbone import BackboneRef, load_tokenizer, locate_backbone
from finechain.model.chain_model import ChainModel
from finechain.model.encoder import keep_layers, load_encoder, narrow, narrow_encoder
from finechain.model.manifest import (
    BACKBONE_DIR,
    BRANCH_FILE,
    HEAD_FILE,
    MANIFEST,
    TASKS_DIR,
    TRUNK_COPY,
    TRUNK_FILE,
    VERSIONS_DIR,
    BackboneEntry,
    HeadEntry,
    Manifest,
    TaskEntry,
    TaskRecord,
    TrunkEntry,
    copy_names,
    free_copy_name,
    read_manifest,
    task_folder,
    task_versions,
    trunk_file,
)
from finechain.model.task import TaskModel
from finechain.model.weights import load_tensors, save_tensors
from finechain.version import __version__


def task_entry(
    task: TaskModel, record: TaskRecord | None = None, folder: str | None = None, narrower: dict[str, int | None] | None = None
) -> TaskEntry:
    """The manifest entry of a task tail (and its training record), its files in ``folder`` (None: ``tasks/<name>``);
    ``narrower``: its branch's feed-forward neurons and attention heads where narrower than the chain's layers."""
    return TaskEntry(
        **(narrower or {}),
        folder=folder,
        **(record or TaskRecord()).model_dump(),
        head=HeadEntry(type=task.head.type_name, **task.head.config()),
        branch=task.mode.config(),
        branch_layers=len(task.branch.layers),
        layer_mix=task.layer_mix.layer_weights() if task.layer_mix is not None else None,
        **task.parameter_counts(),
    )


def load_task(model: ChainModel, directory: Path, entry: TaskEntry, name: str) -> TaskModel:
    """Rebuild task ``name``'s tail from its entry and its two weight files in ``directory``."""
    try:
        head = head_type(entry.head.type).from_config(entry.head.model_dump())
        mode = branch_mode(entry.branch)
    except (ValidationError, ValueError) as error:
        manifest = directory.parent.parent / MANIFEST
        raise ArtifactError(f"task '{name}': {short_reason(error)}", file=manifest, fix="retrain the task") from None
    available = model.num_layers - model.split  # a student's task may keep fewer (model.student)
    if entry.branch_layers > available:
        raise ArtifactError(
            f"task '{name}' has {entry.branch_layers} branch layers, but split {model.split} leaves {available}",
            file=directory.parent.parent / MANIFEST,
            fix="retrain the task",
        )
    layers = model.fresh_branch(entry.branch_layers)
    try:
        for layer in layers:  # a student's branch narrower than its trunk
            narrow(layer, entry.ffn_width, entry.attention_heads)
    except ValueError as error:
        raise ArtifactError(f"task '{name}': {error}", file=directory.parent.parent / MANIFEST, fix="compress the teacher again") from None
    task = TaskModel(head, layers, model.encoder_config, mode, model.split + entry.branch_layers + 1)
    try:
        # saving always writes the branch file (empty for 0 layers), and it is checked whenever it is there; only a
        # 0-layer branch may do without it, having no tensors to load
        if len(task.branch.layers) or (directory / BRANCH_FILE).exists():
            task.mode.load_state(task.branch.layers, load_tensors(directory / BRANCH_FILE))
        task.load_head_state(load_tensors(directory / HEAD_FILE))
    except (ValueError, RuntimeError) as error:  # tensors of other names or shapes than this task's structure
        raise ArtifactError(f"weights do not fit task '{name}' ({short_reason(error)})", file=directory, fix="retrain the task") from None
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
    try:  # a narrowed or pruned student's layers (nothing to do for others)
        narrow_encoder(encoder, manifest.ffn_width, manifest.attention_heads)
    except ValueError as error:
        raise ArtifactError(str(error), file=directory / MANIFEST, fix="restore the file, or compress the teacher again") from None
    model = ChainModel(encoder, load_tokenizer(path), ref, path, manifest.split, manifest.max_length, manifest.layers)
    model.compression, model.ffn_width, model.attention_heads = manifest.compression, manifest.ffn_width, manifest.attention_heads
    if manifest.trunk is not None:
        state = load_tensors(trunk_file(directory, manifest.trunk))
        try:
            model.trunk.stack.layers.load_state_dict(state)
        except RuntimeError as error:
            raise ArtifactError(
                f"the tuned trunk does not fit this backbone ({short_reason(error, 120)})",
                file=trunk_file(directory, manifest.trunk),
                fix="retrain the chain",
            ) from None
        model.trunk_tuned = True
    for name, entry in manifest.tasks.items():
        model.attach(name, load_task(model, task_folder(directory, name, entry), entry, name))
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
    is one, then the manifest (last, so a folder with a manifest is complete). A task the folder already holds is
    written into a new folder (``tasks/<name>.<n>/``) that only the new manifest names, its old folder removed after:
    replacing a task (``update``, ``restore``, ``add-task --replace``) swaps it whole, never half old and half new. The
    backbone is referenced by source and sha256, and copied in with ``copy_backbone`` (a backbone copied into another
    chain folder is always copied along, so the new folder stands alone). The manifest lists the tasks of ``model``:
    once it is written, the files and kept versions of any other task in the folder (one deleted from the chain, or
    of another chain saved there before) are removed, so the folder holds this chain alone. Returns the manifest.

        Example:
            >>> save_chain(model, "my-chain", records=records)  # doctest: +SKIP
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    previous = _saved_manifest(directory)
    saved = dict(previous.tasks) if previous is not None else {}
    old_trunk = previous.trunk if previous is not None else None  # the tuned trunk the folder's chain runs on now
    trunk_name = old_trunk.file if old_trunk is not None else None
    if model.trunk_tuned and (tasks is None or old_trunk is None or not trunk_file(directory, old_trunk).exists()):
        # written over a saved chain's trunk: into a file of its own, which only the new manifest names (as a task)
        trunk_name = free_copy_name(directory, *TRUNK_COPY) if old_trunk is not None else None
        save_tensors(directory / (trunk_name or TRUNK_FILE), model.trunk.stack.layers.state_dict())
    writing = tasks if tasks is not None else list(model.tasks)
    folders = {name: entry.folder for name, entry in saved.items()}  # the tasks not written now stay where they are
    for name in writing:
        # a task the folder's manifest has is written whole into a new folder, which the manifest names only once it
        # is complete: until then the manifest and the old files are untouched (a crash leaves the old task whole)
        folders[name] = free_copy_name(directory / TASKS_DIR, name) if name in saved else None
        task, target = model.tasks[name], directory / TASKS_DIR / (folders[name] or name)
        save_tensors(target / BRANCH_FILE, task.branch_state())
        save_tensors(target / HEAD_FILE, task.head_state())
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
        trunk=(trunk or TrunkEntry()).model_copy(update={"file": trunk_name}) if model.trunk_tuned else None,
        layers=model.layer_ids if model.layer_ids != list(range(model.num_layers)) else None,
        compression=model.compression,
        ffn_width=model.ffn_width,
        attention_heads=model.attention_heads,
        tasks={
            name: task_entry(task, records.get(name), folders.get(name), model.narrower_branch(task)) for name, task in model.tasks.items()
        },
        flows=flows or [],
    )
    if trunk_name or any(entry.folder for entry in manifest.tasks.values()):
        manifest.format = 3
    written = manifest.model_dump(mode="json")
    for entry in [*written["tasks"].values(), *([written["trunk"]] if written["trunk"] else [])]:
        for key in ("folder", "file"):  # files where format 2 has them say nothing (format 2 has no such fields)
            if key in entry and entry[key] is None:
                del entry[key]
    write_json(directory / MANIFEST, written)
    _remove_unnamed_tasks(directory, manifest)  # replaced tasks' old files, a crash's leftovers, removed tasks
    if model.trunk_tuned:  # the replaced trunk's file, and any a crash left behind
        _remove_other_trunks(directory, keep=trunk_name or TRUNK_FILE)
    return manifest


def _saved_manifest(directory: Path) -> Manifest | None:
    """The manifest of the chain a folder holds now (None where there is none, or one that cannot be read: then nothing
    there can be loaded, and writing over its files loses nothing)."""
    try:
        return read_manifest(directory) if (directory / MANIFEST).is_file() else None
    except ArtifactError:
        return None


def _remove_unnamed_tasks(directory: Path, manifest: Manifest) -> None:
    """Remove what ``tasks/`` holds besides the folders ``manifest`` names (a replaced task's old folder, what a crash
    left, a task the chain no longer has), and the kept versions of tasks it does not list."""
    named = {task_folder(directory, name, entry).name for name, entry in manifest.tasks.items()}
    for path in (directory / TASKS_DIR).glob("*"):
        if path.name not in named:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    for path in (directory / VERSIONS_DIR).glob("*"):
        if path.name not in manifest.tasks:
            shutil.rmtree(path, ignore_errors=True)


def _remove_other_trunks(directory: Path, keep: str) -> None:
    """Remove the tuned-trunk files besides ``keep``: ``trunk.safetensors`` and ``trunk.<n>.safetensors``
    (:func:`copy_names`): a replaced trunk's file, or one a crash left behind."""
    copies = copy_names(*TRUNK_COPY)
    for path in directory.glob("trunk*.safetensors"):
        if path.name != keep and (path.name == TRUNK_FILE or copies.fullmatch(path.name)):
            path.unlink(missing_ok=True)


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
        shutil.copytree(task_folder(directory, name, entry), staging)
        write_json(staging / "entry.json", entry.model_dump(mode="json", exclude={"folder"}))
        staging.rename(target)
    finally:  # also on Ctrl-C: no half-copied version left
        shutil.rmtree(staging, ignore_errors=True)
    return number


def remove_task_version(directory: str | Path, name: str, version: int) -> None:
    """Remove kept version ``version`` of task ``name`` (a copy made for a restore that did not finish).

    Example:
        >>> remove_task_version("my-chain", "intent", 2)  # doctest: +SKIP
    """
    shutil.rmtree(Path(directory) / VERSIONS_DIR / name / str(version), ignore_errors=True)


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
    return load_task(model, folder, entry, name), entry.record()
