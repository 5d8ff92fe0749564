"""Cheaper CPU dropout: the same distribution as nn.Dropout, and attention that still respects padding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from finechain.heads import head_type
from finechain.model.chain_model import ChainModel
from finechain.model.dropout import ATTENTION, FastDropout, attention, cpu_dropout, use_fast_attention, use_fast_dropout


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_cpu_dropout_drops_at_rate_p_and_scales_the_rest(p: float) -> None:
    torch.manual_seed(0)
    x = torch.rand(1_000_003) + 0.5  # odd size: the last random word is only partly used
    y = cpu_dropout(x, p)
    dropped = y == 0
    assert abs(float(dropped.float().mean()) - p) < 0.003
    assert torch.allclose(y[~dropped], x[~dropped] / (1 - p))


def test_cpu_dropout_is_seeded_and_differentiable_and_keeps_the_dtype() -> None:
    x = torch.randn(64, 33, requires_grad=True)
    torch.manual_seed(3)
    a = cpu_dropout(x, 0.2)
    torch.manual_seed(3)
    b = cpu_dropout(x, 0.2)
    torch.manual_seed(4)
    c = cpu_dropout(x, 0.2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    a.sum().backward()
    assert torch.allclose(x.grad, (a != 0).float() / 0.8)
    assert cpu_dropout(torch.ones(10, dtype=torch.bfloat16), 0.1).dtype == torch.bfloat16
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        cpu_dropout(x, 1.0)


def test_fast_dropout_is_the_identity_in_eval_and_at_zero() -> None:
    x = torch.randn(5, 7)
    assert torch.equal(FastDropout(0.3).eval()(x), x)
    assert torch.equal(FastDropout(0.0).train()(x), x)
    assert not torch.equal(FastDropout(0.3).train()(x), x)


def test_use_fast_dropout_swaps_every_dropout_and_no_weights() -> None:
    block = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1), nn.ModuleDict({"a": nn.Dropout(0.2), "b": nn.Identity()}))
    keys = set(block.state_dict())
    assert use_fast_dropout(block) == 2
    assert [type(m).__name__ for m in block.modules() if isinstance(m, nn.Dropout)] == ["FastDropout"] * 2
    assert block[2]["a"].p == 0.2 and set(block.state_dict()) == keys
    assert use_fast_dropout(block) == 0  # already swapped


def test_training_attention_matches_the_reference_and_ignores_masked_keys() -> None:
    module = nn.Identity()
    q, k, v = (torch.randn(2, 3, 5, 8) for _ in range(3))
    mask = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    mask[0, :, :, 3:] = False  # the first sequence has 2 padding positions
    torch.manual_seed(1)
    out, _ = attention(module, q, k, v, mask, dropout=0.25, scaling=0.3)
    torch.manual_seed(1)
    weights = torch.softmax((q @ k.transpose(2, 3) * 0.3).masked_fill(~mask, float("-inf")), dim=-1)
    expected = (cpu_dropout(weights, 0.25) @ v).transpose(1, 2)
    assert out.shape == (2, 5, 3, 8) and torch.allclose(out, expected, atol=1e-6)
    v2 = v.clone()
    v2[0, :, 3:] += 100.0  # values at masked positions must not leak into any output
    torch.manual_seed(1)
    assert torch.allclose(attention(module, q, k, v2, mask, dropout=0.25, scaling=0.3)[0], out, atol=1e-5)
    evaluated, _ = attention(module.eval(), q, k, v, mask, dropout=0.0, scaling=0.3)  # eval (no dropout): transformers' SDPA
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.3).transpose(1, 2)
    assert torch.allclose(evaluated, sdpa, atol=1e-6)


def test_a_training_branch_ignores_what_sits_at_padding_positions(tiny_backbone: Path) -> None:
    model = ChainModel.from_backbone(str(tiny_backbone), split=1, max_length=32)
    assert model.encoder_config._attn_implementation == ATTENTION
    task = model.new_task(head_type("tagging")(["O", "B-X", "I-X"])).train()
    hidden = torch.randn(2, 6, model.encoder_config.hidden_size)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1] * 6])
    moved = hidden.clone()
    moved[0, 4:] += 50.0
    torch.manual_seed(0)
    a = task(hidden, mask)
    torch.manual_seed(0)
    b = task(moved, mask)
    assert torch.allclose(a[0, :4], b[0, :4], atol=1e-5) and torch.allclose(a[1], b[1], atol=1e-5)


def test_a_model_that_refuses_custom_attention_keeps_its_own() -> None:
    class Refusing(nn.Module):
        def _can_set_attn_implementation(self) -> bool:
            return True

        def set_attn_implementation(self, name: str) -> None:
            raise ValueError(f"{name} is not supported")

    assert use_fast_attention(Refusing()) is False
    assert use_fast_attention(nn.Linear(2, 2)) is False  # not a transformers model at all


def test_bf16_training_attention_computes_like_sdpa_math_in_fp32() -> None:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = (torch.randn(4, 3, 7, 8).bfloat16() for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, _ = attention(nn.Identity(), q, k, v, None, dropout=1e-9, scaling=0.35)  # p rounds to 0: nothing dropped
    with sdpa_kernel([SDPBackend.MATH]):
        math = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.35).transpose(1, 2)
    assert ours.dtype == torch.bfloat16
    assert torch.allclose(ours.float(), math.float(), atol=4e-3)
