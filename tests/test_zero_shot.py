"""Zero-shot tasks: labels (names or descriptions, in templates) answered by text-label embedding similarity, next
to trained tasks in one trunk pass, saved, exported and later trained on examples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from finechain import Chain, TaskSpec, TrainingConfig
from finechain.errors import DataError
from finechain.export.onnx import export_onnx
from finechain.heads.zero_shot import ZeroShotHead, ZeroShotOptions, label_prompts
from finechain.inference import Engine
from finechain.inference.exported import ExportedChain
from finechain.spec import ChainSpec
from tests.conftest import TOPICS, run_cli, sentiment_rows, write_csv

LABELS = {"sport": "match goal team", "money": ["bank price", "market"], "tech": "phone chip app"}
TEXTS = ["the team scored a goal", "the bank price fell", "a new phone chip", "the movie was good"]


def _chain(backbone: Path, split: int = 2) -> Chain:
    chain = Chain.from_backbone(str(backbone), split=split, max_length=32)
    chain.precision = "fp32"
    return chain


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"labels": ["only"]}, "at least 2 labels"),
        ({"labels": ["a", "b"], "templates": ["no slot"]}, "exactly once"),
        ({"labels": ["a", "b"], "templates": ["{} and {}"]}, "exactly once"),
        ({"labels": {"a": "x", "b": ""}}, "empty description"),
        ({"labels": ["a", " "]}, "name is empty"),
        ({"labels": ["a", "b"], "temperature": 0}, "greater than 0"),
        ({}, "labels"),
    ],
)
def test_bad_zero_shot_options_say_what_to_fix(options: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ZeroShotOptions.model_validate(options)


def test_prompts_put_each_description_into_each_template() -> None:
    options = ZeroShotOptions(labels=LABELS, templates=["about {}", "{} news"])
    assert label_prompts(options) == [
        ["about match goal team", "match goal team news"],
        ["about bank price", "bank price news", "about market", "market news"],
        ["about phone chip app", "phone chip app news"],
    ]
    head = ZeroShotHead(options=options)
    assert head.labels == ["sport", "money", "tech"] and head.feature_scale == 20.0
    with pytest.raises(DataError, match=r"dev.csv:7: label 'art' is not one of this zero-shot task's labels"):
        ZeroShotHead.parse_label("art", file="dev.csv", line=7, options=options)


def test_scores_are_scaled_cosines_of_text_and_label_embeddings(tiny_backbone: Path) -> None:
    chain = _chain(tiny_backbone)
    spec = TaskSpec(name="topic", type="zero_shot", head={"labels": LABELS, "templates": ["about {}"], "temperature": 0.1})
    assert spec.branch.mode == "lora"  # untrained adapters: the backbone's own layers
    result = chain.fit(spec, progress=False)
    assert result.validation == {} and result.history == [] and result.best_epoch is None
    texts = chain.embed(TEXTS)
    prompts = chain.embed([p for group in label_prompts(spec.head) for p in group])  # type: ignore[arg-type]
    labels = np.stack([prompts[0], (prompts[1] + prompts[2]) / np.linalg.norm(prompts[1] + prompts[2]), prompts[3]])
    labels /= np.linalg.norm(labels, axis=1, keepdims=True)
    expected = torch.softmax(torch.from_numpy(texts @ labels.T / 0.1), -1).numpy()
    got = np.array([[p["topic"].scores[name] for name in LABELS] for p in chain.predict(TEXTS)])
    assert got == pytest.approx(expected, abs=1e-4)
    assert [p["topic"].label for p in chain.predict(TEXTS)] == [list(LABELS)[i] for i in expected.argmax(1)]


def test_a_zero_shot_task_runs_next_to_a_trained_one_saves_and_exports(tiny_backbone: Path, tmp_path: Path) -> None:
    chain = _chain(tiny_backbone)
    rows = sentiment_rows(80, 1)
    texts, labels = [t for t, _ in rows], [y for _, y in rows]
    chain.fit(TaskSpec(name="sentiment"), TrainingConfig(epochs=1, min_steps=0), texts=texts, labels=labels, progress=False)
    test = [("the team scored a goal", "sport"), ("the market price fell", "money"), ("a phone app", "tech")]
    result = chain.fit(TaskSpec(name="topic", type="zero_shot", head={"labels": LABELS}), progress=False)
    assert result.test is None
    before = chain.predict(TEXTS)
    assert all(set(p) == {"sentiment", "topic"} for p in before)
    scores = chain.score("topic", [t for t, _ in test], [y for _, y in test])
    assert scores["n"] == 3
    with pytest.raises(DataError, match=r"labels\[0\]: label 'art' is not one of"):
        chain.score("topic", ["a painting"], ["art"])
    chain.save_pretrained(tmp_path / "chain")
    stored = list((tmp_path / "chain" / "tasks" / "topic").glob("*.safetensors"))
    assert stored and sum(p.stat().st_size for p in stored) < 100_000  # LoRA adapters and the head: the base layers are the backbone's
    loaded = Chain.from_pretrained(tmp_path / "chain")
    loaded.precision = "fp32"
    for ours, theirs in zip(before, loaded.predict(TEXTS), strict=True):
        assert ours["topic"].label == theirs["topic"].label
        assert ours["topic"].scores == pytest.approx(theirs["topic"].scores, abs=1e-5)
    manifest = export_onnx(loaded, tmp_path / "onnx")
    assert manifest.tasks["topic"].max_abs_diff < 1e-4
    exported = Engine(ExportedChain(tmp_path / "onnx")).predict(TEXTS)
    for ours, theirs in zip(before, exported, strict=True):
        assert ours["topic"].label == theirs["topic"].label
        assert ours["topic"].scores == pytest.approx(theirs["topic"].scores, abs=1e-4)


def test_labelled_examples_train_it_from_the_label_embeddings(tiny_backbone: Path) -> None:
    chain = _chain(tiny_backbone)
    spec = TaskSpec(name="topic", type="zero_shot", head={"labels": ["sport", "money", "tech", "art"]})  # names: poor at first
    start = chain.model.new_task(ZeroShotHead(options=spec.head), spec.branch).head_layer.out.weight.detach().clone()
    filler = ("the", "a", "very", "new", "quite", "and", "really", "story", "music", "plot")
    rows = [(f"{w} {cue} {v}", label) for label in TOPICS for cue in TOPICS[label] for w in filler[:5] for v in filler[5:7]]
    texts, labels = [t for t, _ in rows], [y for _, y in rows]
    training = TrainingConfig(epochs=4, min_steps=0, seed=1, learning_rate=1e-3, head_learning_rate=1e-2)
    result = chain.fit(spec, training, texts=texts, labels=labels, progress=False)
    assert result.best_epoch is not None and result.best_epoch > 0  # training beat the label embeddings on validation
    task = chain.tasks["topic"]
    assert task.head.labels == ["sport", "money", "tech", "art"]  # the options' labels, one without examples kept
    assert result.metric == "macro_f1" and result.history  # a label without examples: selected on macro-F1
    moved = (task.head_layer.out.weight.detach() - start).norm() / start.norm()
    assert 0 < moved < 2  # trained from the label embeddings, not from scratch
    assert task.head.label_counts["art"] == 0
    with pytest.raises(DataError, match=r"train: no rows in the training data \(fix: add labelled rows"):
        chain.fit(spec, texts=[], labels=[], progress=False)
    with pytest.raises(DataError, match=r"train\[0\].*'film' is not one of"):
        chain.fit(spec, texts=["a film", "a film"], labels=["film", "film"], progress=False)


def test_spec_and_cli_train_predict_and_score_a_zero_shot_task(tiny_backbone: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    rows = sentiment_rows(80, 1)
    write_csv(tmp_path / "train.csv", rows)
    write_csv(tmp_path / "topics.csv", [("the team scored a goal", "sport"), ("the market price fell", "money"), ("a chip", "tech")])
    spec = tmp_path / "chain.yaml"
    spec.write_text(
        f"backbone: {tiny_backbone}\nmax_length: 32\ntraining: {{epochs: 1, min_steps: 0}}\ntasks:\n"
        "  - {name: sentiment, train: train.csv}\n"
        "  - name: topic\n    type: zero_shot\n    test: topics.csv\n"
        "    head: {labels: {sport: match goal team, money: bank price market, tech: phone chip app}, templates: ['about {}']}\n"
    )
    two = [{"name": "a", "train": "a.csv"}, {"name": "b", "type": "zero_shot", "head": {"labels": ["x", "y"]}}]
    assert ChainSpec.model_validate({"tasks": two}).sharing_mode == "frozen"  # auto: the zero-shot task needs the backbone's trunk
    code, out, err = run_cli(["train", str(spec), "--out", str(tmp_path / "chain"), "-q"], monkeypatch, capsys)
    assert code == 0, err
    manifest = json.loads((tmp_path / "chain" / "finechain.json").read_text())
    assert manifest["tasks"]["topic"]["metrics"]["test"]["n"] == 3 and "validation" not in manifest["tasks"]["topic"]["metrics"]
    assert (tmp_path / "chain" / "reports" / "topic" / "test.json").is_file()
    (tmp_path / "in.jsonl").write_text(json.dumps({"text": "the team scored a goal"}) + "\n")
    code, out, err = run_cli(["predict", str(tmp_path / "chain"), "-i", str(tmp_path / "in.jsonl")], monkeypatch, capsys)
    assert code == 0, err
    record = json.loads(out.splitlines()[0])
    assert record["topic"]["label"] in {"sport", "money", "tech"} and "sentiment" in record
    code, out, err = run_cli(["info", str(tmp_path / "chain")], monkeypatch, capsys)
    assert code == 0 and "zero_shot" in out and "nan" not in out  # no validation data: shown as -, not nan
    # bad inputs: joint sharing, a test label the task does not have
    spec.write_text(spec.read_text().replace("max_length: 32\n", "max_length: 32\nsharing: joint\n"))
    code, out, err = run_cli(["train", str(spec), "--out", str(tmp_path / "joint"), "-q"], monkeypatch, capsys)
    assert code != 0 and "use sharing: frozen" in err and "Traceback" not in err
    spec.write_text(spec.read_text().replace("sharing: joint\n", ""))
    write_csv(tmp_path / "topics.csv", [("a goal", "sport"), ("a painting", "art")])
    code, out, err = run_cli(["train", str(spec), "--out", str(tmp_path / "bad"), "-q"], monkeypatch, capsys)
    assert code != 0 and "topics.csv:3: label 'art' is not one of" in err
    # nothing to tune in a spec of zero-shot tasks only
    only = tmp_path / "only.yaml"
    only.write_text(f"backbone: {tiny_backbone}\nmax_length: 32\ntasks:\n  - {{name: t, type: zero_shot, head: {{labels: [a, b]}}}}\n")
    code, out, err = run_cli(["tune", str(only), "-n", "1", "-q"], monkeypatch, capsys)
    assert code != 0 and "nothing to tune" in err and "Traceback" not in err
    code, out, err = run_cli(["check", str(only)], monkeypatch, capsys)
    assert code == 0 and "validation examples" not in out + err
