"""The inference engine: explicit stages, rows of many requests in one forward pass, typed predictions, stage times;
the model's forward can be exported; LoRA branches merge into plain layers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from finechain import Chain
from finechain.data.tokens import inference_batches
from finechain.heads import ClassPrediction, EntitiesPrediction, LabelsPrediction, ValuePrediction, head_type
from finechain.inference import Engine
from tests.conftest import mixed_chain


@pytest.fixture
def mixed(tiny_backbone: Path) -> Chain:
    """An untrained chain (the tails' random weights are enough to compare code paths) with all four head types."""
    return mixed_chain(tiny_backbone)


LONG = " ".join(["alice visited new york and"] * 5)  # 25 words, 27 tokens: past max_length 16


def _close(a: dict, b: dict) -> None:
    """Two predictions agree: labels exactly, numbers to float32 noise (other batch shapes, other padding)."""
    assert a.keys() == b.keys()
    for name in a:
        x, y = a[name].to_dict(), b[name].to_dict()
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(x[key], (float, dict)):
                assert x[key] == pytest.approx(y[key], abs=2e-6)
            elif key == "entities":
                assert [(e["type"], e["start"], e["end"]) for e in x[key]] == [(e["type"], e["start"], e["end"]) for e in y[key]]
            else:
                assert x[key] == y[key], (name, key)


def test_every_head_type_answers_with_its_prediction_class(mixed: Chain) -> None:
    (answer,) = mixed.predict(["alice visited paris"])
    assert isinstance(answer["sent"], ClassPrediction) and isinstance(answer["tags"], LabelsPrediction)
    assert isinstance(answer["score"], ValuePrediction) and isinstance(answer["ner"], EntitiesPrediction)
    assert set(answer["sent"].scores) == {"neg", "pos"} and sum(answer["sent"].scores.values()) == pytest.approx(1, abs=1e-5)
    assert answer["sent"].score == max(answer["sent"].scores.values())
    assert len(answer["ner"].tags) == 3 and all(e.start is not None for e in answer["ner"].entities)
    assert {k: type(v.to_dict()) for k, v in answer.items()} == dict.fromkeys(answer, dict)


def test_one_forward_pass_serves_rows_of_many_requests_each_with_its_own_tasks(mixed: Chain, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a server does: prepare each request, run all their rows in one forward pass (the trunk once per batch,
    each tail only on the rows that asked for it), decode each request; the same answers as one request at a time."""
    engine = mixed.engine
    requests = [
        (["good film", "alice visited rome"], ["sent"]),
        (["bob met carol"], ["ner", "score"]),
        ([LONG, "paris"], ["ner", "sent", "tags"]),
    ]
    alone = [engine.predict(texts, tasks) for texts, tasks in requests]
    prepared = [engine.prepare(texts, tasks) for texts, tasks in requests]
    assert len(prepared[2].rows) > 2 and prepared[2].rows[0].tasks == ("sent", "tags")  # the long text's windows: ner only
    rows = [row for p in prepared for row in p.rows]
    calls = {"trunk": 0, "score": 0}
    trunk_forward, tail_forward = mixed.model.trunk.embeddings.forward, mixed.tasks["score"].forward

    def count(kind: str, original):
        def counted(*args, **kwargs):
            calls[kind] += 1
            return original(*args, **kwargs)

        return counted

    monkeypatch.setattr(mixed.model.trunk.embeddings, "forward", count("trunk", trunk_forward))
    monkeypatch.setattr(mixed.tasks["score"], "forward", count("score", tail_forward))
    outputs = engine.forward(rows)
    batches = inference_batches([len(row.ids) for row in rows], engine.batch_size, "cpu", packed=engine.runner.packs)
    owner = [i for i, p in enumerate(prepared) for _ in p.rows]
    assert any(len({owner[r] for r in batch}) > 1 for batch in batches)  # a pass holds rows of several requests
    with_score = [batch for batch in batches if any("score" in rows[r].tasks for r in batch)]
    assert calls == {"trunk": len(batches), "score": len(with_score)}  # the trunk once per batch; a tail only where asked
    assert {name for out in outputs for name in out} == {"sent", "tags", "score", "ner"}
    assert set(outputs[2]) == {"ner", "score"} and set(outputs[0]) == {"sent"}  # each row only has what it asked for
    start = 0
    for p, expected in zip(prepared, alone, strict=True):
        got = engine.decode(p, outputs[start : start + len(p.rows)])
        start += len(p.rows)
        assert len(got) == len(expected)
        for a, b in zip(got, expected, strict=True):
            _close(a, b)


def test_the_engine_reports_its_time_per_stage(mixed: Chain) -> None:
    engine = mixed.engine
    engine.times.reset()
    mixed.predict(["good film", LONG], tasks=["sent", "ner"], batch_size=1)
    times = engine.times
    assert times.prepare > 0 and times.forward > 0 and times.decode > 0
    assert (times.texts, times.batches) == (2, times.rows) and times.rows > 2  # batch_size 1: a batch per row (windows too)
    engine.times.reset()
    assert engine.times.as_dict() == {"prepare": 0.0, "forward": 0.0, "decode": 0.0, "texts": 0, "rows": 0, "batches": 0}


def test_a_long_input_runs_a_block_of_characters_at_a_time(mixed: Chain, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a text past max_length holds while it runs (its windows) is many times its size: ``predict``, ``outputs``
    and ``score`` prepare and run at most ``BLOCK_CHARS`` characters at a time, with the answers of one block."""
    from finechain.inference import engine as engine_module

    engine = mixed.engine
    texts = [LONG, "good film", LONG + " bob", "alice visited rome", LONG]  # 134, 9, 138, 18 and 134 characters
    words = [text.split() for text in texts]
    tags = [["B-PER", "O", "B-LOC", "I-LOC", "O"] * (len(w) // 5) + ["O"] * (len(w) % 5) for w in words]
    whole = engine.predict(texts)
    whole_outputs, whole_words = engine.outputs(texts, ["ner", "sent"])
    whole_score = engine.score("ner", words, tags)
    sizes: list[int] = []
    prepare = Engine.prepare

    def counted(self: Engine, part: list, *args: object, **kwargs: object) -> object:
        sizes.append(len(part))
        return prepare(self, part, *args, **kwargs)

    monkeypatch.setattr(Engine, "prepare", counted)
    monkeypatch.setattr(engine_module, "BLOCK_CHARS", 154)
    blocked = engine.predict(texts)
    assert sizes == [2, 1, 2]  # 134 + 9; 138 (+ 18 would be 156); 18 + 134
    for a, b in zip(blocked, whole, strict=True):
        _close(a, b)
    outputs, found = engine.outputs(texts, ["ner", "sent"])
    assert whole_words is not None and found is not None
    assert (found.ids, found.word_starts, found.word_spans) == (whole_words.ids, whole_words.word_starts, whole_words.word_spans)
    for name in ("ner", "sent"):
        for x, y in zip(outputs[name], whole_outputs[name], strict=True):
            np.testing.assert_allclose(x, y, atol=2e-6)
    assert engine.score("ner", words, tags) == whole_score  # the same tags, so the same counts
    assert len(sizes) == 3 + 3 + 3 and engine.predict([]) == [] and engine.outputs([], ["sent"])[0] == {"sent": []}


def test_an_engine_is_a_setting_not_a_copy(mixed: Chain) -> None:
    """Another engine on the same model gives the same answers; precision and batch size are its settings."""
    other = Engine(mixed.model, precision="fp32", batch_size=1)
    texts = ["good film", "alice visited rome"]
    for a, b in zip(other.predict(texts), mixed.predict(texts), strict=True):
        _close(a, b)


def test_the_model_forward_exports_with_dynamic_batch_and_length(mixed: Chain) -> None:
    """``ChainModel.forward(input_ids, attention_mask, tasks)`` has no data-dependent control flow: an exported graph
    with dynamic batch and sequence axes gives the eager outputs on other shapes and other padding."""
    model = mixed.model.eval()
    names = ("sent", "ner")

    class Outputs(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
            out = self.model(ids, mask, names)
            return tuple(out[n] for n in names)

    ids, _ = model.encode(["alice visited new york", "good film"])
    padded = torch.zeros(2, 6, dtype=torch.long)
    for row, x in enumerate(ids):
        padded[row, : len(x)] = torch.tensor(x)
    batch, length = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("length", min=2, max=16)
    exported = torch.export.export(
        Outputs().eval(), (padded, (padded != 0).long()), dynamic_shapes=({0: batch, 1: length}, {0: batch, 1: length})
    )
    other, _ = model.encode(["bob met carol in paris today", "rome", "the plot was awful"])
    width = max(len(x) for x in other)
    ids2 = torch.tensor([x + [0] * (width - len(x)) for x in other])
    mask2 = (ids2 != 0).long()
    with torch.no_grad():
        want = Outputs()(ids2, mask2)
    got = exported.module()(ids2, mask2)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_lora_branches_merge_into_plain_layers(tiny_backbone: Path, tmp_path: Path) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    torch.manual_seed(0)
    chain = Chain.from_backbone(str(tiny_backbone), split=2, max_length=16)
    task = chain.model.new_task(head_type("classification")(["neg", "pos"]), {"mode": "lora", "rank": 4})
    with torch.no_grad():  # adapters as after training (a new adapter's B is zero: merging it would change nothing)
        for name, param in task.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    chain.attach("s", task)
    chain.precision = "fp32"
    texts = ["good film", "alice visited rome", "the plot was awful"]
    before = chain.predict(texts)
    chain.save_pretrained(tmp_path / "lora")
    assert chain.merge_adapters() == ["s"] and chain.merge_adapters() == []
    assert not any(isinstance(m, BaseTunerLayer) for m in chain.tasks["s"].modules())
    for a, b in zip(chain.predict(texts), before, strict=True):
        _close(a, b)
    merged = Chain.from_pretrained(chain.save_pretrained(tmp_path / "merged"))
    merged.precision = "fp32"  # as the chain it is compared with (a CPU with bf16 units defaults to bf16)
    assert merged.tasks["s"].mode.name == "full" and merged.predict(texts) == chain.predict(texts)
    lora_bytes = (tmp_path / "lora" / "tasks" / "s" / "branch.safetensors").stat().st_size
    assert (tmp_path / "merged" / "tasks" / "s" / "branch.safetensors").stat().st_size > 3 * lora_bytes  # whole layers now


def test_embeddings_are_numpy_and_normalised(mixed: Chain) -> None:
    vectors = mixed.embed(["good film", "a"])
    assert vectors.dtype == np.float32 and vectors.shape == (2, 32)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
