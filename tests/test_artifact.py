"""Saved chains: the typed, versioned manifest; chains written by finechain 0.1 still load and predict as they did;
a damaged folder is a one-line error naming the file."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

import finechain.model.artifact as artifact
from finechain import Chain
from finechain.cli.app import main
from finechain.errors import ArtifactError
from finechain.model.manifest import FORMAT_VERSION, MANIFEST, read_manifest, task_folder

RELEASE = Path(__file__).resolve().parent / "fixtures" / "release_0_1_0"


def _agree(new: dict, old: dict) -> None:
    """A prediction as this finechain gives it covers what 0.1 wrote: same labels, tags and spans; scores to the 6th digit."""
    for key, value in old.items():
        got = new[key]
        if key == "entities":
            assert [(e["type"], e["start"], e["end"], e["text"]) for e in got] == [
                (e["type"], e["start"], e["end"], e["text"]) for e in value
            ]
            assert [e["score"] for e in got] == pytest.approx([e["score"] for e in value], abs=2e-6)
        elif isinstance(value, float | dict):
            assert got == pytest.approx(value, abs=2e-6)
        else:
            assert got == value


@pytest.mark.parametrize("name", ["frozen", "joint"])
def test_chains_saved_by_finechain_0_1_load_and_predict_as_they_did(name: str, tmp_path: Path) -> None:
    """``tests/fixtures/release_0_1_0`` was written by the release before the redesign (see its make.py): every task type,
    LoRA, a layer mix, a jointly tuned trunk. Its manifest (format 1) is upgraded on load."""
    expected = json.loads((RELEASE / "expected.json").read_text())
    assert json.loads((RELEASE / name / MANIFEST).read_text())["format"] == 1
    chain = Chain.from_pretrained(RELEASE / name)
    chain.precision = "fp32"  # as the expectations were made
    predictions = chain.predict(expected["texts"])
    for new, old in zip(predictions, expected["predictions"][name], strict=True):
        assert new.keys() == old.keys()
        for task in old:
            _agree(new[task].to_dict(), old[task])
    # re-saved over itself, it is a current chain (format 3: its tasks replaced in place) that predicts the same
    copy = shutil.copytree(RELEASE / name, tmp_path / name)
    chain.save_pretrained(copy)
    assert json.loads((copy / MANIFEST).read_text())["format"] == FORMAT_VERSION
    again = Chain.from_pretrained(copy)
    again.precision = "fp32"
    assert again.predict(expected["texts"]) == predictions
    assert again.records.keys() == chain.records.keys() and all(again.records[t].metrics for t in again.records)


def test_a_0_1_tagging_spec_is_read_with_its_own_options(tmp_path: Path) -> None:
    """0.1 stored every head field flat in each task's spec (``pooling`` on a tagger, ``label_separator: null`` on a
    classifier); the upgrade keeps each type's own, so `eval` can read the stored spec."""
    manifest = read_manifest(RELEASE / "frozen")
    assert manifest.tasks["ner"].head.options["decoding"] == "constrained"  # what 0.1 ran with (it ignored the spec's argmax)
    assert "pooling" not in manifest.tasks["ner"].spec and manifest.tasks["ner"].spec["decoding"] == "argmax"
    assert manifest.tasks["stars"].head.state["std"] > 0 and manifest.tasks["tags"].head.state["thresholds"]
    from finechain.spec import TaskSpec

    assert TaskSpec.model_validate(manifest.tasks["ner"].spec).head.decoding == "argmax"


def _broken_copy(tmp_path: Path) -> Path:
    """The 0.1 chain, re-saved in the current format (its backbone copied in), to be damaged."""
    return Chain.from_pretrained(RELEASE / "frozen").save_pretrained(tmp_path / "chain")


def _rewrite(folder: Path, change) -> None:
    manifest = json.loads((folder / MANIFEST).read_text())
    change(manifest)
    (folder / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / MANIFEST).write_text("{not json"), r"finechain\.json:1: not valid JSON"),
        (lambda f: (f / MANIFEST).write_text("[1, 2]"), "not a JSON object"),
        (lambda f: _rewrite(f, lambda m: m.update(format=7)), "manifest format 7 is newer than this finechain reads"),
        (lambda f: _rewrite(f, lambda m: m.pop("split")), "split: Field required"),
        (lambda f: _rewrite(f, lambda m: m["tasks"].update({"/etc/x": m["tasks"]["sentiment"]})), "'/etc/x' is not a valid task name"),
        (lambda f: _rewrite(f, lambda m: m["tasks"].update({"a.b": m["tasks"]["sentiment"]})), "'a.b' is not a valid task name"),
        (lambda f: _rewrite(f, lambda m: m["tasks"]["sentiment"]["head"].update(type="ranking")), "unknown task type 'ranking'"),
        (
            lambda f: _rewrite(f, lambda m: m["tasks"]["sentiment"].update(folder="../../outside")),
            r"task 'sentiment' names the folder '../../outside', which is not sentiment\.<number>",
        ),
        (
            lambda f: _rewrite(f, lambda m: m.update(trunk={"file": "../trunk.safetensors"})),
            r"the trunk's file '../trunk\.safetensors' is not trunk\.<number>\.safetensors",
        ),
        (
            lambda f: (f / "tasks" / "stars" / "head.safetensors").write_bytes(b"\x00" * 7),
            r"stars/head\.safetensors: not a readable safetensors",
        ),
        (lambda f: (f / "tasks" / "tags" / "branch.safetensors").unlink(), r"tags/branch\.safetensors: file missing"),
        (
            lambda f: shutil.copy(f / "tasks" / "sentiment_lora" / "branch.safetensors", f / "tasks" / "sentiment" / "branch.safetensors"),
            "weights do not fit task 'sentiment'",
        ),
    ],
)
def test_a_damaged_chain_is_a_one_line_error(tmp_path: Path, damage, message: str, monkeypatch, capsys) -> None:
    folder = _broken_copy(tmp_path)
    damage(folder)
    with pytest.raises(ArtifactError, match=message):
        Chain.from_pretrained(folder)
    monkeypatch.setattr(sys, "argv", ["finechain", "predict", str(folder)])
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO("good film\n"))
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err and str(folder) in err


def test_manifest_names_its_files_once_and_checks_them(tmp_path: Path) -> None:
    chain = Chain.from_pretrained(RELEASE / "frozen")
    out = chain.save_pretrained(tmp_path / "c", tasks=None)
    manifest = json.loads((out / MANIFEST).read_text())
    entry = manifest["tasks"]["sentiment_lora"]
    assert "files" not in entry and entry["branch"]["mode"] == "lora" and entry["head"]["type"] == "classification"
    assert set(entry["head"]) == {"type", "labels", "options", "state"} and entry["head"]["options"]["pooling"] == "mean"
    assert sorted(p.name for p in (out / "tasks" / "sentiment_lora").iterdir()) == ["branch.safetensors", "head.safetensors"]


def _weights(chain: Chain, name: str) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in chain.tasks[name].state_dict().items()}


def _same(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)


def test_a_task_replaced_in_a_saved_chain_is_swapped_whole(tmp_path: Path, monkeypatch) -> None:
    """Replacing a task (update, restore, add-task --replace) writes it into a new folder that only the new manifest
    names: a crash before the manifest is written leaves the old task whole, one after it the new one; the next save
    removes what a crash left."""
    folder = Chain.from_pretrained(RELEASE / "frozen").save_pretrained(tmp_path / "chain")
    tasks = sorted(read_manifest(folder).tasks)
    assert read_manifest(folder).format == 2 and sorted(p.name for p in (folder / "tasks").iterdir()) == tasks
    chain = Chain.from_pretrained(folder)
    old = {name: _weights(chain, name) for name in tasks}
    with torch.no_grad():
        for parameter in chain.tasks["sentiment"].parameters():
            parameter.add_(0.5)
    new = _weights(chain, "sentiment")

    def crash(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(artifact, "write_json", crash)  # stopped as the manifest is written: the new files are named by none
    with pytest.raises(KeyboardInterrupt):
        chain.save_pretrained(folder, tasks=["sentiment"])
    monkeypatch.undo()
    assert (folder / "tasks" / "sentiment.1").is_dir() and (folder / "tasks" / "sentiment").is_dir()
    assert all(_same(_weights(Chain.from_pretrained(folder), name), old[name]) for name in tasks)

    monkeypatch.setattr(artifact, "_remove_unnamed_tasks", crash)  # stopped after the manifest: the new task is whole
    with pytest.raises(KeyboardInterrupt):
        chain.save_pretrained(folder, tasks=["sentiment"])
    monkeypatch.undo()
    manifest = read_manifest(folder)
    assert manifest.format == 3 and manifest.tasks["sentiment"].folder == "sentiment.2"  # .1 was the first crash's
    assert all(manifest.tasks[name].folder is None for name in tasks if name != "sentiment")
    again = Chain.from_pretrained(folder)
    assert _same(_weights(again, "sentiment"), new) and all(_same(_weights(again, n), old[n]) for n in tasks if n != "sentiment")

    chain.save_pretrained(folder, tasks=["sentiment"])  # the next save (into .3: .1 and .2 are there) leaves one folder a task
    assert sorted(p.name for p in (folder / "tasks").iterdir()) == sorted([*(n for n in tasks if n != "sentiment"), "sentiment.3"])
    assert _same(_weights(Chain.from_pretrained(folder), "sentiment"), new)
    assert "folder" not in json.loads((folder / MANIFEST).read_text())["tasks"]["stars"]  # a task in tasks/<name>/ says nothing
    assert artifact.keep_task_version(folder, "sentiment") == 1  # a version is kept from the folder the manifest names
    kept = sorted(p.name for p in (folder / "versions" / "sentiment" / "1").iterdir())
    assert kept == ["branch.safetensors", "entry.json", "head.safetensors"]


def _folders(folder: Path) -> list[str]:
    return sorted(task_folder(folder, name, entry).name for name, entry in read_manifest(folder).tasks.items())


def test_a_saved_chain_leaves_no_task_it_has_not(tmp_path: Path) -> None:
    """A chain saved over a folder whose chain had other tasks (or a task deleted from the loaded chain) leaves the
    folder holding this chain alone: no task folder or kept version that its manifest does not name stays behind."""
    folder = Chain.from_pretrained(RELEASE / "frozen").save_pretrained(tmp_path / "chain")
    assert artifact.keep_task_version(folder, "stars") == 1 and artifact.keep_task_version(folder, "sentiment") == 1
    chain = Chain.from_pretrained(folder)
    del chain.tasks["stars"]
    chain.save_pretrained(folder, tasks=["sentiment"])  # one task written, the manifest names the chain's tasks
    tasks = sorted(read_manifest(folder).tasks)
    assert "stars" not in tasks and sorted(p.name for p in (folder / "tasks").iterdir()) == _folders(folder)
    assert sorted(p.name for p in (folder / "versions").iterdir()) == ["sentiment"]
    assert sorted(Chain.from_pretrained(folder).tasks) == tasks
    other = Chain.from_pretrained(RELEASE / "joint")  # another chain saved whole over it
    other.save_pretrained(folder)
    tasks = sorted(read_manifest(folder).tasks)
    assert sorted(p.name for p in (folder / "tasks").iterdir()) == _folders(folder) and tasks == sorted(other.tasks)
    assert sorted(p.name for p in (folder / "versions").iterdir()) == ["sentiment"]  # a task of that name is there
    assert sorted(Chain.from_pretrained(folder).tasks) == tasks


def _trunk(chain: Chain) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in chain.model.trunk.stack.layers.state_dict().items()}


def test_a_tuned_trunk_written_over_a_saved_chain_is_swapped_whole(tmp_path: Path, monkeypatch) -> None:
    """A chain saved whole over a folder whose chain has a tuned trunk writes its trunk to a new file that only the new
    manifest names: a crash before the manifest leaves the old chain whole (its tasks on its own trunk)."""
    folder = Chain.from_pretrained(RELEASE / "joint").save_pretrained(tmp_path / "chain")
    assert read_manifest(folder).format == 2 and read_manifest(folder).trunk.file is None and (folder / "trunk.safetensors").is_file()
    chain = Chain.from_pretrained(folder)
    old = _trunk(chain)
    with torch.no_grad():
        for parameter in chain.model.trunk.stack.layers.parameters():
            parameter.add_(0.5)
    new = _trunk(chain)

    def crash(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(artifact, "write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        chain.save_pretrained(folder)
    monkeypatch.undo()
    assert (folder / "trunk.1.safetensors").is_file() and _same(_trunk(Chain.from_pretrained(folder)), old)

    chain.save_pretrained(folder)
    manifest = read_manifest(folder)
    assert manifest.format == 3 and manifest.trunk.file == "trunk.2.safetensors"  # .1 was the crash's
    assert sorted(p.name for p in folder.glob("trunk*")) == ["trunk.2.safetensors"]
    assert _same(_trunk(Chain.from_pretrained(folder)), new)
    Chain.from_pretrained(folder).save_pretrained(tmp_path / "elsewhere")  # a new folder: the usual name, whatever it was loaded from
    assert read_manifest(tmp_path / "elsewhere").trunk.file is None and read_manifest(tmp_path / "elsewhere").format == 2
    assert _same(_trunk(Chain.from_pretrained(tmp_path / "elsewhere")), new)
