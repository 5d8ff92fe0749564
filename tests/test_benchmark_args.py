"""Benchmark command lines: a bad list item stops at argument parsing with a one-line error and exit code 2."""

from __future__ import annotations

import pytest

from benchmarks import export, few_shot, imbalance, kernels, mixing, sharing, small_data, snips, split_sweep, train


@pytest.mark.parametrize(
    ("main", "argv", "message"),
    [
        (train.main, ["--batch-sizes", "32,big"], "'32,big' is not a comma-separated list of int values"),
        (train.main, ["--tasks", "sst2,conll"], "unknown conll; choose from sst2, conll2003"),
        (sharing.main, ["--peer-learning-rates", "5e-5,fast"], "'5e-5,fast' is not a comma-separated list of float values"),
        (sharing.main, ["--peer-tasks", "banking7"], "unknown banking7; choose from sst2, agnews, banking77, conll2003"),
        (sharing.main, ["--modes", "frozen:2@2e-4"], "'frozen:2@2e-4' is not a comma-separated list of sharing_mode values"),
        (sharing.main, ["--modes", "joint:four"], "'joint:four' is not a comma-separated list of sharing_mode values"),
        (split_sweep.main, ["--splits", "6,four"], "'6,four' is not a comma-separated list of int values"),
        (small_data.main, ["--splits", "auto,x"], "'auto,x' is not a comma-separated list of split_depth values"),
        (
            imbalance.main,
            ["--variants", "split 0"],
            "unknown split 0; choose from default (macro-F1 selection when imbalanced), accuracy selection (the default before), "
            "class_weights: balanced, class_weights: sqrt, loss: focal (gamma 2), split 0 (every layer tuned)",
        ),
        (mixing.main, ["--splits", "2.5"], "'2.5' is not a comma-separated list of int values"),
        (
            export.main,
            ["--students", "3+1u1000,3+1uh1"],
            "'3+1uh1' is not TRUNK+BRANCH layers (e.g. 3+1, 3+1h1 with hidden states, 3+1u1000 with unlabelled texts, 3+1/0/1/0 with branch"
            " layers per task, 3+1f0.75 with three quarters of the feed-forward neurons, 3+1e6 distilled for 6 epochs, 3+1a10 with 10"
            " attention heads per layer)",
        ),
        (
            export.main,
            ["--students", "3+1,3x1"],
            "'3x1' is not TRUNK+BRANCH layers (e.g. 3+1, 3+1h1 with hidden states, 3+1u1000 with unlabelled texts, 3+1/0/1/0 with branch"
            " layers per task, 3+1f0.75 with three quarters of the feed-forward neurons, 3+1e6 distilled for 6 epochs, 3+1a10 with 10"
            " attention heads per layer)",
        ),
        (
            export.main,
            ["--students", "3+1h-1"],
            "'3+1h-1' is not TRUNK+BRANCH layers (e.g. 3+1, 3+1h1 with hidden states, 3+1u1000 with unlabelled texts, 3+1/0/1/0 with branch"
            " layers per task, 3+1f0.75 with three quarters of the feed-forward neurons, 3+1e6 distilled for 6 epochs, 3+1a10 with 10"
            " attention heads per layer)",
        ),
        (
            export.main,
            ["--students", "3+1hx"],
            "'3+1hx' is not TRUNK+BRANCH layers (e.g. 3+1, 3+1h1 with hidden states, 3+1u1000 with unlabelled texts, 3+1/0/1/0 with branch"
            " layers per task, 3+1f0.75 with three quarters of the feed-forward neurons, 3+1e6 distilled for 6 epochs, 3+1a10 with 10"
            " attention heads per layer)",
        ),
        (
            export.main,
            ["--students", "3+1/0/1"],
            "'3+1/0/1': give one branch depth, or one per task (sst2/agnews/banking77/conll2003) (e.g. 3+1, 3+1h1 with hidden"
            " states, 3+1u1000 with unlabelled texts, 3+1/0/1/0 with branch layers per task, 3+1f0.75 with three quarters of the"
            " feed-forward neurons, 3+1e6 distilled for 6 epochs, 3+1a10 with 10 attention heads per layer)",
        ),
        (
            export.main,
            ["--students", "3+1f1.5"],
            "'3+1f1.5': the feed-forward share must be above 0 and at most 1 (e.g. 3+1, 3+1h1 with hidden states, 3+1u1000 with"
            " unlabelled texts, 3+1/0/1/0 with branch layers per task, 3+1f0.75 with three quarters of the feed-forward neurons, 3+1e6"
            " distilled for 6 epochs, 3+1a10 with 10 attention heads per layer)",
        ),
        (
            export.main,
            ["--students", "3+1a0"],
            "'3+1a0': a student layer keeps at least 1 attention head (e.g. 3+1, 3+1h1 with hidden states, 3+1u1000 with unlabelled"
            " texts, 3+1/0/1/0 with branch layers per task, 3+1f0.75 with three quarters of the feed-forward neurons, 3+1e6 distilled for"
            " 6 epochs, 3+1a10 with 10 attention heads per layer)",
        ),
        (
            export.main,
            ["--students", "3+1f0.875/0.5"],
            "'3+1f0.875/0.5': give one feed-forward share, or the trunk's and one per task (sst2/agnews/banking77/conll2003) (e.g. 3+1,"
            " 3+1h1 with hidden states, 3+1u1000 with unlabelled texts, 3+1/0/1/0 with branch layers per task, 3+1f0.75 with three"
            " quarters of the feed-forward neurons, 3+1e6 distilled for 6 epochs, 3+1a10 with 10 attention heads per layer)",
        ),
        (export.main, ["--rounds", "0"], "--rounds must be at least 1"),
        (
            snips.main,
            ["--slot-adversarial", "fgsm"],
            "argument --slot-adversarial: invalid choice: 'fgsm' (choose from 'none', 'fgm', 'pgd')",
        ),
        (snips.main, ["--save", "a", "--load", "b"], "argument --load: not allowed with argument --save"),
        (snips.main, ["--load", "/nonexistent"], "--load /nonexistent: not a chain folder (save one with --save DIR)"),
        (kernels.main, ["--rows", "32,0"], "--rows and --threads must be at least 1, --seconds above 0"),
        (kernels.main, ["--rows", "32,many"], "'32,many' is not a comma-separated list of int values"),
        (
            few_shot.main,
            ["--variants", "plain,setfit"],
            "unknown setfit; choose from plain, plain (validation cut), few-shot recipe, few-shot recipe (min_steps 50), few-shot recipe"
            " (min_steps 50; lr 3e-5), few-shot recipe (min_steps 50; contrastive 3), few-shot recipe (min_steps 50; rows as trained),"
            " few-shot recipe (min_steps 50; augment 2), few-shot recipe (min_steps 25), few-shot recipe (min_steps 50;"
            " temperature 0.1), few-shot recipe (min_steps 50; split 0), few-shot recipe (min_steps 50; split 1), few-shot recipe"
            " (min_steps 50; label texts)",
        ),
    ],
)
def test_bad_list_items_are_usage_errors(main, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.endswith(message), last


def test_good_lists_parse() -> None:
    assert train.comma_list(int)("32, 256") == [32, 256]
    assert train.comma_list(str, train.TASKS)("conll2003") == ["conll2003"]


def test_a_missing_smoke_backbone_is_a_usage_error(tmp_path) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "FINECHAIN_BENCH_BACKBONE": str(tmp_path / "nope"), "FINECHAIN_RESULTS": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "dropout", "--quick"],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        timeout=120,
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "FINECHAIN_BENCH_BACKBONE: backbone folder" in done.stderr and "not found" in done.stderr
    assert list(tmp_path.iterdir()) == []  # nothing ran, nothing written
