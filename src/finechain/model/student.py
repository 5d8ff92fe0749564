"""A student chain: fewer trunk and branch layers than its teacher, each initialised from one of the teacher's own
layers (layer dropping) and optionally narrowed to its most active feed-forward neurons (structured pruning), ready
to be trained on the teacher's outputs (``finechain.train.distill``)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import torch
from torch import nn

from finechain.branches import branch_mode
from finechain.data.batching import pad_ids
from finechain.errors import FinechainError
from finechain.model.chain_model import ChainModel
from finechain.model.encoder import attention_heads, feed_forward, keep_layers, layer_shape, load_encoder, narrow, narrow_encoder
from finechain.model.manifest import UNITS
from finechain.model.task import TaskModel


class LayerActivity(NamedTuple):
    """How much a teacher layer's parts are used over some texts, per real token: each feed-forward neuron's mean
    absolute activation (``neurons``) and the mean size of what each attention head adds to the layer's output
    (``heads``)."""

    neurons: torch.Tensor
    heads: torch.Tensor


Activity = Mapping[nn.Module, LayerActivity]  # a teacher layer -> how much its neurons and heads are used


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


def ffn_neurons(teacher: ChainModel, share: float) -> int:
    """How many feed-forward neurons a student layer keeps for ``share`` (0 < share <= 1) of the teacher's.

    Example:
        >>> ffn_neurons(teacher, 0.75)  # doctest: +SKIP
        1152
    """
    check_ffn_share(share)
    return max(1, round(share * int(teacher.encoder_config.intermediate_size)))  # a narrowed teacher's config says its width


def check_ffn_share(share: float) -> None:
    """A one-line error unless ``share`` is a share of a layer's feed-forward neurons: above 0, at most 1.

    Example:
        >>> check_ffn_share(0.75)
        >>> check_ffn_share(1.5)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        finechain.errors.FinechainError: a feed-forward width of 1.5 is not a share of the teacher's neurons per layer ...
    """
    if not 0 < share <= 1:  # nan fails too
        raise FinechainError(
            f"a feed-forward width of {share:g} is not a share of the teacher's neurons per layer",
            field="ffn_width",
            fix="use a number above 0 and at most 1, such as 0.75",
        )


def head_count(model: ChainModel) -> int:
    """How many attention heads each of ``model``'s layers has (fewer than its backbone's in a pruned student).

    Example:
        >>> head_count(teacher)  # doctest: +SKIP
        12
    """
    return int(model.layer_shape()[1] or 0)  # BERT-style configs all say it


def check_heads(teacher: ChainModel, heads: int) -> None:
    """A one-line error unless a student layer can keep ``heads`` of ``teacher``'s attention heads per layer.

    Example:
        >>> check_heads(teacher, 10)  # doctest: +SKIP
    """
    if not 1 <= heads <= head_count(teacher):
        raise FinechainError(
            f"a student cannot keep {heads} of the teacher's {head_count(teacher)} attention heads per layer",
            field="attention_heads",
            fix=f"choose 1..{head_count(teacher)}",
        )


def layer_activity(teacher: ChainModel, ids: Mapping[str, Sequence[list[int]]], batch_size: int = 32) -> dict[nn.Module, LayerActivity]:
    """Each of ``teacher``'s trunk and branch layers' :class:`LayerActivity` over the real tokens it reads: ``ids``
    maps a task to token-id sequences of its own texts, which run through the trunk and that task's branch (so the
    trunk is ranked on every task's texts, a branch on its task's). What :func:`student_of` ranks neurons and heads by.

    Example:
        >>> activity = layer_activity(teacher, {"sentiment": teacher.encode(["a fine film", "dull"])[0]})  # doctest: +SKIP
        >>> activity[teacher.trunk.stack.layers[0]].neurons.shape, activity[teacher.trunk.stack.layers[0]].heads.shape  # doctest: +SKIP
        (torch.Size([1536]), torch.Size([12]))
    """
    unknown = sorted(set(ids) - set(teacher.tasks))
    if unknown:
        raise FinechainError(f"no task '{unknown[0]}' in the teacher to rank neurons for", fix=f"name one of {', '.join(teacher.tasks)}")
    layers = [*teacher.trunk.stack.layers, *(layer for name in ids for layer in teacher.tasks[name].branch.layers)]
    for layer in layers:  # the one-line errors naming the layer type (a LoRA-wrapped linear layer is fine)
        if not isinstance(getattr(layer, "intermediate", None), nn.Module):
            feed_forward(layer)
        if not hasattr(getattr(getattr(layer, "attention", None), "self", None), "num_attention_heads"):
            attention_heads(layer)
    totals: dict[tuple[nn.Module, str], torch.Tensor] = {}
    tokens: dict[nn.Module, int] = {}
    batch: dict[str, torch.Tensor] = {}

    def add(layer: nn.Module, part: str, per_token: torch.Tensor) -> None:  # [batch, tokens, units] -> sums over real tokens
        total = (per_token * batch["mask"].unsqueeze(-1).to(per_token.dtype)).sum((0, 1)).float()
        totals[layer, part] = totals[layer, part] + total if (layer, part) in totals else total

    def neurons(layer: nn.Module) -> Callable[..., None]:
        def record(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            add(layer, "neurons", output.abs())
            tokens[layer] = tokens.get(layer, 0) + int(batch["mask"].sum())

        return record

    def heads(layer: nn.Module) -> Callable[..., None]:
        attention, out = layer.attention.self, layer.attention.output.dense

        def record(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:  # the heads' outputs, side by side
            per_head = inputs[0].unflatten(-1, (attention.num_attention_heads, attention.attention_head_size))
            weights = out.weight.unflatten(1, (attention.num_attention_heads, attention.attention_head_size))
            add(layer, "heads", torch.einsum("bthd,ohd->btho", per_head, weights.to(per_head.dtype)).norm(dim=-1))

        return record

    handles = [layer.intermediate.register_forward_hook(neurons(layer)) for layer in layers]
    handles += [layer.attention.output.dense.register_forward_pre_hook(heads(layer)) for layer in layers]
    modes = {module: module.training for module in teacher.modules()}  # restored one by one: they differ (frozen parts)
    teacher.eval()
    try:
        with torch.inference_mode():
            for name, rows in ids.items():
                for start in range(0, len(rows), batch_size):
                    input_ids, mask = (t.to(teacher.device) for t in pad_ids(list(rows[start : start + batch_size]), teacher.pad_id))
                    batch["mask"] = mask
                    teacher(input_ids, mask, tasks=(name,))
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes.items():
            module.training = training
    count = {layer: max(tokens.get(layer, 0), 1) for layer in layers}
    return {
        layer: LayerActivity(totals[layer, "neurons"] / count[layer], totals[layer, "heads"] / count[layer])
        for layer in layers
        if (layer, "neurons") in totals
    }


def student_of(
    teacher: ChainModel,
    trunk_layers: int,
    branch_layers: int,
    task_branch_layers: Mapping[str, int] | None = None,
    ffn_width: int | None = None,
    activity: Activity | None = None,
    heads: int | None = None,
    *,
    task_ffn_width: Mapping[str, int] | None = None,
    task_heads: Mapping[str, int] | None = None,
) -> ChainModel:
    """A student of ``teacher`` with ``trunk_layers`` trunk layers and ``branch_layers`` layers per task branch (or,
    for the tasks named in ``task_branch_layers``, their own number: a task that needs a layer of its own keeps it,
    an easy one reads the student trunk directly), each copied from the teacher's layer at the same relative depth
    (:func:`spread`); heads are copied, LoRA branches merged. The student's trunk is its own (saved with it), so it
    counts as tuned; ``compression`` records the layers kept. With ``ffn_width`` every student layer keeps that many
    feed-forward neurons, with ``heads`` that many attention heads: those its teacher layer's :func:`layer_activity`
    (``activity``) ranks first, or without it those with the largest weights. A task named in ``task_ffn_width`` or
    ``task_heads`` narrows its branch layers further: to as many neurons or heads as it gives (at most the trunk's).

    Example:
        >>> student = student_of(teacher, trunk_layers=3, branch_layers=1)  # doctest: +SKIP
        >>> student.layer_ids  # doctest: +SKIP
        [0, 2, 3, 5]
        >>> student = student_of(teacher, 3, 0, task_branch_layers={"intent": 1})  # doctest: +SKIP
        >>> narrow = student_of(teacher, 3, 1, ffn_width=1152, activity=layer_activity(teacher, {"sentiment": ids}))  # doctest: +SKIP
        >>> fewer_heads = student_of(teacher, 3, 1, heads=10)  # doctest: +SKIP
        >>> lean = student_of(teacher, 3, 1, ffn_width=1344, task_ffn_width={"intent": 768}, task_heads={"intent": 8})  # doctest: +SKIP
    """
    if heads is not None:
        check_heads(teacher, heads)
    has_width, has_heads = teacher.layer_shape()
    ffn_width = None if ffn_width == has_width else ffn_width  # all of them: nothing pruned
    heads = None if heads == has_heads else heads
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
    width = ffn_width if ffn_width is not None else teacher.ffn_width
    kept_heads = heads if heads is not None else teacher.attention_heads
    shapes = branch_shapes(teacher, width, kept_heads, task_ffn_width or {}, task_heads or {})
    trunk_kept = spread(teacher.split, trunk_layers)
    kept = {name: spread(branch_depth, depth) for name, depth in depths.items()}
    branch_kept = spread(branch_depth, max(depths.values(), default=branch_layers))  # the student's own upper layers
    layer_ids = [teacher.layer_ids[i] for i in trunk_kept] + [teacher.layer_ids[teacher.split + j] for j in branch_kept]
    encoder = load_encoder(teacher.backbone_path)
    keep_layers(encoder, layer_ids)
    narrow_encoder(encoder, width, kept_heads)  # the templates of new branches by weights, as loading the student will narrow them
    student = ChainModel(encoder, teacher.tokenizer, teacher.backbone, teacher.backbone_path, trunk_layers, teacher.max_length, layer_ids)
    student.ffn_width, student.attention_heads = width, kept_heads
    narrowed = _narrower(ffn_width, heads, activity or {})
    for mine, theirs in zip(student.trunk.stack.layers, (teacher.trunk.stack.layers[i] for i in trunk_kept), strict=True):
        mine.load_state_dict(narrowed(theirs).state_dict())
    student.trunk_tuned = True
    student.compression = {
        "method": "layer dropping + distillation",
        "teacher": {"split": teacher.split, "layers": teacher.layer_ids},
        "trunk_layers_kept": trunk_kept,
        "branch_layers_kept": kept,
    } | ({"ffn_width": {"kept": ffn_width, "of": teacher.encoder_config.intermediate_size}} if ffn_width else {})
    if heads:
        student.compression["attention_heads"] = {"kept": heads, "of": head_count(teacher)}
    for name, task in teacher.tasks.items():
        tail = copy.deepcopy(task)
        tail.merge_adapters()
        own_width, own_heads = shapes.get(name, (None, None))  # narrower than the trunk
        has = layer_shape(task.branch.layers[0]) if len(task.branch.layers) else (None, None)  # the teacher's may be already
        branch = _narrower(fewer(own_width or ffn_width, has[0]), fewer(own_heads or heads, has[1]), activity or {})
        layers = [branch(tail.branch.layers[j], task.branch.layers[j]) for j in kept[name]]
        mixed_states = [0, *(i + 1 for i in trunk_kept), *(teacher.split + j + 1 for j in kept[name])]  # embeddings, then layers
        new = TaskModel(copy.deepcopy(task.head), layers, student.encoder_config, branch_mode(None), len(mixed_states))
        new.head_layer.load_state_dict(tail.head_layer.state_dict())
        if new.layer_mix is not None and tail.layer_mix is not None:
            with torch.no_grad():
                new.layer_mix.weights.copy_(tail.layer_mix.weights[mixed_states])
                new.layer_mix.gamma.copy_(tail.layer_mix.gamma)
        student.attach(name, new.to(teacher.device))
    narrower = {name: own for name, task in student.tasks.items() if any((own := student.narrower_branch(task)).values())}
    if narrower:
        student.compression["branches"] = narrower
    return student.to(teacher.device)


def fewer(wanted: int | None, has: int | None) -> int | None:
    """How many neurons or heads to narrow a layer that ``has`` them to: ``wanted``, unless it has no more than that
    (None: leave it as it is).

    Example:
        >>> fewer(768, 1344), fewer(1344, 768), fewer(None, 768), fewer(8, None)
        (768, None, None, 8)
    """
    return None if wanted is None or (has is not None and has <= wanted) else wanted


def _narrower(width: int | None, heads: int | None, activity: Activity) -> Callable[..., nn.Module]:
    """``narrowed(layer, teacher_layer=layer)``: ``layer`` (a copy when it is the teacher's own) with ``width``
    feed-forward neurons and ``heads`` attention heads, ranked by ``teacher_layer``'s activity; the layer itself when
    both are None."""

    def narrowed(layer: nn.Module, teacher_layer: nn.Module | None = None) -> nn.Module:
        if width is None and heads is None:
            return layer
        used = activity.get(layer if teacher_layer is None else teacher_layer)
        layer = copy.deepcopy(layer) if teacher_layer is None else layer
        narrow(layer, width, heads, *((None, None) if used is None else used))
        return layer

    return narrowed


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


def branch_shapes(
    teacher: ChainModel, width: int | None, heads: int | None, task_width: Mapping[str, int], task_heads: Mapping[str, int]
) -> dict[str, tuple[int | None, int | None]]:
    """The tasks whose student branch layers are narrower than the student's trunk layers (``width`` neurons, ``heads``
    heads; None: the teacher's), each with its own neurons and heads (None: the trunk's); a one-line error for a task
    the teacher lacks or a branch wider than the trunk (a branch starts from the trunk's narrowed layer templates).

    Example:
        >>> branch_shapes(teacher, 1344, None, {"intent": 768}, {})  # doctest: +SKIP
        {'intent': (768, None)}
    """
    full_width, full_heads = teacher.layer_shape()
    shapes: dict[str, tuple[int | None, int | None]] = {}
    trunk = (width or full_width or 0, heads or full_heads or 0)  # what a branch may keep at most
    for (field, unit), given, most in zip(UNITS, (task_width, task_heads), trunk, strict=True):
        for name, count in given.items():
            if name not in teacher.tasks:
                raise FinechainError(
                    f"no task '{name}' in the teacher to narrow", field=field, fix=f"name one of its tasks: {', '.join(teacher.tasks)}"
                )
            if not 1 <= count <= most:
                raise FinechainError(
                    f"task '{name}': a branch of {count} {unit} per layer does not fit the student's layers of {most}",
                    field=field,
                    fix=f"choose 1..{most}: a branch can be narrower than the trunk, not wider",
                )
            if count != most:
                w, h = shapes.get(name, (None, None))
                shapes[name] = (count, h) if field == "ffn_width" else (w, count)
    return shapes
