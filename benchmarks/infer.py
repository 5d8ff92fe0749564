"""Inference: throughput of one chain answering 1 and 4 tasks vs four separate fine-tuned-size models
(plain transformers and ``pipeline``), and peak memory of each way of serving them. CPU by default.

    python -m benchmarks infer [--quick] [--texts 1000] [--repeats 3] [--split auto]

Speed does not depend on the weights' values, so heads here are freshly initialised: every system
has exactly the architecture and size of the fine-tuned models it stands for.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import DATASETS, Recorder, timed
from finechain.data.readers import read_examples

TASKS = {"sentiment": ("classification", 2), "topic": ("classification", 4), "intent": ("classification", 77), "entities": ("tagging", 9)}
NER_TAGS = ["B-LOC", "B-MISC", "B-ORG", "B-PER", "I-LOC", "I-MISC", "I-ORG", "I-PER", "O"]


def load_texts(n: int) -> list[str]:
    """A fixed mix of real short (SST-2, Banking77) and longer (AG News) texts."""
    pools = [read_examples(DATASETS / f) for f in ("sst2/dev.csv", "banking77/test.csv", "agnews/test.csv")]
    return [pools[i % 3][i // 3].text for i in range(n)]


def build_chain(split: str, tasks: list[str]):
    from finechain import Chain
    from finechain.model.heads import head_type

    chain = Chain.from_backbone(split=split)
    torch.manual_seed(0)
    for name in tasks:
        kind, n = TASKS[name]
        labels = NER_TAGS if kind == "tagging" else [f"{name}_{i}" for i in range(n)]
        chain.attach(name, chain.new_task(head_type(kind), labels))
    return chain


def build_separate(tasks: list[str]):
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from finechain.model.backbone import resolve_backbone

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    path = str(resolve_backbone("all-MiniLM-L6-v2")[0])
    tokenizer = AutoTokenizer.from_pretrained(path)
    models = {}
    for name in tasks:
        kind, n = TASKS[name]
        cls = AutoModelForTokenClassification if kind == "tagging" else AutoModelForSequenceClassification
        models[name] = cls.from_pretrained(path, num_labels=n, use_safetensors=True).eval()
    return tokenizer, models


def run_separate(tokenizer: Any, models: dict[str, Any], texts: list[str], batch_size: int = 64) -> None:
    """Plain transformers: each model tokenises and runs its own batches (in input order, padded)."""
    with torch.inference_mode():
        for model in models.values():
            for start in range(0, len(texts), batch_size):
                batch = tokenizer(texts[start : start + batch_size], padding=True, truncation=True, max_length=128, return_tensors="pt")
                model(**batch).logits.argmax(-1)


def build_pipelines(tokenizer: Any, models: dict[str, Any]):
    from transformers import pipeline

    return [
        pipeline("token-classification", model=model, tokenizer=tokenizer, device=-1, aggregation_strategy="simple")
        if TASKS[name][0] == "tagging"
        else pipeline("text-classification", model=model, tokenizer=tokenizer, device=-1)
        for name, model in models.items()
    ]


def memory_child(kind: str, n_tasks: int, split: str, texts: list[str]) -> float:
    """Peak RSS (MB) of a process that loads the system and predicts ``texts``."""
    tasks = list(TASKS)[:n_tasks]
    if kind == "finechain":
        build_chain(split, tasks).predict(texts)
    else:
        tokenizer, models = build_separate(tasks)
        run_separate(tokenizer, models, texts)
    # VmHWM belongs to this process's own address space; ru_maxrss would inherit the parent's peak across fork+exec.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks infer", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="200 texts, 1 repeat")
    parser.add_argument("--texts", type=int, default=1200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--split", default="auto")
    parser.add_argument("--no-pipeline", action="store_true", help="skip the transformers.pipeline peer (slow)")
    parser.add_argument("--memory-child", nargs=2, metavar=("SYSTEM", "TASKS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.texts, args.repeats = 200, 1
    texts = load_texts(args.texts)
    if args.memory_child:
        print(json.dumps({"rss_mb": memory_child(args.memory_child[0], int(args.memory_child[1]), args.split, texts[:200])}))
        return

    rec = Recorder("infer", "cpu")
    chain = build_chain(args.split, list(TASKS))
    variant = f"split={chain.split}"
    tokenizer, models = build_separate(list(TASKS))
    n = len(texts)
    for n_tasks in (1, 4):
        names = list(TASKS)[:n_tasks]
        label = f"{n_tasks} task{'s' if n_tasks > 1 else ''}"
        ours = timed(lambda names=names: chain.predict(texts, tasks=names), args.repeats)
        rec.add(label, "finechain", variant, "samples_per_second", n / ours, "texts/s")
        subset = {k: models[k] for k in names}
        theirs = timed(lambda subset=subset: run_separate(tokenizer, subset, texts), args.repeats)
        rec.add(label, "hf-separate", "plain transformers, one model per task", "samples_per_second", n / theirs, "texts/s")
        if not args.no_pipeline:
            pipes = build_pipelines(tokenizer, subset)
            piped = timed(lambda pipes=pipes: [list(p(texts, batch_size=64)) for p in pipes], args.repeats)
            rec.add(label, "hf-pipeline", "transformers.pipeline, one per task", "samples_per_second", n / piped, "texts/s")
    for system in ("finechain", "hf-separate"):
        for n_tasks in (1, 4):
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "benchmarks",
                    "infer",
                    "--memory-child",
                    system,
                    str(n_tasks),
                    "--split",
                    args.split,
                    "--texts",
                    "200",
                ],
                capture_output=True,
                text=True,
                check=True,
                cwd=Path(__file__).resolve().parent.parent,
            )
            rss = json.loads(done.stdout.strip().splitlines()[-1])["rss_mb"]
            rec.add(
                f"{n_tasks} task{'s' if n_tasks > 1 else ''}",
                system,
                variant if system == "finechain" else "one model per task",
                "rss_mb",
                rss,
                "MB",
            )
    print(f"wrote {rec.save(extra={k: v for k, v in vars(args).items() if k != 'memory_child'})}")


if __name__ == "__main__":
    main()
