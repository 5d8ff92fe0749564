"""fp16 storage for an exported chain: its float weights kept as fp16 in the file (half the bytes) and cast back to
fp32 when ONNX Runtime loads the graph (its constant folding runs each cast once), so a pass computes in fp32 at the
speed of the fp32 graph. On an int8 export it halves what quantization left in fp32 (the embedding tables, biases,
norms). Outputs are checked against the graph it came from."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from finechain.errors import FinechainError, short_reason
from finechain.export.rewrite import rewritten_export
from finechain.inference.exported import ExportManifest

FP16_STEP = "fp16 storage: float weights stored as fp16, cast to fp32 when ONNX Runtime loads the graph"
FP16_MAX = 65504.0  # the largest finite fp16: a tensor with a larger value stays fp32
MIN_ELEMENTS = 1024  # smaller tensors (scales, zero points, small biases) stay as they are: no bytes to save


def store_fp16(source: str | Path, out: str | Path, overwrite: bool = False) -> ExportManifest:
    """Write a copy of ``source`` (an exported folder, fp32 or int8; a chain folder is exported first) at ``out`` with
    its float weights stored as fp16. Each task's ``max_abs_diff`` becomes its previous value plus the largest change
    of its outputs on sample texts: at most that far from the chain it came from. Nothing is left at ``out`` unless
    the whole step worked.

    Example:
        >>> store_fp16("demo-onnx", "demo-fp16").weights  # doctest: +SKIP
        'fp32, fp16 storage'
    """
    return rewritten_export(
        source,
        out,
        rewrite=_halve,
        check=_not_halved,
        weights=lambda weights: f"{weights}, fp16 storage",
        step=FP16_STEP,
        adds_up=True,
        overwrite=overwrite,
    )


def _not_halved(source: Path, weights: str) -> None:
    if "fp16" in weights:
        raise FinechainError(f"{source} already stores its weights as fp16", fix="give the folder it was made from")


def _halve(source: Path, target: Path) -> None:
    """Each float32 weight of the graph at ``source`` with at least ``MIN_ELEMENTS`` values (all within fp16's range)
    stored as fp16, read through a ``Cast`` back to float32 under its old name; written to ``target``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    try:
        model = onnx.load(str(source))
    except Exception as error:  # onnx raises several types for a damaged file
        raise FinechainError(f"cannot read the graph ({short_reason(error)})", file=source, fix="export the chain again") from None
    graph = model.graph
    inputs = {i.name for i in graph.input}  # an initializer that is also a graph input can be overridden: left alone
    weights, casts = [], []
    for tensor in graph.initializer:
        size = int(np.prod(tensor.dims)) if tensor.dims else 1
        if tensor.data_type != TensorProto.FLOAT or size < MIN_ELEMENTS or tensor.name in inputs:
            weights.append(tensor)
            continue
        values = numpy_helper.to_array(tensor)
        if not np.all(np.abs(values) <= FP16_MAX):
            weights.append(tensor)
            continue
        stored = numpy_helper.from_array(values.astype(np.float16), f"{tensor.name}.fp16")
        weights.append(stored)
        casts.append(helper.make_node("Cast", [stored.name], [tensor.name], to=TensorProto.FLOAT, name=f"{tensor.name}.cast"))
    nodes = list(graph.node)
    del graph.initializer[:]
    graph.initializer.extend(weights)
    del graph.node[:]
    graph.node.extend(casts + nodes)  # the casts first: nodes stay in topological order
    onnx.save(model, str(target))
