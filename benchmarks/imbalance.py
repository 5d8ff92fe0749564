"""Robust defaults on imbalanced, small data: variants of the public sets where one class is rare.

Two variants made from the public sets (the same class shares in the training sample and in the evaluation set):
AG News with 1,000 training texts where Business is 9% (the other three share the rest), and SST-2 with 600
sentences where negative is 10%. On each, with several seeds (each its own sample): finechain's default (the best
check picked on macro-F1 when the classes are imbalanced), the default before it (picked on accuracy), class-weighted
losses (``class_weights: balanced`` and ``sqrt``), the focal loss, every layer tuned (``split 0``: the chain's
default for one tagging task), and the Hugging Face Trainer's full fine-tune on the
same examples (lr 5e-5, batch 32, 3 epochs). Macro-F1 is the headline (a rare class counts as much as a common one);
accuracy and training time are recorded too. With ``--tune-trials N``, also ``finechain tune`` (N trials on the
validation split cut from the training sample), then the best spec trained and scored like the others; its time is
the search's plus the final training's.

    python -m benchmarks imbalance [--quick] [--seeds 13,14] [--tasks agnews,sst2] [--no-peer] [--tune-trials 0] [--no-variants]
        [--variants default (macro-F1 selection when imbalanced),split 0 (every layer tuned),...]
"""

from __future__ import annotations

import argparse
import csv
import random
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from benchmarks.common import BACKBONE, CLASSIFICATION_SETS, DATASETS, Recorder, comma_list
from benchmarks.peers import hf_sequence_classification
from finechain import Chain, TaskSpec, TrainingConfig
from finechain.data.readers import Example, read_examples
from finechain.evaluate.metrics import classification_metrics
from finechain.model.backbone import resolve_backbone

# task -> (training texts, the rare class, its share of training and evaluation texts, its name)
SETTINGS = {"agnews": (1_000, "Business", 0.09, "Business"), "sst2": (600, "0", 0.10, "negative")}
# variant -> (head options, spec metric, split): what the variant changes from finechain's defaults
VARIANTS: dict[str, tuple[dict[str, Any], str | None, int | str]] = {
    "default (macro-F1 selection when imbalanced)": ({}, None, "auto"),
    "accuracy selection (the default before)": ({}, "accuracy", "auto"),
    "class_weights: balanced": ({"class_weights": "balanced"}, None, "auto"),
    "class_weights: sqrt": ({"class_weights": "sqrt"}, None, "auto"),
    "loss: focal (gamma 2)": ({"loss": "focal"}, None, "auto"),
    "split 0 (every layer tuned)": ({}, None, 0),
}


def skewed(rows: list[Example], size: int, rare: str, share: float, rng: random.Random) -> list[Example]:
    """``size`` rows (all of them when ``size`` is 0) where the ``rare`` label is ``share`` of the rows and the other
    labels split the rest evenly (or as evenly as the rows allow)."""
    by_label: dict[str, list[Example]] = defaultdict(list)
    for row in rows:
        by_label[str(row.label)].append(row)
    others = sorted(label for label in by_label if label != rare)
    if not size:  # the largest such sample of these rows
        common = min(len(by_label[label]) for label in others)
        size = min(int(common * len(others) / (1 - share)), int(len(by_label[rare]) / share))
    rare_count = round(size * share)
    per_other = (size - rare_count) // len(others)
    picked = rng.sample(by_label[rare], rare_count) + [row for label in others for row in rng.sample(by_label[label], per_other)]
    rng.shuffle(picked)
    return picked


def tuned(task: str, texts: list[str], labels: list[str], seed: int, trials: int, min_steps: int) -> tuple[Chain, float]:
    """``finechain tune`` on these examples (a spec over a CSV of them), then the best spec trained; the chain and the
    seconds of both."""
    from finechain.jobs.training import train_chain
    from finechain.jobs.tuning import tune_spec

    with tempfile.TemporaryDirectory(prefix="finechain-tune-") as folder:
        root = Path(folder)
        with (root / "train.csv").open("w", encoding="utf-8", newline="") as handle:
            csv.writer(handle).writerows([("text", "label"), *zip(texts, labels, strict=True)])
        spec = f"training: {{seed: {seed}, min_steps: {min_steps}}}\ntasks:\n  - {{name: {task}, train: train.csv}}\n"
        (root / "spec.yaml").write_text(spec)
        start = time.perf_counter()
        result = tune_spec(root / "spec.yaml", trials=trials, out=root / "best.yaml")
        train_chain(result.spec_path, root / "chain", progress=False)
        seconds = time.perf_counter() - start
        return Chain.from_pretrained(root / "chain"), seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks imbalance", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="300 AG News / 200 SST-2 texts, 300 evaluation texts, min_steps 40, one seed")
    parser.add_argument("--seeds", type=comma_list(int), default=[13, 14])
    parser.add_argument("--tasks", type=comma_list(str, SETTINGS), default=list(SETTINGS))
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--tune-trials", type=int, default=0, help="also finechain tune with this many trials (0: not run)")
    parser.add_argument("--no-variants", action="store_true", help="skip the fixed variants (e.g. to run only the search)")
    parser.add_argument("--variants", type=comma_list(str, VARIANTS), default=list(VARIANTS), help="the fixed variants to run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", default=None, help="results file name (default imbalance, or imbalance_quick)")
    args = parser.parse_args(argv)
    sizes = {task: size for task, (size, *_) in SETTINGS.items()}
    min_steps, evaluation_size = TrainingConfig().min_steps, 0
    if args.quick:
        sizes, args.seeds, min_steps, evaluation_size = {"agnews": 300, "sst2": 200}, args.seeds[:1], 40, 300
    rec = Recorder("imbalance", args.device)
    backbone, _ = resolve_backbone(BACKBONE)
    for seed in args.seeds:
        rec.variant_suffix = f", seed {seed}"
        for task in args.tasks:
            _, rare, share, rare_name = SETTINGS[task]
            train_file, eval_file, eval_name = CLASSIFICATION_SETS[task]
            rng = random.Random(seed)
            rows = skewed(read_examples(DATASETS / train_file), sizes[task], rare, share, rng)
            evaluation = skewed(read_examples(DATASETS / eval_file), evaluation_size, rare, share, random.Random(0))
            texts, labels = [r.text for r in rows], [str(r.label) for r in rows]
            eval_texts, eval_labels = [e.text for e in evaluation], [str(e.label) for e in evaluation]
            unit = f"{eval_name} ({len(evaluation)} texts, {rare_name} {share:.0%}; {len(rows)} training texts)"
            for variant in [] if args.no_variants else args.variants:
                head, metric, split = VARIANTS[variant]
                chain = Chain.from_backbone(BACKBONE, split=split).to(args.device)
                spec = TaskSpec(name=task, head=head, metric=metric)
                start = time.perf_counter()
                chain.fit(spec, TrainingConfig(seed=seed, min_steps=min_steps), texts=texts, labels=labels, progress=False)
                seconds = time.perf_counter() - start
                scores = chain.score(task, eval_texts, eval_labels)
                rec.add(task, "finechain", variant, "macro_f1", scores["macro_f1"], unit)
                rec.add(task, "finechain", variant, "accuracy", scores["accuracy"], unit)
                rec.add(task, "finechain", variant, "train_seconds", seconds, "s")
            if args.tune_trials:
                variant = f"finechain tune ({args.tune_trials} trials), best spec trained"
                chain, seconds = tuned(task, texts, labels, seed, args.tune_trials, min_steps)
                scores = chain.score(task, eval_texts, eval_labels)
                rec.add(task, "finechain", variant, "macro_f1", scores["macro_f1"], unit)
                rec.add(task, "finechain", variant, "accuracy", scores["accuracy"], unit)
                rec.add(task, "finechain", variant, "train_seconds", seconds, "s")
            if not args.no_peer:  # the peer needs no validation data: it trains on every sampled example
                names = sorted(set(labels))
                run = hf_sequence_classification(
                    backbone, SimpleNamespace(texts=texts, labels=labels), {"eval": (eval_texts, eval_labels)}, names, epochs=3, seed=seed
                )
                index = {name: i for i, name in enumerate(names)}
                scores = classification_metrics([index[y] for y in eval_labels], [index[y] for y in run.predictions["eval"]], names)
                rec.add(task, "hf-trainer", "full fine-tune, 3 epochs", "macro_f1", scores["macro_f1"], unit)
                rec.add(task, "hf-trainer", "full fine-tune, 3 epochs", "accuracy", run.scores["eval"], unit)
                rec.add(task, "hf-trainer", "full fine-tune, 3 epochs", "train_seconds", run.seconds, "s")
            rec.save(args.output or ("imbalance_quick" if args.quick else "imbalance"), vars(args))  # after each set: a stop keeps them
    print(f"wrote {rec.save(args.output or ('imbalance_quick' if args.quick else 'imbalance'), vars(args))}")


if __name__ == "__main__":
    main()
