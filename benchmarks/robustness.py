"""Robustness and training options: accuracy on clean evaluation texts and on the same texts with typos, for the
default recipe and each training option that aims at robustness or at small data.

Variants (each a spec option, everything else the default): the default; adversarial training on the trunk states
(``adversarial: fgm``, and ``pgd`` with 3 steps, epsilon 0.05); staged training (``head_epochs: 1``); layer-wise
learning-rate decay (``layer_decay: 0.8``); offline augmentation (``augment: 2``: two EDA copies of each training
text). Typos are generated with a fixed seed: each word of three or more letters
gets, with probability ``--typo-rate``, one edit (two adjacent letters swapped, a letter dropped, doubled or replaced
by a keyboard neighbour). SST-2 (1,000 training sentences, the dev set) and AG News (1,000 training texts, a seeded
2,000-text sample of test); each seed draws its own training sample.

    python -m benchmarks robustness [--quick] [--tasks sst2,agnews] [--seeds 13,14] [--typo-rate 0.2] [--append]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from typing import Any

from benchmarks.common import BACKBONE, CLASSIFICATION_SETS, DATASETS, RESULTS, Recorder, appended_settings, comma_list
from finechain import Chain, TaskSpec, TrainingConfig
from finechain.data.readers import read_examples

VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "adversarial: fgm": {"adversarial": "fgm"},
    "adversarial: pgd (3 steps)": {"adversarial": "pgd", "adversarial_steps": 3},
    "head_epochs: 1 (staged)": {"head_epochs": 1},
    "layer_decay: 0.8": {"layer_decay": 0.8},
    "augment: 2 (EDA copies)": {"augment": 2},
}
TRAIN_SIZE = {"sst2": 1_000, "agnews": 1_000}
EVAL_SIZE = {"agnews": 2_000}
ROWS = ["qwertyuiop", "asdfghjkl", "zxcvbnm"]


def _neighbours() -> dict[str, str]:
    """Each letter's neighbours on a QWERTY keyboard (same row, one step left or right)."""
    out = {}
    for row in ROWS:
        for i, letter in enumerate(row):
            out[letter] = row[max(0, i - 1) : i] + row[i + 1 : i + 2]
    return out


NEIGHBOURS = _neighbours()


def typo(word: str, rng: random.Random) -> str:
    """One random edit of ``word``: swap two adjacent letters, drop one, double one, or hit a neighbouring key.

    Example:
        >>> typo("movie", random.Random(1)) != "movie"
        True
    """
    i = rng.randrange(len(word) - 1)
    kind = rng.choice(["swap", "drop", "double", "neighbour"])
    if kind == "swap" and word[i] != word[i + 1]:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind == "drop":
        return word[:i] + word[i + 1 :]
    if kind == "double":
        return word[: i + 1] + word[i] + word[i + 1 :]
    low = word[i].lower()
    if low in NEIGHBOURS:
        return word[:i] + rng.choice(NEIGHBOURS[low]) + word[i + 1 :]
    return word[:i] + word[i + 1 :]


def with_typos(text: str, rate: float, rng: random.Random) -> str:
    """``text`` with each word of three or more letters given one :func:`typo` with probability ``rate``.

    Example:
        >>> with_typos("a fine film", 0.0, random.Random(0))
        'a fine film'
    """
    words = text.split(" ")
    return " ".join(typo(w, rng) if len(w) >= 3 and w.isalpha() and rng.random() < rate else w for w in words)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks robustness", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="120 training texts, 100 evaluation texts, min_steps 20, one seed")
    parser.add_argument("--tasks", type=comma_list(str, ["sst2", "agnews"]), default=["sst2", "agnews"])
    parser.add_argument("--seeds", type=comma_list(int), default=[13, 14])
    parser.add_argument("--variants", type=comma_list(str, VARIANTS), default=list(VARIANTS))
    parser.add_argument("--typo-rate", type=float, default=0.2)
    parser.add_argument("--append", action="store_true", help="keep the results file's records of other tasks")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    train_size, eval_size, min_steps = dict(TRAIN_SIZE), dict(EVAL_SIZE), TrainingConfig().min_steps
    if args.quick:
        train_size, eval_size, args.seeds, min_steps = dict.fromkeys(TRAIN_SIZE, 120), dict.fromkeys(TRAIN_SIZE, 100), args.seeds[:1], 20
    name = args.output or ("robustness_quick" if args.quick else "robustness")
    rec = Recorder("robustness", "cpu")
    settings: dict[str, Any] = vars(args)
    if args.append and (RESULTS / f"{name}.json").exists():
        rec.records = [r for r in json.loads((RESULTS / f"{name}.json").read_text()) if r["task"] not in args.tasks]
        settings = appended_settings(name, vars(args))
    for task in args.tasks:
        evaluation = read_examples(DATASETS / CLASSIFICATION_SETS[task][1])
        if eval_size.get(task, len(evaluation)) < len(evaluation):
            evaluation = random.Random(0).sample(evaluation, eval_size[task])
        clean = [e.text for e in evaluation]
        noisy = [with_typos(text, args.typo_rate, random.Random(i)) for i, text in enumerate(clean)]
        gold = [str(e.label) for e in evaluation]
        unit = f"{CLASSIFICATION_SETS[task][2]}, {len(clean)} texts; typos: {args.typo_rate:.0%} of words"
        rows = read_examples(DATASETS / CLASSIFICATION_SETS[task][0])
        for seed in args.seeds:
            picked = random.Random(seed).sample(rows, train_size[task])
            texts, labels = [r.text for r in picked], [str(r.label) for r in picked]
            rec.variant_suffix = f", seed {seed}"
            for variant in args.variants:
                chain = Chain.from_backbone(BACKBONE)
                training = TrainingConfig(seed=seed, min_steps=min_steps, **VARIANTS[variant])
                start = time.perf_counter()
                chain.fit(TaskSpec(name=task), training, texts=texts, labels=labels, progress=False)
                seconds = time.perf_counter() - start
                rec.add(task, "finechain", variant, "accuracy", chain.score(task, clean, gold)["accuracy"], unit)
                rec.add(task, "finechain", variant, "typo_accuracy", chain.score(task, noisy, gold)["accuracy"], unit)
                rec.add(task, "finechain", variant, "train_seconds", seconds, "s")
    print(f"wrote {rec.save(name, settings)}")


if __name__ == "__main__":
    main()
