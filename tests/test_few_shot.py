"""Few-shot training: contrastive tuning (SetFit's pair objective on the one loop), prototype heads, and training
without a validation split when the data is too small to cut one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from finechain import Chain, TaskSpec, TrainingConfig
from finechain.errors import DataError, FinechainError, SpecError
from finechain.heads.prototype import PrototypeHead
from finechain.jobs.tuning import tune_spec
from finechain.model.losses import pair_loss, same_label
from finechain.spec import ChainSpec, JointConfig
from finechain.train.features import FeatureCache
from finechain.train.fit import class_means
from finechain.train.loop import Hook, TrainingLoop
from finechain.train.objectives import Contrastive, HeadLoss, StepInputs, training_objective
from tests.conftest import TOPICS, sentiment_rows, write_csv

ROWS = sentiment_rows(24, 7)  # 12 per class: few-shot
TEXTS, LABELS = [t for t, _ in ROWS], [y for _, y in ROWS]
FEW = TrainingConfig(epochs=2, min_steps=20, batch_size=8, learning_rate=3e-3, head_learning_rate=1e-2, seed=3)


def _chain(backbone: Path) -> Chain:
    return Chain.from_backbone(str(backbone), split=2, max_length=32)


def _features(chain: Chain, texts: list[str]):
    """The frozen trunk's states of ``texts``, as training caches them."""
    ids, _ = chain.model.encode(texts)
    return FeatureCache().get(chain.model.trunk, ids, pad_id=chain.model.pad_id, cache="memory", batch_size=64)


def _batch(chain: Chain, task, texts: list[str], labels: list[str]) -> StepInputs:
    features = _features(chain, texts)
    hidden, mask = features.batch(list(range(len(texts))))
    targets = torch.from_numpy(task.head.targets(labels)).to(hidden.device)
    return StepInputs(hidden, mask, targets, torch.arange(len(texts)))


def _within_minus_between(chain: Chain, task, inputs: StepInputs) -> float:
    """Mean cosine of same-label pairs minus that of different-label pairs of the batch's pooled branch outputs."""
    with torch.no_grad():
        task.eval()
        pooled = task.head_layer.features(task.features(inputs.states, inputs.mask), inputs.mask)
        unit = torch.nn.functional.normalize(pooled, dim=-1)
        cos, same = unit @ unit.T, same_label(inputs.targets).bool()
        others = ~torch.eye(len(unit), dtype=torch.bool)
        return float(cos[same & others].mean() - cos[~same].mean())


def test_contrastive_loss_is_the_head_loss_plus_the_weighted_pair_loss(tiny_backbone: Path) -> None:
    chain = _chain(tiny_backbone)
    from finechain.heads.classification import ClassificationHead

    task = chain.model.new_task(ClassificationHead(["neg", "pos"])).eval()
    inputs = _batch(chain, task, TEXTS[:8], LABELS[:8])
    head = HeadLoss().loss(task, inputs)
    pooled = task.head_layer.features(task.features(inputs.states, inputs.mask), inputs.mask)
    pairs = pair_loss(pooled, same_label(inputs.targets))
    assert float(pairs.detach()) > 0
    assert torch.allclose(Contrastive(2.0).loss(task, inputs), head + 2.0 * pairs, atol=1e-5)
    assert torch.allclose(Contrastive(2.0, HeadLoss(3.0)).loss(task, inputs), 3.0 * head + 2.0 * pairs, atol=1e-5)
    assert type(training_objective(TrainingConfig(contrastive=1.0, adversarial="fgm"))).__name__ == "Adversarial"


def test_contrastive_training_pulls_same_label_texts_together(tiny_backbone: Path) -> None:
    chain = _chain(tiny_backbone)
    training = FEW.model_copy(update={"head_learning_rate": 1e-9})  # the head barely moves: only the pair loss shapes the branch
    contrastive = training.model_copy(update={"contrastive": 5.0})
    chain.fit(TaskSpec(name="s", min_validation=50), contrastive, texts=TEXTS, labels=LABELS, progress=False)
    plain = _chain(tiny_backbone)
    plain.fit(TaskSpec(name="s", min_validation=50), training, texts=TEXTS, labels=LABELS, progress=False)
    inputs = _batch(chain, chain.tasks["s"], TEXTS, LABELS)
    contrastive_gap = _within_minus_between(chain, chain.tasks["s"], inputs)
    plain_gap = _within_minus_between(plain, plain.tasks["s"], inputs)
    assert contrastive_gap > plain_gap + 0.01 and contrastive_gap > 5 * plain_gap, (contrastive_gap, plain_gap)


def test_contrastive_is_refused_where_labels_cannot_pair_texts(tiny_backbone: Path) -> None:
    with pytest.raises(ValidationError, match="contrastive compares texts by their labels"):
        ChainSpec(tasks=[TaskSpec(name="r", type="regression", train="r.csv")], training=TrainingConfig(contrastive=1.0))
    ChainSpec(tasks=[TaskSpec(name="m", type="multilabel", train="m.csv")], training=TrainingConfig(contrastive=1.0))
    with pytest.raises(SpecError, match="contrastive"):
        training = FEW.model_copy(update={"contrastive": 1.0})
        _chain(tiny_backbone).fit(TaskSpec(name="r", type="regression"), training, texts=TEXTS, labels=[1.0] * len(TEXTS), progress=False)
    with pytest.raises(ValidationError, match="less than or equal to 10"):
        TrainingConfig(contrastive=11)


def test_prototype_head_starts_from_the_class_means_and_round_trips(tiny_backbone: Path, tmp_path: Path) -> None:
    chain = _chain(tiny_backbone)
    task = chain.model.new_task(PrototypeHead(["neg", "pos"]))
    inputs = _batch(chain, task, TEXTS, LABELS)
    means = class_means(task, _features(chain, TEXTS), inputs.targets, 5, "fp32")
    pooled = torch.nn.functional.normalize(task.head_layer.features(task.features(inputs.states, inputs.mask), inputs.mask), dim=-1)
    for row, label in enumerate(["neg", "pos"]):
        expected = pooled[[i for i, y in enumerate(LABELS) if y == label]].mean(0)
        assert torch.allclose(means[row], expected, atol=1e-5)
    task.head_layer.set_prototypes(means)  # nearest class mean: every training text is closer to its own label's mean
    logits = task(inputs.states, inputs.mask)
    assert torch.allclose(logits, 20.0 * pooled @ torch.nn.functional.normalize(means, dim=-1).T, atol=1e-4)

    result = chain.fit(TaskSpec(name="p", type="prototype", head={"temperature": 0.1}), FEW, texts=TEXTS, labels=LABELS, progress=False)
    assert result.history
    chain.save_pretrained(tmp_path / "chain")
    again = Chain.from_pretrained(tmp_path / "chain")
    assert [p["p"].scores for p in again.predict(TEXTS[:4], tasks=["p"])] == [p["p"].scores for p in chain.predict(TEXTS[:4], tasks=["p"])]
    with pytest.raises(ValidationError, match="temperature"):
        TaskSpec(name="p", type="prototype", head={"temperature": 0})


def test_prototype_rows_end_at_the_class_means_of_the_trained_branch(tiny_backbone: Path) -> None:
    def trained(recentre: bool) -> tuple[Chain, torch.Tensor, torch.Tensor]:
        chain = _chain(tiny_backbone)
        spec = TaskSpec(name="p", type="prototype", head={"temperature": 0.1, "recentre": recentre}, min_validation=50)
        # fp32 as the means below (where the CPU has bf16 units training's default is bf16)
        chain.fit(spec, FEW.model_copy(update={"precision": "fp32"}), texts=TEXTS, labels=LABELS, progress=False)
        task = chain.tasks["p"]
        targets = torch.from_numpy(task.head.targets(LABELS))
        rows = torch.nn.functional.normalize(class_means(task, _features(chain, TEXTS), targets, 5, "fp32"), dim=-1)
        return chain, task.head_layer.out.weight.detach(), rows

    chain, weight, means = trained(True)
    assert torch.allclose(weight, means, atol=1e-5) and not chain.tasks["p"].head_layer.out.bias.any()
    _, kept, kept_means = trained(False)  # as trained: the rows lag behind the branch
    assert (kept - kept_means).abs().max() > 1e-3
    assert chain.tasks["p"].head.config()["options"]["recentre"] is True
    with pytest.raises(ValidationError, match="recentre"):
        TaskSpec(name="p", type="prototype", head={"recentre": "sometimes"})


def test_label_texts_are_trained_on_as_one_more_example_of_their_label(tiny_backbone: Path, tmp_path: Path) -> None:
    def trained(label_texts: object) -> tuple[Chain, torch.Tensor]:
        chain = _chain(tiny_backbone)
        spec = TaskSpec(name="p", type="prototype", head={"temperature": 0.1, "label_texts": label_texts}, min_validation=50)
        result = chain.fit(spec, FEW.model_copy(update={"precision": "fp32"}), texts=TEXTS, labels=LABELS, progress=False)
        assert result.provenance.get("label_texts") == (None if label_texts is None else 3)
        return chain, chain.tasks["p"].head_layer.out.weight.detach()

    # recentred rows are the class means of what was trained on: the examples and the label texts
    texts, labels = [*TEXTS, "neg", "pos", "very good"], [*LABELS, "neg", "pos", "pos"]
    chain, rows = trained({"neg": "neg", "pos": ["pos", "very good"]})
    task = chain.tasks["p"]
    means = class_means(task, _features(chain, texts), torch.from_numpy(task.head.targets(labels)), 5, "fp32")
    assert torch.allclose(rows, torch.nn.functional.normalize(means, dim=-1), atol=1e-5)
    _, plain = trained(None)
    assert (plain - rows).abs().max() > 1e-3
    chain.save_pretrained(tmp_path / "chain")  # the manifest says what training added
    assert json.loads((tmp_path / "chain" / "finechain.json").read_text())["tasks"]["p"]["data"]["label_texts"] == 3


def test_label_texts_names_and_their_bad_inputs(tiny_backbone: Path) -> None:
    names = TaskSpec(name="p", type="prototype", head={"label_texts": "names"})
    assert PrototypeHead.label_examples(names.head, ["card_arrival", "top-up", "Sci/Tech"]) == [
        ("card arrival", "card_arrival"),
        ("top up", "top-up"),
        ("Sci/Tech", "Sci/Tech"),
    ]
    chain = _chain(tiny_backbone)
    digits = [("1" if y == "pos" else "0") for y in LABELS]
    with pytest.raises(SpecError, match=r"label '0' has no letters.*label_texts: \{'0'") as wordless:
        chain.fit(names, FEW, texts=TEXTS, labels=digits, progress=False)
    assert wordless.value.field == "head.label_texts"
    unknown = TaskSpec(name="p", type="prototype", head={"label_texts": {"positive": "good"}})
    with pytest.raises(SpecError, match=r"label_texts names 'positive', which is not a label of this task \(neg, pos\)"):
        chain.fit(unknown, FEW, texts=TEXTS, labels=LABELS, progress=False)
    assert TaskSpec(name="p", type="prototype", head={"label_texts": {0: "negative"}}).head.label_texts == {"0": "negative"}  # YAML
    with pytest.raises(ValidationError, match="label 'pos' has an empty text under label_texts"):
        TaskSpec(name="p", type="prototype", head={"label_texts": {"pos": ["good", " "]}})
    with pytest.raises(ValidationError, match="label_texts"):
        TaskSpec(name="p", type="prototype", head={"label_texts": "descriptions"})
    with pytest.raises(ValidationError, match="label_texts"):  # an option of prototype heads only
        TaskSpec(name="p", head={"label_texts": "names"})


def test_label_texts_a_spec_cannot_use_are_found_at_their_spec_line_before_training(tiny_backbone: Path, tmp_path: Path) -> None:
    from finechain.jobs.checking import check_spec

    write_csv(tmp_path / "codes.csv", [(t, "1" if y == "pos" else "0") for t, y in ROWS])
    spec = tmp_path / "chain.yaml"
    task = "tasks:\n  - name: p\n    type: prototype\n    train: codes.csv\n    head:\n      label_texts: "
    spec.write_text(f"backbone: {tiny_backbone}\nmax_length: 32\n{task}names\n")
    with pytest.raises(SpecError, match=rf"^{spec}:8: label_texts: names, but the label '0' has no letters to read \(fix: map"):
        check_spec(spec)
    spec.write_text(f"backbone: {tiny_backbone}\nmax_length: 32\n{task}{{0: negative, 2: other}}\n")  # YAML's numbers name labels too
    with pytest.raises(SpecError, match=rf"^{spec}:8: label_texts names '2', which is not a label of this task \(0, 1\)"):
        check_spec(spec)
    spec.write_text(f"backbone: {tiny_backbone}\nmax_length: 32\n{task}{{0: negative, 1: positive}}\n")
    assert check_spec(spec).data["p"].labels == ["0", "1"]


class Checks(Hook):
    def __init__(self) -> None:
        self.epochs: list[float] = []

    def on_check(self, loop: TrainingLoop, check) -> None:
        self.epochs.append(check.epoch)


def test_few_shot_data_trains_on_every_example_and_keeps_the_last_weights(tiny_backbone: Path) -> None:
    chain, seen = _chain(tiny_backbone), Checks()
    training = FEW.model_copy(update={"epochs": 3, "patience": 1})
    result = chain.fit(TaskSpec(name="s", min_validation=50), training, texts=TEXTS, labels=LABELS, hooks=[seen], progress=False)
    assert result.validation == {} and result.best_epoch == 3 and seen.epochs[-1] == 3  # nothing to stop on: all epochs run
    assert all("validation_accuracy" not in record for record in result.history)
    cut = _chain(tiny_backbone).fit(TaskSpec(name="s", min_validation=2), training, texts=TEXTS, labels=LABELS, progress=False)
    assert "accuracy" in cut.validation  # a 10% cut of 24 is 2 examples: at least min_validation, so it is cut


def test_tune_and_joint_training_need_validation_data(tiny_backbone: Path, tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    write_csv(tmp_path / "data" / "train.csv", ROWS)
    spec = tmp_path / "chain.yaml"
    spec.write_text(f"backbone: {tiny_backbone}\nmax_length: 32\ntasks:\n  - {{name: s, train: data/train.csv, min_validation: 50}}\n")
    with pytest.raises(FinechainError, match=r"task\(s\) \['s'\] have none.*dev file"):
        tune_spec(spec, trials=1)
    topics = [(f"{w} news", t) for t, ws in TOPICS.items() for w in ws * 4]
    specs = [
        TaskSpec(name="s", train=write_csv(tmp_path / "s.csv", ROWS), min_validation=50),
        TaskSpec(name="t", train=write_csv(tmp_path / "t.csv", topics), min_validation=0),
    ]
    with pytest.raises(DataError, match="task 's' has none"):
        _chain(tiny_backbone).fit_joint(specs, FEW, JointConfig(epochs=1), progress=False)


def test_cli_trains_a_few_shot_task_from_the_documented_spec(tiny_backbone: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    from tests.test_cli import cli

    write_csv(tmp_path / "train.csv", ROWS)
    write_csv(tmp_path / "test.csv", sentiment_rows(10, 9))
    spec = tmp_path / "chain.yaml"
    spec.write_text(
        f"backbone: {tiny_backbone}\nmax_length: 32\ntasks:\n"
        "  - {name: s, type: prototype, train: train.csv, test: test.csv, min_validation: 50,\n"
        "     training: {contrastive: 1, min_steps: 10, epochs: 2}}\n"
    )
    code, out, err = cli(["train", str(spec), "--out", str(tmp_path / "chain"), "-q"], monkeypatch, capsys)
    assert code == 0, err
    manifest = json.loads((tmp_path / "chain" / "finechain.json").read_text())
    task = manifest["tasks"]["s"]
    assert task["head"]["type"] == "prototype" and "validation" not in task["metrics"] and task["metrics"]["test"]["n"] == 10
    assert task["data"]["validation"]["source"] == "none: too few examples to cut"
    code, out, err = cli(["info", str(tmp_path / "chain")], monkeypatch, capsys)
    assert code == 0 and "prototype" in out and "nan" not in out
    spec.write_text(spec.read_text().replace("type: prototype", "type: regression"))
    code, out, err = cli(["train", str(spec), "--out", str(tmp_path / "bad"), "-q"], monkeypatch, capsys)
    assert code == 2 and "contrastive compares texts by their labels" in err and "Traceback" not in err


def test_joint_specs_always_cut_validation_unless_a_task_says_otherwise() -> None:
    tasks = [{"name": "a", "train": "a.csv"}, {"name": "b", "train": "b.csv", "min_validation": 20}]
    joint = ChainSpec.model_validate({"tasks": tasks})  # sharing auto with two tasks: joint
    assert joint.sharing_mode == "joint" and [t.min_validation for t in joint.tasks] == [0, 20]
    frozen = ChainSpec.model_validate({"tasks": tasks, "sharing": "frozen"})
    assert [t.min_validation for t in frozen.tasks] == [None, 20]


def test_a_run_with_nothing_to_score_says_so_instead_of_an_empty_table() -> None:
    from rich.table import Table

    from finechain.cli.app import _metrics_table

    nothing = _metrics_table("chain saved to out", [("s", "validation", {})])
    assert str(nothing) == "chain saved to out (no validation or test data to score)"
    assert isinstance(_metrics_table("t", [("s", "test", {"accuracy": 0.5})]), Table)
