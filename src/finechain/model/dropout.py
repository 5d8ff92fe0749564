"""Dropout with a cheaper random mask on CPU, for hidden states and attention weights.

PyTorch's CPU dropout draws one random number per element (``bernoulli_``), and attention dropout keeps SDPA on
its math path with such a mask for every attention matrix; in a profile of a bf16 training step of the default
branch on 2 cores, those draws were the largest cost after the matrix products. Here each element's keep/drop
decision comes from a 16-bit slice of a 64-bit random word, so one draw serves four elements: the same
distribution up to the drop probability being rounded to a multiple of 1/65536, and about 10% less time per bf16
training step (``python -m benchmarks dropout``, docs/benchmarks.md). On other devices, in eval mode and at
``p == 0`` it is PyTorch's own dropout.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

_WORD_VALUES = 1 << 16  # one keep/drop decision per signed 16-bit slice, uniform on [-32768, 32767]


def cpu_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Training-mode dropout of ``x`` on CPU: zero each element with probability ``p``, scale the rest by ``1/(1-p)``.

    Seeded by ``torch.manual_seed`` like ``torch.nn.functional.dropout``; differentiable in ``x``.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> y = cpu_dropout(torch.ones(100_000), 0.1)
        >>> round(float((y == 0).float().mean()), 2), sorted({round(v, 4) for v in y.tolist()})
        (0.1, [0.0, 1.1111])
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    words = torch.empty((x.numel() + 3) // 4, dtype=torch.int64).random_(-(1 << 63), None)  # the full 64-bit range
    slices = words.view(torch.int16)[: x.numel()].view(x.shape)
    keep = slices >= round(p * _WORD_VALUES) - _WORD_VALUES // 2
    if x.dtype in (torch.float32, torch.float64):  # one float mask with the scale folded in: the fastest forward + backward
        return x * keep.to(x.dtype).mul_(1.0 / (1.0 - p))
    return x * keep * (1.0 / (1.0 - p))  # bf16/fp16: scaled in float per element (1/(1-p) is not exact in bf16)


class FastDropout(nn.Dropout):
    """``nn.Dropout`` whose training-mode mask on CPU comes from :func:`cpu_dropout`.

    Example:
        >>> layer = FastDropout(0.1).eval()
        >>> bool(torch.equal(layer(torch.ones(3)), torch.ones(3)))
        True
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Dropout of ``x``: :func:`cpu_dropout` when training on CPU with ``p > 0``, else ``nn.Dropout``'s."""
        if self.training and self.p > 0 and x.device.type == "cpu":
            return cpu_dropout(x, self.p)
        return super().forward(x)


def use_fast_dropout(module: nn.Module) -> int:
    """Replace every plain ``nn.Dropout`` inside ``module`` (in place) by a :class:`FastDropout` of the same
    probability; return how many were replaced. Dropout has no weights, so saved files do not change.

    Example:
        >>> block = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1), nn.Sequential(nn.Dropout(0.2)))
        >>> use_fast_dropout(block), type(block[1]).__name__, block[2][0].p
        (2, 'FastDropout', 0.2)
    """
    targets = [(name, child) for name, child in module.named_modules() if type(child) is nn.Dropout]
    for name, child in targets:
        parent_name, _, attr = name.rpartition(".")
        setattr(module.get_submodule(parent_name), attr, FastDropout(child.p))
    return len(targets)


ATTENTION = "finechain_sdpa"  # the name the attention function below is registered under in transformers


def attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """Transformers' SDPA attention, except with attention dropout on CPU (transformers' layers pass ``dropout``
    only in training): there SDPA would fall back to its math path with a per-element ``bernoulli_`` mask, and this
    computes the same (scores, softmax and weighted sum in fp32 even for bf16 inputs) with :func:`cpu_dropout`'s
    mask. Causal, grouped-query and other special cases go to SDPA. Registered as ``finechain_sdpa``;
    :func:`use_fast_attention` selects it.

    Example:
        >>> q = torch.randn(1, 2, 3, 4)
        >>> out, _ = attention(nn.Identity().eval(), q, q, q, None, scaling=0.5)
        >>> tuple(out.shape)  # [batch, tokens, heads, head size], like transformers' own functions
        (1, 3, 2, 4)
    """
    if not dropout or query.device.type != "cpu" or _needs_sdpa(module, kwargs):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    with torch.autocast("cpu", enabled=False):  # in fp32, as SDPA's CPU math path computes bf16/fp16 attention
        scores = torch.matmul(query.float(), key.float().transpose(2, 3)) * (scaling if scaling is not None else query.size(-1) ** -0.5)
        if attention_mask is not None:
            scores = scores.masked_fill(~attention_mask, float("-inf")) if attention_mask.dtype == torch.bool else scores + attention_mask
        weights = cpu_dropout(torch.softmax(scores, dim=-1), dropout)
        out = torch.matmul(weights, value.float()).to(query.dtype)
    return out.transpose(1, 2).contiguous(), None


def _needs_sdpa(module: nn.Module, kwargs: dict[str, object]) -> bool:
    """Causal, grouped-query, position-bias or soft-capped attention: cases :func:`attention` leaves to SDPA."""
    if getattr(module, "is_causal", False) or getattr(module, "num_key_value_groups", 1) > 1:
        return True
    return any(kwargs.get(name) is not None for name in ("is_causal", "position_bias", "softcap"))


AttentionInterface.register(ATTENTION, attention)
AttentionMaskInterface.register(ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])  # masks as for SDPA (without one: no mask)


def use_fast_attention(model: nn.Module) -> bool:
    """Switch a loaded transformers model to :func:`attention`; return False (nothing changed) for a model that
    cannot change its attention function (one not written against transformers' ``AttentionInterface``).

    Example:
        >>> use_fast_attention(encoder)  # a BERT-style model from AutoModel  # doctest: +SKIP
        True
    """
    setter = getattr(model, "set_attn_implementation", None)
    if setter is None or not getattr(model, "_can_set_attn_implementation", lambda: False)():
        return False
    try:
        setter(ATTENTION)
    except (ValueError, ImportError):  # a model type that refuses custom attention: it keeps SDPA, only slower dropout
        return False
    return getattr(model.config, "_attn_implementation", None) == ATTENTION
