"""`finechain check`: validation without training, data statistics and warnings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ner_sentences, sentiment_rows, write_conll, write_csv
from tests.test_cli import cli


def _spec(folder: Path, backbone: Path, tasks: str, max_length: int = 32) -> Path:
    path = folder / "chain.yaml"
    path.write_text(f"backbone: {backbone}\nmax_length: {max_length}\ntasks:\n{tasks}")
    return path


def test_clean_data_passes_even_with_strict(tiny_backbone: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    write_csv(tmp_path / "train.csv", sentiment_rows(400, 1))
    write_csv(tmp_path / "dev.csv", sentiment_rows(120, 2)[:0] + [(f"{t} film", y) for t, y in sentiment_rows(120, 2)])
    spec = _spec(tmp_path, tiny_backbone, "  - {name: s, train: train.csv, dev: dev.csv}\n")
    code, out, err = cli(["check", str(spec), "--strict"], monkeypatch, capsys)
    assert code == 0, out + err
    assert "data is valid" in out and "no warnings" in out
    row = next(line for line in out.splitlines() if line.strip().startswith("s "))
    assert row.split()[1:5] == ["classification", "400", "120", "-"] and "50%" in row


def test_warnings_name_the_problem_and_strict_fails(tiny_backbone: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    rows = sentiment_rows(200, 1)
    rows += [("good film", "neg"), ("good film", "pos")]  # the same text with two labels
    rows += [("bob", "rare"), ("alice", "rare")]  # a label with 2 examples
    rows += [(" ".join(["movie"] * 40), "pos")]  # 42 tokens > max_length 32
    write_csv(tmp_path / "train.csv", rows)
    write_csv(tmp_path / "test.csv", [rows[0], ("great story", "pos")])  # one test text is a training text
    sentences = ner_sentences(60, 1)
    write_conll(tmp_path / "ner.conll", sentences)
    write_conll(tmp_path / "ner_dev.conll", sentences[:3] + ner_sentences(5, 9))
    tasks = (
        "  - {name: s, train: train.csv, test: test.csv, dev_fraction: 0.1}\n"
        "  - {name: n, type: tagging, train: ner.conll, dev: ner_dev.conll}\n"
    )
    spec = _spec(tmp_path, tiny_backbone, tasks)
    code, out, _ = cli(["check", str(spec)], monkeypatch, capsys)
    assert code == 0
    text = " ".join(out.split())
    assert "s: 1 training text occurs with different labels (e.g. 'good film': ['neg', 'pos'])" in text
    assert "s: 1 label has fewer than 10 training examples: 'rare' (" in text
    assert f"s: 1 of 2 test texts also occur in the training data (e.g. {tmp_path / 'test.csv'}:2:" in text
    assert "s: only 20 validation examples" in text
    assert "s: 1 of 185 training texts are longer than max_length=32 tokens (longest 42)" in text
    assert "n: 3 of 8 validation texts also occur in the training data" in text
    code, _, _ = cli(["check", str(spec), "--strict"], monkeypatch, capsys)
    assert code == 1


def test_a_label_spelled_two_ways_and_no_validation_are_warned_of(tiny_backbone: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    rows = [
        (text, {0: "Pos", 1: "pos ", 2: "neg"}[i % 3] if label == "pos" else label)
        for i, (text, label) in enumerate(sentiment_rows(120, 1))
    ]
    cards = [
        ("a card arrived", "card_arrival"),
        ("card came", "card_arrival"),
        ("where is my card", "Card Arrival"),
        ("no card", "Card Arrival"),
    ]
    write_csv(tmp_path / "train.csv", [*rows, *cards])
    spec = _spec(tmp_path, tiny_backbone, "  - {name: s, train: train.csv, min_validation: 50}\n")  # (tests cut any size)
    code, out, err = cli(["check", str(spec)], monkeypatch, capsys)
    assert code == 0, err
    text = " ".join(out.split())
    spelled = "s: 2 labels are spelled more ways than one, each learned as a class of its own: 'Card Arrival' (2) / 'card_arrival' (2);"
    assert f"{spelled} 'Pos' (20) / 'pos' (20); fix the labels in" in text and "only" not in text
    assert "s: no validation examples (a cut from 124 training examples would hold fewer than min_validation=50)" in text
    (tmp_path / "chain.yaml").write_text(spec.read_text().replace("tasks:", "training: {epochs: 1, min_steps: 0}\ntasks:"))
    code, _, err = cli(["train", str(spec), "--out", str(tmp_path / "chain"), "-q"], monkeypatch, capsys)
    said = " ".join(err.split())  # train says the same before it trains
    assert code == 0 and f"warning {spelled}" in said and "warning s: no validation examples" in said
    assert said.index("warning s:") < said.index("s: classification, 124 train")


def test_bad_data_is_the_same_one_line_error_as_train(tiny_backbone: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    write_csv(tmp_path / "train.csv", [*sentiment_rows(20, 1), ("", "pos")])
    spec = _spec(tmp_path, tiny_backbone, "  - {name: s, train: train.csv}\n")
    code, out, err = cli(["check", str(spec)], monkeypatch, capsys)
    assert code == 2 and f"{tmp_path / 'train.csv'}:22: empty text" in err and "data is valid" not in out


@pytest.mark.parametrize("backbone", ["no-such-model-folder"])
def test_a_bad_backbone_points_at_the_spec_line(backbone: str, tmp_path: Path, monkeypatch, capsys) -> None:
    write_csv(tmp_path / "train.csv", sentiment_rows(20, 1))
    (tmp_path / "chain.yaml").write_text(f"backbone: {backbone}\ntasks:\n  - {{name: s, train: train.csv}}\n")
    code, _, err = cli(["check", str(tmp_path / "chain.yaml")], monkeypatch, capsys)
    assert code == 2 and f"{tmp_path / 'chain.yaml'}:1:" in err


@pytest.mark.parametrize("command", ["check", "train"])
def test_max_length_beyond_the_backbone_positions_points_at_the_spec_line(
    command: str, tiny_backbone: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    write_csv(tmp_path / "train.csv", sentiment_rows(40, 1))
    spec = _spec(tmp_path, tiny_backbone, "  - {name: s, train: train.csv}\n", max_length=128)  # the tiny BERT has 64 positions
    args = [command, str(spec), *(["--out", str(tmp_path / "out")] if command == "train" else [])]
    code, _, err = cli(args, monkeypatch, capsys)
    expected = f"{spec}:2: max_length 128 is more than this backbone's 64 positions (fix: set max_length to 64 or less)"
    assert code == 2 and expected in " ".join(err.split()), err


def test_entities_that_cut_words_are_reported(tiny_backbone: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    import json

    rows = [{"text": f"{name} met the {city}-based team", "label": [[0, len(name), "PER"]]} for name, city in [("alice", "paris")] * 30]
    rows[7]["label"].append([14, 19, "LOC"])  # 'paris' inside the word 'paris-based'
    (tmp_path / "ner.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    spec = _spec(tmp_path, tiny_backbone, "  - {name: ner, type: tagging, train: ner.jsonl}\n")
    code, out, err = cli(["check", str(spec)], monkeypatch, capsys)
    assert code == 0, out + err
    assert "warning ner: 1 of 31 entities do not start and end where words do" in " ".join(out.split())
    assert "ner.jsonl:8: 'paris' in 'paris-based'" in " ".join(out.split())


def test_check_of_a_good_spec_imports_no_pytorch(tiny_backbone: Path, sentiment_files: tuple[Path, Path], tmp_path: Path) -> None:
    """The backbone's config, weights header and tokenizer are checked from their files: ``finechain check`` answers in
    about a second instead of the several that importing PyTorch (through transformers) takes."""
    spec = tmp_path / "chain.yaml"
    task = f"{{name: s, train: {sentiment_files[0]}, dev: {sentiment_files[1]}}}"
    spec.write_text(f"backbone: {tiny_backbone}\nsplit: 2\nmax_length: 16\ntasks:\n  - {task}\n")
    probe = "import runpy, sys\ncode = 0\ntry:\n    runpy.run_module('finechain', run_name='__main__')\n"
    probe += "except SystemExit as end:\n    code = end.code\nprint(code, 'torch' in sys.modules, 'transformers' in sys.modules)\n"
    done = subprocess.run(
        [sys.executable, "-c", probe, "check", str(spec)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.stdout.split()[-3:] == ["0", "False", "False"], (done.stdout, done.stderr[-1000:])
