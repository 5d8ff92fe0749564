"""Shared fixtures: a tiny randomly initialised BERT backbone and small labelled files."""

from __future__ import annotations

import csv
import os
import random
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def _keep_to_this_workers_cpus() -> None:
    """Under pytest-xdist (``scripts/test.sh`` runs two workers), each worker and every process it starts keeps to its
    own share of the CPUs, so PyTorch, ONNX Runtime and the commands the tests run size their thread pools to it
    instead of each spinning threads on every core. Done before anything imports PyTorch."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not worker.startswith("gw") or count < 2 or not hasattr(os, "sched_setaffinity"):
        return
    cpus = sorted(os.sched_getaffinity(0))
    mine = cpus[int(worker[2:]) :: count]
    if mine:  # (more workers than CPUs: the rest share them all)
        os.sched_setaffinity(0, mine)


_keep_to_this_workers_cpus()

SHARED = Path(os.environ.get("FINECHAIN_DATASETS", Path(__file__).resolve().parents[2] / "shared" / "datasets"))
POSITIVE = ["good", "great", "excellent", "lovely", "superb", "fine"]
NEGATIVE = ["bad", "awful", "terrible", "poor", "dreadful", "weak"]
FILLER = ["the", "movie", "was", "really", "plot", "and", "acting", "film", "story", "quite", "very", "music", "ending"]
NAMES = ["alice", "bob", "carol", "dave"]
CITIES = ["paris", "london", "rome", "oslo"]
TOPICS = {"sport": ["match", "goal", "team"], "money": ["bank", "price", "market"], "tech": ["phone", "chip", "app"]}


def make_tiny_backbone(folder: Path) -> Path:
    """Save a 4-layer, 32-wide random BERT with a word-level WordPiece vocab (safetensors) into ``folder``."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    topic_words = (w for ws in TOPICS.values() for w in ws)
    words = sorted({*POSITIVE, *NEGATIVE, *FILLER, *topic_words, *NAMES, *CITIES, "new", "york", "visited", "in", "met"})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *string.ascii_lowercase, *(f"##{c}" for c in string.ascii_lowercase), *words]
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)})
    assert tokenizer.convert_ids_to_tokens(tokenizer("good film")["input_ids"]) == ["[CLS]", "good", "film", "[SEP]"]
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64, max_position_embeddings=64
    )
    BertModel(config).save_pretrained(folder, safe_serialization=True)
    return folder


def make_smoke_backbone(folder: Path, words: int = 8000, width: int = 128) -> Path:
    """all-MiniLM-L6-v2's shape, narrow and random, into ``folder``: its 6 layers, 512 positions, tokenizer rules and
    sentence-transformers pooling, with the first ``words`` word pieces of its vocabulary (every single character and
    ``##`` piece among them, so any text tokenises) and ``width`` hidden units. The benchmarks' --quick smoke runs train,
    export and serve it (FINECHAIN_BENCH_BACKBONE) to check their code paths on the real data in a fraction of the time;
    it learns little, so they assert no accuracy."""
    import json
    import shutil

    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from finechain.model.backbone import resolve_backbone

    real, _ = resolve_backbone("all-MiniLM-L6-v2")
    folder.mkdir(parents=True)
    pieces = (real / "vocab.txt").read_text(encoding="utf-8").splitlines()[:words]
    vocab = {piece: i for i, piece in enumerate(pieces)}
    BertTokenizerFast(vocab=vocab, do_lower_case=True, model_max_length=512).save_pretrained(folder)
    config = BertConfig.from_pretrained(real)
    config.update({"vocab_size": words, "hidden_size": width, "num_attention_heads": 4, "intermediate_size": 4 * width})
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder, safe_serialization=True)
    for name in ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json"):
        shutil.copy(real / name, folder / name)
    pooling = json.loads((real / "1_Pooling" / "config.json").read_text()) | {"word_embedding_dimension": width}
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))
    return folder


# Files whose module fixtures cost much (the bad-input corpus runs most of its cases in one fixture; the server and
# flow tests train chains once per module): each runs in one pytest-xdist worker, not in both
ONE_WORKER_FILES = {"tests/test_bad_inputs.py", "tests/test_serve.py", "tests/test_flows.py"}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """pytest-xdist's scheduler with every test a unit of its own but the files of ``ONE_WORKER_FILES``, each one unit
    (``--dist loadgroup`` would do it with marks, but its marks are ignored under pytest 9.2: pytest-xdist issue 1386)."""
    from xdist.scheduler import LoadScopeScheduling

    class OneWorkerPerCostlyFile(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return path if path in ONE_WORKER_FILES else nodeid

    return OneWorkerPerCostlyFile(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow real-backbone tests first, every file's own order kept: with two workers the quick ones then fill the
    gaps at the end instead of one slow test running alone."""
    items.sort(key=lambda item: item.get_closest_marker("integration") is None)


@pytest.fixture(autouse=True, scope="session")
def _always_cut_validation() -> Iterator[None]:
    """The synthetic sets here hold a few dozen to a few hundred rows, and these tests exercise selection on a validation
    cut: cut one at any size (session-wide, so module fixtures that train see it too). The product's default (no cut
    under 50 examples) is tested with ``min_validation`` set; commands run in a subprocess keep the default."""
    from finechain.data import prepare

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(prepare, "MIN_VALIDATION", 0)
        yield


def mixed_chain(backbone: Path, **extra: Any) -> Any:
    """An untrained chain on ``backbone`` (split 2, max_length 16, fp32) with all four head types, plus ``extra`` heads
    by task name: random tails are enough to compare code paths."""
    import torch

    from finechain import Chain
    from finechain.heads import head_type

    torch.manual_seed(0)
    chain = Chain.from_backbone(str(backbone), split=2, max_length=16)
    heads = {
        "sent": head_type("classification")(["neg", "pos"]),
        "tags": head_type("multilabel")(["a", "b", "c"]),
        "score": head_type("regression")(),
        "ner": head_type("tagging")(["B-LOC", "B-PER", "I-LOC", "I-PER", "O"]),
        **extra,
    }
    heads["score"].load_state({"mean": 3.0, "std": 2.0})
    for name, head in heads.items():
        chain.attach(name, chain.model.new_task(head))
    chain.precision = "fp32"
    return chain


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random BERT of :func:`make_tiny_backbone`, once per test session."""
    return make_tiny_backbone(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def smoke_backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The narrow random all-MiniLM-L6-v2 of :func:`make_smoke_backbone`, once per test session."""
    return make_smoke_backbone(tmp_path_factory.mktemp("smoke-backbone") / "minilm-narrow")


def sentiment_rows(n: int, seed: int) -> list[tuple[str, str]]:
    """Texts whose label is given by a positive or negative cue word."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        cue = rng.choice(POSITIVE if label == "pos" else NEGATIVE)
        words = [*rng.sample(FILLER, 2), cue]
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


def write_csv(path: Path, rows: list[tuple[object, ...]], header: tuple[str, ...] = ("text", "label"), delimiter: str = ",") -> Path:
    """Write rows with the csv module."""
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter=delimiter, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def ner_sentences(n: int, seed: int) -> list[list[tuple[str, str]]]:
    """Toy NER: person names, one- and two-word cities, filler words."""
    rng = random.Random(seed)
    sentences = []
    for _ in range(n):
        city = [("new", "B-LOC"), ("york", "I-LOC")] if rng.random() < 0.3 else [(rng.choice(CITIES), "B-LOC")]
        words = [(rng.choice(NAMES), "B-PER"), (rng.choice(["visited", "met"]), "O"), *city, (rng.choice(FILLER), "O")]
        if rng.random() < 0.5:
            words = [(rng.choice(FILLER), "O"), *words]
        sentences.append(words)
    return sentences


def write_conll(path: Path, sentences: list[list[tuple[str, str]]]) -> Path:
    """One 'token TAG' line per word, blank line between sentences, with a -DOCSTART- header."""
    blocks = ["-DOCSTART- O"] + ["\n".join(f"{w} {t}" for w, t in s) for s in sentences]
    path.write_text("\n\n".join(blocks) + "\n")
    return path


@pytest.fixture
def sentiment_files(tmp_path: Path) -> tuple[Path, Path]:
    """Train and dev CSVs of the cue-word sentiment task."""
    return write_csv(tmp_path / "train.csv", sentiment_rows(160, 1)), write_csv(tmp_path / "dev.csv", sentiment_rows(40, 2))


@pytest.fixture
def shared_datasets() -> Path:
    """The real datasets beside the checkout; a missing folder fails in CI and skips elsewhere."""
    if not SHARED.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"datasets not found at {SHARED}")
        pytest.skip("../shared/datasets not available")
    return SHARED


def run_cli(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``finechain ARGS`` in this process: exit code, stdout, stderr."""
    import sys

    from finechain.cli.app import main

    monkeypatch.setattr(sys, "argv", ["finechain", *args])
    try:
        main()
        code = 0
    except SystemExit as done:
        code = int(done.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_cli_interrupted(
    args: list[str], where: tuple[Any, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str]:
    """``finechain ARGS`` in this process, stopped as by Ctrl-C when ``where`` (module, function name) is called: the
    exit code and stderr on one line. The command line's signal handler raises :class:`Interrupted`, as here."""
    from finechain.errors import Interrupted

    def stop(*args: object, **kwargs: object) -> None:
        raise Interrupted("SIGINT")

    monkeypatch.setattr(*where, stop)
    code, _, err = run_cli(args, monkeypatch, capsys)
    monkeypatch.undo()
    return code, " ".join(err.split())
