"""Build the bad-input corpus: a folder of good and bad specs, data files, backbones and saved chains that the cases in
``cases.yaml`` run the command line on (``tests/test_bad_inputs.py``). Run it alone to look at the files:

    python -m tests.bad_inputs.make_corpus /tmp/corpus

Everything is made here from the tiny random test backbone and the 0.1.0 chain fixture; nothing is downloaded.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from tests.conftest import ner_sentences, sentiment_rows, write_conll, write_csv

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "release_0_1_0"
GOOD_TASK = "  - {name: sentiment, train: ../data/train.csv}\n"


def _spec(text: str) -> str:
    """A spec on the corpus's tiny backbone, quick to train, with ``text`` appended (a ``tasks:`` block unless given)."""
    head = "backbone: ../backbone\nsplit: 2\nmax_length: 16\ntraining: {epochs: 1, batch_size: 16, min_steps: 0}\n"
    return head + (text if "tasks:" in text or text.startswith("!") else text + "tasks:\n" + GOOD_TASK)


SPECS = {
    "good.yaml": _spec(""),
    "slow.yaml": _spec("").replace("epochs: 1,", "epochs: 5000, patience: 0,"),  # minutes long: to be interrupted
    # one epoch of minutes, checked only at its end: an interrupt during it finds nothing written
    "slow-first-epoch.yaml": _spec("").replace("min_steps: 0}", "min_steps: 20000, evaluations_per_epoch: 1}"),
    # one epoch of 100,000 steps (many minutes), checked every 1,000: an interrupt after the second check finds the first's
    # checkpoint (written before training went on) at least
    "slow-after-check.yaml": _spec("").replace("min_steps: 0}", "min_steps: 100000, evaluations_per_epoch: 100}"),
    # two tasks trained one after another: the first quick (checkpointed), the second's first epoch minutes long
    "slow-second-task.yaml": _spec(
        "sharing: frozen\ntasks:\n"
        + GOOD_TASK
        + "  - {name: topic, train: ../data/train.csv, training: {min_steps: 100000, evaluations_per_epoch: 1}}\n"
    ),
    "list.yaml": "- tasks\n- nothing\n",
    "empty.yaml": "",
    "tabs.yaml": "tasks:\n\t- name: a\n",
    "python-tag.yaml": "backbone: !!python/object/apply:os.system ['echo pwned']\ntasks:\n" + GOOD_TASK,
    "alias-bomb.yaml": "a: &a [x, x, x, x, x, x, x, x, x]\n"
    + "".join(f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True))
    + "tasks:\n"
    + GOOD_TASK,
    "recursive-alias.yaml": "a: &x [*x]\ntasks:\n" + GOOD_TASK,
    "unknown-field.yaml": _spec("epochz: 3\n"),
    "dotted-name.yaml": _spec("tasks:\n  - {name: sent.v2, train: ../data/train.csv}\n"),
    "duplicate-names.yaml": _spec("tasks:\n" + GOOD_TASK + GOOD_TASK),
    "inf-learning-rate.yaml": _spec("").replace("min_steps: 0}", "min_steps: 0, learning_rate: .inf}"),
    "epochs-1e9.yaml": _spec("").replace("epochs: 1,", "epochs: 1e9,"),
    "epochs-huge.yaml": _spec("").replace("epochs: 1,", "epochs: 100000000,"),
    "split-99.yaml": _spec("").replace("split: 2", "split: 99"),
    "bad-device.yaml": _spec("device: tpu\n"),
    "cuda.yaml": _spec("device: cuda\n"),
    "backbone-missing.yaml": _spec("").replace("../backbone", "../nope"),
    "backbone-no-config.yaml": _spec("").replace("../backbone", "../backbones/no-config"),
    "backbone-truncated.yaml": _spec("").replace("../backbone", "../backbones/truncated"),
    "backbone-empty-weights.yaml": _spec("").replace("../backbone", "../backbones/empty-weights"),
    "backbone-bin-only.yaml": _spec("").replace("../backbone", "../backbones/bin-only"),
    "backbone-bad-config.yaml": _spec("").replace("../backbone", "../backbones/bad-config"),
    "max-length-too-long.yaml": _spec("").replace("max_length: 16", "max_length: 4096"),
    "decoding-on-classifier.yaml": _spec("tasks:\n  - {name: s, train: ../data/train.csv, decoding: argmax}\n"),
    "bad-metric.yaml": _spec("tasks:\n  - {name: s, train: ../data/train.csv, metric: entity_f1}\n"),
    "no-train.yaml": _spec("tasks:\n  - {name: s}\n"),
    "bad-schedule.yaml": _spec("").replace("min_steps: 0}", "min_steps: 0, schedule: stepwise}"),
    "lora-rank-0.yaml": _spec("tasks:\n  - {name: s, train: ../data/train.csv, branch: {mode: lora, rank: 0}}\n"),
    "diverges.yaml": _spec("").replace(
        "min_steps: 0}", "min_steps: 0, learning_rate: 1.0e+30, head_learning_rate: 1.0e+30, precision: fp32}"
    ),
    "not-utf8.yaml": None,  # written as bytes below
}
DATA_SPECS = {  # a spec per bad data file: its one task reads ../data/<file>
    "missing": ("classification", "nope.csv"),
    "folder": ("classification", "subfolder"),
    "latin1": ("classification", "latin1.csv"),
    "header-only": ("classification", "header-only.csv"),
    "empty": ("classification", "empty.csv"),
    "ragged": ("classification", "ragged.csv"),
    "no-text-column": ("classification", "no-text-column.csv"),
    "one-class": ("classification", "one-class.csv"),
    "label-once": ("classification", "label-once.csv"),
    "bad-jsonl": ("classification", "bad.jsonl"),
    "jsonl-list": ("classification", "list.jsonl"),
    "jsonl-null-text": ("classification", "null-text.jsonl"),
    "bad-tag": ("tagging", "bad-tag.conll"),
    "nan-value": ("regression", "nan.csv"),
    "long-field": ("classification", "long-field.csv"),
    "unreadable": ("classification", "unreadable.csv"),
}


def _write_data(data: Path) -> None:
    rows = sentiment_rows(80, 1)
    write_csv(data / "train.csv", rows)
    write_csv(data / "dev-unknown.csv", [(*rows[0][:1], "mixed"), *rows[1:6]])
    write_conll(data / "ner.conll", ner_sentences(60, 1))
    (data / "subfolder").mkdir()
    (data / "latin1.csv").write_bytes("text,label\ngood,pos\ncaf\xe9 bad,neg\n".encode("latin-1"))
    (data / "header-only.csv").write_text("text,label\n")
    (data / "empty.csv").write_text("")
    (data / "ragged.csv").write_text("text,label\ngood,pos\nbad,neg,extra\n")
    (data / "no-text-column.csv").write_text("review,label\ngood,pos\nbad,neg\n")
    write_csv(data / "one-class.csv", [(t, "pos") for t, _ in rows[:10]])
    write_csv(data / "label-once.csv", [*rows[:10], ("odd one", "odd")])
    (data / "bad.jsonl").write_text('{"text": "good", "label": "pos"}\n{"text": "bad", "label": \n')
    (data / "list.jsonl").write_text('{"text": "good", "label": "pos"}\n["bad", "neg"]\n')
    (data / "null-text.jsonl").write_text('{"text": "good", "label": "pos"}\n\n{"text": null, "label": "neg"}\n')
    (data / "bad-tag.conll").write_text("alice B-PER\nvisited X-Y\n\nbob B-PER\n")
    write_csv(data / "nan.csv", [("good", "1.0"), ("bad", "nan"), ("fine", "2.0")])
    write_csv(data / "long-field.csv", [*rows, ("good " * 40_000 + "film", "pos")])
    shutil.copy(data / "train.csv", data / "unreadable.csv")
    (data / "unreadable.csv").chmod(0)
    (data / "texts.txt").write_text("good film\nthe plot was awful\n")
    (data / "empty.txt").write_text("")
    (data / "blank.txt").write_text("\n  \n\n")
    (data / "many.txt").write_text("".join(f"the plot was awful and the acting weak {i}\n" for i in range(30_000)))
    # one text past the engine's block of characters (so a block of its own): 500,000 one-character words, ~23,000
    # windows of 32 tokens, all in one pass at --batch-size 200000 (half of it fits in +400 MB on one core)
    (data / "huge-text.txt").write_text("!" * 500_000 + "\n")
    (data / "a-file").write_text("not a folder\n")
    # an update of a minute on the tiny backbone (20,000 rows, the chain's 10 epochs): to be interrupted
    words = ["great", "poor", "film", "movie", "ending", "quite", "awful", "fine"]
    update_rows = [(f"{words[i % 8]} {words[i * 7 % 8]} {words[i * 3 % 8]} {i}", "pos" if i % 2 else "neg") for i in range(20_000)]
    write_csv(data / "big-update.csv", update_rows)


def _write_backbones(root: Path) -> None:
    backbone = shutil.copytree(FIXTURES / "frozen" / "backbone", root / "backbone")
    bad = root / "backbones"
    for name in ("no-config", "truncated", "empty-weights", "bin-only", "bad-config"):
        shutil.copytree(backbone, bad / name)
    (bad / "no-config" / "config.json").unlink()
    weights = (backbone / "model.safetensors").read_bytes()
    (bad / "truncated" / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    (bad / "empty-weights" / "model.safetensors").write_bytes(b"")
    (bad / "bin-only" / "model.safetensors").rename(bad / "bin-only" / "pytorch_model.bin")
    (bad / "bad-config" / "config.json").write_text('{"model_type": "bert", "hidden_size": ')


def _damaged_chain(root: Path, name: str, damage) -> None:
    folder = shutil.copytree(root / "chains" / "good", root / "chains" / name)
    damage(folder)


def _manifest(change):
    def apply(folder: Path) -> None:
        manifest = json.loads((folder / "finechain.json").read_text())
        change(manifest)
        (folder / "finechain.json").write_text(json.dumps(manifest))

    return apply


def _write_chains(root: Path) -> None:
    chains = root / "chains"
    shutil.copytree(FIXTURES / "frozen", chains / "good")
    (chains / "not-a-chain").mkdir()
    tasks = "tasks"
    _damaged_chain(root, "bad-json", lambda f: (f / "finechain.json").write_text("{not json"))
    _damaged_chain(root, "newer-format", _manifest(lambda m: m.update(format=99)))
    _damaged_chain(root, "missing-key", _manifest(lambda m: m.pop("split")))
    _damaged_chain(root, "path-task-name", _manifest(lambda m: m[tasks].update({"../../escape": m[tasks]["sentiment"]})))
    _damaged_chain(root, "truncated-head", lambda f: (f / tasks / "sentiment" / "head.safetensors").write_bytes(b"\x08\x00\x00"))
    _damaged_chain(root, "empty-branch", lambda f: (f / tasks / "tags" / "branch.safetensors").write_bytes(b""))
    _damaged_chain(
        root,
        "mismatched-branch",
        lambda f: shutil.copy(f / tasks / "sentiment_lora" / "branch.safetensors", f / tasks / "sentiment" / "branch.safetensors"),
    )
    _damaged_chain(root, "missing-head", lambda f: (f / tasks / "ner" / "head.safetensors").unlink())
    _damaged_chain(root, "task-folder-outside", _manifest(lambda m: m[tasks]["sentiment"].update(folder="../../backbone")))
    _damaged_chain(root, "update-me", lambda f: None)  # a good chain an interrupted update must leave as it was

    def changed_backbone(folder: Path) -> None:
        from safetensors.torch import load_file, save_file

        weights = load_file(folder / "backbone" / "model.safetensors")
        first = next(iter(weights))
        weights[first] = weights[first] + 1
        save_file(weights, folder / "backbone" / "model.safetensors")

    _damaged_chain(root, "changed-backbone", changed_backbone)


def build(root: Path) -> Path:
    """Write the corpus into ``root`` (created; it must not exist yet) and return it."""
    root.mkdir(parents=True)
    _write_backbones(root)
    (root / "data").mkdir()
    _write_data(root / "data")
    _write_chains(root)
    specs = root / "specs"
    specs.mkdir()
    for name, text in SPECS.items():
        if text is not None:
            (specs / name).write_text(text)
    (specs / "not-utf8.yaml").write_bytes(_spec("").encode() + b"# caf\xe9\n")
    for name, (kind, file) in DATA_SPECS.items():
        (specs / f"data-{name}.yaml").write_text(_spec(f"tasks:\n  - {{name: t, type: {kind}, train: ../data/{file}}}\n"))
    (specs / "data-dev-unknown.yaml").write_text(_spec("tasks:\n  - {name: t, train: ../data/train.csv, dev: ../data/dev-unknown.csv}\n"))
    (specs / "data-too-few.yaml").write_text(_spec("tasks:\n  - {name: t, train: ../data/train.csv, max_train_examples: 3}\n"))
    (specs / "add-twice.yaml").write_text(
        "tasks:\n  - {name: topic, train: ../data/train.csv}\n  - {name: topic, train: ../data/train.csv}\n"
    )
    (specs / "add-existing.yaml").write_text("name: sentiment\ntrain: ../data/train.csv\n")
    (specs / "add-bad.yaml").write_text("name: topic\ntrain: ../data/train.csv\nepochs: 3\n")
    (specs / "flow-unknown-task.yaml").write_text("name: f\nstages:\n  - task: sentiment\n  - {task: topik, after: sentiment}\n")
    (specs / "flow-bad-allow.yaml").write_text(
        "name: f\nstages:\n  - task: sentiment\n  - {task: sentiment, name: again, after: sentiment, allow: {positve: [neg]}}\n"
    )
    (root / "readonly").mkdir(mode=0o555)  # nobody may write in it (root neither, once it gives up its override)
    (root / "out").mkdir()
    root.chmod(0o755)  # cases that run as an unprivileged user must be able to read the corpus
    return root


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m tests.bad_inputs.make_corpus OUT_DIR", file=sys.stderr)
        raise SystemExit(2)
    print(build(Path(sys.argv[1])))
