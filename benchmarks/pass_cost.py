"""What one more inference pass costs on a CPU, in tokens: the constant behind how texts are cut into batches.

    python -m benchmarks pass-cost [--quick] [--threads 1] [--split 4] [--repeats 5] [--backend pytorch|onnx]

On a CPU a pass over ``rows`` texts padded to ``width`` tokens takes about ``a + b * rows * width`` seconds: ``b`` the
time per token computed (padding included), ``a`` what a pass costs whatever its size (reading every layer's weights,
the Python calls of the trunk, each branch and head). Their ratio ``a / b``, a pass's cost counted in tokens, decides
whether cutting a batch of mixed lengths into two saves time (each runner's ``pass_tokens``, used by
:func:`finechain.data.tokens.inference_batches`). This suite times passes of the four-task chain of the serving
benchmark (``Engine.forward``, freshly initialised heads: speed does not depend on the weights; ``--backend onnx``:
its ``finechain export``) over a grid of rows and widths, fits ``a`` and ``b`` by least squares on relative errors
(every pass size counts alike, not only the largest), and records them with the largest relative error of the fit.
Per worker of a server one thread is the default (``--threads``).
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import Recorder, comma_list, timed
from benchmarks.infer import TASKS, build_chain
from finechain.inference.engine import Row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks pass-cost", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a 3 x 3 grid, one repeat")
    parser.add_argument("--threads", type=int, default=1, help="PyTorch threads (a server worker's share of the cores)")
    parser.add_argument("--split", default="4", help="trunk depth (4: the serving benchmark's four-task chain)")
    parser.add_argument("--rows", type=comma_list(int), default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--widths", type=comma_list(int), default=[16, 32, 64, 128])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--backend", default="pytorch", choices=["pytorch", "onnx", "onnx-int8"], help="the chain, its ONNX export, or that quantized"
    )
    parser.add_argument("--output", default=None, help="results name (default pass_cost, or pass_cost_quick)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.widths, args.repeats = [1, 4, 16], [16, 32, 64], 1
    work = Path(tempfile.mkdtemp(prefix="finechain-pass-cost-"))
    try:
        measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure(args: argparse.Namespace, work: Path) -> None:
    """Time the grid, fit, save."""
    torch.set_num_threads(args.threads)
    chain = build_chain(args.split, list(TASKS))
    engine = chain.engine
    variant = f"4 tasks, split={chain.split}, {args.threads} thread(s), PyTorch"
    if args.backend != "pytorch":
        from finechain.export.onnx import export_onnx
        from finechain.export.quantize import quantize_int8
        from finechain.inference import Engine
        from finechain.inference.exported import ExportedChain

        folder = work / "onnx"
        export_onnx(chain, folder)
        if args.backend == "onnx-int8":
            quantize_int8(folder, work / "int8")
            folder = work / "int8"
        engine = Engine(ExportedChain(folder, threads=args.threads))
        variant = variant.replace("PyTorch", "ONNX Runtime int8" if args.backend == "onnx-int8" else "ONNX Runtime")
    rec = Recorder("pass_cost", "cpu")
    tokens, seconds = [], []
    for rows, width in itertools.product(args.rows, args.widths):
        batch = [Row(ids=[101] + [1000] * (width - 2) + [102], tasks=tuple(TASKS)) for _ in range(rows)]
        engine.batch_size = rows  # one pass: every row has the same width
        took = timed(lambda batch=batch: engine.forward(batch), args.repeats)
        tokens.append(rows * width)
        seconds.append(took)
        rec.add("pass", "finechain", f"{variant}, {rows} rows x {width} tokens", "pass_ms", 1000 * took, "ms")
    took = np.asarray(seconds)
    design = np.stack([np.ones(len(tokens)), np.asarray(tokens, dtype=np.float64)], axis=1)
    (a, b), *_ = np.linalg.lstsq(design / took[:, None], np.ones(len(took)), rcond=None)  # relative errors
    worst = float(np.max(np.abs(design @ np.array([a, b]) - took) / took))
    rec.add("fit", "finechain", variant, "pass_ms", 1000 * a, "ms per pass (a)")
    rec.add("fit", "finechain", variant, "token_ms", 1000 * b, "ms per token computed (b)")
    rec.add("fit", "finechain", variant, "pass_tokens", a / b, "tokens (a / b)")
    rec.add("fit", "finechain", variant, "max_relative_error", worst, "of the fit over the grid")
    print(f"wrote {rec.save(args.output or ('pass_cost_quick' if args.quick else 'pass_cost'), vars(args))}")


if __name__ == "__main__":
    main()
