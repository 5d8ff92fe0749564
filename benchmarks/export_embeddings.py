"""Sentence embeddings exported: finechain's backbone embeddings (``Chain.embed``) run by PyTorch fp32 and from
``finechain export --embeddings`` by ONNX Runtime fp32 and int8 (``finechain compress --int8``), against
sentence-transformers' own backends on the same backbone, texts and threads: ``SentenceTransformer.encode`` (PyTorch
fp32), its ONNX backend (fp32) and its dynamic int8 ONNX model (``export_dynamic_quantized_onnx_model``, ``avx2``).

    python -m benchmarks export-embeddings [--quick] [--texts 872] [--threads 2] [--peer-python PEER/bin/python]

Speed: texts per second through each library's whole ``encode`` / ``embed`` (tokenising included) at batch 1 (the
first 64 texts) and 32 (all), the median of three timed runs after a warm-up. Quality: the cosine of every text's
vector to finechain's PyTorch fp32 vector (lowest and mean). Texts: SST-2 dev sentences.

The peer needs sentence-transformers with ``optimum-onnx[onnxruntime]``, which pins transformers < 4.58 (finechain
uses a newer one), so it runs in its own environment (``benchmarks/st_onnx_peer.py``), made by
``bash scripts/st-onnx-peer-env.sh /tmp/stpeer``.

Without ``--peer-python`` only finechain's rows are measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import BACKBONE, Recorder
from benchmarks.zero_shot import evaluation_rows
from finechain import Chain
from finechain.export.onnx import export_onnx
from finechain.export.quantize import quantize_int8
from finechain.inference import Engine
from finechain.inference.exported import ExportedChain
from finechain.model.backbone import resolve_backbone

PEER_SCRIPT = Path(__file__).with_name("st_onnx_peer.py")


def texts_per_second(embed: Callable[[list[str], int], np.ndarray], texts: list[str], batch: int, repeats: int) -> tuple[float, np.ndarray]:
    """Median texts per second of ``embed(texts, batch)`` over ``repeats`` timed runs after a warm-up, and its vectors."""
    vectors = embed(texts[: batch * 2], batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        vectors = embed(texts, batch)
        times.append(time.perf_counter() - start)
    return len(texts) / statistics.median(times), vectors


def cosines(vectors: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Each row's cosine to the same row of ``reference``.

    Example:
        >>> cosines(np.array([[1.0, 0.0], [1.0, 1.0]]), np.array([[2.0, 0.0], [0.0, 1.0]])).round(3).tolist()
        [1.0, 0.707]
    """
    a = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    b = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks export-embeddings", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="64 texts, one timed run")
    parser.add_argument("--texts", type=int, default=872, help="SST-2 dev sentences (872: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peer-python", default=None, help="a Python with sentence-transformers and optimum-onnx (see above)")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.texts, args.repeats = 64, 1
    torch.set_num_threads(args.threads)
    texts, _ = evaluation_rows("sst2", args.texts)
    one = texts[:64]
    rec = Recorder("export_embeddings", "cpu")
    unit = "texts/s (tokenising included)"

    def measure(system: str, variant: str, embed: Callable[[list[str], int], np.ndarray]) -> np.ndarray:
        for size, sample in ((1, one), (32, texts)):
            speed, vectors = texts_per_second(embed, sample, size, args.repeats)
            rec.add("embeddings", system, f"{variant}, batch {size}", "samples_per_second", speed, unit)
        return vectors

    chain = Chain.from_backbone(BACKBONE)
    chain.precision = "fp32"
    reference = measure("finechain", "PyTorch fp32 (Chain.embed)", lambda t, b: chain.embed(t, batch_size=b))
    found: dict[tuple[str, str], np.ndarray] = {("finechain", "PyTorch fp32 (Chain.embed)"): reference}
    with tempfile.TemporaryDirectory(prefix="embeddings-") as work:
        export_onnx(chain, Path(work) / "onnx", embeddings=True)
        quantize_int8(Path(work) / "onnx", Path(work) / "int8")
        for variant, folder in (("ONNX Runtime fp32 (export --embeddings)", "onnx"), ("ONNX Runtime int8 (compress --int8)", "int8")):
            engine = Engine(ExportedChain(Path(work) / folder, threads=args.threads))

            def embed(t: list[str], b: int, engine: Engine = engine) -> np.ndarray:
                engine.batch_size = b
                return engine.embed(t)

            found[("finechain", variant)] = measure("finechain", variant, embed)
        if args.peer_python:
            (Path(work) / "texts.json").write_text(json.dumps(texts), encoding="utf-8")
            backbone, _ = resolve_backbone(BACKBONE)
            command = [args.peer_python, str(PEER_SCRIPT), str(backbone), str(Path(work) / "texts.json"), work]
            command += ["--threads", str(args.threads), "--repeats", str(args.repeats), "--max-length", str(chain.model.max_length)]
            subprocess.run(command, check=True, timeout=3600)
            peer = json.loads((Path(work) / "peer.json").read_text(encoding="utf-8"))
            args.peer_versions = peer.pop("versions")
            for variant, values in peer.items():
                for size in (1, 32):
                    rec.add(
                        "embeddings",
                        "sentence-transformers",
                        f"{variant}, batch {size}",
                        "samples_per_second",
                        values[f"batch_{size}"],
                        unit,
                    )
                found[("sentence-transformers", variant)] = np.load(Path(work) / values["vectors"], allow_pickle=False)
    for (system, variant), vectors in found.items():
        agreement = cosines(vectors, reference)
        rec.add("embeddings", system, variant, "min_cosine", float(agreement.min()), "cosine to finechain PyTorch fp32")
        rec.add("embeddings", system, variant, "mean_cosine", float(agreement.mean()), "cosine to finechain PyTorch fp32")
    print(f"wrote {rec.save(args.output or ('export_embeddings_quick' if args.quick else 'export_embeddings'), vars(args))}")


if __name__ == "__main__":
    main()
