"""ONNX runtimes on this CPU: the sharing benchmark's four-task chain, exported (``finechain export``), run by ONNX
Runtime (finechain's backend) and by OpenVINO on the same graphs: fp32, ONNX Runtime's dynamic int8 (``finechain
compress --int8``), static int8 (ONNX Runtime's QDQ quantizer, activations calibrated on training texts) and, where
NNCF is installed, static int8 as ``finechain compress --int8 --static`` makes it (NNCF, OpenVINO's quantizer). Whether
OpenVINO or static quantization would make a faster backend on this machine. Next to them, fp32 and dynamic int8 graphs traced with
PyTorch's fused attention (SDPA, as ``finechain export`` wrote graphs before it traced plain attention), to measure
what the plain form gains.

    python -m benchmarks runtimes [--quick] [--speed-texts 256] [--threads 2]

Speed: raw session calls (no tokenising or decoding) on the same length-sorted padded batches of SST-2 and AG News
texts, batch 1 and 32, the best of two rounds. Quality: the largest difference of any task's outputs to ONNX Runtime
fp32 on one batch of 32 texts (the heads are trained briefly, 200 examples per task, 1 epoch: only speed and that
difference are measured, not accuracy). OpenVINO is an optional package (``pip install openvino``). Last, the exported
engine on one graph and on a graph per task with ONNX Runtime's idle threads spinning or not (``ExportedChain``'s
``spinning``; by default off where sessions take turns).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

from benchmarks.common import BACKBONE, Recorder, scratch_folder
from benchmarks.sharing import task_specs
from finechain import Chain, TrainingConfig
from finechain.data.tokens import pad_rows
from finechain.export.onnx import export_onnx
from finechain.export.quantize import quantize_int8
from finechain.export.static_int8 import quantize_static_int8
from finechain.inference import Engine
from finechain.inference.exported import PACKED_INPUTS, ExportedChain, graph_feeds, onnx_session
from finechain.inference.openvino_session import OpenVinoSession
from finechain.spec import JointConfig

Batch = tuple[np.ndarray, np.ndarray]
HIDDEN = 384  # the backbone's width (all-MiniLM-L6-v2): what a batch's packing is planned with


def sorted_batches(ids: list[list[int]], size: int, pad_id: int = 0) -> list[Batch]:
    """Token id lists sorted by length and cut into padded ``(input_ids, attention_mask)`` batches of ``size``.

    Example:
        >>> [a.shape for a, _ in sorted_batches([[1, 2, 3], [4], [5, 6]], 2)]
        [(2, 2), (1, 3)]
    """
    ordered = sorted(ids, key=len)
    return [pad_rows(ordered[start : start + size], pad_id) for start in range(0, len(ordered), size)]


def rate(run: Callable[[np.ndarray, np.ndarray], Any], batches: list[Batch], rounds: int = 2) -> float:
    """Texts per second of ``run`` over ``batches`` (after one warm-up call), the best of ``rounds``."""
    run(*batches[0])
    texts = sum(len(a) for a, _ in batches)
    best = 0.0
    for _ in range(rounds):
        started = time.perf_counter()
        for ids, mask in batches:
            run(ids, mask)
        best = max(best, texts / (time.perf_counter() - started))
    return best


def static_int8(source: Path, target: Path, calibration: list[Batch]) -> float:
    """ONNX Runtime's static QDQ quantization of ``source``'s MatMuls (weights int8 per channel, activations uint8 with
    ranges calibrated on ``calibration``) into ``target``; returns the seconds it took."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else graph_feeds(PACKED_INPUTS, *batch, HIDDEN)

    started = time.perf_counter()
    target.mkdir(parents=True)
    prepared = target / "prepared.onnx"
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    quantize_static(
        str(prepared),
        str(target / "model.onnx"),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul"],
    )
    prepared.unlink()
    return time.perf_counter() - started


@contextlib.contextmanager
def sdpa_as_traced() -> Any:
    """Within it, ``finechain export`` traces the layers' attention as PyTorch's SDPA (the exporter writes its NaN guard
    for rows that see no token into every layer), as it did before it traced plain attention."""
    with mock.patch("finechain.export.onnx._plain_attention", lambda graph: contextlib.nullcontext()):
        yield


def onnx_runtime(graph: Path, threads: int) -> Callable[[np.ndarray, np.ndarray], list[np.ndarray]]:
    """Every output of ``graph`` for a batch, by an ONNX Runtime session as finechain's backend makes one (``threads``)."""
    session = onnx_session(graph, threads)
    names = [o.name for o in session.get_outputs()]
    inputs = [i.name for i in session.get_inputs()]
    return lambda ids, mask: session.run(names, graph_feeds(inputs, ids, mask, HIDDEN))


def openvino(graph: Path, threads: int) -> Callable[[np.ndarray, np.ndarray], list[np.ndarray]]:
    """Every output of ``graph`` for a batch, by OpenVINO's CPU plugin as finechain's OpenVINO runtime runs it."""
    session = OpenVinoSession(graph, threads)
    return lambda ids, mask: session.run(session.outputs, graph_feeds(session.inputs, ids, mask, HIDDEN))


def spinning(rec: Recorder, chain: Chain, work: Path, texts: list[str], threads: int, rounds: int) -> None:
    """The exported engine (tokenising included, batch 32, all four tasks) on one graph and on a graph per task, fp32 and
    dynamic int8, with ONNX Runtime's idle threads spinning (its default) or sleeping, all sessions alive in one process
    as in a server; the best of ``rounds`` rounds with every variant in turn."""
    export_onnx(chain, work / "per-task", per_task=True)
    quantize_int8(work / "per-task", work / "per-task-int8")
    folders = {
        "one graph, fp32": work / "fp32",
        "one graph, dynamic int8": work / "dynamic",
        "a graph per task, fp32": work / "per-task",
        "a graph per task, dynamic int8": work / "per-task-int8",
    }
    engines = {
        f"ONNX Runtime engine, {name}, {'spinning' if spin else 'no spinning'}": Engine(
            ExportedChain(folder, threads=threads, spinning=spin), batch_size=32
        )
        for name, folder in folders.items()
        for spin in (True, False)
    }
    best: dict[str, float] = {}
    for _ in range(rounds):
        for variant, engine in engines.items():
            tasks = engine.model.task_names()
            engine.outputs(texts[:32], tasks)
            started = time.perf_counter()
            engine.outputs(texts, tasks)
            best[variant] = max(best.get(variant, 0.0), len(texts) / (time.perf_counter() - started))
    for variant, speed in best.items():
        rec.add("all four", "finechain", f"{variant}, batch 32", "samples_per_second", speed, "texts/s (4 tasks, engine, no decoding)")
        print(f"{variant}: {speed:.1f} texts/s", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks runtimes", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="64 speed texts, OpenVINO only if installed")
    parser.add_argument("--speed-texts", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--output", default=None, help="results name (default runtimes, or runtimes_quick)")
    args = parser.parse_args(argv)
    if args.quick:
        args.speed_texts = 64
    import importlib.util

    has_openvino = importlib.util.find_spec("openvino") is not None
    has_nncf = importlib.util.find_spec("nncf") is not None
    if not has_openvino and not args.quick:
        parser.error("OpenVINO is not installed: pip install openvino (or run --quick without it)")
    rec = Recorder("runtimes", "cpu")
    work = scratch_folder("finechain-runtimes-")
    specs, evaluation = task_specs(200, 50, args.speed_texts)
    chain = Chain.from_backbone(BACKBONE, split=4)
    chain.fit_joint(specs, TrainingConfig(epochs=1, seed=args.seed, min_steps=0), JointConfig(epochs=1), progress=False)
    export_onnx(chain, work / "fp32")
    quantize_int8(work / "fp32", work / "dynamic")
    with sdpa_as_traced():
        export_onnx(chain, work / "fp32-sdpa")
    quantize_int8(work / "fp32-sdpa", work / "dynamic-sdpa")
    texts = [t for name in ("sst2", "agnews") for t in evaluation[name][0][: args.speed_texts // 2]]
    ids, _ = ExportedChain(work / "fp32").encode(texts)
    calibration = sorted_batches(ids[::4], 16)  # a quarter of the texts, spread over their lengths
    seconds = static_int8(work / "fp32" / "model.onnx", work / "static", calibration)
    rec.add("all four", "finechain", "static int8 (QDQ), calibration", "seconds", seconds, f"s on {len(ids[::4])} texts")
    if has_nncf:
        started = time.perf_counter()
        quantize_static_int8(work / "fp32", work / "nncf", texts=texts[::4])
        seconds = time.perf_counter() - started
        unit = f"s on {len(texts[::4])} texts, checks included"
        rec.add("all four", "finechain", "static int8 (NNCF), calibration", "seconds", seconds, unit)
    graphs = {
        "fp32": work / "fp32",
        "dynamic int8 (finechain compress --int8)": work / "dynamic",
        "static int8 (QDQ, calibrated)": work / "static",
        **({"static int8 (NNCF, finechain compress --int8 --static)": work / "nncf"} if has_nncf else {}),
        "fp32, attention traced as SDPA (before)": work / "fp32-sdpa",
        "dynamic int8, attention traced as SDPA (before)": work / "dynamic-sdpa",
    }
    runtimes = {"ONNX Runtime": onnx_runtime} | ({"OpenVINO": openvino} if has_openvino else {})
    probe = sorted_batches(ids, 32)[len(ids) // 64]  # one batch of 32 from the middle of the lengths
    reference = onnx_runtime(work / "fp32" / "model.onnx", args.threads)(*probe)
    for weights, folder in graphs.items():
        for runtime, make in runtimes.items():
            run = make(folder / "model.onnx", args.threads)
            variant = f"{runtime}, {weights}"
            change = max(float(np.abs(a - b).max()) for a, b in zip(run(*probe), reference, strict=True))
            rec.add("all four", "finechain", variant, "max_abs_diff", change, "largest output change vs ONNX Runtime fp32")
            for size in (1, 32):
                speed = rate(run, sorted_batches(ids, size))
                rec.add("all four", "finechain", f"{variant}, batch {size}", "samples_per_second", speed, "texts/s (4 tasks, graph only)")
            print(f"{variant}: done", flush=True)
    spinning(rec, chain, work, texts, args.threads, rounds=1 if args.quick else 3)
    print(f"wrote {rec.save(args.output or ('runtimes_quick' if args.quick else 'runtimes'), vars(args))}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
