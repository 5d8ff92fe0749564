"""How a multi-label task should choose its decision thresholds on validation data, on real multi-label sets.

Two multi-label tasks made from the public tagging sets, each text's labels being the types of the spans it holds:
SNIPS utterances and the slot types they contain (39 labels, most of them rare: a voice assistant's set of "what is
asked for"), and CoNLL-2003 sentences and the entity types they mention (4 labels). Per seed, a sample of training
texts is drawn, a tenth of it cut off as validation (as the default ``dev_fraction`` would), one multi-label task trained
with all defaults, and its validation and test outputs kept; then each way of choosing thresholds is fitted on the
validation outputs and scored on the test file (all 700 SNIPS test utterances, all 3,453 CoNLL-2003 test sentences):

- per label, each label's threshold maximising its own validation F1 (finechain's choice before 2026-12-06; since,
  its choice for a task selected on macro-F1);
- 0.5 for every label (no calibration);
- one threshold shared by every label, maximising validation micro-F1 (finechain's choice since 2026-12-06 for a task
  selected on micro-F1, the default);
- per label where the validation set holds at least 5 examples of the label, the shared threshold elsewhere.

Micro-F1 (the task's default metric) and macro-F1 (where rare labels count as much as common ones) are recorded. The
training is the same for every way; only the thresholds differ.

    python -m benchmarks thresholds [--quick] [--sets snips,conll2003] [--sizes 500,2000] [--seeds 13,14,15]
"""

from __future__ import annotations

import argparse
import random
import time
from collections import Counter

import numpy as np

from benchmarks.common import BACKBONE, Recorder, comma_list
from benchmarks.tagging_defaults import read_set
from finechain import Chain, TaskSpec, TrainingConfig
from finechain.heads.multilabel import MultiLabelHead

SETS = {"snips": "SNIPS slot types per utterance", "conll2003": "CoNLL-2003 entity types per sentence"}
WAYS = {
    "per-label": "per label (each label's best validation F1)",
    "fixed": "0.5 for every label",
    "shared": "one shared threshold (best validation micro-F1)",
    "per-label-5": "per label with 5+ validation examples, else the shared one",
}


def span_types(tags: list[str]) -> list[str]:
    """The types of the spans a BIO tag list marks, sorted (none for a text without spans).

    Example:
        >>> span_types(["O", "B-city", "I-city", "B-date"])
        ['city', 'date']
    """
    return sorted({tag[2:] for tag in tags if tag[:2] in ("B-", "I-")})


def multilabel_rows(name: str, part: str) -> tuple[list[str], list[list[str]]]:
    """The texts of one file of a tagging set and, as each text's labels, the span types it holds."""
    words, tags = read_set(name, part)
    return [" ".join(w) for w in words], [span_types(t) for t in tags]


def taught(labels: list[str], known: set[str]) -> list[str]:
    """The labels of a text that the training sample teaches (the others are neither trained nor scored).

    Example:
        >>> taught(["city", "poi"], {"city", "date"})
        ['city']
    """
    return [label for label in labels if label in known]


def thresholds(way: str, head: MultiLabelHead, outputs: list[np.ndarray], truth: np.ndarray) -> list[float]:
    """The thresholds that ``way`` chooses from a task's validation outputs and their 0/1 truth ``[texts, labels]``:
    the head's own calibration for micro-F1 (``shared``, the default since 2026-12-06) or macro-F1 (``per-label``)."""
    if way == "fixed":
        return [0.5] * truth.shape[1]
    head.calibrate(outputs, truth, "micro_f1")  # one threshold for every label, the best for micro-F1
    shared = list(head.thresholds)
    if way == "shared":
        return shared
    head.calibrate(outputs, truth, "macro_f1")  # each label's own best F1
    if way == "per-label":
        return list(head.thresholds)
    return [own if truth[:, j].sum() >= 5 else shared[j] for j, own in enumerate(head.thresholds)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks thresholds", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="300 training texts, 200 test texts, min_steps 20, one seed, SNIPS only")
    parser.add_argument("--sets", type=comma_list(str, SETS), default=list(SETS))
    parser.add_argument(
        "--sizes", type=comma_list(int), default=[500, 2000], help="training texts drawn (a tenth of them cut off as validation)"
    )
    parser.add_argument("--seeds", type=comma_list(int), default=[13, 14, 15])
    parser.add_argument("--output", default=None, help="results name (default thresholds, or thresholds_quick)")
    args = parser.parse_args(argv)
    min_steps, test_size = TrainingConfig().min_steps, None
    if args.quick:
        args.sets, args.sizes, args.seeds, min_steps, test_size = ["snips"], [300], args.seeds[:1], 20, 200
    name = args.output or ("thresholds_quick" if args.quick else "thresholds")
    rec = Recorder("thresholds", "cpu")
    for set_name in args.sets:
        train_texts, train_labels = multilabel_rows(set_name, "train")
        test_texts, test_labels = multilabel_rows(set_name, "test")
        test_texts, test_labels = test_texts[:test_size], test_labels[:test_size]
        for size in args.sizes:
            for seed in args.seeds:
                rec.variant_suffix = f", seed {seed}"
                drawn = random.Random(seed).sample(range(len(train_texts)), min(size, len(train_texts)))
                cut = len(drawn) // 10
                train = drawn[cut:]
                counts = Counter(label for i in train for label in train_labels[i])
                known = {label for label, n in counts.items() if n >= 2}  # what the sample teaches (twice); the rest is not scored
                dev = ([train_texts[i] for i in drawn[:cut]], [taught(train_labels[i], known) for i in drawn[:cut]])
                chain = Chain.from_backbone(BACKBONE)
                spec = TaskSpec(name=set_name, type="multilabel")
                started = time.perf_counter()
                training = TrainingConfig(seed=seed, min_steps=min_steps)
                texts, labels = [train_texts[i] for i in train], [taught(train_labels[i], known) for i in train]
                chain.fit(spec, training, texts=texts, labels=labels, dev=dev, progress=False)
                seconds = time.perf_counter() - started
                head: MultiLabelHead = chain.tasks[set_name].head
                dev_outputs = chain.engine.outputs(dev[0], [set_name])[0][set_name]
                test_outputs = chain.engine.outputs(test_texts, [set_name])[0][set_name]
                dev_truth = head.targets(dev[1]).astype(int)
                test_truth = head.targets([taught(labels, known) for labels in test_labels])
                unit = f"{SETS[set_name]}: {len(train)} training texts, {cut} validation, {len(test_texts)} test, {len(known)} labels"
                for way, variant in WAYS.items():
                    head.thresholds = thresholds(way, head, dev_outputs, dev_truth)
                    scores = head.score(test_outputs, test_truth)
                    rec.add(set_name, "finechain", f"{variant}, {size} texts", "micro_f1", scores["micro_f1"], unit)
                    rec.add(set_name, "finechain", f"{variant}, {size} texts", "macro_f1", scores["macro_f1"], unit)
                rec.add(set_name, "finechain", f"training, {size} texts", "train_seconds", seconds, "s")
                rec.save(name, vars(args))  # after each run: a stop keeps them
    print(f"wrote {rec.save(name, vars(args))}")


if __name__ == "__main__":
    main()
