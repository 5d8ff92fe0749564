"""Tagging with all defaults on small and out-of-genre data: how far the default chain is from a full fine-tune.

Release tests on a hidden NER set from a specialised domain found the default chain 2.6 entity-F1 points behind full
fine-tuning. This suite makes the nearest public stand-ins and measures the same comparison on them: a few hundred to
a few thousand training sentences of a tagging task, either CoNLL-2003 (news NER) or SNIPS slots (spoken commands to a
voice assistant: another genre, 39 slot types, many of them names of songs, films and places), each seed its own
sample; the dev file (first ``--dev`` sentences) for selection, scores on the test file (with ``--evaluate-on
holdout``: on 2,000 training sentences outside each sample, to choose a setting before any test run).

    python -m benchmarks tagging-defaults [--quick] [--sets conll2003,snips] [--examples 1000] [--seeds 13,14]
        [--variants "default,split 0"] [--peer-epochs 3,10] [--evaluate-on test] [--no-peer] [--append]

finechain's variants: ``default`` (one task, every setting at ``Chain.from_backbone``'s default: a frozen trunk of 2
layers for this backbone, the top 4 tuned; a spec of one tagging task resolves ``split: auto`` to 0 since this suite),
``split 0`` (every layer tuned, as a full fine-tune does), ``split 1`` and ``split 0 lr 2e-4`` (every layer tuned at
twice the default branch rate and three times the head's: the demo's NER settings), and the last with a moving average
of the weights (``training.ema_decay: 0.998``) or with two augmented copies of each training sentence
(``training.augment: 2``: entities replaced by others of the same type from the sample, words by words with the same
tag, synonyms outside entities, words shuffled within an entity or a stretch outside entities; at the default
``augment_rate`` 0.1 or at 0.3). The peer is the Hugging Face
Trainer's full fine-tune (``AutoModelForTokenClassification``, first-sub-word labels, lr 5e-5, batch 32)
for each number of epochs in ``--peer-epochs``, trained on the same sample (it uses no dev data).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from types import SimpleNamespace
from typing import Any

from benchmarks.common import BACKBONE, DATASETS, RESULTS, Recorder, appended_settings, comma_list
from benchmarks.peers import hf_token_classification
from benchmarks.snips import read as read_snips
from finechain import Chain, TaskSpec, TrainingConfig
from finechain.data.conll import read_conll
from finechain.model.backbone import inspect_backbone, resolve_backbone
from finechain.spec import default_split

Sentences = tuple[list[list[str]], list[list[str]]]

# name: (Chain.from_backbone's keyword arguments, TrainingConfig's changed from its defaults)
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "default": ({}, {}),
    "split 0": ({"split": 0}, {}),
    "split 1": ({"split": 1}, {}),
    "split 0 lr 2e-4": ({"split": 0}, {"learning_rate": 2e-4, "head_learning_rate": 3e-3}),
    "split 0 lr 2e-4 ema 0.998": ({"split": 0}, {"learning_rate": 2e-4, "head_learning_rate": 3e-3, "ema_decay": 0.998}),
    "split 0 lr 2e-4 augment 2": ({"split": 0}, {"learning_rate": 2e-4, "head_learning_rate": 3e-3, "augment": 2}),
    "split 0 lr 2e-4 augment 2 rate 0.3": (
        {"split": 0},
        {"learning_rate": 2e-4, "head_learning_rate": 3e-3, "augment": 2, "augment_rate": 0.3},
    ),
}
SETS = {"conll2003": "news NER", "snips": "voice-assistant slots"}
HELD_OUT = 2_000  # training sentences outside a sample scored with --evaluate-on holdout


def read_set(name: str, part: str) -> Sentences:
    """Word lists and BIO tag lists of one file of a set (``train``, ``dev`` or ``test``)."""
    if name == "conll2003":
        sentences = read_conll(DATASETS / "conll2003" / f"{part}.txt")
        return [s.words for s in sentences], [s.tags for s in sentences]
    rows = read_snips(part)
    return [r["words"] for r in rows], [r["slots"] for r in rows]


def _drawn(data: Sentences, size: int, seed: int) -> list[int]:
    """The indices of ``size`` sentences drawn at random with ``seed`` (all of them when there are fewer)."""
    return random.Random(seed).sample(range(len(data[0])), min(size, len(data[0])))


def _picked(data: Sentences, indices: list[int]) -> Sentences:
    return [data[0][i] for i in sorted(indices)], [data[1][i] for i in sorted(indices)]


def sample(data: Sentences, size: int, seed: int) -> Sentences:
    """``size`` sentences drawn at random with ``seed`` (all of them when there are fewer)."""
    return _picked(data, _drawn(data, size, seed))


def held_out(data: Sentences, size: int, seed: int, count: int) -> Sentences:
    """``count`` sentences of ``data`` that :func:`sample` with ``size`` and ``seed`` does not draw: a sample's own
    unseen evaluation set, for choosing a setting without the test file."""
    drawn = set(_drawn(data, size, seed))
    rest = [i for i in range(len(data[0])) if i not in drawn]
    return _picked(data, random.Random(seed + 1).sample(rest, min(count, len(rest))))


def entity_f1(chain: Chain, task: str, test: Sentences) -> float:
    """seqeval's entity F1 of the chain's tags on ``test`` (an entity type the sample never showed counts as missed)."""
    from seqeval.metrics import f1_score

    return float(f1_score(test[1], [p[task].tags for p in chain.predict(test[0], tasks=[task])]))


def _rerun(record: dict[str, Any], task: str, prefix: str, suffix: str, labels: set[str]) -> bool:
    """Whether ``record`` measured one of the runs (``labels``: variant labels without the sample's prefix and seed)
    that are about to be made again on the same sample."""
    variant = record["variant"]
    if record["task"] != task or not variant.startswith(prefix) or not variant.endswith(suffix):
        return False
    return variant[len(prefix) : len(variant) - len(suffix)] in labels


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks tagging-defaults", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="100 training sentences, 1 seed, 100 dev and test sentences, min_steps 20")
    parser.add_argument("--sets", type=comma_list(str, SETS), default=list(SETS))
    parser.add_argument("--examples", type=comma_list(int), default=[1000], help="training sentences per sample")
    parser.add_argument("--seeds", type=comma_list(int), default=[13, 14])
    parser.add_argument("--variants", type=comma_list(str, VARIANTS), default=["default", "split 0"])
    parser.add_argument("--peer-epochs", type=comma_list(int), default=[3, 10])
    parser.add_argument("--dev", type=int, default=500, help="dev sentences for finechain's selection")
    parser.add_argument("--test", type=int, default=0, help="test sentences scored (0 = all)")
    parser.add_argument(
        "--evaluate-on",
        choices=["test", "holdout"],
        default="test",
        help="holdout: score 2,000 training sentences outside each sample instead of the test file (to choose a setting)",
    )
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--append", action="store_true", help="keep the results file's records of other runs")
    parser.add_argument("--output", default=None, help="results name (default tagging_defaults, or tagging_defaults_quick)")
    args = parser.parse_args(argv)
    quick = {"min_steps": 20} if args.quick else {}  # the default's 300 steps, four fits: minutes for a smoke run
    if args.quick:
        args.examples, args.seeds, args.dev, args.test, args.peer_epochs = [100], args.seeds[:1], 100, 100, [1]
    name = args.output or ("tagging_defaults_quick" if args.quick else "tagging_defaults")
    rec = Recorder("tagging_defaults", "cpu")
    settings: dict[str, Any] = vars(args)
    if args.append and (RESULTS / f"{name}.json").exists():
        rec.records = json.loads((RESULTS / f"{name}.json").read_text())
        settings = appended_settings(name, vars(args))
    backbone, _ = resolve_backbone(BACKBONE)
    default = default_split(inspect_backbone(backbone).num_hidden_layers)  # what "default" resolves to, for its rows' labels
    peer_epochs = [] if args.no_peer else args.peer_epochs
    for task in args.sets:
        train, dev, test = read_set(task, "train"), read_set(task, "dev"), read_set(task, "test")
        dev = dev[0][: args.dev], dev[1][: args.dev]
        if args.test:
            test = test[0][: args.test], test[1][: args.test]
        labels = sorted({t for tags in train[1] for t in tags} | {"O"})
        unit = f"entity F1, {len(test[0])} test sentences"
        if args.evaluate_on == "holdout":
            unit = f"entity F1, {HELD_OUT:,} held-out training sentences"
        for size in args.examples:
            for seed in args.seeds:
                words, tags = sample(train, size, seed)
                scored = held_out(train, size, seed, HELD_OUT) if args.evaluate_on == "holdout" else test
                prefix, rec.variant_suffix = f"{task} ({SETS[task]}), {len(words)} sentences: ", f", seed {seed}"
                again = {f"{v} (split {VARIANTS[v][0].get('split', default)})" for v in args.variants}
                again |= {f"full fine-tune, {epochs} epochs" for epochs in peer_epochs}
                rec.records = [r for r in rec.records if not _rerun(r, task, prefix, rec.variant_suffix, again)]
                for variant in args.variants:
                    build, changed = VARIANTS[variant]
                    chain = Chain.from_backbone(BACKBONE, **build)
                    start = time.perf_counter()
                    training = TrainingConfig(seed=seed, **{**quick, **changed})
                    chain.fit(TaskSpec(name=task, type="tagging"), training, texts=words, labels=tags, dev=dev, progress=False)
                    seconds = time.perf_counter() - start
                    label = f"{prefix}{variant} (split {chain.split})"
                    rec.add(task, "finechain", label, "entity_f1", entity_f1(chain, task, scored), unit)
                    rec.add(task, "finechain", label, "train_seconds", seconds, "s, end to end")
                for epochs in peer_epochs:
                    given = SimpleNamespace(texts=words, labels=tags)
                    run = hf_token_classification(backbone, given, {"test": scored}, labels, epochs=epochs, seed=seed)
                    label = f"{prefix}full fine-tune, {epochs} epochs"
                    rec.add(task, "hf-trainer", label, "entity_f1", run.scores["test"], unit)
                    rec.add(task, "hf-trainer", label, "train_seconds", run.seconds, "s, trainer.train only")
                rec.save(name, settings)  # after every sample: a long run that is stopped keeps what it measured
    print(f"wrote {rec.save(name, settings)}")


if __name__ == "__main__":
    main()
