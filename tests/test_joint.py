"""Joint multi-task fine-tuning of the trunk: learns, stores the tuned trunk, resumes, accepts later tasks."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

from finechain import Chain, TaskSpec, TrainingConfig
from finechain.cli.app import main
from finechain.data.prepare import load_task_data
from finechain.errors import DataError
from finechain.heads import head_type
from finechain.spec import JointConfig
from finechain.train.checkpoint import Checkpointer
from tests.conftest import TOPICS, ner_sentences, sentiment_rows, write_conll, write_csv

TRAINING = TrainingConfig(batch_size=16, learning_rate=3e-3, head_learning_rate=1e-2, seed=1, min_steps=0, patience=0)
JOINT = JointConfig(epochs=8, trunk_learning_rate=1e-3, refine_epochs=1)


def specs_and_data(folder: Path) -> tuple[list[TaskSpec], dict]:
    specs = [
        TaskSpec(
            name="sent", train=write_csv(folder / "s.csv", sentiment_rows(160, 1)), dev=write_csv(folder / "sd.csv", sentiment_rows(40, 2))
        ),
        TaskSpec(
            name="ner",
            type="tagging",
            train=write_conll(folder / "n.conll", ner_sentences(160, 1)),
            dev=write_conll(folder / "nd.conll", ner_sentences(40, 2)),
        ),
    ]
    return specs, {s.name: load_task_data(s, head_type(s.type), seed=1) for s in specs}


def test_joint_training_tunes_trunk_and_roundtrips(tiny_backbone: Path, tmp_path: Path) -> None:
    specs, data = specs_and_data(tmp_path)
    chain = Chain.from_backbone(str(tiny_backbone), split=2, max_length=32)
    trunk = chain.model.trunk
    before = {k: v.clone() for k, v in trunk.stack.state_dict().items()}
    embeddings = {k: v.clone() for k, v in trunk.embeddings.state_dict().items()}
    results = chain.fit_joint(specs, TRAINING, JOINT, data=data, run_dir=tmp_path / "run", progress=False)
    assert results["sent"].validation["accuracy"] >= 0.9 and results["ner"].validation["entity_f1"] >= 0.8
    assert any(not torch.equal(before[k], v) for k, v in trunk.stack.state_dict().items())
    assert all(torch.equal(embeddings[k], v) for k, v in trunk.embeddings.state_dict().items())
    assert not any(p.requires_grad for p in trunk.parameters())
    log = [json.loads(line) for line in (tmp_path / "run" / "joint" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [k / 2 if k % 2 else k // 2 for k in range(1, 2 * JOINT.epochs + 1)]  # two checks an epoch
    assert set(log[0]["validation"]) == {"sent", "ner"}
    out = chain.save_pretrained(tmp_path / "chain")
    assert json.loads((out / "finechain.json").read_text())["trunk"]["sharing"] == "joint"
    texts = ["alice visited paris", "superb movie"]
    assert Chain.from_pretrained(out).predict(texts) == chain.predict(texts)


def test_joint_gradient_accumulation_steps_every_few_batches(tiny_backbone: Path, tmp_path: Path) -> None:
    """2 tasks x 10 batches = 20 batches an epoch; accumulating 3, that is 7 optimizer steps (the last after 2 batches),
    and the mid-epoch check comes on a step boundary (after batch 12, step 4)."""
    specs, data = specs_and_data(tmp_path)
    joint = JOINT.model_copy(update={"epochs": 2, "refine_epochs": 0})
    chain = Chain.from_backbone(str(tiny_backbone), split=2, max_length=32)
    chain.fit_joint(
        specs, TRAINING.model_copy(update={"gradient_accumulation": 3}), joint, data=data, run_dir=tmp_path / "a", progress=False
    )
    log = [json.loads(line) for line in (tmp_path / "a" / "joint" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["step"]) for r in log] == [(0.5, 4), (1, 7), (1.5, 11), (2, 14)]


def test_joint_resume_is_exact(
    tiny_backbone: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Also with small data repeated in each epoch: 2 tasks x 10 batches a pass, 3 epochs, min_steps 100: 2 passes."""
    specs, data = specs_and_data(tmp_path)
    joint = JOINT.model_copy(update={"epochs": 3, "refine_epochs": 0})
    training = TRAINING.model_copy(update={"min_steps": 100})
    straight = Chain.from_backbone(str(tiny_backbone), split=2, max_length=32)
    straight.fit_joint(specs, training, joint, data=data, run_dir=tmp_path / "a", progress=False)
    log = [json.loads(line) for line in (tmp_path / "a" / "joint" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["passes"], r["step"]) for r in log] == [(2, 20), (2, 40), (2, 60), (2, 80), (2, 100), (2, 120)]
    original = Checkpointer.save

    def crash_after_first(self, *args, **kwargs):
        original(self, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(Checkpointer, "save", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        Chain.from_backbone(str(tiny_backbone), split=2, max_length=32).fit_joint(
            specs, training, joint, data=data, run_dir=tmp_path / "b", progress=False
        )
    monkeypatch.setattr(Checkpointer, "save", original)
    kept = json.loads((tmp_path / "b" / "joint" / "checkpoint" / "state.json").read_text())["loop"]
    assert (kept["epoch"], kept["batch"], kept["step"]) == (0, 20, 20)  # at the check halfway through the first epoch
    resumed = Chain.from_backbone(str(tiny_backbone), split=2, max_length=32)
    capsys.readouterr()
    resumed.fit_joint(specs, training, joint, data=data, run_dir=tmp_path / "b", resume=True, progress=True)
    first = capsys.readouterr().err.splitlines()[0]  # where it goes on from, with the epoch's loss so far (not "-")
    assert re.match(r"joint 20/120 steps \(16%\), loss \d+\.\d{4}, ", first), first
    for a, b in ((straight.model.trunk.stack, resumed.model.trunk.stack), (straight.tasks, resumed.tasks)):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_cli_joint_spec_then_add_task_keeps_tuned_trunk(tiny_backbone: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    write_csv(tmp_path / "s.csv", sentiment_rows(80, 1))
    write_conll(tmp_path / "n.conll", ner_sentences(80, 1))
    (tmp_path / "chain.yaml").write_text(
        f"backbone: {tiny_backbone}\nsplit: 2\nmax_length: 32\nsharing: joint\njoint: {{epochs: 2, loss_weights: {{ner: 2.0}}}}\n"
        "training: {epochs: 2, batch_size: 16, min_steps: 0}\n"
        "tasks:\n  - {name: sent, train: s.csv}\n  - {name: ner, type: tagging, train: n.conll}\n"
    )
    monkeypatch.setattr(sys, "argv", ["finechain", "train", str(tmp_path / "chain.yaml"), "--out", str(tmp_path / "c"), "-q"])
    main()
    trunk_bytes = (tmp_path / "c" / "trunk.safetensors").read_bytes()
    rows = [(f"{w} {t}", topic) for topic, words in TOPICS.items() for w in words for t in ("today", "now", "again", "here")]
    write_csv(tmp_path / "topic.csv", rows)
    (tmp_path / "topic.yaml").write_text("name: topic\ntrain: topic.csv\ntraining: {epochs: 1, min_steps: 0}\n")
    monkeypatch.setattr(sys, "argv", ["finechain", "add-task", str(tmp_path / "c"), str(tmp_path / "topic.yaml"), "-q"])
    main()
    assert (tmp_path / "c" / "trunk.safetensors").read_bytes() == trunk_bytes
    manifest = json.loads((tmp_path / "c" / "finechain.json").read_text())
    assert set(manifest["tasks"]) == {"sent", "ner", "topic"} and manifest["trunk"]["loss_weights"] == {"ner": 2.0}
    capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["finechain", "info", str(tmp_path / "c")])
    main()
    assert f"split 2 of 4 layers, trunk tuned jointly (epoch {manifest['trunk']['best_epoch']} kept)" in capsys.readouterr().out


def test_joint_loss_weights_must_name_tasks(tmp_path: Path) -> None:
    from finechain.errors import SpecError
    from finechain.spec import load_chain_spec

    (tmp_path / "c.yaml").write_text("sharing: joint\njoint: {loss_weights: {nope: 2}}\ntasks:\n  - {name: a, train: a.csv}\n")
    with pytest.raises(SpecError, match="unknown tasks"):
        load_chain_spec(tmp_path / "c.yaml")


def test_auto_sharing_trains_two_tasks_jointly_at_the_joint_split(tiny_backbone: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    from finechain.spec import load_chain_spec

    write_csv(tmp_path / "s.csv", sentiment_rows(80, 1))
    write_conll(tmp_path / "n.conll", ner_sentences(80, 1))
    (tmp_path / "chain.yaml").write_text(
        f"backbone: {tiny_backbone}\nmax_length: 32\njoint: {{refine_epochs: 1}}\ntraining: {{epochs: 2, batch_size: 16, min_steps: 0}}\n"
        "tasks:\n  - {name: sent, train: s.csv}\n  - {name: ner, type: tagging, train: n.conll, training: {epochs: 7}}\n"
    )
    assert load_chain_spec(tmp_path / "chain.yaml").sharing_mode == "joint"
    monkeypatch.setattr(sys, "argv", ["finechain", "train", str(tmp_path / "chain.yaml"), "--out", str(tmp_path / "c"), "-q"])
    main()
    manifest = json.loads((tmp_path / "c" / "finechain.json").read_text())
    assert manifest["split"] == 3 and manifest["trunk"]["sharing"] == "joint"  # 4-layer backbone: joint trunk of 3
    joint_log = (tmp_path / "c" / "runs" / "joint" / "metrics.jsonl").read_text().splitlines()
    assert len(joint_log) == 2 * 2  # joint epochs default to training.epochs (2), two checks each
    refine_log = (tmp_path / "c" / "runs" / "ner" / "metrics.jsonl").read_text().splitlines()
    assert len(refine_log) == 1 * 2  # an explicit refine_epochs (1) wins over the task's own epochs (7)
    (tmp_path / "one.yaml").write_text(f"backbone: {tiny_backbone}\ntasks:\n  - {{name: sent, train: s.csv}}\n")
    assert load_chain_spec(tmp_path / "one.yaml").sharing_mode == "frozen"
    capsys.readouterr()


def test_fits_without_run_dir_leave_no_folders_behind(tiny_backbone: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    specs, data = specs_and_data(tmp_path)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    chain = Chain.from_backbone(str(tiny_backbone), split=2, max_length=32)
    chain.fit_joint(specs, TRAINING, JOINT.model_copy(update={"epochs": 1}), data=data, progress=False)  # refines each task too
    chain.fit(specs[0].model_copy(update={"name": "again"}), TRAINING.model_copy(update={"epochs": 1}), progress=False)
    assert set(chain.tasks) == {"sent", "ner", "again"}
    assert list(scratch.iterdir()) == []  # every checkpoint folder was temporary and is gone
    with pytest.raises(DataError, match="is not a number"):  # raised inside the run, after its folder was made
        chain.fit(specs[0].model_copy(update={"name": "bad", "type": "regression"}), TRAINING, progress=False)
    assert list(scratch.iterdir()) == []  # also after an error


def test_joint_training_stops_early_like_single_task_training(tiny_backbone: Path, tmp_path: Path) -> None:
    """Joint training has patience too: with validation labels opposite to the training labels the mean score soon only
    gets worse, and patience 1 stops the joint phase at the first epoch end after two checks (one epoch) without gain."""
    specs, data = specs_and_data(tmp_path)
    flipped = TaskSpec(
        name="sent",
        train=specs[0].train,
        dev=write_csv(tmp_path / "flip.csv", [(t, "neg" if y == "pos" else "pos") for t, y in sentiment_rows(40, 2)]),
    )
    data["sent"] = load_task_data(flipped, head_type("classification"), seed=1)
    chain = Chain.from_backbone(str(tiny_backbone), split=2, max_length=32)
    joint = JOINT.model_copy(update={"epochs": 8, "refine_epochs": 0})
    chain.fit_joint(
        [flipped, specs[1]], TRAINING.model_copy(update={"patience": 1}), joint, data=data, run_dir=tmp_path / "p", progress=False
    )
    log = [json.loads(line) for line in (tmp_path / "p" / "joint" / "metrics.jsonl").read_text().splitlines()]
    means = [r["mean"] for r in log]
    best = means.index(max(means))
    assert len(log) < 2 * 8 and isinstance(log[-1]["epoch"], int)  # stopped early, at an epoch's end
    assert 2 <= len(log) - 1 - best < 4  # after one epoch's worth of checks (2) without gain, at the next epoch end
    assert chain.trunk_record.best_epoch == log[best]["epoch"]


def test_the_joint_mean_weighs_a_regression_task_the_same_whatever_its_labels_unit(tiny_backbone: Path, tmp_path: Path) -> None:
    """The check kept is chosen on the mean of each task's comparable score: a regression's RMSE as 1 - RMSE / std of
    its training labels. Labels 1024 times larger (a power of two: standardised, they train on the very same numbers)
    give the same means, so the regression task's unit cannot outweigh the classifier's accuracy."""
    import numpy as np

    def rated(n: int, seed: int, scale: float) -> list[tuple[str, float]]:
        return [(text, scale * ((label == "pos") + 0.1 * len(text.split()))) for text, label in sentiment_rows(n, seed)]

    means = []
    for scale in (1.0, 1024.0):
        folder = tmp_path / f"x{int(scale)}"
        folder.mkdir()
        sent = TaskSpec(
            name="sent", train=write_csv(folder / "s.csv", sentiment_rows(160, 1)), dev=write_csv(folder / "sd.csv", sentiment_rows(40, 2))
        )
        stars = TaskSpec(
            name="stars",
            type="regression",
            train=write_csv(folder / "r.csv", rated(160, 3, scale)),
            dev=write_csv(folder / "rd.csv", rated(40, 4, scale)),
        )
        specs = [sent, stars]
        data = {s.name: load_task_data(s, head_type(s.type), seed=1) for s in specs}
        chain = Chain.from_backbone(str(tiny_backbone), split=2, max_length=32)
        joint = JOINT.model_copy(update={"epochs": 2, "refine_epochs": 0})
        chain.fit_joint(specs, TRAINING, joint, data=data, run_dir=folder / "run", progress=False)
        log = [json.loads(line) for line in (folder / "run" / "joint" / "metrics.jsonl").read_text().splitlines()]
        spread = float(np.std([label for _, label in rated(160, 3, scale)]))
        for record in log:
            scores = record["validation"]
            assert record["mean"] == pytest.approx((scores["sent"] + 1 - scores["stars"] / spread) / 2, abs=1e-6)
        means.append([record["mean"] for record in log])
    assert means[0] == pytest.approx(means[1], abs=1e-6)
