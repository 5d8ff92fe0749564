"""The one training loop: hooks observe and stop runs, objectives and schedules are pluggable, trunk states are shared
between runs, fp16 scales its loss, a diverged run stops before saving; head options reach their head."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from finechain import Chain, TaskSpec, TrainingConfig
from finechain.heads import head_type
from finechain.model.task import TaskModel
from finechain.spec import load_chain_spec
from finechain.train.features import FeatureCache
from finechain.train.fit import fit_task
from finechain.train.loop import Check, Hook, TrainingDiverged, TrainingLoop
from finechain.train.objectives import HeadLoss, StepInputs
from tests.conftest import ner_sentences, sentiment_rows, write_conll, write_csv

FAST = TrainingConfig(
    epochs=4, batch_size=16, learning_rate=3e-3, head_learning_rate=1e-2, patience=0, seed=1, min_steps=0, precision="fp32"
)


@pytest.fixture
def sentiment(tmp_path: Path) -> TaskSpec:
    return TaskSpec(name="s", train=write_csv(tmp_path / "s.csv", sentiment_rows(160, 5)))


def test_a_hook_can_stop_a_run_like_a_search_trial_pruner(tiny_backbone: Path, sentiment: TaskSpec) -> None:
    class Prune(Hook):
        def on_check(self, loop: TrainingLoop, check: Check) -> None:
            if check.epoch >= 1:
                loop.stop(f"pruned at epoch {check.epoch}")

    chain = Chain.from_backbone(str(tiny_backbone), split=2, max_length=32)
    result = chain.fit(sentiment, FAST, progress=False, hooks=[Prune()])
    assert [r["epoch"] for r in result.history] == [0.5, 1]  # the epoch in progress ends; nothing after it
    best = max(result.history, key=lambda r: r["validation_accuracy"])
    assert result.best_epoch == best["epoch"] and result.validation["accuracy"] == pytest.approx(best["validation_accuracy"])


@pytest.mark.parametrize(("schedule", "after_warmup"), [("linear", "decays"), ("cosine", "decays"), ("constant", "stays")])
def test_schedules_are_chosen_by_name(tiny_backbone: Path, sentiment: TaskSpec, schedule: str, after_warmup: str) -> None:
    rates: list[float] = []

    class Rates(Hook):
        def on_batch(self, loop: TrainingLoop, loss: float | None) -> None:
            rates.append(loop.optimizer.param_groups[0]["lr"])

    chain = Chain.from_backbone(str(tiny_backbone), split=2, max_length=32)
    chain.fit(sentiment, FAST.model_copy(update={"schedule": schedule, "warmup_fraction": 0.25}), progress=False, hooks=[Rates()])
    peak = max(rates)
    top = rates.index(peak)
    assert rates[0] < peak and 0.2 * len(rates) <= top <= 0.3 * len(rates)  # a quarter of the steps warm up
    assert (rates[-1] < 0.2 * peak) if after_warmup == "decays" else (rates[-1] == peak)
    if schedule == "cosine":  # half a cosine: slow at first, unlike the straight line
        middle = top + (len(rates) - top) // 4
        assert rates[middle] > peak * (1 - (middle - top) / (len(rates) - top)) + 1e-6


def test_an_objective_replaces_the_head_loss(tiny_backbone: Path, sentiment: TaskSpec) -> None:
    seen: list[int] = []

    class Counting(HeadLoss):
        def loss(self, task: TaskModel, inputs: StepInputs) -> torch.Tensor:
            seen.append(len(inputs.indices))
            return super().loss(task, inputs) * 0.0  # learns nothing: every gradient is zero

    chain = Chain.from_backbone(str(tiny_backbone), split=2, max_length=32)
    training = FAST.model_copy(update={"epochs": 1, "weight_decay": 0.0})
    result = chain.fit(sentiment, training, progress=False, objective=Counting())
    assert sum(seen) == 144 and result.history[-1]["train_loss"] == 0.0  # every example (160 less a validation tenth), once
    torch.manual_seed(training.seed)  # the tail as fit_task initialised it
    head = head_type("classification")(["neg", "pos"])
    fresh = chain.model.new_task(head)
    trained = result.tail.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in fresh.state_dict().items())  # zero gradients: not one weight moved


def test_runs_on_the_same_texts_share_their_trunk_states(tiny_backbone: Path, sentiment: TaskSpec, monkeypatch: pytest.MonkeyPatch) -> None:
    chain = Chain.from_backbone(str(tiny_backbone), split=2, max_length=32)
    calls = {"n": 0}
    original = chain.model.trunk.embeddings.forward

    def counting(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(chain.model.trunk.embeddings, "forward", counting)
    cache = FeatureCache()
    first = fit_task(chain.model, sentiment, FAST, progress=False, features=cache)
    after_first = calls["n"]
    second = fit_task(chain.model, sentiment, FAST.model_copy(update={"learning_rate": 1e-3}), progress=False, features=cache)
    assert after_first > 0 and calls["n"] == after_first  # the second run computed no trunk state
    assert len(cache) == 2 and first.validation != second.validation  # train and validation states; a different run


def test_fp16_training_scales_its_loss(tiny_backbone: Path, sentiment: TaskSpec, tmp_path: Path) -> None:
    """``precision: fp16`` trains with a ``torch.amp.GradScaler`` (its state is checkpointed, so a resumed run goes on with
    the same scale); without one, small fp16 gradients underflow to zero."""
    chain = Chain.from_backbone(str(tiny_backbone), split=2, max_length=32)
    result = chain.fit(sentiment, FAST.model_copy(update={"precision": "fp16", "epochs": 6}), run_dir=tmp_path / "run", progress=False)
    state = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert state["extra"]["scaler"]["scale"] > 1 and result.validation["accuracy"] >= 0.75


def test_a_diverged_run_stops_with_a_clear_error_and_saves_nothing(tiny_backbone: Path, sentiment: TaskSpec, tmp_path: Path) -> None:
    chain = Chain.from_backbone(str(tiny_backbone), split=2, max_length=32)
    wild = FAST.model_copy(update={"learning_rate": 1e30, "head_learning_rate": 1e30})
    with pytest.raises(TrainingDiverged, match="lower the learning rate"):
        chain.fit(sentiment, wild, run_dir=tmp_path / "run", progress=False)
    assert "s" not in chain.tasks and not (tmp_path / "run" / "checkpoint").exists()


def test_the_decoding_option_reaches_the_tagging_head(tiny_backbone: Path, tmp_path: Path) -> None:
    """``decoding: argmax`` was documented but never passed to the head (it always decoded constrained)."""
    train = write_conll(tmp_path / "n.conll", ner_sentences(80, 1))
    (tmp_path / "chain.yaml").write_text(f"tasks:\n  - {{name: ner, type: tagging, train: {train}, decoding: argmax}}\n")
    spec = load_chain_spec(tmp_path / "chain.yaml").tasks[0]
    chain = Chain.from_backbone(str(tiny_backbone), split=2, max_length=32)
    chain.fit(spec, FAST.model_copy(update={"epochs": 1}), progress=False)
    head = chain.tasks["ner"].head
    assert head.options.decoding == "argmax"
    manifest = json.loads((chain.save_pretrained(tmp_path / "c") / "finechain.json").read_text())
    assert manifest["tasks"]["ner"]["head"]["options"]["decoding"] == "argmax"
    assert Chain.from_pretrained(tmp_path / "c").tasks["ner"].head.options.decoding == "argmax"
    # argmax keeps an I- tag after O; constrained decoding cannot
    out = np.log(np.array([[0.1, 0.1, 0.8, 0.0], [0.1, 0.1, 0.2, 0.6], [0.2, 0.6, 0.1, 0.1]]) + 1e-9)  # O, then I-?, then B-?
    labels = head.labels
    order = [labels.index(t) for t in ("B-LOC", "I-LOC", "O")]
    logits = np.full((3, len(labels)), -20.0)
    logits[:, order] = out[:, [1, 3, 2]]
    positions = [[0, 1, 2]]
    assert head.word_tags([logits], positions)[0][0][1] == "I-LOC"
    constrained = head_type("tagging")(labels, {"decoding": "constrained"})
    assert constrained.word_tags([logits], positions)[0][0][1] != "I-LOC"


def test_elapsed_seconds_count_from_the_start_of_fit(tiny_backbone: Path, sentiment: TaskSpec, monkeypatch: pytest.MonkeyPatch) -> None:
    """The history's ``elapsed_seconds`` (what the training benchmark's time-to-target reads) includes computing the
    trunk states, as before the loop was extracted; the loop's own clock starts later."""
    import time

    from finechain.train.features import TrunkFeatures

    original = TrunkFeatures._fill

    def slow(self: TrunkFeatures, *args, **kwargs) -> None:
        time.sleep(0.5)
        original(self, *args, **kwargs)

    monkeypatch.setattr(TrunkFeatures, "_fill", slow)
    chain = Chain.from_backbone(str(tiny_backbone), split=2, max_length=32)
    result = chain.fit(sentiment, FAST.model_copy(update={"epochs": 1}), progress=False)
    assert result.history[0]["elapsed_seconds"] >= 1.0  # the training and the validation states: 0.5 s each
    assert result.train_seconds >= result.history[-1]["elapsed_seconds"]


class _TowardsOne:
    """A step whose loss pulls a layer's weights towards 1 (its gradient is ``weights - 1``)."""

    def __init__(self, layer: torch.nn.Linear) -> None:
        self.layer = layer

    def __call__(self, batch: int) -> torch.Tensor:
        loss = ((self.layer.weight - 1) ** 2).sum() / 2
        loss.backward()
        return loss.detach()

    def zero_grad(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.zero_grad()


def test_a_weight_average_is_what_checks_score_and_training_keeps() -> None:
    from finechain.train.averaging import warmed_decay
    from finechain.train.loop import Evaluation

    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 1, bias=False)
    weights, average = layer.weight.detach().clone(), layer.weight.detach().clone()
    scored: list[torch.Tensor] = []

    def evaluate() -> Evaluation:
        scored.append(layer.weight.detach().clone())
        return Evaluation(float(len(scored)))  # every check beats the one before: the last is kept

    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    loop = TrainingLoop(
        layer,
        _TowardsOne(layer),
        lambda generator: [0] * 5,
        evaluate,
        metric="accuracy",
        epochs=2,
        batches_per_epoch=5,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0),
        max_grad_norm=100.0,
        batch_size=lambda batch: 1,
        ema_decay=0.5,
    )
    list(loop.run())
    for step in range(10):  # plain SGD by hand, and the average after each step
        weights = weights - 0.1 * (weights - 1)
        average = torch.lerp(average, weights, 1 - warmed_decay(0.5, step))
    assert len(scored) == 2 and torch.allclose(scored[-1], average)  # the check scored the average ...
    assert torch.allclose(loop.best_weights["weight"], average)  # ... the average is kept ...
    assert torch.allclose(layer.weight.detach(), weights) and not torch.allclose(weights, average)  # ... training went on
