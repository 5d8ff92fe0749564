"""Shared helpers: result records, machine description, dataset paths."""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from finechain.model.precision import cpu_has_native_bf16
from finechain.spec import DEFAULT_BACKBONE

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(os.environ.get("FINECHAIN_RESULTS", ROOT / "benchmarks" / "results"))
DATASETS = Path(os.environ.get("FINECHAIN_DATASETS", ROOT.parent / "shared" / "datasets"))
# the backbone every suite trains (and its peers fine-tune): all-MiniLM-L6-v2; the test suite's --quick smoke runs set
# FINECHAIN_BENCH_BACKBONE to a folder of the same shape, narrower and random (tests/conftest.py: make_smoke_backbone), which checks the
# suites' code paths in a fraction of the time and measures nothing
BACKBONE = os.environ.get("FINECHAIN_BENCH_BACKBONE", DEFAULT_BACKBONE)

# name -> (train file, evaluation file, what the evaluation file is)
CLASSIFICATION_SETS = {
    "sst2": ("sst2/train.csv", "sst2/dev.csv", "dev"),
    "agnews": ("agnews/train.csv", "agnews/test.csv", "test"),
    "banking77": ("banking77/train.csv", "banking77/test.csv", "test"),
}

# the dropout suite's two variants (benchmarks/dropout.py) by key, as their results and report table name them
DROPOUT_VARIANTS = {"torch": "PyTorch dropout (bernoulli_), SDPA", "finechain": "finechain masks (default)"}


def comma_list(convert: Callable[[str], Any], choices: Iterable[str] | None = None) -> Callable[[str], list[Any]]:
    """An argparse ``type``: ``"a,b"`` -> ``[convert("a"), convert("b")]``; a bad or unknown item is argparse's
    usual one-line usage error (exit code 2) instead of a traceback halfway through a run.

    Example:
        >>> comma_list(int)("32,256")
        [32, 256]
    """
    allowed = None if choices is None else list(choices)

    def parse(text: str) -> list[Any]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        try:
            values = [convert(item) for item in items]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of {convert.__name__} values") from None
        unknown = [item for item in items if allowed is not None and item not in allowed]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(unknown)}; choose from {', '.join(allowed or [])}")
        return values

    return parse


def device_description(device: str) -> str:
    """Human-readable machine string for the results table."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    model = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    units = " with bf16 units" if cpu_has_native_bf16() else ""  # where the chain's default precision (auto) is bf16
    return f"CPU {model}{units}, {torch.get_num_threads()} threads"


def versions() -> dict[str, str]:
    """Library versions that matter for the numbers."""
    import transformers

    import finechain

    return {
        "finechain": finechain.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }


class Recorder:
    """Collect ``{suite, task, system, variant, metric, value, unit, device, date}`` records and save them."""

    def __init__(self, suite: str, device: str) -> None:
        self.suite = suite
        self.device = device_description(device)
        self.date = dt.date.today().isoformat()
        self.records: list[dict[str, Any]] = []
        self.variant_suffix = ""  # appended to every variant, e.g. ", seed 14" when a suite repeats itself per seed

    def add(self, task: str, system: str, variant: str, metric: str, value: float, unit: str = "") -> None:
        """Add one measurement and print it."""
        record = {
            "suite": self.suite,
            "task": task,
            "system": system,
            "variant": variant + self.variant_suffix,
            "metric": metric,
            "value": round(float(value), 6),
            "unit": unit,
            "device": self.device,
            "date": self.date,
        }
        self.records.append(record)
        print(json.dumps(record), flush=True)

    def save(self, name: str | None = None, extra: dict[str, Any] | None = None) -> Path:
        """Write ``benchmarks/results/<suite>.json`` (and ``<suite>.meta.json`` with versions and settings)."""
        from finechain.io import write_json

        name = name or self.suite
        settings = {k: v for k, v in (extra or {}).items() if k != "device"}
        if BACKBONE != DEFAULT_BACKBONE:  # a smoke run's numbers say nothing about all-MiniLM-L6-v2: the meta says so
            settings["backbone"] = BACKBONE
        write_json(RESULTS / f"{name}.meta.json", {**settings, "versions": versions(), "device": self.device, "date": self.date})
        return write_json(RESULTS / f"{name}.json", self.records)


def appended_settings(name: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The settings to save with results file ``name`` when a run appends to it: every earlier run's (from its meta
    file), then this run's ``settings``."""
    earlier = json.loads((RESULTS / f"{name}.meta.json").read_text())
    runs = earlier.get("runs") or [{k: v for k, v in earlier.items() if k not in {"versions", "device", "date"}}]
    return {"runs": [*runs, settings]}


def scratch_folder(prefix: str, keep: bool = False) -> Path:
    """A new temporary folder, removed when the benchmark's process exits (also after an error) unless ``keep``."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    if not keep:
        atexit.register(shutil.rmtree, folder, True)
    return folder


def peer_training_args(prefix: str, epochs: int, seed: int, learning_rate: float = 5e-5, device: str = "cpu", bf16: bool | None = None):
    """The Hugging Face Trainer recipe used for every peer: batch 32, no saving or logging; bf16 on CUDA (or when asked)."""
    from transformers import TrainingArguments

    cuda = device.startswith("cuda")
    return TrainingArguments(
        output_dir=str(scratch_folder(prefix)),
        per_device_train_batch_size=32,
        per_device_eval_batch_size=128,
        num_train_epochs=epochs,
        learning_rate=learning_rate,
        seed=seed,
        save_strategy="no",
        report_to=[],
        logging_strategy="no",
        disable_tqdm=True,
        use_cpu=not cuda,
        bf16=cuda if bf16 is None else bf16,
        dataloader_num_workers=0,
    )


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Median wall seconds of ``fn`` over ``repeats`` runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
