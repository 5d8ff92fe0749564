"""Matrix products at the chain's shapes, per runtime: the ceiling of what int8 can gain over the other precisions.

    python -m benchmarks kernels [--quick] [--rows 32,256,1024] [--threads N] [--seconds 0.5]

A transformer layer of the backbone (hidden size H, feed-forward size F: 384 and 1536 for all-MiniLM-L6-v2) runs three
kinds of matrix product on each token: H x H (each of attention's four projections), H x F and F x H. Each is timed
over ``rows`` tokens at once (a short text is about 32 tokens, a batch of 32 texts about 1,000) in the four runtimes
finechain runs a chain with on a CPU: PyTorch fp32, PyTorch bf16 (what the default precision runs on a CPU with bf16
units), ONNX Runtime fp32 (a one-product graph, as ``finechain export`` writes it) and ONNX Runtime int8 (that graph
through ``finechain compress --int8``'s dynamic quantization: weights int8 per output channel, activations quantized
on every call, inside the time). Per ``rows``, the four projections and the two feed-forward products together make
"one layer". In a whole chain the rest (attention's scores and softmax, layer norms, GELU, Python) adds time to every
runtime, so a layer's ratio between two runtimes bounds what the faster one can gain on a chain at that batch size.

Speed: billions of multiply-adds per second, the median of repeated calls over at least ``--seconds`` per product,
after a warm-up call; ``--threads`` (default: every core) for both PyTorch and ONNX Runtime.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import BACKBONE, Recorder, comma_list, timed
from finechain.export.quantize import quantize_graph
from finechain.inference.exported import onnx_session
from finechain.model.backbone import resolve_backbone

RUNTIMES = ["PyTorch fp32", "PyTorch bf16", "ONNX Runtime fp32", "ONNX Runtime int8"]


def layer_products(hidden: int, feed_forward: int) -> list[tuple[int, int, int]]:
    """A layer's matrix products as ``(inputs, outputs, times per layer)``.

    Example:
        >>> layer_products(384, 1536)
        [(384, 384, 4), (384, 1536, 1), (1536, 384, 1)]
    """
    return [(hidden, hidden, 4), (hidden, feed_forward, 1), (feed_forward, hidden, 1)]


def per_second(call: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``call``: the median call time over at least ``seconds`` (and at least 5 calls)."""
    once = timed(call, 1)
    return 1.0 / timed(call, max(5, math.ceil(seconds / max(once, 1e-9))))


def relative_error(result: object, exact: np.ndarray) -> float:
    """The largest difference of ``result`` (a PyTorch tensor or ONNX Runtime's list of outputs) to ``exact``, relative
    to ``exact``'s largest magnitude.

    Example:
        >>> relative_error([np.array([1.0, 2.1])], np.array([1.0, 2.0]))
        0.05
    """
    array = result.float().numpy() if isinstance(result, torch.Tensor) else np.asarray(result[0])  # type: ignore[index]
    return round(float(np.max(np.abs(array - exact)) / np.max(np.abs(exact))), 12)


def onnx_product(weight: np.ndarray, folder: Path, int8: bool, threads: int) -> Callable[[np.ndarray], object]:
    """``x @ weight`` as a one-MatMul ONNX graph in an ONNX Runtime session (int8: quantized as ``compress --int8``)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inputs, outputs = weight.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "weight"], ["y"])],
        "product",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", inputs])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", outputs])],
        [numpy_helper.from_array(weight, "weight")],
    )
    path = folder / f"{inputs}x{outputs}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    if int8:
        quantized = path.with_suffix(".int8.onnx")
        quantize_graph(path, quantized)
        path = quantized
    session = onnx_session(path, threads)
    return lambda x: session.run(["y"], {"x": x})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks kernels", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="32 and 256 rows, 0.05 s a product")
    parser.add_argument("--rows", type=comma_list(int), default=[32, 256, 1024], help="tokens per product")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="PyTorch and ONNX Runtime threads")
    parser.add_argument("--seconds", type=float, default=0.5, help="time spent on each product (at least)")
    parser.add_argument("--output", default=None, help="results name (default kernels, or kernels_quick)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.seconds = [32, 256], 0.05
    if any(rows < 1 for rows in args.rows) or args.threads < 1 or args.seconds <= 0:
        parser.error("--rows and --threads must be at least 1, --seconds above 0")
    torch.set_num_threads(args.threads)
    config = json.loads((resolve_backbone(BACKBONE)[0] / "config.json").read_text())
    products = layer_products(config["hidden_size"], config["intermediate_size"])
    rec = Recorder("kernels", "cpu")
    generator = np.random.default_rng(13)
    with tempfile.TemporaryDirectory(prefix="finechain-kernels-") as scratch:
        weights = {(k, n): (generator.standard_normal((k, n)) * 0.05).astype(np.float32) for k, n, _ in products}
        runs: dict[str, dict[tuple[int, int], Callable[[np.ndarray], object]]] = {}
        for name, dtype in (("PyTorch fp32", torch.float32), ("PyTorch bf16", torch.bfloat16)):
            runs[name] = {}
            for shape, weight in weights.items():
                w = torch.from_numpy(weight).to(dtype)
                runs[name][shape] = lambda x, w=w, dtype=dtype: torch.matmul(torch.from_numpy(x).to(dtype), w)
        for name, int8 in (("ONNX Runtime fp32", False), ("ONNX Runtime int8", True)):
            runs[name] = {shape: onnx_product(weight, Path(scratch), int8, args.threads) for shape, weight in weights.items()}
        with torch.inference_mode():
            for rows in args.rows:
                layer_macs = sum(rows * k * n * times for k, n, times in products)
                for runtime in RUNTIMES:
                    layer_seconds = 0.0
                    for k, n, times in products:
                        x = generator.standard_normal((rows, k)).astype(np.float32)
                        run = runs[runtime][(k, n)]
                        rate = per_second(lambda x=x, run=run: run(x), args.seconds)
                        variant = f"{runtime}, {rows} x {k} x {n}"
                        rec.add("matmul", "finechain", variant, "gmacs_per_second", rows * k * n * rate / 1e9, "billion multiply-adds/s")
                        rec.add(
                            "matmul",
                            "finechain",
                            variant,
                            "max_relative_error",
                            relative_error(run(x), x @ weights[(k, n)]),
                            "largest difference to NumPy's fp32 product / its largest value",
                        )
                        layer_seconds += times / rate
                    rec.add(
                        "matmul",
                        "finechain",
                        f"{runtime}, {rows} rows, one layer",
                        "gmacs_per_second",
                        layer_macs / layer_seconds / 1e9,
                        "billion multiply-adds/s",
                    )
    print(f"wrote {rec.save(args.output or ('kernels_quick' if args.quick else 'kernels'), vars(args))}")


if __name__ == "__main__":
    main()
