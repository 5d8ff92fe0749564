"""A student chain: fewer trunk and branch layers than its teacher, each initialised from one of the teacher's own
layers (layer dropping), ready to be trained on the teacher's outputs (``finechain.train.distill``)."""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch

from finechain.branches import branch_mode
from finechain.errors import FinechainError
from finechain.model.chain_model import ChainModel
from finechain.model.encoder import keep_layers, load_encoder
from finechain.model.task import TaskModel


def spread(available: int, keep: int) -> list[int]:
    """``keep`` of ``available`` layer positions, evenly spaced, always with the top one (the layer the next stage
    reads), as DistilBERT-style students take every other layer.

    Example:
        >>> spread(4, 3), spread(2, 1), spread(6, 3), spread(4, 4), spread(3, 0)
        ([0, 2, 3], [1], [1, 3, 5], [0, 1, 2, 3], [])
    """
    if keep <= 0:
        return []
    step = available / keep
    return [min(available - 1, round(available - 1 - (keep - 1 - i) * step)) for i in range(keep)]


def student_of(
    teacher: ChainModel, trunk_layers: int, branch_layers: int, task_branch_layers: Mapping[str, int] | None = None
) -> ChainModel:
    """A student of ``teacher`` with ``trunk_layers`` trunk layers and ``branch_layers`` layers per task branch (or,
    for the tasks named in ``task_branch_layers``, their own number: a task that needs a layer of its own keeps it,
    an easy one reads the student trunk directly), each copied from the teacher's layer at the same relative depth
    (:func:`spread`); heads are copied, LoRA branches merged. The student's trunk is its own (saved with it), so it
    counts as tuned; ``compression`` records the layers kept.

    Example:
        >>> student = student_of(teacher, trunk_layers=3, branch_layers=1)  # doctest: +SKIP
        >>> student.layer_ids  # doctest: +SKIP
        [0, 2, 3, 5]
        >>> student = student_of(teacher, 3, 0, task_branch_layers={"intent": 1})  # doctest: +SKIP
    """
    branch_depth = teacher.num_layers - teacher.split
    if teacher.split == 0 and trunk_layers != 0:
        raise FinechainError(
            f"the teacher has no trunk layers to keep {trunk_layers} of (split 0: every layer belongs to its tasks)",
            field="trunk_layers",
            fix="leave the trunk out and give the student fewer branch layers (--branch-layers N)",
        )
    if teacher.split and not 1 <= trunk_layers <= teacher.split:
        raise FinechainError(
            f"a student trunk of {trunk_layers} layers does not fit the teacher's trunk of {teacher.split}",
            field="trunk_layers",
            fix=f"choose 1..{teacher.split}",
        )
    depths = branch_plan(teacher, branch_layers, task_branch_layers or {})
    trunk_kept = spread(teacher.split, trunk_layers)
    kept = {name: spread(branch_depth, depth) for name, depth in depths.items()}
    branch_kept = spread(branch_depth, max(depths.values(), default=branch_layers))  # the student's own upper layers
    layer_ids = [teacher.layer_ids[i] for i in trunk_kept] + [teacher.layer_ids[teacher.split + j] for j in branch_kept]
    encoder = load_encoder(teacher.backbone_path)
    keep_layers(encoder, layer_ids)
    student = ChainModel(encoder, teacher.tokenizer, teacher.backbone, teacher.backbone_path, trunk_layers, teacher.max_length, layer_ids)
    for mine, theirs in zip(student.trunk.stack.layers, (teacher.trunk.stack.layers[i] for i in trunk_kept), strict=True):
        mine.load_state_dict(theirs.state_dict())
    student.trunk_tuned = True
    student.compression = {
        "method": "layer dropping + distillation",
        "teacher": {"split": teacher.split, "layers": teacher.layer_ids},
        "trunk_layers_kept": trunk_kept,
        "branch_layers_kept": kept,
    }
    for name, task in teacher.tasks.items():
        tail = copy.deepcopy(task)
        tail.merge_adapters()
        layers = [tail.branch.layers[j] for j in kept[name]]
        mixed_states = [0, *(i + 1 for i in trunk_kept), *(teacher.split + j + 1 for j in kept[name])]  # embeddings, then layers
        new = TaskModel(copy.deepcopy(task.head), layers, student.encoder_config, branch_mode(None), len(mixed_states))
        new.head_layer.load_state_dict(tail.head_layer.state_dict())
        if new.layer_mix is not None and tail.layer_mix is not None:
            with torch.no_grad():
                new.layer_mix.weights.copy_(tail.layer_mix.weights[mixed_states])
                new.layer_mix.gamma.copy_(tail.layer_mix.gamma)
        student.attach(name, new.to(teacher.device))
    return student.to(teacher.device)


def branch_plan(teacher: ChainModel, branch_layers: int, task_branch_layers: Mapping[str, int]) -> dict[str, int]:
    """Each of ``teacher``'s tasks' student branch depth: its entry in ``task_branch_layers``, else ``branch_layers``;
    every one within the teacher's branches.

    Example:
        >>> branch_plan(teacher, 0, {"intent": 1})  # doctest: +SKIP
        {'intent': 1, 'sentiment': 0}
    """
    branch_depth = teacher.num_layers - teacher.split
    unknown = sorted(set(task_branch_layers) - set(teacher.tasks))
    if unknown:
        raise FinechainError(
            f"no task '{unknown[0]}' in the teacher to give branch layers to",
            field="branch_layers",
            fix=f"name one of its tasks: {', '.join(teacher.tasks)}",
        )
    depths = {name: task_branch_layers.get(name, branch_layers) for name in teacher.tasks}
    for name, depth in depths.items():
        if not 0 <= depth <= branch_depth:
            raise FinechainError(
                f"a student branch of {depth} layers{'' if name not in task_branch_layers else f' for {name!r}'} "
                f"does not fit the teacher's branches of {branch_depth}",
                field="branch_layers",
                fix=f"choose 0..{branch_depth}",
            )
    return depths
