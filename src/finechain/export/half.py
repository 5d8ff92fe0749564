"""fp16 storage for an exported chain: its float weights kept as fp16 in the file (half the bytes) and cast back to
fp32 when ONNX Runtime loads the graph (its constant folding runs each cast once), so a pass computes in fp32 at the
speed of the fp32 graph. On an int8 export it halves what quantization left in fp32 (the embedding tables, biases,
norms). Outputs are checked against the graph it came from."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from finechain.errors import FinechainError, short_reason
from finechain.export.checks import compare_outputs
from finechain.inference import Engine
from finechain.inference.exported import EXPORT_MANIFEST, ExportedChain, ExportManifest, is_exported, read_export_manifest
from finechain.io import building_folder, write_json
from finechain.spec.flows import FlowSpec, rebased_json

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
    source = Path(source)
    with building_folder(out, overwrite) as target:
        before = source
        if not is_exported(source):
            from finechain.export.onnx import export_onnx  # a chain folder: PyTorch is needed for this step only

            before = target / ".fp32"  # exported first, removed before the folder is put in place
            export_onnx(source, before)
        manifest = read_export_manifest(before)
        if "fp16" in manifest.weights:
            raise FinechainError(f"{source} already stores its weights as fp16", fix="give the folder it was made from")
        shutil.copy2(before / manifest.tokenizer, target / manifest.tokenizer)
        _halve(before / manifest.graph, target / manifest.graph)
        flows_json = rebased_json([FlowSpec.model_validate(f) for f in manifest.flows], before, out)  # other chains named from out
        update = {"weights": f"{manifest.weights}, fp16 storage", "steps": [*manifest.steps, FP16_STEP], "flows": flows_json}
        manifest = manifest.model_copy(update=update, deep=True)
        write_json(target / EXPORT_MANIFEST, manifest.model_dump(mode="json"))
        names = list(manifest.tasks)
        changes = compare_outputs(Engine(ExportedChain(before)), target, names)
        for name in names:
            manifest.tasks[name].max_abs_diff = (manifest.tasks[name].max_abs_diff or 0.0) + changes[name]
        write_json(target / EXPORT_MANIFEST, manifest.model_dump(mode="json"))
        if before != source:
            shutil.rmtree(before)
    return manifest


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
