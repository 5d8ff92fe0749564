"""Zero-shot tasks: a task defined by its label names or descriptions, before any example, and the same task later
trained on a few examples per class.

Without labels: finechain's ``zero_shot`` task (label names, then label descriptions in a template written once per
dataset, before any result was seen) against sentence-transformers doing the same with the same backbone (encode
texts and prompts, cosine, argmax) and the majority class. With 8 examples per class: the zero-shot task trained on
them (it starts from the label embeddings) against a plain classification task trained on the same examples (the
default recipe, a random head). SST-2 (dev), AG News (a seeded 2,000-text sample of test), Banking77 (test).

    python -m benchmarks zero-shot [--quick] [--seeds 13,14] [--per-class 8] [--tasks sst2,agnews,banking77] [--no-train]
"""

from __future__ import annotations

import argparse
import random
import time
from collections import Counter
from typing import Any

from benchmarks.common import BACKBONE, CLASSIFICATION_SETS, DATASETS, Recorder, comma_list
from benchmarks.small_data import per_class_sample
from finechain import Chain, TaskSpec, TrainingConfig
from finechain.data.readers import read_examples
from finechain.evaluate.metrics import classification_metrics
from finechain.heads.zero_shot import ZeroShotOptions, label_prompts
from finechain.model.backbone import resolve_backbone

# What a user would write for each dataset: label descriptions and one template (fixed before any run; not tuned).
DESCRIBED: dict[str, dict[str, Any]] = {
    "sst2": {"labels": {"0": "negative", "1": "positive"}, "templates": ["This movie review is {}."]},
    "agnews": {
        "labels": {"World": "world news", "Sports": "sports", "Business": "business", "Sci/Tech": "science and technology"},
        "templates": ["This news article is about {}."],
    },
    "banking77": {"templates": ["A bank customer asks about {}."]},  # the 77 intent names, underscores read as spaces
}
# label names alone; SST-2's labels are 0 and 1, so its names are the words
NAMES: dict[str, list[str] | dict[str, str]] = {"sst2": {"0": "negative", "1": "positive"}}
EVAL_SAMPLE = {"agnews": 2000}


def evaluation_rows(task: str, limit: int | None) -> tuple[list[str], list[str]]:
    """The evaluation texts and labels: all of them, or a seeded sample (AG News; ``limit`` in quick runs)."""
    rows = read_examples(DATASETS / CLASSIFICATION_SETS[task][1])
    size = min(limit or EVAL_SAMPLE.get(task, len(rows)), len(rows))
    if size < len(rows):
        rows = random.Random(0).sample(rows, size)
    return [r.text for r in rows], [str(r.label) for r in rows]


def head_options(task: str, variant: str, labels: list[str]) -> dict[str, Any]:
    """The zero-shot head options of a variant: ``names`` (label names only) or ``described``."""
    if variant == "names":
        return {"labels": NAMES.get(task, labels)}
    return {"labels": labels, **DESCRIBED[task]}  # a dataset's own descriptions replace the plain label list


def peer_zero_shot(model: Any, texts: list[str], options: dict[str, Any]) -> tuple[list[str], float]:
    """sentence-transformers doing the same zero-shot classification: predictions and texts per second."""
    import numpy as np

    parsed = ZeroShotOptions.model_validate(options)
    names = list(parsed.labels)
    prompts = label_prompts(parsed)
    start = time.perf_counter()
    vectors = model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    per_label = [model.encode(group, normalize_embeddings=True, convert_to_numpy=True).mean(0) for group in prompts]
    label_vectors = np.stack([v / np.linalg.norm(v) for v in per_label])
    predicted = (vectors @ label_vectors.T).argmax(1)
    return [names[i] for i in predicted], len(texts) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks zero-shot", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="200 evaluation texts, 2 examples per class, min_steps 20, one seed")
    parser.add_argument("--tasks", type=comma_list(str, CLASSIFICATION_SETS), default=list(CLASSIFICATION_SETS))
    parser.add_argument("--seeds", type=comma_list(int), default=[13, 14])
    parser.add_argument("--per-class", type=int, default=8)
    parser.add_argument("--no-train", action="store_true", help="only the zero-shot part")
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    limit, min_steps = None, TrainingConfig().min_steps
    if args.quick:
        limit, args.per_class, args.seeds, min_steps = 200, 2, args.seeds[:1], 20
    rec = Recorder("zero_shot", "cpu")
    backbone, _ = resolve_backbone(BACKBONE)
    peer = None
    if not args.no_peer:
        from sentence_transformers import SentenceTransformer

        peer = SentenceTransformer(str(backbone), device="cpu")
    for task in args.tasks:
        texts, gold = evaluation_rows(task, limit)
        labels = sorted(set(gold) | {str(r.label) for r in read_examples(DATASETS / CLASSIFICATION_SETS[task][0])})
        unit = f"{CLASSIFICATION_SETS[task][2]}, {len(texts)} texts"
        majority = Counter(str(r.label) for r in read_examples(DATASETS / CLASSIFICATION_SETS[task][0])).most_common(1)[0][0]
        scores = classification_metrics([labels.index(g) for g in gold], [labels.index(majority)] * len(gold), labels)
        rec.add(task, "finechain", "majority class (no model)", "accuracy", scores["accuracy"], unit)
        rec.add(task, "finechain", "majority class (no model)", "macro_f1", scores["macro_f1"], unit)
        for variant in ("names", "described"):
            options = head_options(task, variant, labels)
            chain = Chain.from_backbone(BACKBONE)
            chain.fit(TaskSpec(name=task, type="zero_shot", head=options), progress=False)
            chain.precision = "fp32"  # the peer's precision on a CPU (the default is bf16 where the CPU has bf16 units)
            start = time.perf_counter()
            predicted = [p[task].label for p in chain.predict(texts)]
            rate = len(texts) / (time.perf_counter() - start)
            names = chain.tasks[task].head.labels
            scores = classification_metrics([names.index(g) for g in gold], [names.index(p) for p in predicted], names)
            name = f"zero-shot, label {variant}"
            rec.add(task, "finechain", name, "accuracy", scores["accuracy"], unit)
            rec.add(task, "finechain", name, "macro_f1", scores["macro_f1"], unit)
            rec.add(task, "finechain", name, "samples_per_second", rate, "texts/s")
            if peer is not None:
                predicted, rate = peer_zero_shot(peer, texts, options)
                scores = classification_metrics([names.index(g) for g in gold], [names.index(p) for p in predicted], names)
                rec.add(task, "sentence-transformers", name, "accuracy", scores["accuracy"], unit)
                rec.add(task, "sentence-transformers", name, "macro_f1", scores["macro_f1"], unit)
                rec.add(task, "sentence-transformers", name, "samples_per_second", rate, "texts/s")
        if args.no_train:
            continue
        for seed in args.seeds:
            rows = per_class_sample(task, args.per_class, seed)
            train_texts, train_labels = [r.text for r in rows], [str(r.label) for r in rows]
            training = TrainingConfig(seed=seed, min_steps=min_steps)
            for variant, spec in (
                ("classification, random head", TaskSpec(name=task)),
                ("zero-shot head + examples", TaskSpec(name=task, type="zero_shot", head=head_options(task, "described", labels))),
            ):
                chain = Chain.from_backbone(BACKBONE)
                start = time.perf_counter()
                chain.fit(spec, training, texts=train_texts, labels=train_labels, progress=False)
                seconds = time.perf_counter() - start
                scores = chain.score(task, texts, gold)
                name = f"{variant}, {args.per_class} per class, seed {seed}"
                rec.add(task, "finechain", name, "accuracy", scores["accuracy"], unit)
                rec.add(task, "finechain", name, "macro_f1", scores["macro_f1"], unit)
                rec.add(task, "finechain", name, "train_seconds", seconds, "s")
    print(f"wrote {rec.save(args.output or ('zero_shot_quick' if args.quick else 'zero_shot'), vars(args))}")


if __name__ == "__main__":
    main()
