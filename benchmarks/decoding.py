"""Does BIO-constrained (Viterbi) decoding help NER, and what does it cost? One tagging tail on CoNLL-2003, scored
on the test file with constrained decoding and with per-word argmax; and the speed of decoding alone (network
outputs to entities with character offsets, median of 5) for the test sentences given as raw text.

    python -m benchmarks decoding [--quick] [--train-examples 2000] [--epochs 3]
"""

from __future__ import annotations

import argparse

from benchmarks.common import DATASETS, Recorder, timed
from finechain import Chain, TaskSpec, TrainingConfig
from finechain.data.conll import read_conll


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks decoding", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="300 sentences, 1 epoch, 300 test sentences")
    parser.add_argument("--train-examples", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args(argv)
    limit = None
    if args.quick:
        args.train_examples, args.epochs, limit = 300, 1, 300
    rec = Recorder("decoding", args.device)
    chain = Chain.from_backbone().to(args.device)
    spec = TaskSpec(name="conll2003", type="tagging", train=DATASETS / "conll2003/train.txt", max_train_examples=args.train_examples)
    chain.fit(spec, TrainingConfig(epochs=args.epochs, seed=args.seed), progress=False)
    test = read_conll(DATASETS / "conll2003/test.txt")[:limit]
    head = chain.tasks["conll2003"].head
    for decoding in ("constrained", "argmax"):
        head.decoding = decoding
        scores = chain.score("conll2003", [s.words for s in test], [s.tags for s in test])
        for metric in ("entity_f1", "entity_precision", "entity_recall"):
            rec.add("conll2003", "finechain", f"{decoding} decoding, split={chain.split}", metric, scores[metric], "test")
    texts = [" ".join(s.words) for s in test]
    raw, encoded = chain.run_tasks(texts, ["conll2003"])
    for decoding in ("constrained", "argmax"):
        head.decoding = decoding
        seconds = timed(lambda: head.decode(raw["conll2003"], encoded, texts), repeats=5)
        variant = f"{decoding} decoding, split={chain.split}"
        rec.add("conll2003", "finechain", variant, "samples_per_second", len(texts) / seconds, "texts/s (decoding only)")
    print(f"wrote {rec.save('decoding_quick' if args.quick else 'decoding', vars(args))}")


if __name__ == "__main__":
    main()
