"""int8 weights for an exported chain: ONNX Runtime's dynamic quantization of the matrix products (weights stored as
int8 per output channel, activations quantized on the fly), checked against the fp32 graph it came from."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from finechain.errors import FinechainError, short_reason
from finechain.export.checks import compare_outputs
from finechain.inference import Engine
from finechain.inference.exported import EXPORT_MANIFEST, ExportedChain, ExportManifest, is_exported, read_export_manifest
from finechain.io import building_folder, write_json
from finechain.spec.flows import FlowSpec, rebased_json

INT8_STEP = "int8: dynamic quantization of MatMul weights, per channel (ONNX Runtime)"


def quantize_int8(source: str | Path, out: str | Path, overwrite: bool = False) -> ExportManifest:
    """Write an int8 copy of ``source`` (an exported folder; a chain folder is exported first) at ``out``. The
    manifest's ``max_abs_diff`` per task becomes the largest change of that task's outputs against the fp32 graph on
    sample texts. Nothing is left at ``out`` unless the whole step worked.

    Example:
        >>> quantize_int8("demo-onnx", "demo-int8").weights  # doctest: +SKIP
        'int8'
    """
    source = Path(source)
    with building_folder(out, overwrite) as target:
        fp32 = source
        if not is_exported(source):
            from finechain.export.onnx import export_onnx  # a chain folder: PyTorch is needed for this step only

            fp32 = target / ".fp32"  # exported first, removed before the folder is put in place
            export_onnx(source, fp32)
        manifest = read_export_manifest(fp32)
        if manifest.weights != "fp32":
            raise FinechainError(f"{source} already has {manifest.weights} weights", fix="quantize the fp32 export")
        shutil.copy2(fp32 / manifest.tokenizer, target / manifest.tokenizer)
        _quantize(fp32 / manifest.graph, target / manifest.graph)
        flows_json = rebased_json([FlowSpec.model_validate(f) for f in manifest.flows], fp32, out)  # other chains named from out
        manifest = manifest.model_copy(update={"weights": "int8", "steps": [*manifest.steps, INT8_STEP], "flows": flows_json})
        write_json(target / EXPORT_MANIFEST, manifest.model_dump(mode="json"))
        names = list(manifest.tasks)
        changes = compare_outputs(Engine(ExportedChain(fp32)), target, names)
        for name in names:
            manifest.tasks[name].max_abs_diff = changes[name]
        write_json(target / EXPORT_MANIFEST, manifest.model_dump(mode="json"))
        if fp32 != source:
            shutil.rmtree(fp32)
    return manifest


def _quantize(source: Path, target: Path) -> None:
    """ONNX Runtime's dynamic int8 quantization of every MatMul's weights (embedding tables stay fp32: quantizing
    them costs accuracy and saves no time)."""
    try:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        raise FinechainError("onnxruntime (with its quantization tools) is not installed", fix="pip install onnxruntime onnx") from None
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # its advice to pre-process the graph goes to the root logger
    try:
        model = _direct_weights(onnx.load(str(source)))
        quantize_dynamic(model, str(target), weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"])
    except Exception as error:  # onnx and onnxruntime raise many types
        raise FinechainError(f"quantization failed ({short_reason(error)})", file=source, fix="export the chain again") from None
    finally:
        logging.getLogger().setLevel(quiet)


def _direct_weights(model: Any) -> Any:
    """``model`` with each node that read a weight through an ``Identity`` reading the weight itself. The exporter
    writes a weight that several tasks' layers share (frozen branches are the backbone's own layers) once, and the
    others reach it through ``Identity`` nodes, which the quantizer does not follow: those products stayed fp32."""
    weights = {t.name for t in model.graph.initializer}
    returned = {o.name for o in model.graph.output}
    identities = [n for n in model.graph.node if n.op_type == "Identity" and n.input[0] in weights]
    alias = {n.output[0]: n.input[0] for n in identities if n.output[0] not in returned}
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
    kept = [n for n in model.graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return model
