"""SNIPS joint intent + slots (13,084 / 700 / 700 utterances, 7 intents, 39 slot types): a finechain chain with both
tasks answered in one pass, next to what a user would build with the Hugging Face Trainer, an intent classifier and
a slot tagger fine-tuned separately (same backbone, full fine-tune) and run one after the other, in the same run.

    python -m benchmarks snips [--quick] [--epochs 3] [--train-examples 0] [--split auto] [--trunk-learning-rate 5e-5] [--crf]
        [--label-pieces all] [--slot-weight 1] [--slot-learning-rate LR] [--slot-head-learning-rate LR]
        [--slot-adversarial fgm] [--slot-augment N] [--ema-decay D] [--batch-size 32] [--save DIR | --load DIR]

Three systems: (1) the Trainer baseline; (2) the chain, intent + slots in one pass; (3) a flow on the same chain:
intent first, then the slot tagger of the predicted intent (seven taggers added to the chain, each on its own branch
over the shared trunk, each trained on the training utterances that the intent stage sends it, i.e. on its input as
it will see it at prediction time). Routing rather than giving one tagger the intent: a routed tagger chooses among
its intent's slot types only (5 of 39 on average), so it cannot tag a `playlist` in a weather question, and the
flow runs one trunk pass plus two branches per utterance (the routed one on the trunk states the intent stage left),
so it costs what the chain costs; telling a single tagger the intent would mean feeding the intent back into its
input, a second trunk pass. Besides, the chain itself in a flow whose slot stage chooses among the slot types the
training file holds with the predicted intent (`allow: seen`): the routed taggers' restriction without their training,
on the same model (scored on dev and test beside the chain; `--load` scores a chain saved by `--save` again).

Reported on the test file: intent accuracy, slot F1 (seqeval, entity level), whole-utterance exact match (the intent
and every slot tag right), training time, and CPU throughput on the 700 test utterances (batch 32, both answers per
utterance). Selection (early stopping) uses the dev file only.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import BACKBONE, DATASETS, Recorder, scratch_folder
from benchmarks.peers import _fine_tune
from finechain import Chain, TaskSpec, TrainingConfig
from finechain.flows import FlowResult
from finechain.flows.routing import routed_task_data, seen_allow
from finechain.model.backbone import resolve_backbone
from finechain.spec import JointConfig
from finechain.spec.flows import FlowSpec

SNIPS = DATASETS / "snips"


def read(split: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (SNIPS / f"{split}.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]


def scores(intents: list[str], slots: list[list[str]], test: list[dict[str, Any]]) -> dict[str, float]:
    """Intent accuracy, seqeval slot F1 and exact match of predictions against ``test``."""
    from seqeval.metrics import f1_score

    gold_intents, gold_slots = [r["intent"] for r in test], [r["slots"] for r in test]
    right_intent = [p == g for p, g in zip(intents, gold_intents, strict=True)]
    exact = [i and p == g for i, p, g in zip(right_intent, slots, gold_slots, strict=True)]
    return {
        "accuracy": float(np.mean(right_intent)),
        "slot_f1": float(f1_score(gold_slots, slots)),
        "exact_match": float(np.mean(exact)),
    }


def throughput(rec: Recorder, system: str, variant: str, run: Any, test: list[dict[str, Any]]) -> None:
    """Utterances per second of ``run`` over the test words (after one warm-up batch)."""
    words = [r["words"] for r in test]
    run(words[:32])
    started = time.perf_counter()
    run(words)
    rec.add("snips", system, variant, "samples_per_second", len(words) / (time.perf_counter() - started), "utterances/s, batch 32")


def slot_rates(args: argparse.Namespace) -> dict[str, float]:
    """The slot task's own rates (its training overrides) where the command sets them."""
    rates = {"learning_rate": args.slot_learning_rate, "head_learning_rate": args.slot_head_learning_rate}
    return {key: value for key, value in rates.items() if value is not None}


def chain_variant(args: argparse.Namespace, split: int) -> str:
    """The chain's variant name: its split and every setting the command changed."""
    variant = f"chain: intent + slots in one pass (joint trunk, split {split})"
    if args.trunk_learning_rate is not None:
        variant += f", trunk lr {args.trunk_learning_rate:g}"
    if args.crf:
        variant += ", CRF slot tagger"
    if args.label_pieces != "first":
        variant += f", slots trained on {args.label_pieces} sub-words"
    if args.slot_weight != 1.0:
        variant += f", slot loss x{args.slot_weight:g}"
    for key, value in slot_rates(args).items():
        variant += f", slot {key.replace('_', ' ').replace('learning rate', 'lr')} {value:g}"
    if args.slot_adversarial != "none":
        variant += f", slot tagger trained with {args.slot_adversarial}"
    if args.slot_augment:
        variant += f", slot tagger trained with {args.slot_augment} augmented copies of each utterance"
    if args.ema_decay is not None:
        variant += f", weight average {args.ema_decay:g}"
    if args.batch_size != 32:
        variant += f", batch {args.batch_size}"
    return variant


def score_chain(rec: Recorder, variant: str, chain: Chain, test: list[dict[str, Any]]) -> None:
    """The chain's scores on dev and test, and its throughput; then the same chain in a flow whose slot stage chooses
    among the slot types the training file holds with the predicted intent (``allow: seen``): no training, the same
    trunk pass and branches, only the slot types an intent never has ruled out before decoding."""
    chain.engine.batch_size = 32
    allow = seen_allow(slot_spec(None), TaskSpec(name="intent", train=SNIPS / "train.jsonl", label_column="intent"))
    flow = chain.add_flow({"name": "allowed", "stages": [{"task": "intent"}, {"task": "slots", "after": "intent", "allow": allow}]})
    allowed = f"flow: intent, then slots among the types seen with the predicted intent (allow: seen) on the {variant}"
    for split, rows in (("dev", read("dev")), ("test", test)):  # dev: what settings are chosen on; test: what is reported
        words = [r["words"] for r in rows]
        predictions = chain.predict(words)
        found = scores([p["intent"].label for p in predictions], [p["slots"].tags for p in predictions], rows)
        results = flow.run(words)
        by_flow = scores([r.answers["intent"].label for r in results], [r.answers["slots"].tags for r in results], rows)  # type: ignore[union-attr]
        for name, values in ((variant, found), (allowed, by_flow)):
            for metric, value in values.items():
                rec.add("snips", "finechain", name, metric if split == "test" else f"dev_{metric}", value, split)
    throughput(rec, "finechain", variant, chain.predict, test)
    throughput(rec, "finechain", allowed, flow.run, test)


def slot_spec(limit: int | None, **options: Any) -> TaskSpec:
    """The slot tagging task of the SNIPS files."""
    return TaskSpec(
        name="slots",
        type="tagging",
        train=SNIPS / "train.jsonl",
        dev=SNIPS / "dev.jsonl",
        text_column="words",
        label_column="slots",
        max_train_examples=limit,
        **options,
    )


def run_finechain(rec: Recorder, args: argparse.Namespace, test: list[dict[str, Any]]) -> tuple[Chain, float]:
    """The chain: intent and slots, trunk tuned jointly, then each branch refined; both answered in one pass."""
    limit = args.train_examples or None
    specs = [
        TaskSpec(name="intent", train=SNIPS / "train.jsonl", dev=SNIPS / "dev.jsonl", label_column="intent", max_train_examples=limit),
        slot_spec(
            limit,
            head={"crf": args.crf, "label_pieces": args.label_pieces},
            training=slot_rates(args)
            | ({} if args.slot_adversarial == "none" else {"adversarial": args.slot_adversarial})
            | ({"augment": args.slot_augment} if args.slot_augment else {}),
        ),
    ]
    chain = Chain.from_backbone(BACKBONE, split=args.split if args.split == "auto" else int(args.split), sharing="joint")
    rates = {} if args.trunk_learning_rate is None else {"trunk_learning_rate": args.trunk_learning_rate}
    joint = JointConfig(loss_weights={"slots": args.slot_weight}, **rates)
    started = time.perf_counter()
    training = TrainingConfig(epochs=args.epochs, seed=args.seed, ema_decay=args.ema_decay, batch_size=args.batch_size)
    chain.fit_joint(specs, training, joint, progress=False)
    seconds = time.perf_counter() - started
    variant = chain_variant(args, chain.split)
    score_chain(rec, variant, chain, test)
    rec.add("snips", "finechain", variant, "train_seconds", seconds, "s (both tasks)")
    return chain, seconds


def run_flow(rec: Recorder, args: argparse.Namespace, chain: Chain, chain_seconds: float, test: list[dict[str, Any]]) -> None:
    """The flow: the chain's intent stage routes each utterance to its intent's tagger (added to the same chain)."""
    started = time.perf_counter()
    limit = args.train_examples or None
    intents = sorted({r["intent"] for r in read("train")})
    stages = [{"task": "intent"}]
    stages += [{"task": f"slots-{i}", "after": "intent", "when": {"labels": [i]}, "train_on": "predicted"} for i in intents]
    spec = FlowSpec.model_validate({"name": "snips", "stages": stages})
    files = {name: SNIPS / f"{name}.jsonl" for name in ("train", "dev")}
    if limit:  # a smaller run: the first utterances of each file
        folder = scratch_folder("snips-bench-")
        for name in files:
            files[name] = folder / f"{name}.jsonl"
            files[name].write_text("".join(json.dumps(r) + "\n" for r in read(name)[:limit]), encoding="utf-8")
    answers: dict = {}  # the intent stage runs once per file, not once per tagger
    for stage in spec.stages[1:]:  # each tagger learns from what the intent stage will send it (train_on: predicted)
        task = TaskSpec(name=stage.task, type="tagging", train=files["train"], dev=files["dev"], text_column="words", label_column="slots")
        data = routed_task_data(task, spec, stage, {None: chain.engine}, seed=args.seed, cache=answers)
        chain.fit(task, TrainingConfig(epochs=args.epochs, seed=args.seed), data=data, progress=False)
    seconds = chain_seconds + time.perf_counter() - started
    flow = chain.add_flow(spec)
    chain.engine.batch_size = 32
    results: list[FlowResult] = flow.run([r["words"] for r in test])
    found_intents = [r.answers["intent"].label for r in results]  # type: ignore[union-attr]
    found_slots = [r.answers[r.path[1]].tags for r in results]  # type: ignore[union-attr]
    variant = "flow: intent, then the predicted intent's slot tagger (7 routed branches on one trunk pass)"
    for metric, value in scores(found_intents, found_slots, test).items():
        rec.add("snips", "finechain", variant, metric, value, "test")
    rec.add("snips", "finechain", variant, "train_seconds", seconds, "s (the chain, then 7 taggers)")
    throughput(rec, "finechain", variant, flow.run, test)


def run_peer(rec: Recorder, args: argparse.Namespace, train: list[dict[str, Any]], test: list[dict[str, Any]]) -> None:
    """Two Trainer fine-tunes (intent classifier, slot tagger), then both run on every test utterance in turn."""
    import torch
    from transformers import AutoTokenizer

    backbone, _ = resolve_backbone(BACKBONE)
    tokenizer = AutoTokenizer.from_pretrained(str(backbone))
    intents = sorted({r["intent"] for r in train})
    tags = sorted({t for r in train for t in r["slots"]} | {"O"})
    intent_id, tag_id = {x: i for i, x in enumerate(intents)}, {x: i for i, x in enumerate(tags)}
    kept: dict[str, Any] = {}

    def encode_words(rows: list[dict[str, Any]], with_labels: bool) -> list[dict[str, Any]]:
        enc = tokenizer([r["words"] for r in rows], is_split_into_words=True, truncation=True, max_length=128)
        out = []
        for i, r in enumerate(rows):
            item = {"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i]}
            if with_labels:
                seen: set[int] = set()
                labels = []
                for w in enc.word_ids(i):
                    labels.append(-100 if w is None or w in seen else tag_id[r["slots"][w]])
                    if w is not None:
                        seen.add(w)
                item["labels"] = labels
            out.append(item)
        return out

    def keep(name: str) -> Any:
        def evaluate(trainer: Any) -> dict[str, float]:
            kept[name] = trainer.model.eval()
            return {}

        return evaluate

    run = {"epochs": args.epochs, "seed": args.seed, "method": "full", "device": "cpu"}
    texts = [" ".join(r["words"]) for r in train]
    enc = tokenizer(texts, truncation=True, max_length=128)
    rows = [
        {"input_ids": i, "attention_mask": m, "labels": intent_id[r["intent"]]}
        for i, m, r in zip(enc["input_ids"], enc["attention_mask"], train, strict=True)
    ]
    first = _fine_tune("sequence", backbone, tokenizer, rows, len(intents), keep("intent"), **run)
    second = _fine_tune("token", backbone, tokenizer, encode_words(train, True), len(tags), keep("slots"), **run)

    @torch.inference_mode()
    def predict(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
        got_intents, got_slots = [], []
        for start in range(0, len(rows), 32):
            part = rows[start : start + 32]
            batch = tokenizer([" ".join(r["words"]) for r in part], truncation=True, max_length=128, padding=True, return_tensors="pt")
            got_intents += [intents[i] for i in kept["intent"](**batch).logits.argmax(-1).tolist()]
            words = tokenizer(
                [r["words"] for r in part], is_split_into_words=True, truncation=True, max_length=128, padding=True, return_tensors="pt"
            )
            best = kept["slots"](input_ids=words["input_ids"], attention_mask=words["attention_mask"]).logits.argmax(-1).tolist()
            for i, r in enumerate(part):
                first_pieces, seen = [], set()
                for position, w in enumerate(words.word_ids(i)):
                    if w is not None and w not in seen:
                        seen.add(w)
                        first_pieces.append(tags[best[i][position]])
                got_slots.append(first_pieces + ["O"] * (len(r["words"]) - len(first_pieces)))
        return got_intents, got_slots

    found = scores(*predict(test), test)
    variant = "intent classifier + slot tagger, fine-tuned separately, run in turn"
    for metric, value in found.items():
        rec.add("snips", "hf-trainer", variant, metric, value, "test")
    rec.add("snips", "hf-trainer", variant, "train_seconds", first.seconds + second.seconds, "s (both models, trainer.train only)")
    throughput(rec, "hf-separate", variant, lambda words: predict([{"words": w} for w in words]), test)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks snips", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="600 training utterances, 1 epoch, 100 test utterances")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-examples", type=int, default=0, help="0 = all 13,084")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--split", default="auto", help="the chain's split depth: auto or a number of trunk layers")
    parser.add_argument("--trunk-learning-rate", type=float, default=None, help="joint trunk rate (default JointConfig's 5e-5)")
    parser.add_argument("--crf", action="store_true", help="the chain's slot tagger is a CRF (head option crf: true)")
    parser.add_argument(
        "--label-pieces", choices=["first", "all"], default="first", help="the slot tagger's label_pieces: a word's first sub-word or all"
    )
    parser.add_argument(
        "--slot-weight", type=float, default=1.0, help="the slot task's loss weight in joint training (JointConfig.loss_weights)"
    )
    parser.add_argument("--slot-learning-rate", type=float, default=None, help="the slot task's branch rate (default 1e-4)")
    parser.add_argument("--slot-head-learning-rate", type=float, default=None, help="the slot task's head rate (default 1e-3)")
    parser.add_argument(
        "--slot-adversarial", choices=["none", "fgm", "pgd"], default="none", help="the slot task's training.adversarial (none)"
    )
    parser.add_argument(
        "--slot-augment", type=int, default=0, help="the slot task's training.augment (tagged copies of each utterance; 0 = off)"
    )
    parser.add_argument("--ema-decay", type=float, default=None, help="the chain's training.ema_decay (a moving average of the weights)")
    parser.add_argument("--batch-size", type=int, default=32, help="the chain's training.batch_size (joint training and each branch's)")
    saved = parser.add_mutually_exclusive_group()
    saved.add_argument("--save", default=None, help="also save the trained chain (intent + slots) to this folder")
    saved.add_argument(
        "--load", default=None, help="score a chain saved with --save (give its run's options too, for the variant's name): no training"
    )
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--no-flow", action="store_true")
    parser.add_argument("--output", default=None, help="results name (default snips, or snips_quick)")
    args = parser.parse_args(argv)
    if args.load and not (Path(args.load) / "finechain.json").is_file():
        parser.error(f"--load {args.load}: not a chain folder (save one with --save DIR)")
    test = read("test")
    if args.quick:
        args.train_examples, args.epochs, test = 600, 1, test[:100]
    rec = Recorder("snips", "cpu")
    train = read("train")
    if args.train_examples:
        train = train[: args.train_examples]
    name = args.output or ("snips_quick" if args.quick else "snips")
    if args.load:  # a chain this command trained and saved (--save): scored again, nothing trained
        chain = Chain.from_pretrained(args.load)
        score_chain(rec, chain_variant(args, chain.split) + ", loaded from --save", chain, test)
        print(f"wrote {rec.save(name, vars(args))}")
        return
    chain, seconds = run_finechain(rec, args, test)
    if args.save:
        chain.save_pretrained(args.save)
    rec.save(name, vars(args))  # each system's records are kept as soon as they exist
    if not args.no_flow:
        run_flow(rec, args, chain, seconds, test)
        rec.save(name, vars(args))
    if not args.no_peer:
        run_peer(rec, args, train, test)
    print(f"wrote {rec.save(name, vars(args))}")


if __name__ == "__main__":
    main()
