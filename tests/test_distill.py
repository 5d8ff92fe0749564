"""Students: fewer layers started from the teacher's, distilled on its outputs; saved as chains that every verb reads,
exported and quantized like any chain; bad requests are one-line errors that leave nothing behind."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from finechain import Chain
from finechain.data.batching import pad_ids
from finechain.errors import ArtifactError, FinechainError, Interrupted
from finechain.export.onnx import export_onnx
from finechain.inference import Engine
from finechain.inference.exported import ExportedChain, read_export_manifest
from finechain.model.encoder import attention_heads, feed_forward, layer_shape
from finechain.model.losses import SOFT_LOSSES
from finechain.model.student import layer_activity, student_of
from finechain.train.checkpoint import Checkpointer
from finechain.train.objectives import Distillation, StepInputs
from tests.conftest import ner_sentences, sentiment_rows, write_conll, write_csv
from tests.conftest import run_cli as cli
from tests.test_joint import JOINT, TRAINING, specs_and_data

TEXTS = ["alice visited new york", "superb film and music", "the plot was awful", "bob met carol in paris"]


@pytest.fixture(scope="module")
def teacher(tiny_backbone: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Chain, dict]:
    """A jointly trained two-task chain (sentiment, NER) on the tiny BERT: split 2 of 4 layers."""
    specs, data = specs_and_data(tmp_path_factory.mktemp("teacher"))
    chain = Chain.from_backbone(str(tiny_backbone), split=2, max_length=32)
    chain.fit_joint(specs, TRAINING, JOINT, data=data, progress=False)
    return chain, data


def test_a_distilled_student_keeps_what_the_teacher_knows(teacher: tuple[Chain, dict], tmp_path: Path) -> None:
    chain, data = teacher
    before = student_of(chain.model, 1, 1)
    copied = {k: v.clone() for k, v in before.trunk.stack.state_dict().items()}
    assert copied["layers.0.attention.self.query.weight"].equal(chain.model.trunk.stack.layers[1].attention.self.query.weight)
    student = chain.distil(1, 1, data=data, training=TRAINING, epochs=8, trunk_learning_rate=1e-3, progress=False)
    assert student.model.layer_ids == [1, 3] and student.split == 1 and student.num_layers == 2
    assert all(len(task.branch.layers) == 1 for task in student.tasks.values())
    assert any(not v.equal(student.model.trunk.stack.state_dict()[k]) for k, v in copied.items())  # it was trained
    assert student.records["sent"].metrics["validation"]["accuracy"] >= 0.9
    assert student.records["ner"].metrics["validation"]["entity_f1"] >= 0.7
    dev = data["sent"].validation.texts
    agree = sum(a["sent"].label == b["sent"].label for a, b in zip(chain.predict(dev), student.predict(dev), strict=True))
    assert agree >= 0.9 * len(dev)
    assert student.model.compression["trunk_layers_kept"] == [1] and student.model.compression["teacher"]["split"] == 2
    # a chain folder like any other: it loads with its layers, and exports to one ONNX graph that answers the same
    folder = student.save_pretrained(tmp_path / "student")
    manifest = json.loads((folder / "finechain.json").read_text())
    assert manifest["layers"] == [1, 3] and manifest["num_layers"] == 2 and manifest["compression"]["epochs"] == 8
    loaded = Chain.from_pretrained(folder)
    assert loaded.predict(TEXTS) == student.predict(TEXTS)
    exported = export_onnx(folder, tmp_path / "onnx")
    assert exported.steps[0] == "student: backbone layers [1, 3], distilled" and exported.layers == 2
    engine = Engine(ExportedChain(tmp_path / "onnx"))
    assert [p["ner"].to_dict()["tags"] for p in engine.predict(TEXTS)] == [p["ner"].to_dict()["tags"] for p in loaded.predict(TEXTS)]


def test_a_student_keeps_branch_layers_only_for_the_tasks_that_ask(teacher: tuple[Chain, dict], tmp_path: Path) -> None:
    """Per-task branch depth: NER keeps one branch layer, sentiment reads the student trunk directly; the chain saves,
    loads and exports with branches of different depths and answers the same everywhere."""
    chain, data = teacher
    student = chain.distil(1, 0, task_branch_layers={"ner": 1}, data=data, training=TRAINING, epochs=2, progress=False)
    assert [len(student.model.tasks[n].branch.layers) for n in ("sent", "ner")] == [0, 1]
    assert student.model.layer_ids == [1, 3] and student.num_layers == 2  # the deepest branch's layers
    assert student.model.compression["branch_layers_kept"] == {"sent": [], "ner": [1]}
    folder = student.save_pretrained(tmp_path / "student")
    manifest = json.loads((folder / "finechain.json").read_text())
    assert {n: t["branch_layers"] for n, t in manifest["tasks"].items()} == {"sent": 0, "ner": 1}
    loaded = Chain.from_pretrained(folder)
    assert [len(loaded.model.tasks[n].branch.layers) for n in ("sent", "ner")] == [0, 1]
    assert loaded.predict(TEXTS) == student.predict(TEXTS)
    export_onnx(folder, tmp_path / "onnx")
    exported = Engine(ExportedChain(tmp_path / "onnx")).predict(TEXTS)
    assert [p["sent"].label for p in exported] == [p["sent"].label for p in loaded.predict(TEXTS)]
    assert [p["ner"].to_dict()["tags"] for p in exported] == [p["ner"].to_dict()["tags"] for p in loaded.predict(TEXTS)]
    with pytest.raises(FinechainError, match="no task 'nerd'"):
        student_of(chain.model, 1, 0, {"nerd": 1})
    manifest["tasks"]["ner"]["branch_layers"] = 0  # a manifest that drops a layer the weights have: refused, not cut
    (folder / "finechain.json").write_text(json.dumps(manifest))
    with pytest.raises(FinechainError, match="weights do not fit task 'ner'"):
        Chain.from_pretrained(folder)


def test_a_narrowed_layer_keeps_its_most_active_neurons_and_computes_what_the_teacher_did_without_the_others(
    teacher: tuple[Chain, dict],
) -> None:
    """Structured pruning: each student layer keeps the feed-forward neurons its teacher layer ranks first (mean
    absolute activation times outgoing weight size); the narrowed layer is the teacher's with the others zeroed."""
    chain, _ = teacher
    ids = chain.model.encode(TEXTS)[0]
    used = layer_activity(chain.model, {"sent": ids[:2], "ner": ids[2:]})
    activity = {layer: kind.neurons for layer, kind in used.items()}
    trunk_layer = chain.model.trunk.stack.layers[1]
    assert set(activity) == {*chain.model.trunk.stack.layers, *(layer for t in chain.model.tasks.values() for layer in t.branch.layers)}
    alone = layer_activity(chain.model, {"sent": ids[:2]})  # a branch is ranked on its own task's texts only
    assert alone[chain.model.tasks["sent"].branch.layers[0]].neurons.equal(activity[chain.model.tasks["sent"].branch.layers[0]])
    assert not alone[trunk_layer].neurons.equal(activity[trunk_layer]) and chain.model.tasks["ner"].branch.layers[0] not in alone
    with pytest.raises(FinechainError, match="no task 'nerd' in the teacher"):
        layer_activity(chain.model, {"nerd": ids})
    assert activity[trunk_layer].shape == (64,) and (activity[trunk_layer] >= 0).all() and activity[trunk_layer].sum() > 0
    student = student_of(chain.model, 1, 1, ffn_width=16, activity=used)
    into, out = feed_forward(trunk_layer)
    score = activity[trunk_layer] * out.weight.detach().norm(dim=0)
    kept = score.topk(16).indices.sort().values
    narrow_in, narrow_out = feed_forward(student.trunk.stack.layers[0])
    assert narrow_in.weight.equal(into.weight[kept]) and narrow_out.weight.equal(out.weight[:, kept])
    assert narrow_out.bias.equal(out.bias) and student.ffn_width == 16
    for name, task in student.tasks.items():  # each branch ranked by its own teacher layer's activity
        theirs = chain.model.tasks[name].branch.layers[1]
        ranked = (activity[theirs] * feed_forward(theirs)[1].weight.detach().norm(dim=0)).topk(16).indices.sort().values
        assert feed_forward(task.branch.layers[0])[0].weight.equal(feed_forward(theirs)[0].weight[ranked])
    assert all(feed_forward(layer)[0].out_features == 16 for layer in student.upper.layers)  # templates of new tasks too
    # the narrowed layer answers as the teacher's layer with every other neuron's output zeroed
    input_ids, mask = pad_ids(ids, chain.model.pad_id)
    with torch.no_grad():
        states = chain.model.trunk_states(input_ids, mask, all_states=True)[1]  # what trunk layer 1 reads
        gate = torch.zeros(64)
        gate[kept] = 1.0
        handle = trunk_layer.intermediate.register_forward_hook(lambda _m, _i, output: output * gate)
        try:
            zeroed = trunk_layer(states)
        finally:
            handle.remove()
        assert torch.allclose(student.trunk.stack.layers[0](states), zeroed, atol=1e-5)


def test_a_pruned_layer_keeps_its_most_used_heads_and_computes_what_the_teacher_did_without_the_others(
    teacher: tuple[Chain, dict],
) -> None:
    """Head pruning: each student layer keeps the attention heads its teacher layer ranks first (the mean size of what
    a head adds to the layer's output per real token); the pruned layer is the teacher's with the others' outputs
    zeroed, and the templates of new tasks are pruned too (by weights)."""
    chain, _ = teacher
    ids = chain.model.encode(TEXTS)[0]
    used = layer_activity(chain.model, {"sent": ids[:2], "ner": ids[2:]})
    trunk_layer = chain.model.trunk.stack.layers[1]
    heads = used[trunk_layer].heads
    assert heads.shape == (4,) and (heads > 0).all() and len(set(heads.tolist())) == 4
    # what a head adds, measured by hand: its slice of the heads' outputs through its columns of the output layer
    attention, _, out = attention_heads(trunk_layer)
    seen: list[torch.Tensor] = []
    handle = out.register_forward_pre_hook(lambda _m, inputs: seen.append(inputs[0]))
    input_ids, mask = pad_ids(ids, chain.model.pad_id)
    try:
        with torch.no_grad():
            states = chain.model.trunk_states(input_ids, mask, all_states=True)[1]  # what trunk layer 1 reads
            trunk_layer(states, attention_mask=(mask[:, None, None, :] > 0))
    finally:
        handle.remove()
    head = 2
    own = seen[0][..., head * 8 : (head + 1) * 8] @ out.weight[:, head * 8 : (head + 1) * 8].T
    size = own.norm(dim=-1)[mask.bool()].mean()
    first = layer_activity(chain.model, {"sent": ids})[trunk_layer].heads[head]  # every text as one task's
    assert attention.attention_head_size == 8 and torch.allclose(first, size, rtol=1e-4)
    student = student_of(chain.model, 1, 1, activity=used, heads=2)
    kept = heads.topk(2).indices.sort().values
    rows = (kept[:, None] * 8 + torch.arange(8)).flatten()
    pruned, (query, _, value), pruned_out = attention_heads(student.trunk.stack.layers[0])
    assert (
        pruned.num_attention_heads == 2
        and query.weight.equal(attention.query.weight[rows])
        and value.bias.equal(attention.value.bias[rows])
    )
    assert (
        pruned_out.weight.equal(out.weight[:, rows])
        and student.attention_heads == 2
        and student.compression["attention_heads"] == {"kept": 2, "of": 4}
    )
    assert all(attention_heads(layer)[0].num_attention_heads == 2 for layer in student.upper.layers)  # templates of new tasks too
    assert chain.model.encoder_config.num_attention_heads == 4  # a head's size still comes from the backbone's count
    gate = torch.zeros(32)
    gate[rows] = 1.0
    handle = out.register_forward_pre_hook(lambda _m, inputs: (inputs[0] * gate,))
    try:
        with torch.no_grad():
            blocked = mask[:, None, None, :] > 0
            zeroed = trunk_layer(states, attention_mask=blocked)
            mine = student.trunk.stack.layers[0](states, attention_mask=blocked)
    finally:
        handle.remove()
    first = zeroed[0] if isinstance(zeroed, tuple) else zeroed
    assert torch.allclose(mine[0] if isinstance(mine, tuple) else mine, first, atol=1e-5)
    with pytest.raises(FinechainError, match="cannot keep 5 of the teacher's 4 attention heads"):
        student_of(chain.model, 1, 1, heads=5)


def test_a_head_pruned_student_saves_loads_exports_and_is_pruned_again(teacher: tuple[Chain, dict], tmp_path: Path) -> None:
    chain, data = teacher
    student = chain.distil(1, 1, data=data, training=TRAINING, epochs=2, ffn_width=0.5, attention_heads=2, progress=False)
    assert student.model.attention_heads == 2 and student.model.compression["attention_heads"] == {"kept": 2, "of": 4}
    layers = [*student.model.trunk.stack.layers, *(layer for task in student.model.tasks.values() for layer in task.branch.layers)]
    assert [attention_heads(layer)[1][0].out_features for layer in layers] == [16, 16, 16]
    folder = student.save_pretrained(tmp_path / "student")
    assert json.loads((folder / "finechain.json").read_text())["attention_heads"] == 2
    loaded = Chain.from_pretrained(folder)
    assert loaded.model.attention_heads == 2 and loaded.predict(TEXTS) == student.predict(TEXTS)
    exported = export_onnx(folder, tmp_path / "onnx")
    assert exported.steps[0] == "student: backbone layers [1, 3], 32 feed-forward neurons and 2 attention heads per layer, distilled"
    engine = Engine(ExportedChain(tmp_path / "onnx"))
    ours, theirs = engine.predict(TEXTS), loaded.predict(TEXTS)
    assert [p["ner"].to_dict()["tags"] for p in ours] == [p["ner"].to_dict()["tags"] for p in theirs]
    assert [p["sent"].to_dict()["label"] for p in ours] == [p["sent"].to_dict()["label"] for p in theirs]
    again = loaded.distil(1, 1, data=data, training=TRAINING, epochs=1, attention_heads=1, progress=False)  # 1 of its 2
    assert again.model.attention_heads == 1 and again.model.compression["attention_heads"] == {"kept": 1, "of": 2}
    same = loaded.distil(1, 0, data=data, training=TRAINING, epochs=1, progress=False)  # fewer layers, as few heads as its teacher
    assert same.model.attention_heads == 2 and Chain.from_pretrained(same.save_pretrained(tmp_path / "same")).model.attention_heads == 2
    with pytest.raises(FinechainError, match="cannot keep 3 of the teacher's 2 attention heads"):
        loaded.distil(1, 1, data=data, training=TRAINING, attention_heads=3, progress=False)


def test_a_narrowed_student_saves_loads_exports_and_is_narrowed_again(teacher: tuple[Chain, dict], tmp_path: Path) -> None:
    chain, data = teacher
    student = chain.distil(1, 1, data=data, training=TRAINING, epochs=2, ffn_width=0.5, progress=False)
    assert student.model.ffn_width == 32 and student.model.compression["ffn_width"] == {"kept": 32, "of": 64}
    layers = [*student.model.trunk.stack.layers, *(layer for task in student.model.tasks.values() for layer in task.branch.layers)]
    assert [feed_forward(layer)[0].out_features for layer in layers] == [32, 32, 32]
    folder = student.save_pretrained(tmp_path / "student")
    assert json.loads((folder / "finechain.json").read_text())["ffn_width"] == 32
    loaded = Chain.from_pretrained(folder)
    assert loaded.model.ffn_width == 32 and loaded.predict(TEXTS) == student.predict(TEXTS)
    exported = export_onnx(folder, tmp_path / "onnx")
    assert exported.steps[0] == "student: backbone layers [1, 3], 32 feed-forward neurons per layer, distilled"
    engine = Engine(ExportedChain(tmp_path / "onnx"))
    assert [p["ner"].to_dict()["tags"] for p in engine.predict(TEXTS)] == [p["ner"].to_dict()["tags"] for p in loaded.predict(TEXTS)]
    again = loaded.distil(1, 1, data=data, training=TRAINING, epochs=1, ffn_width=0.5, progress=False)  # a share of 32
    assert again.model.ffn_width == 16 and again.model.compression["ffn_width"] == {"kept": 16, "of": 32}
    same = loaded.distil(1, 0, data=data, training=TRAINING, epochs=1, progress=False)  # fewer layers, as narrow as its teacher
    assert same.model.ffn_width == 32 and Chain.from_pretrained(same.save_pretrained(tmp_path / "same")).model.ffn_width == 32
    with pytest.raises(FinechainError, match="feed-forward width of 0 is not a share"):
        chain.distil(1, 1, data=data, training=TRAINING, ffn_width=0.0, progress=False)


def test_a_student_narrows_the_branches_it_is_told_to_further_than_its_trunk(teacher: tuple[Chain, dict], tmp_path: Path) -> None:
    """Per task: a branch keeps fewer neurons and heads than the trunk (the ones its own teacher layer uses most), the
    manifest says so per task, loading, export and the exported runner follow; a branch wider than the trunk, or a
    task the teacher lacks, is a one-line error; a manifest whose branch does not fit its layers names the file."""
    chain, data = teacher
    ids = chain.model.encode(TEXTS)[0]
    used = layer_activity(chain.model, {"sent": ids[:2], "ner": ids[2:]})
    student = student_of(chain.model, 1, 1, ffn_width=48, activity=used, task_ffn_width={"ner": 16}, task_heads={"ner": 2})
    theirs = chain.model.tasks["ner"].branch.layers[1]
    ranked = (used[theirs].neurons * feed_forward(theirs)[1].weight.detach().norm(dim=0)).topk(16).indices.sort().values
    assert feed_forward(student.tasks["ner"].branch.layers[0])[0].weight.equal(feed_forward(theirs)[0].weight[ranked])
    size = attention_heads(theirs)[0].attention_head_size  # head h's value rows: h * size .. (h + 1) * size - 1
    rows = (used[theirs].heads.topk(2).indices.sort().values[:, None] * size + torch.arange(size)).flatten()
    assert attention_heads(student.tasks["ner"].branch.layers[0])[1][2].weight.equal(attention_heads(theirs)[1][2].weight[rows])
    assert [layer_shape(layer) for layer in (*student.trunk.stack.layers, *student.tasks["sent"].branch.layers)] == [(48, 4), (48, 4)]
    assert student.compression["branches"] == {"ner": {"ffn_width": 16, "attention_heads": 2}}

    small = chain.distil(
        1,
        1,
        data=data,
        training=TRAINING,
        epochs=1,
        ffn_width=0.75,
        task_ffn_width={"ner": 0.25},
        task_attention_heads={"ner": 2},
        progress=False,
    )
    assert layer_shape(small.model.tasks["ner"].branch.layers[0]) == (16, 2) and layer_shape(
        small.model.tasks["sent"].branch.layers[0]
    ) == (48, 4)
    folder = small.save_pretrained(tmp_path / "student")
    tasks = json.loads((folder / "finechain.json").read_text())["tasks"]
    assert (tasks["ner"]["ffn_width"], tasks["ner"]["attention_heads"], tasks["sent"]["ffn_width"], tasks["sent"]["attention_heads"]) == (
        16,
        2,
        None,
        None,
    )
    loaded = Chain.from_pretrained(folder)
    assert layer_shape(loaded.model.tasks["ner"].branch.layers[0]) == (16, 2) and loaded.predict(TEXTS) == small.predict(TEXTS)
    exported = export_onnx(folder, tmp_path / "onnx")
    assert exported.steps[0] == (
        "student: backbone layers [1, 3], 48 feed-forward neurons per layer; branches narrower: ner 16 feed-forward neurons and 2"
        " attention heads, distilled"
    )
    ours = Engine(ExportedChain(tmp_path / "onnx")).predict(TEXTS)
    assert [p["ner"].to_dict()["tags"] for p in ours] == [p["ner"].to_dict()["tags"] for p in loaded.predict(TEXTS)]
    again = loaded.distil(1, 1, data=data, training=TRAINING, epochs=1, ffn_width=1.0, progress=False)  # the narrower branch stays so
    assert layer_shape(again.model.tasks["ner"].branch.layers[0]) == (16, 2) and again.model.ffn_width == 48
    assert "ffn_width" not in again.model.compression  # every one of the teacher's neurons: nothing pruned, nothing said
    assert again.model.compression["branches"] == {"ner": {"ffn_width": 16, "attention_heads": 2}}

    for options, message in (
        (
            {"ffn_width": 0.5, "task_ffn_width": {"ner": 0.75}},
            "task 'ner': a branch of 48 feed-forward neurons per layer does not fit the student's layers of 32",
        ),
        ({"task_attention_heads": {"ner": 5}}, "cannot keep 5 of the teacher's 4 attention heads"),
        ({"task_ffn_width": {"nerd": 0.5}}, "no task 'nerd' in the teacher to narrow"),
        ({"task_ffn_width": {"ner": 0.0}}, "feed-forward width of 0 is not a share"),
    ):
        with pytest.raises(FinechainError, match=re.escape(message)):
            chain.distil(1, 1, data=data, training=TRAINING, progress=False, **options)
    manifest = json.loads((folder / "finechain.json").read_text())
    manifest["tasks"]["ner"]["ffn_width"] = 64  # wider than the layers it starts from
    (folder / "finechain.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"task 'ner': a feed-forward width of 64 does not fit a layer of 48 neurons") as error:
        Chain.from_pretrained(folder)
    assert "finechain.json" in str(error.value)


def test_a_lora_teacher_is_narrowed_and_a_lora_task_added_to_the_narrowed_student_roundtrips(tiny_backbone: Path, tmp_path: Path) -> None:
    """A LoRA branch is merged, then narrowed; a LoRA task trained later on the narrowed student adapts the narrowed
    templates (the backbone's upper layers, narrowed by weight), which loading rebuilds the same way."""
    specs, data = specs_and_data(tmp_path)
    chain = Chain.from_backbone(str(tiny_backbone), split=2, max_length=32)
    lora = specs[0].model_copy(update={"branch": {"mode": "lora", "rank": 4}})
    chain.fit(lora, TRAINING.model_copy(update={"epochs": 2}), data=data["sent"], progress=False)
    student = chain.distil(1, 1, data={"sent": data["sent"]}, training=TRAINING, epochs=1, ffn_width=0.75, progress=False)
    assert feed_forward(student.model.tasks["sent"].branch.layers[0])[0].out_features == 48
    more = specs[0].model_copy(update={"name": "more", "branch": {"mode": "lora", "rank": 4}})
    student.fit(more, TRAINING, data=data["sent"], progress=False)
    folder = student.save_pretrained(tmp_path / "student")
    loaded = Chain.from_pretrained(folder)
    assert loaded.model.tasks["more"].mode.config()["mode"] == "lora"
    assert loaded.predict(TEXTS) == student.predict(TEXTS)


def test_soft_losses_count_real_tokens_and_the_gold_loss_only_labelled_rows() -> None:
    teacher = torch.randn(2, 5, 3)
    student = torch.randn(2, 5, 3)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    loss = SOFT_LOSSES.get("token_cross_entropy")(student, teacher, mask, 2.0)
    changed = student.clone()
    changed[0, 3:] = 100.0  # padding: must not count
    assert torch.allclose(loss, SOFT_LOSSES.get("token_cross_entropy")(changed, teacher, mask, 2.0))
    same = SOFT_LOSSES.get("cross_entropy")(teacher[:, 0], teacher[:, 0], mask, 1.0)
    worse = SOFT_LOSSES.get("cross_entropy")(-teacher[:, 0], teacher[:, 0], mask, 1.0)
    assert same < worse

    class Tail(torch.nn.Module):  # a task tail stand-in: outputs its input, the head's loss is cross-entropy
        head = type("H", (), {"loss_name": "cross_entropy"})()

        def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return states

        def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.cross_entropy(logits, targets)

    logits, soft = torch.randn(4, 3), torch.randn(4, 3)
    inputs = StepInputs(logits, torch.ones(4, 1), torch.tensor([0, 1, 2, 0]), torch.tensor([0, 1, 2, 3]))
    unlabelled = Distillation(soft, labelled=0, temperature=2.0, hard_weight=1.0).loss(Tail(), inputs)
    assert torch.allclose(unlabelled, SOFT_LOSSES.get("cross_entropy")(logits, soft, inputs.mask, 2.0))
    two = Distillation(soft, labelled=2, temperature=2.0, hard_weight=1.0).loss(Tail(), inputs)
    assert torch.allclose(two - unlabelled, torch.nn.functional.cross_entropy(logits[:2], inputs.targets[:2]))


def test_hidden_state_loss_adds_the_gap_to_the_teacher_trunk_over_real_tokens() -> None:
    class Tail(torch.nn.Module):  # outputs the mean state as two logits
        head = type("H", (), {"loss_name": "cross_entropy"})()

        def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return states.mean(1)[:, :2]

    states, target = torch.randn(2, 4, 3), torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    inputs = StepInputs(states, mask, torch.zeros(2, dtype=torch.long), torch.tensor([0, 1]))
    plain = Distillation(torch.randn(2, 2), labelled=0).loss(Tail(), inputs)
    hidden = Distillation(torch.randn(2, 2), labelled=0, hidden_weight=2.0, teacher_states=lambda i: target[i])
    real = mask.bool()
    gap = ((states[real] - target[real]) ** 2).mean()  # padding positions do not count
    soft = Distillation(hidden.teacher, labelled=0).loss(Tail(), inputs)
    assert torch.allclose(hidden.loss(Tail(), inputs) - soft, 2.0 * gap) and plain.shape == gap.shape
    with pytest.raises(ValueError, match="teacher_states"):
        Distillation(torch.zeros(2, 2), labelled=0, hidden_weight=1.0)


def test_hidden_state_distillation_brings_the_student_trunk_closer_to_the_teacher(teacher: tuple[Chain, dict]) -> None:
    chain, data = teacher
    ids, mask = (t.to(chain.model.device) for t in pad_ids(chain.model.encode(data["sent"].validation.texts)[0], chain.model.pad_id))
    with torch.no_grad():
        target = chain.model.trunk_states(ids, mask)[-1]

    def gap(weight: float) -> float:
        student = chain.distil(1, 1, data=data, training=TRAINING, epochs=4, trunk_learning_rate=1e-3, hidden_weight=weight, progress=False)
        assert student.model.compression["hidden_weight"] == weight
        with torch.no_grad():
            return float(((student.model.trunk_states(ids, mask)[-1] - target)[mask.bool()] ** 2).mean())

    assert gap(10.0) < 0.8 * gap(0.0)


@pytest.fixture
def trained(tiny_backbone: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Path:
    """A frozen-trunk chain trained with the CLI, its backbone copied in."""
    write_csv(tmp_path / "s.csv", sentiment_rows(80, 1))
    write_conll(tmp_path / "n.conll", ner_sentences(80, 1))
    (tmp_path / "chain.yaml").write_text(
        f"backbone: {tiny_backbone}\nsplit: 2\nmax_length: 32\ntraining: {{epochs: 2, batch_size: 16, min_steps: 0}}\n"
        "tasks:\n  - {name: sent, train: s.csv}\n  - {name: ner, type: tagging, train: n.conll}\n"
    )
    code, _, err = cli(["train", str(tmp_path / "chain.yaml"), "--out", str(tmp_path / "c"), "--copy-backbone", "-q"], monkeypatch, capsys)
    assert code == 0, err
    return tmp_path / "c"


def test_cli_compress_to_a_student_then_to_int8(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "more.txt").write_text("alice met bob\nvery good music\nweak plot\n")
    args = ["compress", str(trained), "--out", str(tmp_path / "s"), "--trunk-layers", "1", "--texts", str(tmp_path / "more.txt")]
    code, out, err = cli([*args, "--epochs", "1", "--hidden-weight", "0.5", "-q"], monkeypatch, capsys)
    assert code == 0, err
    assert "student: trunk layers [1] of 2, branch layers [0, 1] of 2, distilled" in " ".join(out.split())
    assert "teacher (val)" in out and "student (val)" in out
    manifest = json.loads((tmp_path / "s" / "finechain.json").read_text())
    assert manifest["layers"] == [1, 2, 3] and manifest["compression"]["unlabelled_texts"] == 3
    assert manifest["compression"]["hidden_weight"] == 0.5
    assert manifest["backbone"]["kind"] == "copied" and (tmp_path / "s" / "backbone").is_dir()
    shutil.rmtree(trained)  # the student stands alone: its backbone was copied along with it
    code, out, err = cli(["info", str(tmp_path / "s")], monkeypatch, capsys)
    assert code == 0 and "student: backbone layers [1, 2, 3] of the teacher's 4, distilled" in out, err
    code, out, err = cli(["predict", str(tmp_path / "s"), "--input", str(tmp_path / "more.txt")], monkeypatch, capsys)
    assert code == 0 and len(out.splitlines()) == 3, err
    code, out, err = cli(["compress", str(tmp_path / "s"), "--out", str(tmp_path / "s8"), "--int8", "-q"], monkeypatch, capsys)
    assert code == 0, err
    assert read_export_manifest(tmp_path / "s8").steps[0].startswith("student: backbone layers [1, 2, 3]")


def test_an_interrupted_compress_resumes_to_the_student_of_a_run_straight_through(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["compress", str(trained), "--trunk-layers", "1", "--epochs", "2", "-q", "--out"]
    code, _, err = cli([*args, str(tmp_path / "straight")], monkeypatch, capsys)
    assert code == 0, err
    original = Checkpointer.save

    def save_then_stop(self, *given, **options):
        original(self, *given, **options)
        raise Interrupted("SIGINT")  # what the command line's handler raises on Ctrl-C

    monkeypatch.setattr(Checkpointer, "save", save_then_stop)
    code, _, err = cli([*args, str(tmp_path / "s")], monkeypatch, capsys)
    assert code == 130 and "the distillation is checkpointed at its last validation check in" in " ".join(err.split())
    assert not (tmp_path / "s").exists() and (tmp_path / ".s.distill").is_dir()
    code, _, err = cli([*args, str(tmp_path / "s")], monkeypatch, capsys)  # without --resume: started over (and stopped again)
    assert code == 130 and "holds the checkpoint of an interrupted distillation; starting over" in " ".join(err.split())
    saves = []

    def save_and_count(self, *given, **options):
        saves.append(given[5].step)  # the loop's counters: at which optimizer step
        original(self, *given, **options)

    monkeypatch.setattr(Checkpointer, "save", save_and_count)
    code, _, err = cli([*args, str(tmp_path / "s"), "--resume"], monkeypatch, capsys)
    assert code == 0, err
    assert len(saves) == 3  # 2 epochs, 2 checks each: the first was done before the interrupt
    assert not (tmp_path / ".s.distill").exists()  # the student is saved: nothing left to resume
    files = sorted(p.relative_to(tmp_path / "s") for p in (tmp_path / "s").rglob("*.safetensors"))
    assert files and files == sorted(p.relative_to(tmp_path / "straight") for p in (tmp_path / "straight").rglob("*.safetensors"))
    for name in files:
        ours, straight = load_file(tmp_path / "s" / name), load_file(tmp_path / "straight" / name)
        assert all(torch.equal(ours[k], straight[k]) for k in straight), name
    code, _, err = cli(["compress", str(trained), "--int8", "--resume", "--out", str(tmp_path / "q")], monkeypatch, capsys)
    assert code == 2 and "--resume continues an interrupted distillation" in err


def test_cli_compress_with_branch_layers_per_task(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["compress", str(trained), "--out", str(tmp_path / "s"), "--trunk-layers", "1", "--branch-layers", "0, ner=1"]
    code, out, err = cli([*args, "--ffn-width", "0.5", "--epochs", "1", "-q"], monkeypatch, capsys)
    assert code == 0, err
    assert "branch layers sent [], ner [1] of 2, feed-forward neurons 32 of 64 per layer, distilled" in " ".join(out.split())
    code, out, err = cli(["info", str(tmp_path / "s")], monkeypatch, capsys)
    assert code == 0 and "backbone layers [1, 3] of the teacher's 4, 32 feed-forward neurons per layer, distilled" in " ".join(out.split())
    narrow = [
        "compress",
        str(trained),
        "--out",
        str(tmp_path / "w"),
        "--ffn-width",
        "0.75,ner=0.25",
        "--attention-heads",
        "3, ner=2",
        "--epochs",
        "1",
        "-q",
    ]
    code, out, err = cli(narrow, monkeypatch, capsys)
    words = " ".join(out.split())
    narrowed = "feed-forward neurons 48 of 64 per layer, attention heads 3 of 4 per layer; branches narrower: ner 16 feed-forward neurons"
    assert code == 0 and f"branch layers [0, 1] of 2, {narrowed} and 2 attention heads, distilled" in words, err
    code, out, err = cli(["info", str(tmp_path / "w")], monkeypatch, capsys)  # every layer kept, each narrower
    words = " ".join(out.split())
    assert (
        code == 0
        and "student: every backbone layer of the teacher's 4, 48 feed-forward neurons and 3 attention heads per layer; branches"
        " narrower: ner 16 feed-forward neurons and 2 attention heads, distilled"
        in words
    ), out
    manifest = json.loads((tmp_path / "s" / "finechain.json").read_text())
    assert {n: t["branch_layers"] for n, t in manifest["tasks"].items()} == {"sent": 0, "ner": 1}
    code, out, err = cli(["info", str(tmp_path / "s")], monkeypatch, capsys)
    assert code == 0 and re.search(r"sent\s+classification\s+\d+\s+0 full", out) and re.search(r"ner\s+tagging\s+\d+\s+1 full", out), out


def test_cli_compress_refuses_what_cannot_work(
    trained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    export_onnx(trained, tmp_path / "onnx")
    cases = [
        (["compress", str(tmp_path / "onnx"), "--out", str(tmp_path / "x"), "--trunk-layers", "1"], "is distilled from a chain folder"),
        (["compress", str(trained), "--out", str(tmp_path / "x"), "--trunk-layers", "3"], "does not fit the teacher's trunk of 2"),
        (["compress", str(trained), "--out", str(tmp_path / "x"), "--trunk-layers", "1", "--branch-layers", "3"], "choose 0..2"),
        (["compress", str(trained), "--out", str(tmp_path / "x"), "--branch-layers", "0,ner=3"], "of 3 layers for 'ner' does not fit"),
        (["compress", str(trained), "--out", str(tmp_path / "x"), "--branch-layers", "0,nerd=1"], "no task 'nerd' in the teacher"),
        (["compress", str(trained), "--out", str(tmp_path / "x"), "--branch-layers", "ner=one"], "'ner=one' is not a number of layers"),
        (["compress", str(trained), "--out", str(tmp_path / "x"), "--branch-layers", "1,2"], "'2' is not a number of layers"),
        (["compress", str(trained), "--out", str(tmp_path / "x"), "--branch-layers", "=1"], "'=1' is not a number of layers"),
        (["compress", str(trained), "--out", str(tmp_path / "x"), "--branch-layers", "ner=²"], "'ner=²' is not a number of layers"),
        (["compress", str(trained), "--out", str(tmp_path / "x"), "--branch-layers", "ner=1=2"], "'ner=1=2' is not a number of layers"),
        (["compress", str(trained), "--out", str(tmp_path / "x"), "--branch-layers", " "], "'' is not a number of layers"),
        (["compress", str(trained), "--out", str(tmp_path / "x"), "--branch-layers", "0,ner=1,ner=0"], "task 'ner' is given twice"),
        (["compress", str(trained), "--out", str(tmp_path / "onnx"), "--trunk-layers", "1"], "already exists"),
        (["compress", str(trained), "--out", str(tmp_path / "x"), "--no-int8"], "nothing to do"),
        (["compress", str(trained), "--out", str(tmp_path / "x"), "--trunk-layers", "1", "--hidden-weight", "inf"], "hidden_weight inf"),
        (["compress", str(trained), "--out", str(tmp_path / "x"), "--trunk-layers", "1", "--hard-weight", "inf"], "hard_weight inf"),
        (["compress", str(trained), "--out", str(tmp_path / "x"), "--ffn-width", "1.5"], "feed-forward width of 1.5 is not a share"),
        (["compress", str(trained), "--out", str(tmp_path / "x"), "--ffn-width", "0"], "feed-forward width of 0 is not a share"),
        (["compress", str(trained), "--out", str(tmp_path / "x"), "--ffn-width", "nan"], "feed-forward width of nan is not a share"),
        (
            ["compress", str(trained), "--out", str(tmp_path / "x"), "--attention-heads", "5"],
            "cannot keep 5 of the teacher's 4 attention heads",
        ),
        (
            ["compress", str(trained), "--out", str(tmp_path / "x"), "--attention-heads", "0"],
            "cannot keep 0 of the teacher's 4 attention heads",
        ),
        (
            ["compress", str(trained), "--out", str(tmp_path / "x"), "--attention-heads", "2,ner=3"],
            "task 'ner': a branch of 3 attention heads per layer does not fit the student's layers of 2",
        ),
        (
            ["compress", str(trained), "--out", str(tmp_path / "x"), "--ffn-width", "0.75,ner=x"],
            "'ner=x' is not a share of neurons or TASK=VALUE",
        ),
        (
            ["compress", str(trained), "--out", str(tmp_path / "x"), "--ffn-width", "0.5,ner=1.5"],
            "feed-forward width of 1.5 is not a share",
        ),
        (["compress", str(trained), "--out", str(tmp_path / "x"), "--attention-heads", "ner=2,ner=1"], "task 'ner' is given twice"),
        (
            ["compress", str(trained), "--out", str(tmp_path / "x"), "--attention-heads", "2.5"],
            "'2.5' is not a number of heads or TASK=NUMBER",
        ),
    ]
    for args, message in cases:
        code, _, err = cli(args, monkeypatch, capsys)
        assert code == 2 and message in err and "Traceback" not in err, (args, err)
    (tmp_path / "s.csv").rename(tmp_path / "moved.csv")  # the teacher's training texts are gone
    code, _, err = cli(["compress", str(trained), "--out", str(tmp_path / "x"), "--trunk-layers", "1", "-q"], monkeypatch, capsys)
    assert code == 2 and "s.csv" in err and len(err.strip().splitlines()) <= 2, err
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x.*"))


def test_cli_compress_the_branches_of_a_tagging_chain_trained_without_validation(
    tiny_backbone: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """One tagging task tunes every layer (split 0): there is no trunk to drop layers from, so ``--branch-layers`` alone
    makes the student (the whole trunk kept, here none); its 40 sentences left no validation data, which distillation
    neither scores nor selects on (it keeps the last epoch, as training does)."""
    write_conll(tmp_path / "n.conll", ner_sentences(40, 1))
    task = "{name: ner, type: tagging, train: n.conll, min_validation: 50}"  # 40 sentences: no validation cut
    training = "{epochs: 1, min_steps: 0}"
    (tmp_path / "ner.yaml").write_text(f"backbone: {tiny_backbone}\nmax_length: 32\ntraining: {training}\ntasks:\n  - {task}\n")
    code, _, err = cli(["train", str(tmp_path / "ner.yaml"), "--out", str(tmp_path / "c"), "-q"], monkeypatch, capsys)
    assert code == 0, err
    code, _, err = cli(["compress", str(tmp_path / "c"), "--out", str(tmp_path / "x"), "--trunk-layers", "1"], monkeypatch, capsys)
    assert code == 2 and "no trunk layers to keep 1 of (split 0" in err and "--branch-layers N" in err, err
    code, out, err = cli(
        ["compress", str(tmp_path / "c"), "--out", str(tmp_path / "s"), "--branch-layers", "2", "--epochs", "1", "-q"], monkeypatch, capsys
    )
    assert code == 0, err
    manifest = json.loads((tmp_path / "s" / "finechain.json").read_text())
    assert manifest["split"] == 0 and manifest["compression"]["branch_layers_kept"] == {"ner": [1, 3]} and manifest["layers"] == [1, 3]
    assert re.search(r"ner\s+entity_f1\s+-\s+-", out), out  # no validation score to show
    (tmp_path / "in.txt").write_text("alice visited paris\n")
    code, out, err = cli(["predict", str(tmp_path / "s"), "--input", str(tmp_path / "in.txt")], monkeypatch, capsys)
    assert code == 0 and len(json.loads(out)["ner"]["tags"]) == 3, err
