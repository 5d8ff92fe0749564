"""The CLI end to end on a tiny backbone: train, info, predict, eval, add-task, resume."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console

from finechain.cli.app import main
from finechain.jobs.training import train_chain
from tests.conftest import TOPICS, sentiment_rows, write_csv

COLUMNS = ("review", "stars")  # not the default column names: eval must read files the way the task was trained


def cli(
    args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], stdin: str | None = None
) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["finechain", *args])
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = 0
    try:
        main()
    except SystemExit as done:
        code = int(done.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def trained(tmp_path: Path, tiny_backbone: Path, monkeypatch, capsys) -> Path:
    write_csv(tmp_path / "train.csv", sentiment_rows(120, 1), header=COLUMNS)
    write_csv(tmp_path / "test.csv", sentiment_rows(30, 3), header=COLUMNS)
    (tmp_path / "chain.yaml").write_text(
        f"backbone: {tiny_backbone}\nsplit: 2\nmax_length: 32\n"
        "training: {epochs: 3, batch_size: 16, learning_rate: 0.003, head_learning_rate: 0.01, min_steps: 0}\n"
        "tasks:\n  - {name: sentiment, train: train.csv, test: test.csv, text_column: review, label_column: stars}\n"
    )
    code, out, err = cli(["train", str(tmp_path / "chain.yaml"), "--out", str(tmp_path / "chain"), "-q"], monkeypatch, capsys)
    assert code == 0, err
    assert "sentiment" in out and "accuracy" in out
    return tmp_path / "chain"


def test_train_writes_artifact_reports_and_logs(trained: Path) -> None:
    assert (trained / "finechain.json").is_file()
    assert {p.name for p in (trained / "reports" / "sentiment").iterdir()} >= {
        "validation.json",
        "validation.md",
        "test.json",
        "test.md",
        "test_confusion.png",
    }
    log = [json.loads(line) for line in (trained / "runs" / "sentiment" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0.5, 1, 1.5, 2, 2.5, 3] and "validation_accuracy" in log[0]
    report = json.loads((trained / "reports" / "sentiment" / "test.json").read_text())
    assert set(report["per_class"]) == {"neg", "pos"} and report["per_class"]["pos"]["support"] == 15


def test_predict_from_stdin_and_file(trained: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    code, out, err = cli(["predict", str(trained)], monkeypatch, capsys, stdin="movie superb plot\n\nstory awful acting\n")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["text"] for line in lines] == ["movie superb plot", "story awful acting"]
    assert set(lines[0]["sentiment"]) == {"label", "score", "scores"} and set(lines[0]["sentiment"]["scores"]) == {"neg", "pos"}
    (tmp_path / "in.jsonl").write_text(json.dumps({"text": "superb"}) + "\n")
    threads = torch.get_num_threads()
    code, _, err = cli(
        [
            "predict",
            str(trained),
            "-t",
            "sentiment",
            "-i",
            str(tmp_path / "in.jsonl"),
            "--output",
            str(tmp_path / "o.jsonl"),
            "--threads",
            "1",
        ],
        monkeypatch,
        capsys,
    )
    assert code == 0, err
    assert torch.get_num_threads() == 1
    torch.set_num_threads(threads)
    assert json.loads((tmp_path / "o.jsonl").read_text())["text"] == "superb"
    (tmp_path / "words.jsonl").write_text(json.dumps({"text": ["superb", "plot"]}) + "\n\n" + json.dumps({"text": ["awful"]}) + "\n")
    code, out, err = cli(["predict", str(trained), "-i", str(tmp_path / "words.jsonl")], monkeypatch, capsys)
    assert code == 0, err
    assert [json.loads(line)["words"] for line in out.splitlines()] == [["superb", "plot"], ["awful"]]
    (tmp_path / "mixed.jsonl").write_text(json.dumps({"text": ["superb"]}) + "\n\n" + json.dumps({"text": "awful"}) + "\n")
    code, out, err = cli(["predict", str(trained), "-i", str(tmp_path / "mixed.jsonl")], monkeypatch, capsys)
    assert code == 2 and f"{tmp_path / 'mixed.jsonl'}:3: strings and word lists are mixed" in err
    code, out, err = cli(["predict", str(trained), "-i", str(tmp_path / "test.csv"), "--text-column", "review"], monkeypatch, capsys)
    assert code == 0, err
    assert len(out.splitlines()) == 30
    code, _, err = cli(["predict", str(trained), "-i", str(tmp_path / "test.csv")], monkeypatch, capsys)
    assert (
        code == 2
        and "test.csv:1: text column 'text' not found" in err
        and "(fix: pass the field that holds the texts: finechain predict --text-column" in err
    )
    code, _, err = cli(["predict", str(trained), "-t", "nope"], monkeypatch, capsys, stdin="x\n")
    assert code == 2 and "unknown task" in err
    code, _, err = cli(["predict", str(trained), "--device", "foo"], monkeypatch, capsys, stdin="x\n")
    assert code == 2 and "unknown device 'foo'" in err and len(err.strip().splitlines()) == 1
    code, _, err = cli(["predict", str(trained), "--precision", "fp8"], monkeypatch, capsys, stdin="x\n")
    assert code == 2 and "unknown precision 'fp8'" in err


def test_predict_goes_chunk_by_chunk_with_progress_and_an_atomic_output(trained: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    from finechain.cli import app
    from finechain.inference import Engine

    args = ["predict", str(trained), "-i", str(tmp_path / "test.csv"), "--text-column", "review"]
    code, whole, _ = cli(args, monkeypatch, capsys)
    assert code == 0 and len(whole.splitlines()) == 30
    monkeypatch.setattr(app, "PREDICT_CHUNK", 7)
    code, chunked, err = cli(args, monkeypatch, capsys)
    assert code == 0 and chunked == whole  # same lines, same order
    assert "predict 7/30 texts (23%)" in err and "predict 30/30 texts (100%)" in err and "loss" not in err
    sizes: list[int] = []
    predict = Engine.predict

    def counted(self, texts, *rest, **kw):
        sizes.append(sum(len(t) for t in texts))
        return predict(self, texts, *rest, **kw)

    monkeypatch.setattr(Engine, "predict", counted)
    monkeypatch.setattr(app, "PREDICT_CHUNK", 4096)
    monkeypatch.setattr(app, "PREDICT_CHUNK_CHARS", 200)  # long texts: chunks of characters, not of 4,096 texts
    code, by_size, err = cli(args, monkeypatch, capsys)
    assert code == 0 and by_size == whole and len(sizes) > 2 and max(sizes) <= 200 and "predict 30/30 texts" in err
    monkeypatch.setattr(Engine, "predict", predict)
    output = tmp_path / "preds.jsonl"
    output.write_text("earlier run\n")
    calls = []
    predict = Engine.predict

    def fail_on_third_chunk(self, texts, *rest, **kw):
        calls.append(len(texts))
        if len(calls) == 3:
            raise RuntimeError("out of memory")
        return predict(self, texts, *rest, **kw)

    monkeypatch.setattr(Engine, "predict", fail_on_third_chunk)
    code, _, err = cli([*args, "--output", str(output)], monkeypatch, capsys)
    last = err.strip().splitlines()[-1]  # after the two chunks' progress lines
    assert (
        code == 1
        and last == "error: out of memory (fix: lower --batch-size (or training.batch_size / eval_batch_size, max_length), or free memory)"
    )
    assert output.read_text() == "earlier run\n" and [p.name for p in tmp_path.glob(".preds.jsonl*")] == []  # nothing half-written


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], "Usage: "),
        (["--bogus"], "No such option: --bogus"),
        (["train"], "Missing argument 'SPEC'"),
        (["predict", "--batch-size", "many", "x"], "Invalid value for '--batch-size'"),
    ],
)
def test_usage_errors_print_usage_not_a_traceback(args: list[str], expected: str, monkeypatch, capsys) -> None:
    code, out, err = cli(args, monkeypatch, capsys)
    assert code == 2 and expected in out + err and "Traceback" not in out + err


def test_the_command_list_has_a_sentence_per_command(monkeypatch, capsys) -> None:
    """``finechain --help`` lists each command with its docstring's first paragraph as one flowing summary: typer keeps
    the source's line breaks there, which broke the list's lines mid-sentence."""
    from finechain.cli.app import app

    summaries = {command.callback.__name__: command.short_help for command in app.registered_commands if command.callback}
    assert len(summaries) >= 13 and all(text and "\n" not in text and "  " not in text for text in summaries.values()), summaries
    code, out, err = cli(["--help"], monkeypatch, capsys)
    listing = " ".join((out + err).replace("│", "").split())
    assert code == 0 and "set is scored before and after, and the previous version is kept" in listing


def test_a_bad_chain_folder_or_task_fails_before_pytorch_loads(trained: Path, tmp_path: Path) -> None:
    """predict, eval, train, add-task and remove-task read the manifest, the spec and the paths first: a damaged
    manifest, a task the chain does not (or already) has, an --out that holds a chain or an --output that is a folder is
    the one-line error in about a second, and input with no texts is nothing to do, without importing PyTorch (which,
    with transformers' model code, takes several)."""
    import subprocess

    broken = shutil.copytree(trained, tmp_path / "broken")
    (broken / "finechain.json").write_text("{not json")
    (tmp_path / "again.yaml").write_text("name: sentiment\ntrain: train.csv\n")
    probe = "import runpy, sys\ncode = 0\ntry:\n    runpy.run_module('finechain', run_name='__main__')\n"
    probe += "except SystemExit as end:\n    code = end.code or 0\nprint(code, 'torch' in sys.modules)\n"
    cases = [
        (["predict", str(broken)], "good film\n", 2, "finechain.json:1: not valid JSON"),
        (["predict", str(trained), "-t", "nope"], "good film\n", 2, "unknown task(s) ['nope']"),
        (["predict", str(trained), "--output", str(tmp_path)], "good film\n", 2, "cannot write: it is a folder, not a file"),
        (["predict", str(trained)], "\n  \n", 0, "no texts in the input: nothing to predict"),
        (["eval", str(trained), "-t", "nope", "-d", str(tmp_path / "test.csv")], "", 2, "unknown task 'nope'"),
        (["train", str(tmp_path / "chain.yaml"), "--out", str(trained)], "", 2, "this folder already holds a chain"),
        (["add-task", str(trained), str(tmp_path / "again.yaml")], "", 2, "task 'sentiment' already exists in this chain"),
        (["remove-task", str(trained), "-t", "nope"], "", 2, "task 'nope' is not in this chain"),
    ]
    for argv, stdin, exit_code, message in cases:
        done = subprocess.run(
            [sys.executable, "-c", probe, *argv],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        assert done.stdout.split()[-2:] == [str(exit_code), "False"], (argv, done.stdout, done.stderr[-1000:])
        assert message in done.stderr, (argv, done.stderr[-1000:])
    assert (trained / "tasks" / "sentiment" / "head.safetensors").is_file()  # the refused commands changed nothing


def test_eval_and_info(trained: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    code, out, err = cli(["eval", str(trained), "--task", "sentiment", "--data", str(tmp_path / "test.csv")], monkeypatch, capsys)
    assert code == 0, err
    assert "accuracy" in out and (trained / "reports" / "sentiment" / "test_confusion.png").stat().st_size > 1000
    write_csv(tmp_path / "bad.csv", [("good", "pos"), ("meh", "mixed")], header=COLUMNS)
    code, _, err = cli(["eval", str(trained), "--task", "sentiment", "--data", str(tmp_path / "bad.csv")], monkeypatch, capsys)
    assert code == 2 and "bad.csv:3:" in err and "'mixed'" in err
    code, out, _ = cli(["info", str(trained)], monkeypatch, capsys)
    assert code == 0 and "sentiment" in out and "split 2 of 4 layers, pretrained trunk, frozen" in out


def test_add_task_and_refuse_overwrite(trained: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    rows = [(f"{w} {t}", topic) for topic, words in TOPICS.items() for w in words for t in ("today", "now", "again", "here", "news")]
    write_csv(tmp_path / "topic.csv", rows)
    (tmp_path / "topic.yaml").write_text("name: topic\ntrain: topic.csv\ntraining: {epochs: 2, min_steps: 0}\n")
    before = (trained / "tasks" / "sentiment" / "branch.safetensors").read_bytes()
    entry = json.loads((trained / "finechain.json").read_text())["tasks"]["sentiment"]
    code, _, err = cli(["add-task", str(trained), str(tmp_path / "topic.yaml"), "-q"], monkeypatch, capsys)
    assert code == 0, err
    assert (trained / "tasks" / "sentiment" / "branch.safetensors").read_bytes() == before
    manifest = json.loads((trained / "finechain.json").read_text())
    assert set(manifest["tasks"]) == {"sentiment", "topic"}
    assert manifest["tasks"]["sentiment"] == entry  # spec, metric, scores, timings: nothing lost in the re-save
    assert {"spec", "metric", "best_epoch", "metrics", "train_seconds"} <= set(entry)
    code, _, err = cli(["add-task", str(trained), str(tmp_path / "topic.yaml")], monkeypatch, capsys)
    assert code == 2 and "already exists" in err
    code, _, err = cli(["train", str(tmp_path / "chain.yaml"), "--out", str(trained)], monkeypatch, capsys)
    assert code == 2 and "already holds a chain" in err


def test_square_brackets_in_paths_print_as_written(tmp_path: Path, tiny_backbone: Path, monkeypatch, capsys) -> None:
    """Paths reach the terminal as written, never read as rich markup: also on a caller's own console with markup on."""
    backbone = tmp_path / "tiny [bert]"
    shutil.copytree(tiny_backbone, backbone)
    write_csv(tmp_path / "train.csv", sentiment_rows(40, 1))
    spec = tmp_path / "chain.yaml"
    spec.write_text(
        f"backbone: {backbone}\nsplit: 2\nmax_length: 16\ntraining: {{epochs: 1, min_steps: 0}}\n"
        "tasks:\n  - {name: s, train: train.csv}\n"
    )
    shown = io.StringIO()
    run = tmp_path / ("run [red] " + "x" * 80)  # longer than a pipe's 80 columns: printed whole, not wrapped
    train_chain(spec, run, progress=False, console=Console(file=shown, width=300))
    assert "backbone tiny [bert]: trunk" in shown.getvalue()
    code, out, err = cli(["info", str(run)], monkeypatch, capsys)
    assert code == 0, err
    assert str(run) in out and "backbone tiny [bert]" in out


def test_an_interrupt_that_lands_in_a_del_still_stops_the_command() -> None:
    """Python ignores an exception raised in a ``__del__``: an interrupt whose handler ran while a collected object's
    ``__del__`` did was printed as "Exception ignored" and lost, and `finechain train` trained on (seen: Ctrl-C in the
    moment a task's training started, during a regex object's collection). It is sent again and stops the command."""
    code = (
        "import signal, time\n"
        "from finechain.cli import app\n"
        "from finechain.errors import Interrupted\n"
        "app._stop_on_interrupts()\n"
        "class Collected:\n"
        "    def __del__(self):\n"
        "        signal.raise_signal(signal.SIGINT)  # its handler runs here, inside __del__\n"
        "try:\n"
        "    Collected()\n"
        "    deadline = time.monotonic() + 20  # the command's work, which the interrupt must stop\n"
        "    while time.monotonic() < deadline:\n"
        "        pass\n"
        "    print('lost, ran on')\n"
        "except Interrupted as stop:\n"
        "    print('stopped by', stop.signal_name)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "stopped by SIGINT" and "Exception ignored" not in done.stderr, done.stderr
