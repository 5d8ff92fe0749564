"""Chain behaviour on a tiny random BERT: training, heads, save/load, add-task isolation, resume."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from finechain import Chain, TaskSpec, TrainingConfig
from finechain.errors import ArtifactError
from finechain.train.checkpoint import Checkpointer
from finechain.train.loop import Check, Hook, TrainingLoop
from tests.conftest import TOPICS, sentiment_rows, write_csv

FAST = TrainingConfig(epochs=12, batch_size=16, learning_rate=3e-3, head_learning_rate=1e-2, patience=0, seed=1, min_steps=0)


def file_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def sentiment_chain(tiny_backbone: Path, sentiment_files: tuple[Path, Path]) -> Chain:
    chain = Chain.from_backbone(str(tiny_backbone), split=2, max_length=32)
    chain.fit(TaskSpec(name="sentiment", train=sentiment_files[0], dev=sentiment_files[1]), FAST, progress=False)
    return chain


def test_a_chain_says_what_it_is(sentiment_chain: Chain, tiny_backbone: Path) -> None:
    assert repr(sentiment_chain) == (
        f"Chain(backbone={sentiment_chain.model.backbone.name!r}, split=2 of 4 layers, tasks={{'sentiment': 'classification'}}, flows=[])"
    )
    assert repr(Chain.from_backbone(str(tiny_backbone), split=1, max_length=32)).endswith("split=1 of 4 layers, tasks={}, flows=[])")


def test_classification_learns_and_reports(sentiment_chain: Chain, sentiment_files: tuple[Path, Path]) -> None:
    record = sentiment_chain.records["sentiment"]
    assert record.metrics["validation"]["accuracy"] >= 0.9
    assert record.best_epoch is not None and record.data["validation"]["source"] == "file"
    prediction = sentiment_chain.predict(["movie superb plot", "story awful acting"])
    assert [p["sentiment"].label for p in prediction] == ["pos", "neg"]
    assert all(0.5 <= p["sentiment"].score <= 1 for p in prediction)
    assert all(p["sentiment"].scores[p["sentiment"].label] == p["sentiment"].score for p in prediction)
    assert all(abs(sum(p["sentiment"].scores.values()) - 1) < 1e-5 for p in prediction)


@pytest.mark.parametrize("split", [0, 4])
def test_split_extremes_full_tune_and_linear_probe(tiny_backbone: Path, sentiment_files: tuple[Path, Path], split: int) -> None:
    chain = Chain.from_backbone(str(tiny_backbone), split=split, max_length=32)
    result = chain.fit(TaskSpec(name="s", train=sentiment_files[0], dev=sentiment_files[1]), FAST, progress=False)
    assert len(chain.tasks["s"].branch.layers) == 4 - split
    assert result.validation["accuracy"] >= (0.9 if split == 0 else 0.65)  # a probe on random layers learns less
    assert not any(p.requires_grad for p in chain.model.trunk.parameters())


def test_save_load_roundtrip_and_no_pickle(sentiment_chain: Chain, tmp_path: Path) -> None:
    texts = ["very good music", "weak ending and poor plot", "the movie"]
    before = sentiment_chain.predict(texts)
    out = sentiment_chain.save_pretrained(tmp_path / "chain")
    assert {p.suffix for p in out.rglob("*") if p.is_file()} == {".json", ".safetensors"}
    manifest = json.loads((out / "finechain.json").read_text())
    assert manifest["backbone"]["kind"] == "path" and len(manifest["backbone"]["sha256"]) == 64
    assert manifest["format"] == 2 and manifest["tasks"]["sentiment"]["head"]["labels"] == ["neg", "pos"]
    loaded = Chain.from_pretrained(out)
    assert loaded.predict(texts) == before


def test_adding_a_task_changes_nothing_else(sentiment_chain: Chain, tmp_path: Path) -> None:
    out = sentiment_chain.save_pretrained(tmp_path / "chain")
    texts = ["the film was superb", "bad plot", "market price of the chip"]
    old_files = {k: v for k, v in file_hashes(out).items() if k.startswith("tasks/sentiment")}
    old_logits = sentiment_chain.engine.outputs(texts, ["sentiment"])[0]["sentiment"]
    rows = [(f"{w} {t} news", topic) for topic, words in TOPICS.items() for w in words for t in ("today", "now", "again", "here")]
    chain = Chain.from_pretrained(out)
    chain.fit(TaskSpec(name="topic", train=write_csv(tmp_path / "topic.csv", rows), dev_fraction=0.25), FAST, progress=False)
    chain.save_pretrained(out, tasks=["topic"])
    new_files = {k: v for k, v in file_hashes(out).items() if k.startswith("tasks/sentiment")}
    assert new_files == old_files
    reloaded = Chain.from_pretrained(out)
    assert set(reloaded.tasks) == {"sentiment", "topic"}
    new_logits = reloaded.engine.outputs(texts, ["sentiment", "topic"])[0]
    assert all(np.array_equal(a, b) for a, b in zip(old_logits, new_logits["sentiment"], strict=True))


def test_multilabel_and_regression_heads(tiny_backbone: Path, tmp_path: Path) -> None:
    rows = sentiment_rows(160, 5)
    ml = [(t, "|".join(sorted({"positive" if y == "pos" else "negative", *(["long"] if "really" in t else [])}))) for t, y in rows]
    reg = [(t, 4.0 if y == "pos" else 1.0) for t, y in rows]
    chain = Chain.from_backbone(str(tiny_backbone), split=2, max_length=32)
    ml_result = chain.fit(TaskSpec(name="tags", type="multilabel", train=write_csv(tmp_path / "ml.csv", ml)), FAST, progress=False)
    reg_result = chain.fit(TaskSpec(name="stars", type="regression", train=write_csv(tmp_path / "r.csv", reg)), FAST, progress=False)
    assert ml_result.validation["micro_f1"] > 0.8
    assert len(chain.tasks["tags"].head.thresholds) == 3
    assert reg_result.validation["pearson"] > 0.8 and reg_result.validation["rmse"] < 1.2
    out = chain.predict(["superb music"])[0]
    assert "positive" in out["tags"].labels and set(out["tags"].scores) == {"long", "negative", "positive"}
    assert out["stars"].value > 2.5
    reloaded = Chain.from_pretrained(chain.save_pretrained(tmp_path / "c"))
    assert reloaded.predict(["superb music"])[0] == out


@pytest.mark.parametrize("dev_agrees", [True, False])
def test_reported_validation_scores_the_restored_best_weights(tiny_backbone: Path, tmp_path: Path, dev_agrees: bool) -> None:
    """The end-of-training validation scores are those of the weights kept (the best check's), whether that check was the
    last one or not; with dev labels opposite to the training labels, every check is worse than the first (half an epoch
    in: two checks an epoch by default)."""
    rows = [(t, 4.0 if y == "pos" else 1.0) for t, y in sentiment_rows(200, 5)]
    dev = rows[160:] if dev_agrees else [(t, 5.0 - v) for t, v in rows[160:]]
    train_file, dev_file = write_csv(tmp_path / "train.csv", rows[:160]), write_csv(tmp_path / "dev.csv", dev)
    chain = Chain.from_backbone(str(tiny_backbone), split=2, max_length=32)
    chain.precision = "fp32"  # exact comparison: under bf16 (auto on CPUs with bf16 units) batch shapes move the 5th digit
    cfg = FAST.model_copy(update={"epochs": 4, "precision": "fp32"})
    result = chain.fit(TaskSpec(name="stars", type="regression", train=train_file, dev=dev_file), cfg, progress=False)
    assert [r["epoch"] for r in result.history] == [0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4]
    assert result.best_epoch == (4 if dev_agrees else 0.5)
    kept = next(r for r in result.history if r["epoch"] == result.best_epoch)
    assert result.validation["rmse"] == pytest.approx(kept["validation_rmse"], abs=1e-6)
    rescored = chain.score("stars", [t for t, _ in dev], [v for _, v in dev])
    assert rescored["rmse"] == pytest.approx(result.validation["rmse"], abs=1e-5)


def test_multilabel_thresholds_are_chosen_for_the_tasks_metric(tiny_backbone: Path) -> None:
    """Selected on micro-F1 (the default), every label shares the validation set's best threshold for micro-F1; on
    macro-F1, each label gets its own best F1's."""
    from sklearn.metrics import f1_score

    from finechain.heads.multilabel import THRESHOLD_GRID

    def tagged(n: int, seed: int) -> tuple[list[str], list[list[str]]]:
        rows = sentiment_rows(n, seed)
        return [t for t, _ in rows], [["positive" if y == "pos" else "negative", *(["long"] if "really" in t else [])] for t, y in rows]

    (texts, labels), dev = tagged(160, 5), tagged(60, 6)
    for metric in (None, "macro_f1"):
        chain = Chain.from_backbone(str(tiny_backbone), split=2, max_length=32)
        chain.fit(TaskSpec(name="tags", type="multilabel", metric=metric), FAST, texts=texts, labels=labels, dev=dev, progress=False)
        head = chain.tasks["tags"].head
        probs = head.probabilities(chain.engine.outputs(dev[0], ["tags"])[0]["tags"])
        truth = head.targets(dev[1]).astype(int)
        if metric is None:
            micro = [f1_score(truth, probs >= t, average="micro") for t in THRESHOLD_GRID]
            assert head.thresholds == [float(THRESHOLD_GRID[int(np.argmax(micro))])] * 3
        else:
            own = [[f1_score(truth[:, j], probs[:, j] >= t, zero_division=0) for t in THRESHOLD_GRID] for j in range(3)]
            assert head.thresholds == [float(THRESHOLD_GRID[int(np.argmax(f1s))]) for f1s in own]


def test_validation_checks_per_epoch_and_early_stopping(tiny_backbone: Path, tmp_path: Path) -> None:
    """``evaluations_per_epoch`` spaces the checks evenly on optimizer steps and calls ``on_evaluation`` after each;
    ``patience`` still counts epochs: with dev labels opposite to the training labels the score soon only gets worse,
    and patience 1 stops at the first epoch end after a whole epoch's worth of checks (3) without gain."""
    rows = [(t, 4.0 if y == "pos" else 1.0) for t, y in sentiment_rows(200, 5)]
    dev = [(t, 5.0 - v) for t, v in rows[160:]]
    train_file, dev_file = write_csv(tmp_path / "train.csv", rows[:160]), write_csv(tmp_path / "dev.csv", dev)
    spec = TaskSpec(name="stars", type="regression", train=train_file, dev=dev_file)
    chain = Chain.from_backbone(str(tiny_backbone), split=2, max_length=32)
    seen: list[tuple[float, bool]] = []

    class Watch(Hook):  # as the training benchmark watches its dev set
        def on_check(self, loop: TrainingLoop, check: Check) -> None:
            seen.append((check.epoch, loop.module.training))
            chain.attach("stars", loop.module)  # switches the tail to eval mode: training must go on in training mode regardless
            chain.score("stars", [t for t, _ in dev], [v for _, v in dev])

    cfg = FAST.model_copy(update={"epochs": 6, "evaluations_per_epoch": 3, "gradient_accumulation": 2, "patience": 1, "precision": "fp32"})
    result = chain.fit(spec, cfg, progress=False, hooks=[Watch()])
    unwatched = Chain.from_backbone(str(tiny_backbone), split=2, max_length=32)
    unwatched.fit(spec, cfg, progress=False)
    a, b = chain.tasks["stars"].state_dict(), unwatched.tasks["stars"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # watching changes nothing
    # 10 batches an epoch, accumulating 2: checks after batches 4, 8 and 10 (optimizer steps 2, 4, 5)
    epochs = [r["epoch"] for r in result.history]
    assert epochs == [0.333, 0.667, 1, 1.333, 1.667, 2, 2.333, 2.667, 3, 3.333, 3.667, 4, 4.333, 4.667, 5][: len(epochs)]
    assert [r["step"] for r in result.history] == [2, 4, 5, 7, 9, 10, 12, 14, 15, 17, 19, 20, 22, 24, 25][: len(epochs)]
    assert seen == [(r["epoch"], True) for r in result.history]  # the callback sees the tail in training mode
    scores = [r["validation_rmse"] for r in result.history]
    best = scores.index(min(scores))
    assert result.best_epoch == epochs[best] and result.validation["rmse"] == pytest.approx(scores[best], abs=1e-5)
    after = len(epochs) - 1 - best  # checks without gain at the end: at least 3, and stopped at the first epoch end that had them
    assert 3 <= after < 6 and isinstance(epochs[-1], int) and result.epochs_run == epochs[-1] < 6


def test_disk_cache_and_no_cache_match_memory(tiny_backbone: Path, sentiment_files: tuple[Path, Path]) -> None:
    results = []
    for cache in ("memory", "disk", "off"):
        chain = Chain.from_backbone(str(tiny_backbone), split=2, max_length=32)
        cfg = FAST.model_copy(update={"epochs": 2, "cache": cache})
        chain.fit(TaskSpec(name="s", train=sentiment_files[0], dev=sentiment_files[1]), cfg, progress=False)
        results.append(np.stack(chain.engine.outputs(["good film", "awful plot"], ["s"])[0]["s"]))
    assert np.allclose(results[0], results[1], atol=1e-5) and np.allclose(results[0], results[2], atol=1e-4)


@pytest.mark.parametrize(
    ("ema_decay", "crash_at", "crash_saved"),
    [
        (None, 2, True),  # just after the checkpoint at the end of the first epoch
        (0.9, 3, True),  # after the one at the half-epoch check of the second (a weight average is continued too)
        (None, 3, False),  # while writing that one: the run goes on from the epoch's end, the 1.5 check's line is redone
    ],
)
def test_resume_after_interruption_gives_the_same_model(
    tiny_backbone: Path,
    sentiment_files: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    ema_decay: float | None,
    crash_at: int,
    crash_saved: bool,
) -> None:
    spec = TaskSpec(name="s", train=sentiment_files[0], dev=sentiment_files[1])
    cfg = FAST.model_copy(update={"epochs": 4, "ema_decay": ema_decay})
    straight = Chain.from_backbone(str(tiny_backbone), split=2, max_length=32)
    straight.fit(spec, cfg, run_dir=tmp_path / "a", progress=False)

    original_save = Checkpointer.save
    calls = {"n": 0}

    def save_then_crash(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == crash_at and not crash_saved:
            raise KeyboardInterrupt
        original_save(self, *args, **kwargs)
        if calls["n"] == crash_at:
            raise KeyboardInterrupt

    monkeypatch.setattr(Checkpointer, "save", save_then_crash)
    interrupted = Chain.from_backbone(str(tiny_backbone), split=2, max_length=32)
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit(spec, cfg, run_dir=tmp_path / "b", progress=False)
    monkeypatch.setattr(Checkpointer, "save", original_save)
    kept = json.loads((tmp_path / "b" / "checkpoint" / "state.json").read_text())["loop"]
    assert (kept["epoch"], kept["batch"] > 0) == (1, crash_at == 3 and crash_saved)  # (the first, inside the second epoch)
    moved = tmp_path / "moved"  # the same data in another folder (a project moved, a temporary copy): resuming still works
    moved.mkdir()
    files = [Path(shutil.copy(f, moved / f.name)) for f in sentiment_files]
    resumed = Chain.from_backbone(str(tiny_backbone), split=2, max_length=32)
    started = time.perf_counter()
    result = resumed.fit(TaskSpec(name="s", train=files[0], dev=files[1]), cfg, run_dir=tmp_path / "b", resume=True, progress=False)
    assert result.train_seconds > time.perf_counter() - started  # the two epochs before the interruption count too
    a, b = straight.tasks["s"].state_dict(), resumed.tasks["s"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4]
    assert [r["train_loss"] for r in log] == [json.loads(line)["train_loss"] for line in (tmp_path / "a" / "metrics.jsonl").open()]
    with pytest.raises(Exception, match="different data or settings"):
        resumed.fit(spec, cfg.model_copy(update={"seed": 99}), run_dir=tmp_path / "b", resume=True, progress=False)
    texts, labels = [t for t, _ in sentiment_rows(60, 5)], [y for _, y in sentiment_rows(60, 5)]
    resumed.fit(TaskSpec(name="m"), cfg, texts=texts, labels=labels, run_dir=tmp_path / "c", progress=False)
    with pytest.raises(Exception, match="different data or settings"):  # same spec and settings, other texts
        resumed.fit(TaskSpec(name="m"), cfg, texts=[t + " film" for t in texts], labels=labels, run_dir=tmp_path / "c", resume=True)


def test_backbone_hash_is_checked(sentiment_chain: Chain, tiny_backbone: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "backbone"
    shutil.copytree(tiny_backbone, copy)
    sentiment_chain.save_pretrained(tmp_path / "chain")
    with pytest.raises(ArtifactError, match="differ"):
        Chain.from_pretrained(tmp_path / "chain", backbone_path=copy.parent / "backbone" if False else _tampered(copy))
    (tmp_path / "copied").mkdir()
    sentiment_chain.save_pretrained(tmp_path / "copied", copy_backbone=True)
    manifest = json.loads((tmp_path / "copied" / "finechain.json").read_text())
    assert manifest["backbone"]["kind"] == "copied"
    assert Chain.from_pretrained(tmp_path / "copied").predict(["good"]) == sentiment_chain.predict(["good"])


def _tampered(folder: Path) -> Path:
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / "model.safetensors")
    first = next(iter(weights))
    weights[first] = weights[first] + 1
    save_file(weights, folder / "model.safetensors")
    return folder


def test_lora_branch_trains_small_delta_and_roundtrips(tiny_backbone: Path, sentiment_files: tuple[Path, Path], tmp_path: Path) -> None:
    chain = Chain.from_backbone(str(tiny_backbone), split=2, max_length=32)
    spec = TaskSpec(name="s", train=sentiment_files[0], dev=sentiment_files[1], branch={"mode": "lora", "rank": 4})
    result = chain.fit(spec, FAST.model_copy(update={"learning_rate": 1e-2}), progress=False)
    assert result.validation["accuracy"] >= 0.8
    task = chain.tasks["s"]
    assert task.mode.config() == {"mode": "lora", "rank": 4, "alpha": 16, "dropout": 0.05, "targets": ["query", "key", "value", "dense"]}
    assert task.parameter_counts()["stored_parameters"] < 0.3 * sum(p.numel() for p in task.branch.parameters())
    pretrained = dict(chain.model.upper.layers[0].named_parameters())
    for name, param in task.branch.layers[0].named_parameters():
        if "lora_" not in name:
            assert torch.equal(param, pretrained[name.replace(".base_layer", "")])
    out = chain.save_pretrained(tmp_path / "chain")
    full = Chain.from_backbone(str(tiny_backbone), split=2, max_length=32)
    full.fit(TaskSpec(name="s", train=sentiment_files[0], dev=sentiment_files[1]), FAST.model_copy(update={"epochs": 1}), progress=False)
    full_dir = full.save_pretrained(tmp_path / "full")
    lora_size = (out / "tasks" / "s" / "branch.safetensors").stat().st_size
    assert lora_size < 0.3 * (full_dir / "tasks" / "s" / "branch.safetensors").stat().st_size
    assert Chain.from_pretrained(out).predict(["superb music", "awful plot"]) == chain.predict(["superb music", "awful plot"])


def test_unset_learning_rate_follows_the_branch_mode(tiny_backbone: Path, sentiment_files: tuple[Path, Path]) -> None:
    chain = Chain.from_backbone(str(tiny_backbone), split=2, max_length=32)
    quick = TrainingConfig(epochs=1, batch_size=64, min_steps=0)
    cases = [("full", {}, 1e-4), ("lora", {"branch": {"mode": "lora"}}, 5e-4)]
    cases.append(("lora-set", {"branch": {"mode": "lora"}, "training": {"learning_rate": 2e-3}}, 2e-3))
    for name, options, rate in cases:
        chain.fit(TaskSpec(name=name, train=sentiment_files[0], **options), quick, progress=False)
        assert chain.records[name].training["learning_rate"] == rate  # what the optimizer used, recorded


def test_gradient_accumulation_takes_fewer_optimizer_steps(tiny_backbone: Path, sentiment_files: tuple[Path, Path], tmp_path: Path) -> None:
    steps = []
    for accumulation in (1, 3):
        chain = Chain.from_backbone(str(tiny_backbone), split=2, max_length=32)
        cfg = FAST.model_copy(update={"epochs": 2, "gradient_accumulation": accumulation})
        chain.fit(
            TaskSpec(name="s", train=sentiment_files[0], dev=sentiment_files[1]), cfg, run_dir=tmp_path / str(accumulation), progress=False
        )
        log = [json.loads(line) for line in (tmp_path / str(accumulation) / "metrics.jsonl").read_text().splitlines()]
        steps.append(log[-1]["step"])
    batches = -(-160 // 16)
    assert steps == [2 * batches, 2 * -(-batches // 3)]


def test_small_data_repeats_each_epoch_up_to_min_steps(tiny_backbone: Path, sentiment_files: tuple[Path, Path], tmp_path: Path) -> None:
    """160 examples at batch 16 are 10 steps a pass: 2 epochs with min_steps 50 take 3 passes each (60 steps); the
    same with 3-batch gradient accumulation, 4 steps a pass, takes 7 (70 batches, 24 steps an epoch); min_steps 0, 1."""
    runs = []
    for accumulation, min_steps in ((1, 50), (3, 50), (1, 0)):
        chain = Chain.from_backbone(str(tiny_backbone), split=2, max_length=32)
        cfg = FAST.model_copy(update={"epochs": 2, "gradient_accumulation": accumulation, "min_steps": min_steps})
        result = chain.fit(TaskSpec(name="s", train=sentiment_files[0], dev=sentiment_files[1]), cfg, progress=False)
        runs.append([(record["passes"], record["step"]) for record in result.history if record["epoch"] in (1, 2)])  # epoch ends
    assert runs == [[(3, 30), (3, 60)], [(7, 24), (7, 48)], [(1, 10), (1, 20)]]


@pytest.mark.parametrize("split", [0, 2, 4])
def test_embed_equals_the_whole_backbone_mean_pooled(tiny_backbone: Path, split: int) -> None:
    from transformers import AutoModel, AutoTokenizer

    texts = ["very good music", "the movie had a weak ending and a poor plot", "ok"]
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_backbone))
    model = AutoModel.from_pretrained(str(tiny_backbone)).eval()
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    chain = Chain.from_backbone(str(tiny_backbone), split=split, max_length=32)
    chain.precision = "fp32"  # exact comparison (auto may mean bf16 on CPUs with bf16 units)
    assert torch.allclose(torch.from_numpy(chain.embed(texts)), expected, atol=1e-5)
    assert not torch.allclose(torch.from_numpy(chain.embed(texts, normalize=False)), expected, atol=1e-3)
