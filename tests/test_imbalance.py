"""Imbalanced classes: selection on macro-F1 when a class is rare, class-weighted and focal losses."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from finechain import Chain, TaskSpec, TrainingConfig
from finechain.heads.classification import ClassificationHead
from finechain.model.losses import cross_entropy
from tests.conftest import NEGATIVE, POSITIVE, sentiment_rows


def test_weighted_and_focal_cross_entropy_match_their_definitions() -> None:
    torch.manual_seed(0)
    logits, targets, weight = torch.randn(16, 3), torch.randint(0, 3, (16,)), torch.tensor([0.5, 1.0, 3.0])
    assert torch.allclose(cross_entropy(logits, targets, weight=weight), F.cross_entropy(logits, targets, weight=weight))
    p = torch.softmax(logits, -1)[torch.arange(16), targets]
    focal = -((1 - p) ** 2) * p.log()
    assert torch.allclose(cross_entropy(logits, targets, gamma=2.0), focal.mean())
    w = weight[targets]
    assert torch.allclose(cross_entropy(logits, targets, weight=weight, gamma=2.0), (focal * w).sum() / w.sum())
    assert torch.allclose(cross_entropy(logits, targets, gamma=0.0), F.cross_entropy(logits, targets))


def test_selection_metric_follows_the_class_balance() -> None:
    head = ClassificationHead()
    assert head.selection_metric(["a"] * 50 + ["b"] * 50) == "accuracy"
    assert head.selection_metric(["a"] * 45 + ["b"] * 45 + ["c"] * 10) == "macro_f1"  # 10% < half of a third
    assert head.selection_metric(["a"] * 40 + ["b"] * 40 + ["c"] * 20) == "accuracy"


def _skewed_rows(n: int, negative_share: float, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = sentiment_rows(n * 2, seed)
    negatives = [r for r in rows if r[1] == "neg"][: round(n * negative_share)]
    positives = [r for r in rows if r[1] == "pos"][: n - len(negatives)]
    picked = negatives + positives
    rng.shuffle(picked)
    return picked


def test_a_rare_class_selects_on_macro_f1_and_weights_the_loss(tiny_backbone: Path, tmp_path: Path) -> None:
    rows = _skewed_rows(120, 0.1, seed=3)
    texts, labels = [t for t, _ in rows], [y for _, y in rows]
    chain = Chain.from_backbone(str(tiny_backbone), split=2, max_length=32)
    spec = TaskSpec(name="sentiment", head={"class_weights": "balanced", "loss": "focal", "focal_gamma": 1.5})
    result = chain.fit(spec, TrainingConfig(epochs=2, min_steps=0, seed=1), texts=texts, labels=labels, progress=False)
    assert result.metric == "macro_f1"
    assert all("validation_macro_f1" in record for record in result.history)
    task = chain.tasks["sentiment"]
    counts = task.head.label_counts
    assert set(counts) == {"neg", "pos"} and counts["pos"] > 5 * counts["neg"]
    total = sum(counts.values())
    expected = [total / (2 * counts["neg"]), total / (2 * counts["pos"])]
    assert task.class_weight is not None and torch.allclose(task.class_weight, torch.tensor(expected), atol=1e-3)
    assert task.head.loss_options()["gamma"] == 1.5
    # the counts travel with the saved chain; a loaded head weighs its loss the same way (to train it further)
    chain.save_pretrained(tmp_path / "chain")
    loaded = Chain.from_pretrained(tmp_path / "chain")
    head = loaded.tasks["sentiment"].head
    assert head.label_counts == counts and head.loss_options() == task.head.loss_options()
    # the spec's metric still wins over the automatic choice
    again = Chain.from_backbone(str(tiny_backbone), split=2, max_length=32)
    settings = TrainingConfig(epochs=1, min_steps=0)
    chosen = again.fit(TaskSpec(name="s", metric="accuracy"), settings, texts=texts, labels=labels, progress=False)
    assert chosen.metric == "accuracy"


def test_balanced_weights_raise_the_rare_class_recall_on_skewed_data(tiny_backbone: Path) -> None:
    """With 5% negatives and a weak cue, plain cross-entropy leans on the prior; balanced weights must recall more of
    the rare class on held-out texts (the point of the option)."""
    rows = _skewed_rows(400, 0.05, seed=5)
    texts, labels = [t for t, _ in rows], [y for _, y in rows]
    rng = random.Random(9)
    held = [(f"{rng.choice(['the', 'very'])} {rng.choice(NEGATIVE)} film", "neg") for _ in range(40)]
    held += [(f"{rng.choice(['the', 'very'])} {rng.choice(POSITIVE)} film", "pos") for _ in range(40)]
    recalls = {}
    for weights in ("none", "balanced"):
        # a linear probe on the frozen random encoder: a weak learner
        chain = Chain.from_backbone(str(tiny_backbone), split=4, max_length=32)
        spec = TaskSpec(name="s", head={"class_weights": weights}, metric="accuracy")
        chain.fit(spec, TrainingConfig(epochs=2, min_steps=0, seed=2), texts=texts, labels=labels, progress=False)
        predicted = [row["s"].label for row in chain.predict([t for t, _ in held], tasks=["s"])]
        recalls[weights] = sum(p == "neg" for p, (_, y) in zip(predicted, held, strict=True) if y == "neg") / 40
    assert recalls["balanced"] > recalls["none"], recalls


@pytest.mark.parametrize(
    ("head", "message"),
    [
        ({"class_weights": "inverse"}, "'none', 'balanced' or 'sqrt'"),
        ({"loss": "hinge"}, "'cross_entropy' or 'focal'"),
        ({"focal_gamma": -1}, "greater than or equal to 0"),
    ],
)
def test_bad_loss_options_name_the_choices(head: dict, message: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        TaskSpec(name="t", train="t.csv", head=head)
    with pytest.raises(ValidationError, match="extra"):  # a tagging head has no such option
        TaskSpec(name="t", train="t.csv", type="tagging", head={"class_weights": "balanced"})
