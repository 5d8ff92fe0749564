"""Half-size storage for an exported chain: its float weights kept as fp16 or bf16 in the file (half the bytes) and
cast back to fp32 when ONNX Runtime loads the graph (its constant folding runs each cast once), so a pass computes in
fp32 at the speed of the fp32 graph. fp16 keeps 11 bits of each weight's precision but only values within +-65,504
(a tensor with a larger one stays fp32); bf16 keeps fp32's whole range with 8 bits of precision (larger output
changes, no tensor left out). On an int8 export either halves what quantization left in fp32 (the embedding tables,
biases, norms). Outputs are checked against the graph it came from."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from finechain.errors import FinechainError, short_reason
from finechain.export.rewrite import rewritten_export
from finechain.inference.exported import ExportManifest

Storage = Literal["fp16", "bf16"]
STORAGES: tuple[str, ...] = get_args(Storage)
STEPS = {
    "fp16": "fp16 storage: float weights stored as fp16, cast to fp32 when ONNX Runtime loads the graph",
    "bf16": "bf16 storage: float weights stored as bf16 (fp32's range, 8 bits of precision), cast to fp32 when ONNX Runtime loads "
    "the graph",
}
FP16_MAX = 65504.0  # the largest finite fp16: a tensor with a larger value stays fp32 (bf16 has fp32's range)
MIN_ELEMENTS = 1024  # smaller tensors (scales, zero points, small biases) stay as they are: no bytes to save


def store_half(source: str | Path, out: str | Path, storage: Storage = "fp16", overwrite: bool = False) -> ExportManifest:
    """Write a copy of ``source`` (an exported folder, fp32 or int8; a chain folder is exported first) at ``out`` with
    its float weights stored as ``storage`` (``fp16`` or ``bf16``). Each task's ``max_abs_diff`` becomes its previous
    value plus the largest change of its outputs on sample texts: at most that far from the chain it came from.
    Nothing is left at ``out`` unless the whole step worked.

    Example:
        >>> store_half("demo-onnx", "demo-fp16").weights  # doctest: +SKIP
        'fp32, fp16 storage'
        >>> store_half("demo-int8", "demo-int8-bf16", storage="bf16").weights  # doctest: +SKIP
        'int8, bf16 storage'
    """
    if storage not in STORAGES:
        raise FinechainError(f"unknown storage {storage!r}", fix=f"use one of {', '.join(STORAGES)}")
    return rewritten_export(
        source,
        out,
        rewrite=partial(_halve, storage=storage),
        check=_not_halved,
        weights=lambda weights: f"{weights}, {storage} storage",
        step=STEPS[storage],
        adds_up=True,
        overwrite=overwrite,
    )


def _not_halved(source: Path, weights: str) -> None:
    stored = [name for name in STORAGES if f"{name} storage" in weights]
    if stored:
        raise FinechainError(f"{source} already stores its weights as {stored[0]}", fix="give the folder it was made from")


def _halve(source: Path, target: Path, storage: Storage) -> None:
    """Each float32 weight of the graph at ``source`` with at least ``MIN_ELEMENTS`` values (for fp16: all within its
    range) stored as ``storage``, read through a ``Cast`` back to float32 under its old name; written to ``target``."""
    import ml_dtypes  # onnx's own dependency for its 8- and 16-bit float types
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    try:
        model = onnx.load(str(source))
    except Exception as error:  # onnx raises several types for a damaged file
        raise FinechainError(f"cannot read the graph ({short_reason(error)})", file=source, fix="export the chain again") from None
    half = np.float16 if storage == "fp16" else ml_dtypes.bfloat16
    graph = model.graph
    inputs = {i.name for i in graph.input}  # an initializer that is also a graph input can be overridden: left alone
    weights, casts = [], []
    for tensor in graph.initializer:
        size = int(np.prod(tensor.dims)) if tensor.dims else 1
        if tensor.data_type != TensorProto.FLOAT or size < MIN_ELEMENTS or tensor.name in inputs:
            weights.append(tensor)
            continue
        values = numpy_helper.to_array(tensor)
        if storage == "fp16" and not np.all(np.abs(values) <= FP16_MAX):
            weights.append(tensor)
            continue
        stored = numpy_helper.from_array(values.astype(half), f"{tensor.name}.{storage}")
        weights.append(stored)
        casts.append(helper.make_node("Cast", [stored.name], [tensor.name], to=TensorProto.FLOAT, name=f"{tensor.name}.cast"))
    nodes = list(graph.node)
    del graph.initializer[:]
    graph.initializer.extend(weights)
    del graph.node[:]
    graph.node.extend(casts + nodes)  # the casts first: nodes stay in topological order
    onnx.save(model, str(target))
