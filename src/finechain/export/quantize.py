"""int8 weights for an exported chain: ONNX Runtime's dynamic quantization of the matrix products (weights stored as
int8 per output channel, activations quantized on the fly), checked against the fp32 graph it came from.

The weights use 7 of int8's 8 bits (ONNX Runtime's ``reduce_range``). On a CPU without int8 dot products (VNNI, AMX:
AMD before Zen 4, Intel before Cascade Lake) ONNX Runtime multiplies uint8 activations by int8 weights with an
instruction that adds pairs of products into 16 bits, and full-range weights overflow it: a product at the chain's
shapes came out up to 19% off there (``python -m benchmarks kernels``), against 2% with 7-bit weights. A folder is
often quantized on one machine and served on another, so every folder gets the range that is right on both."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from finechain.errors import FinechainError, short_reason
from finechain.export.rewrite import rewritten_export
from finechain.inference.exported import ExportManifest

INT8_STEP = "int8: dynamic quantization of MatMul weights, per channel, 7-bit range (ONNX Runtime)"


def quantize_int8(source: str | Path, out: str | Path, overwrite: bool = False) -> ExportManifest:
    """Write an int8 copy of ``source`` (an exported folder; a chain folder is exported first) at ``out``. The
    manifest's ``max_abs_diff`` per task becomes the largest change of that task's outputs against the fp32 graph on
    sample texts. Nothing is left at ``out`` unless the whole step worked.

    Example:
        >>> quantize_int8("demo-onnx", "demo-int8").weights  # doctest: +SKIP
        'int8'
    """
    return rewritten_export(
        source, out, rewrite=quantize_graph, check=fp32_only, weights=lambda _: "int8", step=INT8_STEP, adds_up=False, overwrite=overwrite
    )


def fp32_only(source: Path, weights: str) -> None:
    """Quantization starts from fp32 weights: anything else is a :class:`FinechainError`.

    Example:
        >>> fp32_only(Path("demo-onnx"), "fp32")
    """
    if weights != "fp32":
        raise FinechainError(f"{source} already has {weights} weights", fix="quantize the fp32 export")


def quantize_graph(source: Path, target: Path) -> None:
    """ONNX Runtime's dynamic int8 quantization of every MatMul's weights in the graph at ``source``, written to
    ``target`` (embedding tables stay fp32: quantizing them costs accuracy and saves no time; weights in a 7-bit range,
    see the module's docstring). The graph-level step of :func:`quantize_int8`, which adds the folder, the checks and
    the manifest.

    Example:
        >>> quantize_graph(Path("demo-onnx/model.onnx"), Path("int8.onnx"))  # doctest: +SKIP
    """
    try:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        raise FinechainError("onnxruntime (with its quantization tools) is not installed", fix="pip install onnxruntime onnx") from None
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # its advice to pre-process the graph goes to the root logger
    try:
        model = _direct_weights(onnx.load(str(source)))
        quantize_dynamic(
            model, str(target), weight_type=QuantType.QInt8, per_channel=True, reduce_range=True, op_types_to_quantize=["MatMul"]
        )
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
