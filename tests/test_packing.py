"""Packed inference on a CPU: a batch's texts end to end in a few rows, each attending only to itself, give the outputs
of the padded batch (every head type, layer mixing, tasks asked by some rows only, kept trunk states), with no padding
computed."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
import torch

from finechain import Chain
from finechain.data.tokens import pad_rows
from finechain.export.onnx import _plain_attention
from finechain.heads import head_type
from finechain.inference import torch_runner
from finechain.model.packing import Packing, plan_packing
from tests.conftest import mixed_chain

TEXTS = [
    "good",
    "alice visited rome with bob and carol last spring",
    "a fine film",
    "paris",
    "the plot was thin but the acting held it together",
    "ok",
]


@pytest.fixture(scope="module")
def chain(tiny_backbone: Path) -> Chain:
    """The engine tests' chain with every head type, plus one layer-mixing task."""
    return mixed_chain(tiny_backbone, mix=head_type("classification")(["x", "y", "z"], {"layer_mix": True, "pooling": "max"}))


def test_pack_then_unpack_gives_back_every_token_and_zeros_at_padding() -> None:
    lengths = [5, 1, 7, 3, 7, 2]
    packing = Packing.plan(lengths, 7, row_tokens=10)
    assert packing.rows == 3 and packing.row_width == 9  # 25 tokens in rows of at most ~10: 7+2, 7+1, 5+3 (LPT)
    states = torch.randn(6, 7, 4)
    real = torch.arange(7)[None, :] < torch.tensor(lengths)[:, None]
    assert torch.equal(packing.unpack(packing.pack(states)), states * real[..., None])
    same_text = packing.mask[:, 0]  # a token attends to its own text's tokens only
    assert int(same_text[packing.pack(real[..., None].float())[..., 0] > 0].sum()) == sum(n * n for n in lengths)


def test_packing_is_planned_only_where_it_saves_compute() -> None:
    assert plan_packing(torch.tensor([[1] * 12, [1, 1] + [0] * 10]), 384) is not None
    assert plan_packing(torch.ones(4, 12, dtype=torch.long), 384) is None  # no padding
    assert plan_packing(torch.tensor([[1] * 12]), 384) is None  # one text
    long_rows = torch.tensor([[1] * 500, [1] * 490 + [0] * 10])  # packing two long texts: a 990-wide row's attention
    assert plan_packing(long_rows, 384) is None


def _outputs(chain: Chain, wanted: dict[str, list[int] | None], packed: bool, monkeypatch: pytest.MonkeyPatch) -> dict:
    runner = chain.engine.runner
    ids, mask = pad_rows(chain.model.encode(TEXTS)[0], chain.model.pad_id)
    with monkeypatch.context() as patch:
        if not packed:
            patch.setattr(torch_runner, "plan_packing", lambda *args, **kwargs: None)
        kept: list = []
        results = {name: runner.fetch(out) for name, out in runner.run(ids, mask, wanted, "fp32", kept=kept).items()}
        later = {name: runner.fetch(out) for name, out in runner.run_kept(kept[0], {"ner": [1, 4], "mix": None}, "fp32").items()}
    return {"run": results, "kept": later, "mask": mask}


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_batches_give_the_padded_batches_outputs(chain: Chain, attention: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Also with transformers' eager attention (how layers are traced for export, and what a backbone without SDPA
    runs), which adds its mask to the scores: the packed rows' boolean mask is made additive first."""
    with _plain_attention(chain.model) if attention == "eager" else contextlib.nullcontext():
        _check_packed_outputs(chain, monkeypatch)


def _check_packed_outputs(chain: Chain, monkeypatch: pytest.MonkeyPatch) -> None:
    planned: list[Packing] = []
    original = torch_runner.plan_packing

    def spy(*args, **kwargs):
        packing = original(*args, **kwargs)
        planned.append(packing)
        return packing

    monkeypatch.setattr(torch_runner, "plan_packing", spy)
    wanted: dict[str, list[int] | None] = {"sent": None, "tags": [0, 2, 5], "score": [1], "ner": None, "mix": [1, 3, 4]}
    packed = _outputs(chain, wanted, packed=True, monkeypatch=monkeypatch)
    assert planned[0] is not None and planned[0].rows < len(TEXTS)  # the batch did run packed, in fewer rows than texts
    padded = _outputs(chain, wanted, packed=False, monkeypatch=monkeypatch)
    mask = padded["mask"]
    for part in ("run", "kept"):
        assert packed[part].keys() == padded[part].keys()
        for name, expected in padded[part].items():
            got = packed[part][name]
            assert got.shape == expected.shape
            if chain.tasks[name].head.token_level:  # compare real tokens (padding positions are not read)
                rows = wanted[name] if part == "run" and wanted[name] is not None else [1, 4] if part == "kept" else range(len(TEXTS))
                real = mask[list(rows)].astype(bool)
                got, expected = got[real], expected[real]
            np.testing.assert_allclose(got, expected, atol=2e-5, err_msg=f"{part} {name}")


def test_predictions_do_not_depend_on_the_other_texts_of_a_packed_batch(chain: Chain) -> None:
    alone = [chain.predict([text])[0] for text in TEXTS]
    together = chain.predict(TEXTS)
    for a, b in zip(alone, together, strict=True):
        assert a["sent"].label == b["sent"].label and a["sent"].score == pytest.approx(b["sent"].score, abs=2e-6)
        assert a["ner"].tags == b["ner"].tags
        assert a["score"].value == pytest.approx(b["score"].value, abs=2e-5)
