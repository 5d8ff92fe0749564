"""Small data: a new task trained on a few hundred labelled examples. finechain's default (``min_steps: 300``: each
epoch repeats small data until the run makes 300 optimizer steps) against one pass per epoch (``min_steps: 0``,
the behaviour before), with ``--splits auto,0`` also every layer tuned, and the Hugging Face Trainer's full
fine-tune on the same examples (its standard recipe: lr 5e-5, batch 32, 3 epochs). Banking77 with a few examples
per intent (77 classes), SST-2 with a few hundred sentences; several seeds, each its own sample.

    python -m benchmarks small-data [--quick] [--per-class 8] [--sst2-examples 200] [--seeds 13,14,15] [--min-steps 300]
        [--splits auto,0] [--no-one-pass] [--no-peer]
"""

from __future__ import annotations

import argparse
import random
import time
from collections import defaultdict
from types import SimpleNamespace

from benchmarks.common import BACKBONE, CLASSIFICATION_SETS, DATASETS, Recorder, comma_list
from benchmarks.peers import hf_sequence_classification
from finechain import Chain, TaskSpec, TrainingConfig
from finechain.data.readers import Example, read_examples
from finechain.model.backbone import resolve_backbone


def sample(task: str, per_class: int, examples: int, seed: int) -> list[Example]:
    """``per_class`` examples of every label (Banking77), or ``examples`` at random (SST-2), drawn with ``seed``."""
    if task == "sst2":
        return random.Random(seed).sample(read_examples(DATASETS / CLASSIFICATION_SETS[task][0]), examples)
    return per_class_sample(task, per_class, seed)


def per_class_sample(task: str, per_class: int, seed: int) -> list[Example]:
    """``per_class`` training examples of every label of ``task`` (all of a label's, where it has fewer: 4 of
    Banking77's 77 have 35-61), drawn with ``seed``, shuffled."""
    rows = read_examples(DATASETS / CLASSIFICATION_SETS[task][0])
    rng = random.Random(seed)
    by_label: dict[str, list[Example]] = defaultdict(list)
    for row in rows:
        by_label[str(row.label)].append(row)
    picked = [row for label in sorted(by_label) for row in rng.sample(by_label[label], min(per_class, len(by_label[label])))]
    rng.shuffle(picked)
    return picked


def split_depth(text: str) -> int | str:
    """A chain split as written on the command line: ``auto`` or a number of trunk layers.

    Example:
        >>> split_depth("auto"), split_depth("0")
        ('auto', 0)
    """
    return text if text == "auto" else int(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks small-data", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="2 examples per intent, 60 SST-2 sentences, min_steps 40, 200 test texts, one seed"
    )
    parser.add_argument("--per-class", type=int, default=8, help="Banking77 examples per intent")
    parser.add_argument("--sst2-examples", type=int, default=200)
    parser.add_argument("--seeds", type=comma_list(int), default=[13, 14, 15])
    parser.add_argument("--min-steps", type=int, default=TrainingConfig().min_steps, help="compared with 0 (default: the product's)")
    parser.add_argument(
        "--splits",
        type=comma_list(split_depth),
        default=["auto"],
        help="the chain's split for the default-steps variant: auto, or trunk layers (0 = every layer tuned); several to compare",
    )
    parser.add_argument("--no-one-pass", action="store_true", help="leave out the one-pass-per-epoch variant (min_steps 0)")
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", default=None, help="results file name (default small_data, or small_data_quick)")
    args = parser.parse_args(argv)
    limit = None
    if args.quick:
        args.per_class, args.sst2_examples, args.seeds, args.min_steps, limit = 2, 60, args.seeds[:1], 40, 200
    default = TrainingConfig().min_steps
    steps = f"min_steps {args.min_steps}{' (default)' if args.min_steps == default else ''}"
    variants = {steps + ("" if split == "auto" else f", split {split}"): (args.min_steps, split) for split in args.splits}
    if not args.no_one_pass:
        variants["min_steps 0 (one pass per epoch)"] = (0, "auto")
    rec = Recorder("small_data", args.device)
    backbone, _ = resolve_backbone(BACKBONE)
    for seed in args.seeds:
        rec.variant_suffix = f", seed {seed}"
        for task in ("banking77", "sst2"):
            rows = sample(task, args.per_class, args.sst2_examples, seed)
            texts, labels = [r.text for r in rows], [str(r.label) for r in rows]
            evaluation = read_examples(DATASETS / CLASSIFICATION_SETS[task][1])[:limit]
            eval_texts, eval_labels = [e.text for e in evaluation], [str(e.label) for e in evaluation]
            unit = f"{CLASSIFICATION_SETS[task][2]} accuracy ({len(rows)} training examples)"
            for variant, (min_steps, split) in variants.items():
                chain = Chain.from_backbone(BACKBONE, split=split).to(args.device)
                start = time.perf_counter()
                chain.fit(TaskSpec(name=task), TrainingConfig(seed=seed, min_steps=min_steps), texts=texts, labels=labels, progress=False)
                seconds = time.perf_counter() - start
                rec.add(task, "finechain", variant, "accuracy", chain.score(task, eval_texts, eval_labels)["accuracy"], unit)
                rec.add(task, "finechain", variant, "train_seconds", seconds, "s")
            if not args.no_peer:  # the peer needs no validation data: it trains on every sampled example
                train = SimpleNamespace(texts=texts, labels=labels)
                run = hf_sequence_classification(
                    backbone, train, {"eval": (eval_texts, eval_labels)}, sorted(set(labels)), epochs=3, seed=seed, device=args.device
                )
                rec.add(task, "hf-trainer", "full fine-tune, 3 epochs", "accuracy", run.scores["eval"], unit)
                rec.add(task, "hf-trainer", "full fine-tune, 3 epochs", "train_seconds", run.seconds, "s")
    print(f"wrote {rec.save(args.output or ('small_data_quick' if args.quick else 'small_data'), vars(args))}")


if __name__ == "__main__":
    main()
