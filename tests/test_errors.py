"""Bad input: one line naming file and line, exit code 2, no traceback, nothing written."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from finechain.cli.app import main
from finechain.io import folder_lock
from finechain.jobs.training import left_in, resumable
from tests.conftest import sentiment_rows, write_csv


def run_cli(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["finechain", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


def write_spec(folder: Path, tasks: str, backbone: Path, extra: str = "") -> Path:
    spec = folder / "chain.yaml"
    spec.write_text(
        f"backbone: {backbone}\nsplit: 2\n{extra}training:\n  epochs: 1\n  min_steps: 0\nmax_length: 32\ntasks:\n{tasks}"
    )  # the tiny BERT: 64 positions
    return spec


def task_block(train: str = "train.csv", dev: str | None = None, extra: str = "") -> str:
    lines = f"  - name: s\n    type: classification\n    train: {train}\n"
    if dev:
        lines += f"    dev: {dev}\n"
    return lines + extra


def expect_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    write_csv(tmp_path / "train.csv", sentiment_rows(40, 0))
    return tmp_path


def test_missing_file(folder: Path, tiny_backbone: Path, monkeypatch, capsys) -> None:
    spec = write_spec(folder, task_block("nope.csv"), tiny_backbone)
    code, _, err = run_cli(["train", str(spec), "--out", str(folder / "out")], monkeypatch, capsys)
    expect_one_line_error(code, err, "nope.csv", "file not found")
    assert not (folder / "out").exists()


def test_missing_column(folder: Path, tiny_backbone: Path, monkeypatch, capsys) -> None:
    write_csv(folder / "cols.csv", [("hi", "a")], header=("utterance", "label"))
    spec = write_spec(folder, task_block("cols.csv"), tiny_backbone)
    code, _, err = run_cli(["train", str(spec), "--out", str(folder / "out")], monkeypatch, capsys)
    expect_one_line_error(code, err, "cols.csv:1:", "text column 'text' not found", "text_column")


def test_empty_text(folder: Path, tiny_backbone: Path, monkeypatch, capsys) -> None:
    write_csv(folder / "empty.csv", [*sentiment_rows(6, 0), ("  ", "pos")])
    spec = write_spec(folder, task_block("empty.csv"), tiny_backbone)
    code, _, err = run_cli(["train", str(spec), "--out", str(folder / "out")], monkeypatch, capsys)
    expect_one_line_error(code, err, "empty.csv:8:", "empty text")


def test_unknown_label_in_dev(folder: Path, tiny_backbone: Path, monkeypatch, capsys) -> None:
    write_csv(folder / "dev.csv", [("good film", "pos"), ("odd film", "meh")])
    spec = write_spec(folder, task_block(dev="dev.csv"), tiny_backbone)
    code, _, err = run_cli(["train", str(spec), "--out", str(folder / "out")], monkeypatch, capsys)
    expect_one_line_error(code, err, "dev.csv:3:", "label 'meh' does not occur in the training data")


def test_bad_encoding(folder: Path, tiny_backbone: Path, monkeypatch, capsys) -> None:
    (folder / "latin.csv").write_bytes("text,label\ngood,pos\ncaf\xe9 bad,neg\n".encode("latin-1"))
    spec = write_spec(folder, task_block("latin.csv"), tiny_backbone)
    code, _, err = run_cli(["train", str(spec), "--out", str(folder / "out")], monkeypatch, capsys)
    expect_one_line_error(code, err, "latin.csv:3:", "not valid UTF-8", "re-save")


def test_label_with_one_example(folder: Path, tiny_backbone: Path, monkeypatch, capsys) -> None:
    write_csv(folder / "rare.csv", [*sentiment_rows(10, 0), ("strange film", "odd")])
    spec = write_spec(folder, task_block("rare.csv"), tiny_backbone)
    code, _, err = run_cli(["train", str(spec), "--out", str(folder / "out")], monkeypatch, capsys)
    expect_one_line_error(code, err, "rare.csv:12:", "label 'odd' has only 1 example")


def test_ragged_csv_row(folder: Path, tiny_backbone: Path, monkeypatch, capsys) -> None:
    (folder / "ragged.csv").write_text("text,label\ngood,pos\nbad, really,neg\n")
    spec = write_spec(folder, task_block("ragged.csv"), tiny_backbone)
    code, _, err = run_cli(["train", str(spec), "--out", str(folder / "out")], monkeypatch, capsys)
    expect_one_line_error(code, err, "ragged.csv:3:", "3 fields")


def test_invalid_jsonl(folder: Path, tiny_backbone: Path, monkeypatch, capsys) -> None:
    (folder / "d.jsonl").write_text('{"text": "good", "label": "pos"}\n{"text": "bad", "label": \n')
    spec = write_spec(folder, task_block("d.jsonl"), tiny_backbone)
    code, _, err = run_cli(["train", str(spec), "--out", str(folder / "out")], monkeypatch, capsys)
    expect_one_line_error(code, err, "d.jsonl:2:", "invalid JSON")


def test_spec_unknown_field_names_its_line(folder: Path, tiny_backbone: Path, monkeypatch, capsys) -> None:
    spec = write_spec(folder, task_block(extra="    learning_rat: 0.1\n"), tiny_backbone)
    code, _, err = run_cli(["train", str(spec), "--out", str(folder / "out")], monkeypatch, capsys)
    expect_one_line_error(code, err, "chain.yaml:11:", "tasks.0.learning_rat", "did you mean 'training.learning_rate'")
    spec = write_spec(folder, task_block(extra="    epochs: 2\n"), tiny_backbone)
    code, _, err = run_cli(["train", str(spec), "--out", str(folder / "out")], monkeypatch, capsys)
    expect_one_line_error(code, err, "chain.yaml:11:", "tasks.0.epochs", "move it under 'training:'")
    spec = write_spec(folder, task_block(extra="    colour: red\n"), tiny_backbone)
    code, _, err = run_cli(["train", str(spec), "--out", str(folder / "out")], monkeypatch, capsys)
    expect_one_line_error(code, err, "chain.yaml:11:", "tasks.0.colour", "remove or rename")


def test_spec_bad_value_and_type(folder: Path, tiny_backbone: Path, monkeypatch, capsys) -> None:
    spec = write_spec(folder, task_block().replace("classification", "clasification"), tiny_backbone)
    code, _, err = run_cli(["train", str(spec), "--out", str(folder / "out")], monkeypatch, capsys)
    expect_one_line_error(code, err, "chain.yaml:9:", "unknown task type 'clasification'")
    spec.write_text(spec.read_text().replace("epochs: 1", "epochs: -3").replace("clasification", "classification"))
    code, _, err = run_cli(["train", str(spec), "--out", str(folder / "out")], monkeypatch, capsys)
    expect_one_line_error(code, err, "chain.yaml:4:", "training.epochs")


def test_spec_head_options_that_contradict_name_their_line(folder: Path, tiny_backbone: Path, monkeypatch, capsys) -> None:
    block = task_block().replace("classification", "tagging") + "    head: {crf: true, decoding: argmax}\n"
    code, _, err = run_cli(["train", str(write_spec(folder, block, tiny_backbone)), "--out", str(folder / "out")], monkeypatch, capsys)
    expect_one_line_error(code, err, "chain.yaml:11:", "a CRF decodes whole tag sequences", "remove `decoding: argmax`")
    assert not (folder / "out").exists()


def test_a_value_of_none_of_its_kinds_names_every_kind(folder: Path, tiny_backbone: Path, monkeypatch, capsys) -> None:
    spec = write_spec(folder, task_block(), tiny_backbone)
    spec.write_text(spec.read_text().replace("split: 2", "split: autoo"))
    code, _, err = run_cli(["check", str(spec)], monkeypatch, capsys)
    expect_one_line_error(code, err, "chain.yaml:2: split: expected a whole number or 'auto', not 'autoo'")
    for texts, message in (
        ("nmes", "chain.yaml:12: tasks.0.head.label_texts: expected 'names' or a mapping, not 'nmes'"),
        ("{0: 3}", "tasks.0.head.label_texts.0: expected text or a list, not 3 (fix: write text or a list)"),
    ):
        block = task_block().replace("classification", "prototype") + f"    head:\n      label_texts: {texts}\n"
        code, _, err = run_cli(["train", str(write_spec(folder, block, tiny_backbone)), "--out", str(folder / "out")], monkeypatch, capsys)
        expect_one_line_error(code, err, message)
        assert not (folder / "out").exists()


def test_a_run_that_fails_before_writing_leaves_no_folder(tmp_path: Path) -> None:
    out = tmp_path / "new" / "chain"
    with pytest.raises(RuntimeError), folder_lock(out):
        raise RuntimeError("failed before writing anything")
    assert not (tmp_path / "new").exists()  # the folder and the parent made for it
    with pytest.raises(RuntimeError), folder_lock(out):
        (out / "runs" / "s").mkdir(parents=True)  # a run's folder, made before its first checkpoint: nothing to keep
        raise RuntimeError("interrupted before the first epoch ended")
    assert not (tmp_path / "new").exists()
    with pytest.raises(RuntimeError), folder_lock(out):
        (out / "runs" / "s" / "checkpoint").mkdir(parents=True)
        (out / "runs" / "s" / "checkpoint" / "state.json").write_text("{}")  # a checkpoint to resume from stays, and the folder
        raise RuntimeError("failed after a checkpoint")
    assert (out / "runs" / "s" / "checkpoint" / "state.json").is_file()
    existing = tmp_path / "empty"
    existing.mkdir()
    with folder_lock(existing):
        pass
    assert existing.is_dir()  # a folder the user made is theirs


def test_a_training_run_stopped_before_anything_resumable_leaves_no_folder(tmp_path: Path) -> None:
    out = tmp_path / "new" / "chain"
    with pytest.raises(KeyboardInterrupt), folder_lock(out, keep=resumable):
        (out / "runs" / "s").mkdir(parents=True)
        (out / "runs" / "s" / "metrics.jsonl").write_text('{"step": 3}\n')  # the half-epoch check's line: no checkpoint yet
        raise KeyboardInterrupt
    assert not (tmp_path / "new").exists()
    with pytest.raises(KeyboardInterrupt), folder_lock(out, keep=resumable):
        (out / "runs" / "s" / "checkpoint").mkdir(parents=True)
        (out / "runs" / "s" / "metrics.jsonl").write_text('{"step": 3}\n')
        (out / "runs" / "s" / "checkpoint" / "state.json").write_text("{}")  # what --resume continues from
        raise KeyboardInterrupt
    assert resumable(out) and (out / "runs" / "s" / "metrics.jsonl").is_file()
    existing = tmp_path / "theirs"
    (existing / "notes").mkdir(parents=True)
    (existing / "notes" / "a.txt").write_text("mine")
    with pytest.raises(KeyboardInterrupt), folder_lock(existing, keep=resumable):
        raise KeyboardInterrupt
    assert (existing / "notes" / "a.txt").read_text() == "mine"  # a folder this call did not make is never emptied


def test_an_interrupt_says_what_the_training_folder_keeps(tmp_path: Path) -> None:
    folder = tmp_path / "chain"
    nothing = "stopped before its first validation check, so nothing is checkpointed; run the same command again"
    assert left_in(folder, ["a", "b"]) == nothing

    def checkpointed(run: str) -> None:
        (folder / "runs" / run / "checkpoint").mkdir(parents=True)
        (folder / "runs" / run / "checkpoint" / "state.json").write_text("{}")

    checkpointed("joint")  # joint training, before the chain is first saved
    assert left_in(folder, ["a", "b"]) == "the joint run is checkpointed at its last validation check; rerun with --resume to continue"
    manifest = Path(__file__).resolve().parent / "fixtures" / "release_0_1_0" / "frozen" / "finechain.json"
    (folder / "finechain.json").write_bytes(manifest.read_bytes())  # a saved chain: sentiment, sentiment_lora, tags, stars, ner
    checkpointed("sentiment")
    checkpointed("topic")
    assert left_in(folder, ["sentiment", "tags", "topic"]) == (
        "sentiment, tags are trained and saved; topic is checkpointed at its last validation check; rerun with --resume to continue"
    )  # neither the finished joint run nor sentiment's last checkpoint is news
    assert left_in(folder, ["topic"]) == "topic is checkpointed at its last validation check; rerun with --resume to continue"  # add-task
    assert left_in(folder, ["ner"]) == "ner is trained and saved; rerun with --resume to continue"
    (folder / "finechain.json").write_text("{")  # damaged: said when the folder is read next, not on the way out of an interrupt
    assert left_in(folder, ["topic"]) == "topic is checkpointed at its last validation check; rerun with --resume to continue"


def test_invalid_yaml(folder: Path, monkeypatch, capsys) -> None:
    (folder / "broken.yaml").write_text("tasks:\n  - name: a\n   type: x\n")
    code, _, err = run_cli(["train", str(folder / "broken.yaml"), "--out", str(folder / "out")], monkeypatch, capsys)
    expect_one_line_error(code, err, "broken.yaml:3:", "invalid YAML")


def test_missing_backbone_and_not_a_chain(folder: Path, monkeypatch, capsys) -> None:
    spec = write_spec(folder, task_block(), folder / "no-such-model")
    code, _, err = run_cli(["train", str(spec), "--out", str(folder / "out")], monkeypatch, capsys)
    expect_one_line_error(code, err, "no-such-model", "not found")
    code, _, err = run_cli(["info", str(folder)], monkeypatch, capsys)
    expect_one_line_error(code, err, "not a finechain folder")


def test_bad_split_device_and_backbone_point_at_their_spec_line(folder: Path, tiny_backbone: Path, monkeypatch, capsys) -> None:
    spec = write_spec(folder, task_block(), tiny_backbone)
    spec.write_text(spec.read_text().replace("split: 2", "split: 9"))
    code, _, err = run_cli(["train", str(spec), "--out", str(folder / "out")], monkeypatch, capsys)
    expect_one_line_error(code, err, "chain.yaml:2:", "split 9 is outside 0..4", "choose 0..4")
    spec.write_text(spec.read_text().replace("split: 9", "split: 2\ndevice: tpu"))
    code, _, err = run_cli(["train", str(spec), "--out", str(folder / "out")], monkeypatch, capsys)
    expect_one_line_error(code, err, "chain.yaml:3:", "unknown device 'tpu'")
    spec.write_text(spec.read_text().replace(f"backbone: {tiny_backbone}", "backbone: ./no-such-model"))
    code, _, err = run_cli(["train", str(spec), "--out", str(folder / "out")], monkeypatch, capsys)
    expect_one_line_error(code, err, "chain.yaml:1:", "backbone folder './no-such-model' not found")


def test_bad_entity_span_in_jsonl_tagging_data(folder: Path, tiny_backbone: Path, monkeypatch, capsys) -> None:
    """Square brackets in a message reach the terminal as written (not read as rich markup)."""
    (folder / "ner.jsonl").write_text('{"text": "Peter left", "label": [[0, 5, "PER"]]}\n{"text": "Anna", "label": [[0, 9, "PER"]]}\n')
    spec = write_spec(folder, task_block("ner.jsonl").replace("classification", "tagging"), tiny_backbone)
    code, _, err = run_cli(["check", str(spec)], monkeypatch, capsys)
    expect_one_line_error(code, err, "ner.jsonl:2:", "entity span [0, 9] is not inside the text", '[start, end, "TYPE"]')


@pytest.mark.parametrize("receiver", ["this thread", "another thread"])
@pytest.mark.parametrize("make", ["mkstemp", "mkdtemp"])
def test_interrupt_just_after_a_temporary_is_made_still_removes_it(
    make: str, receiver: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C landing between creating the temporary file (or folder) and noting its name: the CI run once found a
    checkpoint's ``.rng.safetensors.*.tmp`` left behind that way. The operating system may hand the signal to any
    thread that does not block it (PyTorch's, a server's): Python then runs the handler in the main thread all the same,
    so a mask on the main thread alone does not hold it back (a run under pytest-xdist, whose workers have threads,
    found that)."""
    import os
    import select
    import signal
    import tempfile
    import threading

    from finechain.io import atomic_write, building_folder

    real = getattr(tempfile, make)

    woken, wakeup = os.pipe()  # the signal's number is written here once a thread has taken it in

    def make_then_interrupt(*args: object, **kwargs: object) -> object:
        made = real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)  # delivered as soon as Python may run the handler
        if receiver == "another thread":  # wait until the other thread has taken it: Python's handler is then due here
            assert select.select([woken], [], [], 10)[0], "no thread took the signal"
        return made

    monkeypatch.setattr(tempfile, make, make_then_interrupt)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # raises KeyboardInterrupt
    os.set_blocking(wakeup, False)
    previous_wakeup = signal.set_wakeup_fd(wakeup)
    stop = threading.Event()
    other = threading.Thread(target=stop.wait, daemon=True)
    if receiver == "another thread":  # the other thread, started first, keeps SIGINT unblocked; this one blocks it
        other.start()
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        with pytest.raises(KeyboardInterrupt):
            if make == "mkstemp":
                atomic_write(tmp_path / "a.txt", lambda tmp: tmp.write_text("hi"))
            else:
                with building_folder(tmp_path / "out"):
                    pass
    finally:
        if other.is_alive():
            stop.set()
            other.join()
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        signal.signal(signal.SIGINT, previous)
        signal.set_wakeup_fd(previous_wakeup)
        os.close(woken)
        os.close(wakeup)
    assert list(tmp_path.iterdir()) == []
