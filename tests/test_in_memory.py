"""Training from in-memory lists (``Chain.fit(spec, texts=..., labels=...)``): same result as files, same checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from finechain import Chain, TaskSpec, TrainingConfig
from finechain.errors import DataError, SpecError
from finechain.spec import load_chain_spec, load_task_specs
from tests.conftest import ner_sentences, sentiment_rows, write_conll, write_csv

FAST = TrainingConfig(epochs=3, batch_size=16, learning_rate=3e-3, head_learning_rate=1e-2, patience=0, seed=1, min_steps=0)


def _weights(chain: Chain, name: str) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in chain.tasks[name].state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_lists_train_exactly_like_the_same_rows_in_a_file(tiny_backbone: Path, tmp_path: Path) -> None:
    train, test = sentiment_rows(120, seed=3), sentiment_rows(40, seed=4)
    from_file = Chain.from_backbone(str(tiny_backbone), split=2, max_length=32)
    spec = TaskSpec(name="s", train=write_csv(tmp_path / "train.csv", train), test=write_csv(tmp_path / "test.csv", test))
    file_result = from_file.fit(spec, FAST, progress=False)
    in_memory = Chain.from_backbone(str(tiny_backbone), split=2, max_length=32)
    texts, labels = [t for t, _ in train], [y for _, y in train]
    result = in_memory.fit(
        TaskSpec(name="s"), FAST, texts=texts, labels=labels, test=([t for t, _ in test], [y for _, y in test]), progress=False
    )
    assert _same(_weights(from_file, "s"), _weights(in_memory, "s"))  # same validation cut, same batches, same weights
    assert result.validation == file_result.validation and result.test == file_result.test
    data = in_memory.records["s"].data
    assert data["train"] == "in memory" and data["validation"]["source"] == "cut from train" and data["test"]["source"] == "in memory"
    loaded = Chain.from_pretrained(in_memory.save_pretrained(tmp_path / "chain"))
    assert loaded.predict(texts[:5]) == in_memory.predict(texts[:5])


def test_tagging_from_word_and_tag_lists_matches_the_conll_file(tiny_backbone: Path, tmp_path: Path) -> None:
    sentences, dev = ner_sentences(60, seed=5), ner_sentences(20, seed=6)
    words = [[w for w, _ in s] for s in sentences]
    iob1 = [["I-" + t[2:] if t.startswith("B-") else t for _, t in s] for s in sentences]  # IOB1 is repaired like in a file
    dev_lists = ([[w for w, _ in s] for s in dev], [[t for _, t in s] for s in dev])
    from_file = Chain.from_backbone(str(tiny_backbone), split=2, max_length=32)
    spec = TaskSpec(
        name="ner", type="tagging", train=write_conll(tmp_path / "train.conll", sentences), dev=write_conll(tmp_path / "d", dev)
    )
    from_file.fit(spec, FAST, progress=False)
    in_memory = Chain.from_backbone(str(tiny_backbone), split=2, max_length=32)
    in_memory.fit(TaskSpec(name="ner", type="tagging"), FAST, texts=words, labels=iob1, dev=dev_lists, progress=False)
    assert in_memory.tasks["ner"].head.labels == from_file.tasks["ner"].head.labels
    assert _same(_weights(from_file, "ner"), _weights(in_memory, "ner"))


@pytest.mark.parametrize(
    ("spec", "kwargs", "error", "message"),
    [
        (
            TaskSpec(name="s"),
            {"texts": ["good", "bad"], "labels": ["pos"]},
            DataError,
            "train: 2 texts but 1 labels (fix: pass one label per text)",
        ),
        (TaskSpec(name="s"), {"texts": ["good", " ", "bad", "awful"], "labels": ["p", "p", "n", "n"]}, DataError, "train[1]: empty text"),
        (TaskSpec(name="s"), {"texts": ["good", 7, "bad", "no"], "labels": ["p", "p", "n", "n"]}, DataError, "train[1]: text is a int"),
        (TaskSpec(name="s"), {"texts": ["a", "b", "c"], "labels": ["p", "p", "n"]}, DataError, "train[2]: label 'n' has only 1 example"),
        (
            TaskSpec(name="s"),
            {"texts": ["a", "b", "c", "d"], "labels": ["p", "p", "n", "n"], "dev": (["e", "f"], ["p", "x"])},
            DataError,
            "dev[1]: label 'x' does not occur in the training data",
        ),
        (
            TaskSpec(name="r", type="regression"),
            {"texts": ["a", "b"], "labels": [1.0, "many"]},
            DataError,
            "train[1]: label 'many' is not a number",
        ),
        (
            TaskSpec(name="s"),
            {"texts": ["a", "b", "c"], "labels": ["p", None, "p"]},
            DataError,
            "train[1]: the label is null (fix: fill in the label or remove the row)",
        ),
        (TaskSpec(name="r", type="regression"), {"texts": ["a", "b"], "labels": [None, 2.0]}, DataError, "train[0]: the label is null"),
        (
            TaskSpec(name="m", type="multilabel"),
            {"texts": ["a", "b"], "labels": [["x"], None]},
            DataError,
            "train[1]: the label is null (fix: write [] for a text with none of the labels",
        ),
        (
            TaskSpec(name="t", type="tagging"),
            {"texts": [["Peter", "left"], ["Ann"]], "labels": [["B-PER", "O"], ["B-PER", "O"]]},
            DataError,
            "train[1]: 1 words but 2 tags",
        ),
        (TaskSpec(name="t", type="tagging"), {"texts": ["Peter left"], "labels": [["B-PER", "O"]]}, DataError, "train[0]: a tagging text"),
        (
            TaskSpec(name="t", type="tagging", strict_bio=True),
            {"texts": [["Peter", "left"]], "labels": [["I-PER", "O"]]},
            DataError,
            "train[0]: 'I-PER' follows 'the sentence start' (strict IOB2)",
        ),
        (TaskSpec(name="s"), {"texts": ["a", "b"]}, DataError, "pass both texts= and labels="),
        (TaskSpec(name="s", train="x.csv"), {"texts": ["a"], "labels": ["p"]}, SpecError, "task 's' has both a train file and texts="),
        (TaskSpec(name="s", train="x.csv"), {"dev": (["a"], ["p"])}, SpecError, "dev= and test= go with texts= and labels="),
        (TaskSpec(name="s"), {}, SpecError, "task 's' has no training data (fix: set 'train: path/to/file', or pass texts= and labels="),
    ],
)
def test_bad_lists_name_the_item_and_the_fix(
    tiny_backbone: Path, spec: TaskSpec, kwargs: dict, error: type[Exception], message: str
) -> None:
    chain = Chain.from_backbone(str(tiny_backbone), split=2, max_length=32)
    with pytest.raises(error) as caught:
        chain.fit(spec, FAST, progress=False, **kwargs)
    assert str(caught.value).startswith(message)
    assert not chain.tasks


def test_a_spec_file_still_needs_train_files(tmp_path: Path) -> None:
    chain_file = tmp_path / "chain.yaml"
    chain_file.write_text("tasks:\n  - name: a\n    train: a.csv\n  - name: b\n    type: regression\n")
    with pytest.raises(SpecError, match=r"chain\.yaml:4: task 'b' has no 'train' file \(fix: add 'train: path/to/train.csv'\)"):
        load_chain_spec(chain_file)
    task_file = tmp_path / "topic.yaml"
    task_file.write_text("name: topic\ntype: classification\n")
    with pytest.raises(SpecError, match=r"topic\.yaml:1: task 'topic' has no 'train' file"):
        load_task_specs(task_file)


def test_fit_joint_mixes_files_and_lists_and_matches_files_only(tiny_backbone: Path, tmp_path: Path) -> None:
    from finechain.spec import JointConfig

    joint = JointConfig(epochs=2, trunk_learning_rate=1e-3, refine_epochs=1)
    sentiment, sentences = sentiment_rows(80, seed=7), ner_sentences(60, seed=8)
    files = [
        TaskSpec(name="sent", train=write_csv(tmp_path / "s.csv", sentiment)),
        TaskSpec(name="ner", type="tagging", train=write_conll(tmp_path / "n.conll", sentences)),
    ]
    from_files = Chain.from_backbone(str(tiny_backbone), split=2, max_length=32)
    from_files.fit_joint(files, FAST, joint, progress=False)
    mixed = Chain.from_backbone(str(tiny_backbone), split=2, max_length=32)
    lists = ([t for t, _ in sentiment], [y for _, y in sentiment])
    mixed.fit_joint([TaskSpec(name="sent"), files[1]], FAST, joint, data={"sent": lists}, progress=False)
    assert _same(from_files.model.trunk.stack.state_dict(), mixed.model.trunk.stack.state_dict())
    assert _same(_weights(from_files, "sent"), _weights(mixed, "sent")) and _same(_weights(from_files, "ner"), _weights(mixed, "ner"))
    assert mixed.records["sent"].data["train"] == "in memory" and "train_file" in mixed.records["ner"].data
    with pytest.raises(SpecError, match=r"data for unknown tasks \['sentiment'\] \(fix: the tasks are \['sent', 'ner'\]\)"):
        mixed.fit_joint(files, FAST, joint, data={"sentiment": lists}, progress=False)


def test_predict_score_and_embed_name_a_bad_input_item(tiny_backbone: Path) -> None:
    chain = Chain.from_backbone(str(tiny_backbone), split=2, max_length=32)
    rows = sentiment_rows(40, seed=9)
    chain.fit(TaskSpec(name="s"), FAST, texts=[t for t, _ in rows], labels=[y for _, y in rows], progress=False)
    assert chain.predict(("good film", "bad film")) == chain.predict(["good film", "bad film"])  # any iterable
    assert chain.predict([("bad", "film")]) == chain.predict([["bad", "film"]])
    with pytest.raises(DataError, match=r"^texts\[1\]: strings and word lists are mixed: the first text is a string"):
        chain.predict(["good film", ["bad", "film"]])
    for call in (lambda: chain.predict(["fine", float("nan")]), lambda: chain.embed(["fine", float("nan")])):
        with pytest.raises(DataError, match=r"^texts\[1\]: nan is not a text \(fix: pass strings"):
            call()
    with pytest.raises(DataError, match="2 texts but 1 labels"):
        chain.score("s", ["good", "bad"], ["pos"])
    with pytest.raises(Exception, match=r"unknown task\(s\) \['x'\]"):
        chain.score("x", ["good"], ["pos"])
    with pytest.raises(DataError, match=r"^labels\[1\]: label 'positive' does not occur in the training data"):
        chain.score("s", ["good", "great"], ["pos", "positive"])
    with pytest.raises(DataError, match=r"^labels\[0\]: label \['pos'\] is not a single class name"):
        chain.score("s", ["good"], [["pos"]])
