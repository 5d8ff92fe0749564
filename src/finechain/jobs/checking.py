"""Check a spec the way training does, without training: the spec, every data file, the backbone, the split, the
device. No PyTorch is imported before the data has passed (a bad file is reported in a moment)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finechain.data.check import DataCheck, check_data
from finechain.data.prepare import TaskData, load_task_data
from finechain.errors import FinechainError
from finechain.heads import head_type
from finechain.model.backbone import check_max_length, inspect_backbone, load_tokenizer, resolve_backbone
from finechain.spec import ChainSpec, TaskSpec, TrainingConfig, default_split, load_chain_spec, spec_line


def load_all(specs: list[TaskSpec], training: TrainingConfig) -> dict[str, TaskData]:
    """Read and check every task's data before any training starts."""
    return {s.name: load_task_data(s, head_type(s.type), s.training.apply(training).seed) for s in specs}


@dataclass
class Checked:
    """A spec with every check that training runs before its first step done: the spec, each task's data (read,
    checked, split), the backbone's folder and tokenizer (config and weights header checked), the trunk depth."""

    spec: ChainSpec
    data: dict[str, TaskData]
    backbone: Path
    tokenizer: Any
    split: int


def check_spec(spec_path: Path) -> Checked:
    """Everything ``train`` checks before training, without training: the spec, every data file, the backbone (found,
    config and weights readable, tokenizer, ``max_length`` within its positions), ``split`` within its layers, the
    device. A problem is a one-line error at the spec line that caused it.

    Example:
        >>> checked = check_spec(Path("chain.yaml"))  # doctest: +SKIP
        >>> checked.split  # doctest: +SKIP
        4
    """
    spec = load_chain_spec(spec_path)
    data = load_all(spec.tasks, spec.training)
    try:
        path, _ = resolve_backbone(spec.backbone, spec_path.parent)
        config = inspect_backbone(path)
        tokenizer = load_tokenizer(path)
        check_max_length(spec.max_length, config, tokenizer)
        layers = int(config.num_hidden_layers)
        split = default_split(layers, spec.sharing_mode) if spec.split == "auto" else spec.split
        if not 0 <= split <= layers:
            raise FinechainError(f"split {split} is outside 0..{layers} for this backbone", fix=f"choose 0..{layers}", field="split")
        if spec.device not in ("auto", "cpu"):  # whether CUDA is there takes PyTorch to tell
            from finechain.model.chain_model import pick_device

            pick_device(spec.device)
    except FinechainError as error:  # a bad backbone, split or device: point at the spec line that set it
        if error.file is None and error.field is not None:
            raise error.at(spec_path, spec_line(spec_path, error.field)) from None
        raise
    return Checked(spec, data, path, tokenizer, split)


def check_chain(spec_path: Path) -> list[DataCheck]:
    """Validate a chain spec, every data file and the backbone exactly as ``train`` does (:func:`check_spec`), then
    look at the data (no training).

    Example:
        >>> [report.warnings for report in check_chain(Path("chain.yaml"))]  # doctest: +SKIP
        [[], ["only 40 validation examples: ..."]]
    """
    checked = check_spec(spec_path)
    spec = checked.spec
    return [check_data(checked.data[task.name], head_type(task.type), checked.tokenizer, spec.max_length, task.name) for task in spec.tasks]
