"""The peer side of ``python -m benchmarks export-embeddings``: sentence-transformers' own backends (PyTorch fp32,
ONNX fp32, ONNX dynamic int8 as ``export_dynamic_quantized_onnx_model`` writes it) on the same texts and threads.

Run by that suite in a Python that has ``sentence-transformers`` with its ONNX extra (``optimum-onnx[onnxruntime]``,
which pins an older transformers than finechain's, hence a separate environment)::

    PEER/bin/python benchmarks/st_onnx_peer.py BACKBONE_DIR TEXTS.json OUT_DIR --threads 2 --repeats 3

Only the standard library, NumPy and sentence-transformers are imported (not finechain). Writes ``OUT_DIR/peer.json``
(per variant: texts per second at batch 1 and 32, the library versions) and ``OUT_DIR/<variant>.npy`` (the batch-32
embeddings, L2-normalised, for the suite to compare).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def texts_per_second(model: Any, texts: list[str], batch: int, repeats: int) -> tuple[float, np.ndarray]:
    """Median texts per second of ``model.encode`` over ``repeats`` timed runs (after one warm-up), and the vectors."""
    vectors = model.encode(texts[: batch * 2], batch_size=batch, normalize_embeddings=True)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        vectors = model.encode(texts, batch_size=batch, normalize_embeddings=True)
        times.append(time.perf_counter() - start)
    return len(texts) / statistics.median(times), np.asarray(vectors, dtype=np.float32)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("backbone")
    parser.add_argument("texts")
    parser.add_argument("out")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-one-texts", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()

    import onnxruntime as ort
    import sentence_transformers
    import torch
    from sentence_transformers import SentenceTransformer, export_dynamic_quantized_onnx_model

    torch.set_num_threads(args.threads)
    texts = json.loads(Path(args.texts).read_text(encoding="utf-8"))
    out = Path(args.out)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    results: dict[str, Any] = {"versions": {"sentence-transformers": sentence_transformers.__version__, "onnxruntime": ort.__version__}}
    with tempfile.TemporaryDirectory(prefix="st-peer-") as work:
        folder = Path(shutil.copytree(args.backbone, Path(work) / "backbone"))  # the ONNX files are written next to it
        exporter = SentenceTransformer(str(folder), backend="onnx", device="cpu")
        exporter.save_pretrained(str(folder))  # onnx/model.onnx
        export_dynamic_quantized_onnx_model(exporter, "avx2", str(folder))  # onnx/model_quint8_avx2.onnx
        variants = {
            "SentenceTransformer.encode, PyTorch fp32": {"backend": "torch"},
            "ONNX backend, fp32": {"backend": "onnx", "model_kwargs": {"file_name": "onnx/model.onnx", "session_options": options}},
            "ONNX backend, int8 (export_dynamic_quantized_onnx_model, avx2)": {
                "backend": "onnx",
                "model_kwargs": {"file_name": "onnx/model_quint8_avx2.onnx", "session_options": options},
            },
        }
        for i, (variant, kwargs) in enumerate(variants.items()):
            model = SentenceTransformer(str(folder), device="cpu", **kwargs)
            model.max_seq_length = args.max_length
            one, _ = texts_per_second(model, texts[: args.batch_one_texts], 1, args.repeats)
            many, vectors = texts_per_second(model, texts, 32, args.repeats)
            np.save(out / f"{i}.npy", vectors, allow_pickle=False)
            results[variant] = {"batch_1": one, "batch_32": many, "vectors": f"{i}.npy"}
    (out / "peer.json").write_text(json.dumps(results, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
