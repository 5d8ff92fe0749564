"""Readers, validation split and batching."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest
import torch

from finechain.data.batching import length_batches, pad_ids
from finechain.data.prepare import load_task_data
from finechain.data.readers import read_examples, read_texts
from finechain.data.tokens import CPU_PASS_TOKENS, GPU_TOKENS_PER_ROW, cheapest_runs, inference_batches
from finechain.errors import DataError
from finechain.heads import head_type
from finechain.spec import TaskSpec
from tests.conftest import write_csv


def test_csv_keeps_line_numbers_across_quoted_newlines(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('text,label\n"two\nlines",a\nplain,b\n')
    examples = read_examples(path)
    assert [(e.text, e.label, e.line) for e in examples] == [("two\nlines", "a", 2), ("plain", "b", 4)]


def test_tsv_jsonl_and_custom_columns(tmp_path: Path) -> None:
    tsv = write_csv(tmp_path / "d.tsv", [("hello", "x")], header=("utterance", "intent"), delimiter="\t")
    assert read_examples(tsv, text_column="utterance", label_column="intent")[0].label == "x"
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text(json.dumps({"t": "a", "y": ["p", "q"]}) + "\n\n" + json.dumps({"t": "b", "y": []}) + "\n")
    examples = read_examples(jsonl, text_column="t", label_column="y")
    assert [(e.label, e.line) for e in examples] == [(["p", "q"], 1), ([], 3)]


def test_read_texts_plain_lines(tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("first\n\n second \n")
    assert read_texts(tmp_path / "in.txt") == ["first", "second"]


def test_validation_split_is_stratified_seeded_and_recorded(tmp_path: Path) -> None:
    rows = [(f"text {i}", "a" if i % 4 else "b") for i in range(200)]
    spec = TaskSpec(name="t", train=write_csv(tmp_path / "t.csv", rows), dev_fraction=0.2)
    first = load_task_data(spec, head_type("classification"), seed=3)
    again = load_task_data(spec, head_type("classification"), seed=3)
    other = load_task_data(spec, head_type("classification"), seed=4)
    assert first.validation.texts == again.validation.texts != other.validation.texts
    assert Counter(first.validation.labels) == {"a": 30, "b": 10}
    assert not set(first.validation.texts) & set(first.train.texts)
    assert first.provenance["validation"] == {"source": "cut from train", "fraction": 0.2, "seed": 3, "rows": 40}


def test_multilabel_separator_and_regression_parse(tmp_path: Path) -> None:
    ml = TaskSpec(
        name="m",
        type="multilabel",
        train=write_csv(tmp_path / "m.csv", [("x", "a;b"), ("y", "a"), ("z", "b;a")] * 2),
        label_separator=";",
        dev_fraction=0.34,
    )
    data = load_task_data(ml, head_type("multilabel"), seed=0)
    assert data.labels == ["a", "b"] and ["a", "b"] in data.train.labels + data.validation.labels
    reg = TaskSpec(name="r", type="regression", train=write_csv(tmp_path / "r.csv", [("x", "1.5"), ("y", "-2"), ("z", "3")] * 3))
    assert load_task_data(reg, head_type("regression"), seed=0).labels == []
    bad = TaskSpec(name="r", type="regression", train=write_csv(tmp_path / "b.csv", [("x", "1.5"), ("y", "high")]))
    with pytest.raises(DataError, match=r"b\.csv:3: label 'high' is not a number"):
        load_task_data(bad, head_type("regression"), seed=0)


def test_length_batches_cover_every_index_once_and_group_lengths() -> None:
    lengths = [(i * 7) % 50 + 1 for i in range(1000)]
    batches = length_batches(lengths, 32, shuffle=True, generator=torch.Generator().manual_seed(0))
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(1000))
    padding = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)
    naive = sum(max(lengths[i] for i in range(s, min(s + 32, 1000))) * len(range(s, min(s + 32, 1000))) for s in range(0, 1000, 32))
    assert padding < 0.2 * (naive - sum(lengths))
    again = length_batches(lengths, 32, shuffle=True, generator=torch.Generator().manual_seed(0))
    assert batches == again


def test_cpu_inference_batches_keep_similar_lengths_together() -> None:
    """A server's merged batch mixes short and long texts: on CPU the short ones are not padded to the long ones."""
    mixed = [12, 80, 14, 75, 10, 90, 11, 85, 13, 70, 12, 95, 15, 88, 10, 77, 14, 82]
    batches = inference_batches(mixed, 64, "cpu")
    assert sorted(mixed[i] for i in batches[0]) == [10, 10, 11, 12, 12, 13, 14, 14, 15]  # the short ones together
    assert all(min(mixed[i] for i in b) >= 70 for b in batches[1:])  # and no long one with them
    lengths = [(i * 7) % 300 + 1 for i in range(2000)]
    cpu = inference_batches(lengths, 16, torch.device("cpu"))
    assert sorted(i for b in cpu for i in b) == list(range(2000)) and max(len(b) for b in cpu) == 16
    assert all([lengths[i] for i in batch] == sorted(lengths[i] for i in batch) for batch in cpu)
    assert inference_batches([5, 1, 4, 2], 2, "cpu") == length_batches([5, 1, 4, 2], 2, shuffle=False)  # equal lengths: as before
    assert sorted(len(b) for b in inference_batches([30] * 100, 64, "cpu")) == [36, 64]  # no padding to save: fewest passes


def test_cpu_batches_are_the_cheapest_cut() -> None:
    """Against every way of cutting the sorted rows into runs: none costs less (a pass, plus its padded tokens)."""

    def cost(widths: list[int], runs: list[tuple[int, int]]) -> float:
        return sum(CPU_PASS_TOKENS + (b - a) * widths[b - 1] for a, b in runs)

    generator = random.Random(0)
    for _ in range(200):
        widths = sorted(generator.choice([generator.randint(3, 20), generator.randint(20, 128)]) for _ in range(generator.randint(1, 9)))
        size = generator.randint(1, 6)
        found = cheapest_runs(widths, size)
        assert [i for a, b in found for i in range(a, b)] == list(range(len(widths))) and all(b - a <= size for a, b in found)
        every = []
        for mask in range(2 ** (len(widths) - 1)):  # a cut after row k where bit k is set
            ends = [k + 1 for k in range(len(widths) - 1) if mask >> k & 1] + [len(widths)]
            runs = list(zip([0, *ends[:-1]], ends, strict=True))
            if all(b - a <= size for a, b in runs):
                every.append(cost(widths, runs))
        assert cost(widths, found) == min(every)


def test_gpu_inference_batches_grow_within_a_token_budget() -> None:
    lengths = [(i * 7) % 300 + 1 for i in range(2000)]
    cpu = inference_batches(lengths, 16, torch.device("cpu"))
    gpu = inference_batches(lengths, 16, torch.device("cuda"))  # only the device type is read: no GPU needed
    assert sorted(i for b in gpu for i in b) == list(range(2000))
    assert len(gpu) < 0.7 * len(cpu)  # short texts share bigger batches
    for batch in gpu:
        widths = [lengths[i] for i in batch]
        assert widths == sorted(widths)
        assert len(batch) >= 16 or batch is gpu[-1]
        assert len(batch) <= 16 or len(batch) * widths[-1] <= 16 * GPU_TOKENS_PER_ROW  # beyond 16 rows: within budget


def test_pad_ids() -> None:
    ids, mask = pad_ids([[5, 6], [7]], 0)
    assert ids.tolist() == [[5, 6], [7, 0]] and mask.tolist() == [[1, 1], [1, 0]]


def test_a_subsample_keeps_two_examples_of_every_label_or_says_it_cannot(tmp_path: Path) -> None:
    """``max_train_examples`` once trained with classes it had cut to one example or none (its checks ran before
    subsampling). Now a rare label keeps two, the size stays as asked, and a size too small for two of each is an error."""
    rows = [(f"common {i}", "a") for i in range(90)] + [(f"often {i}", "b") for i in range(6)] + [("rare one", "c"), ("rare two", "c")]
    path = write_csv(tmp_path / "t.csv", rows)
    for seed in range(5):
        data = load_task_data(TaskSpec(name="t", train=path, max_train_examples=20), head_type("classification"), seed)
        labels = data.train.labels + data.validation.labels
        assert len(labels) == 20 and labels.count("c") == 2 and data.labels == ["a", "b", "c"]
    with pytest.raises(
        DataError, match=r"max_train_examples=5 cannot keep 2 examples of each of the 3 labels \(fix: set max_train_examples to 6"
    ):
        load_task_data(TaskSpec(name="t", train=path, max_train_examples=5), head_type("classification"), 0)
