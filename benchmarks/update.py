"""Continual updates: a Banking77 intent task trained on 60 of the 77 intents, then updated with data that brings the
other 17 (and a few fresh examples of the old ones) through ``finechain update``.

Compared on the same data: the update with rehearsal of earlier training data (the default, one earlier example per
new one), the update without rehearsal (``--rehearsal 0``; forced through, to show what it forgets), and retraining
from scratch on all the data (old and new). Scores: the old intents' test texts before and after (forgetting), the new
intents' test texts after, all test texts after, and training time.

    python -m benchmarks update [--quick] [--seeds 13] [--per-intent 40] [--new-intents 17]
"""

from __future__ import annotations

import argparse
import csv
import random
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from benchmarks.common import DATASETS, Recorder, comma_list
from finechain import Chain
from finechain.data.readers import Example, read_examples
from finechain.jobs.training import train_chain
from finechain.jobs.updating import update_task


def write_rows(path: Path, rows: list[Example]) -> Path:
    """A text,label CSV of ``rows``."""
    with path.open("w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows([("text", "label"), *((r.text, str(r.label)) for r in rows)])
    return path


def train(root: Path, name: str, train_file: str, seed: int, min_steps: int) -> tuple[Path, float]:
    """A one-task chain trained on ``root / train_file`` (the old intents' test file scored) in ``root / name``."""
    task = f"{{name: intent, train: {train_file}, test: old_test.csv}}"
    (root / f"{name}.yaml").write_text(f"training: {{seed: {seed}, min_steps: {min_steps}}}\ntasks:\n  - {task}\n")
    start = time.perf_counter()
    train_chain(root / f"{name}.yaml", root / name, progress=False)
    return root / name, time.perf_counter() - start


def score(rec: Recorder, folder: Path, variant: str, parts: dict[str, list[Example]], unit: str) -> None:
    """Accuracy of the chain in ``folder`` on each part of the test set (an intent it lacks counts as wrong)."""
    chain = Chain.from_pretrained(folder)
    known = set(chain.tasks["intent"].head.labels)
    for part, rows in parts.items():
        predicted = [p["intent"].label for p in chain.predict([r.text for r in rows])]
        right = sum(p == str(r.label) for p, r in zip(predicted, rows, strict=True))
        note = "" if known >= {str(r.label) for r in rows} else "; intents the task lacks count as wrong"
        rec.add(part, "finechain", variant, "accuracy", right / len(rows), unit + note)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks update", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="6 intents, 8 examples each, 2 new, min_steps 20")
    parser.add_argument("--seeds", type=comma_list(int), default=[13])
    parser.add_argument("--per-intent", type=int, default=40, help="training examples per intent")
    parser.add_argument("--fresh", type=int, default=5, help="fresh examples of each old intent in the new data")
    parser.add_argument("--new-intents", type=int, default=17)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    train_rows = read_examples(DATASETS / "banking77" / "train.csv")
    test_rows = read_examples(DATASETS / "banking77" / "test.csv")
    intents = sorted({str(r.label) for r in train_rows})
    min_steps = 300
    if args.quick:
        intents, args.per_intent, args.fresh, args.new_intents, args.seeds, min_steps = intents[:6], 8, 2, 2, args.seeds[:1], 20
    rec = Recorder("update", "cpu")
    for seed in args.seeds:
        rng = random.Random(seed)
        new_intents = sorted(rng.sample(intents, args.new_intents))
        old_intents = [i for i in intents if i not in new_intents]
        by_label: dict[str, list[Example]] = defaultdict(list)
        for row in train_rows:
            by_label[str(row.label)].append(row)
        old, new = [], []
        for intent in intents:
            pool = by_label[intent]  # a few intents have fewer examples than asked: all of them
            picked = rng.sample(pool, min(len(pool), args.per_intent + args.fresh))
            if intent in new_intents:
                new += picked[: args.per_intent]
            else:
                old += picked[: len(picked) - args.fresh]
                new += picked[len(picked) - args.fresh :]
        old_test = [r for r in test_rows if str(r.label) in old_intents]
        new_test = [r for r in test_rows if str(r.label) in new_intents]
        unit = f"Banking77 test: {len(old_test)} texts of {len(old_intents)} old intents, {len(new_test)} of {len(new_intents)} new"
        rec.variant_suffix = f", seed {seed}"
        with tempfile.TemporaryDirectory(prefix="finechain-update-") as folder:
            root = Path(folder)
            write_rows(root / "old.csv", old)
            write_rows(root / "new.csv", new)
            write_rows(root / "all.csv", old + new)
            write_rows(root / "old_test.csv", old_test)
            write_rows(root / "new_test.csv", new_test)

            parts = {"old intents": old_test, "new intents": new_test, "all intents": old_test + new_test}
            base, seconds = train(root, "base", "old.csv", seed, min_steps)
            score(rec, base, "before the update", parts, unit)
            rec.add("all intents", "finechain", "before the update", "train_seconds", seconds, "s")
            for variant, rehearsal in (("update, rehearsal 1 (default)", 1.0), ("update, no rehearsal (forced)", 0.0)):
                target = root / f"updated-{rehearsal}"
                shutil.copytree(base, target, ignore=shutil.ignore_patterns("runs"))
                start = time.perf_counter()
                report = update_task(target, "intent", root / "new.csv", rehearsal=rehearsal, force=True, progress=False)
                rec.add("all intents", "finechain", variant, "train_seconds", time.perf_counter() - start, "s")
                score(rec, target, variant, parts, unit)
                print(f"{variant}: {report.scores} accepted={report.accepted} note={report.note}", flush=True)
            retrained, seconds = train(root, "retrained", "all.csv", seed, min_steps)
            score(rec, retrained, "retrained from scratch on old + new", parts, unit)
            rec.add("all intents", "finechain", "retrained from scratch on old + new", "train_seconds", seconds, "s")
    print(f"wrote {rec.save(args.output or ('update_quick' if args.quick else 'update'), vars(args))}")


if __name__ == "__main__":
    main()
