"""Does BIO-constrained (Viterbi) decoding help NER, and what does it cost? One tagging tail on CoNLL-2003, scored
on the test file with constrained decoding and with per-word argmax; the speed of decoding alone (network
outputs to entities with character offsets, median of 5) for the test sentences given as raw text; and entity
F1 when the test sentences come as running text (detokenised: ``Paris .`` -> ``Paris.``, ``Neil 's`` -> ``Neil's``)
instead of word lists, scored on character spans. Last, a second tagger trained on the same sentences given the
way annotation tools export them, running text with character-span entities, scored on both inputs.

    python -m benchmarks decoding [--quick] [--train-examples 2000] [--epochs 3]

With ``--crf-seeds 13,14,15`` it instead compares the tagger with a CRF tagger (head option ``crf: true``), both
otherwise at their defaults, trained on the same sentences per seed (each seed its own sample and validation cut),
scored on the dev and test files (``--output decoding_crf``).
"""

from __future__ import annotations

import argparse

from benchmarks.common import BACKBONE, DATASETS, Recorder, comma_list, timed
from finechain import Chain, TaskSpec, TrainingConfig
from finechain.data.conll import TaggedSentence, read_conll
from finechain.heads.tagging import spans_from_tags

NO_SPACE_BEFORE = {".", ",", ";", ":", "!", "?", ")", "]", "}", "%", "'s", "'S", "n't", "'re", "'ve", "'ll", "'d", "'m"}
NO_SPACE_AFTER = {"(", "[", "{", "$"}


def detokenize(words: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """Running text for a CoNLL word list (no space before closing punctuation and clitics, none after opening
    brackets), and each word's character span in it."""
    text, spans = "", []
    for i, word in enumerate(words):
        if i and word not in NO_SPACE_BEFORE and words[i - 1] not in NO_SPACE_AFTER:
            text += " "
        spans.append((len(text), len(text) + len(word)))
        text += word
    return text, spans


def running_text_example(sentence: TaggedSentence) -> tuple[str, list[list[int | str]]]:
    """A sentence as running text with its entities as ``[start, end, type]`` character spans (an annotation tool's export)."""
    text, spans = detokenize(sentence.words)
    return text, [[spans[a][0], spans[b][1], kind] for kind, a, b in spans_from_tags(sentence.tags)]


def running_text_scores(chain: Chain, task: str, sentences: list[TaggedSentence]) -> dict[str, float]:
    """Micro entity precision / recall / F1 over ``(start, end, type)`` character spans of detokenised sentences."""
    texts, gold = [], []
    for sentence in sentences:
        text, entities = running_text_example(sentence)
        texts.append(text)
        gold.append({(start, end, kind) for start, end, kind in entities})
    found = [{(e.start, e.end, e.type) for e in p[task].entities} for p in chain.predict(texts, tasks=[task])]
    hits = sum(len(g & f) for g, f in zip(gold, found, strict=True))
    precision, recall = hits / max(1, sum(map(len, found))), hits / max(1, sum(map(len, gold)))
    f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
    return {"entity_f1": f1, "entity_precision": precision, "entity_recall": recall}


def crf_comparison(args: argparse.Namespace, limit: int | None) -> Recorder:
    """Per seed: the default tagger and a CRF tagger on the same sampled sentences; dev and test entity F1, training
    time and decoding speed."""
    rec = Recorder("decoding", args.device)
    dev, test = (read_conll(DATASETS / f"conll2003/{split}.txt")[:limit] for split in ("dev", "test"))
    for seed in args.crf_seeds:
        for name, head in (("tagger (constrained decoding)", {}), ("CRF tagger (crf: true)", {"crf": True})):
            chain = Chain.from_backbone(BACKBONE).to(args.device)
            spec = TaskSpec(
                name="conll2003", type="tagging", train=DATASETS / "conll2003/train.txt", max_train_examples=args.train_examples, head=head
            )
            result = chain.fit(spec, TrainingConfig(epochs=args.epochs, seed=seed), progress=False)
            variant = f"{name}, split={chain.split}, seed {seed}"
            for task, sentences in (("conll2003 dev", dev), ("conll2003", test)):
                scores = chain.score("conll2003", [s.words for s in sentences], [s.tags for s in sentences])
                rec.add(task, "finechain", variant, "entity_f1", scores["entity_f1"], "dev" if task.endswith("dev") else "test")
            rec.add("conll2003", "finechain", variant, "train_seconds", result.train_seconds, "s")
            texts = [" ".join(s.words) for s in test]
            outputs, words = chain.engine.outputs(texts, ["conll2003"])
            seconds = timed(
                lambda chain=chain, outputs=outputs, texts=texts, words=words: chain.tasks["conll2003"].head.decode(
                    outputs["conll2003"], texts, words
                ),
                repeats=3,
            )
            rec.add("conll2003", "finechain", variant, "samples_per_second", len(texts) / seconds, "texts/s (decoding only)")
            print(f"{variant}: done", flush=True)
    return rec


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks decoding", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="300 sentences, 1 epoch, 300 test sentences")
    parser.add_argument("--train-examples", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--crf-seeds", type=comma_list(int), default=None, help="compare the tagger with a CRF tagger over these seeds")
    parser.add_argument("--output", default=None, help="results name (default decoding, decoding_crf, or *_quick)")
    args = parser.parse_args(argv)
    limit = None
    if args.quick:
        args.train_examples, args.epochs, limit = 300, 1, 300
    if args.crf_seeds:
        default = "decoding_crf_quick" if args.quick else "decoding_crf"
        print(f"wrote {crf_comparison(args, limit).save(args.output or default, vars(args))}")
        return
    rec = Recorder("decoding", args.device)
    chain = Chain.from_backbone(BACKBONE).to(args.device)
    spec = TaskSpec(name="conll2003", type="tagging", train=DATASETS / "conll2003/train.txt", max_train_examples=args.train_examples)
    training = TrainingConfig(epochs=args.epochs, seed=args.seed, min_steps=0)  # one pass per epoch, as recorded
    chain.fit(spec, training, progress=False)
    test = read_conll(DATASETS / "conll2003/test.txt")[:limit]
    head = chain.tasks["conll2003"].head
    for decoding in ("constrained", "argmax"):
        head.options = head.options.model_copy(update={"decoding": decoding})
        scores = chain.score("conll2003", [s.words for s in test], [s.tags for s in test])
        for metric in ("entity_f1", "entity_precision", "entity_recall"):
            rec.add("conll2003", "finechain", f"{decoding} decoding, split={chain.split}", metric, scores[metric], "test")
    head.options = head.options.model_copy(update={"decoding": "constrained"})
    scores = running_text_scores(chain, "conll2003", test)
    for metric, value in scores.items():
        rec.add("conll2003", "finechain", f"running text input, constrained decoding, split={chain.split}", metric, value, "test")
    texts = [" ".join(s.words) for s in test]
    outputs, words = chain.engine.outputs(texts, ["conll2003"])
    for decoding in ("constrained", "argmax"):
        head.options = head.options.model_copy(update={"decoding": decoding})
        seconds = timed(lambda: head.decode(outputs["conll2003"], texts, words), repeats=5)
        variant = f"{decoding} decoding, split={chain.split}"
        rec.add("conll2003", "finechain", variant, "samples_per_second", len(texts) / seconds, "texts/s (decoding only)")
    spans_chain = Chain.from_backbone(BACKBONE).to(args.device)  # the same sentences (same subsample and validation cut) as running text
    train = read_conll(DATASETS / "conll2003/train.txt")
    texts, entities = zip(*(running_text_example(s) for s in train), strict=True)
    spec = TaskSpec(name="conll2003", type="tagging", max_train_examples=args.train_examples)
    spans_chain.fit(spec, training, texts=list(texts), labels=list(entities), progress=False)
    variant = f"trained on running text with character spans, {{}} input, split={spans_chain.split}"
    for metric, value in running_text_scores(spans_chain, "conll2003", test).items():
        rec.add("conll2003", "finechain", variant.format("running text"), metric, value, "test")
    scores = spans_chain.score("conll2003", [s.words for s in test], [s.tags for s in test])
    for metric in ("entity_f1", "entity_precision", "entity_recall"):
        rec.add("conll2003", "finechain", variant.format("word-list"), metric, scores[metric], "test")
    print(f"wrote {rec.save(args.output or ('decoding_quick' if args.quick else 'decoding'), vars(args))}")


if __name__ == "__main__":
    main()
