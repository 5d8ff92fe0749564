"""Inference: throughput of one chain answering 1 and 4 tasks vs separate fine-tuned-size models (plain
transformers and ``pipeline``), at all threads and at 1 thread; sentence-embedding throughput vs
sentence-transformers ``encode``. Peak memory is the ``memory`` suite.

    python -m benchmarks infer [--quick] [--texts 1200] [--repeats 3] [--split auto] [--device cpu|cuda] [--output infer_gpu]

Speed does not depend on the weights' values, so heads here are freshly initialised: every system
has exactly the architecture and size of the fine-tuned models it stands for.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import torch

from benchmarks.common import BACKBONE, DATASETS, Recorder, timed
from finechain.data.readers import read_examples
from finechain.model.precision import autocast_context, resolve_precision

TASKS = {"sentiment": ("classification", 2), "topic": ("classification", 4), "intent": ("classification", 77), "entities": ("tagging", 9)}
NER_TAGS = ["B-LOC", "B-MISC", "B-ORG", "B-PER", "I-LOC", "I-MISC", "I-ORG", "I-PER", "O"]


def load_texts(n: int) -> list[str]:
    """A fixed mix of real short (SST-2, Banking77) and longer (AG News) texts."""
    pools = [read_examples(DATASETS / f) for f in ("sst2/dev.csv", "banking77/test.csv", "agnews/test.csv")]
    return [pools[i % 3][i // 3].text for i in range(n)]


def build_chain(split: str, tasks: list[str]):
    from finechain import Chain
    from finechain.heads import head_type

    chain = Chain.from_backbone(BACKBONE, split=split)
    torch.manual_seed(0)
    for name in tasks:
        kind, n = TASKS[name]
        labels = NER_TAGS if kind == "tagging" else [f"{name}_{i}" for i in range(n)]
        chain.attach(name, chain.model.new_task(head_type(kind)(labels)))
    return chain


def build_separate(tasks: list[str], device: str = "cpu"):
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from finechain.model.backbone import resolve_backbone

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    path = str(resolve_backbone(BACKBONE)[0])
    tokenizer = AutoTokenizer.from_pretrained(path)
    models = {}
    for name in tasks:
        kind, n = TASKS[name]
        cls = AutoModelForTokenClassification if kind == "tagging" else AutoModelForSequenceClassification
        models[name] = cls.from_pretrained(path, num_labels=n, use_safetensors=True).eval().to(device)
    return tokenizer, models


def run_separate(tokenizer: Any, models: dict[str, Any], texts: list[str], batch_size: int = 64) -> None:
    """Plain transformers: each model tokenises and runs its own batches (in input order, padded)."""
    with torch.inference_mode():
        for model in models.values():
            for start in range(0, len(texts), batch_size):
                batch = tokenizer(texts[start : start + batch_size], padding=True, truncation=True, max_length=128, return_tensors="pt")
                model(**batch.to(model.device)).logits.argmax(-1).cpu()


def build_pipelines(tokenizer: Any, models: dict[str, Any], device: str = "cpu"):
    from transformers import pipeline

    index = 0 if device.startswith("cuda") else -1
    return [
        pipeline("token-classification", model=model, tokenizer=tokenizer, device=index, aggregation_strategy="simple")
        if TASKS[name][0] == "tagging"
        else pipeline("text-classification", model=model, tokenizer=tokenizer, device=index)
        for name, model in models.items()
    ]


def embedding_peer(texts: list[str], repeats: int, device: str, rec: Recorder) -> None:
    """Sentence embeddings: ``Chain.embed`` vs sentence-transformers ``encode`` on the same texts and backbone."""
    from sentence_transformers import SentenceTransformer

    from finechain import Chain
    from finechain.model.backbone import resolve_backbone

    path = str(resolve_backbone(BACKBONE)[0])
    chain = Chain.from_backbone(path).to(device)
    model = SentenceTransformer(path, device=device)
    model.max_seq_length = chain.max_length  # same truncation for both (its config says 256, finechain's default is 128)
    theirs_vectors = torch.from_numpy(model.encode(texts, batch_size=64, convert_to_numpy=True))
    n = len(texts)
    for precision in ("auto", "fp32") if resolve_precision(device) != "fp32" else ("auto",):
        chain.precision = precision
        agreement = torch.nn.functional.cosine_similarity(torch.from_numpy(chain.embed(texts)), theirs_vectors).min()
        ours = timed(lambda: chain.embed(texts), repeats)
        variant = f"Chain.embed, {resolve_precision(device, precision)}"
        rec.add("embeddings", "finechain", variant, "samples_per_second", n / ours, "texts/s")
        rec.add("embeddings", "finechain", variant, "min_cosine_to_peer", float(agreement), "cosine")
    theirs = timed(lambda: model.encode(texts, batch_size=64), repeats)
    rec.add("embeddings", "sentence-transformers", "SentenceTransformer.encode, fp32", "samples_per_second", n / theirs, "texts/s")


STAGES = {
    "prepare": "prepare (tokenise with word offsets, long-text windows)",
    "forward": "forward (trunk once, each task's tail, outputs copied back)",
    "decode": "decode (labels, scores, tags, entities)",
}


def stage_seconds(chain: Any, texts: list[str], names: list[str], repeats: int) -> dict[str, float]:
    """Where ``chain.predict`` spends its time, as its engine times it: each stage's median over ``repeats`` calls."""
    chain.predict(texts, tasks=names)  # warm-up
    seen: dict[str, list[float]] = {stage: [] for stage in STAGES}
    for _ in range(repeats):
        chain.engine.times.reset()
        chain.predict(texts, tasks=names)
        for stage in STAGES:
            seen[stage].append(getattr(chain.engine.times, stage))
    return {label: statistics.median(seen[stage]) for stage, label in STAGES.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks infer", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="64 texts, 1 repeat")
    parser.add_argument("--texts", type=int, default=1200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--split", default="auto")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-pipeline", action="store_true", help="skip the transformers.pipeline peer (slow)")
    parser.add_argument("--output", default=None, help="results name (default: infer, or infer_quick); e.g. infer_gpu")
    args = parser.parse_args(argv)
    if args.quick:
        args.texts, args.repeats = 64, 1
    texts = load_texts(args.texts)
    rec = Recorder("infer", args.device)
    chain = build_chain(args.split, list(TASKS)).to(args.device)
    variant = f"split={chain.split}"
    tokenizer, models = build_separate(list(TASKS), args.device)
    n = len(texts)
    threads = torch.get_num_threads()
    bf16 = resolve_precision(args.device, "auto") == "bf16"
    for n_tasks in (1, 4):
        names = list(TASKS)[:n_tasks]
        label = f"{n_tasks} task{'s' if n_tasks > 1 else ''}"
        for precision in ("auto", "fp32") if bf16 else ("auto",):
            chain.precision = precision
            ours = timed(lambda names=names: chain.predict(texts, tasks=names), args.repeats)
            rec.add(
                label, "finechain", f"{variant}, {resolve_precision(args.device, precision)}", "samples_per_second", n / ours, "texts/s"
            )
            if n_tasks > 1:
                for stage, seconds in stage_seconds(chain, texts, names, args.repeats).items():
                    stage = f"{stage}, {resolve_precision(args.device, precision)}"
                    rec.add(f"{label}: seconds per stage", "finechain", stage, "seconds", seconds, "s")
        chain.precision = "auto"
        if args.device == "cpu" and threads > 1 and not args.quick:
            torch.set_num_threads(1)  # what one worker per core gets (e.g. several server processes)
            single = timed(lambda names=names: chain.predict(texts, tasks=names), args.repeats)
            torch.set_num_threads(threads)
            rec.add(
                label, "finechain", f"{variant}, {resolve_precision(args.device)}, 1 thread", "samples_per_second", n / single, "texts/s"
            )
        subset = {k: models[k] for k in names}
        theirs = timed(lambda subset=subset: run_separate(tokenizer, subset, texts), args.repeats)
        rec.add(label, "hf-separate", "plain transformers, one model per task, fp32", "samples_per_second", n / theirs, "texts/s")
        if bf16:

            def autocast_separate(subset: dict[str, Any] = subset) -> None:
                with autocast_context(args.device, "bf16"):
                    run_separate(tokenizer, subset, texts)

            theirs = timed(autocast_separate, args.repeats)
            rec.add(
                label, "hf-separate", "plain transformers, one model per task, bf16 autocast", "samples_per_second", n / theirs, "texts/s"
            )
        if not args.no_pipeline:
            pipes = build_pipelines(tokenizer, subset, args.device)
            piped = timed(lambda pipes=pipes: [list(p(texts, batch_size=64)) for p in pipes], args.repeats)
            rec.add(label, "hf-pipeline", "transformers.pipeline, one per task, fp32", "samples_per_second", n / piped, "texts/s")
    embedding_peer(texts, args.repeats, args.device, rec)
    print(f"wrote {rec.save(args.output or ('infer_quick' if args.quick else 'infer'), vars(args))}")


if __name__ == "__main__":
    main()
