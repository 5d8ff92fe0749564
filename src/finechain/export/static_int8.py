"""Static int8 for an exported chain: NNCF (OpenVINO's quantizer) places int8 quantize / dequantize pairs around the
graph's matrix products with activation ranges calibrated on sample training texts (transformer preset: SmoothQuant,
bias correction, the sensitive operations left in float), written as a plain ONNX graph. OpenVINO runs it on its int8
kernels (the folder's preferred runtime becomes ``openvino``); ONNX Runtime runs it too, more slowly. Unlike dynamic
int8, an answer does not depend on which texts share a call: the activation scales are fixed."""

from __future__ import annotations

import contextlib
import io
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from finechain.data.prepare import read_split
from finechain.data.tokenizer_file import TokenizerFile
from finechain.data.tokens import encode_texts
from finechain.errors import FinechainError, short_reason
from finechain.export.quantize import fp32_only
from finechain.export.rewrite import rewritten_export
from finechain.heads import head_type
from finechain.inference.exported import EXPORT_MANIFEST, PACKED_INPUTS, ExportManifest, graph_feeds, read_export_manifest
from finechain.spec import TaskSpec

STATIC_STEP = "int8 static: MatMul weights and activations int8, ranges calibrated on {count} texts (NNCF, for OpenVINO)"
CALIBRATION_TEXTS = 300  # NNCF's own default sample size


def quantize_static_int8(
    source: str | Path, out: str | Path, texts: Sequence[Any] | None = None, overwrite: bool = False, count: int = CALIBRATION_TEXTS
) -> ExportManifest:
    """Write a static int8 copy of ``source`` (an fp32 exported folder exported as one graph; a chain folder is exported
    first) at ``out``, calibrated on up to ``count`` of ``texts``, or without them on texts drawn evenly from each
    task's training file. The manifest records the step and ``runtime: openvino``; each task's ``max_abs_diff`` is
    the largest change of its outputs against the fp32 graph on sample texts. Needs ``nncf`` and ``openvino``.

    Example:
        >>> quantize_static_int8("demo-onnx", "demo-int8-static").runtime  # doctest: +SKIP
        'openvino'
    """
    try:
        import nncf  # noqa: F401
        import onnx  # noqa: F401
    except ImportError:
        raise FinechainError("static int8 needs NNCF", fix="pip install nncf openvino (or finechain[openvino]), or drop --static") from None
    calibration: dict[str, list[list[int]]] = {}

    def rewrite(graph: Path, target: Path) -> None:
        folder = graph.parent
        if not calibration:
            calibration["ids"] = calibration_ids(folder, texts, count)
        quantize_graph_static(graph, target, calibration["ids"])

    return rewritten_export(
        source,
        out,
        rewrite=rewrite,
        check=fp32_only,
        weights=lambda _: "int8 static",
        step=lambda: STATIC_STEP.format(count=len(calibration["ids"])),  # how many there were: training files may hold fewer
        adds_up=False,
        overwrite=overwrite,
        runtime="openvino",
    )


def calibration_ids(folder: Path, texts: Sequence[Any] | None, count: int) -> list[list[int]]:
    """Token ids of up to ``count`` calibration texts for the exported chain in ``folder``: ``texts`` (the first
    ``count``), or the same number drawn from each task's training file (seed 0). No texts at all is an error.

    Example:
        >>> len(calibration_ids(Path("demo-onnx"), ["hello", "where is my card?"], 300))  # doctest: +SKIP
        2
    """
    manifest = read_export_manifest(folder)
    if texts is None:
        texts = training_texts(manifest, count)
        if not texts:
            raise FinechainError(
                "no calibration texts: none of the tasks' training files can be read from here",
                file=folder / EXPORT_MANIFEST,
                fix="give texts to calibrate on (--texts FILE: a sample of what the chain will see)",
            )
    tokenizer = TokenizerFile(folder / manifest.tokenizer, manifest.pad_id)
    chosen = list(texts)[:count]
    ids = []
    for kind in (str, list):  # raw texts and word lists (tagging tasks' files) are tokenised apart
        group = [text for text in chosen if isinstance(text, kind)]
        ids += encode_texts(tokenizer, group, manifest.max_length)[0] if group else []
    return ids


def training_texts(manifest: ExportManifest, count: int) -> list[Any]:
    """Up to ``count`` texts in all, as many from each task's training file (as the task was trained: its spec's
    columns) as it can give, drawn with seed 0; tasks whose file is gone give none."""
    found = []
    for task in manifest.tasks.values():
        spec = TaskSpec.model_validate(task.spec) if task.spec else None
        if spec is None or spec.train is None or not Path(spec.train).is_file():
            continue
        found.append(read_split(Path(spec.train), spec, head_type(task.type)).texts)
    if not found:
        return []
    each = math.ceil(count / len(found))
    rng = np.random.default_rng(0)
    return [texts[i] for texts in found for i in sorted(rng.choice(len(texts), min(each, len(texts)), replace=False))][:count]


def quantize_graph_static(source: Path, target: Path, calibration: list[list[int]]) -> None:
    """NNCF's static int8 quantization (transformer preset) of the graph at ``source``, calibrated one text at a time
    on ``calibration`` token ids (no padding in the ranges), written to ``target``. The graph must read token ids (a
    graph per task reads trunk states: export as one graph).

    Example:
        >>> quantize_graph_static(Path("demo-onnx/model.onnx"), Path("static.onnx"), [[101, 7592, 102]])  # doctest: +SKIP
    """
    import nncf
    import onnx

    model = onnx.load(str(source))
    inputs = [i.name for i in model.graph.input]
    if inputs[:1] != ["input_ids"] or not set(inputs) <= set(PACKED_INPUTS):
        raise FinechainError(
            "static int8 calibrates graphs that read token ids, and this folder has a graph per task",
            file=source,
            fix="export without --per-task-graphs",
        )
    items = [np.asarray([ids], dtype=np.int64) for ids in calibration]
    dataset = nncf.Dataset(items, lambda ids: graph_feeds(inputs, ids, np.ones_like(ids), hidden_size=1))  # one text: no packing
    model = _identity_output_casts(model)
    quiet = logging.getLogger("nncf").level
    nncf.set_log_level(logging.ERROR)  # no advice on the user's screen
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # nor NNCF's progress bars
            quantized = nncf.quantize(model, dataset, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(items))
        onnx.save(quantized, str(target))
    except Exception as error:  # nncf, onnx and openvino raise many types
        raise FinechainError(f"static quantization failed ({short_reason(error)})", file=source, fix="export the chain again") from None
    finally:
        nncf.set_log_level(quiet or logging.INFO)


def _identity_output_casts(model: Any) -> Any:
    """``model`` with each ``Cast`` that writes a graph output in the type it already has made an ``Identity``: NNCF
    drops such casts and fails on the output they name."""
    import onnx

    typed = onnx.shape_inference.infer_shapes(model)
    kinds = {v.name: v.type.tensor_type.elem_type for v in [*typed.graph.value_info, *typed.graph.input, *typed.graph.output]}
    outputs = {o.name for o in model.graph.output}
    for node in model.graph.node:
        if node.op_type != "Cast" or node.output[0] not in outputs:
            continue
        to = next(a.i for a in node.attribute if a.name == "to")
        if kinds.get(node.input[0]) == to:
            node.op_type = "Identity"
            del node.attribute[:]
    return model
