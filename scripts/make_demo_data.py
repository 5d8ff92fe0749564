"""Rebuild the small demo samples bundled in src/finechain/demo/data from ../shared/datasets.

python scripts/make_demo_data.py [DATASETS_DIR]
"""

from __future__ import annotations

import csv
import random
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "src" / "finechain" / "demo" / "data"
INTENTS = [
    "card_arrival",
    "lost_or_stolen_card",
    "exchange_rate",
    "top_up_failed",
    "pin_blocked",
    "cash_withdrawal_charge",
    "transfer_not_received_by_recipient",
    "card_payment_wrong_exchange_rate",
    "declined_card_payment",
    "Refund_not_showing_up",
    "change_pin",
    "age_limit",
]


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def write(path: Path, data: list[dict[str, str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "label"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(data)


def per_label(data: list[dict[str, str]], labels: list[str], k: int, rng: random.Random) -> list[dict[str, str]]:
    groups = defaultdict(list)
    for row in data:
        groups[row["label"]].append(row)
    out = [row for label in labels for row in rng.sample(groups[label], k)]
    rng.shuffle(out)
    return out


def main() -> None:
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "datasets"
    rng = random.Random(7)
    OUT.mkdir(parents=True, exist_ok=True)
    write(OUT / "intent_train.csv", per_label(rows(src / "banking77/train.csv"), INTENTS, 40, rng))
    write(OUT / "intent_test.csv", per_label(rows(src / "banking77/test.csv"), INTENTS, 10, rng))
    names = {"0": "negative", "1": "positive"}
    sentences = [r for r in rows(src / "sst2/train.csv") if len(r["text"].split()) >= 8]
    train = [{"text": r["text"], "label": names[r["label"]]} for r in per_label(sentences, ["0", "1"], 350, rng)]
    test = [{"text": r["text"], "label": names[r["label"]]} for r in per_label(rows(src / "sst2/dev.csv"), ["0", "1"], 100, rng)]
    write(OUT / "sentiment_train.csv", train)
    write(OUT / "sentiment_test.csv", test)
    for split, source, count in (("train", "train.txt", 800), ("test", "test.txt", 200)):
        blocks = (src / "conll2003" / source).read_text(encoding="utf-8").strip().split("\n\n")
        chosen = sorted(rng.sample(range(len(blocks)), count))
        (OUT / f"ner_{split}.conll").write_text("\n\n".join(blocks[i] for i in chosen) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
