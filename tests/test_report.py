"""The benchmark page's tables: which peer a result is compared with, and the peer's learning-rate search."""

from __future__ import annotations

from benchmarks.report import peer_learning_rate_table, seeds_table, serve_table, sharing_table, train_table


def _record(task: str, system: str, variant: str, metric: str, value: float, unit: str = "test accuracy") -> dict:
    return {"suite": "sharing", "task": task, "system": system, "variant": variant, "metric": metric, "value": value, "unit": unit}


def test_sharing_table_compares_each_task_with_its_strongest_trainer_row() -> None:
    records = [
        _record("banking77", "finechain", "joint trunk (MT), split=4", "accuracy", 0.929),
        _record("sst2", "finechain", "joint trunk (MT), split=4", "accuracy", 0.889, "dev accuracy"),
        _record("banking77", "hf-trainer", "full fine-tune per task", "accuracy", 0.659),
        _record("sst2", "hf-trainer", "full fine-tune per task", "accuracy", 0.888, "dev accuracy"),
        _record("banking77", "hf-trainer", "full fine-tune, lr chosen on validation", "accuracy", 0.912),
    ]
    ours = next(line for line in sharing_table(records).splitlines() if line.startswith("| finechain"))
    assert "92.9 (+1.7)" in ours and "88.9 (+0.1)" in ours  # Banking77 against the tuned peer, not the 65.9 one


def test_peer_learning_rate_table_marks_the_rate_validation_chose() -> None:
    records = []
    for rate, validation, test in (("5e-05", 0.66, 0.62), ("0.0002", 0.92, 0.91)):
        variant = f"full fine-tune, lr {rate}"
        records += [
            _record("banking77", "hf-trainer", variant, "accuracy", validation, "validation accuracy"),
            _record("banking77", "hf-trainer", variant, "accuracy", test),
        ]
    records.append(_record("banking77", "hf-trainer", "full fine-tune per task", "learning_rate", 2e-4, "chosen on validation"))
    rows = [line for line in peer_learning_rate_table(records).splitlines() if line.startswith("| banking77")]
    assert rows == ["| banking77 | 5e-05 | 66.0 | 62.0 |  |", "| banking77 | 0.0002 | 92.0 | 91.0 | yes |"]


def test_train_table_marks_the_batch_size_validation_chose_and_shows_utilisation() -> None:
    peer, big, bigger = "full fine-tune, bf16, batch 32, 3 epochs", "batch 256, lr x2.8, 3 epochs", "batch 512, lr x4, 3 epochs"
    records = [
        _record("sst2", "hf-trainer", peer, "accuracy", 0.893, "dev accuracy"),
        _record("sst2", "hf-trainer", peer, "train_seconds", 156.9, "s"),
        _record("sst2", "hf-trainer", peer, "mfu_percent", 0.1, "%"),
        _record("sst2", "hf-trainer", peer, "model_tflops_per_second", 0.98, "TFLOP/s"),
    ]
    for variant, dev, validation, seconds in ((big, 0.892, 0.946, 16.0), (bigger, 0.890, 0.942, 11.1)):
        records += [
            _record("sst2", "finechain", variant, "accuracy", dev, "dev accuracy"),
            _record("sst2", "finechain", variant, "validation_accuracy", validation, "validation accuracy"),
            _record("sst2", "finechain", variant, "train_seconds", seconds, "s"),
        ]
    records.append(_record("sst2", "finechain", f"chosen on validation: {big}", "validation_accuracy", 0.946))
    rows = [line for line in train_table(records).splitlines() if line.startswith("| ")][2:]
    assert rows[0].endswith("| 0.98 (0.10) |")
    assert rows[1].startswith(f"| finechain | **{big}** (chosen on validation) | 89.2 | 94.6 | -0.1 | 16.0 |") and "9.8x" in rows[1]
    assert rows[2].startswith(f"| finechain | {bigger} | 89.0 | 94.2 |") and "(chosen" not in rows[2]


def test_seeds_table_gives_every_seed_the_mean_and_the_gap_on_shared_seeds_only() -> None:
    records = [
        _record("sst2", "hf-trainer", f"full fine-tune per task, seed {seed}", "accuracy", value, "dev accuracy")
        for seed, value in ((14, 0.83), (15, 0.81))
    ]
    records += [
        _record("sst2", "finechain", f"joint trunk (MT), split=4, seed {seed}", "accuracy", value, "dev accuracy")
        for seed, value in ((14, 0.84), (15, 0.80), (16, 0.85))
    ]
    records.append(_record("all four", "finechain", "joint trunk (MT), split=4, seed 14", "train_seconds", 99.0, "s"))
    lines = seeds_table(records).splitlines()
    assert lines[2] == "| system | variant | seed 14 | seed 15 | seed 16 | mean | sd |"
    assert lines[4] == "| finechain | joint trunk (MT), split=4 | 84.0 | 80.0 | 85.0 | 83.0 | 2.65 |"  # finechain first
    assert lines[5] == "| hf-trainer | full fine-tune per task | 83.0 | 81.0 | - | 82.0 | 1.41 |"
    assert "finechain - hf-trainer: +1.0, -1.0 points per seed; mean **+0.0**" in lines  # seed 16 has no peer run
    assert not any("all four" in line for line in lines)


def test_serve_table_shows_each_level_against_offline_and_memory_through_the_soak() -> None:
    def rec(system: str, variant: str, metric: str, value: float, unit: str = "") -> dict:
        return {"system": system, "variant": variant, "metric": metric, "value": value, "unit": unit}

    records = [
        rec("finechain", "offline batch (Chain.predict, batch 64), fp32", "samples_per_second", 80.0),
        rec("finechain", "finechain serve", "rss_mb", 600.0, "MB before the load"),
        rec("finechain", "finechain serve, 32 clients", "samples_per_second", 40.0),
        *(rec("finechain", "finechain serve, 32 clients", f"{q}_ms", v) for q, v in (("p50", 10), ("p95", 20), ("p99", 30))),
        rec("finechain", "finechain serve, 32 clients", "errors", 0),
        rec("finechain", "finechain serve", "rss_mb", 700.0, "MB after the load"),
        rec("finechain", "finechain serve, soak round 1", "rss_mb", 710.0, "MB after 20 s more at 32 clients"),
        rec("finechain", "finechain serve, soak round 2", "rss_mb", 712.0, "MB after 40 s more at 32 clients"),
    ]
    table = serve_table(records)
    assert "| 32 | 40.0 | 50% | 10 / 20 / 30 | 0 |" in table
    assert "| finechain | 600 | 700 |" in table  # before and after the levels: the soak rounds are their own row
    assert "| system | 20 s more at 32 clients | 40 s more at 32 clients |" in table and "| finechain | 710 | 712 |" in table
