"""Export a chain to ONNX: the trunk once, then every task's branch and head, as one graph with one named output per
task; with the tokenizer and a manifest, so the folder runs with ONNX Runtime, ``tokenizers`` and NumPy alone.

The graph's inputs are ``input_ids`` and ``attention_mask`` (int64, ``[batch, tokens]``) and the batch's packing
(``pack_source``, ``pack_target``, ``pack_segments``: a :class:`~finechain.data.packing.PackedLayout`): its layers run
on the texts laid end to end in a few rows, computing no padding, as a PyTorch chain's do on a CPU (the runner plans
the rows as PyTorch does; every axis dynamic). Task ``name``'s output is ``name`` (``[batch, labels]``, or ``[batch,
tokens, labels]`` for token-level tasks). LoRA
branches are merged into plain layers first. Before the folder is kept, ONNX Runtime runs it on sample texts and the
largest difference to PyTorch per task is recorded in the manifest; a difference above ``tolerance`` is an error.

With ``per_task`` the folder holds a trunk graph (``trunk.onnx``: token ids and mask in, the trunk's output ``trunk``
out, plus ``trunk.0`` ... for every layer's output when a task mixes layers) and one graph per task
(``tasks/NAME.onnx``: the trunk outputs it reads and the mask in, its output out): a task's graph can be replaced or
left out without touching the others, and a task asked for by some texts of a batch runs on those rows only.

With ``embeddings`` the folder also holds ``embeddings.onnx``: the untouched backbone (trunk and its own upper layers)
mean pooled, as ``Chain.embed`` computes it, so ``Engine.embed`` and a ``sentence-transformers``-style
``encode`` run on the export too; checked against PyTorch like the tasks.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from finechain.chain import Chain
from finechain.data.batching import pad_ids
from finechain.data.packing import packed_layout
from finechain.errors import ArtifactError, FinechainError, short_reason
from finechain.export.checks import compare_embeddings, compare_outputs
from finechain.inference import Engine
from finechain.inference.exported import (
    EMBEDDINGS_GRAPH,
    EXPORT_MANIFEST,
    GRAPH,
    PACKED_INPUTS,
    TOKENIZER,
    TRUNK_GRAPH,
    ExportedChain,
    ExportedTask,
    ExportManifest,
    task_graph,
)
from finechain.io import building_folder, write_json
from finechain.model.manifest import branch_narrowing, narrowing
from finechain.model.packing import Packing
from finechain.spec.flows import rebased_json


class _Graph(nn.Module):
    """``ChainModel.forward`` for fixed tasks, returning a tuple in their order (what ONNX export traces)."""

    def __init__(self, model: nn.Module, tasks: list[str]) -> None:
        super().__init__()
        self.model = model
        self.names = tasks

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.model(input_ids, attention_mask, self.names)
        return tuple(outputs[name].float() for name in self.names)


class _PackedGraph(_Graph):
    """:class:`_Graph` on packed rows: the padded batch's embeddings laid into the rows that the inputs ``pack_source``,
    ``pack_target`` and ``pack_segments`` describe (:class:`~finechain.data.packing.PackedLayout`), every layer run
    on them, the heads reading the padded layout again."""

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        input_ids, attention_mask, source, target, segments = inputs
        outputs = self.model(input_ids, attention_mask, self.names, Packing.given(input_ids, source, target, segments))
        return tuple(outputs[name].float() for name in self.names)


class _TrunkGraph(nn.Module):
    """The trunk alone: its output, or with ``all_states`` the embeddings and every trunk layer's output."""

    def __init__(self, model: nn.Module, all_states: bool) -> None:
        super().__init__()
        self.model = model
        self.all_states = all_states

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(state.float() for state in self.model.trunk_states(input_ids, attention_mask, self.all_states))


class _EmbeddingGraph(nn.Module):
    """The untouched backbone's mean-pooled last layer (``ChainModel.sentence_embeddings``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.sentence_embeddings(input_ids, attention_mask).float()


class _TaskGraph(nn.Module):
    """One task's branch and head on trunk outputs (its last one, or all of them for a task that mixes layers)."""

    def __init__(self, task: nn.Module) -> None:
        super().__init__()
        self.task = task

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        *states, mask = inputs
        return self.task(states if self.task.needs_trunk_states else states[0], mask).float()


def _exported_flows(chain: Chain, names: Sequence[str], out: str | Path) -> list[dict[str, Any]]:
    """The chain's flows whose stages of this chain were all exported, as the export's manifest keeps them (other
    chains' folders named from ``out``)."""
    kept = [flow for flow in chain.flows.values() if all(s.chain is not None or s.task in names for s in flow.stages)]
    return rebased_json(kept, chain.folder, out)


def export_onnx(
    chain: Chain | str | Path,
    out: str | Path,
    tasks: Sequence[str] | None = None,
    opset: int = 18,
    tolerance: float = 1e-3,
    overwrite: bool = False,
    per_task: bool = False,
    embeddings: bool = False,
) -> ExportManifest:
    """Write ``chain`` (a :class:`Chain` or a chain folder) as an exported folder at ``out``: ``model.onnx``,
    ``tokenizer.json`` and ``finechain-export.json`` (with ``per_task``: ``trunk.onnx`` and ``tasks/NAME.onnx``
    instead of ``model.onnx``; with ``embeddings``: ``embeddings.onnx`` too, the backbone's sentence embeddings). Only
    ``tasks`` when given. Nothing is left at ``out`` unless the whole export worked and ONNX Runtime reproduced
    PyTorch's outputs within ``tolerance``.

    Example:
        >>> export_onnx("demo-chain", "demo-onnx").tasks["intent"].max_abs_diff  # doctest: +SKIP
        2.1e-06
    """
    with building_folder(out, overwrite) as work:  # an existing --out is refused before anything is loaded
        source = "" if isinstance(chain, Chain) else str(chain)
        if not isinstance(chain, Chain):
            chain = Chain.from_pretrained(chain)
        names = chain.model.task_names(tasks)
        if not names and not embeddings:
            raise FinechainError(
                "the chain has no tasks to export", fix="train or add a task first, or export its embeddings (--embeddings)"
            )
        if embeddings and chain.model.trunk_tuned:
            raise FinechainError(
                "this chain's trunk was fine-tuned (sharing: joint), so it no longer gives the backbone's sentence embeddings",
                fix="export without --embeddings, or from a chain trained with sharing: frozen",
            )
        model = copy.deepcopy(chain.model).to("cpu").float().eval()
        merged = model.merge_adapters()
        tokenizer = model.tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise ArtifactError(
                "the backbone's tokenizer has no tokenizer.json (a slow tokenizer)",
                file=model.backbone_path,
                fix="use a backbone with a fast tokenizer",
            )
        trunk_outputs: list[str] = []  # a graph per task: what the trunk graph returns
        packed = bool(names) and not per_task  # one graph for every task takes packed rows; a graph per task, padded ones
        if names and per_task:
            trunk_outputs = _write_graphs(model, names, work, opset)
        elif names:
            _write_graph(model, names, work / GRAPH, opset)  # with no tasks, the embeddings' graph is the folder's
        if embeddings:
            graph, inputs, axes = _EmbeddingGraph(model), _sample_inputs(model), {"embeddings": {0: "batch"}}
            _trace(graph, inputs, ["input_ids", "attention_mask"], ["embeddings"], axes, work / EMBEDDINGS_GRAPH, opset, model)
        backend.save(str(work / TOKENIZER))
        entries = {}
        for name in names:
            head = model.tasks[name].head
            record = chain.records.get(name)
            metrics = (record.metrics or {}) if record is not None else {}
            spec = record.spec if record is not None else None
            metric = record.metric if record is not None else None
            entries[name] = ExportedTask(type=head.type_name, head=head.config(), output=name, metrics=metrics, spec=spec, metric=metric)
            if per_task:
                entries[name].graph = task_graph(name)
                entries[name].inputs = trunk_outputs if model.tasks[name].needs_trunk_states else trunk_outputs[-1:]
        student = model.compression
        narrowed = narrowing(model.ffn_width, model.attention_heads) + branch_narrowing((student or {}).get("branches", {}))
        steps = [f"student: backbone layers {model.layer_ids}{narrowed}, distilled"] if student else []
        layout = ", a graph per task" if per_task else ", packed rows" if packed else ""
        steps += ["export: onnx" + layout + (", sentence embeddings" if embeddings else "")]
        steps += [f"merge LoRA: {name}" for name in merged if name in names]
        manifest = ExportManifest(
            format=5 if packed else 3 if embeddings else 2 if per_task else 1,  # what a reader must know: older ones refuse it
            graph=EMBEDDINGS_GRAPH if not names else TRUNK_GRAPH if per_task else GRAPH,
            trunk_outputs=trunk_outputs,
            source=source,
            backbone=model.backbone.name,
            split=model.split,
            layers=model.num_layers,
            max_length=model.max_length,
            pad_id=model.pad_id,
            tasks=entries,
            steps=steps,
            flows=_exported_flows(chain, names, out),
            embeddings=EMBEDDINGS_GRAPH if embeddings else None,
            embedding_size=model.embedding_size if embeddings else 0,
            packed=packed,
            hidden_size=model.embedding_size,
        )
        write_json(work / EXPORT_MANIFEST, manifest.model_dump(mode="json"))
        reference, exported = Engine(model, precision="fp32"), Engine(ExportedChain(work))
        for name, difference in (compare_outputs(reference, exported, names) if names else {}).items():
            manifest.tasks[name].max_abs_diff = _within_tolerance(f"'{name}' outputs", difference, tolerance)
        if embeddings:
            manifest.embeddings_max_abs_diff = _within_tolerance("sentence embeddings", compare_embeddings(reference, exported), tolerance)
        write_json(work / EXPORT_MANIFEST, manifest.model_dump(mode="json"))
    return manifest


def _within_tolerance(what: str, difference: float, tolerance: float) -> float:
    """``difference`` (ONNX Runtime's largest difference to PyTorch on ``what``), or an error when above ``tolerance``."""
    if difference > tolerance:
        raise FinechainError(
            f"ONNX Runtime's {what} differ from PyTorch's by {difference:.2g} (more than {tolerance:g})",
            fix="report this backbone; export with --tolerance to keep it anyway",
        )
    return float(difference)


def _sample_inputs(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and mask of two texts of different lengths (so that the traced graph handles padding)."""
    return pad_ids(model.encode(["an example to trace the graph with", "short"])[0], model.pad_id)


def _write_graph(model: nn.Module, names: list[str], path: Path, opset: int) -> None:
    """Trace ``model`` for ``names`` into ``path``, taking packed rows (:data:`PACKED_INPUTS`), every axis dynamic."""
    axes = {name: {0: "batch", 1: "tokens"} if model.tasks[name].head.token_level else {0: "batch"} for name in names}
    ids, mask = _sample_inputs(model)
    lengths = mask.sum(1).tolist()
    layout = packed_layout(lengths, ids.shape[1], [list(range(len(lengths)))])  # both texts in one row: rows != texts
    inputs = (ids, mask, *(torch.from_numpy(array) for array in layout))
    axes |= {"pack_source": {0: "packed"}, "pack_target": {0: "packed"}, "pack_segments": {0: "rows", 1: "row_width"}}
    _trace(_PackedGraph(model, names), inputs, list(PACKED_INPUTS), names, axes, path, opset, model)


def _write_graphs(model: nn.Module, names: list[str], folder: Path, opset: int) -> list[str]:
    """The trunk graph and one graph per task of ``names`` in ``folder``; returns the trunk graph's output names (the
    last is the trunk's output)."""
    trunk = _TrunkGraph(model, any(model.tasks[name].needs_trunk_states for name in names))
    inputs = _sample_inputs(model)
    with torch.no_grad():
        states = trunk(*inputs)  # what the task graphs are traced on
    outputs = [f"trunk.{i}" for i in range(len(states) - 1)] + ["trunk"] if trunk.all_states else ["trunk"]
    token_axes = {0: "batch", 1: "tokens"}
    _trace(
        trunk,
        inputs,
        ["input_ids", "attention_mask"],
        outputs,
        dict.fromkeys(outputs, token_axes),
        folder / TRUNK_GRAPH,
        opset,
        model,
    )
    (folder / task_graph(names[0])).parent.mkdir(exist_ok=True)
    for name in names:
        task = model.tasks[name]
        reads = outputs if task.needs_trunk_states else outputs[-1:]
        given = [*(states if task.needs_trunk_states else states[-1:]), inputs[1]]
        axes = dict.fromkeys([*reads, "attention_mask"], token_axes) | {name: token_axes if task.head.token_level else {0: "batch"}}
        _trace(_TaskGraph(task), tuple(given), [*reads, "attention_mask"], [name], axes, folder / task_graph(name), opset, model)
    return outputs


def _trace(
    graph: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    input_names: list[str],
    output_names: list[str],
    output_axes: dict[str, dict[int, str]],
    path: Path,
    opset: int,
    model: nn.Module,
) -> None:
    """Trace ``graph`` on ``inputs`` into ``path``: the inputs' first two axes (batch, tokens) and ``output_axes``
    dynamic; an unsupported layer is an :class:`ArtifactError` naming ``model``'s backbone."""
    axes = {name: {0: "batch", 1: "tokens"} for name in input_names} | output_axes  # output_axes may name inputs too
    try:
        with warnings.catch_warnings(), torch.no_grad(), _plain_attention(graph):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph.eval(),
                inputs,
                str(path),
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=axes,
                opset_version=opset,
                dynamo=False,
            )
    except Exception as error:  # the exporter raises many types for an unsupported layer
        raise ArtifactError(
            f"this chain's layers cannot be exported to ONNX ({short_reason(error)})",
            file=getattr(model, "backbone_path", None),
            fix="use a BERT-style backbone (BERT, RoBERTa, MiniLM, XLM-R)",
        ) from None


@contextlib.contextmanager
def _plain_attention(graph: nn.Module) -> Iterator[None]:
    """While tracing, ``graph``'s layers compute attention as matrix products, an additive mask and a softmax
    (transformers' "eager" attention) instead of PyTorch's fused SDPA, which the exporter spells out with a NaN guard
    for rows that see no token (``IsNaN`` and ``Where`` over every attention matrix). On real tokens both give the same
    outputs (the export checks them against PyTorch), and the plain form runs faster in ONNX Runtime (``python -m
    benchmarks runtimes`` times both). Each layer's previous attention is restored afterwards: the chain keeps its own
    for PyTorch.

    Example:
        >>> with _plain_attention(chain.model):  # doctest: +SKIP
        ...     torch.onnx.export(...)
    """
    configs = {id(c): c for m in graph.modules() if hasattr(c := getattr(m, "config", None), "_attn_implementation")}
    before = {key: config._attn_implementation for key, config in configs.items()}
    try:
        for config in configs.values():
            config._attn_implementation = "eager"
        yield
    finally:
        for key, config in configs.items():
            config._attn_implementation = before[key]
