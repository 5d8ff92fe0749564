"""finechain remove-task: a task taken out of a saved chain goes with its files and kept versions, the other tasks
answer as they did, and a flow that runs the task is an error naming it (or, with --with-flows, goes too)."""

from __future__ import annotations

import json
from pathlib import Path

import finechain.model.artifact as artifact
from finechain import Chain
from finechain.model.manifest import read_manifest
from tests.conftest import run_cli, run_cli_interrupted

RELEASE = Path(__file__).resolve().parent / "fixtures" / "release_0_1_0"
TEXTS = ["a fine film", "dull and slow"]


def _chain_with_a_flow(tmp_path: Path) -> Path:
    chain = Chain.from_pretrained(RELEASE / "frozen")
    chain.add_flow({"name": "reviews", "stages": [{"task": "sentiment"}, {"task": "stars", "after": "sentiment"}]})
    folder = chain.save_pretrained(tmp_path / "chain")
    assert artifact.keep_task_version(folder, "stars") == 1
    return folder


def test_remove_task_takes_the_task_and_its_files_and_nothing_else(tmp_path: Path, monkeypatch, capsys) -> None:
    folder = _chain_with_a_flow(tmp_path)
    before = Chain.from_pretrained(folder).predict(TEXTS, ["sentiment_lora", "ner"])
    code, out, err = run_cli(["remove-task", str(folder), "-t", "sentiment_lora"], monkeypatch, capsys)
    assert code == 0, err
    assert f"sentiment_lora: removed from {folder}" in " ".join(out.split())
    manifest = read_manifest(folder)
    assert "sentiment_lora" not in manifest.tasks and not (folder / "tasks" / "sentiment_lora").exists()
    assert sorted(p.name for p in (folder / "tasks").iterdir()) == sorted(manifest.tasks)
    after = Chain.from_pretrained(folder).predict(TEXTS, ["ner"])
    assert [a["ner"].to_dict() for a in after] == [b["ner"].to_dict() for b in before]  # the others answer as they did

    code, _, err = run_cli(["remove-task", str(folder), "-t", "stars"], monkeypatch, capsys)  # the flow runs it
    assert code == 2 and "task 'stars' is a stage of flow 'reviews'" in err and "--with-flows" in err
    assert "stars" in read_manifest(folder).tasks and (folder / "versions" / "stars" / "1").is_dir()
    code, out, err = run_cli(["remove-task", str(folder), "-t", "stars", "--with-flows"], monkeypatch, capsys)
    assert code == 0, err
    assert "and the flow(s) that ran it: reviews" in " ".join(out.split())
    saved = json.loads((folder / "finechain.json").read_text())
    assert "stars" not in saved["tasks"] and saved["flows"] == [] and not (folder / "versions" / "stars").exists()

    code, _, err = run_cli(["remove-task", str(folder), "-t", "nope"], monkeypatch, capsys)
    assert code == 2 and f"{folder}: task 'nope' is not in this chain" in " ".join(err.split()) and "'sentiment'" in err


def test_an_interrupted_remove_task_leaves_the_chain_whole(tmp_path: Path, monkeypatch, capsys) -> None:
    folder = _chain_with_a_flow(tmp_path)
    manifest = (folder / "finechain.json").read_text()

    # as the new manifest is written
    code, err = run_cli_interrupted(["remove-task", str(folder), "-t", "ner"], (artifact, "write_json"), monkeypatch, capsys)
    assert code == 130 and f"(remove-task: {folder} is unchanged; run the same command again)" in err, err
    assert (folder / "finechain.json").read_text() == manifest and (folder / "tasks" / "ner").is_dir()
    assert "ner" in Chain.from_pretrained(folder).tasks

    # after it: the files not yet removed
    code, err = run_cli_interrupted(["remove-task", str(folder), "-t", "ner"], (artifact, "_remove_unnamed_tasks"), monkeypatch, capsys)
    assert code == 130 and f"(remove-task: {folder}: task 'ner' is removed)" in err, err
    assert "ner" not in Chain.from_pretrained(folder).tasks
    Chain.from_pretrained(folder).save_pretrained(folder, tasks=[])  # the next save removes what was left
    assert not (folder / "tasks" / "ner").exists()
