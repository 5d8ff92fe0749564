"""Continual updates: finechain update continues a task on new data (new labels too) with rehearsal, scores the old
test set before and after, refuses an update that forgets, keeps the previous version, and finechain restore."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch

import finechain.model.artifact as artifact
from finechain import Chain
from finechain.errors import Interrupted
from finechain.model.manifest import task_versions
from finechain.train.loop import Hook, TrainingLoop
from tests.conftest import FILLER, TOPICS, run_cli, run_cli_interrupted, write_csv


def topic_rows(labels: list[str], n: int, seed: int) -> list[tuple[str, str]]:
    """Texts whose topic is given by one of its cue words."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = labels[i % len(labels)]
        rows.append((" ".join([*rng.sample(FILLER, 2), rng.choice(TOPICS[label])]), label))
    return rows


@pytest.fixture
def trained(tmp_path: Path, tiny_backbone: Path, monkeypatch, capsys) -> Path:
    write_csv(tmp_path / "train.csv", topic_rows(["sport", "money"], 120, 1))
    write_csv(tmp_path / "test.csv", topic_rows(["sport", "money"], 40, 2))
    (tmp_path / "chain.yaml").write_text(
        f"backbone: {tiny_backbone}\nsplit: 2\nmax_length: 32\n"
        "training: {epochs: 2, min_steps: 40, learning_rate: 0.003, head_learning_rate: 0.01}\n"
        "tasks:\n  - {name: topic, train: train.csv, test: test.csv}\n"
    )
    code, _, err = run_cli(["train", str(tmp_path / "chain.yaml"), "--out", str(tmp_path / "chain"), "-q"], monkeypatch, capsys)
    assert code == 0, err
    return tmp_path / "chain"


def test_update_adds_a_label_keeps_the_old_and_can_be_restored(trained: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    write_csv(tmp_path / "new.csv", topic_rows(["tech", "sport", "money"], 90, 3))
    write_csv(tmp_path / "new_test.csv", topic_rows(["tech", "sport", "money"], 30, 4))
    before = json.loads((trained / "finechain.json").read_text())["tasks"]["topic"]
    args = ["update", str(trained), "-t", "topic", "-d", str(tmp_path / "new.csv"), "--test", str(tmp_path / "new_test.csv"), "-q"]
    args += ["--max-forgetting", "20"]
    code, out, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    assert "old test" in out and "new test" in out and "new labels: tech" in out and "version 1" in out
    chain = Chain.from_pretrained(trained)
    assert chain.tasks["topic"].head.labels == ["money", "sport", "tech"]  # old labels first, the new one added
    assert chain.predict(["the phone chip app"])[0]["topic"].label == "tech"
    assert chain.score("topic", ["a goal", "the market price"], ["sport", "money"])["accuracy"] >= 0.5
    record = json.loads((trained / "finechain.json").read_text())["tasks"]["topic"]
    update = record["data"]["updates"][0]
    assert update["file"] == str((tmp_path / "new.csv").resolve()) and update["new_labels"] == ["tech"] and update["previous_version"] == 1
    assert update["rehearsed"] > 0 and record["spec"]["train"] == before["spec"]["train"]  # the original file stays the base
    kept = json.loads((trained / "versions" / "topic" / "1" / "entry.json").read_text())
    assert kept["head"]["labels"] == ["money", "sport"] and kept["metrics"] == before["metrics"]
    code, out, err = run_cli(["info", str(trained)], monkeypatch, capsys)
    listing = " ".join(out.split())
    assert code == 0 and "topic: updated 1 time, last on" in listing and "(new.csv, 90 rows, new labels tech)" in listing, listing
    assert "topic: versions kept 1 (finechain restore" in listing

    code, out, err = run_cli(["restore", str(trained), "-t", "topic"], monkeypatch, capsys)
    assert code == 0, err
    assert "version 1 restored" in out
    assert Chain.from_pretrained(trained).tasks["topic"].head.labels == ["money", "sport"]
    assert (trained / "versions" / "topic" / "2" / "entry.json").is_file()  # the updated one, kept: a restore can be undone
    code, _, err = run_cli(["restore", str(trained), "-t", "topic", "--version", "9"], monkeypatch, capsys)
    assert code != 0 and "no kept version 9" in err and "choose one of [1, 2]" in err


def test_an_update_that_teaches_nothing_says_the_weights_are_unchanged(trained: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """The task as it was is the update's epoch-0 candidate: on data it already answers perfectly no check beats it,
    and the command says the weights are unchanged instead of only "updated"."""
    rows = topic_rows(["sport", "money"], 60, 1)
    assert Chain.from_pretrained(trained).score("topic", *map(list, zip(*rows, strict=True)))["accuracy"] == 1.0
    write_csv(tmp_path / "same.csv", rows)
    code, out, err = run_cli(["update", str(trained), "-t", "topic", "-d", str(tmp_path / "same.csv"), "-q"], monkeypatch, capsys)
    assert code == 0, err
    assert "its weights are unchanged" in " ".join(out.split()) and "version 1" in out
    entry = json.loads((trained / "finechain.json").read_text())["tasks"]["topic"]
    kept = trained / "versions" / "topic" / "1"
    for name in ("branch.safetensors", "head.safetensors"):
        assert (trained / "tasks" / entry["folder"] / name).read_bytes() == (kept / name).read_bytes()


class _StopAfterFirstEpoch(Hook):
    """Ctrl-C (what the command line's SIGINT handler raises) as the first epoch's checkpoint is written."""

    def on_epoch_end(self, loop: TrainingLoop) -> None:
        if loop.state.epoch == 1:
            raise Interrupted("SIGINT")


def test_an_interrupted_update_resumes_to_the_same_task(trained: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """Stopped after its first epoch, an update leaves the chain as it was and says to rerun with --resume; resumed, it
    ends with the weights of an update that ran straight through, and its checkpoint goes."""
    write_csv(tmp_path / "new.csv", topic_rows(["tech", "sport", "money"], 90, 3))
    straight = Path(shutil.copytree(trained, tmp_path / "straight"))
    args = ["-t", "topic", "-d", str(tmp_path / "new.csv"), "--max-forgetting", "50", "-q"]
    code, _, err = run_cli(["update", str(straight), *args, "--resume"], monkeypatch, capsys)  # nothing to resume: a whole update
    assert code == 0 and "no interrupted update to resume" in err, err
    manifest = (trained / "finechain.json").read_text()
    fit = Chain.fit
    monkeypatch.setattr(Chain, "fit", lambda self, *a, **kw: fit(self, *a, **{**kw, "hooks": [_StopAfterFirstEpoch()]}))
    for attempt in range(2):  # the second run, without --resume, says it starts over (and is stopped at the same place)
        code, out, err = run_cli(["update", str(trained), *args], monkeypatch, capsys)
        last = (err.strip().splitlines() or [f"exit {code}: {out}"])[-1]
        assert code == 130 and "update: " in last and "is unchanged; the update is checkpointed" in last and "--resume" in last, err
        assert ("holds the checkpoint of an interrupted update; starting over" in " ".join(err.split())) == (attempt == 1)
        assert (trained / "finechain.json").read_text() == manifest and not (trained / "versions").exists()
    monkeypatch.undo()
    code, _, err = run_cli(["update", str(trained), *args, "--resume"], monkeypatch, capsys)
    assert code == 0, err
    resumed, reference = Chain.from_pretrained(trained), Chain.from_pretrained(straight)
    a, b = resumed.tasks["topic"].state_dict(), reference.tasks["topic"].state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), {k: float((a[k] - b[k]).abs().max()) for k in a}
    assert not (trained / "runs" / "topic-update" / "checkpoint").exists()


def test_an_update_that_forgets_is_refused_and_writes_nothing(trained: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    relabelled = [(text, "tech") for text, _ in topic_rows(["sport"], 60, 3)]  # sport texts now called tech: the old answers go
    write_csv(tmp_path / "new.csv", [*relabelled, *topic_rows(["money"], 20, 5)])
    manifest = (trained / "finechain.json").read_text()
    args = ["update", str(trained), "-t", "topic", "-d", str(tmp_path / "new.csv"), "--rehearsal", "0", "--max-forgetting", "0", "-q"]
    code, _, err = run_cli(args, monkeypatch, capsys)
    assert code != 0 and "refused: the old test accuracy fell" in err and "--rehearsal" in err and "Traceback" not in err
    assert (trained / "finechain.json").read_text() == manifest and not (trained / "versions").exists()


def test_update_bad_inputs_are_one_line_errors(trained: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    write_csv(tmp_path / "new.csv", topic_rows(["tech", "sport"], 40, 3))
    code, _, err = run_cli(["update", str(trained), "-t", "mood", "-d", str(tmp_path / "new.csv")], monkeypatch, capsys)
    assert code != 0 and "task 'mood' is not in this chain" in err
    code, _, err = run_cli(["restore", str(trained), "-t", "topic"], monkeypatch, capsys)
    assert code != 0 and "no kept version" in err
    shutil.move(tmp_path / "train.csv", tmp_path / "moved.csv")
    code, _, err = run_cli(["update", str(trained), "-t", "topic", "-d", str(tmp_path / "new.csv"), "-q"], monkeypatch, capsys)
    assert code != 0 and "train.csv" in err and "--old-data" in err and "Traceback" not in err
    args = ["update", str(trained), "-t", "topic", "-d", str(tmp_path / "new.csv"), "--old-data", str(tmp_path / "moved.csv"), "-q"]
    code, _, err = run_cli([*args, "--max-forgetting", "50"], monkeypatch, capsys)
    assert code == 0, err
    write_csv(tmp_path / "bad.csv", [("a goal", "")])
    code, _, err = run_cli(["update", str(trained), "-t", "topic", "-d", str(tmp_path / "bad.csv"), "-q"], monkeypatch, capsys)
    assert code != 0 and "bad.csv:2" in err
    write_csv(tmp_path / "renamed.csv", topic_rows(["tech", "sport"], 40, 3), header=("headline", "label"))
    code, _, err = run_cli(["update", str(trained), "-t", "topic", "-d", str(tmp_path / "renamed.csv"), "-q"], monkeypatch, capsys)
    assert code == 2 and "renamed.csv:1: text column 'text' not found" in err
    assert "(fix: task 'topic' reads texts from 'text' and labels from 'label', as in training: name the file's columns so)" in err


def test_an_interrupted_restore_says_what_it_left(trained: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """Stopped before the new manifest, a restore leaves the chain as it was and keeps no extra version; stopped after
    it, the restore is done and says which version holds the task it replaced."""
    write_csv(tmp_path / "new.csv", topic_rows(["tech", "sport", "money"], 60, 3))
    code, _, err = run_cli(["update", str(trained), "-t", "topic", "-d", str(tmp_path / "new.csv"), "--force", "-q"], monkeypatch, capsys)
    assert code == 0, err
    updated = (trained / "finechain.json").read_text()

    # as the new manifest is written
    code, err = run_cli_interrupted(["restore", str(trained), "-t", "topic"], (artifact, "write_json"), monkeypatch, capsys)
    assert code == 130 and f"(restore: {trained} is unchanged; run the same command again)" in err, err
    assert (trained / "finechain.json").read_text() == updated and task_versions(trained, "topic") == [1]
    assert Chain.from_pretrained(trained).tasks["topic"].head.labels == ["money", "sport", "tech"]

    # after it: the old files not yet removed
    code, err = run_cli_interrupted(["restore", str(trained), "-t", "topic"], (artifact, "_remove_unnamed_tasks"), monkeypatch, capsys)
    assert code == 130 and f"(restore: {trained}: version 1 of 'topic' is restored; the one before is kept as version 2)" in err, err
    assert Chain.from_pretrained(trained).tasks["topic"].head.labels == ["money", "sport"] and task_versions(trained, "topic") == [1, 2]
